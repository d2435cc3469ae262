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
from verify.tilted_noised import NoisedTilted, TiltedDenoiser, noised_tilted, tilted_flow_law_1d, tilted_moment_law

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


#: step counts of the three runs combined by Richardson extrapolation (log-SNR grids, see _richardson)
LEVELS = (40, 80, 160)
#: weights of second-order Richardson for a first-order method: E = (8 E_h/4 - 6 E_h/2 + E_h) / 3 cancels the h and
#: h^2 terms of the bias
COEF = (1.0 / 3.0, -2.0, 8.0 / 3.0)
#: the samplers run to t_end = 1e-3 (a log-SNR grid needs sigma > 0 at the end) and are compared with pi_{t_end},
#: whose moments are exact (alpha m, alpha^2 S + sigma^2)
T_END = 1e-3
N = 100_000


def _grid(steps: int) -> torch.Tensor:
    return time_grid(steps, 1.0, T_END, "log_snr", schedule="vp-linear")


def _richardson(den: TiltedDenoiser, sampler: str, gen: torch.Generator) -> tuple[float, float, float, float]:
    """``(mean, se_mean, var, se_var)``: Richardson-extrapolated moments of the sampler's output over LEVELS.

    DDIM is deterministic: the three runs share their starts, so the extrapolation is per sample and its standard
    error is that of the per-sample combination. DDPM runs are independent: the variances add with the squared
    weights. Variances by the delta method on the centred squares."""
    spec = get_sampler(sampler)
    m1, c1 = den.target.mean(1.0), den.target.cov(1.0).sqrt()
    shared = m1 + torch.randn(N, 1, dtype=F64, generator=gen) * c1
    outs = []
    for steps in LEVELS:
        x1 = shared if sampler == "ddim" else m1 + torch.randn(N, 1, dtype=F64, generator=gen) * c1
        outs.append(spec(den, x1, _grid(steps), generator=gen)[:, 0])
    means = [float(x.mean()) for x in outs]
    squares = [(x - m) ** 2 for x, m in zip(outs, means, strict=True)]
    mean = sum(c * m for c, m in zip(COEF, means, strict=True))
    var = sum(c * float(q.mean()) for c, q in zip(COEF, squares, strict=True))
    if sampler == "ddim":
        se_mean = float(sum(c * x for c, x in zip(COEF, outs, strict=True)).std()) / math.sqrt(N)
        se_var = float(sum(c * q for c, q in zip(COEF, squares, strict=True)).std()) / math.sqrt(N)
    else:
        se_mean = math.sqrt(sum(c * c * float(x.var()) for c, x in zip(COEF, outs, strict=True)) / N)
        se_var = math.sqrt(sum(c * c * float(q.var()) for c, q in zip(COEF, squares, strict=True)) / N)
    return mean, se_mean, var, se_var


def test_richardson_bias_is_negligible_on_gauss1d() -> None:
    """The extrapolated moments' remaining discretisation bias, computed exactly on gauss1d (the tilted denoiser is
    affine there: verify.exact_law.discrete_sampler_law), is below 0.1 of the sampling test's standard error, so that
    test's false-alarm rate is the nominal one to within a factor 1.5 (P(|Z + 0.1| > 4) / P(|Z| > 4) < 1.5)."""
    from verify.exact_law import discrete_sampler_law

    world = get_world("gauss1d")
    for w in WS:
        den = TiltedDenoiser(world, rules.get("cfg", w=w), 1)
        v = float(den.target.cov(T_END)[0, 0])
        for sampler in ("ddim", "ddpm"):
            # the extrapolation's standard errors: one run's for DDIM (a per-sample combination of nearly equal
            # outputs), sqrt(sum c_k^2) = 3.35 times one run's for DDPM (independent runs)
            factor = 1.0 if sampler == "ddim" else math.sqrt(sum(c * c for c in COEF))
            se_mean, se_var = factor * math.sqrt(v / N), factor * v * math.sqrt(2.0 / N)
            laws = [discrete_sampler_law(sampler, den, _grid(k), den.target.mean(1.0), den.target.cov(1.0))
                    for k in LEVELS]
            mean = sum(c * float(m[0]) for c, (m, _) in zip(COEF, laws, strict=True))
            var = sum(c * float(s[0, 0]) for c, (_, s) in zip(COEF, laws, strict=True))
            assert abs(mean - float(den.target.mean(T_END)[0])) < 0.1 * se_mean, (w, sampler)
            assert abs(var - v) < 0.1 * se_var, (w, sampler, (var - v) / se_var)
            # and the extrapolation is needed: the finest run alone is biased by more than 2 single-run errors
            assert abs(float(laws[-1][1][0, 0]) - v) > 2 * v * math.sqrt(2.0 / N)


