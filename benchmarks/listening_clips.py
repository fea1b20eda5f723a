"""Which utterances the listening page plays: distinct speakers spread over sex (or pitch), cut to 3-5 s at a pause.

The rule (deterministic; it depends on the data only, never on the model, so a regenerated page plays the same
clips):

1. One candidate per speaker: the speaker's first file (sorted by path) that is at least ``min_seconds`` long.
   The speaker is the first ``-``-separated field of the file name (LibriSpeech: ``<speaker>-<chapter>-<utt>``).
2. Speakers are grouped by sex when LibriSpeech's ``SPEAKERS.TXT`` is found beside the data (in the data folder
   or up to two folders above it) and lists every candidate. Otherwise (as for ``../shared/data/speech-dev``,
   which has no speaker metadata) they are grouped by the median fundamental frequency (F0) of the first
   :data:`F0_SECONDS` of the file: *lower-pitched* below :data:`LOW_F0_MAX_HZ` (the typical adult male range is
   about 85-155 Hz) and *higher-pitched* above :data:`HIGH_F0_MIN_HZ` (typical adult female range about
   165-255 Hz); speakers in between are left out. A pitch group is a guess at sex, not a fact about the speaker.
3. The clips are shared out between the groups as evenly as possible (the first group gets any extra one);
   within a group of ``g`` speakers sorted by F0, the ``k`` picked are those at ranks
   ``floor((i + 0.5) * g / k)`` for ``i = 0 .. k-1`` (the centres of ``k`` equal slices), so the voices spread
   over the group's pitch range without taking its outliers.
4. Each clip starts 0.15 s before the first frame with speech energy and ends, between ``min_seconds`` and
   ``max_seconds`` later, in a pause (so no word is cut in half): at the first 60 ms of that span whose energy
   is within 3 dB of the quietest 60 ms of the span (so that a long pause is not kept whole).

F0 is estimated with YIN (de Cheveigné and Kawahara 2002): 40 ms frames every 10 ms, lags for 60-400 Hz,
threshold 0.15 on the cumulative-mean-normalised difference, frames quieter than 10 % of the 95th-percentile
frame energy skipped; the median over the voiced frames is the speaker's F0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000  # clips are cut from 16 kHz mono signals
F0_SECONDS = 10.0  # F0 is estimated on the first 10 s of a file
F0_MIN_HZ, F0_MAX_HZ = 60.0, 400.0
YIN_THRESHOLD = 0.15
LOW_F0_MAX_HZ = 155.0
HIGH_F0_MIN_HZ = 165.0
LEAD_IN_SECONDS = 0.15
ENERGY_FRAME_SECONDS = 0.02
ENERGY_HOP_SECONDS = 0.01
SPEECH_ENERGY_RATIO = 0.02  # a frame above 2 % (-17 dB) of the 95th-percentile frame energy holds speech
PAUSE_SMOOTHING_FRAMES = 6  # pauses are measured over 60 ms
PAUSE_TOLERANCE = 2.0  # the end is the first 60 ms within 3 dB of the quietest (so a long pause is not kept whole)


@dataclass
class Clip:
    """One utterance cut for the page.

    Attributes:
        path: the source file.
        utterance: its name without extension (e.g. ``6081-41997-0000``).
        speaker: speaker id.
        group: ``"female"``/``"male"`` from ``SPEAKERS.TXT``, else ``"lower-pitched"``/``"higher-pitched"``.
        group_source: ``"SPEAKERS.TXT"`` or ``"median F0"``.
        f0_hz: median F0 of the first :data:`F0_SECONDS` of the file.
        start, end: the clip, in samples of the 16 kHz signal.
        audio: the clip itself, float32 ``(end - start,)``.
    """

    path: Path
    utterance: str
    speaker: str
    group: str
    group_source: str
    f0_hz: float
    start: int
    end: int
    audio: np.ndarray

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE


def median_f0(x: np.ndarray, sr: int) -> float:
    """Median F0 in Hz over the voiced frames of ``x`` (YIN, see the module docstring); NaN if none is voiced."""
    x = np.asarray(x, dtype=np.float64)
    n, hop = int(0.04 * sr), int(ENERGY_HOP_SECONDS * sr)
    lag_min, lag_max = int(sr / F0_MAX_HZ), int(math.ceil(sr / F0_MIN_HZ))
    if x.size < n:
        return math.nan
    frames = np.lib.stride_tricks.sliding_window_view(x, n)[::hop]
    frames = frames - frames.mean(axis=1, keepdims=True)
    energy = (frames ** 2).mean(axis=1)
    floor = 0.1 * np.percentile(energy, 95)
    if floor <= 0:
        return math.nan
    lags = np.arange(lag_max + 1)
    f0s = []
    for frame in frames[energy >= floor]:
        spectrum = np.fft.rfft(frame, 2 * n)
        autocorr = np.fft.irfft(spectrum * np.conj(spectrum))[:lag_max + 1]
        cumulative = np.cumsum(frame ** 2)
        head = cumulative[n - 1 - lags]  # energy of frame[:n - lag]
        tail = cumulative[n - 1] - np.concatenate([[0.0], cumulative[:lag_max]])  # energy of frame[lag:]
        diff = head + tail - 2.0 * autocorr  # sum_j (x_j - x_{j+lag})^2
        running = np.cumsum(diff[1:])
        cmnd = np.ones(lag_max + 1)
        cmnd[1:] = diff[1:] * lags[1:] / np.maximum(running, 1e-12)
        below = np.flatnonzero(cmnd[lag_min:] < YIN_THRESHOLD)
        if below.size == 0:
            continue
        lag = lag_min + int(below[0])
        while lag < lag_max and cmnd[lag + 1] < cmnd[lag]:  # down to the local minimum
            lag += 1
        f0s.append(sr / lag)
    return float(np.median(f0s)) if f0s else math.nan


def speech_window(x: np.ndarray, sr: int, min_seconds: float, max_seconds: float) -> tuple[int, int] | None:
    """``(start, end)`` samples of a clip of ``x`` lasting ``min_seconds`` to ``max_seconds`` (rule 4 of the
    module docstring), or None if ``x`` is shorter than ``min_seconds``."""
    min_len, max_len = int(round(min_seconds * sr)), int(round(max_seconds * sr))
    if x.size < min_len:
        return None
    frame, hop = int(ENERGY_FRAME_SECONDS * sr), int(ENERGY_HOP_SECONDS * sr)
    if x.size < frame:
        return 0, x.size
    energy = (np.lib.stride_tricks.sliding_window_view(np.asarray(x, dtype=np.float64), frame)[::hop] ** 2).mean(axis=1)
    loud = np.flatnonzero(energy > SPEECH_ENERGY_RATIO * np.percentile(energy, 95))
    onset = int(loud[0]) * hop if loud.size else 0
    start = max(0, min(onset - int(LEAD_IN_SECONDS * sr), x.size - min_len))
    smoothed = np.convolve(energy, np.ones(PAUSE_SMOOTHING_FRAMES) / PAUSE_SMOOTHING_FRAMES, mode="same")
    centres = np.arange(energy.size) * hop + frame // 2
    allowed = np.flatnonzero((centres >= start + min_len) & (centres <= min(start + max_len, x.size)))
    if allowed.size == 0:  # the file ends before a pause could be found: take what there is
        return start, min(start + max_len, x.size)
    quiet = smoothed[allowed]
    first = int(np.flatnonzero(quiet <= PAUSE_TOLERANCE * quiet.min() + 1e-12)[0])  # the earliest near-quietest
    return start, int(centres[allowed[first]])


def speaker_of(path: Path) -> str:
    """The speaker id of a file: the first ``-``-separated field of its name."""
    return path.stem.split("-")[0]


def find_speakers_txt(data: Path) -> Path | None:
    """LibriSpeech's ``SPEAKERS.TXT`` in ``data`` or up to two folders above it, if there is one."""
    for folder in (data, data.parent, data.parent.parent):
        candidate = folder / "SPEAKERS.TXT"
        if candidate.is_file():
            return candidate
    return None


