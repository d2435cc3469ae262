r"""Where each token of the image network attends on the patch grid (the 2-D evidence of S0-XATTN; drawn by
``image_attention.png``).

Source 000's cross-attention section (:data:`verify.claims.sources.S0`) has the image features as queries and the
text tokens as keys and values, so that each image position reads the tokens describing it. On ``shapes16``
(:mod:`toy_models.image_worlds`) the description is exact: the condition ``(colour, shape, position)`` puts one
object in one quadrant, and :func:`~toy_models.image_worlds.object_mask` is its region. The trained patch network
(``checkpoints/shapes16``, patch 4: a 4 x 4 grid of P = 16 attention positions) either reads a token where the
object is or it does not.

Measurement. For every condition of :data:`GROUPS` x :data:`~toy_models.image_worlds.POSITIONS` (16 full
conditions, every colour, shape and position) and every t of :data:`TIMES`, ``n`` points from the exact noised
conditional :math:`p_t(x\mid c)` go through the network; the cross-attention probabilities
:math:`A_{l}[x, h, p, j]` (layer l, head h, patch p, token j; each row a softmax over the 3 tokens) are averaged
over heads and points, :math:`\bar A_l[p, j]`. Token j's *map* is where on the grid it is read,

.. math::  m_{l,j}(p) = \bar A_l[p, j] \,/\, \textstyle\sum_{p'} \bar A_l[p', j],

a probability over the 16 patches (:func:`token_maps`); its *share* is :math:`\frac1P\sum_p \bar A_l[p, j]`, how
much of the attention the token takes at all. The object's region on the grid is its *patch coverage*
:math:`a(p)`, the fraction of patch p's pixels in the mask (:func:`patch_coverage`), and its *patches*
:math:`O = \{p : a(p) > 0\}`. Scores per token kind (position, shape, colour), layer and t, averaged over the
conditions: the mass :math:`\sum_{p\in O} m(p)` against the area fraction :math:`|O|/P` (what a uniform map
gives), the Spearman rank correlation between m and a, and the rate at which m's largest patch lies in O.

Criterion (:func:`permutation_pvalue`). Null hypothesis: a token's map does not follow the object, i.e. within a
(colour, shape) group the four positions' maps are exchangeable. Statistic: :math:`T = \sum_k \sum_{p\in O_k}
m_k(p)`, each condition's map scored on its own object's region; its null distribution is exact, over the
:math:`(4!)^G` reassignments of maps to positions within the G groups (the same shape's region moved to another
quadrant). The p-value is the fraction of reassignments with :math:`T \ge T_\text{obs}`, so its false-alarm rate is
at most its level, exactly (a permutation test needs no distributional assumption). Holm's procedure
(:func:`verify.metrics.holm_reject`) at :data:`ALPHA` controls the family-wise rate over both tails ("follows":
:math:`T` large; "avoids": :math:`T` small, the same test on :math:`-T`) of the 3 kinds x layers x t tests.
Power against attention uniform over the patches: a uniform map scores the same under every reassignment, so
p = 1 in both tails and it is never rejected (nor is a map identical at the four positions). When, in every group,
each map puts more mass on its own object's patches than on the same shape's patches in any other quadrant, every
term of :math:`T` is at least its reassigned counterpart, the observed assignment is the unique maximum and
p = :math:`24^{-G}` = 3.0e-6 for G = 4, below Holm's smallest threshold :math:`\alpha/m` = 9.3e-4 for m = 54 tests
(3 kinds x 3 layers x 3 t x 2 tails): power 1 against every such concentrated alternative, however small its excess
over chance. No single group decides (its own p-value is at least 1/24 = 0.042 > 9.3e-4). The maps carry Monte
Carlo noise from n points; that noise is inside the permutation null (exchangeable draws), so it costs power, never
false alarms.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

from toy_models import get_world
from toy_models.image_worlds import COLOURS, POSITIONS, SHAPES, object_mask
from verify.config import RunConfig
from verify.metrics import holm_reject

from . import provider, to_json
from .network import Card, NetworkBlock, NetworkModels
from .shared import one_thread

__all__ = ["IMAGE_WORLD", "TIMES", "GROUPS", "KINDS", "FIGURE_CONDITIONS", "ALPHA", "N", "QUICK_N", "SEED_OFFSET",
           "patch_coverage", "token_kind", "token_maps", "mass_in_region", "permutation_pvalue", "KindScore",
           "ImageAttention", "measure_image_attention", "image_attention", "conditions", "cell_seed"]

IMAGE_WORLD = "shapes16"
TIMES = (0.1, 0.3, 0.6)
#: (colour, shape) groups, each at the four positions: every colour and every shape at least once
GROUPS = (("red", "disc"), ("green", "ring"), ("blue", "bar"), ("red", "cross"))
KINDS = ("position", "shape", "colour")
#: the conditions the figure draws, one per group and each at another position
FIGURE_CONDITIONS = (("red", "disc", "top-left"), ("green", "ring", "top-right"), ("blue", "bar", "bottom-left"),
                     ("red", "cross", "bottom-right"))
#: Holm's family-wise error rate over the kinds x layers x t permutation tests
ALPHA = 0.05
N, QUICK_N = 64, 32
SEED_OFFSET = 41
_KIND_VALUES = {"position": POSITIONS, "shape": SHAPES, "colour": COLOURS}


def conditions() -> tuple[tuple[str, str, str], ...]:
    """The measured conditions, group by group, each group's four positions in :data:`POSITIONS` order."""
    return tuple((colour, shape, position) for colour, shape in GROUPS for position in POSITIONS)


