"""Objective speech-quality metrics: PESQ (wide/narrow band), STOI, SI-SDR, mel distance, and delay alignment.

Every function takes a reference ``ref`` and a degraded/decoded ``deg`` signal as 1-D numpy arrays or torch
tensors (``(T,)`` or ``(1, T)``), float, nominally in ``[-1, 1]``, at sample rate ``sr`` (Hz).

PESQ and STOI are undefined for some inputs (shorter than 0.25 s for PESQ, fewer than 30 speech frames of
25.6 ms for STOI, i.e. under 0.4 s at all, digital silence). For those they return ``NaN`` quietly (no exception,
no warning), so a batch evaluation never stops on one odd file (:func:`rvqcodec.scoring.evaluate_pair` reports
them as NaN too). Wideband PESQ is also ``NaN`` below a 16 kHz sample rate (P.862.2 is defined for wideband
signals; an 8 kHz signal has nothing above 4 kHz): narrowband PESQ is the score there.
SI-SDR returns ``NaN`` for a silent reference, ``+inf`` for a bit-exact copy and ``-inf`` for a silent degraded
signal.

**Digital silence** (peak ``|x|`` below 1e-8, :func:`is_digital_silence`): a silent reference leaves every metric
undefined. PESQ, STOI and SI-SDR are ``NaN``, and so is the mel distance unless the degraded signal is silent too:
against a silent reference the log-mel difference would only measure the degraded signal's level against the
``MEL_FLOOR`` of 1e-5 (e.g. 1.12 for a codec's faint hiss: an artefact of the floor, not a distance). When both are
digital silence the mel distance is ``0.0``: the two spectrograms are identical, whatever the floor. A silent
*degraded* signal against speech keeps its (large) mel distance: that loss is real.

Long signals: the ITU PESQ C library crashes the whole process (SIGSEGV) on buffers of more than about 140 s at
16 kHz, so :func:`pesq_wb` / :func:`pesq_nb` score longer signals in equal segments of at most
``PESQ_MAX_SECONDS`` and return the length-weighted mean; :mod:`rvqcodec.scoring` scores every metric segment
by segment and says how many segments it used.

Alignment (:func:`find_delay`): the delay is taken from the waveform cross-correlation only when its peak is
significant, else from the cross-correlation of log-energy envelopes (robust for phase-free codec output, 1 ms
resolution), else no delay is removed; the result says which method gave it.

``pesq`` and ``pystoi`` are the ``eval`` extra (``pip install "rvqcodec[eval]"``); they are imported only by the
functions that need them (:class:`rvqcodec.extras.MissingExtraError` if absent).
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torchaudio

from rvqcodec.extras import require

PESQ_MIN_SECONDS = 0.25  # the ITU P.862 implementation refuses shorter buffers
PESQ_MAX_SECONDS = 60.0  # longer signals are scored in equal segments (the C library segfaults beyond ~140 s)
PESQ_WB_MIN_RATE = 16000  # wideband PESQ is undefined for a signal sampled below this (no content above 4-8 kHz)
STOI_RATE, STOI_FRAME, STOI_MIN_FRAMES = 10000, 256, 30  # pystoi's internal rate, frame length and minimum frames
STOI_MIN_SECONDS = ((STOI_MIN_FRAMES - 1) * STOI_FRAME // 2 + STOI_FRAME) / STOI_RATE  # 0.397 s: fewer -> NaN
MEL_SAMPLE_RATE = 16000
MEL_N_FFT = 1024
MEL_HOP = 256
MEL_N_MELS = 80
MEL_FLOOR = 1e-5
_SILENCE = 1e-8  # peak |x| below this counts as digital silence


def _as_1d(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 1:
        raise ValueError(f"{name} must be a 1-D signal (T,) or (1, T), got shape {tuple(x.shape)}")
    if x.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite samples")
    return x


def _pair(ref, deg) -> tuple[np.ndarray, np.ndarray]:
    """Both as float64 1-D arrays cropped to their common length."""
    ref, deg = _as_1d(ref, "ref"), _as_1d(deg, "deg")
    n = min(ref.size, deg.size)
    return ref[:n], deg[:n]


def _check_sr(sr) -> int:
    if int(sr) != sr or sr <= 0:
        raise ValueError(f"sample rate must be a positive integer number of Hz, got {sr!r}")
    return int(sr)


def _resample(x: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    if sr == target_sr:
        return x
    from rvqcodec.data.audio_io import resample

    return resample(torch.from_numpy(x), sr, target_sr).numpy()


def is_digital_silence(x) -> bool:
    """Whether a signal is digital silence: its peak ``|x|`` is below 1e-8 (also True for an empty signal)."""
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64).reshape(-1)
    return x.size == 0 or float(np.max(np.abs(x))) < _SILENCE


def equal_segments(num_samples: int, max_samples: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: ``num_samples`` cut into ``ceil(num_samples / max_samples)`` consecutive segments
    whose lengths differ by at most one sample (so none is a useless sliver). ``[]`` for 0 samples."""
    if num_samples <= 0:
        return []
    count = -(-num_samples // max(1, int(max_samples)))
    base, extra = divmod(num_samples, count)
    bounds, start = [], 0
    for i in range(count):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def weighted_mean(values, weights) -> float:
    """Mean of ``values`` weighted by ``weights``, leaving out NaN values (``NaN`` if none is left); an infinite
    value makes the mean infinite."""
    pairs = [(float(v), float(w)) for v, w in zip(values, weights) if not math.isnan(v) and w > 0]
    if not pairs:
        return math.nan
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total


def _pesq_one(pesq_lib, ref: np.ndarray, deg: np.ndarray, pesq_sr: int, mode: str) -> float:
    if ref.size < PESQ_MIN_SECONDS * pesq_sr or is_digital_silence(ref) or is_digital_silence(deg):
        return math.nan
    try:
        return float(pesq_lib.pesq(pesq_sr, ref, deg, mode))
    except pesq_lib.PesqError:  # e.g. NoUtterancesError: no speech found in the reference
        return math.nan


def _pesq(ref, deg, sr, pesq_sr: int, mode: str) -> float:
    pesq_lib = require("pesq", "for PESQ")
    sr = _check_sr(sr)
    ref, deg = _pair(ref, deg)
    ref, deg = _resample(ref, sr, pesq_sr), _resample(deg, sr, pesq_sr)
    bounds = equal_segments(ref.size, int(PESQ_MAX_SECONDS * pesq_sr))
    scores = [_pesq_one(pesq_lib, ref[a:b], deg[a:b], pesq_sr, mode) for a, b in bounds]
    return weighted_mean(scores, [b - a for a, b in bounds])


def pesq_wb(ref, deg, sr: int) -> float:
    """Wide-band PESQ (ITU-T P.862.2) MOS-LQO, range about 1.04-4.64, higher is better.

    Signals are resampled to 16 kHz (band 50-7000 Hz) and cropped to their common length; they are not
    aligned here (PESQ aligns internally; see :func:`align` for a global delay). ``NaN`` if shorter than
    0.25 s, silent, if PESQ finds no utterance, or if ``sr`` is below 16 kHz (``PESQ_WB_MIN_RATE``: no wide band to
    score; see :func:`pesq_nb`). Longer than ``PESQ_MAX_SECONDS`` (60 s): the length-weighted
    mean over equal segments of at most 60 s (:func:`equal_segments`; NaN segments left out), because the C
    library crashes the process on long buffers.
    """
    if _check_sr(sr) < PESQ_WB_MIN_RATE:
        _pair(ref, deg)  # the same checks of the signals as at any other rate
        return math.nan
    return _pesq(ref, deg, sr, 16000, "wb")


def pesq_nb(ref, deg, sr: int) -> float:
    """Narrow-band PESQ (ITU-T P.862, raw MOS mapped to MOS-LQO by the library), about 1.0-4.55.

    Signals are resampled to 8 kHz (telephone band). Same ``NaN`` cases as :func:`pesq_wb`.
    """
    return _pesq(ref, deg, sr, 8000, "nb")


def stoi(ref, deg, sr: int, extended: bool = False) -> float:
    """Short-Time Objective Intelligibility (Taal et al. 2011) via ``pystoi``, range ~0-1, higher is better.

    pystoi resamples to 10 kHz and drops silent frames itself. ``NaN`` (quietly) when fewer than 30
    frames (~0.4 s of speech) remain, the signals are shorter than that (``STOI_MIN_SECONDS``) or a signal
    is silent. ``extended=True`` gives ESTOI.
    """
    sr = _check_sr(sr)
    ref, deg = _pair(ref, deg)
    if ref.size < STOI_MIN_SECONDS * sr or is_digital_silence(ref) or is_digital_silence(deg):
        return math.nan  # pystoi itself raises on signals under one frame (25.6 ms)
    pystoi_stoi = require("pystoi", "for STOI").stoi
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(pystoi_stoi(ref, deg, sr, extended=extended))
    if any("Not enough STFT frames" in str(w.message) for w in caught) or not math.isfinite(value):
        return math.nan
    return value


def si_sdr(ref, deg) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al. 2019), higher is better.

    With zero-mean ``r`` (ref) and ``d`` (deg), cropped to their common length:
    ``a = <d, r> / <r, r>``, target ``s = a r``, error ``e = d - s``, ``SI-SDR = 10 log10(|s|^2 / |e|^2)``.
    ``NaN`` for a silent (constant) reference, ``-inf`` for a silent (constant) degraded signal (no target at all),
    ``+inf`` when ``e`` is exactly zero otherwise (a bit-exact copy, up to scale).
    """
    ref, deg = _pair(ref, deg)
    ref = ref - ref.mean()
    deg = deg - deg.mean()
    ref_energy = float(np.dot(ref, ref))
    if ref_energy <= 0.0:
        return math.nan
    scale = float(np.dot(deg, ref)) / ref_energy
    target = scale * ref
    error = deg - target
    target_energy, error_energy = float(np.dot(target, target)), float(np.dot(error, error))
    if target_energy == 0.0:  # before the exact-copy test: a silent deg leaves no error *and* no target
        return -math.inf
    if error_energy == 0.0:
        return math.inf
    return 10.0 * math.log10(target_energy / error_energy)


@functools.lru_cache(maxsize=1)
def _mel_transform() -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=MEL_SAMPLE_RATE, n_fft=MEL_N_FFT, win_length=MEL_N_FFT, hop_length=MEL_HOP,
        f_min=0.0, f_max=MEL_SAMPLE_RATE / 2, n_mels=MEL_N_MELS, power=1.0, center=True,
        pad_mode="reflect", norm=None, mel_scale="htk").double()


def mel_distance(ref, deg, sr: int) -> float:
    """Mean absolute log-mel difference, in log10 units of magnitude (0 for identical signals).

    Both signals are cropped to their common length and resampled to 16 kHz. ``M`` is the magnitude
    (power 1) mel spectrogram: Hann window and FFT of 1024 samples (64 ms), hop 256 (16 ms), centred
    with reflect padding, 80 HTK-mel triangular filters from 0 to 8 kHz, no filter normalisation. Then

        D = mean over mel bins and frames of | log10(max(M_ref, 1e-5)) - log10(max(M_deg, 1e-5)) |.

    D = 1 means a typical 10x (20 dB) magnitude error per mel bin. Digital silence (module docstring): ``NaN`` for a
    silent reference (D would only measure ``deg`` against the floor), ``0.0`` when both are silent.
    """
    sr = _check_sr(sr)
    ref, deg = _pair(ref, deg)
    if is_digital_silence(ref):
        return 0.0 if is_digital_silence(deg) else math.nan
    ref, deg = _resample(ref, sr, MEL_SAMPLE_RATE), _resample(deg, sr, MEL_SAMPLE_RATE)
    if ref.size <= MEL_N_FFT // 2:  # reflect padding needs more than n_fft/2 samples
        pad = MEL_N_FFT // 2 + 1 - ref.size
        ref, deg = np.pad(ref, (0, pad)), np.pad(deg, (0, pad))
    mel = _mel_transform()
    with torch.no_grad():
        m_ref = mel(torch.from_numpy(ref)).clamp_min(MEL_FLOOR).log10()
        m_deg = mel(torch.from_numpy(deg)).clamp_min(MEL_FLOOR).log10()
    return float((m_ref - m_deg).abs().mean())


WAVEFORM_MIN_CORRELATION = 0.3
"""A waveform cross-correlation peak counts only if its normalised value is at least this ..."""
WAVEFORM_MIN_PEAK_RATIO = 2.0
"""... and at least this many times the largest |correlation| more than ``WAVEFORM_EXCLUSION_SECONDS`` away."""
WAVEFORM_EXCLUSION_SECONDS = 0.01
ENVELOPE_HOP_SECONDS = 0.001  # log-energy envelope: one value per 1 ms (the envelope method's resolution) ...
ENVELOPE_SMOOTH_HOPS = 5  # ... averaged over 5 ms ...
ENVELOPE_FLOOR_DB = -60.0  # ... with energies floored at 60 dB below the signal's loudest 5 ms
ENVELOPE_MIN_CORRELATION = 0.5
"""An envelope cross-correlation peak counts only if its normalised value is at least this, and not on the
border of the searched range."""
DELAY_METHODS = ("waveform", "envelope", "none")


@dataclass(frozen=True)
class DelayEstimate:
    """The delay found between a reference and a degraded signal.

    Attributes:
        samples: delay ``d`` of ``deg`` against ``ref`` in samples (``deg[n + d] ~ ref[n]``; positive: ``deg`` is
            late); 0 when ``method == "none"``.
        method: ``"waveform"`` (a significant waveform cross-correlation peak, sample-exact), ``"envelope"``
            (no such peak, but the log-energy envelopes match: 1 ms resolution; typical of phase-free codec
            output) or ``"none"`` (neither is significant, or a signal is silent: nothing is removed).
        correlation: the normalised cross-correlation at the chosen lag (of the waveforms or of the envelopes),
            NaN for ``"none"``.
    """

    samples: int
    method: str
    correlation: float


def _normalised_xcorr(ref: np.ndarray, deg: np.ndarray, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """``(lags, c)``: ``c[i] = sum_n r[n] g[n + lags[i]] / (|r| |g|)`` for ``|lag| <= max_lag``, with ``r`` and ``g``
    the mean-removed signals (computed by FFT). All zeros if a signal is constant."""
    ref, deg = ref - ref.mean(), deg - deg.mean()
    lags = np.arange(-max_lag, max_lag + 1)
    norm = math.sqrt(float(np.dot(ref, ref)) * float(np.dot(deg, deg)))
    if norm == 0.0:
        return lags, np.zeros(lags.size)
    n_fft = 1 << int(math.ceil(math.log2(ref.size + deg.size - 1)))
    corr = np.fft.irfft(np.conj(np.fft.rfft(ref, n_fft)) * np.fft.rfft(deg, n_fft), n_fft)
    return lags, corr[lags % n_fft] / norm


def _log_envelope(x: np.ndarray, hop: int) -> np.ndarray:
    """Log energy per ``hop`` samples, smoothed over ``ENVELOPE_SMOOTH_HOPS`` hops, floored ``ENVELOPE_FLOOR_DB``
    below its maximum (dB)."""
    frames = x[: x.size // hop * hop].reshape(-1, hop)
    energy = np.einsum("ij,ij->i", frames, frames)
    if energy.size >= ENVELOPE_SMOOTH_HOPS:
        energy = np.convolve(energy, np.ones(ENVELOPE_SMOOTH_HOPS) / ENVELOPE_SMOOTH_HOPS, mode="same")
    floor = max(float(energy.max(initial=0.0)), 1e-30) * 10 ** (ENVELOPE_FLOOR_DB / 10)
    return 10 * np.log10(np.maximum(energy, floor))


def find_delay(ref, deg, max_shift_samples: int, sample_rate: int = 16000) -> DelayEstimate:
    """The delay of ``deg`` against ``ref`` within ``±max_shift_samples``, and how it was found.

    1. **Waveform**: the lag of the largest normalised cross-correlation (mean removed, FFT). Used only when the
       peak is significant: at least ``WAVEFORM_MIN_CORRELATION`` (0.3), at least ``WAVEFORM_MIN_PEAK_RATIO``
       (2) times the largest |correlation| more than 10 ms from it, and not on the border of the range.
       Waveform codecs pass easily (measured on dev-clean at 6 kbps: Opus peak 0.50-0.81 with ratio >= 3,
       AMR-WB 0.80-0.92); phase-free output does not (the shipped rvqcodec model 0.05-0.08 with ratio < 1.5,
       Codec2 3200 0.08-0.28 with ratio < 1.7): there the argmax is noise, up to ±170 samples off.
    2. **Envelope**: otherwise, the lag maximising the normalised cross-correlation of the log-energy envelopes
       (1 ms hops, :func:`_log_envelope`), if that peak is at least ``ENVELOPE_MIN_CORRELATION`` (0.5) and not on
       the border of the range; resolution 1 ms (the shipped rvqcodec model: within ±1 ms of its true 0).
    3. Otherwise (or if a signal is silent, or ``max_shift_samples`` is 0) no delay: ``method == "none"``.
    """
    if int(max_shift_samples) != max_shift_samples or max_shift_samples < 0:
        raise ValueError(f"max_shift_samples must be a non-negative integer, got {max_shift_samples!r}")
    sample_rate = _check_sr(sample_rate)
    ref, deg = _as_1d(ref, "ref"), _as_1d(deg, "deg")
    max_shift = int(min(max_shift_samples, max(ref.size, deg.size) - 1))
    none = DelayEstimate(0, "none", math.nan)
    if max_shift == 0 or is_digital_silence(ref) or is_digital_silence(deg):
        return none
    lags, corr = _normalised_xcorr(ref, deg, max_shift)
    best = int(np.argmax(corr))
    peak = float(corr[best])
    far = np.abs(lags - lags[best]) > WAVEFORM_EXCLUSION_SECONDS * sample_rate
    rival = float(np.max(np.abs(corr[far]))) if far.any() else 0.0
    if peak >= WAVEFORM_MIN_CORRELATION and peak >= WAVEFORM_MIN_PEAK_RATIO * rival and abs(lags[best]) < max_shift:
        return DelayEstimate(int(lags[best]), "waveform", peak)
    hop = max(1, int(round(ENVELOPE_HOP_SECONDS * sample_rate)))
    max_lag = max_shift // hop
    env_ref, env_deg = _log_envelope(ref, hop), _log_envelope(deg, hop)
    if max_lag == 0 or min(env_ref.size, env_deg.size) < 2:
        return none
    lags, corr = _normalised_xcorr(env_ref, env_deg, max_lag)
    best = int(np.argmax(corr))
    if corr[best] >= ENVELOPE_MIN_CORRELATION and abs(lags[best]) < max_lag:
        return DelayEstimate(int(lags[best]) * hop, "envelope", float(corr[best]))
    return none


def estimate_delay(ref, deg, max_shift_samples: int, sample_rate: int = 16000) -> int:
    """Delay ``d`` of ``deg`` relative to ``ref`` in samples (``deg[n + d] ~ ref[n]``), ``|d| <= max_shift``.

    ``find_delay(...).samples``: the waveform cross-correlation peak when it is significant, else the envelope
    match, else 0 (see :func:`find_delay`). Positive: ``deg`` lags behind ``ref``. 0 if either signal is silent.
    """
    return find_delay(ref, deg, max_shift_samples, sample_rate).samples


def shift_pair(ref: np.ndarray, deg: np.ndarray, delay: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove ``delay`` (positive: drop ``deg``'s first ``delay`` samples; negative: drop ``ref``'s first ``-delay``)
    and crop both to the shorter length."""
    if delay > 0:
        deg = deg[delay:]
    elif delay < 0:
        ref = ref[-delay:]
    n = min(ref.size, deg.size)
    return ref[:n], deg[:n]


