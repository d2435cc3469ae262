"""The rule functions of ``verify.rules`` (``cfg``, ``classifier_guidance``, ``negative_prompt_000/001``, ``compose``,
``rescale``, ``static_threshold``, ``dynamic_threshold``, ``guidance_scale_from``) against their formulas, written
independently here; the linear rules' weights against those functions; and the guided denoiser that any rule builds
(batching, the guidance interval, inputs left unchanged). Each rule's own behaviour is in its own test file."""

from __future__ import annotations

import math

import pytest
import torch

from toy_models import AnalyticDenoiser, get_schedule, get_world
from toy_models.denoiser import CountingDenoiser
from toy_models.gaussian_mixture import normalize_condition
from verify import rules
from verify.rules._math import guidance_scale_from
from verify.rules.cfg import cfg
from verify.rules.classifier import ExactNoisyClassifier, classifier_guidance
from verify.rules.compose import compose
from verify.rules.dynamic_threshold import dynamic_threshold
from verify.rules.negative_prompt_000 import negative_prompt_000
from verify.rules.negative_prompt_001 import negative_prompt_001
from verify.rules.rescale import rescale
from verify.rules.static_threshold import static_threshold
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
        assert bool(((cfg(eu, ec, w=w) - want).abs() <= tol).all())
        assert torch.equal(cfg(eu, ec, w=w), cfg(eu, ec, guidance_scale=1 + w))
    with pytest.raises(ValueError, match="exactly one"):
        cfg(eu, ec, w=1.0, guidance_scale=2.0)
    with pytest.raises(ValueError, match="exactly one"):
        cfg(eu, ec)
    with pytest.raises(ValueError, match="finite"):
        cfg(eu, ec, w=float("nan"))


def test_guidance_scale_from_either_convention():
    """guidance_scale = 1 + w (docs/conventions.md); exactly one of the two, by keyword."""
    assert guidance_scale_from(w=2.5) == 3.5 and guidance_scale_from(guidance_scale=3.5) == 3.5
    assert guidance_scale_from(w=torch.tensor([2.5], dtype=F64)) == 3.5  # a one-element tensor is one value
    for kw in ({}, {"w": 1.0, "guidance_scale": 2.0}):
        with pytest.raises(ValueError, match="^w, guidance_scale:"):
            guidance_scale_from(**kw)
    with pytest.raises(ValueError, match="^guidance_scale:"):
        guidance_scale_from(guidance_scale=float("inf"))


def test_cfg_endpoints_are_exact():
    eu, ec, _, _ = _eps(1)
    assert torch.equal(cfg(eu, ec, guidance_scale=0.0), eu) and torch.equal(cfg(eu, ec, guidance_scale=1.0), ec)


def test_negative_prompts_and_composition_formulas():
    en, ep, eg, e3 = _eps(2)
    got = negative_prompt_000(en, ep, eg, 7.5, 2.0)
    want = en + 7.5 * (ep - en) - 2.0 * (eg - en)
    assert bool(((got - want).abs() <= gamma(6, F64) * 12 * (en.abs() + ep.abs() + eg.abs())).all())
    assert torch.equal(negative_prompt_001(ep, eg, guidance_scale=7.5), cfg(eg, ep, guidance_scale=7.5))
    comp = compose(en, [ep, eg, e3], [1.0, -0.5, 2.0])
    want = ep - 0.5 * eg + 2.0 * e3 + (1 - 2.5) * en
    assert bool(((comp - want).abs() <= gamma(8, F64) * 4 * (en.abs() + ep.abs() + eg.abs() + e3.abs())).all())
    with pytest.raises(ValueError, match="eps_conds, weights"):
        compose(en, [ep], [1.0, 2.0])


