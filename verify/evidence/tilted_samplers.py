r"""Samplers of the tilted target :math:`\pi \propto p(x|c)^{1+w}p(x)^{-w}` against the target itself and against
CFG's own laws (read by L-TILTED-EXACT, L-FKC-EXACT, L-BN-LANGEVIN, S0-PROP2-SAMPLES and
``figures/tilted_samplers.png``).

Three providers:

* :func:`tilted_samplers`: per world (gauss1d and bimodal1d class 1, ring2d class 0) and w in {1, 3, 7} the first
  coordinate's mean and variance, with standard errors, of four samplers of :math:`\pi`:

  - ``exact``: DDPM (:func:`verify.samplers.ddpm`) driven by :class:`~verify.tilted_noised.TiltedDenoiser`, whose
    eps is that of the noised target :math:`\pi_t`, from :math:`\pi_1`'s moments, over log-SNR grids to
    ``T_END``; second-order Richardson extrapolation over three independent runs of L, 2L, 4L steps removes DDPM's
    O(h) and O(h^2) bias (:data:`LEVELS`), beside the deterministic reference of the same dynamics (the moment
    ODEs of the tilted score on gauss1d, its PF-ODE flow map on bimodal1d, :math:`\pi`'s quadrature on ring2d);
    the extrapolated moments and a Kolmogorov-Smirnov statistic of the extrapolated empirical CDF
    (:func:`richardson_ks`) are compared with :math:`\pi_{t_{end}}`, whose moments and CDF are exact;
  - ``fkc``: SMC along the guided SDE with Feynman-Kac corrector weights (:func:`verify.tilted_smc.smc_tilted`;
    Skreta et al. 2025), weighted moments with the sampler's own standard errors;
  - ``langevin``: CFG-DDPM with K unadjusted Langevin corrector steps per step (:func:`verify.tilted_langevin.
    cfg_langevin`; Song et al. 2021's predictor-corrector, read as Bradley & Nakkiran 2024 do), at the K that
    :func:`langevin_convergence` found sufficient (gauss1d: its exact law);
  - ``mcmc``: MALA at t = 0 (:func:`verify.tilted_mcmc.mcmc_tilted`), ESS-based standard errors;

  and CFG's own laws for the same cases (the PF-ODE and reverse-SDE laws of :mod:`verify.evidence.laws` in 1-D, its
  DDIM and DDPM samples on ring2d), the target's moments with their error bound, histograms for the figure.
* :func:`fkc_convergence`: on gauss1d, the SMC sampler's error against :math:`\pi` split into its time
  discretisation (exactly, by :func:`verify.tilted_smc.smc_limit_law`, the N -> infinity law at each step count)
  and its Monte Carlo part (independent replicates at growing N against that law), with the log-weight
  diagnostics.
* :func:`langevin_convergence`: the corrector steps K that bring CFG-DDPM within the Monte Carlo error of 1e5
  samples of :math:`\pi`, for w in {1, 3, 7}: exactly on gauss1d (:func:`verify.tilted_langevin.cfg_langevin_law`),
  by Monte Carlo on bimodal1d.

Cost, one thread on an idle core: about 50 s in all at the full settings (the exact sampler's 1e5 draws x 175 steps
on three worlds and w = 1, 3, 7 about half of it), 20 s quick.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats

from toy_models import AnalyticDenoiser, World, get_world
from toy_models.denoiser import Denoiser
from verify import rules
from verify.config import RunConfig
from verify.samplers import ddpm, time_grid
from verify.tilted import NotNormalisableError, TiltedLaw, TiltedSummary, tilted_law
from verify.tilted_langevin import cfg_langevin, cfg_langevin_law
from verify.tilted_mcmc import mcmc_tilted
from verify.tilted_noised import NoisedTilted, TiltedDenoiser, tilted_flow_law_1d, tilted_moment_law
from verify.tilted_smc import smc_limit_law, smc_tilted

from . import provider
from .laws import CFGLaws1D, RingSamples
from .shared import first_sampler_by_limit, one_thread

__all__ = ["WORLDS", "CONDITIONS", "WS", "SAMPLER_NAMES", "T_END", "LEVELS", "COEF", "SamplerMoments",
           "TargetMoments", "ExactCase", "TiltedSamplers", "FKCConvergence", "LangevinConvergence",
           "TabulatedEps", "exact_runs", "exact_case", "richardson_moments", "richardson_ks", "richardson_bias",
           "noised_cdf",
           "first_coordinate_density", "fit_slope", "tilted_samplers", "fkc_convergence", "langevin_convergence"]

F64 = torch.float64
SCHEDULE = "vp-linear"
#: worlds, the condition guided towards, and the strengths (strings: the keys of the evidence)
WORLDS = ("gauss1d", "bimodal1d", "ring2d")
CONDITIONS = {"gauss1d": 1, "bimodal1d": 1, "ring2d": 0}
WS = ("1", "3", "7")
SAMPLER_NAMES = ("exact", "fkc", "langevin", "mcmc")
#: the exact sampler's grids end here: a log-SNR grid needs sigma > 0 at its end (sigma^2 = 1.1e-4 on vp-linear);
#: the runs are compared with pi_{T_END}, whose moments (alpha m, alpha^2 S + sigma^2 I) and CDF are exact
T_END = 1e-3
#: Richardson extrapolation of a first-order sampler over L, 2L, 4L steps: (8 E_{h/4} - 6 E_{h/2} + E_h) / 3
#: cancels the h and h^2 terms of the bias (quick: L = 10, with fewer draws, so that the bias is as small a fraction
#: of the standard error: 0.18 at n = 2000). On gauss1d, where the law of DDPM with the tilted eps is
#: exact (verify.exact_law.discrete_sampler_law), the provider computes the remaining bias of the extrapolation in
#: units of its standard error (``ExactCase.richardson_bias``): 0.12 for the variance at L = 25, n = 1e5 (w = 1, 3, 7
#: alike), 0 for the mean; a bias b raises a two-sided z-test's false-alarm rate at |z| > 3.6 by the factor
#: (P(Z > 3.6 - b) + P(Z > 3.6 + b)) / (2 P(Z > 3.6)) = 1.09 at b = 0.12. The finest run alone is 20 single-run
#: standard errors off in the variance, so the extrapolation is needed.
LEVELS, QUICK_LEVELS = (25, 50, 100), (10, 20, 40)
COEF = (1.0 / 3.0, -2.0, 8.0 / 3.0)
#: draws per run of the exact sampler (quick: 2000); ring2d, whose tilted score is a 2-D quadrature per call (one
#: run of 1e5 draws x 100 steps takes about 6.5 s, the three runs of 25/50/100 steps at 1e5 for three w about 35 s),
#: 1e4 (quick: 1000)
EXACT_N, QUICK_EXACT_N = 100_000, 2_000
RING_EXACT_N, QUICK_RING_EXACT_N = 10_000, 1_000
#: fkc: particles and uniform steps to t = 0 for the table
FKC_N, FKC_STEPS, QUICK_FKC_N, QUICK_FKC_STEPS = 10_000, 100, 2_000, 25
#: mcmc: chains and steps (half burn-in) for the table
MCMC_CHAINS, MCMC_STEPS, QUICK_MCMC_CHAINS, QUICK_MCMC_STEPS = 100, 400, 40, 50
#: Langevin corrector: predictor steps (DDPM, log-SNR grid from t = 1 to T_END), step size h = KAPPA v_pi (KAPPA is h
#: times the largest curvature of log q_s on gauss1d, 1 / v_pi at s = 0: the unadjusted step then inflates the
#: variance by KAPPA / 2 relative, 1.1 standard errors of 1e5 draws), corrector steps tried
LANGEVIN_STEPS, KAPPA = 20, 0.01
LANGEVIN_KS = (0, 10, 20, 50, 100, 200)
#: the Monte Carlo error that "reaching pi" is measured against: n = 1e5 draws of pi, and |error| <= 1.96 of their
#: standard errors (sqrt(v / n) for the mean, v sqrt(2 / (n - 1)) for the variance): inside the 95 % band of such an
#: estimate, so a two-sided 5 % z-test on 1e5 draws detects the remaining error with probability at most 0.5
N_REFERENCE, Z_WITHIN = 100_000, 1.96
#: Monte Carlo draws of the corrected sampler on bimodal1d (quick: 1000), and ring2d's draws and corrector steps (its
#: CFG eps is a mixture evaluation per corrector step: 1e3 draws x 20 x 51 steps is about 2 s per w)
LANGEVIN_MC_N, QUICK_LANGEVIN_MC_N = 5_000, 1_000
RING_LANGEVIN_N, QUICK_RING_LANGEVIN_N, RING_LANGEVIN_K, QUICK_RING_LANGEVIN_K = 600, 200, 50, 5
#: fkc_convergence on gauss1d: step counts of the exact N -> infinity law, and the replicates (particles, count,
#: steps) of the Monte Carlo part
FKC_LIMIT_STEPS = (50, 100, 200)
FKC_PARTICLES, QUICK_FKC_PARTICLES = (256, 1024, 4096, 16384), (256, 1024, 4096)
FKC_REPLICATES, QUICK_FKC_REPLICATES, FKC_MC_STEPS = 6, 4, 25
#: histogram bins per world for the figure
N_BINS = 80
#: half-width of the quadrature window of pi's first coordinate, in pi's standard deviations; the edge check
#: requires the density there to be below e^-40 of its peak
SPAN = 12.0
#: nodes of that window: first coordinate (1-D, 2-D) and second coordinate (2-D); the CDF's noise width at T_END is
#: r = sigma / alpha = 0.0105, and the coarse half of each grid keeps its spacing below r (24 sd / 2000 <= 0.0084
#: for pi's first-coordinate sd <= 0.7 in 1-D; 24 x 0.2 / 600 = 0.008 on ring2d)
CDF_NODES = {1: 4001, 2: 1201}
OTHER_NODES = 401


def _rule(w: str) -> rules.Rule:
    return rules.get("cfg", w=float(w))


def _seed(config: RunConfig, *parts: int) -> int:
    """A seed for one (sampler, world, w) from the run's seed: distinct parts give distinct seeds."""
    out = config.seed
    for p in parts:
        out = out * 31 + p + 1
    return out % (2**62)


