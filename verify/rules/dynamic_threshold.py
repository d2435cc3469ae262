r"""Dynamic thresholding of the guided x0-prediction (Saharia et al. 2022, section 2.3)."""

from __future__ import annotations

import torch

from toy_models._checks import as_scalar

from . import register
from ._base import Rule, StepContext
from ._math import convert_named, guidance_scale_from, predictions
from ._thresholding import _consistent_eps, _limit
from .cfg import cfg

Tensor = torch.Tensor


def dynamic_threshold(eps: Tensor, *, x: Tensor, alpha: float, sigma: float, percentile: float = 0.995,
                      limit: float = 1.0) -> Tensor:
    r"""Dynamic thresholding (Saharia et al. 2022, section 2.3): per sample, :math:`s` = the ``percentile`` quantile
    of :math:`|\hat x_0|` over the features (``torch.quantile``, linear interpolation), at least ``limit``; clip
    :math:`\hat x_0` to :math:`[-s, s]`, multiply by :math:`\text{limit}/s` and return the consistent eps (``eps``
    itself, exactly, where x0 is unchanged). The paper's version is ``limit = 1``; diffusers'
    ``_threshold_sample`` (``thresholding=True`` in its schedulers) also caps :math:`s` at ``sample_max_value`` and
    works on the x0 it is handed, with no eps returned. ``percentile`` in (0, 1];
    ``limit`` finite and > 0; ``eps`` and ``x``: one ``[N, d]`` shape, one dtype."""
    percentile = as_scalar(percentile, "percentile")
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile: must lie in (0, 1], got {percentile!r}")
    limit = _limit(limit)
    eps, x = predictions({"eps": eps, "x": x})
    if eps.ndim != 2 or eps.shape[1] < 1:
        raise ValueError(f"eps: dynamic thresholding needs [N, d] (a percentile per sample), got {list(eps.shape)}")
    x0 = convert_named(eps, "eps", "eps", "x0", x=x, alpha=alpha, sigma=sigma)
    s = torch.quantile(x0.abs(), percentile, dim=1, keepdim=True).clamp_min(limit)
    x0_new = torch.maximum(torch.minimum(x0, s), -s) * (limit / s)
    return _consistent_eps(eps, x0, x0_new, x=x, alpha=alpha, sigma=sigma)


@register
class DynamicThreshold(Rule):
    r"""CFG, then dynamic thresholding (:func:`dynamic_threshold`): per sample the ``percentile`` quantile :math:`s` of
    :math:`|\hat x_0|`, at least ``limit``; :math:`\hat x_0` clipped to :math:`[-s, s]` and scaled by ``limit /
    s``. Give ``w`` or ``guidance_scale``; ``percentile`` in (0, 1] (the paper: 0.995 is typical), ``limit`` > 0."""

    name = "dynamic_threshold"
    reference = ("Saharia et al. 2022, 'Photorealistic Text-to-Image Diffusion Models with Deep Language "
                 "Understanding' (Imagen), section 2.3")

    def __init__(self, *, w: float | None = None, guidance_scale: float | None = None, limit: float = 1.0,
                 percentile: float = 0.995):
        self.guidance_scale = guidance_scale_from(w=w, guidance_scale=guidance_scale)
        self.limit = _limit(limit)
        self.percentile = as_scalar(percentile, "percentile")
        if not 0.0 < self.percentile <= 1.0:
            raise ValueError(f"percentile: must lie in (0, 1], got {self.percentile!r}")
        self.space = "eps"
        self.branches = ("uncond", "cond")
        self.params = {"guidance_scale": self.guidance_scale, "limit": self.limit, "percentile": self.percentile}

    @classmethod
    def examples(cls, world) -> list[dict]:
        return [{"guidance_scale": 7.5, "limit": 3.0, "percentile": 0.9}]

    def combine(self, preds: dict[str, Tensor], ctx: StepContext) -> Tensor:
        guided = cfg(preds["uncond"], preds["cond"], guidance_scale=self.guidance_scale)
        return dynamic_threshold(guided, x=ctx.x.to(guided.dtype), alpha=ctx.alpha, sigma=ctx.sigma,
                                 percentile=self.percentile, limit=self.limit)
