"""The noised tilted target pi_t and the exact tilted sampler (verify.tilted_noised).

Wrong answers the checks are shown to reject: the target at w + 0.5 (a tilted law one half-step off), CFG's own
sampled law, a density shifted by 1e-6, a grid too coarse for its integrand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.interpolate import CubicSpline
from scipy.stats import norm

from toy_models import World, get_world
from toy_models.gaussian_mixture import GaussianMixture
from verify import rules
from verify.samplers import ddpm, get_sampler, time_grid
from verify.tilted import tilted_law
from verify.tilted_noised import NoisedTilted, TiltedDenoiser, noised_tilted, tilted_flow_law_1d, tilted_moment_law
from verify.tolerances import log_prob_rounding_bound, score_rounding_bound

F64 = torch.float64
U = 2.0**-53
WS = (1.0, 3.0, 7.0)


# The samplers push 1e5 x d tensors through a hundred steps: intra-op threads only add synchronisation.
pytestmark = pytest.mark.usefixtures("one_thread")


def _gauss2d() -> World:
    cond = GaussianMixture([1.0], [[1.0, -0.5]], [[[0.6, 0.2], [0.2, 0.4]]], labels=[1])
    uncond = GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.1], [0.1, 1.2]]], labels=[0])
    return World("gauss2d", uncond, conditionals={1: cond})


def _mix1d() -> World:
    """p(x|c) a two-component mixture with one shared variance, p(x) one Gaussian: at integer 1 + w the tilted
    target is a finite Gaussian mixture (verify.tilted.TiltedLaw.as_mixture), non-Gaussian, with pi_t in closed
    form."""
    cond = GaussianMixture([0.3, 0.7], [[-1.0], [1.5]], [[[0.3]], [[0.3]]], labels=[1, 1])
    uncond = GaussianMixture([1.0], [[0.0]], [[[2.0]]], labels=[0])
    return World("mix1d", uncond, conditionals={1: cond})


def _mix2d() -> World:
    """The 2-D analogue: three components with one shared covariance against one Gaussian."""
    c = [[0.3, 0.1], [0.1, 0.2]]
    cond = GaussianMixture([0.2, 0.5, 0.3], [[-1.0, 0.0], [1.2, 0.5], [0.0, -1.3]], [c, c, c], labels=[1, 1, 1])
    uncond = GaussianMixture([1.0], [[0.0, 0.0]], [[[2.0, 0.3], [0.3, 1.5]]], labels=[0])
    return World("mix2d", uncond, conditionals={1: cond})


def _closed_rounding(target: NoisedTilted, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rounding bounds of the closed form at ``x`` (the noised mixture's own, verify.tolerances), log and score."""
    law = target.mixture.noised(*target.alpha_sigma(t))
    return log_prob_rounding_bound(law, x), score_rounding_bound(law, x)


