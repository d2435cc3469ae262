r"""Static thresholding of the guided x0-prediction (Saharia et al. 2022, section 2.3)."""

from __future__ import annotations

import torch

from . import register
from ._base import Rule, StepContext
from ._math import convert_named, guidance_scale_from, predictions
from ._thresholding import _consistent_eps, _limit
from .cfg import cfg

Tensor = torch.Tensor


def static_threshold(eps: Tensor, *, x: Tensor, alpha: float, sigma: float, limit: float = 1.0) -> Tensor:
    r"""Static thresholding (Saharia et al. 2022, "Photorealistic Text-to-Image Diffusion Models with Deep Language
    Understanding", section 2.3): clip the x0-prediction :math:`\hat x_0 = (x - \sigma\varepsilon)/\alpha` to
    ``[-limit, limit]`` (the paper's data range is [-1, 1]) and return the eps consistent with it,
    :math:`(x - \alpha\,\mathrm{clip}(\hat x_0))/\sigma`; where nothing is clipped that is ``eps`` itself, returned
    exactly. ``limit`` a finite number > 0 (zero, negative, NaN and infinity refused); ``alpha``, ``sigma`` > 0;
    ``eps`` and ``x``: one shape, one dtype (the output's)."""
    limit = _limit(limit)
    eps, x = predictions({"eps": eps, "x": x})
    x0 = convert_named(eps, "eps", "eps", "x0", x=x, alpha=alpha, sigma=sigma)
    return _consistent_eps(eps, x0, x0.clamp(-limit, limit), x=x, alpha=alpha, sigma=sigma)


@register
class StaticThreshold(Rule):
    r"""CFG, then static thresholding: the guided prediction's :math:`\hat x_0` clipped to ``[-limit, limit]``
    and the eps consistent with it returned (:func:`static_threshold`). Give ``w`` or ``guidance_scale``;
    ``limit`` > 0 is the data range (the paper's is 1)."""

    name = "static_threshold"
    reference = ("Saharia et al. 2022, 'Photorealistic Text-to-Image Diffusion Models with Deep Language "
                 "Understanding' (Imagen), section 2.3")

    def __init__(self, *, w: float | None = None, guidance_scale: float | None = None, limit: float = 1.0):
        self.guidance_scale = guidance_scale_from(w=w, guidance_scale=guidance_scale)
        self.limit = _limit(limit)
        self.space = "eps"
        self.branches = ("uncond", "cond")
        self.params = {"guidance_scale": self.guidance_scale, "limit": self.limit}

    @classmethod
    def examples(cls, world) -> list[dict]:
        return [{"guidance_scale": 7.5, "limit": 3.0}]

    def combine(self, preds: dict[str, Tensor], ctx: StepContext) -> Tensor:
        guided = cfg(preds["uncond"], preds["cond"], guidance_scale=self.guidance_scale)
        return static_threshold(guided, x=ctx.x.to(guided.dtype), alpha=ctx.alpha, sigma=ctx.sigma, limit=self.limit)
