"""Behaviour of VectorQuantizer / ResidualVQ: wiring Jacobians, codebook learning, dropout, statistics."""
from __future__ import annotations

import collections
import copy
import math
import random

import pytest
import torch

from rvqcodec.quantize import CodebookStats, ResidualVQ, VectorQuantizer, kmeans
from rvqcodec.quantize.kmeans import nearest_code

from helpers import grit_reference, plane_rotation


def clustered_latents(b=4, d=16, t=200, n_clusters=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_clusters, d, generator=g) * 3
    idx = torch.randint(0, n_clusters, (b * t,), generator=g)
    x = centres[idx] + 0.3 * torch.randn(b * t, d, generator=g)
    return x.reshape(b, t, d).permute(0, 2, 1).contiguous()


def toy_rvq(estimator, residual_grad, d=6, n_q=4, k=5, seed=0):
    torch.manual_seed(seed)
    rvq = ResidualVQ(d, n_q, k, estimator=estimator, residual_grad=residual_grad, kmeans_init=False).double()
    for i, layer in enumerate(rvq.layers):
        layer.codebook.embed.copy_(torch.randn(k, d, dtype=torch.float64) * (0.8**i))
    return rvq.eval()


@pytest.mark.parametrize("estimator", ["rotation", "ste"])
@pytest.mark.parametrize("residual_grad", ["live", "detached"])
def test_wiring_jacobian_matches_formula_fp64(estimator, residual_grad):
    d, n_q = 6, 4
    rvq = toy_rvq(estimator, residual_grad, d=d, n_q=n_q)
    x = torch.randn(d, dtype=torch.float64)

    def f(v):
        return rvq(v.view(1, d, 1)).quantized.view(d)

    J = torch.autograd.functional.jacobian(f, x)
    # per-stage G_k = λ_k R(r_k → q_k), from the residuals of an explicit forward
    eye = torch.eye(d, dtype=torch.float64)
    residual = x.clone()
    gs = []
    for layer in rvq.layers:
        code = nearest_code(residual.view(1, d), layer.codebook.embed)[0]
        q = layer.codebook.embed[code]
        if estimator == "ste":
            gs.append(eye)
        else:
            gs.append((q.norm() / residual.norm()) * plane_rotation(residual, q))
        residual = residual - q
    if residual_grad == "live":
        prod = eye
        for g in gs:
            prod = (eye - g) @ prod
        expected = eye - prod
    else:
        expected = sum(gs)
    assert torch.allclose(J, expected, atol=1e-10, rtol=0)
    if estimator == "ste":
        assert torch.equal(J, eye if residual_grad == "live" else n_q * eye)


@pytest.mark.parametrize("estimator", ["rotation", "ste"])
@pytest.mark.parametrize("n_q", [1, 2, 4])
def test_cumulative_scope_rotates_the_latent_onto_the_running_reconstruction(estimator, n_q):
    d = 6
    rvq = toy_rvq(estimator, "live", d=d)
    stagewise = copy.deepcopy(rvq)
    rvq.estimator_scope = "cumulative"
    x = torch.randn(d, dtype=torch.float64)
    # the forward value is the stages' reconstruction, bit for bit as with the per-stage estimators
    assert torch.equal(rvq(x.view(1, d, 1), n_q=n_q).quantized, stagewise(x.view(1, d, 1), n_q=n_q).quantized)
    # the Jacobian is one λR from x onto x̂ = Σ_{k<=n} q_k, built here explicitly
    J = torch.autograd.functional.jacobian(lambda v: rvq(v.view(1, d, 1), n_q=n_q).quantized.view(d), x)
    x_hat = rvq(x.view(1, d, 1), n_q=n_q).quantized.view(d).detach()
    eye = torch.eye(d, dtype=torch.float64)
    expected = eye if estimator == "ste" else (x_hat.norm() / x.norm()) * plane_rotation(x, x_hat)
    assert torch.allclose(J, expected, atol=1e-10, rtol=0)
    # with one stage both are the same rotation (x is the stage's residual); with more, the per-stage wiring
    # composes several rotations and the cumulative one does not
    if estimator == "rotation" and n_q > 1:
        J_stage = torch.autograd.functional.jacobian(
            lambda v: stagewise(v.view(1, d, 1), n_q=n_q).quantized.view(d), x)
        assert not torch.allclose(J, J_stage, atol=1e-3)
    with pytest.raises(ValueError, match="estimator_scope"):
        ResidualVQ(d, 2, 4, estimator_scope="global")


def test_cumulative_scope_sends_only_the_first_commitment_to_the_encoder():
    d = 6
    rvq = toy_rvq("rotation", "live", d=d)
    rvq.estimator_scope = "cumulative"
    x = torch.randn(1, d, 1, dtype=torch.float64, requires_grad=True)
    out = rvq(x)
    grad = torch.autograd.grad(out.commit_loss, x)[0].view(d)
    # stage 1 sees x itself: d/dx mse(x, sg q_1) = 2(x − q_1)/d; later stages get a detached residual
    layer = rvq.layers[0]
    q1 = layer.codebook.embed[nearest_code(x.detach().view(1, d), layer.codebook.embed)[0]]
    assert torch.allclose(grad, 2 * (x.detach().view(d) - q1) / d, atol=1e-12)


