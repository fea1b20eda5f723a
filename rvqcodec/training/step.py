"""One optimiser step of the generator (the codec) and, once adversarial training has started, the
discriminators (``train.grad_accum`` micro-batches of ``data.batch_size`` clips per process):

1. Generator: for every micro-batch, ``codec(x)`` and the loss
   ``Σ w·recon (mel, MR-STFT, L1) + w_commit·commit + w_codebook·codebook`` plus, once
   ``step >= loss.disc_start_step``, ``w_adv·adversarial + w_fm·feature matching`` against the current
   discriminators; gradients are accumulated, clipped and applied.
2. Discriminators (alternating, same step, only once adversarial training has started): real clips against the
   detached reconstructions of step 1, accumulated, clipped, applied. For the first ``loss.disc_warmup_steps`` of
   adversarial training only the discriminators learn (step 1 decodes without gradient or any update,
   :func:`frozen_generator_outputs`), so that they can tell a trained codec's output from real speech before the
   codec is trained against them.

A non-finite loss (or gradient) on any process skips the whole step: gradients are dropped and every model
buffer (EMA codebooks, statistics) is restored to its value before the step; :class:`StepResult` says what was
non-finite. Counting skipped steps (and stopping with :class:`TrainingDiverged`) is the caller's business.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from rvqcodec.training.config import TrainConfig

if TYPE_CHECKING:
    from rvqcodec.training.setup import TrainingModels


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


@dataclass
class StepResult:
    metrics: dict[str, float | torch.Tensor]  # python floats or 0-d device tensors (not read back per step)
    skipped: str | None = None  # what was non-finite ("loss", "gradient") when the update was skipped


def train_step(models: TrainingModels, cfg: TrainConfig, step: int, micro_batches: list[torch.Tensor]) -> StepResult:
    """Optimiser step ``step + 1`` (``step`` steps done) of the generator and (once started) the discriminators."""
    from rvqcodec.losses import discriminator_loss, feature_matching_loss, generator_adversarial_loss

    acc = models.accelerator
    w = cfg.loss
    accum = len(micro_batches)
    adversarial = models.disc is not None and step >= w.disc_start_step
    generator_frozen = adversarial and step < w.disc_start_step + w.disc_warmup_steps
    quantize = step >= cfg.train.ae_warmup_steps
    disc_raw = models.disc_module
    sample_rate = models.codec_module.sample_rate
    snapshot = [b.detach().clone() for b in models.codec_module.buffers()]
    sums: dict[str, torch.Tensor] = {}  # running means over micro-batches, on the device (no syncs)

    def add(name: str, value: torch.Tensor) -> None:
        value = value.detach().float() / accum
        sums[name] = sums[name] + value if name in sums else value

    losses, fakes = [], []
    n_q_total = 0.0
    models.codec.train()
    if models.disc is not None:
        models.disc.train()
    models.opt_g.zero_grad(set_to_none=True)
    if generator_frozen:
        fakes, n_q_total = frozen_generator_outputs(models, micro_batches, quantize, w.disc_segment_seconds)
    for i, x in enumerate(micro_batches if not generator_frozen else ()):
        sync = contextlib.nullcontext() if i == accum - 1 else acc.no_sync(models.codec)
        with sync:
            with acc.autocast():
                out = models.codec(x, quantize=quantize)
                if adversarial:
                    real_crop, fake_crop = disc_crops(x, out.audio, w.disc_segment_seconds, sample_rate)
                    fake_outputs = disc_raw(fake_crop)  # bare module: no DDP sync for these gradients
                    with torch.no_grad():
                        real_outputs = disc_raw(real_crop)
            terms = models.recon_loss(out.audio, x)
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
        if _any_bad(acc, losses):
            return _skip(models, snapshot, sums, "loss")
        g_norm = _clip(acc, models.codec, cfg.optim.grad_clip)
        if not bool(torch.isfinite(g_norm)) and acc.scaler is None:
            return _skip(models, snapshot, sums, "gradient")
        models.opt_g.step()  # under fp16 the grad scaler itself skips steps with overflowed gradients
        models.opt_g.zero_grad(set_to_none=True)
        sums["grad_norm/generator"] = g_norm.to(acc.device)

    if adversarial:
        models.opt_d.zero_grad(set_to_none=True)  # also drops what the generator loss left there
        d_losses = []
        for i, (x, fake) in enumerate(fakes):
            sync = contextlib.nullcontext() if i == accum - 1 else acc.no_sync(models.disc)
            with sync:
                with acc.autocast():
                    real_outputs = models.disc(x)
                    fake_outputs = models.disc(fake)
                d_loss = discriminator_loss(real_outputs, fake_outputs, kind=w.adv_kind)
                acc.backward(d_loss / accum)
            d_losses.append(d_loss.detach())
            add("loss/discriminator", d_loss)
        d_bad = _any_bad(acc, d_losses)
        d_norm = None if d_bad else _clip(acc, models.disc, cfg.optim.grad_clip)
        if d_bad or (not bool(torch.isfinite(d_norm)) and acc.scaler is None):
            sums["skipped/discriminator"] = torch.ones((), device=acc.device)
        else:
            models.opt_d.step()
            sums["grad_norm/discriminator"] = d_norm.to(acc.device)
        models.opt_d.zero_grad(set_to_none=True)
    metrics: dict[str, float | torch.Tensor] = dict(sums)  # device scalars: read at log time, not per step
    metrics["n_q"] = n_q_total
    return StepResult(metrics)


def disc_crops(real: torch.Tensor, fake: torch.Tensor, seconds: float | None,
               sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random crop of ``seconds`` (``loss.disc_segment_seconds``) from each real/generated pair
    ``(B, 1, T)`` (an offset per example), or both whole when it is unset or not shorter than ``T``."""
    length = real.shape[-1] if not seconds else int(round(seconds * sample_rate))
    if length >= real.shape[-1]:
        return real, fake
    offsets = torch.randint(0, real.shape[-1] - length + 1, (real.shape[0], 1, 1), device=real.device)
    index = offsets + torch.arange(length, device=real.device)
    return real.gather(-1, index), fake.gather(-1, index)