def test_linear_rules_match_the_combiners():
    """Each linear rule's ``linear_weights`` put on its branches' predictions, and the rule guiding the denoiser,
    against the rule function written for it; the weights sum to 1 (exact without guidance)."""
    world = get_world("attributes2d")
    den = AnalyticDenoiser(world)
    x = world.law(None).sample(32, torch.Generator().manual_seed(3))
    t = 0.4
    e = {c: den.eps(x, t, c) for c in (None, ("dog",), ("red",), ("red", "dog"), ("blue", "dog"))}
    cases = [  # (rule, the conditions of its branches, the rule function's answer)
        (rules.get("cfg", w=3.0), {"cond": ("red", "dog")}, cfg(e[None], e[("red", "dog")], w=3.0)),
        (rules.get("negative_prompt_000", w_pos=4.0, w_neg=1.0), {"cond": ("dog",), "negative": ("red",)},
         negative_prompt_000(e[None], e[("dog",)], e[("red",)], 4.0, 1.0)),
        (rules.get("negative_prompt_001", guidance_scale=5.0), {"cond": ("dog",), "negative": ("red",)},
         negative_prompt_001(e[("dog",)], e[("red",)], guidance_scale=5.0)),
        (rules.get("compose", weights=[1.0, 1.0]), {"cond_1": ("red", "dog"), "cond_2": ("blue", "dog")},
         compose(e[None], [e[("red", "dog")], e[("blue", "dog")]], [1.0, 1.0])),
    ]
    for rule, conditions, want in cases:
        weights = rule.linear_weights
        assert set(weights) == set(rule.branches), rule.name
        # a handful of weights of size <= 5: their sum rounds at most 4 times
        assert abs(sum(weights.values()) - 1.0) <= 4 * U * sum(abs(v) for v in weights.values()), rule.name
        preds = {normalize_condition(c): v for c, v in e.items()}
        branch_eps = {b: preds[normalize_condition(conditions.get(b))] for b in rule.branches}
        by_weights = sum(weights[b] * branch_eps[b] for b in rule.branches)
        # both sides are sums of at most 3 weighted terms: 8 roundings of the terms' magnitudes, doubled
        scale = sum(abs(weights[b]) * branch_eps[b].abs() for b in rule.branches)
        assert bool(((by_weights - want).abs() <= gamma(8, F64) * 2 * scale).all()), rule.name
        # the guided denoiser computes the rule function on the same batched predictions: bit for bit
        assert torch.equal(rule.guide(den, conditions).eps(x, t), want), rule.name
    with pytest.raises(ValueError, match="^name:"):
        rules.get("nope")


def test_cfg_is_classifier_guidance():
    """Proposition 1 numerically: CFG at w equals classifier guidance with the exact noisy classifier at 1 + w."""
    world = get_world("ring2d")
    den = AnalyticDenoiser(world)
    sched = get_schedule("vp-linear")
    x = world.law(None).sample(64, torch.Generator().manual_seed(4))
    classifier = ExactNoisyClassifier(world, "vp-linear")
    for t in (0.05, 0.5, 0.95):
        a, s = (float(v) for v in sched.alpha_sigma(t))
        marginal = world.law(None).noised(a, s)
        for w in (1.0, 7.0):
            cfg_eps = rules.get("cfg", w=w).guide(den, 2).eps(x, t)
            cg_eps = rules.get("classifier", scale=1 + w, classifier=classifier).guide(den, 2).eps(x, t)
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
    got = -rules.get("cfg", w=w).guide(den, 1).eps(x.detach(), t) / s
    # scores of size <= ~20 with a few dozen roundings each
    assert bool(((got - score).abs() <= 1e3 * U * (1 + score.abs())).all())


def test_classifier_guidance_eps_form():
    eps, grad, _, _ = _eps(5)
    got = classifier_guidance(eps, grad, 0.7, 3.0)
    assert bool(((got - (eps - 2.1 * grad)).abs() <= gamma(3, F64) * (eps.abs() + 2.1 * grad.abs())).all())