@pytest.mark.parametrize("residual_grad", ["live", "detached"])
def test_cumulative_scope_changes_only_what_reaches_the_encoder(residual_grad):
    """Every stage's own parameters get from the output loss and the commitment loss exactly the gradients of the
    per-stage scope with the same wiring and estimator, so the stages learn as they do there (an earlier version
    left the in-projections to the commitment loss alone, which shrank them; docs/quantizer.md)."""
    torch.manual_seed(0)
    z = clustered_latents()
    cumulative = ResidualVQ(16, 3, 32, codebook_dim=4, estimator="rotation", estimator_scope="cumulative",
                            residual_grad=residual_grad)
    cumulative.train()
    cumulative(z)  # k-means init of every stage on this batch
    stagewise = copy.deepcopy(cumulative)
    stagewise.estimator_scope = "stage"
    target = torch.randn_like(z)
    grads = []
    for model in (cumulative, stagewise):
        model.eval()
        model.zero_grad()
        out = model(z)
        (((out.quantized - target) ** 2).mean() + out.commit_loss).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert set(grads[0]) == set(grads[1]) and any("project_in" in n for n in grads[0])
    for name, grad in grads[0].items():
        assert grad.abs().amax() > 0, name  # every stage learns
        torch.testing.assert_close(grad, grads[1][name], msg=name)


def test_per_stage_jacobian_uses_own_residual():
    d = 6
    rvq = toy_rvq("rotation", "live", d=d)
    x = torch.randn(1, d, 1, dtype=torch.float64)
    residual = x.view(d).clone()
    for layer in rvq.layers:
        code = nearest_code(residual.view(1, d), layer.codebook.embed)[0]
        q = layer.codebook.embed[code]
        J = torch.autograd.functional.jacobian(lambda v: layer(v.view(1, d, 1)).quantized.view(d), residual)
        assert torch.allclose(J, (q.norm() / residual.norm()) * plane_rotation(residual, q), atol=1e-12)
        residual = residual - q


def test_ste_and_rotation_give_identical_codebooks_after_a_step():
    z = clustered_latents()
    torch.manual_seed(1)
    base = ResidualVQ(16, 3, 64, estimator="ste")
    rot = copy.deepcopy(base)
    for layer in rot.layers:
        layer.estimator = "rotation"
    grads = []
    outs = []
    for model in (base, rot):
        torch.manual_seed(2)  # same k-means seeds / dead-code draws
        zz = z.clone().requires_grad_(True)
        out = model(zz)
        (out.quantized.pow(2).sum() + out.commit_loss).backward()
        grads.append(zz.grad)
        outs.append(out)
    assert torch.equal(outs[0].codes, outs[1].codes)
    assert torch.equal(outs[0].quantized, outs[1].quantized)
    for a, b in zip(base.layers, rot.layers):
        assert torch.equal(a.codebook.embed, b.codebook.embed)
        assert torch.equal(a.codebook.cluster_size, b.codebook.cluster_size)
        assert a.codebook.embed.grad is None and b.codebook.embed.grad is None
    assert not torch.allclose(grads[0], grads[1])  # only the encoder gradient differs


@pytest.mark.parametrize("learning", ["ema", "grad"])
def test_dropped_stages_give_no_output_loss_gradient_or_statistics(learning):
    z = clustered_latents()
    rvq = ResidualVQ(16, 6, 32, estimator="rotation", learning=learning)
    rvq(z)  # initialise all stages
    rvq.reset_stats()
    rvq.zero_grad(set_to_none=True)
    before = [layer.codebook.embed.detach().clone() for layer in rvq.layers]
    sizes = [layer.codebook.cluster_size.clone() for layer in rvq.layers]
    # a twin whose dropped stages (3..6) hold other codebooks: they must not matter at all
    twin = copy.deepcopy(rvq)
    with torch.no_grad():
        for layer in twin.layers[2:]:
            layer.codebook.embed.copy_(10 * torch.randn_like(layer.codebook.embed))
    zz, zt = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    torch.manual_seed(5)
    out = rvq(zz, n_q=2)
    torch.manual_seed(5)
    twin_out = twin(zt, n_q=2)
    assert out.codes.shape == (4, 2, 200) and out.n_q == 2
    # the output is the sum of the two used stages' code vectors (pre-update codebooks; the rotation trick's
    # forward value is exactly the code vector)
    expected = sum(before[k][out.codes[:, k]] for k in range(2)).permute(0, 2, 1)
    assert torch.allclose(out.quantized, expected, rtol=0, atol=1e-6)
    assert not torch.equal(sizes[0], rvq.layers[0].codebook.cluster_size)  # used stages' usage was updated,
    if learning == "ema":  # and their EMA codes (gradient codebooks change only in an optimiser step)
        assert not torch.equal(before[0], rvq.layers[0].codebook.embed)
    for k in range(2, 6):
        assert torch.equal(before[k], rvq.layers[k].codebook.embed)
        assert torch.equal(sizes[k], rvq.layers[k].codebook.cluster_size)
    stats = rvq.stats_dict()
    assert any(key.startswith("vq/s2/") for key in stats)
    assert not any(key.startswith(f"vq/s{k}/") for k in range(3, 7) for key in stats)
    # losses and gradients only involve the used stages: bit-identical with the twin's other dropped codebooks
    assert torch.equal(out.quantized, twin_out.quantized) and torch.equal(out.codes, twin_out.codes)
    assert torch.equal(out.commit_loss, twin_out.commit_loss)
    assert torch.equal(out.codebook_loss, twin_out.codebook_loss)
    (out.quantized.pow(2).sum() + out.commit_loss + out.codebook_loss).backward()
    (twin_out.quantized.pow(2).sum() + twin_out.commit_loss + twin_out.codebook_loss).backward()
    assert zz.grad.abs().sum() > 0 and torch.equal(zz.grad, zt.grad)
    if learning == "grad":  # codebooks are parameters: the used ones get a gradient, the dropped ones none
        assert all(layer.codebook.embed.grad is not None for layer in rvq.layers[:2])
        assert all(layer.codebook.embed.grad is None for layer in rvq.layers[2:])


