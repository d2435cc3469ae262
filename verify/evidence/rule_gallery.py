r"""A gallery of every registered guidance rule on one world: what each does to the samples of one class (drawn by
``figures/rule_gallery.png``; no record reads it).

Every rule of :mod:`verify.rules` (each built at one common strength where it takes one, else with its first
:meth:`~verify.rules.Rule.examples` parameters) guides the exact denoiser of ``ring2d`` towards class 0, sampled by
DDIM from **the same** starting points (the noised class law at t = 1) and grid; the weak model of rules that need
one is :func:`~verify.evidence.rule_autoguidance.inflated` (every covariance x1.5: an underfit model of the same
world). Per rule, against the class law :math:`p(x \mid c)`:

* the fraction of samples inside its 99 % highest-density region :math:`\{x: \log p(x|c) \ge \tau\}`, :math:`\tau`
  the 1 % quantile of :math:`\log p(Y|c)`, :math:`Y \sim p(\cdot|c)` (binomial standard error, floored at one
  count so that a fraction of 0 or 1 still has one);
* the mean displacement from the class mean along the class direction :math:`\mu_c/\lVert\mu_c\rVert` (the overshoot
  of Chidambaram et al. 2024), with its standard error;
* the spread :math:`\det(\mathrm{Cov})^{1/4}` relative to :math:`p(x|c)`'s.

A new rule appears in the gallery with no edit here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from toy_models import AnalyticDenoiser, World, get_schedule, get_world
from verify import rules
from verify.config import RunConfig
from verify.samplers import ddim, time_grid

from . import provider
from .rule_autoguidance import inflated
from .shared import one_thread

__all__ = ["CONDITIONS", "GalleryEntry", "RuleGallery", "gallery", "rule_gallery"]

#: the branch conditions of the gallery on ring2d: class 0 at (3, 0), its neighbour 1 as the negative prompt and
#: second composed condition
CONDITIONS = {"uncond": None, "cond": 0, "negative": 1, "cond_1": 0, "cond_2": 1}
GUIDANCE_SCALE = 6.0
WEAK_INFLATION = 1.5


@dataclass(frozen=True)
class GalleryEntry:
    """One rule's samples [n, 2] and summaries: its description, the fraction inside the 99 % region of p(x|c) and
    its SE, the overshoot along the class direction and its SE, the spread relative to p(x|c)'s."""

    rule: str
    samples: np.ndarray
    in_hdr99: float
    in_hdr99_se: float
    overshoot: float
    overshoot_se: float
    spread_ratio: float


@dataclass(frozen=True)
class RuleGallery:
    """``entries``: ``"unguided"`` (the conditional model alone) and every registered rule by name; ``hdr99_level``:
    log p(x|c) on the boundary of its 99 % region."""

    entries: dict[str, GalleryEntry]
    hdr99_level: float
    guidance_scale: float
    n: int
    steps: int

    @property
    def order(self) -> list[str]:
        """The unguided model and CFG first, then the other rules by name."""
        return ["unguided", "cfg", *sorted(k for k in self.entries if k not in ("unguided", "cfg"))]


def _build(name: str, world: World, guidance_scale: float) -> rules.Rule:
    """The rule with its first example's parameters, its strength (``guidance_scale``, ``w`` or a classifier's
    ``scale``, which is CFG's ``guidance_scale`` for the exact classifier) set to the common ``guidance_scale``."""
    cls = rules.rule_class(name)
    params = dict(cls.examples(world)[0])
    if "scale" in params:
        params["scale"] = guidance_scale
    elif "guidance_scale" in params or "w" in params:
        params.pop("w", None)
        params["guidance_scale"] = guidance_scale
    return cls(**params)


@one_thread()
def gallery(*, guidance_scale: float = GUIDANCE_SCALE, n: int = 2000, steps: int = 50, seed: int = 0,
            weak_inflation: float = WEAK_INFLATION) -> RuleGallery:
    """Every registered rule on ring2d class 0 from the noised class law at t = 1, DDIM ``steps`` uniform steps on
    vp-linear, every rule from the same ``n`` points (see the module docstring)."""
    world = get_world("ring2d")
    schedule = get_schedule("vp-linear")
    den = AnalyticDenoiser(world, schedule)
    weak = AnalyticDenoiser(inflated(world, weak_inflation), schedule)  # an underfit model of the same world
    target = world.law(CONDITIONS["cond"])
    gen = torch.Generator().manual_seed(seed)
    a1, s1 = (float(v) for v in schedule.alpha_sigma(1.0))
    start = target.noised(a1, s1).sample(n, gen)  # [n, 2], shared by every rule
    grid = time_grid(steps)
    reference = target.sample(50_000, gen)
    level = float(torch.quantile(target.log_prob(reference), 0.01))  # the 99 % HDR of p(x|c): log p >= level
    direction = target.mean() / target.mean().norm()  # [2]: the class sits along this direction
    centre = float(target.mean() @ direction)
    ref_spread = float(torch.linalg.det(target.covariance()) ** 0.25)

    def summary(x: torch.Tensor, label: str) -> GalleryEntry:
        inside = (target.log_prob(x) >= level).double()
        radial = x @ direction - centre  # [n]
        frac = float(inside.mean())
        spread = float(torch.linalg.det(torch.cov(x.T)) ** 0.25)
        return GalleryEntry(label, x.numpy(), frac, math.sqrt(max(frac * (1 - frac), 1.0 / n) / n),
                            float(radial.mean()), float(radial.std() / math.sqrt(n)), spread / ref_spread)

    entries = {"unguided": summary(ddim(den, start, grid, condition=CONDITIONS["cond"]),
                                   "conditional model, no guidance")}
    for name in rules.names():
        rule = _build(name, world, guidance_scale)
        conditions = {key: CONDITIONS[key] for key in rule.condition_keys}
        guided = rule.guide(den, conditions, weak=weak if "weak" in rule.branches else None)
        entries[name] = summary(ddim(guided, start, grid), rule.describe())
    return RuleGallery(entries, level, guidance_scale, n, steps)


@provider
def rule_gallery(config: RunConfig) -> RuleGallery:
    """The gallery at strength 6: 2000 starts and 50 DDIM steps (quick: 400 and 20), seeded by the run's seed."""
    return gallery(n=400 if config.quick else 2000, steps=20 if config.quick else 50, seed=config.seed)
