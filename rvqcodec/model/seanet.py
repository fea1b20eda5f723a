"""SEANet convolutional waveform encoder and its mirrored decoder (EnCodec / DAC family).

Encoder ``(B, 1, T) -> (B, latent_dim, ceil(T / hop))`` with ``hop = prod(strides)``::

    Conv(k=7, 1 -> C)
    for s, width in zip(strides, [C, 2C, 4C, ...]):
        residual units at `width` (dilations 1, 3, 9)
        ELU -> Conv(k=2s, stride=s, width -> 2 * width)          # downsample
    ELU -> Conv(k=7, C * 2**len(strides) -> latent_dim)

Decoder ``(B, latent_dim, F) -> (B, 1, F * hop)``, the mirror image::

    Conv(k=7, latent_dim -> C * 2**len(strides))
    for s in reversed(strides):
        ELU -> ConvTranspose(k=2s, stride=s, width -> width // 2)  # upsample
        residual units at width // 2
    ELU -> Conv(k=7, C -> 1)

Design choices (see docs/models.md): ELU activations (cheap on CPU; Snake was not used), weight
normalisation on every convolution, non-causal centred padding, no LSTM, and *no* output tanh -- the
decoder output is linear so the reconstruction losses see an unsquashed signal; ``Codec.decode`` clamps to
``[-1, 1]`` for playback/writing.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from rvqcodec.model.layers import WNConv1d, WNConvTranspose1d, residual_stack


def _checked_strides(channels: int, strides: Sequence[int], latent_dim: int, n_residual_units: int) -> tuple[int, ...]:
    """The strides as a tuple of ints, after checking the shared encoder/decoder arguments (ValueError)."""
    if channels < 1 or latent_dim < 1:
        raise ValueError(f"channels and latent_dim must be >= 1, got {channels} and {latent_dim}")
    if not strides or any(int(s) < 1 for s in strides):
        raise ValueError(f"strides must be a non-empty sequence of positive ints, got {tuple(strides)}")
    if n_residual_units < 0:
        raise ValueError(f"n_residual_units must be >= 0, got {n_residual_units}")
    return tuple(int(s) for s in strides)


class SEANetEncoder(nn.Module):
    """Waveform -> latent frames. ``(B, 1, T) -> (B, latent_dim, ceil(T / hop_length))``, any ``T >= 1``."""

    def __init__(self, channels: int = 32, strides: Sequence[int] = (2, 4, 5, 8), latent_dim: int = 128,
                 n_residual_units: int = 3, kernel_size: int = 7, residual_kernel_size: int = 7,
                 compress: int = 2):
        super().__init__()
        self.strides = _checked_strides(channels, strides, latent_dim, n_residual_units)
        self.hop_length = math.prod(self.strides)
        layers: list[nn.Module] = [WNConv1d(1, channels, kernel_size)]
        width = channels
        for stride in self.strides:
            layers += [
                residual_stack(width, n_residual_units, residual_kernel_size, compress),
                nn.ELU(),
                WNConv1d(width, 2 * width, kernel_size=2 * stride, stride=stride),
            ]
            width *= 2
        layers += [nn.ELU(), WNConv1d(width, latent_dim, kernel_size)]
        self.model = nn.Sequential(*layers)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"expected mono audio of shape (B, 1, T), got {tuple(wav.shape)}")
        return self.model(wav)


class SEANetDecoder(nn.Module):
    """Latent frames -> waveform. ``(B, latent_dim, F) -> (B, 1, F * hop_length)``, linear output (no tanh)."""

    def __init__(self, channels: int = 32, strides: Sequence[int] = (2, 4, 5, 8), latent_dim: int = 128,
                 n_residual_units: int = 3, kernel_size: int = 7, residual_kernel_size: int = 7,
                 compress: int = 2):
        super().__init__()
        self.strides = _checked_strides(channels, strides, latent_dim, n_residual_units)
        self.hop_length = math.prod(self.strides)
        width = channels * 2 ** len(self.strides)
        layers: list[nn.Module] = [WNConv1d(latent_dim, width, kernel_size)]
        for stride in reversed(self.strides):
            layers += [
                nn.ELU(),
                WNConvTranspose1d(width, width // 2, kernel_size=2 * stride, stride=stride),
                residual_stack(width // 2, n_residual_units, residual_kernel_size, compress),
            ]
            width //= 2
        layers += [nn.ELU(), WNConv1d(width, 1, kernel_size)]
        self.model = nn.Sequential(*layers)
        self.latent_dim = latent_dim

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        if latent.dim() != 3 or latent.shape[1] != self.latent_dim:
            raise ValueError(f"expected latents of shape (B, {self.latent_dim}, F), got {tuple(latent.shape)}")
        return self.model(latent)
