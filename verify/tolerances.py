r"""Derived tolerances: rounding-error bounds that checks compare against, never guessed constants.

The building block is Higham's :math:`\gamma_n = n u / (1 - n u)` (*Accuracy and Stability of Numerical
Algorithms*, 2nd ed., Lemma 3.1): a sum or dot product of ``n`` terms computed in floating point with unit roundoff
:math:`u` errs by at most :math:`\gamma_n` times the sum of the absolute values of its terms.

:func:`score_rounding_bound` applies it to the mixture score :math:`s = \sum_k r_k s_k`,
:math:`s_k = -P_k(x - \mu_k)`, :math:`P_k = \Sigma_k^{-1}`, :math:`r = \operatorname{softmax}(l)`, as
:class:`~toy_models.gaussian_mixture.GaussianMixture` computes it: centred first, :math:`c_k = x - \mu_k`, then
:math:`g_k = P_k c_k` and the log joint :math:`l_k = \kappa_k - \tfrac12 c_k \cdot g_k` with the constant
:math:`\kappa_k = \log\pi_k - \log|L_k| - \tfrac d2\log 2\pi`. Per component:

* the residual: :math:`|\delta c_k| \le \gamma_2 |c_k| + u^2 |\mu_k|` componentwise (in float32 the mean is
  held as hi + lo and subtracted in two steps; the low part is itself rounded, hence :math:`u^2|\mu_k|`; in
  float64 the mean is exact and the term is 0). Write :math:`\rho_k = |c_k| + u^2|\mu_k|`;
* :math:`g_k`: a length-d dot product per entry, :math:`|\delta g_k| \le \gamma_{d+2} \|P_k\|_F \rho_k`;
* the quadratic form: :math:`|\delta q_k| \le \gamma_{2d+2}\, S_k` with :math:`S_k = \|P_k\|_F \rho_k^2`
  (Higham eq. 3.5 on :math:`|c|^\top |P| |c| \le \|P\|_F |c|^2`), and two more roundings for the constant and
  the halving: the log joint errs by :math:`\gamma_{2d+4} E_k`, :math:`E_k = S_k + C_k` with :math:`C_k` the sum
  of the absolute values of the constant's terms (:math:`|\log\pi_k| + \sum_i |\log L_{k,ii}| + \tfrac d2\log
  2\pi`);
* the parameters: :math:`P_k` is computed in float64 from the Cholesky factor, with a normwise error of at most
  :math:`\gamma^{(64)}_{4d+4}\, \kappa(\Sigma_k) \|P_k\|_2` (inversion through Cholesky is backward stable,
  Higham section 14.2; the forward error carries the condition number), then rounded to the compute dtype
  (:math:`u|P_k|`, inside the terms above). This adds :math:`\gamma^{(64)}_{4d+4} \kappa_k \|P_k\|_2 \rho_k^2`
  to the log joint and :math:`\gamma^{(64)}_{4d+4} \kappa_k \|P_k\|_2 \rho_k` to :math:`g_k`. The Cholesky
  factor is exact for :math:`\Sigma_k + \delta\Sigma` with :math:`|\delta\Sigma| \le \gamma^{(64)}_{d+1}|L_k||L_k^\top|`
  (Higham, Theorem 10.3), so :math:`\log|L_k|` errs by at most :math:`\gamma^{(64)}_{d+1}\, d\, \kappa_k / 2`.

A perturbation :math:`|\delta l_k| \le \Delta = \max_k \Delta_k` keeps each responsibility within
:math:`r_k' \in [r_k e^{-2\Delta}, r_k e^{2\Delta}]` (the normaliser moves by at most :math:`e^{\pm\Delta}`) and in
:math:`[0, 1]`, so the score moves by :math:`\sum_k (r'_k - r_k)(s_k - s)`, at most
:math:`\sum_k \min(r_k \operatorname{expm1}(2\Delta), 1)\, |s_k - s|`: about :math:`2\Delta \sum_k r_k|s_k - s|`
when :math:`\Delta` is small, and no longer a small number when :math:`\Delta \gtrsim 1`. That happens in float32
far from the modes of a narrow mixture, where each log joint is ~1e11 and its rounding ~1e4: there a float32
score can put its weight on the wrong component, and the bound says so instead of hiding it. The weighted sum of
the :math:`g_k` adds :math:`\gamma_{K+1}` relative, and responsibilities below :math:`\sqrt{\text{tiny}}` are
flushed to 0 (to keep subnormals out), which moves the score by at most
:math:`\sqrt{\text{tiny}}\sum_k|s_k - s|`. So, per point (omitting that last term from the display),

.. math::  |\hat s - s| \le \sum_k r_k M_k + \sum_k \min\big(r_k \operatorname{expm1}(2\Delta), 1\big)\,|s_k - s|,
           \qquad M_k = \big(\gamma_n \|P_k\|_F + \gamma^{(64)}_{4d+4}\kappa_k\|P_k\|_2\big)\rho_k,

with :math:`n` the longest chain of roundings applied to one term: the log joint (:math:`2d + 4`), the softmax
(shift, exp, sum of K, divide: :math:`K + 3`) and the weighted sum (:math:`K + 1`), so
:math:`n = 2d + 2K + 8`. Because the engine centres before it squares, every term is proportional to the distance
to the component's own mean, not to :math:`|x|`: at a narrow mode far from the origin the bound is as small as
at a mode at the origin. A reference computed by autograd of ``log_prob`` runs the chain forward and back:
``backward=True`` doubles :math:`n`. Everything is evaluated in float64 from the mixture's float64 parameters.
"""