# ----------------------------------------------------------------------------------------------------------------
# pi_t itself
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gauss1d", "bimodal1d"])
@pytest.mark.parametrize("w", WS)
def test_pi_0_is_the_tilted_target(name: str, w: float) -> None:
    """At t = 0 (alpha = 1, sigma = 0 exactly on vp-linear) pi_t is pi: its log density against log pi~ minus an
    independent normaliser (scipy's adaptive quadrature), its moments against scipy's. Rejects the target at
    w + 0.5."""
    world, rule = get_world(name), rules.get("cfg", w=w)
    target = noised_tilted(world, rule, 1)
    law = tilted_law(world, rule, 1)
    peak = float(law.log_unnormalized(target.data_mean[None])[0])

    def density(v: float, power: int = 0) -> float:
        return v**power * math.exp(float(law.log_unnormalized(torch.tensor([[v]], dtype=F64))[0]) - peak)

    lo, hi = float(law.window[0][0]), float(law.window[1][0])
    quads = [integrate.quad(density, lo, hi, args=(k,), epsabs=0, epsrel=1e-13, limit=400, points=[0.0, 2.0])
             for k in range(3)]
    (z, z_err), (m1, m1_err), (m2, m2_err) = quads
    log_z, mean, var = peak + math.log(z), m1 / z, m2 / z - (m1 / z) ** 2
    x = torch.linspace(-1.0, 3.5, 31, dtype=F64)[:, None]
    expected = law.log_unnormalized(x) - log_z
    got, err = target.log_prob(x, 0.0, with_error=True)
    # err: pi_t's estimate (normaliser error included); scipy's relative error estimate z_err / z moves log Z by
    # that much; subtracting two numbers rounds by u (|a| + |b|), and log pi~ is the same computation on both sides
    tol = err + z_err / z + 4 * U * (expected.abs() + abs(log_z))
    assert bool(((got - expected).abs() <= tol).all()), float((got - expected).abs().max())
    wrong = noised_tilted(world, rules.get("cfg", w=w + 0.5), 1).log_prob(x, 0.0)
    assert bool(((wrong - expected).abs() > tol).any())
    # moments: the target's own error estimate plus scipy's (relative errors of the three integrals, propagated)
    mean_tol = target.moment_error + (m1_err + abs(mean) * z_err) / z + 8 * U * abs(mean)
    var_tol = target.moment_error + (m2_err + abs(m2 / z) * z_err) / z + 2 * abs(mean) * mean_tol + 8 * U * var
    assert abs(float(target.mean(0.0)[0]) - mean) <= mean_tol
    assert abs(float(target.cov(0.0)[0, 0]) - var) <= var_tol


@pytest.mark.parametrize("w", (1.0, 3.0))
@pytest.mark.parametrize("world", [get_world("gauss1d"), _gauss2d(), _mix1d(), _mix2d()],
                         ids=["gauss1d", "gauss2d", "mix1d", "mix2d"])
def test_quadrature_error_estimate_bounds_its_error(world: World, w: float) -> None:
    """The quadrature against the closed form (Gaussian targets, and finite-mixture targets that are not Gaussian)
    at times covering every route: sigma = 0, the local quadrature (t = 1e-7: r below 1e-3 of the length scale), the
    grid convolution at its finest levels (1e-3) and at high noise. The true error is bounded by
    the reported estimate (halving difference, truncation and rounding terms, normaliser error) plus the closed
    form's own rounding bound (verify.tolerances). Points are draws of pi_t."""
    rule = rules.get("cfg", w=w)
    closed = noised_tilted(world, rule, 1, method="closed form")
    quad = noised_tilted(world, rule, 1, method="quadrature")
    gen = torch.Generator().manual_seed(1)
    routes = set()
    for t in (0.0, 1e-7, 1e-3, 0.02, 0.3, 1.0):
        x = closed.mixture.noised(*closed.alpha_sigma(t)).sample(40 if world.dim == 1 else 12, gen)
        lp, lp_err = quad.log_prob(x, t, with_error=True)
        sc, sc_err = quad.score(x, t, with_error=True)
        round_lp, round_sc = _closed_rounding(closed, x, t)
        assert bool(((lp - closed.log_prob(x, t)).abs() <= lp_err + round_lp).all()), t
        assert bool(((sc - closed.score(x, t)).norm(dim=1) <= sc_err + round_sc).all()), t
        routes.add(quad.method_at(t))
    assert routes == {"exact at sigma = 0", "grid convolution", "local quadrature"}


