"""verify.rules.magnitude_aware: MAMBO-G (Zhu et al. 2025), CFG damped per sample by the update-to-prediction ratio.

* the rule against a hand-written numpy reference of the formula, r = ||c - u|| / ||u||, g_eff = 1 + (g - 1)
  exp(-alpha r), u + g_eff (c - u), at random worlds, times, points and parameters, in every space (the reference
  converts with :mod:`toy_models.parametrization` only), at the rule's ``combine`` and end to end in eps;
* the exact reductions: g = 1 gives c and alpha = 0 gives CFG, bit for bit; alpha -> 0 tends to CFG within the
  first-order bound |g - 1| alpha r |c - u|; c = u gives c; the damping is monotone in alpha;
* degenerate rows (u = 0, both 0, tiny and huge rows) give no NaN; per-sample independence; [B, C, H, W] inputs
  take the norms over every feature axis; float32 stays float32;
* diffusers' ``mambo_guidance`` agrees off degenerate rows, and its degenerate-row behaviour is what the class
  docstring says;
* parameter validation and the registry.

Tolerances (docs/tolerances.md, source 1): each float64 evaluation errs from the exact value by gamma_n (Higham) times
the sizes of its terms. The ratio r: the difference (1, exact relative rounding of each entry), a norm over F features
(F + 2, for each of the two norms), the quotient (1): relative error gamma_{2F+6}; g_eff: the exponential and the
affine map add 4 roundings, and the error of r enters multiplied by alpha r; the combination (lerp) 3. For two
implementations together n = 4F + 16, applied to the terms |g - 1| e^{-alpha r} (1 + alpha r) |c - u| (g_eff's error
times the difference) and |u| + |c| + |g_eff| |c - u| (the combination's own rounding).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from rule_space_checks import check_in_every_space, space_cases
from test_rule_apg import row_norm  # parametrization-only conversions

from toy_models import AnalyticDenoiser, get_world
from toy_models.strategies import log_uniform
from verify import rules
from verify.rules import GuidedDenoiser
from verify.rules.cfg import cfg
from verify.rules.magnitude_aware import MagnitudeAware, effective_scale, magnitude_aware, magnitude_ratio
from verify.tolerances import gamma

F64, F32 = torch.float64, torch.float32
SPACES = ("velocity", "eps", "x0", "v")


# ------------------------------------------------------------------------------------------------------------
# The reference, written here in numpy
# ------------------------------------------------------------------------------------------------------------
def reference(u: np.ndarray, c: np.ndarray, g: float, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(guided, g_eff) per row of [N, F] arrays: r = ||c - u|| / ||u|| (row norms scaled by their largest entry),
    g_eff = 1 + (g - 1) exp(-alpha r) row by row with math.exp, guided = u + g_eff (c - u); r = inf where u = 0."""
    d = c - u
    nu = row_norm(u)[:, 0]
    nd = row_norm(d)[:, 0]
    g_eff = np.empty(len(u))
    for i in range(len(u)):
        r = nd[i] / nu[i] if nu[i] > 0 else math.inf
        g_eff[i] = 1.0 + (g - 1.0) * (math.exp(-alpha * r) if alpha > 0 else 1.0)
    return u + g_eff[:, None] * d, g_eff


def tolerance(u: np.ndarray, c: np.ndarray, g: float, alpha: float) -> np.ndarray:
    """gamma_{4F+16} (|g - 1| e^{-alpha r} (1 + alpha r) |c - u| + |u| + |c| + |g_eff| |c - u|) per entry (module
    docstring); r and g_eff from the reference."""
    f = u.shape[1]
    d = np.abs(c - u)
    nu, nd = row_norm(u), row_norm(c - u)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(nu > 0, nd / np.where(nu > 0, nu, 1.0), np.inf)
        damp = np.where(np.isfinite(r), np.exp(-alpha * np.where(np.isfinite(r), r, 0.0)) * (1.0 + alpha * r), 0.0)
    _, g_eff = reference(u, c, g, alpha)
    return gamma(4 * f + 16, F64) * (abs(g - 1.0) * damp * d + np.abs(u) + np.abs(c) + np.abs(g_eff)[:, None] * d)


