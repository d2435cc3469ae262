"""verify.rules: the registry, the guided denoiser, and every rule that predates APG/CFG++/CFG-Zero*/autoguidance
against a hand-written reference of its paper's formula, in every prediction space it supports.

The generic tests at the bottom run over **every** registered rule through ``Rule.examples(world)``, so a new rule
is covered by them without editing this file.

Tolerance used throughout (``_tolerance``): the rule converts each branch's eps to its space, combines and converts
back; the reference converts with its own hand-written formulas. Each conversion is at most 4 roundings of terms of
size ``|x| + |eps|`` amplified by at most ``1/alpha``, ``1/sigma`` or ``g^2/(2 sigma)``-type factors (the
conversion's condition number ``kappa``); the combination adds at most 2 roundings per branch of terms weighted by
``|a_b|``. Both sides together: at most 3 conversions and 2K + 2 combination roundings, so with ``A = 1 + sum|a_b|``
the error is below ``gamma_{12 + 2K + 2} * A * kappa * (|x| + max_b |eps_b|)`` elementwise, which is what
``_tolerance`` returns (``gamma_n = n u / (1 - n u)``, Higham 2002, eq. 3.8).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from toy_models import AnalyticDenoiser, get_schedule, get_world
from toy_models.denoiser import CountingDenoiser
from toy_models.world import inflated
from verify import rules
from verify.rules import GuidedDenoiser, Rule
from verify.rules.classifier import CleanClassifier, ExactNoisyClassifier
from verify.samplers import SAMPLERS, sample, time_grid
from verify.tolerances import gamma

F64 = torch.float64
SPACES = ("eps", "x0", "v", "velocity")
RING = get_world("ring2d")
DEN = AnalyticDenoiser(RING, "vp-linear")
SCHED = get_schedule("vp-linear")


# ----------------------------------------------------------------------------------------------------------------
# Hand-written references: the conversions and the formulas, independently of verify.rules and parametrization
# ----------------------------------------------------------------------------------------------------------------
def _coefficients(t: float):
    alpha, sigma = (float(v) for v in SCHED.alpha_sigma(t))
    return alpha, sigma, float(SCHED.drift(t)), float(SCHED.diffusion_squared(t))


def _to(space: str, eps, x, t):
    """eps -> space, written from the definitions: x0 = (x - sigma eps)/alpha, v = alpha eps - sigma x0,
    velocity = f x + g^2/(2 sigma) eps."""
    a, s, f, g2 = _coefficients(t)
    x0 = (x - s * eps) / a
    return {"eps": eps, "x0": x0, "v": a * eps - s * x0, "velocity": f * x + g2 / (2 * s) * eps}[space]


def _kappa(t: float) -> float:
    """A bound on the amplification of a conversion between spaces at t (see the module docstring)."""
    a, s, f, g2 = _coefficients(t)
    return (1 + 1 / a) * (1 + 1 / s) * (1 + abs(f) + g2 / (2 * s) + 2 * s / g2)


def _tolerance(t, x, branches: list[torch.Tensor], weight_sum_abs: float) -> torch.Tensor:
    big = max(b.abs().max() for b in branches)
    n = 12 + 2 * len(branches) + 2
    return gamma(n, F64) * (1 + weight_sum_abs) * _kappa(t) * (x.abs() + big)


def _branch_eps(x, t, conditions: dict) -> dict[str, torch.Tensor]:
    return {b: DEN.eps(x, t, c) for b, c in conditions.items()}


def _points(seed: int, n: int = 6) -> torch.Tensor:
    return 3.0 * torch.randn(n, 2, dtype=F64, generator=torch.Generator().manual_seed(seed))


times = st.floats(0.05, 0.9)
seeds = st.integers(0, 10_000)


def _check_against(rule: Rule, conditions: dict, reference, x, t, space: str, weight_sum_abs: float):
    """The guided eps of ``rule`` (built in ``space``) converted to ``space`` by the reference's own formula,
    against ``reference(branch predictions in space)``."""
    guided = rule.guide(DEN, conditions).eps(x, t)
    eps = _branch_eps(x, t, conditions)
    want = reference({b: _to(space, e, x, t) for b, e in eps.items()})
    got = _to(space, guided, x, t)
    tol = _tolerance(t, x, list(eps.values()), weight_sum_abs)
    # the reference's own conversion of the result and of the branches is part of the bound (factor kappa already)
    assert bool(((got - want).abs() <= tol * (1 + want.abs())).all()), float((got - want).abs().max())


# ----------------------------------------------------------------------------------------------------------------
# The linear rules
# ----------------------------------------------------------------------------------------------------------------
@given(t=times, seed=seeds, g=st.floats(-2.0, 12.0), space=st.sampled_from(SPACES))
def test_cfg_is_ho_and_salimans_formula_in_every_space(t, seed, g, space):
    x = _points(seed)
    rule = rules.get("cfg", guidance_scale=g, space=space)
    _check_against(rule, {"cond": 1, "uncond": None}, lambda p: p["uncond"] + g * (p["cond"] - p["uncond"]), x, t,
                   space, 2 * abs(g) + 1)
    assert rule.linear_weights == {"cond": g, "uncond": 1 - g}


def test_cfg_conventions():
    assert rules.get("cfg", w=3.0).linear_weights == rules.get("cfg", guidance_scale=4.0).linear_weights
    # diffusers' use_original_formulation: pred_cond + g (pred_cond - pred_uncond), i.e. w = g
    assert rules.get("cfg", guidance_scale=3.0, use_original_formulation=True).linear_weights == \
        {"cond": 4.0, "uncond": -3.0}
    for bad, match in (({"w": 1.0, "guidance_scale": 2.0}, "w, guidance_scale"), ({}, "w, guidance_scale"),
                       ({"w": float("nan")}, "w"), ({"w": 1.0, "space": "score"}, "space"),
                       ({"w": 1.0, "use_original_formulation": True}, "use_original_formulation")):
        with pytest.raises(ValueError, match=f"^{match}"):
            rules.get("cfg", **bad)
    with pytest.raises(TypeError, match="^use_original_formulation"):
        rules.get("cfg", guidance_scale=2.0, use_original_formulation=1)


@given(t=times, seed=seeds, wp=st.floats(0.0, 8.0), wn=st.floats(0.0, 4.0), space=st.sampled_from(SPACES))
def test_negative_prompt_000_in_every_space(t, seed, wp, wn, space):
    x = _points(seed)
    rule = rules.get("negative_prompt_000", w_pos=wp, w_neg=wn, space=space)
    ref = lambda p: p["uncond"] + wp * (p["cond"] - p["uncond"]) - wn * (p["negative"] - p["uncond"])  # noqa: E731
    _check_against(rule, {"cond": 0, "negative": 2, "uncond": None}, ref, x, t, space, 2 * (wp + wn) + 1)
    assert math.isclose(sum(rule.linear_weights.values()), 1.0, abs_tol=1e-14)


@given(t=times, seed=seeds, g=st.floats(0.0, 10.0), space=st.sampled_from(SPACES))
def test_negative_prompt_001_in_every_space(t, seed, g, space):
    x = _points(seed)
    rule = rules.get("negative_prompt_001", guidance_scale=g, space=space)
    _check_against(rule, {"cond": 0, "negative": 2}, lambda p: p["negative"] + g * (p["cond"] - p["negative"]),
                   x, t, space, 2 * g + 1)


@given(t=times, seed=seeds, w1=st.floats(-3.0, 6.0), w2=st.floats(-3.0, 6.0), space=st.sampled_from(SPACES))
def test_compose_in_every_space(t, seed, w1, w2, space):
    x = _points(seed)
    rule = rules.get("compose", weights=[w1, w2], space=space)
    assert rule.branches == ("uncond", "cond_1", "cond_2")
    ref = lambda p: w1 * p["cond_1"] + w2 * p["cond_2"] + (1 - w1 - w2) * p["uncond"]  # noqa: E731
    _check_against(rule, {"cond_1": 0, "cond_2": 3, "uncond": None}, ref, x, t, space, 2 * (abs(w1) + abs(w2)) + 1)


@given(t=times, seed=seeds, s=st.floats(-2.0, 8.0))
def test_classifier_guidance_formula_and_its_cfg_identity(t, seed, s):
    x = _points(seed)
    a, sig, _, _ = _coefficients(t)
    exact = rules.get("classifier", scale=s, classifier=ExactNoisyClassifier(RING))
    clean = rules.get("classifier", scale=s, classifier=CleanClassifier(RING))
    grad = DEN.noised_law(t).grad_log_posterior(x, 0)
    got = exact.guide(DEN, 0).eps(x, t)
    want = DEN.eps(x, t, None) - s * sig * grad  # Dhariwal & Nichol, Algorithm 2 in eps form
    assert bool(((got - want).abs() <= gamma(4, F64) * (want.abs() + abs(s) * sig * grad.abs())).all())
    # Proposition 1 read backwards: with the exact noisy classifier it is CFG with guidance_scale = scale; the
    # two differ by the rounding of the scores and of the posterior gradient (score_bounds, a few hundred u)
    cfg = rules.get("cfg", guidance_scale=s).guide(DEN, 0).eps(x, t)
    assert torch.allclose(got, cfg, rtol=0, atol=1e-10 * (1 + abs(s)) * float(cfg.abs().max()))
    assert exact.linear_weights == {"cond": s, "uncond": 1 - s} and clean.linear_weights is None
    clean_grad = RING.law(None).grad_log_posterior(x, 0)
    assert torch.allclose(clean.guide(DEN, 0).eps(x, t), DEN.eps(x, t, None) - s * sig * clean_grad, rtol=1e-13,
                          atol=1e-13)
    with pytest.raises(TypeError, match="^classifier"):
        rules.get("classifier", scale=1.0, classifier=3)


# ----------------------------------------------------------------------------------------------------------------
# The non-linear rules
# ----------------------------------------------------------------------------------------------------------------
def _std_rows(y):
    return y.std(dim=1, keepdim=True)


@given(t=times, seed=seeds, g=st.floats(1.0, 15.0), phi=st.floats(0.0, 1.0), space=st.sampled_from(SPACES))
def test_rescale_is_lin_et_al_eqs_15_16(t, seed, g, phi, space):
    x = _points(seed)
    rule = rules.get("rescale", guidance_scale=g, phi=phi, space=space)

    def ref(p):
        y_cfg = p["uncond"] + g * (p["cond"] - p["uncond"])
        rescaled = y_cfg * _std_rows(p["cond"]) / _std_rows(y_cfg)
        return phi * rescaled + (1 - phi) * y_cfg

    # the ratio of two standard deviations over d = 2 features adds a relative error of a few u each (gamma_8)
    _check_against(rule, {"cond": 0, "uncond": None}, ref, x, t, space, 2 * g + 8)


@given(t=times, seed=seeds, g=st.floats(1.0, 15.0), limit=st.floats(0.5, 4.0))
def test_static_threshold_clips_x0(t, seed, g, limit):
    x = _points(seed)
    a, sig, _, _ = _coefficients(t)
    got = rules.get("static_threshold", guidance_scale=g, limit=limit).guide(DEN, 0).eps(x, t)
    eu, ec = DEN.eps(x, t, None), DEN.eps(x, t, 0)
    x0 = (x - sig * (eu + g * (ec - eu))) / a  # Saharia et al. 2022, section 2.3: clip x0 to [-limit, limit]
    want_x0 = x0.clamp(-limit, limit)
    got_x0 = (x - sig * got) / a
    tol = _tolerance(t, x, [eu, ec], 2 * g + 1)
    assert bool(((got_x0 - want_x0).abs() <= tol).all())


@given(t=times, seed=seeds, g=st.floats(1.0, 15.0), limit=st.floats(0.5, 4.0), q=st.floats(0.5, 1.0))
def test_dynamic_threshold_is_imagen_section_2_3(t, seed, g, limit, q):
    x = _points(seed, n=8)
    a, sig, _, _ = _coefficients(t)
    got = rules.get("dynamic_threshold", guidance_scale=g, limit=limit, percentile=q).guide(DEN, 0).eps(x, t)
    eu, ec = DEN.eps(x, t, None), DEN.eps(x, t, 0)
    x0 = ((x - sig * (eu + g * (ec - eu))) / a).numpy()
    s = np.maximum(np.quantile(np.abs(x0), q, axis=1, keepdims=True), limit)  # linear interpolation, numpy's
    want_x0 = np.clip(x0, -s, s) * (limit / s)
    got_x0 = ((x - sig * got) / a).numpy()
    tol = _tolerance(t, x, [eu, ec], 2 * g + 4).numpy()
    assert bool((np.abs(got_x0 - want_x0) <= tol).all())


@given(t=st.floats(0.01, 0.99), seed=seeds, lo=st.floats(0.0, 2.0), width=st.floats(0.1, 20.0))
def test_interval_switches_at_the_edm_noise_level(t, seed, lo, width):
    x = _points(seed)
    hi = lo + width
    inner = rules.get("cfg", w=3.0)
    rule = rules.get("interval", rule=inner, sigma_lo=lo, sigma_hi=hi)
    a, sig, _, _ = _coefficients(t)
    inside = lo < sig / a <= hi  # Kynkaanniemi et al. 2024, eq. 2: guidance for sigma in (lo, hi]
    want = inner.guide(DEN, 0).eps(x, t) if inside else DEN.eps(x, t, 0)
    assert torch.equal(rule.guide(DEN, 0).eps(x, t), want)
    assert rule.weights_at(t, SCHED) == (inner.linear_weights if inside else {"cond": 1.0})
    for edge in rule.breakpoints(SCHED):  # sigma/alpha crosses an edge there
        a_e, s_e = (float(v) for v in SCHED.alpha_sigma(edge))
        assert min(abs(s_e / a_e - lo), abs(s_e / a_e - hi)) <= 1e-9 * (1 + hi)


def test_interval_refusals():
    with pytest.raises(ValueError, match="^rule"):
        rules.get("interval", rule=rules.get("compose", weights=[2.0]), sigma_lo=0.1, sigma_hi=1.0)
    with pytest.raises(TypeError, match="^rule"):
        rules.get("interval", rule="cfg")
    with pytest.raises(ValueError, match="^sigma_lo, sigma_hi"):
        rules.get("interval", rule=rules.get("cfg", w=1.0), sigma_lo=2.0, sigma_hi=1.0)


# ----------------------------------------------------------------------------------------------------------------
# The registry and the guided denoiser
# ----------------------------------------------------------------------------------------------------------------
PUBLISHED = {"cfg", "classifier", "negative_prompt_000", "negative_prompt_001", "compose", "rescale",
             "static_threshold", "dynamic_threshold", "apg", "cfgpp", "cfg_zero_star", "autoguidance", "interval",
             "cfg_schedule", "magnitude_aware", "tangential_cfg"}


def test_every_published_rule_is_registered():
    assert PUBLISHED <= set(rules.names())
    assert rules.names() == sorted(rules.names())


def test_the_rules_page_is_generated_from_the_registry():
    """docs/rules.md is ``python -m verify.rules``'s output: regenerate it after adding a rule."""
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "rules.md").read_text(encoding="utf-8")
    assert page == rules.page(), "docs/rules.md is stale: python -m verify.rules > docs/rules.md"


