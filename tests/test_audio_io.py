"""Reading (resample, downmix, errors), streaming blocks and atomic writing of audio files."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from rvqcodec.data import audio_io
from rvqcodec.data.audio_io import AudioReadError, iter_audio_blocks, read_audio, write_audio

SAMPLE_WAV = Path(__file__).resolve().parents[1] / "samples" / "1272-128104-0000_3s.wav"


def _stereo_sine_file(path: Path, sr: int = 44100, seconds: float = 1.0, freq: float = 440.0) -> None:
    t = np.arange(int(sr * seconds)) / sr
    left = 0.6 * np.sin(2 * math.pi * freq * t)
    right = 0.2 * np.sin(2 * math.pi * freq * t)
    soundfile.write(path, np.stack([left, right], axis=1).astype(np.float32), sr, subtype="FLOAT")


def test_read_stereo_44k_as_16k_mono(tmp_path):
    path = tmp_path / "stereo.wav"
    _stereo_sine_file(path)
    audio = read_audio(path, target_sr=16000, mono=True)
    assert audio.samples.dtype == torch.float32
    assert audio.samples.shape == (1, 16000)  # ceil(44100 * 16000 / 44100)
    assert (audio.sample_rate, audio.source_sample_rate, audio.source_channels) == (16000, 44100, 2)
    assert audio.was_resampled and audio.was_downmixed
    # The mean of the channels is 0.4 sin(2 pi 440 t); resampling must reproduce it at 16 kHz (away from edges).
    t = np.arange(16000) / 16000
    expected = 0.4 * np.sin(2 * math.pi * 440 * t)
    error = np.abs(audio.samples[0].numpy() - expected)[200:-200]
    assert error.max() < 2e-3


def test_read_keeps_channels_and_exact_pcm_values(tmp_path):
    path = tmp_path / "pcm.wav"
    rng = np.random.default_rng(1)
    ints = rng.integers(-32768, 32767, size=(1000, 2), dtype=np.int16)
    soundfile.write(path, ints, 8000, subtype="PCM_16")
    audio = read_audio(path, mono=False)
    assert audio.samples.shape == (2, 1000) and audio.sample_rate == 8000
    assert not audio.was_resampled and not audio.was_downmixed
    np.testing.assert_array_equal(audio.samples.numpy(), ints.T.astype(np.float32) / 32768.0)


@pytest.mark.parametrize("source_sr,target_sr,block_frames", [
    (44100, 16000, 4096), (48000, 16000, 1000), (22050, 16000, 777), (8000, 16000, 123), (11025, 16000, 50000),
])
def test_blocks_equal_whole_file_resampling(tmp_path, source_sr, target_sr, block_frames):
    path = tmp_path / "long.wav"
    rng = np.random.default_rng(source_sr)
    data = rng.uniform(-1, 1, size=(2 * source_sr + 37, 2)).astype(np.float32)  # full-scale worst case
    soundfile.write(path, data, source_sr, subtype="FLOAT")
    whole = read_audio(path, target_sr=target_sr).samples
    blocks = list(iter_audio_blocks(path, block_frames, target_sr=target_sr))
    joined = torch.cat(blocks, dim=1)
    assert joined.shape == whole.shape
    assert (joined - whole).abs().max() <= 1e-4  # documented tolerance (float32 rounding only)
    # Bounded memory: no block is much larger than one read block (plus resampler context) at the new rate.
    resampler = audio_io.StreamingResampler(source_sr, target_sr)
    bound = math.ceil((block_frames + resampler.context + resampler.o) * target_sr / source_sr)
    assert max(b.shape[1] for b in blocks) <= bound
    if block_frames < source_sr:
        assert len(blocks) > 2


def test_blocks_without_resampling_are_exact(tmp_path):
    path = tmp_path / "same.flac"
    rng = np.random.default_rng(3)
    soundfile.write(path, rng.integers(-20000, 20000, size=(10007, 3), dtype=np.int16), 16000)
    blocks = list(iter_audio_blocks(path, 1000, target_sr=16000, mono=True))
    assert [b.shape[1] for b in blocks] == [1000] * 10 + [7]
    torch.testing.assert_close(torch.cat(blocks, 1), read_audio(path, 16000).samples, rtol=0, atol=0)


def test_streaming_resampler_on_speech_matches_whole(tmp_path):
    speech = read_audio(SAMPLE_WAV).samples  # 16 kHz
    resampler = audio_io.StreamingResampler(16000, 44100)
    pieces = [resampler.push(block) for block in torch.split(speech, 999, dim=1)] + [resampler.flush()]
    whole = audio_io.resample(speech, 16000, 44100)
    joined = torch.cat(pieces, dim=1)
    assert joined.shape == whole.shape
    assert (joined - whole).abs().max() <= 1e-5


def _one_line_read_error(path) -> str:
    with pytest.raises(AudioReadError) as info:
        read_audio(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    with pytest.raises(AudioReadError):
        iter_audio_blocks(path, 1000)  # fails at the call, before iteration
    return message


def test_bad_inputs_raise_audio_read_error(tmp_path):
    assert "not found" in _one_line_read_error(tmp_path / "missing.wav")
    assert "folder" in _one_line_read_error(tmp_path)
    empty = tmp_path / "empty.wav"
    empty.touch()
    assert "empty" in _one_line_read_error(empty)
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio, just text renamed to .wav\n" * 20)
    assert "not an audio file" in _one_line_read_error(text)
    no_samples = tmp_path / "zero_frames.wav"
    soundfile.write(no_samples, np.zeros((0, 1), dtype=np.float32), 16000)
    assert "no samples" in _one_line_read_error(no_samples)
    assert isinstance(AudioReadError("x"), ValueError)


def test_unsupported_rate_pair_is_refused(tmp_path):
    path = tmp_path / "odd_rate.wav"
    soundfile.write(path, np.zeros((441, 1), dtype=np.float32), 44099)
    with pytest.raises(AudioReadError, match="common divisor"):
        read_audio(path, target_sr=16000)
    assert read_audio(path).sample_rate == 44099  # readable at its own rate


def test_write_round_trip_clips_and_leaves_no_temp_files(tmp_path):
    out = tmp_path / "out.wav"
    signal = torch.tensor([[0.0, 0.5, -0.25, 1.5, -2.0]])
    assert write_audio(out, signal, 16000) == out
    back, sr = soundfile.read(out, dtype="float32")
    assert sr == 16000 and soundfile.info(out).subtype == "PCM_16"
    np.testing.assert_allclose(back, [0.0, 0.5, -0.25, 32767 / 32768, -1.0], atol=1 / 32768)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]
    # 1-D input, float subtype, flac format from the extension.
    write_audio(tmp_path / "f.flac", np.linspace(-1, 1, 100), 8000, subtype="PCM_24")
    assert soundfile.info(tmp_path / "f.flac").format == "FLAC"


def test_write_refuses_overwrite_and_inputs(tmp_path):
    out = tmp_path / "out.wav"
    write_audio(out, torch.zeros(1, 100), 16000)
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        write_audio(out, torch.ones(1, 50) * 0.5, 16000)
    assert out.read_bytes() == before
    write_audio(out, torch.ones(1, 50) * 0.5, 16000, overwrite=True)
    assert soundfile.info(out).frames == 50

    source = tmp_path / "input.wav"
    write_audio(source, torch.zeros(1, 10), 16000)
    link = tmp_path / "alias.wav"
    os.symlink(source, link)
    for target in (source, link):
        with pytest.raises(ValueError, match="input"):
            write_audio(target, torch.zeros(1, 10), 16000, overwrite=True, protected=[source])
    with pytest.raises(FileNotFoundError, match="folder"):
        write_audio(tmp_path / "no_such_dir" / "x.wav", torch.zeros(1, 10), 16000)
    with pytest.raises(ValueError, match="extension"):
        write_audio(tmp_path / "x.xyz", torch.zeros(1, 10), 16000)
    with pytest.raises(ValueError, match="NaN"):
        write_audio(tmp_path / "nan.wav", torch.tensor([0.0, float("nan")]), 16000)
    assert not (tmp_path / "nan.wav").exists()


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    out = tmp_path / "out.wav"
    write_audio(out, torch.zeros(1, 100), 16000)
    before = out.read_bytes()

    def failing_write(file, *args, **kwargs):
        with open(file, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(audio_io.soundfile, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_audio(out, torch.ones(1, 100) * 0.1, 16000, overwrite=True)
    assert out.read_bytes() == before
    with pytest.raises(OSError, match="disk full"):
        write_audio(tmp_path / "new.wav", torch.ones(1, 100) * 0.1, 16000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]


# ------------------------------------------------------------------ what a file holds, said once (issue 28)


def test_float_file_beyond_full_scale_is_scaled_to_full_scale_with_a_warning(tmp_path):
    speech = read_audio(SAMPLE_WAV).samples[0].numpy()
    loud = (speech * (6.5 / np.abs(speech).max())).astype(np.float32)
    peak = float(np.abs(loud).max())
    path = tmp_path / "loud.wav"
    soundfile.write(path, loud, 16000, subtype="FLOAT")
    fitted = torch.cat(list(iter_audio_blocks(path, 5000, fit_full_scale=True)), dim=1)[0].numpy()
    np.testing.assert_array_equal(fitted, loud / peak)  # scaled as a whole: the waveform is kept, not clipped
    np.testing.assert_array_equal(read_audio(path, fit_full_scale=True).samples[0].numpy(), fitted)
    resampled = torch.cat(list(iter_audio_blocks(path, 5000, target_sr=8000, fit_full_scale=True)), dim=1)
    np.testing.assert_allclose(resampled.numpy(), read_audio(path, target_sr=8000, fit_full_scale=True).samples,
                               atol=1e-4)
    # as stored, unless asked
    np.testing.assert_array_equal(torch.cat(list(iter_audio_blocks(path, 5000)), dim=1)[0].numpy(), loud)
    (warning,) = audio_io.input_warnings(path)
    assert warning == ("float samples reach 6.50, beyond full scale (1.0): the whole file is scaled by 1/6.50 "
                       "(-16.3 dB) to peak at full scale")
    # nothing to say about a float file within full scale, or about integer PCM (which cannot exceed it)
    soundfile.write(tmp_path / "ok.wav", speech, 16000, subtype="FLOAT")
    soundfile.write(tmp_path / "pcm.wav", speech, 16000, subtype="PCM_16")
    for name in ("ok.wav", "pcm.wav"):
        assert audio_io.input_warnings(tmp_path / name) == []
        np.testing.assert_array_equal(read_audio(tmp_path / name, fit_full_scale=True).samples,
                                      read_audio(tmp_path / name).samples)


def test_non_finite_float_samples_are_left_for_the_nan_check(tmp_path):
    samples = np.full(1000, 0.5, dtype=np.float32)
    samples[10] = np.inf
    soundfile.write(tmp_path / "inf.wav", samples, 16000, subtype="FLOAT")
    assert audio_io.input_warnings(tmp_path / "inf.wav") == []
    block = next(iter_audio_blocks(tmp_path / "inf.wav", 5000, fit_full_scale=True))
    assert block[0, 0] == 0.5 and torch.isinf(block[0, 10])  # not scaled to zero by 1/inf


@pytest.mark.parametrize("subtype, bytes_per_sample", [("PCM_16", 2), ("FLOAT", 4)])
def test_truncated_wav_is_read_as_far_as_it_goes_with_a_warning(tmp_path, subtype, bytes_per_sample):
    speech = read_audio(SAMPLE_WAV).samples[0].numpy()  # 3 s
    full = tmp_path / "full.wav"
    soundfile.write(full, speech, 16000, subtype=subtype)
    cut = tmp_path / "cut.wav"
    header = full.stat().st_size - speech.size * bytes_per_sample
    cut.write_bytes(full.read_bytes()[:header + 16000 * bytes_per_sample])  # 1 s of the 3 s its header declares
    blocks = torch.cat(list(iter_audio_blocks(cut, 4000)), dim=1)[0].numpy()
    np.testing.assert_array_equal(blocks, read_audio(full).samples[0, :16000].numpy())
    (warning,) = audio_io.input_warnings(cut)
    assert warning == ("truncated file: its header declares 3.00 s but the file ends after 1.00 s (16000 samples); "
                       "read what it holds")
    assert audio_io.input_warnings(full) == []
    # a streamed WAV whose header leaves the length open (0xFFFFFFFF, as written to a pipe) is not truncated
    data = bytearray(full.read_bytes())
    at = data.index(b"data")
    data[at + 4:at + 8] = b"\xff\xff\xff\xff"
    data[4:8] = b"\xff\xff\xff\xff"
    (tmp_path / "streamed.wav").write_bytes(bytes(data))
    assert audio_io.input_warnings(tmp_path / "streamed.wav") == []
