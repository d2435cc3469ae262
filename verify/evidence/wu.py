r"""Guidance raises classification confidence and lowers differential entropy; strong guidance with a coarse step
splits a component (read by L-WU-CONFIDENCE).

Wu, Chen, Li, Wang & Wei (2024), "Theoretical Insights for Diffusion Guidance: A Case Study for Gaussian Mixture
Models" (arXiv 2403.01639; ICML 2024): for Gaussian mixtures with identity covariances and guided score
:math:`\nabla\log p_t(x|c) + w\,\nabla\log p_t(c|x)` (= CFG with strength w), guidance raises the expected class
posterior :math:`E[p(c \mid X)]` of the output (section 3) and lowers the differential entropy of the output law
(section 4), for the DDPM (reverse SDE) and DDIM (probability-flow ODE) samplers; section 6 shows a three-component
mixture whose centre component, sampled with strong guidance by a discretised sampler, splits into symmetric clusters
(their section 5: the discretised process).

Measured here, exactly (no sampling):

* **Gaussian pairs** (:data:`PAIRS`; the class law and a Gaussian unconditional law): the guided ODE and SDE laws are
  Gaussian, their moments from :func:`verify.exact_law.exact_gaussian_law` (moment ODEs, DOP853 at rtol 1e-12);
  entropy :math:`\tfrac12\ln(2\pi e v)` and, as the confidence of a pair without a joint law, the implicit
  classifier's expected log-odds :math:`E[\log p(X|c) - \log p(X)]`, both closed-form in the output's mean and
  variance.
* **Their mixture** (:data:`TWO_CLASSES`: :math:`\tfrac12\mathcal N(-1, 1) + \tfrac12\mathcal N(1, 1)`, class 1):
  ODE by the flow map (the guided field :func:`verify.exact_law.guided_score_1d` integrated by DOP853 from nodes at
  equal-probability quantiles of the start law; :math:`E[h(Y)]` is the mean over the nodes, and the entropy follows
  from the change of variables :math:`H(Y) = H(X_1) + E[\ln \Phi'(X_1)]`); SDE by its Fokker-Planck equation
  (:func:`fokker_planck_density`: :func:`verify.exact_law.reverse_sde_density_1d`, the density behind
  :func:`~verify.exact_law.reverse_sde_law_1d`). Both start from the
  noised class law at t = 1 (vp-linear). Errors: the difference from half the nodes (cells and steps) at 100x the
  integration tolerance.
* **The splitting example** (:data:`THREE_CLASSES`: means -3, 0, 3, unit variances, weights 1/3, the centre class):
  the law of DDIM with 10 and 50 uniform steps (:func:`verify.samplers.ddim`, exact model) and of the continuous ODE,
  as the push-forward of equal-probability start quantiles; modes are counted on a histogram of the output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from toy_models import AnalyticDenoiser, get_schedule
from toy_models.gaussian_mixture import GaussianMixture
from toy_models.world import World
from verify import rules
from verify.config import RunConfig
from verify.exact_law import exact_gaussian_law, guided_score_1d, reverse_sde_density_1d

from . import provider
from .shared import SCHEDULE, one_thread

__all__ = ["PairPoint", "MixturePoint", "SplitPoint", "WuConfidence", "wu_confidence", "fokker_planck_density",
           "flow_map_nodes", "count_modes", "TWO_CLASSES", "THREE_CLASSES", "PAIRS"]

F64 = torch.float64
WS, QUICK_WS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0), (0.0, 1.0, 3.0, 7.0)
SPLIT_WS, QUICK_SPLIT_WS = (0.0, 1.0, 3.0, 5.0, 10.0, 15.0, 20.0, 30.0), (0.0, 3.0, 10.0, 20.0)
SPLIT_STEPS = (10, 50)
NODES, QUICK_NODES = 2001, 801
CELLS, QUICK_CELLS = 1200, 800
SPLIT_NODES, QUICK_SPLIT_NODES = 20_000, 8_000
RTOL = 1e-10
#: a mode is a peak of the smoothed histogram (SPLIT_EDGES) whose prominence exceeds this fraction of the highest
#: value (see count_modes)
MODE_FLOOR = 0.05


def _gm(means: tuple[float, ...], label_of_each: tuple[int, ...]) -> GaussianMixture:
    k = len(means)
    return GaussianMixture([1.0 / k] * k, [[m] for m in means], [[[1.0]]] * k, labels=list(label_of_each))


#: their setting in one dimension: two unit-variance components, one class each
TWO_CLASSES = (_gm((-1.0, 1.0), (0, 1)), 1)
#: the three-component example of their section 6: the centre component is class 1
THREE_CLASSES = (_gm((-3.0, 0.0, 3.0), (0, 1, 2)), 1)
#: Gaussian pairs (class law, unconditional law): gauss1d's, and a unit class against the Gaussian of the two-class
#: mixture's mean and variance
PAIRS = {"gauss1d": ((1.0, 0.5), (0.0, 1.0)), "unit": ((1.0, 1.0), (0.0, 2.0))}


def _single(mean: float, var: float) -> GaussianMixture:
    return GaussianMixture([1.0], [[mean]], [[[var]]])


@dataclass(frozen=True)
class PairPoint:
    """A Gaussian pair's guided law at one w and sampler: mean, variance, entropy, implicit log-odds."""

    pair: str
    sampler: str
    w: float
    mean: float
    var: float
    entropy: float
    log_odds: float


