"""verify.rules.apg: adaptive projected guidance (Sadat, Hilliges & Weber 2024, Algorithm 1).

* the rule against a hand-written numpy reference of the paper's formula at random worlds, times, points and
  parameters, in every space, through two evaluations of one run (the momentum buffer), both at the rule's
  ``combine`` (in its space) and end to end through the guided denoiser (in eps), the reference converting with
  :mod:`toy_models.parametrization` only;
* eta = 1, no threshold, no momentum is CFG, bit for bit, and the formula agrees with it to rounding;
* the momentum state through DDIM: a DDIM step written here from the DDIM formula, applying the paper's algorithm
  with its own buffer, from every state the sampler visits; fresh state per run; a stateful rule without ``state=``
  is refused;
* degenerate rows (zero conditional prediction, zero difference) give no NaN;
* parameter validation and the registry.

Tolerances (docs/tolerances.md, source 1): two float64 evaluations of the same formula by different operation orders
each err from the exact value by at most gamma_n (Higham) times the sizes of the terms. The longest chain of one
entry: the difference (1), the momentum sum (2), a norm over d features (d + 2), the rescaling (2), the unit vector
(1), the inner product (d + 1), the parallel and orthogonal parts (2), the combination (3): n = 2d + 14, counted as
n = 4d + 16 for the two implementations together. The terms: |D_c| and |g - 1| (1 + |eta|) times 4 ||Delta|| (the
difference, its parallel part, its orthogonal part and their combination, each at most ||Delta|| in norm), with
||Delta|| <= ||D_c|| + ||D_u|| + |beta| ||buffer||.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from toy_models import AnalyticDenoiser, get_world
from toy_models import parametrization as param
from toy_models.schedules import get_schedule
from toy_models.strategies import log_uniform, mixtures, points
from verify import rules
from verify.rules import GuidanceState, GuidedDenoiser
from verify.rules.apg import APG, apg_update, project
from verify.samplers import ddim, heun, time_grid
from verify.tolerances import gamma

F64 = torch.float64
SPACES = ("x0", "eps", "v", "velocity")


# ------------------------------------------------------------------------------------------------------------
# The reference: the paper's Algorithm 1, written here in numpy
# ------------------------------------------------------------------------------------------------------------
def row_norm(a: np.ndarray) -> np.ndarray:
    """Per-row Euclidean norm, ``[N, 1]``, scaled by the row's largest magnitude first (np.linalg.norm squares
    unscaled: a row of 1e-200 would have norm 0)."""
    top = np.max(np.abs(a), axis=1, keepdims=True)
    safe = np.where(top > 0, top, 1.0)
    return safe * np.linalg.norm(a / safe, axis=1, keepdims=True)


def reference_apg(u: np.ndarray, c: np.ndarray, g: float, eta: float, r: float | None, beta: float,
                  buffer: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(guided, new buffer) of one evaluation: Delta_k = (c - u) + beta Delta_{k-1}; Delta *= min(1, r/||Delta||);
    parallel part along c; D_c + (g - 1)(Delta_perp + eta Delta_par)."""
    delta = c - u
    if beta != 0.0 and buffer is not None:
        delta = delta + beta * buffer
    new_buffer = delta
    if r is not None:
        norm = row_norm(delta)
        delta = delta * np.minimum(1.0, r / np.where(norm > 0, norm, np.inf))
    c_norm = row_norm(c)
    c_unit = c / np.where(c_norm > 0, c_norm, np.inf)  # unit first: ||c||^2 may underflow where ||c|| does not
    par = np.sum(delta * c_unit, axis=1, keepdims=True) * c_unit
    orth = delta - par
    return c + (g - 1.0) * (orth + eta * par), new_buffer


def formula_tolerance(u: np.ndarray, c: np.ndarray, g: float, eta: float, beta: float, buffer_bound: np.ndarray,
                      ) -> np.ndarray:
    """Per entry: gamma_{4d+16} (|D_c| + 4 |g - 1| (1 + |eta|) (||D_c|| + ||D_u|| + |beta| B)) (module docstring),
    B a bound on the buffer's norm (plus its own accumulated rounding)."""
    d = c.shape[1]
    norms = row_norm(c) + row_norm(u) + abs(beta) * buffer_bound
    return gamma(4 * d + 16, F64) * (np.abs(c) + 4.0 * abs(g - 1.0) * (1.0 + abs(eta)) * norms)


