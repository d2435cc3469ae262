r"""CFG-Zero* (Fan, Zheng, Yeh & Liu 2025, "CFG-Zero*: Improved Classifier-Free Guidance for Flow Matching Models",
arXiv 2503.18886): the optimised scale and zero-init."""

from __future__ import annotations

import dataclasses
import numbers

import torch

from toy_models._pow2 import ldexp

from . import register
from ._base import GuidanceState, Rule, StepContext
from ._math import guidance_scale_from, predictions, row_dot
from .apg import unit_rows

Tensor = torch.Tensor


def optimized_scale(v_cond: Tensor, v_uncond: Tensor) -> Tensor:
    r""":math:`s^* = \langle v_c, v_\varnothing\rangle / \lVert v_\varnothing\rVert^2` per sample (``[N, 1, ...]``),
    the least-squares scale of :math:`v_\varnothing` towards :math:`v_c`; 0 where :math:`v_\varnothing = 0` (any
    value gives the same guided prediction there, see :class:`CFGZeroStar`). Formed as
    :math:`\langle v_c, \hat u\rangle / \lVert v_\varnothing\rVert` with :math:`\hat u` the unit vector
    (:func:`~verify.rules.apg.unit_rows`), so no squared norm is formed."""
    v_cond, v_uncond = predictions({"v_cond": v_cond, "v_uncond": v_uncond})
    unit, norm = unit_rows(v_uncond)
    return row_dot(v_cond, unit) / torch.where(norm > 0, norm, torch.ones_like(norm))


def cfg_zero_star(v_uncond: Tensor, v_cond: Tensor, guidance_scale: float) -> Tensor:
    r"""The guided prediction with the optimised scale, :math:`(1 - g)\,s^* v_\varnothing + g\,v_c`, computed as
    :math:`g\,v_c + (1 - g)\,P v_c` with :math:`P v_c = s^* v_\varnothing = \langle v_c, \hat u\rangle\hat u` the
    projection of :math:`v_c` on the line of :math:`v_\varnothing` (bounded by :math:`\lVert v_c\rVert` however small
    :math:`v_\varnothing` is; 0 where :math:`v_\varnothing = 0`). Positively homogeneous of degree 1 in the pair, so
    where an intermediate overflows each row is evaluated scaled by a power of two (exact) and scaled back; a result
    that itself overflows is refused naming ``v_cond``."""
    v_uncond, v_cond = predictions({"v_uncond": v_uncond, "v_cond": v_cond})
    g = float(guidance_scale)

    def formula(u: Tensor, c: Tensor) -> Tensor:
        unit, _ = unit_rows(u)
        return g * c + (1.0 - g) * (row_dot(c, unit) * unit)

    out = formula(v_uncond, v_cond)
    if bool(torch.isfinite(out.detach()).all()):
        return out
    flat = torch.maximum(v_uncond.detach().abs(), v_cond.detach().abs()).reshape(v_cond.shape[0], -1)
    exponent = torch.frexp(flat.amax(dim=1)).exponent.reshape(-1, *([1] * (v_cond.ndim - 1)))
    out = ldexp(formula(ldexp(v_uncond, -exponent), ldexp(v_cond, -exponent)), exponent)
    if not bool(torch.isfinite(out.detach()).all()):
        raise ValueError(f"v_cond: the CFG-Zero* prediction overflows {out.dtype}")
    return out