def align(ref, deg, max_shift_samples: int, sample_rate: int = 16000) -> tuple[np.ndarray, np.ndarray, int]:
    """Remove the delay of ``deg`` against ``ref`` and match their lengths.

    Returns ``(ref_aligned, deg_aligned, delay)``: float64 1-D arrays of equal length, where
    ``deg_aligned[n] ~ ref_aligned[n]``, and the delay of :func:`find_delay` (positive: ``deg`` was late,
    its first ``delay`` samples are dropped; negative: the first ``-delay`` samples of ``ref`` are dropped;
    0 when no significant delay was found). Both are then cropped to the shorter length.
    """
    ref, deg = _as_1d(ref, "ref"), _as_1d(deg, "deg")
    delay = estimate_delay(ref, deg, max_shift_samples, sample_rate)
    ref, deg = shift_pair(ref, deg, delay)
    return ref, deg, delay


METRIC_NAMES = ("pesq_wb", "pesq_nb", "stoi", "si_sdr", "mel_distance")


def score_aligned(ref: np.ndarray, deg: np.ndarray, sr: int, wideband: bool = True) -> dict[str, float]:
    """The five metrics (:data:`METRIC_NAMES`) of two aligned signals at ``sr`` Hz, cropped to the common length;
    NaN where undefined (for empty signals every metric is NaN). ``wideband=False``: the reference has no wide band
    (recorded below 16 kHz, then upsampled), so wideband PESQ is NaN whatever ``sr``."""
    ref, deg = np.asarray(ref, dtype=np.float64).reshape(-1), np.asarray(deg, dtype=np.float64).reshape(-1)
    n = min(ref.size, deg.size)
    if n == 0:
        return {name: math.nan for name in METRIC_NAMES}
    ref, deg = ref[:n], deg[:n]
    return {"pesq_wb": pesq_wb(ref, deg, sr) if wideband else math.nan, "pesq_nb": pesq_nb(ref, deg, sr),
            "stoi": stoi(ref, deg, sr), "si_sdr": si_sdr(ref, deg), "mel_distance": mel_distance(ref, deg, sr)}
