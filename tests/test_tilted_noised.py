"""The noised tilted target pi_t and the exact tilted sampler (verify.tilted_noised)."""

from __future__ import annotations

import math

import pytest
import torch

from toy_models import World, get_world
from toy_models.gaussian_mixture import GaussianMixture
from verify import rules
from verify.samplers import get_sampler, time_grid
from verify.tilted import tilted_law
from verify.tilted_noised import NoisedTilted, TiltedDenoiser, noised_tilted, tilted_moment_law

F64 = torch.float64
U = 2.0**-53
WS = (1.0, 3.0, 7.0)


def _gauss2d() -> World:
    cond = GaussianMixture([1.0], [[1.0, -0.5]], [[[0.6, 0.2], [0.2, 0.4]]], labels=[1])
    uncond = GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.1], [0.1, 1.2]]], labels=[0])
    return World("gauss2d", uncond, conditionals={1: cond})


@pytest.mark.parametrize("name", ["gauss1d", "bimodal1d"])
@pytest.mark.parametrize("w", WS)
def test_pi_t_at_zero_is_the_tilted_target(name: str, w: float) -> None:
    world, rule = get_world(name), rules.get("cfg", w=w)
    target = noised_tilted(world, rule, 1)
    law = tilted_law(world, rule, 1)
    summary = law.summary()
    # moments: alpha_0 = 1, sigma_0 = 0 on vp-linear, so pi_0 has pi's moments to the schedule's rounding (a few u)
    assert torch.allclose(target.mean(0.0), summary.mean, rtol=0, atol=8 * U * float(summary.mean.abs().max()))
    assert torch.allclose(target.cov(0.0), summary.cov, rtol=0, atol=8 * U * float(summary.cov.abs().max()))
    x = torch.linspace(-1.0, 3.5, 31, dtype=F64)[:, None]
    expected = law.log_unnormalized(x) - summary.log_normaliser
    got, err = target.log_prob(x, 0.0, with_error=True)
    # at sigma = 0 the low-noise form's nodes collapse onto x: the sum of the Gaussian weights is 1 to the trapezoid
    # error (geometric, far below u at spacing 1/4) and rounding of the ~80-term sum (gamma_80 ~ 1e-14); the
    # normaliser carries its own quadrature error
    tol = 100 * U * float(expected.abs().max()) + summary.log_normaliser_error + float(err.max())
    assert float((got - expected).abs().max()) <= tol


@pytest.mark.parametrize("w", WS)
@pytest.mark.parametrize("world", [get_world("gauss1d"), _gauss2d()], ids=["1d", "2d"])
def test_closed_form_matches_quadrature(world: World, w: float) -> None:
    rule = rules.get("cfg", w=w)
    closed = noised_tilted(world, rule, 1, method="closed form")
    quad = noised_tilted(world, rule, 1, method="quadrature")
    gen = torch.Generator().manual_seed(1)
    # 2-D high-noise grids hold ~1e4 nodes per point: fewer points and times there keep the file fast
    times = (0.0, 1e-3, 0.02, 0.05, 0.1, 0.3, 0.7, 1.0) if world.dim == 1 else (0.0, 0.02, 0.3, 1.0)
    for t in times:
        z = torch.randn(40 if world.dim == 1 else 6, world.dim, dtype=F64, generator=gen)
        x = closed.mean(t) + 2.0 * z @ torch.linalg.cholesky(closed.cov(t)).T
        lp, lp_err = quad.log_prob(x, t, with_error=True)
        sc, sc_err = quad.score(x, t, with_error=True)
        ref_lp, ref_sc = closed.log_prob(x, t), closed.score(x, t)
        # derived bound: the halving difference (geometric convergence of the trapezoid rule) plus rounding of the
        # sums, gamma_M times the terms' size with M <= 1e4 nodes (1e4 u ~ 1e-12 relative)
        tol_lp = lp_err + 1e4 * U * (ref_lp.abs() + 1.0)
        tol_sc = sc_err + 1e4 * U * (ref_sc.norm(dim=1) + 1.0 / float(closed.cov(t).diagonal().min()))
        assert bool(((lp - ref_lp).abs() <= tol_lp).all()), (t, float((lp - ref_lp).abs().max()))
        assert bool(((sc - ref_sc).norm(dim=1) <= tol_sc).all()), (t, float((sc - ref_sc).norm(dim=1).max()))


def test_quadrature_error_estimate_can_fail() -> None:
    """The comparison above can fail: a density shifted by 1e-6 is caught at every time."""
    world, rule = get_world("gauss1d"), rules.get("cfg", w=3.0)
    closed = noised_tilted(world, rule, 1, method="closed form")
    quad = noised_tilted(world, rule, 1, method="quadrature")
    x = torch.linspace(0.0, 2.5, 11, dtype=F64)[:, None]
    for t in (0.0, 0.3, 1.0):
        lp, err = quad.log_prob(x, t, with_error=True)
        assert bool(((lp + 1e-6 - closed.log_prob(x, t)).abs() > err + 1e4 * U * 10).all())


