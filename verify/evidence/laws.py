r"""The laws guided samplers produce, against the tilted target :math:`p(x|c)^{1+w}p(x)^{-w}` (read by
S0-PROP2-SAMPLES, L-DDIM-DDPM, L-OVERSHOOT, S0-WINF, S1-SCALE-TABLE and their figures).

Deterministic references first, Monte Carlo only to show that a sampler reaches them (docs/tolerances.md):

* ``gauss1d_laws``: the continuous-time laws of the guided probability-flow ODE and reverse SDE by their moment ODEs
  (:func:`~verify.exact_law.exact_gaussian_cfg_law`), and the tilted target in closed form: no sampling error;
* ``bimodal1d_laws``: the ODE's flow map pushed through quadrature (:func:`~verify.exact_law.pf_ode_law_1d`) and the
  SDE's Fokker-Planck solution (:func:`~verify.exact_law.reverse_sde_law_1d`), each with the error estimate of halving
  its discretisation; the tilted target by quadrature;
* ``gauss1d_discrete_laws``: each registered *discrete* sampler's exact law on gauss1d (linearity,
  :func:`~verify.exact_law.discrete_sampler_law`);
* ``bimodal1d_monte_carlo``: every registered sampler at 100 steps, with z-scores against the reference of its
  continuous-time limit;
* ``ring2d_fine_step_reference``: fine-step ODE and SDE references on ring2d with their measured error;
* ``ring2d_cfg_samples``: DDIM and DDPM samples of ring2d class 0 by w (read by L-OVERSHOOT and
  S0-QUALITY-DIVERSITY), with the paths of the first points;
* ``bimodal1d_law_densities``: per-point densities of the bimodal1d laws for the figure.

Every run starts from the noised conditional at t = 1 (``start="marginal"``) on vp-linear and ends at t = 0, with
Ho & Salimans' CFG (2022, eq. 6) as registered in :mod:`verify.rules`.

Discretisation choices (the error estimates in the results show they are not oversized):

* flow map: 201 nodes spanning 12 standard deviations of the start law. The trapezoid rule on a smooth density
  decaying like a Gaussian converges faster than any power of the spacing, so the error is set by the ODE tolerance
  (rtol 1e-10): halving to 101 nodes moves the moments by about 3e-10, as it did at 4001 nodes (measured: means
  equal to 1e-13 between 201 and 4001 nodes at w = 3);
* Fokker-Planck: 600 cells x 600 Crank-Nicolson steps, second order in both, so halving moves the moments by about
  4.5e-4 (in the results; measured at w = 3: means 2.28951 here, 2.28965 at 2000 cells x 2000 steps); the laws this
  evidence separates differ by 0.1 or more, 200 times that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from toy_models import AnalyticDenoiser, GaussianMixture, World, get_world
from verify import rules
from verify.config import RunConfig
from verify.exact_law import (
    discrete_sampler_law,
    exact_gaussian_cfg_law,
    fine_step_reference,
    pf_ode_law_1d,
    reverse_sde_law_1d,
)
from verify.samplers import SAMPLERS, get_sampler, sample, time_grid
from verify.tilted import tilted_law

from . import provider
from .shared import alpha_sigma, first_sampler_by_limit, one_thread

__all__ = ["W_LAWS", "KINDS", "Moments", "CFGLaws1D", "DiscreteLaws", "MonteCarloRow", "MonteCarlo1D",
           "FineStepRow", "RingReference", "RingSamples", "OvershootRow", "LawDensities", "noised_at_t1",
           "sample_from_marginal", "cfg", "gauss1d_laws", "bimodal1d_laws", "bimodal1d_ode_large_w",
           "gauss1d_discrete_laws", "gauss1d_discrete_laws_unguided", "bimodal1d_monte_carlo",
           "ring2d_fine_step_reference", "ring2d_cfg_samples", "ring2d_overshoot", "bimodal1d_law_densities"]

F64 = torch.float64
#: guidance strengths of the laws (strings: the keys of the records' evidence)
W_LAWS = ("0", "1", "3", "7")
KINDS = ("ode", "sde", "tilted")
#: flow-map nodes and Fokker-Planck cells x steps (module docstring)
ODE_NODES, SDE_CELLS = 201, 600
#: ring2d: the strengths sampled and the class guided towards (class 0 sits at (3, 0): its direction is e_1)
RING_WS = (0.0, 1.0, 3.0, 7.0)
RING_CLASS = 0
#: paths kept per (sampler, w) for the trajectories figure
N_PATHS = 40


# --------------------------------------------------------------------------------------------------------------
# Sampling pieces shared by the sampled-law providers
# --------------------------------------------------------------------------------------------------------------
def noised_at_t1(law: GaussianMixture, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` draws of ``law`` noised to t = 1 on vp-linear (``start="marginal"`` of :mod:`verify.exact_law`)."""
    return law.noised(*alpha_sigma(1.0)).sample(n, generator)