def cell_seed(seed: int, i_t: int, i_condition: int) -> int:
    """The seed of the points of time ``TIMES[i_t]`` and condition ``conditions()[i_condition]``: one generator per
    cell, so that any cell can be redrawn alone."""
    return seed + SEED_OFFSET + 1000 * i_t + i_condition


def token_kind(token: str) -> str:
    """``"position"``, ``"shape"`` or ``"colour"``: the attribute a shapes token names."""
    for kind, values in _KIND_VALUES.items():
        if token in values:
            return kind
    raise ValueError(f"token: {token!r} names no colour, shape or position of the shapes worlds")


def patch_coverage(size: int, patch: int, shape: str, position: str) -> torch.Tensor:
    """``[P]`` float64, P = (size / patch)^2 in row-major grid order: the fraction of each patch's pixels inside
    :func:`~toy_models.image_worlds.object_mask` (the object's region pooled to the attention grid)."""
    if not isinstance(patch, int) or isinstance(patch, bool) or patch < 1 or size % patch:
        raise ValueError(f"patch: must be a positive integer dividing size {size}, got {patch!r}")
    mask = object_mask(size, shape, position).to(torch.float64)
    g = size // patch
    return mask.reshape(g, patch, g, patch).mean(dim=(1, 3)).reshape(-1)


