"""GAN discriminators for codec training: multi-scale complex STFT (EnCodec), multi-resolution magnitude
(UnivNet / Vocos) and multi-period (HiFi-GAN / DAC).

Every sub-discriminator maps audio ``(B, 1, T)`` to ``(logits, feature_maps)``: ``logits`` is a ``(B, 1, H, W)``
map of per-patch real/fake scores (no sigmoid; the losses in :mod:`rvqcodec.losses` use hinge or least squares)
and ``feature_maps`` is the list of activations after every hidden layer (used for feature matching).
:class:`Discriminators` runs a configurable set of them and returns the concatenated list, in the order of
:attr:`Discriminators.names`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

from rvqcodec.dicts import DictConfig

DiscriminatorOutput = tuple[torch.Tensor, list[torch.Tensor]]
"""``(logits (B, 1, H, W), [feature map (B, C_i, H_i, W_i), ...])`` of one sub-discriminator."""

DISCRIMINATOR_KINDS = ("stft", "magnitude", "period")
PRESETS = ("tiny", "base")


def _check_audio(wav: torch.Tensor) -> None:
    if wav.dim() != 3 or wav.shape[1] != 1:
        raise ValueError(f"discriminators expect mono audio of shape (B, 1, T), got {tuple(wav.shape)}")


class STFTDiscriminator(nn.Module):
    """One resolution of the multi-scale STFT discriminator (EnCodec's ``DiscriminatorSTFT`` layout).

    The complex STFT (Hann window ``n_fft``, hop ``n_fft // 4``, normalised) is given as 2 channels (real,
    imaginary) over (time, frequency). 2-D convolutions with kernel (3, 9) stride 2 in frequency and dilations
    1, 2, 4 in time, then a (3, 3) layer and a (3, 3) projection to one logit channel. LeakyReLU(0.2).
    """

    def __init__(self, n_fft: int, channels: int = 32):
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = n_fft // 4
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        convs = [weight_norm(nn.Conv2d(2, channels, (3, 9), padding=(1, 4)))]
        for dilation in (1, 2, 4):
            convs.append(weight_norm(nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), dilation=(dilation, 1),
                                               padding=(dilation, 4))))
        convs.append(weight_norm(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1))))
        self.convs = nn.ModuleList(convs)
        self.post = weight_norm(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))

    def spectrogram(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, 1, T) -> (B, 2, frames, n_fft // 2 + 1) real/imaginary parts, computed in float32."""
        with torch.autocast(device_type=wav.device.type, enabled=False):
            spec = torch.stft(wav[:, 0].float(), self.n_fft, hop_length=self.hop_length, win_length=self.n_fft,
                              window=self.window.float(), center=True, pad_mode="constant", normalized=True,
                              return_complex=True)
        return rearrange(torch.view_as_real(spec), "b f t c -> b c t f")

    def forward(self, wav: torch.Tensor) -> DiscriminatorOutput:
        x = self.spectrogram(wav)
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
            features.append(x)
        return self.post(x), features


class MultiScaleSTFTDiscriminator(nn.Module):
    """STFT discriminators at several FFT sizes (default 2048, 1024, 512; hop = n_fft / 4).

    ``forward(wav (B, 1, T)) -> [(logits, feature_maps) per FFT size]`` in ``n_ffts`` order."""

    def __init__(self, n_ffts: Sequence[int] = (2048, 1024, 512), channels: int = 32):
        super().__init__()
        self.n_ffts = tuple(int(n) for n in n_ffts)
        self.discriminators = nn.ModuleList(STFTDiscriminator(n, channels) for n in self.n_ffts)

    @property
    def names(self) -> list[str]:
        return [f"stft{n}" for n in self.n_ffts]

    def forward(self, wav: torch.Tensor) -> list[DiscriminatorOutput]:
        _check_audio(wav)
        return [d(wav) for d in self.discriminators]


class MagnitudeDiscriminator(nn.Module):
    """One resolution of the multi-resolution magnitude discriminator (UnivNet's MRD, as in Vocos).

    Input: the log-magnitude spectrogram ``log(|STFT| + 1e-5)`` (Hann window ``n_fft``, hop ``n_fft // 4``) as
    one channel over (time, frequency). A (3, 9) convolution, three (3, 9) convolutions with stride 2 in
    frequency, a (3, 3) layer and a (3, 3) projection to one logit channel; LeakyReLU(0.2). It sees only the
    magnitude, at a fraction of :class:`STFTDiscriminator`'s cost (1 input channel, no dilations), which is
    what over-smoothed harmonics and noisy valleys between them show up in.
    """

    def __init__(self, n_fft: int, channels: int = 16):
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = n_fft // 4
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        convs = [weight_norm(nn.Conv2d(1, channels, (3, 9), padding=(1, 4)))]
        for _ in range(3):
            convs.append(weight_norm(nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), padding=(1, 4))))
        convs.append(weight_norm(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1))))
        self.convs = nn.ModuleList(convs)
        self.post = weight_norm(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))

    def spectrogram(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, 1, T) -> (B, 1, frames, n_fft // 2 + 1) log-magnitudes, computed in float32."""
        with torch.autocast(device_type=wav.device.type, enabled=False):
            spec = torch.stft(wav[:, 0].float(), self.n_fft, hop_length=self.hop_length, win_length=self.n_fft,
                              window=self.window.float(), center=True, pad_mode="constant", return_complex=True)
        return torch.log(spec.abs() + 1e-5).transpose(1, 2).unsqueeze(1)

    def forward(self, wav: torch.Tensor) -> DiscriminatorOutput:
        x = self.spectrogram(wav)
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
            features.append(x)
        return self.post(x), features


class MultiResolutionMagnitudeDiscriminator(nn.Module):
    """Magnitude discriminators at several FFT sizes (default 1024, 512, 256; hop = n_fft / 4).

    ``forward(wav (B, 1, T)) -> [(logits, feature_maps) per FFT size]`` in ``n_ffts`` order."""

    def __init__(self, n_ffts: Sequence[int] = (1024, 512, 256), channels: int = 16):
        super().__init__()
        self.n_ffts = tuple(int(n) for n in n_ffts)
        self.discriminators = nn.ModuleList(MagnitudeDiscriminator(n, channels) for n in self.n_ffts)

    @property
    def names(self) -> list[str]:
        return [f"magnitude{n}" for n in self.n_ffts]

    def forward(self, wav: torch.Tensor) -> list[DiscriminatorOutput]:
        _check_audio(wav)
        return [d(wav) for d in self.discriminators]


class PeriodDiscriminator(nn.Module):
    """One period of the multi-period discriminator (HiFi-GAN's ``DiscriminatorP`` layout).

    The waveform is folded to ``(B, 1, T / period, period)`` (right-padded to a multiple of ``period``) and
    processed by (5, 1) convolutions with stride (3, 1) -- each column of the fold is one phase of the period --
    then a stride-1 (5, 1) layer and a (3, 1) projection to one logit channel. LeakyReLU(0.1).
    """

    def __init__(self, period: int, channel_list: Sequence[int]):
        super().__init__()
        self.period = period
        convs = []
        in_ch = 1
        for i, out_ch in enumerate(channel_list):
            stride = 3 if i < len(channel_list) - 1 else 1
            convs.append(weight_norm(nn.Conv2d(in_ch, out_ch, (5, 1), stride=(stride, 1), padding=(2, 0))))
            in_ch = out_ch
        self.convs = nn.ModuleList(convs)
        self.post = weight_norm(nn.Conv2d(in_ch, 1, (3, 1), padding=(1, 0)))

    def forward(self, wav: torch.Tensor) -> DiscriminatorOutput:
        extra = (-wav.shape[-1]) % self.period
        if extra:
            mode = "reflect" if wav.shape[-1] > extra else "constant"
            wav = F.pad(wav, (0, extra), mode=mode)
        x = rearrange(wav, "b c (t p) -> b c t p", p=self.period)
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            features.append(x)
        return self.post(x), features


class MultiPeriodDiscriminator(nn.Module):
    """Period discriminators for periods (2, 3, 5, 7, 11) by default.

    Channel widths per layer are ``min(channels * 4**i, max_channels)`` for i = 0..3, then one more layer at the
    last width (HiFi-GAN: 32, 128, 512, 1024, 1024).
    ``forward(wav (B, 1, T)) -> [(logits, feature_maps) per period]`` in ``periods`` order."""

    def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11), channels: int = 32, max_channels: int = 1024):
        super().__init__()
        self.periods = tuple(int(p) for p in periods)
        widths = [min(channels * 4 ** i, max_channels) for i in range(4)]
        widths.append(widths[-1])
        self.discriminators = nn.ModuleList(PeriodDiscriminator(p, widths) for p in self.periods)

    @property
    def names(self) -> list[str]:
        return [f"period{p}" for p in self.periods]

    def forward(self, wav: torch.Tensor) -> list[DiscriminatorOutput]:
        _check_audio(wav)
        return [d(wav) for d in self.discriminators]