def sample_from_marginal(denoiser, law_at_start: GaussianMixture, n: int, steps: int, seed: int,
                         name: str | None = None, **kw) -> torch.Tensor:
    """``n`` outputs of sampler ``name`` (default: the first registered sampler whose limit is the probability-flow
    ODE, DDIM) on ``denoiser`` over ``steps`` uniform steps from t = 1 to 0, started from ``law_at_start`` noised to
    t = 1; one generator seeded with ``seed`` draws the start and then the sampler's noise."""
    gen = torch.Generator().manual_seed(seed)
    x = noised_at_t1(law_at_start, n, gen)
    return sample(name or first_sampler_by_limit()["ode"], denoiser, x, time_grid(steps), generator=gen, **kw)


def cfg(denoiser, condition, w: float):
    """CFG of ``denoiser`` towards ``condition`` at Ho-Salimans strength ``w`` (the registered ``cfg`` rule)."""
    return rules.get("cfg", w=w).guide(denoiser, {"cond": condition})


# --------------------------------------------------------------------------------------------------------------
# Continuous-time laws in 1-D
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Moments:
    """A 1-D law's mean, variance and mass below 0; ``error``: the absolute error estimate of each (``None`` when
    the law is exact to rounding), ``method``: how it was computed."""

    mean: float
    var: float
    mass_below_0: float
    error: dict[str, float] | None = None
    method: str = ""


@dataclass(frozen=True)
class CFGLaws1D:
    """One world's laws by kind (``ode``, ``sde``, ``tilted``) and w (:data:`W_LAWS`): ``laws[kind][w]``."""

    world: str
    laws: dict[str, dict[str, Moments]]

    def law(self, kind: str, w: str) -> Moments:
        return self.laws[kind][w]


def _gaussian_moments(mean: float, var: float, method: str) -> Moments:
    return Moments(mean, var, float(stats.norm.cdf(-mean / math.sqrt(var))), None, method)


@provider
@one_thread()
def gauss1d_laws(config: RunConfig) -> CFGLaws1D:
    r"""gauss1d, class 1: the guided ODE's and SDE's laws at t = 0 from their moment ODEs (Gaussian, exact to the
    solver's rtol 1e-12), and the tilted target :math:`\mathcal N(2(1+w)/(2+w), 1/(2+w))` in closed form."""
    world = get_world("gauss1d")
    cond, uncond = world.law(1), world.law(None)
    out: dict[str, dict[str, Moments]] = {k: {} for k in KINDS}
    for w in W_LAWS:
        for kind in ("ode", "sde"):
            mean, cov = exact_gaussian_cfg_law(cond, uncond, float(w), kind, start="marginal")
            out[kind][w] = _gaussian_moments(float(mean[0]), float(cov[0, 0]), "moment ODEs (rtol 1e-12)")
        tm, tcov, _ = tilted_law(world, rules.get("cfg", w=float(w)), {"cond": 1}).gaussian()
        out["tilted"][w] = _gaussian_moments(float(tm[0]), float(tcov[0, 0]), "closed form (Gaussian factors)")
    return CFGLaws1D("gauss1d", out)