def token_maps(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From cross-attention probabilities ``[depth, N, heads, P, L]``: each token's map over the patches
    ``[depth, L, P]`` (the head- and point-averaged probability normalised over P, module docstring) and its share
    ``[depth, L]`` (the average over P of the head- and point-averaged probability)."""
    if not isinstance(probs, torch.Tensor) or probs.dim() != 5:
        raise ValueError(f"probs: expected a tensor [depth, N, heads, P, L], got "
                         f"{list(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__}")
    mean = probs.to(torch.float64).mean(dim=(1, 2)).transpose(1, 2)  # [depth, L, P]
    return mean / mean.sum(-1, keepdim=True), mean.mean(-1)


def mass_in_region(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """``maps [..., P]`` summed over the patches of the boolean ``region [P]``."""
    if region.dtype != torch.bool or region.shape != maps.shape[-1:]:
        raise ValueError(f"region: expected a bool tensor [{maps.shape[-1]}], got {region.dtype} {list(region.shape)}")
    return (maps * region.to(maps.dtype)).sum(-1)


def permutation_pvalue(masses: Any) -> float:
    r"""Exact permutation p-value of "the maps follow their object" (module docstring). ``masses[g, i, j]``: the
    mass of group g's position-i map in the region of the same shape at position j (``[G, 4, 4]``, any square
    groups ``[G, k, k]``). Statistic :math:`T = \sum_g \operatorname{tr} M_g`; null: every within-group
    reassignment :math:`\pi_g` of maps to positions, :math:`T_\pi = \sum_g \sum_i M_g[i, \pi_g(i)]`, equally likely;
    p = the fraction of the :math:`(k!)^G` reassignments with :math:`T_\pi \ge T`."""
    m = np.asarray(masses, dtype=np.float64)
    if m.ndim != 3 or m.shape[1] != m.shape[2] or m.shape[0] < 1 or not np.isfinite(m).all():
        raise ValueError(f"masses: expected finite [G, k, k] masses, got shape {list(m.shape)}")
    g, k, _ = m.shape
    perms = np.array(list(itertools.permutations(range(k))))  # [k!, k]
    per_group = m[:, np.arange(k)[None, :], perms].sum(-1)  # [G, k!]: each reassignment's score, group by group
    observed = float(np.trace(m, axis1=1, axis2=2).sum())
    # a reassignment's total is a sum of g k masses in [0, 1], at most g k: each of its g k roundings is within
    # eps/2 of that total, so two totals equal in exact arithmetic differ by at most (g k)^2 eps; ties within that
    # count as ties (a uniform map ties every reassignment, p = 1)
    tol = (g * k) ** 2 * np.finfo(np.float64).eps
    totals = np.zeros(1)
    for row in per_group:  # the null distribution of T, exactly: (k!)^G sums
        totals = (totals[:, None] + row[None, :]).reshape(-1)
    return float((totals >= observed - tol).mean())


@dataclass(frozen=True)
class KindScore:
    """One token kind at one layer and t, averaged over the conditions: the map's mass in the object's patches and
    the area fraction of those patches (a uniform map's mass), the Spearman correlation between the map and the
    patch coverage, the rate at which the map's largest patch is an object patch, the token's share of the
    attention, the permutation p-values of "the map follows the object" (more mass in its own object's patches
    than the null's reassignments give) and of "the map avoids the object" (less), and whether Holm rejects the
    null for each (one family: both tails of every kind, layer and t)."""

    mass_in_object: float
    area_fraction: float
    rank_correlation: float
    argmax_in_object_rate: float
    share: float
    p_value: float
    p_value_avoids: float
    follows: bool
    avoids: bool


@dataclass(frozen=True)
class ImageAttention:
    """The shapes16 network's cross-attention on the patch grid (module docstring).

    ``maps[t][key]``: ``[depth][kind][P]`` token maps of condition ``key`` (``"red disc top-left"``) by kind
    (:data:`KINDS` order); ``shares[t][key]``: ``[depth][kind]``; ``coverage[key]``: ``[P]``;
    ``scores[t][kind]``: a :class:`KindScore` per layer. For :data:`FIGURE_CONDITIONS`: ``pixel_maps[t][key]``
    ``[depth][kind][H][W]`` (the maps spread over the pixels by the network's ``attention_to_pixels``),
    ``mean_images[key]`` ``[3][H][W]`` and ``masks[key]`` ``[H][W]``. ``n`` points per condition and t,
    ``hypotheses`` tests under Holm at ``alpha``, ``min_p_value`` the smallest p-value the design can reach."""

    times: tuple[str, ...]
    conditions: tuple[tuple[str, str, str], ...]
    grid: tuple[int, ...]
    depth: int
    maps: dict[str, dict[str, tuple]]
    shares: dict[str, dict[str, tuple]]
    coverage: dict[str, tuple[float, ...]]
    scores: dict[str, dict[str, tuple[KindScore, ...]]]
    pixel_maps: dict[str, dict[str, tuple]]
    mean_images: dict[str, tuple]
    masks: dict[str, tuple]
    n: int
    alpha: float
    hypotheses: int
    min_p_value: float
    card: Card | None = None
    skipped: str = ""

    def best_layer(self, t: str, kind: str) -> int:
        """The layer whose map of ``kind`` puts the most mass in the object's patches at ``t``."""
        rows = self.scores[t][kind]
        return max(range(len(rows)), key=lambda layer: rows[layer].mass_in_object)

    def best(self, t: str, kind: str) -> KindScore:
        return self.scores[t][kind][self.best_layer(t, kind)]

    def block(self) -> NetworkBlock:
        """The evidence block S0-XATTN carries under ``"images"``; reports, does not decide. The per-condition
        token maps stay out of the ledger (6912 numbers; the figure draws them): it records the scores, the patch
        coverage and the best layers."""
        if self.skipped:
            return NetworkBlock({"skipped": self.skipped})
        cells = len(self.times) * self.depth

        def count(kind: str, tail: str) -> int:
            return sum(getattr(s, tail) for t in self.times for s in self.scores[t][kind])

        def masses(kind: str) -> str:
            return "/".join(f"{self.best(t, kind).mass_in_object:.2f}" for t in self.times)

        chance = self.best(self.times[0], "position").area_fraction
        follows = ", ".join(f"{count(k, 'follows')}/{cells}" for k in KINDS)
        avoiding = [f"{k} avoids it in {count(k, 'avoids')}/{cells}" for k in KINDS if count(k, "avoids")]
        headline = (f"shapes16 network (4 x 4 patches, best layer, t = {'/'.join(self.times)}): mass in the object's "
                    "patches " + ", ".join(f"{k} token {masses(k)}" for k in KINDS) + f" against {chance:.2f} by "
                    f"area; the map follows the object in {follows} (position, shape, colour) layer x t "
                    "permutation tests"
                    + (f", {', '.join(avoiding)}" if avoiding else "") + f" (Holm {self.alpha:g})")
        notes = []
        for k in KINDS:
            if count(k, "follows") == 0:
                share = float(np.mean([s.share for t in self.times for s in self.scores[t][k]]))
                notes.append(f"On shapes16 the {k} token takes {share:.2f} of every patch's attention on average but "
                             f"its map follows the object at no layer or t"
                             + (f" (less mass on the object's patches than elsewhere in {count(k, 'avoids')}/{cells})"
                                if count(k, "avoids") else ""))
        conditions = "; ".join(notes)
        summary = {t: {k: {"best_layer": self.best_layer(t, k), **vars(self.best(t, k))} for k in KINDS}
                   for t in self.times}
        evidence = {"world": IMAGE_WORLD, "conditions": [" ".join(c) for c in self.conditions],
                    "times": list(self.times), "points_per_condition": self.n, "grid": list(self.grid),
                    "scores": to_json(self.scores), "best_layer_summary": summary,
                    "patch_coverage": to_json(self.coverage), "holm_alpha": self.alpha, "hypotheses": self.hypotheses,
                    "min_p_value": self.min_p_value, "checkpoint": to_json(self.card)}
        return NetworkBlock(evidence, headline, conditions)


def _key(condition: tuple[str, ...]) -> str:
    return " ".join(condition)


def measure_image_attention(den: Any, config: RunConfig) -> ImageAttention:
    """:class:`ImageAttention` of the image network ``den`` (trained on shapes16): :data:`N` points per condition
    and t (quick :data:`QUICK_N`), cell seeds :func:`cell_seed`."""
    world = get_world(IMAGE_WORLD)
    net = den.network.config
    if net.image_shape is None:
        raise ValueError("den: expected an image network (its config has no image_shape)")
    _, size, _ = net.image_shape
    n = QUICK_N if config.quick else N
    conds = conditions()
    coverage = {_key(c): patch_coverage(size, net.patch, c[1], c[2]) for c in conds}
    maps: dict[str, dict[str, torch.Tensor]] = {}
    shares: dict[str, dict[str, torch.Tensor]] = {}
    for i_t, t in enumerate(TIMES):
        a, s = (float(v) for v in den.schedule.alpha_sigma(float(t)))
        maps[f"{t:g}"], shares[f"{t:g}"] = {}, {}
        for i_c, c in enumerate(conds):
            gen = torch.Generator().manual_seed(cell_seed(config.seed, i_t, i_c))
            x = world.law(c).noised(a, s).sample(n, gen)
            probs, tokens = den.cross_attention(x, t, c)
            order = [list(map(token_kind, tokens)).index(kind) for kind in KINDS]
            m, share = token_maps(probs)
            maps[f"{t:g}"][_key(c)], shares[f"{t:g}"][_key(c)] = m[:, order], share[:, order]
    depth = next(iter(maps[f"{TIMES[0]:g}"].values())).shape[0]
    raw = _scores(maps, shares, coverage, depth)
    pvalues = np.array([p for t in raw for k in KINDS for row in raw[t][k] for p in row[-2:]])
    reject = iter(holm_reject(pvalues, ALPHA).tolist())
    scores = {t: {k: tuple(KindScore(*row, follows=bool(next(reject)), avoids=bool(next(reject)))
                           for row in raw[t][k]) for k in KINDS} for t in raw}
    fig = {_key(c) for c in FIGURE_CONDITIONS}
    pixel_maps = {t: {key: den.attention_to_pixels(v) for key, v in by_c.items() if key in fig}
                  for t, by_c in maps.items()}
    mean_images = {_key(c): world.law(c).mean().reshape(net.image_shape) for c in FIGURE_CONDITIONS}
    masks = {_key(c): object_mask(size, c[1], c[2]) for c in FIGURE_CONDITIONS}
    return ImageAttention(tuple(maps), conds, tuple(net.attention_grid), depth,
                          _tuples(maps), _tuples(shares), _tuples(coverage), scores, _tuples(pixel_maps),
                          _tuples(mean_images), _tuples(masks), n, ALPHA, len(pvalues),
                          math.factorial(len(POSITIONS)) ** -len(GROUPS), Card.of(den))


def _tuples(value: Any) -> Any:
    """Tensors inside (nested dicts of) tensors as nested tuples: a frozen result holds no mutable tensors."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return _tuples(value.tolist())
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _scores(maps: dict[str, dict[str, torch.Tensor]], shares: dict[str, dict[str, torch.Tensor]],
            coverage: dict[str, torch.Tensor], depth: int) -> dict[str, dict[str, list[tuple]]]:
    """Per t, kind and layer: (mass in object, area fraction, Spearman, argmax-in-object rate, share, p-value that
    the map follows the object, p-value that it avoids it)."""
    conds = conditions()
    out: dict[str, dict[str, list[tuple]]] = {}
    for t, by_c in maps.items():
        out[t] = {}
        for i_kind, kind in enumerate(KINDS):
            rows = []
            for layer in range(depth):
                mass, area, rho, hit, share = [], [], [], [], []
                for c in conds:
                    m, cov = by_c[_key(c)][layer, i_kind], coverage[_key(c)]
                    region = cov > 0
                    mass.append(float(mass_in_region(m, region)))
                    area.append(float(region.to(torch.float64).mean()))
                    rho.append(float(stats.spearmanr(m.numpy(), cov.numpy()).statistic))
                    hit.append(float(region[m.argmax()]))
                    share.append(float(shares[t][_key(c)][layer, i_kind]))
                # masses[g, i, j]: group g's position-i map on the region of its shape at position j
                masses = [[[float(mass_in_region(by_c[_key((colour, shape, pi))][layer, i_kind],
                                                 coverage[_key((colour, shape, pj))] > 0))
                            for pj in POSITIONS] for pi in POSITIONS] for colour, shape in GROUPS]
                rows.append((float(np.mean(mass)), float(np.mean(area)), float(np.mean(rho)), float(np.mean(hit)),
                             float(np.mean(share)), permutation_pvalue(masses),
                             permutation_pvalue(-np.asarray(masses))))
            out[t][kind] = rows
    return out


@provider
def image_attention(config: RunConfig, network_models: NetworkModels) -> ImageAttention:
    """:func:`measure_image_attention` of the shapes16 network; skipped without its checkpoint."""
    skipped = network_models.missing(IMAGE_WORLD)
    if skipped:
        return ImageAttention((), (), (), 0, {}, {}, {}, {}, {}, {}, {}, 0, ALPHA, 0, 1.0, None, skipped)
    with one_thread():
        return measure_image_attention(network_models.main[IMAGE_WORLD], config)