# ----------------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplerMoments:
    """One sampler's output on one case: the first coordinate's mean and variance with their standard errors and
    the number of draws ``n`` (``None`` for an exact law, whose standard errors are 0); ``method``: how it was
    obtained; ``evaluations``: guided-score (or tilted-score) evaluations per draw (a CFG evaluation reads both
    branches in one batched call); ``notes``: sampler diagnostics (ESS, acceptance, corrector steps, ...)."""

    mean: float
    var: float
    se_mean: float
    se_var: float
    n: int | None
    method: str = ""
    evaluations: float | None = None
    notes: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TargetMoments:
    r"""The tilted target's first coordinate: :math:`\pi`'s mean and variance (closed form or quadrature) with
    their error bound, and those of :math:`\pi_{T_{end}}` (exact from them: :math:`\alpha m`,
    :math:`\alpha^2 v + \sigma^2`)."""

    mean: float
    var: float
    error: float
    method: str
    mean_t_end: float
    var_t_end: float


@dataclass(frozen=True)
class ExactCase:
    r"""The exact sampler on one (world, w): Richardson-extrapolated moments of every coordinate with standard
    errors (``mean[i]``, ``var[i]``...), z-scores against :math:`\pi_{T_{end}}` (centred at its mean, so each is an
    average of i.i.d. terms), the Kolmogorov-Smirnov statistic of the extrapolated empirical CDF of the first
    coordinate against :math:`\pi_{T_{end}}`'s (``ks_statistic``, ``ks_pvalue``, ``cdf_error`` the bound on the
    reference CDF's error), :math:`\pi_{T_{end}}`'s moments per coordinate (``target_mean``, ``target_var``), the
    deterministic reference of the same dynamics (``reference``), the largest tabulation
    error of the tilted eps met (``table_error``, eps units), the finest run's histogram (``histogram`` on the
    world's ``edges``) and the draws per run ``n``. ``richardson_bias`` (Gaussian worlds, where the sampler's law at
    each level is exact): the extrapolated law's remaining error against :math:`\pi_{T_{end}}` in units of the
    case's standard errors (``mean``, ``var``) and its KS offset :math:`\sup|F_R - F|/s` in units of the KS null's
    scale (``ks``): what the test's null is off by."""

    world: str
    w: str
    n: int
    levels: tuple[int, ...]
    mean: tuple[float, ...]
    se_mean: tuple[float, ...]
    var: tuple[float, ...]
    se_var: tuple[float, ...]
    z: dict[str, float]
    ks_statistic: float
    ks_pvalue: float
    cdf_error: float
    reference: dict
    table_error: float
    histogram: np.ndarray
    evaluations: int
    seconds: float
    target_mean: tuple[float, ...] = ()
    target_var: tuple[float, ...] = ()
    richardson_bias: dict[str, float] | None = None


@dataclass(frozen=True)
class TiltedSamplers:
    """Everything :func:`tilted_samplers` computed: ``table[world][sampler][w]`` (:class:`SamplerMoments`),
    ``cfg[world][kind][w]`` (CFG's PF-ODE and reverse-SDE laws, ``kind`` ``ode``/``sde``), ``target[world][w]``,
    ``exact[world][w]`` (:class:`ExactCase`), and for the figure ``edges[world]``, ``histograms[world][sampler][w]``
    (densities per bin; also ``cfg_ode`` and ``cfg_sde`` on gauss1d, the bin averages of the exact laws, and on
    ring2d, of DDIM's and DDPM's samples), ``density_x[world]`` with ``density[world][w]`` (pi's first-coordinate
    density). ``settings``: the sampler settings by name."""

    table: dict[str, dict[str, dict[str, SamplerMoments]]]
    cfg: dict[str, dict[str, dict[str, SamplerMoments]]]
    target: dict[str, dict[str, TargetMoments]]
    exact: dict[str, dict[str, ExactCase]]
    edges: dict[str, np.ndarray]
    histograms: dict[str, dict[str, dict[str, np.ndarray]]]
    density_x: dict[str, np.ndarray]
    density: dict[str, dict[str, np.ndarray]]
    settings: dict[str, str]

    def as_json(self) -> dict:
        """``{world: {sampler: {w: {mean, var, se_mean, se_var, n, ...}}}}`` with ``cfg_ode``, ``cfg_sde`` and
        ``target`` beside the samplers."""
        out: dict = {}
        for world, by_sampler in self.table.items():
            out[world] = {s: {w: _moments_json(m) for w, m in by_w.items()} for s, by_w in by_sampler.items()}
            for kind, by_w in self.cfg[world].items():
                out[world][f"cfg_{kind}"] = {w: _moments_json(m) for w, m in by_w.items()}
            out[world]["target"] = {w: vars(t) for w, t in self.target[world].items()}
        return out


def _moments_json(m: SamplerMoments) -> dict:
    return {k: v for k, v in vars(m).items() if v not in ("", None) and not (isinstance(v, dict) and not v)}


# ----------------------------------------------------------------------------------------------------------------
# The target: moments, density and CDF of the first coordinate
# ----------------------------------------------------------------------------------------------------------------
def _trapezoid_weights(m: int, h: float) -> np.ndarray:
    w = np.full(m, h)
    w[[0, -1]] *= 0.5
    return w


