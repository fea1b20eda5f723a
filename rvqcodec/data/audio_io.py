"""Reading and writing audio files (soundfile), with resampling (torchaudio) and atomic writes.

All samples are float32, channel-first ``(C, T)``, nominally in ``[-1, 1]``.

* :func:`read_audio` reads a whole file, optionally resamples it and downmixes it to mono.
* :func:`iter_audio_blocks` streams a long file in bounded-memory blocks; its resampled output equals
  the whole-file :func:`read_audio` output sample for sample (same length; values equal up to float32
  rounding in the convolution, ``<= 1e-4`` absolute for full-scale input; see :class:`StreamingResampler`).
* :func:`write_audio` writes atomically (temporary file in the same folder + ``os.replace``) and never
  overwrites an existing file unless asked to, nor any path listed as ``protected`` (the inputs);
  :func:`streamed_audio_file` writes the same way block by block (a decoded stream never held whole).

A file that cannot be read raises :class:`AudioReadError` (a ``ValueError``) with a one-line message.

What a file holds that a user should hear about (:func:`input_warnings`, one line each; the commands print them
as ``warning:`` lines and go on):

* **float samples beyond full scale** (a ``FLOAT``/``DOUBLE`` file peaking above 1.0, e.g. at 6.5: integer PCM
  cannot): with ``fit_full_scale=True`` (what ``compress``, ``roundtrip`` and ``eval`` read with) the whole file is
  divided by its peak as it is read, so it peaks at full scale and keeps its waveform; clipping it would destroy
  it. The peak comes from a first pass over the file (streamed, cached per file version). Peaks up to
  :data:`FULL_SCALE_TOLERANCE` are float rounding and left as they are.
* **a truncated file** (its header declares more audio than the file holds, e.g. a copy cut short): libsndfile
  reads what is there; the warning says how much that is and what the header declared (:func:`find_truncation`).
"""
from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio

from rvqcodec.errors import InputError
from rvqcodec.fileio import already_exists_message, atomic_path, check_output_folder, same_file

# torchaudio's default sinc-resampler settings; used both for whole files and for streamed blocks.
RESAMPLE_LOWPASS_WIDTH = 6
RESAMPLE_ROLLOFF = 0.99

# Only float subtypes keep samples beyond [-1, 1]; every other subtype (integer PCM, Vorbis, Opus, MP3, ...) gets
# input clipped to [-1, 1] first (libsndfile would wrap integers around).
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")
# Extensions whose format name is not the extension itself: (format, default subtype or None for the format's).
EXTENSION_FORMATS = {".oga": ("OGG", None), ".opus": ("OGG", "OPUS"), ".aif": ("AIFF", None)}
PCM_DEFAULT_SUBTYPE = "PCM_16"  # for formats that store PCM (wav, flac, aiff, ...) when no subtype is asked for


class AudioReadError(InputError):
    """An audio file could not be read (missing, a folder, empty, not audio, unsupported format); a ValueError."""


@dataclass
class AudioFile:
    """Audio read from disk.

    Attributes:
        samples: float32 tensor ``(C, T)`` at ``sample_rate``; ``C == 1`` when read with ``mono=True``.
        sample_rate: rate of ``samples`` in Hz (the target rate if one was asked for).
        source_sample_rate: rate stored in the file, Hz.
        source_channels: number of channels stored in the file.
        path: the file that was read.
    """

    samples: torch.Tensor
    sample_rate: int
    source_sample_rate: int
    source_channels: int
    path: Path

    @property
    def num_frames(self) -> int:
        return int(self.samples.shape[-1])

    @property
    def was_resampled(self) -> bool:
        return self.sample_rate != self.source_sample_rate

    @property
    def was_downmixed(self) -> bool:
        return self.samples.shape[0] < self.source_channels


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise AudioReadError(f"audio file not found: {path}")
    if path.is_dir():
        raise AudioReadError(f"expected an audio file but got a folder: {path}")
    if not path.is_file():
        raise AudioReadError(f"not a regular file: {path}")
    if path.stat().st_size == 0:
        raise AudioReadError(f"audio file is empty (0 bytes): {path}")
    if not os.access(path, os.R_OK):
        raise AudioReadError(f"audio file is not readable (permission denied): {path}")