def test_rescale_and_thresholds():
    world = get_world("tokens16d")
    den = AnalyticDenoiser(world)
    x = world.law(None).noised(0.5, 0.87).sample(32, torch.Generator().manual_seed(6))
    a, s = 0.5, 0.87
    eu, ec = den.eps(x, 0.5, None), den.eps(x, 0.5, ("b0+",))
    guided = cfg(eu, ec, w=7.0)
    full = rescale(guided, ec, 1.0, x=x, alpha=a, sigma=s, space="eps")
    # phi = 1 matches the std: full = guided * ratio rounds once per entry, the ratio twice, each std (centring,
    # d squares and sums, division, root) errs by (d + 4) u std + 2 u max|y|: (2d + 12) u (std + max|y|) covers both
    d = full.shape[1]
    bound = (2 * d + 12) * U * (ec.std(dim=1) + full.abs().amax(1) + ec.abs().amax(1))
    assert bool(((full.std(dim=1) - ec.std(dim=1)).abs() <= bound).all())
    assert torch.equal(rescale(guided, ec, 0.0, x=x, alpha=a, sigma=s), guided)  # phi = 0: unchanged, exactly
    # the clipped x0 (|c| <= 1) goes back to eps = (x - a c)/s and here forward again: each way a product, a
    # difference and a quotient, so the recomputed x0 is within 8 u (|x| + a) / a of c
    clipped = static_threshold(guided, x=x, alpha=a, sigma=s, limit=1.0)
    x0 = (x - s * clipped) / a
    assert bool((x0.abs() <= 1.0 + 8 * U * (x.abs() + a) / a).all())
    dyn = dynamic_threshold(guided, x=x, alpha=a, sigma=s, percentile=0.9)
    assert bool((((x - s * dyn) / a).abs() <= 1.0 + 8 * U * (x.abs() + a) / a).all())
    with pytest.raises(ValueError, match="d >= 2"):
        rescale(torch.zeros(3, 1), torch.zeros(3, 1), 0.5, x=torch.zeros(3, 1), alpha=a, sigma=s)
    with pytest.raises(ValueError, match="phi"):
        rescale(guided, ec, 1.5, x=x, alpha=a, sigma=s)
    with pytest.raises(ValueError, match="percentile"):
        dynamic_threshold(guided, x=x, alpha=a, sigma=s, percentile=0.0)


def test_guided_denoisers_do_not_modify_inputs_and_interval():
    """The guidance interval (Kynkaanniemi et al. 2024) is in EDM's noise level sigma_t / alpha_t, open below and
    closed above: (sigma_lo, sigma_hi]. Outside it the guided prediction is the conditional one, bit for bit."""
    world = get_world("ring2d")
    den = CountingDenoiser(AnalyticDenoiser(world))
    x = world.law(None).sample(8, torch.Generator().manual_seed(7))
    before = x.clone()
    sched = get_schedule("vp-linear")

    def noise_to_signal(t):
        a, s = (float(v) for v in sched.alpha_sigma(t))
        return s / a

    lo, hi = 0.3, 2.0
    guided = rules.get("interval", rule=rules.get("cfg", w=3.0), sigma_lo=lo, sigma_hi=hi).guide(den, 1)
    inside, outside_high, outside_low = 0.2, 0.9, 0.005
    assert lo < noise_to_signal(inside) <= hi < noise_to_signal(outside_high)
    assert noise_to_signal(outside_low) <= lo
    for t in (outside_high, outside_low):
        torch.testing.assert_close(guided.eps(x, t), den.denoiser.eps(x, t, 1), rtol=0, atol=0)
    assert not torch.equal(guided.eps(x, inside), den.denoiser.eps(x, inside, 1))
    assert torch.equal(x, before)
    with pytest.raises(ValueError, match="^sigma_lo, sigma_hi:"):
        rules.get("interval", rule=rules.get("cfg", w=1.0), sigma_lo=2.0, sigma_hi=0.3)
    with pytest.raises(ValueError, match="^t:"):
        guided.eps(x, torch.tensor([0.1, 0.2]))