def test_quantizer_dropout_samples_prefixes():
    z = clustered_latents(t=50)
    rvq = ResidualVQ(16, 8, 32, quantizer_dropout=1.0)
    seen = {rvq(z).n_q for _ in range(40)}
    assert min(seen) >= 1 and max(seen) <= 8 and len(seen) > 3
    rvq.eval()
    assert rvq(z).n_q == 8  # no dropout outside training


@pytest.mark.parametrize("skew", [0.0, 0.3, 1.0])
def test_quantizer_dropout_skew_draws_prefix_lengths_with_probability_n_to_the_minus_skew(skew):
    rvq = ResidualVQ(16, 8, 32, quantizer_dropout=1.0, dropout_skew=skew)
    random.seed(0)
    draws = 20000
    counts = collections.Counter(rvq.sample_n_q(torch.device("cpu")) for _ in range(draws))
    weights = [k ** -skew for k in range(1, 9)]
    for k in range(1, 9):
        expected = draws * weights[k - 1] / sum(weights)
        assert abs(counts[k] - expected) < 4 * expected ** 0.5  # within 4 sigma of the binomial count
    with pytest.raises(ValueError, match="dropout_skew"):
        ResidualVQ(16, 8, 32, dropout_skew=-0.5)


def test_encode_decode_round_trip_equals_forward_and_train_eval_agree():
    z = clustered_latents()
    rvq = ResidualVQ(16, 4, 64, codebook_dim=8)  # factorised codes with projections
    rvq(z)  # initialise
    rvq.eval()
    out = rvq(z)
    codes = rvq.encode(z)
    assert torch.equal(codes, out.codes)
    assert torch.equal(rvq.decode(codes), out.quantized)
    for k in range(1, 5):
        assert torch.equal(rvq.decode(codes[:, :k]), rvq(z, n_q=k).quantized)
    # training-mode indices equal eval-mode ones for the same codebook
    trained = copy.deepcopy(rvq).train()
    for layer in trained.layers:
        layer.codebook.dead_code_threshold = 0.0
    assert torch.equal(trained(z, n_q=4).codes, codes)


def test_kmeans_init_beats_random_init():
    z = clustered_latents(seed=3)
    errs = {}
    for init in (True, False):
        torch.manual_seed(0)
        vq = VectorQuantizer(16, 32, kmeans_init=init, dead_code_threshold=0.0)
        vq(z)  # first training call initialises (k-means) then updates by EMA
        vq.eval()
        vq.stats.reset()
        out = vq(z, track_stats=True)
        errs[init] = vq.stats.summary()["rel_qe"]
        assert torch.equal(out.codes, vq.encode(z))
    assert errs[True] < 0.1 * errs[False], errs  # k-means++ finds the 32 clusters; tiny random codes do not


def test_kmeans_recovers_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 4, generator=g) * 10
    x = centres.repeat_interleave(50, 0) + 0.01 * torch.randn(400, 4, generator=g)
    cents, counts = kmeans(x, 8, iters=20, generator=g)
    assert counts.sum() == 400
    d = torch.cdist(centres, cents).min(dim=1).values
    assert d.max() < 0.5 and torch.equal(counts, torch.full((8,), 50.0))


def test_dead_code_gets_revived():
    z = clustered_latents(n_clusters=8, seed=4)
    vq = VectorQuantizer(16, 16, kmeans_init=False, dead_code_threshold=0.1, decay=0.9)
    vq.codebook.embed.copy_(torch.randn(16, 16) * 3)
    vq.codebook.embed[5] = 1e4  # far away: never chosen
    vq.codebook.embed_sum.copy_(vq.codebook.embed * vq.codebook.cluster_size.unsqueeze(-1))
    for _ in range(30):
        vq(z)
    assert vq.codebook.embed[5].abs().max() < 100  # re-seeded from data
    assert int(vq.codebook.replaced_total) > 0
    vq.eval()
    assert (vq.encode(z) == 5).any()  # and it is used again


