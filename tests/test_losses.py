"""Maths of the reconstruction and adversarial losses."""
from __future__ import annotations

import math

import pytest
import torch

from rvqcodec.losses import (
    MultiResolutionSTFTLoss,
    MultiScaleMelLoss,
    ReconstructionLoss,
    ReconstructionLossConfig,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    l1_loss,
)


def loud_noise(batch: int = 2, length: int = 8000) -> torch.Tensor:
    return 0.5 * torch.randn(batch, 1, length)


def outputs(*logit_lists, features=None):
    """Fake discriminator outputs: one (logits, features) entry per list of logits."""
    return [(torch.tensor(v, dtype=torch.float32).view(1, 1, 1, -1), features or [torch.ones(1, 1, 1, 1)])
            for v in logit_lists]


# ---------------------------------------------------------------------------------------------- reconstruction
@pytest.mark.parametrize("loss", [l1_loss, MultiResolutionSTFTLoss(), MultiScaleMelLoss()],
                         ids=["l1", "mrstft", "mel"])
def test_zero_for_identical_signals_positive_and_differentiable_otherwise(loss):
    target = loud_noise()
    assert float(loss(target.clone(), target)) == pytest.approx(0.0, abs=1e-6)
    estimate = (target + 0.1 * torch.randn_like(target)).requires_grad_()
    value = loss(estimate, target)
    assert value.ndim == 0 and float(value.detach()) > 1e-3
    value.backward()
    assert torch.isfinite(estimate.grad).all() and estimate.grad.abs().sum() > 0


def test_mrstft_of_a_doubled_signal():
    # |2Y| vs |Y|: spectral convergence ||Y - 2Y|| / ||Y|| = 1 and log-magnitude L1 = ln 2, at every resolution.
    target = loud_noise()
    assert float(MultiResolutionSTFTLoss()(2 * target, target)) == pytest.approx(1 + math.log(2), rel=1e-3)


