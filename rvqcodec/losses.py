"""Training losses: reconstruction (multi-resolution STFT, multi-scale mel, time-domain L1) and adversarial
(discriminator, generator, feature matching).

Conventions: every function takes ``(estimate, target)`` in that order, audio is ``(B, 1, T)`` and every loss is a
scalar averaged over the batch. Spectral losses run in float32 with autocast disabled whatever the input dtype.
Discriminator outputs are the lists returned by :class:`rvqcodec.model.discriminators.Discriminators`:
``[(logits, [feature maps]), ...]``, one entry per sub-discriminator.

Adversarial losses are averaged over sub-discriminators (so their scale does not depend on how many there are):

* ``kind="hinge"`` (EnCodec): D: ``mean(relu(1 - D(x))) + mean(relu(1 + D(x̂)))``; G: ``mean(relu(1 - D(x̂)))``.
* ``kind="lsgan"`` (HiFi-GAN / DAC): D: ``mean((1 - D(x))²) + mean(D(x̂)²)``; G: ``mean((1 - D(x̂))²)``.

Feature matching is EnCodec's *relative* L1: for every hidden layer, ``mean|f(x) - f(x̂)| / mean|f(x)|``
(real features detached), averaged over all layers of all sub-discriminators. It is scale-free, so every layer
counts the same whatever its activation magnitude.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar, Sequence

import auraloss
import torch
import torchaudio
from torch import nn
from torch.nn import functional as F

from rvqcodec.dicts import DictConfig

DiscriminatorOutputs = Sequence[tuple[torch.Tensor, Sequence[torch.Tensor]]]
ADVERSARIAL_KINDS = ("hinge", "lsgan")


def _float32(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.float() for t in tensors]


def _no_autocast(x: torch.Tensor):
    if x.device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=x.device.type, enabled=False)
    return contextlib.nullcontext()


def _check_pair(estimate: torch.Tensor, target: torch.Tensor) -> None:
    if estimate.shape != target.shape:
        raise ValueError(f"estimate and target shapes differ: {tuple(estimate.shape)} vs {tuple(target.shape)}")
    if estimate.dim() != 3:
        raise ValueError(f"expected audio of shape (B, C, T), got {tuple(estimate.shape)}")


# ---------------------------------------------------------------------------------------------- reconstruction
def l1_loss(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Time-domain mean absolute error. Zero iff the signals are equal."""
    _check_pair(estimate, target)
    return F.l1_loss(estimate, target)


