"""What a run logs, to ``log.jsonl`` (:class:`~rvqcodec.training.run_folder.JsonlLog`) and the Accelerate trackers
(TensorBoard): the resolved ``config.yaml`` at the start, a ``train`` record every ``train.log_every`` steps and a
``valid`` record at each validation. Every function here is collective (every process calls it)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rvqcodec.training.config import TrainConfig, config_to_dict, flat_dict, save_config
from rvqcodec.training.run_folder import JsonlLog, Lineage

if TYPE_CHECKING:
    from rvqcodec.training.setup import TrainingModels


def start_logging(cfg: TrainConfig, run_dir: Path, log: JsonlLog, step: int, accelerator, with_hparams: bool,
                  say: Callable[[str], None]) -> bool:
    """Write ``config.yaml``, drop log records past ``step`` (left by an interrupted run), start the trackers
    (with the flattened config as hyper-parameters when ``with_hparams``). Returns whether the hyper-parameters
    were logged."""
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        log.truncate_after(step)
    accelerator.wait_for_everyone()
    logged = False
    if accelerator.log_with:
        try:
            hparams = None
            if with_hparams:
                hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                           for k, v in flat_dict(config_to_dict(cfg)).items()}
                logged = True
            accelerator.init_trackers("tensorboard", config=hparams)
        except Exception as exc:  # a broken tracker must not stop training
            say(f"note: TensorBoard logging disabled ({type(exc).__name__}: {exc})")
    return logged


def log_train(window: dict[str, list], models: TrainingModels, bad_total: int, log: JsonlLog,
              step: int) -> dict[str, float]:
    """Log and return the ``train`` record: means over the steps of ``window`` (since the last log) and over
    processes (``time/step_seconds``: data loading + generator and discriminator updates, without validation and
    checkpoints), learning rates, skipped steps so far, per-stage RVQ statistics of the same window (summed over
    processes; their windows are reset)."""
    accelerator = models.accelerator
    keys = sorted(k for k, v in window.items() if v)  # the same on every process
    device = accelerator.device
    means = torch.stack([torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(())
                                      for v in window[k]]).mean() for k in keys]) if keys else \
        torch.zeros(0, dtype=torch.float64, device=device)
    if accelerator.num_processes > 1:
        means = accelerator.reduce(means, reduction="mean")  # losses averaged over processes
    record: dict[str, float] = dict(zip(keys, means.tolist()))
    record.update(models.learning_rates())
    record["skipped/total"] = float(bad_total)
    record.update(models.codec_module.quantizer.stats_dict(prefix="vq", reset=True))
    accelerator.log(record, step=step)
    log.write({"step": step, "kind": "train", **record})
    return record


def log_valid(record: dict[str, float], lineage: Lineage, accelerator, log: JsonlLog, step: int) -> dict[str, float]:
    """Log and return a validation record with the training compute so far (``lineage/audio_hours``,
    ``lineage/minutes``) added."""
    record["lineage/audio_hours"] = lineage.audio_seconds / 3600.0
    record["lineage/minutes"] = sum((lineage.minutes or {}).values())
    accelerator.log(record, step=step)
    log.write({"step": step, "kind": "valid", **record})
    return record
