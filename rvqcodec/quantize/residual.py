"""Residual vector quantization: a stack of :class:`VectorQuantizer` stages, each quantizing what the
previous stages left.

**Wiring and the encoder Jacobian.** With r₁ = x, stage k quantizing r_k with local Jacobian
G_k = ∂q̃_k/∂r_k (I for STE, λ_k·R_k for the rotation trick) and output Σ_k q̃_k:

* ``residual_grad="live"`` (EnCodec/DAC): r_{k+1} = r_k − q̃_k, so ∂r_{k+1}/∂x = (I − G_k)·∂r_k/∂x and
  ∂(Σ q̃_k)/∂x = I − (I − G_n)…(I − G_1). With STE this is exactly I: the decoder's gradient reaches the
  encoder unchanged, and only the stage-1 commitment loss reaches the encoder (for k ≥ 2 it cancels).
* ``residual_grad="detached"`` (vector-quantize-pytorch): r_{k+1} = r_k − sg(q̃_k), so every stage sees x
  directly and ∂(Σ q̃_k)/∂x = Σ_k G_k (STE: n·I, i.e. the encoder gradient is multiplied by the number of
  stages); every stage's commitment loss reaches the encoder.

**Estimator scope.** ``estimator_scope="stage"`` (above) applies each stage's estimator to that stage's own
residual and code, so with the rotation trick the encoder gradient passes through n rotations, one per stage
(each about 45° on the shipped model, docs/quantizer.md). ``"cumulative"`` changes only what reaches the encoder:
the stages run as above (their wiring and estimators) on sg(z), so every stage's own parameters (projections,
gradient-learned codes) get exactly the gradients the per-stage scope gives them, and the output is
``estimator(z, sg x̂_n) + (x̂_n − sg x̂_n)`` with x̂_n = Σ_{k≤n} q_k the running reconstruction: its value is exactly
x̂_n, and its Jacobian w.r.t. z is one λR, R the rotation taking z onto x̂_n (λ = ‖x̂_n‖/‖z‖; that angle shrinks as
stages are added), instead of the composition of n rotations. Stage 1's commitment loss still reaches the encoder
(``VectorQuantizer(input_grad=False)``: its output's gradient stops at the stage); the later stages' do not.

**Quantizer dropout.** In training, with probability ``quantizer_dropout`` a batch uses only the first
``n`` stages (one draw per batch, identical on every process), so any prefix of stages is a valid lower bitrate.
``n`` is uniform on 1..n_q, or with ``dropout_skew`` = α > 0 drawn with P(n) ∝ n^−α, which trains the low bitrates
(the first few stages alone) more often (docs/quantizer.md gives the shares). Stages beyond the cut-off are not
run: no output, loss, gradient, codebook update or statistics.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from .distributed import broadcast_int
from .estimators import apply_estimator
from .vq import VectorQuantizer

RESIDUAL_GRAD = ("live", "detached")
ESTIMATOR_SCOPES = ("stage", "cumulative")


@dataclass
class QuantizerOutput:
    """Result of :meth:`ResidualVQ.forward`."""

    quantized: Tensor  # (B, D, T): sum of the used stages' outputs
    codes: Tensor  # (B, n_q, T) int64
    commit_loss: Tensor  # scalar: sum over used stages (weighted)
    codebook_loss: Tensor  # scalar: sum over used stages (weighted; 0 for EMA codebooks)
    n_q: int  # number of stages used


class ResidualVQ(nn.Module):
    """Residual VQ on (B, D, T) tensors; every stage applies the chosen estimator to its own residual.

    Args:
        dim: channels D.
        n_q: number of stages.
        codebook_size: codes per stage K (log2 K bits per code).
        residual_grad: ``"live"`` or ``"detached"`` (see module docstring).
        estimator_scope: ``"stage"`` (each stage's estimator on its own residual) or ``"cumulative"`` (the
            stages' estimator once, from the latent onto the running reconstruction; see module docstring).
        quantizer_dropout: probability that a training batch uses a random prefix of the stages.
        dropout_skew: α ≥ 0; a dropped batch keeps n stages with probability ∝ n^−α (0: uniform on 1..n_q).
        **stage_options: forwarded to every :class:`VectorQuantizer`, which documents them and their defaults
            (``codebook_dim``, ``estimator``, ``scale_clamp``, ``grit_radius``, ``commitment_weight``,
            ``codebook_weight``) or passes them on to :class:`EuclideanCodebook` (``learning``, ``decay``,
            ``kmeans_init``, ``dead_code_threshold``, ``l2_normalize_lookup`` ...). Every option is documented,
            with its default, once, in the constructor that uses it (:data:`rvqcodec.quantize.QUANTIZER_DEFAULTS`
            collects them).
    """

    def __init__(
        self,
        dim: int,
        n_q: int,
        codebook_size: int,
        residual_grad: str = "live",
        estimator_scope: str = "stage",
        quantizer_dropout: float = 0.0,
        dropout_skew: float = 0.0,
        **stage_options,
    ):
        super().__init__()
        if residual_grad not in RESIDUAL_GRAD:
            raise ValueError(f"unknown residual_grad {residual_grad!r}; choose from {', '.join(RESIDUAL_GRAD)}")
        if estimator_scope not in ESTIMATOR_SCOPES:
            raise ValueError(f"unknown estimator_scope {estimator_scope!r}; choose from {', '.join(ESTIMATOR_SCOPES)}")
        if not 0.0 <= quantizer_dropout <= 1.0:
            raise ValueError(f"quantizer_dropout must be in [0, 1], got {quantizer_dropout}")
        if not dropout_skew >= 0.0:
            raise ValueError(f"dropout_skew must be >= 0, got {dropout_skew}")
        if n_q < 1:
            raise ValueError(f"n_q must be >= 1, got {n_q}")
        self.dim = dim
        self.n_q = n_q
        self.codebook_size = codebook_size
        self.residual_grad = residual_grad
        self.estimator_scope = estimator_scope
        self.quantizer_dropout = quantizer_dropout
        self.dropout_skew = dropout_skew
        self.layers = nn.ModuleList(
            VectorQuantizer(dim, codebook_size, **stage_options) for _ in range(n_q)
        )
        self.record_eval_stats = False
        """Also accumulate statistics in eval mode (training mode always does)."""

    def _check_n_q(self, n_q: int | None) -> int:
        if n_q is None:
            return self.n_q
        if not 1 <= n_q <= self.n_q:
            raise ValueError(f"n_q must be between 1 and {self.n_q}, got {n_q}")
        return int(n_q)

    def sample_n_q(self, device: torch.device) -> int:
        """How many stages a training batch uses under quantizer dropout (the same on every process)."""
        n = self.n_q
        if random.random() < self.quantizer_dropout:
            if self.dropout_skew:
                counts = range(1, self.n_q + 1)
                n = random.choices(counts, weights=[k ** -self.dropout_skew for k in counts])[0]
            else:
                n = random.randint(1, self.n_q)
        return broadcast_int(n, device)

    def forward(self, z: Tensor, n_q: int | None = None, mask: Tensor | None = None) -> QuantizerOutput:
        """Quantize ``z`` (B, D, T) with ``n_q`` stages (default: all, or a random prefix under quantizer
        dropout in training). ``mask`` (B, T) marks valid frames (see :meth:`VectorQuantizer.forward`)."""
        if z.ndim != 3 or z.shape[1] != self.dim:
            raise ValueError(f"expected (B, {self.dim}, T) input, got shape {tuple(z.shape)}")
        if n_q is None and self.training and self.quantizer_dropout > 0:
            n_use = self.sample_n_q(z.device)
        else:
            n_use = self._check_n_q(n_q)
        track = self.training or self.record_eval_stats
        cumulative = self.estimator_scope == "cumulative"
        residual = z.detach() if cumulative else z  # cumulative: the encoder gets only the estimator below
        quantized = torch.zeros_like(z)
        codes, commit, codebook = [], [], []
        for k, layer in enumerate(self.layers[:n_use]):
            if cumulative and k == 0:  # stage 1's commitment loss still reaches the encoder
                out = layer(z, mask=mask, track_stats=track, input_grad=False)
            else:
                out = layer(residual, mask=mask, track_stats=track)
            quantized = quantized + out.quantized
            residual = residual - (out.quantized if self.residual_grad == "live" else out.quantized.detach())
            codes.append(out.codes)
            commit.append(out.commit_loss)
            codebook.append(out.codebook_loss)
        if cumulative:  # value x̂ exactly; λR(z -> x̂) to z; the stages' parameters through x̂ - sg(x̂)
            first, x_hat = self.layers[0], quantized.detach()
            rows = apply_estimator(first.estimator, rearrange(z, "b d t -> (b t) d"),
                                   rearrange(x_hat, "b d t -> (b t) d"), first.scale_clamp, first.grit_radius)
            quantized = rearrange(rows, "(b t) d -> b d t", b=z.shape[0]) + (quantized - x_hat)
        return QuantizerOutput(
            quantized=quantized,
            codes=torch.stack(codes, dim=1),
            commit_loss=torch.stack(commit).sum(),
            codebook_loss=torch.stack(codebook).sum(),
            n_q=n_use,
        )

    @torch.no_grad()
    def initialize(self, z: Tensor, mask: Tensor | None = None) -> int:
        """k-means-initialise every stage that is not initialised yet from latents ``z`` (B, D, T): stage k
        from the residuals left by stages 1..k−1 (already initialised or just initialised). No EMA update and
        no statistics. Returns the number of stages initialised.

        Training initialises lazily from the first batch; call this first with a larger batch (≥ a few·K
        frames) when a training batch holds fewer frames than codes — otherwise stage 1 would memorise the
        batch and leave the later stages only zero residuals to learn from.
        """
        residual = z
        done = 0
        for layer in self.layers:
            if not layer.codebook.is_initialized():
                r = rearrange(residual, "b d t -> (b t) d")
                if mask is not None:
                    r = r[rearrange(mask, "b t -> (b t)").to(torch.bool)]
                layer.initialize_(r)
                done += 1
            residual = residual - layer.decode(layer.encode(residual))
        return done

    @torch.no_grad()
    def encode(self, z: Tensor, n_q: int | None = None) -> Tensor:
        """(B, D, T) → codes (B, n_q, T) int64, without touching codebooks or statistics."""
        n_use = self._check_n_q(n_q)
        residual = z
        codes = []
        for layer in self.layers[:n_use]:
            c = layer.encode(residual)
            residual = residual - layer.decode(c)
            codes.append(c)
        return torch.stack(codes, dim=1)

    def decode(self, codes: Tensor) -> Tensor:
        """codes (B, k, T) for any prefix of k ≤ n_q stages → (B, D, T)."""
        if codes.ndim != 3 or not 1 <= codes.shape[1] <= self.n_q:
            raise ValueError(f"expected codes of shape (B, 1..{self.n_q}, T), got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size})")
        out = None
        for k in range(codes.shape[1]):
            q = self.layers[k].decode(codes[:, k])
            out = q if out is None else out + q
        return out

    # ------------------------------------------------------------------ statistics
    def reset_stats(self) -> None:
        for layer in self.layers:
            layer.stats.reset()

    def stage_stats(self, sync: bool = True) -> list[dict[str, float]]:
        """Per-stage statistics of the current window, one dict per stage (all-reduced across processes when
        ``sync``; collective — call on every rank)."""
        return [layer.stats_summary(sync=sync) for layer in self.layers]

    def stats_dict(self, prefix: str = "vq", reset: bool = False, sync: bool = True) -> dict[str, float]:
        """Flat ``{"{prefix}/s{k}/{name}": value}`` (k from 1) of :meth:`stage_stats`, for loggers.

        Stages with no frames in the window (dropped by quantizer dropout) are omitted.
        """
        out: dict[str, float] = {}
        for k, stats in enumerate(self.stage_stats(sync=sync), start=1):
            if stats["frames"] == 0:
                continue
            for name, value in stats.items():
                out[f"{prefix}/s{k}/{name}"] = value
        if reset:
            self.reset_stats()
        return out
