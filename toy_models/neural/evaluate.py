r"""How far a denoiser is from the exact one: the relative, :math:`\sigma_t^2`-weighted score error.

.. math::
   r(t, c) = \Big(\frac{E_{x \sim p_t(\cdot\mid c)} \|\hat\varepsilon(x, t, c) - \varepsilon^*(x, t, c)\|^2}
                   {E_{x \sim p_t(\cdot\mid c)} \|\varepsilon^*(x, t, c)\|^2}\Big)^{1/2},
   \qquad \varepsilon^* = -\sigma_t \nabla \log p_t(x \mid c),

i.e. the score error weighted by :math:`\sigma_t^2` (Song et al. 2021's :math:`\lambda(t) = \sigma_t^2`), relative
to the size of the exact prediction at the same t. Expectations are Monte Carlo over ``n`` draws of the noised law
(float64 ground truth, :class:`~toy_models.denoiser.AnalyticDenoiser`). Two summaries over the grid of times and
conditions:

* ``pooled_relative_error``: :math:`(\sum \text{numerators} / \sum \text{denominators})^{1/2}`, the relative
  :math:`\sigma^2`-weighted score error over the grid (the DSM excess loss relative to the exact prediction's size;
  dominated by t near 1, where :math:`\|\varepsilon^*\|^2 \approx d`); the "5 %" training target refers to it;
* ``rms_relative_error``: the root mean square of :math:`r` over the cells, so every noise level counts equally
  (stricter: small t, where :math:`\varepsilon^*` is small and sharp, weighs as much as t = 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..denoiser import AnalyticDenoiser, Denoiser
from ..gaussian_mixture import Condition, normalize_condition
from ..world import World

__all__ = ["EVAL_TIMES", "condition_key", "relative_error", "score_error_table"]

#: the times of the score-error table (vp-linear: sigma from 0.045 to 1)
EVAL_TIMES = (0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)


def condition_key(condition: Condition) -> str:
    """A JSON key for a condition: ``"null"``, ``"3"`` or ``"dog+red"``."""
    cond = normalize_condition(condition)
    if cond is None:
        return "null"
    return str(cond) if isinstance(cond, int) else "+".join(cond)


def relative_error(errors_sq: Sequence[torch.Tensor], sizes_sq: Sequence[torch.Tensor]) -> tuple[float, float]:
    r"""``(r, se)``: :math:`r = (\sum a / \sum b)^{1/2}` over one or more cells of per-point squared errors ``a``
    and squared exact sizes ``b`` (each ``[n_c]``), and its Monte Carlo standard error. Delta method for a ratio of
    sums over independently drawn cells (strata): :math:`\mathrm{var}(\sum a - R \sum b) = \sum_c n_c
    \mathrm{var}_c(a - R b)`, :math:`\mathrm{se}(R) = \sqrt{\cdot} / \sum b`, :math:`\mathrm{se}(r) =
    \mathrm{se}(R) / 2r`."""
    total_b = float(sum(float(b.sum()) for b in sizes_sq))
    ratio = float(sum(float(a.sum()) for a in errors_sq)) / total_b
    var = sum(len(a) * float((a - ratio * b).var()) for a, b in zip(errors_sq, sizes_sq, strict=True) if len(a) > 1)
    r = math.sqrt(ratio)
    return r, (math.sqrt(var) / total_b / (2 * r) if r > 0 else 0.0)


def score_error_table(denoiser: Denoiser, world: World, times: Sequence[float] = EVAL_TIMES,
                      conditions: Sequence[Condition] | None = None, n: int = 2048, seed: int = 0) -> dict:
    """Relative score error by time and condition (null first, then every class by default).

    Returns ``{"times", "by_condition": {key: [r(t) ...]}, "standard_error": {key: [se(t) ...]},
    "pooled_relative_error", "rms_relative_error", "n"}``; ``se`` is the Monte Carlo standard error of each r
    (:func:`relative_error`).
    """
    conditions = [None, *world.class_conditions()] if conditions is None else list(conditions)
    exact = AnalyticDenoiser(world, denoiser.schedule)
    gen = torch.Generator().manual_seed(seed)
    table: dict[str, list[float]] = {}
    sums = [0.0, 0.0]
    standard_errors: dict[str, list[float]] = {}
    for c in conditions:
        row, se_row = [], []
        for t in times:
            x = exact.noised_law(t, c).sample(n, gen)  # [n, d] float64
            truth = exact.eps(x, t, c)
            error = denoiser.eps(x, t, c).to(torch.float64) - truth
            a, b = error.pow(2).sum(1), truth.pow(2).sum(1)  # [n] each
            sums[0], sums[1] = sums[0] + float(a.sum()), sums[1] + float(b.sum())
            r, se = relative_error([a], [b])
            row.append(r)
            se_row.append(se)
        table[condition_key(c)] = row
        standard_errors[condition_key(c)] = se_row
    cells = [r for row in table.values() for r in row]
    return {"times": list(times), "by_condition": table, "standard_error": standard_errors, "n": n,
            "pooled_relative_error": math.sqrt(sums[0] / sums[1]),
            "rms_relative_error": math.sqrt(sum(r * r for r in cells) / len(cells))}