def to_space(eps, space, x, t, schedule):
    """eps -> space with toy_models.parametrization only (no StepContext)."""
    sched = get_schedule(schedule)
    a, s = (float(v) for v in sched.alpha_sigma(t))
    if space == "velocity":
        return param.eps_to_velocity(x, eps, s, float(sched.drift(t)), float(sched.diffusion_squared(t)))
    return param.convert(eps, "eps", space, x=x, alpha=a, sigma=s)


def from_space(pred, space, x, t, schedule):
    sched = get_schedule(schedule)
    a, s = (float(v) for v in sched.alpha_sigma(t))
    if space == "velocity":
        return param.velocity_to_eps(x, pred, s, float(sched.drift(t)), float(sched.diffusion_squared(t)))
    return param.convert(pred, space, "eps", x=x, alpha=a, sigma=s)


def eps_tolerance(space, pred_tol, pred, x, t, schedule):
    """A difference ``pred_tol`` in ``space`` carried to eps by the (affine) conversion, plus the rounding of the two
    conversions (each at most gamma_4 times its terms): x0 -> eps is (x - a x0)/s, v -> eps is (a v + s x)/(a^2 +
    s^2), velocity -> eps is (u - f x)/k with k = g^2 / (2 s)."""
    sched = get_schedule(schedule)
    a, s = (float(v) for v in sched.alpha_sigma(t))
    g4 = gamma(4, F64)
    if space == "eps":
        return pred_tol
    if space == "x0":
        return (a * pred_tol + 2 * g4 * (np.abs(x) + a * np.abs(pred))) / s
    if space == "v":
        return (a * pred_tol + 2 * g4 * (a * np.abs(pred) + s * np.abs(x))) / (a * a + s * s)
    f, k = float(sched.drift(t)), float(sched.diffusion_squared(t)) / (2 * s)
    return (pred_tol + 2 * g4 * (np.abs(pred) + abs(f) * np.abs(x))) / k


@st.composite
def apg_params(draw):
    g = draw(st.floats(-2.0, 20.0))
    eta = draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(-0.5, 1.5)))
    r = draw(st.one_of(st.none(), log_uniform(1e-2, 1e2)))
    beta = draw(st.one_of(st.sampled_from([0.0, -0.5]), st.floats(-0.9, 0.9)))
    return g, eta, r, beta


@st.composite
def cases(draw):
    gm = draw(mixtures(dims=st.integers(1, 3), components=st.integers(1, 3), n_classes=2))
    schedule = draw(st.sampled_from(["vp-linear", "rectified-flow"]))
    t1 = draw(st.floats(0.05, 0.95))
    t2 = draw(st.floats(0.02, t1))
    x = torch.from_numpy(draw(points(gm.dim, n=6, scale=4.0)))
    space = draw(st.sampled_from(SPACES))
    return gm, schedule, (t1, t2), x, space, draw(apg_params())


@given(cases())
def test_apg_matches_the_papers_formula_in_every_space(case):
    gm, schedule, ts, x, space, (g, eta, r, beta) = case
    den = AnalyticDenoiser(gm, schedule)
    rule = rules.get("apg", guidance_scale=g, eta=eta, norm_threshold=r, momentum=beta, space=space)
    guided = rule.guide(den, {"cond": 0})
    state = guided.new_state()
    buffer, buffer_bound = None, np.zeros((x.shape[0], 1))
    for step, t in enumerate(ts):
        eps_u, eps_c = den.eps(x, t, None), den.eps(x, t, 0)
        u, c = (to_space(e, space, x, t, schedule) for e in (eps_u, eps_c))
        ref, new_buffer = reference_apg(u.numpy(), c.numpy(), g, eta, r, beta, buffer)
        tol = formula_tolerance(u.numpy(), c.numpy(), g, eta, beta, buffer_bound)
        if state is not None:
            state.step = step
        # the rule's combine, in its space (a copy of the state: the end-to-end call below updates the real one)
        ctx = guided.context(x, t, None if state is None else GuidanceState(step, 0, dict(state.memory)))
        got = rule.combine({"uncond": u, "cond": c}, ctx).numpy()
        assert np.all(np.abs(got - ref) <= tol), (space, np.max(np.abs(got - ref) / tol))
        # end to end: the guided denoiser's eps against the reference converted back by parametrization
        eps_ref = from_space(torch.from_numpy(ref), space, x, t, schedule).numpy()
        eps_got = guided.eps(x, t, state=state).numpy()
        etol = eps_tolerance(space, tol, ref, x.numpy(), t, schedule)
        assert np.all(np.abs(eps_got - eps_ref) <= etol), (space, np.max(np.abs(eps_got - eps_ref) / etol))
        buffer = new_buffer
        # the buffer's norm, plus its accumulated rounding (at most gamma_3 of each term, geometric in beta)
        buffer_bound = row_norm(new_buffer) * (1 + gamma(3, F64) / (1 - abs(beta)))


