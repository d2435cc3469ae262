r"""A clean-data classifier reused on noisy inputs, against the exact noisy classifier (read by S0-CLEAN-CLASSIFIER).

Source 000 ('Classifier Guidance의 한계') warns that a classifier trained on clean data gives unreliable gradients
at high noise. With the exact noisy classifier :math:`\nabla\log p_t(c|x_t)`, guidance at scale 1 gives exactly
:math:`\nabla\log p_t(x|c)` (Bayes); with the clean one, :math:`\nabla\log p_0(c|\cdot)` evaluated at :math:`x_t`,
it gives :math:`\nabla\log p_t(x) + \nabla\log p_0(c|x_t)`. :func:`clean_classifier_errors` measures the relative
error of the second against the first per world and t; :func:`clean_classifier_sampled` shows what DDIM produces
with each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from toy_models import AnalyticDenoiser, get_world
from verify import rules
from verify.config import RunConfig
from verify.metrics import frechet_distance
from verify.rules.classifier import CleanClassifier, ExactNoisyClassifier

from . import provider
from .laws import sample_from_marginal
from .shared import SCHEDULE, alpha_sigma, first_conditions, one_thread, times, worlds

__all__ = ["RELIABLE", "UNRELIABLE", "CleanClassifierErrors", "clean_classifier_errors", "GuidedByClassifier",
           "CleanClassifierSampled", "clean_classifier_sampled"]

#: a relative score error below this is "reliable"; above :data:`UNRELIABLE` the error exceeds the signal
RELIABLE, UNRELIABLE = 0.05, 1.0


@dataclass(frozen=True)
class CleanClassifierErrors:
    r"""``relative_error[world][t]`` (t as a string): :math:`E\|\hat s - s\| / E\|s\|` with :math:`s =
    \nabla\log p_t(x|c)` and :math:`\hat s = \nabla\log p_t(x) + \nabla\log p_0(c|x)`, means over
    :math:`x \sim p_t(\cdot|c)` pooled over the world's first four class conditions; every joint world."""

    times: tuple[float, ...]
    points_per_condition: int
    relative_error: dict[str, dict[str, float]]

    @property
    def low(self) -> str:
        return f"{self.times[0]:g}"

    @property
    def high(self) -> str:
        return f"{self.times[-1]:g}"

    def first_t_unreliable(self) -> dict[str, str | None]:
        """Per world, the first t whose relative error exceeds :data:`UNRELIABLE` (None if none does)."""
        return {name: next((t for t, v in row.items() if v > UNRELIABLE), None)
                for name, row in self.relative_error.items()}


@provider
@one_thread()
def clean_classifier_errors(config: RunConfig) -> CleanClassifierErrors:
    """The relative score error of guidance by the clean classifier, per joint world and t (vp-linear): the run's
    time grid plus 0.01, 0.05 and 0.2; 512 points per condition (128 in a quick run)."""
    gen = torch.Generator().manual_seed(config.seed)
    grid = tuple(sorted(set(times(config.quick)) | {0.01, 0.05, 0.2}))
    n = 128 if config.quick else 512
    table: dict[str, dict[str, float]] = {}
    for world in worlds():
        if not world.is_joint:
            continue
        clean = world.law(None)
        row = {}
        for t in grid:
            a, s = alpha_sigma(t)
            noisy = clean.noised(a, s)
            errors, norms = [], []
            for cond in first_conditions(world, 4):
                conditional = world.law(cond).noised(a, s)
                x = conditional.sample(n, gen)
                exact = conditional.score(x)
                with_clean = noisy.score(x) + clean.grad_log_posterior(x, cond)
                errors.append((with_clean - exact).norm(dim=-1).mean())
                norms.append(exact.norm(dim=-1).mean())
            row[f"{t:g}"] = float(sum(errors) / sum(norms))
        table[world.name] = row
    return CleanClassifierErrors(grid, n, table)


@dataclass(frozen=True)
class GuidedByClassifier:
    """DDIM samples guided at scale 1 by one classifier: Frechet distance to p(x|c) and the fraction of samples
    whose most probable class under p_0(c|x) is c."""

    classifier: str
    frechet_to_conditional: float
    fraction_classified_as_c: float


@dataclass(frozen=True)
class CleanClassifierSampled:
    """ring2d, class 0, classifier scale 1, the ODE sampler of :func:`~verify.evidence.shared.first_sampler_by_limit`
    (DDIM) over ``steps`` steps from the noised conditional at t = 1: ``by_classifier`` keys ``noisy`` (the exact
    p_t(c|x)) and ``clean`` (p_0(c|.) at x_t)."""

    world: str
    condition: int
    steps: int
    n: int
    by_classifier: dict[str, GuidedByClassifier]


@provider
@one_thread()
def clean_classifier_sampled(config: RunConfig) -> CleanClassifierSampled:
    """Sample with each classifier (20000 samples, 4000 in a quick run; same seed for both)."""
    world, condition, steps = get_world("ring2d"), 0, 100
    den = AnalyticDenoiser(world)
    n = 4000 if config.quick else 20000
    clean = world.law(None)
    out = {}
    for key, label, classifier in (("noisy", "noisy classifier p_t(c|x)", ExactNoisyClassifier(world, SCHEDULE)),
                                   ("clean", "clean classifier p_0(c|.) at x_t", CleanClassifier(world))):
        guided = rules.get("classifier", scale=1.0, classifier=classifier).guide(den, {"cond": condition})
        x = sample_from_marginal(guided, world.law(condition), n, steps, config.seed)
        out[key] = GuidedByClassifier(label, frechet_distance(x, world.law(condition)),
                                      float((clean.class_posterior(x).argmax(1) == condition).double().mean()))
    return CleanClassifierSampled(world.name, condition, steps, n, out)