from __future__ import annotations

import math
from typing import NamedTuple

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
    n = 2 * gm.dim + 2 * gm.n_components + 8
    return 2 * n if backward else n


class _Scales(NamedTuple):
    """Per point and component, in float64, the quantities the bounds are made of (module docstring)."""

    log_joint: torch.Tensor  # l_k, [N, K]
    quad_scale: torch.Tensor  # S_k = ||P_k||_F rho_k^2, [N, K]
    const: torch.Tensor  # C_k, the constant's terms in absolute value, [K]
    rho: torch.Tensor  # |x - mu_k| (+ u^2 |mu_k| in float32), [N, K]
    p_frob: torch.Tensor  # ||P_k||_F, [K]
    cond_p2: torch.Tensor  # kappa(Sigma_k) ||P_k||_2, [K]
    comp_scores: torch.Tensor  # -P_k (x - mu_k), [N, K, d]
    log_det_error: torch.Tensor  # gamma64_{d+1} d kappa(Sigma_k) / 2, [K]


def _error_scales(gm: GaussianMixture, x: torch.Tensor) -> _Scales:
    gm64 = gm.to(torch.float64)
    cov = gm64.covariances
    mu = gm64.means
    x64 = torch.as_tensor(x).detach().to(torch.float64)
    precision = torch.linalg.inv(cov)  # [K, d, d]; only its norms enter the bound
    p_frob = torch.linalg.matrix_norm(precision)  # [K]
    eig = torch.linalg.eigvalsh(cov)  # ascending, [K, d]
    cond = eig[:, -1] / eig[:, 0]  # kappa(Sigma_k) = ||Sigma_k||_2 ||P_k||_2, [K]
    centred = x64[:, None, :] - mu  # [N, K, d]
    u = unit_roundoff(gm.dtype)
    low_part = u * u * torch.linalg.vector_norm(mu, dim=-1) if gm.dtype != torch.float64 else torch.zeros(len(mu))
    rho = torch.linalg.vector_norm(centred, dim=-1) + low_part  # [N, K]
    # the constant's terms, summed in absolute value: |log pi_k| + sum_i |log L_ii| + d/2 log(2 pi); a zero weight
    # (log 0) gives a component with r_k = 0 that no rounding can revive, so it contributes nothing
    log_pivots = torch.log(torch.diagonal(gm64.cholesky_factors, dim1=1, dim2=2)).abs().sum(-1)
    const = (torch.log(gm64.weights).abs() + log_pivots).nan_to_num(posinf=0.0) + 0.5 * gm.dim * math.log(2 * math.pi)
    # the Cholesky factor is exact for Sigma + dSigma, |dSigma| <= gamma64_{d+1} |L||L^T| (Higham Thm 10.3), so
    # log|L| = log det / 2 errs by tr(P dSigma) / 2 <= gamma64_{d+1} d kappa(Sigma) / 2
    log_det_error = gamma(gm.dim + 1, torch.float64) * gm.dim * cond / 2
    return _Scales(log_joint=gm64.component_log_prob(x64), quad_scale=p_frob * rho**2, const=const, rho=rho,
                   p_frob=p_frob, cond_p2=cond / eig[:, 0],
                   comp_scores=-torch.einsum("kij,nkj->nki", precision, centred), log_det_error=log_det_error)


