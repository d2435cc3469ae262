"""AnalyticDenoiser: eps and x0 against closed forms that share no code with the library."""

from __future__ import annotations

import math

import pytest
import torch

from toy_models import AnalyticDenoiser, Denoiser, GaussianMixture, get_schedule, get_world
from toy_models import parametrization as param
from toy_models.denoiser import NOISED_LAW_CACHE
from verify.tolerances import score_rounding_bound, unit_roundoff

F64 = torch.float64
U64 = unit_roundoff(F64)


def _posterior_mean_x0(gm: GaussianMixture, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    r"""E[x0 | x_t = x] for a mixture, by Gaussian conditioning per component:
    sum_k r_k(x) [mu_k + a S_k (a^2 S_k + s^2 I)^{-1} (x - a mu_k)], r_k the noised responsibilities."""
    noised = gm.noised(alpha, sigma)
    r = torch.softmax(noised.component_log_prob(x), dim=-1)  # [N, K]
    out = torch.zeros_like(x)
    eye = torch.eye(gm.dim, dtype=F64)
    for k in range(gm.n_components):
        cov, mu = gm.covariances[k], gm.means[k]
        gain = alpha * cov @ torch.linalg.inv(alpha**2 * cov + sigma**2 * eye)
        out += r[:, k:k + 1] * (mu + (x - alpha * mu) @ gain.T)
    return out


@pytest.mark.parametrize("t", [0.05, 0.3, 0.7, 0.95])
def test_gauss1d_eps_matches_closed_form(t):
    den = AnalyticDenoiser(get_world("gauss1d"), "vp-linear")
    a, s = (float(v) for v in get_schedule("vp-linear").alpha_sigma(t))
    x = torch.linspace(-4, 4, 17, dtype=F64)[:, None]
    # eps = sigma (x - a m) / (a^2 v + s^2) for N(m, v) noised; conditional (1, 0.5), unconditional (0, 1)
    expected_c = s * (x - a * 1.0) / (a * a * 0.5 + s * s)
    expected_u = s * x / (a * a + s * s)
    # a handful of roundings on values of size |x| s / var: 8 u relative
    torch.testing.assert_close(den.eps(x, t, 1), expected_c, rtol=8 * U64, atol=8 * U64)
    torch.testing.assert_close(den.eps(x, t, None), expected_u, rtol=8 * U64, atol=8 * U64)


@pytest.mark.parametrize("world", ["ring2d", "attributes2d", "tokens16d"])
@pytest.mark.parametrize("t", [0.02, 0.4, 0.9])
def test_x0_is_the_posterior_mean(world, t):
    """Tweedie's formula through eps equals per-component Gaussian conditioning (an independent formula)."""
    w = get_world(world)
    den = AnalyticDenoiser(w, "vp-linear")
    a, s = (float(v) for v in get_schedule("vp-linear").alpha_sigma(t))
    gm = w.unconditional
    x = gm.noised(a, s).sample(64, torch.Generator().manual_seed(2))
    expected = _posterior_mean_x0(gm, x, a, s)
    # x0 = (x + s^2 score)/a: the score's rounding bound scaled by s^2/a, plus u |x|/a for the sum and division,
    # plus the reference's own inverse and products (a few u on each component mean); x4 for both sides.
    tol = 4 * (score_rounding_bound(gm.noised(a, s), x) * s * s / a
               + 8 * U64 * (x.norm(dim=-1) / a + expected.norm(dim=-1) + 1))
    err = (den.x0(x, t) - expected).norm(dim=-1)
    assert bool((err <= tol).all()), float((err / tol).max())


def test_per_row_times_match_scalar_calls():
    den = AnalyticDenoiser(get_world("ring2d"))
    x = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.1, 0.5, 0.1, 0.9, 0.5, 0.1], dtype=F64)
    rows = den.eps(x, t, 3)
    for i in range(6):
        assert torch.equal(rows[i], den.eps(x[i:i + 1], float(t[i]), 3)[0])


