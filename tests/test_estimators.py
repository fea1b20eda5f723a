"""Maths of the gradient estimators against explicitly built matrices (float64 references)."""
from __future__ import annotations

import pytest
import torch

from rvqcodec.quantize import apply_estimator, rotation_trick, straight_through
from rvqcodec.quantize.estimators import ESTIMATORS

from helpers import grit_reference, plane_rotation


def generic_pairs(n: int, d: int, dtype=torch.float64, seed: int = 0):
    """Typical VQ pairs: q near e (code = e + noise, different norm), plus random pairs; 1 + cos ≥ 1e-2."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(n, d, generator=g, dtype=torch.float64)
    q = 0.8 * e + 0.6 * torch.randn(n, d, generator=g, dtype=torch.float64)
    q[n // 2 :] = torch.randn(n - n // 2, d, generator=g, dtype=torch.float64) * 2.0
    cos = torch.nn.functional.cosine_similarity(e, q, dim=-1)
    keep = 1 + cos >= 1e-2
    return e[keep].to(dtype), q[keep].to(dtype)


def grad_of(fn, e, q, g):
    e = e.clone().requires_grad_(True)
    out = fn(e, q)
    out.backward(g)
    return out, e.grad


@pytest.mark.parametrize("d", [8, 64, 256])
def test_householder_rotation_properties_match_explicit_plane_rotation(d):
    e, q = generic_pairs(64, d)
    for i in range(8):
        R = plane_rotation(e[i], q[i])
        e_hat, q_hat = e[i] / e[i].norm(), q[i] / q[i].norm()
        assert torch.allclose(R @ e_hat, q_hat, atol=1e-12)
        assert torch.allclose(R.T @ R, torch.eye(d, dtype=torch.float64), atol=1e-12)
        assert abs(torch.linalg.det(R).item() - 1.0) < 1e-9
        # the library's Jacobian (rescale=False) is exactly this R
        J = torch.autograd.functional.jacobian(lambda x: rotation_trick(x, q[i], rescale=False), e[i])
        assert torch.allclose(J, R, atol=1e-12)
        # R is the identity on span(e, q)^⊥
        v = torch.randn(d, dtype=torch.float64)
        basis = torch.linalg.qr(torch.stack([e_hat, q_hat], 1))[0]
        v = v - basis @ (basis.T @ v)
        assert torch.allclose(R @ v, v, atol=1e-12)


@pytest.mark.parametrize("d", [8, 64, 256])
def test_jacobian_is_lambda_R_fp64(d):
    e, q = generic_pairs(32, d)
    for i in range(6):
        lam = q[i].norm() / e[i].norm()
        J = torch.autograd.functional.jacobian(lambda x: rotation_trick(x, q[i]), e[i])
        assert torch.allclose(J, lam * plane_rotation(e[i], q[i]), atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("d", [8, 64, 256])
def test_gradient_equals_scaled_transposed_rotation(dtype, tol, d):
    e64, q64 = generic_pairs(256, d)
    g64 = torch.randn_like(e64)
    _, grad = grad_of(rotation_trick, e64.to(dtype), q64.to(dtype), g64.to(dtype))
    for i in range(e64.shape[0]):
        R = plane_rotation(e64[i], q64[i])
        expected = (q64[i].norm() / e64[i].norm()) * (R.T @ g64[i])
        rel = (grad[i].double() - expected).norm() / expected.norm()
        assert rel <= tol, (i, rel.item())


def test_gradient_with_bf16_inputs_fp32_maths():
    e64, q64 = generic_pairs(128, 64)
    g64 = torch.randn_like(e64)
    e, q, g = (t.to(torch.bfloat16) for t in (e64, q64, g64))
    out, grad = grad_of(rotation_trick, e, q, g)
    assert out.dtype == torch.bfloat16 and torch.equal(out, q)
    for i in range(e.shape[0]):
        ei, qi, gi = e[i].double(), q[i].double(), g[i].double()
        expected = (qi.norm() / ei.norm()) * (plane_rotation(ei, qi).T @ gi)
        assert (grad[i].double() - expected).norm() / expected.norm() <= 1e-2


def test_angle_and_norm_identities_fp32():
    e64, q64 = generic_pairs(256, 64)
    g = torch.randn_like(e64).float()
    e, q = e64.float(), q64.float()
    _, grad = grad_of(rotation_trick, e, q, g)
    cos_qg = torch.nn.functional.cosine_similarity(q, g, dim=-1)
    cos_e_grad = torch.nn.functional.cosine_similarity(e, grad, dim=-1)
    assert (cos_qg - cos_e_grad).abs().max() <= 1e-5
    lam = q.norm(dim=-1) / e.norm(dim=-1)
    assert ((grad.norm(dim=-1) / (lam * g.norm(dim=-1))) - 1).abs().max() <= 1e-5


def test_in_plane_gradient_rotates_by_theta():
    d = 32
    e = torch.randn(d, dtype=torch.float64)
    for theta_deg in (10, 45, 90, 135, 170):
        theta = torch.tensor(theta_deg * torch.pi / 180, dtype=torch.float64)
        u = torch.randn(d, dtype=torch.float64)
        e_hat = e / e.norm()
        u = u - torch.dot(u, e_hat) * e_hat
        u = u / u.norm()
        q = 1.7 * (torch.cos(theta) * e_hat + torch.sin(theta) * u)
        g = 0.3 * e_hat + 1.1 * u  # in span(e, q)
        _, grad = grad_of(rotation_trick, e, q, g)
        angle = torch.arccos(torch.nn.functional.cosine_similarity(grad, g, dim=0))
        assert abs(angle.item() - theta.item()) <= 1e-4


def test_parallel_case_is_rescaled_ste():
    e = torch.randn(16, 32, dtype=torch.float64)
    alpha = 2.5
    q = e / alpha  # e = α q
    g = torch.randn_like(e)
    _, grad = grad_of(rotation_trick, e, q, g)
    assert torch.allclose(grad, g / alpha, atol=1e-6)


@pytest.mark.parametrize("e_norm", [1e-3, 1e-5])
def test_small_norm_inputs_keep_tolerances(e_norm):
    e64, q64 = generic_pairs(64, 64)
    e64 = e64 / e64.norm(dim=-1, keepdim=True) * e_norm
    g64 = torch.randn_like(e64)
    out, grad = grad_of(rotation_trick, e64.float(), q64.float(), g64.float())
    assert torch.equal(out, q64.float())
    for i in range(e64.shape[0]):
        expected = (q64[i].norm() / e64[i].norm()) * (plane_rotation(e64[i], q64[i]).T @ g64[i])
        assert (grad[i].double() - expected).norm() / expected.norm() <= 1e-5


@pytest.mark.parametrize("ratio", [1e-3, 1e3])
def test_extreme_scale_ratios(ratio):
    e64, q64 = generic_pairs(64, 64)
    q64 = q64 / q64.norm(dim=-1, keepdim=True) * e64.norm(dim=-1, keepdim=True) * ratio
    g64 = torch.randn_like(e64)
    _, grad = grad_of(rotation_trick, e64.float(), q64.float(), g64.float())
    for i in range(e64.shape[0]):
        expected = ratio * (plane_rotation(e64[i], q64[i]).T @ g64[i])
        assert (grad[i].double() - expected).norm() / expected.norm() <= 1e-5


@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_is_bit_exact(name, dtype):
    e64, q64 = generic_pairs(512, 64)
    e, q = e64.to(dtype).requires_grad_(True), q64.to(dtype)
    out = apply_estimator(name, e, q)
    assert out.dtype == dtype
    assert torch.equal(out, q)


@pytest.mark.parametrize("name", ESTIMATORS)
def test_forward_is_bit_exact_under_autocast(name):
    e64, q64 = generic_pairs(512, 64)
    lin = torch.nn.Linear(64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        e = lin(e64.float())  # bf16 under autocast
        q = q64.float()
        out = apply_estimator(name, e, q)
        out.float().sum().backward()
    assert torch.equal(out, q.to(out.dtype))
    assert torch.isfinite(lin.weight.grad).all()


def test_ste_gradient_is_exactly_g():
    e, q = generic_pairs(128, 32, dtype=torch.float32)
    g = torch.randn_like(e)
    out, grad = grad_of(straight_through, e, q, g)
    assert torch.equal(out, q)
    assert torch.equal(grad, g)


def degenerate_cases(dtype):
    d = 16
    q = torch.randn(6, d, dtype=torch.float64)
    e = torch.empty_like(q)
    e[0] = 0.0  # e = 0
    e[1] = torch.randn(d, dtype=torch.float64) * 1e-7 / (d**0.5)  # ‖e‖ ≈ 1e-7
    e[2] = torch.randn(d, dtype=torch.float64)
    q[2] = 0.0  # q = 0
    e[3] = -q[3] * 0.7  # exactly antiparallel
    e[4] = -q[4] + 1e-4 * torch.randn(d, dtype=torch.float64)  # near antiparallel δ ~ 1e-4
    e[5] = -q[5] + 1e-6 * torch.randn(d, dtype=torch.float64)  # δ ~ 1e-6
    return e.to(dtype), q.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["rotation", "rotation_noscale", "rotation_clamped"])
def test_degenerate_inputs_no_nan_exact_forward_ste_fallback(dtype, name):
    e, q = degenerate_cases(dtype)
    g = torch.randn_like(e)
    out, grad = grad_of(lambda a, b: apply_estimator(name, a, b), e, q, g)
    assert torch.equal(out, q)
    assert torch.isfinite(grad).all()
    # guarded rows (e = 0, tiny e, (near-)antiparallel) get exactly the STE gradient
    for row in (0, 1, 3, 4, 5):
        assert torch.equal(grad[row], g[row]), row
    if name == "rotation":
        assert torch.equal(grad[2], torch.zeros_like(grad[2]))  # q = 0 → λ = 0 → zero gradient (documented)


def test_fp32_gradient_is_accurate_just_above_the_antiparallel_guard():
    # 1 + cos(e, q) from 3e-5 to 1e-3: rotated (not guarded), where ‖ê + q̂‖² from dot products would cancel
    d, n = 128, 24
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(n, d, generator=gen, dtype=torch.float64)
    rows = []
    for q_i, gap in zip(q, torch.logspace(-4.5, -3, n, dtype=torch.float64)):
        u = torch.randn(d, generator=gen, dtype=torch.float64)
        u -= (u @ q_i) / (q_i @ q_i) * q_i  # orthogonal to q
        angle = torch.arccos(gap - 1)  # 1 + cos(angle) = gap
        rows.append(1.7 * (torch.cos(angle) * q_i / q_i.norm() + torch.sin(angle) * u / u.norm()))
    e32, q32 = torch.stack(rows).float(), q.float()
    g = torch.randn(n, d, generator=gen, dtype=torch.float64)
    _, grad = grad_of(rotation_trick, e32, q32, g.float())
    for i in range(n):
        e_i, q_i = e32[i].double(), q32[i].double()  # the reference sees the same rounded inputs
        assert 1 + torch.nn.functional.cosine_similarity(e_i, q_i, dim=0) > 2e-5
        ref = (q_i.norm() / e_i.norm()) * plane_rotation(e_i, q_i).T @ g[i]
        assert (grad[i].double() - ref).norm() <= 1e-4 * ref.norm(), i


def test_near_antiparallel_recompute_is_the_same_with_and_without_reading_the_device():
    # The accelerator path recomputes every row and keeps the near-antiparallel ones (no host read); the CPU path
    # gathers those rows only. Same values, and both fix the rows where the dot-product form cancels.
    from rvqcodec.quantize.estimators import NEAR_ANTIPARALLEL, _recompute_near_antiparallel

    gen = torch.Generator().manual_seed(11)
    q = torch.randn(64, 32, generator=gen)
    e = torch.randn(64, 32, generator=gen)
    e[:8] = -q[:8] * 1.3 + 1e-3 * torch.randn(8, 32, generator=gen)  # nearly antiparallel rows
    u = 1.0 / e.norm(dim=-1, keepdim=True).double()
    v = 1.0 / q.norm(dim=-1, keepdim=True).double()
    cos = torch.nn.functional.cosine_similarity(e.double(), q.double(), dim=-1).unsqueeze(-1)
    s_sq = (2.0 + 2.0 * cos.float().double()).clamp_min(0)  # as if from rounded dot products
    rows = _recompute_near_antiparallel(e, q, u, v, s_sq, rows_only=True)
    masked = _recompute_near_antiparallel(e, q, u, v, s_sq, rows_only=False)
    assert torch.equal(rows, masked)
    near = (0.5 * s_sq < NEAR_ANTIPARALLEL).squeeze(-1)
    assert int(near.sum()) == 8 and torch.equal(rows[~near], s_sq[~near])
    exact = (e.double() * u + q.double() * v).norm(dim=-1, keepdim=True).square()
    torch.testing.assert_close(rows[near], exact[near], rtol=1e-3, atol=0)  # float32 vectors: ~1e-4
    assert ((s_sq[near] - exact[near]).abs() / exact[near]).max() > 1e-2  # the cancelled form was off


def test_noscale_jacobian_is_orthogonal_and_clamp_bounds_the_norm():
    e, q = generic_pairs(16, 32)
    for i in range(4):
        J = torch.autograd.functional.jacobian(lambda x: rotation_trick(x, q[i], rescale=False), e[i])
        assert abs(torch.linalg.matrix_norm(J, ord=2).item() - 1.0) < 1e-9
    for lam in (0.05, 20.0):
        qi = q[0] / q[0].norm() * e[0].norm() * lam
        J = torch.autograd.functional.jacobian(lambda x: rotation_trick(x, qi, scale_clamp=(0.5, 2.0)), e[0])
        norm = torch.linalg.matrix_norm(J, ord=2).item()
        assert 0.5 - 1e-9 <= norm <= 2.0 + 1e-9
        assert abs(norm - min(max(lam, 0.5), 2.0)) < 1e-9


def test_no_gradient_reaches_q():
    e, q = generic_pairs(32, 16, dtype=torch.float32)
    q = q.clone().requires_grad_(True)
    for name in ESTIMATORS:
        out = apply_estimator(name, e.clone().requires_grad_(True), q)
        out.sum().backward()
        assert q.grad is None


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="same shape"):
        rotation_trick(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="unknown estimator"):
        apply_estimator("gumbel", torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="rescale"):
        rotation_trick(torch.randn(2, 3), torch.randn(2, 3), rescale=False, scale_clamp=(0.5, 2))


# ---------------------------------------------------------------------------------------------- GRIT estimators
# The formula is the project's reading of the GRIT-VQ abstract (arXiv 2602.01140; see the estimators module):
# y = e + ρ(δ)·sg(u), δ = ‖q − e‖, u = (q − e)/δ, ρ(δ) = τ‖e‖·tanh(δ/(τ‖e‖)); "grit": G = I − ρ′uuᵀ,
# "grit_rotation": G = λ_y·R(y→q)·(I − ρ′uuᵀ). helpers.grit_reference builds G independently of the library.

GRIT = ["grit", "grit_rotation"]


@pytest.mark.parametrize("name", GRIT)
@pytest.mark.parametrize("tau", [0.25, 1.0, 4.0, float("inf")])
@pytest.mark.parametrize("d", [8, 64, 256])
def test_grit_jacobian_is_the_documented_matrix_fp64(name, tau, d):
    e, q = generic_pairs(32, d, seed=d)
    for i in range(6):
        J = torch.autograd.functional.jacobian(lambda x: apply_estimator(name, x, q[i], grit_radius=tau), e[i])
        G = grit_reference(e[i], q[i], tau, rotate=name == "grit_rotation")
        assert torch.allclose(J, G, atol=1e-12, rtol=0), (i, (J - G).abs().max().item())


@pytest.mark.parametrize("name", GRIT)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_grit_gradient_matches_the_explicit_matrix(name, dtype, tol):
    # the default radius (τ = 1) is the one used when none is given
    e64, q64 = generic_pairs(256, 64, seed=5)
    g64 = torch.randn_like(e64)
    e, q, g = e64.to(dtype), q64.to(dtype), g64.to(dtype)
    out, grad = grad_of(lambda a, b: apply_estimator(name, a, b), e, q, g)
    assert torch.equal(out, q)
    for i in range(e64.shape[0]):
        expected = grit_reference(e[i], q[i], 1.0, rotate=name == "grit_rotation").T @ g64[i]
        rel = (grad[i].double() - expected).norm() / expected.norm()
        assert rel <= tol, (i, rel.item())


@pytest.mark.parametrize("name", GRIT)
def test_grit_gradient_with_bf16_inputs_fp32_maths(name):
    e64, q64 = generic_pairs(128, 64, seed=6)
    g64 = torch.randn_like(e64)
    e, q, g = (t.to(torch.bfloat16) for t in (e64, q64, g64))
    out, grad = grad_of(lambda a, b: apply_estimator(name, a, b, grit_radius=0.5), e, q, g)
    assert out.dtype == torch.bfloat16 and torch.equal(out, q)
    for i in range(e.shape[0]):
        expected = grit_reference(e[i], q[i], 0.5, rotate=name == "grit_rotation").T @ g[i].double()
        assert (grad[i].double() - expected).norm() / expected.norm() <= 1e-2


def test_grit_limits_are_ste_diveq_and_the_rotation_trick():
    # τ → 0: grit → STE and grit_rotation → the rotation trick; τ = ∞: both → DiVeQ's I − uuᵀ
    e, q = generic_pairs(64, 32, seed=7)
    g = torch.randn_like(e)
    u = (q - e) / (q - e).norm(dim=-1, keepdim=True)
    diveq = g - (u * g).sum(-1, keepdim=True) * u
    for name in GRIT:
        _, grad = grad_of(lambda a, b: apply_estimator(name, a, b, grit_radius=float("inf")), e, q, g)
        assert torch.allclose(grad, diveq, atol=1e-10, rtol=0), name
    _, grad = grad_of(lambda a, b: apply_estimator("grit", a, b, grit_radius=1e-9), e, q, g)
    assert torch.allclose(grad, g, atol=1e-12, rtol=0)
    _, grad = grad_of(lambda a, b: apply_estimator("grit_rotation", a, b, grit_radius=1e-9), e, q, g)
    _, rot = grad_of(rotation_trick, e, q, g)
    assert torch.allclose(grad, rot, atol=1e-7, rtol=0)
    # in between, the radius step shrinks grit_rotation's rotation: y lies on the segment from e to q
    _, grad = grad_of(lambda a, b: apply_estimator("grit_rotation", a, b), e, q, g)
    assert not torch.allclose(grad, rot, atol=1e-3) and not torch.allclose(grad, diveq, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", GRIT)
def test_grit_degenerate_inputs_no_nan_exact_forward_and_guards(dtype, name):
    e, q = degenerate_cases(dtype)
    e = torch.cat([e, q[3:4] * 1.3])  # row 6 below: e = q exactly (no quantization direction)
    q = torch.cat([q, q[3:4] * 1.3])
    g = torch.randn_like(e)
    out, grad = grad_of(lambda a, b: apply_estimator(name, a, b), e, q, g)
    assert torch.equal(out, q)
    assert torch.isfinite(grad).all()
    for row in (0, 1):  # e = 0, ‖e‖ ≈ 1e-7: no radius step, and the rotation trick's guard: exactly g
        assert torch.equal(grad[row], g[row]), row
    if name == "grit":
        assert torch.equal(grad[6], g[6])  # e = q: exactly the STE
    else:
        assert torch.allclose(grad[6], g[6], atol=1e-6, rtol=1e-6)  # rotation trick of e onto itself: I
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for row in (2, 3, 4, 5):  # q = 0, exactly and nearly antiparallel: the documented G
        expected = grit_reference(e[row], q[row], 1.0, rotate=name == "grit_rotation").T @ g[row].double()
        err = (grad[row].double() - expected).norm()
        assert err <= tol * max(expected.norm().item(), g[row].double().norm().item()), (row, err.item())
    if name == "grit_rotation":
        assert torch.equal(grad[2], torch.zeros_like(grad[2]))  # q = 0 → λ = 0 (the rotation trick's behaviour)


@pytest.mark.parametrize("name", GRIT)
def test_grit_gap_guard_gives_no_radius_step_within_1e_6_of_the_code(name):
    # ‖q − e‖ < 1e-6·‖e‖: the latent is its code to float32 precision, no quantization direction: STE (grit) /
    # the rotation trick (grit_rotation); just outside the band, the documented G
    e = torch.randn(2, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    step = torch.randn(2, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    step = step / step.norm(dim=-1, keepdim=True) * e.norm(dim=-1, keepdim=True)
    q = e + step * torch.tensor([[3e-7], [3e-6]], dtype=torch.float64)
    g = torch.randn_like(e)
    _, grad = grad_of(lambda a, b: apply_estimator(name, a, b), e, q, g)
    inside = g[0] if name == "grit" else grad_of(rotation_trick, e[:1], q[:1], g[:1])[1][0]
    assert torch.allclose(grad[0], inside, atol=1e-12, rtol=0)
    outside = grit_reference(e[1], q[1], 1.0, rotate=name == "grit_rotation").T @ g[1]
    assert torch.allclose(grad[1], outside, atol=1e-9, rtol=0)
    assert not torch.allclose(grad[1], g[1], atol=1e-2)  # ρ′ ≈ 1 there: the along-u component is gone


def test_grit_radius_must_be_positive():
    for bad in (0.0, -1.0, float("nan")):
        for name in GRIT:
            with pytest.raises(ValueError, match="grit_radius"):
                apply_estimator(name, torch.randn(2, 3), torch.randn(2, 3), grit_radius=bad)
