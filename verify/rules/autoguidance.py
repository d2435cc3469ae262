r"""Autoguidance (Karras et al. 2024): guide a model with a weaker version of itself, same condition."""

from __future__ import annotations

import torch

from . import register
from ._base import LinearRule, StepContext
from ._math import combine_homogeneous, guidance_scale_from, predictions

Tensor = torch.Tensor


def autoguidance(pred_weak: Tensor, pred_cond: Tensor, *, w: float | None = None,
                 guidance_scale: float | None = None) -> Tensor:
    r""":math:`y_0 + g(y_1 - y_0) = g\,y_1 + (1 - g)\,y_0` with :math:`y_1` the main model's and :math:`y_0` the weak
    model's prediction at the same condition; one ``torch.lerp``, overflow-safe. ``guidance_scale`` g is the
    paper's w; ``w`` is Ho & Salimans' convention, ``g = 1 + w``."""
    g = guidance_scale_from(w=w, guidance_scale=guidance_scale)
    tensors = predictions({"pred_weak": pred_weak, "pred_cond": pred_cond})
    return combine_homogeneous(lambda weak, cond: torch.lerp(weak, cond, g), tensors, "pred_cond")


@register
class Autoguidance(LinearRule):
    r"""Autoguidance (Karras, Aittala, Kynkaanniemi, Lehtinen, Aila & Laine 2024, "Guiding a Diffusion Model with
    a Bad Version of Itself", NeurIPS 2024, arXiv 2406.02507): the CFG combination
    :math:`D_w = w D_1 + (1 - w) D_0` (the paper's section 2) with :math:`D_0` no longer the unconditional model but a
    *weaker* model of the **same** condition (section 3: smaller and/or trained for less time, so that its errors
    are of the same kind as :math:`D_1`'s but larger). Branches ``("weak", "cond")``: the guided denoiser
    (:meth:`~verify.rules.Rule.guide` with ``weak=``) evaluates the weak model at ``cond``'s condition; weights
    ``{cond: g, weak: 1 - g}``.

    Strength: the paper's :math:`w` is this project's ``guidance_scale`` g (:math:`w = 1` is no guidance; the paper's
    ImageNet settings are w around 2 to 3); ``w=`` here is Ho & Salimans' convention, g = 1 + w. Give exactly one.

    The paper writes the combination for denoisers (x0-predictions :math:`D`); the NVlabs ``edm2`` toy example
    (``toy_example.py``, ``do_sample``) applies the same ``lerp`` to scores, and ``generate_images.py`` to the
    denoised outputs. The weights sum to 1, so the three are the same combination (linear rule: the same result in
    eps, x0, v and velocity space).

    Per t, the guided score is that of :math:`p_1(x_t|c)^{g}\,p_0(x_t|c)^{1-g}` where :math:`p_1, p_0` are the
    *models'* noised laws (not the data's): :mod:`verify.tilted` and :mod:`verify.exact_law` can read the weights only
    with the weak model's law in the ``weak`` branch."""

    name = "autoguidance"
    reference = ("Karras et al. 2024, 'Guiding a Diffusion Model with a Bad Version of Itself' (NeurIPS 2024, "
                 "arXiv 2406.02507), sections 2-3")

    @classmethod
    def examples(cls, world) -> list[dict]:
        return [{"guidance_scale": 2.0}]

    def __init__(self, *, w: float | None = None, guidance_scale: float | None = None, space: str = "eps"):
        self.guidance_scale = guidance_scale_from(w=w, guidance_scale=guidance_scale)
        self._set_space(space)
        self.branches = ("weak", "cond")
        self._weights = {"cond": self.guidance_scale, "weak": 1.0 - self.guidance_scale}
        self.params = ({"guidance_scale": self.guidance_scale} if space == "eps"
                       else {"guidance_scale": self.guidance_scale, "space": space})

    def combine(self, preds: dict[str, Tensor], ctx: StepContext) -> Tensor:
        return autoguidance(preds["weak"], preds["cond"], guidance_scale=self.guidance_scale)
