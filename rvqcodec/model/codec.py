"""The codec: encoder -> residual VQ (rotation trick) -> decoder, its config and checkpoints.

Two encoder/decoder families share everything else (quantizer, bitstream, API): ``architecture="seanet"``
(strided convolutions up to the sample rate, :mod:`rvqcodec.model.seanet`) and ``architecture="convnext"``
(every layer at the frame rate, STFT stem and inverse-STFT head, :mod:`rvqcodec.model.framerate`).

Shapes: audio ``(B, 1, T)`` float in ``[-1, 1]`` at ``sample_rate``; latents ``(B, latent_dim, F)`` with
``F = ceil(T / hop_length)`` frames; codes ``(B, n_q, F)`` int64 in ``[0, codebook_size)``.

Bitrate: ``n_q * bits_per_code * frame_rate`` bit/s. With the defaults (16 kHz, hop 320 -> 50 frames/s,
K = 1024 -> 10 bits) each stage adds 0.5 kbps and 16 stages give 8 kbps.

The model maps tensors to tensors and saves/loads its own checkpoints; it knows nothing of ``.rvq`` bitstreams,
chunking or where the shipped model lives (that is :mod:`rvqcodec.api`, above it).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from rvqcodec.dicts import DictConfig
from rvqcodec.fileio import atomic_torch_save
from rvqcodec.model.framerate import FrameRateDecoder, FrameRateEncoder
from rvqcodec.model.postfilter import check_strength
from rvqcodec.model.seanet import SEANetDecoder, SEANetEncoder
from rvqcodec.quantize import QUANTIZER_DEFAULTS, ResidualVQ

TRAINING_STATE_SUFFIXES = ("codebook.embed_sum", "codebook.cluster_size", "codebook.steps", "codebook.replaced_total",
                           "codebook.idle_steps")
"""State-dict entries that only the codebook's EMA training reads: not part of the model identity."""
DROPPABLE_SUFFIX = "codebook.embed_sum"
"""Left out of ``save(inference_only=True)``; rebuilt on load as ``embed · cluster_size`` (EMA sums)."""

CHECKPOINT_FORMAT = "rvqcodec-checkpoint"
CHECKPOINT_VERSION = 1
ARCHITECTURES = ("seanet", "convnext")
V1_FIELDS = frozenset((
    "sample_rate", "channels", "strides", "latent_dim", "n_residual_units", "kernel_size", "residual_kernel_size",
    "compress", "n_q", "codebook_size", "codebook_dim", "estimator", "residual_grad", "quantizer_dropout",
    "scale_clamp", "commitment_weight", "codebook_weight", "codebook_learning", "ema_decay", "kmeans_init",
    "kmeans_iters", "dead_code_threshold", "dead_code_interval", "l2_normalize_lookup"))
"""The config fields of the first checkpoint version. A field added later enters a model's identity (model id)
only when it differs from its default, so models saved before it existed keep their id."""
QUANTIZER_FIELDS = MappingProxyType({
    "codebook_dim": "codebook_dim", "estimator": "estimator", "residual_grad": "residual_grad",
    "estimator_scope": "estimator_scope",
    "quantizer_dropout": "quantizer_dropout", "quantizer_dropout_skew": "dropout_skew", "scale_clamp": "scale_clamp",
    "grit_radius": "grit_radius",
    "commitment_weight": "commitment_weight", "codebook_weight": "codebook_weight", "codebook_learning": "learning",
    "ema_decay": "decay", "kmeans_init": "kmeans_init", "kmeans_iters": "kmeans_iters",
    "dead_code_threshold": "dead_code_threshold", "dead_code_interval": "dead_code_interval",
    "dead_code_patience": "dead_code_patience", "l2_normalize_lookup": "l2_normalize_lookup"})
"""The :class:`CodecConfig` fields that configure the quantizer -> the :class:`rvqcodec.quantize.ResidualVQ` option
each one sets. Their defaults are the quantizer's own (:data:`rvqcodec.quantize.QUANTIZER_DEFAULTS`), except
``quantizer_dropout``."""

TRAINING_ONLY_FIELDS = frozenset(QUANTIZER_FIELDS) - {"codebook_dim", "codebook_learning", "l2_normalize_lookup"}
"""Quantizer fields that change only how a model learns (gradient estimator, residual wiring, codebook hygiene,
dropout, loss weights), neither its weights' shapes nor what given weights decode: a model may be fine-tuned
under other values of these (``train.init_from``)."""