def _bounds(sc: _Scales, n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-point (score bound [N], log-joint perturbation Delta [N]) for an operation count ``n`` in ``dtype``."""
    d = sc.comp_scores.shape[-1]
    g, g_prep = gamma(n, dtype), gamma(4 * d + 4, torch.float64)
    # log joint: gamma_n (S + C) + gamma64 kappa(Sigma) ||P||_2 rho^2 + the log-determinant's error
    # (module docstring)
    delta = (g * (sc.quad_scale + sc.const) + g_prep * sc.cond_p2 * sc.rho**2 + sc.log_det_error
             ).amax(-1, keepdim=True)  # [N, 1]
    log_r = torch.log_softmax(sc.log_joint, dim=-1)  # [N, K]
    r = log_r.exp()
    s = torch.einsum("nk,nki->ni", r, sc.comp_scores)  # [N, d]
    gap = torch.linalg.vector_norm(sc.comp_scores - s[:, None, :], dim=-1)  # |s_k - s|, [N, K]
    log_expm1 = 2 * delta + torch.log(-torch.expm1(-2 * delta))  # log(expm1(2 delta)) without overflow
    moved = torch.exp((log_r + log_expm1).clamp(max=0.0))  # min(r_k expm1(2 delta), 1), [N, K]
    spread = (moved * gap).sum(-1)  # [N]
    term = (g * sc.p_frob + g_prep * sc.cond_p2) * sc.rho  # M_k, [N, K]
    # responsibilities below sqrt(tiny) are flushed to 0 (GaussianMixture's softmax): at most sqrt(tiny) |s_k - s|
    # each
    flushed = math.sqrt(torch.finfo(dtype).tiny) * gap.sum(-1)
    return (r * term).sum(-1) + spread + flushed, delta.squeeze(-1)


def _score_bound(scales, n: int, dtype: torch.dtype) -> torch.Tensor:
    return _bounds(scales, n, dtype)[0]


def score_rounding_bound(gm: GaussianMixture, x: torch.Tensor, dtype: torch.dtype | None = None, *,
                         backward: bool = False) -> torch.Tensor:
    """Per-point bound ``[N]`` on ``|gm.score(x) - exact score|`` (2-norm) when computed in ``dtype``.

    ``dtype`` defaults to the mixture's; ``backward=True`` bounds a gradient taken by autograd of the log density
    instead. See the module docstring for the derivation.
    """
    return _score_bound(_error_scales(gm, x), _operation_count(gm, backward), dtype or gm.dtype)


def score_bounds(gm: GaussianMixture, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(forward, backward)`` score bounds in the mixture's dtype, from one evaluation of the error scales."""
    scales = _error_scales(gm, x)
    return tuple(_score_bound(scales, _operation_count(gm, b), gm.dtype) for b in (False, True))


def log_prob_rounding_bound(gm: GaussianMixture, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    r"""Per-point bound ``[N]`` on ``|gm.log_prob(x) - exact|``: :math:`\Delta + \gamma_n`.

    The log-sum-exp of values each within :math:`\Delta` of the exact ones is within :math:`\Delta` of the exact
    one (it is 1-Lipschitz in the max norm), plus the rounding of the final log and sum (relative to the result,
    at most 1 in the shifted log-sum-exp's own scale).
    """
    dtype = dtype or gm.dtype
    n = _operation_count(gm)
    return _bounds(_error_scales(gm, x), n, dtype)[1] + gamma(n, dtype)


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