def _mixture_laws(world: World, w: float, sde_cells: int) -> dict[str, Moments]:
    rule, laws = rules.get("cfg", w=w), {"cond": world.law(1), "uncond": world.law(None)}
    out = {"ode": Moments(**pf_ode_law_1d(rule, laws, start="marginal", n_nodes=ODE_NODES).as_dict()),
           "sde": Moments(**reverse_sde_law_1d(rule, laws, start="marginal", n_cells=sde_cells,
                                               n_steps=sde_cells).as_dict())}
    tq = tilted_law(world, rule, {"cond": 1})
    summ = tq.summary()
    below, below_err = tq.probability(lambda x: x[:, 0] < 0)
    out["tilted"] = Moments(float(summ.mean[0]), float(summ.cov[0, 0]), below,
                            {"mean": summ.moment_error, "var": summ.moment_error, "mass_below_0": below_err},
                            summ.method)
    return out


@provider
@one_thread()
def bimodal1d_laws(config: RunConfig) -> CFGLaws1D:
    """bimodal1d, class 1: the guided ODE's law by the flow map, the SDE's by Fokker-Planck, the tilted target by
    quadrature, each with its error estimate (the module docstring gives the discretisations)."""
    world = get_world("bimodal1d")
    out: dict[str, dict[str, Moments]] = {k: {} for k in KINDS}
    for w in W_LAWS:
        for kind, value in _mixture_laws(world, float(w), SDE_CELLS).items():
            out[kind][w] = value
    return CFGLaws1D("bimodal1d", out)


@provider
@one_thread()
def bimodal1d_ode_large_w(config: RunConfig) -> dict[str, Moments]:
    """bimodal1d, class 1: the guided ODE's law at w = 15 and 30 (quick: 15), flow map as in ``bimodal1d_laws``;
    ``{w: Moments}``."""
    world = get_world("bimodal1d")
    laws = {"cond": world.law(1), "uncond": world.law(None)}
    ws = ("15",) if config.quick else ("15", "30")
    return {w: Moments(**pf_ode_law_1d(rules.get("cfg", w=float(w)), laws, start="marginal",
                                       n_nodes=ODE_NODES).as_dict()) for w in ws}


# --------------------------------------------------------------------------------------------------------------
# Discrete samplers' exact laws on gauss1d
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiscreteLaws:
    """``laws[w][sampler][steps] = (mean, var)`` of every registered sampler's exact output law on gauss1d class 1
    (start: the noised conditional at t = 1), and the continuous-time laws it converges to (``limits[w][kind]``)."""

    laws: dict[str, dict[str, dict[str, dict[str, float]]]]
    steps: tuple[int, ...]

    def relative_variance_error(self, w: str, steps: int, reference_var: float) -> dict[str, float]:
        """``{sampler: var / reference_var - 1}`` at strength ``w`` and ``steps`` steps."""
        return {name: by_steps[str(steps)]["var"] / reference_var - 1.0 for name, by_steps in self.laws[w].items()}


def _discrete_laws(ws: tuple[str, ...], steps: tuple[int, ...]) -> DiscreteLaws:
    world = get_world("gauss1d")
    cond = world.law(1)
    a, s = alpha_sigma(1.0)
    m0 = torch.tensor([a * float(cond.means[0, 0])], dtype=F64)
    c0 = torch.tensor([[a * a * float(cond.covariances[0, 0, 0]) + s * s]], dtype=F64)
    out: dict = {}
    for w in ws:
        den = cfg(AnalyticDenoiser(world), 1, float(w))
        out[w] = {}
        for name in SAMPLERS:
            out[w][name] = {}
            for n in steps:
                mean, cov = discrete_sampler_law(name, den, time_grid(n), m0, c0)
                out[w][name][str(n)] = {"mean": float(mean[0]), "var": float(cov[0, 0])}
    return DiscreteLaws(out, steps)


@provider
@one_thread()
def gauss1d_discrete_laws(config: RunConfig) -> DiscreteLaws:
    """Every registered sampler's exact discrete law on gauss1d at w = 1 and 3, 25 and 100 steps (no sampling:
    an affine sampler maps a Gaussian to a Gaussian)."""
    return _discrete_laws(("1", "3"), (25, 100))


@provider
@one_thread()
def gauss1d_discrete_laws_unguided(config: RunConfig) -> DiscreteLaws:
    """As ``gauss1d_discrete_laws`` at w = 0 (guidance scale 1): how far each sampler's law is from p(x|c) itself,
    N(1, 0.5), at 25 and 100 steps."""
    return _discrete_laws(("0",), (25, 100))


