"""verify.rules.tangential_cfg: TCFG (Kwon et al. 2025), CFG with the unconditional prediction projected on the first
right singular vector of the stacked pair.

* the rule against an independent float64 computation through ``torch.linalg.svd`` of the 2 x F matrix (first row of
  V^T, <u, v1> v1, then CFG), at random worlds, times, points and scales, in every space (conversions with
  :mod:`toy_models.parametrization` only), at the rule's ``combine`` and end to end in eps;
* the exact reductions: g = 1 gives c bit for bit; u parallel to c (u = k c, u = 0, c = 0) gives CFG; one feature
  gives CFG bit for bit; equal singular values give CFG (the documented convention); the tangential part is removed
  (c = 2 e1, u = e2 gives g c, not CFG);
* invariances (power-of-two scaling, sign), degenerate and huge rows, per-sample independence, [B, C, H, W] inputs
  (every feature axis), float32 in and out;
* diffusers' ``normalized_guidance`` (float32 SVD) agrees to its float32 bound, and its degenerate-row behaviour is
  what the class docstring says;
* parameter validation and the registry.

Tolerances (docs/tolerances.md, source 1). Per row, with sigma_1 >= sigma_2 the singular values and h = sigma_1^2 -
sigma_2^2 the gap: the rule's Gram entries err by at most gamma_F times their terms, ||dG||_2 <= 4 gamma_F
sigma_1^2, which turns the eigenvector a (hence v1) by at most 2 ||dG|| / h (Davis-Kahan, factor 2 for a perturbation
not small against the gap): 8 gamma_F sigma_1^2 / h. LAPACK's SVD is backward stable, ||dM|| <= gamma_{F+2}
sigma_1, and v1 is an eigenvector of M^T M perturbed by at most 2 sigma_1 ||dM|| + ||dM||^2, against the same gap: at
most 6 gamma_{F+2} sigma_1^2 / h. Both: theta <= 14 gamma_{F+2} sigma_1^2 / h; the projection <u, v1> v1 moves by at
most 2 theta ||u||. Add the roundings of the projection (F + 4: the inner product, the coefficients, the sum) and of
the combination (lerp, 3), each for two implementations: per entry
|1 - g| (28 gamma_{F+2} sigma_1^2 / h + 2 gamma_{F+4}) ||u|| + 2 gamma_4 (|g| |c| + |1 - g| ||u||)
(||P u|| <= ||u||).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from rule_space_checks import check_in_every_space, space_cases

from toy_models import AnalyticDenoiser, get_world
from verify import rules
from verify.rules import GuidedDenoiser
from verify.rules.cfg import cfg
from verify.rules.tangential_cfg import TangentialCFG, projection_coefficients, tangential_cfg, tangential_projection
from verify.tolerances import gamma

F64, F32 = torch.float64, torch.float32
SPACES = ("eps", "x0", "v", "velocity")


# ------------------------------------------------------------------------------------------------------------
# The reference: the SVD of the stacked predictions, in float64
# ------------------------------------------------------------------------------------------------------------
def svd_reference(u: torch.Tensor, c: torch.Tensor, g: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(guided, P u, singular values [N, 2 or 1]) for [N, F] float64 rows: M = [c; u], v1 the first row of V^T,
    P u = <u, v1> v1, guided = P u + g (c - P u)."""
    m = torch.stack([c, u], dim=1)
    _, s, vh = torch.linalg.svd(m, full_matrices=False)
    v1 = vh[:, 0, :]
    pu = (u * v1).sum(dim=1, keepdim=True) * v1
    return pu + g * (c - pu), pu, s


