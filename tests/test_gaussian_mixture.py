"""GaussianMixture: densities, scores, posteriors, noising, sampling and input validation.

Every tolerance is a derived bound: ``verify.tolerances`` (rounding, Higham's gamma_n), a Richardson estimate of
finite-difference truncation, or a Monte Carlo standard error inside a Holm-corrected family of z-tests.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from scipy import stats

from toy_models import GaussianMixture, get_schedule, get_world
from toy_models.strategies import mixtures, points, simplex_weights, spd_matrices, times
from verify.metrics import holm_reject, moment_pvalues
from verify.tolerances import (
    bayes_identity_tolerance,
    gamma,
    log_prob_rounding_bound,
    score_bounds,
    score_rounding_bound,
    unit_roundoff,
)

F64 = torch.float64
U64 = unit_roundoff(F64)
#: family-wise false-alarm rate of every Monte Carlo test family in this file (Holm-corrected)
FAMILY_ALPHA = 1e-3


def _autograd_score(gm: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(gm.log_prob(xr).sum(), xr)
    return grad


def _as_points(arr) -> torch.Tensor:
    return torch.as_tensor(np.asarray(arr), dtype=F64)


# --------------------------------------------------------------------------------------------------------------
# Scores against autograd and finite differences
# --------------------------------------------------------------------------------------------------------------
@given(mixtures(), st.data())
def test_score_matches_autograd_of_log_prob(gm, data):
    x = _as_points(data.draw(points(gm.dim)))
    # Each side is within its own rounding bound of the exact score (autograd: the chain run forward and back).
    tol = score_rounding_bound(gm, x) + score_rounding_bound(gm, x, backward=True)
    err = torch.linalg.vector_norm(gm.score(x) - _autograd_score(gm, x), dim=-1)
    assert bool((err <= tol).all()), f"max err {float(err.max()):.3g}, tol {float(tol.max()):.3g}"


@given(mixtures(dims=st.integers(1, 6)), st.data())
def test_score_matches_central_differences(gm, data):
    x = _as_points(data.draw(points(gm.dim, n=4, scale=4.0)))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    v = torch.randn(x.shape, dtype=F64, generator=gen)
    v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)

    def central(h):
        return (gm.log_prob(x + h * v) - gm.log_prob(x - h * v)) / (2 * h)

    h = 1e-3
    d_h, d_h2 = central(h), central(h / 2)
    # Central differences err by c h^2 (truncation) plus rounding 2 * lp_bound / (2h). Richardson: the truncation
    # error of d_h2 is about |d_h - d_h2| / 3; allow that with a factor 3 margin for the O(h^4) remainder.
    lp_bound = log_prob_rounding_bound(gm, x + h * v) + log_prob_rounding_bound(gm, x - h * v)
    tol = (d_h - d_h2).abs() + 2.0 * lp_bound / h + score_rounding_bound(gm, x)
    err = ((gm.score(x) * v).sum(-1) - d_h2).abs()
    assert bool((err <= tol).all()), f"max err {float(err.max()):.3g}, tol {float(tol.max()):.3g}"


@given(mixtures(), st.data())
def test_log_prob_matches_scipy(gm, data):
    x = data.draw(points(gm.dim))
    comps = np.stack([stats.multivariate_normal(m, c).logpdf(x).reshape(-1) for m, c in
                      zip(gm.means.numpy(), gm.covariances.numpy(), strict=True)], axis=1)
    ref = torch.as_tensor(np.logaddexp.reduce(comps + np.log(gm.weights.numpy()), axis=1))
    # scipy's own evaluation errs by the same kind of bound as ours; allow both.
    tol = 2.0 * log_prob_rounding_bound(gm, _as_points(x))
    assert bool(((gm.log_prob(x) - ref).abs() <= tol).all())


# --------------------------------------------------------------------------------------------------------------
# Class posteriors and the Bayes decomposition at every noise level
# --------------------------------------------------------------------------------------------------------------
@given(mixtures(components=st.integers(2, 5), n_classes=3), st.data())
def test_posteriors_sum_to_one_and_match_log_space(gm, data):
    x = _as_points(data.draw(points(gm.dim, scale=8.0)))
    post = gm.class_posterior(x)
    # A sum of K responsibilities (each with relative error <= gamma_n) and the membership product: 2 gamma_{K+2}.
    assert bool(((post.sum(-1) - 1).abs() <= 2 * gamma(gm.n_components + 2, F64)).all())
    log_post = gm.log_class_posterior(x)
    assert log_post.shape == (x.shape[0], len(gm.classes))
    # exp(log p) vs p: both carry the log joint's rounding, which moves p relatively by 2 gamma_n max E.
    # class_posterior also flushes responsibilities below sqrt(tiny) to 0 (documented in _logsumexp_softmax):
    # an absolute floor of K sqrt(tiny).
    rel = 4.0 * log_prob_rounding_bound(gm, x)[:, None] + 4 * U64
    floor = gm.n_components * math.sqrt(torch.finfo(F64).tiny)
    assert bool(((log_post.exp() - post).abs() <= rel * post + floor).all())


@given(mixtures(components=st.integers(2, 4), n_classes=2), times("vp-linear"), st.data())
@example(gm=get_world("bimodal1d").unconditional, t=0.999, data=None)
def test_bayes_identity_at_every_noise_level(gm, t, data):
    r"""grad log p_t(x|c) = grad log p_t(x) + grad log p_t(c|x), with grad log p_t(c|x) from autograd of
    log_class_posterior (an independent route: no score formula is involved)."""
    alpha, sigma = get_schedule("vp-linear").alpha_sigma(t)
    noised = gm.noised(alpha, sigma)
    x = (_as_points(data.draw(points(gm.dim, scale=4.0))) if data is not None
         else torch.linspace(-5, 5, 11, dtype=F64)[:, None])
    xr = x.clone().requires_grad_(True)
    log_post = noised.log_class_posterior(xr)
    for col, label in enumerate(noised.classes.tolist()):
        (grad_post,) = torch.autograd.grad(log_post[:, col].sum(), xr, retain_graph=True)
        cond = gm.given(label).noised(alpha, sigma)
        lhs = cond.score(x)
        rhs = noised.score(x) + grad_post
        tol = bayes_identity_tolerance(score_bounds(cond, x), score_bounds(noised, x))
        assert bool((torch.linalg.vector_norm(lhs - rhs, dim=-1) <= tol).all())
        closed = noised.grad_log_posterior(x, label)
        assert bool((torch.linalg.vector_norm(closed - grad_post, dim=-1) <= tol).all())


def test_conditions_select_components():
    world = get_world("attributes2d")
    gm = world.unconditional
    red_dog = gm.given(("red", "dog"))
    assert red_dog.n_components == 1 and red_dog.means.tolist() == [[-2.0, 2.0]]
    assert gm.given(("dog", "red")).means.tolist() == red_dog.means.tolist()  # a token set: order is irrelevant
    red = gm.given("red")
    assert red.n_components == 2 and float(red.weights.sum()) == 1.0
    assert set(red.attributes["colour"]) == {"red"}
    assert gm.given(None) is gm and gm.given(()) is gm
    assert get_world("tokens16d").law(("b0+", "b3-")).n_components == 4
    # columns of class_posterior follow the sorted labels, whatever order the components list them in
    gm2 = GaussianMixture([0.5, 0.3, 0.2], [[5.0], [-5.0], [0.0]], [[[1.0]]] * 3, labels=[7, 2, 7])
    assert gm2.classes.tolist() == [2, 7]
    post = gm2.class_posterior(torch.tensor([[-5.0], [5.0]], dtype=F64))
    assert post[0, 0] > 0.99 and post[1, 1] > 0.99


def test_cdf_matches_scipy():
    gm = get_world("bimodal1d").unconditional
    x = np.linspace(-6, 6, 25)
    ref = 0.5 * stats.norm.cdf(x, -2, math.sqrt(0.5)) + 0.5 * stats.norm.cdf(x, 2, math.sqrt(0.5))
    # ndtr and scipy both round to a few ulps of values <= 1; 8 u per term and 2 terms.
    np.testing.assert_allclose(gm.cdf(x[:, None]).numpy(), ref, rtol=0, atol=16 * U64)


# --------------------------------------------------------------------------------------------------------------
# noised() against the real forward process; sampling
# --------------------------------------------------------------------------------------------------------------
def _forward_process(gm, alpha, sigma, n, seed):
    gen = torch.Generator().manual_seed(seed)
    x0 = gm.sample(n, gen)
    return alpha * x0 + sigma * torch.randn(x0.shape, dtype=F64, generator=gen)


@pytest.mark.parametrize("world", ["bimodal1d", "ring2d", "attributes2d", "tokens16d"])
@pytest.mark.parametrize(("schedule", "t"), [("vp-linear", 0.3), ("ve", 0.5), ("rectified-flow", 0.7)])
def test_noised_matches_monte_carlo_of_forward_process(world, schedule, t):
    """z-tests of every mean coordinate and covariance entry (plus KS in 1-D), Holm at FAMILY_ALPHA.

    Power: the same family must reject the law with sigma off by 5 % (the alternative a wrong noising formula
    such as sigma instead of sigma^2 in the covariance would produce, and smaller than it).
    """
    gm = get_world(world).unconditional
    alpha, sigma = (float(v) for v in get_schedule(schedule).alpha_sigma(t))
    xt = _forward_process(gm, alpha, sigma, n=100_000, seed=1)
    law = gm.noised(alpha, sigma)
    wrong = gm.noised(alpha, 1.05 * sigma)
    for candidate, should_reject in ((law, False), (wrong, True)):
        pvals = moment_pvalues(xt, candidate.mean(), candidate.covariance())
        if gm.dim == 1:
            pvals = np.append(pvals, stats.kstest(xt[:, 0].numpy(), lambda v, c=candidate: c.cdf(
                torch.as_tensor(v)[:, None]).numpy()).pvalue)
        assert bool(holm_reject(pvals, FAMILY_ALPHA).any()) == should_reject, (schedule, t, min(pvals))


def test_noised_parameters_are_exact():
    gm = get_world("ring2d").unconditional
    noised = gm.noised(0.6, 0.8)
    np.testing.assert_array_equal(noised.means.numpy(), 0.6 * gm.means.numpy())
    expected = 0.36 * gm.covariances + 0.64 * torch.eye(2, dtype=F64)
    # alpha^2 S + sigma^2 I: two products and a sum per entry, 3 u relative.
    assert bool(((noised.covariances - expected).abs() <= 3 * U64 * expected.abs()).all())
    assert noised.labels.tolist() == gm.labels.tolist()


@pytest.mark.parametrize("world", ["ring2d", "attributes2d", "tokens16d"])
def test_sample_moments_match_closed_form(world):
    gm = get_world(world).unconditional
    x = gm.sample(100_000, torch.Generator().manual_seed(3))
    assert not bool(holm_reject(moment_pvalues(x, gm.mean(), gm.covariance()), FAMILY_ALPHA).any())
    # power against a named alternative: the covariance inflated by 5 %
    assert bool(holm_reject(moment_pvalues(x, gm.mean(), 1.05 * gm.covariance()), FAMILY_ALPHA).any())


def test_sampling_is_reproducible_and_dtype_consistent():
    gm = get_world("ring2d").unconditional
    a = gm.sample(1000, torch.Generator().manual_seed(5))
    b = gm.sample(1000, torch.Generator().manual_seed(5))
    c = gm.to(torch.float32).sample(1000, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert c.dtype == torch.float32 and torch.equal(c, a.to(torch.float32))
    x, comp = gm.sample_with_components(500, torch.Generator().manual_seed(6))
    assert comp.shape == (500,) and x.shape == (500, 2)
    assert gm.sample(0).shape == (0, 2)


# --------------------------------------------------------------------------------------------------------------
# The Fokker-Planck equation of the forward SDE
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["vp-linear", "vp-cosine", "ve", "edm", "rectified-flow"])
@given(gm=mixtures(dims=st.integers(1, 3), components=st.integers(1, 3)), t=st.floats(0.1, 0.9), data=st.data())
def test_log_density_obeys_fokker_planck(schedule, gm, t, data):
    r"""d/dt log p_t = -d f - f x.s + (g^2/2)(tr H + |s|^2) for dx = f x dt + g dW (H: Hessian of log p_t)."""
    sched = get_schedule(schedule)
    x = _as_points(data.draw(points(gm.dim, n=4, scale=3.0)))
    scale = float(sched.alpha(t))  # keep points in the bulk of p_t for ve/edm, whose spread grows with sigma
    x = x * max(1.0, float(sched.sigma(t)))

    def log_p(tt):
        a, s = sched.alpha_sigma(tt)
        return gm.noised(float(a), float(s)).log_prob(x)

    h = 1e-3
    d_h = (log_p(t + h) - log_p(t - h)) / (2 * h)
    d_h2 = (log_p(t + h / 2) - log_p(t - h / 2)) / h
    lhs = (4 * d_h2 - d_h) / 3  # Richardson: O(h^4)

    law = gm.noised(scale, float(sched.sigma(t)))
    xr = x.clone().requires_grad_(True)
    s = law.score(xr)
    trace_h = sum(torch.autograd.grad(s[:, i].sum(), xr, retain_graph=True)[0][:, i] for i in range(gm.dim))
    s = s.detach()
    f, g2 = float(sched.drift(t)), float(sched.diffusion_squared(t))
    rhs = -gm.dim * f - f * (x * s).sum(-1) + 0.5 * g2 * (trace_h + (s * s).sum(-1))
    # Tolerance: the Richardson correction itself (|d_h - d_h2|/3 bounds the dropped h^2 term, x3 margin for the
    # h^4 remainder), rounding of the four log_prob calls amplified by 1/h, and the RHS's own rounding
    # (gamma_n on each of its terms with n = 4 d + 8).
    lp_bound = max(float(log_prob_rounding_bound(gm.noised(*(float(v) for v in sched.alpha_sigma(tt))), x).max())
                   for tt in (t - h, t + h))
    terms = gm.dim * abs(f) + abs(f) * (x * s).abs().sum(-1) + 0.5 * g2 * (trace_h.abs() + (s * s).sum(-1))
    tol = (d_h - d_h2).abs() + 4.0 * lp_bound / h + gamma(4 * gm.dim + 8, F64) * terms * 10
    err = (lhs - rhs).abs()
    assert bool((err <= tol).all()), f"{schedule}: err {float(err.max()):.3g} tol {float(tol.max()):.3g}"


# --------------------------------------------------------------------------------------------------------------
# Far from the modes, at narrow modes far from the origin, and at tiny sigma: against 50-digit mpmath
# --------------------------------------------------------------------------------------------------------------
def _mpmath_log_prob_and_score(gm: GaussianMixture, x: np.ndarray):
    """Reference in 50-digit arithmetic from the mixture's float64 parameters (converted exactly)."""
    mpmath.mp.dps = 50
    w, mu, cov = gm.weights.numpy(), gm.means.numpy(), gm.covariances.numpy()
    d = gm.dim
    out_lp, out_s = [], []
    for point in x:
        logs, grads = [], []
        for k in range(gm.n_components):
            diff = mpmath.matrix([mpmath.mpf(float(point[i])) - mpmath.mpf(float(mu[k, i])) for i in range(d)])
            sig = mpmath.matrix([[mpmath.mpf(float(cov[k, i, j])) for j in range(d)] for i in range(d)])
            y = mpmath.lu_solve(sig, diff)
            quad = sum(diff[i] * y[i] for i in range(d))
            logs.append(mpmath.log(mpmath.mpf(float(w[k]))) - quad / 2 - mpmath.log(mpmath.det(sig)) / 2
                        - d * mpmath.log(2 * mpmath.pi) / 2)
            grads.append([-y[i] for i in range(d)])
        top = max(logs)
        total = sum(mpmath.exp(v - top) for v in logs)
        resp = [mpmath.exp(v - top) / total for v in logs]
        out_lp.append(float(top + mpmath.log(total)))
        out_s.append([float(sum(resp[k] * grads[k][i] for k in range(gm.n_components))) for i in range(d)])
    return torch.tensor(out_lp, dtype=F64), torch.tensor(out_s, dtype=F64)