@pytest.mark.parametrize("name", ["bimodal1d", "ring2d"])
def test_score_is_the_gradient_of_the_log_density(name: str) -> None:
    world = get_world(name)
    target = noised_tilted(world, rules.get("cfg", w=3.0), 1)
    gen = torch.Generator().manual_seed(2)
    for t in (0.0, 0.02, 0.2, 0.8):
        x = target.mean(t) + 0.5 * torch.randn(20 if world.dim == 1 else 4, world.dim, dtype=F64, generator=gen)
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(target.log_prob(x, t).sum(), x)
        # the quadrature's score is the exact derivative of its own log-sum-exp (the same nodes and weights), so the
        # two differ by rounding: gamma_{2n} of the score's terms, n <= 1e4 nodes, with the scale |score| + 1/sigma^2
        # bounded here by the largest node term; 1e5 u relative covers 2n u with n = 4e4
        ref = target.score(x.detach(), t)
        scale = ref.norm(dim=1) + 1.0 / max(float(target.alpha_sigma(t)[1]) ** 2, target.scale**2)
        assert bool(((grad - ref).norm(dim=1) <= 1e5 * U * scale).all()), t


@pytest.mark.parametrize("nu", [0.0, 1.0])
@pytest.mark.parametrize("world", [get_world("gauss1d"), _gauss2d()], ids=["1d", "2d"])
def test_moment_odes_with_the_tilted_score_end_at_pi(world: World, nu: float) -> None:
    target = noised_tilted(world, rules.get("cfg", w=7.0), 1)
    mean, cov = tilted_moment_law(target, nu, rtol=1e-12)
    # DOP853's global error is below about 1e3 rtol relative (verify.exact_law); 1e-8 absolute on O(1) moments
    assert torch.allclose(mean, target.data_mean, rtol=0, atol=1e-8)
    assert torch.allclose(cov, target.data_cov, rtol=0, atol=1e-8)
    # intermediate: the solution is pi_t itself
    mid_mean, mid_cov = tilted_moment_law(target, nu, t_end=0.4, rtol=1e-12)
    assert torch.allclose(mid_cov, target.cov(0.4), rtol=0, atol=1e-8)
    assert torch.allclose(mid_mean, target.mean(0.4), rtol=0, atol=1e-8)


def test_guided_cfg_law_differs_from_the_target() -> None:
    """Power reference for the sampling test: CFG's own sampled law on gauss1d at w = 3 is not pi (its ODE variance
    differs from pi's by far more than the 4-standard-error band of a 1e5-sample mean test)."""
    from verify.exact_law import exact_gaussian_cfg_law

    world = get_world("gauss1d")
    target = noised_tilted(world, rules.get("cfg", w=3.0), 1)
    mean, _ = exact_gaussian_cfg_law(world.law(1), world.law(None), 3.0, "ode", start="marginal")
    se = math.sqrt(float(target.data_cov[0, 0]) / 1e5)
    assert abs(float(mean[0]) - float(target.data_mean[0])) > 8 * se


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_exact_sampler_mean_on_gauss1d(sampler: str) -> None:
    """DDIM / DDPM (200 uniform steps, n = 1e5, seed 0) driven by the tilted score from pi_1 return pi's mean.

    Bias: the discrete sampler's exact output mean (verify.exact_law.discrete_sampler_law on this affine denoiser)
    equals pi's to 1e-15 at 200 steps, so the test reads Monte Carlo noise only. Family: 2 samplers x 3 w = 6 tests
    at 4 standard errors each; two-sided normal tail 6.3e-5 each, so Holm (Bonferroni at the first step) keeps the
    family's false-alarm rate below 6 x 6.3e-5 = 3.8e-4. Power: against CFG's own law (test above) the mean is
    off by more than 8 standard errors, detected with probability > 0.999."""
    world = get_world("gauss1d")
    gen = torch.Generator().manual_seed(0)
    for w in WS:
        den = TiltedDenoiser(world, rules.get("cfg", w=w), 1)
        x1 = den.target.mean(1.0) + torch.randn(100_000, 1, dtype=F64, generator=gen) * den.target.cov(1.0).sqrt()
        x0 = get_sampler(sampler)(den, x1, time_grid(200, 1.0, 0.0), generator=gen)
        se = math.sqrt(float(x0.var()) / x0.shape[0])
        assert abs(float(x0.mean()) - float(den.target.data_mean[0])) <= 4 * se, (w, float(x0.mean()))


def test_refusals() -> None:
    world = get_world("gauss1d")
    with pytest.raises(TypeError, match="^law"):
        NoisedTilted("not a law")
    with pytest.raises(ValueError, match="^method"):
        noised_tilted(world, rules.get("cfg", w=1.0), 1, method="exact")
    with pytest.raises(ValueError, match="^method"):
        noised_tilted(get_world("bimodal1d"), rules.get("cfg", w=1.0), 1, method="closed form")
    with pytest.raises(ValueError, match="^table"):
        TiltedDenoiser(world, rules.get("cfg", w=1.0), 1, table=2)
    with pytest.raises(ValueError, match="^t"):
        noised_tilted(world, rules.get("cfg", w=1.0), 1).mean(1.5)
