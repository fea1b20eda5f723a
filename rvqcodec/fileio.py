"""Writing output files safely: atomic writes with one guarantee, output-path checks and strict JSON.

**The guarantee.** Every file rvqcodec writes goes through :func:`atomic_path` (or one of the ``atomic_write_*``
helpers built on it): the content is written to a temporary file in the target's folder and moved into place only
once it is complete, so a reader (or an interrupted run) sees either the old file or the new one, never half of one.
The temporary file is removed on any failure, and the written file gets the mode a plain ``open(path, "w")``
would give (``0o666`` minus the umask), not the private ``0o600`` of ``mkstemp``. With ``overwrite=True`` the new
file replaces an existing one (``os.replace``); with ``overwrite=False`` an existing file is never replaced, not
even one created by someone else while the content was being written (the file is moved in with ``os.link``,
which refuses an existing name): :class:`FileExistsError`. A missing folder is :class:`FileNotFoundError`
(``output folder does not exist: <folder>``) unless ``parents=True`` creates it.

The output checks (:func:`same_file`, :func:`check_output_folder`, :func:`check_writable_folder`) let a command
refuse an output before any work, and :func:`json_safe` makes a value strict JSON.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np


def default_file_mode() -> int:
    """``0o666`` minus the process umask: the mode a plain ``open(path, "w")`` would give."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def already_exists_message(path: str | os.PathLike) -> str:
    """The one-line refusal to replace an existing output of a command: ``<path> already exists (use --force to
    overwrite)``."""
    return f"{path} already exists (use --force to overwrite)"


@contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True, parents: bool = False,
                exists_message: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; move it into place when the block ends normally.

    The temporary file exists (empty) when the block starts, so it can be opened by name. On normal exit it gets
    :func:`default_file_mode` and takes ``path``'s place; on any exception (``KeyboardInterrupt`` included) it
    is removed and the exception propagates. See the module docstring for the guarantee.

    Args:
        path: the file to write.
        overwrite: replace an existing ``path``. With False the file is moved in with ``os.link``, which refuses
            a name that exists, so a file created meanwhile (after the caller's own existence check) survives;
            file systems without hard links fall back to ``os.replace``.
        parents: create missing parent folders first (otherwise a missing folder raises FileNotFoundError).
        exists_message: the FileExistsError text when ``overwrite`` is False and ``path`` exists at the end
            (default ``"<path> already exists"``).
    """
    path = Path(path)
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        check_output_folder(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, default_file_mode())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_into_place(tmp, path, exists_message or f"{path} already exists")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _link_into_place(tmp: Path, path: Path, exists_message: str) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(exists_message) from None
    except OSError:  # file systems without hard links
        os.replace(tmp, path)
    else:
        tmp.unlink()


def _sync(handle: IO) -> None:
    """Flush ``handle`` to the disk (so a crash right after the rename cannot leave an empty file)."""
    handle.flush()
    os.fsync(handle.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = True,
                       exists_message: str | None = None, fsync: bool = False, parents: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); ``fsync`` flushes it to disk first."""
    with atomic_path(path, overwrite=overwrite, parents=parents, exists_message=exists_message) as tmp, \
            open(tmp, "wb") as handle:
        handle.write(data)
        if fsync:
            _sync(handle)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True,
                      exists_message: str | None = None, fsync: bool = False, parents: bool = False) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically (see :func:`atomic_path`)."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite, exists_message=exists_message,
                              fsync=fsync, parents=parents)


def atomic_write_json(path: str | os.PathLike, payload: Any, *, indent: int = 2, sort_keys: bool = False,
                      overwrite: bool = True, fsync: bool = False, parents: bool = False) -> Path:
    """Write ``payload`` as strict JSON (see :func:`json_safe`) plus a final newline, atomically."""
    text = json.dumps(json_safe(payload), indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n"
    return atomic_write_text(path, text, overwrite=overwrite, fsync=fsync, parents=parents)


def atomic_torch_save(payload: Any, path: str | os.PathLike, *, overwrite: bool = True, fsync: bool = False,
                      parents: bool = False) -> Path:
    """``torch.save(payload)`` to ``path`` atomically (see :func:`atomic_path`)."""
    import torch

    with atomic_path(path, overwrite=overwrite, parents=parents) as tmp, open(tmp, "wb") as handle:
        torch.save(payload, handle)
        if fsync:
            _sync(handle)
    return Path(path)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name the same file: the same path after resolving symlinks, or two existing
    names of one file (hard links, bind mounts)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_folder(path: str | os.PathLike) -> None:
    """FileNotFoundError (``output folder does not exist: <folder>``) unless the folder of ``path`` exists."""
    parent = Path(path).parent
    if not parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {parent}")


def check_writable_folder(path: str | os.PathLike) -> None:
    """Raise before any work if ``path`` could not be written: FileNotFoundError if its folder is missing,
    PermissionError (``cannot write to the output folder <folder>: <reason>``) if no file can be created there.

    Checked by creating and removing an empty temporary file, so a read-only file system or an immutable folder
    is caught as well as missing permissions (and also when running as root)."""
    check_output_folder(path)
    parent = Path(path).parent
    try:
        fd, name = tempfile.mkstemp(prefix=".rvqcodec-write-check.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise PermissionError(f"cannot write to the output folder {parent}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(name)


def json_safe(value: Any) -> Any:
    """``value`` with what strict JSON cannot hold replaced, recursively: NaN / ±inf -> None, numpy scalars ->
    Python numbers, tuples -> lists, mapping keys -> ``str``."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