def test_dead_code_patience_replaces_an_idle_code_within_patience_steps():
    # Code 5 falls out of use (far away) while its EMA usage is still high: the EMA rule (threshold 0.1,
    # decay 0.99) would need ~230 steps to notice; the patience rule replaces it on the 3rd idle step, and
    # codes that are used keep their place.
    from rvqcodec.quantize.codebook import EuclideanCodebook

    def codebook(patience):
        cb = EuclideanCodebook(4, 8, kmeans_init=False, dead_code_threshold=0.1, decay=0.99,
                               dead_code_patience=patience)
        cb.embed.copy_(torch.eye(8, 4) * 10)
        cb.embed[5] = 1e4
        cb.cluster_size.fill_(10.0)  # all codes look equally used so far
        cb.embed_sum.copy_(cb.embed * 10.0)
        return cb

    x = torch.cat([torch.eye(4).repeat(20, 1) * 10, torch.full((8, 4), 7.0)])  # 88 vectors per step,
    codes = torch.cat([torch.arange(80) % 4, torch.tensor([6, 7] * 4)])  # assigned to codes 0-3, 6 and 7
    # (codes 4 and 5 are idle)
    with_rule, without = codebook(3), codebook(0)
    assert "idle_steps" not in dict(without.named_buffers())  # no new state for codebooks without the rule
    for step in range(1, 4):
        replaced = with_rule.update_(x, codes)
        assert without.update_(x, codes) == 0
        assert replaced == (2 if step == 3 else 0)  # codes 4 and 5, once idle for 3 steps
    assert with_rule.embed[5].abs().max() < 100  # re-seeded from this step's vectors
    assert int(with_rule.idle_steps[5]) == 0 and int(with_rule.idle_steps[0]) == 0
    assert torch.equal(with_rule.embed[:4], without.embed[:4])  # codes in use are untouched
    assert without.embed[5].abs().max() > 100  # the EMA rule has not reacted yet

    # the rule is a training option: codebooks load across it (fresh idle counters / counters ignored)
    fresh = codebook(3)
    fresh.idle_steps.fill_(9)
    fresh.load_state_dict(without.state_dict())
    assert torch.equal(fresh.embed, without.embed) and int(fresh.idle_steps.abs().sum()) == 0
    plain = codebook(0)
    plain.load_state_dict(with_rule.state_dict())
    assert torch.equal(plain.embed, with_rule.embed) and "idle_steps" not in dict(plain.named_buffers())
    # and into a codebook that wants no k-means: codes not yet initialised are its (random) start
    waiting = EuclideanCodebook(4, 8, kmeans_init=True)
    no_kmeans = EuclideanCodebook(4, 8, kmeans_init=False)
    no_kmeans.load_state_dict(waiting.state_dict())
    assert no_kmeans.is_initialized() and torch.equal(no_kmeans.embed, waiting.embed)


def test_dead_codes_count_the_codes_no_frame_reached_since_the_kmeans_init():
    # Issue 28: after the k-means init a stage fell to 0.3 % utilisation while dead_codes read 0. Every code
    # starts with its share of the initialisation frames as EMA usage, so the EMA rule (threshold 0.1, decay 0.99)
    # flags a code the moved encoder never picks only after ~230 steps. Codes that no frame has reached since the
    # init are out of use: dead_codes counts them (and still leaves re-seeding to the rule).
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 32)  # EMA codebook, k-means init, default dead-code rule
    centres = torch.randn(32, 16) * 10  # 32 separated clusters of 25 frames: k-means finds them exactly
    pool = centres.repeat_interleave(25, 0) + 0.01 * torch.randn(800, 16)
    z = pool[torch.randperm(800)].reshape(4, 200, 16).permute(0, 2, 1)
    vq.initialize_(pool)  # as the trainer does, from a pool of latents
    assert torch.equal(vq.codebook.cluster_size, torch.full((32,), 25.0))
    initial = vq.codebook.embed.clone()
    used = vq.codebook.embed[[3, 17]].clone()
    # the encoder moved: every frame now lies next to two of the 32 codes
    moved = (used.repeat(400, 1) + 0.01 * torch.randn(800, 16)).reshape(4, 200, 16).permute(0, 2, 1)
    for _ in range(20):
        vq(moved)
    s = vq.stats_summary()
    assert s["utilization"] == 100 * 2 / 32 and s["unused_codes"] == 30
    assert s["dead_codes"] == s["unused_codes"], s  # before the fix: 0
    assert int(vq.codebook.replaced_total) == 0 and not vq.codebook.replacement_mask().any()  # only reported

    # a frame reaching a code makes it live again; a code the rule re-seeds is dead until a frame reaches it
    vq.stats.reset()
    vq(z)  # the original latents use every code
    assert vq.stats_summary()["dead_codes"] == 0
    vq.codebook.cluster_size[5] = 0.0  # the rule flags code 5 at the next update
    vq(moved)
    assert int(vq.codebook.replaced_total) == 1
    assert vq.codebook.dead_mask().nonzero().flatten().tolist() == [5]
    assert not vq.codebook.replacement_mask().any()  # re-seeded, given the mean usage: the rule is content

    # a codebook without k-means init: counted from its first training update
    plain = VectorQuantizer(16, 32, kmeans_init=False, dead_code_threshold=0.0)
    plain.codebook.embed.copy_(initial)
    plain(moved)
    assert plain.stats_summary()["dead_codes"] == 30


