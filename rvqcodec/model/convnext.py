"""ConvNeXt blocks for 1-D sequences of frames (Vocos / ConvNeXt-V1 style), causal or not.

A block maps ``(B, C, F) -> (B, C, F)`` (channel-first frames, e.g. 50 frames/s)::

    y = DepthwiseConv(k)(x)                # mixes neighbouring frames, one filter per channel
    y = LayerNorm(y) over channels         # per frame: no statistics across time (chunking-safe)
    y = Linear(C -> r·C) -> GELU -> Linear(r·C -> C)
    x + γ ⊙ y                              # γ: per-channel layer scale, small at init

``causal=True`` pads the depthwise convolution on the left only, so frame ``t`` depends on frames ``<= t``
and a stack of blocks is streamable frame by frame; otherwise the padding is centred (``(k - 1) / 2`` frames
each side). Nothing else in the block looks across time.

**Streaming** (causal only): :class:`rvqcodec.model.frame_by_frame.FrameStack` runs a causal stack one frame at
a time, each convolution reading a window of its last ``k`` input frames (zeros at the start: this padding).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ConvNeXtBlock(nn.Module):
    """One ConvNeXt block on ``(B, dim, F)`` frames (see the module docstring).

    Args:
        dim: channels C.
        mlp_ratio: hidden width of the pointwise MLP as a multiple of ``dim``.
        kernel_size: depthwise kernel in frames (odd when not causal).
        causal: left-only padding (frame t sees frames t - k + 1 .. t).
        layer_scale: initial value of γ (None: no layer scale).
    """

    def __init__(self, dim: int, mlp_ratio: float = 3.0, kernel_size: int = 7, causal: bool = False,
                 layer_scale: float | None = 1e-2):
        super().__init__()
        if dim < 1 or kernel_size < 1 or mlp_ratio <= 0:
            raise ValueError(f"dim and kernel_size must be >= 1 and mlp_ratio > 0, got {dim}, {kernel_size}, {mlp_ratio}")
        if not causal and kernel_size % 2 == 0:
            raise ValueError(f"a non-causal block needs an odd kernel_size, got {kernel_size}")
        hidden = max(1, round(dim * mlp_ratio))
        self.causal = causal
        self.padding = (kernel_size - 1, 0) if causal else (0, 0)  # centred: done by the convolution itself
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, groups=dim, padding=0 if causal else (kernel_size - 1) // 2)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, hidden)
        self.pwconv2 = nn.Linear(hidden, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale))) if layer_scale is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(F.pad(x, self.padding) if self.causal else x)
        y = y.transpose(1, 2)  # (B, F, C)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y)), approximate="tanh"))
        if self.gamma is not None:
            y = y * self.gamma
        return x + y.transpose(1, 2)


class ConvNeXtStack(nn.Module):
    """``in_dim -> dim`` projection, ``n_blocks`` ConvNeXt blocks, a final LayerNorm and a ``dim -> out_dim``
    projection. ``(B, in_dim, F) -> (B, out_dim, F)``; ``out_dim=None`` keeps ``dim`` channels.

    The input projection is a causal or centred convolution of ``in_kernel`` frames (1: a per-frame linear map).
    Receptive field: ``in_kernel - 1 + n_blocks · (kernel_size - 1)`` frames in all (all on the left when causal,
    split evenly otherwise).
    """

    def __init__(self, in_dim: int, dim: int, n_blocks: int, out_dim: int | None = None, mlp_ratio: float = 3.0,
                 kernel_size: int = 7, causal: bool = False, in_kernel: int = 1):
        super().__init__()
        if n_blocks < 0:
            raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
        if not causal and in_kernel % 2 == 0:
            raise ValueError(f"a non-causal stack needs an odd in_kernel, got {in_kernel}")
        self.in_padding = (in_kernel - 1, 0) if causal else ((in_kernel - 1) // 2,) * 2
        self.proj_in = nn.Conv1d(in_dim, dim, in_kernel)
        self.norm_in = nn.LayerNorm(dim, eps=1e-6)
        scale = 1.0 / max(1, n_blocks)  # Vocos: layer scale 1 / depth
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim, mlp_ratio, kernel_size, causal, layer_scale=scale)
                                    for _ in range(n_blocks))
        self.norm_out = nn.LayerNorm(dim, eps=1e-6)
        self.proj_out = nn.Linear(dim, out_dim) if out_dim is not None else nn.Identity()
        self.causal = causal
        self.receptive_field = in_kernel - 1 + n_blocks * (kernel_size - 1)
        """Frames of context in all (left only when causal)."""

    def forward(self, x: torch.Tensor, film: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``film``: optional ``(scale, shift)``, each ``(dim,)``, applied to every frame after the input
        projection and its LayerNorm as ``x · (1 + scale) + shift`` (a conditioning, e.g. on the bitrate)."""
        x = self.proj_in(F.pad(x, self.in_padding))
        x = self.norm_in(x.transpose(1, 2)).transpose(1, 2)
        if film is not None:
            scale, shift = film
            x = x * (1.0 + scale)[:, None] + shift[:, None]
        for block in self.blocks:
            x = block(x)
        return self.proj_out(self.norm_out(x.transpose(1, 2))).transpose(1, 2)