# --------------------------------------------------------------------------------------------------------------
# Monte Carlo of every sampler on bimodal1d
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MonteCarloRow:
    """One sampler's outputs: its continuous limit, sample moments, the mean's standard error, and the z-scores of
    the mean against the reference of its limit and against the tilted target."""

    reference: str
    mean: float
    se_mean: float
    var: float
    mass_below_0: float
    z_mean_vs_reference: float
    z_mean_vs_tilted: float


@dataclass(frozen=True)
class MonteCarlo1D:
    w: str
    steps: int
    n: int
    samplers: dict[str, MonteCarloRow]


@provider
@one_thread()
def bimodal1d_monte_carlo(config: RunConfig, bimodal1d_laws: CFGLaws1D) -> MonteCarlo1D:
    """Each registered sampler on bimodal1d class 1 at w = 3, 100 steps, 20000 outputs (quick: 4000), seed
    ``config.seed + i`` for the i-th sampler; z of the mean against its continuous limit's reference."""
    world, w, steps = get_world("bimodal1d"), "3", 100
    n = 4000 if config.quick else 20000
    den = cfg(AnalyticDenoiser(world), 1, float(w))
    out = {}
    for i, name in enumerate(SAMPLERS):
        x = sample_from_marginal(den, world.law(1), n, steps, config.seed + i, name)[:, 0]
        kind = get_sampler(name).continuous_limit(0.0)
        mean, var = float(x.mean()), float(x.var())
        se = math.sqrt(var / n)
        out[name] = MonteCarloRow(kind, mean, se, var, float((x < 0).double().mean()),
                                  (mean - bimodal1d_laws.law(kind, w).mean) / se,
                                  (mean - bimodal1d_laws.law("tilted", w).mean) / se)
    return MonteCarlo1D(w, steps, n, out)


# --------------------------------------------------------------------------------------------------------------
# ring2d: fine-step references and the samples of the first ODE and SDE samplers
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FineStepRow:
    """A fine-step reference (its moments and measured errors) and 100 steps of ``sampler`` against it."""

    sampler: str
    reference_mean: tuple[float, ...]
    reference_cov: tuple[tuple[float, ...], ...]
    reference_moment_error: float
    reference_path_error: float
    method: str
    sampler_100_steps_mean: tuple[float, ...]
    sampler_mean_minus_reference: tuple[float, ...]
    sampling_standard_error_of_that_difference: float


@dataclass(frozen=True)
class RingReference:
    """ring2d class 0, w = 3: ``limits["ode" | "sde"]`` and the tilted target's moments."""

    limits: dict[str, FineStepRow]
    tilted_mean: tuple[float, ...]
    tilted_cov: tuple[tuple[float, ...], ...]
    tilted_method: str
    n: int
    steps: int


@provider
@one_thread()
def ring2d_fine_step_reference(config: RunConfig) -> RingReference:
    """ring2d class 0, w = 3: fine-step ODE (Heun) and SDE (Euler-Maruyama) references with their measured error
    (800 steps against 400; quick: 200 against 100), and 100 steps of the first registered sampler of each limit
    (DDIM, DDPM) against them. The deterministic one starts from the same points as the ODE reference, so its
    moment differences are its discretisation bias; the stochastic one uses its own noise, so its differences carry
    sampling error too (standard errors)."""
    world = get_world("ring2d")
    den = cfg(AnalyticDenoiser(world), RING_CLASS, 3.0)
    n, steps = (1000, 200) if config.quick else (8000, 800)
    gen = torch.Generator().manual_seed(config.seed + 11)
    x1 = noised_at_t1(world.law(RING_CLASS), n, gen)
    limits = {}
    for kind, name in first_sampler_by_limit().items():
        ref = fine_step_reference(den, x1, kind, steps=steps, generator=gen)
        x = sample(name, den, x1, time_grid(100), generator=gen)
        se = float((ref.samples.std(0).max() ** 2 + x.std(0).max() ** 2).sqrt() / math.sqrt(n))
        limits[kind] = FineStepRow(name, tuple(ref.mean.tolist()), tuple(map(tuple, ref.cov.tolist())),
                                   ref.moment_error, ref.path_error, ref.method, tuple(x.mean(0).tolist()),
                                   tuple((x.mean(0) - ref.mean).tolist()),
                                   se if get_sampler(name).is_stochastic(0.0) else 0.0)
    tq = tilted_law(world, rules.get("cfg", w=3.0), {"cond": RING_CLASS}).summary()
    return RingReference(limits, tuple(tq.mean.tolist()), tuple(map(tuple, tq.cov.tolist())), tq.method, n, steps)