@given(space_cases(), st.one_of(st.just(8.0), log_uniform(1e-3, 50.0)))
def test_matches_the_formula_in_every_space(case, alpha):
    def formula(u, c, g):
        return reference(u.numpy(), c.numpy(), g, alpha)[0], tolerance(u.numpy(), c.numpy(), g, alpha)

    check_in_every_space("magnitude_aware", {"alpha": alpha}, case, formula)


# ------------------------------------------------------------------------------------------------------------
# Exact reductions
# ------------------------------------------------------------------------------------------------------------
vectors = hnp.arrays(np.float64, (5, 3), elements=st.floats(-10, 10)).filter(
    lambda a: bool((np.linalg.norm(a, axis=1) > 1e-3).all()))


@given(vectors, vectors, st.floats(-2.0, 20.0), log_uniform(1e-2, 20.0))
def test_exact_reductions(u_np, c_np, g, alpha):
    u, c = torch.from_numpy(u_np), torch.from_numpy(c_np)
    # g = 1: every g_eff is 1, lerp at weight 1 returns c bit for bit (the function and the rule)
    assert torch.equal(magnitude_aware(u, c, 1.0, alpha), c)
    assert torch.equal(rules.get("magnitude_aware", guidance_scale=1.0, alpha=alpha).combine(
        {"uncond": u, "cond": c}, None), c)
    # alpha = 0: CFG's own formula, bit for bit
    rule0 = rules.get("magnitude_aware", guidance_scale=g, alpha=0.0)
    assert torch.equal(rule0.combine({"uncond": u, "cond": c}, None), cfg(u, c, guidance_scale=g))
    assert torch.equal(magnitude_aware(u, c, g, 0.0), cfg(u, c, guidance_scale=g))
    # c = u: r = 0, the difference is 0, the output is c bit for bit
    assert torch.equal(magnitude_aware(u, u.clone(), g, alpha), u)


@given(vectors, vectors, st.floats(-2.0, 20.0))
def test_small_alpha_tends_to_cfg(u_np, c_np, g):
    """|MAMBO-G - CFG| = |g - 1| (1 - e^{-alpha r}) |c - u| <= |g - 1| alpha r |c - u| per entry, plus the rounding
    of both (tolerance() for MAMBO-G, gamma_3 (|u| + |g| |c - u|) for CFG's lerp): a bound linear in alpha, so
    the limit alpha -> 0 is CFG; and the gap is not zero for alpha > 0 where g != 1 and r > 0."""
    u, c = torch.from_numpy(u_np), torch.from_numpy(c_np)
    want = cfg(u, c, guidance_scale=g).numpy()
    r = (row_norm(c_np - u_np) / row_norm(u_np))
    d = np.abs(c_np - u_np)
    for alpha in (1e-2, 1e-5, 1e-8):
        got = magnitude_aware(u, c, g, alpha).numpy()
        bound = abs(g - 1.0) * alpha * r * d + tolerance(u_np, c_np, g, alpha) \
            + gamma(3, F64) * (np.abs(u_np) + abs(g) * d)
        assert np.all(np.abs(got - want) <= bound), alpha


def test_damping_is_monotone_in_alpha_and_between_one_and_g():
    gen = torch.Generator().manual_seed(3)
    u, c = torch.randn(64, 4, dtype=F64, generator=gen), torch.randn(64, 4, dtype=F64, generator=gen)
    r = magnitude_ratio(u, c)
    previous = torch.full_like(r, 7.0)
    for alpha in (0.1, 1.0, 8.0, 50.0):
        g_eff = effective_scale(r, 7.0, alpha)
        assert bool(((g_eff >= 1.0) & (g_eff <= previous)).all())
        previous = g_eff
    assert float(previous.max()) < 1.5  # alpha = 50 damps these O(1) ratios almost to the conditional prediction