def test_quadrature_error_estimate_can_fail() -> None:
    """The comparison above can fail, and the estimate says when a grid is too coarse.

    * A log density shifted by 1e-6 is outside the bound at every point and time (the bound is below 1e-10).
    * A data grid 16 times too coarse (length_scale 16 s) at t = 0.3, where the kernel lets the grid keep its
      coarse spacing (49 nodes, spacing 0.32, about the components' width): its true score error is above 1e-5
      and its estimate, above 1e-3, bounds it and reports the grid as inadequate, while the default grid's
      estimate is below 1e-10 at the same points."""
    world, rule = _mix1d(), rules.get("cfg", w=3.0)
    closed = noised_tilted(world, rule, 1, method="closed form")
    quad = noised_tilted(world, rule, 1, method="quadrature")
    coarse = noised_tilted(world, rule, 1, method="quadrature", length_scale=16 * quad.scale)
    x = torch.linspace(-1.0, 2.5, 11, dtype=F64)[:, None]
    for t in (0.02, 0.3, 1.0):
        ref = closed.log_prob(x, t)
        lp, err = quad.log_prob(x, t, with_error=True)
        tol = err + _closed_rounding(closed, x, t)[0]
        assert float(tol.max()) < 1e-10
        assert bool(((lp + 1e-6 - ref).abs() > tol).all())
    t = 0.3
    ref_sc = closed.score(x, t)
    _, err = quad.score(x, t, with_error=True)
    coarse_sc, coarse_err = coarse.score(x, t, with_error=True)
    coarse_true = (coarse_sc - ref_sc).norm(dim=1)
    assert float(err.max()) < 1e-10
    assert float(coarse_true.max()) > 1e-5 and float(coarse_err.max()) > 1e-3
    assert bool((coarse_true <= coarse_err + _closed_rounding(closed, x, t)[1]).all())


def test_not_a_knot_lebesgue_constant_is_below_two() -> None:
    """The interpolated score's node-error term uses 2 per axis for the spline's Lebesgue constant (max over x of
    sum_j |l_j(x)|, l_j the cardinal splines). Measured on 3 to 129 uniform nodes (200 points per cell): it rises to
    1.9716 and stays there; a bound of 1.9 would fail."""
    worst = 0.0
    for n in (3, 5, 9, 17, 65, 129):
        x = np.linspace(0.0, 1.0, n)
        fine = np.linspace(0.0, 1.0, 200 * (n - 1) + 1)
        total = sum(np.abs(CubicSpline(x, np.eye(n)[j])(fine)) for j in range(n))
        worst = max(worst, float(total.max()))
    assert 1.9 < worst < 2.0


@pytest.mark.parametrize("world", [_mix1d(), _mix2d()], ids=["mix1d", "mix2d"])
def test_interpolated_score_estimate_bounds_its_error(world: World) -> None:
    """The interpolated score against the closed form at 5000 draws of pi_t (non-Gaussian targets), for two bounds
    and three times: the largest error over the points is at most the reported estimate (and every point's at most
    the bound asked for), and at least a tenth of it (the estimate is not vacuous: one ten times too large would
    fail)."""
    rule = rules.get("cfg", w=3.0)
    closed = noised_tilted(world, rule, 1, method="closed form")
    quad = noised_tilted(world, rule, 1, method="quadrature")
    gen = torch.Generator().manual_seed(2)
    for t in (0.02, 0.1, 0.3):
        x = closed.mixture.noised(*closed.alpha_sigma(t)).sample(5000, gen)
        ref = closed.score(x, t)
        for bound in (1e-3, 1e-6):
            score, info = quad.interpolated_score(x, t, max_error=bound)
            err = (score - ref).norm(dim=1)
            scale = float(_closed_rounding(closed, x, t)[1].max())
            assert float(err.max()) <= info["error"] + scale <= bound + scale, (t, bound, info)
            assert float(err.max()) >= 0.1 * info["error"], (t, bound, info)


