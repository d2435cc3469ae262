r"""Tests for :mod:`toy_models.parametrization`.

The definitions are re-written here from the module docstring, independently of the library's code paths:
x = alpha x0 + sigma eps, v = alpha eps - sigma x0, score = -eps/sigma.

Tolerances are first-order forward-error bounds in the float64 unit roundoff u = 2**-53 (IEEE +, -, *, / and
sqrt are correctly rounded, so each contributes a relative error <= u to the value it produces); each is
derived
in a comment beside it, elementwise, in terms of the magnitudes of the terms being added. Where a bound is
multiplied by 2 it is to absorb the O(u^2) terms the first-order analysis drops.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from toy_models.parametrization import (
    PARAMETRIZATIONS,
    convert,
    eps_to_score,
    eps_to_v,
    eps_to_x0,
    score_to_eps,
    v_to_eps,
    v_to_x0,
    x0_to_eps,
)

U = 2.0**-53
N, D = 64, 3

# (alpha, sigma): VP pairs on the quarter circle, and non-VP pairs (VE-like, sub-unit, extreme ratios)
VP_PAIRS = [(math.cos(th), math.sin(th)) for th in (0.05, 0.7, 1.2, 1.55)]
NON_VP_PAIRS = [(1.0, 5.0), (0.3, 0.2), (1.0, 0.01), (2.0, 0.5), (0.02, 40.0)]
PAIRS = VP_PAIRS + NON_VP_PAIRS


def _randn(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _tensor_coefficients(seed):
    """Per-row [N, 1] coefficients, log-uniform in [0.05, 5] each (so non-VP)."""
    g = torch.Generator().manual_seed(seed)
    la = torch.empty(N, 1, dtype=torch.float64).uniform_(math.log(0.05), math.log(5.0), generator=g)
    ls = torch.empty(N, 1, dtype=torch.float64).uniform_(math.log(0.05), math.log(5.0), generator=g)
    return la.exp(), ls.exp()


def _world(alpha, sigma, seed=0):
    """x0, eps, and x, v, score built from the definitions (each product/sum rounded once)."""
    x0, eps = _randn(seed, N, D), _randn(seed + 1, N, D)
    x = alpha * x0 + sigma * eps
    v = alpha * eps - sigma * x0
    score = -eps / sigma
    return {"x0": x0, "eps": eps, "x": x, "v": v, "score": score}


def _abs(c):
    return abs(c) if not isinstance(c, torch.Tensor) else c.abs()


# ------------------------------------------------------------------------------------------------------------
# 1. Round trips eps -> {score, x0, v} -> eps, for arbitrary (not necessarily consistent) x and eps
# ------------------------------------------------------------------------------------------------------------
def _round_trip_errors(alpha, sigma, seed):
    x, eps = 3.0 * _randn(seed, N, D), _randn(seed + 1, N, D)
    s2 = alpha * alpha + sigma * sigma
    out = []

    # score: fl(-eps/sigma) then fl(-sigma * score): eps (1 + d1)(1 + d2), |d| <= u
    #   =>  |err| <= (2u + u^2)|eps|
    back = score_to_eps(eps_to_score(eps, sigma), sigma)
    out.append(((back - eps).abs(), (2 * U + U * U) * eps.abs()))

    # x0: x0' = (x - sigma eps)/alpha = X0 + e0 with |e0| <= u (sigma|eps|/alpha + 2|X0|) (the product, the
    # subtraction and the division each round once). eps' = (x - alpha x0')/sigma then errs by
    # alpha|e0|/sigma (propagated) + u alpha|X0|/sigma (product) + 2u|eps| (subtraction, division):
    # |err| <= 3u (|eps| + alpha |X0| / sigma) to first order; 4u covers the O(u^2) remainder.
    x0 = eps_to_x0(x, eps, alpha, sigma)
    back = x0_to_eps(x, x0, alpha, sigma)
    out.append(((back - eps).abs(), 4 * U * (eps.abs() + alpha * x0.abs() / sigma)))

    # v: with s = alpha^2 + sigma^2 (2 roundings, relative <= 2u), eps_to_v = (s eps - sigma x)/alpha errs by
    # dv <= (3u s|eps| + u sigma|x|)/alpha + 2u|V|; v_to_eps = (alpha v + sigma x)/s then errs by
    # [alpha dv + u alpha|V| + u sigma|x|]/s + 4u|eps| = 7u|eps| + u (2 sigma|x| + 3 alpha|V|)/s
    # (the 1/alpha of the first step is cancelled by the alpha of the second); bounded by 8u (...) below.
    v = eps_to_v(x, eps, alpha, sigma)
    back = v_to_eps(x, v, alpha, sigma)
    out.append(((back - eps).abs(), 8 * U * (eps.abs() + (sigma * x.abs() + alpha * v.abs()) / s2)))
    return out


@pytest.mark.parametrize(("alpha", "sigma"), PAIRS)
def test_round_trips_through_eps(alpha, sigma):
    for err, tol in _round_trip_errors(alpha, sigma, seed=11):
        assert bool((err <= tol).all()), float((err / tol).max())


def test_round_trips_with_tensor_coefficients():
    alpha, sigma = _tensor_coefficients(5)
    for err, tol in _round_trip_errors(alpha, sigma, seed=13):
        assert bool((err <= tol).all())


@settings(derandomize=True, deadline=None, database=None, max_examples=60)
@given(vp=st.booleans(),
       a=st.floats(min_value=-3.0, max_value=3.0), b=st.floats(min_value=-3.0, max_value=3.0),
       theta=st.floats(min_value=1e-3, max_value=math.pi / 2 - 1e-3),
       seed=st.integers(min_value=0, max_value=2**20))
def test_round_trips_random_coefficients(vp, a, b, theta, seed):
    # alpha, sigma log-uniform in [1e-3, 1e3] (non-VP) or on the quarter circle (VP)
    alpha, sigma = (math.cos(theta), math.sin(theta)) if vp else (10.0**a, 10.0**b)
    for err, tol in _round_trip_errors(alpha, sigma, seed):
        assert bool((err <= tol).all())


def test_round_trip_bound_is_not_vacuous():
    """The round-trip bounds are a few u times the data: an error of one part in 1e10 already fails them."""
    alpha, sigma = 0.3, 0.2
    x, eps = 3.0 * _randn(11, N, D), _randn(12, N, D)
    wrong = x0_to_eps(x, eps_to_x0(x, eps, alpha, sigma) * (1 + 1e-10), alpha, sigma)
    tol = 4 * U * (eps.abs() + alpha * eps_to_x0(x, eps, alpha, sigma).abs() / sigma)
    assert not bool(((wrong - eps).abs() <= tol).all())


# ------------------------------------------------------------------------------------------------------------
# 2. Every ordered pair through `convert` recovers the independently built target
# ------------------------------------------------------------------------------------------------------------
def _convert_bound(src, tgt, w, alpha, sigma):
    """First-order error bound of convert(w[src], src, tgt) against the test's w[tgt] (elementwise).

    Input rounding (from _world): x = fl(fl(alpha x0) + fl(sigma eps)) errs by <= 2u Mx with
    Mx = alpha|x0| + sigma|eps| (>= |x|); v likewise by <= 2u Mv with Mv = alpha|eps| + sigma|x0| (>= |v|);
    score by <= u|eps|/sigma; x0 and eps are exact.
    """
    x0, eps = w["x0"], w["eps"]
    mx = alpha * x0.abs() + sigma * eps.abs()
    mv = alpha * eps.abs() + sigma * x0.abs()
    s2 = alpha * alpha + sigma * sigma  # rounded relative <= 2u below
    if src == tgt:
        return torch.zeros_like(x0)  # a clone: exact
    if (src, tgt) == ("v", "x0"):
        # (alpha x - sigma v)/s2: the inputs' 2u Mx, 2u Mv scaled by alpha, sigma; the two products' u each;
        # the subtraction's u |s2 x0|; s2's 2u and the division's u on |x0|
        return 3 * U * (alpha * mx + sigma * mv) / s2 + 4 * U * x0.abs()
    # step 1: src -> eps, error e1 against the true eps
    if src == "eps":
        e1 = torch.zeros_like(eps)
    elif src == "score":  # -sigma * fl(-eps/sigma): two roundings of eps
        e1 = 2 * U * eps.abs()
    elif src == "x0":
        # (x - alpha x0)/sigma: x's 2u Mx, the product's u alpha|x0|, subtraction and division u|eps| each
        e1 = 3 * U * mx / sigma + 2 * U * eps.abs()
    else:
        # v: (alpha v + sigma x)/s2: inputs 2u(alpha Mv + sigma Mx); 3 roundings in the sum, s2's 2u and
        # the division's u on |eps|
        e1 = 4 * U * (alpha * mv + sigma * mx) / s2 + 3 * U * eps.abs()
    # step 2: eps -> tgt, the propagated e1 plus this step's roundings plus the test's own rounding of w[tgt]
    if tgt == "eps":
        return e1
    if tgt == "score":  # -eps'/sigma: e1/sigma, the division's u|score|, the test score's u|score|
        return (e1 + 2 * U * eps.abs()) / sigma
    if tgt == "x0":
        # (x - sigma eps')/alpha: x's 2u Mx, sigma e1, product u sigma|eps|, subtraction u alpha|x0|
        return (sigma * e1 + 3 * U * mx) / alpha + U * x0.abs()
    # v: (s2 eps' - sigma x)/alpha: s2 e1, s2's 2u and the product's u on s2|eps|, x's 2u Mx and the product's
    # u, subtraction and division u|v| each; plus the test v's own 2u Mv
    return (s2 * e1 + 3 * U * s2 * eps.abs() + 3 * U * sigma * mx) / alpha + 4 * U * mv


PAIRS_OF_KINDS = list(itertools.product(PARAMETRIZATIONS, repeat=2))


@pytest.mark.parametrize(("src", "tgt"), PAIRS_OF_KINDS)
@pytest.mark.parametrize(("alpha", "sigma"), PAIRS)
def test_convert_recovers_definitions(src, tgt, alpha, sigma):
    w = _world(alpha, sigma, seed=21)
    got = convert(w[src], src, tgt, x=w["x"], alpha=alpha, sigma=sigma)
    tol = 2 * _convert_bound(src, tgt, w, alpha, sigma)  # 2x: O(u^2) terms
    assert got.shape == w[tgt].shape and got.dtype == torch.float64
    err = (got - w[tgt]).abs()
    assert bool((err <= tol).all()), float((err / tol.clamp_min(1e-300)).max())


@pytest.mark.parametrize(("src", "tgt"), PAIRS_OF_KINDS)
def test_convert_recovers_definitions_tensor_coefficients(src, tgt):
    alpha, sigma = _tensor_coefficients(7)
    w = _world(alpha, sigma, seed=23)
    got = convert(w[src], src, tgt, x=w["x"], alpha=alpha, sigma=sigma)
    assert bool(((got - w[tgt]).abs() <= 2 * _convert_bound(src, tgt, w, alpha, sigma)).all())


@pytest.mark.parametrize(("alpha", "sigma"), PAIRS)
def test_direct_functions_recover_definitions(alpha, sigma):
    w = _world(alpha, sigma, seed=31)
    x = w["x"]
    cases = [
        (eps_to_x0(x, w["eps"], alpha, sigma), "eps", "x0"),
        (x0_to_eps(x, w["x0"], alpha, sigma), "x0", "eps"),
        (v_to_eps(x, w["v"], alpha, sigma), "v", "eps"),
        (v_to_x0(x, w["v"], alpha, sigma), "v", "x0"),
        (eps_to_v(x, w["eps"], alpha, sigma), "eps", "v"),
        (eps_to_score(w["eps"], sigma), "eps", "score"),
        (score_to_eps(w["score"], sigma), "score", "eps"),
    ]
    for got, src, tgt in cases:
        # each direct function is the second step of convert's route from eps, or its first step to eps, so
        # the route's bound (which adds both steps) bounds it
        tol = 2 * _convert_bound(src, tgt, w, alpha, sigma)
        assert bool(((got - w[tgt]).abs() <= tol).all()), (src, tgt)


def test_convert_bound_is_not_vacuous():
    """A sign slip in v (v = sigma x0 - alpha eps) is caught by the v -> eps and eps -> v checks."""
    alpha, sigma = 0.6, 0.8
    w = _world(alpha, sigma, seed=21)
    got = convert(-w["v"], "v", "eps", x=w["x"], alpha=alpha, sigma=sigma)
    assert not bool(((got - w["eps"]).abs() <= 2 * _convert_bound("v", "eps", w, alpha, sigma)).all())


# ------------------------------------------------------------------------------------------------------------
# 3. Tweedie
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("alpha", "sigma"), PAIRS)
def test_score_to_x0_is_tweedie(alpha, sigma):
    x, score = 2.0 * _randn(41, N, D), _randn(42, N, D)
    got = convert(score, "score", "x0", x=x, alpha=alpha, sigma=sigma)
    want = (x + sigma**2 * score) / alpha
    # library: eps = -sigma s (u), sigma eps (u) -> sigma^2 s with 2u; x - (.) (u); / alpha (u).
    # test: sigma^2 (u), * s (u), x + (.) (u), / alpha (u). Each side is within (3u sigma^2|s| + u|x|)/alpha
    # + u|result| <= 4u (|x| + sigma^2|s|)/alpha of the exact value; the difference within twice that.
    tol = 8 * U * (x.abs() + sigma**2 * score.abs()) / alpha
    assert bool(((got - want).abs() <= tol).all())


@pytest.mark.parametrize(("alpha", "sigma"), PAIRS)
def test_tweedie_gives_the_gaussian_posterior_mean(alpha, sigma):
    """For x0 ~ N(m, c^2) the exact score of p_t = N(alpha m, alpha^2 c^2 + sigma^2) is -(x - alpha m)/V and
    E[x0 | x] = m + alpha c^2 (x - alpha m)/V (Gaussian conditioning): score -> x0 must give the posterior
    mean."""
    m, c = 0.7 * _randn(51, 1, D), 0.5 + _randn(52, 1, D).abs()
    x = 3.0 * _randn(53, N, D)
    var = alpha**2 * c**2 + sigma**2
    r = x - alpha * m
    score = -r / var
    got = convert(score, "score", "x0", x=x, alpha=alpha, sigma=sigma)
    want = m + alpha * c**2 * r / var
    # r = x - alpha m carries u(|x| + 2 alpha|m|), var ~3u relative, score ~2 more u: score is within 6u (|x|
    # + alpha|m|)/var of exact; through Tweedie (x + sigma^2 s)/alpha that is multiplied by sigma^2/alpha,
    # plus Tweedie's own 4u (|x| + sigma^2|s|)/alpha (previous test). want: m + (.) with c^2, the products,
    # the division and the sum: <= 8u (|m| + alpha c^2 (|x| + alpha|m|)/var). Sum of these, doubled for
    # O(u^2).
    mag = x.abs() + alpha * m.abs()
    tol = 2 * U * (6 * sigma**2 * mag / (var * alpha) + 4 * (x.abs() + sigma**2 * score.abs()) / alpha
                   + 8 * (m.abs() + alpha * c**2 * mag / var))
    assert bool(((got - want).abs() <= tol).all())


# ------------------------------------------------------------------------------------------------------------
# 4. Documented precision loss as alpha -> 0
# ------------------------------------------------------------------------------------------------------------
def test_eps_route_loses_precision_at_small_alpha_but_v_route_does_not():
    alpha = 1e-8
    sigma = math.sqrt(1.0 - alpha * alpha)  # == 1.0 in float64
    x0, eps = _randn(61, 4096, 2), _randn(62, 4096, 2)
    x = alpha * x0 + sigma * eps  # the rounding of this sum (<= u|x|) is what eps -> x0 amplifies by 1/alpha
    v = alpha * eps - sigma * x0

    via_v = convert(v, "v", "x0", x=x, alpha=alpha, sigma=sigma)
    via_eps = convert(eps, "eps", "x0", x=x, alpha=alpha, sigma=sigma)
    err_v, err_eps = (via_v - x0).abs(), (via_eps - x0).abs()

    # v route: (alpha x - sigma v)/(alpha^2 + sigma^2); alpha^2 + sigma^2 rounds to 1 (division exact), sigma
    # v is exact (sigma = 1); v's construction errs by <= u|v| + u alpha|eps|, the product alpha x by u
    # alpha|x|, the subtraction by u|x0|: <= u(|v| + |x0| + 2 alpha(|x| + |eps|)), i.e. ~2u|x0| here
    tol_v = U * (v.abs() + x0.abs() + 2 * alpha * (x.abs() + eps.abs()))
    assert bool((err_v <= 2 * tol_v).all())

    # eps route: (x - sigma eps)/alpha. x's rounding (<= u|x|, plus u alpha|x0| for the product alpha x0)
    # gives the module docstring's u|x|/alpha; the library's subtraction is exact (Sterbenz) unless |eps| is
    # as small as alpha|x0|, and then rounds by <= u alpha|x0|; the final division adds u|x0|.
    documented = U * (x.abs() + alpha * x0.abs()) / alpha + U * x0.abs()
    assert bool((err_eps <= 2 * documented).all())
    # ... and that loss is real, not just allowed: rounding x to the nearest double leaves a uniformly spread
    # error in [0, ulp(x)/2] with ulp(x)/2 in [u|x|/2, u|x|], so its typical size is ~u|x|/4 and the median
    # ratio to u|x|/alpha is ~1/8..1/2 (0.35 for this seed); 1/20 is a safe floor for 8192 samples.
    ratio = err_eps * alpha / (U * x.abs())
    assert float(ratio.median()) > 0.05
    assert float(err_eps.max()) > 1e6 * float(err_v.max())  # ~1e-8 against ~1e-16


# ------------------------------------------------------------------------------------------------------------
# 5. Errors, immutability, broadcasting
# ------------------------------------------------------------------------------------------------------------
def test_convert_rejects_unknown_names():
    w = _world(0.6, 0.8)
    with pytest.raises(ValueError, match=r"^source:.*'epsilon'"):
        convert(w["eps"], "epsilon", "x0", x=w["x"], alpha=0.6, sigma=0.8)
    with pytest.raises(ValueError, match=r"^target:.*'noise'"):
        convert(w["eps"], "eps", "noise", x=w["x"], alpha=0.6, sigma=0.8)


BAD = [0.0, -0.5, torch.tensor(0.0, dtype=torch.float64), torch.tensor([[0.5], [-1.0]], dtype=torch.float64)]


@pytest.mark.parametrize("bad", BAD, ids=["zero", "negative", "zero-tensor", "one-bad-row"])
def test_dividing_conversions_reject_nonpositive_coefficients(bad):
    x = eps = _randn(71, 2, D)
    with pytest.raises(ValueError, match=r"^sigma:"):
        eps_to_score(eps, bad)
    with pytest.raises(ValueError, match=r"^alpha:"):
        eps_to_x0(x, eps, bad, 1.0)
    with pytest.raises(ValueError, match=r"^sigma:"):
        x0_to_eps(x, eps, 1.0, bad)
    with pytest.raises(ValueError, match=r"^alpha:"):
        eps_to_v(x, eps, bad, 1.0)
    for src, tgt, a, s, name in [("eps", "score", 1.0, bad, "sigma"), ("eps", "x0", bad, 1.0, "alpha"),
                                 ("x0", "eps", 1.0, bad, "sigma"), ("score", "v", bad, 1.0, "alpha"),
                                 ("v", "score", 1.0, bad, "sigma")]:
        with pytest.raises(ValueError, match=rf"^{name}:"):
            convert(eps, src, tgt, x=x, alpha=a, sigma=s)


def test_v_conversions_need_only_a_positive_norm():
    x, v = _randn(72, 2, D), _randn(73, 2, D)
    # alpha^2 + sigma^2 is the only divisor: alpha = 0 is fine (x0 = -v/sigma, eps = x/sigma, both exact
    # for sigma = 1) ...
    assert torch.equal(v_to_x0(x, v, 0.0, 1.0), -v)
    assert torch.equal(v_to_eps(x, v, 0.0, 1.0), x)
    # ... and both zero is rejected, naming the coefficients
    for fn in (v_to_x0, v_to_eps):
        with pytest.raises(ValueError, match=r"^alpha\^2 \+ sigma\^2:"):
            fn(x, v, 0.0, 0.0)


@pytest.mark.parametrize(("src", "tgt"), PAIRS_OF_KINDS)
def test_inputs_are_not_modified(src, tgt):
    alpha, sigma = _tensor_coefficients(3)
    w = _world(alpha, sigma, seed=81)
    pred, x = w[src], w["x"]
    before = [t.clone() for t in (pred, x, alpha, sigma)]
    out = convert(pred, src, tgt, x=x, alpha=alpha, sigma=sigma)
    for b, a in zip(before, (pred, x, alpha, sigma), strict=True):
        assert torch.equal(a, b)
    # the result never aliases an input: writing to it leaves them unchanged
    out.add_(1.0)
    assert torch.equal(pred, before[0]) and torch.equal(x, before[1])


@pytest.mark.parametrize(("src", "tgt"), PAIRS_OF_KINDS)
def test_row_coefficients_broadcast_like_scalars(src, tgt):
    """[N, 1] coefficients give, row by row, exactly the result with that row's Python-float coefficients (the
    same IEEE operations on the same doubles) and [] tensors exactly the scalar result."""
    alpha, sigma = _tensor_coefficients(9)
    w = _world(alpha, sigma, seed=91)
    out = convert(w[src], src, tgt, x=w["x"], alpha=alpha, sigma=sigma)
    assert out.shape == (N, D)
    for i in (0, 17, N - 1):
        a_i, s_i = float(alpha[i, 0]), float(sigma[i, 0])
        row = convert(w[src][i:i + 1], src, tgt, x=w["x"][i:i + 1], alpha=a_i, sigma=s_i)
        assert torch.equal(out[i:i + 1], row)
        a0, s0 = torch.tensor(a_i, dtype=torch.float64), torch.tensor(s_i, dtype=torch.float64)
        row0 = convert(w[src][i:i + 1], src, tgt, x=w["x"][i:i + 1], alpha=a0, sigma=s0)
        assert torch.equal(row0, row)


# ------------------------------------------------------------------------------------------------------------
# Once defects (found by these tests, fixed in the library): x0 -> v without dividing by alpha; NaN tensors
# ------------------------------------------------------------------------------------------------------------
def test_x0_to_v_is_stable_at_small_alpha():
    alpha, sigma = 1e-8, 1.0
    w = _world(alpha, sigma, seed=101)
    got = convert(w["x0"], "x0", "v", x=w["x"], alpha=alpha, sigma=sigma)
    # the stable form: x's 2u Mx times alpha, (alpha^2 + sigma^2) x0 with 2u, the subtraction, the division,
    # the test v's own 2u Mv: <= 4u (alpha Mx + |x0|) + 2u Mv, doubled
    mx = alpha * w["x0"].abs() + sigma * w["eps"].abs()
    mv = alpha * w["eps"].abs() + sigma * w["x0"].abs()
    tol = 2 * U * (4 * (alpha * mx + w["x0"].abs()) + 2 * mv)
    assert bool(((got - w["v"]).abs() <= tol).all())


def test_x0_to_v_at_alpha_zero():
    x0, x = _randn(111, 2, D), _randn(112, 2, D)
    assert torch.equal(convert(x0, "x0", "v", x=x, alpha=0.0, sigma=1.0), -x0)


def test_nan_tensor_coefficient_is_rejected():
    x = eps = _randn(121, 2, D)
    with pytest.raises(ValueError, match=r"^alpha:"):
        eps_to_x0(x, eps, float("nan"), 1.0)  # passes: the float path rejects NaN
    with pytest.raises(ValueError, match=r"^alpha:"):
        eps_to_x0(x, eps, torch.tensor(float("nan"), dtype=torch.float64), 1.0)



# ------------------------------------------------------------------------------------------------------------
# 6. The input policy (docs/input-policy.md) and overflow
# ------------------------------------------------------------------------------------------------------------
def test_wrong_kinds_are_refused_naming_the_argument():
    x = eps = _randn(131, 2, D)
    cases = [
        (lambda: convert(eps.to(torch.complex128), "eps", "x0", x=x, alpha=0.6, sigma=0.8), TypeError, "^pred:"),
        (lambda: convert(eps > 0, "eps", "x0", x=x, alpha=0.6, sigma=0.8), TypeError, "^pred:"),
        (lambda: convert(eps.half(), "eps", "x0", x=x, alpha=0.6, sigma=0.8), TypeError, "^pred:"),
        (lambda: convert(eps, "eps", "x0", x=x.to(torch.complex128), alpha=0.6, sigma=0.8), TypeError, "^x:"),
        (lambda: eps_to_x0(x, eps.float(), 0.6, 0.8), TypeError, "^x:"),  # float32 against float64: no promotion
        (lambda: eps_to_score("0.5", 0.8), TypeError, "^eps:"),
        (lambda: eps_to_x0(x, eps, True, 0.8), TypeError, "^alpha:"),
        (lambda: convert(eps, "eps", "v", x=x[:, :1], alpha=0.6, sigma=0.8), ValueError, "^x:.*no broadcasting"),
        (lambda: convert(eps, "eps", "score", x=x[:1], alpha=0.6, sigma=0.8), ValueError, "^x:"),  # unused, checked
        (lambda: eps_to_x0(x, eps, torch.full((D,), 0.6, dtype=torch.float64), 0.8), ValueError, "^alpha:"),
        (lambda: score_to_eps(eps, -0.8), ValueError, "^sigma:.*>= 0"),  # negative even where only multiplied
        (lambda: eps_to_v(x, eps, 0.6, float("inf")), ValueError, "^sigma:"),
        (lambda: convert(eps * float("nan"), "eps", "x0", x=x, alpha=0.6, sigma=0.8), ValueError, "^pred:.*NaN"),
        (lambda: convert(eps, 5, "x0", x=x, alpha=0.6, sigma=0.8), ValueError, "^source:"),
    ]
    for call, kind, match in cases:
        with pytest.raises(kind, match=match):
            call()


@pytest.mark.parametrize(("src", "tgt"), PAIRS_OF_KINDS)
def test_integers_are_converted_exactly(src, tgt):
    """An int64 prediction is the same numbers as its float64 copy: the same result, bit for bit, in x's dtype
    (float64 here; float32 with a float32 x). A conversion that let torch promote int * float to float32 loses
    half the digits."""
    pred = torch.tensor([[3, -250, 7], [0, 1, -4096]])
    x = 3.0 * _randn(141, 2, D)
    got = convert(pred, src, tgt, x=x, alpha=0.37, sigma=0.91)
    assert got.dtype == torch.float64
    assert torch.equal(got, convert(pred.double(), src, tgt, x=x, alpha=0.37, sigma=0.91))
    got32 = convert(pred, src, tgt, x=x.float(), alpha=0.37, sigma=0.91)
    assert got32.dtype == torch.float32
    assert torch.equal(got32, convert(pred.float(), src, tgt, x=x.float(), alpha=0.37, sigma=0.91))


def test_zero_coefficients_where_the_formula_only_multiplies():
    """sigma = 0 in score -> eps gives eps = -0 * s = 0 (t = 0 on a VP schedule); alpha = 0 in x0 -> eps gives x /
    sigma (pure noise). Exact values, not refusals."""
    x, s = _randn(151, 2, D), _randn(152, 2, D)
    assert torch.equal(score_to_eps(s, 0.0).abs(), torch.zeros(2, D, dtype=torch.float64))
    assert torch.equal(x0_to_eps(x, s, 0.0, 2.0), x / 2.0)


def test_an_overflowing_intermediate_does_not_overflow_the_result():
    """eps_to_v at alpha = 10, sigma = 0 is ((alpha^2 + sigma^2) eps - sigma x) / alpha = 10 eps: at eps = 1e307
    the product 100 eps overflows, the result 1e308 does not. It must be what the formula gives on eps and x scaled
    by the same power of two (exact) and scaled back: bit for bit. A result that itself overflows is refused,
    naming the prediction, never returned as inf."""
    x = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    eps = torch.tensor([[1e307, -3e306]], dtype=torch.float64)
    got = eps_to_v(x, eps, 10.0, 0.0)
    k = 1020
    want = torch.ldexp(eps_to_v(torch.ldexp(x, torch.tensor(-k)), torch.ldexp(eps, torch.tensor(-k)), 10.0, 0.0),
                       torch.tensor(k))
    assert bool(torch.isfinite(got).all()) and torch.equal(got, want)
    assert torch.equal(convert(eps, "eps", "v", x=x, alpha=10.0, sigma=0.0), got)
    with pytest.raises(ValueError, match=r"^eps:.*overflows"):
        eps_to_v(x, 2 * eps, 10.0, 0.0)  # 2e308
    with pytest.raises(ValueError, match=r"^pred:.*overflows"):
        convert(eps, "eps", "score", x=x, alpha=1.0, sigma=1e-3)
    with pytest.raises(ValueError, match=r"^alpha, sigma:.*overflows"):
        v_to_eps(x, eps, 1e200, 1e200)


def test_conversions_are_differentiable():
    """A prediction carrying an autograd graph keeps it: d x0 / d eps = -sigma / alpha elementwise."""
    eps = _randn(161, 2, D).requires_grad_(True)
    x0 = eps_to_x0(_randn(162, 2, D), eps, 0.5, 0.8)
    (grad,) = torch.autograd.grad(x0.sum(), eps)
    assert torch.equal(grad, torch.full((2, D), -0.8 / 0.5, dtype=torch.float64))
