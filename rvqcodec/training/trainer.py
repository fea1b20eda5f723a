"""The training loop: a codec (generator) and its discriminators trained through HuggingFace Accelerate.

:class:`Trainer` builds a run from a :class:`rvqcodec.training.config.TrainConfig` and trains it; the command that
starts it is ``rvqcodec train CONFIG [key=value ...]`` (:mod:`rvqcodec.commands.train`), also run as
``python -m rvqcodec.training CONFIG ...`` or, on several GPUs / nodes, ``accelerate launch --multi_gpu -m
rvqcodec.training CONFIG ...``. The same code runs on a CPU.

**One step** (``train.grad_accum`` micro-batches of ``data.batch_size`` clips per process):

1. Generator: for every micro-batch, ``codec(x)`` and the loss
   ``Σ w·recon (mel, MR-STFT, L1) + w_commit·commit + w_codebook·codebook`` plus, once
   ``step >= loss.disc_start_step``, ``w_adv·adversarial + w_fm·feature matching`` against the current
   discriminators; gradients are accumulated, clipped and applied.
2. Discriminators (alternating, same step, only once adversarial training has started): real clips against the
   detached reconstructions of step 1, accumulated, clipped, applied. For the first ``loss.disc_warmup_steps`` of
   adversarial training only the discriminators learn (step 1 decodes without gradient or any update), so that
   they can tell a trained codec's output from real speech before the codec is trained against them.

A non-finite loss (or gradient) on any process skips the whole step: gradients are dropped and every model
buffer (EMA codebooks, statistics) is restored to its value before the step. After ``train.max_bad_steps``
consecutive skips training stops with :class:`TrainingDiverged`; no checkpoint is written from a bad state.

**Data order** is a pure function of ``(train.seed, step)`` (:mod:`rvqcodec.training.sampling`), so a run resumed
at step ``s`` sees exactly the batches an uninterrupted run would. What a run writes:
:mod:`rvqcodec.training.run_folder`.

**Exact resume** (``train.resume=true``): a training checkpoint holds the codec (every buffer, including the
EMA codebooks and, per process, the non-persistent codebook-statistics windows), discriminators, optimisers,
schedulers, the fp16 grad scaler, the step, the bad-step counters, the best validation score, the metrics of the
current log window and the python / numpy / torch (CPU and CUDA) RNG states of every process. Resuming from it
continues bit-identically (parameters, optimiser states and log records) on the same hardware and process
count.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import re
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from rvqcodec.fileio import atomic_torch_save
from rvqcodec.training.config import (
    TrainConfig,
    codec_config_from_section,
    config_to_dict,
    discriminator_config_from_section,
    flat_dict,
    save_config,
)
from rvqcodec.training.data_files import data_files
from rvqcodec.training.run_folder import (
    CHECKPOINT_DIR,
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    JsonlLog,
    Lineage,
    device_label,
    latest_checkpoint,
    read_training_checkpoint,
    step_checkpoints,
)
from rvqcodec.training.sampling import EpochIndexedClips, StepBatchSampler, as_clip, collate_clips


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


# ============================================================================================ schedules


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier at (0-based) optimiser step ``step``: linear warmup, then the decay schedule."""
    o = cfg.optim
    warm = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps > 0 else 1.0
    after = max(0, step - o.warmup_steps)
    if o.scheduler == "constant":
        decay = 1.0
    elif o.scheduler == "exponential":
        decay = o.gamma**after
    else:  # cosine from lr to min_lr_ratio * lr over the steps after warmup
        span = max(1, cfg.train.steps - o.warmup_steps)
        progress = min(1.0, after / span)
        decay = o.min_lr_ratio + (1.0 - o.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return warm * decay


def _lr_lambda(cfg: TrainConfig):
    """The schedule as a plain function for LambdaLR (so its state_dict holds no config; it is rebuilt from the
    config on resume)."""

    def factor(step: int) -> float:
        return lr_factor(step, cfg)

    return factor


# ============================================================================================ trainer


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def _preserved_rng():
    """Run a block (validation) without disturbing the training RNG streams."""
    state = _rng_state()
    try:
        yield
    finally:
        _set_rng_state(state)


def _make_accelerator(cfg: TrainConfig, codec: nn.Module):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    run_dir = Path(cfg.train.run_dir)
    log_with = None
    if cfg.train.tensorboard:
        try:
            import tensorboard  # noqa: F401

            log_with = "tensorboard"
        except ImportError:
            log_with = None
    # EMA codebooks and statistics are all-reduced by the quantizer itself: no buffer broadcast in forward.
    # Under quantizer dropout the later stages sit out some steps: only a problem for DDP if they own
    # parameters (projections, gradient-learned codebooks).
    quantizer = codec.quantizer
    unused = quantizer.quantizer_dropout > 0 and any(p.requires_grad for p in quantizer.parameters())
    ddp = DistributedDataParallelKwargs(find_unused_parameters=unused, broadcast_buffers=False)
    kwargs = dict(
        cpu=cfg.train.cpu,
        mixed_precision=cfg.train.mixed_precision,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir)),
        kwargs_handlers=[ddp],
    )
    try:
        return Accelerator(**kwargs)
    except ValueError as exc:
        launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if "already been initialized" not in str(exc) or launched:
            raise ValueError(f"cannot set up Accelerate: {exc}") from None
        # A second Trainer in the same single process (tests, ablations) with other precision settings.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(**kwargs)


