"""Speech datasets: fixed-length random crops for training, whole files for evaluation.

* :class:`LibriSpeechDataset` reads the LibriSpeech layout ``<root>/LibriSpeech/<subset>/<speaker>/<chapter>/*.flac``
  (or ``<root>/<subset>/...`` when ``root`` is the folder holding the subsets), one or several subsets.
* :class:`AudioFolderDataset` reads every audio file under a folder (recursively; :func:`find_audio_files`).
* :class:`AudioFileListDataset` reads a given list of files (e.g. the union of the two above, or the files named
  by a list file: :func:`read_file_list`).

Both return float32 tensors ``(1, T)`` at ``sample_rate``: ``T = segment_samples`` in crop mode, the whole
(resampled) file when ``segment_seconds=None``. Crops are deterministic functions of ``(seed, epoch, index)``,
so a resumed run sees exactly the crops it would have seen; call :meth:`set_epoch` at the start of each epoch.

Gain normalisation (``gain_normalize=True``) scales each *file* (not each crop, so silences stay quiet) to an
RMS of ``target_rms_dbfs`` dB relative to full scale (``20*log10(rms)``, full scale = 1.0), then lowers the
gain if needed so that the file's peak stays at or below ``peak_limit_dbfs`` (default -1 dBFS, |x| <= 0.891).
On the bundled LibriSpeech files the raw RMS ranges from -36 to -12 dBFS (median -26).
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile
import torch
from torch.utils.data import Dataset

from rvqcodec.data.audio_io import AudioReadError, audio_info, read_audio
from rvqcodec import level

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".snd",
                    ".caf", ".w64", ".rf64")
"""File extensions an audio folder is searched for (case-insensitive): the formats soundfile (libsndfile) reads,
of which those this build cannot decode are dropped (wav, flac and ogg always work; mp3 needs libsndfile >= 1.1)."""
_EXTENSION_FORMATS = {".oga": "OGG", ".opus": "OGG", ".aif": "AIFF", ".aifc": "AIFF", ".snd": "AU"}
"""Extensions whose libsndfile format is not the extension itself in capitals."""


def _readable_extensions(extensions: Sequence[str]) -> tuple[str, ...]:
    """Keep the extensions whose format this libsndfile build can decode."""
    formats = soundfile.available_formats()
    kept = []
    for ext in extensions:
        ext = ext.lower() if ext.startswith(".") else f".{ext.lower()}"
        if _EXTENSION_FORMATS.get(ext, ext.lstrip(".").upper()) in formats:
            kept.append(ext)
    return tuple(kept)


def find_audio_files(root: str | os.PathLike, extensions: Sequence[str] = AUDIO_EXTENSIONS) -> list[Path]:
    """Every audio file under ``root`` (recursively), sorted by path; hidden files and folders (a name starting
    with ``.``) are skipped, and a file counts as audio by its extension (:data:`AUDIO_EXTENSIONS`).

    Raises:
        FileNotFoundError: ``root`` is missing or not a folder.
        ValueError: no audio file found (the message lists the extensions searched for).
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"audio folder not found: {root}")
    if not root.is_dir():
        raise FileNotFoundError(f"not a folder: {root}")
    readable = _readable_extensions(extensions)
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in readable:
                files.append(Path(dirpath) / name)
    if not files:
        raise ValueError(f"no audio files ({', '.join(readable)}) found under {root}")
    return sorted(files)


