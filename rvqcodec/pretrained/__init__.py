"""The shipped default model and how to find/load a codec checkpoint.

The default checkpoint lives next to this file as ``default.pt`` (installed as package data, see
``pyproject.toml``). Commands use it when no ``--model PATH`` is given. ``default.json`` beside it records what
the shipped checkpoint must be (its ``model_id``): replacing the model means replacing ``default.pt`` and that
one value (the test suite checks that the two agree).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from rvqcodec.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from rvqcodec.model.codec import Codec

DEFAULT_CHECKPOINT_NAME = "default.pt"
DEFAULT_CARD_NAME = "default.json"


def default_model_card() -> dict:
    """``default.json``: what the shipped checkpoint is (``model_id``: the 16 hex characters of its
    ``Codec.model_id``; ``description``)."""
    return json.loads((Path(__file__).resolve().parent / DEFAULT_CARD_NAME).read_text(encoding="utf-8"))


def expected_default_model_id() -> str:
    """The model id the shipped ``default.pt`` must have (from ``default.json``)."""
    return str(default_model_card()["model_id"])


UNSUPPORTED_DEVICE_TYPES = {"meta": "it holds tensor shapes but no data, so no audio can be computed on it"}
"""Device types torch accepts that can never run the codec -> why (a one-line error names it)."""


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine and can run the codec.

    ``cpu``; ``cuda``/``cuda:N`` and ``mps`` when present; another backend (``xpu``, ``hpu``, ...) when its torch
    module says it is available (or, without one, a tensor can be made on it). ``meta`` is refused: it computes
    nothing (:data:`UNSUPPORTED_DEVICE_TYPES`).

    Raises:
        InputError: an unknown device string, a device type that cannot run the codec, or a device this machine
            (or this torch build) does not have (e.g. ``cuda`` without a usable GPU, ``xpu`` on a CPU-only build),
            with a one-line message.
    """
    import torch

    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InputError(f"unknown device {str(device)!r} ({str(exc).splitlines()[0]}); use cpu, cuda or cuda:N") from None
    name = str(device)
    if resolved.type in UNSUPPORTED_DEVICE_TYPES:
        raise InputError(f"device {name!r} is not supported: {UNSUPPORTED_DEVICE_TYPES[resolved.type]}; "
                         "use --device cpu")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
            raise InputError(f"device {name!r} is not available: no usable CUDA GPU on this machine "
                             f"(torch {torch.__version__}, {build}); use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InputError(f"device {name!r} is not available: this machine has "
                             f"{torch.cuda.device_count()} CUDA GPU(s)")
    elif resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"device {name!r} is not available on this machine; use --device cpu")
    elif resolved.type != "cpu":
        backend = getattr(torch, resolved.type, None)
        if callable(getattr(backend, "is_available", None)) and not backend.is_available():
            raise InputError(f"device {name!r} is not available: no usable {resolved.type.upper()} device on this "
                             f"machine (torch {torch.__version__}); use --device cpu")
        try:
            torch.empty(0, device=resolved)
        except ImportError:
            raise InputError(f"device {name!r} is not available: this torch build ({torch.__version__}) has no "
                             f"{resolved.type.upper()} support; use --device cpu") from None
        except Exception as exc:  # noqa: BLE001 - whatever a backend raises (AssertionError, NotImplementedError,
            # RuntimeError), it means that the device cannot hold a tensor here
            reason = (str(exc).splitlines()[0].split(". ")[0] if str(exc) else "") or type(exc).__name__
            raise InputError(f"device {name!r} is not available: {reason}; use --device cpu") from None
    return resolved


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


STREAMING_CHECKPOINT_NAME = "streaming.pt"
STREAMING_CARD_NAME = "streaming.json"
STREAMING_MODEL = "streaming"
"""The name ``--model`` takes for the shipped causal model (``rvqcodec stream``)."""


def streaming_checkpoint_path() -> Path:
    """Where the shipped causal (streaming) checkpoint is expected; it may be absent (not trained yet)."""
    return Path(__file__).resolve().parent / STREAMING_CHECKPOINT_NAME


def load_streaming_codec(device: str | torch.device = "cpu") -> "Codec":
    """The shipped streaming model (``streaming.pt``; its id checked against ``streaming.json`` when that card is
    there). FileNotFoundError, in one line saying how to make it, when it is not shipped."""
    path = streaming_checkpoint_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"the streaming model is not shipped yet ({path} is missing): train it with 'rvqcodec train "
            "recipes/librispeech/convnext-causal.yaml', export it with 'rvqcodec export RUN --as-streaming', "
            "or pass --model PATH to a causal checkpoint")
    codec = load_codec(path, device=device)
    card = path.with_name(STREAMING_CARD_NAME)
    if card.is_file():
        expected = str(json.loads(card.read_text(encoding="utf-8"))["model_id"])
        if codec.model_id != expected:
            raise ValueError(f"the shipped streaming model {path} is damaged or was replaced: its model id is "
                             f"{codec.model_id}, {STREAMING_CARD_NAME} expects {expected}")
    return codec


def load_codec(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> "Codec":
    """Load a codec in eval mode from ``path`` (or the shipped default when ``None``) onto ``device``.

    The device is checked first (:func:`resolve_device`) and the weights are read on the CPU, then moved, so a
    missing GPU is reported as such, never as a damaged checkpoint. The shipped checkpoint must have the model
    id recorded in ``default.json`` (a damaged or swapped file would otherwise load silently: torch does not
    checksum the weights).

    Raises:
        FileNotFoundError: the checkpoint is missing.
        InputError: ``device`` is unknown or not available here.
        ValueError: the file is not an rvqcodec checkpoint, is damaged, or (shipped model) has another model id.
    """
    from rvqcodec.model.codec import Codec

    target = resolve_device(device)
    checkpoint = resolve_checkpoint(path)
    codec = Codec.load(checkpoint, map_location="cpu")
    if path is None:
        expected = expected_default_model_id()
        if codec.model_id != expected:
            raise ValueError(f"the shipped model {checkpoint} is damaged or was replaced: its model id is "
                             f"{codec.model_id}, {DEFAULT_CARD_NAME} expects {expected}; reinstall rvqcodec (or "
                             "pass --model PATH)")
    return codec.to(target).eval()
