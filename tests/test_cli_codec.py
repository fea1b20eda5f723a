"""The compress / decompress / roundtrip / info commands, run through ``rvqcodec.cli.main`` with a tiny random
codec: outputs, exit codes (0 ok, 1 partial batch failure, 2 user mistake), one-line errors, safe writes."""
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
from helpers import with_version_byte

from rvqcodec import api, bitstream, chunking, codec_files, streams
from rvqcodec.cli import main
from rvqcodec.data.audio_io import read_audio, resample
from rvqcodec.model.codec import Codec, CodecConfig

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Codec, str]:
    torch.manual_seed(0)
    codec = Codec(CodecConfig.preset("tiny")).eval()
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    codec.save(path)
    return Codec.load(path), str(path)


@pytest.fixture(scope="module")
def clips(speech_root, tmp_path_factory) -> list[Path]:
    """Three 3 s clips of real speech (dev-clean) as 16 kHz wav files."""
    folder = tmp_path_factory.mktemp("clips")
    files = sorted((speech_root / "LibriSpeech" / "dev-clean").rglob("*.flac"))[:3]
    out = []
    for i, path in enumerate(files):
        wav = read_audio(path).samples[0, :3 * 16000].numpy()
        target = folder / f"clip{i}.wav"
        soundfile.write(target, wav, 16000, subtype="PCM_16")
        out.append(target)
    return out


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _errors(err: str) -> list[str]:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert "Traceback" not in err
    return lines


# ------------------------------------------------------------------------------------------ compress


@pytest.mark.parametrize("bitrate,n_q", [("0.5", 1), ("3", 6), ("8", 16)])
def test_compress_decompress_single_file(capsys, tmp_path, model, clips, bitrate, n_q):
    codec, model_path = model
    code, out, err = run_cli(capsys, "compress", clips[0], tmp_path / "a.rvq", "--bitrate", bitrate,
                             "--model", model_path)
    assert code == 0, err
    header, codes = bitstream.read_rvq(tmp_path / "a.rvq")
    assert header.n_q == n_q and header.num_samples == 3 * 16000 and header.model_id == codec.model_id
    assert (tmp_path / "a.rvq").stat().st_size == bitstream.OVERHEAD_BYTES + math.ceil(n_q * 10 * 150 / 8)
    # the file equals the Python API's bytes
    wav = read_audio(clips[0]).samples
    assert (tmp_path / "a.rvq").read_bytes() == api.compress(codec, wav, 16000, n_q=n_q)

    code, out, err = run_cli(capsys, "decompress", tmp_path / "a.rvq", tmp_path / "a.wav", "--model", model_path)
    assert code == 0, err
    decoded, sr = soundfile.read(tmp_path / "a.wav", dtype="float32")
    assert sr == 16000 and decoded.shape == (3 * 16000,)
    expected, _ = api.decompress(codec, (tmp_path / "a.rvq").read_bytes())
    np.testing.assert_allclose(decoded, expected[0].numpy(), atol=1.5 / 32768)  # PCM_16 rounding


def test_n_q_option_and_default_is_all_stages(capsys, tmp_path, model, clips):
    _, model_path = model
    assert run_cli(capsys, "compress", clips[0], tmp_path / "a.rvq", "--n-q", "5", "--model", model_path)[0] == 0
    assert bitstream.read_rvq(tmp_path / "a.rvq")[0].n_q == 5
    assert run_cli(capsys, "compress", clips[0], tmp_path / "b.rvq", "--model", model_path)[0] == 0
    assert bitstream.read_rvq(tmp_path / "b.rvq")[0].n_q == 16
    code, _, err = run_cli(capsys, "compress", clips[0], tmp_path / "c.rvq", "--n-q", "3", "--bitrate", "1.5",
                           "--model", model_path)
    assert code == 2 and "not allowed with" in err


def test_unsupported_bitrate_lists_the_valid_ones(capsys, tmp_path, model, clips):
    code, out, err = run_cli(capsys, "compress", clips[0], tmp_path / "a.rvq", "--bitrate", "2.7",
                             "--model", model[1])
    assert code == 2
    assert _errors(err) == [
        "rvqcodec compress: error: no bitrate of 2.7 kbps for this model; valid bitrates (kbps): "
        + ", ".join(f"{0.5 * n:g}" for n in range(1, 17))]
    assert not (tmp_path / "a.rvq").exists()
    code, _, err = run_cli(capsys, "compress", clips[0], tmp_path / "a.rvq", "--n-q", "17", "--model", model[1])
    assert code == 2 and "between 1 and 16" in err