def test_mask_excludes_padded_frames_from_learning_and_statistics():
    z = clustered_latents(b=2, t=100)
    z_pad = torch.cat([z, torch.full((2, 16, 40), 50.0)], dim=2)
    mask = torch.zeros(2, 140, dtype=torch.bool)
    mask[:, :100] = True
    torch.manual_seed(0)
    a = VectorQuantizer(16, 32)
    a(z)
    torch.manual_seed(0)
    b = VectorQuantizer(16, 32)
    b(z_pad, mask=mask)
    assert torch.allclose(a.codebook.embed, b.codebook.embed)
    assert torch.equal(a.stats.counts, b.stats.counts)


def test_commitment_loss_gradient():
    z = clustered_latents(b=1, t=30)
    vq = VectorQuantizer(16, 8, estimator="ste", commitment_weight=0.7)
    vq(z)
    vq.eval()
    zz = z.clone().double().requires_grad_(True)
    vq = vq.double()
    out = vq(zz)
    out.commit_loss.backward()
    q = vq.decode(out.codes)
    expected = 2 * 0.7 * (zz.detach() - q) / zz.numel()
    assert torch.allclose(zz.grad, expected, rtol=1e-6, atol=1e-12)


def test_grad_codebook_learns_through_codebook_loss_only():
    z = clustered_latents(b=1, t=40).requires_grad_(True)
    vq = VectorQuantizer(16, 8, learning="grad", estimator="rotation")
    out = vq(z)
    out.quantized.sum().backward()
    assert vq.codebook.embed.grad is None or torch.all(vq.codebook.embed.grad == 0)
    out = vq(z)
    out.codebook_loss.backward()
    assert vq.codebook.embed.grad.abs().sum() > 0


def test_statistics_definitions():
    stats = CodebookStats(16)
    codes = torch.arange(16).repeat(10)
    x = torch.randn(160, 4)
    stats.update(codes, x, x, x, x)
    s = stats.summary()
    assert abs(s["perplexity"] - 16) <= 16 * 1e-9
    assert s["utilization"] == 100.0 and s["rel_qe"] == 0.0
    assert abs(s["scale_median"] - 1.0) < 0.01
    stats.reset()
    stats.update(torch.zeros(50, dtype=torch.long), x[:50], torch.zeros(50, 4), x[:50], 0.5 * x[:50])
    s = stats.summary()
    assert abs(s["perplexity"] - 1.0) < 1e-12 and s["utilization"] == 100 / 16
    assert abs(s["rel_qe"] - 1.0) < 1e-12
    assert abs(s["scale_median"] - 0.5) < 0.01
    # relative QE summed over batches = residual-energy ratio
    stats.reset()
    r1, r2 = torch.randn(30, 4), torch.randn(20, 4) * 2
    q1, q2 = r1 * 0.5, r2 * 0.9
    stats.update(torch.zeros(30, dtype=torch.long), r1, q1, r1, q1)
    stats.update(torch.zeros(20, dtype=torch.long), r2, q2, r2, q2)
    expected = ((r1 - q1).pow(2).sum() + (r2 - q2).pow(2).sum()) / (r1.pow(2).sum() + r2.pow(2).sum())
    assert math.isclose(stats.summary()["rel_qe"], float(expected), rel_tol=1e-6)


def test_rvq_bad_inputs():
    with pytest.raises(ValueError, match="residual_grad"):
        ResidualVQ(8, 2, 4, residual_grad="sometimes")
    with pytest.raises(ValueError, match="estimator"):
        ResidualVQ(8, 2, 4, estimator="magic")
    rvq = ResidualVQ(8, 2, 4)
    with pytest.raises(ValueError, match="expected"):
        rvq(torch.randn(1, 7, 5))
    with pytest.raises(ValueError, match="n_q"):
        rvq(torch.randn(1, 8, 5), n_q=3)
    with pytest.raises(ValueError, match="codes"):
        rvq.decode(torch.full((1, 2, 5), 4))


def test_initialize_from_a_large_batch_gives_every_stage_useful_residuals():
    small = clustered_latents(b=1, t=20, n_clusters=64, seed=5)  # 20 frames < K = 32
    large = clustered_latents(b=8, t=200, n_clusters=64, seed=5)
    lazy = ResidualVQ(16, 3, 32)
    lazy(small)  # stage 1 memorises the 20 frames: stages 2-3 start from zero residuals
    eager = ResidualVQ(16, 3, 32)
    assert eager.initialize(large) == 3 and eager.initialize(large) == 0
    for model in (lazy, eager):
        model.eval()
        model.record_eval_stats = True
        model.reset_stats()
        model(large)
    lazy_qe = [s["rel_qe"] for s in lazy.stage_stats()]
    eager_qe = [s["rel_qe"] for s in eager.stage_stats()]
    assert eager_qe[1] < 0.9 and lazy_qe[1] > 0.99  # a zero-initialised stage removes no energy
    assert all(e < l for e, l in zip(eager_qe, lazy_qe))