def test_counting_denoiser():
    world = get_world("attributes2d")
    counter = CountingDenoiser(AnalyticDenoiser(world))
    x = world.law(None).sample(10, torch.Generator().manual_seed(8))
    rules.get("cfg", w=2.0).guide(counter, ("red", "dog")).eps(x, 0.5)
    assert (counter.calls, counter.points) == (1, 20)  # one batched call of 2 x 10 rows


# --------------------------------------------------------------------------------------------------------------
# Rescale (Lin et al. 2023, eqs. 15-16) in every space, against the paper's formula written out here
# --------------------------------------------------------------------------------------------------------------
SPACES = ("eps", "score", "x0", "v")
# (alpha, sigma): a VP pair and a non-VP pair with sigma > 1 (edm-like), so alpha/sigma mix-ups show
COEFFICIENTS = [(0.6, 0.8), (1.0, 2.5)]


def _to_space(e, space, x, a, s):
    """The definitions (docs/conventions.md): value and a running-error magnitude M (|rounding| <= 8 u M: at most 6
    roundings along any term (x0: product, difference, quotient; v: three more), 8 covering O(u^2))."""
    if space == "eps":
        return e, torch.zeros_like(e)
    if space == "score":
        return -e / s, e.abs() / s
    x0, m_x0 = (x - s * e) / a, (x.abs() + s * e.abs()) / a
    if space == "x0":
        return x0, m_x0
    return a * e - s * x0, a * e.abs() + s * m_x0


def _from_space(y, space, x, a, s):
    """Back to eps: value, gain on an error of y, and own-rounding magnitude (<= 8 u times it, as above)."""
    if space == "eps":
        return y, 1.0, torch.zeros_like(y)
    if space == "score":
        return -s * y, s, s * y.abs()
    if space == "x0":
        return (x - a * y) / s, a / s, (x.abs() + a * y.abs()) / s
    n2 = a * a + s * s
    return (a * y + s * x) / n2, a / n2, (a * y.abs() + s * x.abs()) / n2


def _rescale_reference(eg, ec, x, a, s, phi, space):
    """Eqs. 15-16 of Lin et al. written out: y_rescaled = y_cfg std(y_c) / std(y_cfg), phi y_rescaled +
    (1 - phi) y_cfg, with the standard deviation over the features; and a bound on |library - reference|.

    Error budget per row (d features), both sides computed in float64 with the same number of roundings:
    * the conversions: |dy| <= 8 u M elementwise (see _to_space);
    * a standard deviation: torch.std centres (the mean's error only enters at second order), subtracts (u max|y|
      per deviation), squares and sums (gamma_{d+2}), divides and takes the root; so
      |d std| <= ||dy||_2 / sqrt(d - 1) + 2 u max|y| + (d + 4) u std;
    * the ratio: relative eps_r = d std_g / std_g + d std_c / std_c + 2u;
    * the blend phi y r + (1 - phi) y: phi r (|y| eps_r + |dy|) + (1 - phi)|dy| + 4 u (phi r + 1 - phi)|y|;
    * back to eps: the gain times that, plus 8 u times the back conversion's magnitude.
    Doubled for the two sides, doubled again for the O(u^2) terms the first-order budget drops."""
    d = eg.shape[1]
    yg, mg = _to_space(eg, space, x, a, s)
    yc, mc = _to_space(ec, space, x, a, s)
    std_g, std_c = yg.std(dim=1, keepdim=True), yc.std(dim=1, keepdim=True)
    ratio = std_c / std_g
    want_y = phi * yg * ratio + (1 - phi) * yg
    want, gain, m_back = _from_space(want_y, space, x, a, s)

    def d_std(y, m, std):
        return (8 * U * m).norm(dim=1, keepdim=True) / math.sqrt(d - 1) + 2 * U * y.abs().amax(1, keepdim=True) \
            + (d + 4) * U * std

    eps_r = d_std(yg, mg, std_g) / std_g + d_std(yc, mc, std_c) / std_c + 2 * U
    d_blend = phi * ratio * (yg.abs() * eps_r + 8 * U * mg) + (1 - phi) * 8 * U * mg \
        + 4 * U * (phi * ratio + 1 - phi) * yg.abs()
    return want, 4 * (gain * d_blend + 8 * U * m_back)


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize(("alpha", "sigma"), COEFFICIENTS)
@pytest.mark.parametrize("phi", [0.3, 0.7, 1.0])
def test_rescale_matches_the_paper_in_every_space(space, alpha, sigma, phi):
    """Both predictions go to ``space`` before their spreads are compared (a combiner that measured std(eps_c)
    against std(v_cfg) would fail every space but eps, by far more than the budget: the ratio changes by O(1))."""
    gen = torch.Generator().manual_seed(12)
    x = 2.0 * torch.randn(24, 5, dtype=F64, generator=gen)
    eu, ec = (torch.randn(24, 5, dtype=F64, generator=gen) for _ in range(2))
    eg = cfg(eu, ec, guidance_scale=7.5)
    got = rescale(eg, ec, phi, x=x, alpha=alpha, sigma=sigma, space=space)
    want, tol = _rescale_reference(eg, ec, x, alpha, sigma, phi, space)
    err = (got - want).abs()
    assert bool((err <= tol).all()), float((err / tol).max())