@pytest.mark.parametrize("name", ["bimodal1d", "ring2d"])
def test_score_is_the_gradient_of_the_log_density(name: str) -> None:
    """Autograd of the quadrature's log density against its score, which sums the same terms (y - X) K P / S in
    another order. Both round each sum of n terms by gamma_n times the sum of the terms' absolute values (Higham,
    Lemma 3.1): n is the data nodes summed per axis (n1 + n2), and the terms' absolute sum is at most
    max |y - X| / (alpha r^2), where |y - X| <= 10 r sqrt(d) over the nodes an evaluation keeps (points inside the
    data box); the kernel's differences y - X are the same tensor in both routes. At sigma = 0 both are the factor
    mixtures' own score and autograd (verify.tolerances bounds, times |exponent|). Rejects the score of the target
    at w + 0.5."""
    from verify.tolerances import score_bounds

    world = get_world(name)
    target = noised_tilted(world, rules.get("cfg", w=3.0), 1)
    wrong = noised_tilted(world, rules.get("cfg", w=3.5), 1)
    gen = torch.Generator().manual_seed(2)
    for t in (0.0, 0.02, 0.2, 0.8):
        x = target.mean(t) + 0.5 * torch.randn(20 if world.dim == 1 else 6, world.dim, dtype=F64, generator=gen)
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(target.log_prob(x, t).sum(), x)
        x = x.detach()
        ref = target.score(x, t)
        if t == 0.0:
            tol = sum(abs(e) * sum(score_bounds(law, x)) for law, e in target.law.factors)
        else:
            alpha, sigma = target.alpha_sigma(t)
            r = sigma / alpha
            n = sum(target.quadrature_nodes(t))
            tol = 2 * (n + 8) * U * (ref.norm(dim=1) + 10 * math.sqrt(world.dim) / (alpha * r))
        assert bool(((grad - ref).norm(dim=1) <= tol).all()), t
        assert bool(((wrong.score(x, t) - ref).norm(dim=1) > tol).any()), t


@pytest.mark.parametrize("nu", [0.0, 1.0])
@pytest.mark.parametrize("world", [get_world("gauss1d"), _gauss2d()], ids=["1d", "2d"])
def test_moment_odes_with_the_tilted_score_end_at_pi(world: World, nu: float) -> None:
    """The moment ODEs driven by pi_t's score return pi_t at every time (verify.exact_law.moment_ode_law). DOP853's
    global error is below about 1e3 rtol relative (verify.exact_law), so the tolerance is 1e3 rtol times the
    moment's scale; the target at w + 0.5 is farther than that."""
    rtol = 1e-12
    target = noised_tilted(world, rules.get("cfg", w=7.0), 1)
    wrong = noised_tilted(world, rules.get("cfg", w=7.5), 1)
    for t_end in (0.0, 0.4):
        mean, cov = tilted_moment_law(target, nu, t_end=t_end, rtol=rtol)
        tol_m = 1e3 * rtol * max(1.0, float(target.mean(t_end).abs().max()))
        tol_c = 1e3 * rtol * max(1.0, float(target.cov(t_end).abs().max()))
        assert torch.allclose(mean, target.mean(t_end), rtol=0, atol=tol_m)
        assert torch.allclose(cov, target.cov(t_end), rtol=0, atol=tol_c)
        assert float((wrong.cov(t_end) - cov).abs().max()) > tol_c


# ----------------------------------------------------------------------------------------------------------------
# The denoiser
# ----------------------------------------------------------------------------------------------------------------
def test_denoiser_takes_one_time_per_row() -> None:
    """t as a [N] tensor: rows sharing a time get what a call at that time alone gives them (exact evaluation
    below 256 points, so the same arithmetic on the same rows), as toy_models.AnalyticDenoiser does."""
    den = TiltedDenoiser(get_world("ring2d"), rules.get("cfg", w=3.0), 0)
    gen = torch.Generator().manual_seed(3)
    x = den.target.mean(0.3) + 0.4 * torch.randn(12, 2, dtype=F64, generator=gen)
    times = torch.tensor([0.1, 0.5, 0.9] * 4, dtype=F64)
    eps = den.eps(x, times)
    for value in (0.1, 0.5, 0.9):
        rows = times == value
        assert torch.equal(eps[rows], den.eps(x[rows], value))
    with pytest.raises(ValueError, match="^t"):
        den.eps(x, torch.tensor([0.1, 0.2], dtype=F64))


