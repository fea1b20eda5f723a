"""Weight-normalised convolution layers and the dilated residual unit of the SEANet encoder/decoder.

All layers work on channel-first audio-rate tensors ``(B, C, T)``. Padding is non-causal (centred) and
computed inside the layer so that:

* a stride-1 convolution keeps the length: ``T -> T``;
* a stride-``s`` convolution gives ``ceil(T / s)`` frames for *any* ``T`` (the input is padded on the right
  with the few extra zeros needed, as EnCodec does);
* a stride-``s`` transposed convolution gives exactly ``T * s`` samples.

Weight normalisation uses ``torch.nn.utils.parametrizations.weight_norm`` (state-dict keys
``...parametrizations.weight.original0`` / ``original1``).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm


class WNConv1d(nn.Module):
    """Weight-normalised ``Conv1d`` with centred padding.

    Shapes: ``(B, in_channels, T) -> (B, out_channels, ceil(T / stride))``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1, bias: bool = True):
        super().__init__()
        if kernel_size < stride:
            raise ValueError(f"kernel_size ({kernel_size}) must be >= stride ({stride})")
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        # Stride 1 with an even padding total (odd kernels): let the convolution pad, saving a copy.
        self.builtin_padding = stride == 1 and (dilation * (kernel_size - 1)) % 2 == 0
        padding = dilation * (kernel_size - 1) // 2 if self.builtin_padding else 0
        self.conv = weight_norm(nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride,
                                          dilation=dilation, padding=padding, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.builtin_padding:
            return self.conv(x)
        length = x.shape[-1]
        effective_kernel = self.dilation * (self.kernel_size - 1) + 1
        # Padding for "same" length at stride 1, generalised to "ceil(T / stride)" frames at stride s.
        n_frames = math.ceil(length / self.stride)
        total = max(0, (n_frames - 1) * self.stride + effective_kernel - length)
        left = (effective_kernel - self.stride) // 2 if self.stride > 1 else total // 2
        left = min(left, total)
        return self.conv(F.pad(x, (left, total - left)))


class WNConvTranspose1d(nn.Module):
    """Weight-normalised ``ConvTranspose1d`` that upsamples by exactly ``stride``.

    Shapes: ``(B, in_channels, T) -> (B, out_channels, T * stride)``. The ``kernel_size - stride`` surplus
    samples produced by the transposed convolution are trimmed, half on each side (non-causal).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, bias: bool = True):
        super().__init__()
        if kernel_size < stride:
            raise ValueError(f"kernel_size ({kernel_size}) must be >= stride ({stride})")
        self.stride = stride
        self.trim = kernel_size - stride
        self.conv = weight_norm(nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride=stride,
                                                   bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        left = self.trim // 2
        return y[..., left:y.shape[-1] - (self.trim - left)]


class ResidualUnit(nn.Module):
    """SEANet residual unit: ``x + Conv1x1(ELU(DilatedConv(ELU(x))))``.

    The dilated convolution maps ``channels -> channels // compress`` (a bottleneck as in EnCodec) and the
    1x1 convolution maps back. Shapes: ``(B, channels, T) -> (B, channels, T)``.
    """

    def __init__(self, channels: int, dilation: int, kernel_size: int = 7, compress: int = 2):
        super().__init__()
        hidden = max(1, channels // compress)
        self.block = nn.Sequential(
            nn.ELU(),
            WNConv1d(channels, hidden, kernel_size, dilation=dilation),
            nn.ELU(),
            WNConv1d(hidden, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def residual_stack(channels: int, n_units: int, kernel_size: int, compress: int) -> nn.Sequential:
    """``n_units`` residual units with dilations 1, 3, 9, ... (``3 ** i``) at a fixed width."""
    return nn.Sequential(*[ResidualUnit(channels, 3 ** i, kernel_size, compress) for i in range(n_units)])
