"""verify.rules.cfg_schedule: CFG with the increasing strength schedules of Wang et al. 2024, against the paper's
formula written here by hand, in every space; its exact sampled law on a Gaussian world (weights that change with t,
read by verify.exact_law through weights_at) against the discrete DDIM law as the steps are refined.

Tolerances: the guided prediction is (1 + w) y_c - w y_u formed once by the rule and once here; both are at most 3
roundings of terms of size (1 + 2|w|) max|y| (gamma_3), and the conversion between spaces (the rule's to and from
its space, here none: the reference is written in eps) adds gamma_8 kappa with kappa the conversion's amplification
(tests/test_rules.py, _kappa), so gamma_16 * kappa * (1 + 2|w|) * max|y| bounds the difference.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from toy_models import AnalyticDenoiser, GaussianMixture, World, get_schedule, get_world
from verify import exact_gaussian_law, rules
from verify.exact_law import discrete_sampler_law
from verify.samplers import time_grid
from verify.tilted import tilted_law
from verify.tolerances import gamma

F64 = torch.float64
SCHED = get_schedule("vp-linear")
RING = get_world("ring2d")
DEN = AnalyticDenoiser(RING, "vp-linear")


def paper_strength(t: float, mean_w: float, shape: str, floor: float) -> float:
    """Wang et al. 2024, Fig. 1: w = max(c, w0 * 2 * progress) for the linear scheduler, progress = step / T from 0
    (noise) to 1; the cosine scheduler w0 * (1 - cos(pi * progress)). Here progress = 1 - t."""
    progress = 1.0 - t
    ramp = 2.0 * progress if shape == "linear" else 1.0 - math.cos(math.pi * progress)
    return max(floor, mean_w * ramp)


@given(t=st.floats(0.02, 0.98), w=st.floats(0.0, 12.0), shape=st.sampled_from(["linear", "cosine"]),
       floor=st.floats(0.0, 4.0), space=st.sampled_from(["eps", "x0", "v", "velocity"]), seed=st.integers(0, 999))
def test_the_papers_schedule_in_every_space(t, w, shape, floor, space, seed):
    rule = rules.get("cfg_schedule", w=w, shape=shape, floor=floor, space=space)
    x = 3.0 * torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(seed))
    wt = paper_strength(t, w, shape, floor)
    eu, ec = DEN.eps(x, t, None), DEN.eps(x, t, 0)
    want = (1 + wt) * ec - wt * eu
    got = rule.guide(DEN, 0).eps(x, t)
    a, s = (float(v) for v in SCHED.alpha_sigma(t))
    f, g2 = float(SCHED.drift(t)), float(SCHED.diffusion_squared(t))
    kappa = (1 + 1 / a) * (1 + 1 / s) * (1 + abs(f) + g2 / (2 * s) + 2 * s / g2)
    tol = gamma(16, F64) * kappa * (1 + 2 * wt) * (x.abs() + torch.maximum(eu.abs(), ec.abs()))
    assert bool(((got - want).abs() <= tol).all())
    # the rule writes the cosine ramp as 1 + cos(pi t), the paper as 1 - cos(pi (1 - t)): libm's cos is within
    # 1 ulp, and each ramp takes 2 more roundings of values <= 2, so they differ by at most 8 u w
    weights = rule.weights_at(t, SCHED)
    assert abs(weights["uncond"] + wt) <= 8 * 2.0**-53 * (1 + w)
    # cond = 1 + wt rounds once (error <= u (1 + wt)) and adding uncond = -wt rounds at most once more (<= u of the
    # result, ~1): the strength is wt, which the floor can lift above w
    assert abs(weights["cond"] + weights["uncond"] - 1.0) <= 2.0**-53 * (2 + 2 * wt)
    assert rule.linear_weights is None  # linear at every t, but with no single set of weights


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_the_mean_strength_over_the_run_is_the_given_one(shape):
    """Without a floor the schedule's mean over t in [0, 1] is w (the paper's normalisation). Composite Simpson on
    2000 intervals: error below (1/180) h^4 max|w''''| = (1/180) (5e-4)^4 pi^4 w ~ 3e-14 w for the cosine, exact for
    the linear ramp up to rounding (2000 terms: gamma_2000 w)."""
    rule = rules.get("cfg_schedule", w=5.0, shape=shape)
    n = 2000
    ts = [k / n for k in range(n + 1)]
    values = [rule.weights_at(t, SCHED)["uncond"] * -1 for t in ts]
    simpson = (values[0] + values[-1] + 4 * sum(values[1:-1:2]) + 2 * sum(values[2:-1:2])) / (3 * n)
    assert abs(simpson - 5.0) <= 5.0 * (3e-14 + gamma(n, F64))


@pytest.mark.parametrize(("shape", "floor"), [("linear", 2.0), ("cosine", 2.0), ("cosine", 9.0)])
def test_breakpoints_are_where_the_floor_starts_to_bind(shape, floor):
    rule = rules.get("cfg_schedule", w=3.0, shape=shape, floor=floor)
    points = rule.breakpoints(SCHED)
    if floor >= 2 * 3.0:  # the floor binds everywhere: no kink
        assert points == ()
        return
    (t,) = points
    assert math.isclose(paper_strength(t, 3.0, shape, 0.0), floor, rel_tol=1e-12)


def test_its_exact_law_is_the_limit_of_ddim():
    """On a Gaussian world the guided DDIM sampler is affine, so its output law is exact (discrete_sampler_law); as
    the steps double its distance to the continuous-time ODE law (exact_gaussian_law, moment ODEs at rtol 1e-12)
    must halve (DDIM is first order): the ratio of successive errors lies in [1.6, 2.4] (the observed order
    log2(ratio) within 0.3 of 1 once the steps resolve the schedule's kink)."""
    cond = GaussianMixture([1.0], [[1.5, -0.5]], [[[0.4, 0.1], [0.1, 0.3]]])
    uncond = GaussianMixture([1.0], [[0.2, 0.1]], [[[1.2, 0.0], [0.0, 0.9]]])
    world = World("two-gaussians", uncond, conditionals={1: cond})
    rule = rules.get("cfg_schedule", w=2.0, shape="cosine", floor=1.0)
    t_end = 1e-3
    mean, cov = exact_gaussian_law(rule, {"cond": cond, "uncond": uncond}, "ode", start="marginal", t_end=t_end)
    guided = rule.guide(AnalyticDenoiser(world), 1)
    a1, s1 = (float(v) for v in SCHED.alpha_sigma(1.0))
    start_mean, start_cov = a1 * cond.means[0], a1**2 * cond.covariances[0] + s1**2 * torch.eye(2, dtype=F64)
    errors = []
    for steps in (64, 128, 256):
        m, c = discrete_sampler_law("ddim", guided, time_grid(steps, t_end=t_end), start_mean, start_cov)
        errors.append(float(torch.cat([(m - mean), (c - cov).flatten()]).abs().max()))
    ratios = [errors[k] / errors[k + 1] for k in range(2)]
    assert all(1.6 <= r <= 2.4 for r in ratios), (errors, ratios)


def test_refusals():
    for bad, exc, name in (({"w": 1.0, "shape": "step"}, ValueError, "shape"),
                           ({"w": 1.0, "floor": float("nan")}, ValueError, "floor"),
                           ({"shape": "linear"}, ValueError, "w, guidance_scale"),
                           ({"w": 1.0, "space": "score"}, ValueError, "space")):
        with pytest.raises(exc, match=f"^{name}"):
            rules.get("cfg_schedule", **bad)
    with pytest.raises(ValueError, match="^rule"):  # no single tilted target: the weights change with t
        tilted_law(RING, rules.get("cfg_schedule", w=2.0), {"cond": 0})
