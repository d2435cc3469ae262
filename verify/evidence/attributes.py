r"""Negative prompts and composition on attributes2d: their implied laws, and what a sampler produces with them.

Read by S0-NEGPROMPT-DENSITY, S1-NEGPROMPT, S0-COMPOSITION and S0-PURPLE-DOG (:mod:`verify.claims.negative_prompts`)
and drawn by ``negative_and_composition.png`` and ``negative_composition_samples.png``.

attributes2d has four components, red dog (-2, 2), red cat (-2, -2), blue dog (2, 2), blue cat (2, -2): x_1 is the
colour (red < 0 < blue), x_2 the shape (cat < 0 < dog). The laws:

* source 000's negative prompt :math:`\varepsilon_\varnothing + w_+(\varepsilon_+ - \varepsilon_\varnothing) -
  w_-(\varepsilon_- - \varepsilon_\varnothing)` has the per-t score of :math:`p(x|+)^{w_+} p(x|-)^{-w_-}
  p(x)^{1 - w_+ + w_-}`; the source writes the exponent of p(x) as :math:`1 - w_+ - w_-`;
* source 001's negative prompt (the negative replaces the null prediction) has that of :math:`p(x|+)^g
  p(x|-)^{1-g}`;
* Liu et al.'s composition :math:`\sum_k w_k\varepsilon(c_k) + (1 - \sum_k w_k)\varepsilon_\varnothing` has that of
  :math:`\prod_k p(x|c_k)^{w_k} p(x)^{1 - \sum_k w_k}`.

Masses by quadrature with halving error estimates (:meth:`verify.tilted.TiltedLaw.probability`); normalisability
by the tail coefficients (:meth:`verify.tilted.TiltedLaw.tail_bounds`). Samples: the ODE sampler of
:func:`~verify.evidence.shared.first_sampler_by_limit` (DDIM), 100 uniform steps from the noised p(x|dog) at t = 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np
import torch

from toy_models import AnalyticDenoiser, GaussianMixture, World, get_world
from verify import rules
from verify.config import RunConfig
from verify.tilted import TiltedLaw, linear_terms, tilted_law

from . import provider
from .laws import sample_from_marginal
from .shared import attribute_cases, first_sampler_by_limit, one_thread, purple_band, red_dog
from .targets import normalise_on_grid, trapezoid_weights

__all__ = ["CASES",
           "REGIONS", "NegativePromptLaws", "negative_prompt_laws", "CompositionLaw", "composition_law",
           "RegionMass", "SampledCase", "AttributeSamples", "attribute_samples", "NarrowNegativeSampled",
           "narrow_negative_sampled", "TargetGrid", "AttributeTargetGrids", "attribute_target_grids"]

F64 = torch.float64
POSITIVE, NEGATIVE = ("dog",), ("red",)
#: source 000's strengths and source 001's scale, as in :func:`~verify.evidence.shared.attribute_cases`
W_POS, W_NEG = 3.0, 1.0


#: regions whose sampled fraction and target mass ``negative_composition_samples.png`` reports beside each case's
#: own region: the red side, the purple band, past the blue dog (their edges lie where every target's density is
#: low, so the quadrature masses are accurate)
REGIONS: dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = {
    "red_side": ("x1 < -1", lambda x: x[:, 0] < -1),
    "purple_band": ("|x1| < 1", purple_band),
    "past_blue_dog": ("x1 > 4", lambda x: x[:, 0] > 4)}


# --------------------------------------------------------------------------------------------------------------
# The cases
# --------------------------------------------------------------------------------------------------------------
def cases() -> dict[str, tuple[str, rules.Rule, dict, Callable[[torch.Tensor], torch.Tensor], str]]:
    """``{key: (description, rule, conditions, region, region_name)}``: the three cases of
    :func:`~verify.evidence.shared.attribute_cases` (``negative_001``, ``negative_000``, ``compose``) and the
    control ``dog`` (plain p(x|dog): CFG at w = 0, which any sampler should reach)."""
    out = {"dog": ("+dog alone", rules.get("cfg", w=0.0), {"cond": POSITIVE}, red_dog, "red_dog")}
    for key, case in attribute_cases().items():
        out[key] = (case.description, case.rule, case.conditions, case.region, case.region_name)
    return out


#: the case keys, control first
CASES = ("dog", "negative_001", "negative_000", "compose")


# --------------------------------------------------------------------------------------------------------------
# The implied laws
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NegativePromptLaws:
    r"""Positive 'dog', negative 'red' on attributes2d. Source 000 (:math:`w_+, w_-`): the tail-coefficient bounds
    ``(lower, upper)`` of the density as written and as corrected (normalisable iff the minimum over directions is
    positive), and the corrected law's red-dog mass ``(mass, quadrature error)``. Source 001: the red-dog mass of
    :math:`p(x|+)^g p(x|-)^{1-g}` by ``g`` (keys numbers as strings), and a 1-D counterexample to normalisability
    (positive N(0, 1), negative N(1, 0.25)): its precision :math:`g/1 + (1-g)/0.25` and normalisability by ``g``."""

    w_pos: float
    w_neg: float
    written_tail_bounds: tuple[float, float]
    corrected_tail_bounds: tuple[float, float]
    corrected_red_dog_mass: tuple[float, float]
    red_dog_mass_by_guidance_scale: dict[str, tuple[float, float]]
    narrow_positive: str
    narrow_negative: str
    narrow_precision_by_guidance_scale: dict[str, float]
    narrow_normalisable_by_guidance_scale: dict[str, bool | None]

    @property
    def written_normalisable(self) -> bool:
        return self.written_tail_bounds[1] > 0 and self.written_tail_bounds[0] > 0

    @property
    def corrected_normalisable(self) -> bool:
        return self.corrected_tail_bounds[0] > 0

    @property
    def written_growth(self) -> float:
        r"""The written density's log grows like :math:`+c\,r^2` along its worst direction: ``c`` = -upper / 2."""
        return -self.written_tail_bounds[1] / 2


