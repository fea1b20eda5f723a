"""Audio at the extremes through every command: long files (scored in segments, bounded memory, rows printed as
they finish, Ctrl-C keeps them) and very short ones (one rule everywhere: accepted, undefined metrics are n/a)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from rvqcodec.cli import main
from rvqcodec.data.audio_io import read_audio
from rvqcodec.model.codec import Codec, CodecConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
LONG_SECONDS = 160.0  # one PESQ buffer this long crashes the ITU library (SIGSEGV from about 140-150 s at 16 kHz)
MEMORY_GROWTH_LIMIT_MB = 80
"""Peak RSS of a 160 s roundtrip minus that of a 53 s one. Measured with segments: +25 to +32 MB (allocator noise;
50/150/300/600 s files peak within 30 MB of each other); reading and scoring whole files grew ~1.1 MB per second of
audio (+120 MB here, 1.12 GB for 5 min)."""

# Runs the CLI and reports the child's own peak RSS on stderr.
_DRIVER = ("import resource, sys\nfrom rvqcodec.cli import main\nrc = main(sys.argv[1:])\n"
           "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\nsys.exit(rc)\n")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    Codec(CodecConfig.preset("tiny")).save(path)
    return str(path)


@pytest.fixture(scope="module")
def dev_clean_speech(speech_root) -> np.ndarray:
    """All of dev-clean's 23 files (270 s) concatenated, 16 kHz float32."""
    files = sorted((speech_root / "LibriSpeech" / "dev-clean").rglob("*.flac"))
    return np.concatenate([read_audio(f).samples[0].numpy() for f in files])


def _child_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return env


def _run_measured(*args: str, timeout: float = 300) -> tuple[int, str, str, float]:
    """Run ``rvqcodec ARGS`` in a child process -> (exit code, stdout, stderr, peak RSS in MB)."""
    proc = subprocess.run([sys.executable, "-c", _DRIVER, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=_child_env(), cwd=REPO_ROOT)
    peaks = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("MAXRSS_KB")]
    unit = 2**20 if sys.platform == "darwin" else 2**10  # ru_maxrss is bytes on macOS, KiB on Linux
    return proc.returncode, proc.stdout, proc.stderr, (int(peaks[0]) * unit / 2**20 if peaks else math.nan)