# ------------------------------------------------------------------------------------------------------------
# Degenerate rows, scaling, shapes, dtype
# ------------------------------------------------------------------------------------------------------------
def test_zero_unconditional_gives_the_conditional_prediction():
    u = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1e-300, 0.0], [3.0, 4.0]], dtype=F64)
    c = torch.tensor([[1.0, -2.0], [0.0, 0.0], [2.0, 5.0], [3.0, 4.0]], dtype=F64)
    r = magnitude_ratio(u, c)
    assert torch.isinf(r[:2]).all() and float(r[2]) > 1e299 and float(r[3]) == 0.0  # inf, never NaN
    out = magnitude_aware(u, c, 7.0, 8.0)
    assert torch.equal(out, c)  # u = 0: g_eff = 1; a 1e-300 row: e^{-8e300} = 0; c = u: c
    rule = rules.get("magnitude_aware", guidance_scale=7.0, alpha=8.0)
    assert torch.equal(rule.combine({"uncond": u, "cond": c}, None), c)
    # alpha = 0 at u = 0 is CFG, 7 c (diffusers: 0 * inf = NaN there)
    assert torch.equal(rules.get("magnitude_aware", guidance_scale=7.0, alpha=0.0).combine(
        {"uncond": u, "cond": c}, None)[0], 7.0 * c[0])


def test_ratio_of_tiny_and_huge_rows():
    """Power-of-two scaling: the ratio of rows of 1e-200 or 1e200 (whose squares underflow or overflow) is the ratio
    of the same rows at scale 1, to gamma_{2F+6} (module docstring) for each of the two."""
    u = torch.tensor([[3.0, 4.0], [1.0, 1.0]], dtype=F64)
    c = torch.tensor([[0.0, 0.0], [2.0, -1.0]], dtype=F64)
    base = magnitude_ratio(u, c)
    for scale in (1e-200, 1e200, 2.0**-1070):
        got = magnitude_ratio(scale * u, scale * c)
        assert torch.allclose(got, base, rtol=2 * gamma(2 * 2 + 6, F64), atol=0), scale
    assert torch.allclose(base, torch.tensor([[1.0], [5.0**0.5 / 2**0.5]], dtype=F64), rtol=gamma(10, F64), atol=0)
    big = torch.finfo(F64).max / 2
    out = magnitude_aware(torch.tensor([[big, 0.0]], dtype=F64), torch.tensor([[-big, 0.0]], dtype=F64), 1.2, 0.1)
    assert torch.isfinite(out).all()  # c - u overflows unscaled; r = 2, g_eff = 1 + 0.2 e^{-0.2} < 1.5
    with pytest.raises(ValueError, match=r"^preds:"):
        rules.get("magnitude_aware", guidance_scale=20.0, alpha=0.1).combine(
            {"uncond": torch.tensor([[big, 0.0]], dtype=F64), "cond": torch.tensor([[-big, 0.0]], dtype=F64)}, None)


def test_samples_are_independent():
    """Each row's result depends on that row alone: the batch equals the rows evaluated one by one, bit for bit, and
    scaling one row does not change the others."""
    gen = torch.Generator().manual_seed(5)
    u, c = torch.randn(6, 5, dtype=F64, generator=gen), torch.randn(6, 5, dtype=F64, generator=gen)
    out = magnitude_aware(u, c, 6.0, 3.0)
    for i in range(6):
        assert torch.equal(out[i:i + 1], magnitude_aware(u[i:i + 1], c[i:i + 1], 6.0, 3.0))
    u2, c2 = u.clone(), c.clone()
    u2[0] *= 1e6
    c2[0] *= -3.0
    assert torch.equal(magnitude_aware(u2, c2, 6.0, 3.0)[1:], out[1:])


def test_image_shaped_inputs_use_every_feature_axis():
    """[B, C, H, W]: the result is that of the flattened [B, C H W] rows, bit for bit, and agrees with the numpy
    reference on the flattened rows; a norm over one axis only would give another answer."""
    gen = torch.Generator().manual_seed(6)
    u, c = torch.randn(3, 2, 4, 4, dtype=F64, generator=gen), torch.randn(3, 2, 4, 4, dtype=F64, generator=gen)
    out = magnitude_aware(u, c, 5.0, 2.0)
    assert out.shape == u.shape
    flat = magnitude_aware(u.reshape(3, -1), c.reshape(3, -1), 5.0, 2.0)
    assert torch.equal(out.reshape(3, -1), flat)
    un, cn = u.reshape(3, -1).numpy(), c.reshape(3, -1).numpy()
    ref, _ = reference(un, cn, 5.0, 2.0)
    assert np.all(np.abs(flat.numpy() - ref) <= tolerance(un, cn, 5.0, 2.0))
    per_row_w = magnitude_aware(u.reshape(-1, 4), c.reshape(-1, 4), 5.0, 2.0).reshape(u.shape)
    assert float((per_row_w - out).abs().max()) > 1e-3
    rule = rules.get("magnitude_aware", guidance_scale=5.0, alpha=2.0)
    assert torch.equal(rule.combine({"uncond": u, "cond": c}, None), out)