def test_exact_sampler_hits_the_tilted_target() -> None:
    """DDIM and DDPM driven by the tilted score from pi_1 (n = 1e5 per run, seed 0; Richardson over 40, 80, 160
    log-SNR steps) reproduce pi_{t_end}'s mean and variance, on gauss1d (closed-form score) and bimodal1d
    (quadrature score through a 600-node spline table), for CFG at w = 1, 3, 7.

    False alarms: 2 worlds x 3 w x 2 samplers x 2 moments = 24 z-scores under Holm's step-down procedure at family
    level 1.5e-3 (its first threshold alpha / 24 = 6.3e-5 is |z| > 4.0), so the whole family raises a false alarm with
    probability at most 1.5e-3 (Holm 1979), the remaining bias (previous test: < 0.1 SE on gauss1d) aside. Power:
    CFG's own sampled law (its PF-ODE law from verify.exact_law) differs from pi by 56 to 715 single-run standard
    errors over these cases (test_cfg_law_is_far_from_the_target), at least 15 of the extrapolation's (3.35 times
    larger for DDPM): detected with probability 1 to within 1e-12.

    The table's interpolation error is at most max_table_error (measured at the table's midpoints each step); a score
    error e moves the probability-flow ODE by at most about (1/2) int g^2 dt e = -log alpha_1 e ~ 5 e over the run,
    so e <= 1e-5 keeps that displacement below 5e-5, under 0.03 of the smallest standard error here (1.5e-3)."""
    from scipy.stats import norm

    gen = torch.Generator().manual_seed(0)
    zs: list[tuple[str, float]] = []
    for name, table in (("gauss1d", None), ("bimodal1d", 600)):
        world = get_world(name)
        for w in WS:
            den = TiltedDenoiser(world, rules.get("cfg", w=w), 1, table=table)
            target_mean, target_var = float(den.target.mean(T_END)[0]), float(den.target.cov(T_END)[0, 0])
            for sampler in ("ddim", "ddpm"):
                mean, se_mean, var, se_var = _richardson(den, sampler, gen)
                zs.append((f"{name} w={w} {sampler} mean", (mean - target_mean) / se_mean))
                zs.append((f"{name} w={w} {sampler} var", (var - target_var) / se_var))
            assert den.max_table_error <= 1e-5, (name, w, den.max_table_error)
    # Holm: sort the p-values, reject the k-th smallest (0-based) if p <= alpha / (m - k), stopping at the first keep
    alpha, pvals = 1.5e-3, sorted((2 * norm.sf(abs(z)), label) for label, z in zs)
    rejected = []
    for k, (p, label) in enumerate(pvals):
        if p > alpha / (len(pvals) - k):
            break
        rejected.append(label)
    assert not rejected, (rejected, zs)


def test_cfg_law_is_far_from_the_target() -> None:
    """The power reference: CFG's own PF-ODE law (verify.exact_law, marginal start) differs from the tilted target by
    more than 15 standard errors of the extrapolated DDPM moments (3.35 single-run errors) in every case tested."""
    from verify.exact_law import exact_gaussian_cfg_law, pf_ode_law_1d

    for w in WS:
        rule = rules.get("cfg", w=w)
        gauss, bimodal = get_world("gauss1d"), get_world("bimodal1d")
        m, c = exact_gaussian_cfg_law(gauss.law(1), gauss.law(None), w, "ode", start="marginal")
        cases = [(gauss, float(m[0]), float(c[0, 0]))]
        law = pf_ode_law_1d(rule, {"cond": bimodal.law(1), "uncond": bimodal.law(None)}, start="marginal",
                            n_nodes=401)
        cases.append((bimodal, law.mean, law.var))
        for world, mean, var in cases:
            target = noised_tilted(world, rule, 1)
            v = float(target.data_cov[0, 0])
            gap = max(abs(mean - float(target.data_mean[0])) / math.sqrt(v / N),
                      abs(var - v) / (v * math.sqrt(2.0 / N)))
            assert gap > 15 * 3.35, (world.name, w, gap)


@pytest.mark.parametrize(("name", "w"), [("gauss1d", 7.0), ("bimodal1d", 1.0), ("bimodal1d", 7.0)])
def test_flow_map_of_the_tilted_score_ends_at_pi(name: str, w: float) -> None:
    """The deterministic reference: the PF-ODE flow map with the quadrature score of pi_t, from pi_1, returns pi's mean
    and variance within its own error estimate (halving the nodes, 100x the tolerance) plus pi's quadrature
    moment error; measured 1e-9 against estimates of 2e-8."""
    target = noised_tilted(get_world(name), rules.get("cfg", w=w), 1)
    summary = target.law.summary()
    mean, var, err = tilted_flow_law_1d(target, n_nodes=201, rtol=1e-8)
    assert abs(mean - float(summary.mean[0])) <= err["mean"] + summary.moment_error
    assert abs(var - float(summary.cov[0, 0])) <= err["var"] + summary.moment_error


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
    with pytest.raises(ValueError, match="^n_nodes"):
        tilted_flow_law_1d(noised_tilted(world, rules.get("cfg", w=1.0), 1), n_nodes=2)
    with pytest.raises(ValueError, match="^x"):  # far beyond the quadrature window
        noised_tilted(get_world("bimodal1d"), rules.get("cfg", w=7.0), 1).score(torch.tensor([[40.0]]), 0.1)
