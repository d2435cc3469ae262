r"""Image worlds: coloured shapes in the quadrants of a small RGB image, as exact field mixtures.

``shapes(size)`` builds a :class:`~toy_models.world.World` on images ``[3, size, size]`` (d = 3 size^2) whose law is a
:class:`~toy_models.field_mixture.FieldMixture` of 48 equally weighted components, one per combination of

* colour: ``red``, ``green``, ``blue`` (:data:`COLOURS`),
* shape: ``disc``, ``ring``, ``bar`` (horizontal), ``cross`` (:data:`SHAPES`),
* position: ``top-left``, ``top-right``, ``bottom-left``, ``bottom-right``, the centre of a quadrant
  (:data:`POSITIONS`),

component index (and class label) ``k = 16 i_colour + 4 i_shape + i_position`` (:func:`component_index`,
:func:`component_attributes`), attributes ``{"colour", "shape", "position"}``: a condition may be a label, a full
token set ``("red", "ring", "top-left")`` or a partial one ``("red",)``. Registered as ``shapes16`` and ``shapes32``
in :data:`toy_models.scenarios.WORLDS`; ``shapes(64)`` (d = 12288) serves dimension scaling.

Mean image, in [-1, 1]. The background is :data:`BACKGROUND` in every channel, the object is its colour
(:data:`COLOUR_VALUES`: the named channel :data:`ON`, the other two :data:`OFF`), blended by the object's
anti-aliased coverage a (the fraction of an 8 x 8 grid of sub-pixel samples inside the shape):
``mean = (1 - a) BACKGROUND + a colour``. Geometry in units of the quadrant's half-width q = size / 4 around
the quadrant's centre: disc radius 0.75 q; ring radii 0.4 q to 0.8 q; bar half-sizes 0.85 q x 0.35 q; cross two
bars 0.85 q x 0.25 q. :func:`object_mask` is the region a > 1/2.

Texture. Every component has the same stationary spectrum in every channel (its DCT coefficients independent):
:math:`\nu(f) = v\, s(f)/\overline{s}`, :math:`s(f) = \text{floor} + 1/(1 + (f/f_0)^2)` with the coefficient (p, q)'s
frequency :math:`f = \sqrt{p^2 + q^2}/(2\,\text{size})` cycles per pixel, ``floor`` = 0.2, :math:`f_0` = 0.05 cycles
per pixel and :math:`\overline s` the mean of s over the coefficients, so the pixel variance averaged over the
image is exactly v = :data:`TEXTURE_STD` ^2 = 0.1^2 (the trace of :math:`B\,\mathrm{diag}(\nu)B^\top` is the sum of
:math:`\nu`); the per-pixel std ranges over [0.098, 0.111] (the cosines peak at the border). With
|mean| <= 0.6 (4 stds from +-1) the fraction of pixels of p(x) samples outside [-1, 1] is about 1e-6 (measured:
6.5e-7 on shapes16, 1.9e-6 on shapes32, 4000 samples each; tests/test_image_worlds.py bounds it): over-exposure is
what guidance does, not the data.
"""

from __future__ import annotations

import itertools

import torch

from ._checks import as_int
from .field_mixture import FieldMixture
from .gaussian_mixture import Condition, normalize_condition
from .world import World

__all__ = ["COLOURS", "SHAPES", "POSITIONS", "BACKGROUND", "ON", "OFF", "COLOUR_VALUES", "TEXTURE_STD", "shapes",
           "gaussian_pair", "object_mask", "coverage", "component_index", "component_attributes", "texture_spectrum"]

F64 = torch.float64
COLOURS = ("red", "green", "blue")
SHAPES = ("disc", "ring", "bar", "cross")
POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right")
#: background level in every channel, and a colour's named channel (ON) and the other two (OFF)
BACKGROUND, ON, OFF = -0.3, 0.6, -0.6
COLOUR_VALUES = {colour: tuple(ON if c == i else OFF for c in range(3)) for i, colour in enumerate(COLOURS)}
#: the texture's pixel standard deviation averaged over the image (module docstring)
TEXTURE_STD = 0.1
#: sub-pixel samples per axis for the anti-aliased coverage
_SUPERSAMPLE = 8
_SPECTRUM_FLOOR, _SPECTRUM_F0 = 0.2, 0.05


def _check_size(size: int) -> int:
    size = as_int(size, "size", 8)
    if size % 4:
        raise ValueError(f"size: must be a multiple of 4 (quadrants with a centre on the half-pixel grid), got {size}")
    return size