@register
class CFGZeroStar(Rule):
    r"""CFG-Zero* (Fan et al. 2025, section 4): classifier-free guidance with an optimised scale on the unconditional
    prediction, and zero-init of the first steps. Per sample, in the rule's space (the paper's: the velocity
    :math:`v`),

    .. math::  s^* = \frac{\langle v_c, v_\varnothing\rangle}{\lVert v_\varnothing\rVert^2}, \qquad
               \tilde v = (1 - g)\, s^* v_\varnothing + g\, v_c = s^* v_\varnothing + g\,(v_c - s^* v_\varnothing),

    the inner product and norm over every feature axis of one sample. :math:`g` is the paper's guidance strength
    :math:`\omega` in :math:`(1 - \omega) v_\varnothing + \omega v_c`, i.e. diffusers' ``guidance_scale`` (Ho &
    Salimans' :math:`w = g - 1`); give exactly one of ``guidance_scale`` and ``w``. :math:`s^* v_\varnothing` is the
    orthogonal projection of :math:`v_c` on the line of :math:`v_\varnothing`, so (exact reductions) :math:`g = 1`
    gives :math:`v_c`; :math:`v_\varnothing \parallel v_c` gives :math:`v_c` for every :math:`g` (guidance vanishes);
    :math:`s^* = 1`, i.e. :math:`v_c - v_\varnothing \perp v_\varnothing`, gives CFG; :math:`g = 0` gives the
    projection, not :math:`v_\varnothing`.

    **Zero-init** (section 4.2): for the first ``zero_init_steps`` sampler steps (``state.step <
    zero_init_steps``, every evaluation of those steps) the guided velocity is 0, so the probability-flow ODE does
    not move: in another ``space`` the rule returns the prediction whose PF-ODE velocity is 0 (on ``rectified-flow``
    that is :math:`\hat x_0 = \hat\varepsilon = x`, and DDIM and Euler leave :math:`x` where it is). This needs the
    run's step, so with zero-init on the rule is stateful (a :class:`~verify.rules.GuidanceState` per run, which the
    samplers create). The paper zeroes about the first 4 % of the steps; diffusers' default is 1 step.

    **Space.** The paper's models predict the flow-matching velocity; here that is the PF-ODE velocity
    (``space="velocity"``, :meth:`StepContext.to_space`), equal to :math:`\varepsilon - x_0` on ``rectified-flow``.
    ``"eps"``, ``"x0"`` and ``"v"`` apply the same formula to those predictions (a different rule: projections are
    not preserved by the affine conversions).

    **Degenerate rows.** :math:`v_\varnothing = 0`: :math:`s^*` is undefined (0/0 or :math:`c/0`), but
    :math:`s^* v_\varnothing` is 0 for any finite :math:`s^*` and its limit as :math:`v_\varnothing \to 0` along a
    line is a projection bounded by :math:`\lVert v_c\rVert`; the rule returns :math:`g\,v_c` there (no NaN), which is
    what diffusers' :math:`+10^{-8}` in the denominator gives too.

    **Implementations.** The authors' code and current diffusers (``ClassifierFreeZeroStarGuidance`` in
    ``src/diffusers/guiders/classifier_free_zero_star_guidance.py``, in float32) compute :math:`s^*` with
    :math:`10^{-8}` added to :math:`\lVert v_\varnothing\rVert^2` (a bias for :math:`\lVert v_\varnothing\rVert^2
    \lesssim 10^{-6}`); an early version of the diffusers guider formed the shift from the unscaled
    :math:`v_\varnothing`, :math:`s^* v_\varnothing + g(v_c - v_\varnothing)`, which is not the paper's formula.
    diffusers zeroes whatever the model predicts during zero-init (``_step < zero_init_steps``, default 1; the
    authors' scripts zero the steps ``i <= zero_steps``, i.e. ``zero_steps + 1`` of them): for a flow model that is
    the velocity, as here; for an eps model it would be :math:`\hat\varepsilon = 0`, which does move the sampler.
    ``use_original_formulation=True`` in diffusers reads ``guidance_scale`` as Ho & Salimans' :math:`w`."""

    name = "cfg_zero_star"
    reference = ("Fan, Zheng, Yeh & Liu 2025, 'CFG-Zero*: Improved Classifier-Free Guidance for Flow Matching Models' "
                 "(arXiv 2503.18886), section 4.1 (optimised scale) and 4.2 (zero-init)")
    spaces = ("velocity", "eps", "x0", "v")

    @classmethod
    def examples(cls, world) -> list[dict]:
        return [{"guidance_scale": 4.0}, {"guidance_scale": 4.0, "use_zero_init": False, "space": "eps"}]

    def __init__(self, *, w: float | None = None, guidance_scale: float | None = None, use_zero_init: bool = True,
                 zero_init_steps: int = 1, space: str = "velocity"):
        self.guidance_scale = guidance_scale_from(w=w, guidance_scale=guidance_scale)
        if not isinstance(use_zero_init, bool):
            raise TypeError(f"use_zero_init: expected a bool, got {use_zero_init!r}")
        if isinstance(zero_init_steps, bool) or not isinstance(zero_init_steps, numbers.Integral):
            raise TypeError(f"zero_init_steps: expected an int, got {zero_init_steps!r}")
        if zero_init_steps < 1:
            raise ValueError(f"zero_init_steps: must be >= 1 (switch zero-init off with use_zero_init=False), got "
                             f"{zero_init_steps!r}")
        self.use_zero_init, self.zero_init_steps = use_zero_init, int(zero_init_steps)
        self._set_space(space)
        self.branches = ("uncond", "cond")
        self.params = {"guidance_scale": self.guidance_scale, "use_zero_init": use_zero_init,
                       "zero_init_steps": self.zero_init_steps, "space": self.space}

    @property
    def stateful(self) -> bool:  # type: ignore[override]
        return self.use_zero_init

    def zeroed(self, ctx: StepContext) -> bool:
        """Whether this evaluation falls in the zero-init steps."""
        if not self.use_zero_init:
            return False
        if not isinstance(ctx.state, GuidanceState):
            raise ValueError("state: CFG-Zero* with zero-init needs the run's step; evaluate it through a "
                             "GuidedDenoiser with state=guided.new_state() (the samplers do)")
        return ctx.state.step < self.zero_init_steps

    def variants(self) -> dict:
        """The implementations' variants of the optimised scale (without zero-init): the early diffusers guider's
        shift from the unscaled unconditional prediction, :math:`s^* v_\\varnothing + g(v_c - v_\\varnothing)`,
        and the authors' and current diffusers' :math:`s^*` with :math:`10^{-8}` added to
        :math:`\\lVert v_\\varnothing\\rVert^2`, in float32."""
        g = self.guidance_scale

        def scale(c: Tensor, u: Tensor, eps: float, dtype: torch.dtype) -> Tensor:
            c32, u32 = c.to(dtype), u.to(dtype)
            s = (c32 * u32).sum(dim=1, keepdim=True) / ((u32 * u32).sum(dim=1, keepdim=True) + eps)
            return s.to(c.dtype)

        def unscaled_shift(preds: dict[str, Tensor], ctx: StepContext) -> Tensor:
            s = scale(preds["cond"], preds["uncond"], 0.0, preds["cond"].dtype)
            return s * preds["uncond"] + g * (preds["cond"] - preds["uncond"])

        def diffusers_scale(preds: dict[str, Tensor], ctx: StepContext) -> Tensor:
            u = scale(preds["cond"], preds["uncond"], 1e-8, torch.float32) * preds["uncond"]
            return u + g * (preds["cond"] - u)

        def after_zero_init(formula):
            def guided(preds: dict[str, Tensor], ctx: StepContext) -> Tensor:
                return self.combine(preds, ctx) if self.zeroed(ctx) else formula(preds, ctx)
            return guided

        return {"the early diffusers shift s* v_uncond + g (v_cond - v_uncond)": after_zero_init(unscaled_shift),
                "diffusers' float32 scale with 1e-8 added to the squared norm": after_zero_init(diffusers_scale)}

    def combine(self, preds: dict[str, Tensor], ctx: StepContext) -> Tensor:
        uncond, cond = predictions({"preds['uncond']": preds["uncond"], "preds['cond']": preds["cond"]})
        if self.zeroed(ctx):
            zero = torch.zeros_like(cond)
            if self.space == "velocity":
                return zero
            here = dataclasses.replace(ctx, x=ctx.x.to(cond.dtype))  # the velocity -> eps conversion reads x
            return here.to_space(here.from_space(zero, "velocity"), self.space)
        return cfg_zero_star(uncond, cond, self.guidance_scale)