@dataclass(frozen=True)
class MixturePoint:
    """The mixture's guided law at one w and sampler: expected class posterior and differential entropy, with
    their error estimates, and the output's mean and variance."""

    sampler: str
    w: float
    confidence: float
    entropy: float
    mean: float
    var: float
    error: dict[str, float]


@dataclass(frozen=True)
class SplitPoint:
    """The centre class's guided law on THREE_CLASSES for one sampler ("ode", or "ddim10", "ddim50") and w:
    mode count (fine, and with half the nodes), the output's standard deviation, its mass further than AWAY from
    the component's mean, and its histogram over SPLIT_EDGES."""

    sampler: str
    w: float
    modes: int
    modes_half_nodes: int
    std: float
    mass_away: float
    histogram: tuple[float, ...]


@dataclass(frozen=True)
class WuConfidence:
    ws: tuple[float, ...]
    split_ws: tuple[float, ...]
    pairs: tuple[PairPoint, ...]
    mixture: tuple[MixturePoint, ...]
    split: tuple[SplitPoint, ...]
    nodes: int
    cells: int
    split_nodes: int

    def series(self, sampler: str, field: str) -> list[float]:
        return [getattr(p, field) for p in self.mixture if p.sampler == sampler]

    def errors(self, sampler: str, field: str) -> list[float]:
        return [p.error[field] for p in self.mixture if p.sampler == sampler]


def _start_gaussian(law: GaussianMixture, label: int) -> tuple[float, float]:
    """Mean and standard deviation of the noised class law at t = 1 (a single Gaussian for these worlds)."""
    a1, s1 = (float(v) for v in get_schedule(SCHEDULE).alpha_sigma(1.0))
    cond = law.given(label)
    m, v = float(cond.means[0, 0]), float(cond.covariances[0, 0, 0])
    return a1 * m, math.sqrt(a1**2 * v + s1**2)