def tolerance(u: torch.Tensor, c: torch.Tensor, g: float, s: torch.Tensor) -> torch.Tensor:
    """The module docstring's bound per entry, [N, F]; sigma_2 = 0 when F = 1."""
    f = u.shape[1]
    s1 = s[:, :1]
    s2 = s[:, 1:2] if s.shape[1] > 1 else torch.zeros_like(s1)
    gap = s1 * s1 - s2 * s2
    ratio = torch.where(gap > 0, s1 * s1 / torch.where(gap > 0, gap, torch.ones_like(gap)),
                        torch.full_like(gap, float("inf")))
    nu = torch.linalg.vector_norm(u, dim=1, keepdim=True)
    turn = 28 * gamma(f + 2, F64) * ratio + 2 * gamma(f + 4, F64)
    turn = torch.where(nu > 0, turn * nu, torch.zeros_like(nu))
    return abs(1 - g) * turn + 2 * gamma(4, F64) * (abs(g) * c.abs() + abs(1 - g) * nu)


@given(space_cases())
def test_matches_the_svd_in_every_space(case):
    def formula(u, c, g):
        ref, _, s = svd_reference(u, c, g)
        return ref.numpy(), tolerance(u, c, g, s).numpy()

    check_in_every_space("tangential_cfg", {}, case, formula)


rows = hnp.arrays(np.float64, (6, 5), elements=st.floats(-10, 10)).filter(
    lambda a: bool((np.linalg.norm(a, axis=1) > 1e-3).all()))


@given(rows, rows, st.floats(-2.0, 20.0))
def test_generic_rows_match_the_svd(u_np, c_np, g):
    u, c = torch.from_numpy(u_np), torch.from_numpy(c_np)
    ref, pu_ref, s = svd_reference(u, c, g)
    got = tangential_cfg(u, c, g)
    assert bool(((got - ref).abs() <= tolerance(u, c, g, s)).all())
    pu_tol = tolerance(u, c, 0.0, s)  # g = 0 leaves exactly the projection's terms
    assert bool(((tangential_projection(u, c) - pu_ref).abs() <= pu_tol).all())


# ------------------------------------------------------------------------------------------------------------
# Exact reductions
# ------------------------------------------------------------------------------------------------------------
@given(rows, st.floats(-2.0, 20.0))
def test_parallel_predictions_give_cfg(c_np, g):
    """u = k c (k a power of two or 0, so u is exactly parallel), and c = 0: M has rank 1, P u = u, TCFG = CFG. The
    coefficients k/(1 + k^2) and k^2/(1 + k^2) err by gamma_{F+10} relative (Gram, hypot, quotients), the
    projection's sum and the two lerps add gamma_6: gamma_{F+16} (|g| |c| + 2 |1 - g| (|c| + |u|))."""
    c = torch.from_numpy(c_np)
    f = c.shape[1]
    for k in (0.0, 0.5, -2.0, 4.0):
        u = k * c
        tol = gamma(f + 16, F64) * (abs(g) * c.abs() + 2 * abs(1 - g) * (c.abs() + u.abs()))
        assert bool(((tangential_cfg(u, c, g) - cfg(u, c, guidance_scale=g)).abs() <= tol).all()), k
    zero = torch.zeros_like(c)
    assert torch.equal(tangential_projection(c, zero), c)  # c = 0: k_c = 0, k_u = 1 exactly
    assert torch.equal(tangential_projection(zero, c), zero)
    assert torch.equal(tangential_cfg(c, zero, g), cfg(c, zero, guidance_scale=g))


@given(rows, rows)
def test_unit_guidance_scale_gives_the_conditional_prediction(u_np, c_np):
    u, c = torch.from_numpy(u_np), torch.from_numpy(c_np)
    assert torch.equal(tangential_cfg(u, c, 1.0), c)
    assert torch.equal(rules.get("tangential_cfg", guidance_scale=1.0).combine({"uncond": u, "cond": c}, None), c)


def test_one_feature_is_cfg_bit_for_bit():
    gen = torch.Generator().manual_seed(1)
    u, c = torch.randn(9, 1, dtype=F64, generator=gen), torch.randn(9, 1, dtype=F64, generator=gen)
    assert torch.equal(tangential_cfg(u, c, 6.0), cfg(u, c, guidance_scale=6.0))
    assert torch.equal(tangential_projection(u, c), u)
    rule = rules.get("tangential_cfg", guidance_scale=6.0)
    den = AnalyticDenoiser(get_world("bimodal1d"), "vp-linear")
    x = torch.randn(5, 1, dtype=F64, generator=gen)
    want = rules.get("cfg", guidance_scale=6.0).guide(den, 0).eps(x, 0.4)
    assert torch.equal(rule.guide(den, 0).eps(x, 0.4), want)


