"""Pieces the evidence providers share: time grids, check points, the samplers that stand for each continuous
limit, perturbed models, the attribute cases, one-thread execution. No provider lives here."""

from __future__ import annotations

import contextlib
import dataclasses
import zlib
from collections.abc import Callable, Iterator

import torch

from toy_models import AnalyticDenoiser, World, get_schedule, get_world
from toy_models.denoiser import WrappedDenoiser
from toy_models.gaussian_mixture import Condition
from toy_models.scenarios import IMAGE_WORLDS, WORLDS
from verify.samplers import SAMPLERS

TIMES = (0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
QUICK_TIMES = (0.01, 0.5, 1.0)
SCHEDULE = "vp-linear"


def times(quick: bool) -> tuple[float, ...]:
    return QUICK_TIMES if quick else TIMES


def alpha_sigma(t: float) -> tuple[float, float]:
    a, s = get_schedule(SCHEDULE).alpha_sigma(t)
    return float(a), float(s)


def dense_world_names() -> list[str]:
    """The registered worlds whose laws are :class:`~toy_models.gaussian_mixture.GaussianMixture` (every world but
    :data:`toy_models.scenarios.IMAGE_WORLDS`): the checks built on :mod:`verify.tolerances`' rounding bounds, which
    read dense covariances, run on these; the image worlds have their own checks (``image_guidance``,
    ``image_attention``, ``field_highdim``) and their own bounds (:meth:`FieldMixture.rounding_bounds`)."""
    return [name for name in WORLDS if name not in IMAGE_WORLDS]


def worlds() -> Iterator[World]:
    """The worlds of :func:`dense_world_names`, built."""
    for name in dense_world_names():
        yield get_world(name)


def first_conditions(world: World, k: int = 3) -> list[Condition]:
    """A few class conditions of the world (all of them when there are at most ``k``)."""
    return world.class_conditions()[:k]


def check_points(world: World, conditions: list[Condition], t: float, n: int, generator: torch.Generator
                 ) -> torch.Tensor:
    """``n`` points from each noised law of ``conditions`` (the bulk), and the same points spread 3x about their
    mean (the tails)."""
    a, s = alpha_sigma(t)
    bulk = torch.cat([world.law(c).noised(a, s).sample(n, generator) for c in conditions])
    centre = bulk.mean(0)
    return torch.cat([bulk, centre + 3.0 * (bulk - centre)])


def first_sampler_by_limit() -> dict[str, str]:
    """``{"ode": name, "sde": name}``: the first registered sampler (:data:`verify.samplers.SAMPLERS`, registration
    order) whose continuous-time limit at ``eta = 0`` is the probability-flow ODE, and the first whose limit is the
    reverse SDE (DDIM and DDPM today). The claims that compare the two limits, and quick runs, use these two."""
    first: dict[str, str] = {}
    for name, spec in SAMPLERS.items():
        first.setdefault(spec.continuous_limit(0.0), name)
    missing = {"ode", "sde"} - set(first)
    if missing:
        raise RuntimeError(f"samplers: no registered sampler has the continuous limit {sorted(missing)}")
    return {"ode": first["ode"], "sde": first["sde"]}


class PerturbedDenoiser(WrappedDenoiser):
    r"""A model with a known, smooth error: :math:`\varepsilon + \epsilon\,\mathrm{rms}(\varepsilon)\tanh(Ax + b)` with
    ``A, b`` drawn once per condition from ``seed``. Stands in for a trained network whose relative eps error is
    ``relative_error``, so the claims can show how each identity degrades with model error."""

    def __init__(self, denoiser: AnalyticDenoiser, relative_error: float, seed: int = 0):
        self.denoiser, self.relative_error, self.seed = denoiser, float(relative_error), seed

    def _field(self, condition) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(str(condition).encode()))  # stable
        d = self.dim
        return (torch.randn(d, d, dtype=torch.float64, generator=gen) / d**0.5,
                torch.randn(d, dtype=torch.float64, generator=gen))

    def eps(self, x: torch.Tensor, t, condition: Condition = None) -> torch.Tensor:
        eps = self.denoiser.eps(x, t, condition)
        mat, bias = self._field(condition)
        rms = eps.pow(2).mean().sqrt()
        return eps + self.relative_error * rms * torch.tanh(x @ mat.T + bias)


@dataclasses.dataclass(frozen=True)
class AttributeCase:
    """One guided case on attributes2d: what it is (``description``), the rule and its conditions, and the region
    its record reads (``region(x) -> bool [N]``, named ``region_name``)."""

    description: str
    rule: object
    conditions: dict
    region: Callable[[torch.Tensor], torch.Tensor]
    region_name: str


def red_dog(x: torch.Tensor) -> torch.Tensor:
    """The red dog's quadrant of attributes2d: x_1 < 0 < x_2."""
    return (x[:, 0] < 0) & (x[:, 1] > 0)


def purple_band(x: torch.Tensor) -> torch.Tensor:
    """The band between the red and the blue halves of attributes2d: |x_1| < 1."""
    return x[:, 0].abs() < 1.0


def attribute_cases() -> dict[str, AttributeCase]:
    """attributes2d's negative-prompt and composition cases, sampled by the analytic and the network claims alike,
    by identifier: ``negative_001`` (source 001's form, +dog -red at guidance_scale 3), ``negative_000`` (source
    000's form, +dog at strength 3, -red at 1) and ``compose`` (red dog and blue dog, weights 1 and 1)."""
    from verify import rules

    dog_not_red = {"cond": ("dog",), "negative": ("red",)}
    return {
        "negative_001": AttributeCase("+dog, -red, g=3", rules.get("negative_prompt_001", guidance_scale=3.0),
                                      dog_not_red, red_dog, "red_dog"),
        "negative_000": AttributeCase("+dog 3, -red 1", rules.get("negative_prompt_000", w_pos=3.0, w_neg=1.0),
                                      dog_not_red, red_dog, "red_dog"),
        "compose": AttributeCase("red dog 1, blue dog 1", rules.get("compose", weights=[1.0, 1.0]),
                                 {"cond_1": ("red", "dog"), "cond_2": ("blue", "dog")}, purple_band, "purple_band"),
    }


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one intra-op thread and restore the caller's setting, also on an exception; a context
    manager, and a decorator as ``@one_thread()``. The claims' and figures' tensors are tiny: on the 2-core machine
    the ledger runs on, two threads made the per-step 2 x 2 Cholesky factorisations of the noised laws an order of
    magnitude slower (the APG/CFG-Zero* quick runs: 44 s against 3 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
