r"""Guidance in a limited interval of noise levels (Kynkaanniemi et al. 2024, 'Applying guidance in a limited
interval improves sample and distribution quality', eq. 6), against full guidance and none (read by L-INTERVAL).

ring2d class 0, DDIM 100 steps from the noised conditional at t = 1: no guidance, CFG w = 3 throughout, and CFG
w = 3 only for noise levels :math:`\sigma/\alpha` in :math:`(\sigma_{lo}, \sigma_{hi}]` (the registered ``interval``
rule, in the paper's EDM noise level). The interval is :data:`INTERVAL_SIGMA_T` in vp-linear's :math:`\sigma_t`,
converted by :func:`interval_noise_to_signal`. Precision (exact density of p(x|c)), Frechet distance to p(x|c), and
the generalised variance ratio :math:`\det\mathrm{Cov}(x)/\det\Sigma_c`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from toy_models import AnalyticDenoiser, get_world
from verify import rules
from verify.config import RunConfig
from verify.metrics import frechet_distance, precision_recall

from . import provider
from .laws import cfg, sample_from_marginal
from .shared import one_thread

__all__ = ["INTERVAL_SIGMA_T", "interval_noise_to_signal", "IntervalRow", "IntervalGuidance", "interval_guidance"]

#: L-INTERVAL's guidance interval, in vp-linear's sigma_t (closed)
INTERVAL_SIGMA_T = (0.4, 0.95)


def interval_noise_to_signal(sigma_t: float) -> float:
    r"""A vp-linear noise level :math:`\sigma_t` as the EDM noise level of Kynkaanniemi et al. (the unit of the
    ``interval`` rule): :math:`\sigma_t/\alpha_t = \sigma_t/\sqrt{1 - \sigma_t^2}` (variance preserving:
    :math:`\alpha_t^2 + \sigma_t^2 = 1`); increasing in :math:`\sigma_t`, so an interval maps to an interval."""
    if not isinstance(sigma_t, (int, float)) or not 0.0 <= sigma_t < 1.0:
        raise ValueError(f"sigma_t: expected a number in [0, 1), got {sigma_t!r}")
    return sigma_t / math.sqrt(1.0 - sigma_t * sigma_t)


@dataclass(frozen=True)
class IntervalRow:
    precision: float
    frechet_to_p_x_given_c: float
    generalised_variance_ratio: float


@dataclass(frozen=True)
class IntervalGuidance:
    """``unguided``, ``full`` (w = 3 throughout) and ``interval`` (w = 3 for sigma/alpha in (lo, hi])."""

    unguided: IntervalRow
    full: IntervalRow
    interval: IntervalRow
    sigma_over_alpha: tuple[float, float]
    sigma_t: tuple[float, float]
    w: float
    n: int
    steps: int


@provider
@one_thread()
def interval_guidance(config: RunConfig) -> IntervalGuidance:
    """The three runs of the module docstring: 20000 outputs each (quick 4000), one seed (``config.seed``) for all
    three (the same start points); precision thresholds from a generator seeded ``config.seed + 7``."""
    world = get_world("ring2d")
    den = AnalyticDenoiser(world)
    n, steps, w = (4000 if config.quick else 20000), 100, 3.0
    gen = torch.Generator().manual_seed(config.seed + 7)
    lo, hi = (interval_noise_to_signal(v) for v in INTERVAL_SIGMA_T)
    limited = rules.get("interval", rule=rules.get("cfg", w=w), sigma_lo=lo, sigma_hi=hi)
    det_target = torch.linalg.det(world.law(0).covariances[0])
    rows = []
    for model in (cfg(den, 0, 0.0), cfg(den, 0, w), limited.guide(den, {"cond": 0})):
        x = sample_from_marginal(model, world.law(0), n, steps, config.seed)
        pr = precision_recall(x, world.law(0), n_reference=20000, generator=gen)
        rows.append(IntervalRow(pr.precision, frechet_distance(x, world.law(0)),
                                float(torch.linalg.det(torch.cov(x.T)) / det_target)))
    return IntervalGuidance(*rows, (lo, hi), INTERVAL_SIGMA_T, w, n, steps)