@pytest.mark.parametrize("space", SPACES)
def test_rescale_at_zero_spread_returns_the_guided_prediction(space):
    """A constant guided prediction (in the rescale space) has no spread to rescale: the row comes back unchanged,
    bit for bit, for every phi (diffusers divides by its zero std and returns inf/NaN there)."""
    a, s = 0.6, 0.8
    # a row-constant eps with a row-constant x: every elementwise conversion gives a row-constant prediction, in
    # floating point too (the same operations on the same numbers), so the spread is exactly 0 in every space.
    # torch.std does not always say so: for one row of three copies of -0.867... it returns 1.4e-16 (the mean of
    # three equal numbers rounds; batched rows happen to take another path), and a ratio std_c / 1e-16 would turn
    # the row into ~1e15 instead of leaving it alone
    ec = torch.tensor([[0.0, 1.0, 2.0], [1.0, -1.0, 0.5]], dtype=F64)
    for x_row, e_row in ((0.5, -0.8672528536352859), (-1.3, 0.1)):
        x = torch.full((1, 3), x_row, dtype=F64)
        eg = torch.full((1, 3), e_row, dtype=F64)
        y = _to_space(eg, space, x, a, s)[0]
        assert torch.equal(y.amax(dim=1), y.amin(dim=1))
        for phi in (0.0, 0.5, 1.0):
            got = rescale(eg, ec[:1], phi, x=x, alpha=a, sigma=s, space=space)
            assert torch.equal(got, eg), (space, phi)
    assert float(torch.full((1, 3), -0.8672528536352859, dtype=F64).std(dim=1)) > 0  # the trap is real