def test_missing_models_give_one_line_errors(capsys, tmp_path, clips, monkeypatch):
    import rvqcodec.pretrained as pretrained

    monkeypatch.setattr(pretrained, "default_checkpoint_path", lambda: tmp_path / "nope" / "default.pt")
    for command in (["compress", clips[0], tmp_path / "a.rvq"], ["decompress", tmp_path / "x.rvq", tmp_path / "x.wav"],
                    ["roundtrip", clips[0]], ["info"]):
        if command[0] == "decompress":
            (tmp_path / "x.rvq").write_bytes(b"RVQC")
        code, _, err = run_cli(capsys, *command)
        assert code == 2
        assert len(_errors(err)) == 1 and "shipped default model is not installed" in err and "--model" in err
    missing = tmp_path / "missing.pt"
    code, _, err = run_cli(capsys, "compress", clips[0], tmp_path / "a.rvq", "--model", missing)
    assert code == 2 and _errors(err) == [f"rvqcodec compress: error: model checkpoint not found: {missing}"]
    code, _, err = run_cli(capsys, "compress", clips[0], tmp_path / "a.rvq", "--model", clips[0])
    assert code == 2 and "not an rvqcodec checkpoint" in err


def test_default_model_is_used_when_installed(capsys, tmp_path, model, clips, monkeypatch):
    import rvqcodec.pretrained as pretrained

    monkeypatch.setattr(pretrained, "default_checkpoint_path", lambda: Path(model[1]))
    code, _, err = run_cli(capsys, "compress", clips[0], tmp_path / "a.rvq", "-b", "1")
    assert code == 2 and "is damaged or was replaced" in err  # default.json names another model
    monkeypatch.setattr(pretrained, "expected_default_model_id", lambda: model[0].model_id)
    assert run_cli(capsys, "compress", clips[0], tmp_path / "a.rvq", "-b", "1")[0] == 0
    assert bitstream.read_rvq(tmp_path / "a.rvq")[0].model_id == model[0].model_id
    assert api.from_pretrained().model_id == model[0].model_id


def test_existing_output_needs_force_and_inputs_are_never_written(capsys, tmp_path, model, clips):
    _, model_path = model
    src = tmp_path / "in.wav"
    src.write_bytes(clips[0].read_bytes())
    before = src.read_bytes()
    out = tmp_path / "a.rvq"
    assert run_cli(capsys, "compress", src, out, "-b", "1", "--model", model_path)[0] == 0
    first = out.read_bytes()
    code, _, err = run_cli(capsys, "compress", src, out, "-b", "2", "--model", model_path)
    assert code == 2 and "already exists" in err and "--force" in err
    assert out.read_bytes() == first
    assert run_cli(capsys, "compress", src, out, "-b", "2", "--force", "--model", model_path)[0] == 0
    assert bitstream.read_rvq(out)[0].n_q == 4

    code, _, err = run_cli(capsys, "compress", src, src, "--force", "--model", model_path)
    assert code == 2 and "input" in err
    code, _, err = run_cli(capsys, "decompress", out, out, "--force", "--model", model_path)
    assert code == 2 and "input" in err
    assert run_cli(capsys, "decompress", out, tmp_path / "o.wav", "--model", model_path)[0] == 0
    code, _, err = run_cli(capsys, "decompress", out, tmp_path / "o.wav", "--model", model_path)
    assert code == 2 and "already exists" in err
    assert src.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_resampled_stereo_and_tiny_inputs(capsys, tmp_path, model, clips):
    _, model_path = model
    mono = read_audio(clips[1]).samples[0]
    left = resample(mono, 16000, 44100).numpy()
    soundfile.write(tmp_path / "st.wav", np.stack([left, 0.3 * left], axis=1), 44100)
    soundfile.write(tmp_path / "short.wav", np.full(100, 0.1, dtype=np.float32), 16000)  # < 1 frame
    soundfile.write(tmp_path / "silent.flac", np.zeros(8000, dtype=np.float32), 22050)
    soundfile.write(tmp_path / "empty.wav", np.zeros((0, 1), dtype=np.float32), 16000)
    expected_samples = {"st": math.ceil(len(left) * 160 / 441), "short": 100,
                        "silent": math.ceil(8000 * 16000 / 22050), "empty": 0}
    for name, n in expected_samples.items():
        src = next(tmp_path.glob(f"{name}.*"))
        code, out, err = run_cli(capsys, "compress", src, tmp_path / f"{name}.rvq", "-b", "1.5", "--model", model_path)
        assert code == 0, err
        assert ("downmixed to mono" in err) == (name == "st")
        header = bitstream.read_rvq(tmp_path / f"{name}.rvq")[0]
        assert header.num_samples == n and header.sample_rate == 16000
        code, _, err = run_cli(capsys, "decompress", tmp_path / f"{name}.rvq", tmp_path / f"{name}.out.wav",
                               "--model", model_path)
        assert code == 0, err
        assert soundfile.info(tmp_path / f"{name}.out.wav").frames == n

    code, _, err = run_cli(capsys, "decompress", tmp_path / "st.rvq", tmp_path / "st44.wav", "--sample-rate", "44100",
                           "--model", model_path)
    assert code == 0, err
    info = soundfile.info(tmp_path / "st44.wav")
    assert info.samplerate == 44100 and info.frames == math.ceil(expected_samples["st"] * 441 / 160)


