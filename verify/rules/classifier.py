r"""Classifier guidance (Dhariwal & Nichol 2021, Algorithm 2; source texts 000 and 001)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from toy_models import World
from toy_models._checks import as_scalar
from toy_models.denoiser import AnalyticDenoiser
from toy_models.gaussian_mixture import Condition
from toy_models.schedules import Schedule

from . import register
from ._base import Rule, StepContext
from ._math import combine_homogeneous, predictions

Tensor = torch.Tensor
ClassifierGradient = Callable[[Tensor, float, Condition], Tensor]


def classifier_guidance(eps: Tensor, grad_log_classifier: Tensor, sigma: float | Tensor, scale: float) -> Tensor:
    r""":math:`\hat\varepsilon = \varepsilon - s\,\sigma_t \nabla_x \log p(y \mid x_t)`, i.e. the score
    :math:`\nabla \log p_t(x) + s \nabla \log p(y \mid x)` (source 000's augmented score) times :math:`-\sigma_t`.

    ``sigma`` is the noise level :math:`\sigma_t \ge 0` (a float, or a tensor of one value or one per row):
    negative and non-finite values are refused; :math:`\sigma_t = 0` leaves eps unchanged. ``scale`` is any finite
    real (negative scales push away from the class). ``eps`` and ``grad_log_classifier``: one shape, one dtype."""
    from toy_models import parametrization as param

    scale = as_scalar(scale, "scale")
    eps, grad = predictions({"eps": eps, "grad_log_classifier": grad_log_classifier})
    sigma = param._coefficient(sigma, "sigma", eps, divides=False)
    k = scale * sigma
    if not bool(torch.isfinite(torch.as_tensor(k)).all()):
        raise ValueError(f"scale, sigma: scale * sigma overflows (scale = {scale!r})")
    return combine_homogeneous(lambda e, gr: e - k * gr, [eps, grad], "grad_log_classifier")


class ExactNoisyClassifier:
    r"""The world's exact noisy classifier gradient :math:`\nabla_x \log p_t(c \mid x)` on a schedule: what a
    classifier trained on noisy data at every t converges to. Guidance with it is CFG with ``guidance_scale =
    scale`` (source 000's Proposition 1 read backwards), so the classifier rule is linear with it."""

    exact_noisy = True

    def __init__(self, world: World, schedule: str | Schedule = "vp-linear"):
        self._exact = AnalyticDenoiser(world.law(None), schedule)
        #: the schedule its noisy laws follow: the classifier is exact (and the rule linear) only on this one
        self.schedule = self._exact.schedule

    def __call__(self, x: Tensor, t, condition: Condition) -> Tensor:
        return self._exact.noised_law(float(t)).grad_log_posterior(x, condition)


class CleanClassifier:
    r"""A clean-data classifier :math:`\nabla_x \log p_0(c \mid \cdot)` evaluated at the noisy :math:`x_t` (what
    reusing a classifier trained on data gives; source 000 warns that it is unreliable at high noise)."""

    exact_noisy = False

    def __init__(self, world: World):
        self._clean = world.law(None)

    def __call__(self, x: Tensor, t, condition: Condition) -> Tensor:
        return self._clean.grad_log_posterior(x, condition)


@register
class ClassifierGuidanceRule(Rule):
    r"""Classifier guidance in eps form: :math:`\varepsilon_\varnothing - s\,\sigma_t\,\nabla_x\log p(c \mid x_t)`
    with ``scale`` :math:`s` and ``classifier(x, t, condition) -> [N, d]`` the classifier's gradient
    (:class:`ExactNoisyClassifier`, :class:`CleanClassifier` or any callable). Reads the ``uncond`` branch and the
    ``cond`` condition (the class the classifier scores). Linear, with weights ``{cond: s, uncond: 1 - s}``, only
    with the exact noisy classifier; otherwise ``linear_weights`` is ``None``."""

    name = "classifier"
    reference = ("Dhariwal & Nichol 2021, 'Diffusion Models Beat GANs on Image Synthesis', Algorithm 2 "
                 "(eps form, section 4.2)")

    def __init__(self, *, scale: float, classifier: ClassifierGradient):
        if not callable(classifier):
            raise TypeError(f"classifier: expected a callable (x, t, condition) -> [N, d], got "
                            f"{type(classifier).__name__}")
        self.scale = as_scalar(scale, "scale")
        self.classifier = classifier
        self.space = "eps"
        self.branches = ("uncond",)
        self.params = {"scale": self.scale, "classifier": type(classifier).__name__}

    @classmethod
    def examples(cls, world) -> list[dict]:
        return [{"scale": 3.0, "classifier": ExactNoisyClassifier(world)},
                {"scale": 3.0, "classifier": CleanClassifier(world)}]

    @property
    def condition_keys(self) -> tuple[str, ...]:
        return ("uncond", "cond")

    @property
    def linear_weights(self) -> dict[str, float] | None:
        if getattr(self.classifier, "exact_noisy", False):
            return {"cond": self.scale, "uncond": 1.0 - self.scale}
        return None

    def combine(self, preds: dict[str, Tensor], ctx: StepContext) -> Tensor:
        grad = self.classifier(ctx.x, ctx.t, ctx.conditions["cond"])
        return classifier_guidance(preds["uncond"], grad, ctx.sigma, self.scale)
