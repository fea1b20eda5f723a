"""A run's training state and its training checkpoints: what a checkpoint holds, writing, finding and reading
one, resuming from it exactly, and starting a new run from the weights of another (``train.init_from``).

**What a checkpoint holds** (:func:`state_payload`): the codec (every buffer, including the EMA codebooks and, per
process, the non-persistent codebook-statistics windows), discriminators, optimisers, schedulers, the fp16 grad
scaler, the step, the bad-step counters, the best validation score, the metrics of the current log window
(:class:`TrainProgress`), the lineage and the python / numpy / torch (CPU and CUDA) RNG states of every process.
:func:`load_checkpoint` restores all of it, so a resumed run continues bit-identically (parameters, optimiser
states and log records) on the same hardware and process count.

Functions take what they act on (the config, the :class:`~rvqcodec.training.setup.TrainingModels`, the
:class:`TrainProgress`) rather than the trainer, which calls them.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rvqcodec.fileio import atomic_torch_save
from rvqcodec.training.config import TrainConfig, config_to_dict
from rvqcodec.training.run_folder import CHECKPOINT_DIR, Lineage

if TYPE_CHECKING:
    from rvqcodec.model import CodecConfig
    from rvqcodec.training.setup import TrainingModels

CHECKPOINT_FORMAT = "rvqcodec-train-state"
CHECKPOINT_VERSION = 1

Say = Callable[[str], None]  # prints a one-line note (on the main process)


@dataclass
class TrainProgress:
    """Where a run stands, besides its models: saved in every checkpoint and restored on resume."""

    step: int = 0
    bad_streak: int = 0  # consecutive skipped (non-finite) steps
    bad_total: int = 0
    best_valid_mel: float = math.inf
    lineage: Lineage = field(default_factory=Lineage)
    window: defaultdict[str, list] = field(default_factory=lambda: defaultdict(list))  # metrics since the last log


# --------------------------------------------------------------------------------------------- finding and reading


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
    """Load a training checkpoint written by :func:`save_checkpoint` (CPU tensors), with a clear error otherwise."""
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


# --------------------------------------------------------------------------------------------- random state


def rng_state() -> dict[str, Any]:
    """The python, numpy and torch (CPU and, when present, CUDA) RNG states of this process."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng():
    """Run a block (validation) without disturbing the training RNG streams."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


# --------------------------------------------------------------------------------------------- writing


def state_payload(cfg: TrainConfig, models: TrainingModels, progress: TrainProgress) -> dict[str, Any]:
    """Everything needed to continue this run exactly (collective: every process must call it)."""
    from accelerate.utils import gather_object

    codec, disc, accelerator = models.codec_module, models.disc_module, models.accelerator
    rng = gather_object([rng_state()])
    windows = gather_object([{k: [float(x) for x in v] for k, v in progress.window.items()}])
    persistent = set(codec.state_dict())
    local_buffers = gather_object([{k: v.detach().to("cpu").clone() for k, v in codec.named_buffers()
                                    if k not in persistent}])
    cpu = lambda sd: {k: v.detach().to("cpu").clone() for k, v in sd.items()}  # noqa: E731
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": progress.step,
        "config": config_to_dict(cfg),
        "codec_config": cfg.codec_config.to_dict(),
        "codec": cpu(codec.state_dict()),
        "codec_buffers": {k: v.detach().to("cpu").clone() for k, v in codec.named_buffers() if k not in persistent},
        "local_buffers": local_buffers,  # per process: non-persistent buffers (codebook statistics windows)
        "disc": None if disc is None else cpu(disc.state_dict()),
        "opt_g": models.opt_g.state_dict(),
        "opt_d": None if models.opt_d is None else models.opt_d.state_dict(),
        "sched_g": models.sched_g.state_dict(),
        "sched_d": None if models.sched_d is None else models.sched_d.state_dict(),
        "scaler": None if accelerator.scaler is None else accelerator.scaler.state_dict(),
        "rng": rng,
        "log_window": windows,  # per process: the metrics of the steps since the last log record
        "bad_streak": progress.bad_streak,
        "bad_total": progress.bad_total,
        "best_valid_mel": progress.best_valid_mel,
        "world_size": accelerator.num_processes,
        "lineage": progress.lineage.to_dict(),
    }


def save_checkpoint(run_dir: Path, cfg: TrainConfig, models: TrainingModels, progress: TrainProgress,
                    best: bool = False) -> Path | None:
    """Write ``checkpoints/step_XXXXXXX.pt`` (+ ``codec.pt``), or ``best.pt`` (+ ``codec_best.pt``); prune step
    checkpoints beyond ``train.keep_last``. Collective; only the main process writes (and gets the path)."""
    payload = state_payload(cfg, models, progress)
    path = None
    if models.accelerator.is_main_process:
        folder = run_dir / CHECKPOINT_DIR
        name = "best.pt" if best else f"step_{progress.step:07d}.pt"
        path = atomic_torch_save(payload, folder / name, fsync=True, parents=True)
        meta = {"step": progress.step, "run_dir": str(run_dir), "lineage": progress.lineage.to_dict()}
        if best:
            meta["valid_mel"] = progress.best_valid_mel
        models.codec_module.save(run_dir / ("codec_best.pt" if best else "codec.pt"), meta=meta)
        if not best:
            for _, old in step_checkpoints(run_dir)[: -cfg.train.keep_last]:
                old.unlink(missing_ok=True)
    models.accelerator.wait_for_everyone()
    return path


# --------------------------------------------------------------------------------------------- resuming


def load_checkpoint(path: str | os.PathLike, codec_config: CodecConfig, models: TrainingModels,
                    say: Say) -> TrainProgress:
    """Restore ``models`` and this process's RNG streams from a training checkpoint; returns its progress.
    ValueError (one line) if it was written for another model or with the discriminators on/off."""
    payload = read_training_checkpoint(path)
    wanted = codec_config.to_dict()
    if payload["codec_config"] != wanted:
        changed = sorted(k for k, v in wanted.items() if payload["codec_config"].get(k) != v)
        raise ValueError(f"cannot resume from {path}: its model config differs in {', '.join(changed)}")
    if (payload["disc"] is None) != (models.disc is None):
        raise ValueError(f"cannot resume from {path}: discriminators were "
                         f"{'off' if payload['disc'] is None else 'on'} in that run (loss.adv / loss.fm)")
    accelerator = models.accelerator
    codec = models.codec_module
    codec.load_state_dict(payload["codec"])
    buffers = dict(codec.named_buffers())
    with torch.no_grad():
        for name, value in payload["codec_buffers"].items():
            buffers[name].copy_(value)
    if models.disc is not None:
        models.disc_module.load_state_dict(payload["disc"])
        models.opt_d.load_state_dict(payload["opt_d"])
        models.sched_d.load_state_dict(payload["sched_d"])
    models.opt_g.load_state_dict(payload["opt_g"])
    models.sched_g.load_state_dict(payload["sched_g"])
    if accelerator.scaler is not None and payload["scaler"] is not None:
        accelerator.scaler.load_state_dict(payload["scaler"])
    rank, world = accelerator.process_index, accelerator.num_processes
    rng = payload["rng"]
    if len(rng) != world:
        say(f"note: checkpoint was written by {len(rng)} processes, resuming on {world}: "
            "data order is kept, RNG streams are not")
    set_rng_state(rng[rank % len(rng)])
    progress = TrainProgress()
    if len(payload["log_window"]) == world:
        progress.window = defaultdict(list, {k: list(v) for k, v in payload["log_window"][rank].items()})
        with torch.no_grad():
            for name, value in payload["local_buffers"][rank].items():
                buffers[name].copy_(value)
    progress.step = int(payload["step"])
    progress.bad_streak = int(payload["bad_streak"])
    progress.bad_total = int(payload["bad_total"])
    progress.best_valid_mel = float(payload["best_valid_mel"])
    progress.lineage = Lineage.from_dict(payload.get("lineage") or {"steps": progress.step})
    return progress


def resume(run_dir: Path, codec_config: CodecConfig, models: TrainingModels, say: Say) -> TrainProgress | None:
    """``train.resume=true``: the progress of the latest step checkpoint of ``run_dir``, its state restored into
    ``models``; None (and a note) when the run has none yet."""
    path = latest_checkpoint(run_dir)
    if path is None:
        say(f"train.resume=true but no checkpoint in {run_dir / CHECKPOINT_DIR}: starting fresh")
        return None
    progress = load_checkpoint(path, codec_config, models, say)
    say(f"resumed from {path} at step {progress.step}")
    return progress


# --------------------------------------------------------------------------------------------- starting from another ru


def init_from(path: Path, codec_config: CodecConfig, models: TrainingModels, say: Say) -> Lineage:
    """Start from the weights and codebooks of ``path``: a codec checkpoint (``codec.pt``) or a training
    checkpoint (``checkpoints/step_*.pt``, whose optimiser state is not used; its discriminators' weights are, when
    this run has the same discriminators, so that an adversarial fine-tune continues with trained ones).
    ValueError if its model config differs, other than in fields that only change how the model learns
    (:data:`rvqcodec.model.codec.TRAINING_ONLY_FIELDS`: e.g. fine-tuning with another gradient estimator) or that
    a checkpoint can be adapted to (:func:`rvqcodec.model.codec.adapt_state_dict`). Returns its lineage (empty when
    it has none), which the new run carries on."""
    from rvqcodec.model import Codec
    from rvqcodec.model.codec import GROWN_FIELDS, adapt_state_dict, grown_fields, incompatible_fields, with_defaults

    disc_state = None
    try:
        payload = Codec.read_checkpoint(path)
        config, state, lineage = payload["config"], Codec.load(path).state_dict(), payload["meta"].get("lineage")
    except ValueError:
        try:
            payload = read_training_checkpoint(path)
        except ValueError:
            raise ValueError(f"train.init_from={path} is neither a codec nor a training checkpoint") from None
        config, state, lineage = payload["codec_config"], payload["codec"], payload.get("lineage")
        disc_state = payload.get("disc")
    wanted = codec_config.to_dict()
    incompatible = incompatible_fields(config, wanted)
    if incompatible:
        raise ValueError(f"cannot start from {path}: its model config differs in {', '.join(incompatible)}")
    config = with_defaults(config)
    changed = sorted(k for k, v in wanted.items() if config.get(k) != v)
    state, adapted = adapt_state_dict(state, config, wanted)
    grown = tuple(GROWN_FIELDS[name] for name in grown_fields(config, wanted))
    missing, unexpected = models.codec_module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(grown)] if grown else missing
    if missing or unexpected:
        raise ValueError(f"cannot start from {path}: its weights do not fit this model (missing "
                         f"{', '.join(missing[:3]) or 'none'}; unexpected {', '.join(unexpected[:3]) or 'none'})")
    carried = Lineage.from_dict(lineage or {})
    disc_note = ""
    if disc_state is not None and models.disc is not None:
        own = models.disc_module.state_dict()
        if own.keys() == disc_state.keys() and all(own[k].shape == v.shape for k, v in disc_state.items()):
            models.disc_module.load_state_dict(disc_state)
            disc_note = " and discriminators"
        else:
            disc_note = " (its discriminators differ from this run's: they start afresh)"
    say(f"starting from the weights{disc_note} of {path} ({carried.steps} steps, "
        f"{carried.audio_seconds / 3600:.1f} h of audio seen)"
        + (f"; now training with other {', '.join(changed)}" if changed else "")
        + (f" (adapted to it: {', '.join(adapted)})" if adapted else ""))
    return carried