def test_equal_singular_values_and_the_tangential_part():
    """c perpendicular to u with equal norms (exact in binary): h = 0, the projector on the whole top subspace keeps u
    and the row is CFG bit for bit. c = 2 e1, u = e2 (sigma_1 = 2 > sigma_2 = 1): v1 = e1, the whole of u is
    tangential, P u = 0 and TCFG is g c (to the lerp's gamma_3), far from CFG's (1 - g) u + g c."""
    c = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, 0.0]], dtype=F64)
    u = torch.tensor([[4.0, -3.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=F64)
    k_c, k_u = projection_coefficients(u, c)
    assert k_c.flatten().tolist() == [0.0, 0.0, 0.0] and k_u.flatten().tolist() == [1.0, 1.0, 0.0]
    out = tangential_cfg(u, c, 5.0)
    assert torch.isfinite(out).all()
    assert torch.equal(out[:2], cfg(u[:2], c[:2], guidance_scale=5.0))
    assert torch.allclose(out[2], 5.0 * c[2], rtol=gamma(3, F64), atol=0)
    assert float((out[2] - cfg(u[2:], c[2:], guidance_scale=5.0)[0]).abs().max()) == 4.0  # (1 - g) u differs


def test_coefficients_keep_their_digits_when_u_is_nearly_tangential():
    """c = (2, 0), u = (eps, 1): a_2 = sin(theta), 2 theta = atan2(2q, p - r) ~ 4 eps / 3, so k_u = a_2^2 ~ 4.4e-19
    at eps = 1e-9, far below the rounding of h = sqrt(4 q^2 + delta^2), whose naive form (h - delta) / (2 h) gives
    0 (all digits lost). Against sin^2(atan2(2q, delta) / 2) and sin(2 theta) / 2 in float64 (a few roundings of
    well-conditioned functions each; gamma_8 relative for the pair of routes)."""
    for eps in (1e-9, 1e-3, 0.3):
        c = torch.tensor([[2.0, 0.0]], dtype=F64)
        u = torch.tensor([[eps, 1.0]], dtype=F64)
        p, q, r = 4.0, 2.0 * eps, eps * eps + 1.0
        theta = 0.5 * np.arctan2(2.0 * q, p - r)
        k_c, k_u = projection_coefficients(u, c)
        assert abs(float(k_u) - np.sin(theta) ** 2) <= gamma(8, F64) * np.sin(theta) ** 2, eps
        assert abs(float(k_c) - 0.5 * np.sin(2 * theta)) <= gamma(8, F64) * 0.5 * np.sin(2 * theta), eps


def test_invariances_and_huge_rows():
    """The coefficients are computed after an exact power-of-two scaling of each row: scaling both predictions by
    2^k (k = +-900: squares far out of range) scales the result by 2^k bit for bit, and flipping both signs flips it;
    a result that overflows float64 is refused naming preds."""
    gen = torch.Generator().manual_seed(2)
    u, c = torch.randn(5, 4, dtype=F64, generator=gen), torch.randn(5, 4, dtype=F64, generator=gen)
    out = tangential_cfg(u, c, 3.0)
    for k in (900, -900):
        assert torch.equal(tangential_cfg(torch.ldexp(u, torch.tensor(k)), torch.ldexp(c, torch.tensor(k)), 3.0),
                           torch.ldexp(out, torch.tensor(k)))
    assert torch.equal(tangential_cfg(-u, -c, 3.0), -out)
    big = torch.finfo(F64).max / 2
    huge_u, huge_c = torch.tensor([[-big, 0.0]], dtype=F64), torch.tensor([[big, big]], dtype=F64)
    assert torch.isfinite(tangential_cfg(huge_u, huge_c, 1.01)).all()
    with pytest.raises(ValueError, match=r"^preds:"):
        rules.get("tangential_cfg", guidance_scale=8.0).combine({"uncond": huge_u, "cond": huge_c}, None)


def test_samples_are_independent():
    gen = torch.Generator().manual_seed(3)
    u, c = torch.randn(6, 5, dtype=F64, generator=gen), torch.randn(6, 5, dtype=F64, generator=gen)
    out = tangential_cfg(u, c, 6.0)
    for i in range(6):
        assert torch.equal(out[i:i + 1], tangential_cfg(u[i:i + 1], c[i:i + 1], 6.0))
    u2, c2 = u.clone(), c.clone()
    u2[0] *= 1e6
    c2[0] = 0.0
    assert torch.equal(tangential_cfg(u2, c2, 6.0)[1:], out[1:])


def test_image_shaped_inputs_use_every_feature_axis():
    gen = torch.Generator().manual_seed(4)
    u, c = torch.randn(3, 2, 4, 4, dtype=F64, generator=gen), torch.randn(3, 2, 4, 4, dtype=F64, generator=gen)
    out = tangential_cfg(u, c, 5.0)
    assert out.shape == u.shape
    uf, cf = u.reshape(3, -1), c.reshape(3, -1)
    flat = tangential_cfg(uf, cf, 5.0)
    assert torch.equal(out.reshape(3, -1), flat)
    ref, _, s = svd_reference(uf, cf, 5.0)
    assert bool(((flat - ref).abs() <= tolerance(uf, cf, 5.0, s)).all())
    per_row = tangential_cfg(u.reshape(-1, 4), c.reshape(-1, 4), 5.0).reshape(u.shape)
    assert float((per_row - out).abs().max()) > 1e-3  # an SVD per image row is another rule
    assert torch.equal(rules.get("tangential_cfg", guidance_scale=5.0).combine({"uncond": u, "cond": c}, None), out)


def test_float32_stays_float32():
    """float32 in, float32 out; against the float64 evaluation of the same inputs: the coefficients rounded to
    float32 (u32 each on |k_c| |c| + |k_u| |u| <= |c| + |u|), the projection's sum and the lerp in float32 (gamma_4
    of float32) on |g| |c| + |1 - g| (|c| + |u|), plus the float64 evaluation's own (negligible) error."""
    gen = torch.Generator().manual_seed(5)
    u32, c32 = torch.randn(8, 6, dtype=F32, generator=gen), torch.randn(8, 6, dtype=F32, generator=gen)
    out = tangential_cfg(u32, c32, 4.0)
    assert out.dtype == F32
    assert torch.equal(rules.get("tangential_cfg", guidance_scale=4.0).combine({"uncond": u32, "cond": c32}, None),
                       out)
    u, c = u32.double(), c32.double()
    ref, _, s = svd_reference(u, c, 4.0)
    tol = 2 * gamma(6, F32) * (4.0 * c.abs() + 3.0 * (c.abs() + u.abs())) + tolerance(u, c, 4.0, s)
    assert bool(((out.double() - ref).abs() <= tol).all())


# ------------------------------------------------------------------------------------------------------------
# diffusers
# ------------------------------------------------------------------------------------------------------------
def test_diffusers_normalized_guidance():
    """diffusers computes the same rule through a float32 SVD: on generic [B, C, H, W] rows it agrees to the module
    bound with float32's gamma for its part; at equal singular values it keeps LAPACK's first vector (e1 for both
    orders of e1, e2 in 2-D), and with one feature it raises IndexError (the class docstring's claims)."""
    tcfg = pytest.importorskip("diffusers.guiders.tangential_classifier_free_guidance")
    gen = torch.Generator().manual_seed(6)
    u, c = torch.randn(4, 2, 3, 3, dtype=F64, generator=gen), torch.randn(4, 2, 3, 3, dtype=F64, generator=gen)
    theirs = tcfg.normalized_guidance(c, u, 7.5).reshape(4, -1)
    uf, cf = u.reshape(4, -1), c.reshape(4, -1)
    ours = tangential_cfg(uf, cf, 7.5)
    _, _, s = svd_reference(uf, cf, 7.5)
    f = uf.shape[1]
    s1, s2 = s[:, :1], s[:, 1:2]
    nu = torch.linalg.vector_norm(uf, dim=1, keepdim=True)
    # float32: the cast of the inputs (u32) joins the SVD's backward error, gamma_{F+3}; the product with V^T and
    # the combination in float32 add gamma_{F+6} on |g| |c| + |1 - g| ||u||
    bound32 = 6.5 * (28 * gamma(f + 3, F32) * s1 * s1 / (s1 * s1 - s2 * s2) * nu) \
        + 2 * gamma(f + 6, F32) * (7.5 * cf.abs() + 6.5 * nu)
    assert bool(((theirs - ours).abs() <= bound32 + tolerance(uf, cf, 7.5, s)).all())
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert torch.equal(tcfg.normalized_guidance(e1, e2, 5.0), 5.0 * e1)  # cond = e1: P u = 0
    assert torch.equal(tcfg.normalized_guidance(e2, e1, 5.0), cfg(e1, e2, guidance_scale=5.0))  # P u = u
    assert torch.equal(tangential_cfg(e2, e1, 5.0), cfg(e2, e1, guidance_scale=5.0))  # here: CFG for both
    with pytest.raises(IndexError):
        tcfg.normalized_guidance(torch.ones(2, 1), torch.zeros(2, 1), 5.0)


# ------------------------------------------------------------------------------------------------------------
# Parameters and the registry
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, name", [
    ({}, ValueError, "w, guidance_scale"),
    ({"w": 1.0, "guidance_scale": 2.0}, ValueError, "w, guidance_scale"),
    ({"guidance_scale": float("nan")}, ValueError, "guidance_scale"),
    ({"w": [1.0, 2.0]}, ValueError, "w"),
    ({"guidance_scale": True}, TypeError, "guidance_scale"),
    ({"guidance_scale": 7.5, "space": "score"}, ValueError, "space"),
    ({"guidance_scale": 7.5, "space": None}, ValueError, "space"),
])
def test_bad_parameters_are_refused(kwargs, error, name):
    with pytest.raises(error, match=rf"^{name}:"):
        rules.get("tangential_cfg", **kwargs)