@dataclass
class StepResult:
    ok: bool
    metrics: dict[str, float | torch.Tensor]  # python floats or 0-d device tensors (not read back per step)


class Trainer:
    """Builds everything a run needs from a :class:`TrainConfig` and trains it with :meth:`fit`.

    With ``train.resume=true`` the constructor already loads the latest checkpoint of ``train.run_dir``.
    Raises ``ValueError`` / ``FileNotFoundError`` with one-line messages for configuration and data mistakes
    (including a checkpoint that does not match the configured model).
    """

    def __init__(self, cfg: TrainConfig, show_progress: bool = True):
        from rvqcodec.data.datasets import AudioFileListDataset
        from rvqcodec.losses import ReconstructionLoss
        from rvqcodec.model import Codec
        from rvqcodec.model.discriminators import Discriminators

        self.cfg = cfg
        self.show_progress = show_progress
        self.run_dir = Path(cfg.train.run_dir)
        self.codec_config = codec_config_from_section(cfg.model)
        self.disc_config = discriminator_config_from_section(cfg.disc)
        self._check_run_dir()
        from accelerate.utils import set_seed

        set_seed(cfg.train.seed)

        # ---- data: LibriSpeech subsets and/or folders and a list file of any audio; validation from valid_dirs,
        # the LibriSpeech valid_subset or a held-out split of the training files (rvqcodec.training.data_files)
        sr = self.codec_config.sample_rate
        self.data_files = data_files(cfg.data)
        self.train_set = AudioFileListDataset(self.data_files.train, segment_seconds=cfg.data.segment_seconds,
                                              sample_rate=sr, seed=cfg.train.seed)
        self.valid_set = AudioFileListDataset(self.data_files.valid, segment_seconds=None, sample_rate=sr,
                                              seed=cfg.train.seed)

        # ---- models and losses (checked before Accelerate writes anything)
        self.codec = Codec(self.codec_config)
        for kbps in cfg.train.valid_bitrates:
            self.codec.n_q_for_bitrate(kbps)  # ValueError listing the valid bitrates
        self.disc = Discriminators(self.disc_config) if cfg.loss.uses_discriminator else None
        self.recon_loss = ReconstructionLoss(cfg.loss.reconstruction(sr))

        self.accelerator = _make_accelerator(cfg, self.codec)
        acc = self.accelerator
        self.is_main = acc.is_main_process
        o = cfg.optim
        self.opt_g = torch.optim.AdamW(self.codec.parameters(), lr=o.lr, betas=tuple(o.betas),
                                       weight_decay=o.weight_decay)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, _lr_lambda(cfg))
        self.opt_d = self.sched_d = None
        if self.disc is not None:
            self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=o.disc_lr or o.lr, betas=tuple(o.betas),
                                           weight_decay=o.weight_decay)
            self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, _lr_lambda(cfg))
        with warnings.catch_warnings():
            # DDP deprecates broadcast_buffers=False in favour of forward_sync_buffers, which accelerate does not
            # expose yet; the behaviour (no per-forward buffer sync) is the one wanted here.
            warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
            if self.disc is not None:
                self.codec, self.disc, self.opt_g, self.opt_d = acc.prepare(self.codec, self.disc, self.opt_g,
                                                                            self.opt_d)
            else:
                self.codec, self.opt_g = acc.prepare(self.codec, self.opt_g)
        self.recon_loss.to(acc.device)
        self.augment = None
        if cfg.augment.prob > 0:
            from rvqcodec.data.augment import Augmenter

            self.augment = Augmenter(cfg.augment, sr, acc.device)
        self.clips = None
        self._print(f"{self.data_files.describe()}; {self.train_set.total_seconds / 60:.1f} min of training audio")
        if cfg.data.preload:
            from rvqcodec.data.clips import PreloadedClips

            self.clips = PreloadedClips(self.train_set, self.train_set.segment_samples, acc.device,
                                        seed=cfg.train.seed, progress=self.is_main and show_progress)

        # ---- state
        self.step = 0
        self.bad_streak = 0
        self.bad_total = 0
        self.best_valid_mel = math.inf
        self.lineage = Lineage()
        self.log = JsonlLog(self.run_dir / "log.jsonl", enabled=self.is_main)
        self._window: dict[str, list[float]] = defaultdict(list)
        self._valid_cache: list[tuple[str, torch.Tensor]] | None = None
        self._hparams_logged = False
        self._quantizing = False  # set once the codebooks are known to be initialised (checked in fit)
        self._device_label = device_label(acc.device)
        self._audio_seconds_per_step = (cfg.data.batch_size * cfg.train.grad_accum * acc.num_processes
                                        * cfg.data.segment_seconds)
        if cfg.train.init_from and latest_checkpoint(self.run_dir) is None:
            self._init_from(Path(cfg.train.init_from))
        if cfg.train.resume:
            self._resume()

    # ------------------------------------------------------------------------------------ helpers
    @property
    def codec_module(self):
        """The bare :class:`Codec` (not wrapped for distributed training)."""
        return self.accelerator.unwrap_model(self.codec)

    @property
    def disc_module(self):
        return None if self.disc is None else self.accelerator.unwrap_model(self.disc)

    def _check_run_dir(self) -> None:
        leftovers = [p for p in (CHECKPOINT_DIR, "log.jsonl", "codec.pt") if (self.run_dir / p).exists()]
        if leftovers and not self.cfg.train.resume:
            raise ValueError(
                f"train.run_dir={self.run_dir} already holds a run ({', '.join(leftovers)}); pass train.resume=true "
                f"to continue it or choose another train.run_dir")

    def _print(self, text: str) -> None:
        if self.is_main:
            print(text, file=sys.stderr, flush=True)

    # ------------------------------------------------------------------------------------ checkpoints
    def state_payload(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly (collective: every process must call it)."""
        from accelerate.utils import gather_object

        codec = self.codec_module
        rng = gather_object([_rng_state()])
        windows = gather_object([{k: [float(x) for x in v] for k, v in self._window.items()}])
        persistent = set(codec.state_dict())
        local_buffers = gather_object([{k: v.detach().to("cpu").clone() for k, v in codec.named_buffers()
                                        if k not in persistent}])
        disc = self.disc_module
        cpu = lambda sd: {k: v.detach().to("cpu").clone() for k, v in sd.items()}  # noqa: E731
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "config": config_to_dict(self.cfg),
            "codec_config": self.codec_config.to_dict(),
            "codec": cpu(codec.state_dict()),
            "codec_buffers": {k: v.detach().to("cpu").clone() for k, v in codec.named_buffers() if k not in persistent},
            "local_buffers": local_buffers,  # per process: non-persistent buffers (codebook statistics windows)
            "disc": None if disc is None else cpu(disc.state_dict()),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": None if self.opt_d is None else self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "sched_d": None if self.sched_d is None else self.sched_d.state_dict(),
            "scaler": None if self.accelerator.scaler is None else self.accelerator.scaler.state_dict(),
            "rng": rng,
            "log_window": windows,  # per process: the metrics of the steps since the last log record
            "bad_streak": self.bad_streak,
            "bad_total": self.bad_total,
            "best_valid_mel": self.best_valid_mel,
            "world_size": self.accelerator.num_processes,
            "lineage": self.lineage.to_dict(),
        }

    def save_checkpoint(self, best: bool = False) -> Path | None:
        """Write ``checkpoints/step_XXXXXXX.pt`` (+ ``codec.pt``), or ``best.pt`` (+ ``codec_best.pt``);
        prune step checkpoints beyond ``train.keep_last``. Collective; only the main process writes."""
        payload = self.state_payload()
        path = None
        if self.is_main:
            folder = self.run_dir / CHECKPOINT_DIR
            name = "best.pt" if best else f"step_{self.step:07d}.pt"
            path = atomic_torch_save(payload, folder / name, fsync=True, parents=True)
            meta = {"step": self.step, "run_dir": str(self.run_dir), "lineage": self.lineage.to_dict()}
            if best:
                meta["valid_mel"] = self.best_valid_mel
            self.codec_module.save(self.run_dir / ("codec_best.pt" if best else "codec.pt"), meta=meta)
            if not best:
                for _, old in step_checkpoints(self.run_dir)[: -self.cfg.train.keep_last]:
                    old.unlink(missing_ok=True)
        self.accelerator.wait_for_everyone()
        return path

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        payload = read_training_checkpoint(path)
        if payload["codec_config"] != self.codec_config.to_dict():
            changed = sorted(k for k, v in self.codec_config.to_dict().items() if payload["codec_config"].get(k) != v)
            raise ValueError(f"cannot resume from {path}: its model config differs in {', '.join(changed)}")
        if (payload["disc"] is None) != (self.disc is None):
            raise ValueError(f"cannot resume from {path}: discriminators were "
                             f"{'off' if payload['disc'] is None else 'on'} in that run (loss.adv / loss.fm)")
        codec = self.codec_module
        codec.load_state_dict(payload["codec"])
        buffers = dict(codec.named_buffers())
        with torch.no_grad():
            for name, value in payload["codec_buffers"].items():
                buffers[name].copy_(value)
        if self.disc is not None:
            self.disc_module.load_state_dict(payload["disc"])
            self.opt_d.load_state_dict(payload["opt_d"])
            self.sched_d.load_state_dict(payload["sched_d"])
        self.opt_g.load_state_dict(payload["opt_g"])
        self.sched_g.load_state_dict(payload["sched_g"])
        if self.accelerator.scaler is not None and payload["scaler"] is not None:
            self.accelerator.scaler.load_state_dict(payload["scaler"])
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        rng = payload["rng"]
        if len(rng) != world:
            self._print(f"note: checkpoint was written by {len(rng)} processes, resuming on {world}: "
                        "data order is kept, RNG streams are not")
        _set_rng_state(rng[rank % len(rng)])
        if len(payload["log_window"]) == world:
            self._window = defaultdict(list, {k: list(v) for k, v in payload["log_window"][rank].items()})
            with torch.no_grad():
                for name, value in payload["local_buffers"][rank].items():
                    buffers[name].copy_(value)
        self.step = int(payload["step"])
        self.bad_streak = int(payload["bad_streak"])
        self.bad_total = int(payload["bad_total"])
        self.best_valid_mel = float(payload["best_valid_mel"])
        self.lineage = Lineage.from_dict(payload.get("lineage") or {"steps": self.step})

    # ------------------------------------------------------------------------------------ data
    def _train_batches(self) -> Iterator[torch.Tensor]:
        """Training micro-batches ``(B, 1, T)``, corrupted by ``augment`` when it is on (the target too)."""
        batches = self._clean_batches()
        try:
            for batch in batches:
                yield batch if self.augment is None else self.augment(batch)
        finally:
            batches.close()  # a DataLoader's worker processes end with the run

    def _clean_batches(self) -> Iterator[torch.Tensor]:
        acc = self.accelerator
        if self.clips is not None:
            batch = self.step * self.cfg.train.grad_accum
            while True:  # micro-batch numbers as StepBatchSampler counts them: exact resume
                yield self.clips.batch(batch, self.cfg.data.batch_size, rank=acc.process_index)
                batch += 1
        sampler = StepBatchSampler(len(self.train_set), self.cfg.data.batch_size, self.cfg.train.seed,
                                   rank=acc.process_index, world_size=acc.num_processes,
                                   start_batch=self.step * self.cfg.train.grad_accum)
        loader = DataLoader(EpochIndexedClips(self.train_set), batch_sampler=sampler, collate_fn=collate_clips,
                            num_workers=self.cfg.data.num_workers, pin_memory=acc.device.type == "cuda",
                            generator=torch.Generator().manual_seed(self.cfg.train.seed))
        for batch in loader:
            yield batch.to(acc.device, non_blocking=True)

    def _valid_items(self) -> list[tuple[str, torch.Tensor]]:
        if self._valid_cache is None:
            items = []
            limit = min(len(self.valid_set), self.cfg.data.max_valid_files)
            max_len = None
            if self.cfg.data.max_valid_seconds is not None:
                max_len = int(self.cfg.data.max_valid_seconds * self.codec_config.sample_rate)
            names: set[str] = set()
            for i in range(limit):
                wav = as_clip(self.valid_set[i])
                if max_len is not None:
                    wav = wav[..., :max_len]
                name = stem = Path(self.valid_set.files[i]).stem
                copy = 1
                while name in names:  # two files of one name in different folders: distinct example audio
                    copy += 1
                    name = f"{stem}-{copy}"
                names.add(name)
                items.append((name, wav))
            self._valid_cache = items
        return self._valid_cache

    # ------------------------------------------------------------------------------------ one step
    def _snapshot_buffers(self) -> list[torch.Tensor]:
        return [b.detach().clone() for b in self.codec_module.buffers()]

    def _restore_buffers(self, snapshot: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for buf, saved in zip(self.codec_module.buffers(), snapshot):
                buf.copy_(saved)

    def _any_bad(self, values: list[torch.Tensor]) -> bool:
        """True if any value on any process is non-finite (collective)."""
        local = torch.tensor(0.0 if all(bool(torch.isfinite(v).all()) for v in values) else 1.0,
                             device=self.accelerator.device)
        return float(self.accelerator.reduce(local, reduction="sum")) > 0

    def _clip(self, model: nn.Module) -> torch.Tensor:
        clip = self.cfg.optim.grad_clip
        max_norm = clip if clip else float("inf")
        norm = self.accelerator.clip_grad_norm_(model.parameters(), max_norm)
        return torch.as_tensor(norm, dtype=torch.float32)

    def _disc_crops(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same random crop of ``loss.disc_segment_seconds`` from each real/generated pair ``(B, 1, T)``
        (an offset per example), or both whole when it is unset or not shorter than ``T``."""
        seconds = self.cfg.loss.disc_segment_seconds
        length = real.shape[-1] if not seconds else int(round(seconds * self.codec_config.sample_rate))
        if length >= real.shape[-1]:
            return real, fake
        offsets = torch.randint(0, real.shape[-1] - length + 1, (real.shape[0], 1, 1), device=real.device)
        index = offsets + torch.arange(length, device=real.device)
        return real.gather(-1, index), fake.gather(-1, index)

    def train_step(self, micro_batches: list[torch.Tensor]) -> StepResult:
        """One optimiser step of the generator and (once started) the discriminators."""
        from rvqcodec.losses import discriminator_loss, feature_matching_loss, generator_adversarial_loss

        cfg, acc = self.cfg, self.accelerator
        w = cfg.loss
        accum = len(micro_batches)
        adversarial = self.disc is not None and self.step >= w.disc_start_step
        generator_frozen = adversarial and self.step < w.disc_start_step + w.disc_warmup_steps
        quantize = self.step >= cfg.train.ae_warmup_steps
        disc_raw = self.disc_module
        snapshot = self._snapshot_buffers()
        sums: dict[str, torch.Tensor] = {}  # running means over micro-batches, on the device (no syncs)

        def add(name: str, value: torch.Tensor) -> None:
            value = value.detach().float() / accum
            sums[name] = sums[name] + value if name in sums else value

        losses, fakes = [], []
        n_q_total = 0.0
        self.codec.train()
        if self.disc is not None:
            self.disc.train()
        self.opt_g.zero_grad(set_to_none=True)
        if generator_frozen:
            fakes, n_q_total = self._frozen_generator_outputs(micro_batches, quantize)
        for i, x in enumerate(micro_batches if not generator_frozen else ()):
            sync = contextlib.nullcontext() if i == accum - 1 else acc.no_sync(self.codec)
            with sync:
                with acc.autocast():
                    out = self.codec(x, quantize=quantize)
                    if adversarial:
                        real_crop, fake_crop = self._disc_crops(x, out.audio)
                        fake_outputs = disc_raw(fake_crop)  # bare module: no DDP sync for these gradients
                        with torch.no_grad():
                            real_outputs = disc_raw(real_crop)
                terms = self.recon_loss(out.audio, x)
                loss = terms["total"] + w.commit * out.commit_loss.float() + w.codebook * out.codebook_loss.float()
                if adversarial:
                    adv = generator_adversarial_loss(fake_outputs, kind=w.adv_kind)
                    fm = feature_matching_loss(real_outputs, fake_outputs)
                    loss = loss + w.adv * adv + w.fm * fm
                    add("loss/adv", adv)
                    add("loss/fm", fm)
                acc.backward(loss / accum)
            losses.append(loss.detach())
            if adversarial:
                fakes.append((real_crop, fake_crop.detach()))
            for name, value in terms.items():
                add(f"loss/{'recon' if name == 'total' else name}", value)
            add("loss/commit", out.commit_loss)
            add("loss/codebook", out.codebook_loss)
            add("loss/generator", loss)
            n_q_total += out.n_q / accum

        if not generator_frozen:
            if self._any_bad(losses):
                return self._skip_step(snapshot, self._to_floats(sums), "loss")
            g_norm = self._clip(self.codec)
            if not bool(torch.isfinite(g_norm)) and acc.scaler is None:
                return self._skip_step(snapshot, self._to_floats(sums), "gradient")
            self.opt_g.step()  # under fp16 the grad scaler itself skips steps with overflowed gradients
            self.opt_g.zero_grad(set_to_none=True)
            sums["grad_norm/generator"] = g_norm.to(acc.device)

        if adversarial:
            self.opt_d.zero_grad(set_to_none=True)  # also drops what the generator loss left there
            d_losses = []
            for i, (x, fake) in enumerate(fakes):
                sync = contextlib.nullcontext() if i == accum - 1 else acc.no_sync(self.disc)
                with sync:
                    with acc.autocast():
                        real_outputs = self.disc(x)
                        fake_outputs = self.disc(fake)
                    d_loss = discriminator_loss(real_outputs, fake_outputs, kind=w.adv_kind)
                    acc.backward(d_loss / accum)
                d_losses.append(d_loss.detach())
                add("loss/discriminator", d_loss)
            d_bad = self._any_bad(d_losses)
            d_norm = None if d_bad else self._clip(self.disc)
            if d_bad or (not bool(torch.isfinite(d_norm)) and acc.scaler is None):
                sums["skipped/discriminator"] = torch.ones((), device=acc.device)
            else:
                self.opt_d.step()
                sums["grad_norm/discriminator"] = d_norm.to(acc.device)
            self.opt_d.zero_grad(set_to_none=True)
        self.bad_streak = 0
        metrics: dict[str, float | torch.Tensor] = dict(sums)  # device scalars: read at log time, not per step
        metrics["n_q"] = n_q_total
        return StepResult(ok=True, metrics=metrics)

    def _frozen_generator_outputs(self, micro_batches: list[torch.Tensor], quantize: bool
                                  ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], float]:
        """The discriminators' warm-up (``loss.disc_warmup_steps``): the codec decodes each micro-batch without
        learning anything (eval mode: no gradient, no codebook update, no statistics), at a prefix of stages drawn
        as quantizer dropout draws it, so the discriminators learn to tell real clips from every bitrate's output
        before the generator is trained against them. Returns the (real, decoded) crops and the mean stages."""
        codec = self.codec_module
        crops, n_q_total = [], 0.0
        codec.eval()
        try:
            with torch.no_grad(), self.accelerator.autocast():
                for x in micro_batches:
                    n_q = codec.quantizer.sample_n_q(x.device) if quantize else None
                    out = codec(x, n_q=n_q, quantize=quantize)
                    crops.append(self._disc_crops(x, out.audio.float()))
                    n_q_total += out.n_q / len(micro_batches)
        finally:
            codec.train()
        return crops, n_q_total

    @staticmethod
    def _to_floats(sums: dict[str, torch.Tensor]) -> dict[str, float]:
        """Device scalars -> python floats with one transfer."""
        if not sums:
            return {}
        values = torch.stack([v.float().reshape(()) for v in sums.values()]).tolist()
        return dict(zip(sums, values))

    def _skip_step(self, snapshot: list[torch.Tensor], metrics: dict[str, float], what: str) -> StepResult:
        self.opt_g.zero_grad(set_to_none=True)
        if self.opt_d is not None:
            self.opt_d.zero_grad(set_to_none=True)
        self._restore_buffers(snapshot)
        self.bad_streak += 1
        self.bad_total += 1
        self._print(f"step {self.step + 1}: non-finite {what}, update skipped "
                    f"({self.bad_streak} in a row, {self.bad_total} in total)")
        if self.bad_streak >= self.cfg.train.max_bad_steps:
            raise TrainingDiverged(
                f"training stopped at step {self.step + 1}: {self.bad_streak} consecutive steps had a non-finite "
                f"loss or gradient (train.max_bad_steps={self.cfg.train.max_bad_steps}); last good checkpoint: "
                f"{latest_checkpoint(self.run_dir) or 'none'}")
        return StepResult(ok=False, metrics={k: v for k, v in metrics.items() if math.isfinite(v)})

    # ------------------------------------------------------------------------------------ logging
    def _learning_rates(self) -> dict[str, float]:
        out = {"lr/generator": self.sched_g.get_last_lr()[0]}
        if self.sched_d is not None:
            out["lr/discriminator"] = self.sched_d.get_last_lr()[0]
        return out

    def _log_train(self) -> dict[str, float]:
        """Means over the steps since the last log and over processes (``time/step_seconds``: data loading +
        generator and discriminator updates, without validation and checkpoints), learning rates, per-stage RVQ
        statistics of the same window (summed over processes). Collective: every process calls it."""
        keys = sorted(k for k, v in self._window.items() if v)  # the same on every process
        device = self.accelerator.device
        means = torch.stack([torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(())
                                          for v in self._window[k]]).mean() for k in keys]) if keys else \
            torch.zeros(0, dtype=torch.float64, device=device)
        if self.accelerator.num_processes > 1:
            means = self.accelerator.reduce(means, reduction="mean")  # losses averaged over processes
        record: dict[str, float] = dict(zip(keys, means.tolist()))
        record.update(self._learning_rates())
        record["skipped/total"] = float(self.bad_total)
        record.update(self.codec_module.quantizer.stats_dict(prefix="vq", reset=True))
        self.accelerator.log(record, step=self.step)
        self.log.write({"step": self.step, "kind": "train", **record})
        self._window = defaultdict(list)
        return record

    # ------------------------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mel distance, SI-SDR and (optionally) PESQ-WB of the held-out files at every validation bitrate;
        writes example audio. Runs on the main process; the result is shared with every process."""
        from accelerate.utils import broadcast_object_list

        results: list[Any] = [None]
        if self.is_main:
            with _preserved_rng():
                results[0] = self._validate_main()
        broadcast_object_list(results, from_process=0)
        return results[0]

    def _validate_main(self) -> dict[str, float]:
        from rvqcodec.data.audio_io import write_audio
        from rvqcodec.metrics import mel_distance, pesq_wb, si_sdr

        codec = self.codec_module
        was_training = codec.training
        codec.eval()
        sr = codec.sample_rate
        device = self.accelerator.device
        sums: dict[str, list[float]] = defaultdict(list)
        sample_dir = self.run_dir / "samples" / f"step_{self.step:07d}"
        warmup = self.cfg.train.ae_warmup_steps
        warming_up = 0 < warmup and self.step <= warmup  # every step so far ran unquantized
        bitrates = [None] if warming_up else self.cfg.train.valid_bitrates
        for index, (utt, wav) in enumerate(self._valid_items()):
            x = wav.unsqueeze(0).to(device)
            write_example = index < self.cfg.train.n_samples
            if write_example:
                sample_dir.mkdir(parents=True, exist_ok=True)
                write_audio(sample_dir / f"{utt}_ref.wav", wav, sr, overwrite=True)
            reference = wav[0].numpy()
            for kbps in bitrates:
                if kbps is None:  # autoencoder warm-up: the unquantized reconstruction
                    y = codec(x, quantize=False).audio.float().cpu()[0]
                else:
                    y = codec.decode(codec.encode(x, n_q=codec.n_q_for_bitrate(kbps)))[..., : x.shape[-1]].float().cpu()[0]
                estimate = y[0].numpy()
                tag = "valid/ae" if kbps is None else f"valid/{kbps:g}kbps"
                finite = bool(np.isfinite(estimate).all())  # a diverged model: NaN scores, not a crash
                sums[f"{tag}/mel"].append(mel_distance(reference, estimate, sr) if finite else math.nan)
                sums[f"{tag}/si_sdr"].append(si_sdr(reference, estimate) if finite else math.nan)
                if self.cfg.train.valid_pesq:
                    sums[f"{tag}/pesq_wb"].append(pesq_wb(reference, estimate, sr) if finite else math.nan)
                if write_example and finite:
                    name = "ae" if kbps is None else f"{kbps:g}kbps"
                    write_audio(sample_dir / f"{utt}_{name}.wav", y, sr, overwrite=True)
        codec.train(was_training)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN metric (e.g. PESQ on silence)
            record = {k: float(np.nanmean(v)) for k, v in sums.items()}
        mels = [record[f"valid/{kbps:g}kbps/mel"] for kbps in self.cfg.train.valid_bitrates
                if f"valid/{kbps:g}kbps/mel" in record]
        # During the warm-up there is no codec yet: valid/mel stays NaN, so no "best" checkpoint is chosen.
        record["valid/mel"] = float(np.mean(mels)) if mels else float("nan")
        return record

    # ------------------------------------------------------------------------------------ the loop
    def _init_from(self, path: Path) -> None:
        """Start from the weights and codebooks of ``path``: a codec checkpoint (``codec.pt``) or a training
        checkpoint (``checkpoints/step_*.pt``, whose optimiser state is not used; its discriminators' weights are,
        when this run has the same discriminators, so that an adversarial fine-tune continues with trained ones).
        ValueError if its model config differs, other than in fields that only change how the model learns
        (:data:`rvqcodec.model.codec.TRAINING_ONLY_FIELDS`: e.g. fine-tuning with another gradient estimator). Its
        lineage, when it has one, is carried on."""
        from rvqcodec.model import Codec
        from rvqcodec.model.codec import (GROWN_FIELDS, adapt_state_dict, grown_fields, incompatible_fields,
                                          with_defaults)

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
        wanted = self.codec_config.to_dict()
        incompatible = incompatible_fields(config, wanted)
        if incompatible:
            raise ValueError(f"cannot start from {path}: its model config differs in {', '.join(incompatible)}")
        config = with_defaults(config)
        changed = sorted(k for k, v in wanted.items() if config.get(k) != v)
        state, adapted = adapt_state_dict(state, config, wanted)
        grown = tuple(GROWN_FIELDS[name] for name in grown_fields(config, wanted))
        missing, unexpected = self.codec_module.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(grown)] if grown else missing
        if missing or unexpected:
            raise ValueError(f"cannot start from {path}: its weights do not fit this model (missing "
                             f"{', '.join(missing[:3]) or 'none'}; unexpected {', '.join(unexpected[:3]) or 'none'})")
        self.lineage = Lineage.from_dict(lineage or {})
        disc_note = ""
        if disc_state is not None and self.disc is not None:
            own = self.disc_module.state_dict()
            if own.keys() == disc_state.keys() and all(own[k].shape == v.shape for k, v in disc_state.items()):
                self.disc_module.load_state_dict(disc_state)
                disc_note = " and discriminators"
            else:
                disc_note = " (its discriminators differ from this run's: they start afresh)"
        self._print(f"starting from the weights{disc_note} of {path} ({self.lineage.steps} steps, "
                    f"{self.lineage.audio_seconds / 3600:.1f} h of audio seen)"
                    + (f"; now training with other {', '.join(changed)}" if changed else "")
                    + (f" (adapted to it: {', '.join(adapted)})" if adapted else ""))

    def _resume(self) -> None:
        path = latest_checkpoint(self.run_dir)
        if path is not None:
            self.load_checkpoint(path)
            self._print(f"resumed from {path} at step {self.step}")
        else:
            self._print(f"train.resume=true but no checkpoint in {self.run_dir / CHECKPOINT_DIR}: starting fresh")

    def _start(self) -> None:
        """Write config.yaml, drop log records past the resumed step, start the trackers."""
        cfg = self.cfg
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
            self.log.truncate_after(self.step)
        self.accelerator.wait_for_everyone()
        if self.accelerator.log_with:
            try:
                hparams = None
                if not self._hparams_logged:  # once per Trainer, however often fit() is called
                    hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                               for k, v in flat_dict(config_to_dict(cfg)).items()}
                    self._hparams_logged = True
                self.accelerator.init_trackers("tensorboard", config=hparams)
            except Exception as exc:  # a broken tracker must not stop training
                self._print(f"note: TensorBoard logging disabled ({type(exc).__name__}: {exc})")

    def _codebooks_ready(self) -> bool:
        return all(layer.codebook.is_initialized() for layer in self.codec_module.quantizer.layers)

    def _initialize_codebooks(self) -> None:
        """k-means-initialise every RVQ stage (stage k from its own residuals) from the latents of
        ``train.kmeans_init_seconds`` of training crops, once the autoencoder warm-up (if any) is over, rather
        than lazily from the first batch: a CPU batch (8 × 1 s = 400 frames) holds fewer frames than codes, so
        stage 1 would memorise it and leave the later stages zero residuals; and with fewer than ~20 frames per
        code the later stages of a fresh model start mostly unused. Crops come from successive epochs of the
        training set (several per file when the files are fewer than the crops needed)."""
        seconds = self.cfg.train.kmeans_init_seconds
        codec = self.codec_module
        if seconds <= 0 or self._codebooks_ready():
            return
        started = time.perf_counter()
        n = max(1, math.ceil(seconds / self.cfg.data.segment_seconds))
        keys = [divmod(i, len(self.train_set)) for i in range(n)]
        clips = EpochIndexedClips(self.train_set)
        device = self.accelerator.device
        was_training = codec.training
        codec.eval()  # latents only: no codebook or statistic is touched
        with torch.no_grad():
            latents = torch.cat([codec.encode_latent(torch.stack([clips[key] for key in keys[i:i + 64]]).to(device))
                                 for i in range(0, n, 64)])
        codec.train()
        stages = codec.quantizer.initialize(latents)
        codec.train(was_training)
        self._print(f"initialised {stages} codebooks by k-means on the latents of {n} crops "
                    f"({n * self.cfg.data.segment_seconds:.0f} s, {latents.shape[0] * latents.shape[-1]} frames) "
                    f"in {time.perf_counter() - started:.0f} s")

    def _step_schedulers(self) -> None:
        """Advance the schedules once per step, also for skipped steps and before the discriminators start, so
        the learning rate is a function of the step alone."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
            self.sched_g.step()
            if self.sched_d is not None:
                self.sched_d.step()

    def _out_of_time(self, started: float, budget: float | None) -> bool:
        """Whether ``train.max_minutes`` has run out; every process gets the main process's answer."""
        if budget is None:
            return False
        if self.accelerator.num_processes == 1:  # no agreement needed: no device round trip
            return time.perf_counter() - started > budget
        flag = torch.tensor(float(time.perf_counter() - started > budget), device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="max").item() > 0)

    def fit(self, stop_after_step: int | None = None) -> dict[str, Any]:
        """Train to ``train.steps`` (or stop early after ``stop_after_step``, as an interruption would).

        May be called again to continue in the same process (``fit(stop_after_step=100)``, then ``fit()``): the
        result is bit-identical to a single call.

        Returns ``{"step", "last_train", "last_valid", "best_valid_mel", "skipped"}``.
        """
        from tqdm.auto import tqdm

        cfg = self.cfg
        self._start()
        last_train: dict[str, float] = {}
        last_valid: dict[str, float] = {}
        end = cfg.train.steps if stop_after_step is None else min(cfg.train.steps, stop_after_step)
        warmup = cfg.train.ae_warmup_steps
        batches = self._train_batches()
        bar = tqdm(total=cfg.train.steps, initial=self.step, disable=not (self.is_main and self.show_progress),
                   dynamic_ncols=True, desc="train")
        budget = None if cfg.train.max_minutes is None else cfg.train.max_minutes * 60.0
        fit_started = time.perf_counter()
        try:
            while self.step < end:
                if self.step >= warmup and not self._quantizing:
                    self._initialize_codebooks()
                    self._quantizing = True
                started = time.perf_counter()
                micro = [next(batches) for _ in range(cfg.train.grad_accum)]
                loaded = time.perf_counter()
                result = self.train_step(micro)
                self._step_schedulers()
                self.step += 1
                for key, value in result.metrics.items():
                    self._window[key].append(value)
                seconds = time.perf_counter() - started
                audio = self._audio_seconds_per_step
                self.lineage.add(audio, seconds, self._device_label)
                self._window["time/data_seconds"].append(loaded - started)
                self._window["time/step_seconds"].append(seconds)
                self._window["throughput/audio_seconds_per_second"].append(audio / seconds)
                bar.update(1)
                final = (self.step in (cfg.train.steps, cfg.train.stop_at_step)
                         or self._out_of_time(fit_started, budget))
                if self.step % cfg.train.log_every == 0 or final:
                    last_train = self._log_train()
                    bar.set_postfix(loss=f"{last_train.get('loss/generator', math.nan):.3f}",
                                    mel=f"{last_train.get('loss/mel', math.nan):.3f}",
                                    gnorm=f"{last_train.get('grad_norm/generator', math.nan):.2f}",
                                    n_q=f"{last_train.get('n_q', math.nan):.1f}", refresh=False)
                if self.step % cfg.train.valid_every == 0 or final:
                    last_valid = self.validate()
                    last_valid["lineage/audio_hours"] = self.lineage.audio_seconds / 3600.0  # training compute so far
                    last_valid["lineage/minutes"] = sum((self.lineage.minutes or {}).values())
                    self.accelerator.log(last_valid, step=self.step)
                    self.log.write({"step": self.step, "kind": "valid", **last_valid})
                    if self.is_main:
                        bar.write(f"step {self.step} validation: " + ", ".join(
                            f"{k.removeprefix('valid/')}={v:.3f}" for k, v in last_valid.items()), file=sys.stderr)
                    if last_valid["valid/mel"] < self.best_valid_mel:
                        self.best_valid_mel = last_valid["valid/mel"]
                        self.save_checkpoint(best=True)
                if self.step % cfg.train.ckpt_every == 0 or final:
                    self.save_checkpoint()
                if final:
                    break
        finally:
            batches.close()  # stops DataLoader workers
            bar.close()
            self.accelerator.end_training()  # flushes and closes the trackers
            self.accelerator.trackers = []  # a later fit() starts fresh ones (closed writers would reopen)
        return {"step": self.step, "last_train": last_train, "last_valid": last_valid,
                "best_valid_mel": self.best_valid_mel, "skipped": self.bad_total}
