r"""CFG-Zero* against CFG when the unconditional velocity is inaccurate, paired pathwise (read by L-CFG-ZERO-STAR; Fan,
Zheng, Yeh & Liu 2025, arXiv 2503.18886, sections 4.1-4.2).

On the ``rectified-flow`` schedule (flow matching), ring2d class 0, Euler on the probability-flow ODE (50 steps from
the noised conditional at t = 0.999 to 0): the **target** is the law CFG gives with the exact model at the same
``guidance_scale`` (what the guidance is meant to produce). The model's unconditional branch is made inaccurate
with :class:`~verify.evidence.shared.PerturbedDenoiser` (a known smooth eps error of relative size
``relative_error``, applied to the null condition only, :class:`UncondPerturbed`); ``relative_error = 0`` is the
exact model, the control. Every rule starts from the same points as the target, so each sample has a partner in the
target and the **pathwise error** :math:`e_i = \lVert x_i - x_i^{target}\rVert^2` is a per-sample quantity; its
mean (with its standard error) bounds the squared Wasserstein-2 distance to the target law from above (the paired
points are a coupling), and so the Frechet distance (Gelbrich's bound); rules are compared by paired two-sided
z-tests of :math:`e^{A}_i - e^{B}_i`:

* (a) optimised scale :math:`s^* = \langle v_c, v_u\rangle / \lVert v_u\rVert^2`: CFG against CFG-Zero* without
  zero-init;
* (b) zero-init: CFG-Zero* with zero-init (``ZERO_INIT_STEPS`` steps, the paper's ~4 % of 50) against without.

This provider computes the runs and the comparisons' p-values; the claim applies Holm's correction over the family
(both claims, every error level and scale) at ``ALPHA`` and reads a rejected comparison as "helps" or "hurts" by the
sign of the mean difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from scipy import stats

from toy_models import AnalyticDenoiser, get_schedule, get_world
from toy_models.denoiser import WrappedDenoiser
from verify import rules
from verify.config import RunConfig
from verify.metrics import frechet_distance, two_sided_p
from verify.samplers import euler, time_grid

from . import provider
from .shared import PerturbedDenoiser, one_thread

__all__ = ["ALPHA", "ERRORS", "ZERO_INIT_STEPS", "UncondPerturbed", "PairedComparison", "ZeroStarRun",
           "ZeroStarCell", "CFGZeroStarCorrection", "paired", "cfg_zero_star_correction"]

ALPHA = 0.01  # family-wise false-alarm rate of the claim's Holm procedure; also the level of each stated power
SCHEDULE = "rectified-flow"
STEPS, T_START = 50, 0.999
ZERO_INIT_STEPS = 2
CLASS = 0
ERRORS = (0.0, 0.02, 0.1, 0.3, 1.0)
#: the three runs per cell: CFG, CFG-Zero* without zero-init, CFG-Zero* with ZERO_INIT_STEPS zero-init steps
RUNS = ("cfg", "cfg_zero_star", "cfg_zero_star_zero_init")


class UncondPerturbed(WrappedDenoiser):
    """The exact model with an inaccurate unconditional branch: the null condition's eps comes from
    :class:`~verify.evidence.shared.PerturbedDenoiser`, every other condition's is exact."""

    def __init__(self, denoiser: AnalyticDenoiser, relative_error: float, seed: int = 0):
        self.denoiser = denoiser
        self.perturbed = PerturbedDenoiser(denoiser, relative_error, seed)

    def eps(self, x, t, condition=None):
        return self.perturbed.eps(x, t, None) if condition is None else self.denoiser.eps(x, t, condition)


@dataclass(frozen=True)
class PairedComparison:
    """Mean of ``e_a - e_b`` over the paired paths, its standard error, the two-sided p-value and the power at level
    ``ALPHA`` against a difference of 10 % of the larger mean error."""

    mean_difference: float
    se: float
    p: float
    power_against_10pct_of_larger_error: float