def flow_map_nodes(law: GaussianMixture, label: int, w: float, nodes: int, rtol: float
                   ) -> tuple[np.ndarray, np.ndarray, float]:
    """``(x1, x0, sd1)``: start points at equal-probability quantiles (i + 1/2)/n of the noised class law at t = 1,
    their images under the CFG probability-flow map to t = 0, and the start law's standard deviation."""
    from scipy.integrate import solve_ivp
    from scipy.special import ndtri

    sched = get_schedule(SCHEDULE)
    score = guided_score_1d(rules.get("cfg", w=w), {"cond": law.given(label), "uncond": law}, sched)
    m1, sd1 = _start_gaussian(law, label)
    x1 = m1 + sd1 * ndtri((np.arange(nodes) + 0.5) / nodes)

    def rhs(t: float, x: np.ndarray) -> np.ndarray:
        tt = torch.tensor(t, dtype=F64)
        return float(sched.drift(tt)) * x - 0.5 * float(sched.diffusion_squared(tt)) * score(x, t)

    sol = solve_ivp(rhs, (1.0, 0.0), x1, method="DOP853", rtol=rtol, atol=rtol)
    if not sol.success:
        raise RuntimeError(f"probability-flow ODE failed at w = {w}: {sol.message}")
    return x1, sol.y[:, -1], sd1


def fokker_planck_density(law: GaussianMixture, label: int, w: float, n_cells: int, n_steps: int
                          ) -> tuple[np.ndarray, np.ndarray]:
    """``(centres, density)`` at t = 0 of the CFG reverse SDE from the noised class law at t = 1:
    :func:`verify.exact_law.reverse_sde_density_1d` for class ``label`` of ``law`` at strength ``w``."""
    return reverse_sde_density_1d(rules.get("cfg", w=w), {"cond": law.given(label), "uncond": law}, SCHEDULE,
                                  n_cells=n_cells, n_steps=n_steps)


def _posterior(law: GaussianMixture, label: int, x: np.ndarray) -> np.ndarray:
    col = law.classes.tolist().index(label)
    return law.log_class_posterior(torch.from_numpy(x)[:, None])[:, col].exp().numpy()


def _ode_point(law: GaussianMixture, label: int, w: float, nodes: int, rtol: float) -> dict[str, float]:
    x1, x0, sd1 = flow_map_nodes(law, label, w, nodes, rtol)
    jac = np.gradient(x0, x1)
    if np.any(jac <= 0):
        raise RuntimeError(f"probability-flow map at w = {w} is not increasing: the integration is not resolved")
    entropy = 0.5 * math.log(2 * math.pi * math.e * sd1**2) + float(np.mean(np.log(jac)))
    mean = float(x0.mean())
    return {"confidence": float(_posterior(law, label, x0).mean()), "entropy": entropy, "mean": mean,
            "var": float(np.mean((x0 - mean) ** 2))}


def _sde_point(law: GaussianMixture, label: int, w: float, cells: int) -> dict[str, float]:
    centres, rho = fokker_planck_density(law, label, w, cells, cells)
    h = centres[1] - centres[0]
    p = rho * h
    pos = rho > 0
    mean = float(p @ centres)
    return {"confidence": float(p @ _posterior(law, label, centres)),
            "entropy": float(-(p[pos] @ np.log(rho[pos]))), "mean": mean, "var": float(p @ (centres - mean) ** 2)}


#: the splitting example's histogram: 200 bins over the centre component's +-4 standard deviations, the scale at
#: which a component splits (a law collapsed far below one bin reads as one mode)
SPLIT_EDGES = tuple(np.linspace(-4.0, 4.0, 201).tolist())
#: distance from the centre component's mean beyond which its mass counts as split away
AWAY = 0.5


def count_modes(values: np.ndarray) -> tuple[int, np.ndarray]:
    """``(modes, mass per bin)`` of the histogram of ``values`` over :data:`SPLIT_EDGES`: the peaks of the histogram
    smoothed by a Gaussian of two bins whose prominence exceeds :data:`MODE_FLOOR` of the highest value (the
    quantile nodes put N mass(bin) +- 1 points in a bin: a ripple of 1 / (N mass) that the floor keeps out)."""
    from scipy.ndimage import gaussian_filter1d
    from scipy.signal import find_peaks

    mass, _ = np.histogram(values, bins=np.asarray(SPLIT_EDGES))
    mass = mass / len(values)
    smooth = np.concatenate([[0.0], gaussian_filter1d(mass, 2.0, mode="constant"), [0.0]])
    peaks, _ = find_peaks(smooth, prominence=MODE_FLOOR * smooth.max())
    return len(peaks), mass