class _MagnitudeSTFTLoss(auraloss.freq.STFTLoss):
    """``auraloss.freq.STFTLoss`` without the phase: auraloss computes ``torch.angle`` of both spectrograms on
    every call even when no phase term is weighted, about a quarter of the multi-resolution loss's CPU time
    (docs/training.md, decision 1). Same values and gradients (the phase never entered them)."""

    def stft(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        spec = torch.stft(x, self.fft_size, self.hop_size, self.win_length, self.window, return_complex=True)
        return torch.sqrt(torch.clamp(spec.real ** 2 + spec.imag ** 2, min=self.eps)), None


class MultiResolutionSTFTLoss(nn.Module):
    """Multi-resolution STFT loss: auraloss's spectral convergence + log-magnitude L1, averaged over resolutions
    (the value of ``auraloss.freq.MultiResolutionSTFTLoss``, at about 3/4 of its cost: :class:`_MagnitudeSTFTLoss`)
    with speech-at-16-kHz defaults: FFT sizes 2048..128, window = FFT size, hop a quarter of it. Zero for
    identical signals. Input ``(B, 1, T)``; ``T`` should exceed the largest FFT size.
    """

    def __init__(self, fft_sizes: Sequence[int] = (2048, 1024, 512, 256, 128), hop_fraction: float = 0.25,
                 w_sc: float = 1.0, w_log_mag: float = 1.0, w_lin_mag: float = 0.0):
        super().__init__()
        fft_sizes = [int(n) for n in fft_sizes]
        if not fft_sizes or min(fft_sizes) < 2:
            raise ValueError(f"fft_sizes must be a non-empty list of sizes >= 2, got {fft_sizes}")
        self.min_length = max(fft_sizes) // 2  # torch.stft's reflect padding needs T > n_fft / 2
        self.resolutions = nn.ModuleList(
            _MagnitudeSTFTLoss(fft_size=n, hop_size=max(1, int(n * hop_fraction)), win_length=n, w_sc=w_sc,
                               w_log_mag=w_log_mag, w_lin_mag=w_lin_mag)
            for n in fft_sizes)

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(estimate, target)
        if estimate.shape[-1] <= self.min_length:
            raise ValueError(f"MultiResolutionSTFTLoss needs more than {self.min_length} samples "
                             f"(half the largest FFT size), got {estimate.shape[-1]}")
        with _no_autocast(estimate):
            estimate, target = _float32(estimate, target)
            return sum(loss(estimate, target) for loss in self.resolutions) / len(self.resolutions)


class MultiScaleMelLoss(nn.Module):
    """DAC-style multi-scale mel loss: L1 between ``log10(clamp(mel, 1e-5))`` of estimate and target for several
    window sizes (mel magnitude spectrogram, Hann window, hop = window / 4, ``n_mels`` bands each), averaged
    over scales. Zero for identical signals. Input ``(B, 1, T)`` at ``sample_rate``.
    """

    def __init__(self, sample_rate: int = 16000, window_lengths: Sequence[int] = (32, 64, 128, 256, 512, 1024, 2048),
                 n_mels: Sequence[int] = (5, 10, 20, 40, 80, 160, 320), clamp_min: float = 1e-5):
        super().__init__()
        if len(window_lengths) != len(n_mels) or not window_lengths:
            raise ValueError(f"window_lengths and n_mels must be non-empty and of equal length, got "
                             f"{list(window_lengths)} and {list(n_mels)}")
        self.clamp_min = clamp_min
        self.transforms = nn.ModuleList(
            torchaudio.transforms.MelSpectrogram(
                sample_rate=sample_rate, n_fft=int(w), win_length=int(w), hop_length=max(1, int(w) // 4),
                n_mels=int(m), power=1.0, center=True, pad_mode="constant", norm="slaney", mel_scale="slaney")
            for w, m in zip(window_lengths, n_mels))

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(estimate, target)
        with _no_autocast(estimate):
            estimate, target = _float32(estimate, target)
            total = estimate.new_zeros(())
            for mel in self.transforms:
                est = torch.log10(mel(estimate).clamp_min(self.clamp_min))
                ref = torch.log10(mel(target).clamp_min(self.clamp_min))
                total = total + F.l1_loss(est, ref)
            return total / len(self.transforms)


class CompressedSTFTLoss(nn.Module):
    """Power-law-compressed complex STFT loss (ESC, Gu & Diao 2024): for several resolutions, the mean over
    bins of ``|Ŷc - Xc|²`` with ``Xc = |X|^c · X / |X|`` (magnitude compressed, phase kept), averaged over
    resolutions. ``c = 0.3`` flattens the dynamic range as loudness does, so quiet bins count, and the complex
    difference makes the phase (hence the waveform) matter, which magnitude losses ignore. Hann windows of each
    FFT size, hop a quarter of it. Zero for identical signals. Input ``(B, 1, T)``.
    """

    def __init__(self, fft_sizes: Sequence[int] = (320, 640, 1280), compress: float = 0.3, eps: float = 1e-8):
        super().__init__()
        self.fft_sizes = [int(n) for n in fft_sizes]
        if not self.fft_sizes or min(self.fft_sizes) < 4:
            raise ValueError(f"fft_sizes must be a non-empty list of sizes >= 4, got {self.fft_sizes}")
        self.compress = compress
        self.eps = eps
        for n in self.fft_sizes:
            self.register_buffer(f"window_{n}", torch.hann_window(n), persistent=False)

    def compressed(self, x: torch.Tensor, n_fft: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 1, T)`` -> real and imaginary parts of ``Xc``, each ``(B, n_fft // 2 + 1, frames)``."""
        spec = torch.stft(x.reshape(-1, x.shape[-1]), n_fft, hop_length=n_fft // 4,
                          window=getattr(self, f"window_{n_fft}"), center=True, return_complex=True)
        re, im = spec.real, spec.imag  # real arithmetic: cheaper than complex abs/pow on a CPU
        scale = (re * re + im * im + self.eps).pow(0.5 * (self.compress - 1.0))  # |X|^(c-1)
        return re * scale, im * scale

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(estimate, target)
        with _no_autocast(estimate):
            estimate, target = _float32(estimate, target)
            total = estimate.new_zeros(())
            for n in self.fft_sizes:
                with torch.no_grad():
                    ref_re, ref_im = self.compressed(target, n)
                est_re, est_im = self.compressed(estimate, n)
                total = total + ((est_re - ref_re).square() + (est_im - ref_im).square()).mean()
            return total / len(self.fft_sizes)


@dataclass
class ReconstructionLossConfig(DictConfig):
    """Weights and settings of :class:`ReconstructionLoss`. A weight of 0 skips the term entirely. These weights'
    defaults are the training recipes' (``rvqcodec.training.config.LossConfig`` reads them from here)."""

    dict_name: ClassVar[str] = "reconstruction loss"

    l1_weight: float = 0.0
    mrstft_weight: float = 1.0
    mel_weight: float = 15.0
    complex_weight: float = 0.0
    sample_rate: int = 16000
    stft_fft_sizes: tuple[int, ...] = (2048, 1024, 512, 256, 128)
    mel_window_lengths: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048)
    mel_n_mels: tuple[int, ...] = (5, 10, 20, 40, 80, 160, 320)
    complex_fft_sizes: tuple[int, ...] = (320, 640, 1280)

    def __post_init__(self) -> None:
        self.stft_fft_sizes = tuple(int(n) for n in self.stft_fft_sizes)
        self.complex_fft_sizes = tuple(int(n) for n in self.complex_fft_sizes)
        self.mel_window_lengths = tuple(int(n) for n in self.mel_window_lengths)
        self.mel_n_mels = tuple(int(n) for n in self.mel_n_mels)
        weights = {"l1_weight": self.l1_weight, "mrstft_weight": self.mrstft_weight, "mel_weight": self.mel_weight,
                   "complex_weight": self.complex_weight}
        negative = [k for k, v in weights.items() if v < 0]
        if negative:
            raise ValueError(f"loss weights must be >= 0: {', '.join(negative)}")
        if not any(weights.values()):
            raise ValueError("at least one reconstruction loss weight must be > 0")



class ReconstructionLoss(nn.Module):
    """Weighted sum of time-domain L1, multi-resolution STFT, multi-scale mel and compressed complex STFT losses.

    ``forward(estimate, target) -> {"l1": ..., "mrstft": ..., "mel": ..., "complex": ..., "total": ...}``: the
    unweighted terms
    (only those with a weight > 0) and ``total = Σ weight · term``, all scalar tensors.
    """

    def __init__(self, config: ReconstructionLossConfig | None = None):
        super().__init__()
        self.config = config if config is not None else ReconstructionLossConfig()
        c = self.config
        self.weights = {"l1": c.l1_weight, "mrstft": c.mrstft_weight, "mel": c.mel_weight, "complex": c.complex_weight}
        self.mrstft = MultiResolutionSTFTLoss(c.stft_fft_sizes) if c.mrstft_weight > 0 else None
        self.mel = MultiScaleMelLoss(c.sample_rate, c.mel_window_lengths, c.mel_n_mels) if c.mel_weight > 0 else None
        self.complex = CompressedSTFTLoss(c.complex_fft_sizes) if c.complex_weight > 0 else None

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_pair(estimate, target)
        terms: dict[str, torch.Tensor] = {}
        if self.weights["l1"] > 0:
            terms["l1"] = l1_loss(estimate, target)
        if self.mrstft is not None:
            terms["mrstft"] = self.mrstft(estimate, target)
        if self.mel is not None:
            terms["mel"] = self.mel(estimate, target)
        if self.complex is not None:
            terms["complex"] = self.complex(estimate, target)
        terms["total"] = sum(self.weights[name] * value.float() for name, value in terms.items())
        return terms


# ---------------------------------------------------------------------------------------------- adversarial
def _check_kind(kind: str) -> None:
    if kind not in ADVERSARIAL_KINDS:
        raise ValueError(f"unknown adversarial loss kind {kind!r}; choose from {', '.join(ADVERSARIAL_KINDS)}")


def _check_outputs(*outputs: DiscriminatorOutputs) -> None:
    for out in outputs:
        if len(out) == 0:
            raise ValueError("discriminator outputs are empty")
    if len(outputs) == 2 and len(outputs[0]) != len(outputs[1]):
        raise ValueError(f"real and fake outputs come from different discriminators "
                         f"({len(outputs[0])} vs {len(outputs[1])} entries)")


def discriminator_loss(real_outputs: DiscriminatorOutputs, fake_outputs: DiscriminatorOutputs,
                       kind: str = "hinge") -> torch.Tensor:
    """Discriminator loss, averaged over sub-discriminators (see the module docstring for the formulas).

    Pass ``fake_outputs`` computed on detached generator audio."""
    _check_kind(kind)
    _check_outputs(real_outputs, fake_outputs)
    total = 0.0
    for (real, _), (fake, _) in zip(real_outputs, fake_outputs):
        real, fake = real.float(), fake.float()
        if kind == "hinge":
            total = total + F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        else:
            total = total + (1 - real).pow(2).mean() + fake.pow(2).mean()
    return total / len(real_outputs)


def generator_adversarial_loss(fake_outputs: DiscriminatorOutputs, kind: str = "hinge") -> torch.Tensor:
    """Generator's adversarial loss on the discriminators' outputs for generated audio, averaged over
    sub-discriminators: hinge ``mean(relu(1 - D(x̂)))``, lsgan ``mean((1 - D(x̂))²)``."""
    _check_kind(kind)
    _check_outputs(fake_outputs)
    total = 0.0
    for fake, _ in fake_outputs:
        fake = fake.float()
        total = total + (F.relu(1 - fake).mean() if kind == "hinge" else (1 - fake).pow(2).mean())
    return total / len(fake_outputs)


def feature_matching_loss(real_outputs: DiscriminatorOutputs, fake_outputs: DiscriminatorOutputs,
                          eps: float = 1e-8) -> torch.Tensor:
    """Relative L1 feature matching: mean over every hidden layer of every sub-discriminator of
    ``mean|f_real - f_fake| / (mean|f_real| + eps)``, with the real features detached. Zero iff the features
    are equal."""
    _check_outputs(real_outputs, fake_outputs)
    total, count = 0.0, 0
    for (_, real_feats), (_, fake_feats) in zip(real_outputs, fake_outputs):
        if len(real_feats) != len(fake_feats):
            raise ValueError(f"feature map lists differ in length ({len(real_feats)} vs {len(fake_feats)})")
        for real, fake in zip(real_feats, fake_feats):
            real = real.detach().float()
            total = total + F.l1_loss(fake.float(), real) / (real.abs().mean() + eps)
            count += 1
    if count == 0:
        raise ValueError("discriminator outputs carry no feature maps")
    return total / count
