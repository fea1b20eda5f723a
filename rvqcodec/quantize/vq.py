"""One vector-quantization stage for channel-first conv features."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .codebook import EuclideanCodebook
from .distributed import broadcast_
from .estimators import DEFAULT_GRIT_RADIUS, ESTIMATORS, apply_estimator, check_grit_radius
from .stats import CodebookStats


@dataclass
class VQStageOutput:
    """Result of one stage on (B, D, T) input."""

    quantized: Tensor  # (B, D, T): value = projected-out code vectors; gradient per the estimator
    codes: Tensor  # (B, T) int64
    commit_loss: Tensor  # scalar, already multiplied by commitment_weight
    codebook_loss: Tensor  # scalar, already multiplied by codebook_weight (0 for EMA codebooks)


class VectorQuantizer(nn.Module):
    """Vector quantizer operating on (B, D, T) tensors, with a choice of gradient estimator.

    Pipeline per frame: ``e = W_in·r`` (identity when ``codebook_dim`` is None or equals ``dim``) → nearest code
    ``q`` (squared L2, or cosine with ``l2_normalize_lookup``) → ``q̃ = estimator(e, q)`` (value q) →
    output ``W_out·q̃``. Losses, in code space, averaged over frames and channels:
    ``commit_loss = commitment_weight · mse(e, sg q)`` (trains the encoder) and, for ``learning="grad"`` or
    ``"transform"``, ``codebook_loss = codebook_weight · mse(q, sg e)`` (trains the codebook, or the shared
    transform that produces every code). No gradient reaches the codebook through the estimator.

    Args:
        dim: channels D of the input.
        codebook_size: number of codes K.
        codebook_dim: factorised code dimension (DAC-style low-dimensional codes); None = ``dim``.
        estimator: one of ``"grit_rotation"`` (default: the best rotation-family arm of the 4000-step ablation,
            docs/ablation), ``"rotation"`` (the shipped model's), ``"rotation_noscale"``, ``"rotation_clamped"``,
            ``"ste"``, ``"grit"`` (see :mod:`rvqcodec.quantize.estimators`).
        scale_clamp: bounds on ‖q‖/‖e‖ for the rotation estimators (see :func:`rotation_trick`).
        grit_radius: τ of the GRIT radius ρ(δ) = τ‖e‖·tanh(δ/(τ‖e‖)) (``"grit"``, ``"grit_rotation"``; see
            :func:`grit_surrogate`). 1.0 is this project's choice, not a value from the paper.
        commitment_weight: weight of the commitment loss.
        codebook_weight: weight of the codebook loss (``learning="grad"`` or ``"transform"``).
        **codebook_options: forwarded to :class:`EuclideanCodebook`, which documents them and their defaults
            (``learning``, ``decay``, ``epsilon``, ``kmeans_init``, ``kmeans_iters``, ``dead_code_threshold``,
            ``dead_code_interval``, ``dead_code_patience``, ``l2_normalize_lookup``).
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        codebook_dim: int | None = None,
        estimator: str = "grit_rotation",
        scale_clamp: tuple[float, float] | None = None,
        grit_radius: float = DEFAULT_GRIT_RADIUS,
        commitment_weight: float = 1.0,
        codebook_weight: float = 1.0,
        **codebook_options,
    ):
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; choose from {', '.join(ESTIMATORS)}")
        codebook_dim = dim if codebook_dim is None else codebook_dim
        self.dim = dim
        self.codebook_dim = codebook_dim
        self.codebook_size = codebook_size
        self.estimator = estimator
        self.scale_clamp = tuple(scale_clamp) if scale_clamp is not None else None
        self.grit_radius = check_grit_radius(grit_radius)
        self.commitment_weight = commitment_weight
        self.codebook_weight = codebook_weight
        factorised = codebook_dim != dim
        self.project_in = nn.Linear(dim, codebook_dim) if factorised else nn.Identity()
        self.project_out = nn.Linear(codebook_dim, dim) if factorised else nn.Identity()
        self.codebook = EuclideanCodebook(codebook_dim, codebook_size, **codebook_options)
        self.stats = CodebookStats(codebook_size)

    def forward(self, r: Tensor, mask: Tensor | None = None, track_stats: bool = True,
                input_grad: bool = True) -> VQStageOutput:
        """Quantize ``r`` (B, D, T). ``mask`` (B, T) bool marks valid frames: padded frames still get codes
        but are left out of k-means init, EMA, dead-code replacement, statistics and losses.

        ``input_grad=False``: the output's gradient stops at the stage (it trains ``project_in`` through the
        estimator and ``project_out``, but does not reach ``r``); the commitment loss still reaches ``r``. The
        cumulative estimator scope (:class:`ResidualVQ`) uses it.

        In training mode, the codebook is initialised on the first call (k-means on this input) and updated after
        the lookup; the returned codes/vectors are the pre-update ones.
        """
        b, _, t = r.shape
        r_flat = rearrange(r, "b d t -> (b t) d")
        valid = None if mask is None else rearrange(mask, "b t -> (b t)").to(torch.bool)
        if self.training and not self.codebook.is_initialized():
            self.initialize_(r_flat if valid is None else r_flat[valid])
        e = self.project_in(r_flat)
        e_valid = e if valid is None else e[valid]
        codes = self.codebook.lookup(e)
        q_code = self.codebook.embed_codes(codes)  # (N, d); carries grad to the codebook unless "ema"
        q_detached = q_code.detach()
        e_est = e if input_grad else self.project_in(r_flat.detach())
        q_tilde = apply_estimator(self.estimator, e_est, q_detached.to(e.dtype), self.scale_clamp, self.grit_radius)
        quantized_flat = self.project_out(q_tilde)

        codes_valid = codes if valid is None else codes[valid]
        q_valid = q_code if valid is None else q_code[valid]
        if e_valid.shape[0] > 0:
            commit = F.mse_loss(e_valid.float(), q_valid.detach().float()) * self.commitment_weight
        else:
            commit = e.sum() * 0.0
        if self.codebook.learning != "ema" and e_valid.shape[0] > 0:  # "grad" or "transform"
            codebook_loss = F.mse_loss(q_valid.float(), e_valid.detach().float()) * self.codebook_weight
        else:
            codebook_loss = torch.zeros((), device=r.device)

        if track_stats:
            r_valid = r_flat if valid is None else r_flat[valid]
            out_valid = quantized_flat if valid is None else quantized_flat[valid]
            self.stats.update(codes_valid, r_valid.detach(), out_valid.detach(), e_valid.detach(), q_valid.detach())
        if self.training:
            self.codebook.update_(e_valid, codes_valid)

        return VQStageOutput(
            quantized=rearrange(quantized_flat, "(b t) d -> b d t", b=b, t=t),
            codes=rearrange(codes, "(b t) -> b t", b=b, t=t),
            commit_loss=commit,
            codebook_loss=codebook_loss,
        )

    @torch.no_grad()
    def initialize_(self, r: Tensor) -> None:
        """Initialise the stage from (N, D) residuals: with factorised codes, the projections first become the
        stage's principal subspace (``e = Uᵀ(r − μ)``, ``out = U·q + μ`` with U the top ``codebook_dim``
        eigenvectors of the residuals' covariance and μ their mean), so that the stage starts by removing the
        residual energy it can capture instead of adding the output of random projections; then the codebook
        is k-means-initialised on the projected residuals. Rank 0's projections are broadcast to every process.
        """
        r = r.detach().float()
        if isinstance(self.project_in, nn.Linear) and r.shape[0] > 1:
            mean = r.mean(dim=0)
            centred = r - mean
            with torch.autocast(device_type=r.device.type, enabled=False):  # a float32 covariance under bf16
                covariance = centred.T @ centred / (r.shape[0] - 1)
            _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
            basis = vectors[:, -self.codebook_dim:].flip(-1)  # (D, d): the top directions, largest first
            weight = self.project_in.weight
            weight.copy_(basis.T.to(weight.dtype))
            self.project_in.bias.copy_((-basis.T @ mean).to(weight.dtype))
            self.project_out.weight.copy_(basis.to(weight.dtype))
            self.project_out.bias.copy_(mean.to(weight.dtype))
            for tensor in (self.project_in.weight, self.project_in.bias, self.project_out.weight,
                           self.project_out.bias):
                broadcast_(tensor.data)
        self.codebook.initialize_(self.project_in(r))

    @torch.no_grad()
    def encode(self, r: Tensor) -> Tensor:
        """(B, D, T) → codes (B, T) int64. No codebook update, no statistics."""
        b, d, t = r.shape
        e = self.project_in(r.transpose(1, 2).reshape(b * t, d))  # (B·T, D): what rearrange "b d t -> (b t) d" gives
        return self.codebook.lookup(e).view(b, t)

    def decode(self, codes: Tensor) -> Tensor:
        """codes (B, T) → (B, D, T)."""
        b, t = codes.shape
        q = self.project_out(self.codebook.embed_codes(codes.reshape(b * t)))
        return q.view(b, t, -1).transpose(1, 2)

    def stats_summary(self, sync: bool = False) -> dict[str, float]:
        """This stage's window statistics (see :class:`CodebookStats`) plus its current dead-code count."""
        return self.stats.summary(dead_codes=int(self.codebook.dead_mask().sum()), sync=sync)
