"""Which audio files a run trains and validates on, from the ``data`` section of a recipe.

:func:`data_files` turns a :class:`rvqcodec.training.config.DataConfig` into two lists of files:

* **training**: the LibriSpeech subsets (``data.root`` + ``data.train_subsets``, sorted by path), then every audio
  file under each folder of ``data.extra_train_dirs`` and ``data.train_dirs`` (recursive, sorted by path within a
  folder, hidden files skipped), then the files of ``data.train_list`` in its order; a file reached twice is kept
  once.
* **validation**, from the first of: the folders ``data.valid_dirs``; the LibriSpeech subset ``data.valid_subset``
  (when LibriSpeech subsets are trained on); a held-out split of the training files.

The held-out split (:func:`held_out_split`) is a function of each file's *key* alone, so it is the same on every
machine, in every run and after a resume: a file found under a folder is keyed by its path relative to that folder,
a list entry by its path relative to the list file's folder (an absolute path outside it: that path). A file is held
out when a hash of its key falls under ``data.valid_fraction``; at least one file is held out and at least one kept
for training, and no file is on both sides. Adding files never moves a file that was already there from one side to
the other (except a file placed by the at-least-one rules). Validation files of the split are ordered by the same
hash, so the first ``data.max_valid_files`` scored at each validation are a spread sample, not one folder.

Every mistake is a one-line ``ValueError`` / ``FileNotFoundError`` naming the key: a missing folder, a folder
without audio, a list entry that names no file, too few files to hold one out, validation files that are also
training files.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Callable, Sequence, TypeVar

from rvqcodec.data.datasets import find_audio_files, librispeech_files, read_file_list
from rvqcodec.training.config import DataConfig

T = TypeVar("T")


@dataclass
class DataFiles:
    """The training and validation files of a run, and where the validation files came from."""

    train: list[Path]
    valid: list[Path]
    valid_source: str  # "data.valid_dirs", "data.valid_subset=<name>" or "held out of the training files, ..."

    def describe(self) -> str:
        """One line for the log: how many files of each kind and where validation comes from."""
        return (f"data: {len(self.train)} training file{'s' * (len(self.train) != 1)}, {len(self.valid)} "
                f"validation file{'s' * (len(self.valid) != 1)} ({self.valid_source})")


def split_value(key: str) -> float:
    """A number in ``[0, 1)`` fixed by ``key`` alone (SHA-1 of its UTF-8 bytes): where a file falls in the split."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def held_out_split(items: Sequence[T], keys: Sequence[str], fraction: float) -> tuple[list[T], list[T]]:
    """``(train, held_out)``: each item is held out when :func:`split_value` of its key is below ``fraction``.

    ``train`` keeps the order of ``items``; ``held_out`` is ordered by split value. When no item falls under
    ``fraction`` the one with the smallest value is held out, and when every item does the one with the largest
    value is trained on, so both sides hold at least one item. ``ValueError`` for fewer than two items or a
    fraction outside (0, 1).
    """
    if len(items) != len(keys):
        raise ValueError(f"{len(items)} items but {len(keys)} keys")
    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must be between 0 and 1 (exclusive), got {fraction!r}")
    if len(items) < 2:
        raise ValueError(f"{len(items)} file{'s' * (len(items) != 1)} cannot be split into training and validation")
    values = [split_value(k) for k in keys]
    by_value = sorted(range(len(items)), key=lambda i: (values[i], i))
    held = {i for i in by_value if values[i] < fraction}
    if not held:
        held = {by_value[0]}
    elif len(held) == len(items):
        held.discard(by_value[-1])
    return ([items[i] for i in range(len(items)) if i not in held], [items[i] for i in by_value if i in held])


def _identity(path: Path) -> str:
    """What makes two paths the same file for the overlap checks (absolute, normalised; no disk access)."""
    return os.path.normcase(os.path.abspath(path))


def _with_key(key: str, find: Callable[[], T]) -> T:
    """``find()``, with a one-line error that starts with the config key it came from."""
    try:
        return find()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"config key '{key}': {exc}") from None
    except ValueError as exc:
        raise ValueError(f"config key '{key}': {exc}") from None


def _folder_files(key: str, folders: Sequence[str]) -> list[tuple[Path, str]]:
    """``(file, split key)`` for every audio file under each folder (see the module docstring)."""
    out = []
    for folder in folders:
        root = Path(folder).expanduser()
        for path in _with_key(key, lambda: find_audio_files(root)):
            out.append((path, path.relative_to(root).as_posix()))
    return out


def _list_files(list_file: str) -> list[tuple[Path, str]]:
    """``(file, split key)`` for every entry of the list file: the key is its path relative to the list file's
    folder (``/`` separators), or the absolute path of an entry outside that folder."""
    path = Path(list_file).expanduser()
    files = _with_key("data.train_list", lambda: read_file_list(path))
    out = []
    for file in files:
        try:
            key = file.relative_to(path.parent).as_posix()
        except ValueError:  # an absolute entry outside the list's folder
            key = PurePath(file).as_posix()
        out.append((file, key))
    return out


def data_files(data: DataConfig) -> DataFiles:
    """The training and validation files of ``data`` (see the module docstring); one-line errors."""
    own: list[tuple[Path, str]] = []  # the user's files (folders and list), with their split keys
    own += _folder_files("data.extra_train_dirs", data.extra_train_dirs)
    own += _folder_files("data.train_dirs", data.train_dirs)
    if data.train_list:
        own += _list_files(data.train_list)
    librispeech: list[Path] = []
    if data.train_subsets:
        librispeech = _with_key("data.root", lambda: librispeech_files(Path(data.root), data.train_subsets))

    seen: set[str] = set()
    unique: list[tuple[Path, str]] = []
    for path, key in [(p, "") for p in librispeech] + own:
        identity = _identity(path)
        if identity not in seen:
            seen.add(identity)
            unique.append((path, key))

    if data.valid_dirs:
        valid = [path for path, _ in _folder_files("data.valid_dirs", data.valid_dirs)]
        train, source = [path for path, _ in unique], "data.valid_dirs"
    elif data.train_subsets:
        valid = _with_key("data.valid_subset",
                          lambda: librispeech_files(Path(data.root), [data.valid_subset]))
        train, source = [path for path, _ in unique], f"data.valid_subset={data.valid_subset}"
    else:
        if len(unique) < 2:
            raise ValueError(
                f"config key 'data.valid_fraction': nothing left for validation: the training audio is {len(unique)} "
                f"file ({unique[0][0]}) and one must be held out; add files or give data.valid_dirs")
        pairs, held = held_out_split(unique, [key for _, key in unique], data.valid_fraction)
        train, valid = [path for path, _ in pairs], [path for path, _ in held]
        source = f"held out of the training files, data.valid_fraction={data.valid_fraction:g}"

    trained = {_identity(path) for path in train}
    both = [path for path in valid if _identity(path) in trained]
    if both:
        key = "data.valid_dirs" if data.valid_dirs else "data.valid_subset"
        raise ValueError(f"config key '{key}': {len(both)} validation file{'s are' if len(both) > 1 else ' is'} also "
                         f"trained on (e.g. {both[0]}); validation must be held out of the training audio")
    return DataFiles(train=train, valid=valid, valid_source=source)
