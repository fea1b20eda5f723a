"""Optional dependencies, grouped as the pip extras of ``pyproject.toml``, and a clear error when one is missing.

Compressing and decompressing need only the core dependencies (torch, torchaudio, soundfile, numpy, einops,
tqdm). Scoring (``rvqcodec eval``, ``rvqcodec roundtrip``, ``benchmarks/quality.py``) needs the ``eval`` extra;
training, the ablation and the plots need the ``train`` extra::

    pip install "rvqcodec[eval]"     # pesq, pystoi (pesq is built from source: needs a C compiler)
    pip install "rvqcodec[train]"    # accelerate, tensorboard, matplotlib, auraloss, pyyaml
    pip install "rvqcodec[perceptual]"   # DistillMOS, DNSMOS, ViSQOL (rvqcodec.perceptual)

Modules import these packages only inside the functions that use them, through :func:`require`, so a missing
one surfaces as :class:`MissingExtraError` with a one-line message naming the extra to install.
"""
from __future__ import annotations

import importlib
from types import ModuleType

EXTRA_OF_MODULE: dict[str, str] = {
    "pesq": "eval",
    "pystoi": "eval",
    "accelerate": "train",
    "tensorboard": "train",
    "matplotlib": "train",
    "auraloss": "train",
    "yaml": "train",
    "pyroomacoustics": "train",
    "distillmos": "perceptual",
    "speechmos": "perceptual",
    "onnxruntime": "perceptual",
    "librosa": "perceptual",
    "requests": "perceptual",
    "visqol": "perceptual",
    "ai_edge_litert": "perceptual",
}
"""Top-level module name -> the pip extra that installs it."""

PACKAGE_OF_MODULE: dict[str, str] = {"yaml": "pyyaml", "visqol": "visqol-python", "ai_edge_litert": "ai-edge-litert"}
"""Where the pip package name differs from the module name."""

EXTRA_NOTES: dict[str, str] = {"eval": "pesq is built from source and needs a C compiler (e.g. apt-get install "
                                       "build-essential)"}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the pip extra that provides it."""


def missing_extra_message(module: str, purpose: str | None = None) -> str:
    """One line: which package is missing, what needs it, and the ``pip install`` command that fixes it."""
    top = module.split(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    package = PACKAGE_OF_MODULE.get(top, top)
    needed_for = f" {purpose}" if purpose else ""
    if extra is None:
        return f"the Python package {package!r} is not installed (needed{needed_for}); pip install {package}"
    note = f"; {EXTRA_NOTES[extra]}" if extra in EXTRA_NOTES else ""
    return (f"the optional dependency {package!r} is not installed (needed{needed_for}); "
            f"install the {extra!r} extra: pip install \"rvqcodec[{extra}]\"{note}")


def require(module: str, purpose: str | None = None) -> ModuleType:
    """Import ``module`` (e.g. ``"pesq"``, ``"pystoi"``); :class:`MissingExtraError` naming its extra if absent.

    Only a missing ``module`` itself (or its top-level package) is translated; an ImportError raised *inside* an
    installed package propagates unchanged.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        if exc.name not in (module, top):
            raise
        raise MissingExtraError(missing_extra_message(module, purpose)) from None


def missing_extra_for(exc: ModuleNotFoundError) -> str | None:
    """The one-line message for ``exc`` when it is an optional dependency of a known extra, else None."""
    name = (exc.name or "").split(".")[0]
    return missing_extra_message(name) if name in EXTRA_OF_MODULE else None