def test_long_file_is_scored_in_segments_in_bounded_memory(tmp_path, tiny_model, dev_clean_speech):
    n_long = int(LONG_SECONDS * 16000)
    long_path, short_path = tmp_path / "long.flac", tmp_path / "short.flac"
    soundfile.write(long_path, dev_clean_speech[:n_long], 16000)
    soundfile.write(short_path, dev_clean_speech[:n_long // 3], 16000)  # the size of one of the long file's segments

    # the listener models (perceptual extra) are left out: this measures the scoring engine's streaming, and the
    # models' own working memory (a few hundred MB, loaded once) would only blur it
    code, out, err, short_peak = _run_measured("roundtrip", short_path, "--json", "--model", tiny_model, "--threads", "1",
                                               "--no-perceptual")
    assert code == 0, err
    code, out, err, long_peak = _run_measured("roundtrip", long_path, "--json", "--model", tiny_model, "--threads", "1",
                                              "--output-dir", tmp_path / "kept", "--no-perceptual")
    assert code == 0, f"exit code {code} (-11 is the PESQ segfault): {err[-2000:]}"
    result = json.loads(out)
    (row,) = result["files"]
    assert row["seconds"] == pytest.approx(LONG_SECONDS) and row["segments"] == 3
    for key in ("pesq_wb", "pesq_nb", "stoi", "si_sdr", "mel_distance"):
        assert row[key] is not None and math.isfinite(row[key]), key
    assert "scored in 3 segments" in err  # said in the output
    assert long_peak - short_peak < MEMORY_GROWTH_LIMIT_MB, (short_peak, long_peak)

    # eval of the kept decoded file against the input: streamed, segmented, the same scores as roundtrip's
    decoded = tmp_path / "kept" / "long.wav"
    assert soundfile.info(decoded).frames == n_long
    code, out, err, _ = _run_measured("eval", long_path, decoded, "--json", "--no-align", "--no-perceptual")
    assert code == 0, err[-2000:]
    scores = json.loads(out)
    assert scores["segments"] == 3 and scores["num_samples"] == n_long and "scored in 3 segments" in err
    # PCM_16 rounding of the kept file only moves the scores a little
    assert scores["mel_distance"] == pytest.approx(row["mel_distance"], abs=0.01)
    assert scores["stoi"] == pytest.approx(row["stoi"], abs=0.01)


def _clips(folder: Path, speech: np.ndarray, count: int, seconds: float = 3.0) -> None:
    folder.mkdir()
    n = int(seconds * 16000)
    for i in range(count):
        soundfile.write(folder / f"clip{i}.wav", speech[i * n:(i + 1) * n], 16000, subtype="PCM_16")


# Runs the CLI with Ctrl-C (a real SIGINT, sent by the process to itself) landing while the file after the first
# ``argv[1]`` files is being scored: deterministic, whatever the speed of the machine.
_CTRL_C_DRIVER = """
import os, signal, sys
import rvqcodec.scoring as scoring
from rvqcodec.cli import main
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if this suite runs as a background job
after, real, calls = int(sys.argv[1]), scoring.score_streams, []
def score_streams(*args, **kwargs):
    calls.append(1)
    if len(calls) == after + 1:
        os.kill(os.getpid(), signal.SIGINT)
    return real(*args, **kwargs)
scoring.score_streams = score_streams
sys.exit(main(sys.argv[2:]))
"""


def _interrupted_run(args: list, after_files: int, timeout: float = 300) -> tuple[int, str, str]:
    """Run ``rvqcodec ARGS`` in a child process that gets Ctrl-C in the middle of file ``after_files + 1``
    (compressed and decoded, being scored) -> (exit code, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-c", _CTRL_C_DRIVER, str(after_files), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=_child_env(), cwd=REPO_ROOT)
    return proc.returncode, proc.stdout, proc.stderr


def test_roundtrip_prints_each_row_as_it_finishes_and_ctrl_c_keeps_them(tmp_path, tiny_model, dev_clean_speech):
    _clips(tmp_path / "set", dev_clean_speech, 6)
    common = ["roundtrip", tmp_path / "set", "-b", "3", "--model", tiny_model, "--threads", "1"]

    code, out, err = _interrupted_run(common, after_files=2)
    assert code == 130 and "rvqcodec roundtrip: interrupted" in err, (code, out[-800:], err[-800:])
    assert "Traceback" not in err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["file", "sec", "kbps"]
    rows = [line for line in lines if line.startswith("clip")]
    assert [row.split()[0] for row in rows] == ["clip0.wav", "clip1.wav"]  # the finished files, not the third
    assert lines[-2].startswith("mean (2 of 6 files)") and lines[-1].startswith("(mean row: kbps")

    code, out, err = _interrupted_run([*common, "--json"], after_files=3)
    assert code == 130 and "rvqcodec roundtrip: interrupted" in err and "Traceback" not in err
    result = json.loads(out)  # still one valid JSON object
    assert result["interrupted"] is True and result["failed"] is None
    assert [Path(row["file"]).name for row in result["files"]] == ["clip0.wav", "clip1.wav", "clip2.wav"]
    assert result["mean"]["files"] == 3
    progress = [line for line in err.splitlines() if line.startswith(str(tmp_path / "set"))]
    assert len(progress) == 3  # one stderr line per finished file


@pytest.mark.parametrize("num_samples", [0, 100, 320, 3200])
def test_very_short_audio_follows_one_rule_in_every_command(capsys, tmp_path, tiny_model, dev_clean_speech,
                                                            num_samples):
    """0 samples, 6 ms (under one frame), 20 ms (under one STOI frame) and 0.2 s: every command accepts them;
    metrics undefined for so short a signal are n/a, with one note line saying why; never a traceback."""
    src = tmp_path / "short.wav"
    soundfile.write(src, dev_clean_speech[16000:16000 + num_samples].reshape(-1, 1), 16000, subtype="FLOAT")

    def run(*args) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err and "error" not in captured.err, captured.err
        return code, captured.out, captured.err

    assert run("compress", src, tmp_path / "s.rvq", "-b", "3", "--model", tiny_model)[0] == 0
    assert run("decompress", tmp_path / "s.rvq", tmp_path / "s.wav", "--model", tiny_model)[0] == 0
    assert soundfile.info(tmp_path / "s.wav").frames == num_samples

    code, out, err = run("roundtrip", src, "-b", "3", "--json", "--model", tiny_model)
    assert code == 0
    (row,) = json.loads(out)["files"]
    assert row["seconds"] == pytest.approx(num_samples / 16000)
    assert row["pesq_wb"] is None and row["pesq_nb"] is None and row["stoi"] is None
    notes = [line for line in err.splitlines() if "PESQ needs" in line]
    assert len(notes) == 1 and "n/a" in notes[0]

    code, out, err = run("eval", src, tmp_path / "s.wav", "--json")
    assert code == 0
    scores = json.loads(out)
    assert scores["num_samples"] == num_samples
    assert scores["pesq_wb"] is None and scores["stoi"] is None
    assert sum("PESQ needs" in line for line in err.splitlines()) == 1
    code, out, _ = run("eval", src, tmp_path / "s.wav")
    assert code == 0 and "n/a" in out
