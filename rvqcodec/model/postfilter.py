"""Formant postfilter: deepens the valleys of the decoder's spectral envelope, frame by frame.

Speech decoders since CELP (G.729, AMR) end with a formant postfilter: it deepens the valleys between formants,
where coding noise is heard and which coding at a low rate fills. The inverse-STFT head of the frame-rate codec
(:class:`~rvqcodec.model.spectral.ISTFTHead`) gives one log-magnitude spectrum per frame, so the postfilter acts
there, frame by frame, with no look-ahead and no state:

    envelope = lifter(log|X|)          the real cepstrum of the frame's log-magnitudes kept at quefrencies
                                       LIFTER_LOW .. LIFTER_HIGH - 1 samples (0.125–1.8 ms at 16 kHz): formants
                                       and their widths, without the level and spectral tilt (quefrencies 0, 1)
                                       and without the pitch harmonics (≥ 1.9 ms for voices up to 530 Hz)
    log|X'| = log|X| + strength · min(envelope, 0)      the phases are left as they are

Where the envelope lies below the frame's level-and-tilt line (a valley between formants) it is made
``1 + strength`` times as deep; the formant peaks are left as they are. (A first version scaled the whole envelope,
peaks too: listener models liked it as much, but raising the peaks moved the spectrum away from the original's,
which ViSQOL and noisy or quiet input penalised; docs/training.md, "The formant postfilter".) ``strength`` 0 is the
decoder as trained. The codec's losses never see it: it is a decoding setting
(:attr:`rvqcodec.model.codec.Codec.postfilter`), stored in a shipped checkpoint's meta.
"""

from __future__ import annotations

import math

import torch

LIFTER_LOW = 2  # first quefrency (samples) counted as envelope: 0 is the level, 1 the tilt
LIFTER_HIGH = 30  # first quefrency left out: the pitch period of a voice at 533 Hz and above
MAX_STRENGTH = 1.0  # valleys twice as deep: beyond this, holes in the spectrum, never measured better


def check_strength(strength: float) -> float:
    """``strength`` as a float in [0, MAX_STRENGTH]; ValueError otherwise."""
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise ValueError(f"postfilter strength must be a number, got {strength!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= MAX_STRENGTH):
        raise ValueError(f"postfilter strength must lie in [0, {MAX_STRENGTH:g}], got {strength!r}")
    return value


def envelope_operator(n_bins: int, low: int = LIFTER_LOW, high: int = LIFTER_HIGH) -> torch.Tensor:
    """``(n_bins, n_bins)`` float64 matrix ``L`` with ``log_mag @ L`` = the liftered envelope of ``log_mag``
    ``(..., n_bins)`` (the module docstring): ``rfft(mask · irfft(log_mag)).real`` over ``2·(n_bins-1)`` points,
    the mask keeping quefrencies ``low .. high-1`` and their mirror images."""
    n = 2 * (n_bins - 1)
    if not 0 <= low < high <= n // 2:
        raise ValueError(f"lifter quefrencies {low}..{high} do not fit a {n}-point cepstrum")
    mask = torch.zeros(n, dtype=torch.float64)
    mask[low:high] = 1.0
    mask[n - high + 1:n - low + 1] = 1.0  # quefrency q and n - q are the same (the cepstrum is even)
    cepstra = torch.fft.irfft(torch.eye(n_bins, dtype=torch.float64), n=n, dim=-1)  # row i: bin i's cepstrum
    return torch.fft.rfft(cepstra * mask, n=n, dim=-1).real


def deepen_valleys(log_mag: torch.Tensor, operator: torch.Tensor, strength: float) -> torch.Tensor:
    """Postfiltered log-magnitudes: ``log_mag`` ``(..., n_bins)`` (natural log) plus ``strength`` times the
    negative part of its envelope (``log_mag @ operator``, ``operator`` from :func:`envelope_operator`)."""
    return log_mag + strength * (log_mag @ operator).clamp(max=0.0)