@dataclass(frozen=True)
class RingSamples:
    """ring2d class :data:`RING_CLASS` under CFG: ``samples[sampler][w]`` ``[n, 2]`` (w as ``"0"``, ``"1"``, ...),
    and ``paths[sampler][w]`` ``[steps + 1, N_PATHS, 2]``, the first :data:`N_PATHS` points' states from t = 1
    (frame 0) to t = 0. One seed (``config.seed``) for every (sampler, w): the same start points, and for the
    stochastic sampler the same noise."""

    samples: dict[str, dict[str, torch.Tensor]]
    paths: dict[str, dict[str, np.ndarray]]
    n: int
    steps: int
    condition: int
    #: how many of the paths end where the data law's classifier puts class ``condition`` first
    paths_ending_in_class: dict[str, dict[str, int]]
    #: the data law's log density on ``grid_axis`` x ``grid_axis`` (``[len, len]``, rows x2) and the class means
    grid_axis: np.ndarray
    log_p_grid: np.ndarray
    class_means: np.ndarray

    @property
    def samplers(self) -> tuple[str, ...]:
        return tuple(self.samples)

    @property
    def ws(self) -> tuple[str, ...]:
        return tuple(next(iter(self.samples.values())))


@provider
@one_thread()
def ring2d_cfg_samples(config: RunConfig) -> RingSamples:
    """DDIM and DDPM (the first registered sampler of each continuous limit) on ring2d class 0 at w = 0, 1, 3, 7:
    20000 outputs each (quick: 4000), 100 uniform steps from the noised conditional at t = 1."""
    world = get_world("ring2d")
    den = AnalyticDenoiser(world)
    n, steps = (4000 if config.quick else 20000), 100
    samples: dict[str, dict[str, torch.Tensor]] = {}
    paths: dict[str, dict[str, np.ndarray]] = {}
    ending: dict[str, dict[str, int]] = {}
    data = world.law(None)
    for name in first_sampler_by_limit().values():
        samples[name], paths[name], ending[name] = {}, {}, {}
        for w in RING_WS:
            frames: list[np.ndarray] = []
            gen = torch.Generator().manual_seed(config.seed)
            x = noised_at_t1(world.law(RING_CLASS), n, gen)
            frames.append(x[:N_PATHS].numpy().copy())
            out = sample(name, cfg(den, RING_CLASS, w), x, time_grid(steps), generator=gen,
                         callback=lambda i, t, state, eps, frames=frames: frames.append(state[:N_PATHS].numpy().copy()))
            samples[name][f"{w:g}"], paths[name][f"{w:g}"] = out, np.stack(frames)
            ending[name][f"{w:g}"] = int((data.class_posterior(out[:N_PATHS]).argmax(1) == RING_CLASS).sum())
    axis = np.linspace(-6.0, 6.0, 241)
    gx, gy = np.meshgrid(axis, axis)
    log_p = data.log_prob(torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], axis=1))).numpy().reshape(gx.shape)
    return RingSamples(samples, paths, n, steps, RING_CLASS, ending, axis, log_p, data.means.numpy())


@dataclass(frozen=True)
class OvershootRow:
    """One (sampler, w) of :class:`RingSamples`: the mean along class 0's direction e_1 (class mean 3) with its
    standard error, and the mean posterior p(c = 0 | x) of the outputs under the data law."""

    sampler: str
    w: str
    mean_along_class_direction: float
    se: float
    mean_posterior_of_class_0: float


