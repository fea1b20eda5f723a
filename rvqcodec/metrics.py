"""Objective speech-quality metrics: PESQ (wide/narrow band), STOI, SI-SDR, mel distance, and delay alignment.

Every function takes a reference ``ref`` and a degraded/decoded ``deg`` signal as 1-D numpy arrays or torch
tensors (``(T,)`` or ``(1, T)``), float, nominally in ``[-1, 1]``, at sample rate ``sr`` (Hz).

PESQ and STOI are undefined for some inputs (shorter than 0.25 s for PESQ, fewer than 30 speech frames of
25.6 ms for STOI, digital silence). For those they return ``NaN`` quietly (no exception, no warning), so a
batch evaluation never stops on one odd file; :func:`evaluate_pair` reports them as NaN too. SI-SDR returns
``NaN`` for a silent reference and ``+inf`` for a bit-exact copy.
"""
from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch
import torchaudio

PESQ_MIN_SECONDS = 0.25  # the ITU P.862 implementation refuses shorter buffers
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


def _is_silent(x: np.ndarray) -> bool:
    return float(np.max(np.abs(x))) < _SILENCE


def _pesq(ref, deg, sr, pesq_sr: int, mode: str) -> float:
    import pesq as pesq_lib

    sr = _check_sr(sr)
    ref, deg = _pair(ref, deg)
    ref, deg = _resample(ref, sr, pesq_sr), _resample(deg, sr, pesq_sr)
    if ref.size < PESQ_MIN_SECONDS * pesq_sr or _is_silent(ref) or _is_silent(deg):
        return math.nan
    try:
        return float(pesq_lib.pesq(pesq_sr, ref, deg, mode))
    except pesq_lib.PesqError:  # e.g. NoUtterancesError: no speech found in the reference
        return math.nan


def pesq_wb(ref, deg, sr: int) -> float:
    """Wide-band PESQ (ITU-T P.862.2) MOS-LQO, range about 1.04-4.64, higher is better.

    Signals are resampled to 16 kHz (band 50-7000 Hz) and cropped to their common length; they are not
    aligned here (PESQ aligns internally; see :func:`align` for a global delay). ``NaN`` if shorter than
    0.25 s, silent, or if PESQ finds no utterance.
    """
    return _pesq(ref, deg, sr, 16000, "wb")


def pesq_nb(ref, deg, sr: int) -> float:
    """Narrow-band PESQ (ITU-T P.862, raw MOS mapped to MOS-LQO by the library), about 1.0-4.55.

    Signals are resampled to 8 kHz (telephone band). Same ``NaN`` cases as :func:`pesq_wb`.
    """
    return _pesq(ref, deg, sr, 8000, "nb")