def test_max_table_error_is_enforced() -> None:
    """Every call's estimate is checked: a bound below the quadrature's rounding (1e-15 in eps units) is refused,
    naming max_table_error, on both the interpolated and the exact route; a default run records its largest
    estimate, below the default bound 1e-5."""
    world, rule = get_world("bimodal1d"), rules.get("cfg", w=3.0)
    x = torch.linspace(-1.0, 4.0, 1000, dtype=F64)[:, None]
    for table in ("auto", None):
        den = TiltedDenoiser(world, rule, 1, table=table, max_table_error=1e-15)
        with pytest.raises(ValueError, match="^max_table_error"):
            den.eps(x if table == "auto" else x[:50], 0.3)
    den = TiltedDenoiser(world, rule, 1)
    for t in (0.9, 0.3, 0.05):
        den.eps(x, t)
    assert 0.0 < den.largest_error <= den.max_table_error == 1e-5


# ----------------------------------------------------------------------------------------------------------------
# The exact sampler
# ----------------------------------------------------------------------------------------------------------------
#: step counts of the three runs combined by Richardson extrapolation (log-SNR grids, see _richardson)
LEVELS = (25, 50, 100)
#: weights of second-order Richardson for a first-order method: E = (8 E_h/4 - 6 E_h/2 + E_h) / 3 cancels the h and
#: h^2 terms of the bias
COEF = (1.0 / 3.0, -2.0, 8.0 / 3.0)
#: standard error of the extrapolation over independent runs, in single-run standard errors: sqrt(sum c_k^2)
DDPM_SE = math.sqrt(sum(c * c for c in COEF))
#: the samplers run to t_end = 1e-3 (a log-SNR grid needs sigma > 0 at the end) and are compared with pi_{t_end},
#: whose moments are exact (alpha m, alpha^2 S + sigma^2)
T_END = 1e-3
N = 100_000


def _grid(steps: int) -> torch.Tensor:
    return time_grid(steps, 1.0, T_END, "log_snr", schedule="vp-linear")