def _split_values(sampler: str, w: float, nodes: int) -> np.ndarray:
    law, label = THREE_CLASSES
    if sampler == "ode":
        return flow_map_nodes(law, label, w, nodes, 1e-8)[1]
    from scipy.special import ndtri

    from verify.samplers import ddim, time_grid

    m1, sd1 = _start_gaussian(law, label)
    x1 = torch.as_tensor(m1 + sd1 * ndtri((np.arange(nodes) + 0.5) / nodes), dtype=F64)[:, None]
    den = AnalyticDenoiser(World("three_classes", law), SCHEDULE)
    steps = int(sampler.removeprefix("ddim"))
    return ddim(rules.get("cfg", w=w).guide(den, {"cond": label}), x1, time_grid(steps))[:, 0].numpy()


@provider
def wu_confidence(config: RunConfig) -> WuConfidence:
    """Confidence and entropy of the guided ODE and SDE laws against w (Gaussian pairs and the two-class mixture),
    and the splitting example's mode counts (see the module docstring)."""
    ws = QUICK_WS if config.quick else WS
    split_ws = QUICK_SPLIT_WS if config.quick else SPLIT_WS
    nodes = QUICK_NODES if config.quick else NODES
    cells = QUICK_CELLS if config.quick else CELLS
    split_nodes = QUICK_SPLIT_NODES if config.quick else SPLIT_NODES
    pairs = []
    for name, ((mc, vc), (mu, vu)) in PAIRS.items():
        cond, uncond = _single(mc, vc), _single(mu, vu)
        for sampler in ("ode", "sde"):
            for w in ws:
                mean_t, cov_t = exact_gaussian_law(rules.get("cfg", w=w), {"cond": cond, "uncond": uncond}, sampler,
                                                   SCHEDULE, start="marginal")
                m, v = float(mean_t[0]), float(cov_t[0, 0])
                log_odds = (0.5 * math.log(vu / vc) - ((m - mc) ** 2 + v) / (2 * vc)
                            + ((m - mu) ** 2 + v) / (2 * vu))
                pairs.append(PairPoint(name, sampler, w, m, v, 0.5 * math.log(2 * math.pi * math.e * v), log_odds))
    law, label = TWO_CLASSES
    mixture = []
    with one_thread():
        for w in ws:
            fine, coarse = _ode_point(law, label, w, nodes, RTOL), _ode_point(law, label, w, nodes // 2, RTOL * 100)
            mixture.append(MixturePoint("ode", w, fine["confidence"], fine["entropy"], fine["mean"], fine["var"],
                                        {k: abs(fine[k] - coarse[k]) for k in fine}))
        for w in ws:
            fine, coarse = _sde_point(law, label, w, cells), _sde_point(law, label, w, cells // 2)
            mixture.append(MixturePoint("sde", w, fine["confidence"], fine["entropy"], fine["mean"], fine["var"],
                                        {k: abs(fine[k] - coarse[k]) for k in fine}))
        split = []
        for sampler in ("ode", *(f"ddim{n}" for n in SPLIT_STEPS)):
            for w in split_ws:
                values = _split_values(sampler, w, split_nodes)
                modes, mass = count_modes(values)
                modes_half = count_modes(_split_values(sampler, w, split_nodes // 2))[0]
                split.append(SplitPoint(sampler, w, modes, modes_half, float(values.std()),
                                        float(np.mean(np.abs(values) > AWAY)), tuple(mass.tolist())))
    return WuConfidence(tuple(ws), tuple(split_ws), tuple(pairs), tuple(mixture), tuple(split), nodes, cells,
                        split_nodes)
