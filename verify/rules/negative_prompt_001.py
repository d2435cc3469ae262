r"""Source 001's negative prompt (diffusers' ``negative_prompt``): the negative prediction takes the null's place."""

from __future__ import annotations

import torch

from . import register
from ._base import LinearRule, StepContext
from ._math import combine_homogeneous, guidance_scale_from, predictions

Tensor = torch.Tensor


def negative_prompt_001(eps_pos: Tensor, eps_neg: Tensor, *, w: float | None = None,
                        guidance_scale: float | None = None) -> Tensor:
    r""":math:`\varepsilon_- + g(\varepsilon_+ - \varepsilon_-)`, one ``torch.lerp``."""
    g = guidance_scale_from(w=w, guidance_scale=guidance_scale)
    tensors = predictions({"eps_neg": eps_neg, "eps_pos": eps_pos})
    return combine_homogeneous(lambda n, p: torch.lerp(n, p, g), tensors, "eps_pos")


@register
class NegativePrompt001(LinearRule):
    r"""Negative prompt as source text 001 and diffusers write it ("Classifier-Free Guidance 논문 리뷰: 조건부 생성
    모델의 핵심 기법 완전 정리", updated 2026-02-06, negative-prompt section): CFG with the negative prediction in the
    null branch, :math:`y_- + g(y_+ - y_-)`, weights ``{cond: g, negative: 1 - g}``; the per-t score of
    :math:`p(x|+)^g p(x|-)^{1-g}`. Give ``w`` or ``guidance_scale``."""

    name = "negative_prompt_001"
    reference = ("source text 001, 'Classifier-Free Guidance 논문 리뷰: 조건부 생성 모델의 핵심 기법 완전 정리' "
                 "(2026-02-06), negative prompt; diffusers pipelines' negative_prompt")

    def __init__(self, *, w: float | None = None, guidance_scale: float | None = None, space: str = "eps"):
        self.guidance_scale = guidance_scale_from(w=w, guidance_scale=guidance_scale)
        self._set_space(space)
        self.branches = ("negative", "cond")
        self._weights = {"cond": self.guidance_scale, "negative": 1.0 - self.guidance_scale}
        self.params = {"guidance_scale": self.guidance_scale}

    @classmethod
    def examples(cls, world) -> list[dict]:
        return [{"guidance_scale": 4.0}]

    def combine(self, preds: dict[str, Tensor], ctx: StepContext) -> Tensor:
        return negative_prompt_001(preds["cond"], preds["negative"], guidance_scale=self.guidance_scale)
