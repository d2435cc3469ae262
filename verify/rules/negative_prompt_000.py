r"""Source 000's negative prompt: positive and negative conditions each guided against the null condition."""

from __future__ import annotations

import torch

from toy_models._checks import as_scalar

from . import register
from ._base import LinearRule, StepContext
from ._math import combine_homogeneous, predictions

Tensor = torch.Tensor


def negative_prompt_000(eps_null: Tensor, eps_pos: Tensor, eps_neg: Tensor, w_pos: float, w_neg: float) -> Tensor:
    r""":math:`\varepsilon_\varnothing + w_+(\varepsilon_+ - \varepsilon_\varnothing) - w_-(\varepsilon_- -
    \varepsilon_\varnothing)`. Weights: finite reals; predictions: one shape, one dtype."""
    wp, wn = as_scalar(w_pos, "w_pos"), as_scalar(w_neg, "w_neg")
    tensors = predictions({"eps_null": eps_null, "eps_pos": eps_pos, "eps_neg": eps_neg})
    return combine_homogeneous(lambda n, p, g: n + wp * (p - n) - wn * (g - n), tensors, "eps_pos")


@register
class NegativePrompt000(LinearRule):
    r"""Negative prompt as source text 000 writes it ("Classifier Guidance에서 Negative Prompt까지, 조건부 생성의
    수학", 2026-05-03, negative-prompt section): :math:`y_\varnothing + w_+(y_+ - y_\varnothing) - w_-(y_- -
    y_\varnothing)`, weights ``{cond: w_+, negative: -w_-, uncond: 1 - w_+ + w_-}``.

    Its per-t score is that of :math:`p(x|y_+)^{w_+} p(x|y_-)^{-w_-} p(x)^{1 - w_+ + w_-}` (not
    :math:`1 - w_+ - w_-` as the text writes; ``proofs/negprompt_000.py``). Branch ``cond`` is the positive prompt."""

    name = "negative_prompt_000"
    reference = ("source text 000, 'Classifier Guidance에서 Negative Prompt까지, 조건부 생성의 수학' (2026-05-03), "
                 "negative-prompt formula")

    def __init__(self, *, w_pos: float, w_neg: float, space: str = "eps"):
        self.w_pos, self.w_neg = as_scalar(w_pos, "w_pos"), as_scalar(w_neg, "w_neg")
        self._set_space(space)
        self.branches = ("uncond", "cond", "negative")
        self._weights = {"cond": self.w_pos, "negative": -self.w_neg, "uncond": 1.0 - self.w_pos + self.w_neg}
        self.params = {"w_pos": self.w_pos, "w_neg": self.w_neg}

    @classmethod
    def examples(cls, world) -> list[dict]:
        return [{"w_pos": 4.0, "w_neg": 2.0}]

    def combine(self, preds: dict[str, Tensor], ctx: StepContext) -> Tensor:
        return negative_prompt_000(preds["uncond"], preds["cond"], preds["negative"], self.w_pos, self.w_neg)