def test_rescale_near_zero_spread_is_finite_and_follows_the_formula():
    """std(y_cfg) ~ 1e-320 (subnormal) against std(y_c) ~ 1: the ratio 1e320 is not representable, the rescaled
    prediction is (y / std_g) std_c ~ 1: finite and computed exactly as eq. 15 says (here in exact binary
    arithmetic: y = (0, 2^-1070, 2 * 2^-1070), std_g = 2^-1070, y / std_g = (0, 1, 2), std_c = 1)."""
    tiny = 2.0**-1070
    eg = torch.tensor([[0.0, tiny, 2 * tiny]], dtype=F64)
    ec = torch.tensor([[-1.0, 0.0, 1.0]], dtype=F64)  # std 1
    got = rescale(eg, ec, 1.0, x=torch.zeros(1, 3, dtype=F64), alpha=0.6, sigma=0.8, space="eps")
    assert torch.equal(got, torch.tensor([[0.0, 1.0, 2.0]], dtype=F64))
    # where the rescaled prediction itself overflows, a refusal naming the guided prediction, never inf or NaN
    eg = torch.tensor([[1.0, 1.0 + 2.0**-52, 1.0]], dtype=F64)  # std 1.3e-16
    ec = torch.tensor([[0.0, 1e300, -1e300]], dtype=F64)
    with pytest.raises(ValueError, match=r"^eps_guided:.*overflows"):
        rescale(eg, ec, 0.5, x=torch.zeros(1, 3, dtype=F64), alpha=0.6, sigma=0.8, space="eps")
    # predictions near the largest double: the spreads are computed on scaled rows, the answer is finite
    big = torch.tensor([[1e300, -1e300, 5e299]], dtype=F64)
    got = rescale(big, 0.5 * big, 1.0, x=torch.zeros(1, 3, dtype=F64), alpha=0.6, sigma=0.8, space="eps")
    torch.testing.assert_close(got, 0.5 * big, rtol=8 * U, atol=0)  # ratio 1/2: y * (1/2), a few roundings


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"phi": -0.1}, "^phi:"), ({"phi": 1.5}, "^phi:"), ({"phi": float("nan")}, "^phi:"),
    ({"space": "latent"}, "^space:"), ({"alpha": 0.0}, "^alpha:"), ({"sigma": -0.8}, "^sigma:"),
])
def test_rescale_refusals(kwargs, match):
    eg, ec, x, _ = _eps(40, 4, 3)
    args = {"phi": 0.7, "x": x, "alpha": 0.6, "sigma": 0.8, "space": "v"} | kwargs
    phi = args.pop("phi")
    with pytest.raises(ValueError, match=match):
        rescale(eg, ec, phi, **args)


# --------------------------------------------------------------------------------------------------------------
# Classifier guidance as a linear rule
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [0.0, 1.0, 4.0])
def test_classifier_rule_is_classifier_guidance_with_the_exact_classifier(scale):
    """rules.get("classifier", scale=s, classifier=ExactNoisyClassifier(world)) has the linear weights s on
    eps(c) and 1 - s on eps(null): with the exact noisy classifier grad log p_t(c|x) = grad log p_t(x|c) - grad log
    p_t(x), eps(null) - s sigma grad log p_t(c|x) (Dhariwal & Nichol 2021, Algorithm 2) is that weighted sum, at
    every noise level. With a clean classifier the rule is not linear."""
    world = get_world("ring2d")
    den = AnalyticDenoiser(world)
    rule = rules.get("classifier", scale=scale, classifier=ExactNoisyClassifier(world, "vp-linear"))
    assert rule.linear_weights == {"cond": scale, "uncond": 1.0 - scale}
    assert rules.get("classifier", scale=scale, classifier=lambda x, t, c: x).linear_weights is None
    guided = rule.guide(den, {"cond": 3})
    x = world.law(None).sample(64, torch.Generator().manual_seed(41))
    sched = get_schedule("vp-linear")
    for t in (0.1, 0.5, 0.9):
        a, s = (float(v) for v in sched.alpha_sigma(t))
        marginal = world.law(None).noised(a, s)
        eps_u, eps_c = den.eps(x, t, None), den.eps(x, t, 3)
        got = scale * eps_c + (1.0 - scale) * eps_u
        want = classifier_guidance(eps_u, marginal.grad_log_posterior(x, 3), s, scale)
        # both are -sigma times scores: the weighted scores each within their forward bound (score_bounds), the
        # classifier gradient within the conditional's and the marginal's forward-plus-autograd bounds; the
        # combinations add 6 roundings of terms of size (1 + 2|s|)|eps|
        (cf, cb), (mf, mb) = score_bounds(world.law(3).noised(a, s), x), score_bounds(marginal, x)
        tol = s * ((abs(scale) + abs(1 - scale)) * (cf + mf) + abs(scale) * (cf + 2 * cb + mf + 2 * mb)) \
            + gamma(6, F64) * (1 + 2 * abs(scale)) * (eps_u.norm(dim=-1) + eps_c.norm(dim=-1))
        assert bool(((got - want).norm(dim=-1) <= tol).all()), t
        # the guided denoiser evaluates the same function with the same classifier gradient: bit for bit
        assert torch.equal(guided.eps(x, t), want)


