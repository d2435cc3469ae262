r"""Derived tolerances: rounding-error bounds that checks compare against, never guessed constants.

The building block is Higham's :math:`\gamma_n = n u / (1 - n u)` (*Accuracy and Stability of Numerical
Algorithms*, 2nd ed., Lemma 3.1): a sum or dot product of ``n`` terms computed in floating point with unit roundoff
:math:`u` errs by at most :math:`\gamma_n` times the sum of the absolute values of its terms.

:func:`score_rounding_bound` applies it to the mixture score :math:`s = \sum_k r_k s_k`,
:math:`s_k = -\Sigma_k^{-1}(x - \mu_k)`, :math:`r = \operatorname{softmax}(l)`. Both engines of
:class:`~toy_models.gaussian_mixture.GaussianMixture` form each log joint :math:`l_k` from terms no larger than

.. math::  E_k = (\|W_k\|\,|x| + |W_k \mu_k|)^2 + |\log \text{norm}_k|, \qquad W_k = L_k^{-1},

(the quadratic form, whitened or expanded, plus the normaliser), so :math:`|\delta l_k| \le \gamma_n E_k`. A
perturbation :math:`|\delta l_k| \le \Delta = \gamma_n \max_k E_k` keeps each responsibility within
:math:`r_k' \in [r_k e^{-2\Delta}, r_k e^{2\Delta}]` (the normaliser moves by at most :math:`e^{\pm\Delta}`) and in
:math:`[0, 1]`, so the score moves by :math:`\sum_k (r'_k - r_k)(s_k - s)`, at most
:math:`\sum_k \min(r_k \operatorname{expm1}(2\Delta), 1)\, |s_k - s|`: about :math:`2\Delta \sum_k r_k|s_k - s|` when
:math:`\Delta` is small, and no longer a small number when :math:`\Delta \gtrsim 1`. That happens in float32 far
from the modes of a narrow mixture, where each log joint is ~1e11 and its rounding ~1e4: there a float32 score can
put its weight on the wrong component, and the bound says so instead of hiding it. Each component score is
formed from absolute coordinates (:math:`P_k x - b_k`, in either engine), whose terms are at most
:math:`M_k = \|W_k\|(\|W_k\|\,|x| + |W_k\mu_k|)`, so the weighted sum adds :math:`\gamma_n \sum_k r_k M_k`
(this term dominates at a mode, where the score itself vanishes). So, per point,

.. math::  |\hat s - s| \le \gamma_n \sum_k r_k M_k
           + \sum_k \min\big(r_k \operatorname{expm1}(2\Delta), 1\big)\,|s_k - s|,

with :math:`n` the length of the longest chain of roundings either engine applies to one term: the log joint (the
feature product has :math:`d^2 + d + 1` terms; the precision engine's :math:`g_k = P_k x - b_k` has :math:`d + 1`,
then :math:`x \cdot g_k - b_k \cdot x + c_k` adds :math:`2d + 2`), the softmax (shift, exp, sum of K, divide:
:math:`K + 3`), and the score (features: a K-term then a d-term product and a subtraction, :math:`K + d + 1`;
precision: a K-term sum). Taking the longer of each stage, :math:`n = d^2 + 3d + 3 + (K + 3) + (K + d + 1)`. A
reference computed by autograd of ``log_prob`` runs the chain forward and back: ``backward=True`` doubles :math:`n`.
The term scales: the features engine's terms are :math:`x^\top P_k x`, :math:`b_k \cdot x`, :math:`c_k`; the
precision engine's are :math:`x \cdot g_k`, :math:`b_k \cdot x`, :math:`c_k`; all are at most :math:`E_k` since
:math:`\|P_k\| = \|W_k\|^2` and :math:`|b_k| \le \|W_k\|\,|W_k\mu_k|`.
Everything is evaluated in float64 from the mixture's float64 parameters.
"""

from __future__ import annotations

import math

import torch

from toy_models.gaussian_mixture import GaussianMixture

__all__ = ["unit_roundoff", "gamma", "score_rounding_bound", "log_prob_rounding_bound", "score_bounds",
           "bayes_identity_tolerance"]


def unit_roundoff(dtype: torch.dtype) -> float:
    """:math:`u = 2^{-p}`: half the spacing of floating-point numbers at 1 (``finfo.eps / 2``)."""
    return torch.finfo(dtype).eps / 2.0


def gamma(n: int, dtype: torch.dtype) -> float:
    r"""Higham's :math:`\gamma_n = n u/(1 - n u)`; raises if :math:`n u \ge 1` (no bound exists)."""
    nu = n * unit_roundoff(dtype)
    if nu >= 1.0:
        raise ValueError(f"n: n * u = {nu:.3g} >= 1, the rounding bound does not exist")
    return nu / (1.0 - nu)


def _operation_count(gm: GaussianMixture, backward: bool = False) -> int:
    d, k = gm.dim, gm.n_components
    n = (d * d + 3 * d + 3) + (k + 3) + (k + d + 1)
    return 2 * n if backward else n