def written_terms_000(w_pos: float = W_POS, w_neg: float = W_NEG) -> tuple[tuple[Hashable, float], ...]:
    r"""Source 000's density as written, as ``(condition, exponent)`` terms: :math:`p(x|+)^{w_+} p(x|-)^{-w_-}
    p(x)^{1 - w_+ - w_-}`."""
    return ((POSITIVE, w_pos), (NEGATIVE, -w_neg), (None, 1 - w_pos - w_neg))


def written_density_000(world: World, w_pos: float = W_POS, w_neg: float = W_NEG) -> TiltedLaw:
    """Source 000's density as written (:func:`written_terms_000`) as a :class:`~verify.tilted.TiltedLaw`."""
    return TiltedLaw(tuple((world.law(c), e) for c, e in written_terms_000(w_pos, w_neg)),
                     "source 000's written density")


@provider
@one_thread()
def negative_prompt_laws(config: RunConfig) -> NegativePromptLaws:
    """The implied laws of both sources' negative prompts (see :class:`NegativePromptLaws`)."""
    world = get_world("attributes2d")
    conditions = {"cond": POSITIVE, "negative": NEGATIVE}
    correct = tilted_law(world, rules.get("negative_prompt_000", w_pos=W_POS, w_neg=W_NEG), conditions)
    by_g = {}
    for g in (1.0, 3.0, 7.5):
        q = tilted_law(world, rules.get("negative_prompt_001", guidance_scale=g), conditions)
        by_g[f"{g:g}"] = q.probability(red_dog)
    pos = GaussianMixture([1.0], [[0.0]], [[[1.0]]])
    neg = GaussianMixture([1.0], [[1.0]], [[[0.25]]])
    precision, normalisable = {}, {}
    for g in (1.2, 1.5, 3.0):
        precision[f"{g:g}"] = g / 1.0 + (1 - g) / 0.25
        normalisable[f"{g:g}"] = TiltedLaw(((pos, g), (neg, 1 - g))).is_normalisable()
    return NegativePromptLaws(W_POS, W_NEG, written_density_000(world).tail_bounds(), correct.tail_bounds(),
                              correct.probability(red_dog), by_g, "N(0, 1)", "N(1, 0.25)", precision, normalisable)