def test_eps_is_minus_sigma_score_and_float32_path():
    den = AnalyticDenoiser(get_world("attributes2d"), "ve", dtype=torch.float32)
    assert isinstance(den, Denoiser)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    eps = den.eps(x, 0.5, ("red", "dog"))
    assert eps.dtype == torch.float32 and eps.shape == (5, 2)
    sigma = float(get_schedule("ve").sigma(0.5))
    torch.testing.assert_close(eps, -sigma * den.score(x, 0.5, ("red", "dog")), rtol=4 * 2**-24, atol=0)
    x_before = x.clone()
    den.x0(x, 0.5, "blue")
    assert torch.equal(x, x_before)  # inputs never modified


@pytest.mark.parametrize(("call", "match"), [
    (lambda: AnalyticDenoiser(get_world("ring2d")).eps(torch.zeros(2, 2), 1.5), "t"),
    (lambda: AnalyticDenoiser(get_world("ring2d")).eps(torch.zeros(2, 2), -0.1), "t"),
    (lambda: AnalyticDenoiser(get_world("ring2d"), "rectified-flow").eps(torch.zeros(2, 2), 1.0), "t.*alpha"),
    (lambda: AnalyticDenoiser(get_world("ring2d")).eps(torch.zeros(2, 2), torch.tensor([0.1, 0.2, 0.3])), "t"),
    (lambda: AnalyticDenoiser(get_world("ring2d")).eps(torch.zeros(2, 2), 0.5, 99), "condition"),
    (lambda: AnalyticDenoiser(get_world("ring2d")).eps(torch.zeros(2, 3), 0.5), "x"),
    (lambda: AnalyticDenoiser(get_world("ring2d"), "cosine"), "schedule"),
    (lambda: AnalyticDenoiser("ring2d"), "world"),
    (lambda: AnalyticDenoiser(get_world("ring2d"), dtype=torch.float16), "dtype"),
    (lambda: AnalyticDenoiser(get_world("ring2d")).eps(torch.zeros(2, 2, dtype=torch.complex128), 0.5), "x.*complex"),
    (lambda: AnalyticDenoiser(get_world("ring2d")).eps(torch.zeros(2, 2, dtype=torch.bool), 0.5), "x.*bool"),
    (lambda: AnalyticDenoiser(get_world("ring2d")).eps(torch.zeros(2, 2, dtype=torch.float16), 0.5), "x.*float16"),
    (lambda: AnalyticDenoiser(get_world("ring2d")).eps(torch.zeros(2, 2), 0.5 + 0j), "t.*complex"),
])
def test_bad_denoiser_input_raises(call, match):
    """Refused with a ValueError (wrong value) or TypeError (wrong kind) whose message starts with the argument."""
    with pytest.raises((ValueError, TypeError), match=f"^{match}"):
        call()


def test_integer_points_are_converted_exactly():
    """An integer x is read as the same real numbers (not truncated, not an integer result): the policy's rule."""
    den = AnalyticDenoiser(get_world("ring2d"))
    ints = torch.tensor([[1, 2], [-3, 0]])
    out = den.eps(ints, 0.5, 0)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, den.eps(ints.double(), 0.5, 0), rtol=0, atol=0)
    assert bool((out != 0).any())


def test_t_zero_gives_the_data_score():
    """At t = 0 (sigma = 0) eps is 0 and x0 is x itself."""
    den = AnalyticDenoiser(get_world("bimodal1d"))
    x = torch.tensor([[-2.5], [0.1], [1.7]], dtype=F64)
    assert torch.equal(den.eps(x, 0.0), torch.zeros_like(x))
    torch.testing.assert_close(den.x0(x, 0.0), x, rtol=0, atol=0)
    assert math.isinf(float(get_schedule("vp-linear").log_snr(0.0)))