def test_float32_stays_float32():
    """float32 inputs give float32 output; against the float64 evaluation of the same (exactly representable)
    inputs it errs by g_eff's rounding to float32 (u32 |g_eff| |c - u|) and the float32 lerp (gamma_3 of float32
    times |u| + |g_eff| |c - u|), with the float64 evaluation's own error negligible (tolerance() at float64)."""
    gen = torch.Generator().manual_seed(7)
    u32, c32 = torch.randn(8, 6, dtype=F32, generator=gen), torch.randn(8, 6, dtype=F32, generator=gen)
    out = magnitude_aware(u32, c32, 4.0, 1.5)
    assert out.dtype == F32
    rule_out = rules.get("magnitude_aware", guidance_scale=4.0, alpha=1.5, space="eps").combine(
        {"uncond": u32, "cond": c32}, None)
    assert rule_out.dtype == F32 and torch.equal(rule_out, out)
    u, c = u32.double(), c32.double()
    want = magnitude_aware(u, c, 4.0, 1.5)
    g_eff = effective_scale(magnitude_ratio(u, c), 4.0, 1.5)
    d = (c - u).abs()
    tol = gamma(4, F32) * (u.abs() + g_eff.abs() * d) + torch.from_numpy(tolerance(u.numpy(), c.numpy(), 4.0, 1.5))
    assert bool(((out.double() - want).abs() <= tol).all())


# ------------------------------------------------------------------------------------------------------------
# diffusers
# ------------------------------------------------------------------------------------------------------------
def test_diffusers_mambo_guidance_agrees_off_degenerate_rows():
    """diffusers' ``mambo_guidance`` (default formulation) in float64 is the same formula with unscaled norms: at
    O(1) inputs of shape [B, L, D] the two agree to tolerance(); at u = 0 = c it returns NaN where the rule returns
    0, and at alpha = 0 with u = 0 NaN where the rule returns CFG; with torch >= 2.x's ``torch.norm`` it refuses
    [B, C, H, W] (the class docstring's claims)."""
    mag = pytest.importorskip("diffusers.guiders.magnitude_aware_guidance")
    gen = torch.Generator().manual_seed(8)
    u, c = torch.randn(16, 2, 9, dtype=F64, generator=gen), torch.randn(16, 2, 9, dtype=F64, generator=gen)
    theirs = mag.mambo_guidance(c, u, 8.0, 2.5).reshape(16, -1).numpy()
    ours = magnitude_aware(u, c, 8.0, 2.5).reshape(16, -1).numpy()
    un, cn = u.reshape(16, -1).numpy(), c.reshape(16, -1).numpy()
    assert np.all(np.abs(theirs - ours) <= tolerance(un, cn, 8.0, 2.5))
    zero = torch.zeros(1, 3, dtype=F64)
    assert torch.isnan(mag.mambo_guidance(zero, zero, 8.0, 2.5)).all()
    assert torch.equal(magnitude_aware(zero, zero, 8.0, 2.5), zero)
    one = torch.tensor([[1.0, 2.0, 2.0]], dtype=F64)
    assert torch.isnan(mag.mambo_guidance(one, zero, 8.0, 0.0)).all()
    assert torch.equal(mag.mambo_guidance(one, zero, 8.0, 2.5), one)  # u = 0, c != 0: inf ratio, c (as here)
    # float32 rows of 3e19..4e19: diffusers' unscaled squares overflow, inf / inf = NaN; the rule gives the answer
    # of the same rows at scale 1 (the ratio is scale-invariant). Each float32 evaluation errs by gamma_4 (g_eff's
    # rounding and the lerp) on |u| + g_eff |c - u| <= |u| + |c| + 2 |c - u| (g_eff < 2 here), and the division by
    # 1e19 rounds the inputs by u32 relative: 4 gamma_4 on those terms covers both evaluations and the inputs
    u32, c32 = torch.tensor([[3e19, 4e19]], dtype=F32), torch.tensor([[1e19, 0.0]], dtype=F32)
    assert torch.isnan(mag.mambo_guidance(c32, u32, 5.0, 8.0)).all()
    scaled = magnitude_aware(u32 / 1e19, c32 / 1e19, 5.0, 8.0).double() * 1e19
    got = magnitude_aware(u32, c32, 5.0, 8.0).double()
    terms = (u32.abs() + c32.abs() + 2 * (c32 - u32).abs()).double()
    assert bool(((got - scaled).abs() <= 4 * gamma(4, F32) * terms).all())
    image = torch.ones(2, 2, 3, 3, dtype=F64)
    try:
        mag.mambo_guidance(image, 2 * image, 8.0, 2.5)
    except RuntimeError:
        pass  # torch.norm's default p="fro" takes at most two axes (the docstring's point (1))
    else:
        pytest.fail("diffusers' mambo_guidance now accepts [B, C, H, W]: update MagnitudeAware's docstring")