def test_bad_predictions_are_refused():
    rule = rules.get("tangential_cfg", guidance_scale=7.5)
    x = torch.zeros(2, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"^preds\['cond'\]:"):
        rule.combine({"uncond": x, "cond": torch.zeros(3, 3, dtype=F64)}, None)
    with pytest.raises(TypeError, match=r"^preds\['cond'\]:"):
        rule.combine({"uncond": x, "cond": x.float()}, None)
    with pytest.raises(ValueError, match=r"^preds\['cond'\]:"):
        rule.combine({"uncond": x, "cond": torch.full((2, 3), float("inf"), dtype=F64)}, None)


def test_registry():
    assert "tangential_cfg" in rules.names()
    rule = rules.get("tangential_cfg", w=6.5)
    assert isinstance(rule, TangentialCFG) and rules.rule_class("tangential_cfg") is TangentialCFG
    assert rule.guidance_scale == 7.5 and rule.space == "eps" and rule.branches == ("uncond", "cond")
    assert not rule.stateful and rule.renoise_branch is None
    assert rule.linear_weights is None and "2503.18137" in TangentialCFG.reference
    assert rules.get("tangential_cfg", guidance_scale=1.0).linear_weights == {"cond": 1.0, "uncond": 0.0}
    assert rule.describe() == "tangential_cfg(guidance_scale=7.5, space=eps)"
    guided = rule.guide(AnalyticDenoiser(get_world("ring2d"), "vp-linear"), 0)
    assert isinstance(guided, GuidedDenoiser)
    x = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(7))
    assert torch.isfinite(guided.eps(x, 0.5)).all()