@provider
@one_thread()
def ring2d_overshoot(ring2d_cfg_samples: RingSamples) -> tuple[OvershootRow, ...]:
    """Per (sampler, w) of ``ring2d_cfg_samples``: where the outputs sit along the class direction and how
    confidently the data law's classifier puts them in the class."""
    world = get_world("ring2d")
    rows = []
    for name, by_w in ring2d_cfg_samples.samples.items():
        for w, x in by_w.items():
            radial = x[:, 0]  # class 0 sits at (3, 0): its direction is e_1
            rows.append(OvershootRow(name, w, float(radial.mean()), float(radial.std() / math.sqrt(x.shape[0])),
                                     float(world.law(None).class_posterior(x)[:, ring2d_cfg_samples.condition]
                                           .mean())))
    return tuple(rows)


# --------------------------------------------------------------------------------------------------------------
# Per-point densities of the bimodal1d laws (the figure's curves)
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LawDensities:
    r"""bimodal1d class 1, by w (strings): the guided ODE's output density ``ode_x[w]``, ``ode_density[w]`` (the flow
    map of Heun, the registered second-order ODE sampler, at ``ode_steps`` steps, over ``nodes`` starting points:
    :math:`p_0(\Phi(x_1)) = p_1(x_1)/\Phi'(x_1)`), its trapezoid mean ``ode_mean[w]``; and a histogram of
    Euler-Maruyama outputs (``sde_steps`` steps, ``n_sde`` per w, the SDE sampler whose limit is the reverse SDE
    without DDPM's exact Gaussian steps) ``sde_edges``, ``sde_density[w]``, with the sample mean ``sde_mean[w]``.
    At w = 0 both laws are :math:`p(x|c)` exactly; the SDE histogram is not drawn there."""

    ode_x: dict[str, np.ndarray]
    ode_density: dict[str, np.ndarray]
    ode_mean: dict[str, float]
    sde_edges: np.ndarray
    sde_density: dict[str, np.ndarray]
    sde_mean: dict[str, float]
    nodes: int
    ode_steps: int
    sde_steps: int
    n_sde: int


@provider
@one_thread()
def bimodal1d_law_densities(config: RunConfig) -> LawDensities:
    """The curves of the bimodal1d row of ``cfg_law_vs_tilted.png`` (see :class:`LawDensities`): 401 nodes, Heun
    100 steps (second order: its density is within 2e-3 of the exact law's, tests/test_figures_laws.py), 4000
    Euler-Maruyama outputs of 100 steps per w > 0 (quick: 2000)."""
    world = get_world("bimodal1d")
    den = AnalyticDenoiser(world)
    start = world.law(1).noised(*alpha_sigma(1.0))
    mean, sd = float(start.mean()[0]), math.sqrt(float(start.covariance()[0, 0]))
    nodes, ode_steps, sde_steps = 401, 100, 100
    n_sde = 2000 if config.quick else 4000
    x1 = torch.linspace(mean - 9 * sd, mean + 9 * sd, nodes, dtype=F64)[:, None]
    p1 = torch.exp(start.log_prob(x1)).numpy()
    edges = np.arange(-1.0, 6.0 + 1e-9, 0.1)
    ode_x, ode_density, ode_mean, sde_density, sde_mean = {}, {}, {}, {}, {}
    for i, w in enumerate(W_LAWS):
        guided = cfg(den, 1, float(w))
        x0 = sample("heun", guided, x1, time_grid(ode_steps))[:, 0].numpy()
        jac = np.gradient(x0, x1[:, 0].numpy())
        if np.any(jac <= 0):
            raise RuntimeError("bimodal1d_law_densities: the sampled flow map is not monotone")
        ode_x[w], ode_density[w] = x0, p1 / jac
        ode_mean[w] = float(np.trapezoid(x0 * ode_density[w], x0))
        if w != "0":
            x = sample_from_marginal(guided, world.law(1), n_sde, sde_steps, config.seed + 100 + i,
                                     "euler_maruyama")[:, 0].numpy()
            sde_density[w] = np.histogram(x, bins=edges)[0] / (len(x) * np.diff(edges))
            sde_mean[w] = float(x.mean())
    return LawDensities(ode_x, ode_density, ode_mean, edges, sde_density, sde_mean, nodes, ode_steps, sde_steps,
                        n_sde)
