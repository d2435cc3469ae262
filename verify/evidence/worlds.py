r"""Portraits of the named worlds (:data:`toy_models.scenarios.WORLDS`): what ``worlds.png`` draws.

Each portrait holds exact densities on a grid and samples from the world's own law (one generator, seeded with the
run's seed, consumed in the order of :data:`~toy_models.scenarios.WORLDS`):

* 1-D worlds (gauss1d, bimodal1d): densities on a line, :math:`p(x)` and :math:`p(x|c)` (gauss1d, given separately)
  or :math:`p(x)` and each class's share :math:`\pi_c p(x|c)` (bimodal1d);
* 2-D worlds (ring2d, attributes2d): :math:`\log p(x)` on a square grid and samples with their component and class;
* tokens16d: the component means, rows sorted by label, with their tokens;
* highdim: samples projected on their first two principal components (SVD of the centred sample);
* image worlds (shapes16, shapes32): a few component means, a few samples of :math:`p(x \mid` red ring top-left
  :math:`)` and of :math:`p(x)`, as ``[n, H, W, 3]`` images with values in the data's [-1, 1] scale (unclipped),
  and the fraction of sampled pixels outside [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from toy_models import World, get_world
from toy_models.scenarios import WORLDS
from verify.config import RunConfig

from . import provider
from .shared import one_thread

__all__ = ["Curve", "LinePortrait", "PlanePortrait", "MeansPortrait", "ProjectionPortrait", "ImagePortrait",
           "WorldPortrait", "WorldPortraits", "world_portraits", "IMAGE_MEANS", "IMAGE_CONDITION"]

F64 = torch.float64


@dataclass(frozen=True)
class Curve:
    """A density on the portrait's line: ``weight`` times :math:`p(x|c)` (``condition`` None: :math:`p(x)`)."""

    label: str
    condition: int | None
    weight: float
    density: np.ndarray


@dataclass(frozen=True)
class LinePortrait:
    """A 1-D world: its densities on the line ``x``."""

    x: np.ndarray
    curves: tuple[Curve, ...]


@dataclass(frozen=True)
class PlanePortrait:
    """A 2-D world: :math:`\\log p(x)` on ``axis`` x ``axis`` (rows x_2, columns x_1) and ``samples`` with the
    component and class label of each; ``tokens`` names each component's attributes (empty when it has none)."""

    axis: np.ndarray
    log_density: np.ndarray
    samples: np.ndarray
    components: np.ndarray
    labels: np.ndarray
    classes: tuple[int, ...]
    means: np.ndarray
    tokens: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class MeansPortrait:
    """A token world: the component means sorted by label (``[K, d]``), each row's tick (label and tokens), and the
    width of one token block."""

    means: np.ndarray
    ticks: tuple[str, ...]
    block_size: int


@dataclass(frozen=True)
class ProjectionPortrait:
    """A high-dimensional world: samples on their first two principal components, their class labels, and the
    fraction of the sample variance each component carries."""

    projection: np.ndarray
    labels: np.ndarray
    classes: tuple[int, ...]
    variance_ratio: tuple[float, float]


#: the components whose means an image portrait shows, and the condition whose samples it shows
IMAGE_MEANS = (("red", "ring", "top-left"), ("green", "disc", "top-right"), ("blue", "bar", "bottom-left"),
               ("red", "cross", "bottom-right"))
IMAGE_CONDITION = ("red", "ring", "top-left")
#: samples per image row (conditional and unconditional); the out-of-range fraction is measured on IMAGE_RANGE_SAMPLES
IMAGE_SAMPLES, IMAGE_RANGE_SAMPLES = 4, 200


@dataclass(frozen=True)
class ImagePortrait:
    r"""An image world: component ``means`` (with their tokens), samples of :math:`p(x \mid` ``condition``
    :math:`)` and of :math:`p(x)`, each ``[n, H, W, 3]`` in the data's scale, and the fraction of pixels outside
    [-1, 1] among ``range_samples`` draws of :math:`p(x)`."""

    means: np.ndarray
    mean_tokens: tuple[tuple[str, ...], ...]
    condition: tuple[str, ...]
    conditional: np.ndarray
    unconditional: np.ndarray
    range_samples: int
    out_of_range: float


@dataclass(frozen=True)
class WorldPortrait:
    name: str
    description: str
    portrait: LinePortrait | PlanePortrait | MeansPortrait | ProjectionPortrait | ImagePortrait


@dataclass(frozen=True)
class WorldPortraits:
    """Every named world's portrait, in the order of :data:`~toy_models.scenarios.WORLDS`."""

    seed: int
    n_samples: int
    worlds: tuple[WorldPortrait, ...]

    def get(self, name: str) -> WorldPortrait:
        for w in self.worlds:
            if w.name == name:
                return w
        raise ValueError(f"name: no portrait of {name!r}; have {[w.name for w in self.worlds]}")