def test_batch_folder_with_a_bad_file_continues_and_exits_1(capsys, tmp_path, model, clips):
    _, model_path = model
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / "a.wav").write_bytes(clips[0].read_bytes())
    (src / "sub" / "b.wav").write_bytes(clips[1].read_bytes())
    (src / "broken.wav").write_text("this is not audio\n")
    (src / "notes.txt").write_text("ignored: not an audio extension\n")
    code, out, err = run_cli(capsys, "compress", src, tmp_path / "out", "-b", "3", "--model", model_path)
    assert code == 1
    errors = _errors(err)
    assert len(errors) == 1 and "broken.wav" in errors[0]
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.rvq")) == [
        "a.rvq", "sub/b.rvq"]
    assert "2 of 3 file(s) done, 1 failed" in err

    (tmp_path / "out" / "junk.rvq").write_bytes(b"RIFF....WAVEfmt ")
    code, out, err = run_cli(capsys, "decompress", tmp_path / "out", tmp_path / "dec", "--model", model_path)
    assert code == 1
    assert len(_errors(err)) == 1 and "not an .rvq file" in err
    for name in ("a.wav", "sub/b.wav"):
        assert soundfile.info(tmp_path / "dec" / name).frames == 3 * 16000
    assert not (tmp_path / "dec" / "junk.wav").exists()

    # all good -> exit 0; a glob works like a folder
    (tmp_path / "out" / "junk.rvq").unlink()
    code, _, err = run_cli(capsys, "decompress", str(tmp_path / "out" / "**" / "*.rvq"), tmp_path / "dec2",
                           "--model", model_path)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "dec2").rglob("*.wav")) == ["a.wav", "b.wav"]


def test_single_bad_input_is_a_user_error(capsys, tmp_path, model):
    _, model_path = model
    (tmp_path / "text.wav").write_text("hello\n")
    code, _, err = run_cli(capsys, "compress", tmp_path / "text.wav", tmp_path / "t.rvq", "--model", model_path)
    assert code == 2 and len(_errors(err)) == 1 and "cannot read" in err
    code, _, err = run_cli(capsys, "compress", tmp_path / "missing.wav", tmp_path / "t.rvq", "--model", model_path)
    assert code == 2 and "input not found" in err
    code, _, err = run_cli(capsys, "compress", str(tmp_path / "*.flac"), tmp_path / "o", "--model", model_path)
    assert code == 2 and "no files match" in err
    soundfile.write(tmp_path / "ok.wav", np.zeros(800, dtype=np.float32), 16000)
    code, _, err = run_cli(capsys, "compress", tmp_path / "ok.wav", tmp_path / "nodir" / "t.rvq", "--model", model_path)
    assert code == 2 and "output folder does not exist" in err and not (tmp_path / "nodir").exists()
    (tmp_path / "z.rvq").write_bytes(api.compress(model[0], np.zeros(800), 16000, n_q=1))
    code, _, err = run_cli(capsys, "decompress", tmp_path / "z.rvq", tmp_path / "z.wav", "--sample-rate", "44099",
                           "--model", model_path)
    assert code == 2 and "cannot resample" in err and not (tmp_path / "z.wav").exists()