def first_coordinate_density(law: TiltedLaw, n_axis: int = 4001, n_other: int = OTHER_NODES, *,
                             summary: TiltedSummary | None = None) -> tuple[np.ndarray, np.ndarray]:
    r"""``(y, p)``: :math:`\pi`'s first-coordinate density (its marginal in 2-D) on ``n_axis`` uniform nodes over
    :math:`m \pm` :data:`SPAN` standard deviations, normalised by the trapezoid rule; in 2-D the second coordinate
    is integrated by the trapezoid rule over ``n_other`` nodes in the same span. Refused (``RuntimeError``) where
    the density at the window's edge exceeds :math:`e^{-40}` of its peak (the window would truncate mass).
    ``summary``: ``law.summary()`` if already computed."""
    summary = summary or law.summary()
    mean, sd = summary.mean.numpy(), np.sqrt(np.diag(summary.cov.numpy()))
    axes = [np.linspace(mean[i] - SPAN * sd[i], mean[i] + SPAN * sd[i], n_axis if i == 0 else n_other)
            for i in range(law.dim)]
    if law.dim == 1:
        log_p = law.log_unnormalized(torch.as_tensor(axes[0])[:, None]).numpy()
        edge = max(log_p[0], log_p[-1])
    elif law.dim == 2:
        g1, g2 = np.meshgrid(axes[0], axes[1], indexing="ij")
        pts = torch.as_tensor(np.stack([g1.ravel(), g2.ravel()], 1))
        log_joint = law.log_unnormalized(pts).numpy().reshape(g1.shape)
        h2 = axes[1][1] - axes[1][0]
        edge = max(log_joint[[0, -1], :].max(), log_joint[:, [0, -1]].max())
        log_w = np.log(_trapezoid_weights(len(axes[1]), h2))
        peak_row = log_joint.max(1, keepdims=True)
        log_p = peak_row[:, 0] + np.log(np.exp(log_joint - peak_row) @ np.exp(log_w))
    else:
        raise ValueError(f"law: first_coordinate_density covers d <= 2, got d = {law.dim}")
    peak = float(np.max(log_p)) if law.dim == 1 else float(log_joint.max())
    if edge > peak - 40.0:
        raise RuntimeError(f"law: the density at the window's edge is e^{edge - peak:.1f} of its peak (> e^-40)")
    y = axes[0]
    p = np.exp(log_p - log_p.max())
    p /= float(_trapezoid_weights(len(y), y[1] - y[0]) @ p)
    return y, p


