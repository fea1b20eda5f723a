"""Listener-model scores: what a speech-quality model trained on human ratings predicts for a signal.

PESQ rewards a close match of loudness spectra and can rate an over-smoothed, unnatural decode highly; codec
papers therefore report listener models beside it. Three run offline here, from packages that ship their weights
(the ``perceptual`` extra: ``pip install "rvqcodec[perceptual]"``):

* ``distillmos``: DistillMOS (Microsoft; a small convolutional transformer distilled from an XLS-R quality model),
  non-intrusive, MOS scale 1-5.
* ``dnsmos_p808`` and ``dnsmos_ovrl``: DNSMOS (Microsoft, the deep noise suppression challenge's ONNX models via
  ``speechmos``), non-intrusive: the P.808 overall MOS and the P.835 overall (OVRL) MOS, 1-5. Input clipped to
  [-1, 1] as the models require.
* ``visqol``: ViSQOL v3 in speech mode with the lattice mapping model (``visqol-python[lattice]``), intrusive
  (compares with the reference), MOS-LQO 1-5. Without the lattice model visqol-python silently falls back to a
  mapping that scores 1-2 points high, so it is requested explicitly and its absence is an error.

The non-intrusive scores are also given for the reference itself (``reference_distillmos``, ...): the ceiling a
codec is measured against. Every score is computed at 16 kHz (other rates are resampled); a signal shorter than
:data:`MIN_SECONDS` or digitally silent gets NaN (the models are undefined there).

Cost on one CPU thread, per 10 s of speech: DistillMOS ~0.5 s, DNSMOS ~0.7 s, ViSQOL ~1.3 s, plus ~10 s to load
the models once per process.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import torch

from rvqcodec.extras import require

SCORE_RATE = 16000
MIN_SECONDS = 1.0
DEGRADED_NAMES = ("distillmos", "dnsmos_p808", "dnsmos_ovrl", "visqol")
"""Scores of the degraded (decoded) signal; ``visqol`` is the one that compares it with the reference."""
REFERENCE_NAMES = ("reference_distillmos", "reference_dnsmos_p808", "reference_dnsmos_ovrl")
"""Non-intrusive scores of the reference signal itself."""
PERCEPTUAL_NAMES = DEGRADED_NAMES + REFERENCE_NAMES
LABELS = {"distillmos": "DistillMOS", "dnsmos_p808": "DNSMOS P.808", "dnsmos_ovrl": "DNSMOS OVRL",
          "visqol": "ViSQOL"}
PURPOSE = "for listener-model scores (DistillMOS, DNSMOS, ViSQOL)"


def available() -> bool:
    """Whether the ``perceptual`` extra is installed (imports nothing heavy)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None
               for m in ("distillmos", "speechmos", "onnxruntime", "librosa", "visqol", "ai_edge_litert"))


def _mono16k(x: Any, sr: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    if sr != SCORE_RATE and x.size:
        from rvqcodec.data.audio_io import resample

        x = resample(torch.from_numpy(x)[None], sr, SCORE_RATE)[0].numpy()
    return x


def _scorable(x: np.ndarray) -> bool:
    return x.size >= MIN_SECONDS * SCORE_RATE and bool(np.any(x != 0)) and bool(np.all(np.isfinite(x)))


class PerceptualScorer:
    """Loads the three listener models once; :meth:`score` rates a reference/degraded pair.

    Raises :class:`rvqcodec.extras.MissingExtraError` (one line naming the extra) when a package is missing.
    """

    def __init__(self):
        for module in ("distillmos", "speechmos", "onnxruntime", "librosa", "requests", "visqol", "ai_edge_litert"):
            require(module, PURPOSE)
        import distillmos
        import visqol
        from speechmos import dnsmos

        self._dnsmos = dnsmos
        with _quiet():  # distillmos prints where its weights came from
            self._distillmos = distillmos.ConvTransformerSQAModel().eval()
        self._visqol = visqol.VisqolApi()
        self._visqol.create(mode="speech", use_lattice_model=True)
        self._last_reference: tuple[Any, dict[str, float]] = (None, {})

    def non_intrusive(self, x: Any, sr: int) -> dict[str, float]:
        """``{distillmos, dnsmos_p808, dnsmos_ovrl}`` of one signal ``(T,)`` at ``sr`` Hz (NaN if unscorable)."""
        x = _mono16k(x, sr)
        if not _scorable(x):
            return {"distillmos": math.nan, "dnsmos_p808": math.nan, "dnsmos_ovrl": math.nan}
        with torch.no_grad():
            distill = float(self._distillmos(torch.from_numpy(x)[None]).mean())
        dns = self._dnsmos.run(np.clip(x, -1.0, 1.0), sr=SCORE_RATE)
        return {"distillmos": distill, "dnsmos_p808": float(dns["p808_mos"]), "dnsmos_ovrl": float(dns["ovrl_mos"])}

    def visqol(self, ref: Any, deg: Any, sr: int) -> float:
        """ViSQOL v3 speech MOS-LQO of ``deg`` against ``ref`` (aligned, same rate; NaN if unscorable)."""
        ref, deg = _mono16k(ref, sr), _mono16k(deg, sr)
        n = min(ref.size, deg.size)
        ref, deg = ref[:n], deg[:n]
        if not (_scorable(ref) and _scorable(deg)):
            return math.nan
        with _quiet():
            return float(self._visqol.measure_from_arrays(ref.astype(np.float64), deg.astype(np.float64),
                                                          SCORE_RATE).moslqo)

    def score(self, ref: Any, deg: Any, sr: int) -> dict[str, float]:
        """Every name of :data:`PERCEPTUAL_NAMES` for an aligned pair ``(T,)`` at ``sr`` Hz. The reference's own
        scores are remembered for the last reference seen (a benchmark scores many decodes of one file)."""
        out = self.non_intrusive(deg, sr)
        out["visqol"] = self.visqol(ref, deg, sr)
        ref16 = _mono16k(ref, sr)
        key = (ref16.size, hashlib.sha1(ref16.tobytes()).hexdigest())
        if self._last_reference[0] != key:
            self._last_reference = (key, self.non_intrusive(ref16, SCORE_RATE))
        out.update({f"reference_{k}": v for k, v in self._last_reference[1].items()})
        return out


class _quiet:
    """Silence stdout while a model loads or scores (the packages print progress lines)."""

    def __enter__(self):
        import contextlib
        import io

        self._redirect = contextlib.redirect_stdout(io.StringIO())
        self._redirect.__enter__()

    def __exit__(self, *exc):
        return self._redirect.__exit__(*exc)


_SCORER: PerceptualScorer | None = None


def get_scorer() -> PerceptualScorer:
    """The process's :class:`PerceptualScorer` (loaded on first use)."""
    global _SCORER
    if _SCORER is None:
        _SCORER = PerceptualScorer()
    return _SCORER
