"""Behaviour of the GAN discriminators: output structure, gradients, batch independence, configuration."""
from __future__ import annotations

import json

import pytest
import torch

from rvqcodec.model.discriminators import (
    DiscriminatorConfig,
    Discriminators,
    MultiPeriodDiscriminator,
    MultiScaleSTFTDiscriminator,
)


def small_discriminators(**overrides) -> Discriminators:
    return Discriminators(DiscriminatorConfig.preset("tiny", **overrides))


@pytest.mark.parametrize("length", [4000, 4001, 7919])
def test_output_structure(length):
    disc = small_discriminators()
    outputs = disc(torch.randn(3, 1, length))
    assert disc.names == ["stft2048", "stft1024", "stft512", "period2", "period3", "period5", "period7", "period11"]
    assert len(outputs) == len(disc.names)
    for name, (logits, features) in zip(disc.names, outputs):
        assert logits.ndim == 4 and logits.shape[:2] == (3, 1), name
        assert len(features) == 5, name
        for f in features:
            assert f.ndim == 4 and f.shape[0] == 3 and torch.isfinite(f).all()
        if name.startswith("period"):
            period = int(name[len("period"):])
            assert logits.shape[-1] == period  # one column per phase of the period
        else:
            n_fft = int(name[len("stft"):])
            assert logits.shape[2] == length // (n_fft // 4) + 1  # STFT frames (centred)
            assert features[0].shape[-1] == n_fft // 2 + 1  # all frequency bins before striding


def test_gradient_reaches_input():
    disc = small_discriminators()
    wav = torch.randn(2, 1, 4000, requires_grad=True)
    loss = sum(logits.mean() + sum(f.pow(2).mean() for f in feats) for logits, feats in disc(wav))
    loss.backward()
    assert wav.grad is not None and torch.isfinite(wav.grad).all()
    assert (wav.grad[0].abs() > 0).float().mean() > 0.9  # essentially every sample influences the scores


def test_items_in_a_batch_are_independent():
    disc = small_discriminators().eval()
    a, b = torch.randn(1, 1, 4000), torch.randn(1, 1, 4000)
    alone = disc(a)
    together = disc(torch.cat([a, b]))
    for (la, fa), (lt, ft) in zip(alone, together):
        assert torch.allclose(la[0], lt[0], atol=1e-5)
        assert torch.allclose(fa[-1][0], ft[-1][0], atol=1e-5)


def test_kinds_select_discriminators():
    only_period = small_discriminators(kinds=("period",), periods=(2, 3))
    assert only_period.names == ["period2", "period3"]
    assert len(only_period(torch.randn(1, 1, 999))) == 2
    only_stft = small_discriminators(kinds=["stft"], stft_n_ffts=[256])
    assert only_stft.names == ["stft256"] and len(only_stft(torch.randn(1, 1, 999))) == 1


def test_sizes_are_configurable():
    tiny = sum(p.numel() for p in small_discriminators().parameters())
    base = sum(p.numel() for p in Discriminators(DiscriminatorConfig.preset("base")).parameters())
    assert tiny < base / 50
    mpd = MultiPeriodDiscriminator(periods=(2,), channels=2, max_channels=8)
    widths = [conv.out_channels for conv in mpd.discriminators[0].convs]
    assert widths == [2, 8, 8, 8, 8]
    msd = MultiScaleSTFTDiscriminator(n_ffts=(128,), channels=3)
    assert all(f.shape[1] == 3 for f in msd(torch.randn(1, 1, 500))[0][1])


def test_config_round_trip_and_errors():
    config = DiscriminatorConfig.preset("tiny", periods=(2, 3))
    assert DiscriminatorConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="bogus"):
        DiscriminatorConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="kinds"):
        DiscriminatorConfig(kinds=("mel",))
    with pytest.raises(ValueError, match="kinds"):
        DiscriminatorConfig(kinds=())
    with pytest.raises(ValueError, match="preset"):
        DiscriminatorConfig.preset("large")


def test_rejects_non_mono_audio():
    with pytest.raises(ValueError, match=r"\(B, 1, T\)"):
        small_discriminators()(torch.randn(2, 4000))


def test_magnitude_discriminator_sees_only_the_magnitude():
    from rvqcodec.model.discriminators import MultiResolutionMagnitudeDiscriminator

    disc = small_discriminators(kinds=("magnitude",), magnitude_n_ffts=(256, 128))
    assert disc.names == ["magnitude256", "magnitude128"]
    x = torch.randn(2, 1, 3000)
    for n_fft, (logits, features), (flipped, _) in zip((256, 128), disc(x), disc(-x)):
        assert logits.shape[:3] == (2, 1, 3000 // (n_fft // 4) + 1) and len(features) == 5
        assert features[0].shape[-1] == n_fft // 2 + 1
        assert torch.allclose(logits, flipped, atol=1e-5)  # |STFT(-x)| = |STFT(x)|: polarity is invisible
    complex_disc = small_discriminators(kinds=("stft",), stft_n_ffts=(256,))
    assert not torch.allclose(complex_disc(x)[0][0], complex_disc(-x)[0][0], atol=1e-3)  # the complex one sees it
    assert isinstance(disc.blocks["magnitude"], MultiResolutionMagnitudeDiscriminator)
    with pytest.raises(ValueError, match="magnitude_n_ffts"):
        DiscriminatorConfig(kinds=("magnitude",), magnitude_n_ffts=(8,))