@given(cases())
def test_eta_one_without_threshold_or_momentum_is_cfg(case):
    gm, schedule, (t, _), x, space, (g, _, _, _) = case
    den = AnalyticDenoiser(gm, schedule)
    apg = rules.get("apg", guidance_scale=g, eta=1.0, space=space)
    cfg = rules.get("cfg", guidance_scale=g, space=space)
    assert not apg.stateful and apg.linear_weights == cfg.linear_weights
    assert torch.equal(apg.guide(den, 0).eps(x, t), cfg.guide(den, 0).eps(x, t))
    # and the paper's formula (projection and all) agrees with CFG's to rounding: the shortcut is the formula
    u, c = (to_space(den.eps(x, t, cond), space, x, t, schedule).numpy() for cond in (None, 0))
    ref, _ = reference_apg(u, c, g, 1.0, None, 0.0, None)
    got = apg.combine({"uncond": torch.from_numpy(u), "cond": torch.from_numpy(c)}, None).numpy()
    assert np.all(np.abs(got - ref) <= formula_tolerance(u, c, g, 1.0, 0.0, np.zeros((len(u), 1))))


def test_the_parallel_part_is_what_eta_weights():
    """eta = 0 removes exactly the component of the update along D_c: the guided prediction minus D_c is
    orthogonal to D_c (to rounding), while CFG's is not."""
    gen = torch.Generator().manual_seed(0)
    u, c = torch.randn(50, 4, dtype=F64, generator=gen), torch.randn(50, 4, dtype=F64, generator=gen)
    rule = rules.get("apg", guidance_scale=7.0, eta=0.0)
    moved = rule.combine({"uncond": u, "cond": c}, None) - c
    dots = (moved * c).sum(1)
    bound = gamma(4 * 4 + 16, F64) * 4 * 6.0 * (c.norm(dim=1) + u.norm(dim=1)) * c.norm(dim=1)
    assert bool((dots.abs() <= bound).all())
    cfg_moved = rules.get("cfg", guidance_scale=7.0).combine({"uncond": u, "cond": c}, None) - c
    assert bool(((cfg_moved * c).sum(1).abs() > bound).any())


# ------------------------------------------------------------------------------------------------------------
# The momentum state through DDIM
# ------------------------------------------------------------------------------------------------------------
def _ddim_world():
    return AnalyticDenoiser(get_world("ring2d"), "vp-linear"), 0