def _density(law, x: np.ndarray) -> np.ndarray:
    """``exp(log p)`` of ``law`` at the points ``x`` (``[N, d]``), ``[N]``."""
    return torch.exp(law.log_prob(torch.as_tensor(x, dtype=F64))).numpy()


def _normal_label(law) -> str:
    """``N(mean, variance)`` of a one-component 1-D law."""
    return f"N({float(law.means[0, 0]):g}, {float(law.covariances[0, 0, 0]):g})"


def _line(world: World) -> LinePortrait:
    gm = world.unconditional
    if len(gm.classes) == 1 or not world.is_joint:  # p(x) and p(x|c) given separately (gauss1d)
        x = np.linspace(-4.0, 4.0, 600)
        cond = world.class_conditions()[-1]
        curves = (Curve(f"p(x) = {_normal_label(world.law(None))}", None, 1.0, _density(world.law(None), x[:, None])),
                  Curve(f"p(x | c) = {_normal_label(world.law(cond))}", int(cond), 1.0,
                        _density(world.law(cond), x[:, None])))
        return LinePortrait(x, curves)
    x = np.linspace(-4.5, 4.5, 600)
    curves = [Curve("p(x)", None, 1.0, _density(gm, x[:, None]))]
    for c in gm.classes.tolist():
        pi_c = float(gm.weights[gm.labels == c].sum())
        curves.append(Curve(f"{pi_c:g} p(x | c={c})", c, pi_c, pi_c * _density(world.law(c), x[:, None])))
    return LinePortrait(x, tuple(curves))


def _plane(world: World, lim: float, gen: torch.Generator, n: int) -> PlanePortrait:
    gm = world.unconditional
    axis = np.linspace(-lim, lim, 200)
    gx, gy = np.meshgrid(axis, axis)
    log_p = gm.log_prob(torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], axis=1), dtype=F64)).numpy()
    x, comp = gm.sample_with_components(n, gen)
    names = list(gm.attributes)
    tokens = tuple(tuple(gm.attributes[a][k] for a in names) for k in range(len(gm.means))) if names else ()
    return PlanePortrait(axis, log_p.reshape(gx.shape), x.numpy(), comp.numpy(), gm.labels[comp].numpy(),
                         tuple(gm.classes.tolist()), gm.means.numpy(), tokens)


def _means(world: World) -> MeansPortrait:
    gm = world.unconditional
    order = np.argsort(gm.labels.numpy(), kind="stable")
    blocks = [gm.attributes[f"block{j}"] for j in range(len(gm.attributes))]
    ticks = tuple(f"{int(gm.labels[k])}: " + " ".join(b[k] for b in blocks) for k in order)
    means = gm.means.numpy()[order]
    return MeansPortrait(means, ticks, means.shape[1] // len(blocks))


def _projection(world: World, gen: torch.Generator, n: int) -> ProjectionPortrait:
    gm = world.unconditional
    x, comp = gm.sample_with_components(n, gen)
    x = x.numpy().astype(np.float64)
    centred = x - x.mean(axis=0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    ratio = sv**2 / np.sum(sv**2)
    return ProjectionPortrait(centred @ vt[:2].T, gm.labels[comp].numpy(), tuple(gm.classes.tolist()),
                              (float(ratio[0]), float(ratio[1])))


def _images(world: World, gen: torch.Generator) -> ImagePortrait:
    gm = world.unconditional
    c, h, w = gm.shape

    def rgb(x: torch.Tensor) -> np.ndarray:
        return x.reshape(-1, c, h, w).permute(0, 2, 3, 1).double().numpy()

    means = torch.stack([gm.given(tokens).means[0] for tokens in IMAGE_MEANS])
    conditional = world.law(IMAGE_CONDITION).sample(IMAGE_SAMPLES, gen)
    draws = gm.sample(IMAGE_RANGE_SAMPLES, gen)
    return ImagePortrait(rgb(means), IMAGE_MEANS, IMAGE_CONDITION, rgb(conditional), rgb(draws[:IMAGE_SAMPLES]),
                         IMAGE_RANGE_SAMPLES, float((draws.abs() > 1).double().mean()))


@provider
@one_thread()
def world_portraits(config: RunConfig) -> WorldPortraits:
    """Every world's portrait (2000 samples per sampled panel, in quick runs too: drawing them takes well under a
    second; the image worlds draw 208 images each, about 0.1 s)."""
    gen = torch.Generator().manual_seed(config.seed)
    n = 2000
    out = []
    for name in WORLDS:
        world = get_world(name)
        gm = world.unconditional
        if hasattr(gm, "shape"):  # an image world (FieldMixture)
            portrait = _images(world, gen)
        elif gm.dim == 1:
            portrait = _line(world)
        elif gm.dim == 2:
            portrait = _plane(world, 4.0 if gm.attributes else 4.5, gen, n)
        elif any(a.startswith("block") for a in gm.attributes):
            portrait = _means(world)
        else:
            portrait = _projection(world, gen, n)
        out.append(WorldPortrait(name, world.description, portrait))
    return WorldPortraits(config.seed, n, tuple(out))