def read_speaker_sexes(path: Path) -> dict[str, str]:
    """``{speaker id: "female"|"male"}`` from a LibriSpeech ``SPEAKERS.TXT`` (``ID | SEX | SUBSET | ...``)."""
    sexes = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(";") or "|" not in line:
            continue
        fields = [f.strip() for f in line.split("|")]
        if len(fields) >= 2 and fields[1].upper() in ("F", "M"):
            sexes[fields[0]] = "female" if fields[1].upper() == "F" else "male"
    return sexes


def _spread(members: list, k: int) -> list:
    """``k`` of ``members`` (sorted by F0) at the centres of ``k`` equal slices."""
    g = len(members)
    return [members[int(math.floor((i + 0.5) * g / k))] for i in range(k)]


def _shares(sizes: list[int], n: int) -> list[int]:
    """Clips per group: as even as possible, the first group first, never more than a group holds."""
    shares = [0] * len(sizes)
    while sum(shares) < n:
        open_groups = [i for i in range(len(sizes)) if shares[i] < sizes[i]]
        if not open_groups:
            break
        i = min(open_groups, key=lambda j: (shares[j], j))
        shares[i] += 1
    return shares


def choose_clips(files: list[Path], n: int, min_seconds: float, max_seconds: float, read,
                 speakers_txt: Path | None = None) -> list[Clip]:
    """The ``n`` clips of the module docstring's rule, ordered by group then F0.

    Args:
        files: candidate audio files, sorted.
        read: ``read(path) -> float32 (T,)`` at 16 kHz mono.
        speakers_txt: a LibriSpeech ``SPEAKERS.TXT`` (None: group by median F0).

    Raises:
        ValueError: fewer than ``n`` usable speakers.
    """
    candidates: dict[str, tuple[Path, np.ndarray, tuple[int, int]]] = {}
    for path in files:
        speaker = speaker_of(path)
        if speaker in candidates:
            continue
        audio = read(path)
        window = speech_window(audio, SAMPLE_RATE, min_seconds, max_seconds)
        if window is not None:
            candidates[speaker] = (path, audio, window)
    sexes = read_speaker_sexes(speakers_txt) if speakers_txt else {}
    use_sex = bool(sexes) and all(s in sexes for s in candidates)
    groups: dict[str, list[Clip]] = {}
    for speaker, (path, audio, (start, end)) in candidates.items():
        f0 = median_f0(audio[:int(F0_SECONDS * SAMPLE_RATE)], SAMPLE_RATE)
        if use_sex:
            group = sexes[speaker]
        elif not math.isfinite(f0) or LOW_F0_MAX_HZ <= f0 <= HIGH_F0_MIN_HZ:
            continue
        else:
            group = "lower-pitched" if f0 < LOW_F0_MAX_HZ else "higher-pitched"
        groups.setdefault(group, []).append(Clip(path, path.stem, speaker, group,
                                                 "SPEAKERS.TXT" if use_sex else "median F0", f0, start, end,
                                                 np.ascontiguousarray(audio[start:end], dtype=np.float32)))
    names = sorted(groups, key=lambda g: ("lower-pitched", "higher-pitched", "male", "female").index(g))
    usable = sum(len(groups[g]) for g in names)
    if usable < n:
        raise ValueError(f"only {usable} usable speakers (files of at least {min_seconds:g} s"
                         + ("" if use_sex else ", median F0 outside 155-165 Hz") + f"); asked for {n} clips")
    chosen = []
    for name, k in zip(names, _shares([len(groups[g]) for g in names], n)):
        members = sorted(groups[name], key=lambda c: (c.f0_hz, c.speaker))
        chosen += _spread(members, k) if k else []
    return chosen