GROWN_FIELDS = MappingProxyType({"rate_conditioning": "decoder.rate_film."})
"""Switches that add parameters initialised so that the model computes exactly what it did without them -> the
prefix of those parameters' state-dict names: a model trained with the switch off may continue with it on
(``train.init_from``), the new parameters starting from their initial values."""


ADAPTED_FIELDS = frozenset({"causal", "head_n_fft"})
"""Fields of the frame-rate family whose change keeps every weight's meaning close enough to start from: the
padding side (``causal``) changes no shape (:func:`adapt_state_dict` cuts the centred kernels to their past and
present taps); a new ``head_n_fft`` changes only the inverse-STFT head's projection, which it maps onto the new
frequency grid. How a non-causal model becomes a causal one (``train.init_from``); the fine-tune then learns the
rest."""


def incompatible_fields(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Config fields (``CodecConfig.to_dict()`` form) in which ``wanted`` differs from ``saved`` other than the
    :data:`TRAINING_ONLY_FIELDS`, the :data:`ADAPTED_FIELDS`, the :data:`GROWN_FIELDS` switched on from off and
    ``codebook_learning`` changed from ``"ema"`` or ``"grad"`` (the codes carry over), sorted: weights saved under
    ``saved`` can continue training as ``wanted`` only when this is empty. A field that ``saved`` lacks (a
    checkpoint older than the field) counts as its default, which is what that model computed."""
    saved, grown = with_defaults(saved), grown_fields(saved, wanted)
    differ = sorted(k for k, v in wanted.items() if saved.get(k) != v and k not in TRAINING_ONLY_FIELDS
                    and k not in ADAPTED_FIELDS and k not in grown)
    if "codebook_learning" in differ and saved.get("codebook_learning") != "transform":
        # "ema" and "grad" codebooks store the code vectors themselves (same keys); a "transform" codebook loads
        # them as its base with W = I (EuclideanCodebook._load_from_state_dict). Only leaving "transform" would
        # need W baked into the codes.
        differ.remove("codebook_learning")
    return differ


def adapt_state_dict(state: dict[str, torch.Tensor], saved: dict[str, Any],
                     wanted: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` (saved under config ``saved``) made to fit a model of config ``wanted`` when they differ in
    :data:`ADAPTED_FIELDS` -> ``(state, names of the adapted entries)``. Frame-rate models only.

    * **Non-causal -> causal**: a centred convolution of ``k`` frames used with causal padding would read its
      ``(k - 1) / 2`` future taps from the past, delaying its output by that many frames (28 frames, 0.56 s, through
      the default model's stacks). Each centred kernel (the stacks' depthwise and input convolutions) is cut to its
      past and present taps, kept at their offsets: the causal model starts as the non-causal one without its look-
      ahead, not as a delayed copy.
    * **A new head window** (``head_n_fft``, or a causal head whose frames sit elsewhere): the head's projection
      (log-magnitudes then phases, one row per frequency bin) is resampled onto the new bins by linear interpolation
      in frequency, the log-magnitude bias shifted by ``log(new / old)`` (a Hann window's gain is proportional to its
      length), and the phase bias given the linear ramp that puts a frame's content back where the old head put it
      (the window centre moves within the frame, and with causal frames relative to the stem's). Measured on
      dev-clean (tests/test_framerate.py): the adapted, untrained causal model decodes in time with its input.
    """
    saved = with_defaults(saved)
    if wanted.get("architecture", saved["architecture"]) != "convnext":
        return state, []
    state, adapted = dict(state), []
    to_causal = bool(wanted.get("causal")) and not saved["causal"]
    if to_causal:
        for name, value in state.items():
            if (name.endswith("dwconv.weight") or name.endswith("net.proj_in.weight")) and value.shape[-1] > 1:
                k, half = value.shape[-1], (value.shape[-1] - 1) // 2
                kept = torch.zeros_like(value)
                kept[..., k - 1 - half:] = value[..., :half + 1]  # offsets -half .. 0 -> the kernel's last taps
                state[name] = kept
                adapted.append(name)
    old_n, new_n = saved["head_n_fft"], wanted.get("head_n_fft", saved["head_n_fft"])
    shift = (new_n - old_n) / 2  # samples the content moves within a frame when the window centre does
    if to_causal:
        stem_n = saved["stem_n_fft"]
        shift += (new_n - stem_n) / 2  # causal frames end with their block: the content of stem frame t sits
        # at its centre, (t + 1)·hop - stem_n / 2, which is head-frame position new_n - stem_n / 2
    if old_n == new_n and shift == 0:
        return state, adapted
    old_bins, new_bins = old_n // 2 + 1, new_n // 2 + 1
    position = torch.linspace(0, old_bins - 1, new_bins)  # new bin k sits at old bin k · old_n / new_n
    below = position.floor().long().clamp(max=old_bins - 2)
    frac = (position - below)[:, None]
    for name in ("decoder.head.proj.weight", "decoder.head.proj.bias"):
        value = state[name].float()
        halves = value.reshape(2, old_bins, -1)
        resampled = halves[:, below] * (1 - frac) + halves[:, below + 1] * frac
        if name.endswith("bias"):
            resampled[0, :, 0] += math.log(new_n / old_n)
            resampled[1, :, 0] -= 2 * math.pi * torch.arange(new_bins) * shift / new_n  # content `shift` later
        state[name] = resampled.reshape(2 * new_bins, *value.shape[1:]).to(state[name].dtype)
        adapted.append(name)
    return state, adapted


def grown_fields(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The :data:`GROWN_FIELDS` that ``wanted`` switches on and ``saved`` had off (or lacked): the parameters
    under their prefixes are new, and start from their initial values."""
    return [name for name in GROWN_FIELDS if wanted.get(name) and not saved.get(name)]


def with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A saved config (``CodecConfig.to_dict()`` form) with the fields it lacks at their defaults."""
    return {**CodecConfig().to_dict(), **config}


def _quantizer_default(name: str) -> Any:
    """The default of the config field ``name``: the default of the quantizer option it sets."""
    return QUANTIZER_DEFAULTS[QUANTIZER_FIELDS[name]]


@dataclass
class CodecConfig(DictConfig):
    """Everything needed to rebuild a :class:`Codec` (stored inside every checkpoint).

    The defaults are the ``base`` preset (SEANet). Common:
        sample_rate: Hz. latent_dim: channels of the latent frames that are quantized.
        architecture: ``"seanet"`` or ``"convnext"`` (see the module docstring).
    SEANet (``architecture="seanet"``):
        channels: width C of the first encoder block (doubled after each downsampling).
        strides: encoder downsampling factors; ``hop_length = prod(strides)``.
        n_residual_units: residual units per block, dilations 1, 3, 9, ... (``3 ** i``).
        kernel_size: kernel of the first/last convolutions. residual_kernel_size: kernel of the dilated convs.
        compress: bottleneck factor inside residual units (hidden = channels // compress).
    Frame-rate ConvNeXt (``architecture="convnext"``; :mod:`rvqcodec.model.framerate`):
        frame_hop: samples per frame (``hop_length``). frame_dim: width of the ConvNeXt blocks.
        encoder_blocks, decoder_blocks: ConvNeXt blocks on each side. mlp_ratio: hidden width / frame_dim.
        frame_kernel: depthwise kernel in frames. stem_n_fft: analysis window of the STFT stem (samples).
        head_n_fft: window of the inverse-STFT head. causal: no look-ahead anywhere (streaming-ready).
        rate_conditioning: the decoder is told how many RVQ stages it decodes (a learned scale and shift of its
        first layer per stage count, zero at first; see :class:`rvqcodec.model.framerate.FrameRateDecoder`).
    Quantizer (forwarded to :class:`rvqcodec.quantize.ResidualVQ` and its stages, see ``QUANTIZER_FIELDS``):
        n_q: number of RVQ stages. codebook_size: K codes per stage. codebook_dim: factorised code dimension
        (None = latent_dim). estimator, residual_grad, estimator_scope, quantizer_dropout, quantizer_dropout_skew (the quantizer's
        ``dropout_skew``), scale_clamp, grit_radius (τ of the ``"grit"``/``"grit_rotation"`` estimators),
        commitment_weight, codebook_weight, codebook_learning (``"ema"``/``"grad"``/``"transform"``),
        ema_decay, kmeans_init, kmeans_iters, dead_code_threshold, dead_code_interval, dead_code_patience,
        l2_normalize_lookup: documented, with their defaults, where the quantizer uses them. ``quantizer_dropout``
        defaults to 0.5 here (one model for every bitrate), not to the quantizer's 0.
    """

    dict_name: ClassVar[str] = "codec config"

    sample_rate: int = 16000
    channels: int = 32
    strides: tuple[int, ...] = (2, 4, 5, 8)
    latent_dim: int = 128
    n_residual_units: int = 3
    kernel_size: int = 7
    residual_kernel_size: int = 7
    compress: int = 2
    architecture: str = "seanet"
    frame_hop: int = 320
    frame_dim: int = 224
    encoder_blocks: int = 3
    decoder_blocks: int = 6
    mlp_ratio: float = 3.0
    frame_kernel: int = 7
    stem_n_fft: int = 640
    head_n_fft: int = 1280
    causal: bool = False
    rate_conditioning: bool = False
    n_q: int = 16
    codebook_size: int = 1024
    codebook_dim: int | None = _quantizer_default("codebook_dim")
    estimator: str = _quantizer_default("estimator")
    residual_grad: str = _quantizer_default("residual_grad")
    estimator_scope: str = _quantizer_default("estimator_scope")
    quantizer_dropout: float = 0.5
    quantizer_dropout_skew: float = _quantizer_default("quantizer_dropout_skew")
    scale_clamp: tuple[float, float] | None = _quantizer_default("scale_clamp")
    grit_radius: float = _quantizer_default("grit_radius")
    commitment_weight: float = _quantizer_default("commitment_weight")
    codebook_weight: float = _quantizer_default("codebook_weight")
    codebook_learning: str = _quantizer_default("codebook_learning")
    ema_decay: float = _quantizer_default("ema_decay")
    kmeans_init: bool = _quantizer_default("kmeans_init")
    kmeans_iters: int = _quantizer_default("kmeans_iters")
    dead_code_threshold: float = _quantizer_default("dead_code_threshold")
    dead_code_interval: int = _quantizer_default("dead_code_interval")
    dead_code_patience: int = _quantizer_default("dead_code_patience")
    l2_normalize_lookup: bool = _quantizer_default("l2_normalize_lookup")

    def __post_init__(self) -> None:
        self.strides = tuple(int(s) for s in self.strides)
        if self.scale_clamp is not None:
            self.scale_clamp = tuple(float(v) for v in self.scale_clamp)
        problems = []
        if self.sample_rate <= 0:
            problems.append(f"sample_rate must be > 0 (got {self.sample_rate})")
        if not self.strides or min(self.strides) < 1:
            problems.append(f"strides must be positive ints (got {self.strides})")
        if self.channels < 1 or self.latent_dim < 1:
            problems.append(f"channels and latent_dim must be >= 1 (got {self.channels}, {self.latent_dim})")
        if self.n_q < 1:
            problems.append(f"n_q must be >= 1 (got {self.n_q})")
        if self.codebook_size < 2:
            problems.append(f"codebook_size must be >= 2 (got {self.codebook_size})")
        if self.codebook_dim is not None and self.codebook_dim < 1:
            problems.append(f"codebook_dim must be None or >= 1 (got {self.codebook_dim})")
        if not 0.0 <= self.quantizer_dropout <= 1.0:
            problems.append(f"quantizer_dropout must be in [0, 1] (got {self.quantizer_dropout})")
        if not self.grit_radius > 0.0:
            problems.append(f"grit_radius must be > 0 (got {self.grit_radius})")
        if not self.quantizer_dropout_skew >= 0.0:
            problems.append(f"quantizer_dropout_skew must be >= 0 (got {self.quantizer_dropout_skew})")
        if self.architecture not in ARCHITECTURES:
            problems.append(f"architecture must be one of {', '.join(ARCHITECTURES)} (got {self.architecture!r})")
        elif self.architecture == "convnext":
            if min(self.frame_hop, self.frame_dim, self.frame_kernel) < 1 or min(self.encoder_blocks,
                                                                               self.decoder_blocks) < 0:
                problems.append("frame_hop, frame_dim and frame_kernel must be >= 1 and the block counts >= 0")
            for name in ("stem_n_fft", "head_n_fft"):
                n_fft = getattr(self, name)
                if n_fft < self.frame_hop or (n_fft - self.frame_hop) % 2:
                    problems.append(f"{name} must be >= frame_hop with an even difference (got {n_fft}, "
                                    f"frame_hop {self.frame_hop})")
            if not self.causal and self.frame_kernel % 2 == 0:
                problems.append(f"a non-causal model needs an odd frame_kernel (got {self.frame_kernel})")
        if self.rate_conditioning and self.architecture != "convnext":
            problems.append("rate_conditioning needs architecture 'convnext'")
        if problems:
            raise ValueError("invalid CodecConfig: " + "; ".join(problems))

    @property
    def hop_length(self) -> int:
        return self.frame_hop if self.architecture == "convnext" else math.prod(self.strides)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "CodecConfig":
        """A named configuration, optionally with some fields overridden.

        ``convnext`` (the default model's family): frame-rate ConvNeXt, width 224, 3 encoder and 6 decoder blocks,
        640-sample STFT stem, 1280-sample inverse-STFT head, latent 128, codes factorised to 16 dimensions,
        ~3.3 M parameters: sized so that encode + decode runs > 100x real time on 2 CPU cores and a training
        state (weights + AdamW moments) stays under 48 MiB. ``convnext-large``: width 512, 8 + 8 blocks,
        ~27 M parameters, for GPUs. ``tiny`` (SEANet): C=8, latent 64, 2 residual units per block (dilations
        1, 3), ~0.52 M parameters, for tests. ``base`` (SEANet): C=32, latent 128, 3 residual units
        (dilations 1, 3, 9), ~8 M parameters (EnCodec-sized without the LSTM). All keep 16 stages of K=1024 at
        50 frames/s, so the bitrates (0.5-8 kbps) are the same.
        """
        if name not in CODEC_PRESETS:
            raise ValueError(f"unknown codec preset {name!r}; choose from {', '.join(PRESETS)}")
        return dataclasses.replace(CODEC_PRESETS[name], **overrides)

    def identity_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the fields added after the first checkpoint version that are at their
        default (see ``V1_FIELDS``): what a model id hashes."""
        defaults = CodecConfig().to_dict()
        return {k: v for k, v in self.to_dict().items() if k in V1_FIELDS or v != defaults[k]}


CODEC_PRESETS: MappingProxyType[str, CodecConfig] = MappingProxyType({
    "convnext": CodecConfig(architecture="convnext", codebook_dim=16),
    "convnext-causal": CodecConfig(architecture="convnext", codebook_dim=16, quantizer_dropout=1.0, causal=True,
                                   head_n_fft=640),
    "convnext-large": CodecConfig(architecture="convnext", codebook_dim=16, frame_dim=512, encoder_blocks=8,
                                  decoder_blocks=8),
    "tiny": CodecConfig(channels=8, latent_dim=64, n_residual_units=2),
    "base": CodecConfig(),
})
"""The named configurations of :meth:`CodecConfig.preset` (described there). ``CodecConfig()`` itself is ``base``:
its defaults are part of every model id (``identity_dict``), so they stay as the first checkpoints had them."""
PRESETS = tuple(CODEC_PRESETS)


@dataclass
class CodecOutput:
    """Result of :meth:`Codec.forward`."""

    audio: torch.Tensor  # (B, 1, T) reconstruction, same length as the input, not clamped
    codes: torch.Tensor  # (B, n_q, F) int64
    commit_loss: torch.Tensor  # scalar (sum over the used stages, weighted)
    codebook_loss: torch.Tensor  # scalar (0 for EMA codebooks)
    n_q: int  # stages used for this batch (random prefix under quantizer dropout in training)
    latent: torch.Tensor = field(repr=False, default=None)  # (B, latent_dim, F) encoder output before VQ


class Codec(nn.Module):
    """Neural speech codec. See the module docstring for shapes and the bitrate formula."""

    def __init__(self, config: CodecConfig | None = None):
        super().__init__()
        self.config = config if config is not None else CodecConfig()
        c = self.config
        if c.architecture == "convnext":
            arch = dict(hop=c.frame_hop, latent_dim=c.latent_dim, dim=c.frame_dim, mlp_ratio=c.mlp_ratio,
                        kernel_size=c.frame_kernel, causal=c.causal)
            self.encoder = FrameRateEncoder(n_blocks=c.encoder_blocks, stem_n_fft=c.stem_n_fft, **arch)
            self.decoder = FrameRateDecoder(n_blocks=c.decoder_blocks, head_n_fft=c.head_n_fft,
                                            n_rates=c.n_q if c.rate_conditioning else 0, **arch)
        else:
            arch = dict(channels=c.channels, strides=c.strides, latent_dim=c.latent_dim,
                        n_residual_units=c.n_residual_units, kernel_size=c.kernel_size,
                        residual_kernel_size=c.residual_kernel_size, compress=c.compress)
            self.encoder = SEANetEncoder(**arch)
            self.decoder = SEANetDecoder(**arch)
        self.quantizer = ResidualVQ(dim=c.latent_dim, n_q=c.n_q, codebook_size=c.codebook_size,
                                    **{option: getattr(c, name) for name, option in QUANTIZER_FIELDS.items()})
        self._model_id_cache: tuple[tuple, list, str] | None = None  # see model_id

    # ------------------------------------------------------------------ properties
    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def postfilter(self) -> float:
        """Formant postfilter strength of the decoder (:mod:`rvqcodec.model.postfilter`), 0 = off: a decoding
        setting, not a weight (no effect on encoding, training losses or :attr:`model_id`). A checkpoint saved
        with one loads with it (``meta["postfilter"]``); only the frame-rate decoder has one."""
        head = getattr(self.decoder, "head", None)
        return head.postfilter if head is not None else 0.0

    @postfilter.setter
    def postfilter(self, strength: float) -> None:
        head = getattr(self.decoder, "head", None)
        if head is None:
            if check_strength(strength):
                raise ValueError(f"the {self.config.architecture} decoder has no spectral head: no postfilter")
            return
        head.postfilter = strength

    @property
    def hop_length(self) -> int:
        """Audio samples per latent frame."""
        return self.config.hop_length

    @property
    def frame_rate(self) -> float:
        """Latent frames per second."""
        return self.config.sample_rate / self.config.hop_length

    @property
    def context_frames(self) -> tuple[int, int] | None:
        """``(encoder, decoder)``: frames of real signal (audio, resp. codes) on each side of a chunk that make
        chunked encoding/decoding equal a single pass (:mod:`rvqcodec.chunking`): the frame-rate family's exact
        reach (``reach_frames``: 10 and 21 frames for the ``convnext`` preset). ``None`` for SEANet models, whose
        receptive field is not derived (the chunk engine then uses its fixed fallback context)."""
        if self.config.architecture == "convnext":
            return self.encoder.reach_frames, self.decoder.reach_frames
        return None

    @property
    def max_n_q(self) -> int:
        return self.config.n_q

    @property
    def bits_per_code(self) -> int:
        return math.ceil(math.log2(self.config.codebook_size))

    def bitrate(self, n_q: int) -> float:
        """Bitrate in kbps when ``n_q`` stages are sent (e.g. 3.0 for n_q=6 with the defaults)."""
        self._check_n_q(n_q)
        return n_q * self.bits_per_code * self.frame_rate / 1000.0

    def bitrates(self) -> list[float]:
        """Every available bitrate in kbps, for n_q = 1 .. max_n_q."""
        return [self.bitrate(n) for n in range(1, self.max_n_q + 1)]

    def n_q_for_bitrate(self, kbps: float) -> int:
        """Number of stages giving exactly ``kbps`` (ValueError listing the valid bitrates otherwise)."""
        for n in range(1, self.max_n_q + 1):
            if math.isclose(self.bitrate(n), float(kbps), rel_tol=0.0, abs_tol=1e-6):
                return n
        valid = ", ".join(f"{b:g}" for b in self.bitrates())
        raise ValueError(f"no bitrate of {kbps:g} kbps for this model; valid bitrates (kbps): {valid}")

    def _check_n_q(self, n_q: int | None) -> int:
        if n_q is None:
            return self.max_n_q
        if isinstance(n_q, bool) or int(n_q) != n_q or not 1 <= n_q <= self.max_n_q:
            raise ValueError(f"n_q must be an integer between 1 and {self.max_n_q}, got {n_q!r}")
        return int(n_q)

    # ------------------------------------------------------------------ signal path
    def _check_audio(self, wav: torch.Tensor) -> None:
        if not torch.is_tensor(wav) or wav.dim() != 3 or wav.shape[1] != 1 or wav.shape[-1] < 1:
            shape = tuple(wav.shape) if torch.is_tensor(wav) else type(wav).__name__
            raise ValueError(f"expected mono audio of shape (B, 1, T) with T >= 1, got {shape}")

    def encode_latent(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, 1, T) audio -> (B, D, ceil(T / hop_length)) encoder latent, before the quantizer (the input is
        zero-padded to whole hops)."""
        self._check_audio(wav)
        extra = (-wav.shape[-1]) % self.hop_length
        return self.encoder(F.pad(wav, (0, extra)) if extra else wav)

    def forward(self, wav: torch.Tensor, n_q: int | None = None, quantize: bool = True) -> CodecOutput:
        """Encode, quantize and decode ``wav`` (B, 1, T). ``n_q`` None: all stages, or a random prefix in
        training when quantizer dropout is on. ``quantize=False`` bypasses the quantizer (the plain autoencoder
        of a warm-up phase: ``codes`` is empty, ``n_q`` 0, the losses 0). The output has exactly the input
        length."""
        latent = self.encode_latent(wav)
        length = wav.shape[-1]
        if not quantize:
            zero = latent.new_zeros((), dtype=torch.float32)
            codes = torch.zeros(latent.shape[0], 0, latent.shape[-1], dtype=torch.long, device=latent.device)
            audio = self.decode_latent(latent, 0)[..., :length]
            return CodecOutput(audio=audio, codes=codes, commit_loss=zero, codebook_loss=zero, n_q=0, latent=latent)
        q = self.quantizer(latent, n_q=None if n_q is None else self._check_n_q(n_q))
        audio = self.decode_latent(q.quantized, q.n_q)[..., :length]
        return CodecOutput(audio=audio, codes=q.codes, commit_loss=q.commit_loss,
                           codebook_loss=q.codebook_loss, n_q=q.n_q, latent=latent)

    @torch.no_grad()
    def initialize_codebooks(self, wav: torch.Tensor) -> int:
        """k-means-initialise the quantizer's uninitialised stages from the latents of ``wav`` (B, 1, T)
        (see :meth:`ResidualVQ.initialize`; use ≥ a few × codebook_size frames). Returns stages initialised."""
        return self.quantizer.initialize(self.encode_latent(wav))

    def encode(self, wav: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """(B, 1, T) audio -> (B, n_q, ceil(T / hop_length)) int64 codes. Touches no codebook or statistic."""
        self._check_audio(wav)
        n_q = self._check_n_q(n_q)
        return self.quantizer.encode(self.encode_latent(wav), n_q)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, k, F) codes of the first k <= max_n_q stages -> (B, 1, F * hop_length) audio clamped to [-1, 1].

        The caller trims the result to the original length (stored in the bitstream)."""
        if not torch.is_tensor(codes) or codes.dim() != 3:
            shape = tuple(codes.shape) if torch.is_tensor(codes) else type(codes).__name__
            raise ValueError(f"expected codes of shape (B, n_q, frames), got {shape}")
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")
        latent = self.quantizer.decode(codes.long())
        return self.decode_latent(latent, codes.shape[1]).clamp(-1.0, 1.0)

    def decode_latent(self, latent: torch.Tensor, n_q: int) -> torch.Tensor:
        """(B, latent_dim, F) latent -> (B, 1, F * hop_length) audio, not clamped. ``n_q``: how many RVQ stages
        summed to ``latent`` (0: the encoder's output itself); only a rate-conditioned decoder uses it."""
        if self.config.rate_conditioning:
            return self.decoder(latent, n_q)
        return self.decoder(latent)

    # ------------------------------------------------------------------ identity and checkpoints
    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per part (the EMA codebooks are buffers; ``codebook_entries`` counts them)."""
        count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
        counts = {"encoder": count(self.encoder), "decoder": count(self.decoder),
                  "quantizer": count(self.quantizer)}
        counts["total"] = sum(counts.values())
        counts["codebook_entries"] = self.config.n_q * self.config.codebook_size * (
            self.config.codebook_dim or self.config.latent_dim)
        return counts

    @property
    def model_id(self) -> str:
        """16 lowercase hex characters (8 bytes): SHA-256 of the config and every state-dict tensor that affects
        encoding or decoding (EMA training statistics are left out, see ``TRAINING_STATE_SUFFIXES``).

        Changes whenever any weight or codebook entry changes; identical for a saved and reloaded model.

        Hashing the weights takes ~25 ms for the default model, which would double the cost of compressing a
        short utterance, so the id is kept until the state changes. The key is every state-dict tensor's storage
        address, layout and version counter, which in-place writes bump (optimiser steps, ``load_state_dict``,
        ``.to()``); the codebook bookkeeping's ``.data`` writes, which do not, always come with in-place updates
        of usage counters that are part of the key. The cache holds the storages it keyed on, so no new tensor
        can reuse their addresses while it lives. Only a ``.data`` write from outside that touches nothing else
        would go unseen."""
        state = self.state_dict()
        try:
            key = tuple((name, t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.stride(), t.dtype,
                         t.device, t._version) for name, t in state.items())
        except RuntimeError:  # inference tensors (created under torch.inference_mode) have no version counter
            key = None
        if key is not None and self._model_id_cache is not None and self._model_id_cache[0] == key:
            return self._model_id_cache[2]
        h = hashlib.sha256()
        h.update(json.dumps(self.config.identity_dict(), sort_keys=True).encode())
        for name, tensor in sorted(state.items()):
            if name.endswith(TRAINING_STATE_SUFFIXES):
                continue
            t = tensor.detach().to("cpu").contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself: no copy
        model_id = h.hexdigest()[:16]
        if key is not None:
            self._model_id_cache = (key, [t.untyped_storage() for t in state.values()], model_id)
        return model_id

    def save(self, path: str | os.PathLike, meta: dict[str, Any] | None = None, inference_only: bool = False,
             float16: bool = False) -> Path:
        """Write a checkpoint atomically (temp file in the same folder, then ``os.replace``).

        ``inference_only`` leaves out the EMA codebook sums (a third of a tiny checkpoint); :meth:`load` rebuilds
        them from the codes and usage counts, so the file still fine-tunes, just not bit-exactly resumable.
        ``float16`` stores floating-point tensors in half precision (half the size; what a shipped model needs):
        the saved model is this one with every weight rounded to float16, :meth:`load` gives it back in float32,
        and ``meta["model_id"]`` is the rounded model's id, the id the loaded model has.

        Contents: ``{"format": "rvqcodec-checkpoint", "version": 1, "config": dict, "state_dict": ...,
        "meta": {"model_id", "parameters", "torch_version", "postfilter", **meta}}``. Returns the path written."""
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"checkpoint path {path} is a directory")
        state = {k: v.detach().to("cpu") for k, v in self.state_dict().items()
                 if not (inference_only and k.endswith(DROPPABLE_SUFFIX))}
        model_id = self.model_id
        if float16:
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
            rounded = copy.deepcopy(self).cpu()
            with torch.no_grad():
                for tensor in rounded.state_dict().values():
                    if tensor.is_floating_point():
                        tensor.copy_(tensor.half())
            model_id = rounded.model_id
        info = {"model_id": model_id, "parameters": self.parameter_counts(),
                "torch_version": str(torch.__version__), "postfilter": self.postfilter}
        info.update(meta or {})
        try:  # meta must load back with torch.load(weights_only=True): plain JSON types only
            info = json.loads(json.dumps(info))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"checkpoint meta must hold only JSON types (str, int, float, bool, list, dict): {exc}") from None
        payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": self.config.to_dict(),
                   "state_dict": state, "meta": info}
        return atomic_torch_save(payload, path, parents=True)

    @staticmethod
    def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
        """Load and validate a checkpoint file's payload (see :meth:`save`) without building the model.

        The tensors are read on the CPU: moving them to a device is :meth:`load`'s job, so an unavailable device is
        never mistaken for a damaged file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is not a checkpoint
            raise ValueError(f"{path} is not an rvqcodec checkpoint (not a torch.save archive)")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, EOFError, RuntimeError) as exc:  # damaged archive / refused content
            raise ValueError(f"{path} is not an rvqcodec checkpoint (could not be read: {type(exc).__name__})") from None
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not an rvqcodec checkpoint (missing format tag {CHECKPOINT_FORMAT!r})")
        if payload.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"{path}: unsupported checkpoint version {payload.get('version')!r} "
                             f"(this rvqcodec reads version {CHECKPOINT_VERSION})")
        if not isinstance(payload.get("config"), dict) or not isinstance(payload.get("state_dict"), dict):
            raise ValueError(f"{path} is a damaged rvqcodec checkpoint (config or state_dict missing)")
        return payload

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "Codec":
        """Rebuild a codec from :meth:`save`'s file, in eval mode. Clear errors for missing or foreign files."""
        return cls.from_checkpoint_payload(cls.read_checkpoint(path), path).to(map_location)

    @classmethod
    def from_checkpoint_payload(cls, payload: dict[str, Any], path: str | os.PathLike = "checkpoint") -> "Codec":
        """The codec (on the CPU, in eval mode) of a payload :meth:`read_checkpoint` returned; ``path`` only names
        it in errors. Rebuilds the EMA sums an inference-only checkpoint leaves out."""
        try:
            config = CodecConfig.from_dict(payload["config"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: bad codec config in checkpoint: {exc}") from None
        codec = cls(config)
        state = dict(payload["state_dict"])
        for name in codec.state_dict():
            if name.endswith(DROPPABLE_SUFFIX) and name not in state:  # an inference-only checkpoint
                prefix = name[: -len("embed_sum")]
                if prefix + "embed" in state and prefix + "cluster_size" in state:
                    state[name] = state[prefix + "embed"] * state[prefix + "cluster_size"].unsqueeze(-1)
        try:
            codec.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ValueError(f"{path}: checkpoint weights do not match its config ({first})") from None
        try:
            codec.postfilter = (payload.get("meta") or {}).get("postfilter", 0.0)
        except ValueError as exc:
            raise ValueError(f"{path}: bad postfilter in checkpoint meta: {exc}") from None
        return codec.eval()
