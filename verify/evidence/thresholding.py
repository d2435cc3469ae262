r"""Guided x0-predictions against the data range, and dynamic thresholding's effect on the sampled law (read by
S0-THRESHOLDING and S1-SCALE-TABLE).

ring2d class 0, DDIM 50 steps from the noised conditional at t = 1: at every step the fraction of points whose
x0-prediction :math:`\hat x_0 = (x_t - \sigma_t\hat\varepsilon)/\alpha_t` (the sampler's own guided
:math:`\hat\varepsilon`, at the state it stepped from) leaves the data range in some coordinate. The data range is
the central 99.9 % interval of :math:`|x_i|` under p(x), from 200000 draws (ring2d: about 3.9). Dynamic thresholding
(Saharia et al. 2022, Imagen, section 2.3; the registered ``dynamic_threshold`` rule, percentile 0.995) at w = 15
against none: the final sampled mean and Frechet distance to p(x|c) with and without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from toy_models import AnalyticDenoiser, get_world
from verify import rules
from verify.config import RunConfig
from verify.metrics import frechet_distance
from verify.samplers import sample, time_grid

from . import provider
from .laws import cfg, noised_at_t1, sample_from_marginal
from .shared import first_sampler_by_limit, one_thread

__all__ = ["THRESHOLD_WS", "OutOfRange", "DynamicThresholding", "Thresholding", "x0_out_of_range_fractions",
           "guided_x0_path", "thresholding"]

THRESHOLD_WS = (0.0, 1.0, 3.0, 7.0, 10.0, 15.0, 20.0)


@dataclass(frozen=True)
class OutOfRange:
    """Fraction of x0-predictions out of the data range: its mean over the steps and its largest value."""

    mean_fraction_of_x0_predictions_out_of_range: float
    max_over_steps: float


@dataclass(frozen=True)
class DynamicThresholding:
    """The final sampled law at w = 15 without and with dynamic thresholding."""

    mean_without: tuple[float, ...]
    mean_with: tuple[float, ...]
    frechet_to_p_x_given_c_without: float
    frechet_to_p_x_given_c_with: float


@dataclass(frozen=True)
class Thresholding:
    """``x0_out_of_range_by_w[w]`` (w as ``"0"``, ``"1"``, ...), the data range, and dynamic thresholding at
    w = 15."""

    data_range: float
    x0_out_of_range_by_w: dict[str, OutOfRange]
    dynamic_thresholding_w15: DynamicThresholding
    n: int
    steps: int

    def fraction(self, w: str) -> float:
        return self.x0_out_of_range_by_w[w].mean_fraction_of_x0_predictions_out_of_range


def guided_x0_path(guided, x_start: torch.Tensor, timesteps: torch.Tensor,
                   reduce: Callable[[torch.Tensor], float]) -> tuple[list[float], torch.Tensor]:
    r"""DDIM on ``guided`` from ``x_start`` over ``timesteps``, measured through the sampler's callback: per step,
    ``reduce`` of the x0-predictions :math:`(x_t - \sigma_t\hat\varepsilon)/\alpha_t` (the sampler's own
    :math:`\hat\varepsilon`, at the state it stepped from). Returns the per-step values and the final samples. A
    measurement, not a rule: the sampled path is DDIM's on ``guided``, unchanged."""
    schedule = guided.schedule
    values: list[float] = []
    stepped_from = [x_start]

    def measure(i: int, t: float, x: torch.Tensor, eps: torch.Tensor) -> None:
        a, s = (float(v) for v in schedule.alpha_sigma(float(timesteps[i])))
        values.append(reduce((stepped_from[0] - s * eps) / a))
        stepped_from[0] = x

    out = sample(first_sampler_by_limit()["ode"], guided, x_start, timesteps, callback=measure)
    return values, out


def x0_out_of_range_fractions(guided, x_start: torch.Tensor, timesteps: torch.Tensor, limit: float) -> list[float]:
    """:func:`guided_x0_path` measuring, per step, the fraction of points whose x0-prediction leaves
    ``[-limit, limit]`` in some coordinate."""
    return guided_x0_path(guided, x_start, timesteps,
                          lambda x0: float((x0.abs() > limit).any(dim=1).double().mean()))[0]


@provider
@one_thread()
def thresholding(config: RunConfig) -> Thresholding:
    """Out-of-range x0-predictions by w (10000 paths, quick 2000; 50 DDIM steps) and dynamic thresholding's bias
    at w = 15 (module docstring). One generator (``config.seed``) draws the data, then each w's start points."""
    world = get_world("ring2d")
    den = AnalyticDenoiser(world)
    gen = torch.Generator().manual_seed(config.seed)
    data = world.law(None).sample(200_000, gen)
    limit = float(torch.quantile(data.abs().flatten(), 0.999))
    n, steps = (2000 if config.quick else 10000), 50
    fractions = {}
    for w in THRESHOLD_WS:
        by_step = x0_out_of_range_fractions(cfg(den, 0, w), noised_at_t1(world.law(0), n, gen), time_grid(steps),
                                            limit)
        fractions[f"{w:g}"] = OutOfRange(sum(by_step) / len(by_step), max(by_step))
    thresholded = rules.get("dynamic_threshold", w=15.0, limit=limit, percentile=0.995).guide(den, {"cond": 0})
    plain = sample_from_marginal(cfg(den, 0, 15.0), world.law(0), n, steps, config.seed)
    clipped = sample_from_marginal(thresholded, world.law(0), n, steps, config.seed)
    dyn = DynamicThresholding(tuple(plain.mean(0).tolist()), tuple(clipped.mean(0).tolist()),
                              frechet_distance(plain, world.law(0)), frechet_distance(clipped, world.law(0)))
    return Thresholding(limit, fractions, dyn, n, steps)
