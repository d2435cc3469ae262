"""verify.rules.cfg_zero_star: CFG-Zero* (Fan et al. 2025), the optimised scale and zero-init.

* the rule against a hand-written numpy reference of the paper's formula, s* = <v_c, v_u>/||v_u||^2 and
  (1 - g) s* v_u + g v_c, at random worlds, times, points and scales, in every space (the reference converts with
  :mod:`toy_models.parametrization` only), at the rule's ``combine`` and end to end in eps;
* the exact reductions: g = 1 gives v_c (bit for bit); v_c - v_u orthogonal to v_u (s* = 1) gives CFG; v_u parallel
  to v_c gives v_c at every g; v_u = 0 gives g v_c (no NaN);
* zero-init through samplers on rectified-flow: the first steps leave x where it is, the next one moves it;
* parameter validation and the registry.

Tolerances (docs/tolerances.md, source 1): each float64 evaluation errs from the exact value by at most gamma_n times
its terms. Chain of one entry: the norm of v_u (d + 2), the unit vector (1), the inner product (d + 1), the
projection (1), the combination (3): n = 2d + 8, counted as n = 4d + 16 for two implementations (the reference
divides by ||v_u||^2 instead of forming the unit vector). Terms: |g| |v_c| + |1 - g| ||v_c|| (the projection is at
most ||v_c|| in norm, its coefficient too).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from rule_space_checks import check_in_every_space, space_cases
from test_rule_apg import row_norm  # parametrization-only conversions

from toy_models import AnalyticDenoiser, get_world
from verify import rules
from verify.rules import GuidedDenoiser
from verify.rules.cfg import cfg
from verify.rules.cfg_zero_star import CFGZeroStar, cfg_zero_star, optimized_scale
from verify.samplers import ddim, euler, heun, time_grid
from verify.tolerances import gamma

F64 = torch.float64
SPACES = ("velocity", "eps", "x0", "v")


def reference(u: np.ndarray, c: np.ndarray, g: float) -> np.ndarray:
    """The paper's optimised-scale guidance: s* = <c, u>/||u||^2 per row; (1 - g) s* u + g c (s* u := 0 at u = 0).
    u is first divided by its row's largest magnitude m (s* u is unchanged: s* scales by m, u by 1/m), so ||u||^2
    neither underflows nor overflows."""
    top = np.max(np.abs(u), axis=1, keepdims=True)
    u = u / np.where(top > 0, top, 1.0)
    u2 = np.sum(u * u, axis=1, keepdims=True)
    s_star = np.sum(c * u, axis=1, keepdims=True) / np.where(u2 > 0, u2, np.inf)
    return (1.0 - g) * s_star * u + g * c


def tolerance(c: np.ndarray, g: float) -> np.ndarray:
    """gamma_{4d+16} (|g| |c| + 2 |1 - g| ||c||) per entry (module docstring; 2 for the coefficient and the vector)."""
    d = c.shape[1]
    return gamma(4 * d + 16, F64) * (abs(g) * np.abs(c) + 2.0 * abs(1.0 - g) * row_norm(c))


@given(space_cases())
def test_matches_the_papers_formula_in_every_space(case):
    def formula(u, c, g):
        return reference(u.numpy(), c.numpy(), g), tolerance(c.numpy(), g)

    check_in_every_space("cfg_zero_star", {"use_zero_init": False}, case, formula)


vectors = hnp.arrays(np.float64, (5, 3), elements=st.floats(-10, 10)).filter(
    lambda a: bool((np.linalg.norm(a, axis=1) > 1e-3).all()))


@given(vectors, vectors, st.floats(-2.0, 20.0))
def test_exact_reductions(u_np, d_np, g):
    u = torch.from_numpy(u_np)
    c = torch.from_numpy(d_np)
    # g = 1: g c + 0 * P c = c, bit for bit
    assert torch.equal(cfg_zero_star(u, c, 1.0), c)
    # v_c - v_u orthogonal to v_u: s* = 1 and CFG-Zero* is CFG
    d = c - (c * u).sum(1, keepdim=True) / (u * u).sum(1, keepdim=True) * u
    c_orth = u + d
    s_star = optimized_scale(c_orth, u)
    tol_s = gamma(4 * 3 + 16, F64) * (1 + d.norm(dim=1, keepdim=True) / u.norm(dim=1, keepdim=True))
    assert bool(((s_star - 1).abs() <= tol_s).all())
    got = cfg_zero_star(u, c_orth, g).numpy()
    want = cfg(u, c_orth, guidance_scale=g).numpy()
    # both err by at most the tolerance of the formula, and CFG's lerp by gamma_3 (|u| + |g| |c - u|)
    tol = tolerance(c_orth.numpy(), g) + gamma(3, F64) * (np.abs(u_np) + abs(g) * np.abs(d.numpy())) \
        + abs(1 - g) * row_norm(u_np) * tol_s.numpy()
    assert np.all(np.abs(got - want) <= tol)
    # v_u parallel to v_c (any nonzero factor): the projection is v_c itself, guidance vanishes
    for k in (-3.0, 0.25, 2.0):
        got = cfg_zero_star(k * c, c, g).numpy()
        assert np.all(np.abs(got - c.numpy()) <= tolerance(c.numpy(), g))


def test_zero_unconditional_gives_g_times_conditional():
    u = torch.tensor([[0.0, 0.0], [1e-300, 0.0], [3.0, 4.0]], dtype=F64)
    c = torch.tensor([[1.0, -2.0], [2.0, 5.0], [3.0, 4.0]], dtype=F64)
    out = cfg_zero_star(u, c, 7.0)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0], 7.0 * c[0])  # no direction: s* v_u := 0
    # a tiny v_u still has a direction (x axis): projection (2, 0), no overflow of 1/||v_u||^2
    assert torch.allclose(out[1], torch.tensor([7 * 2.0 - 6 * 2.0, 7 * 5.0], dtype=F64), rtol=gamma(16, F64), atol=0)
    assert torch.allclose(out[2], c[2], rtol=gamma(16, F64), atol=0)
    assert torch.equal(optimized_scale(c, u)[0], torch.zeros(1, dtype=F64))


def test_huge_predictions_are_scaled_not_overflowed():
    big = torch.finfo(F64).max / 4
    u = torch.tensor([[big, big]], dtype=F64)
    c = torch.tensor([[big, -big / 2]], dtype=F64)
    out = cfg_zero_star(u, c, 1.5)  # ||u|| and the inner product overflow unscaled; the answer does not
    ref = reference(u.numpy() / big, c.numpy() / big, 1.5) * big
    assert torch.isfinite(out).all() and np.allclose(out.numpy(), ref, rtol=gamma(32, F64), atol=0)
    with pytest.raises(ValueError, match=r"^v_cond:"):
        cfg_zero_star(u, c, 8.0)


# ------------------------------------------------------------------------------------------------------------
# Zero-init through samplers
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("sampler", [euler, ddim, heun])
def test_zero_init_leaves_x_in_place_for_the_first_steps(sampler, space):
    """On rectified-flow, a zero velocity is eps = x0 = x; Euler (x + (s - t) velocity), DDIM ((1 - s) x0 + s eps,
    the same step on this schedule) and Heun keep x to the rounding of the velocity's round trip, gamma_8 times
    |f x| |t - s| plus gamma_4 |x|; the step after the zero-init steps moves it by far more."""
    den = AnalyticDenoiser(get_world("ring2d"), "rectified-flow")
    rule = rules.get("cfg_zero_star", guidance_scale=5.0, zero_init_steps=2, space=space)
    assert rule.stateful
    x = torch.randn(16, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    ts = time_grid(10, t_start=0.99, t_end=0.0)
    seen = []
    sampler(rule.guide(den, 0), x, ts, callback=lambda i, s, xi, eps: seen.append(xi.clone()))
    for i in (0, 1):
        t, s = float(ts[i]), float(ts[i + 1])
        bound = gamma(8, F64) * (x.abs() / (1 - t)) * (t - s) * 4 + gamma(4, F64) * x.abs() * 4
        assert bool(((seen[i] - x).abs() <= bound).all()), (i, float(((seen[i] - x).abs() / bound).max()))
    assert float((seen[2] - seen[1]).abs().max()) > 1e-2


def test_zero_init_needs_the_run_state():
    den = AnalyticDenoiser(get_world("ring2d"), "rectified-flow")
    guided = rules.get("cfg_zero_star", guidance_scale=5.0).guide(den, 0)
    x = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=r"^state:"):
        guided.eps(x, 0.5)
    with pytest.raises(ValueError, match=r"^state:"):
        guided.rule.combine({"uncond": x, "cond": x}, guided.context(x, 0.5))
    off = rules.get("cfg_zero_star", guidance_scale=5.0, use_zero_init=False)
    assert not off.stateful and off.new_state() is None
    off.guide(den, 0).eps(x, 0.5)


# ------------------------------------------------------------------------------------------------------------
# Parameters and the registry
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, name", [
    ({}, ValueError, "w, guidance_scale"),
    ({"w": 1.0, "guidance_scale": 2.0}, ValueError, "w, guidance_scale"),
    ({"guidance_scale": float("inf")}, ValueError, "guidance_scale"),
    ({"w": None, "guidance_scale": True}, TypeError, "guidance_scale"),
    ({"guidance_scale": 4.0, "use_zero_init": 1}, TypeError, "use_zero_init"),
    ({"guidance_scale": 4.0, "zero_init_steps": 0}, ValueError, "zero_init_steps"),
    ({"guidance_scale": 4.0, "zero_init_steps": 1.5}, TypeError, "zero_init_steps"),
    ({"guidance_scale": 4.0, "zero_init_steps": True}, TypeError, "zero_init_steps"),
    ({"guidance_scale": 4.0, "space": "score"}, ValueError, "space"),
])
def test_bad_parameters_are_refused(kwargs, error, name):
    with pytest.raises(error, match=rf"^{name}:"):
        rules.get("cfg_zero_star", **kwargs)


def test_registry():
    assert "cfg_zero_star" in rules.names()
    rule = rules.get("cfg_zero_star", w=3.0)
    assert isinstance(rule, CFGZeroStar) and rules.rule_class("cfg_zero_star") is CFGZeroStar
    assert rule.guidance_scale == 4.0 and rule.space == "velocity" and rule.zero_init_steps == 1
    assert rule.linear_weights is None and "2503.18886" in CFGZeroStar.reference
    assert isinstance(rule.guide(AnalyticDenoiser(get_world("ring2d"), "rectified-flow"), 0), GuidedDenoiser)