def noised_cdf(law: TiltedLaw, alpha: float, sigma: float, n_axis: int | None = None, *,
               summary: TiltedSummary | None = None, quadrature: bool = False
               ) -> tuple[Callable[[np.ndarray], np.ndarray], float]:
    r"""The CDF of the first coordinate of :math:`\alpha Y + \sigma Z`, :math:`Y \sim \pi`, and a bound on its error.

    Gaussian :math:`\pi`: the normal CDF of the exact moments (error 0). Otherwise :math:`X/\alpha = Y + rZ`,
    :math:`r = \sigma/\alpha`: :math:`\pi`'s first-coordinate density on a uniform grid
    (:func:`first_coordinate_density`) is convolved with the kernel :math:`\varphi(jh/r)h/r` (the trapezoid rule of
    a Gaussian at spacing h <= r is exact to :math:`2e^{-2\pi^2 r^2/h^2} < 10^{-8}`), integrated by the cumulative
    trapezoid rule and interpolated linearly. Error: the largest difference from the same construction on
    ``(n_axis + 1) // 2`` nodes (the trapezoid rule converges geometrically on these analytic, Gaussian-decaying
    integrands, so the coarse-fine difference bounds the fine error) plus the linear interpolation's
    :math:`h^2 \max|p'|/8`. ``summary``: ``law.summary()`` if already computed; ``quadrature``: use the quadrature
    on a Gaussian law too (to check one route against the other)."""
    if law.is_gaussian() and not quadrature:
        mean, cov, _ = law.gaussian()
        m, v = alpha * float(mean[0]), alpha**2 * float(cov[0, 0]) + sigma**2
        return (lambda x: stats.norm.cdf(np.asarray(x), m, math.sqrt(v))), 0.0

    def build(n: int) -> tuple[np.ndarray, np.ndarray, float]:
        y, p = first_coordinate_density(law, n, summary=summary)
        h = y[1] - y[0]
        r = sigma / alpha
        if r > 0.0:
            if h > r:
                raise RuntimeError(f"n_axis: spacing {h:.3g} exceeds the noise width {r:.3g}; use more nodes")
            half = int(math.ceil(12.0 * r / h))
            kernel = stats.norm.pdf(np.arange(-half, half + 1) * h / r) * h / r
            p = np.convolve(np.pad(p, half), kernel / kernel.sum(), mode="same")[half:-half] if half else p
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * h * (p[1:] + p[:-1]))])
        cdf /= cdf[-1]
        slope = float(np.abs(np.diff(p)).max() / h)
        return y * alpha, cdf, h * h * slope / 8.0

    n_axis = n_axis or CDF_NODES[law.dim]
    x_fine, f_fine, interp = build(n_axis)
    x_coarse, f_coarse, _ = build((n_axis + 1) // 2)
    error = float(np.abs(np.interp(x_coarse, x_fine, f_fine) - f_coarse).max()) + interp
    return (lambda x: np.interp(np.asarray(x), x_fine, f_fine, left=0.0, right=1.0)), error


def _target_moments(target: NoisedTilted) -> TargetMoments:
    summary = target.law.summary()
    return TargetMoments(float(summary.mean[0]), float(summary.cov[0, 0]), summary.moment_error, summary.method,
                         float(target.mean(T_END)[0]), float(target.cov(T_END)[0, 0]))


# ----------------------------------------------------------------------------------------------------------------
# The exact sampler: Richardson over three DDPM runs
# ----------------------------------------------------------------------------------------------------------------
def exact_runs(denoiser: Denoiser, target: NoisedTilted, *, n: int, levels: Sequence[int], seed: int
               ) -> list[torch.Tensor]:
    r"""One DDPM run per entry of ``levels`` (log-SNR grids from t = 1 to :data:`T_END`), each from its own ``n``
    draws of :math:`\mathcal N(\text{mean}(\pi_1), \text{Cov}(\pi_1))`, all from one generator seeded ``seed``.

    The start: :math:`\pi_1` is :math:`\pi` shrunk by :math:`\alpha_1 = 0.080` plus :math:`\mathcal N(0,
    \sigma_1^2 I)`, so its departure from the Gaussian of its moments is in cumulants of order 3 and above, scaled
    by :math:`\alpha_1^3 = 5e-4` against unit variance: a KL divergence below 1e-6 times :math:`\pi`'s squared
    skewness, and the reverse dynamics do not increase it (data processing), far below what 1e5 draws resolve
    (1/n = 1e-5). ``denoiser``: :class:`~verify.tilted_noised.TiltedDenoiser` for the exact sampler; any other
    denoiser (CFG's guided one) runs the same procedure, which is how a wrong sampler is shown to fail."""
    gen = torch.Generator().manual_seed(seed)
    mean, chol = target.mean(1.0), torch.linalg.cholesky(target.cov(1.0))
    out = []
    for steps in levels:
        x1 = mean + torch.randn(n, target.dim, dtype=F64, generator=gen) @ chol.T
        out.append(ddpm(denoiser, x1, time_grid(steps, 1.0, T_END, "log_snr", schedule=SCHEDULE), generator=gen))
    return out


def richardson_moments(runs: Sequence[torch.Tensor], coef: Sequence[float], coord: int,
                       centre: float | None = None) -> tuple[float, float, float, float]:
    r"""``(mean, se_mean, var, se_var)`` of coordinate ``coord``: :math:`\sum_k c_k \hat E_k` over independent runs.
    The variance is :math:`\sum_k c_k \overline{(x - \text{centre})^2}_k` with ``centre`` the hypothesised mean
    (each run's term an average of i.i.d. squares, so its standard error is the sample's own) or, with ``centre``
    ``None``, each run's own mean (then the sample variance). Standard errors: :math:`\sqrt{\sum_k c_k^2
    \widehat{\operatorname{Var}}_k/n_k}` (independent runs)."""
    xs = [r[:, coord] for r in runs]
    means = [float(x.mean()) for x in xs]
    squares = [(x - (m if centre is None else centre)) ** 2 for x, m in zip(xs, means, strict=True)]
    mean = sum(c * m for c, m in zip(coef, means, strict=True))
    var = sum(c * float(q.mean()) for c, q in zip(coef, squares, strict=True))
    se_mean = math.sqrt(sum(c * c * float(x.var()) / len(x) for c, x in zip(coef, xs, strict=True)))
    se_var = math.sqrt(sum(c * c * float(q.var()) / len(q) for c, q in zip(coef, squares, strict=True)))
    return mean, se_mean, var, se_var


def richardson_ks(samples: Sequence[np.ndarray], coef: Sequence[float], cdf: Callable[[np.ndarray], np.ndarray]
                  ) -> tuple[float, float]:
    r"""``(D, p)``: Kolmogorov-Smirnov test of the extrapolated empirical CDF :math:`F_R = \sum_k c_k F_{n_k}`
    against ``cdf``.

    :math:`D = \sup_x |F_R(x) - F(x)|`, attained at a pooled sample point (either limit): :math:`F_R` is constant
    between pooled points and F monotone. Null law: the runs are independent, so
    :math:`F_R - F = \sum_k c_k (F_{n_k} - F) \to \sum_k c_k B_k(F(x))/\sqrt{n_k}` with independent Brownian bridges
    :math:`B_k`, which is :math:`s\,B(F(x))` in law, :math:`s^2 = \sum_k c_k^2/n_k`; so :math:`D/s` has Kolmogorov's
    limit law (``scipy.stats.kstwobign``) and ``p`` is its survival function (asymptotic; for one run, the usual
    large-n KS p-value). False-alarm rate: alpha up to the O(n^-1/2) error of that limit, where each run's law is
    the CDF's up to the bias Richardson removes. Power: at least the binomial test's of :math:`F_R` at any one
    point."""
    pooled = np.sort(np.concatenate([np.asarray(s) for s in samples]))
    f = cdf(pooled)
    right = np.zeros_like(pooled)
    left = np.zeros_like(pooled)
    for c, s in zip(coef, samples, strict=True):
        s = np.sort(np.asarray(s))
        right += c * np.searchsorted(s, pooled, side="right") / len(s)
        left += c * np.searchsorted(s, pooled, side="left") / len(s)
    d = float(max(np.abs(right - f).max(), np.abs(left - f).max()))
    scale = math.sqrt(sum(c * c / len(s) for c, s in zip(coef, samples, strict=True)))
    return d, float(stats.kstwobign.sf(d / scale))


def _deterministic_reference(world: World, w: str, target: NoisedTilted, quick: bool) -> dict:
    """The same dynamics without sampling: the moment ODEs of the tilted score (Gaussian worlds), the PF-ODE flow
    map of its quadrature score (1-D; not in quick runs, where it would take most of the provider's time), or pi's
    own quadrature (2-D, no flow map; and quick 1-D)."""
    if target.law.is_gaussian():
        mean, cov = tilted_moment_law(target, 1.0, rtol=1e-12)
        # DOP853's global error stays below about 1e3 rtol relative (verify.exact_law): 1e-9 on O(1) moments
        return {"method": "moment ODEs of the reverse SDE with the tilted score (DOP853, rtol 1e-12)",
                "mean": float(mean[0]), "var": float(cov[0, 0]), "error": 1e-9}
    if target.dim == 1 and not quick:
        mean, var, err = tilted_flow_law_1d(target, n_nodes=201, rtol=1e-8)
        return {"method": "PF-ODE flow map of the tilted quadrature score (DOP853 rtol 1e-8; error: half the "
                          "nodes at 100x the tolerance)", "mean": mean, "var": var,
                "error": max(err["mean"], err["var"])}
    return {"method": "pi's own moments (quadrature, error by halving the grid); no flow map" + (
                " (quick run)" if target.dim == 1 else " in 2-D"),
            "mean": float(target.data_mean[0]), "var": float(target.data_cov[0, 0]),
            "error": float(target.law.summary().moment_error)}


def richardson_bias(denoiser: Denoiser, target: NoisedTilted, levels: Sequence[int], coef: Sequence[float],
                    n: int) -> dict[str, float]:
    r"""The extrapolation's remaining bias on a Gaussian target, exactly: each level's output law by
    :func:`verify.exact_law.discrete_sampler_law` (the tilted eps is affine), combined with ``coef``; returned in
    standard errors of ``n`` draws per run (``mean``, ``var``: Gaussian moments' standard errors times
    :math:`\sqrt{\sum c_k^2}`) and the KS offset in units of the null's scale (``ks``)."""
    from verify.exact_law import discrete_sampler_law

    laws = [discrete_sampler_law("ddpm", denoiser, time_grid(k, 1.0, T_END, "log_snr", schedule=SCHEDULE),
                                 target.mean(1.0), target.cov(1.0)) for k in levels]
    m_t, v_t = float(target.mean(T_END)[0]), float(target.cov(T_END)[0, 0])
    mean = sum(c * float(m[0]) for c, (m, _) in zip(coef, laws, strict=True))
    var = sum(c * float(v[0, 0]) for c, (_, v) in zip(coef, laws, strict=True))
    factor = math.sqrt(sum(c * c for c in coef))
    x = np.linspace(m_t - 8 * math.sqrt(v_t), m_t + 8 * math.sqrt(v_t), 4001)
    f_r = sum(c * stats.norm.cdf(x, float(m[0]), math.sqrt(float(v[0, 0]))) for c, (m, v) in zip(coef, laws,
                                                                                                  strict=True))
    sup = float(np.abs(f_r - stats.norm.cdf(x, m_t, math.sqrt(v_t))).max())
    return {"mean": (mean - m_t) / (factor * math.sqrt(v_t / n)),
            "var": (var - v_t) / (factor * v_t * math.sqrt(2.0 / n)),
            "ks": sup / (factor / math.sqrt(n))}


def exact_case(world: World, w: str, denoiser: Denoiser, *, n: int, levels: Sequence[int], coef: Sequence[float],
               seed: int, edges: np.ndarray, cdf: tuple[Callable, float] | None = None,
               reference: dict | None = None, target: NoisedTilted | None = None) -> ExactCase:
    r"""Run :func:`exact_runs` with ``denoiser`` and compare the extrapolated moments and empirical CDF with
    :math:`\pi_{T_{end}}` of ``world`` at strength ``w`` (z-scores of each coordinate's mean and variance, centred
    at the target's; :func:`richardson_ks` of the first coordinate). ``cdf``: a precomputed :func:`noised_cdf`
    (computed when ``None``); ``reference``: the deterministic reference to record; ``target``: pi's noised law if
    already built."""
    if target is None:
        target = NoisedTilted(tilted_law(world, _rule(w), CONDITIONS[world.name]), SCHEDULE)
    start = time.perf_counter()
    runs = exact_runs(denoiser, target, n=n, levels=levels, seed=seed)
    seconds = time.perf_counter() - start
    mean_t, cov_t = target.mean(T_END), target.cov(T_END)
    means, se_means, variances, se_vars, z = [], [], [], [], {}
    for i in range(target.dim):
        m, sm, v, sv = richardson_moments(runs, coef, i)
        means.append(m), se_means.append(sm), variances.append(v), se_vars.append(sv)
        mc, smc, vc, svc = richardson_moments(runs, coef, i, centre=float(mean_t[i]))
        z[f"mean[{i}]"] = (mc - float(mean_t[i])) / smc
        z[f"var[{i}]"] = (vc - float(cov_t[i, i])) / svc
    cdf_fn, cdf_err = cdf if cdf is not None else noised_cdf(target.law, *target.alpha_sigma(T_END))
    d, p = richardson_ks([r[:, 0].numpy() for r in runs], coef, cdf_fn)
    finest = runs[-1][:, 0].numpy()
    hist = np.histogram(finest, bins=edges)[0] / (len(finest) * np.diff(edges))
    bias = None
    if target.law.is_gaussian() and isinstance(denoiser, TiltedDenoiser):
        bias = richardson_bias(denoiser, target, levels, coef, n)
    return ExactCase(world.name, w, n, tuple(levels), tuple(means), tuple(se_means), tuple(variances),
                     tuple(se_vars), z, d, p, cdf_err, reference or {},
                     float(getattr(denoiser, "largest_error", 0.0)), hist, int(sum(levels)), seconds,
                     tuple(mean_t.tolist()), tuple(cov_t.diagonal().tolist()), bias)


# ----------------------------------------------------------------------------------------------------------------
# A fast 1-D eps for the Langevin Monte Carlo on bimodal1d
# ----------------------------------------------------------------------------------------------------------------
class TabulatedEps:
    r"""A 1-D denoiser whose eps is ``denoiser``'s interpolated by a cubic spline (scipy's ``CubicSpline``,
    not-a-knot) through ``nodes`` uniform nodes, doubled until the error estimate is below ``max_error``. One table
    per time: built at the first call at that time over the call's points widened by a tenth of their range on each
    side, and rebuilt wider when a later call's points leave it (a corrector's K calls at one level then share one
    table). Each build measures the error against the exact
    eps at the ``nodes - 1`` midpoints (an estimate of the spline's maximum error for a smooth function; the largest
    so far is :attr:`largest_error`, eps units) and refuses a table whose error exceeds ``max_error``.

    The default 1e-6: a Langevin step reads the score :math:`-\varepsilon/\sigma_s`, so an eps error e is a drift
    error :math:`e/\sigma_s`, which shifts the corrector's invariant law by about :math:`v\,e/\sigma_s` (v its
    variance, <= 0.5 on bimodal1d); at the last level :math:`\sigma = 0.0105` that is at most 48 e = 4.8e-5, 0.005
    standard errors of the mean of 5000 draws (0.02 of 1e5 draws). Earlier levels have larger sigma and smaller
    effect."""

    def __init__(self, denoiser: Denoiser, nodes: int = 512, max_error: float = 1e-6):
        if getattr(denoiser, "dim", None) != 1:
            raise ValueError("denoiser: TabulatedEps covers d = 1")
        self.denoiser, self.dim, self.schedule = denoiser, 1, denoiser.schedule
        self.nodes, self.max_error, self.largest_error = nodes, max_error, 0.0
        self._tables: dict[float, tuple[float, float, torch.Tensor]] = {}

    def _build(self, t: float, lo: float, hi: float, condition) -> tuple[float, float, torch.Tensor]:
        from scipy.interpolate import CubicSpline

        m = self.nodes
        while True:
            nodes = torch.linspace(lo, hi, m, dtype=F64)
            mids = 0.5 * (nodes[1:] + nodes[:-1])
            values = self.denoiser.eps(torch.cat([nodes, mids])[:, None], t, condition)[:, 0].to(F64).numpy()
            spline = CubicSpline(nodes.numpy(), values[:m])
            err = float(np.abs(spline(mids.numpy()) - values[m:]).max())
            if err <= self.max_error or m >= 64 * self.nodes:
                break
            m *= 2  # halving the spacing divides a cubic spline's error by about 16
        self.largest_error = max(self.largest_error, err)
        if err > self.max_error:
            raise ValueError(f"max_error: the spline's estimated error {err:.3g} exceeds {self.max_error:.3g} at "
                             f"t = {t:.6g} with {m} nodes")
        return lo, hi, torch.as_tensor(spline.c, dtype=F64)  # [4, m - 1], highest power first

    def eps(self, x: torch.Tensor, t, condition=None) -> torch.Tensor:
        t = float(torch.as_tensor(t, dtype=F64).reshape(-1)[0])
        x64 = x[:, 0].to(F64)
        x_lo, x_hi = float(x64.min()), float(x64.max())
        table = self._tables.get(t)
        if table is None or x_lo < table[0] or x_hi > table[1]:
            lo, hi = (x_lo, x_hi) if table is None else (min(x_lo, table[0]), max(x_hi, table[1]))
            pad = 0.1 * max(hi - lo, 1e-3)
            table = self._tables[t] = self._build(t, lo - pad, hi + pad, condition)
        lo, hi, coef = table
        cells = coef.shape[1]
        step = (hi - lo) / cells
        cell = ((x64 - lo) / step).floor().clamp(0, cells - 1).long()
        dx = x64 - (lo + cell.to(F64) * step)
        c = coef[:, cell]
        return (((c[0] * dx + c[1]) * dx + c[2]) * dx + c[3]).to(x.dtype)[:, None]


# ----------------------------------------------------------------------------------------------------------------
# langevin_convergence
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LangevinConvergence:
    r"""CFG-DDPM with K Langevin corrector steps per predictor step against :math:`\pi`.

    ``gauss1d[w][K]``: the exact law's ``mean``, ``var``, errors against :math:`\pi` and their z-scores in the
    standard errors of :data:`N_REFERENCE` draws of :math:`\pi` (``z_mean``, ``z_var``), and the guided-score
    ``evaluations`` per draw, :math:`P(1 + K)`. ``k_needed[w]``: the smallest K of :data:`LANGEVIN_KS` from which
    on both |z| stay within :data:`Z_WITHIN` (``None`` if none). ``bimodal1d[w][K]``: Monte Carlo moments
    (:class:`SamplerMoments`, ``notes`` with the z-scores against :math:`\pi` in the sample's own standard errors
    and the error in :data:`N_REFERENCE`-draw units) at K = 0 and K = ``k_needed[w]``; ``bimodal1d_samples`` the
    draws (for the figure)."""

    predictor_steps: int
    kappa: float
    t_end: float
    n_reference: int
    z_within: float
    step_rule: str
    ks: tuple[int, ...]
    gauss1d: dict[str, dict[str, dict[str, float]]]
    k_needed: dict[str, int | None]
    bimodal1d: dict[str, dict[str, SamplerMoments]]
    bimodal1d_samples: dict[str, dict[str, torch.Tensor]]
    mc_n: int
    table_error: float


def _langevin_grid() -> torch.Tensor:
    return time_grid(LANGEVIN_STEPS, 1.0, T_END, "log_snr", schedule=SCHEDULE)


def _reference_z(error_mean: float, error_var: float, v: float, n: int = N_REFERENCE) -> tuple[float, float]:
    return error_mean / math.sqrt(v / n), error_var / (v * math.sqrt(2.0 / (n - 1)))


def _mc_moments(x: torch.Tensor, method: str, evaluations: float, notes: dict) -> SamplerMoments:
    """Sample moments of the first coordinate with their standard errors (the variance's from the fourth central
    moment: Var(s^2) ~ (mu_4 - s^4) / n)."""
    x = x[:, 0]
    n = x.numel()
    mean, var = float(x.mean()), float(x.var())
    mu4 = float(((x - mean) ** 4).mean())
    return SamplerMoments(mean, var, math.sqrt(var / n), math.sqrt(max(mu4 - var * var, 0.0) / n), n, method,
                          evaluations, notes)


def _within(row: dict[str, float]) -> bool:
    return abs(row["z_mean"]) <= Z_WITHIN and abs(row["z_var"]) <= Z_WITHIN


def _k_needed(rows: dict[str, dict[str, float]], law_at: Callable[[int], dict[str, float]]) -> int | None:
    """The smallest K from which on the exact law stays within :data:`Z_WITHIN`: the smallest grid K from which
    every larger grid K is within, refined by bisection against the last grid K that is not (``law_at(K)`` gives
    the row of K, added to ``rows``). Bisection assumes the distance falls monotonically in K between two grid
    points, as it does on the grid (the mean's error contracts by the corrector, the variance's rises to its
    floor)."""
    ks = sorted(int(k) for k in rows)
    ok = [_within(rows[str(k)]) for k in ks]
    first = next((i for i in range(len(ks)) if all(ok[i:])), None)
    if first is None:
        return None
    if first == 0:
        return ks[0]
    lo, hi = ks[first - 1], ks[first]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        rows[str(mid)] = law_at(mid)
        lo, hi = (lo, mid) if _within(rows[str(mid)]) else (mid, hi)
    return hi


@provider
@one_thread()
def langevin_convergence(config: RunConfig) -> LangevinConvergence:
    r"""The corrector steps K that CFG-DDPM needs to reach :math:`\pi` within the Monte Carlo error of 1e5 draws
    (see :class:`LangevinConvergence`): :data:`LANGEVIN_STEPS` DDPM steps on a log-SNR grid from t = 1 (start
    N(0, 1)) to :data:`T_END`, K unadjusted Langevin steps of size :math:`h = \kappa v_\pi` after each (the rule of
    :func:`verify.tilted_langevin.corrector_table`, :data:`KAPPA`). gauss1d: exact law for every K of
    :data:`LANGEVIN_KS`, refined by bisection; bimodal1d: :data:`LANGEVIN_MC_N` draws (quick: 1000) at K = 0 and at
    gauss1d's K, the guided eps tabulated by :class:`TabulatedEps`."""
    grid = _langevin_grid()
    gauss, bimodal = get_world("gauss1d"), get_world("bimodal1d")
    rows: dict[str, dict[str, dict[str, float]]] = {}
    needed: dict[str, int | None] = {}
    for w in WS:
        rule = _rule(w)
        summary = tilted_law(gauss, rule, 1).summary()
        pm, pv = float(summary.mean[0]), float(summary.cov[0, 0])
        guided = rule.guide(AnalyticDenoiser(gauss, SCHEDULE), 1)

        def law_at(k: int, guided=guided, pm=pm, pv=pv) -> dict[str, float]:
            mean, cov = cfg_langevin_law(guided, grid, corrector_steps=k, step_size=KAPPA * pv)
            dm, dv = float(mean[0]) - pm, float(cov[0, 0]) - pv
            zm, zv = _reference_z(dm, dv, pv)
            return {"mean": float(mean[0]), "var": float(cov[0, 0]), "mean_error": dm, "var_error": dv,
                    "z_mean": zm, "z_var": zv, "evaluations": LANGEVIN_STEPS * (1 + k)}

        rows[w] = {str(k): law_at(k) for k in LANGEVIN_KS}
        needed[w] = _k_needed(rows[w], law_at)
        rows[w] = dict(sorted(rows[w].items(), key=lambda item: int(item[0])))
    n = QUICK_LANGEVIN_MC_N if config.quick else LANGEVIN_MC_N
    mc: dict[str, dict[str, SamplerMoments]] = {}
    draws: dict[str, dict[str, torch.Tensor]] = {}
    table_error = 0.0
    for j, w in enumerate(WS):
        rule = _rule(w)
        summary = tilted_law(bimodal, rule, 1).summary()
        pm, pv = float(summary.mean[0]), float(summary.cov[0, 0])
        fast = TabulatedEps(rule.guide(AnalyticDenoiser(bimodal, SCHEDULE), 1))
        mc[w], draws[w] = {}, {}
        k_run = needed[w] if needed[w] is not None else max(LANGEVIN_KS)
        for k in (0, k_run):
            gen = torch.Generator().manual_seed(_seed(config, 3, j, k))
            x0 = torch.randn(n, 1, dtype=F64, generator=gen)
            x = cfg_langevin(fast, x0, grid, corrector_steps=k, step_size=KAPPA * pv, generator=gen)
            draws[w][str(k)] = x
            row = _mc_moments(x, f"CFG-DDPM {LANGEVIN_STEPS} steps + {k} Langevin steps per step, {n} draws",
                              LANGEVIN_STEPS * (1 + k), {})
            ref_m, ref_v = _reference_z(row.mean - pm, row.var - pv, pv)
            mc[w][str(k)] = SamplerMoments(
                row.mean, row.var, row.se_mean, row.se_var, n, row.method, row.evaluations,
                {"corrector_steps": k, "z_mean": (row.mean - pm) / row.se_mean, "z_var": (row.var - pv) / row.se_var,
                 "error_in_reference_se_mean": ref_m, "error_in_reference_se_var": ref_v,
                 "resolution_in_reference_se": math.sqrt(N_REFERENCE / n)})
        table_error = max(table_error, fast.largest_error)
    return LangevinConvergence(
        LANGEVIN_STEPS, KAPPA, T_END, N_REFERENCE, Z_WITHIN,
        f"h = {KAPPA:g} v_pi at every level (v_pi: pi's variance, 1 / the largest curvature of log q_s on gauss1d)",
        LANGEVIN_KS, rows, needed, mc, draws, n, table_error)


# ----------------------------------------------------------------------------------------------------------------
# fkc_convergence
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FKCConvergence:
    r"""SMC with Feynman-Kac corrector weights on gauss1d (class 1) against :math:`\pi`, w in :data:`WS`.

    Time discretisation (exact, no sampling): ``limit[w][steps]`` the N -> infinity law's ``mean`` and ``var`` and
    their errors against :math:`\pi` (``bias_mean``, ``bias_var``), for each of ``steps``; ``order[w][moment]``
    the least-squares slope of :math:`-\log|\text{bias}|` against :math:`\log(\text{steps})` (``fit``) and the
    pairwise observed orders (``pairwise``).

    Monte Carlo: ``replicates`` independent runs at each N of ``particles``, ``mc_steps`` steps, against the
    N -> infinity law at ``mc_steps`` (which isolates the Monte Carlo error): ``errors[w][N]`` with ``rmse_mean``
    and its 95 % interval ``rmse_mean_ci`` (chi-square with ``replicates`` degrees of freedom, for zero-mean normal
    errors), ``bias_mean`` (mean error) with ``bias_mean_se``, the same for the variance, and ``rmse_mean_vs_pi``
    (time discretisation included); ``rate[w][moment]``: the least-squares slope of log RMSE against log N with its
    95 % interval (each log RMSE has standard error :math:`1/\sqrt{2R}` by the delta method); ``weights[w][N]``: the
    least ESS / N over the run and over replicates, the final ESS / N, the largest log-weight variance, resampling
    events and the fewest distinct time-1 ancestors; ``evaluations[N]``: guided-score evaluations of one run,
    :math:`N \times` ``mc_steps``; ``second_moment[w]``: what :func:`verify.tilted_smc.smc_limit_law` with
    ``power=2`` finds for the unresampled weights at ``mc_steps`` (their second moment relative to the squared
    first, the limit of N / ESS, or the time from which it is infinite: heavy tails)."""

    ws: tuple[str, ...]
    steps: tuple[int, ...]
    limit: dict[str, dict[str, dict[str, float]]]
    order: dict[str, dict[str, dict]]
    mc_steps: int
    particles: tuple[int, ...]
    replicates: int
    errors: dict[str, dict[str, dict]]
    rate: dict[str, dict[str, dict]]
    weights: dict[str, dict[str, dict]]
    evaluations: dict[str, int]
    second_moment: dict[str, str]


def fit_slope(x: Sequence[float], y: Sequence[float], se_y: float | None = None) -> dict:
    """Least-squares slope of ``y`` on ``x``, with its 95 % interval when every ``y`` has standard error ``se_y``
    (normal approximation: slope +- 1.96 se_y / sqrt(S_xx))."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    sxx = float(((x - x.mean()) ** 2).sum())
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / sxx)
    out = {"slope": slope}
    if se_y is not None:
        half = 1.96 * se_y / math.sqrt(sxx)
        out.update(se=se_y / math.sqrt(sxx), ci=(slope - half, slope + half))
    return out


@provider
@one_thread()
def fkc_convergence(config: RunConfig) -> FKCConvergence:
    """See :class:`FKCConvergence`: limit laws at 50, 100, 200 steps; replicates 6 (quick: 4) at N = 256, 1024,
    4096, 16384 (quick: up to 4096) with 25 steps."""
    world = get_world("gauss1d")
    steps = FKC_LIMIT_STEPS
    particles = QUICK_FKC_PARTICLES if config.quick else FKC_PARTICLES
    reps = QUICK_FKC_REPLICATES if config.quick else FKC_REPLICATES
    limit, order, errors, rate, weights, second = {}, {}, {}, {}, {}, {}
    lo_q, hi_q = stats.chi2.ppf(0.975, reps), stats.chi2.ppf(0.025, reps)
    for j, w in enumerate(WS):
        rule = _rule(w)
        mean_pi, cov_pi, _ = tilted_law(world, rule, 1).gaussian()
        pm, pv = float(mean_pi[0]), float(cov_pi[0, 0])
        limit[w] = {}
        for k in steps:
            _, m, c = smc_limit_law(world, rule, 1, n_steps=k)[-1]
            limit[w][str(k)] = {"mean": float(m[0]), "var": float(c[0, 0]), "bias_mean": float(m[0]) - pm,
                                "bias_var": float(c[0, 0]) - pv}
        order[w] = {}
        for moment in ("mean", "var"):
            b = [abs(limit[w][str(k)][f"bias_{moment}"]) for k in steps]
            pairwise = [math.log(b[i] / b[i + 1]) / math.log(steps[i + 1] / steps[i]) for i in range(len(b) - 1)]
            order[w][moment] = {"fit": -fit_slope(np.log(steps), np.log(b))["slope"], "pairwise": pairwise}
        first_law = smc_limit_law(world, rule, 1, n_steps=FKC_MC_STEPS)
        try:
            second_law = smc_limit_law(world, rule, 1, n_steps=FKC_MC_STEPS, power=2)
            ratio = math.exp(second_law[-1][0] - 2 * first_law[-1][0])
            second[w] = f"finite: E[W^2] / E[W]^2 = {ratio:.4g} at t = 0 (N / ESS tends to it)"
        except NotNormalisableError as err:
            second[w] = f"infinite: {str(err).split(': ', 1)[-1]}"
        _, lm, lc = first_law[-1]
        lm, lv = float(lm[0]), float(lc[0, 0])
        errors[w], weights[w] = {}, {}
        log_rmse = {"mean": [], "var": []}
        for i, n in enumerate(particles):
            em, ev, epi, ess_min, ess_final, lwv, resamples, ancestors = [], [], [], [], [], [], [], []
            for r in range(reps):
                res = smc_tilted(world, rule, 1, n_particles=n, n_steps=FKC_MC_STEPS, seed=_seed(config, 5, j, i, r))
                em.append(float(res.final.mean[0]) - lm)
                ev.append(float(res.final.var[0]) - lv)
                epi.append(float(res.final.mean[0]) - pm)
                ess_min.append(float(res.ess.min()) / n)
                ess_final.append(float(res.ess[-1]) / n)
                lwv.append(float(res.log_weight_var.max()))
                resamples.append(res.n_resamples)
                ancestors.append(res.final.n_ancestors)
            em, ev, epi = np.array(em), np.array(ev), np.array(epi)
            row = {}
            for key, e in (("mean", em), ("var", ev)):
                rmse = float(np.sqrt((e**2).mean()))
                row[f"rmse_{key}"] = rmse
                row[f"rmse_{key}_ci"] = (rmse * math.sqrt(reps / lo_q), rmse * math.sqrt(reps / hi_q))
                row[f"bias_{key}"] = float(e.mean())
                row[f"bias_{key}_se"] = float(e.std(ddof=1) / math.sqrt(reps))
                log_rmse[key].append(math.log(rmse))
            row["rmse_mean_vs_pi"] = float(np.sqrt((epi**2).mean()))
            errors[w][str(n)] = row
            weights[w][str(n)] = {"least_ess_fraction": min(ess_min), "final_ess_fraction": min(ess_final),
                                  "largest_log_weight_var": max(lwv), "resamples": max(resamples),
                                  "fewest_ancestors": min(ancestors)}
        rate[w] = {key: fit_slope(np.log(particles), log_rmse[key], 1.0 / math.sqrt(2 * reps))
                   for key in ("mean", "var")}
    return FKCConvergence(WS, tuple(steps), limit, order, FKC_MC_STEPS, tuple(particles), reps, errors, rate,
                          weights, {str(n): n * FKC_MC_STEPS for n in particles}, second)


# ----------------------------------------------------------------------------------------------------------------
# tilted_samplers
# ----------------------------------------------------------------------------------------------------------------
def _edges(world: str, targets: dict[str, TargetMoments], cfg: dict[str, dict[str, SamplerMoments]]) -> np.ndarray:
    lo = min(min(t.mean - 4.5 * math.sqrt(t.var) for t in targets.values()),
             min(m.mean - 4.5 * math.sqrt(m.var) for by_w in cfg.values() for m in by_w.values()))
    hi = max(max(t.mean + 4.5 * math.sqrt(t.var) for t in targets.values()),
             max(m.mean + 4.5 * math.sqrt(m.var) for by_w in cfg.values() for m in by_w.values()))
    return np.linspace(lo, hi, N_BINS + 1)


def _histogram(x: np.ndarray, edges: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    counts = np.histogram(x, bins=edges, weights=weights)[0]
    total = float(weights.sum()) if weights is not None else len(x)
    return counts / (total * np.diff(edges))


def _gaussian_histogram(mean: float, var: float, edges: np.ndarray) -> np.ndarray:
    """The bin-averaged density of N(mean, var) (an exact law drawn like the histograms)."""
    return np.diff(stats.norm.cdf(edges, mean, math.sqrt(var))) / np.diff(edges)


def _cfg_laws(gauss1d_laws: CFGLaws1D, bimodal1d_laws: CFGLaws1D, ring: RingSamples
              ) -> dict[str, dict[str, dict[str, SamplerMoments]]]:
    out: dict = {}
    for laws in (gauss1d_laws, bimodal1d_laws):
        out[laws.world] = {}
        for kind in ("ode", "sde"):
            out[laws.world][kind] = {}
            for w in WS:
                m = laws.law(kind, w)
                err = max((m.error or {}).values(), default=0.0)
                out[laws.world][kind][w] = SamplerMoments(m.mean, m.var, 0.0, 0.0, None, m.method,
                                                          notes={"error": err})
    out["ring2d"] = {}
    by_limit = first_sampler_by_limit()
    for kind in ("ode", "sde"):
        name = by_limit[kind]
        out["ring2d"][kind] = {
            w: _mc_moments(ring.samples[name][w], f"{name} {ring.steps} uniform steps from the noised conditional, "
                                                  f"{ring.n} draws", ring.steps,
                           {"sampler": name, **_second_coordinate(ring.samples[name][w])})
            for w in WS}
    return out


def _fkc_entry(world: World, w: str, n: int, steps: int, seed: int, edges: np.ndarray
               ) -> tuple[SamplerMoments, np.ndarray]:
    res = smc_tilted(world, _rule(w), CONDITIONS[world.name], n_particles=n, n_steps=steps, seed=seed)
    f = res.final
    weights = torch.exp(res.log_weights).numpy()
    notes = {"final_ess": f.ess, "least_ess": float(res.ess.min()), "distinct_ancestors": f.n_ancestors,
             "resamples": res.n_resamples, "largest_log_weight_var": float(res.log_weight_var.max()),
             "standard_errors": "the sampler's own: max of the ESS and lineage estimates (optimistic for "
                                "heavy-tailed weights)"}
    entry = SamplerMoments(float(f.mean[0]), float(f.var[0]), float(f.mean_se[0]), float(f.var_se[0]), n,
                           f"SMC with Feynman-Kac weights, {n} particles, {steps} uniform steps to t = 0", steps,
                           notes)
    return entry, _histogram(res.particles[:, 0].numpy(), edges, weights)


def _mcmc_entry(world: World, w: str, chains: int, steps: int, seed: int, edges: np.ndarray
                ) -> tuple[SamplerMoments, np.ndarray]:
    res = mcmc_tilted(world, _rule(w), CONDITIONS[world.name], n_chains=chains, n_steps=steps, seed=seed)
    kept = res.samples.shape[0] * res.samples.shape[1]
    notes = {"acceptance": res.acceptance, "step_size": res.step_size, "ess_mean": float(res.ess_mean[0]),
             "ess_var": float(res.ess_var[0])}
    entry = SamplerMoments(float(res.mean[0]), float(res.var[0]), float(res.se_mean[0]), float(res.se_var[0]), kept,
                           f"MALA at t = 0, {chains} chains x {steps} steps (half burn-in), ESS-based standard "
                           "errors", float(steps) / res.samples.shape[0], notes)
    return entry, _histogram(res.samples[:, :, 0].reshape(-1).numpy(), edges)


def _ring_langevin(w: str, target: NoisedTilted, n: int, k: int, seed: int, edges: np.ndarray
                   ) -> tuple[SamplerMoments, np.ndarray]:
    world = get_world("ring2d")
    rule = _rule(w)
    smallest = float(torch.linalg.eigvalsh(target.data_cov).min())
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 2, dtype=F64, generator=gen)
    x = cfg_langevin(rule.guide(AnalyticDenoiser(world, SCHEDULE), 0), x0, _langevin_grid(),
                     corrector_steps=k, step_size=KAPPA * smallest, generator=gen)
    entry = _mc_moments(x, f"CFG-DDPM {LANGEVIN_STEPS} steps + {k} Langevin steps per step (h = {KAPPA:g} x pi's "
                           f"smallest covariance eigenvalue), {n} draws", LANGEVIN_STEPS * (1 + k),
                        {"corrector_steps": k, **_second_coordinate(x)})
    return entry, _histogram(x[:, 0].numpy(), edges)


def _second_coordinate(x: torch.Tensor) -> dict[str, float]:
    """The second coordinate's moments with standard errors (2-D samples), for the notes."""
    if x.shape[1] < 2:
        return {}
    m = _mc_moments(x[:, 1:2], "", None, {})
    return {"mean[1]": m.mean, "var[1]": m.var, "se_mean[1]": m.se_mean, "se_var[1]": m.se_var}


@provider
@one_thread()
def tilted_samplers(config: RunConfig, gauss1d_laws: CFGLaws1D, bimodal1d_laws: CFGLaws1D,
                    ring2d_cfg_samples: RingSamples, langevin_convergence: LangevinConvergence) -> TiltedSamplers:
    """The four samplers of pi on gauss1d, bimodal1d and ring2d at w = 1, 3, 7 (module docstring), beside CFG's laws
    and the target. Draws: exact 1e5 per run (ring2d 1e4), fkc 1e4 particles x 100 steps, mcmc 100 chains x 400
    steps, langevin as :func:`langevin_convergence` (ring2d: 600 draws at K = 50); quick: exact 2000 (ring2d 1000)
    over 10/20/40 steps, fkc 2000 x 25, mcmc 40 x 50, ring2d langevin 200 at K = 5."""
    quick = config.quick
    levels = QUICK_LEVELS if quick else LEVELS
    table: dict = {name: {s: {} for s in SAMPLER_NAMES} for name in WORLDS}
    histograms: dict = {name: {s: {} for s in SAMPLER_NAMES} for name in WORLDS}
    noised = {name: {w: NoisedTilted(tilted_law(get_world(name), _rule(w), CONDITIONS[name]), SCHEDULE) for w in WS}
              for name in WORLDS}
    targets = {name: {w: _target_moments(noised[name][w]) for w in WS} for name in WORLDS}
    cfg = _cfg_laws(gauss1d_laws, bimodal1d_laws, ring2d_cfg_samples)
    edges = {name: _edges(name, targets[name], cfg[name]) for name in WORLDS}
    exact: dict = {name: {} for name in WORLDS}
    density_x, density = {}, {name: {} for name in WORLDS}
    fkc_n, fkc_steps = (QUICK_FKC_N, QUICK_FKC_STEPS) if quick else (FKC_N, FKC_STEPS)
    chains, mcmc_steps = (QUICK_MCMC_CHAINS, QUICK_MCMC_STEPS) if quick else (MCMC_CHAINS, MCMC_STEPS)
    for i, name in enumerate(WORLDS):
        world = get_world(name)
        density_x[name] = np.linspace(edges[name][0], edges[name][-1], 400)
        for j, w in enumerate(WS):
            target = noised[name][w]
            summary = target.law.summary()
            y, p = first_coordinate_density(target.law, 801, 201, summary=summary)
            density[name][w] = np.interp(density_x[name], y, p, left=0.0, right=0.0)
            cdf = noised_cdf(target.law, *target.alpha_sigma(T_END), summary=summary)
            n = (QUICK_RING_EXACT_N if quick else RING_EXACT_N) if name == "ring2d" else (
                QUICK_EXACT_N if quick else EXACT_N)
            den = TiltedDenoiser(world, _rule(w), CONDITIONS[name], SCHEDULE)
            case = exact_case(world, w, den, n=n, levels=levels, coef=COEF, seed=_seed(config, 1, i, j),
                              edges=edges[name], cdf=cdf, reference=_deterministic_reference(world, w, target, quick),
                              target=target)
            exact[name][w] = case
            table[name]["exact"][w] = SamplerMoments(
                case.mean[0], case.var[0], case.se_mean[0], case.se_var[0], n,
                f"DDPM with the eps of pi_t, Richardson over {'/'.join(map(str, levels))} log-SNR steps to t = "
                f"{T_END:g}, {n} draws per run", float(sum(levels)),
                {"z_against_pi_t_end": case.z, "ks_pvalue": case.ks_pvalue})
            histograms[name]["exact"][w] = case.histogram
            table[name]["fkc"][w], histograms[name]["fkc"][w] = _fkc_entry(world, w, fkc_n, fkc_steps,
                                                                           _seed(config, 2, i, j), edges[name])
            table[name]["mcmc"][w], histograms[name]["mcmc"][w] = _mcmc_entry(world, w, chains, mcmc_steps,
                                                                             _seed(config, 4, i, j), edges[name])
    lc = langevin_convergence
    ring_n, ring_k = (QUICK_RING_LANGEVIN_N, QUICK_RING_LANGEVIN_K) if quick else (RING_LANGEVIN_N, RING_LANGEVIN_K)
    for j, w in enumerate(WS):
        k = lc.k_needed[w] if lc.k_needed[w] is not None else max(lc.ks)
        row = lc.gauss1d[w][str(k)]
        table["gauss1d"]["langevin"][w] = SamplerMoments(
            row["mean"], row["var"], 0.0, 0.0, None,
            f"exact law of CFG-DDPM {lc.predictor_steps} steps + {k} Langevin steps per step", row["evaluations"],
            {"corrector_steps": k})
        histograms["gauss1d"]["langevin"][w] = _gaussian_histogram(row["mean"], row["var"], edges["gauss1d"])
        table["bimodal1d"]["langevin"][w] = lc.bimodal1d[w][str(k)]
        histograms["bimodal1d"]["langevin"][w] = _histogram(lc.bimodal1d_samples[w][str(k)][:, 0].numpy(),
                                                            edges["bimodal1d"])
        table["ring2d"]["langevin"][w], histograms["ring2d"]["langevin"][w] = _ring_langevin(
            w, noised["ring2d"][w], ring_n, ring_k, _seed(config, 6, j), edges["ring2d"])
    by_limit = first_sampler_by_limit()
    for kind in ("ode", "sde"):
        histograms["gauss1d"][f"cfg_{kind}"] = {w: _gaussian_histogram(cfg["gauss1d"][kind][w].mean,
                                                                       cfg["gauss1d"][kind][w].var, edges["gauss1d"])
                                                for w in WS}
        histograms["ring2d"][f"cfg_{kind}"] = {
            w: _histogram(ring2d_cfg_samples.samples[by_limit[kind]][w][:, 0].numpy(), edges["ring2d"]) for w in WS}
    settings = {
        "exact": f"DDPM + TiltedDenoiser, log-SNR grids t = 1 -> {T_END:g}, Richardson over {levels} steps",
        "fkc": f"smc_tilted, {fkc_n} particles, {fkc_steps} uniform steps to t = 0",
        "langevin": f"cfg_langevin, DDPM {LANGEVIN_STEPS} log-SNR steps to {T_END:g}, h = {KAPPA:g} v_pi, K from "
                    f"langevin_convergence (ring2d: {ring_n} draws, K = {ring_k}, h from pi's smallest "
                    "eigenvalue)",
        "mcmc": f"mcmc_tilted (MALA at t = 0, {chains} chains x {mcmc_steps} steps, adaptive burn-in to "
                "acceptance 0.574)"}
    return TiltedSamplers(table, cfg, targets, exact, edges, histograms, density_x, density, settings)
