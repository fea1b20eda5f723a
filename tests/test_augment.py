"""Training-time corruptions (rvqcodec.data.augment) on real speech and real noise: each does exactly what it
says (SNR, level, band, room), the noise split keeps recordings apart, and the augmenter is reproducible."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from rvqcodec.data import augment
from rvqcodec.data.audio_io import read_audio
from rvqcodec.training.config import load_config

SAMPLE_WAV = Path(__file__).resolve().parents[1] / "samples" / "1272-128104-0000_3s.wav"
SR = 16000


@pytest.fixture(scope="module")
def speech() -> torch.Tensor:
    return read_audio(SAMPLE_WAV).samples[0]


@pytest.fixture(scope="module")
def noise_dir(speech_root) -> Path:
    folder = speech_root.parent / "noise"
    if not (folder / "MANIFEST.tsv").is_file():
        pytest.fail(f"real noise not found at {folder}")
    return folder


def snr_db(speech: torch.Tensor, noisy: torch.Tensor) -> float:
    noise = noisy - speech
    return float(10 * torch.log10(speech.pow(2).mean() / noise.pow(2).mean()))


def test_mix_at_snr_hits_the_snr_with_real_noise(speech, noise_dir):
    train, _ = augment.split_noise_files(noise_dir, 0.2)
    noise = read_audio(train[0], target_sr=SR).samples[0][:speech.numel()]
    for target in (0.0, 7.5, 30.0):
        assert snr_db(speech, augment.mix_at_snr(speech, noise, target)) == pytest.approx(target, abs=1e-3)
    assert torch.equal(augment.mix_at_snr(speech, torch.zeros_like(speech), 5.0), speech)  # silent noise: unchanged


def test_set_level_sets_the_rms_and_never_clips(speech):
    for dbfs in (-60.0, -30.0):
        y = augment.set_level(speech, dbfs)
        assert float(20 * torch.log10(y.pow(2).mean().sqrt())) == pytest.approx(dbfs, abs=1e-3)
        assert torch.allclose(y / y.norm(), speech / speech.norm(), atol=1e-6)  # a pure gain
    loud = augment.set_level(speech, -3.0)  # would clip: scaled down to a 0.99 peak instead
    assert float(loud.abs().max()) == pytest.approx(0.99, abs=1e-6)


def test_lowpass_removes_the_band_above_the_cutoff_only(speech):
    y = augment.lowpass(speech, 3400.0, SR)
    spec_x, spec_y = torch.fft.rfft(speech), torch.fft.rfft(y)
    freqs = torch.fft.rfftfreq(speech.numel(), 1 / SR)
    above, below = freqs > 3400, freqs <= 3400
    assert float(spec_y[above].abs().max()) < 1e-4 * float(spec_x[above].abs().max())
    assert torch.allclose(spec_y[below], spec_x[below], atol=1e-3)


def test_change_speed_moves_pitch_and_tempo_together_and_keeps_the_length(speech):
    tone = torch.sin(2 * torch.pi * 200.0 * torch.arange(SR) / SR)
    for factor, peak_hz in ((1.1, 220.0), (0.9, 180.0)):
        y = augment.change_speed(tone, factor)
        assert y.shape == tone.shape
        spectrum = torch.fft.rfft(y[:SR // 2] * torch.hann_window(SR // 2)).abs()  # 2 Hz bins
        assert float(spectrum.argmax()) * 2.0 == pytest.approx(peak_hz, abs=2.0)
    faster = augment.change_speed(speech, 1.15)  # 3 s of speech in 2.61 s, then silence
    assert faster.shape == speech.shape
    assert float(faster[-int(0.35 * SR):].abs().max()) == 0.0 and float(faster[:int(2.5 * SR)].abs().max()) > 0.1
    slower = augment.change_speed(speech, 0.85)  # the first 2.55 s of the speech, stretched to 3 s
    assert slower.shape == speech.shape and float(slower[-int(0.1 * SR):].abs().max()) > 0


def test_reverberate_is_a_causal_convolution_that_keeps_the_timing(speech):
    rir = torch.zeros(2000)
    rir[0], rir[700], rir[1999] = 1.0, 0.5, -0.25
    y = augment.reverberate(speech, rir)
    expected = np.convolve(speech.numpy(), rir.numpy())[:speech.numel()]
    assert y.shape == speech.shape and np.allclose(y.numpy(), expected, atol=1e-5)
    assert torch.allclose(augment.reverberate(speech, torch.tensor([1.0])), speech, atol=1e-6)


def test_simulated_rooms_start_at_the_direct_path_and_decay():
    rooms = augment.simulate_rooms(3, (0.3, 0.6), SR, seed=5)
    again = augment.simulate_rooms(3, (0.3, 0.6), SR, seed=5)
    for rir, same in zip(rooms, again):
        assert torch.equal(rir, same)  # the bank is a function of the seed
        assert float(rir[0]) == pytest.approx(1.0) and float(rir.abs().max()) <= 1.0 + 1e-6
        tenth = rir.numel() // 10
        assert rir[:tenth].pow(2).sum() > 20 * rir[-tenth:].pow(2).sum()  # energy decays
        assert rir.numel() > 0.1 * SR  # a room, not a single echo
    assert not torch.equal(rooms[0][:100], augment.simulate_rooms(1, (0.3, 0.6), SR, seed=6)[0][:100])


def test_colored_noise_has_the_asked_spectral_slope():
    torch.manual_seed(0)
    for beta in (-1.0, 0.0, 1.0, 2.0):
        x = augment.colored_noise(1 << 16, beta)
        assert x.shape == (1 << 16,)
        power = torch.fft.rfft(x).abs().pow(2)
        freqs = torch.arange(power.numel(), dtype=torch.float64)
        band = (freqs > 100) & (freqs < 20000)
        slope = np.polyfit(np.log(freqs[band].numpy()), np.log(power[band].double().numpy()), 1)[0]
        assert slope == pytest.approx(-beta, abs=0.1), beta


def test_noise_split_is_stable_and_keeps_each_recording_on_one_side(noise_dir):
    train, heldout = augment.split_noise_files(noise_dir, 0.2)
    assert (train, heldout) == augment.split_noise_files(noise_dir, 0.2)
    assert not set(train) & set(heldout) and len(heldout) > 0
    with open(noise_dir / "MANIFEST.tsv", newline="") as handle:
        source = {noise_dir / row["file"]: row["source_path"] for row in csv.DictReader(handle, delimiter="\t")}
    assert len(train) + len(heldout) == len(source)
    assert not {source[p] for p in train} & {source[p] for p in heldout}
    share = sum(float(read_audio(p).samples.shape[-1]) for p in heldout) / sum(
        float(read_audio(p).samples.shape[-1]) for p in train + heldout)
    assert 0.05 < share < 0.4
    assert augment.split_noise_files(noise_dir, 0.0)[1] == []


def test_augmenter_corrupts_the_asked_fraction_reproducibly(speech_root, noise_dir):
    clips = torch.stack([read_audio(SAMPLE_WAV).samples[:, i * 8000:(i + 1) * 8000] for i in range(4)] * 4)
    off = augment.Augmenter(augment.AugmentConfig(prob=0.0), SR)
    assert torch.equal(off(clips), clips)
    config = augment.AugmentConfig(prob=1.0, noise_dirs=[str(noise_dir)], n_rooms=4, level=1.0,
                                   level_dbfs=(-50.0, -40.0))
    augmenter = augment.Augmenter(config, SR)
    torch.manual_seed(3)
    first = augmenter(clips)
    torch.manual_seed(3)
    assert torch.equal(augmenter(clips), first)  # torch's generator decides every draw
    assert first.shape == clips.shape and not torch.equal(first, clips)
    rms_dbfs = 20 * torch.log10(first.pow(2).mean(-1).sqrt())
    assert bool(((rms_dbfs > -50.01) & (rms_dbfs < -39.99)).all())  # every example at the drawn level
    assert float(first.abs().max()) <= 0.99 + 1e-6
    with pytest.raises(ValueError, match=r"\(B, 1, T\)"):
        augmenter(clips[:, 0])


def test_recipe_section_is_checked_with_one_line_errors(noise_dir):
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "librispeech" / "convnext-gan.yaml"
    cfg = load_config(recipe, ["augment.prob=0.5", f"augment.noise_dirs=[{noise_dir}]", "augment.snr_db=[5,20]"])
    assert cfg.augment.snr_db == (5.0, 20.0) and cfg.augment.noise_dirs == [str(noise_dir)]
    for override, message in (("augment.prob=1.5", "augment.prob"), ("augment.snr_db=[20,5]", "augment.snr_db"),
                              ("augment.noise=0.8", "one noise at most"),
                              ("augment.speed_factor=[0,1.1]", "augment.speed_factor")):
        with pytest.raises(ValueError, match=message):
            load_config(recipe, ["augment.prob=0.5", f"augment.noise_dirs=[{noise_dir}]", override])
    with pytest.raises(ValueError, match="noise_dirs"):
        load_config(recipe, ["augment.prob=0.5"])