def paired(e_a: torch.Tensor, e_b: torch.Tensor) -> PairedComparison:
    """The paired two-sided z-test of ``e_a - e_b`` (:class:`PairedComparison`). A run that diverged (error inf)
    loses to one that did not, with p = 0 (no sampling question: the sampler refused the state)."""
    fin_a, fin_b = bool(torch.isfinite(e_a).all()), bool(torch.isfinite(e_b).all())
    if not (fin_a and fin_b):
        mean = 0.0 if fin_a == fin_b else (math.inf if not fin_a else -math.inf)
        return PairedComparison(mean, math.nan, 0.0 if fin_a != fin_b else 1.0, math.nan)
    d = e_a - e_b
    n = d.numel()
    mean, se = float(d.mean()), float(d.std() / math.sqrt(n))
    p = float(two_sided_p(mean / se)) if se > 0 else (0.0 if mean != 0 else 1.0)
    effect = 0.1 * max(float(e_a.mean()), float(e_b.mean()))
    z = stats.norm.isf(ALPHA / 2)
    power = 1.0 if se == 0 else float(stats.norm.sf(z - effect / se) + stats.norm.cdf(-z - effect / se))
    return PairedComparison(mean, se, p, power)


@dataclass(frozen=True)
class ZeroStarRun:
    """One rule's run: the mean pathwise squared error to the target and its SE, the Frechet distances to the
    target samples and to p(x|c), the sample mean; or ``diverged`` (the sampler's refusal) and nothing else."""

    mean_pathwise_squared_error: float | None = None
    se: float | None = None
    frechet_to_target: float | None = None
    frechet_to_class_law: float | None = None
    sample_mean: tuple[float, ...] | None = None
    diverged: str | None = None


@dataclass(frozen=True)
class ZeroStarCell:
    """One guidance scale and unconditional error: the three runs (keys :data:`RUNS`) and the two comparisons,
    (a) CFG-Zero* minus CFG and (b) zero-init minus none (negative: the first is closer to the target)."""

    guidance_scale: float
    relative_error: float
    runs: dict[str, ZeroStarRun]
    a_cfg_zero_star_minus_cfg: PairedComparison
    b_zero_init_minus_none: PairedComparison


@dataclass(frozen=True)
class CFGZeroStarCorrection:
    cells: tuple[ZeroStarCell, ...]  # scale-major, errors in ERRORS order
    scales: tuple[float, ...]
    n: int

    def cell(self, guidance_scale: float, relative_error: float) -> ZeroStarCell:
        return next(c for c in self.cells if (c.guidance_scale, c.relative_error) == (guidance_scale,
                                                                                        relative_error))


@provider
@one_thread()
def cfg_zero_star_correction(config: RunConfig) -> CFGZeroStarCorrection:
    """CFG, CFG-Zero* and CFG-Zero* with zero-init against the exact CFG law, per scale and unconditional error
    (see the module docstring)."""
    world = get_world("ring2d")
    exact = AnalyticDenoiser(world, SCHEDULE)
    gen = torch.Generator().manual_seed(config.seed + 2503)
    n = 2000 if config.quick else 8000
    scales = (3.0,) if config.quick else (3.0, 5.0)
    a, s = (float(v) for v in get_schedule(SCHEDULE).alpha_sigma(T_START))
    x1 = world.law(CLASS).noised(a, s).sample(n, gen)
    ts = time_grid(STEPS, t_start=T_START, t_end=0.0)

    cells = []
    for g in scales:
        target = euler(rules.get("cfg", guidance_scale=g).guide(exact, CLASS), x1, ts)
        for err in ERRORS:
            model = exact if err == 0.0 else UncondPerturbed(exact, err, seed=config.seed)
            chosen = dict(zip(RUNS, (rules.get("cfg", guidance_scale=g),
                                     rules.get("cfg_zero_star", guidance_scale=g, use_zero_init=False),
                                     rules.get("cfg_zero_star", guidance_scale=g, zero_init_steps=ZERO_INIT_STEPS)),
                              strict=True))
            errors, runs = {}, {}
            for label, rule in chosen.items():
                try:
                    x = euler(rule.guide(model, CLASS), x1, ts)
                except ValueError as refused:  # the sampler refuses a state that overflows: the run diverged
                    errors[label] = torch.full((n,), math.inf, dtype=x1.dtype)
                    runs[label] = ZeroStarRun(diverged=str(refused))
                    continue
                e = ((x - target) ** 2).sum(1)
                errors[label] = e
                finite = bool(torch.isfinite(x).all())
                runs[label] = ZeroStarRun(
                    float(e.mean()), float(e.std() / math.sqrt(n)),
                    frechet_distance(x, target) if finite else math.inf,
                    frechet_distance(x, world.law(CLASS)) if finite else math.inf, tuple(x.mean(0).tolist()))
            cells.append(ZeroStarCell(g, err, runs, paired(errors["cfg_zero_star"], errors["cfg"]),
                                      paired(errors["cfg_zero_star_zero_init"], errors["cfg_zero_star"])))
    return CFGZeroStarCorrection(tuple(cells), scales, n)
