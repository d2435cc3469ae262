r"""The CFG target :math:`p(x|c)^{1+w}p(x)^{-w}` of the 1-D worlds at the data level (read by S0-TEMPERATURE,
S0-WINF and ``tilted_densities.png``).

Moments come from :func:`verify.tilted.tilted_law` (closed form for Gaussian factors, trapezoid quadrature with a
halving error estimate otherwise). The figure's curves are the same unnormalised log densities normalised on one
plotting grid (:func:`normalise_on_grid`, trapezoid rule in log space), with their grid moments: on gauss1d they
equal the closed form to 1e-9 (tests/test_figures_laws.py), so the grid is not what the figure shows.

Also here: the tensor-grid quadrature helpers the density figures' providers share (:func:`trapezoid_weights`,
:func:`normalise_on_grid`, :func:`grid_mass`, :func:`hdr_mask`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from toy_models import World, get_world
from verify import rules
from verify.config import RunConfig
from verify.tilted import TiltedLaw, tilted_law

from . import provider
from .shared import one_thread

__all__ = ["W_GRID", "LINE_X", "TiltedMoments", "TiltedTargets1D", "TiltedDensities1D", "trapezoid_weights",
           "normalise_on_grid", "grid_mass", "hdr_mask", "mean_var_1d", "tilted_targets_1d", "tilted_densities_1d"]

#: guidance strengths of the target moments (S0-TEMPERATURE reads the first four)
W_GRID = (0.0, 1.0, 3.0, 7.0, 30.0, 100.0)
#: the 1-D plotting grid: every CFG target here has lost its mass by -6 and 8
LINE_X = np.linspace(-6.0, 8.0, 4001)
#: strengths drawn as curves, and those of the variance-against-w curve (linear below 1, geometric above)
CURVE_WS = {"gauss1d": (0.0, 1.0, 3.0, 7.0, 30.0), "bimodal1d": (0.0, 1.0, 3.0, 7.0, 30.0, 100.0)}
W_AXIS = np.concatenate([np.linspace(0.0, 1.0, 6), np.geomspace(1.0, 100.0, 25)[1:]])


# --------------------------------------------------------------------------------------------------------------
# Quadrature on tensor grids
# --------------------------------------------------------------------------------------------------------------
def trapezoid_weights(*axes: np.ndarray) -> np.ndarray:
    """Trapezoid-rule weights of a tensor grid, shaped like ``meshgrid(*axes)`` (``[len(y), len(x)]`` in 2-D)."""
    out = np.ones(())
    for axis in axes:
        gaps = np.diff(axis)
        w = np.concatenate([gaps, [0.0]]) / 2 + np.concatenate([[0.0], gaps]) / 2
        out = w[:, None] * out[None] if out.ndim else w
    return out


def normalise_on_grid(log_q: np.ndarray, *axes: np.ndarray) -> np.ndarray:
    r"""The density :math:`q / \int q` of an unnormalised log density on a tensor grid (``log_q`` shaped like
    ``meshgrid(*axes)``, axes x first), the integral by the trapezoid rule computed in log space (a log-sum-exp, so a
    log density of any offset neither overflows nor underflows)."""
    log_w = log_q + np.log(trapezoid_weights(*axes))
    peak = log_w.max()
    log_z = peak + math.log(np.exp(log_w - peak).sum())
    return np.exp(log_q - log_z)


def grid_mass(density: np.ndarray, mask: np.ndarray, *axes: np.ndarray) -> float:
    """Trapezoid mass of ``density`` on the grid points where ``mask`` holds."""
    return float((density * mask * trapezoid_weights(*axes)).sum())


def hdr_mask(density: np.ndarray, level: float, *axes: np.ndarray) -> np.ndarray:
    """The highest-density region of a normalised grid density holding ``level`` of its trapezoid mass."""
    mass = (density * trapezoid_weights(*axes)).ravel()
    order = np.argsort(density.ravel())[::-1]
    keep = np.zeros(density.size, dtype=bool)
    keep[order[: int(np.searchsorted(np.cumsum(mass[order]), level)) + 1]] = True
    return keep.reshape(density.shape)


def mean_var_1d(density: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """Mean and variance of a normalised 1-D grid density (trapezoid rule)."""
    w = density * trapezoid_weights(x)
    mean = float((w * x).sum())
    return mean, float((w * (x - mean) ** 2).sum())


def _log_q(law: TiltedLaw, x: np.ndarray) -> np.ndarray:
    return law.log_unnormalized(torch.as_tensor(x[:, None])).numpy()


def cfg_target(world: World, w: float) -> TiltedLaw:
    """The CFG target of ``world`` towards its last class condition (class 1 of gauss1d and bimodal1d)."""
    return tilted_law(world, rules.get("cfg", w=w), {"cond": world.class_conditions()[-1]})


# --------------------------------------------------------------------------------------------------------------
# Providers
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TiltedMoments:
    """Mean and variance of a tilted target, how they were computed, and the error estimate (0: closed form)."""

    mean: float
    var: float
    method: str
    error: float


@dataclass(frozen=True)
class TiltedTargets1D:
    """``moments[world][w]`` for gauss1d and bimodal1d and w in :data:`W_GRID` (w as ``"0"``, ``"1"``, ...)."""

    moments: dict[str, dict[str, TiltedMoments]]

    @property
    def ws(self) -> tuple[str, ...]:
        return tuple(f"{w:g}" for w in W_GRID)


@provider
@one_thread()
def tilted_targets_1d(config: RunConfig) -> TiltedTargets1D:
    """Moments of :math:`p(x|1)^{1+w}p(x)^{-w}` on gauss1d (closed form) and bimodal1d (quadrature) for w in
    :data:`W_GRID`."""
    out: dict[str, dict[str, TiltedMoments]] = {}
    for name in ("gauss1d", "bimodal1d"):
        world = get_world(name)
        out[name] = {}
        for w in W_GRID:
            s = cfg_target(world, w).summary()
            out[name][f"{w:g}"] = TiltedMoments(float(s.mean[0]), float(s.cov[0, 0]), s.method,
                                                max(s.moment_error, 0.0))
    return TiltedTargets1D(out)


@dataclass(frozen=True)
class TiltedDensities1D:
    """The normalised CFG targets on :data:`LINE_X`: ``density[world][w]`` with its grid ``mean``/``var``; the
    variance against ``w_axis`` (``variance_curve[world]``); the data law ``p(x)`` of bimodal1d (``marginal``)."""

    x: np.ndarray
    density: dict[str, dict[str, np.ndarray]]
    mean: dict[str, dict[str, float]]
    var: dict[str, dict[str, float]]
    w_axis: np.ndarray
    variance_curve: dict[str, np.ndarray]
    marginal: dict[str, np.ndarray]


@provider
@one_thread()
def tilted_densities_1d(config: RunConfig) -> TiltedDensities1D:
    """The CFG targets of gauss1d and bimodal1d as normalised densities on the plotting grid, at the strengths drawn
    (``CURVE_WS``, which include 0, 1, 3 and 7, the strengths of the sampled laws), and their variance against w."""
    density: dict[str, dict[str, np.ndarray]] = {}
    mean: dict[str, dict[str, float]] = {}
    var: dict[str, dict[str, float]] = {}
    curve: dict[str, np.ndarray] = {}
    marginal: dict[str, np.ndarray] = {}
    for name, ws in CURVE_WS.items():
        world = get_world(name)
        density[name], mean[name], var[name] = {}, {}, {}
        for w in ws:
            p = normalise_on_grid(_log_q(cfg_target(world, w), LINE_X), LINE_X)
            key = f"{w:g}"
            density[name][key] = p
            mean[name][key], var[name][key] = mean_var_1d(p, LINE_X)
        curve[name] = np.array([mean_var_1d(normalise_on_grid(_log_q(cfg_target(world, w), LINE_X), LINE_X),
                                            LINE_X)[1] for w in W_AXIS])
        marginal[name] = torch.exp(world.law(None).log_prob(torch.as_tensor(LINE_X[:, None]))).numpy()
    return TiltedDensities1D(LINE_X, density, mean, var, W_AXIS, curve, marginal)
