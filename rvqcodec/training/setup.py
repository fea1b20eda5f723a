"""Setting up what a run trains: the learning-rate schedule, the Accelerate accelerator, the codec, its
discriminators, the reconstruction loss, the optimisers and schedules (:class:`TrainingModels`), and the
k-means initialisation of the codebooks from training crops.
"""
from __future__ import annotations

import math
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rvqcodec.training.config import TrainConfig
from rvqcodec.training.sampling import EpochIndexedClips

# --------------------------------------------------------------------------------------------- schedules


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


def lr_lambda(cfg: TrainConfig):
    """The schedule as a plain function for LambdaLR (so its state_dict holds no config; it is rebuilt from the
    config on resume)."""

    def factor(step: int) -> float:
        return lr_factor(step, cfg)

    return factor


# --------------------------------------------------------------------------------------------- models


def make_accelerator(cfg: TrainConfig, codec: nn.Module):
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
class TrainingModels:
    """The networks of a run as Accelerate prepared them (``codec``/``disc`` may be wrapped for distributed
    training; ``codec_module``/``disc_module`` are the bare ones), their optimisers and schedules, and the
    reconstruction loss. The discriminator parts are None when the losses use no discriminator."""

    accelerator: Any
    codec: nn.Module
    disc: nn.Module | None
    recon_loss: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer | None
    sched_g: torch.optim.lr_scheduler.LambdaLR
    sched_d: torch.optim.lr_scheduler.LambdaLR | None

    @property
    def codec_module(self):
        """The bare :class:`~rvqcodec.model.Codec` (not wrapped for distributed training)."""
        return self.accelerator.unwrap_model(self.codec)

    @property
    def disc_module(self):
        return None if self.disc is None else self.accelerator.unwrap_model(self.disc)

    def step_schedulers(self) -> None:
        """Advance the schedules once per step, also for skipped steps and before the discriminators start, so
        the learning rate is a function of the step alone."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
            self.sched_g.step()
            if self.sched_d is not None:
                self.sched_d.step()

    def learning_rates(self) -> dict[str, float]:
        out = {"lr/generator": self.sched_g.get_last_lr()[0]}
        if self.sched_d is not None:
            out["lr/discriminator"] = self.sched_d.get_last_lr()[0]
        return out


def build_models(cfg: TrainConfig) -> TrainingModels:
    """A fresh codec (``cfg.codec_config``; its validation bitrates checked before Accelerate is set up:
    ValueError listing the valid ones), discriminators (``cfg.disc_config``) when the losses use them, the
    reconstruction loss, AdamW optimisers with the :func:`lr_factor` schedule, all prepared by Accelerate."""
    from rvqcodec.losses import ReconstructionLoss
    from rvqcodec.model import Codec
    from rvqcodec.model.discriminators import Discriminators

    codec = Codec(cfg.codec_config)
    for kbps in cfg.train.valid_bitrates:
        codec.n_q_for_bitrate(kbps)  # ValueError listing the valid bitrates
    disc = Discriminators(cfg.disc_config) if cfg.loss.uses_discriminator else None
    recon_loss = ReconstructionLoss(cfg.loss.reconstruction(codec.sample_rate))

    acc = make_accelerator(cfg, codec)
    o = cfg.optim
    opt_g = torch.optim.AdamW(codec.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, lr_lambda(cfg))
    opt_d = sched_d = None
    if disc is not None:
        opt_d = torch.optim.AdamW(disc.parameters(), lr=o.disc_lr or o.lr, betas=tuple(o.betas),
                                  weight_decay=o.weight_decay)
        sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, lr_lambda(cfg))
    with warnings.catch_warnings():
        # DDP deprecates broadcast_buffers=False in favour of forward_sync_buffers, which accelerate does not
        # expose yet; the behaviour (no per-forward buffer sync) is the one wanted here.
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        if disc is not None:
            codec, disc, opt_g, opt_d = acc.prepare(codec, disc, opt_g, opt_d)
        else:
            codec, opt_g = acc.prepare(codec, opt_g)
    recon_loss.to(acc.device)
    return TrainingModels(acc, codec, disc, recon_loss, opt_g, opt_d, sched_g, sched_d)


# --------------------------------------------------------------------------------------------- codebooks


def codebooks_ready(codec) -> bool:
    """Whether every RVQ stage of ``codec`` has its codebook initialised."""
    return all(layer.codebook.is_initialized() for layer in codec.quantizer.layers)


def initialize_codebooks(codec, train_set, seconds: float, segment_seconds: float,
                         device: torch.device) -> str | None:
    """k-means-initialise every RVQ stage (stage k from its own residuals) from the latents of ``seconds`` of
    training crops (``train.kmeans_init_seconds``), once the autoencoder warm-up (if any) is over, rather than
    lazily from the first batch: a CPU batch (8 × 1 s = 400 frames) holds fewer frames than codes, so stage 1
    would memorise it and leave the later stages zero residuals; and with fewer than ~20 frames per code the later
    stages of a fresh model start mostly unused. Crops come from successive epochs of the training set (several
    per file when the files are fewer than the crops needed). Returns a one-line report, or None when there was
    nothing to do (``seconds <= 0`` or the codebooks are initialised already)."""
    if seconds <= 0 or codebooks_ready(codec):
        return None
    started = time.perf_counter()
    n = max(1, math.ceil(seconds / segment_seconds))
    keys = [divmod(i, len(train_set)) for i in range(n)]
    clips = EpochIndexedClips(train_set)
    was_training = codec.training
    codec.eval()  # latents only: no codebook or statistic is touched
    with torch.no_grad():
        latents = torch.cat([codec.encode_latent(torch.stack([clips[key] for key in keys[i:i + 64]]).to(device))
                             for i in range(0, n, 64)])
    codec.train()
    stages = codec.quantizer.initialize(latents)
    codec.train(was_training)
    return (f"initialised {stages} codebooks by k-means on the latents of {n} crops "
            f"({n * segment_seconds:.0f} s, {latents.shape[0] * latents.shape[-1]} frames) "
            f"in {time.perf_counter() - started:.0f} s")
