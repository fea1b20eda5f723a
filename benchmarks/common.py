"""Paths shared by the benchmark scripts, how a path is written into their results, how a number is, and how a
plot is saved."""
from __future__ import annotations

import math
import os
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
SPEECH_ROOT = REPO_ROOT.parent / "shared" / "data" / "speech-dev" / "LibriSpeech"
DEFAULT_OUT = BENCH_DIR / "results"
AUDIO_SUFFIXES = (".flac", ".wav", ".ogg")
"""What a benchmark's data folder is searched for."""


def shown_path(path: str | os.PathLike) -> str:
    """``path`` relative to the repository root (e.g. ``../shared/data/...``), so that committed results do not
    depend on where the checkout lives."""
    return os.path.relpath(Path(path).resolve(), REPO_ROOT)


def resolved_shown_path(shown: str) -> Path:
    """Inverse of :func:`shown_path`, relative to the current folder (for messages to the user)."""
    return Path(os.path.relpath((REPO_ROOT / shown).resolve()))


def list_audio_files(folder: Path) -> list[Path]:
    """Audio files (:data:`AUDIO_SUFFIXES`) under ``folder``, recursively, sorted by path, hidden ones skipped
    (:func:`rvqcodec.data.datasets.find_audio_files`).

    Raises:
        UserError: the folder is missing or holds no audio (one line).
    """
    from rvqcodec.data.datasets import find_audio_files
    from rvqcodec.errors import UserError

    try:
        return find_audio_files(folder, AUDIO_SUFFIXES)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None


def fmt_number(value, spec: str) -> str:
    """``value`` formatted with ``spec`` for a results table, an en dash when it is undefined (None, NaN, inf), and
    never "-0.0" (a small negative number rounded to zero is written without its sign)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    text = format(value, spec)
    if text.startswith("-") and not text.strip("-0."):
        text = text[1:]
    return text


def save_png(fig, path: Path) -> None:
    """Write the matplotlib figure ``fig`` to ``path`` as PNG, atomically (a reader never sees half a file), and
    close it."""
    import matplotlib.pyplot as plt

    from rvqcodec.fileio import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
