"""The files of a training run folder that outlive the process: step checkpoints, ``log.jsonl``, and the
lineage a model carries from checkpoint to checkpoint.

**Run folder** (``train.run_dir``)::

    config.yaml                 resolved configuration (every model field written out)
    log.jsonl                   one JSON object per log / validation event (:class:`JsonlLog`)
    tensorboard/                Accelerate TensorBoard tracker (when tensorboard is installed)
    checkpoints/step_XXXXXXX.pt last train.keep_last full training states (:func:`step_checkpoints`)
    checkpoints/best.pt         full training state with the best validation mel distance
    codec.pt, codec_best.pt     plain Codec checkpoints (Codec.load) of the latest / best state
    samples/step_XXXXXXX/       example validation audio: <utt>_ref.wav, <utt>_<kbps>kbps.wav

What a training checkpoint holds, and how a run resumes from it, is :class:`rvqcodec.training.trainer.Trainer`'s
business (``state_payload`` / ``load_checkpoint``); this module only finds and reads them.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from rvqcodec.dicts import DictConfig
from rvqcodec.fileio import atomic_write_text

CHECKPOINT_FORMAT = "rvqcodec-train-state"
CHECKPOINT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"


def step_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``[(step, path), ...]`` of the step checkpoints in ``run_dir``, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    found = []
    for path in folder.glob("step_*.pt"):
        try:
            found.append((int(path.stem.split("_", 1)[1]), path))
        except ValueError:
            continue
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The step checkpoint with the highest step in ``run_dir`` (None if there is none)."""
    found = step_checkpoints(run_dir)
    return found[-1][1] if found else None


def read_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a training checkpoint written by :class:`Trainer` (CPU tensors), with a clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable training checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an rvqcodec training checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: unsupported training checkpoint version {payload.get('version')!r}")
    return payload


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