@dataclass
class DiscriminatorConfig(DictConfig):
    """Which discriminators to use and their sizes. Defaults are the ``base`` preset.

    kinds: any of ``"stft"`` (:class:`MultiScaleSTFTDiscriminator`), ``"magnitude"``
    (:class:`MultiResolutionMagnitudeDiscriminator`) and ``"period"`` (:class:`MultiPeriodDiscriminator`), run
    in the order given.
    """

    dict_name: ClassVar[str] = "discriminator config"

    kinds: tuple[str, ...] = ("stft", "period")
    stft_n_ffts: tuple[int, ...] = (2048, 1024, 512)
    stft_channels: int = 32
    magnitude_n_ffts: tuple[int, ...] = (1024, 512, 256)
    magnitude_channels: int = 16
    periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    period_channels: int = 32
    period_max_channels: int = 1024

    def __post_init__(self) -> None:
        self.kinds = tuple(self.kinds)
        self.stft_n_ffts = tuple(int(n) for n in self.stft_n_ffts)
        self.magnitude_n_ffts = tuple(int(n) for n in self.magnitude_n_ffts)
        self.periods = tuple(int(p) for p in self.periods)
        bad = [k for k in self.kinds if k not in DISCRIMINATOR_KINDS]
        if bad or not self.kinds:
            raise ValueError(f"discriminator kinds must be a non-empty subset of {', '.join(DISCRIMINATOR_KINDS)}; "
                             f"got {list(self.kinds)}")
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"discriminator kinds repeat: {list(self.kinds)}")
        if "stft" in self.kinds and (not self.stft_n_ffts or min(self.stft_n_ffts) < 16):
            raise ValueError(f"stft_n_ffts must be FFT sizes >= 16, got {self.stft_n_ffts}")
        if "magnitude" in self.kinds and (not self.magnitude_n_ffts or min(self.magnitude_n_ffts) < 16):
            raise ValueError(f"magnitude_n_ffts must be FFT sizes >= 16, got {self.magnitude_n_ffts}")
        if "period" in self.kinds and (not self.periods or min(self.periods) < 1):
            raise ValueError(f"periods must be positive ints, got {self.periods}")
        if min(self.stft_channels, self.magnitude_channels, self.period_channels, self.period_max_channels) < 1:
            raise ValueError("discriminator channel counts must be >= 1")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "DiscriminatorConfig":
        """``base``: EnCodec/HiFi-GAN widths. ``tiny``: 8 STFT and magnitude channels, period widths 4-64 (CPU
        training)."""
        if name == "base":
            config = cls()
        elif name == "tiny":
            config = cls(stft_channels=8, magnitude_channels=8, period_channels=4, period_max_channels=64)
        else:
            raise ValueError(f"unknown discriminator preset {name!r}; choose from {', '.join(PRESETS)}")
        return dataclasses.replace(config, **overrides) if overrides else config