def _error_scales(gm: GaussianMixture, x: torch.Tensor):
    """Per point and component: log joint ``l`` [N, K], its term scale ``E`` [N, K], the score's term scale ``M``
    [N, K], component scores [N, K, d]."""
    chol = gm.cholesky_factors.to(torch.float64)
    mu = gm.means.to(torch.float64)
    x64 = torch.as_tensor(x).detach().to(torch.float64)
    eye = torch.eye(gm.dim, dtype=torch.float64).expand_as(chol)
    whiten = torch.linalg.solve_triangular(chol, eye, upper=False)  # [K, d, d]
    w_norm = torch.linalg.matrix_norm(whiten, ord=2)  # [K]
    wmu = torch.linalg.vector_norm(torch.einsum("kij,kj->ki", whiten, mu), dim=-1)  # [K]
    log_norm = torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(-1).abs() + 0.5 * gm.dim * math.log(2 * math.pi)
    residual_scale = w_norm * torch.linalg.vector_norm(x64, dim=-1, keepdim=True) + wmu  # [N, K]
    scale = residual_scale**2 + log_norm  # [N, K]
    z = torch.einsum("kij,nkj->nki", whiten, x64[:, None, :] - mu)  # [N, K, d]
    comp_scores = -torch.einsum("kji,nkj->nki", whiten, z)  # -W^T z = -Sigma^{-1}(x - mu), [N, K, d]
    log_joint = gm.to(torch.float64).component_log_prob(x64)
    return log_joint, scale, w_norm * residual_scale, comp_scores


def _score_bound(scales, g: float) -> torch.Tensor:
    log_joint, scale, term_scale, comp_scores = scales
    log_r = torch.log_softmax(log_joint, dim=-1)  # [N, K]
    r = log_r.exp()
    s = torch.einsum("nk,nki->ni", r, comp_scores)  # [N, d]
    delta = g * scale.amax(-1, keepdim=True)  # [N, 1], the largest log-joint rounding
    log_expm1 = 2 * delta + torch.log(-torch.expm1(-2 * delta))  # log(expm1(2 delta)) without overflow
    moved = torch.exp((log_r + log_expm1).clamp(max=0.0))  # min(r_k expm1(2 delta), 1), [N, K]
    spread = (moved * torch.linalg.vector_norm(comp_scores - s[:, None, :], dim=-1)).sum(-1)  # [N]
    return g * (r * term_scale).sum(-1) + spread


def score_rounding_bound(gm: GaussianMixture, x: torch.Tensor, dtype: torch.dtype | None = None, *,
                         backward: bool = False) -> torch.Tensor:
    """Per-point bound ``[N]`` on ``|gm.score(x) - exact score|`` (2-norm) when computed in ``dtype``.

    ``dtype`` defaults to the mixture's; ``backward=True`` bounds a gradient taken by autograd of the log density
    instead. See the module docstring for the derivation.
    """
    return _score_bound(_error_scales(gm, x), gamma(_operation_count(gm, backward), dtype or gm.dtype))


def score_bounds(gm: GaussianMixture, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(forward, backward)`` score bounds in the mixture's dtype, from one evaluation of the error scales."""
    scales = _error_scales(gm, x)
    return tuple(_score_bound(scales, gamma(_operation_count(gm, b), gm.dtype)) for b in (False, True))


def log_prob_rounding_bound(gm: GaussianMixture, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    r"""Per-point bound ``[N]`` on ``|gm.log_prob(x) - exact|``: :math:`\gamma_n (\max_k E_k + 1)`.

    The log-sum-exp of values each within :math:`\gamma_n E_k` is within :math:`\max_k \gamma_n E_k` of the
    exact one (it is 1-Lipschitz in the max norm), plus the rounding of the final log and sum.
    """
    g = gamma(_operation_count(gm), dtype or gm.dtype)
    scale = _error_scales(gm, x)[1]
    return g * (scale.amax(-1) + 1.0)


def bayes_identity_tolerance(conditional_bounds: tuple[torch.Tensor, torch.Tensor],
                             marginal_bounds: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    r"""Per-point tolerance ``[N]`` for ``|score(p(.|c)) - score(p) - grad log p(c|x)|`` with the last term by
    autograd of ``marginal.log_class_posterior``; the arguments are :func:`score_bounds` of the two laws.

    The two scores carry their forward bounds. Autograd of :math:`\log p(c|x) = \mathrm{lse}(l_{k \in c}) -
    \mathrm{lse}(l)` returns the difference of two score-like sums over the marginal's components (weights
    :math:`r^c` and :math:`r`), each bounded like a score computed by autograd: twice the larger backward bound.
    """
    (cond_fwd, cond_bwd), (marg_fwd, marg_bwd) = conditional_bounds, marginal_bounds
    return cond_fwd + marg_fwd + 2.0 * torch.maximum(cond_bwd, marg_bwd)