@dataclass(frozen=True)
class CompositionLaw:
    """The composed law p(x|red dog) p(x|blue dog) / p(x) (weights 1, 1) on attributes2d: its mass in the purple
    band |x_1| < 1 with its quadrature error, its mean and covariance (``method``: how they were computed), and the
    band's mass under p(x|red dog) alone (closed form: P(x_1 > -1) under N(-2, 0.25))."""

    purple_mass: float
    quadrature_error: float
    mean: tuple[float, ...]
    cov: tuple[tuple[float, ...], ...]
    method: str
    mass_under_red_dog_alone: float


@provider
@one_thread()
def composition_law(config: RunConfig) -> CompositionLaw:
    """The 'purple dog' law of the ``compose`` case (see :class:`CompositionLaw`)."""
    world = get_world("attributes2d")
    _, rule, conditions, region, _ = cases()["compose"]
    q = tilted_law(world, rule, conditions)
    mass, err = q.probability(region)
    summary = q.summary()
    red_alone = 1 - 0.5 * (1 + math.erf((-1 + 2) / math.sqrt(2 * 0.25)))  # P(x1 > -1) under N(-2, 0.25)
    return CompositionLaw(mass, err, tuple(summary.mean.tolist()), tuple(map(tuple, summary.cov.tolist())),
                          summary.method, red_alone)


# --------------------------------------------------------------------------------------------------------------
# The samples
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegionMass:
    """The samples' fraction in a region, its binomial standard error sqrt(f (1 - f) / n), and the implied law's
    mass there with its quadrature error."""

    fraction: float
    se: float
    target_mass: float
    target_quadrature_error: float


@dataclass(frozen=True)
class SampledCase:
    """One case sampled: its description, its own region (the one its record reads) with the fraction there, the
    figure's regions (:data:`REGIONS`), the sample moments over all ``n`` samples, and ``samples``: the first
    ``len(samples)`` of them (the starts are i.i.d., so a prefix is a uniform subsample), for drawing."""

    description: str
    region: str
    own_region: RegionMass
    regions: dict[str, RegionMass]
    sampled_mean: tuple[float, float]
    sampled_sd: tuple[float, float]
    samples: np.ndarray


@dataclass(frozen=True)
class AttributeSamples:
    """``cases[key]`` for key in :data:`CASES`: ``n`` samples of each case's guided sampler over ``steps`` steps,
    all from the same starts (the noised p(x|dog) at t = 1, seed ``seed``)."""

    sampler: str
    steps: int
    n: int
    seed: int
    cases: dict[str, SampledCase]


#: how many samples of each case the provider keeps for the figures
KEPT_SAMPLES = 5000


def _binomial_se(fraction: float, n: int) -> float:
    """sqrt(f (1 - f) / n), floored at sqrt(1e-12 / n) so that a fraction of 0 or 1 still has a positive scale."""
    return math.sqrt(max(fraction * (1 - fraction), 1e-12) / n)


@provider
@one_thread()
def attribute_samples(config: RunConfig) -> AttributeSamples:
    """Sample every case of :func:`cases` (20000 samples, 4000 in a quick run; DDIM, 100 steps)."""
    world = get_world("attributes2d")
    den = AnalyticDenoiser(world)
    n, steps = (4000 if config.quick else 20000), 100
    out = {}
    for key, (description, rule, conditions, region, region_name) in cases().items():
        x = sample_from_marginal(rule.guide(den, conditions), world.law(POSITIVE), n, steps, config.seed)
        law = tilted_law(world, rule, conditions)

        def measure(inside: Callable[[torch.Tensor], torch.Tensor], x=x, law=law) -> RegionMass:
            frac = float(inside(x).double().mean())
            mass, err = law.probability(inside)
            return RegionMass(frac, _binomial_se(frac, n), mass, err)

        out[key] = SampledCase(description, region_name, measure(region),
                               {name: measure(inside) for name, (_, inside) in REGIONS.items()},
                               tuple(x.mean(0).tolist()), tuple(x.std(0).tolist()), x[:KEPT_SAMPLES].numpy())
    return AttributeSamples(first_sampler_by_limit()["ode"], steps, n, config.seed, out)


@dataclass(frozen=True)
class NarrowNegativeSampled:
    """Source 001's negative prompt at g = 3 with a negative N(1, 0.25) narrower than the positive N(0, 1): no
    implied law exists (precision 3 - 2 / 0.25 < 0), yet the sampler returns numbers. Per step count (keys numbers
    as strings): whether every sample is finite, and their mean, sd and minimum."""

    guidance_scale: float
    n: int
    finite: dict[str, bool]
    mean: dict[str, float]
    sd: dict[str, float]
    minimum: dict[str, float]