def stoi(ref, deg, sr: int, extended: bool = False) -> float:
    """Short-Time Objective Intelligibility (Taal et al. 2011) via ``pystoi``, range ~0-1, higher is better.

    pystoi resamples to 10 kHz and drops silent frames itself. ``NaN`` (quietly) when fewer than 30
    frames (~0.4 s of speech) remain or a signal is silent. ``extended=True`` gives ESTOI.
    """
    from pystoi import stoi as pystoi_stoi

    sr = _check_sr(sr)
    ref, deg = _pair(ref, deg)
    if _is_silent(ref) or _is_silent(deg):
        return math.nan
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
    ``NaN`` for a silent (constant) reference, ``+inf`` when ``e`` is exactly zero.
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
    if error_energy == 0.0:
        return math.inf
    if target_energy == 0.0:
        return -math.inf
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

    D = 1 means a typical 10x (20 dB) magnitude error per mel bin.
    """
    sr = _check_sr(sr)
    ref, deg = _pair(ref, deg)
    ref, deg = _resample(ref, sr, MEL_SAMPLE_RATE), _resample(deg, sr, MEL_SAMPLE_RATE)
    if ref.size <= MEL_N_FFT // 2:  # reflect padding needs more than n_fft/2 samples
        pad = MEL_N_FFT // 2 + 1 - ref.size
        ref, deg = np.pad(ref, (0, pad)), np.pad(deg, (0, pad))
    mel = _mel_transform()
    with torch.no_grad():
        m_ref = mel(torch.from_numpy(ref)).clamp_min(MEL_FLOOR).log10()
        m_deg = mel(torch.from_numpy(deg)).clamp_min(MEL_FLOOR).log10()
    return float((m_ref - m_deg).abs().mean())


def estimate_delay(ref, deg, max_shift_samples: int) -> int:
    """Delay ``d`` of ``deg`` relative to ``ref`` in samples (``deg[n + d] ~ ref[n]``), ``|d| <= max_shift``.

    The lag maximising the cross-correlation ``sum_n ref[n] deg[n + d]`` (computed by FFT). Positive:
    ``deg`` lags behind ``ref``. Returns 0 if either signal is silent.
    """
    if int(max_shift_samples) != max_shift_samples or max_shift_samples < 0:
        raise ValueError(f"max_shift_samples must be a non-negative integer, got {max_shift_samples!r}")
    ref, deg = _as_1d(ref, "ref"), _as_1d(deg, "deg")
    max_shift = int(min(max_shift_samples, max(ref.size, deg.size) - 1))
    if max_shift == 0 or _is_silent(ref) or _is_silent(deg):
        return 0
    n_fft = 1 << int(math.ceil(math.log2(ref.size + deg.size - 1)))
    corr = np.fft.irfft(np.conj(np.fft.rfft(ref, n_fft)) * np.fft.rfft(deg, n_fft), n_fft)
    lags = np.arange(-max_shift, max_shift + 1)
    values = corr[lags % n_fft]
    return int(lags[int(np.argmax(values))])


def align(ref, deg, max_shift_samples: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Remove the delay of ``deg`` against ``ref`` and match their lengths.

    Returns ``(ref_aligned, deg_aligned, delay)``: float64 1-D arrays of equal length, where
    ``deg_aligned[n] ~ ref_aligned[n]``, and the delay of :func:`estimate_delay` (positive: ``deg`` was late,
    its first ``delay`` samples are dropped; negative: the first ``-delay`` samples of ``ref`` are dropped).
    Both are then cropped to the shorter length.
    """
    ref, deg = _as_1d(ref, "ref"), _as_1d(deg, "deg")
    delay = estimate_delay(ref, deg, max_shift_samples)
    if delay > 0:
        deg = deg[delay:]
    elif delay < 0:
        ref = ref[-delay:]
    n = min(ref.size, deg.size)
    return ref[:n], deg[:n], delay


_align_signals = align  # evaluate_pair's ``align`` flag shadows the function name

METRIC_NAMES = ("pesq_wb", "pesq_nb", "stoi", "si_sdr", "mel_distance")


def evaluate_pair(ref, deg, sr: int, align: bool = True, max_shift_seconds: float = 0.1) -> dict[str, float]:
    """All metrics for one reference/degraded pair at sample rate ``sr``.

    With ``align=True`` the global delay (up to ``max_shift_seconds``) is removed first (:func:`align`);
    otherwise the signals are only cropped to their common length.

    Returns a dict with keys ``pesq_wb``, ``pesq_nb``, ``stoi``, ``si_sdr`` (dB), ``mel_distance`` (floats,
    NaN where undefined), ``delay_samples`` (int), ``delay_seconds``, ``num_samples`` (compared length, int)
    and ``sample_rate`` (int).
    """
    sr = _check_sr(sr)
    if not (max_shift_seconds >= 0):
        raise ValueError(f"max_shift_seconds must be >= 0, got {max_shift_seconds!r}")
    if align:
        ref, deg, delay = _align_signals(ref, deg, int(round(max_shift_seconds * sr)))
    else:
        ref, deg = _pair(ref, deg)
        delay = 0
    return {
        "pesq_wb": pesq_wb(ref, deg, sr),
        "pesq_nb": pesq_nb(ref, deg, sr),
        "stoi": stoi(ref, deg, sr),
        "si_sdr": si_sdr(ref, deg),
        "mel_distance": mel_distance(ref, deg, sr),
        "delay_samples": int(delay),
        "delay_seconds": delay / sr,
        "num_samples": int(ref.size),
        "sample_rate": sr,
    }
