"""Training the codec and studying it: research code, kept out of the runtime path of ``compress``/``decompress``.

* :mod:`.config`: training recipes (YAML sections as dataclasses, ``key=value`` overrides);
* :mod:`.sampling`: the order of the training data (exact resume);
* :mod:`.run_folder`: step checkpoints, ``log.jsonl`` and the lineage of a run;
* :mod:`.trainer`: the Accelerate training loop (:class:`~.trainer.Trainer`);
* :mod:`.ablation`: the gradient-estimator ablation and its report.

Run a recipe with ``rvqcodec train CONFIG`` (:mod:`rvqcodec.commands.train`) or ``accelerate launch [--multi_gpu]
-m rvqcodec.training CONFIG`` (:mod:`.__main__`). Everything here needs the ``train`` extra
(``pip install "rvqcodec[train]"``); nothing outside this package and the ``train``/``ablation`` commands imports
it.
"""
