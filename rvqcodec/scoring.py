"""Scoring a reference/degraded pair of any length in bounded memory: align once, then score equal segments.

Used by ``rvqcodec eval`` (:func:`evaluate_files`), ``rvqcodec roundtrip`` (:func:`score_streams` on the decoded
stream) and, for two signals in memory, :func:`evaluate_pair` (``benchmarks/quality.py``, the listening page), so
all of them give the same numbers for the same signals.

* **Alignment** (optional): the delay is found on the first ``ALIGN_SECONDS`` (30 s) of both signals with
  :func:`rvqcodec.metrics.find_delay` (significant waveform peak, else envelope match, else none) and removed
  from the whole signal.
* **Segments**: the common length ``T`` is cut into ``ceil(T / 60 s)`` equal segments
  (:func:`rvqcodec.metrics.equal_segments`); each segment is scored with
  :func:`rvqcodec.metrics.score_aligned` and every metric is the length-weighted mean over the segments where it
  is defined. Up to 60 s (all of LibriSpeech) that is one segment: exactly the whole-signal scores. Segments
  keep the ITU PESQ library below the length at which it crashes the process (~140 s at 16 kHz) and bound the
  memory: signals are consumed as streams of blocks, so only one segment of each is held (60 s at 16 kHz in
  float64: 7.7 MB, plus the metrics' working memory), whatever the length.

* **Undefined scores are said once**: a metric that is undefined is NaN (n/a) and a one-line note says why:
  :func:`short_signal_note` (too short for PESQ/STOI), :func:`silence_note` (digital silence),
  :func:`narrowband_note` (a reference recorded below 16 kHz has no wideband PESQ, whatever rate it is scored at).

Result dicts have the keys of :data:`rvqcodec.metrics.METRIC_NAMES` plus ``delay_samples``, ``delay_seconds``,
``delay_method``, ``delay_correlation``, ``num_samples`` (compared length), ``sample_rate``, ``segments``,
``silent_reference`` and ``silent_degraded`` (every compared sample of that signal is digital silence).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from rvqcodec import metrics
from rvqcodec.data.audio_io import mono_samples
from rvqcodec.errors import InputError
from rvqcodec.lengths import MAX_SHIFT_SECONDS, READ_BLOCK_SECONDS

SEGMENT_SECONDS = 60.0
ALIGN_SECONDS = 30.0


def segment_lengths(num_samples: int, sample_rate: int) -> list[int]:
    """Lengths of the equal segments (at most ``SEGMENT_SECONDS`` each) that ``num_samples`` are scored in."""
    return [b - a for a, b in metrics.equal_segments(num_samples, int(SEGMENT_SECONDS * sample_rate))]


def short_signal_note(num_samples: int, sample_rate: int) -> str | None:
    """A one-line explanation when a compared length is too short for PESQ or STOI (those are reported n/a)."""
    seconds = num_samples / sample_rate
    if seconds >= max(metrics.PESQ_MIN_SECONDS, metrics.STOI_MIN_SECONDS):
        return None
    undefined = []
    if seconds < metrics.PESQ_MIN_SECONDS:
        undefined.append(f"PESQ needs {metrics.PESQ_MIN_SECONDS:g} s")
    if seconds < metrics.STOI_MIN_SECONDS:
        undefined.append(f"STOI needs {metrics.STOI_MIN_SECONDS:.2f} s")
    return f"only {seconds:.3f} s to compare ({', '.join(undefined)}): reported as n/a"


def silence_note(result: dict[str, Any]) -> str | None:
    """A one-line explanation when a signal of a result is digital silence (the metrics it leaves undefined are
    n/a; :mod:`rvqcodec.metrics`), else None."""
    if result.get("silent_reference") and result.get("silent_degraded"):
        return ("reference and degraded signal are digital silence: PESQ, STOI and SI-SDR are undefined, reported "
                "as n/a (mel distance 0: identical)")
    if result.get("silent_reference"):
        return "reference is digital silence: PESQ, STOI, SI-SDR and mel distance are undefined, reported as n/a"
    if result.get("silent_degraded"):
        return "degraded signal is digital silence: PESQ and STOI are undefined, reported as n/a"
    return None


def narrowband_note(reference_rate: int | None) -> str | None:
    """A one-line explanation when the reference was recorded below 16 kHz (no wideband PESQ), else None."""
    if reference_rate is None or reference_rate >= metrics.PESQ_WB_MIN_RATE:
        return None
    return (f"reference sampled at {reference_rate} Hz: wideband PESQ needs at least {metrics.PESQ_WB_MIN_RATE} Hz, "
            "reported as n/a (PESQ-NB is scored)")


def segments_note(result: dict[str, Any]) -> str | None:
    """A one-line statement that a long signal was scored in segments (None for one segment)."""
    if result["segments"] <= 1:
        return None
    seconds = result["num_samples"] / result["sample_rate"]
    return (f"{seconds:.1f} s scored in {result['segments']} segments of {seconds / result['segments']:.1f} s "
            f"(at most {SEGMENT_SECONDS:g} s each); the scores are length-weighted means over the segments")


def reblock(blocks: Iterable[torch.Tensor | np.ndarray], lengths: Iterable[int], skip: int = 0) -> Iterator[np.ndarray]:
    """Cut a stream of mono blocks into consecutive float64 pieces of the given ``lengths``, after dropping its first
    ``skip`` samples. Stops when the stream ends (the last piece may then be shorter; an empty one is not yielded).
    Holds at most one piece plus one block in memory."""
    iterator = iter(blocks)
    pending: list[np.ndarray] = []
    have = 0
    exhausted = False

    def fill(target: int) -> None:
        nonlocal have, exhausted
        while have < target and not exhausted:
            try:
                block = mono_samples(next(iterator))
            except StopIteration:
                exhausted = True
                return
            pending.append(block)
            have += block.size

    def take(count: int) -> np.ndarray:
        nonlocal have
        fill(count)
        if not pending:
            return np.zeros(0)
        joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
        piece, rest = joined[:count], joined[count:]
        pending[:] = [rest] if rest.size else []
        have = rest.size
        return piece

    while skip > 0:
        dropped = take(min(skip, 1 << 20)).size
        if dropped == 0:
            return
        skip -= dropped
    for length in lengths:
        piece = take(int(length)) if length > 0 else np.zeros(0)
        if piece.size == 0:
            return
        yield piece.astype(np.float64, copy=False)


def score_streams(ref_blocks: Iterable[torch.Tensor | np.ndarray], deg_blocks: Iterable[torch.Tensor | np.ndarray],
                  sample_rate: int, num_samples: int, ref_skip: int = 0, deg_skip: int = 0,
                  on_segment: Callable[[int, int], None] | None = None, perceptual=None,
                  reference_rate: int | None = None) -> dict[str, Any]:
    """Score two mono streams at ``sample_rate`` over ``num_samples`` samples in equal segments (module docstring).

    Args:
        ref_blocks, deg_blocks: consecutive blocks ``(t,)`` or ``(1, t)`` of each signal (any sizes).
        num_samples: how many samples to compare (after the skips); a stream that ends earlier shortens it.
        ref_skip, deg_skip: samples dropped from the start of each stream first (a removed delay).
        on_segment: called as ``on_segment(done, total)`` after each scored segment (progress).
        perceptual: a :class:`rvqcodec.perceptual.PerceptualScorer` to add the listener-model scores
            (:data:`rvqcodec.perceptual.PERCEPTUAL_NAMES`), or None.
        reference_rate: the rate the reference was recorded at, if known; below 16 kHz wideband PESQ is NaN
            (:func:`narrowband_note`).

    Returns:
        The metrics (length-weighted means; NaN where undefined), ``num_samples`` actually compared,
        ``sample_rate``, ``segments``, ``silent_reference`` and ``silent_degraded``.
    """
    names = metric_names(perceptual is not None)
    lengths = segment_lengths(num_samples, sample_rate)
    wideband = narrowband_note(reference_rate) is None  # (below 16 kHz metrics.pesq_wb is NaN by itself)
    scores: list[dict[str, float]] = []
    weights: list[int] = []
    silent = {"silent_reference": True, "silent_degraded": True}
    for ref, deg in zip(reblock(ref_blocks, lengths, ref_skip), reblock(deg_blocks, lengths, deg_skip)):
        n = min(ref.size, deg.size)
        for name, x in (("reference", ref), ("degraded signal", deg)):
            if not np.all(np.isfinite(x[:n])):
                raise InputError(f"the {name} contains NaN or infinite samples")
        silent["silent_reference"] &= metrics.is_digital_silence(ref[:n])
        silent["silent_degraded"] &= metrics.is_digital_silence(deg[:n])
        scores.append(metrics.score_aligned(ref[:n], deg[:n], sample_rate, wideband=wideband))
        if perceptual is not None:
            scores[-1].update(perceptual.score(ref[:n], deg[:n], sample_rate))
        weights.append(n)
        if on_segment is not None:
            on_segment(len(scores), len(lengths))
        if n < lengths[len(scores) - 1]:
            break  # a stream ended early
    result: dict[str, Any] = {name: metrics.weighted_mean([s[name] for s in scores], weights) for name in names}
    result.update(num_samples=int(sum(weights)), sample_rate=int(sample_rate), segments=len(scores))
    result.update({key: bool(value and sum(weights) > 0) for key, value in silent.items()})
    return result


def metric_names(perceptual: bool) -> tuple[str, ...]:
    """The score keys of a result: :data:`rvqcodec.metrics.METRIC_NAMES`, then the listener-model ones."""
    if not perceptual:
        return metrics.METRIC_NAMES
    from rvqcodec.perceptual import PERCEPTUAL_NAMES

    return metrics.METRIC_NAMES + PERCEPTUAL_NAMES


def _delay_fields(estimate: metrics.DelayEstimate | None, sample_rate: int) -> dict[str, Any]:
    if estimate is None:
        return {"delay_samples": 0, "delay_seconds": 0.0, "delay_method": "off", "delay_correlation": math.nan}
    return {"delay_samples": estimate.samples, "delay_seconds": estimate.samples / sample_rate,
            "delay_method": estimate.method, "delay_correlation": estimate.correlation}


def _check_max_shift(max_shift_seconds: float) -> None:
    if not (max_shift_seconds >= 0 and math.isfinite(max_shift_seconds)):
        raise ValueError(f"max_shift_seconds must be a finite number >= 0, got {max_shift_seconds!r}")


def evaluate_pair(ref, deg, sr: int, align: bool = True, max_shift_seconds: float = MAX_SHIFT_SECONDS,
                  perceptual=None, reference_rate: int | None = None) -> dict[str, Any]:
    """All metrics for one reference/degraded pair at sample rate ``sr`` (signals in memory, any length).

    ``ref`` and ``deg`` are ``(T,)`` or ``(1, T)``, numpy or torch, any length including 0. With ``align=True``
    the delay is found on the first ``ALIGN_SECONDS`` (30 s) of both signals (:func:`rvqcodec.metrics.find_delay`,
    up to ``max_shift_seconds``) and removed; otherwise the signals are only cropped to their common length.
    Signals longer than 60 s are scored in equal segments (:func:`score_streams`: the same numbers as
    ``rvqcodec eval``).

    Returns a dict with keys ``pesq_wb``, ``pesq_nb``, ``stoi``, ``si_sdr`` (dB), ``mel_distance`` (floats,
    NaN where undefined; length-weighted means over segments), ``delay_samples`` (int), ``delay_seconds``,
    ``delay_method`` (see :class:`rvqcodec.metrics.DelayEstimate`; ``"off"`` without alignment),
    ``delay_correlation``, ``num_samples`` (compared length, int), ``sample_rate`` (int) and ``segments`` (int);
    with a ``perceptual`` scorer (:class:`rvqcodec.perceptual.PerceptualScorer`) also its scores;
    ``silent_reference`` and ``silent_degraded`` (:func:`silence_note`). ``reference_rate``: the rate ``ref`` was
    recorded at, when it was resampled to ``sr`` (below 16 kHz: no wideband PESQ).
    """
    sample_rate = sr
    sample_rate = metrics._check_sr(sample_rate)
    _check_max_shift(max_shift_seconds)
    ref, deg = (mono_samples(x).astype(np.float64, copy=False) for x in (ref, deg))
    for name, x in (("reference", ref), ("degraded signal", deg)):
        if not np.all(np.isfinite(x)):
            raise InputError(f"the {name} contains NaN or infinite samples")
    estimate = None
    if align:
        window = int(ALIGN_SECONDS * sample_rate)
        if ref.size and deg.size:
            estimate = metrics.find_delay(ref[:window], deg[:window], int(round(max_shift_seconds * sample_rate)),
                                          sample_rate)
        else:
            estimate = metrics.DelayEstimate(0, "none", math.nan)
    delay = estimate.samples if estimate is not None else 0
    ref_skip, deg_skip = max(0, -delay), max(0, delay)
    n = max(0, min(ref.size - ref_skip, deg.size - deg_skip))
    result = score_streams([ref], [deg], sample_rate, n, ref_skip, deg_skip, perceptual=perceptual,
                           reference_rate=reference_rate)
    result.update(_delay_fields(estimate, sample_rate))
    return result


def resampled_length(frames: int, source_rate: int, target_rate: int) -> int:
    """Samples that ``frames`` samples at ``source_rate`` become at ``target_rate`` (``ceil``, as the resampler)."""
    return frames if source_rate == target_rate else -(-frames * int(target_rate) // int(source_rate))


def file_blocks(path: str | os.PathLike, target_sr: int) -> Iterator[torch.Tensor]:
    """Mono float32 blocks ``(1, t)`` of an audio file at ``target_sr`` (streamed resampling; nothing for a file
    with no samples). A float file beyond full scale is scaled to peak at full scale
    (:func:`rvqcodec.data.audio_io.input_warnings` says so). :class:`rvqcodec.data.audio_io.AudioReadError` for an
    unreadable file."""
    from rvqcodec.data import audio_io

    info = audio_io.audio_info(path)
    if info.frames == 0:
        return iter(())
    block_frames = max(1, round(READ_BLOCK_SECONDS * info.samplerate))
    return audio_io.iter_audio_blocks(path, block_frames, target_sr=target_sr, mono=True, fit_full_scale=True)


def _head(blocks: Iterable[torch.Tensor], count: int) -> np.ndarray:
    """The first ``count`` samples of a stream (fewer if it is shorter), float64."""
    return next(reblock(blocks, [count]), np.zeros(0))


def evaluate_files(ref_path: str | os.PathLike, deg_path: str | os.PathLike, sample_rate: int | None = None,
                   align: bool = True, max_shift_seconds: float = MAX_SHIFT_SECONDS,
                   on_segment: Callable[[int, int], None] | None = None, perceptual=None) -> dict[str, Any]:
    """Score an audio file against a reference file, streamed (bounded memory whatever their length).

    Both are averaged to mono (and a float file beyond full scale scaled to peak at full scale); ``deg_path`` is
    resampled to the reference's rate, or both to ``sample_rate``. The delay is found on the first 30 s
    (``align=True``) and the common length scored in segments; a ``perceptual`` scorer adds the listener-model
    scores. A reference recorded below 16 kHz gets no wideband PESQ (:func:`narrowband_note`).

    Raises:
        AudioReadError: a file cannot be read. InputError: NaN/inf samples. ValueError: a bad ``sample_rate`` or
            ``max_shift_seconds``.
    """
    from rvqcodec.data import audio_io

    _check_max_shift(max_shift_seconds)
    ref_info, deg_info = audio_io.audio_info(ref_path), audio_io.audio_info(deg_path)
    rate = int(ref_info.samplerate) if sample_rate is None else metrics._check_sr(sample_rate)
    ref_len = resampled_length(ref_info.frames, ref_info.samplerate, rate)
    deg_len = resampled_length(deg_info.frames, deg_info.samplerate, rate)
    estimate = None
    if align:
        estimate = metrics.DelayEstimate(0, "none", math.nan)
        if ref_len and deg_len:
            window = int(ALIGN_SECONDS * rate)
            head_ref, head_deg = _head(file_blocks(ref_path, rate), window), _head(file_blocks(deg_path, rate), window)
            for name, x in (("reference", head_ref), ("degraded signal", head_deg)):
                if not np.all(np.isfinite(x)):
                    raise InputError(f"the {name} contains NaN or infinite samples")
            if head_ref.size and head_deg.size:
                estimate = metrics.find_delay(head_ref, head_deg, int(round(max_shift_seconds * rate)), rate)
    delay = estimate.samples if estimate is not None else 0
    ref_skip, deg_skip = max(0, -delay), max(0, delay)
    n = max(0, min(ref_len - ref_skip, deg_len - deg_skip))
    result = score_streams(file_blocks(ref_path, rate), file_blocks(deg_path, rate), rate, n, ref_skip, deg_skip,
                           on_segment=on_segment, perceptual=perceptual,
                           reference_rate=min(int(ref_info.samplerate), rate))
    result.update(_delay_fields(estimate, rate))
    return result