class Discriminators(nn.Module):
    """All discriminators of a :class:`DiscriminatorConfig`.

    ``forward(wav (B, 1, T)) -> list[(logits, [feature maps])]``, one entry per sub-discriminator in the order
    of :attr:`names` (e.g. ``stft2048, stft1024, stft512, period2, period3, period5, period7, period11``).
    Pass the real and the generated audio separately (or concatenated along the batch) -- the losses in
    :mod:`rvqcodec.losses` take one such list for real and one for fake audio.
    """

    def __init__(self, config: DiscriminatorConfig | None = None):
        super().__init__()
        self.config = config if config is not None else DiscriminatorConfig()
        blocks = {}
        for kind in self.config.kinds:
            if kind == "stft":
                blocks[kind] = MultiScaleSTFTDiscriminator(self.config.stft_n_ffts, self.config.stft_channels)
            elif kind == "magnitude":
                blocks[kind] = MultiResolutionMagnitudeDiscriminator(self.config.magnitude_n_ffts,
                                                                     self.config.magnitude_channels)
            else:
                blocks[kind] = MultiPeriodDiscriminator(self.config.periods, self.config.period_channels,
                                                        self.config.period_max_channels)
        self.blocks = nn.ModuleDict(blocks)

    @property
    def names(self) -> list[str]:
        return [name for block in self.blocks.values() for name in block.names]

    def forward(self, wav: torch.Tensor) -> list[DiscriminatorOutput]:
        _check_audio(wav)
        outputs: list[DiscriminatorOutput] = []
        for block in self.blocks.values():
            outputs.extend(block(wav))
        return outputs