def test_apg_momentum_through_ddim_matches_a_hand_written_ddim_loop():
    """From every state the sampler visits, one DDIM step written here (the branch x0-predictions, the paper's APG
    on x0 with this test's own buffer, eps = (x - a x0)/s, x' = a' x0 + s' eps) reaches the sampler's next state to a
    local rounding bound; the buffer carries across all 25 steps, so a wrong update order, a reset or a per-step
    (instead of per-evaluation) update would show.

    The branch x0-predictions are converted by parametrization.convert from the same eps at the same float
    coefficients as the rule's, so they are the same numbers, and so is the buffer (the same IEEE operations on the
    same inputs). Local bound: the formula's rounding delta in the guided x0 moves x' by (a' + s' a / s) delta; the
    sampler's round trip x0 -> eps -> x0 and the step's arithmetic add gamma_8 times their terms."""
    den, cls = _ddim_world()
    g, eta, r, beta = 12.0, 0.0, 2.0, -0.5
    rule = rules.get("apg", guidance_scale=g, eta=eta, norm_threshold=r, momentum=beta)
    guided = rule.guide(den, cls)
    ts = time_grid(25, t_start=1.0, t_end=0.0)
    sched = get_schedule("vp-linear")
    x_start = get_world("ring2d").law(None).noised(*(float(v) for v in sched.alpha_sigma(1.0))) \
        .sample(64, torch.Generator().manual_seed(3))
    visited = [x_start]
    out = ddim(guided, x_start, ts, callback=lambda i, s, x, eps: visited.append(x.clone()))
    assert torch.equal(out, visited[-1])
    buffer, buffer_bound = None, np.zeros((64, 1))
    g8 = gamma(8, F64)
    for i, t in enumerate(ts.tolist()[:-1]):
        t_next = float(ts[i + 1])
        a, s = (float(v) for v in sched.alpha_sigma(t))
        a2, s2 = (float(v) for v in sched.alpha_sigma(t_next))
        xt = visited[i]
        x0_u, x0_c = (param.convert(den.eps(xt, t, cond), "eps", "x0", x=xt, alpha=a, sigma=s).numpy()
                      for cond in (None, cls))
        x = xt.numpy()
        x0_g, new_buffer = reference_apg(x0_u, x0_c, g, eta, r, beta, buffer)
        eps_g = (x - a * x0_g) / s
        x_next = a2 * x0_g + s2 * eps_g
        delta = formula_tolerance(x0_u, x0_c, g, eta, beta, buffer_bound)
        tol = (a2 + s2 * a / s) * delta + g8 * (a2 * (np.abs(x0_g) + (np.abs(x) + s * np.abs(eps_g)) / a)
                                                + s2 * (np.abs(eps_g) + (np.abs(x) + a * np.abs(x0_g)) / s)
                                                + np.abs(x_next))
        err = np.abs(visited[i + 1].numpy() - x_next)
        assert np.all(err <= tol), (i, float(np.max(err / tol)))
        buffer = new_buffer
        buffer_bound = row_norm(new_buffer)
    # momentum matters: without it the same run ends elsewhere
    plain = ddim(rules.get("apg", guidance_scale=g, eta=eta, norm_threshold=r).guide(den, cls), x_start, ts)
    assert float((plain - out).abs().max()) > 1e-3