def test_mrstft_equals_auralosss_own_class_in_value_and_gradient():
    # Ours skips the phase auraloss computes and never uses; everything else must be auraloss's, bit for bit.
    import auraloss

    target = loud_noise(3, 6000)
    sizes = (1024, 256, 64)
    reference = auraloss.freq.MultiResolutionSTFTLoss(fft_sizes=sizes, hop_sizes=[n // 4 for n in sizes],
                                                      win_lengths=sizes)
    grads, values = [], []
    for loss in (reference, MultiResolutionSTFTLoss(sizes)):
        estimate = (target + 0.1 * torch.randn(target.shape, generator=torch.Generator().manual_seed(0)))
        estimate.requires_grad_()
        value = loss(estimate, target)
        value.backward()
        values.append(value.detach())
        grads.append(estimate.grad)
    assert torch.equal(values[0], values[1]) and torch.equal(grads[0], grads[1])


def test_mel_loss_of_a_doubled_signal():
    # Mel magnitudes are linear in the signal, so log10 mel differs by log10(2) wherever above the floor.
    target = loud_noise()
    loss = MultiScaleMelLoss(window_lengths=(256, 1024), n_mels=(20, 40))
    assert float(loss(2 * target, target)) == pytest.approx(math.log10(2), rel=1e-3)


def test_spectral_losses_run_in_float32_under_bf16():
    target = loud_noise(1, 4000)
    ref = float(MultiScaleMelLoss()(target + 0.1, target))
    low = MultiScaleMelLoss()((target + 0.1).bfloat16(), target.bfloat16())
    assert low.dtype == torch.float32 and float(low) == pytest.approx(ref, rel=0.05)
    assert MultiResolutionSTFTLoss()(target.bfloat16(), target.bfloat16()).dtype == torch.float32


def test_shape_and_length_errors():
    with pytest.raises(ValueError, match="shapes differ"):
        l1_loss(torch.zeros(1, 1, 10), torch.zeros(1, 1, 11))
    with pytest.raises(ValueError, match="more than 1024 samples"):
        MultiResolutionSTFTLoss()(torch.zeros(1, 1, 1000), torch.zeros(1, 1, 1000))


def test_reconstruction_loss_terms_and_weights():
    target = loud_noise()
    estimate = target + 0.05 * torch.randn_like(target)
    config = ReconstructionLossConfig(l1_weight=2.0, mrstft_weight=0.5, mel_weight=3.0)
    terms = ReconstructionLoss(config)(estimate, target)
    assert set(terms) == {"l1", "mrstft", "mel", "total"}
    expected = 2.0 * terms["l1"] + 0.5 * terms["mrstft"] + 3.0 * terms["mel"]
    assert float(terms["total"]) == pytest.approx(float(expected), rel=1e-6)
    assert float(terms["l1"]) == pytest.approx(float((estimate - target).abs().mean()), rel=1e-6)
    identical = ReconstructionLoss(config)(target, target)
    assert float(identical["total"]) == pytest.approx(0.0, abs=1e-5)
    # A zero weight skips the term.
    only_mel = ReconstructionLoss(ReconstructionLossConfig(l1_weight=0, mrstft_weight=0))(estimate, target)
    assert set(only_mel) == {"mel", "total"}
    assert float(only_mel["total"]) == pytest.approx(15.0 * float(only_mel["mel"]), rel=1e-6)


def test_reconstruction_config_errors():
    with pytest.raises(ValueError, match="mel_weight"):
        ReconstructionLossConfig(mel_weight=-1)
    with pytest.raises(ValueError, match="at least one"):
        ReconstructionLossConfig(l1_weight=0, mrstft_weight=0, mel_weight=0)
    with pytest.raises(ValueError, match="typo_weight"):
        ReconstructionLossConfig.from_dict({"typo_weight": 1.0})
    config = ReconstructionLossConfig(mel_weight=5.0, stft_fft_sizes=[512, 256])
    assert ReconstructionLossConfig.from_dict(config.to_dict()) == config


# ---------------------------------------------------------------------------------------------- adversarial
def test_hinge_and_lsgan_values():
    real = outputs([2.0, 0.5])
    fake = outputs([-2.0, 0.5])
    # hinge D: mean(relu(1 - [2, .5])) + mean(relu(1 + [-2, .5])) = 0.25 + 0.75
    assert float(discriminator_loss(real, fake, "hinge")) == pytest.approx(1.0)
    # lsgan D: mean((1 - [2, .5])²) + mean([-2, .5]²) = 0.625 + 2.125
    assert float(discriminator_loss(real, fake, "lsgan")) == pytest.approx(2.75)
    # hinge G: mean(relu(1 - [-2, .5])) = (3 + .5) / 2; lsgan G: mean((1 - [-2, .5])²) = (9 + .25) / 2
    assert float(generator_adversarial_loss(fake, "hinge")) == pytest.approx(1.75)
    assert float(generator_adversarial_loss(fake, "lsgan")) == pytest.approx(4.625)


def test_adversarial_losses_average_over_discriminators():
    real = outputs([2.0, 0.5], [1.0])
    fake = outputs([-2.0, 0.5], [1.0])
    # second discriminator: hinge D = relu(0) + relu(2) = 2; G = relu(0) = 0
    assert float(discriminator_loss(real, fake, "hinge")) == pytest.approx((1.0 + 2.0) / 2)
    assert float(generator_adversarial_loss(fake, "hinge")) == pytest.approx((1.75 + 0.0) / 2)


def test_perfect_discriminator_has_zero_hinge_loss_and_gradients_flow():
    real = outputs([1.0, 3.0])
    fake_logits = torch.tensor([-1.5, -4.0]).view(1, 1, 1, -1).requires_grad_()
    assert float(discriminator_loss(real, [(fake_logits, [])], "hinge").detach()) == 0.0
    loss = generator_adversarial_loss([(fake_logits, [])], "lsgan")
    loss.backward()
    # d/dx mean((1 - x)²) = -(1 - x) over 2 elements
    assert torch.allclose(fake_logits.grad.flatten(), torch.tensor([-2.5, -5.0]))


def test_adversarial_errors():
    with pytest.raises(ValueError, match="kind"):
        discriminator_loss(outputs([1.0]), outputs([1.0]), kind="wgan")
    with pytest.raises(ValueError, match="kind"):
        generator_adversarial_loss(outputs([1.0]), kind="bce")
    with pytest.raises(ValueError, match="different discriminators"):
        discriminator_loss(outputs([1.0], [1.0]), outputs([1.0]))
    with pytest.raises(ValueError, match="empty"):
        generator_adversarial_loss([])


def test_feature_matching_is_relative_l1():
    real_feats = [torch.tensor([1.0, -1.0, 2.0, -2.0]), torch.tensor([10.0, 10.0])]
    fake_feats = [torch.zeros(4, requires_grad=True), torch.tensor([10.0, 12.0], requires_grad=True)]
    real = [(torch.zeros(1), real_feats)]
    fake = [(torch.zeros(1), fake_feats)]
    # layer 1: mean|f - 0| / mean|f| = 1; layer 2: mean([0, 2]) / 10 = 0.1; averaged over layers
    loss = feature_matching_loss(real, fake)
    assert float(loss.detach()) == pytest.approx((1.0 + 0.1) / 2, rel=1e-6)
    loss.backward()
    assert fake_feats[0].grad.abs().sum() > 0
    assert float(feature_matching_loss(real, real)) == 0.0
    # Scale-free: multiplying every feature by 100 leaves it unchanged.
    scaled_real = [(torch.zeros(1), [100 * f for f in real_feats])]
    scaled_fake = [(torch.zeros(1), [100 * f.detach() for f in fake_feats])]
    assert float(feature_matching_loss(scaled_real, scaled_fake)) == pytest.approx(float(loss.detach()), rel=1e-6)


def test_feature_matching_does_not_train_through_real_features():
    real_feat = torch.ones(3, requires_grad=True)
    fake_feat = torch.zeros(3, requires_grad=True)
    feature_matching_loss([(torch.zeros(1), [real_feat])], [(torch.zeros(1), [fake_feat])]).backward()
    assert real_feat.grad is None and fake_feat.grad is not None
