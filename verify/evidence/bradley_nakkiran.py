r"""Bradley & Nakkiran 2024 ('Classifier-Free Guidance is a Predictor-Corrector', arXiv 2408.09000): the evidence
of the claims ``L-BN-PREDICTOR-CORRECTOR`` and ``L-BN-GAUSSIAN-LAWS``.

Their :math:`\gamma` is diffusers' ``guidance_scale`` g (``docs/conventions.md``): the guided score is
:math:`\gamma s_c + (1 - \gamma) s_\varnothing`, :math:`\gamma = 1 + w`.

Three providers:

* :func:`bn_drift_identity` (section 4's identity, per point, in float64 on every world): the reverse-SDE drift with
  the CFG score minus the probability-flow drift with the conditional score, against :math:`\tfrac{g^2}{2}` times
  the score of :math:`p_t(x|c)^{\gamma'} p_t(x)^{1-\gamma'}`, :math:`\gamma' = 2\gamma - 1`, the latter by
  **autograd of the two log densities** (no score formula enters it). The tolerance is the derived rounding bound
  of the scores (:func:`verify.tolerances.score_bounds`) plus the arithmetic that combines them.
* :func:`bn_split_scheme` (section 4's theorem, on sampled laws, exactly): on Gaussian worlds every step is an
  affine map plus Gaussian noise, so the law of N steps is propagated exactly (no Monte Carlo). The split scheme
  (one DDIM step for :math:`p(x|c)`, then one Langevin step of size :math:`h g^2/2` on the :math:`\gamma'`-product
  at the time reached) against DDPM-CFG on the same grid (:func:`verify.exact_law.discrete_sampler_law`) and the
  continuous reverse SDE (:func:`verify.exact_law.exact_gaussian_law`), as the number of steps N grows.
* :func:`bn_gaussian_laws` (section 3's Gaussian example): the closed-form variances of DDIM-CFG and DDPM-CFG on a
  centred Gaussian pair (``proofs/bn_gaussian_laws.py``) against the exact laws of the guided ODE and SDE on a
  variance-exploding schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import mpmath
import numpy as np
import torch
from tqdm.auto import tqdm

from toy_models import AnalyticDenoiser, Condition, GaussianMixture, World, get_schedule, get_world
from toy_models.schedules import VE
from verify import rules
from verify.config import RunConfig
from verify.exact_law import discrete_sampler_law, exact_gaussian_law
from verify.samplers import time_grid
from verify.tolerances import gamma as rounding_gamma
from verify.tolerances import score_bounds

from . import provider
from .shared import SCHEDULE, alpha_sigma, check_points, dense_world_names, first_conditions, one_thread

__all__ = ["DriftWorld", "DriftIdentity", "bn_drift_identity", "corrector_exponent", "drift_errors",
           "split_scheme_law", "langevin_law", "observed_order", "SplitRun", "SplitScheme", "bn_split_scheme",
           "GaussianLawPoint", "GaussianLaws", "bn_gaussian_laws", "gauss2d_pair", "moment_gap",
           "closed_form_variances", "PAPER_VE", "F64"]

F64 = torch.float64

# ----------------------------------------------------------------------------------------------------------------
# The drift identity on every world
# ----------------------------------------------------------------------------------------------------------------
DRIFT_TIMES = (0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
QUICK_DRIFT_TIMES = (0.01, 0.5, 1.0)
DRIFT_SCALES = (2.0, 4.0, 7.5)
#: the longest chain of roundings between the scores and the compared difference: left side f x (1), gamma s_c and
#: (1 - gamma) s_u (2), their sum (1), times g^2 (1), f x minus it (1), g^2/2 s_c (2), the two drifts' difference
#: (1); right side gamma' grad and (1 - gamma') grad (2), sum (1), times g^2/2 (2): at most 10 on either side
DRIFT_OPS = 10


@dataclass(frozen=True)
class DriftWorld:
    """One world: the largest |difference| and |difference| / bound over its points, times, conditions and scales,
    the largest norm of the compared drift, and the number of point checks."""

    name: str
    max_abs_error: float
    max_error_over_bound: float
    max_drift_norm: float
    checks: int


@dataclass(frozen=True)
class DriftIdentity:
    worlds: tuple[DriftWorld, ...]
    times: tuple[float, ...]
    guidance_scales: tuple[float, ...]
    n_points: int
    schedule: str

    @property
    def max_error_over_bound(self) -> float:
        return max(w.max_error_over_bound for w in self.worlds)


def corrector_exponent(guidance_scale: float) -> float:
    r"""Bradley & Nakkiran's :math:`\gamma' = 2\gamma - 1`."""
    return 2.0 * guidance_scale - 1.0


def drift_errors(world: World, condition: Condition, t: float, x: torch.Tensor, scales: tuple[float, ...],
                 exponent: Callable[[float], float] = corrector_exponent) -> list[tuple[float, float, float]]:
    r"""Per guidance scale: (max |lhs - rhs|, max |lhs - rhs| / bound, max |lhs|) at the points ``x``: lhs the
    probability-flow drift with :math:`s_c` minus the reverse-SDE drift with the CFG score, rhs :math:`g^2/2` times
    the autograd score of :math:`p_t(x|c)^{a} p_t(x)^{1-a}`, :math:`a` = ``exponent(scale)`` (:math:`2\gamma - 1`;
    another exponent is the alternative the check must reject)."""
    sched = get_schedule(SCHEDULE)
    alpha, sigma = alpha_sigma(t)
    f, g2 = float(sched.drift(t)), float(sched.diffusion_squared(t))
    cond = world.law(condition).noised(alpha, sigma)
    marg = world.law(None).noised(alpha, sigma)
    s_c, s_u = cond.score(x), marg.score(x)
    (c_fwd, c_bwd), (u_fwd, u_bwd) = score_bounds(cond, x), score_bounds(marg, x)
    xr = x.clone().requires_grad_(True)
    (grad_c,) = torch.autograd.grad(cond.log_prob(xr).sum(), xr)
    (grad_u,) = torch.autograd.grad(marg.log_prob(xr).sum(), xr)

    def norm(v: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(v, dim=-1)

    out = []
    for scale in scales:
        corrector = exponent(scale)
        sde_drift = f * x - g2 * (scale * s_c + (1.0 - scale) * s_u)
        ode_drift = f * x - 0.5 * g2 * s_c
        lhs = ode_drift - sde_drift  # x_{t-h} = x - h drift (+ noise): SDE increment minus ODE increment, over h
        rhs = 0.5 * g2 * (corrector * grad_c + (1.0 - corrector) * grad_u)
        err = norm(lhs - rhs)
        terms = (2 * abs(f) * norm(x) + g2 * (abs(scale) * norm(s_c) + abs(1 - scale) * norm(s_u))
                 + 0.5 * g2 * norm(s_c) + 0.5 * g2 * (abs(corrector) * norm(grad_c)
                                                      + abs(1 - corrector) * norm(grad_u)))
        bound = (g2 * (abs(scale) * c_fwd + abs(1 - scale) * u_fwd + 0.5 * c_fwd)
                 + 0.5 * g2 * (abs(corrector) * c_bwd + abs(1 - corrector) * u_bwd)
                 + rounding_gamma(DRIFT_OPS, F64) * terms)
        out.append((float(err.max()), float((err / bound).max()), float(norm(lhs).max())))
    return out


@provider
@one_thread()
def bn_drift_identity(config: RunConfig) -> DriftIdentity:
    """The predictor-corrector drift identity's error against its derived rounding bound, per world (module
    docstring)."""
    times = QUICK_DRIFT_TIMES if config.quick else DRIFT_TIMES
    n_points = 32 if config.quick else 128
    generator = torch.Generator().manual_seed(config.seed)
    rows: dict[str, list[float]] = {}
    names = dense_world_names()  # the bounds need dense covariances
    jobs = [(name, t) for name in names for t in times]
    for name, t in tqdm(jobs, desc="BN drift identity", disable=not config.show_progress, leave=False):
        world = get_world(name)
        row = rows.setdefault(name, [0.0, 0.0, 0.0, 0])
        for condition in first_conditions(world):
            x = check_points(world, [condition], t, n_points, generator)
            for err, ratio, size in drift_errors(world, condition, t, x, DRIFT_SCALES):
                row[0], row[1], row[2] = max(row[0], err), max(row[1], ratio), max(row[2], size)
                row[3] += x.shape[0]
    worlds = tuple(DriftWorld(n, *rows[n][:3], int(rows[n][3])) for n in names)
    return DriftIdentity(worlds, tuple(times), DRIFT_SCALES, n_points, SCHEDULE)


# ----------------------------------------------------------------------------------------------------------------
# The split scheme against DDPM-CFG, exact laws
# ----------------------------------------------------------------------------------------------------------------
SPLIT_STEPS = (25, 50, 100, 200, 400)
QUICK_SPLIT_STEPS = (25, 50, 100, 200)
SPLIT_SCALES = (3.0,)


def gauss2d_pair() -> World:
    """A 2-D conditional/unconditional pair of single Gaussians with full, differently oriented covariances (label
    1 beside the null condition), built like ``gauss1d``: no joint law is implied."""
    uncond = GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, -0.3], [-0.3, 1.5]]], labels=[0])
    cond = GaussianMixture([1.0], [[1.0, -0.5]], [[[0.5, 0.2], [0.2, 0.3]]], labels=[1])
    return World("gauss2d_full", uncond, "p(x|c) = N((1, -0.5), [[0.5, 0.2], [0.2, 0.3]]), "
                 "p(x) = N(0, [[1, -0.3], [-0.3, 1.5]])", {1: cond})


def split_worlds() -> dict[str, World]:
    return {"gauss1d": get_world("gauss1d"), "gauss2d_full": gauss2d_pair()}


def moment_gap(mean_a: torch.Tensor, cov_a: torch.Tensor, mean_b: torch.Tensor, cov_b: torch.Tensor) -> float:
    r""":math:`\max(\lVert m_a - m_b \rVert_2, \lVert \Sigma_a - \Sigma_b \rVert_F)`: 0 iff the two Gaussian laws
    are equal."""
    return max(float(torch.linalg.vector_norm(mean_a - mean_b)), float(torch.linalg.matrix_norm(cov_a - cov_b)))


def langevin_law(mean: torch.Tensor, cov: torch.Tensor, cond: GaussianMixture, marg: GaussianMixture,
                  exponent: float, step: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The exact law after one Langevin step :math:`x + \varepsilon \nabla\log\pi(x) + \sqrt{2\varepsilon}\,z` on
    :math:`\pi = p_c^{a} p_\varnothing^{1-a}` (Gaussians: the score is affine, :math:`s(x) = s(m) + J(x - m)`, read
    from the scores at :math:`m` and :math:`m + e_j`), from :math:`x \sim \mathcal N(m, \Sigma)`:
    :math:`\mathcal N(m + \varepsilon s(m), (I + \varepsilon J)\Sigma(I + \varepsilon J)^\top + 2\varepsilon I)`."""
    d = mean.numel()
    eye = torch.eye(d, dtype=F64)
    points = torch.cat([mean[None], mean[None] + eye])
    score = exponent * cond.score(points) + (1.0 - exponent) * marg.score(points)
    jac = (score[1:] - score[0]).T  # column j: s(m + e_j) - s(m)
    step_map = eye + step * jac
    new_cov = step_map @ cov @ step_map.T + 2.0 * step * eye
    return mean + step * score[0], 0.5 * (new_cov + new_cov.T)


def split_scheme_law(world: World, guidance_scale: float, steps: int, mean: torch.Tensor, cov: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The exact law of ``steps`` uniform steps from t = 1 to 0 of the split scheme: per step :math:`t \to s`, one
    DDIM step (eta = 0) with the conditional denoiser, then one Langevin step of size :math:`\varepsilon =
    (t - s) g(s)^2 / 2` on :math:`p_s(x|c)^{2\gamma - 1} p_s(x)^{2 - 2\gamma}` (Bradley & Nakkiran 2024, section 4,
    with one corrector step per predictor step), from :math:`\mathcal N(m, \Sigma)`."""
    sched = get_schedule(SCHEDULE)
    den = AnalyticDenoiser(world, SCHEDULE)
    grid = time_grid(steps)
    exponent = corrector_exponent(guidance_scale)
    for i in range(steps):
        t, s = float(grid[i]), float(grid[i + 1])
        mean, cov = discrete_sampler_law("ddim", den, grid[i:i + 2], mean, cov, condition=1)
        alpha, sigma = (float(v) for v in sched.alpha_sigma(s))
        eps = 0.5 * (t - s) * float(sched.diffusion_squared(s))
        mean, cov = langevin_law(mean, cov, world.law(1).noised(alpha, sigma), world.law(None).noised(alpha, sigma),
                                  exponent, eps)
    return mean, cov


@dataclass(frozen=True)
class SplitRun:
    """One world at one guidance scale: per step count N (``steps``), the moment gaps between the split scheme,
    DDPM-CFG on the same grid and the continuous reverse SDE; the traces of the covariances; the observed orders
    (minus the slope of log gap against log N, least squares over the three largest N)."""

    world: str
    guidance_scale: float
    steps: tuple[int, ...]
    gap_split_ddpm: tuple[float, ...]
    gap_split_sde: tuple[float, ...]
    gap_ddpm_sde: tuple[float, ...]
    trace_split: tuple[float, ...]
    trace_ddpm: tuple[float, ...]
    trace_sde: float
    trace_start: float
    order_split_ddpm: float
    order_split_sde: float
    order_ddpm_sde: float

    def gap_at(self, steps: int) -> float:
        return self.gap_split_ddpm[self.steps.index(steps)]

    @property
    def pairwise_orders(self) -> tuple[float, ...]:
        """log2(gap(N) / gap(2N)) of the split-DDPM gap for each doubling of N (the grids double)."""
        g = self.gap_split_ddpm
        return tuple(math.log(a / b) / math.log(m / n) for a, b, n, m in
                     zip(g[:-1], g[1:], self.steps[:-1], self.steps[1:], strict=True))

    @property
    def decreasing(self) -> bool:
        return all(b < a for a, b in zip(self.gap_split_ddpm[:-1], self.gap_split_ddpm[1:], strict=True))


@dataclass(frozen=True)
class SplitScheme:
    runs: tuple[SplitRun, ...]
    schedule: str
    start: str

    def run(self, world: str) -> SplitRun:
        return next(r for r in self.runs if r.world == world)


def observed_order(steps: tuple[int, ...], gaps: tuple[float, ...], last: int = 3) -> float:
    """Minus the least-squares slope of log(gap) against log(N) over the ``last`` largest N."""
    n = np.log(np.asarray(steps[-last:], dtype=float))
    g = np.log(np.asarray(gaps[-last:], dtype=float))
    return float(-np.polyfit(n, g, 1)[0])


@provider
@one_thread()
def bn_split_scheme(config: RunConfig) -> SplitScheme:
    """The split scheme's exact law against DDPM-CFG's and the reverse SDE's as N grows (module docstring)."""
    steps = QUICK_SPLIT_STEPS if config.quick else SPLIT_STEPS
    sched = get_schedule(SCHEDULE)
    a1, s1 = (float(v) for v in sched.alpha_sigma(1.0))
    runs = []
    jobs = [(name, world, g) for name, world in split_worlds().items() for g in SPLIT_SCALES]
    for name, world, g in tqdm(jobs, desc="BN split scheme", disable=not config.show_progress, leave=False):
        cond, uncond = world.law(1), world.law(None)
        d = world.dim
        # start: the noised conditional at t = 1 (the same law for every scheme, so only the steps differ)
        m0 = a1 * cond.means[0].to(F64)
        c0 = a1**2 * cond.covariances[0].to(F64) + s1**2 * torch.eye(d, dtype=F64)
        rule = rules.get("cfg", guidance_scale=g)
        sde_mean, sde_cov = exact_gaussian_law(rule, {"cond": cond, "uncond": uncond}, "sde", SCHEDULE,
                                               start="marginal")
        guided = rule.guide(AnalyticDenoiser(world, SCHEDULE), 1)
        gaps: dict[str, list[float]] = {"split_ddpm": [], "split_sde": [], "ddpm_sde": []}
        traces: dict[str, list[float]] = {"split": [], "ddpm": []}
        for n in steps:
            sp_mean, sp_cov = split_scheme_law(world, g, n, m0, c0)
            dp_mean, dp_cov = discrete_sampler_law("ddpm", guided, time_grid(n), m0, c0)
            gaps["split_ddpm"].append(moment_gap(sp_mean, sp_cov, dp_mean, dp_cov))
            gaps["split_sde"].append(moment_gap(sp_mean, sp_cov, sde_mean, sde_cov))
            gaps["ddpm_sde"].append(moment_gap(dp_mean, dp_cov, sde_mean, sde_cov))
            traces["split"].append(float(torch.trace(sp_cov)))
            traces["ddpm"].append(float(torch.trace(dp_cov)))
        st = tuple(steps)
        runs.append(SplitRun(name, g, st, *(tuple(gaps[k]) for k in ("split_ddpm", "split_sde", "ddpm_sde")),
                             tuple(traces["split"]), tuple(traces["ddpm"]), float(torch.trace(sde_cov)),
                             float(torch.trace(c0)),
                             *(observed_order(st, tuple(gaps[k])) for k in ("split_ddpm", "split_sde", "ddpm_sde"))))
    return SplitScheme(tuple(runs), SCHEDULE, "marginal (the noised conditional at t = 1)")


# ----------------------------------------------------------------------------------------------------------------
# The closed forms of the Gaussian example against the exact ODE and SDE laws
# ----------------------------------------------------------------------------------------------------------------
#: the variance-exploding schedule matched to the paper's setting (sigma from infinity down to 0): the project's
#: ``ve`` with sigma in [1e-4, 1e4] instead of its default [0.01, 50], so the finite horizon moves the variances by
#: about 1e-7 relative (reported per point) instead of about 1e-3
PAPER_VE = VE(sigma_min=1e-4, sigma_max=1e4)
LAW_SCALES = (1.0, 2.0, 3.0, 5.0)
QUICK_LAW_SCALES = (3.0,)
LAW_RATIOS = (0.1, 0.5, 2.0)
QUICK_LAW_RATIOS = (0.5, 2.0)
CURVE_RATIO = 0.5
LAW_RTOL = 1e-12
#: exact_gaussian_law's documented global error: below about 1e3 rtol (DOP853, verify.exact_law)
LAW_TOLERANCE = 1e3 * LAW_RTOL
_DIGITS = 40  # mpmath precision of the closed forms: their own rounding (1e-40) is far below the tolerance


def closed_form_variances(guidance_scale: float, v_c: float, v_u: float, sigma_min: float | None = None,
                          sigma_max: float | None = None) -> tuple[float, float]:
    r"""``(DDIM-CFG, DDPM-CFG)`` variances of ``proofs/bn_gaussian_laws.py``, in 40-digit arithmetic: the paper's
    limit :math:`\sigma: \infty \to 0` when ``sigma_min``/``sigma_max`` are None, else the solution on
    :math:`[\sigma_{min}, \sigma_{max}]` from the prior :math:`\mathcal N(0, \sigma_{max}^2)`. ``guidance_scale``
    must not be 1/2 and ``v_c`` must differ from ``v_u`` (removable singularities of the DDPM form)."""
    if guidance_scale == 0.5:
        raise ValueError("guidance_scale: the DDPM closed form has a removable singularity at 1/2")
    if v_c == v_u:
        raise ValueError("v_c: the DDPM closed form has a removable singularity at v_c = v_u")
    with mpmath.workdps(_DIGITS):
        g, c, u = mpmath.mpf(guidance_scale), mpmath.mpf(v_c), mpmath.mpf(v_u)
        if sigma_min is None or sigma_max is None:
            rho = c / u
            return float(c**g * u**(1 - g)), float(u * (rho - rho**(2 * g)) / ((2 * g - 1) * (1 - rho)))
        s0, s1 = mpmath.mpf(sigma_min)**2, mpmath.mpf(sigma_max)**2
        start = s1

        def mu(z):
            return (c + z)**(2 * g) * (u + z)**(2 - 2 * g)

        def r(z):
            return (c + z) / (u + z)

        ddim = start * ((c + s0) / (c + s1))**g * ((u + s0) / (u + s1))**(1 - g)
        ddpm = mu(s0) * (start / mu(s1) + (r(s1)**(1 - 2 * g) - r(s0)**(1 - 2 * g)) / ((1 - 2 * g) * (u - c)))
        return float(ddim), float(ddpm)


@dataclass(frozen=True)
class GaussianLawPoint:
    """One (guidance scale, v_c / v_u) with v_u = 1: the exact ODE/SDE variances, the closed forms of the finite
    setting and of the paper's limit, the gamma-powered law's variance, and the relative errors."""

    guidance_scale: float
    variance_ratio: float
    ddim_exact: float
    ddpm_exact: float
    ddim_finite: float
    ddpm_finite: float
    ddim_paper: float
    ddpm_paper: float
    tilted: float
    rel_error_finite: float  # max over DDIM/DDPM of |exact - finite closed form| / finite closed form
    rel_error_paper: float  # max over DDIM/DDPM of |exact - paper| / paper
    horizon: float  # max over DDIM/DDPM of |finite closed form - paper| / paper: the finite horizon's share
    horizon_default_ve: float  # the same on the project's default ve (sigma in [0.01, 50])


@dataclass(frozen=True)
class GaussianLaws:
    points: tuple[GaussianLawPoint, ...]
    sigma_min: float
    sigma_max: float
    default_sigma_min: float
    default_sigma_max: float
    start: str
    rtol: float
    tolerance: float
    #: the closed forms against the guidance scale at v_c / v_u = curve_ratio, for the figure
    curve_ratio: float
    curve_scales: tuple[float, ...]
    curve_ddim: tuple[float, ...]
    curve_ddpm: tuple[float, ...]
    curve_tilted: tuple[float, ...]

    @property
    def max_error_over_tolerance(self) -> float:
        return max(p.rel_error_finite for p in self.points) / self.tolerance

    @property
    def paper_within(self) -> bool:
        """Every paper limit within the tolerance plus its finite-horizon share."""
        return all(p.rel_error_paper <= self.tolerance + p.horizon for p in self.points)


def _tilted(guidance_scale: float, v_c: float, v_u: float) -> float:
    precision = guidance_scale / v_c + (1.0 - guidance_scale) / v_u
    return 1.0 / precision if precision > 0 else math.inf


@provider
@one_thread()
def bn_gaussian_laws(config: RunConfig) -> GaussianLaws:
    """Closed forms against exact laws on the paper-matched VE schedule (module docstring)."""
    scales = QUICK_LAW_SCALES if config.quick else LAW_SCALES
    ratios = QUICK_LAW_RATIOS if config.quick else LAW_RATIOS
    default = get_schedule("ve")
    uncond = GaussianMixture([1.0], [[0.0]], [[[1.0]]])
    points = []
    jobs = [(g, r) for g in scales for r in ratios]
    for g, r in tqdm(jobs, desc="BN Gaussian laws", disable=not config.show_progress, leave=False):
        cond = GaussianMixture([1.0], [[0.0]], [[[r]]])
        rule = rules.get("cfg", guidance_scale=g)
        exact = [float(exact_gaussian_law(rule, {"cond": cond, "uncond": uncond}, kind, PAPER_VE, start="prior",
                                          rtol=LAW_RTOL)[1][0, 0]) for kind in ("ode", "sde")]
        finite = closed_form_variances(g, r, 1.0, PAPER_VE.sigma_min, PAPER_VE.sigma_max)
        paper = closed_form_variances(g, r, 1.0)
        on_default = closed_form_variances(g, r, 1.0, default.sigma_min, default.sigma_max)
        points.append(GaussianLawPoint(
            g, r, *exact, *finite, *paper, _tilted(g, r, 1.0),
            rel_error_finite=max(abs(e - f) / f for e, f in zip(exact, finite, strict=True)),
            rel_error_paper=max(abs(e - p) / p for e, p in zip(exact, paper, strict=True)),
            horizon=max(abs(f - p) / p for f, p in zip(finite, paper, strict=True)),
            horizon_default_ve=max(abs(f - p) / p for f, p in zip(on_default, paper, strict=True))))
    curve = tuple(float(v) for v in np.linspace(1.0, 6.0, 51))
    forms = [closed_form_variances(g, CURVE_RATIO, 1.0) for g in curve]
    return GaussianLaws(tuple(points), PAPER_VE.sigma_min, PAPER_VE.sigma_max, default.sigma_min, default.sigma_max,
                        f"prior N(0, sigma_max^2) = N(0, {PAPER_VE.sigma_max**2:g})", LAW_RTOL, LAW_TOLERANCE,
                        CURVE_RATIO, curve, tuple(f[0] for f in forms), tuple(f[1] for f in forms),
                        tuple(_tilted(g, CURVE_RATIO, 1.0) for g in curve))