def test_state_is_fresh_per_run_and_required():
    den, cls = _ddim_world()
    rule = rules.get("apg", guidance_scale=10.0, momentum=-0.5)
    guided = rule.guide(den, cls)
    x = torch.randn(32, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    ts = time_grid(10, t_end=0.0)
    assert torch.equal(ddim(guided, x, ts), ddim(guided, x, ts))  # a second run starts from an empty buffer
    assert torch.equal(heun(guided, x, time_grid(5, t_end=1e-3)), heun(guided, x, time_grid(5, t_end=1e-3)))
    with pytest.raises(ValueError, match=r"^state:"):
        guided.eps(x, 0.5)
    with pytest.raises(ValueError, match=r"^state:"):
        rule.combine({"uncond": x, "cond": x + 1}, guided.context(x, 0.5, None))
    # two rule objects in one state keep separate buffers
    other = rules.get("apg", guidance_scale=10.0, momentum=-0.5)
    state = GuidanceState()
    guided.eps(x, 0.5, state=state)
    other.guide(den, cls).eps(x, 0.5, state=state)
    assert len(state.memory) == 2 and rule.memory_key != other.memory_key
    assert state.evaluations == 2
    # the buffer is updated once per evaluation: a second evaluation at the same step adds to it
    first = state.memory[rule.memory_key].clone()
    guided.eps(x, 0.5, state=state)
    # Delta + (-0.5) Delta = Delta / 2 exactly (halving is exact, and so is the difference, by Sterbenz's lemma)
    assert torch.equal(state.memory[rule.memory_key], first / 2)


def test_momentum_off_is_stateless():
    rule = rules.get("apg", guidance_scale=5.0, momentum=0.0, norm_threshold=1.0)
    assert not rule.stateful and rule.new_state() is None
    den, cls = _ddim_world()
    x = torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    rule.guide(den, cls).eps(x, 0.5)  # no state needed


# ------------------------------------------------------------------------------------------------------------
# Degenerate rows
# ------------------------------------------------------------------------------------------------------------
def test_zero_conditional_and_zero_difference_give_no_nan():
    u = torch.tensor([[1.0, 2.0], [0.5, -0.5], [0.0, 0.0]], dtype=F64)
    c = torch.tensor([[0.0, 0.0], [0.5, -0.5], [0.0, 0.0]], dtype=F64)
    par, orth = project(c - u, c)
    assert torch.equal(par[0], torch.zeros(2, dtype=F64)) and torch.equal(orth[0], (c - u)[0])  # no direction
    update = apg_update(c - u, c, eta=0.0, norm_threshold=1.0)
    assert torch.isfinite(update).all() and torch.equal(update[1:], torch.zeros(2, 2, dtype=F64))
    rule = rules.get("apg", guidance_scale=9.0, eta=0.0, norm_threshold=1.0)
    out = rule.combine({"uncond": u, "cond": c}, None)
    assert torch.isfinite(out).all()
    # row 0: D_c = 0, the whole difference (-1, -2) is orthogonal, rescaled to norm 1, times g - 1 = 8
    expected = 8.0 * (c - u)[0] / (c - u)[0].norm()
    assert torch.allclose(out[0], expected, rtol=4 * gamma(8, F64), atol=0)
    assert torch.equal(out[1:], c[1:])


def test_norms_of_tiny_and_huge_rows():
    """The rescaling and the projection form unit vectors from rows scaled by a power of two: a difference of norm
    2e300 (whose squared norm overflows) is rescaled to r times its direction, and D_c = (1e-300, 0) still has the
    x axis as its direction."""
    diff = torch.tensor([[1e300, 1e300 * 3 ** 0.5], [3.0, 4.0]], dtype=F64)
    cond = torch.tensor([[1e-300, 0.0], [1e-300, 0.0]], dtype=F64)
    out = apg_update(diff, cond, eta=1.0, norm_threshold=1.0)
    assert torch.allclose(out, torch.tensor([[0.5, 0.5 * 3 ** 0.5], [0.6, 0.8]], dtype=F64), rtol=gamma(16, F64),
                          atol=0)
    par, orth = project(diff[1:], cond[1:])
    assert torch.equal(par, torch.tensor([[3.0, 0.0]], dtype=F64)) and torch.equal(orth, torch.tensor([[0.0, 4.0]],
                                                                                                      dtype=F64))


def test_overflowing_prediction_is_refused():
    big = torch.finfo(F64).max / 2
    u = torch.tensor([[-big, 0.0]], dtype=F64)
    c = torch.tensor([[big, 1.0]], dtype=F64)
    with pytest.raises(ValueError, match=r"^preds:"):
        rules.get("apg", guidance_scale=5.0, eta=0.5).combine({"uncond": u, "cond": c}, None)


# ------------------------------------------------------------------------------------------------------------
# Parameters and the registry
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, name", [
    ({}, ValueError, "w, guidance_scale"),
    ({"w": 1.0, "guidance_scale": 2.0}, ValueError, "w, guidance_scale"),
    ({"guidance_scale": float("nan")}, ValueError, "guidance_scale"),
    ({"w": "3"}, TypeError, "w"),
    ({"guidance_scale": 5.0, "eta": float("inf")}, ValueError, "eta"),
    ({"guidance_scale": 5.0, "eta": True}, TypeError, "eta"),
    ({"guidance_scale": 5.0, "norm_threshold": 0.0}, ValueError, "norm_threshold"),
    ({"guidance_scale": 5.0, "norm_threshold": -1.0}, ValueError, "norm_threshold"),
    ({"guidance_scale": 5.0, "norm_threshold": "big"}, TypeError, "norm_threshold"),
    ({"guidance_scale": 5.0, "momentum": 1.0}, ValueError, "momentum"),
    ({"guidance_scale": 5.0, "momentum": -1.5}, ValueError, "momentum"),
    ({"guidance_scale": 5.0, "momentum": None}, TypeError, "momentum"),
    ({"guidance_scale": 5.0, "space": "score"}, ValueError, "space"),
])
def test_bad_parameters_are_refused(kwargs, error, name):
    with pytest.raises(error, match=rf"^{name}:"):
        rules.get("apg", **kwargs)


def test_registry():
    assert "apg" in rules.names()
    rule = rules.get("apg", w=6.0)
    assert isinstance(rule, APG) and rules.rule_class("apg") is APG
    assert rule.guidance_scale == 7.0 and rule.space == "x0" and rule.branches == ("uncond", "cond")
    assert rule.linear_weights is None and "Sadat" in APG.reference and "Algorithm 1" in APG.reference
    assert rule.describe().startswith("apg(guidance_scale=7")
    assert isinstance(rule.guide(_ddim_world()[0], 0), GuidedDenoiser)