def frozen_generator_outputs(models: TrainingModels, micro_batches: list[torch.Tensor], quantize: bool,
                             crop_seconds: float | None) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], float]:
    """The discriminators' warm-up (``loss.disc_warmup_steps``): the codec decodes each micro-batch without
    learning anything (eval mode: no gradient, no codebook update, no statistics), at a prefix of stages drawn
    as quantizer dropout draws it, so the discriminators learn to tell real clips from every bitrate's output
    before the generator is trained against them. Returns the (real, decoded) crops and the mean stages."""
    codec = models.codec_module
    crops, n_q_total = [], 0.0
    codec.eval()
    try:
        with torch.no_grad(), models.accelerator.autocast():
            for x in micro_batches:
                n_q = codec.quantizer.sample_n_q(x.device) if quantize else None
                out = codec(x, n_q=n_q, quantize=quantize)
                crops.append(disc_crops(x, out.audio.float(), crop_seconds, codec.sample_rate))
                n_q_total += out.n_q / len(micro_batches)
    finally:
        codec.train()
    return crops, n_q_total


def _any_bad(accelerator, values: list[torch.Tensor]) -> bool:
    """True if any value on any process is non-finite (collective)."""
    local = torch.tensor(0.0 if all(bool(torch.isfinite(v).all()) for v in values) else 1.0,
                         device=accelerator.device)
    return float(accelerator.reduce(local, reduction="sum")) > 0


def _clip(accelerator, model: nn.Module, grad_clip: float | None) -> torch.Tensor:
    max_norm = grad_clip if grad_clip else float("inf")
    norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
    return torch.as_tensor(norm, dtype=torch.float32)


def _skip(models: TrainingModels, snapshot: list[torch.Tensor], sums: dict[str, torch.Tensor],
          what: str) -> StepResult:
    """Drop the step's gradients and restore every codec buffer; the finite metrics of the step, as floats."""
    models.opt_g.zero_grad(set_to_none=True)
    if models.opt_d is not None:
        models.opt_d.zero_grad(set_to_none=True)
    with torch.no_grad():
        for buf, saved in zip(models.codec_module.buffers(), snapshot):
            buf.copy_(saved)
    metrics = _to_floats(sums)
    return StepResult({k: v for k, v in metrics.items() if math.isfinite(v)}, skipped=what)


def _to_floats(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """Device scalars -> python floats with one transfer."""
    if not sums:
        return {}
    values = torch.stack([v.float().reshape(()) for v in sums.values()]).tolist()
    return dict(zip(sums, values))