@provider
@one_thread()
def narrow_negative_sampled(config: RunConfig) -> NarrowNegativeSampled:
    """DDIM at 50, 100 and 200 steps, 2000 samples from the noised positive at t = 1."""
    pos = GaussianMixture([1.0], [[0.0]], [[[1.0]]], labels=[1])
    neg = GaussianMixture([1.0], [[1.0]], [[[0.25]]], labels=[2])
    world = World("narrow-negative", pos, "N(0,1) positive, N(1,0.25) negative", {1: pos, 2: neg})
    g, n = 3.0, 2000
    den = rules.get("negative_prompt_001", guidance_scale=g).guide(AnalyticDenoiser(world), {"cond": 1, "negative": 2})
    finite, mean, sd, minimum = {}, {}, {}, {}
    for steps in (50, 100, 200):
        x = sample_from_marginal(den, pos, n, steps, config.seed)[:, 0]
        key = str(steps)
        finite[key], mean[key] = bool(torch.isfinite(x).all()), float(x.mean())
        sd[key], minimum[key] = float(x.std()), float(x.min())
    return NarrowNegativeSampled(g, n, finite, mean, sd, minimum)


# --------------------------------------------------------------------------------------------------------------
# The figures' grids
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TargetGrid:
    """One case's implied law on the grid: normalised density ``[len(x2), len(x1)]``, the x_1 of its peak, its grid
    moments (mean of x_1 and x_2, sd of x_1), and its terms ``((condition, exponent), ...)``
    (:func:`verify.tilted.linear_terms`)."""

    density: np.ndarray
    peak_x1: float
    mean: tuple[float, float]
    sd_x1: float
    terms: tuple[tuple[Hashable, float], ...]


@dataclass(frozen=True)
class AttributeTargetGrids:
    """The implied laws of :func:`cases` on one grid of attributes2d (x_1 in [-5, 13]: source 001's law peaks near
    x_1 = 10; spacing 0.05), the two composed conditionals (red dog, blue dog), source 000's density as written
    (log, unnormalised: it has no normaliser) with its terms, and the four component means with their tokens."""

    x1: np.ndarray
    x2: np.ndarray
    targets: dict[str, TargetGrid]
    red_dog: np.ndarray
    blue_dog: np.ndarray
    written_log_density: np.ndarray
    written_terms: tuple[tuple[Hashable, float], ...]
    component_means: np.ndarray
    component_tokens: tuple[tuple[str, str], ...]


@provider
@one_thread()
def attribute_target_grids(config: RunConfig) -> AttributeTargetGrids:
    """Every case's implied law on the grid, normalised by :func:`normalise_on_grid` (see
    :class:`AttributeTargetGrids`)."""
    world = get_world("attributes2d")
    x1, x2 = np.linspace(-5.0, 13.0, 361), np.linspace(-5.0, 5.0, 201)
    gx, gy = np.meshgrid(x1, x2)
    pts = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], axis=1), dtype=F64)
    weights = trapezoid_weights(x1, x2)
    targets = {}
    for key, (_, rule, conditions, _, _) in cases().items():
        law = tilted_law(world, rule, conditions)
        dens = normalise_on_grid(law.log_unnormalized(pts).numpy().reshape(gx.shape), x1, x2)
        mean = (float((weights * dens * gx).sum()), float((weights * dens * gy).sum()))
        sd1 = math.sqrt(float((weights * dens * (gx - mean[0]) ** 2).sum()))
        targets[key] = TargetGrid(dens, float(gx.ravel()[dens.argmax()]), mean, sd1,
                                  linear_terms(rule, conditions))

    def density(cond) -> np.ndarray:
        return torch.exp(world.law(cond).log_prob(pts)).numpy().reshape(gx.shape)

    gm = world.unconditional
    tokens = tuple(zip(gm.attributes["colour"], gm.attributes["shape"], strict=True))
    return AttributeTargetGrids(x1, x2, targets, density(("red", "dog")), density(("blue", "dog")),
                                written_density_000(world).log_unnormalized(pts).numpy().reshape(gx.shape),
                                written_terms_000(),
                                gm.means.numpy(), tokens)