def _richardson(den: TiltedDenoiser, sampler: str, gen: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean [d], se_mean [d], cov [d, d], se_cov [d, d])``: Richardson-extrapolated moments of the sampler's
    output over LEVELS.

    DDIM is deterministic: the three runs share their starts, so the extrapolation is per sample and its standard
    error is that of the per-sample combination. DDPM runs are independent: the variances add with the squared
    weights. Covariance entries by the delta method on the centred products."""
    spec, d = get_sampler(sampler), den.dim
    m1, c1 = den.target.mean(1.0), torch.linalg.cholesky(den.target.cov(1.0))
    shared = m1 + torch.randn(N, d, dtype=F64, generator=gen) @ c1.T
    outs = []
    for steps in LEVELS:
        x1 = shared if sampler == "ddim" else m1 + torch.randn(N, d, dtype=F64, generator=gen) @ c1.T
        outs.append(spec(den, x1, _grid(steps), generator=gen))
    rows, cols = torch.triu_indices(d, d)
    products = [(x - x.mean(0))[:, rows] * (x - x.mean(0))[:, cols] for x in outs]  # [N, d(d+1)/2]
    mean = sum(c * x.mean(0) for c, x in zip(COEF, outs, strict=True))
    prod = sum(c * p.mean(0) for c, p in zip(COEF, products, strict=True))
    if sampler == "ddim":
        se_mean = sum(c * x for c, x in zip(COEF, outs, strict=True)).std(0) / math.sqrt(N)
        se_prod = sum(c * p for c, p in zip(COEF, products, strict=True)).std(0) / math.sqrt(N)
    else:
        se_mean = torch.sqrt(sum(c * c * x.var(0) for c, x in zip(COEF, outs, strict=True)) / N)
        se_prod = torch.sqrt(sum(c * c * p.var(0) for c, p in zip(COEF, products, strict=True)) / N)
    cov, se_cov = torch.zeros(d, d, dtype=F64), torch.zeros(d, d, dtype=F64)
    cov[rows, cols], se_cov[rows, cols] = prod, se_prod
    return mean, se_mean, cov, se_cov


def _holm_rejections(zs: list[tuple[str, float]], alpha: float) -> list[str]:
    """Holm's step-down procedure on two-sided z-tests: reject the k-th smallest p (0-based) while
    p <= alpha / (m - k)."""
    pvals = sorted((2 * norm.sf(abs(z)), label) for label, z in zs)
    rejected = []
    for k, (p, label) in enumerate(pvals):
        if p > alpha / (len(pvals) - k):
            break
        rejected.append(label)
    return rejected


def test_richardson_bias_is_negligible_on_gauss1d() -> None:
    """The extrapolated moments' remaining discretisation bias, computed exactly on gauss1d (the tilted denoiser is
    affine there: verify.exact_law.discrete_sampler_law), is below 0.15 of the sampling tests' standard error, so
    their false-alarm rate is the nominal one to within a factor 1.2 (P(|Z + 0.15| > 4) / P(|Z| > 4) < 1.2). The
    variance's bias relative to its standard error depends on the schedule and the steps only (measured the same,
    0.120, on Gaussian targets with ring2d's tilted moments at w = 1, 3, 7), which is what the ring2d test uses."""
    from verify.exact_law import discrete_sampler_law

    world = get_world("gauss1d")
    for w in WS:
        den = TiltedDenoiser(world, rules.get("cfg", w=w), 1)
        v = float(den.target.cov(T_END)[0, 0])
        for sampler in ("ddim", "ddpm"):
            # the extrapolation's standard errors: one run's for DDIM (a per-sample combination of nearly equal
            # outputs), sqrt(sum c_k^2) = 3.35 times one run's for DDPM (independent runs)
            factor = 1.0 if sampler == "ddim" else DDPM_SE
            se_mean, se_var = factor * math.sqrt(v / N), factor * v * math.sqrt(2.0 / N)
            laws = [discrete_sampler_law(sampler, den, _grid(k), den.target.mean(1.0), den.target.cov(1.0))
                    for k in LEVELS]
            mean = sum(c * float(m[0]) for c, (m, _) in zip(COEF, laws, strict=True))
            var = sum(c * float(s[0, 0]) for c, (_, s) in zip(COEF, laws, strict=True))
            assert abs(mean - float(den.target.mean(T_END)[0])) < 0.15 * se_mean, (w, sampler)
            assert abs(var - v) < 0.15 * se_var, (w, sampler, (var - v) / se_var)
            # and the extrapolation is needed: the finest run alone is biased by more than 2 single-run errors
            assert abs(float(laws[-1][1][0, 0]) - v) > 2 * v * math.sqrt(2.0 / N)


def test_exact_sampler_hits_the_tilted_target() -> None:
    """DDPM driven by the tilted score from pi_1 (n = 1e5 per run, seed 0; Richardson over 25, 50, 100 log-SNR
    steps) reproduces pi_{t_end}'s mean and variance on bimodal1d (the interpolated quadrature score) for CFG at
    w = 1 and 7 (w = 3 lies between; the file's time budget). gauss1d's exact discrete laws, DDIM's included, are
    checked without sampling above, and the probability-flow ODE with this score by its flow map below.

    False alarms: 2 w x 2 moments = 4 z-scores under Holm's step-down procedure at family level 1e-3 (its first
    threshold alpha / 4 = 2.5e-4 is |z| > 3.7), so the family raises a false alarm with probability at most 1e-3
    (Holm 1979), the remaining bias (< 0.15 SE) aside. Power: CFG's own sampled law (its PF-ODE law from
    verify.exact_law) differs from pi by more than 15 of the extrapolation's standard errors in every case
    (test_cfg_law_is_far_from_the_target): detected with probability 1 to within 1e-12.

    The score's estimated error is at most max_table_error = 1e-5 in eps units at every call (enforced by the
    denoiser); a DDPM step moves x by about dlambda sigma |d eps|, so the whole run moves by at most 19 x 1e-5
    (the log-SNR range), 0.06 of the smallest standard error here (3.35 x 1e-3)."""
    gen = torch.Generator().manual_seed(0)
    zs: list[tuple[str, float]] = []
    world = get_world("bimodal1d")
    for w in (1.0, 7.0):
        den = TiltedDenoiser(world, rules.get("cfg", w=w), 1)
        target_mean, target_var = float(den.target.mean(T_END)[0]), float(den.target.cov(T_END)[0, 0])
        mean, se_mean, cov, se_cov = _richardson(den, "ddpm", gen)
        zs.append((f"w={w} mean", (float(mean[0]) - target_mean) / float(se_mean[0])))
        zs.append((f"w={w} var", (float(cov[0, 0]) - target_var) / float(se_cov[0, 0])))
        assert den.largest_error <= den.max_table_error
    assert not _holm_rejections(zs, 1e-3), zs