# --------------------------------------------------------------------------------------------------------------
# The input policy at the combiners' edges
# --------------------------------------------------------------------------------------------------------------
def _combiner_calls(a, b, c):
    return {
        "cfg": lambda: cfg(a, b, guidance_scale=3.0),
        "classifier_guidance": lambda: classifier_guidance(a, b, 0.5, 2.0),
        "negative_prompt_000": lambda: negative_prompt_000(a, b, c, 3.0, 1.0),
        "negative_prompt_001": lambda: negative_prompt_001(b, a, guidance_scale=3.0),
        "compose": lambda: compose(a, [b, c], [2.0, -0.5]),
    }


def test_combiners_refuse_mismatched_shapes_and_dtypes():
    a, b, c, _ = _eps(50, 4, 3)
    for call in _combiner_calls(a, b[:, :1], c).values():  # [N, 1] against [N, 3]: no broadcasting
        with pytest.raises(ValueError, match=r"shape"):
            call()
    for call in _combiner_calls(a, b.float(), c).values():
        with pytest.raises(TypeError, match=r"dtype"):
            call()
    for call in _combiner_calls(a, b.to(torch.complex128), c).values():
        with pytest.raises(TypeError, match=r"complex"):
            call()
    for call in _combiner_calls(a, b > 0, c).values():
        with pytest.raises(TypeError, match=r"bool"):
            call()
    nan = b.clone()
    nan[1, 2] = float("nan")
    for call in _combiner_calls(a, nan, c).values():
        with pytest.raises(ValueError, match=r"NaN"):
            call()


def test_combiner_refusals_name_the_argument():
    a, b, c, _ = _eps(51, 4, 3)
    cases = [
        (lambda: cfg(a, b[:, :1], w=1.0), "^eps_cond:"),
        (lambda: cfg(a, b, w="three"), "^w:"),
        (lambda: cfg(a, b, guidance_scale=float("inf")), "^guidance_scale:"),
        (lambda: classifier_guidance(a, b, -0.5, 2.0), "^sigma:"),
        (lambda: classifier_guidance(a, b, float("nan"), 2.0), "^sigma:"),
        (lambda: classifier_guidance(a, b, torch.full((3,), 0.5, dtype=F64), 2.0), "^sigma:"),
        (lambda: classifier_guidance(a, b, 0.5, float("nan")), "^scale:"),
        (lambda: classifier_guidance(a, b[:2], 0.5, 1.0), "^grad_log_classifier:"),
        (lambda: negative_prompt_000(a, b, c, 3.0, float("nan")), "^w_neg:"),
        (lambda: negative_prompt_000(a, b, c[:, :2], 3.0, 1.0), "^eps_neg:"),
        (lambda: compose(a, [b, c[:, :1]], [1.0, 1.0]), "^eps_conds: entry 1"),
        (lambda: compose(a, [b], [float("nan")]), "^weights:"),
        (lambda: compose(a, [b], ["1"]), "^weights:"),
        (lambda: compose(a, [b], [1.0, 2.0]), "^eps_conds, weights:"),
        (lambda: static_threshold(a, x=c, alpha=0.5, sigma=0.5, limit=-1.0), "^limit:"),
        (lambda: static_threshold(a, x=c, alpha=0.5, sigma=0.5, limit=0.0), "^limit:"),
        (lambda: static_threshold(a, x=c, alpha=0.5, sigma=0.5, limit=float("inf")), "^limit:"),
        (lambda: dynamic_threshold(a, x=c, alpha=0.5, sigma=0.5, limit=float("nan")), "^limit:"),
        (lambda: dynamic_threshold(a, x=c, alpha=0.5, sigma=0.5, percentile=1.5), "^percentile:"),
        (lambda: static_threshold(a, x=c[:, :1], alpha=0.5, sigma=0.5), "^x:"),
        (lambda: rules.get("classifier", scale=float("nan"), classifier=lambda x, t, c: x), "^scale:"),
        (lambda: rules.get("classifier", scale=1.0, classifier=None), "^classifier:"),
        (lambda: rules.get("compose", weights=[1.0, float("nan")]), "^weights:"),
    ]
    for call, match in cases:
        with pytest.raises((ValueError, TypeError), match=match):
            call()


