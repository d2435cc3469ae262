r"""Named worlds. Each function builds one :class:`~toy_models.world.World`; ``get_world(name)`` looks it up.

Variances are variances: :math:`\mathcal N(m, v)` has variance :math:`v` (not standard deviation).

============== ==== ====== ===================================================================================
name           d    classes what it is for
============== ==== ====== ===================================================================================
``gauss1d``    1    1      :math:`p(x \mid c) = \mathcal N(1, 0.5)`, :math:`p(x) = \mathcal N(0, 1)`: the closed-form
                           single-Gaussian case of CFG (tilted law, moment ODEs)
``bimodal1d``  1    2      :math:`\tfrac12\mathcal N(-2, 0.5) + \tfrac12\mathcal N(2, 0.5)`, a class per mode:
                           overshoot, mass leaving the other class
``ring2d``     2    8      8 anisotropic Gaussians on a circle of radius 3 (radial variance 0.04, tangential
                           0.25): guided score fields, trajectories, samplers
``attributes2d`` 2  4      2 x 2 grid, colour (red x = -2, blue x = +2) x shape (dog y = +2, cat y = -2):
                           negative prompts and composition ("purple dog" between red and blue dogs)
``tokens16d``  16   16     4 blocks of 4 positions; token ``b{j}+`` / ``b{j}-`` sets the sign of block j's mean:
                           a world in which each position is controlled by one token (cross-attention)
``highdim``    64   10     10 classes of 2 full-covariance components each, fixed random parameters
``shapes16``   768  48     3 x 16 x 16 images: 3 colours x 4 shapes x 4 quadrants, DCT-diagonal texture
                           (a :class:`~toy_models.field_mixture.FieldMixture`, see :mod:`toy_models.image_worlds`)
``shapes32``   3072 48     the same at 3 x 32 x 32
============== ==== ====== ===================================================================================
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np

from .gaussian_mixture import GaussianMixture
from .image_worlds import shapes
from .world import World

__all__ = ["WORLDS", "get_world", "gauss1d", "bimodal1d", "ring2d", "attributes2d", "tokens16d", "highdim",
           "shapes16", "shapes32", "IMAGE_WORLDS"]


def gauss1d() -> World:
    r"""Conditional :math:`\mathcal N(1, 0.5)` (label 1) and unconditional :math:`\mathcal N(0, 1)`, as two Gaussians.

    Not a joint law: the implicit classifier is the density ratio (see :mod:`toy_models.world`).
    """
    uncond = GaussianMixture([1.0], [[0.0]], [[[1.0]]], labels=[0])
    cond = GaussianMixture([1.0], [[1.0]], [[[0.5]]], labels=[1])
    return World("gauss1d", uncond, "p(x|c) = N(1, 0.5), p(x) = N(0, 1): two single Gaussians", {1: cond})


def bimodal1d() -> World:
    r""":math:`\tfrac12\mathcal N(-2, 0.5)` (label 0) :math:`+ \tfrac12\mathcal N(2, 0.5)` (label 1)."""
    gm = GaussianMixture([0.5, 0.5], [[-2.0], [2.0]], [[[0.5]], [[0.5]]], labels=[0, 1])
    return World("bimodal1d", gm, "0.5 N(-2, 0.5) + 0.5 N(2, 0.5), one class per mode")


def ring2d(n_classes: int = 8, radius: float = 3.0, radial_var: float = 0.04, tangential_var: float = 0.25) -> World:
    """``n_classes`` equally weighted Gaussians on a circle, elongated along it (full covariances)."""
    angles = 2.0 * math.pi * np.arange(n_classes) / n_classes
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    covs = []
    for a in angles:
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])  # columns: radial, tangential
        covs.append(rot @ np.diag([radial_var, tangential_var]) @ rot.T)
    gm = GaussianMixture(np.full(n_classes, 1.0 / n_classes), means, np.array(covs), labels=np.arange(n_classes))
    return World("ring2d", gm, f"{n_classes} classes on a ring of radius {radius}, anisotropic covariances")


def attributes2d(spread: float = 2.0, var: float = 0.25) -> World:
    """Colour (red: x = -2, blue: x = +2) x shape (dog: y = +2, cat: y = -2); labels 0..3 in that order."""
    combos = list(itertools.product(["red", "blue"], ["dog", "cat"]))
    means = [[-spread if c == "red" else spread, spread if s == "dog" else -spread] for c, s in combos]
    gm = GaussianMixture(np.full(4, 0.25), means, np.stack([var * np.eye(2)] * 4), labels=np.arange(4),
                         attributes={"colour": [c for c, _ in combos], "shape": [s for _, s in combos]})
    return World("attributes2d", gm, "2 x 2 grid of colour (red/blue on x) and shape (dog/cat on y)")


def tokens16d(n_blocks: int = 4, block_size: int = 4, amplitude: float = 1.5, var: float = 0.3,
              within_block_corr: float = 0.5) -> World:
    r"""16 positions in 4 blocks; component :math:`(s_0, .., s_3) \in \{\pm\}^4` has block j's mean
    :math:`s_j \cdot` ``amplitude``. Attribute ``block{j}`` takes tokens ``b{j}+`` / ``b{j}-``; the label is the
    binary number :math:`\sum_j [s_j = -] 2^j`. Covariance: block-diagonal, variance ``var``, correlation
    ``within_block_corr`` inside a block.
    """
    dim = n_blocks * block_size
    block = var * ((1 - within_block_corr) * np.eye(block_size) + within_block_corr * np.ones((block_size,) * 2))
    cov = np.kron(np.eye(n_blocks), block)
    signs = list(itertools.product([1.0, -1.0], repeat=n_blocks))
    means = np.array([np.repeat(np.array(s) * amplitude, block_size) for s in signs])
    labels = [sum(2**j for j, s in enumerate(sg) if s < 0) for sg in signs]
    attributes = {f"block{j}": [f"b{j}{'+' if sg[j] > 0 else '-'}" for sg in signs] for j in range(n_blocks)}
    gm = GaussianMixture(np.full(len(signs), 1.0 / len(signs)), means, np.stack([cov] * len(signs)),
                         labels=labels, attributes=attributes)
    return World("tokens16d", gm, f"d = {dim}: {n_blocks} blocks of {block_size} positions, one token per block")


def highdim(dim: int = 64, n_classes: int = 10, per_class: int = 2, seed: int = 0) -> World:
    """``n_classes`` classes of ``per_class`` full-covariance components in ``dim`` dimensions (fixed seed).

    Class centres ~ N(0, 4 I), component offsets ~ N(0, 0.25 I); covariances ``0.3 A A^T / d + 0.2 I`` with A
    standard normal, so every eigenvalue lies in [0.2, about 1.4].
    """
    rng = np.random.default_rng(seed)
    centres = 2.0 * rng.standard_normal((n_classes, dim))
    means = np.repeat(centres, per_class, axis=0) + 0.5 * rng.standard_normal((n_classes * per_class, dim))
    a = rng.standard_normal((n_classes * per_class, dim, dim))
    covs = 0.3 * a @ a.transpose(0, 2, 1) / dim + 0.2 * np.eye(dim)
    k = n_classes * per_class
    gm = GaussianMixture(np.full(k, 1.0 / k), means, covs, labels=np.repeat(np.arange(n_classes), per_class))
    return World("highdim", gm, f"d = {dim}, {n_classes} classes x {per_class} full-covariance components")


def shapes16() -> World:
    """Coloured shapes on 3 x 16 x 16 images (:func:`toy_models.image_worlds.shapes`)."""
    return shapes(16)


def shapes32() -> World:
    """Coloured shapes on 3 x 32 x 32 images (:func:`toy_models.image_worlds.shapes`)."""
    return shapes(32)


WORLDS: dict[str, Callable[[], World]] = {
    "gauss1d": gauss1d,
    "bimodal1d": bimodal1d,
    "ring2d": ring2d,
    "attributes2d": attributes2d,
    "tokens16d": tokens16d,
    "highdim": highdim,
    "shapes16": shapes16,
    "shapes32": shapes32,
}


#: the worlds whose law is a :class:`~toy_models.field_mixture.FieldMixture` (d in the thousands): checks that need
#: dense covariances (verify.tolerances' rounding bounds) skip them
IMAGE_WORLDS = ("shapes16", "shapes32")


def get_world(name: str) -> World:
    """Build the named world (see the module table)."""
    try:
        return WORLDS[name]()
    except KeyError:
        raise ValueError(f"name: unknown world {name!r}; choose one of {sorted(WORLDS)}") from None
