"""Per-stage codebook statistics accumulated over a window of frames.

Definitions (``n_j`` = frames assigned to code j in the window, ``N = Σ n_j``, ``p_j = n_j / N``):

* ``perplexity`` = exp(H), H = −Σ p_j log p_j (0·log 0 = 0); range [1, min(K, N)]. ``perplexity_norm`` = PPL/K,
  ``entropy_norm`` = H/log K.
* ``utilization`` = 100 · |{j : n_j ≥ 1}| / K, in percent, over the window.
* ``unused_codes`` = K − codes used in the window.
* ``dead_codes`` = codes out of use at the end of the window, reported by the codebook
  (:meth:`~rvqcodec.quantize.codebook.EuclideanCodebook.dead_mask`): those the dead-code rule flags (EMA usage
  under the threshold, or idle for ``dead_code_patience`` updates) and those that no frame has reached since
  they were set (k-means initialisation or re-seeding). So after the k-means init a stage whose encoder picks a
  handful of codes shows ``utilization`` of a few percent *and* ``dead_codes`` near K, while the EMA rule alone,
  which lags ~230 steps at decay 0.99, would read 0 (and a code it catches is re-seeded before the statistics
  are read). A code used earlier in the run and idle now counts only once the rule flags it, so
  ``dead_codes`` can be below ``unused_codes`` (and a code the rule flags may still have had a frame or two).
* ``rel_qe`` = E‖r − q‖² / E‖r‖²: residual energy left after the stage, relative to its input, in the
  latent space of the model.
* ``scale_median/p1/p99``: distribution of λ = ‖q‖/‖e‖ in code space (the rotation trick's gradient scale),
  from a fixed log-spaced histogram (10⁻⁴ … 10⁴, 200 bins per decade: quantiles are exact to ±0.6 %).
* ``obtuse_frac``: fraction of frames with cos(e, q) < 0 (where the rotation over-rotates).

All accumulators are sums, so windows merge across processes by an all-reduce (``summary(sync=True)``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .distributed import all_reduce_sum_

_LOG10_MIN, _LOG10_MAX, _BINS_PER_DECADE = -4.0, 4.0, 200
_N_BINS = int((_LOG10_MAX - _LOG10_MIN) * _BINS_PER_DECADE)


class CodebookStats(nn.Module):
    """Windowed statistics of one RVQ stage. Buffers are float64 sums; call :meth:`reset` to start a window."""

    def __init__(self, codebook_size: int):
        super().__init__()
        self.codebook_size = codebook_size
        self.register_buffer("counts", torch.zeros(codebook_size, dtype=torch.float64), persistent=False)
        self.register_buffer("sums", torch.zeros(4, dtype=torch.float64), persistent=False)  # r², err², obtuse, frames
        self.register_buffer("scale_hist", torch.zeros(_N_BINS + 2, dtype=torch.float64), persistent=False)

    @torch.no_grad()
    def update(self, codes: Tensor, residual: Tensor, quantized: Tensor, e: Tensor, q: Tensor) -> None:
        """Add a batch of frames.

        Args:
            codes: (N,) int64 chosen codes.
            residual: (N, D) stage input r, model latent space.
            quantized: (N, D) stage output q in the same space.
            e: (N, d) stage input in code space (after the input projection).
            q: (N, d) chosen codes in code space.
        """
        if codes.numel() == 0:
            return
        self.counts += torch.bincount(codes, minlength=self.codebook_size).to(self.counts)
        # float32 row reductions (one pass each), accumulated in float64
        r = residual.float()
        err = r - quantized.float()
        e_norm = e.float().norm(dim=-1)
        q_norm = q.float().norm(dim=-1)
        cos_sign = torch.bmm(e.float().unsqueeze(1), q.float().unsqueeze(2)).flatten()
        self.sums += torch.stack(
            [
                r.norm().double().square(),
                err.norm().double().square(),
                (cos_sign < 0).sum().double(),
                torch.tensor(float(codes.numel()), device=r.device, dtype=torch.float64),
            ]
        )
        ratio = q_norm.double() / e_norm.double().clamp_min(1e-30)
        log_ratio = torch.log10(ratio.clamp(min=1e-30, max=1e30))
        bins = ((log_ratio - _LOG10_MIN) * _BINS_PER_DECADE).floor().long() + 1
        bins = bins.clamp(0, _N_BINS + 1)  # 0: below range, last: above range
        self.scale_hist += torch.bincount(bins, minlength=_N_BINS + 2).to(self.scale_hist)

    def reset(self) -> None:
        self.counts.zero_()
        self.sums.zero_()
        self.scale_hist.zero_()

    def _window(self, sync: bool) -> tuple[Tensor, Tensor, Tensor]:
        """(counts, sums, scale_hist) of the window; summed over processes (on copies) when ``sync``."""
        bufs = (self.counts, self.sums, self.scale_hist)
        if sync:
            bufs = tuple(all_reduce_sum_(b.clone()) for b in bufs)
        return bufs

    @staticmethod
    def _scale_quantile(hist: Tensor, q: float) -> float:
        total = float(hist.sum())
        if total == 0:
            return float("nan")
        cdf = torch.cumsum(hist, 0) / total
        idx = int(torch.searchsorted(cdf, torch.tensor(q, dtype=cdf.dtype, device=cdf.device)).clamp(max=_N_BINS + 1))
        if idx == 0:
            return 10.0**_LOG10_MIN
        if idx == _N_BINS + 1:
            return 10.0**_LOG10_MAX
        # centre of the bin, on the log scale
        return 10.0 ** (_LOG10_MIN + (idx - 0.5) / _BINS_PER_DECADE)

    def summary(self, dead_codes: int | None = None, sync: bool = False) -> dict[str, float]:
        """The window's statistics as a plain dict of floats (NaN where the window is empty).

        ``sync=True`` sums the window over all processes first (collective: every rank must call it).
        """
        k = self.codebook_size
        counts, sums, hist = self._window(sync)
        frames = float(sums[3])
        out: dict[str, float] = {"frames": frames}
        if frames > 0:
            p = counts / counts.sum()
            nz = p[p > 0]
            entropy = float(-(nz * nz.log()).sum())
            used = int((counts > 0).sum())
            out.update(
                perplexity=math.exp(entropy),
                perplexity_norm=math.exp(entropy) / k,
                entropy_norm=entropy / math.log(k) if k > 1 else 0.0,
                utilization=100.0 * used / k,
                unused_codes=float(k - used),
                rel_qe=float(sums[1] / sums[0]) if float(sums[0]) > 0 else float("nan"),
                obtuse_frac=float(sums[2]) / frames,
                scale_median=self._scale_quantile(hist, 0.5),
                scale_p1=self._scale_quantile(hist, 0.01),
                scale_p99=self._scale_quantile(hist, 0.99),
            )
        else:
            for key in ("perplexity", "perplexity_norm", "entropy_norm", "utilization", "unused_codes", "rel_qe",
                        "obtuse_frac", "scale_median", "scale_p1", "scale_p99"):
                out[key] = float("nan")
        if dead_codes is not None:
            out["dead_codes"] = float(dead_codes)
        return out