def test_exact_sampler_hits_the_tilted_target_on_ring2d() -> None:
    """DDPM driven by TiltedDenoiser(ring2d, cfg(w), 0) (the interpolated 2-D quadrature score) from pi_1, n = 1e5
    per run, Richardson over 25, 50, 100 log-SNR steps, reproduces pi_{t_end}'s mean and covariance (pi's moments
    from tilted_law(...).summary(), noised exactly) at w = 1, 3, 7.

    False alarms: 3 w x (2 means + 3 covariance entries) = 15 z-scores under Holm at family level 1e-3 (first
    threshold |z| > 3.99). The remaining discretisation bias: on a Gaussian target with these moments the exact
    discrete laws give 0.120 standard errors for the variances and 0 for the mean (the same for every w: see
    test_richardson_bias_is_negligible_on_gauss1d), and the non-Gaussian target's first-order bias at 100 steps
    matched that analogue's to 2 % (w = 7: -0.00364 against -0.00356 in the radial variance). Power: the unguided
    conditional p(x | c) differs from pi by more than 8 of these standard errors in a moment for every w (its
    tangential variance; asserted below), so a sampler that lost the tilt would be rejected with probability above
    0.9999 (P(|Z + 8| > 4)).

    Each score call's estimated error is at most 1e-5 in eps units (enforced), moving a run by at most 2e-4
    (test_exact_sampler_hits_the_tilted_target), under 0.1 of the smallest standard error (2e-3 for the radial
    mean's); measured, a bound of 1e-7 instead moved the 100-step run's means by under 1e-5 of a standard error.
    Runs in about 25 s single-threaded."""
    gen = torch.Generator().manual_seed(0)
    zs: list[tuple[str, float]] = []
    world = get_world("ring2d")
    rows, cols = torch.triu_indices(2, 2)
    for w in WS:
        den = TiltedDenoiser(world, rules.get("cfg", w=w), 0)
        mean, se_mean, cov, se_cov = _richardson(den, "ddpm", gen)
        target_mean, target_cov = den.target.mean(T_END), den.target.cov(T_END)
        for i in range(2):
            zs.append((f"w={w} mean[{i}]", float((mean[i] - target_mean[i]) / se_mean[i])))
        for i, j in zip(rows.tolist(), cols.tolist(), strict=True):
            zs.append((f"w={w} cov[{i},{j}]", float((cov[i, j] - target_cov[i, j]) / se_cov[i, j])))
        assert den.largest_error <= den.max_table_error
        # power: the unguided conditional p(x | c), the law a sampler that lost the tilt would return, noised the
        # same way
        alpha, sigma = den.target.alpha_sigma(T_END)
        cond = world.law(0)
        wrong_mean = alpha * cond.mean()
        wrong_cov = alpha**2 * cond.covariance() + sigma**2 * torch.eye(2, dtype=F64)
        gaps = torch.cat([((wrong_mean - target_mean) / se_mean).abs(),
                          ((wrong_cov - target_cov)[rows, cols] / se_cov[rows, cols]).abs()])
        assert float(gaps.max()) > 8.0, (w, gaps)
    assert not _holm_rejections(zs, 1e-3), zs


