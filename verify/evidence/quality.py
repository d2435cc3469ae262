r"""Quality against diversity under guidance, from exact densities (read by S0-QUALITY-DIVERSITY and
``quality_diversity.png``).

* gauss1d: the exact ODE and SDE laws (Gaussian, from their moment ODEs) against :math:`p(x|c)`: precision
  :math:`P_{model}(H_{p(x|c)})` and recall :math:`P_{p(x|c)}(H_{model})` with highest-density regions at level 0.95
  (:func:`verify.metrics.precision_recall`, both densities exact), and the Frechet distance;
* ring2d class 0: the DDIM and DDPM outputs of :func:`verify.evidence.laws.ring2d_cfg_samples` (the samples
  L-OVERSHOOT reads): precision from the exact density of :math:`p(x|c)`, Frechet distance to it, the generalised
  variance ratio :math:`\det\mathrm{Cov}(x)/\det\Sigma_c`, and for the figure recall with the samples' density a
  binned Gaussian KDE on a grid; the tilted target's three numbers on the same grid.

Precision is binomial given its threshold: standard error :math:`\sqrt{p(1-p)/n}` (0.0015 at p = 0.95, n = 20000);
the threshold comes from 20000 reference draws, which moves the region's mass by about the same amount.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from toy_models import GaussianMixture, get_world
from verify import rules
from verify.config import RunConfig
from verify.exact_law import exact_gaussian_cfg_law
from verify.metrics import frechet_distance, precision_recall
from verify.tilted import tilted_law

from . import provider
from .laws import RingSamples
from .shared import one_thread
from .targets import grid_mass, hdr_mask, normalise_on_grid, trapezoid_weights

__all__ = ["LEVEL", "QD_X1", "QD_X2", "ExactPR", "SampledQuality", "QualityDiversity", "kde_on_grid",
           "quality_diversity"]

LEVEL = 0.95
N_REFERENCE = 20_000
#: grid of the ring2d class-0 densities (spacing 0.025): class 0 is N((3, 0), diag(0.04, 0.25))
QD_X1, QD_X2 = np.linspace(-1.0, 7.0, 321), np.linspace(-4.0, 4.0, 321)


@dataclass(frozen=True)
class ExactPR:
    """An exact law against p(x|c): precision, recall, Frechet distance."""

    precision: float
    recall: float
    frechet_to_p_x_given_c: float


@dataclass(frozen=True)
class SampledQuality:
    """Samples (or, for ``tilted``, the target on the grid) against p(x|c): precision (with its binomial standard
    error; 0 for the grid), recall by the grid (KDE for samples), Frechet distance, generalised variance ratio."""

    precision: float
    precision_se: float
    recall_grid: float
    frechet_to_p_x_given_c: float
    generalised_variance_ratio: float


@dataclass(frozen=True)
class QualityDiversity:
    """``gauss1d[w][kind]`` (exact laws), ``ring2d[sampler | "tilted"][w]`` (w as ``"0"``, ``"1"``, ...), the ring2d
    ``samples`` they were measured on, and the grid densities the figure contours: ``p_target`` (p(x|c)),
    ``tilted_density[w]``, ``kde[sampler][w]`` with ``kde_level[sampler][w]`` (the KDE's 95 % level)."""

    gauss1d: dict[str, dict[str, ExactPR]]
    ring2d: dict[str, dict[str, SampledQuality]]
    samples: RingSamples
    x1: np.ndarray
    x2: np.ndarray
    p_target: np.ndarray
    tilted_density: dict[str, np.ndarray]
    kde: dict[str, dict[str, np.ndarray]]
    kde_level: dict[str, dict[str, float]]
    level: float


def kde_on_grid(x: np.ndarray, x1: np.ndarray = QD_X1, x2: np.ndarray = QD_X2) -> tuple[np.ndarray, np.ndarray]:
    r"""Binned Gaussian KDE of 2-D samples on the grid (bandwidth: Scott's :math:`n^{-1/6}` times each coordinate's
    standard deviation, axis-aligned), and its value at each sample (``[len(x2), len(x1)]``, ``[n]``). The KDE
    widens a region: where the model equals the target, recall at level L is about :math:`1 - (1 - L)^{1 + h^2}`
    (0.955 for n = 20000)."""
    dx1, dx2 = x1[1] - x1[0], x2[1] - x2[0]
    edges1 = np.concatenate([x1 - dx1 / 2, [x1[-1] + dx1 / 2]])
    edges2 = np.concatenate([x2 - dx2 / 2, [x2[-1] + dx2 / 2]])
    hist, _, _ = np.histogram2d(x[:, 1], x[:, 0], bins=(edges2, edges1))
    h = len(x) ** (-1.0 / 6.0)
    sd = x.std(axis=0)
    kde = gaussian_filter(hist, sigma=(h * sd[1] / dx2, h * sd[0] / dx1), mode="constant") / (len(x) * dx1 * dx2)
    i1 = np.clip(np.round((x[:, 0] - x1[0]) / dx1).astype(int), 0, len(x1) - 1)
    i2 = np.clip(np.round((x[:, 1] - x2[0]) / dx2).astype(int), 0, len(x2) - 1)
    return kde, kde[i2, i1]


@provider
@one_thread()
def quality_diversity(config: RunConfig, ring2d_cfg_samples: RingSamples) -> QualityDiversity:
    """Precision, recall and Frechet distance against p(x|c) by w: gauss1d's exact laws, ring2d's DDIM and DDPM
    outputs and tilted target (module docstring). One generator (``config.seed``) draws every reference sample, in
    the order gauss1d, then DDIM, then DDPM."""
    gauss = get_world("gauss1d")
    gen = torch.Generator().manual_seed(config.seed)
    exact: dict[str, dict[str, ExactPR]] = {}
    for w in ("0", "1", "3", "7"):
        exact[w] = {}
        for kind in ("ode", "sde"):
            mean, cov = exact_gaussian_cfg_law(gauss.law(1), gauss.law(None), float(w), kind, start="marginal")
            law = GaussianMixture([1.0], mean[None, :], cov[None, :, :])
            pr = precision_recall(law, gauss.law(1), n_reference=N_REFERENCE, generator=gen)
            exact[w][kind] = ExactPR(pr.precision, pr.recall, frechet_distance(law, gauss.law(1)))
    ring = get_world("ring2d")
    condition = ring2d_cfg_samples.condition
    target = ring.law(condition)
    det_target = float(torch.linalg.det(target.covariances[0]))
    gx, gy = np.meshgrid(QD_X1, QD_X2)
    pts = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], axis=1))
    p_target = torch.exp(target.log_prob(pts)).numpy().reshape(gx.shape)
    h_target = hdr_mask(p_target, LEVEL, QD_X1, QD_X2)
    sampled: dict[str, dict[str, SampledQuality]] = {}
    kdes: dict[str, dict[str, np.ndarray]] = {}
    kde_levels: dict[str, dict[str, float]] = {}
    for name, by_w in ring2d_cfg_samples.samples.items():
        sampled[name], kdes[name], kde_levels[name] = {}, {}, {}
        for w, x in by_w.items():
            pr = precision_recall(x, target, n_reference=N_REFERENCE, generator=gen)
            kde, at_samples = kde_on_grid(x.numpy())
            threshold = float(np.quantile(at_samples, 1.0 - LEVEL))
            kdes[name][w], kde_levels[name][w] = kde, threshold
            sampled[name][w] = SampledQuality(
                pr.precision, pr.precision_se, grid_mass(p_target, kde >= threshold, QD_X1, QD_X2),
                frechet_distance(x, target), float(torch.linalg.det(torch.cov(x.T))) / det_target)
    sampled["tilted"], tilted_density = {}, {}
    weights = trapezoid_weights(QD_X1, QD_X2).ravel()
    for w in ring2d_cfg_samples.ws:
        law = tilted_law(ring, rules.get("cfg", w=float(w)), {"cond": condition})
        q = normalise_on_grid(law.log_unnormalized(pts).numpy().reshape(gx.shape), QD_X1, QD_X2)
        qw = q.ravel() * weights
        mean = qw @ pts.numpy()
        centred = pts.numpy() - mean
        cov = (centred * qw[:, None]).T @ centred
        tilted_density[w] = q
        sampled["tilted"][w] = SampledQuality(
            grid_mass(q, h_target, QD_X1, QD_X2), 0.0,
            grid_mass(p_target, hdr_mask(q, LEVEL, QD_X1, QD_X2), QD_X1, QD_X2),
            frechet_distance(GaussianMixture([1.0], mean[None], cov[None]), target),
            float(np.linalg.det(cov)) / det_target)
    return QualityDiversity(exact, sampled, ring2d_cfg_samples, QD_X1, QD_X2, p_target, tilted_density, kdes,
                            kde_levels, LEVEL)