def test_factorised_stages_start_in_their_residuals_principal_subspace():
    # Latents with most of their energy in a random 4-d subspace of 32 dimensions: a factorised stage (codes of
    # dimension 4) initialised by PCA + k-means removes most of it, and its projections are an orthonormal
    # basis of that subspace with the mean added back; random projections would remove nothing.
    torch.manual_seed(7)
    basis = torch.linalg.qr(torch.randn(32, 4))[0]  # (32, 4) orthonormal
    coords = torch.randn(8, 4, 300) * torch.tensor([4.0, 3.0, 2.0, 1.5]).view(1, 4, 1)
    z = torch.einsum("dk,bkt->bdt", basis, coords) + 0.05 * torch.randn(8, 32, 300) + 0.3
    rvq = ResidualVQ(32, 2, 64, codebook_dim=4)
    random_out = rvq.layers[0].project_out(rvq.layers[0].project_in(z.transpose(1, 2))).transpose(1, 2)
    assert ((z - random_out) ** 2).sum() / (z ** 2).sum() > 0.9
    rvq.initialize(z)
    stage = rvq.layers[0]
    w_in, w_out = stage.project_in.weight, stage.project_out.weight
    torch.testing.assert_close(w_in @ w_in.T, torch.eye(4), atol=1e-5, rtol=0)  # orthonormal rows
    torch.testing.assert_close(w_out, w_in.T)
    assert torch.linalg.matrix_norm(w_in.T @ w_in - basis @ basis.T) < 0.05  # the planted subspace
    torch.testing.assert_close(stage.project_out.bias, z.mean(dim=(0, 2)), atol=1e-4, rtol=0)
    rvq.eval()
    rvq.record_eval_stats = True
    rvq(z)
    assert rvq.stage_stats()[0]["rel_qe"] < 0.2


def test_masked_dead_code_replacement_matches_the_counted_one():
    # The accelerator path (no value read back) and the CPU path replace the same codes, with rows of the batch,
    # give them the mean usage and leave every live code alone.
    from rvqcodec.quantize.codebook import EuclideanCodebook

    torch.manual_seed(12)
    results = []
    for masked in (False, True):
        cb = EuclideanCodebook(4, 16, kmeans_init=False, dead_code_threshold=0.5)
        cb.embed.copy_(torch.randn(16, 4))
        cb.cluster_size.copy_(torch.arange(16.0))
        cb.embed_sum.copy_(cb.embed * cb.cluster_size.unsqueeze(-1))
        before = cb.embed.clone()
        x = torch.randn(40, 4)
        dead = cb.dead_mask()
        n = (cb._replace_dead_masked_ if masked else cb._replace_dead_)(x, dead)
        assert int(n) == int(dead.sum()) == 4 and int(cb.replaced_total) == 4  # usage 0-3 < 0.5 * 7.5
        assert torch.equal(cb.embed[~dead], before[~dead])
        assert all(any(torch.equal(row, xi) for xi in x) for row in cb.embed[dead])
        results.append(cb.cluster_size.clone())
    assert torch.equal(results[0], results[1])
    assert torch.allclose(results[0][:4], torch.full((4,), float(torch.arange(16.0).sum() / 16)))



# ------------------------------------------------------------------------- GRIT estimators and codebook transform
@pytest.mark.parametrize("estimator", ["grit", "grit_rotation"])
@pytest.mark.parametrize("residual_grad", ["live", "detached", "cumulative"])
def test_grit_stage_jacobians_compose_as_documented_with_the_configured_radius(estimator, residual_grad):
    d, n_q, k, tau = 6, 4, 5, 0.5
    torch.manual_seed(0)
    rvq = ResidualVQ(d, n_q, k, estimator=estimator, residual_grad="live" if residual_grad == "cumulative"
                     else residual_grad, grit_radius=tau, kmeans_init=False).double()
    for i, layer in enumerate(rvq.layers):
        layer.codebook.embed.copy_(torch.randn(k, d, dtype=torch.float64) * (0.8**i))
    rvq.eval()
    if residual_grad == "cumulative":
        rvq.estimator_scope = "cumulative"
    x = torch.randn(d, dtype=torch.float64)

    def jacobian(model):
        return torch.autograd.functional.jacobian(lambda v: model(v.view(1, d, 1)).quantized.view(d), x)

    J = jacobian(rvq)
    eye = torch.eye(d, dtype=torch.float64)
    rotate = estimator == "grit_rotation"
    residual, gs = x.clone(), []
    for layer in rvq.layers:
        q = layer.codebook.embed[nearest_code(residual.view(1, d), layer.codebook.embed)[0]]
        gs.append(grit_reference(residual, q, tau, rotate))
        residual = residual - q
    if residual_grad == "cumulative":  # one G from the latent onto the reconstruction
        expected = grit_reference(x, x - residual, tau, rotate)
    elif residual_grad == "live":
        prod = eye
        for g in gs:
            prod = (eye - g) @ prod
        expected = eye - prod
    else:
        expected = sum(gs)
    assert torch.allclose(J, expected, atol=1e-10, rtol=0)
    # the stages use the configured radius, not the default
    default = copy.deepcopy(rvq)
    for layer in default.layers:
        layer.grit_radius = 1.0
    assert not torch.allclose(jacobian(default), J, atol=1e-4)
    with pytest.raises(ValueError, match="grit_radius"):
        VectorQuantizer(d, k, estimator=estimator, grit_radius=0.0)