def read_file_list(path: str | os.PathLike) -> list[Path]:
    """The audio files named by a list file: one path per line, in the file's order; a relative path is taken
    relative to the folder of the list file; blank lines and lines starting with ``#`` are skipped. Every entry
    must be an existing file (it is read as audio later, whatever its extension).

    Raises:
        FileNotFoundError: the list file is missing, or an entry names no file (the message gives its line).
        ValueError: the list file names no file, or is not text.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"list file not found: {path}" if not path.exists() else f"not a file: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"list file {path} is not UTF-8 text (one audio path per line)") from None
    base = path.parent
    files = []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        file = Path(entry).expanduser()
        file = file if file.is_absolute() else base / file
        if not file.is_file():
            what = "is a folder, not an audio file" if file.is_dir() else "no such file"
            raise FileNotFoundError(f"{path} line {number}: {what}: {file}")
        files.append(file)
    if not files:
        raise ValueError(f"list file {path} names no audio file (one path per line)")
    return files


class _AudioSegmentDataset(Dataset):
    """Crops (or whole files) from a fixed, sorted list of audio files. See the module docstring.

    Args:
        files: audio files, in the order items are indexed.
        segment_seconds: crop length in seconds, or ``None`` for whole files (evaluation mode).
        sample_rate: output rate in Hz; files at another rate are resampled.
        gain_normalize: scale each file to ``target_rms_dbfs`` (peak-limited to ``peak_limit_dbfs``).
        random_crop: random crop offsets (per ``seed``, ``epoch``, ``index``); otherwise crop ``k`` of a file
            starts at ``k * segment_samples`` (clamped to keep it inside the file).
        seed: base seed for the crop offsets.
        crops_per_file: items per file per epoch (item ``i`` comes from file ``i // crops_per_file``).
        cache_audio: keep decoded (resampled, normalised) files in memory; ~4 bytes per sample, e.g.
            ~120 MB for 30 minutes at 16 kHz (per DataLoader worker).
        target_rms_dbfs, peak_limit_dbfs: gain normalisation targets in dB re full scale.
    """

    def __init__(self, files: Sequence[Path], segment_seconds: float | None = 1.0, sample_rate: int = 16000,
                 gain_normalize: bool = True, random_crop: bool = True, seed: int = 0, crops_per_file: int = 1,
                 cache_audio: bool = False, target_rms_dbfs: float = level.TARGET_RMS_DBFS,
                 peak_limit_dbfs: float = level.PEAK_LIMIT_DBFS):
        if int(sample_rate) != sample_rate or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer number of Hz, got {sample_rate!r}")
        if segment_seconds is not None and not (segment_seconds > 0 and math.isfinite(segment_seconds)):
            raise ValueError(f"segment_seconds must be positive (or None for whole files), got {segment_seconds!r}")
        if int(crops_per_file) != crops_per_file or crops_per_file < 1:
            raise ValueError(f"crops_per_file must be a positive integer, got {crops_per_file!r}")
        if segment_seconds is None and crops_per_file != 1:
            raise ValueError("crops_per_file must be 1 when segment_seconds is None (whole files)")
        if peak_limit_dbfs > 0:
            raise ValueError(f"peak_limit_dbfs must be <= 0 dBFS, got {peak_limit_dbfs}")
        self.files = [Path(f) for f in files]
        self.sample_rate = int(sample_rate)
        self.segment_seconds = segment_seconds
        self.segment_samples = None if segment_seconds is None else int(round(segment_seconds * self.sample_rate))
        if self.segment_samples is not None and self.segment_samples < 1:
            raise ValueError(f"segment_seconds={segment_seconds} is shorter than one sample at {sample_rate} Hz")
        self.gain_normalize = gain_normalize
        self.random_crop = random_crop
        self.seed = int(seed)
        self.crops_per_file = int(crops_per_file)
        self.cache_audio = cache_audio
        self.target_rms_dbfs = float(target_rms_dbfs)
        self.peak_limit_dbfs = float(peak_limit_dbfs)
        self.epoch = 0
        # Header info only (no decoding): rate and length of every file.
        self._source_rates: list[int] = []
        self._num_samples: list[int] = []  # length at self.sample_rate
        for path in self.files:
            info = audio_info(path)
            if info.frames <= 0:
                raise AudioReadError(f"audio file contains no samples: {path}")
            self._source_rates.append(int(info.samplerate))
            self._num_samples.append(math.ceil(info.frames * self.sample_rate / info.samplerate))
        self._gains: dict[int, float] = {}
        self._cache: dict[int, torch.Tensor] = {}

    # ----------------------------------------------------------------------------------------------- sizes
    def __len__(self) -> int:
        return len(self.files) * self.crops_per_file

    @property
    def total_seconds(self) -> float:
        """Total duration of the files, seconds."""
        return sum(self._num_samples) / self.sample_rate

    def num_samples(self, file_index: int) -> int:
        """Length of file ``file_index`` at ``sample_rate``, samples."""
        return self._num_samples[file_index]

    def set_epoch(self, epoch: int) -> None:
        """Select the crops of ``epoch`` (crops depend only on seed, epoch and index).

        With DataLoader workers, call it before iterating the loader: workers copy the dataset when the
        iterator starts, so with ``persistent_workers=True`` a later call does not reach them.
        """
        self.epoch = int(epoch)

    # ------------------------------------------------------------------------------------------ decoding
    def _gain_for(self, samples: torch.Tensor) -> float:
        rms = float(samples.double().pow(2).mean().sqrt())
        peak = float(samples.abs().max())
        if rms <= 1e-9 or peak <= 0.0:
            return 1.0  # digital silence: leave as is
        gain = 10.0 ** (self.target_rms_dbfs / 20.0) / rms
        peak_limit = 10.0 ** (self.peak_limit_dbfs / 20.0)
        return min(gain, peak_limit / peak)

    def _load_whole(self, file_index: int) -> torch.Tensor:
        """Whole file ``(1, T)`` at ``sample_rate``, gain-normalised if enabled; records the file's gain."""
        if file_index in self._cache:
            return self._cache[file_index]
        samples = read_audio(self.files[file_index], target_sr=self.sample_rate, mono=True).samples
        if self.gain_normalize:
            gain = self._gains.setdefault(file_index, self._gain_for(samples))
            samples = samples * gain
        if self.cache_audio:
            self._cache[file_index] = samples
        return samples

    def _load_span(self, file_index: int, offset: int, length: int) -> torch.Tensor:
        """Samples ``[offset, offset + length)`` of a file at ``sample_rate``, ``(1, <= length)``."""
        needs_whole = (self.cache_audio or self._source_rates[file_index] != self.sample_rate
                       or (self.gain_normalize and file_index not in self._gains))
        if needs_whole:
            return self._load_whole(file_index)[:, offset:offset + length]
        # Same rate and gain known: decode only the crop.
        path = self.files[file_index]
        try:
            data, _ = soundfile.read(str(path), start=offset, frames=length, dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError) as exc:
            raise AudioReadError(f"cannot read {path}: {exc}") from None
        samples = torch.from_numpy(np.ascontiguousarray(data.T)).mean(dim=0, keepdim=True)
        if self.gain_normalize:
            samples = samples * self._gains[file_index]
        return samples

    # ------------------------------------------------------------------------------------------- items
    def crop_offset(self, index: int) -> int:
        """Start (samples at ``sample_rate``) of item ``index``'s crop in its file, for the current epoch."""
        file_index, k = divmod(index, self.crops_per_file)
        length = self._num_samples[file_index]
        assert self.segment_samples is not None
        room = length - self.segment_samples
        if room <= 0:
            return 0  # short file: starts at 0, zero-padded at the end
        if self.random_crop:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            return int(rng.integers(0, room + 1))
        return min(k * self.segment_samples, room)

    def __getitem__(self, index: int) -> torch.Tensor:
        """Item ``index``: float32 ``(1, segment_samples)``, or ``(1, T_file)`` for whole files."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} items")
        index = index % len(self)
        file_index = index // self.crops_per_file
        if self.segment_samples is None:
            return self._load_whole(file_index).clone()
        offset = self.crop_offset(index)
        segment = self._load_span(file_index, offset, self.segment_samples)
        if segment.shape[1] < self.segment_samples:
            segment = torch.nn.functional.pad(segment, (0, self.segment_samples - segment.shape[1]))
        return segment.contiguous().clone()


class AudioFileListDataset(_AudioSegmentDataset):
    """Crops (or whole files) from an explicit list of audio files, e.g. the union of the files of several
    datasets. Arguments as :class:`_AudioSegmentDataset`."""


class LibriSpeechDataset(_AudioSegmentDataset):
    """LibriSpeech utterances (``*.flac``) from one or more subsets.

    Args:
        root: folder containing ``LibriSpeech/<subset>/``, or the folder containing ``<subset>/`` directly.
        subsets: subset folder names, e.g. ``("train-clean-100",)`` or ``("train-clean-100", "train-clean-360")``.
        segment_seconds, sample_rate, gain_normalize, random_crop, seed, **kwargs: see
            :class:`_AudioSegmentDataset` (``crops_per_file``, ``cache_audio``, ``target_rms_dbfs``,
            ``peak_limit_dbfs``).

    Files are ``<subset>/<speaker>/<chapter>/*.flac``, sorted by path.

    Raises:
        FileNotFoundError: ``root`` is missing, holds no LibriSpeech folder, or a subset is missing (the
            message lists the subsets that exist).
        ValueError: a subset holds no ``.flac`` files, or no subset was given.
    """

    def __init__(self, root: str | os.PathLike, subsets: Sequence[str] = ("train-clean-100",),
                 segment_seconds: float | None = 1.0, sample_rate: int = 16000, gain_normalize: bool = True,
                 random_crop: bool = True, seed: int = 0, **kwargs):
        if isinstance(subsets, str):
            subsets = (subsets,)
        if not subsets:
            raise ValueError("no LibriSpeech subset given (e.g. subsets=('train-clean-100',))")
        self.root = Path(root)
        self.subsets = tuple(subsets)
        self.librispeech_dir = self._find_librispeech_dir(self.root, self.subsets)
        super().__init__(librispeech_files(self.root, self.subsets), segment_seconds=segment_seconds,
                         sample_rate=sample_rate, gain_normalize=gain_normalize, random_crop=random_crop, seed=seed,
                         **kwargs)

    @staticmethod
    def _find_librispeech_dir(root: Path, subsets: Sequence[str]) -> Path:
        if not root.exists():
            raise FileNotFoundError(f"LibriSpeech root not found: {root}")
        if not root.is_dir():
            raise FileNotFoundError(f"LibriSpeech root is not a folder: {root}")
        for subset in subsets:
            if not subset or Path(subset).name != subset or subset in (".", ".."):
                raise ValueError(f"invalid LibriSpeech subset name {subset!r} (e.g. 'train-clean-100')")
        if (root / "LibriSpeech").is_dir():
            base = root / "LibriSpeech"
        elif any((root / s).is_dir() for s in subsets):
            base = root
        else:
            raise FileNotFoundError(
                f"no LibriSpeech folder in {root} (expected {root}/LibriSpeech/<subset>/<speaker>/<chapter>/*.flac "
                f"or {root}/<subset>/...; subsets asked for: {', '.join(subsets)})")
        available = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        for subset in subsets:
            if not (base / subset).is_dir():
                raise FileNotFoundError(f"LibriSpeech subset {subset!r} not found in {base}; "
                                        f"available: {', '.join(available) or 'none'}")
        return base


def librispeech_files(root: str | os.PathLike, subsets: Sequence[str]) -> list[Path]:
    """The utterances ``<subset>/<speaker>/<chapter>/*.flac`` of LibriSpeech ``subsets`` under ``root`` (the folder
    containing ``LibriSpeech/``, or the one containing the subsets), sorted by path; the files of
    :class:`LibriSpeechDataset`, found without reading them. Raises as :class:`LibriSpeechDataset` does."""
    if isinstance(subsets, str):
        subsets = (subsets,)
    if not subsets:
        raise ValueError("no LibriSpeech subset given (e.g. subsets=('train-clean-100',))")
    base = LibriSpeechDataset._find_librispeech_dir(Path(root), tuple(subsets))
    files: list[Path] = []
    for subset in subsets:
        subset_files = sorted((base / subset).glob("*/*/*.flac"))
        if not subset_files:
            raise ValueError(f"no .flac files in LibriSpeech subset {base / subset} "
                             f"(expected <speaker>/<chapter>/*.flac)")
        files.extend(subset_files)
    return sorted(files)


class AudioFolderDataset(_AudioSegmentDataset):
    """Every audio file under ``root`` (recursively), sorted by path; hidden files and folders are skipped.

    Args:
        root: folder to scan.
        extensions: file extensions to include (case-insensitive; default :data:`AUDIO_EXTENSIONS`); those this
            libsndfile build cannot decode are dropped (wav, flac and ogg always work; mp3 needs libsndfile >= 1.1).
        segment_seconds, sample_rate, gain_normalize, random_crop, seed, **kwargs: see
            :class:`_AudioSegmentDataset`.

    Raises:
        FileNotFoundError: ``root`` is missing or not a folder.
        ValueError: no audio file found.
        AudioReadError: a matching file cannot be read.
    """

    def __init__(self, root: str | os.PathLike, segment_seconds: float | None = 1.0, sample_rate: int = 16000,
                 gain_normalize: bool = True, random_crop: bool = True, seed: int = 0,
                 extensions: Sequence[str] = AUDIO_EXTENSIONS, **kwargs):
        self.root = Path(root)
        self.extensions = _readable_extensions(extensions)
        files = find_audio_files(self.root, self.extensions)
        super().__init__(files, segment_seconds=segment_seconds, sample_rate=sample_rate,
                         gain_normalize=gain_normalize, random_crop=random_crop, seed=seed, **kwargs)
