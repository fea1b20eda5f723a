"""The estimator ablation (``rvqcodec ablation``): train the same codec several times, changing only the gradient
estimator (and related quantizer options), evaluate every run on held-out speech and write a report.

Modules: :mod:`.spec` (the ablation file -> :class:`~.spec.AblationSpec`), :mod:`.results` (the files each run
leaves), :mod:`.evaluate` (the held-out evaluation), :mod:`.runner` (training and evaluating the runs) and
:mod:`.report` (``report.md`` and the plots); the command is :mod:`rvqcodec.commands.ablation`.

An ablation file (e.g. ``recipes/ablation/estimators.yaml``) has three sections::

    ablation:  {run_dir: runs/ablation-estimators, seeds: [0, 1], eval_max_seconds: 10.0, ...}
    training:  {model: {...}, data: {...}, optim: {...}, loss: {...}, train: {...}}   # a training recipe
    arms:
      - {name: ste_live, label: "STE, live residual", set: {model.estimator: ste}}
      - ...

Every run is ``training`` + the arm's ``set`` (dotted training keys) + ``train.seed = seed`` +
``train.run_dir = <run_dir>/runs/<arm>/seed<seed>``, trained by :class:`rvqcodec.training.trainer.Trainer`. Runs
of the same seed therefore share the initial weights, the data order, the quantizer-dropout draws and the forward
pass; they differ only in what their arm declares. ``key=value`` overrides on the command line go to ``training`` (same keys
as ``rvqcodec train``) or, with an ``ablation.`` prefix, to the ``ablation`` section; a key that an arm declares,
and ``train.seed`` / ``train.run_dir`` / ``train.resume`` (set per run), cannot be overridden.

**Run folder** (``ablation.run_dir``)::

    ablation.yaml                       the resolved ablation (settings, training recipe + overrides, arms)
    runs/<arm>/seed<seed>/              a Trainer run folder (config.yaml, log.jsonl, codec.pt, checkpoints/)
        snapshots/step_XXXXXXX.pt       codebooks + EMA usage after step 1, steps // 2 and the last step
        eval.json                       held-out evaluation of the final codec.pt
        status.json                     "complete" or "diverged" (+ step, skipped steps, wall-clock)
    report.md, plots/*.png              written by :mod:`.report`

A run whose ``status.json`` says it finished is never retrained: rerunning the same command only trains what is
missing (an interrupted run is restarted from scratch) and rewrites the report. The same holds for an ablation that
grows, by arms (in the file, or in ``ablation.arms``) or by ``ablation.seeds``, keeping every saved one unchanged: a
third seed or another arm joins the folder's report. ``--report-only RUN_DIR`` rebuilds the report from these files
alone.

**Evaluation** (after training, on ``data.valid_subset``, never trained on): the first ``eval_max_files`` files
(sorted by path, gain-normalised as in training) cut to ``eval_max_seconds``. With all stages: per-stage
statistics of :class:`rvqcodec.quantize.stats.CodebookStats` accumulated over the whole set, mel distance,
multi-resolution STFT distance (auraloss), SI-SDR and PESQ-WB (mean over files); with the first ``n`` stages for
each ``n`` in ``eval_n_q``: PESQ-WB and mel distance.
"""
