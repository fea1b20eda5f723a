"""The shipped default model and how to find/load a codec checkpoint.

The default checkpoint lives next to this file as ``default.pt`` (installed as package data, see
``pyproject.toml``). Commands use it when no ``--model PATH`` is given.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from rvqcodec.model.codec import Codec

DEFAULT_CHECKPOINT_NAME = "default.pt"


def default_checkpoint_path() -> Path:
    """Where the shipped default checkpoint is expected (it may be absent, e.g. before training)."""
    return Path(__file__).resolve().parent / DEFAULT_CHECKPOINT_NAME


def resolve_checkpoint(path: str | os.PathLike | None = None) -> Path:
    """The checkpoint to load: ``path`` if given, else the shipped default.

    Raises:
        FileNotFoundError: with a one-line message saying which file is missing and what to do.
    """
    if path is None:
        default = default_checkpoint_path()
        if not default.is_file():
            raise FileNotFoundError(f"the shipped default model is not installed ({default} is missing); "
                                    "pass --model PATH to a trained checkpoint")
        return default
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"model checkpoint {path} is a folder, expected a .pt file")
    if not path.is_file():
        raise FileNotFoundError(f"model checkpoint not found: {path}")
    return path


def load_codec(path: str | os.PathLike | None = None, device: str = "cpu") -> "Codec":
    """Load a codec in eval mode from ``path`` (or the shipped default when ``None``) onto ``device``.

    Raises:
        FileNotFoundError: the checkpoint is missing.
        ValueError: the file is not an rvqcodec checkpoint, or is damaged.
    """
    from rvqcodec.model.codec import Codec

    return Codec.load(resolve_checkpoint(path), map_location=device).eval()