# ------------------------------------------------------------------------------------------------------------
# Parameters and the registry
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, name", [
    ({}, ValueError, "w, guidance_scale"),
    ({"w": 1.0, "guidance_scale": 2.0}, ValueError, "w, guidance_scale"),
    ({"guidance_scale": float("inf")}, ValueError, "guidance_scale"),
    ({"guidance_scale": "7"}, TypeError, "guidance_scale"),
    ({"guidance_scale": 7.0, "alpha": -1.0}, ValueError, "alpha"),
    ({"guidance_scale": 7.0, "alpha": float("nan")}, ValueError, "alpha"),
    ({"guidance_scale": 7.0, "alpha": float("inf")}, ValueError, "alpha"),
    ({"guidance_scale": 7.0, "alpha": True}, TypeError, "alpha"),
    ({"guidance_scale": 7.0, "alpha": None}, TypeError, "alpha"),
    ({"guidance_scale": 7.0, "space": "score"}, ValueError, "space"),
])
def test_bad_parameters_are_refused(kwargs, error, name):
    with pytest.raises(error, match=rf"^{name}:"):
        rules.get("magnitude_aware", **kwargs)


def test_bad_predictions_are_refused():
    rule = rules.get("magnitude_aware", guidance_scale=7.0)
    x = torch.zeros(2, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"^preds\['cond'\]:"):
        rule.combine({"uncond": x, "cond": torch.zeros(2, 4, dtype=F64)}, None)
    with pytest.raises(TypeError, match=r"^preds\['cond'\]:"):
        rule.combine({"uncond": x, "cond": x.float()}, None)
    with pytest.raises(ValueError, match=r"^preds\['uncond'\]:"):
        rule.combine({"uncond": torch.full((2, 3), float("nan"), dtype=F64), "cond": x}, None)


def test_registry():
    assert "magnitude_aware" in rules.names()
    rule = rules.get("magnitude_aware", w=6.0)
    assert isinstance(rule, MagnitudeAware) and rules.rule_class("magnitude_aware") is MagnitudeAware
    assert rule.guidance_scale == 7.0 and rule.alpha == 8.0 and rule.space == "velocity"
    assert rule.branches == ("uncond", "cond") and not rule.stateful and rule.renoise_branch is None
    assert rule.linear_weights is None and "2508.03442" in MagnitudeAware.reference
    assert rules.get("magnitude_aware", guidance_scale=7.5, alpha=0.0).linear_weights == {"cond": 7.5,
                                                                                           "uncond": -6.5}
    assert rules.get("magnitude_aware", guidance_scale=1.0).linear_weights == {"cond": 1.0, "uncond": 0.0}
    assert rule.describe() == "magnitude_aware(guidance_scale=7, alpha=8, space=velocity)"
    den = AnalyticDenoiser(get_world("ring2d"), "rectified-flow")
    guided = rule.guide(den, 0)
    assert isinstance(guided, GuidedDenoiser)
    x = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(9))
    assert torch.isfinite(guided.eps(x, 0.5)).all()