@pytest.mark.parametrize("t", [0.3, torch.tensor([0.1, 0.5, 0.1, 0.9, 0.5, 0.1], dtype=F64)], ids=["scalar", "per-row"])
def test_eps_is_the_conversion_of_the_law_score_to_the_bit(t):
    """eps and eps_multi (which check x once for all conditions) give the bits of score_to_eps applied to the noised
    law's own score (evaluated, as the denoiser does, on the rows that share a time), for every condition."""
    world = get_world("ring2d")
    den = AnalyticDenoiser(world)
    x = 2.0 * torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    conditions = [None, 0, 5]
    times = t if isinstance(t, torch.Tensor) else torch.full((6,), t, dtype=F64)
    alpha, sigma = get_schedule("vp-linear").alpha_sigma(times)
    for cond, multi in zip(conditions, den.eps_multi(x, t, conditions), strict=True):
        score = torch.empty_like(x)
        for value in torch.unique(times):
            rows = times == value
            i = int(torch.nonzero(rows)[0])
            score[rows] = world.law(cond).noised(float(alpha[i]), float(sigma[i])).score(x[rows])
        expected = param.score_to_eps(score, sigma[:, None] if isinstance(t, torch.Tensor) else sigma[0])
        assert torch.equal(den.eps(x, t, cond), expected)
        assert torch.equal(multi, expected)


def test_noised_laws_are_kept_and_rebuilt_alike():
    """A noised law asked for again (same time and condition) is the same object; once NOISED_LAW_CACHE other laws
    have been asked for, it is built again, with the same parameters to the bit."""
    den = AnalyticDenoiser(get_world("ring2d"))
    first = den.noised_law(0.25, 3)
    assert den.noised_law(0.25, 3) is first
    assert den.noised_law(0.25, None) is not first
    for i in range(NOISED_LAW_CACHE):
        den.noised_law(0.5 + 0.01 * i, 3)
    again = den.noised_law(0.25, 3)
    assert again is not first
    for name in ("weights", "means", "covariances", "cholesky_factors"):
        assert torch.equal(getattr(again, name), getattr(first, name))
    alpha, sigma = (float(v) for v in get_schedule("vp-linear").alpha_sigma(0.25))
    assert torch.equal(again.covariances, get_world("ring2d").law(3).noised(alpha, sigma).covariances)


@pytest.mark.parametrize(("world", "conditions"), [
    ("ring2d", [None, 0, 0, 5]),  # a repeated condition too
    ("attributes2d", [None, "red", ("red", "dog")]),
    ("gauss1d", [None, 1]),  # explicit conditionals
    ("bimodal1d", [1, None]),
])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_eps_multi_is_eps_per_condition_to_the_bit(world, conditions, dtype):
    """eps_multi checks x once for all conditions; each prediction is still eps's, to the bit, in x's dtype."""
    den = AnalyticDenoiser(get_world(world))
    x = (3.0 * torch.randn(40, den.dim, dtype=F64, generator=torch.Generator().manual_seed(7))).to(dtype)
    for t in (0.02, 0.5):
        multi = den.eps_multi(x, t, conditions)
        assert len(multi) == len(conditions)
        for cond, eps in zip(conditions, multi, strict=True):
            assert eps.dtype == dtype and torch.equal(eps, den.eps(x, t, cond)), (world, cond, t)
    assert len({id(eps) for eps in multi}) == len(multi)  # every prediction is a tensor of its own


def test_eps_multi_refuses_what_eps_refuses():
    den = AnalyticDenoiser(get_world("ring2d"))
    with pytest.raises(ValueError, match="^condition"):
        den.eps_multi(torch.zeros(3, 2), 0.5, [None, 99])
    far = torch.zeros(3, 2, dtype=F64)
    far[1] = 1e200
    with pytest.raises(ValueError, match="^x: point 1 is so far"):
        den.eps_multi(far, 0.5, [None, 0])