def test_registry_refusals():
    with pytest.raises(ValueError, match="^name"):
        rules.get("nosuch")

    class Nameless(Rule):
        reference = "x"

    with pytest.raises(ValueError, match="^cls"):
        rules.register(Nameless)

    class Duplicate(Rule):
        name, reference = "cfg", "x"

    with pytest.raises(ValueError, match="^cls"):
        rules.register(Duplicate)

    class Uncited(Rule):
        name = "uncited"

    with pytest.raises(ValueError, match="^cls"):
        rules.register(Uncited)
    with pytest.raises(TypeError, match="^cls"):
        rules.register(object)
    assert "uncited" not in rules.names()


def test_guide_binds_conditions():
    rule = rules.get("negative_prompt_000", w_pos=2.0, w_neg=1.0)
    guided = rule.guide(DEN, {"cond": 0, "negative": 1})
    assert guided.conditions == {"cond": 0, "negative": 1, "uncond": None}
    assert rules.get("cfg", w=1.0).guide(DEN, 2).conditions == {"cond": 2, "uncond": None}
    with pytest.raises(ValueError, match="^conditions"):
        rule.guide(DEN, {"cond": 0})  # negative missing
    with pytest.raises(ValueError, match="^conditions"):
        rules.get("cfg", w=1.0).guide(DEN, {"cond": 0, "negative": 1})  # cfg reads no negative branch
    with pytest.raises(ValueError, match="^weak"):
        rules.get("cfg", w=1.0).guide(DEN, 0, weak=DEN)
    with pytest.raises(TypeError, match="^denoiser"):
        rules.get("cfg", w=1.0).guide(object(), 0)
    with pytest.raises(TypeError, match="^rule"):
        GuidedDenoiser("cfg", DEN, 0)