def test_transform_codebook_starts_as_the_identity_over_the_kmeans_codes():
    z = clustered_latents()
    runs = {}
    for learning in ("ema", "grad", "transform"):
        torch.manual_seed(0)
        vq = VectorQuantizer(16, 32, codebook_dim=8, learning=learning, dead_code_threshold=0.0)
        runs[learning] = (vq, vq(z))
    (grad_vq, grad_out), (vq, out) = runs["grad"], runs["transform"]
    for plain in (runs["ema"][1], grad_out):  # the first forward is the plain k-means quantizer's, bit for bit
        assert torch.equal(out.codes, plain.codes)
        assert torch.equal(out.quantized, plain.quantized)
        assert torch.equal(out.commit_loss, plain.commit_loss)
    assert torch.equal(out.codebook_loss, grad_out.codebook_loss)
    cb = vq.codebook
    assert torch.equal(cb.transform.detach(), torch.eye(8))
    assert torch.equal(cb.vectors(), cb.embed) and torch.equal(cb.embed, grad_vq.codebook.embed.detach())
    # without k-means the codes start as the random base, W = I
    from rvqcodec.quantize.codebook import EuclideanCodebook

    fresh = EuclideanCodebook(8, 16, learning="transform", kmeans_init=False)
    assert torch.equal(fresh.transform.detach(), torch.eye(8)) and torch.equal(fresh.vectors(), fresh.embed)
    # a k-means (re-)initialisation resets the transform: its codes are the centroids
    with torch.no_grad():
        cb.transform.mul_(3.0)
    cb.initialize_(torch.randn(200, 8))
    assert torch.equal(cb.transform.detach(), torch.eye(8)) and torch.equal(cb.vectors(), cb.embed)
    # EMA and "grad" codebooks are unchanged: no transform, same state-dict keys
    ema = runs["ema"][0].codebook
    assert not hasattr(ema, "transform") and "transform" not in ema.state_dict()
    assert set(cb.state_dict()) == set(ema.state_dict()) | {"transform"}


def test_transform_codebook_learns_through_the_shared_map_and_moves_every_code():
    z = clustered_latents(b=1, t=60, n_clusters=4).requires_grad_(True)
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 16, learning="transform", kmeans_init=False, dead_code_threshold=0.0,
                         codebook_weight=0.7)
    cb = vq.codebook
    with torch.no_grad():
        cb.embed.copy_(torch.randn(16, 16) * 3)
        cb.transform.add_(0.1 * torch.randn(16, 16))
    assert [name for name, _ in vq.named_parameters()] == ["codebook.transform"]  # the base is a buffer
    out = vq(z)
    out.quantized.sum().backward()  # the estimator sends nothing to the codebook
    assert cb.transform.grad is None or torch.all(cb.transform.grad == 0)
    vq.zero_grad(set_to_none=True)
    out = vq(z)
    used = out.codes.unique()
    assert len(used) < 16  # some codes are not used by this batch
    out.codebook_loss.backward()
    # dL/dW of 0.7·mse(W·b_k, sg e) = 2·0.7/(N·d) Σ_i (W·b_{k_i} − e_i)·b_{k_i}ᵀ, built explicitly
    e = rearrange_frames(z.detach())
    base = cb.embed[out.codes.reshape(-1)]
    W = cb.transform.detach()
    expected = 2 * 0.7 / e.numel() * (base @ W.T - e).T @ base
    torch.testing.assert_close(cb.transform.grad, expected, rtol=1e-5, atol=1e-6)
    before = cb.vectors().detach().clone()
    torch.optim.SGD([cb.transform], lr=0.05).step()
    moved = (cb.vectors().detach() - before).norm(dim=-1)
    assert (moved > 0).all()  # every code moved, the unused ones too


def rearrange_frames(z):
    return z.permute(0, 2, 1).reshape(-1, z.shape[1])


