"""``rvqcodec eval REF DEG``: exit codes, table and JSON output, resampling/downmix of DEG, alignment."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rvqcodec.cli import main
from rvqcodec.data.audio_io import read_audio, resample, write_audio

SAMPLE_WAV = Path(__file__).resolve().parents[1] / "samples" / "1272-128104-0000_3s.wav"


def _json_run(capsys, *args) -> dict:
    assert main(["eval", *map(str, args), "--json"]) == 0
    out = capsys.readouterr().out
    assert "NaN" not in out and "Infinity" not in out  # json.loads would accept these non-standard tokens
    return json.loads(out)


def test_identical_files_table(capsys):
    assert main(["eval", str(SAMPLE_WAV), str(SAMPLE_WAV)]) == 0
    out = capsys.readouterr().out
    for label in ("PESQ-WB", "PESQ-NB", "STOI", "SI-SDR", "mel distance", "delay"):
        assert label in out
    pesq_line = next(line for line in out.splitlines() if line.startswith("PESQ-WB"))
    assert float(pesq_line.split()[1]) > 4.4


def test_json_is_strict_and_scores_a_delayed_degraded_copy(capsys, tmp_path):
    speech = read_audio(SAMPLE_WAV).samples[0]
    rng = np.random.default_rng(0)
    degraded = torch.cat([torch.zeros(80), 0.8 * speech]) + 0.003 * torch.from_numpy(
        rng.standard_normal(speech.numel() + 80)).float()
    deg_path = write_audio(tmp_path / "deg.wav", degraded, 16000)
    result = _json_run(capsys, SAMPLE_WAV, deg_path)
    assert result["delay_samples"] == 80 and result["sample_rate"] == 16000
    assert 1.0 < result["pesq_wb"] < 4.4 and 0.5 < result["stoi"] < 1.0
    assert 10 < result["si_sdr"] < 40 and result["mel_distance"] > 0
    no_align = _json_run(capsys, SAMPLE_WAV, deg_path, "--no-align")
    assert no_align["delay_samples"] == 0 and no_align["si_sdr"] < result["si_sdr"]

    identical = _json_run(capsys, SAMPLE_WAV, SAMPLE_WAV)
    assert identical["si_sdr"] is None  # +inf is not valid JSON; written as null
    text = json.dumps(identical, allow_nan=False)  # would raise on NaN/inf
    assert "Infinity" not in text and identical["mel_distance"] == 0.0


def test_deg_at_other_rate_and_stereo_is_resampled_to_ref(capsys, tmp_path):
    speech = read_audio(SAMPLE_WAV).samples  # (1, T) at 16 kHz
    stereo_44k = resample(speech, 16000, 44100).repeat(2, 1)
    deg_path = write_audio(tmp_path / "deg44k.flac", stereo_44k, 44100, subtype="PCM_24")
    assert main(["eval", str(SAMPLE_WAV), str(deg_path), "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["sample_rate"] == 16000 and abs(result["delay_samples"]) <= 1
    assert result["pesq_wb"] > 4.0 and result["si_sdr"] > 20
    assert "averaged to mono" in captured.err and "44100 Hz to 16000 Hz" in captured.err
    # Scoring at an explicit rate resamples both files.
    at_8k = _json_run(capsys, SAMPLE_WAV, deg_path, "--sample-rate", 8000)
    assert at_8k["sample_rate"] == 8000 and math.isclose(at_8k["num_samples"], 24000, abs_tol=2)
    assert at_8k["pesq_nb"] > 4.0


@pytest.mark.parametrize("make_args", [
    lambda tmp: ["eval", str(tmp / "missing.wav"), str(SAMPLE_WAV)],
    lambda tmp: ["eval", str(SAMPLE_WAV), str(tmp)],
    lambda tmp: ["eval", str(SAMPLE_WAV), str(SAMPLE_WAV), "--sample-rate", "0"],
    lambda tmp: ["eval", str(SAMPLE_WAV), str(SAMPLE_WAV), "--max-shift-ms", "-5"],
])
def test_user_mistakes_exit_2_with_one_line(capsys, tmp_path, make_args):
    assert main(make_args(tmp_path)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rvqcodec eval: error:")


def test_not_audio_file_exits_2_and_inputs_are_never_written(capsys, tmp_path):
    ref = tmp_path / "ref.wav"
    ref.write_bytes(SAMPLE_WAV.read_bytes())
    fake = tmp_path / "fake.wav"
    fake.write_text("hello " * 100)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (ref, fake)}
    assert main(["eval", str(ref), str(fake)]) == 2
    assert "not an audio file" in capsys.readouterr().err
    assert main(["eval", str(ref), str(ref), "--json"]) == 0
    capsys.readouterr()
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (ref, fake)} == before  # byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake.wav", "ref.wav"]  # nothing else written


# ------------------------------------------------------------------------------------------------ issue 28


def test_narrowband_reference_has_no_wideband_pesq(capsys, tmp_path):
    speech = read_audio(SAMPLE_WAV).samples
    noisy = speech + 0.01 * torch.from_numpy(np.random.default_rng(0).standard_normal(speech.shape)).float()
    ref = write_audio(tmp_path / "ref8k.wav", resample(speech, 16000, 8000), 8000)
    deg = write_audio(tmp_path / "deg8k.wav", resample(noisy, 16000, 8000), 8000)
    for extra in ([], ["--sample-rate", "16000"]):  # upsampling the reference adds no wide band
        assert main(["eval", str(ref), str(deg), "--json", *extra]) == 0
        captured = capsys.readouterr()
        result = json.loads(captured.out)
        assert result["pesq_wb"] is None and 1.0 < result["pesq_nb"] < 4.6
        notes = [line for line in captured.err.splitlines() if "wideband PESQ" in line]
        assert len(notes) == 1 and notes[0].startswith("note: ") and "8000 Hz" in notes[0] and "n/a" in notes[0]
    assert main(["eval", str(ref), str(deg)]) == 0
    table = capsys.readouterr().out
    assert next(line for line in table.splitlines() if line.startswith("PESQ-WB")).split()[1] == "n/a"


def test_silent_reference_and_out_of_range_input_are_said_in_one_line(capsys, tmp_path):
    silence = write_audio(tmp_path / "silence.wav", torch.zeros(1, 32000), 16000)
    hiss = write_audio(tmp_path / "hiss.wav", 1e-3 * torch.randn(1, 32000), 16000)
    result = _json_run(capsys, silence, hiss)
    assert all(result[key] is None for key in ("pesq_wb", "pesq_nb", "stoi", "si_sdr", "mel_distance"))
    assert main(["eval", str(silence), str(hiss)]) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if "digital silence" in line]
    assert len(notes) == 1 and notes[0].startswith("note: ") and "n/a" in notes[0]
    assert next(line for line in captured.out.splitlines() if line.startswith("mel distance")).split()[2] == "n/a"

    speech = read_audio(SAMPLE_WAV).samples
    loud = write_audio(tmp_path / "loud.wav", speech * (6.5 / speech.abs().max()), 16000, subtype="FLOAT")
    assert main(["eval", str(loud), str(SAMPLE_WAV), "--json"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(loud) in warnings[0] and "scaled by 1/6.50" in warnings[0]
    result = json.loads(captured.out)
    assert result["pesq_wb"] > 4.4
    assert result["warnings"] == {"reference": [warnings[0].split(": ", 2)[2]], "degraded": []}


def test_a_silent_degraded_signal_is_the_worst_case_not_identical(capsys, tmp_path):
    silence = write_audio(tmp_path / "silence.wav", torch.zeros(1, 48000), 16000)
    assert main(["eval", str(SAMPLE_WAV), str(silence)]) == 0
    captured = capsys.readouterr()
    si_sdr_line = next(line for line in captured.out.splitlines() if line.startswith("SI-SDR"))
    assert si_sdr_line.split()[1] == "-inf" and "identical" not in si_sdr_line
    notes = [line for line in captured.err.splitlines() if "digital silence" in line]
    assert notes == ["note: degraded signal is digital silence: PESQ and STOI are undefined, reported as n/a"]