def test_cfg_law_is_far_from_the_target() -> None:
    """The power reference of the 1-D test: CFG's own PF-ODE law (verify.exact_law, marginal start) differs from
    the tilted target by more than 15 standard errors of the extrapolated DDPM moments (3.35 single-run errors) in
    every case tested."""
    from verify.exact_law import pf_ode_law_1d

    bimodal = get_world("bimodal1d")
    for w in WS:
        rule = rules.get("cfg", w=w)
        law = pf_ode_law_1d(rule, {"cond": bimodal.law(1), "uncond": bimodal.law(None)}, start="marginal",
                            n_nodes=401)
        target = noised_tilted(bimodal, rule, 1)
        v = float(target.data_cov[0, 0])
        gap = max(abs(law.mean - float(target.data_mean[0])) / math.sqrt(v / N),
                  abs(law.var - v) / (v * math.sqrt(2.0 / N)))
        assert gap > 15 * DDPM_SE, (w, gap)


@pytest.mark.parametrize(("name", "w"), [("gauss1d", 7.0), ("bimodal1d", 1.0), ("bimodal1d", 7.0)])
def test_flow_map_of_the_tilted_score_ends_at_pi(name: str, w: float) -> None:
    """The deterministic reference: the PF-ODE flow map with the quadrature score of pi_t, from pi_1, returns pi's
    mean and variance within its own error estimate (halving the nodes, 100x the tolerance) plus pi's quadrature
    moment error; the target at w + 0.5 lies outside that."""
    world = get_world(name)
    target = noised_tilted(world, rules.get("cfg", w=w), 1)
    summary = target.law.summary()
    mean, var, err = tilted_flow_law_1d(target, n_nodes=201, rtol=1e-8)
    assert abs(mean - float(summary.mean[0])) <= err["mean"] + summary.moment_error
    assert abs(var - float(summary.cov[0, 0])) <= err["var"] + summary.moment_error
    wrong = tilted_law(world, rules.get("cfg", w=w + 0.5), 1).summary()
    assert abs(var - float(wrong.cov[0, 0])) > err["var"] + summary.moment_error


def test_refusals() -> None:
    world = get_world("gauss1d")
    rule = rules.get("cfg", w=1.0)
    with pytest.raises(TypeError, match="^law"):
        NoisedTilted("not a law")
    with pytest.raises(ValueError, match="^method"):
        noised_tilted(world, rule, 1, method="exact")
    with pytest.raises(ValueError, match="^method"):
        noised_tilted(get_world("bimodal1d"), rule, 1, method="closed form")
    with pytest.raises(ValueError, match="^length_scale"):
        noised_tilted(get_world("bimodal1d"), rule, 1, length_scale=0.0)
    with pytest.raises(ValueError, match="^table"):
        TiltedDenoiser(world, rule, 1, table=2)
    with pytest.raises(ValueError, match="^max_table_error"):
        TiltedDenoiser(world, rule, 1, max_table_error=-1.0)
    with pytest.raises(ValueError, match="^t"):
        noised_tilted(world, rule, 1).mean(1.5)
    with pytest.raises(ValueError, match="^n_nodes"):
        tilted_flow_law_1d(noised_tilted(world, rule, 1), n_nodes=2)
    with pytest.raises(ValueError, match="^target"):
        tilted_moment_law(noised_tilted(get_world("bimodal1d"), rule, 1))
    bimodal = noised_tilted(get_world("bimodal1d"), rules.get("cfg", w=7.0), 1)
    with pytest.raises(ValueError, match="^x"):  # far beyond the quadrature's data box
        bimodal.score(torch.tensor([[40.0]], dtype=F64), 0.1)
    with pytest.raises(ValueError, match="^max_error"):
        bimodal.interpolated_score(torch.zeros(3, 1, dtype=F64), 0.1, max_error=0.0)
    assert ddpm is get_sampler("ddpm").function  # the sampler the ring2d test calls is the registered one