def test_guided_denoiser_batches_all_branches_in_one_call():
    counted = CountingDenoiser(DEN)
    guided = rules.get("negative_prompt_000", w_pos=2.0, w_neg=1.0).guide(counted, {"cond": 0, "negative": 1})
    x = _points(0, n=5)
    guided.eps(x, 0.4)
    assert (counted.calls, counted.points) == (1, 15)  # one forward pass of 3 x 5 rows
    with pytest.raises(ValueError, match="^t"):
        guided.eps(x, torch.full((5,), 0.4, dtype=F64))


# ----------------------------------------------------------------------------------------------------------------
# Generic properties of every registered rule (new rules are covered through Rule.examples)
# ----------------------------------------------------------------------------------------------------------------
def _all_examples():
    for name in rules.names():
        for params in rules.rule_class(name).examples(RING):
            yield pytest.param(name, params, id=f"{name}-{sorted(params)}")


def _guided(name: str, params: dict):
    rule = rules.get(name, **params)
    conditions = {key: (None if key == "uncond" else k) for k, key in enumerate(rule.condition_keys)}
    # a weaker model of the same world: every covariance inflated by 1.5 (an underfit network)
    weak = AnalyticDenoiser(inflated(RING, 1.5), "vp-linear") if "weak" in rule.branches else None
    return rule, rule.guide(DEN, conditions, weak=weak)