def _check_name(value: str, name: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {list(allowed)}, got {value!r}")
    return value


def _inside(shape: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Whether the points (u, v), in quadrant half-widths from the quadrant's centre (u right, v down), are in the
    shape."""
    if shape == "disc":
        return u * u + v * v <= 0.75**2
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 0.8**2) & (r2 >= 0.4**2)
    if shape == "bar":
        return (u.abs() <= 0.85) & (v.abs() <= 0.35)
    return ((u.abs() <= 0.85) & (v.abs() <= 0.25)) | ((u.abs() <= 0.25) & (v.abs() <= 0.85))  # cross


def coverage(size: int, shape: str, position: str) -> torch.Tensor:
    """``[size, size]`` float64 in [0, 1]: the fraction of each pixel's 8 x 8 sub-pixel samples inside the object
    (the anti-aliased coverage the mean image blends with)."""
    size = _check_size(size)
    _check_name(shape, "shape", SHAPES)
    _check_name(position, "position", POSITIONS)
    q = size / 4.0
    row_c = q if position.startswith("top") else 3 * q
    col_c = q if position.endswith("left") else 3 * q
    offsets = (torch.arange(_SUPERSAMPLE, dtype=F64) + 0.5) / _SUPERSAMPLE  # sub-pixel sample positions in [0, 1)
    coords = (torch.arange(size, dtype=F64)[:, None] + offsets[None, :]).reshape(-1)  # [size * S]
    v = ((coords - row_c) / q)[:, None]
    u = ((coords - col_c) / q)[None, :]
    hits = _inside(shape, u, v).to(F64)  # [size S, size S]
    return hits.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE).mean(dim=(1, 3))


def object_mask(size: int, shape: str, position: str) -> torch.Tensor:
    """``BoolTensor[size, size]``: the exact region of the object, its pixels with coverage > 1/2."""
    return coverage(size, shape, position) > 0.5


def component_index(colour: str, shape: str, position: str) -> int:
    """The component (and class label) of a combination: ``16 i_colour + 4 i_shape + i_position``."""
    i_colour = COLOURS.index(_check_name(colour, "colour", COLOURS))
    i_shape = SHAPES.index(_check_name(shape, "shape", SHAPES))
    return 16 * i_colour + 4 * i_shape + POSITIONS.index(_check_name(position, "position", POSITIONS))


def component_attributes(index: int) -> dict[str, str]:
    """``{"colour": ..., "shape": ..., "position": ...}`` of component ``index`` (0..47)."""
    index = as_int(index, "index", 0)
    if index >= len(COLOURS) * len(SHAPES) * len(POSITIONS):
        raise ValueError(f"index: must be < 48, got {index}")
    return {"colour": COLOURS[index // 16], "shape": SHAPES[index // 4 % 4], "position": POSITIONS[index % 4]}


def texture_spectrum(size: int) -> torch.Tensor:
    """``[size, size]`` float64: the variances of one channel's DCT coefficients (module docstring), mean
    ``TEXTURE_STD**2``."""
    size = _check_size(size)
    p = torch.arange(size, dtype=F64)
    f = torch.sqrt(p[:, None] ** 2 + p[None, :] ** 2) / (2 * size)
    s = _SPECTRUM_FLOOR + 1.0 / (1.0 + (f / _SPECTRUM_F0) ** 2)
    return TEXTURE_STD**2 * s / s.mean()


def shapes(size: int = 16, *, dtype: torch.dtype = F64) -> World:
    """The shapes world on ``[3, size, size]`` images (module docstring); deterministic. ``size``: a multiple of 4,
    at least 8."""
    size = _check_size(size)
    combos = list(itertools.product(COLOURS, SHAPES, POSITIONS))
    means = torch.empty(len(combos), 3, size, size, dtype=F64)
    for k, (colour, shape, position) in enumerate(combos):
        a = coverage(size, shape, position)
        for ch, value in enumerate(COLOUR_VALUES[colour]):
            means[k, ch] = (1.0 - a) * BACKGROUND + a * value  # exactly the colour at a = 1, the background at 0
    spectra = texture_spectrum(size).expand(len(combos), 3, size, size)
    law = FieldMixture(torch.full((len(combos),), 1.0 / len(combos), dtype=F64), means, spectra,
                       labels=torch.arange(len(combos)),
                       attributes={"colour": [c for c, _, _ in combos], "shape": [s for _, s, _ in combos],
                                   "position": [p for _, _, p in combos]}, dtype=dtype)
    d = 3 * size * size
    return World(f"shapes{size}", law, f"d = {d} (3 x {size} x {size}): 48 coloured shapes (3 colours x 4 shapes x 4 "
                 f"quadrants) on a dark background, DCT-diagonal texture of std {TEXTURE_STD:g}")



def gaussian_pair(world: World, condition: Condition) -> World:
    r"""The Gaussian conditional/unconditional pair of an image world: :math:`p(x \mid c)` = ``world.law(condition)``
    (one component of the shapes worlds for a full condition), :math:`p(x)` = the world's unconditional law
    moment-matched coefficient by coefficient (:meth:`~toy_models.field_mixture.FieldMixture.moment_matched`).

    Both laws are single Gaussians diagonal in the same DCT basis, so CFG's sampled law is Gaussian and factorises
    over the coefficients, exactly as in the one-dimensional Gaussian analyses of CFG (``gauss1d``), but at image
    scale. Unlike the joint world, the conditional is narrower than the unconditional *at the data* (the mixture's
    other components are folded into a broad Gaussian), so guidance keeps pushing near t = 0: the setting in which
    CFG over-exposes. Given as separate Gaussians (not a joint law), as ``gauss1d`` is."""
    cond = world.law(condition)
    if not isinstance(cond, FieldMixture) or cond.n_components != 1:
        raise ValueError(f"condition: {condition!r} must select exactly one component of an image world, got "
                         f"{getattr(cond, 'n_components', '?')}")
    key = normalize_condition(condition)
    return World(f"{world.name}-gaussian", world.unconditional.moment_matched(),
                 f"{world.name}: p(x | {key}) against the moment-matched Gaussian p(x) (diagonal in the DCT basis)",
                 {key: cond})
