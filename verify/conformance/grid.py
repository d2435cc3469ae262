r"""The audit's inputs: exact branch predictions of analytic worlds, chosen so that no bug hides.

* **Worlds.** ``ring2d`` (d = 2, eight classes) and ``highdim`` (d = 64, ten classes, each a two-component mixture;
  64 = 4 x 4 x 4 = 16 x 4, so its points are also passed as ``[B, 4, 4, 4]`` images and ``[B, 16, 4]`` packed
  latents). Branch conditions: ``uncond`` the null condition, ``cond`` (and ``cond_1``) class 1, ``negative`` (and
  ``cond_2``) class 3, ``cond_k`` class 2k - 1; ``weak`` the same condition as ``cond`` under the world with every
  covariance inflated 1.5x (:func:`toy_models.world.inflated`: an underfit model, autoguidance's weak network).
* **Noise levels** (those of :func:`verify.audit.audit_cfg`): vp-linear at t = 0.02, 0.3, 0.9 (low, middle, high
  noise; alpha ~ sigma but not equal at 0.3, so an alpha/sigma swap shows) and edm at t = 0.5, 0.9 (alpha = 1,
  sigma = 2.5 and 45: every VP-only assumption is false there).
* **Points.** 16 "bulk" points, half from the noised conditional law and half from the noised unconditional law (one
  seeded ``torch.Generator``), and 16 "tail" points, the bulk pushed 4x further from the unconditional mean (large
  differences between the branches: norm caps bind, projections tilt).
* **Strengths** (diffusers' ``guidance_scale`` g, Ho & Salimans' w = g - 1): 0 and 1 (the endpoints: exactly the
  unconditional and conditional branch for CFG-like rules), then 0.3 (inside (0, 1), negative w), 1.5, 3.3 (not
  float32 numbers, so a scale silently rounded to float32 shows) and 7.5 (diffusers' default), off every endpoint,
  where each convention mix-up changes the answer.

Everything here is float64 and exact to the rounding of :class:`~toy_models.AnalyticDenoiser`.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from functools import lru_cache

import torch

from toy_models import AnalyticDenoiser, get_world
from toy_models.schedules import Schedule
from toy_models.world import inflated
from verify.audit import NOISE_LEVELS
from verify.rules import StepContext

__all__ = ["WORLDS", "NOISE_LEVELS", "STRENGTHS", "SHAPES", "Case", "conditions_for", "value_cases", "run_cases",
           "to_space", "from_space", "context"]

Tensor = torch.Tensor
F64 = torch.float64

WORLDS: tuple[str, ...] = ("ring2d", "highdim")
#: diffusers guidance scales: the two endpoints first, then four off them
STRENGTHS: tuple[float, ...] = (0.0, 1.0, 0.3, 1.5, 3.3, 7.5)
#: the shapes real models use, for the 64 features of ``highdim``: label -> per-sample shape
SHAPES: dict[str, tuple[int, ...]] = {"[N, d]": (64,), "[B, C, H, W]": (4, 4, 4), "[B, L, D]": (16, 4)}
N_POINTS = 16
TAIL_FACTOR = 4.0
WEAK_INFLATION = 1.5
#: a sampling run for the state checks: this many steps from high to low noise on vp-linear
RUN_TIMES: tuple[float, ...] = (0.9, 0.75, 0.6, 0.45, 0.3, 0.15)


def conditions_for(branches: tuple[str, ...]) -> dict[str, Hashable]:
    """The condition of every branch (``weak`` reads ``cond``'s, under the inflated world)."""
    out: dict[str, Hashable] = {}
    for branch in branches:
        if branch == "uncond":
            out[branch] = None
        elif branch in ("cond", "weak", "cond_1"):
            out[branch] = 1
        elif branch == "negative":
            out[branch] = 3
        elif branch.startswith("cond_"):
            out[branch] = 2 * int(branch[5:]) - 1
        else:  # pragma: no cover - rules validate their branch names
            raise ValueError(f"branches: unknown branch {branch!r}")
    return out


@dataclass(frozen=True)
class Case:
    """One set of points at one noise level: the exact eps of every branch there (float64, ``[N, d]``)."""

    world: str
    schedule_name: str
    t: float
    region: str
    alpha: float
    sigma: float
    schedule: Schedule
    x: Tensor
    eps: dict[str, Tensor]

    @property
    def label(self) -> str:
        return f"{self.world} {self.schedule_name} t={self.t:.2f} {self.region}"


def context(case: Case, x: Tensor | None = None) -> StepContext:
    return StepContext(case.x if x is None else x, case.t, case.alpha, case.sigma, case.schedule, {})


def to_space(case: Case, eps: dict[str, Tensor], space: str, x: Tensor | None = None) -> dict[str, Tensor]:
    ctx = context(case, x)
    return {b: ctx.to_space(e, space) for b, e in eps.items()}


def from_space(case: Case, pred: Tensor, space: str, x: Tensor | None = None) -> Tensor:
    return context(case, x).from_space(pred, space)


def _branch_eps(world_name: str, schedule: str, t: float, x: Tensor, branches: tuple[str, ...]) -> dict[str, Tensor]:
    world = get_world(world_name)
    den = AnalyticDenoiser(world, schedule)
    conditions = conditions_for(branches)
    eps = {}
    for branch in branches:
        model = AnalyticDenoiser(inflated(world, WEAK_INFLATION), schedule) if branch == "weak" else den
        eps[branch] = model.eps(x, t, conditions[branch])
        if not bool(torch.isfinite(eps[branch]).all()):  # pragma: no cover - the worlds are well inside range
            raise RuntimeError(f"audit grid: non-finite analytic eps in {world_name} {schedule} t={t}")
    return eps


def _points(world_name: str, schedule: str, t: float, branches: tuple[str, ...], generator: torch.Generator,
            n: int) -> Tensor:
    den = AnalyticDenoiser(get_world(world_name), schedule)
    conditions = conditions_for(branches)
    first = next((conditions[b] for b in branches if conditions[b] is not None), None)
    law_c, law_u = den.noised_law(t, first), den.noised_law(t, None)
    return torch.cat([law_c.sample(n // 2, generator), law_u.sample(n - n // 2, generator)])


@lru_cache(maxsize=8)
def value_cases(branches: tuple[str, ...], seed: int) -> tuple[Case, ...]:
    """Every world x noise level x region for a rule reading ``branches`` (never handed out: calls get copies)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for world_name in WORLDS:
        for schedule, t in NOISE_LEVELS:
            den = AnalyticDenoiser(get_world(world_name), schedule)
            alpha, sigma = (float(v) for v in den.schedule.alpha_sigma(t))
            bulk = _points(world_name, schedule, t, branches, generator, N_POINTS)
            centre = den.noised_law(t, None).mean()
            tails = centre + TAIL_FACTOR * (bulk - centre)
            for region, x in (("bulk", bulk), ("tails", tails)):
                out.append(Case(world_name, schedule, t, region, alpha, sigma, den.schedule, x,
                                _branch_eps(world_name, schedule, t, x, branches)))
    return tuple(out)


@lru_cache(maxsize=8)
def run_cases(branches: tuple[str, ...], seed: int, world_name: str = "highdim", n: int = 8) -> tuple[Case, ...]:
    """One sampling run's evaluations: fresh points from the noised laws at each of :data:`RUN_TIMES`."""
    generator = torch.Generator().manual_seed(seed + 7919)
    out = []
    for t in RUN_TIMES:
        den = AnalyticDenoiser(get_world(world_name), "vp-linear")
        alpha, sigma = (float(v) for v in den.schedule.alpha_sigma(t))
        x = _points(world_name, "vp-linear", t, branches, generator, n)
        out.append(Case(world_name, "vp-linear", t, "run", alpha, sigma, den.schedule, x,
                        _branch_eps(world_name, "vp-linear", t, x, branches)))
    return tuple(out)