def test_combiners_keep_the_dtype_and_convert_integers_exactly():
    a, b, c, _ = _eps(52, 4, 3)
    for name, call in _combiner_calls(a.float(), b.float(), c.float()).items():
        assert call().dtype == torch.float32, name
    ai, bi, ci = ((10 * t).round().long() for t in (a, b, c))
    for (name, call), (_, ref) in zip(_combiner_calls(ai, bi, ci).items(),
                                      _combiner_calls(ai.double(), bi.double(), ci.double()).items(), strict=True):
        out = call()
        assert out.dtype == F64 and torch.equal(out, ref()), name  # the same doubles, the same result


def test_combiners_stay_finite_near_the_largest_double():
    """eps_c - eps_u of two values near +-1.5e308 overflows; the guided prediction (here 0 and 7.5e307) does not.
    The combiners scale by a power of two (exact) and give the exact-range answer; a guided prediction that itself
    overflows is refused, naming the argument, never returned as inf or NaN."""
    big = torch.tensor([[1.5e308, -1.5e308]], dtype=F64)
    torch.testing.assert_close(cfg(-big, big, guidance_scale=0.5), torch.zeros(1, 2, dtype=F64), rtol=0, atol=0)
    torch.testing.assert_close(cfg(-big, big, guidance_scale=0.75), 0.5 * big, rtol=2 * U, atol=0)
    torch.testing.assert_close(negative_prompt_000(big, -big, big, 0.5, 0.0), torch.zeros(1, 2, dtype=F64),
                               rtol=0, atol=0)
    torch.testing.assert_close(compose(big, [-big], [0.5]), torch.zeros(1, 2, dtype=F64), rtol=0, atol=0)
    for call in (lambda: cfg(-big, big, guidance_scale=3.0), lambda: classifier_guidance(big, -big, 1.0, 2.0)):
        with pytest.raises(ValueError, match="overflows"):
            call()


def test_thresholds_return_unclipped_entries_exactly():
    """Where thresholding leaves x0 unchanged, the consistent eps is eps itself (no eps -> x0 -> eps round trip,
    which would cost a factor |x| / sigma in rounding)."""
    x = torch.tensor([[0.1, 5.0, -0.2]], dtype=F64)
    eps = torch.tensor([[0.3, -0.4, 0.25]], dtype=F64)
    a, s = 0.5, 0.5
    x0 = (x - s * eps) / a  # (-0.1, 10.4, -0.65): only the middle entry leaves [-1, 1]
    out = static_threshold(eps, x=x, alpha=a, sigma=s, limit=1.0)
    assert out[0, 0] == eps[0, 0] and out[0, 2] == eps[0, 2]
    assert abs(float((x[0, 1] - a * out[0, 1]) / s) - float(eps[0, 1])) > 1  # the clipped entry did change
    assert abs(float((x[0, 1] - s * out[0, 1]) / a) - 1.0) <= 8 * U * float(x0.abs().max())