def _open_error(path: Path, exc: Exception) -> AudioReadError:
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    detail = detail.replace(f"Error opening {str(path)!r}: ", "").strip()
    lowered = detail.lower()
    if "format not recognised" in lowered or "unknown format" in lowered or "unsupported" in lowered:
        reason = "not an audio file, or an unsupported format"
    else:
        reason = "unreadable audio"
    return AudioReadError(f"cannot read {path}: {reason} ({detail}); "
                          f"readable formats: wav, flac, ogg, mp3 and others supported by libsndfile")


def _check_rate(target_sr: int | None) -> None:
    if target_sr is not None and (int(target_sr) != target_sr or target_sr <= 0):
        raise ValueError(f"target sample rate must be a positive integer number of Hz, got {target_sr!r}")


# torchaudio builds a (n, 2*width + o) sinc kernel for rates reduced by their gcd to o -> n; rates with a
# tiny gcd (e.g. 44099 -> 16000) would need gigabytes. Refuse beyond this many kernel elements (~80 MB).
MAX_RESAMPLE_KERNEL_ELEMENTS = 20_000_000


def check_resample_rates(orig_sr: int, target_sr: int) -> None:
    """Raise :class:`InputError` (a ``ValueError``) if resampling ``orig_sr -> target_sr`` Hz would need an impractically large kernel."""
    gcd = math.gcd(int(orig_sr), int(target_sr))
    o, n = int(orig_sr) // gcd, int(target_sr) // gcd
    width = math.ceil(RESAMPLE_LOWPASS_WIDTH * o / (min(o, n) * RESAMPLE_ROLLOFF))
    if n * (2 * width + o) > MAX_RESAMPLE_KERNEL_ELEMENTS:
        raise InputError(f"cannot resample {orig_sr} Hz to {target_sr} Hz: the rates share too small a "
                         f"common divisor ({gcd}); convert the file to a standard rate first")


def resample(samples: torch.Tensor, orig_sr: int, target_sr: int) -> torch.Tensor:
    """Band-limited sinc resampling of ``samples (..., T)`` from ``orig_sr`` to ``target_sr`` Hz.

    Output length is ``ceil(T * target_sr / orig_sr)``. A no-op (same tensor) when the rates are equal.
    """
    if orig_sr == target_sr:
        return samples
    check_resample_rates(orig_sr, target_sr)
    return torchaudio.functional.resample(samples, int(orig_sr), int(target_sr),
                                          lowpass_filter_width=RESAMPLE_LOWPASS_WIDTH,
                                          rolloff=RESAMPLE_ROLLOFF)


def read_audio(path: str | os.PathLike, target_sr: int | None = None, mono: bool = True,
               fit_full_scale: bool = False) -> AudioFile:
    """Read a whole audio file.

    Args:
        path: file to read (any format libsndfile reads: wav, flac, ogg, mp3, aiff, ...).
        target_sr: resample to this rate in Hz; ``None`` keeps the file's rate.
        mono: average all channels into one (the caller decides whether to print a notice; see
            ``AudioFile.was_downmixed``).
        fit_full_scale: divide a float file whose samples exceed full scale by its peak (module docstring).

    Returns:
        :class:`AudioFile` with float32 ``samples (C, T)``.

    Raises:
        AudioReadError: missing file, a folder, an empty or non-audio file, an unreadable or
            unsupported format, or a file with no samples.
        ValueError: ``target_sr`` is not a positive integer.
    """
    _check_rate(target_sr)
    path = Path(path)
    _check_readable(path)
    try:
        data, source_sr = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise _open_error(path, exc) from None
    if data.shape[0] == 0:
        raise AudioReadError(f"audio file contains no samples: {path}")
    peak = _beyond_full_scale(path) if fit_full_scale else None
    if peak is not None:
        data = data / np.float32(peak)
    source_channels = int(data.shape[1])
    samples = torch.from_numpy(np.ascontiguousarray(data.T))  # (C, T)
    if mono and source_channels > 1:
        samples = samples.mean(dim=0, keepdim=True)
    sample_rate = int(source_sr)
    if target_sr is not None and int(target_sr) != sample_rate:
        try:
            check_resample_rates(sample_rate, int(target_sr))
        except ValueError as exc:
            raise AudioReadError(f"{path}: {exc}") from None
        samples = resample(samples, sample_rate, int(target_sr))
        sample_rate = int(target_sr)
    return AudioFile(samples=samples.contiguous(), sample_rate=sample_rate,
                     source_sample_rate=int(source_sr), source_channels=source_channels, path=path)


