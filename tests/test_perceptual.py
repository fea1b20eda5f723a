"""Listener-model scores (rvqcodec.perceptual, the ``perceptual`` extra) on real speech: each model rates the
original above degraded copies (noisy and band-limited, and decoded by the shipped model at a low rate), and the
scores reach ``rvqcodec eval``/``roundtrip`` or say in one line what to install."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rvqcodec import perceptual
from rvqcodec.cli import main
from rvqcodec.data import augment
from rvqcodec.data.audio_io import read_audio, write_audio

SR = 16000


@pytest.fixture(scope="module")
def scorer():
    return perceptual.get_scorer()


@pytest.fixture(scope="module")
def speech(speech_root) -> torch.Tensor:
    """8 s of a dev-clean utterance (never trained on)."""
    path = speech_root / "LibriSpeech" / "dev-clean" / "2412" / "153948" / "2412-153948-0000.flac"
    return read_audio(path, target_sr=SR).samples[0][:8 * SR]


@pytest.fixture(scope="module")
def degraded(speech) -> dict[str, torch.Tensor]:
    from rvqcodec import api

    torch.manual_seed(0)
    noisy = augment.mix_at_snr(augment.lowpass(speech, 3000.0, SR), augment.colored_noise(speech.numel(), 0.0), 5.0)
    codec = api.from_pretrained()
    with torch.no_grad():
        decoded = codec.decode(codec.encode(speech[None, None], n_q=1))[0, 0, :speech.numel()]
    return {"noisy and band-limited": noisy, "shipped model at 0.5 kbps": decoded}


def test_every_listener_model_rates_the_original_above_degraded_copies(scorer, speech, degraded):
    original = scorer.non_intrusive(speech, SR)
    same = scorer.visqol(speech, speech, SR)
    for name, copy in degraded.items():
        scores = scorer.score(speech, copy, SR)
        assert set(scores) == set(perceptual.PERCEPTUAL_NAMES)
        for key in ("distillmos", "dnsmos_p808", "dnsmos_ovrl"):
            assert scores[f"reference_{key}"] == pytest.approx(original[key])
            assert scores[key] < original[key] - 0.2, (name, key, scores[key], original[key])
        assert scores["visqol"] < same - 0.5, (name, scores["visqol"], same)
    for key, value in {**original, "visqol": same}.items():
        assert 1.0 <= value <= 5.0, key


def test_signals_the_models_cannot_rate_are_nan(scorer, speech):
    short = scorer.score(speech[:SR // 2], speech[:SR // 2], SR)
    assert all(math.isnan(v) for v in short.values())
    silent = scorer.non_intrusive(torch.zeros(3 * SR), SR)
    assert all(math.isnan(v) for v in silent.values())
    # another rate is resampled to 16 kHz first: the same signal at 48 kHz scores (nearly) the same
    from rvqcodec.data.audio_io import resample

    at48k = scorer.non_intrusive(resample(speech[None], SR, 48000)[0], 48000)
    assert at48k["distillmos"] == pytest.approx(scorer.non_intrusive(speech, SR)["distillmos"], abs=0.05)


def test_eval_json_carries_the_listener_scores(speech, degraded, tmp_path, capsys):
    ref = write_audio(tmp_path / "ref.wav", speech[None], SR)
    deg = write_audio(tmp_path / "deg.wav", degraded["shipped model at 0.5 kbps"][None], SR)
    assert main(["eval", str(ref), str(deg), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in perceptual.PERCEPTUAL_NAMES:
        assert isinstance(result[key], float), key
    assert result["distillmos"] < result["reference_distillmos"]
    assert main(["eval", str(ref), str(deg), "--json", "--no-perceptual"]) == 0
    assert "distillmos" not in json.loads(capsys.readouterr().out)
    assert main(["eval", str(ref), str(deg)]) == 0
    table = capsys.readouterr().out
    assert "DistillMOS of REF" in table and "ViSQOL" in table


def test_a_missing_extra_is_a_note_or_a_one_line_error(speech, tmp_path, capsys, monkeypatch):
    import builtins

    ref = write_audio(tmp_path / "ref.wav", speech[None], SR)
    monkeypatch.setattr(perceptual, "available", lambda: False)
    monkeypatch.setattr(perceptual, "_SCORER", None)
    real_import = builtins.__import__

    def no_distillmos(name, *args, **kwargs):
        if name.split(".")[0] == "distillmos":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_distillmos)
    assert main(["eval", str(ref), str(ref), "--json"]) == 0  # not asked for: skipped with a note
    captured = capsys.readouterr()
    assert "distillmos" not in json.loads(captured.out) and 'rvqcodec[perceptual]' in captured.err
    assert main(["eval", str(ref), str(ref), "--perceptual"]) == 2  # asked for: one line naming the extra
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install "rvqcodec[perceptual]"' in err and "distillmos" in err


def test_roundtrip_table_and_json_add_the_listener_columns(tmp_path, capsys):
    sample = Path(__file__).resolve().parents[1] / "samples" / "1272-128104-0000_3s.wav"
    assert main(["roundtrip", str(sample), "--bitrate", "6", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    row = result["files"][0]
    assert 1.0 < row["distillmos"] < 5.0 and 1.0 < row["visqol"] < 5.0
    assert result["mean"]["distillmos"] == pytest.approx(row["distillmos"])
    assert main(["roundtrip", str(sample), "--bitrate", "6"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "DistillMOS" in header and "ViSQOL" in header
