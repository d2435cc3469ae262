r"""Classifier-free guidance (Ho & Salimans 2022, eq. 6; source texts 000 and 001)."""

from __future__ import annotations

import torch

from . import register
from ._base import LinearRule, StepContext
from ._math import combine_homogeneous, guidance_scale_from, predictions

Tensor = torch.Tensor


def cfg(eps_uncond: Tensor, eps_cond: Tensor, *, w: float | None = None, guidance_scale: float | None = None
        ) -> Tensor:
    r""":math:`\varepsilon_\varnothing + g(\varepsilon_c - \varepsilon_\varnothing) = (1 + w)\varepsilon_c - w
    \varepsilon_\varnothing`, written as one ``torch.lerp`` (exact at g = 0 and g = 1, which the textbook
    ``uncond + g * (cond - uncond)`` of diffusers' pipelines is not at g = 1 when the difference rounds).

    Both predictions: one shape, one dtype (the output's). Predictions near the dtype's largest value
    (``eps_cond - eps_uncond`` overflowing) still give the finite answer, or a refusal naming ``eps_cond`` when the
    guided prediction itself overflows."""
    g = guidance_scale_from(w=w, guidance_scale=guidance_scale)
    tensors = predictions({"eps_uncond": eps_uncond, "eps_cond": eps_cond})
    return combine_homogeneous(lambda u, c: torch.lerp(u, c, g), tensors, "eps_cond")


@register
class CFG(LinearRule):
    r"""Classifier-free guidance: :math:`\tilde y = y_\varnothing + g\,(y_c - y_\varnothing)`, weights
    ``{cond: g, uncond: 1 - g}``.

    Give exactly one of ``w`` (Ho & Salimans 2022, eq. 6: :math:`(1 + w) y_c - w y_\varnothing`) or
    ``guidance_scale`` (diffusers, :math:`g = 1 + w`). ``use_original_formulation=True`` reads ``guidance_scale``
    as diffusers' ``ClassifierFreeGuidance(use_original_formulation=True)`` does: :math:`y_c + g(y_c -
    y_\varnothing)`, i.e. Ho & Salimans' formula with :math:`w = g` (the same number means one unit more guidance
    than in the default formulation). Linear, so its result is the same in every prediction space."""

    name = "cfg"
    reference = "Ho & Salimans 2022, 'Classifier-Free Diffusion Guidance', eq. 6"

    def __init__(self, *, w: float | None = None, guidance_scale: float | None = None,
                 use_original_formulation: bool = False, space: str = "eps"):
        if not isinstance(use_original_formulation, bool):
            raise TypeError(f"use_original_formulation: expected a bool, got {use_original_formulation!r}")
        g = guidance_scale_from(w=w, guidance_scale=guidance_scale)
        if use_original_formulation:
            if guidance_scale is None:
                raise ValueError("use_original_formulation: reinterprets guidance_scale (as diffusers does); give "
                                 "guidance_scale, or w without this flag")
            g = 1.0 + g
        self.guidance_scale = g
        self._set_space(space)
        self.branches = ("uncond", "cond")
        self._weights = {"cond": g, "uncond": 1.0 - g}
        self.params = {"guidance_scale": g} if space == "eps" else {"guidance_scale": g, "space": space}

    @classmethod
    def examples(cls, world) -> list[dict]:
        return [{"w": 3.0}, {"guidance_scale": 7.5}, {"guidance_scale": 7.5, "use_original_formulation": True}]

    def combine(self, preds: dict[str, Tensor], ctx: StepContext) -> Tensor:
        return cfg(preds["uncond"], preds["cond"], guidance_scale=self.guidance_scale)