def test_every_damaged_stream_has_its_own_error(capsys, tmp_path, model, clips):
    codec, model_path = model
    good = api.compress(codec, read_audio(clips[2]).samples, 16000, n_q=4)
    torch.manual_seed(1)
    other = Codec(CodecConfig.preset("tiny"))
    assert other.model_id != codec.model_id
    other_path = tmp_path / "other.pt"
    other.save(other_path)
    flipped = bytearray(good)
    flipped[100] ^= 0x04
    cases = {
        "truncated": (good[:-10], "truncated .rvq file"),
        "flipped": (bytes(flipped), "payload checksum (CRC32) mismatch"),
        "magic": (b"OggS" + good[4:], "not an .rvq file"),
        "newer": (with_version_byte(good, 3), "unsupported .rvq format version 3 (written by a newer rvqcodec"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / f"{name}.rvq").write_bytes(data)
        code, _, err = run_cli(capsys, "decompress", tmp_path / f"{name}.rvq", tmp_path / f"{name}.wav",
                               "--model", model_path)
        assert code == 2 and message in err, (name, err)
        assert len(_errors(err)) == 1 and not (tmp_path / f"{name}.wav").exists()
    (tmp_path / "good.rvq").write_bytes(good)
    code, _, err = run_cli(capsys, "decompress", tmp_path / "good.rvq", tmp_path / "good.wav", "--model", other_path)
    assert code == 2 and f"encoded with model {codec.model_id}" in err and other.model_id in err
    assert not (tmp_path / "good.wav").exists()
    assert run_cli(capsys, "decompress", tmp_path / "good.rvq", tmp_path / "good.wav", "--model", model_path)[0] == 0


# ------------------------------------------------------------------------------------ roundtrip / info


def test_roundtrip_json_and_table(capsys, tmp_path, model, clips):
    codec, model_path = model
    code, out, err = run_cli(capsys, "roundtrip", clips[0], "--bitrate", "3", "--json", "--model", model_path)
    assert code == 0, err
    result = json.loads(out)
    assert result["n_q"] == 6 and result["model_id"] == codec.model_id and result["failed"] == 0
    (row,) = result["files"]
    assert row["bytes"] == bitstream.OVERHEAD_BYTES + 6 * 10 * 150 // 8
    assert row["kbps"] == pytest.approx(row["bytes"] * 8 / 3.0 / 1000)
    for key in ("pesq_wb", "pesq_nb", "stoi", "si_sdr", "mel_distance"):
        assert key in row and key in result["mean"]
    assert row["mel_distance"] == pytest.approx(result["mean"]["mel_distance"])

    folder = tmp_path / "set"
    folder.mkdir()
    for clip in clips:
        (folder / clip.name).write_bytes(clip.read_bytes())
    (folder / "bad.wav").write_text("nope\n")
    code, out, err = run_cli(capsys, "roundtrip", folder, "-b", "1", "--model", model_path,
                             "--output-dir", tmp_path / "kept")
    assert code == 1 and len(_errors(err)) == 1 and "bad.wav" in err
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["file", "sec", "kbps"]
    assert sum(line.startswith("clip") for line in lines) == 3 and lines[-2].startswith("mean (3 of 4 files)")
    kept = sorted(p.name for p in (tmp_path / "kept").iterdir())
    assert kept == sorted([f"clip{i}.{ext}" for i in range(3) for ext in ("rvq", "wav")])
    assert bitstream.read_rvq(tmp_path / "kept" / "clip0.rvq")[0].n_q == 2


def test_info_on_checkpoint_and_stream(capsys, tmp_path, model, clips):
    codec, model_path = model
    code, out, _ = run_cli(capsys, "info", model_path, "--json")
    assert code == 0
    info = json.loads(out)
    assert info["model_id"] == codec.model_id and info["bitrates_kbps"][5] == 3.0 and info["max_n_q"] == 16
    code, out, _ = run_cli(capsys, "info", "--model", model_path)
    assert code == 0 and "0.5, 1, 1.5" in out and codec.model_id in out

    (tmp_path / "a.rvq").write_bytes(api.compress(codec, read_audio(clips[0]).samples, 16000, bitrate=2))
    code, out, _ = run_cli(capsys, "info", tmp_path / "a.rvq", "--json", "--model", model_path)
    info = json.loads(out)
    assert code == 0 and info["n_q"] == 4 and info["duration_s"] == 3.0 and info["decodable"] is True
    (tmp_path / "b.rvq").write_bytes((tmp_path / "a.rvq").read_bytes()[:-1])
    code, _, err = run_cli(capsys, "info", tmp_path / "b.rvq")
    assert code == 2 and "truncated" in err


def test_shipped_samples_compress_if_present(capsys, tmp_path, model):
    samples = REPO_ROOT / "samples"
    files = sorted(p for p in samples.rglob("*") if p.suffix.lower() in (".wav", ".flac")) if samples.is_dir() else []
    if not files:
        pytest.skip("no samples/ folder with audio in this checkout")
    code, _, err = run_cli(capsys, "compress", files[0], tmp_path / "s.rvq", "-b", "3", "--model", model[1])
    assert code == 0, err
    assert bitstream.read_rvq(tmp_path / "s.rvq")[0].num_samples > 0


# ------------------------------------------------------------------------------------ hardening (issue 12)


def test_python_api_accepts_the_layouts_people_pass_and_never_truncates(model, clips):
    codec, _ = model
    mono = read_audio(clips[0]).samples[0].numpy()  # (T,)
    stereo = np.stack([mono, 0.5 * mono])  # (C, T): torchaudio's layout
    expected = api.compress(codec, stereo, 16000, n_q=4)
    assert bitstream.decode_bitstream(expected)[0].num_samples == mono.size
    # (T, C) as soundfile.read returns it: the same stream, not one sample
    assert api.compress(codec, np.ascontiguousarray(stereo.T), 16000, n_q=4) == expected
    assert api.compress(codec, torch.from_numpy(stereo)[None], 16000, n_q=4) == expected  # (1, C, T)
    as_read, _ = soundfile.read(clips[0], always_2d=True)  # (T, 1)
    assert as_read.shape == (mono.size, 1)
    assert api.compress(codec, as_read, 16000, n_q=4) == api.compress(codec, mono, 16000, n_q=4)
    pcm16, _ = soundfile.read(clips[0], dtype="int16")  # integer PCM is scaled, not clipped to +-1
    assert api.compress(codec, pcm16, 16000, n_q=4) == api.compress(codec, mono, 16000, n_q=4)
    for bad, message in ((np.zeros((40, 50)), "ambiguous audio shape"), (np.zeros((2, 1, 800)), "batch of 2"),
                         (np.zeros(800, dtype=bool), "dtype")):
        with pytest.raises(ValueError, match=message):
            api.compress(codec, bad, 16000)


def test_unavailable_or_unknown_device_is_named_in_one_line(capsys, tmp_path, clips):
    """With the shipped model (as a user would run it): a missing GPU is a device error, not a damaged model."""
    unavailable = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    (tmp_path / "x.rvq").write_bytes(b"RVQC")
    for command in (["compress", clips[0], tmp_path / "a.rvq"], ["decompress", tmp_path / "x.rvq", tmp_path / "x.wav"],
                    ["roundtrip", clips[0]]):
        code, out, err = run_cli(capsys, *command, "--device", unavailable)
        assert code == 2 and out == "", err
        errors = _errors(err)
        assert len(errors) == 1 and f"device {unavailable!r} is not available" in errors[0], err
        assert "checkpoint" not in err
    code, _, err = run_cli(capsys, "compress", clips[0], tmp_path / "a.rvq", "--device", "gpu")
    assert code == 2 and len(_errors(err)) == 1 and "unknown device 'gpu'" in err
    assert not (tmp_path / "a.rvq").exists()


def test_library_load_on_a_missing_device_is_not_called_a_bad_checkpoint(model):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises((RuntimeError, AssertionError)) as info:  # torch: "Torch not compiled with CUDA enabled"
        Codec.load(model[1], map_location="cuda")
    assert "checkpoint" not in str(info.value)


def test_programming_errors_keep_their_traceback(capsys, tmp_path, model, clips, monkeypatch):
    """Only user mistakes (InputError, OSError) become one-line errors; a bug in the library is not one."""
    def broken(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(codec_files, "compress_file", broken)
    for inputs, output in (([clips[0]], tmp_path / "o.rvq"), (clips, tmp_path / "o")):  # single file and batch
        with pytest.raises(ValueError, match="an internal bug"):
            main(["compress", *map(str, inputs), str(output), "--model", model[1]])
    capsys.readouterr()


@pytest.fixture
def unwritable_folder(tmp_path):
    """A folder in which no file can be created: chmod for a normal user, the immutable attribute for root
    (who ignores permissions). Skipped where neither works."""
    import os
    import shutil
    import subprocess

    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = lambda: folder.chmod(0o755)  # noqa: E731
    elif shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        undo = lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)  # noqa: E731
    else:
        pytest.skip("cannot make a folder unwritable here (root without chattr +i)")
    try:
        try:
            (folder / "probe").write_bytes(b"")
        except OSError:
            yield folder
        else:
            pytest.skip("the folder stayed writable")
    finally:
        undo()


def test_unwritable_output_folder_is_reported_before_any_work(capsys, tmp_path, model, clips, unwritable_folder,
                                                              monkeypatch):
    codec, model_path = model
    (tmp_path / "a.rvq").write_bytes(api.compress(codec, read_audio(clips[0]).samples, 16000, n_q=2))

    def no_work(*args, **kwargs):
        raise AssertionError("the work started before the output folder was checked")

    for module in (chunking, streams):  # where the stream encoder and decoder find the engine
        monkeypatch.setattr(module, "encode_blocks", no_work)
        monkeypatch.setattr(module, "decode_chunks", no_work)
    for command in (["compress", clips[0], unwritable_folder / "a.rvq"],
                    ["compress", clips[0], clips[1], unwritable_folder / "sub"],
                    ["decompress", tmp_path / "a.rvq", unwritable_folder / "a.wav"],
                    ["roundtrip", clips[0], "--output-dir", unwritable_folder / "kept"]):
        code, out, err = run_cli(capsys, *command, "--model", model_path)
        assert code == 2, (command, err)
        assert _errors(err) == [f"rvqcodec {command[0]}: error: cannot write to the output folder "
                                f"{unwritable_folder}: " + err.split(f"{unwritable_folder}: ")[-1].strip()], err
        assert ".tmp" not in err and str(clips[0]) not in err  # names the folder, not the input or a temp file
    assert list(unwritable_folder.iterdir()) == []


@pytest.mark.parametrize("suffix, subtype", [(".ogg", "VORBIS"), (".opus", "OPUS"), (".mp3", "MPEG_LAYER_III"),
                                             (".flac", "PCM_16")])
def test_decompress_writes_lossy_and_lossless_formats(capsys, tmp_path, model, clips, suffix, subtype):
    _, model_path = model
    assert run_cli(capsys, "compress", clips[0], tmp_path / "a.rvq", "-b", "3", "--model", model_path)[0] == 0
    code, _, err = run_cli(capsys, "decompress", tmp_path / "a.rvq", tmp_path / f"a{suffix}", "--model", model_path)
    assert code == 0, err
    info = soundfile.info(tmp_path / f"a{suffix}")
    assert info.subtype == subtype and info.samplerate == 16000 and abs(info.frames - 3 * 16000) <= 1152
    code, _, err = run_cli(capsys, "decompress", tmp_path / "a.rvq", tmp_path / f"b{suffix}", "--subtype", "PCM_24",
                           "--model", model_path)
    if suffix == ".flac":
        assert code == 0 and soundfile.info(tmp_path / "b.flac").subtype == "PCM_24"
    else:  # an explicit subtype the format cannot hold: one line listing the valid ones, nothing written
        assert code == 2 and len(_errors(err)) == 1 and "subtype PCM_24 is not valid" in err
        assert not (tmp_path / f"b{suffix}").exists()


def test_chunks_shorter_than_the_context_are_refused_at_once(capsys, tmp_path, model, clips, monkeypatch):
    """Refused before any work: no model loaded, no audio read, no chunk encoded (checked by making each of them
    fail, not by timing the command)."""
    import rvqcodec.commands.compress as compress_command
    from rvqcodec.data import audio_io

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the chunk length was checked")

    with monkeypatch.context() as patch:
        patch.setattr(compress_command, "load_model", no_work)
        for module, names in ((chunking, ("encode_blocks",)), (streams, ("encode_blocks",)),
                              (codec_files, ("compress_file",)),
                              (audio_io, ("read_audio", "iter_audio_blocks", "audio_info"))):
            for name in names:
                patch.setattr(module, name, no_work)
        code, _, err = run_cli(capsys, "compress", clips[0], tmp_path / "a.rvq", "--chunk-seconds", "0.001",
                               "--model", model[1])
    assert code == 2 and len(_errors(err)) == 1 and "at least 1 s" in err
    assert not (tmp_path / "a.rvq").exists()
    code, _, err = run_cli(capsys, "compress", clips[0], tmp_path / "a.rvq", "--chunk-seconds", "1", "--model", model[1])
    assert code == 0, err


def test_threads_option_sets_torch_threads(capsys, tmp_path, model, clips):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        code, _, err = run_cli(capsys, "compress", clips[0], tmp_path / "a.rvq", "--threads", "1", "--model", model[1])
        assert code == 0, err
        assert torch.get_num_threads() == 1
        code, _, err = run_cli(capsys, "roundtrip", clips[0], "--threads", "0", "--model", model[1])
        assert code == 2 and "--threads must be at least 1" in err
    finally:
        torch.set_num_threads(before)


def test_info_names_the_torch_version_that_saved_the_model_once(capsys, tmp_path):
    torch.manual_seed(3)
    path = Codec(CodecConfig.preset("tiny")).save(tmp_path / "m.pt", meta={"name": "test model"})
    code, out, _ = run_cli(capsys, "info", "--model", path)
    assert code == 0
    mentions = [line for line in out.splitlines() if torch.__version__ in line]
    assert mentions == [f"saved with  torch {torch.__version__} (running torch {torch.__version__})"]
    assert "meta        name=test model" in out


# ------------------------------------------------------------------------- crashes and silent oddities (issue 28)


def _child_env(buffered: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    return env


def _run_into_closed_pipe(*args: str, buffered: bool = True) -> subprocess.CompletedProcess:
    """``python -m rvqcodec ARGS`` with stdout a real pipe whose reader is gone before the first byte (what
    ``| head -1`` leaves once head has exited; deterministic: every write to it fails with EPIPE)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "rvqcodec", *map(str, args)], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=300, env=_child_env(buffered),
                              cwd=REPO_ROOT)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("buffered", [True, False])
def test_info_into_a_closed_pipe_exits_quietly_with_141(buffered):
    proc = _run_into_closed_pipe("info", buffered=buffered)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_roundtrip_into_a_closed_pipe_exits_quietly_with_141(tmp_path, model, clips):
    folder = tmp_path / "set"
    folder.mkdir()
    for clip in clips[:2]:
        (folder / clip.name).write_bytes(clip.read_bytes())
    proc = _run_into_closed_pipe("roundtrip", folder, "--bitrate", "6", "--no-perceptual", "--model", model[1])
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr and "Exception" not in proc.stderr


@pytest.mark.parametrize("device, message", [("xpu", "device 'xpu' is not available"),
                                             ("meta", "device 'meta' is not supported")])
def test_devices_torch_knows_but_cannot_run_give_one_line(capsys, tmp_path, model, clips, device, message):
    if device == "xpu" and hasattr(torch, "xpu") and torch.xpu.is_available():
        pytest.skip("this machine has an XPU")
    for command in (["compress", clips[0], tmp_path / "a.rvq"], ["roundtrip", clips[0], "--no-perceptual"]):
        code, out, err = run_cli(capsys, *command, "--device", device, "--model", model[1])
        assert code == 2 and out == "", err
        errors = _errors(err)
        assert len(errors) == 1 and message in errors[0] and "--device cpu" in errors[0], err
    assert not (tmp_path / "a.rvq").exists()


def _loud_and_cut_files(folder: Path, clip: Path) -> tuple[Path, Path, np.ndarray]:
    """``loud.wav``: the clip as a float WAV peaking at 6.5; ``cut.wav``: a 16-bit WAV whose header declares 3 s
    but whose file ends after 1 s. Returns them and the loud samples."""
    speech = read_audio(clip).samples[0].numpy()
    loud = (speech * (6.5 / np.abs(speech).max())).astype(np.float32)
    soundfile.write(folder / "loud.wav", loud, 16000, subtype="FLOAT")
    soundfile.write(folder / "full.wav", speech, 16000, subtype="PCM_16")
    data = (folder / "full.wav").read_bytes()
    (folder / "full.wav").unlink()
    (folder / "cut.wav").write_bytes(data[:44 + 2 * 16000])  # 44-byte header + 1 s of 16-bit samples
    return folder / "loud.wav", folder / "cut.wav", loud


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:")]


def test_out_of_range_float_and_truncated_inputs_are_warned_about_in_one_line(capsys, tmp_path, model, clips):
    codec, model_path = model
    folder = tmp_path / "in"
    folder.mkdir()
    loud_path, cut_path, loud = _loud_and_cut_files(folder, clips[0])
    (folder / "ok.wav").write_bytes(clips[1].read_bytes())
    code, _, err = run_cli(capsys, "compress", folder, tmp_path / "out", "-b", "3", "--model", model_path)
    assert code == 0 and not _errors(err), err
    cut_line, loud_line = sorted(_warnings(err))  # cut.wav, loud.wav
    assert loud_line.startswith(f"warning: {loud_path}: ") and "6.50" in loud_line and "scaled" in loud_line
    assert cut_line.startswith(f"warning: {cut_path}: ") and "truncated" in cut_line
    assert "3.00 s" in cut_line and "1.00 s (16000 samples)" in cut_line
    # what the codec does, as the warning says: the whole file scaled to peak at full scale (not clipped)
    peak = float(np.abs(loud).max())
    assert (tmp_path / "out" / "loud.rvq").read_bytes() == api.compress(codec, loud / peak, 16000, n_q=6)
    assert bitstream.read_rvq(tmp_path / "out" / "cut.rvq")[0].num_samples == 16000

    code, out, err = run_cli(capsys, "roundtrip", folder, "-b", "3", "--json", "--no-perceptual",
                             "--model", model_path)
    assert code == 0 and not _errors(err), err
    assert sorted(line.split(":")[1].strip() for line in _warnings(err)) == [str(cut_path), str(loud_path)]
    rows = {Path(row["file"]).name: row for row in json.loads(out)["files"]}
    assert sorted(rows) == ["cut.wav", "loud.wav", "ok.wav"]
    assert rows["cut.wav"]["seconds"] == 1.0
    assert len(rows["loud.wav"]["warnings"]) == 1 and rows["ok.wav"]["warnings"] == []


def test_digital_silence_is_na_with_a_note_in_roundtrip(capsys, tmp_path, model):
    soundfile.write(tmp_path / "silence.wav", np.zeros(2 * 16000, dtype=np.float32), 16000, subtype="PCM_16")
    code, out, err = run_cli(capsys, "roundtrip", tmp_path / "silence.wav", "-b", "3", "--json", "--no-perceptual",
                             "--model", model[1])
    assert code == 0, err
    (row,) = json.loads(out)["files"]
    assert all(row[key] is None for key in ("pesq_wb", "pesq_nb", "stoi", "si_sdr", "mel_distance")), row
    notes = [line for line in err.splitlines() if "digital silence" in line]
    assert len(notes) == 1 and notes[0].startswith("note: ") and "n/a" in notes[0]


def test_roundtrip_table_shows_relative_paths_and_a_duration_weighted_mean_kbps(capsys, tmp_path, model, clips):
    root = tmp_path / "root"
    for sub, clip in (("a", clips[0]), ("b", clips[1])):
        (root / sub).mkdir(parents=True)
        (root / sub / "x.wav").write_bytes(clip.read_bytes())
    (root / "c").mkdir()
    soundfile.write(root / "c" / "tiny.wav", read_audio(clips[2]).samples[0, :160].numpy(), 16000)  # 10 ms
    code, out, err = run_cli(capsys, "roundtrip", root, "-b", "6", "--json", "--no-perceptual", "--model", model[1])
    assert code == 0, err
    result = json.loads(out)
    rows = result["files"]
    total_kbps = sum(r["bytes"] for r in rows) * 8 / sum(r["seconds"] for r in rows) / 1000
    assert result["mean"]["kbps"] == pytest.approx(total_kbps)
    assert result["mean"]["kbps"] != pytest.approx(np.mean([r["kbps"] for r in rows]), rel=0.01)
    assert result["mean"]["total_bytes"] == sum(r["bytes"] for r in rows)
    assert "total bytes" in result["mean"]["kbps_is"]

    code, out, err = run_cli(capsys, "roundtrip", root, "-b", "6", "--no-perceptual", "--model", model[1])
    assert code == 0, err
    lines = out.splitlines()
    names = [line.split()[0] for line in lines[2:] if line.split() and line.split()[0].endswith(".wav")]
    assert sorted(names) == ["a/x.wav", "b/x.wav", "c/tiny.wav"]
    mean_line = next(line for line in lines if line.startswith("mean (3 files)"))
    assert float(mean_line.split()[4]) == pytest.approx(total_kbps, abs=5e-4)
    assert any("total bytes" in line for line in lines[lines.index(mean_line) + 1:])


def test_info_lists_only_the_fields_of_the_models_architecture(capsys, tmp_path):
    from rvqcodec.commands.info import ARCHITECTURE_FIELDS, COMMON_FIELDS, quantizer_config_fields

    every = set(CodecConfig().to_dict())
    groups = [set(COMMON_FIELDS), set(quantizer_config_fields()), *map(set, ARCHITECTURE_FIELDS.values())]
    assert set().union(*groups) == every and sum(map(len, groups)) == len(every)  # each field in one group
    seanet_only = {"channels", "strides", "n_residual_units", "kernel_size", "residual_kernel_size", "compress"}
    convnext_only = {"frame_hop", "frame_dim", "encoder_blocks", "decoder_blocks", "stem_n_fft", "head_n_fft"}
    torch.manual_seed(0)
    seanet = Codec(CodecConfig.preset("tiny")).save(tmp_path / "seanet.pt")
    for model_args, present, absent in ((["--model", seanet], seanet_only, convnext_only),
                                        ([], convnext_only, seanet_only)):  # [] = the shipped ConvNeXt model
        code, out, _ = run_cli(capsys, "info", *model_args)
        assert code == 0
        config_line = next(line for line in out.splitlines() if line.startswith("config"))
        listed = {item.split("=")[0] for item in config_line.split(None, 1)[1].split(", ") if "=" in item}
        assert present | {"n_q", "codebook_size", "estimator", "sample_rate"} <= listed and not listed & absent
        code, out, _ = run_cli(capsys, "info", *model_args, "--json")
        config = json.loads(out)["config"]
        assert present <= set(config) and not set(config) & absent


def test_cli_processes_wait_passively_unless_told_otherwise():
    """Spinning OpenMP threads made the default thread count 2.5-3x slower than one thread on a busy machine
    (benchmarks/threads.py); the CLI sets a passive wait policy for its process before torch is imported, and
    leaves a policy the user set alone."""
    import os
    import subprocess
    import sys

    script = ("import os, sys, rvqcodec.cli as cli; cli.main(['info', '--json']); "
              "print(os.environ['OMP_WAIT_POLICY'], file=sys.stderr)")
    for preset, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if preset:
            env["OMP_WAIT_POLICY"] = preset
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        assert done.stderr.strip().splitlines()[-1] == expected