@pytest.mark.parametrize(("name", "params"), list(_all_examples()))
def test_every_rule_through_every_sampler_that_takes_it(name, params):
    """Finite, deterministic, inputs untouched, state fresh per run; samplers without a re-noising step refuse
    re-noising rules with a message naming the denoiser."""
    rule, guided = _guided(name, params)
    x = _points(1, n=16)
    before = x.clone()
    grid = time_grid(8, t_start=0.95, t_end=0.0)
    for sampler, spec in SAMPLERS.items():
        kw = {"generator": torch.Generator().manual_seed(0)} if spec.is_stochastic() else {}
        if guided.renoises and not spec.supports_renoise:
            with pytest.raises(ValueError, match="^denoiser"):
                sample(sampler, guided, x, grid, **kw)
            continue
        out = sample(sampler, guided, x, grid, **kw)
        kw2 = {"generator": torch.Generator().manual_seed(0)} if spec.is_stochastic() else {}
        assert torch.equal(out, sample(sampler, guided, x, grid, **kw2)), sampler  # the state does not leak
        assert bool(torch.isfinite(out).all()) and torch.equal(x, before)
    if rule.stateful:
        with pytest.raises(ValueError, match="^state"):
            guided.eps(x, 0.5)


@pytest.mark.parametrize(("name", "params"), list(_all_examples()))
def test_linear_rules_are_their_weighted_sum_in_every_space(name, params):
    rule = rules.get(name, **params)
    t = 0.3
    weights = rule.weights_at(t, SCHED)
    if weights is None:
        assert rule.linear_weights is None
        return
    assert math.isclose(sum(weights.values()), 1.0, rel_tol=0, abs_tol=32 * 2.0**-53 *
                        sum(abs(v) for v in weights.values()))
    _, guided = _guided(name, params)
    x = _points(2)
    state = guided.new_state()
    got = guided.eps(x, t, state=state) if state is not None else guided.eps(x, t)
    eps = guided.branch_eps(x, t)
    for branch in weights.keys() - eps.keys():  # the classifier rule is linear in a branch it does not evaluate
        eps[branch] = DEN.eps(x, t, guided.conditions[branch])
    want = sum(a * eps[b] for b, a in weights.items())
    assert bool(((got - want).abs() <= _tolerance(t, x, list(eps.values()), sum(map(abs, weights.values())))).all())
