"""The files of a training run folder that outlive the process: its layout, ``log.jsonl``, and the lineage a
model carries from checkpoint to checkpoint.

**Run folder** (``train.run_dir``)::

    config.yaml                 resolved configuration (every model field written out)
    log.jsonl                   one JSON object per log / validation event (:class:`JsonlLog`)
    tensorboard/                Accelerate TensorBoard tracker (when tensorboard is installed)
    checkpoints/step_XXXXXXX.pt last train.keep_last full training states (checkpoints.step_checkpoints)
    checkpoints/best.pt         full training state with the best validation mel distance
    codec.pt, codec_best.pt     plain Codec checkpoints (Codec.load) of the latest / best state
    samples/step_XXXXXXX/       example validation audio: <utt>_ref.wav, <utt>_<kbps>kbps.wav

What a training checkpoint holds, and finding, writing and reading one, is :mod:`rvqcodec.training.checkpoints`'s
business; this module holds the folder's layout, the log and the lineage.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from rvqcodec.dicts import DictConfig
from rvqcodec.fileio import atomic_write_text

CHECKPOINT_DIR = "checkpoints"
LOG_NAME = "log.jsonl"


def check_new_run(run_dir: Path, resume: bool) -> None:
    """ValueError (one line) when ``run_dir`` already holds a run and ``train.resume`` is off."""
    leftovers = [p for p in (CHECKPOINT_DIR, LOG_NAME, "codec.pt") if (run_dir / p).exists()]
    if leftovers and not resume:
        raise ValueError(
            f"train.run_dir={run_dir} already holds a run ({', '.join(leftovers)}); pass train.resume=true "
            f"to continue it or choose another train.run_dir")


class JsonlLog:
    """Appends one JSON object per line (main process only); non-finite floats are written as null."""

    def __init__(self, path: Path, enabled: bool):
        self.path = path
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after ``step`` (left by an interrupted run), atomically."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the interruption
            if int(record.get("step", 0)) <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(clean) + "\n")


@dataclass
class Lineage(DictConfig):
    """What a model has been through, carried from checkpoint to checkpoint (and into the codec's meta, the model
    card): optimiser steps, seconds of training audio seen (crops × length, all processes) and wall-clock
    minutes of training per device kind (e.g. ``{"cpu": 50.0, "cuda NVIDIA H200": 3.3}``), summed over runs that
    resumed one another, whichever machine each ran on. Its dict also shows ``audio_hours`` (derived, ignored when
    read back, as is any key a later version may add)."""

    dict_name: ClassVar[str] = "lineage"
    ignore_unknown_keys: ClassVar[bool] = True

    steps: int = 0
    audio_seconds: float = 0.0
    minutes: dict[str, float] = field(default_factory=dict)

    def add(self, audio_seconds: float, seconds: float, device: str) -> None:
        self.steps += 1
        self.audio_seconds += audio_seconds
        self.minutes[device] = self.minutes.get(device, 0.0) + seconds / 60.0

    def to_dict(self) -> dict[str, Any]:
        fields = super().to_dict()
        return {"steps": fields.pop("steps"), "audio_hours": self.audio_seconds / 3600.0, **fields}


def device_label(device: torch.device) -> str:
    """``"cpu"`` or e.g. ``"cuda NVIDIA H200"``: the key of :class:`Lineage` minutes."""
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)}"
    return device.type
