"""LibriSpeech / audio-folder datasets over the real speech: layout, crops, determinism, gain, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile
import torch

from rvqcodec.data.datasets import AudioFolderDataset, LibriSpeechDataset


@pytest.fixture(scope="module")
def train_set(speech_root):
    return LibriSpeechDataset(speech_root, subsets=("train-clean-100",), segment_seconds=1.0, seed=0,
                              cache_audio=True)


def test_librispeech_layout_and_item_shapes(train_set, speech_root):
    expected = sorted((speech_root / "LibriSpeech" / "train-clean-100").glob("*/*/*.flac"))
    assert len(expected) == 150
    assert train_set.files == expected
    assert len(train_set) == 150
    for index in (0, 75, 149, -1):
        item = train_set[index]
        assert item.dtype == torch.float32 and item.shape == (1, 16000)
        assert torch.isfinite(item).all() and item.abs().max() <= 10 ** (-1 / 20) + 1e-6
    with pytest.raises(IndexError):
        train_set[150]


def test_crops_are_deterministic_and_change_with_epoch(train_set, speech_root):
    fresh = LibriSpeechDataset(speech_root, segment_seconds=1.0, seed=0)  # no cache: partial decoding path
    indices = range(0, 150, 10)
    for i in indices:
        torch.testing.assert_close(fresh[i], train_set[i], rtol=0, atol=0)
    offsets_epoch0 = [train_set.crop_offset(i) for i in range(150)]
    train_set.set_epoch(1)
    offsets_epoch1 = [train_set.crop_offset(i) for i in range(150)]
    changed = sum(a != b for a, b in zip(offsets_epoch0, offsets_epoch1))
    assert changed >= 140
    # A resumed run (new object, set_epoch) sees the same crops as the original run in that epoch.
    fresh.set_epoch(1)
    for i in indices:
        torch.testing.assert_close(fresh[i], train_set[i], rtol=0, atol=0)
    other_seed = LibriSpeechDataset(speech_root, segment_seconds=1.0, seed=1)
    assert sum(other_seed.crop_offset(i) != offsets_epoch0[i] for i in range(150)) >= 140
    train_set.set_epoch(0)


def test_crop_is_the_file_slice(speech_root):
    data = LibriSpeechDataset(speech_root, segment_seconds=0.5, gain_normalize=False, seed=3, crops_per_file=2)
    assert len(data) == 300
    for index in (0, 1, 101, 299):
        offset = data.crop_offset(index)
        raw, sr = soundfile.read(data.files[index // 2], dtype="float32")
        expected = torch.from_numpy(raw[offset:offset + 8000])[None]
        torch.testing.assert_close(data[index], expected, rtol=0, atol=0)
    # Non-random crops: crop k of a file starts at k * segment.
    fixed = LibriSpeechDataset(speech_root, segment_seconds=0.5, random_crop=False, crops_per_file=2)
    assert [fixed.crop_offset(i) for i in range(4)] == [0, 8000, 0, 8000]


def test_gain_normalisation_targets(speech_root):
    data = LibriSpeechDataset(speech_root, subsets=("dev-clean",), segment_seconds=None)
    raw = LibriSpeechDataset(speech_root, subsets=("dev-clean",), segment_seconds=None, gain_normalize=False)
    target_rms, peak_limit = 10 ** (-23 / 20), 10 ** (-1 / 20)
    for index in range(0, len(data), 4):
        x, x_raw = data[index], raw[index]
        rms, peak = float(x.pow(2).mean().sqrt()), float(x.abs().max())
        assert rms <= target_rms * 1.0001 and peak <= peak_limit * 1.0001
        assert math.isclose(rms, target_rms, rel_tol=1e-3) or math.isclose(peak, peak_limit, rel_tol=1e-3)
        gain = float((x * x_raw).sum() / (x_raw * x_raw).sum())  # a pure scaling of the file
        torch.testing.assert_close(x, x_raw * gain, rtol=0, atol=1e-6)


def test_whole_files_padding_resampling_and_subsets(speech_root):
    both = LibriSpeechDataset(speech_root / "LibriSpeech", subsets=("train-clean-100", "dev-clean"),
                              segment_seconds=None, gain_normalize=False)
    assert len(both) == 173
    assert any("dev-clean" in str(f) for f in both.files) and any("train-clean-100" in str(f) for f in both.files)
    item = both[5]
    assert item.shape == (1, soundfile.info(both.files[5]).frames)
    # A segment longer than every file: the file at offset 0, then zeros.
    long = LibriSpeechDataset(speech_root, subsets=("dev-clean",), segment_seconds=20.0, gain_normalize=False)
    crop = long[0]
    n = long.num_samples(0)
    assert crop.shape == (1, 320000) and n < 320000
    assert torch.all(crop[:, n:] == 0) and crop[:, :n].abs().sum() > 0
    # Resampled to 8 kHz.
    low = LibriSpeechDataset(speech_root, subsets=("dev-clean",), segment_seconds=1.0, sample_rate=8000)
    assert low[0].shape == (1, 8000)
    assert low.num_samples(0) == math.ceil(long.num_samples(0) / 2)
    assert torch.utils.data.default_collate([low[0], low[1]]).shape == (2, 1, 8000)


def test_librispeech_errors(tmp_path, speech_root):
    with pytest.raises(FileNotFoundError, match="root not found"):
        LibriSpeechDataset(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no LibriSpeech folder"):
        LibriSpeechDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="available: dev-clean, train-clean-100") as info:
        LibriSpeechDataset(speech_root, subsets=("train-clean-100", "train-other-500"))
    assert "train-other-500" in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "LibriSpeech" / "train-clean-100" / "19" / "198").mkdir(parents=True)
    with pytest.raises(ValueError, match="no .flac files"):
        LibriSpeechDataset(tmp_path)
    with pytest.raises(ValueError, match="segment_seconds"):
        LibriSpeechDataset(speech_root, segment_seconds=0)


def test_audio_folder_dataset(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    soundfile.write(tmp_path / "b" / "deep" / "z.flac", rng.uniform(-0.5, 0.5, (24000, 1)), 16000)
    soundfile.write(tmp_path / "a.WAV", rng.uniform(-0.5, 0.5, (44100, 2)), 44100)
    soundfile.write(tmp_path / "c.ogg", rng.uniform(-0.5, 0.5, (8000, 1)).astype(np.float32), 16000)
    soundfile.write(tmp_path / ".hidden" / "skip.wav", np.zeros((100, 1)), 16000)
    (tmp_path / "notes.txt").write_text("not audio")
    data = AudioFolderDataset(tmp_path, segment_seconds=0.75, seed=0)
    assert [f.relative_to(tmp_path).as_posix() for f in data.files] == ["a.WAV", "b/deep/z.flac", "c.ogg"]
    assert [data.num_samples(i) for i in range(3)] == [16000, 24000, 8000]
    items = [data[i] for i in range(3)]
    assert all(x.shape == (1, 12000) and x.dtype == torch.float32 for x in items)
    assert torch.all(items[2][:, 8000:] == 0)  # short file padded
    whole = AudioFolderDataset(tmp_path, segment_seconds=None, gain_normalize=False)
    assert [whole[i].shape[1] for i in range(3)] == [16000, 24000, 8000]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no audio files"):
        AudioFolderDataset(empty)
    with pytest.raises(FileNotFoundError, match="not found"):
        AudioFolderDataset(tmp_path / "missing")
