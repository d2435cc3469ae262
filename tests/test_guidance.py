"""verify.guidance: every combiner against its formula, written independently, and the guided denoisers."""

from __future__ import annotations

import pytest
import torch

from toy_models import AnalyticDenoiser, get_schedule, get_world
from toy_models.gaussian_mixture import normalize_condition
from verify import guidance as G
from verify.tolerances import gamma, score_bounds

F64 = torch.float64
U = 2.0**-53


def _eps(seed, n=16, d=3):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, dtype=F64, generator=gen) for _ in range(4)]


def test_cfg_conventions_and_endpoints():
    eu, ec, _, _ = _eps(0)
    # written out: (1 + w) eps_c - w eps_u and eps_u + g (eps_c - eps_u); a few roundings of O(10) values
    for w in (0.0, 0.5, 3.0, 7.5):
        want = (1 + w) * ec - w * eu
        tol = gamma(4, F64) * ((1 + w) * ec.abs() + w * eu.abs())
        assert bool(((G.cfg(eu, ec, w=w) - want).abs() <= tol).all())
        assert torch.equal(G.cfg(eu, ec, w=w), G.cfg(eu, ec, guidance_scale=1 + w))
    with pytest.raises(ValueError, match="exactly one"):
        G.cfg(eu, ec, w=1.0, guidance_scale=2.0)
    with pytest.raises(ValueError, match="exactly one"):
        G.cfg(eu, ec)
    with pytest.raises(ValueError, match="finite"):
        G.cfg(eu, ec, w=float("nan"))


def test_cfg_endpoints_are_exact():
    eu, ec, _, _ = _eps(1)
    assert torch.equal(G.cfg(eu, ec, guidance_scale=0.0), eu) and torch.equal(G.cfg(eu, ec, guidance_scale=1.0), ec)


def test_negative_prompts_and_composition_formulas():
    en, ep, eg, e3 = _eps(2)
    got = G.negative_prompt_000(en, ep, eg, 7.5, 2.0)
    want = en + 7.5 * (ep - en) - 2.0 * (eg - en)
    assert bool(((got - want).abs() <= gamma(6, F64) * 12 * (en.abs() + ep.abs() + eg.abs())).all())
    assert torch.equal(G.negative_prompt_001(ep, eg, guidance_scale=7.5), G.cfg(eg, ep, guidance_scale=7.5))
    comp = G.compose(en, [ep, eg, e3], [1.0, -0.5, 2.0])
    want = ep - 0.5 * eg + 2.0 * e3 + (1 - 2.5) * en
    assert bool(((comp - want).abs() <= gamma(8, F64) * 4 * (en.abs() + ep.abs() + eg.abs() + e3.abs())).all())
    with pytest.raises(ValueError, match="eps_conds, weights"):
        G.compose(en, [ep], [1.0, 2.0])


def test_linear_rules_match_the_combiners():
    den = AnalyticDenoiser(get_world("attributes2d"))
    x = get_world("attributes2d").law(None).sample(32, torch.Generator().manual_seed(3))
    t = 0.4
    e = {c: den.eps(x, t, c) for c in (None, ("dog",), ("red",), ("red", "dog"), ("blue", "dog"))}
    preds = {normalize_condition(c): v for c, v in e.items()}
    cases = [
        (G.linear_rule("cfg", condition=("red", "dog"), w=3.0), G.cfg(e[None], e[("red", "dog")], w=3.0)),
        (G.linear_rule("negative_000", positive=("dog",), negative=("red",), w_pos=4.0, w_neg=1.0),
         G.negative_prompt_000(e[None], e[("dog",)], e[("red",)], 4.0, 1.0)),
        (G.linear_rule("negative_001", positive=("dog",), negative=("red",), guidance_scale=5.0),
         G.negative_prompt_001(e[("dog",)], e[("red",)], guidance_scale=5.0)),
        (G.linear_rule("compose", conditions=[("red", "dog"), ("blue", "dog")], weights=[1.0, 1.0]),
         G.compose(e[None], [e[("red", "dog")], e[("blue", "dog")]], [1.0, 1.0])),
    ]
    for rule, want in cases:
        scale = sum(abs(wt) * preds[c].abs() for c, wt in rule.terms)
        assert bool(((rule.combine(preds) - want).abs() <= gamma(8, F64) * 2 * scale).all()), rule.name
    with pytest.raises(ValueError, match="sum to 1"):
        G.LinearRule(((None, 0.5), (1, 0.6)))
    with pytest.raises(ValueError, match="kind"):
        G.linear_rule("nope")


def test_cfg_is_classifier_guidance():
    """Proposition 1 numerically: CFG at w equals classifier guidance with the exact noisy classifier at 1 + w."""
    world = get_world("ring2d")
    den = AnalyticDenoiser(world)
    sched = get_schedule("vp-linear")
    x = world.law(None).sample(64, torch.Generator().manual_seed(4))
    for t in (0.05, 0.5, 0.95):
        a, s = (float(v) for v in sched.alpha_sigma(t))
        marginal = world.law(None).noised(a, s)
        grad = lambda xx, tt, c, m=marginal: m.grad_log_posterior(xx, c)  # noqa: E731
        for w in (1.0, 7.0):
            cfg_eps = G.CFGDenoiser(den, 2, w=w).eps(x, t, 2)
            cg_eps = G.ClassifierGuidedDenoiser(den, grad, 1 + w).eps(x, t, 2)
            (cf, cb), (mf, mb) = score_bounds(world.law(2).noised(a, s), x), score_bounds(marginal, x)
            tol = s * ((1 + w) * (cf + 2 * cb) + (1 + 2 * w) * (mf + 2 * mb)) + gamma(6, F64) * (
                (1 + w) * cfg_eps.norm(dim=-1) + w * den.eps(x, t).norm(dim=-1))
            assert bool(((cfg_eps - cg_eps).norm(dim=-1) <= tol).all())


