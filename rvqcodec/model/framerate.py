"""The frame-rate codec family: every learned layer runs at the latent frame rate (50 frames/s by default).

Encoder ``(B, 1, T) -> (B, latent_dim, ceil(T / hop))``::

    STFTFeatures(stem_n_fft, hop)            # log-magnitude + compressed complex spectrum per frame
    ConvNeXtStack(3·bins -> dim, n blocks -> latent_dim)

Decoder ``(B, latent_dim, F) -> (B, 1, F·hop)``::

    ConvNeXtStack(latent_dim -> dim, n blocks)   # optionally told how many RVQ stages made its input (n_rates)
    ISTFTHead(dim, head_n_fft, hop)          # log-magnitude + phase -> inverse STFT (overlap-add)

Their sizes have no defaults here: a :class:`rvqcodec.model.codec.CodecConfig` (its presets) is the one place
that binds them.

Compared with SEANet (strided convolutions up to the sample rate), no layer runs at 16 kHz: the cost per
second of audio is that of ~50 frames through a few small matrix products, which is what makes the family fast
on a CPU, and Vocos-style spectral heads converge quickly. ``causal=True`` makes every part causal (left-padded
convolutions, windows that end with their frame): the decoder then needs ``head_n_fft - hop`` samples of
overlap-add before a sample is final, so a low-latency configuration also shortens ``head_n_fft``.
See docs/models.md.
"""
from __future__ import annotations

import torch
from torch import nn

from rvqcodec.model.convnext import ConvNeXtStack
from rvqcodec.model.spectral import ISTFTHead, STFTFeatures


def _window_reach(n_fft: int, hop: int, causal: bool) -> tuple[int, int]:
    """``(left, right)``: frames beyond its own that frame t's ``n_fft``-sample window covers (all of the
    overhang ``n_fft - hop`` on the left when causal, half on each side otherwise; see
    :mod:`rvqcodec.model.spectral`)."""
    overhang = n_fft - hop
    if causal:
        return -(-overhang // hop), 0
    side = -(-(overhang // 2) // hop)
    return side, side


def _net_reach(net: ConvNeXtStack, causal: bool) -> tuple[int, int]:
    """``(left, right)`` latent frames that one output frame of ``net`` depends on."""
    return (net.receptive_field, 0) if causal else (net.receptive_field // 2,) * 2


class FrameRateEncoder(nn.Module):
    """Waveform -> latent frames. ``(B, 1, T) -> (B, latent_dim, ceil(T / hop))``, any ``T >= 1``."""

    def __init__(self, *, hop: int, latent_dim: int, dim: int, n_blocks: int, mlp_ratio: float, kernel_size: int,
                 stem_n_fft: int, causal: bool):
        super().__init__()
        self.hop_length = hop
        self.stem = STFTFeatures(stem_n_fft, hop, causal)
        self.net = ConvNeXtStack(self.stem.out_dim, dim, n_blocks, out_dim=latent_dim, mlp_ratio=mlp_ratio,
                                 kernel_size=kernel_size, causal=causal)
        (stem_left, stem_right), (net_left, net_right) = (_window_reach(stem_n_fft, hop, causal),
                                                          _net_reach(self.net, causal))
        self.reach_frames = max(stem_left + net_left, stem_right + net_right)
        """How far a latent frame looks: the audio of its own frame and of this many frames on each side (on
        the farther side) decide it, nothing beyond (what a chunk's context must cover)."""

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"expected mono audio of shape (B, 1, T), got {tuple(wav.shape)}")
        return self.net(self.stem(wav))


class FrameRateDecoder(nn.Module):
    """Latent frames -> waveform. ``(B, latent_dim, F) -> (B, 1, F·hop)``, linear output (not clamped).

    ``n_rates > 0`` makes it rate-conditioned: ``forward(latent, n_q)`` is told how many RVQ stages summed to
    ``latent`` (0: the unquantized encoder output, 1 .. n_rates: a prefix of stages) and scales and shifts its
    first layer's output by a learned ``(scale, shift)`` per count (:attr:`rate_film`, one row of ``2 · dim`` per
    count). One decoder serves every bitrate, but the same latent means different things at different rates (a
    coarse 3-stage code stands for a whole cluster of latents, a 16-stage one for nearly one), and this lets the
    decoder treat them differently. The rows start at zero, so a decoder trained without conditioning computes
    exactly the same when it is added (``train.init_from``), and learns the differences from there.
    """

    def __init__(self, *, hop: int, latent_dim: int, dim: int, n_blocks: int, mlp_ratio: float, kernel_size: int,
                 head_n_fft: int, causal: bool, in_kernel: int = 3, n_rates: int = 0):
        super().__init__()
        self.hop_length = hop
        self.latent_dim = latent_dim
        self.n_rates = n_rates
        self.rate_film = None
        if n_rates > 0:
            self.rate_film = nn.Embedding(n_rates + 1, 2 * dim)
            nn.init.zeros_(self.rate_film.weight)
        self.net = ConvNeXtStack(latent_dim, dim, n_blocks, mlp_ratio=mlp_ratio, kernel_size=kernel_size,
                                 causal=causal, in_kernel=in_kernel)
        self.head = ISTFTHead(dim, head_n_fft, hop, causal)
        # Output frame f sums the windows of head frames f - right .. f + left (a window reaches the other way).
        (head_left, head_right), (net_left, net_right) = (_window_reach(head_n_fft, hop, causal),
                                                          _net_reach(self.net, causal))
        self.reach_frames = max(head_right + net_left, head_left + net_right)
        """How far the samples of one output frame look: the latent frames within this distance (on the
        farther side) decide them, nothing beyond."""

    def forward(self, latent: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """``n_q``: RVQ stages summed in ``latent`` (0: unquantized); required when rate-conditioned, else
        ignored."""
        if latent.dim() != 3 or latent.shape[1] != self.latent_dim:
            raise ValueError(f"expected latents of shape (B, {self.latent_dim}, F), got {tuple(latent.shape)}")
        return self.head(self.net(latent, self.conditioning(n_q, latent.dtype)))

    def conditioning(self, n_q: int | None, dtype: torch.dtype = torch.float32
                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The ``(scale, shift)`` of the first layer for ``n_q`` stages (None unless rate-conditioned; see
        :meth:`forward`)."""
        if self.rate_film is None:
            return None
        if n_q is None or not 0 <= n_q <= self.n_rates:
            raise ValueError(f"a rate-conditioned decoder needs n_q between 0 (unquantized) and "
                             f"{self.n_rates}, got {n_q!r}")
        return self.rate_film.weight[int(n_q)].to(dtype).chunk(2)
