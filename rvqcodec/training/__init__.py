"""Training the codec and studying it: research code, kept out of the runtime path of ``compress``/``decompress``.

* :mod:`.config`: training recipes (YAML sections as dataclasses, ``key=value`` overrides);
* :mod:`.data_files`: which files a run trains and validates on;
* :mod:`.sampling`: the order of the training data (exact resume);
* :mod:`.run_folder`: the run folder's layout, ``log.jsonl`` and the lineage of a run;
* :mod:`.setup`, :mod:`.step`, :mod:`.evaluation`, :mod:`.checkpoints`, :mod:`.train_log`: setting up the models,
  one optimiser step, validation, the training state and its checkpoints, what a run logs;
* :mod:`.trainer`: the Accelerate training loop that orchestrates them (:class:`~.trainer.Trainer`);
* :mod:`.export`: a run -> an inference checkpoint (``rvqcodec export``);
* :mod:`.ablation`: the gradient-estimator ablation and its report.

Run a recipe with ``rvqcodec train CONFIG`` (:mod:`rvqcodec.commands.train`) or ``accelerate launch [--multi_gpu]
-m rvqcodec.training CONFIG`` (:mod:`.__main__`). Everything here needs the ``train`` extra
(``pip install "rvqcodec[train]"``); nothing outside this package and the ``train``/``ablation`` commands imports
it.
"""