def test_transform_codebook_decodes_its_forward_and_survives_a_state_dict_round_trip():
    z = clustered_latents()
    torch.manual_seed(0)
    rvq = ResidualVQ(16, 3, 32, codebook_dim=8, learning="transform")
    opt = torch.optim.SGD(rvq.parameters(), lr=0.5)
    for _ in range(3):
        out = rvq(z)
        (out.codebook_loss + out.commit_loss).backward()
        opt.step()
        opt.zero_grad()
    assert all(not torch.allclose(layer.codebook.transform, torch.eye(8), atol=1e-4) for layer in rvq.layers)
    rvq.eval()
    out = rvq(z)
    codes = rvq.encode(z)
    assert torch.equal(codes, out.codes) and torch.equal(rvq.decode(codes), out.quantized)
    # the codes decode to the transformed codebook B·Wᵀ, not to the base
    with torch.no_grad():
        explicit = sum(layer.project_out((layer.codebook.embed @ layer.codebook.transform.T)[codes[:, k]])
                       for k, layer in enumerate(rvq.layers))
        base_only = sum(layer.project_out(layer.codebook.embed[codes[:, k]]) for k, layer in enumerate(rvq.layers))
    torch.testing.assert_close(rvq.decode(codes), explicit.permute(0, 2, 1), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(explicit, base_only, atol=1e-3)
    # a state-dict round trip keeps the transform (a fresh model decodes the same codes bit for bit)
    state = rvq.state_dict()
    assert all(f"layers.{k}.codebook.transform" in state for k in range(3))
    torch.manual_seed(1)
    fresh = ResidualVQ(16, 3, 32, codebook_dim=8, learning="transform").eval()
    fresh.load_state_dict(state)
    again = fresh(z)
    assert torch.equal(again.codes, out.codes) and torch.equal(again.quantized, out.quantized)
    assert torch.equal(fresh.decode(codes), rvq.decode(codes))
    # a plain (EMA) quantizer's state continues as a transform one with W = I (same codes); not the other way
    plain = ResidualVQ(16, 3, 32, codebook_dim=8)
    plain(z)
    plain.eval()
    grown = ResidualVQ(16, 3, 32, codebook_dim=8, learning="transform").eval()
    grown.load_state_dict(plain.state_dict())
    assert all(torch.equal(layer.codebook.transform.detach(), torch.eye(8)) for layer in grown.layers)
    assert torch.equal(grown(z).quantized, plain(z).quantized)
    with pytest.raises(RuntimeError, match="transform"):
        plain.load_state_dict(state)


@pytest.mark.parametrize("masked", [False, True])
def test_transform_codebook_dead_code_replacement_seeds_the_transformed_codes(masked):
    from rvqcodec.quantize.codebook import EuclideanCodebook

    torch.manual_seed(12)
    cb = EuclideanCodebook(4, 16, learning="transform", kmeans_init=False, dead_code_threshold=0.5)
    with torch.no_grad():
        cb.embed.copy_(torch.randn(16, 4))
        cb.transform.copy_(torch.eye(4) + 0.3 * torch.randn(4, 4))
    cb.cluster_size.copy_(torch.arange(16.0))
    base, codes = cb.embed.clone(), cb.vectors().detach().clone()
    x = torch.randn(40, 4)
    dead = cb.cluster_size < 0.5 * cb.cluster_size.mean()  # usage 0-3 < 0.5 * 7.5
    n = (cb._replace_dead_masked_ if masked else cb._replace_dead_)(x, dead)
    assert int(n) == int(dead.sum()) == 4
    assert torch.equal(cb.embed[~dead], base[~dead])
    after = cb.vectors().detach()
    torch.testing.assert_close(after[~dead], codes[~dead], rtol=0, atol=0)
    # the re-seeded codes (what the quantizer uses: B·Wᵀ) are batch vectors, not their base rows
    for row in after[dead]:
        assert any(torch.allclose(row, xi, rtol=1e-5, atol=1e-5) for xi in x)
    assert not any(torch.allclose(row, xi, atol=1e-3) for row in cb.embed[dead] for xi in x)


def test_transform_codebook_dead_code_gets_revived():
    z = clustered_latents(n_clusters=8, seed=4)
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 16, learning="transform", kmeans_init=False, dead_code_threshold=0.1, decay=0.9)
    cb = vq.codebook
    with torch.no_grad():
        cb.transform.copy_(torch.eye(16) + 0.2 * torch.randn(16, 16))
        wanted = torch.randn(16, 16) * 3
        wanted[5] = 1e4  # far away: never chosen
        cb.embed.copy_(wanted @ torch.linalg.inv(cb.transform).T)
    assert (cb.vectors()[5] > 1e3).all()
    for _ in range(30):
        vq(z)
    assert cb.vectors()[5].abs().max() < 100  # re-seeded from data, through the transform
    assert int(cb.replaced_total) > 0
    vq.eval()
    assert (vq.encode(z) == 5).any()  # and it is used again


def test_codec_config_sets_the_grit_options_and_keeps_their_defaults_out_of_the_model_id():
    from rvqcodec.model.codec import Codec, CodecConfig
    from rvqcodec.quantize import QUANTIZER_DEFAULTS
    from rvqcodec.quantize.estimators import DEFAULT_GRIT_RADIUS

    assert CodecConfig().grit_radius == QUANTIZER_DEFAULTS["grit_radius"] == DEFAULT_GRIT_RADIUS
    assert "grit_radius" not in CodecConfig().identity_dict()  # shipped models keep their id
    cfg = CodecConfig.preset("tiny", estimator="grit_rotation", grit_radius=0.5, codebook_learning="transform")
    assert cfg.identity_dict()["grit_radius"] == 0.5
    codec = Codec(cfg)
    for layer in codec.quantizer.layers:
        assert layer.estimator == "grit_rotation" and layer.grit_radius == 0.5
        assert isinstance(layer.codebook.transform, torch.nn.Parameter)
    with pytest.raises(ValueError, match="grit_radius"):
        CodecConfig(grit_radius=0.0)
