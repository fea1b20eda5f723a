"""Shared fixtures. Real speech is read from ../shared/data/speech-dev (override: RVQCODEC_SPEECH_DIR)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def speech_dev_root() -> Path:
    env = os.environ.get("RVQCODEC_SPEECH_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "speech-dev"


@pytest.fixture(scope="session")
def speech_root() -> Path:
    root = speech_dev_root()
    if not (root / "LibriSpeech").is_dir():
        pytest.fail(f"real speech not found at {root} (set RVQCODEC_SPEECH_DIR)")
    return root


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random-weight ``tiny`` SEANet checkpoint (seed 0): a fast stand-in model for command-line tests."""
    from rvqcodec.model import Codec, CodecConfig

    torch.manual_seed(0)
    return Codec(CodecConfig.preset("tiny")).save(tmp_path_factory.mktemp("model") / "tiny.pt")