def _far_and_tiny_cases():
    ring = get_world("ring2d").unconditional
    a = math.sqrt(1 - 1e-8)  # VP at sigma = 1e-4
    tiny = GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.0, 0.5]], [1e-6 * np.eye(2)] * 2)
    angles = np.linspace(0, 2 * np.pi, 9)[:-1] + 0.1
    far = 1e3 * np.stack([np.cos(angles), np.sin(angles)], 1)
    boundary = np.array([[1e-3, 1e3], [0.0, -1e3], [1e3, 1e-3], [-707.1, 707.2]])  # between equal components
    near = np.array([[3.0, 0.0], [2.9, 0.1], [0.0, 0.0], [-1.0, 0.5], [1.0 + 1e-4, 0.5], [0.0, 0.5]])
    return [("ring2d sigma=1e-4", ring.noised(a, 1e-4), np.concatenate([far, boundary, near])),
            ("tiny variance 1e-6, sigma=1e-4", tiny.noised(a, 1e-4), np.concatenate([far, boundary, near]))]


@pytest.mark.parametrize("case", _far_and_tiny_cases(), ids=lambda c: c[0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_far_points_and_tiny_sigma_against_mpmath(case, dtype):
    _, gm64, x = case
    ref_lp, ref_s = _mpmath_log_prob_and_score(gm64, x)
    gm = gm64.to(dtype)
    xt = torch.as_tensor(x, dtype=dtype)
    x_used = xt.to(F64)  # the float32 inputs are rounded: compare with the reference at the rounded points
    if dtype != F64:
        ref_lp, ref_s = _mpmath_log_prob_and_score(gm64, x_used.numpy())
    lp, s = gm.log_prob_and_score(xt)
    assert bool(torch.isfinite(lp).all()) and bool(torch.isfinite(s).all())
    u = unit_roundoff(dtype)
    # derived bounds, plus the final rounding of each output to dtype (u relative)
    tol_s = score_rounding_bound(gm64, x_used, dtype) + u * torch.linalg.vector_norm(ref_s, dim=-1)
    tol_lp = log_prob_rounding_bound(gm64, x_used, dtype) + u * ref_lp.abs()
    err_s = torch.linalg.vector_norm(s.to(F64) - ref_s, dim=-1)
    err_lp = (lp.to(F64) - ref_lp).abs()
    assert bool((err_s <= tol_s).all()), f"score err {err_s.max():.3g} > tol at {int((err_s / tol_s).argmax())}"
    assert bool((err_lp <= tol_lp).all()), f"log_prob err {err_lp.max():.3g}"
    if dtype == F64:  # the float64 promise in numbers: relative score error below 1e-8 even at |x| = 1e3
        rel = err_s / torch.linalg.vector_norm(ref_s, dim=-1).clamp_min(1.0)
        assert float(rel.max()) < 1e-8


@st.composite
def _narrow_far_mixtures(draw):
    """Random mixtures whose components are narrow (variances 1e-12 .. 1) and far from the origin (|mu| up to
    1e4), with anisotropic covariances (condition up to 1e4), and points at, near and between their modes."""
    dim = draw(st.integers(1, 4))
    k = draw(st.integers(1, 3))
    centre = draw(st.sampled_from([0.0, 1e2, 1e3, 1e4])) * np.array(draw(st.lists(
        st.floats(-1, 1), min_size=dim, max_size=dim)))
    scales = [10.0 ** draw(st.integers(-6, 0)) for _ in range(k)]  # standard deviations
    covs, means = [], []
    for std in scales:
        covs.append(std**2 * draw(spd_matrices(dim, min_eigenvalue=1.0, max_condition=1e4)) / 1e2)
        means.append(centre + std * 30 * np.array(draw(st.lists(st.floats(-1, 1), min_size=dim, max_size=dim))))
    gm = GaussianMixture(draw(simplex_weights(k)), np.array(means), np.array(covs))
    # points: each mode, plus offsets of 0.1 .. 10 standard deviations of its component
    pts = []
    for mean, std in zip(means, scales, strict=True):
        pts.append(mean)
        for _ in range(2):
            offset = np.array(draw(st.lists(st.floats(-1, 1), min_size=dim, max_size=dim)))
            pts.append(mean + std * 10.0 ** draw(st.integers(-1, 1)) * offset)
    return gm, np.array(pts)


@given(_narrow_far_mixtures(), st.sampled_from([torch.float64, torch.float32]))
@example(case=(GaussianMixture([1.0], [[1e3, 1e3]], [1e-12 * np.eye(2)]), np.array([[1e3, 1e3], [1e3 + 1e-6, 1e3]])),
         dtype=F64)
@example(case=(GaussianMixture([1.0], [[1e3, 1e3]], [1e-12 * np.eye(2)]), np.array([[1e3, 1e3], [1e3 + 1e-6, 1e3]])),
         dtype=torch.float32)
def test_narrow_far_modes_against_mpmath(case, dtype):
    """log_prob and score at narrow modes far from the origin, against 50-digit mpmath.

    The old engine expanded the quadratic form and returned 0.0 for log p = 25.79 at the mode of N((1e3, 1e3),
    1e-12 I). The derived bound (verify.tolerances) must hold, and in float64 it must also be small: within 3
    standard deviations of a mode the log density is good to 1e-9 relative (the bound itself, checked here, is
    proportional to the distance to the component's own mean, never to |x|).
    """
    gm64, x = case
    gm = gm64.to(dtype)
    xt = torch.as_tensor(x, dtype=dtype)
    x_used = xt.to(F64)  # float32 inputs are rounded: compare with the reference at the rounded points
    ref_lp, ref_s = _mpmath_log_prob_and_score(gm64, x_used.numpy())
    lp, s = gm.log_prob_and_score(xt)
    u = unit_roundoff(dtype)
    tol_lp = log_prob_rounding_bound(gm64, x_used, dtype) + u * ref_lp.abs()  # + the output's own rounding
    tol_s = score_rounding_bound(gm64, x_used, dtype) + u * torch.linalg.vector_norm(ref_s, dim=-1)
    err_lp = (lp.to(F64) - ref_lp).abs()
    err_s = torch.linalg.vector_norm(s.to(F64) - ref_s, dim=-1)
    assert bool((err_lp <= tol_lp).all()), f"log_prob err {float(err_lp.max()):.3g}, tol {float(tol_lp.min()):.3g}"
    assert bool((err_s <= tol_s).all()), f"score err {float(err_s.max()):.3g}"
    if dtype == F64:
        assert float((err_lp / ref_lp.abs().clamp_min(1.0)).max()) < 1e-9


def test_narrow_far_mode_log_prob_regression():
    """The reported case, in numbers: N((1e3, 1e3), 1e-12 I) at its mode has log p = log(1 / (2 pi 1e-12))."""
    gm = GaussianMixture([1.0], [[1e3, 1e3]], [1e-12 * np.eye(2)])
    exact = -math.log(2 * math.pi * 1e-12)  # 25.7931...
    for dtype in (F64, torch.float32):
        got = float(gm.to(dtype).log_prob(torch.tensor([[1e3, 1e3]], dtype=dtype)))
        # float64: the constant -log|L| - log(2 pi) in a few roundings; float32: the same in float32 (u = 6e-8)
        assert abs(got - exact) <= 8 * unit_roundoff(dtype) * abs(exact)


# --------------------------------------------------------------------------------------------------------------
# The two engines: blocks of points (d <= 4, no autograd) and the batched product (autograd, or larger d)
# --------------------------------------------------------------------------------------------------------------
def _batched(gm: GaussianMixture, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log_prob, score and the log joints from the batched engine: the same calls on points that require grad
    (autograd recording selects it), detached."""
    xr = x.clone().requires_grad_(True)
    lp, s = gm.log_prob_and_score(xr)
    return lp.detach(), s.detach(), gm.component_log_prob(xr).detach()


def _assert_engines_agree(gm: GaussianMixture, x: torch.Tensor) -> None:
    """Each engine is within its forward rounding bound of the exact values (verify.tolerances: both follow the
    chains counted there), so they differ by at most twice the bound; the log joints by at most twice Delta, which
    log_prob_rounding_bound exceeds."""
    lp, s = gm.log_prob_and_score(x)
    lp_b, s_b, lj_b = _batched(gm, x)
    x64 = x.to(F64)
    tol_s = 2 * score_rounding_bound(gm, x64)
    tol_lp = 2 * log_prob_rounding_bound(gm, x64)
    err_s = torch.linalg.vector_norm((s - s_b).to(F64), dim=-1)
    assert bool((err_s <= tol_s).all()), f"score: {float((err_s / tol_s).max()):.3g} of the bound"
    assert bool(((lp - lp_b).to(F64).abs() <= tol_lp).all())
    assert bool(((gm.component_log_prob(x) - lj_b).to(F64).abs() <= tol_lp[:, None]).all())
    assert torch.equal(gm.log_prob(x), lp)  # one engine, one answer: log_prob is log_prob_and_score's


@given(mixtures(dims=st.sampled_from([1, 2, 3, 4, 7, 16, 32]), components=st.integers(1, 6)),
       st.sampled_from([F64, torch.float32]), st.data())
def test_block_engine_agrees_with_batched_engine(gm, dtype, data):
    gm = gm.to(dtype)
    x = torch.as_tensor(data.draw(points(gm.dim, n=16, scale=8.0)), dtype=dtype)
    _assert_engines_agree(gm, x)


@pytest.mark.parametrize("t", [0.01, 0.3, 0.9])
def test_block_engine_across_blocks(t):
    """Batches of several blocks (with one or two threads, at most 16,384 points per block at K = 8 and 131,072 at
    K = 1: 50,001 and 140,001 points make at least two blocks each, of nearly equal size) agree with the batched
    engine; a point too far for every component is named by its row in the whole batch."""
    a, s = (float(v) for v in get_schedule("vp-linear").alpha_sigma(t))
    world = get_world("ring2d")
    x = 3.0 * torch.randn(140_001, 2, dtype=F64, generator=torch.Generator().manual_seed(11))
    for law in (world.law(None).noised(a, s), world.law(0).noised(a, s)):
        n = 50_001 if law.n_components > 1 else 140_001
        _assert_engines_agree(law, x[:n])
        far = x[:n].clone()
        far[n - 2] = 1e200
        for call in (law.score, law.log_prob, law.component_log_prob):
            with pytest.raises(ValueError, match=f"^x: point {n - 2} is so far"):
                call(far)


# --------------------------------------------------------------------------------------------------------------
# Bad input: a ValueError naming the argument
# --------------------------------------------------------------------------------------------------------------
GOOD_W, GOOD_MU, GOOD_COV = [0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [np.eye(2), np.eye(2)]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"covariances": [np.eye(2), np.diag([1.0, -1.0])]}, "covariances.*positive definite"),
    ({"covariances": [np.eye(2), np.diag([1.0, 0.0])]}, "covariances.*positive definite"),
    ({"covariances": [np.eye(2), np.array([[1.0, 0.5], [0.2, 1.0]])]}, "covariances.*symmetric"),
    ({"covariances": [np.eye(2), np.full((2, 2), np.inf)]}, "covariances.*infinity"),
    ({"covariances": [np.eye(2)]}, "covariances.*shape"),
    ({"weights": [1.2, -0.2]}, "weights.*non-negative"),
    ({"weights": [0.5, 0.4]}, "weights.*sum to 1"),
    ({"weights": [0.5, float("nan")]}, "weights.*NaN"),
    ({"weights": [[0.5, 0.5]]}, "weights.*shape"),
    ({"means": [[0.0, float("nan")], [1.0, 1.0]]}, "means.*NaN"),
    ({"means": [[0.0, 0.0]]}, "means.*shape"),
    ({"labels": [0]}, "labels.*shape"),
    ({"labels": [0.5, 1.0]}, "labels.*integers"),
    ({"attributes": {"a": ["x", "y"], "b": ["x", "z"]}}, "attributes.*both"),
    ({"attributes": {"a": ["x"]}}, "attributes"),
    ({"dtype": torch.float16}, "dtype"),
])
def test_bad_construction_raises(kwargs, match):
    args = {"weights": GOOD_W, "means": GOOD_MU, "covariances": GOOD_COV} | kwargs
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**args)


@pytest.mark.parametrize(("call", "match"), [
    (lambda gm: gm.log_prob(torch.zeros(3, 3)), r"x.*shape \[N, 2\]"),
    (lambda gm: gm.score(torch.zeros(3)), "x.*shape"),
    (lambda gm: gm.score(torch.tensor([[0.0, float("nan")]])), "x.*NaN"),
    (lambda gm: gm.class_posterior([[0.0, float("inf")]]), "x.*infinity"),
    (lambda gm: gm.given(5), "condition.*unknown label 5"),
    (lambda gm: gm.given("purple"), "condition.*unknown token"),
    (lambda gm: gm.given(("red", "blue")), "condition.*matches no component"),
    (lambda gm: gm.given(True), "condition.*bool"),
    (lambda gm: gm.given(1.5), "condition"),
    (lambda gm: gm.noised(0.0, 1.0), "alpha.*> 0"),
    (lambda gm: gm.noised(-1.0, 1.0), "alpha"),
    (lambda gm: gm.noised(1.0, -0.1), "sigma.*>= 0"),
    (lambda gm: gm.noised(float("nan"), 1.0), "alpha.*NaN"),
    (lambda gm: gm.noised([0.5, 0.6], 1.0), "alpha.*scalar"),
    (lambda gm: gm.sample(-1), "n"),
    (lambda gm: gm.cdf([[0.0, 0.0]]), "d = 1"),
])
def test_bad_calls_raise(call, match):
    gm = get_world("attributes2d").unconditional
    with pytest.raises(ValueError, match=match):
        call(gm)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"means": torch.tensor([[0.0, 0.0], [1.0, 1.0j]])}, TypeError, "^means: complex"),
    ({"means": np.array([[True, False], [False, True]])}, TypeError, "^means: bool"),
    ({"means": [["a", "b"], ["c", "d"]]}, TypeError, "^means: expected numbers"),
    ({"means": torch.zeros(2, 2, dtype=torch.float16)}, TypeError, "^means: torch.float16"),
    ({"means": torch.zeros(2, 2, device="meta")}, ValueError, "^means: is a meta tensor"),
    ({"weights": None}, TypeError, "^weights: expected numbers, got None"),
    ({"covariances": [1e-310 * np.eye(2)] * 2}, ValueError, "^covariances: variances below.*subnormal"),
    ({"covariances": [1e308 * np.eye(2)] * 2}, ValueError, "^covariances: .*too large"),
    ({"means": np.array([[2**60, 0], [0, 0]])}, ValueError, "^means: integer values beyond 2\\*\\*53"),
])
def test_input_policy_at_construction(kwargs, error, match):
    """The input policy (toy_models._checks): wrong kinds are TypeErrors, wrong values ValueErrors, each message
    starting with the argument's name; huge or subnormal values are refused before they turn into NaN."""
    args = {"weights": GOOD_W, "means": GOOD_MU, "covariances": GOOD_COV} | kwargs
    with pytest.raises(error, match=match):
        GaussianMixture(**args)


def test_far_narrow_law_keeps_its_covariance():
    """covariance() is centred: sum pi (S + mu mu^T) - m m^T would lose every digit of a 1e-12 spread at 1e3."""
    gm = GaussianMixture([0.5, 0.5], [[1e3], [1e3 + 2e-6]], [[[1e-12]], [[1e-12]]])
    # S + pi_1 pi_2 (mu_1 - mu_2)^2, with the means as stored (their difference is exact by Sterbenz's lemma)
    exact = 1e-12 + 0.25 * float(np.float64(1e3 + 2e-6) - np.float64(1e3)) ** 2
    # a few roundings of terms no larger than the result: 8 u relative
    assert abs(float(gm.covariance()) - exact) <= 8 * U64 * exact


def test_sample_refuses_a_generator_of_the_wrong_kind():
    gm = GaussianMixture(GOOD_W, GOOD_MU, GOOD_COV)
    with pytest.raises(TypeError, match="^generator: "):
        gm.sample(3, "seed")
    with pytest.raises(TypeError, match="^n: "):
        gm.sample(2.5)


def test_integer_parameters_are_converted_exactly():
    gm = GaussianMixture([1, 0], [[0, 0], [3, 4]], [np.eye(2, dtype=int)] * 2)
    assert gm.means.dtype == F64 and gm.means.tolist() == [[0.0, 0.0], [3.0, 4.0]]


def test_caller_arrays_are_copied():
    """Changing the caller's tensors after construction moves nothing: sample, mean and log_prob all agree."""
    means, covs = torch.tensor([[0.0, 0.0], [3.0, 0.0]], dtype=F64), torch.eye(2, dtype=F64).repeat(2, 1, 1)
    weights = torch.tensor([0.5, 0.5], dtype=F64)
    gm = GaussianMixture(weights, means, covs)
    before = (gm.mean().clone(), gm.sample(4, torch.Generator().manual_seed(0)), gm.log_prob([[1.0, 1.0]]))
    means.add_(100.0), covs.mul_(4.0), weights.copy_(torch.tensor([1.0, 0.0]))
    after = (gm.mean(), gm.sample(4, torch.Generator().manual_seed(0)), gm.log_prob([[1.0, 1.0]]))
    for b, a in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(("call", "match"), [
    (lambda gm: gm.noised(1.0, 1e155), "^sigma: .*too large"),
    (lambda gm: gm.noised(1e155, 1.0), "^alpha: .*too large"),
    (lambda gm: gm.log_prob([[1e200, 0.0]]), "^x: point 0 is so far"),
    (lambda gm: gm.to(torch.float32).score([[1e25, 0.0]]), "^x: point 0 .*float64 has a far larger range"),
    (lambda gm: gm.score(torch.zeros(2, 2, dtype=torch.complex64)), "^x: complex"),
    (lambda gm: gm.score(torch.zeros(2, 2, dtype=torch.bfloat16)), "^x: torch.bfloat16"),
    (lambda gm: gm.noised(1.0, 1j), "^sigma: complex"),
    (lambda gm: GaussianMixture([1.0], [[0.0]], [[[1e-300]]]).to(torch.float32), "^dtype: "),
])
def test_huge_and_wrong_kind_inputs_are_refused_not_nan(call, match):
    gm = GaussianMixture(GOOD_W, GOOD_MU, GOOD_COV)
    with pytest.raises((ValueError, TypeError), match=match):
        call(gm)


@pytest.mark.parametrize("far", [1e6, 1e150])
def test_huge_but_representable_inputs_stay_finite(far):
    """Far points whose quadratic form fits in float64 give a finite answer within the derived bound, never NaN.

    The nearer component (mean (1, 1)) dominates completely, so the exact score is -(x - (1, 1)). At 1e6 the two
    quadratic forms differ by 2e6 out of 1e12 and the computation resolves it; at 1e150 they differ by 2e150 out
    of 1e300, below float64's resolution (ulp 1.5e284): the bound must then cover the whole gap between the two
    component scores, and it does.
    """
    gm = GaussianMixture(GOOD_W, GOOD_MU, GOOD_COV)
    x = torch.tensor([[far, 0.0]], dtype=F64)
    lp, s = gm.log_prob_and_score(x)
    assert bool(torch.isfinite(lp).all()) and bool(torch.isfinite(s).all())
    exact = -(x - torch.tensor([[1.0, 1.0]], dtype=F64))
    err = torch.linalg.vector_norm(s - exact, dim=-1)
    assert bool((err <= score_rounding_bound(gm, x) + U64 * torch.linalg.vector_norm(exact, dim=-1)).all())
    if far == 1e6:
        assert float(err.max()) <= 1e-9 * far


def test_zero_weight_component_is_inert():
    gm = GaussianMixture([1.0, 0.0], GOOD_MU, GOOD_COV, labels=[0, 1])
    x = torch.tensor([[0.3, -0.2], [5.0, 5.0]], dtype=F64)
    single = GaussianMixture([1.0], GOOD_MU[:1], GOOD_COV[:1])
    torch.testing.assert_close(gm.score(x), single.score(x), rtol=0, atol=0)
    torch.testing.assert_close(gm.log_prob(x), single.log_prob(x), rtol=0, atol=0)
    assert gm.class_posterior(x)[:, 1].eq(0).all()
    with pytest.raises(ValueError, match="condition.*positive weight"):
        gm.given(1)