def test_cfg_score_is_tilted_score():
    world = get_world("bimodal1d")
    den = AnalyticDenoiser(world)
    t, w = 0.3, 3.0
    a, s = (float(v) for v in get_schedule("vp-linear").alpha_sigma(t))
    x = torch.linspace(-5, 5, 41, dtype=F64)[:, None].requires_grad_(True)
    logq = (1 + w) * world.law(1).noised(a, s).log_prob(x) - w * world.law(None).noised(a, s).log_prob(x)
    (score,) = torch.autograd.grad(logq.sum(), x)
    got = -G.CFGDenoiser(den, 1, w=w).eps(x.detach(), t, 1) / s
    # scores of size <= ~20 with a few dozen roundings each
    assert bool(((got - score).abs() <= 1e3 * U * (1 + score.abs())).all())


def test_classifier_guidance_eps_form():
    eps, grad, _, _ = _eps(5)
    got = G.classifier_guidance(eps, grad, 0.7, 3.0)
    assert bool(((got - (eps - 2.1 * grad)).abs() <= gamma(3, F64) * (eps.abs() + 2.1 * grad.abs())).all())


def test_rescale_and_thresholds():
    world = get_world("tokens16d")
    den = AnalyticDenoiser(world)
    x = world.law(None).noised(0.5, 0.87).sample(32, torch.Generator().manual_seed(6))
    a, s = 0.5, 0.87
    eu, ec = den.eps(x, 0.5, None), den.eps(x, 0.5, ("b0+",))
    guided = G.cfg(eu, ec, w=7.0)
    full = G.rescale(guided, ec, 1.0, x=x, alpha=a, sigma=s, space="eps")
    torch.testing.assert_close(full.std(dim=1), ec.std(dim=1), rtol=1e-12, atol=0)  # phi = 1 matches the std
    assert torch.equal(G.rescale(guided, ec, 0.0, x=x, alpha=a, sigma=s), guided) or bool(
        ((G.rescale(guided, ec, 0.0, x=x, alpha=a, sigma=s) - guided).abs() <= 1e-12 * (1 + guided.abs())).all())
    clipped = G.static_threshold(guided, x=x, alpha=a, sigma=s, limit=1.0)
    x0 = (x - s * clipped) / a
    assert float(x0.abs().max()) <= 1.0 + 1e-12
    dyn = G.dynamic_threshold(guided, x=x, alpha=a, sigma=s, percentile=0.9)
    assert float(((x - s * dyn) / a).abs().max()) <= 1.0 + 1e-12
    with pytest.raises(ValueError, match="d >= 2"):
        G.rescale(torch.zeros(3, 1), torch.zeros(3, 1), 0.5, x=torch.zeros(3, 1), alpha=a, sigma=s)
    with pytest.raises(ValueError, match="phi"):
        G.rescale(guided, ec, 1.5, x=x, alpha=a, sigma=s)
    with pytest.raises(ValueError, match="percentile"):
        G.dynamic_threshold(guided, x=x, alpha=a, sigma=s, percentile=0.0)


def test_guided_denoisers_do_not_modify_inputs_and_interval():
    world = get_world("ring2d")
    den = G.CountingDenoiser(AnalyticDenoiser(world))
    x = world.law(None).sample(8, torch.Generator().manual_seed(7))
    before = x.clone()
    sched = get_schedule("vp-linear")
    guided = G.CFGDenoiser(den, 1, w=3.0, interval=(0.3, 0.9))
    inside, outside = 0.2, 0.9  # sigma(0.2) ~ 0.82 in the interval; sigma(0.9) ~ 0.998 outside
    assert 0.3 <= float(sched.sigma(inside)) <= 0.9 < float(sched.sigma(outside))
    torch.testing.assert_close(guided.eps(x, outside, 1), den.denoiser.eps(x, outside, 1), rtol=0, atol=0)
    assert not torch.equal(guided.eps(x, inside, 1), den.denoiser.eps(x, inside, 1))
    assert torch.equal(x, before)
    with pytest.raises(ValueError, match="interval"):
        G.CFGDenoiser(den, 1, w=1.0, interval=(0.9, 0.3))
    with pytest.raises(ValueError, match="t"):
        guided.eps(x, torch.tensor([0.1, 0.2]), 1)


def test_counting_denoiser():
    world = get_world("attributes2d")
    counter = G.CountingDenoiser(AnalyticDenoiser(world))
    x = world.law(None).sample(10, torch.Generator().manual_seed(8))
    G.CFGDenoiser(counter, ("red", "dog"), w=2.0).eps(x, 0.5, ("red", "dog"))
    assert (counter.calls, counter.points) == (1, 20)  # one batched call of 2 x 10 rows