def audio_info(path: str | os.PathLike) -> soundfile._SoundFileInfo:
    """Header of an audio file (rate, channels, frames, format) without decoding it; ``AudioReadError`` if unreadable."""
    path = Path(path)
    _check_readable(path)
    try:
        return soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise _open_error(path, exc) from None


FULL_SCALE_TOLERANCE = 1.001
"""Float samples up to this (0.01 dB over full scale: rounding) are read as they are; beyond it a float file is
scaled to peak at full scale when read with ``fit_full_scale`` (module docstring)."""
PEAK_BLOCK_FRAMES = 1 << 18  # frames per block of the pass that finds a float file's peak
UNKNOWN_LENGTH = 0x7FFF0000
"""Declared sizes from this up are the 'length unknown' placeholders of files written to a pipe (0xFFFFFFFF,
0x7FFFFFFF, ...): not a truncation."""
_SHORT_SIZE = re.compile(r"^\s*([^:\n]*?)\s*:\s*(\d+) \(should be (\d+)\)\s*$", re.MULTILINE)


def float_peak(path: str | os.PathLike) -> float | None:
    """The largest ``|sample|`` of a file stored as floating point (``FLOAT``/``DOUBLE``), from one streamed pass
    (cached per file version: path, size, modification time); ``None`` for any other subtype (integer PCM cannot
    exceed full scale) or a file without samples. NaN or inf if the file holds such samples.
    :class:`AudioReadError` if unreadable."""
    path = Path(path)
    info = audio_info(path)
    if info.subtype not in FLOAT_SUBTYPES or info.frames == 0:
        return None
    stat = path.stat()
    return _float_peak(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _float_peak(path: str, size: int, mtime_ns: int) -> float:
    peak = 0.0
    try:
        with soundfile.SoundFile(path) as handle:
            for block in handle.blocks(blocksize=PEAK_BLOCK_FRAMES, dtype="float32", always_2d=True):
                if block.size:
                    block_peak = float(np.max(np.abs(block)))
                    if not math.isfinite(block_peak):
                        return block_peak  # left for the NaN/inf check of whoever reads the samples
                    peak = max(peak, block_peak)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise _open_error(Path(path), exc) from None
    return peak


def _beyond_full_scale(path: Path) -> float | None:
    """The peak a float file is divided by when read with ``fit_full_scale``, or None (nothing to scale)."""
    peak = float_peak(path)
    return peak if peak is not None and math.isfinite(peak) and peak > FULL_SCALE_TOLERANCE else None


@dataclass(frozen=True)
class Truncation:
    """A file whose header declares more audio than it holds (:func:`find_truncation`).

    Attributes:
        frames: frames the file holds (what is read). sample_rate: Hz.
        declared_frames: frames its header declares, where the header says (None where it only gives sizes).
        missing_bytes: how many bytes more than the file holds its header declares.
    """

    frames: int
    sample_rate: int
    declared_frames: int | None
    missing_bytes: int

    def message(self) -> str:
        held = f"{self.frames / self.sample_rate:.2f} s ({self.frames} samples)"
        if self.declared_frames is None:
            return (f"truncated file: its header declares {self.missing_bytes} bytes more than the file holds; "
                    f"read what it holds: {held}")
        return (f"truncated file: its header declares {self.declared_frames / self.sample_rate:.2f} s but the file "
                f"ends after {held}; read what it holds")


def find_truncation(path: str | os.PathLike) -> Truncation | None:
    """Whether ``path``'s header declares more audio than the file holds (WAV, AIFF, W64, RF64, ...), else None.

    libsndfile reads such a file as far as it goes and logs each size it corrected as ``name : declared (should be
    actual)``; that log is read here. For WAV and AIFF only the audio chunk counts (``data``, ``SSND``: a trailing
    metadata chunk cut off loses no audio). The declared length comes from the data chunk and block size (WAV), a
    ``Frames`` field (AIFF, RF64) or the byte rate (W64). Sizes from :data:`UNKNOWN_LENGTH` up are the placeholders
    of a file streamed to a pipe, not a truncation. :class:`AudioReadError` if unreadable.
    """
    path = Path(path)
    info = audio_info(path)
    try:
        with soundfile.SoundFile(str(path)) as handle:
            log = handle.extra_info
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise _open_error(path, exc) from None
    short = [(name, int(declared), int(actual)) for name, declared, actual in _SHORT_SIZE.findall(log)
             if int(actual) < int(declared) < UNKNOWN_LENGTH]
    wav, aiff = (re.search(pattern, log, re.MULTILINE) is not None for pattern in (r"^RIF[FX]\s*:", r"^FORM\s*:"))
    if wav or aiff:
        short = [entry for entry in short if entry[0] == ("data" if wav else "SSND")]
    if not short:
        return None

    def number(field: str) -> int | None:
        found = re.search(rf"^\s*{re.escape(field)}\s*:\s*(\d+)\s*$", log, re.MULTILINE)
        return int(found.group(1)) if found else None

    missing = max(declared - actual for _, declared, actual in short)
    block_align, frames_field, byte_rate = number("Block Align"), number("Frames"), number("Bytes/sec")
    declared_frames = None
    if wav and block_align:
        declared_frames = short[0][1] // block_align
    elif frames_field:
        declared_frames = frames_field
    elif byte_rate:
        declared_frames = info.frames + round(missing / byte_rate * info.samplerate)
    if declared_frames is not None and declared_frames <= info.frames:
        declared_frames = None  # the length fields disagree with the sizes: report the missing bytes only
    return Truncation(int(info.frames), int(info.samplerate), declared_frames, missing)


def input_warnings(path: str | os.PathLike) -> list[str]:
    """One line for each thing about ``path`` that reading it with ``fit_full_scale`` quietly works around (module
    docstring): a truncated file, float samples beyond full scale. ``[]`` for an ordinary file.
    :class:`AudioReadError` if unreadable."""
    lines = []
    truncation = find_truncation(path)
    if truncation is not None:
        lines.append(truncation.message())
    peak = _beyond_full_scale(Path(path))
    if peak is not None:
        lines.append(f"float samples reach {peak:.2f}, beyond full scale (1.0): the whole file is scaled by "
                     f"1/{peak:.2f} ({20 * math.log10(1 / peak):.1f} dB) to peak at full scale")
    return lines


class StreamingResampler:
    """Resamples a signal fed in arbitrary blocks so the concatenated output equals whole-signal resampling.

    Usage: ``out = [r.push(block) for block in blocks] + [r.flush()]`` with blocks ``(C, t)``; raises
    ``ValueError`` (see :func:`check_resample_rates`) for rate pairs that need an impractically big kernel.

    torchaudio's sinc resampler reduces the rates by their gcd to ``o -> n`` and computes output frame
    ``i`` (output samples ``i*n .. i*n+n-1``) from input samples ``[i*o - width, i*o + o + width)``, with
    zeros outside the signal. So output for an input span ``[p0, p1)`` whose ends are multiples of ``o``
    is exact if the resampler sees ``context >= width + o`` true input samples on each side (or the true
    signal edge, where whole-file resampling pads with zeros too). We keep that much context, emit whole
    frames only, and at the end flush the rest, truncating to ``ceil(T * n / o)`` samples as torchaudio
    does. The only difference to whole-file resampling is float32 summation order inside ``conv1d``
    (measured max abs difference: 2e-7 for 48 kHz -> 16 kHz, 5e-6 for 44.1 kHz, 2e-5 for 11.025 kHz,
    on full-scale white noise; the tests allow 1e-4).
    """

    def __init__(self, orig_sr: int, target_sr: int):
        check_resample_rates(orig_sr, target_sr)
        gcd = math.gcd(int(orig_sr), int(target_sr))
        self.o = int(orig_sr) // gcd
        self.n = int(target_sr) // gcd
        width = math.ceil(RESAMPLE_LOWPASS_WIDTH * self.o / (min(self.o, self.n) * RESAMPLE_ROLLOFF))
        self.context = self.o * math.ceil((width + self.o) / self.o)
        self.transform = torchaudio.transforms.Resample(int(orig_sr), int(target_sr),
                                                        lowpass_filter_width=RESAMPLE_LOWPASS_WIDTH,
                                                        rolloff=RESAMPLE_ROLLOFF)
        self.buffer: torch.Tensor | None = None  # input samples from absolute index buffer_start
        self.buffer_start = 0
        self.emitted_until = 0  # absolute input index (multiple of o) up to which output was produced
        self.total_in = 0

    def push(self, block: torch.Tensor) -> torch.Tensor:
        """Feed input ``(C, t)`` (floating point); returns the output ``(C, t')`` now final (possibly empty)."""
        if self.transform.kernel.dtype != block.dtype or self.transform.kernel.device != block.device:
            self.transform = self.transform.to(device=block.device, dtype=block.dtype)
        self.buffer = block if self.buffer is None else torch.cat([self.buffer, block], dim=1)
        self.total_in += block.shape[1]
        span_end = (self.total_in - self.context) // self.o * self.o  # last input index we can emit up to
        if span_end <= self.emitted_until:
            return block.new_zeros(block.shape[0], 0)
        left = min(self.context, self.emitted_until)
        chunk_lo = self.emitted_until - left
        chunk = self.buffer[:, chunk_lo - self.buffer_start: span_end + self.context - self.buffer_start]
        out = self.transform(chunk)
        first = left // self.o * self.n
        count = (span_end - self.emitted_until) // self.o * self.n
        result = out[:, first:first + count]
        self.emitted_until = span_end
        # Drop input no longer needed as left context.
        keep_from = max(0, self.emitted_until - self.context)
        self.buffer = self.buffer[:, keep_from - self.buffer_start:]
        self.buffer_start = keep_from
        return result

    def flush(self) -> torch.Tensor:
        """Output for all remaining input (call once, after the last :meth:`push`)."""
        if self.buffer is None:
            return torch.zeros(1, 0)
        total_out = math.ceil(self.total_in * self.n / self.o)
        already = self.emitted_until // self.o * self.n
        if total_out <= already:
            return self.buffer.new_zeros(self.buffer.shape[0], 0)
        left = min(self.context, self.emitted_until)
        chunk = self.buffer[:, self.emitted_until - left - self.buffer_start:]
        out = self.transform(chunk)
        first = left // self.o * self.n
        return out[:, first:first + total_out - already]


def iter_audio_blocks(path: str | os.PathLike, block_frames: int, target_sr: int | None = None,
                      mono: bool = True, fit_full_scale: bool = False) -> Iterator[torch.Tensor]:
    """Stream a (long) audio file in bounded-memory blocks.

    Args:
        path: audio file.
        block_frames: frames read from the file per step, at the *file's* rate. Memory use is
            ``O(block_frames + resampler context)`` whatever the file length.
        target_sr: resample to this rate (``None``: the file's rate).
        mono: average channels.
        fit_full_scale: divide a float file whose samples exceed full scale by its peak (module docstring; the
            peak is found by a first pass over the file).

    Yields:
        float32 tensors ``(C, t)`` at ``target_sr``. Block sizes vary (about ``block_frames * target_sr /
        file_rate``; resampled blocks are emitted in whole resampler frames). Their concatenation equals
        ``read_audio(path, target_sr, mono, fit_full_scale).samples``: exactly without resampling, and with resampling
        the same length and values within float32 rounding (``<= 1e-4`` absolute for full-scale input).

    Raises:
        AudioReadError: as :func:`read_audio`, raised by the call itself (the header is checked eagerly);
            a file damaged part way raises it during iteration.
    """
    if int(block_frames) != block_frames or block_frames <= 0:
        raise ValueError(f"block_frames must be a positive integer, got {block_frames!r}")
    _check_rate(target_sr)
    path = Path(path)
    # Validate now, so a bad file fails at the call rather than at the first next().
    info = audio_info(path)
    if info.frames == 0:
        raise AudioReadError(f"audio file contains no samples: {path}")
    resampler = None
    if target_sr is not None and int(target_sr) != int(info.samplerate):
        try:
            resampler = StreamingResampler(int(info.samplerate), int(target_sr))
        except ValueError as exc:
            raise AudioReadError(f"{path}: {exc}") from None
    peak = _beyond_full_scale(path) if fit_full_scale else None
    return _generate_blocks(path, int(block_frames), resampler, mono, peak)


def _generate_blocks(path: Path, block_frames: int, resampler: StreamingResampler | None,
                     mono: bool, peak: float | None = None) -> Iterator[torch.Tensor]:
    try:
        handle = soundfile.SoundFile(str(path))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise _open_error(path, exc) from None
    with handle:
        while True:
            try:
                data = handle.read(frames=block_frames, dtype="float32", always_2d=True)
            except (soundfile.LibsndfileError, RuntimeError) as exc:
                raise _open_error(path, exc) from None
            if data.shape[0] == 0:
                break
            if peak is not None:
                data = data / np.float32(peak)  # as read_audio does, so both give the same samples
            block = torch.from_numpy(np.ascontiguousarray(data.T))
            if mono and block.shape[0] > 1:
                block = block.mean(dim=0, keepdim=True)
            if resampler is None:
                yield block
            else:
                out = resampler.push(block)
                if out.shape[1]:
                    yield out.contiguous()
    if resampler is not None:
        tail = resampler.flush()
        if tail.shape[1]:
            yield tail.contiguous()


def mono_samples(block: torch.Tensor | np.ndarray) -> np.ndarray:
    """A mono block ``(t,)`` or ``(1, t)`` (numpy, or torch on any device) as a 1-D numpy array, dtype kept;
    ValueError for another shape."""
    if isinstance(block, torch.Tensor):
        block = block.detach().cpu().numpy()
    array = np.asarray(block)
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 1:
        raise ValueError(f"expected mono blocks of shape (t,) or (1, t), got {array.shape}")
    return array


def _as_frames_by_channels(samples: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().float().numpy()
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim == 1:
        array = array[:, None]
    elif array.ndim == 2:
        array = array.T  # (C, T) -> (T, C)
    else:
        raise ValueError(f"audio to write must have shape (T,) or (C, T), got {tuple(array.shape)}")
    if array.shape[1] == 0 or array.shape[1] > 64:
        raise ValueError(f"audio to write must be (C, T) with 1..64 channels, got shape {tuple(array.T.shape)}")
    if not np.all(np.isfinite(array)):
        raise ValueError("audio to write contains NaN or infinite samples")
    return np.ascontiguousarray(array)


def write_audio(path: str | os.PathLike, samples: torch.Tensor | np.ndarray, sample_rate: int,
                subtype: str | None = None, overwrite: bool = False,
                protected: Iterable[str | os.PathLike] = ()) -> Path:
    """Write audio atomically: a temporary file in the same folder, then ``os.replace``.

    Args:
        path: output file; the format comes from its extension (``.wav``, ``.flac``, ``.ogg``, ``.opus``,
            ``.mp3``, ...; see :func:`output_format`).
        samples: ``(C, T)`` or ``(T,)`` float, nominally in ``[-1, 1]``. Except for the ``FLOAT``/``DOUBLE``
            subtypes samples are clipped to ``[-1, 1]``.
        sample_rate: Hz.
        subtype: libsndfile subtype, e.g. ``"PCM_16"``, ``"PCM_24"``, ``"FLOAT"``; ``None``: ``PCM_16`` for PCM
            formats, the format's codec otherwise (Vorbis for ``.ogg``, MP3 for ``.mp3``).
        overwrite: replace an existing file at ``path``.
        protected: paths that must never be written (e.g. the input files); checked even with
            ``overwrite=True``, following symlinks.

    Returns:
        The written path.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        FileNotFoundError: the output folder does not exist.
        InputError (a ValueError): ``path`` is protected or a folder, unknown extension/subtype.
        ValueError: bad shape, NaN/inf.
    """
    path = Path(path)
    exists_message = f"{path} already exists (pass overwrite to replace it)"
    for other in protected:
        if same_file(path, other):
            raise InputError(f"refusing to write {path}: it is one of the input files")
    if path.is_dir():
        raise InputError(f"cannot write audio to {path}: it is a folder")
    if path.exists() and not overwrite:
        raise FileExistsError(exists_message)
    check_output_folder(path)
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample rate must be a positive integer number of Hz, got {sample_rate!r}")
    file_format, subtype = output_format(path, subtype)
    frames = _as_frames_by_channels(samples)
    if subtype not in FLOAT_SUBTYPES:
        frames = np.clip(frames, -1.0, 1.0)
    # without overwrite, a file created since the check above survives (see fileio.atomic_path)
    with atomic_path(path, overwrite=overwrite, exists_message=exists_message) as tmp:
        soundfile.write(tmp, frames, int(sample_rate), subtype=subtype, format=file_format)
    return path


@contextmanager
def streamed_audio_file(path: Path, sample_rate: int, subtype: str | None = None,
                        overwrite: bool = False) -> Iterator[Callable[[torch.Tensor], None]]:
    """Write mono audio block by block into a temp file beside ``path``; it takes ``path``'s place when the
    ``with`` block ends normally and is removed if it raises. Yields ``write(block)``, ``block`` any shape.

    Same guarantees as :func:`write_audio` (atomic, never replaces an existing file unless ``overwrite``), but
    the signal never has to be in memory at once.
    """
    file_format, subtype = output_format(path, subtype)
    clip = subtype not in FLOAT_SUBTYPES
    with atomic_path(path, overwrite=overwrite, exists_message=already_exists_message(path)) as tmp, \
            soundfile.SoundFile(tmp, "w", samplerate=int(sample_rate), channels=1, subtype=subtype,
                                format=file_format) as handle:

        def write(block: torch.Tensor) -> None:
            samples = block.reshape(-1).numpy().astype(np.float32, copy=False)
            handle.write(np.clip(samples, -1.0, 1.0) if clip else samples)

        yield write



def output_format(path: Path, subtype: str | None = None) -> tuple[str, str]:
    """``(format, subtype)`` for writing ``path`` with soundfile.

    The format comes from the extension (``.wav`` -> ``WAV``, ``.flac``, ``.ogg``, ``.mp3``, ...; ``.oga`` and
    ``.opus`` are Ogg, ``.aif`` is AIFF). ``subtype`` ``None`` picks ``PCM_16`` where the format holds it and the
    format's own codec otherwise (``VORBIS`` for ``.ogg``, ``OPUS`` for ``.opus``, ``MPEG_LAYER_III`` for ``.mp3``).
    :class:`InputError` for an unknown extension or a subtype the format cannot hold (listing the valid ones)."""
    path = Path(path)
    file_format, default = EXTENSION_FORMATS.get(path.suffix.lower(), (path.suffix.lstrip(".").upper(), None))
    if not path.suffix or file_format not in soundfile.available_formats():
        raise InputError(f"cannot write {path}: unknown audio extension {path.suffix!r} "
                         f"(use .wav, .flac, .ogg, .opus or .mp3)")
    if subtype is None:
        subtype = default or (PCM_DEFAULT_SUBTYPE if soundfile.check_format(file_format, PCM_DEFAULT_SUBTYPE)
                              else soundfile.default_subtype(file_format))
    subtype = subtype.upper()
    if not soundfile.check_format(file_format, subtype):
        raise InputError(f"cannot write {path}: subtype {subtype} is not valid for {file_format} "
                         f"(valid: {', '.join(soundfile.available_subtypes(file_format))})")
    return file_format, subtype
