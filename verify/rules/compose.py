r"""Composition of K conditions with signed weights (Liu et al. 2022, as source text 000 writes it)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import register
from ._base import LinearRule, StepContext
from ._math import predictions, weight_list, weighted_sum

Tensor = torch.Tensor


def compose(eps_null: Tensor, eps_conds: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    r""":math:`\sum_k w_k \varepsilon_k + (1 - \sum_k w_k)\varepsilon_\varnothing`; negative :math:`w_k` negate.
    ``eps_conds``: a non-empty sequence of predictions of ``eps_null``'s shape and dtype; ``weights``: as many
    finite reals."""
    if isinstance(eps_conds, (str, bytes)) or not hasattr(eps_conds, "__len__"):
        raise TypeError(f"eps_conds: expected a sequence of predictions, got {type(eps_conds).__name__}")
    weights = weight_list(weights)
    if len(eps_conds) != len(weights) or not len(eps_conds):
        raise ValueError(f"eps_conds, weights: need the same positive length, got {len(eps_conds)}, {len(weights)}")
    named = {"eps_null": eps_null}
    for k, eps_k in enumerate(eps_conds):
        named[f"eps_conds[{k}]"] = eps_k
    try:
        tensors = predictions(named)
    except (TypeError, ValueError) as err:  # "eps_conds[k]: ..." -> "eps_conds: entry k: ..."
        message = str(err)
        if message.startswith("eps_conds["):
            k, rest = message[len("eps_conds["):].split("]", 1)
            raise type(err)(f"eps_conds: entry {k}{rest}") from None
        raise
    rest_weight = 1.0 - float(sum(weights))
    return weighted_sum([rest_weight, *weights], tensors, "eps_conds")


@register
class Compose(LinearRule):
    r"""Composable diffusion (Liu et al. 2022, 'Compositional Visual Generation with Composable Diffusion Models',
    eq. 11, as source text 000 writes it): :math:`\sum_k w_k y_k + (1 - \sum_k w_k) y_\varnothing` over branches
    ``cond_1`` .. ``cond_K``; a negative :math:`w_k` negates condition k. Weights ``{cond_k: w_k, uncond: 1 - sum}``.
    ``weights``: a non-empty sequence of finite reals."""

    name = "compose"
    reference = ("Liu et al. 2022, 'Compositional Visual Generation with Composable Diffusion Models', eq. 11; "
                 "source text 000, composition section")

    def __init__(self, *, weights: Sequence[float], space: str = "eps"):
        self.weights = weight_list(weights)
        if not self.weights:
            raise ValueError("weights: need at least one condition weight")
        self._set_space(space)
        self.branches = ("uncond", *(f"cond_{k + 1}" for k in range(len(self.weights))))
        self._weights = {f"cond_{k + 1}": w for k, w in enumerate(self.weights)}
        self._weights["uncond"] = 1.0 - float(sum(self.weights))
        self.params = {"weights": tuple(self.weights)}

    @classmethod
    def examples(cls, world) -> list[dict]:
        return [{"weights": [3.0, -1.5]}]

    def combine(self, preds: dict[str, Tensor], ctx: StepContext) -> Tensor:
        conds = [preds[f"cond_{k + 1}"] for k in range(len(self.weights))]
        return compose(preds["uncond"], conds, self.weights)
