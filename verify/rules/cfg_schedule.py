r"""Classifier-free guidance with a guidance scale that changes over the run (Wang et al. 2024)."""

from __future__ import annotations

import math

import torch

from toy_models._checks import as_scalar
from toy_models.schedules import Schedule

from . import register
from ._base import Rule, StepContext
from ._math import guidance_scale_from
from .cfg import cfg

Tensor = torch.Tensor
SHAPES = ("linear", "cosine")


@register
class CFGWeightSchedule(Rule):
    r"""CFG whose strength rises as the noise falls: the parameter-free increasing schedulers of Wang et al. 2024
    (linear and cosine, and their clamped variants), normalised so that the strength's mean over the run is the
    given :math:`\bar w`:

    .. math::  w(t) = \max\big(c,\; 2\bar w\,(1 - t)\big) \;\text{(linear)}, \qquad
               w(t) = \max\big(c,\; \bar w\,(1 + \cos \pi t)\big) \;\text{(cosine)},

    and the prediction :math:`(1 + w(t))\,y_c - w(t)\,y_\varnothing` (weights ``{cond: 1 + w(t), uncond: -w(t)}``:
    linear at every time with weights that change with t, so :meth:`weights_at` gives them and the exact laws of
    :mod:`verify.exact_law` apply unchanged).

    **Convention.** The paper schedules Ho & Salimans' strength :math:`w` (its Fig. 1 writes
    ``eps = (w+1)*eps_c - w*eps_u`` with ``w = max(1, w0*2*t/T)``), so give the mean as ``w`` or as
    ``guidance_scale`` :math:`= 1 + \bar w`; the clamp ``floor`` :math:`c` acts on :math:`w` too (Fig. 1 uses
    :math:`c = 1`; default 0, which only keeps :math:`w \ge 0`). Some re-implementations schedule the diffusers
    scale :math:`g = 1 + w` instead (``g0 * 2 * (1 - step/steps)``, which drops below the conditional prediction
    early in the run): a different rule. **Time.** The paper writes its schedules in the sampler's step counter
    (:math:`t/T` from 0 at the start to 1); here ``t`` is the schedule's time in [0, 1] (1 = noise), so the
    schedule does not depend on the step grid and equals the paper's on a grid uniform in t."""

    name = "cfg_schedule"
    reference = ("Wang et al. 2024, 'Analysis of Classifier-Free Guidance Weight Schedulers' (TMLR), Fig. 1 and the "
                 "linear and cosine heuristic schedulers")
    spaces = ("eps", "x0", "v", "velocity")

    def __init__(self, *, w: float | None = None, guidance_scale: float | None = None, shape: str = "linear",
                 floor: float = 0.0, space: str = "eps"):
        self.mean_w = guidance_scale_from(w=w, guidance_scale=guidance_scale) - 1.0
        if not isinstance(shape, str) or shape not in SHAPES:
            raise ValueError(f"shape: must be one of {SHAPES}, got {shape!r}")
        self.shape, self.floor = shape, as_scalar(floor, "floor")
        self._set_space(space)
        self.branches = ("uncond", "cond")
        self.params = {"w": self.mean_w, "shape": shape, "floor": self.floor}

    @classmethod
    def examples(cls, world) -> list[dict]:
        return [{"w": 3.0, "shape": "linear"}, {"w": 3.0, "shape": "cosine", "floor": 1.0}]

    def strength_at(self, t: float) -> float:
        """:math:`w(t)`."""
        ramp = 2.0 * (1.0 - t) if self.shape == "linear" else 1.0 + math.cos(math.pi * t)
        return max(self.floor, self.mean_w * ramp)

    def weights_at(self, t: float, schedule: Schedule) -> dict[str, float]:
        w = self.strength_at(t)
        return {"cond": 1.0 + w, "uncond": -w}

    def breakpoints(self, schedule: Schedule) -> tuple[float, ...]:
        """Where the floor starts to bind: the weights have a kink there, so an ODE integrator restarts."""
        if self.mean_w <= 0 or not 0 < self.floor / self.mean_w < 2:
            return ()
        ratio = self.floor / self.mean_w
        t = 1.0 - ratio / 2.0 if self.shape == "linear" else math.acos(ratio - 1.0) / math.pi
        return (t,) if 0.0 < t < 1.0 else ()

    def combine(self, preds: dict[str, Tensor], ctx: StepContext) -> Tensor:
        return cfg(preds["uncond"], preds["cond"], w=self.strength_at(ctx.t))
