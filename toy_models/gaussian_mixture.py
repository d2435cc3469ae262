r"""Gaussian mixtures with labelled components: the ground-truth worlds of cfgtruth.

A mixture :math:`p(x) = \sum_k \pi_k\, \mathcal N(x; \mu_k, \Sigma_k)` stays a mixture under the forward process
:math:`x_t = \alpha x_0 + \sigma \varepsilon`:

.. math::  p_t(x) = \sum_k \pi_k\, \mathcal N(x;\ \alpha \mu_k,\ \alpha^2 \Sigma_k + \sigma^2 I),

so its density, score, class posterior and the gradient of the class posterior are closed-form at every noise
level (see docs/architecture.md). Each component carries a class label and, optionally, several attributes (a colour
and a shape, say); a *condition* selects the matching components and :math:`p(x \mid c)` is their mixture with
the weights renormalised.

Numerics
--------
* Every covariance is held through its Cholesky factor :math:`\Sigma_k = L_k L_k^\top`, which validates it (SPD),
  gives :math:`\log\det\Sigma_k = 2\sum_i \log L_{k,ii}` and the precision
  :math:`P_k = L_k^{-\top} L_k^{-1}`; the component score is :math:`s_k = -P_k(x - \mu_k)`.
* Everything is in log space: the responsibilities :math:`r_k(x) = \pi_k \mathcal N_k / p` are a softmax of the
  log joint, the mixture score is :math:`\sum_k r_k s_k`, so scores stay finite far from every mode and at tiny
  :math:`\sigma` (no 0/0 of raw densities).
* Parameters (Cholesky factors, their inverses, log-determinants, and the noised covariances of
  :meth:`GaussianMixture.noised`) are always computed in float64 and only then cast to the mixture's compute
  dtype, so the float32 path loses precision only in the per-point arithmetic.
* One engine for every dimension, centred before it squares: per component, the residual :math:`x - \mu_k`,
  then :math:`g_k = P_k (x - \mu_k)` (:math:`P_k = \Sigma_k^{-1}`) and the quadratic form
  :math:`(x - \mu_k) \cdot g_k`; the component score is :math:`s_k = -g_k`. Expanding the quadratic form instead
  (:math:`x^\top P x - 2\mu^\top P x + \mu^\top P \mu`) cancels catastrophically at a narrow mode far from the
  origin (covariance 1e-12 I at (1e3, 1e3): three terms of size 1e18 for a result of size 1), so the log density
  there would be wrong in every digit while the score stayed right. Centred, the rounding is proportional to
  :math:`|x - \mu_k|^2 \|P_k\|` (and :math:`x - \mu_k` is exact when the two are within a factor 2 of each other,
  Sterbenz's lemma). Cost :math:`N K d^2`; memory :math:`O(N K d)` for the residuals and the :math:`g_k`, no
  ``[N, K, d, d]`` intermediate.
* A point so far from every component that its quadratic form overflows the compute dtype for every k is refused with
  a ``ValueError`` naming ``x`` (its log density is below the dtype's range) rather than returning NaN.

Conditions
----------
``None`` (the null condition), an ``int`` class label, a ``str`` token, or a sequence of tokens (their
conjunction). An empty token sequence is the null condition.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ._checks import Tensorish, as_scalar, as_tensor, check_generator, check_magnitude, check_points

__all__ = ["GaussianMixture", "Condition", "normalize_condition"]

Condition = None | int | str | Sequence[str]
_UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24}
_LOG_2PI = math.log(2.0 * math.pi)
#: up to this dimension, reductions over d are written as whole-row operations (measured faster in
#: benchmarks/score.py); above it, torch's batched kernels
_SMALL_DIM = 8


def normalize_condition(condition: Any) -> Hashable:
    """A hashable canonical form of a condition: ``None``, an ``int`` label, or a sorted tuple of tokens."""
    if condition is None:
        return None
    if isinstance(condition, bool):
        raise ValueError(f"condition: a bool is not a label or token ({condition!r})")
    if isinstance(condition, (int, np.integer)):
        return int(condition)
    if isinstance(condition, torch.Tensor) and condition.numel() == 1 and not condition.is_floating_point():
        return int(condition.item())
    if isinstance(condition, str):
        return (condition,)
    if isinstance(condition, (Sequence, frozenset, set)) and all(isinstance(tok, str) for tok in condition):
        tokens = tuple(sorted(set(condition)))
        return tokens if tokens else None
    raise ValueError(f"condition: expected None, an int label, a token string or a sequence of tokens, "
                     f"got {condition!r}")


def _input_roundoff(value: Tensorish) -> float:
    """Unit roundoff of the dtype the caller's numbers were stored in (float64 for Python floats)."""
    if isinstance(value, torch.Tensor) and value.dtype in _UNIT_ROUNDOFF:
        return _UNIT_ROUNDOFF[value.dtype]
    if isinstance(value, np.ndarray) and value.dtype == np.float32:
        return _UNIT_ROUNDOFF[torch.float32]
    return _UNIT_ROUNDOFF[torch.float64]


class GaussianMixture:
    r"""A mixture of full-covariance Gaussians with class labels and optional attributes.

    Parameters
    ----------
    weights : array-like, shape ``[K]``
        Mixture weights :math:`\pi_k`: non-negative, summing to 1 (within ``2 K u`` for the input's roundoff
        ``u``; they are then renormalised exactly).
    means : array-like, shape ``[K, d]``
    covariances : array-like, shape ``[K, d, d]``
        Symmetric (within ``2 d u max|Sigma_k|``, the rounding of a length-d dot product) and positive definite.
    labels : array-like of ints, shape ``[K]``, optional
        Class label of each component (default: ``0..K-1``). Classes are the sorted unique labels.
    attributes : mapping ``name -> sequence of K token strings``, optional
        E.g. ``{"colour": ["red", "red", "blue", "blue"], "shape": ["dog", "cat", "dog", "cat"]}``. A token names
        one attribute value and must be unique across attributes.
    dtype : ``torch.float64`` (default) or ``torch.float32``
        Dtype of the per-point computations; parameters are prepared in float64 either way.

    Raises
    ------
    ValueError
        Naming the argument: wrong shapes, NaN/inf, negative weights or weights off the simplex, a non-symmetric or
        non-positive-definite covariance, non-integer labels, malformed attributes, an unsupported dtype.
    """

    def __init__(self, weights: Tensorish, means: Tensorish, covariances: Tensorish, labels: Tensorish | None = None,
                 *, attributes: Mapping[str, Sequence[str]] | None = None, dtype: torch.dtype = torch.float64):
        w = as_tensor(weights, "weights")
        mu = as_tensor(means, "means")
        cov = as_tensor(covariances, "covariances")
        if w.ndim != 1 or w.numel() == 0:
            raise ValueError(f"weights: expected shape [K] with K >= 1, got {list(w.shape)}")
        n_comp = w.numel()
        if mu.ndim != 2 or mu.shape[0] != n_comp or mu.shape[1] == 0:
            raise ValueError(f"means: expected shape [K, d] = [{n_comp}, d] (K from weights), got {list(mu.shape)}")
        dim = mu.shape[1]
        if cov.shape != (n_comp, dim, dim):
            raise ValueError(f"covariances: expected shape [K, d, d] = [{n_comp}, {dim}, {dim}], got {list(cov.shape)}")
        # A variance below float64's normal range is subnormal: it carries fewer significant bits and its inverse
        # overflows. (A subnormal off-diagonal entry is harmless: its absolute error, <= 2^-1075, is negligible
        # against the normal variances that bound it, |S_ij| <= sqrt(S_ii S_jj).)
        tiny = torch.finfo(torch.float64).tiny
        variances = torch.diagonal(cov, dim1=1, dim2=2).abs()
        if bool(((variances != 0) & (variances < tiny)).any()):  # 0 is refused below as not positive definite
            raise ValueError(f"covariances: variances below float64's normal range ({tiny:.3g}) are subnormal and "
                             f"carry fewer significant bits; rescale the problem (e.g. measure x in larger units)")
        # sums of up to 4 d such entries (Cholesky, noising, moments) must stay finite
        check_magnitude(float(cov.abs().max()), torch.finfo(torch.float64).max / (4 * max(dim, 1)), "covariances",
                        "sums of the entries would overflow float64")
        if bool((w < 0).any()):
            raise ValueError(f"weights: must be non-negative, got minimum {float(w.min()):.6g}")
        # Summing K numbers rounded to the input dtype errs by at most K u; factor 2 for the sum's own rounding.
        total = float(w.sum())
        if abs(total - 1.0) > 2.0 * n_comp * _input_roundoff(weights):
            raise ValueError(f"weights: must sum to 1, got {total!r}")
        # A length-d dot product rounds with relative error at most d u (Higham, Accuracy and Stability, eq. 3.5);
        # a covariance computed as A A^T may therefore be asymmetric by that much, and no more.
        asym = (cov - cov.transpose(1, 2)).abs().amax(dim=(1, 2))
        scale = cov.abs().amax(dim=(1, 2))
        bad = asym > 2.0 * dim * _input_roundoff(covariances) * scale
        if bool(bad.any()):
            k = int(torch.nonzero(bad)[0])
            raise ValueError(f"covariances: component {k} is not symmetric (max |S - S^T| = {float(asym[k]):.3g})")
        cov = 0.5 * (cov + cov.transpose(1, 2))
        chol, info = torch.linalg.cholesky_ex(cov)
        if bool((info != 0).any()):
            k = int(torch.nonzero(info)[0])
            raise ValueError(f"covariances: component {k} is not positive definite")
        self._init_from_valid(w / w.sum(), mu, cov, chol, _read_labels(labels, n_comp),
                              _read_attributes(attributes, n_comp), dtype)

    # --- construction ---------------------------------------------------------------------------------
    def _init_from_valid(self, w, mu, cov, chol, labels, attributes, dtype):
        if dtype not in _UNIT_ROUNDOFF:
            raise ValueError(f"dtype: must be torch.float64 or torch.float32, got {dtype}")
        self._w64, self._mu64, self._cov64, self._chol64 = w, mu, cov, chol
        self._labels = labels
        self._attributes = attributes
        self._token_attribute = {tok: name for name, values in attributes.items() for tok in values}
        self._dtype = dtype
        n_comp, dim = mu.shape
        eye = torch.eye(dim, dtype=torch.float64).expand(n_comp, dim, dim)
        whiten = torch.linalg.solve_triangular(chol, eye, upper=False)  # W_k = L_k^{-1}, [K, d, d]
        log_det_half = torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(-1)  # log |L_k| = log det(S_k) / 2
        precision = whiten.transpose(1, 2) @ whiten  # P_k = W_k^T W_k = Sigma_k^{-1}, [K, d, d]
        precision = 0.5 * (precision + precision.transpose(1, 2))
        limit = torch.finfo(dtype).max
        bad = ~(precision.abs().flatten(1).amax(-1) <= limit)  # also catches inf and NaN
        if bool(bad.any()):
            k = int(torch.nonzero(bad)[0])
            raise ValueError(f"covariances: component {k} is too close to singular for {dtype}: its precision "
                             f"matrix has entries beyond {limit:.3g} (smallest Cholesky pivot "
                             f"{float(torch.diagonal(chol[k]).min()):.3g})")
        self._log_w = torch.log(w).to(dtype)  # -inf for a zero weight; the softmax handles it
        # Centred engine (see _components): the residual x - mu_k is formed first, then g_k = P_k (x - mu_k) and
        # the quadratic form (x - mu_k) . g_k. In float32 the means are held as hi + lo (hi = mu rounded to
        # float32, lo = the rest): x - hi is exact near the mode (Sterbenz) and subtracting lo leaves a rounding
        # relative to |x - mu|; rounding mu itself would move a narrow far mode by u |mu| (6e-5 at |mu| = 1e3).
        self._mu_hi = mu.to(dtype)  # [K, d]
        self._mu_lo = (mu - self._mu_hi.double()).to(dtype) if dtype != mu.dtype else None  # [K, d]
        self._precision = precision.contiguous().to(dtype)  # [K, d, d]
        self._log_joint_const = (self._log_w + (-log_det_half - 0.5 * dim * _LOG_2PI).to(dtype))  # [K]
        self._classes = torch.unique(labels)
        self._membership = labels[:, None] == self._classes[None, :]  # [K, C]

    def _derived(self, w, mu, cov, chol, mask=None, dtype=None) -> GaussianMixture:
        new = object.__new__(GaussianMixture)
        labels, attrs = self._labels, self._attributes
        if mask is not None:
            labels = labels[mask]
            idx = torch.nonzero(mask).flatten().tolist()
            attrs = {name: tuple(values[i] for i in idx) for name, values in attrs.items()}
        new._init_from_valid(w, mu, cov, chol, labels, attrs, dtype or self._dtype)
        return new

    def noised(self, alpha: Tensorish, sigma: Tensorish) -> GaussianMixture:
        r"""The law of :math:`\alpha x_0 + \sigma \varepsilon`: components
        :math:`\mathcal N(\alpha\mu_k, \alpha^2\Sigma_k + \sigma^2 I)`, same weights, labels and attributes.

        Raises ``ValueError`` if ``alpha <= 0``, ``sigma < 0`` or either is not finite.
        """
        a, s = as_scalar(alpha, "alpha"), as_scalar(sigma, "sigma")
        if a <= 0:
            raise ValueError(f"alpha: must be > 0, got {a!r}")
        if s < 0:
            raise ValueError(f"sigma: must be >= 0, got {s!r}")
        dim = self.dim
        # alpha^2 Sigma + sigma^2 I must stay finite (and its Cholesky factor too): refuse, naming the argument
        # whose square overflows, instead of returning a mixture of NaN
        big = math.sqrt(torch.finfo(torch.float64).max) / 4.0  # squares and sums of two of them stay finite
        check_magnitude(s, big, "sigma", "sigma**2 would overflow float64")
        check_magnitude(a * math.sqrt(float(self._cov64.abs().max())), big, "alpha",
                        "alpha**2 times the largest covariance entry would overflow float64")
        cov = (self._cov64 * a) * a + s * s * torch.eye(dim, dtype=torch.float64)  # (S a) a: a^2 alone may overflow
        chol, info = torch.linalg.cholesky_ex(cov)
        if bool((info != 0).any()):
            culprit = "sigma" if s > 0 else "alpha"
            raise ValueError(f"{culprit}: alpha^2 Sigma + sigma^2 I is numerically singular at alpha={a!r}, "
                             f"sigma={s!r}")
        return self._derived(self._w64, a * self._mu64, cov, chol)

    def given(self, condition: Condition) -> GaussianMixture:
        r""":math:`p(x \mid c)`: the components matching ``condition`` with renormalised weights.

        ``condition`` is a class label, a token, or a sequence of tokens (see the module docstring); ``None`` returns
        the mixture itself. Raises ``ValueError`` for an unknown label or token, or a condition no component of
        positive weight matches.
        """
        mask = self.matches(condition)
        if bool(mask.all()):
            return self
        w = self._w64[mask]
        return self._derived(w / w.sum(), self._mu64[mask], self._cov64[mask], self._chol64[mask], mask=mask)

    def to(self, dtype: torch.dtype) -> GaussianMixture:
        """The same mixture computing in ``dtype`` (float64 or float32)."""
        if dtype == self._dtype:
            return self
        try:
            return self._derived(self._w64, self._mu64, self._cov64, self._chol64, dtype=dtype)
        except ValueError as err:  # a parameter out of the new dtype's range: the caller chose the dtype
            raise ValueError(f"dtype: cannot compute this mixture in {dtype}: {err}") from None

    # --- conditions -----------------------------------------------------------------------------------
    def matches(self, condition: Condition) -> torch.Tensor:
        """Boolean mask ``[K]`` of the components that ``condition`` selects (see :meth:`given`)."""
        cond = normalize_condition(condition)
        if cond is None:
            return torch.ones(self.n_components, dtype=torch.bool)
        if isinstance(cond, int):
            mask = self._labels == cond
            if not bool(mask.any()):
                raise ValueError(f"condition: unknown label {cond}; this mixture's labels are {self.classes.tolist()}")
        else:
            mask = torch.ones(self.n_components, dtype=torch.bool)
            for tok in cond:
                if tok not in self._token_attribute:
                    raise ValueError(f"condition: unknown token {tok!r}; this mixture's tokens are {self.tokens}")
                values = self._attributes[self._token_attribute[tok]]
                mask &= torch.tensor([v == tok for v in values])
        if not bool((self._w64[mask] > 0).any()):
            raise ValueError(f"condition: {condition!r} matches no component of positive weight")
        return mask

    # --- properties -----------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._mu64.shape[1]

    @property
    def n_components(self) -> int:
        return self._mu64.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def weights(self) -> torch.Tensor:
        return self._w64.to(self._dtype)

    @property
    def means(self) -> torch.Tensor:
        return self._mu64.to(self._dtype)

    @property
    def covariances(self) -> torch.Tensor:
        return self._cov64.to(self._dtype)

    @property
    def cholesky_factors(self) -> torch.Tensor:
        """Lower Cholesky factors ``L_k`` with ``Sigma_k = L_k L_k^T``, ``[K, d, d]``."""
        return self._chol64.to(self._dtype)

    @property
    def labels(self) -> torch.Tensor:
        return self._labels.clone()

    @property
    def classes(self) -> torch.Tensor:
        """Sorted unique labels: the column order of :meth:`class_posterior`."""
        return self._classes.clone()

    @property
    def attributes(self) -> dict[str, tuple[str, ...]]:
        return dict(self._attributes)

    @property
    def tokens(self) -> list[str]:
        """Every token of every attribute, in attribute order."""
        return list(self._token_attribute)

    def mean(self) -> torch.Tensor:
        r"""Mixture mean :math:`\sum_k \pi_k \mu_k`, ``[d]``."""
        return (self._w64 @ self._mu64).to(self._dtype)

    def covariance(self) -> torch.Tensor:
        r"""Mixture covariance (law of total covariance),
        :math:`\sum_k \pi_k(\Sigma_k + (\mu_k - m)(\mu_k - m)^\top)`, ``[d, d]``, centred so that a narrow law far
        from the origin keeps its digits."""
        m = self._w64 @ self._mu64
        spread = self._mu64 - m  # centred first: sum_k pi_k mu_k mu_k^T - m m^T would cancel for far laws
        return torch.einsum("k,kij->ij", self._w64, self._cov64 + spread[:, :, None] * spread[:, None, :]
                            ).to(self._dtype)

    def __repr__(self) -> str:
        return (f"GaussianMixture(K={self.n_components}, d={self.dim}, classes={self.classes.tolist()}, "
                f"attributes={list(self._attributes)}, dtype={self._dtype})")

    # --- densities and scores -------------------------------------------------------------------------
    # One engine for every dimension, centred before it squares: the residuals x - mu_k, then g_k = P_k (x - mu_k)
    # (one batched product) and the quadratic forms (x - mu_k) . g_k; the score is -sum_k r_k g_k. Points are laid
    # out as columns ([K, d, N]) so that every reduction over d adds whole rows. verify.tolerances bounds
    # the rounding, and the tests compare against 50-digit mpmath at narrow modes far from the origin.
    def _components(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log joints ``log pi_k + log N(x; mu_k, Sigma_k)`` ``[N, K]`` and ``g_k = P_k (x - mu_k)`` ``[K, d, N]``.

        Refuses (``ValueError`` naming ``x``) a point whose quadratic form overflows the dtype for every
        component: its log density is below the dtype's range, and a softmax of all -inf would be NaN.
        """
        xt = x.T.unsqueeze(0)  # [1, d, N]: coordinates as rows, so every reduction over d adds whole rows
        centred = xt - self._mu_hi.unsqueeze(-1)  # x - mu_k, [K, d, N]
        if self._mu_lo is not None:  # float32: the low part of the means (see _init_from_valid)
            lo = self._mu_lo.unsqueeze(-1)
            centred = centred - lo if centred.requires_grad else centred.sub_(lo)
        grads = torch.bmm(self._precision, centred)  # g_k = P_k (x - mu_k), [K, d, N]
        quads = _row_dot(centred, grads)  # (x - mu_k) . g_k, [K, N]
        log_joint = self._log_joint_const - 0.5 * quads.T  # [N, K]
        # a row's log joints are all -inf exactly when its smallest quadratic form overflowed (or is NaN, from
        # inf - inf in the dot product); the sum of the minima is finite in the common case, one cheap test
        top = quads.detach().amin(0)  # [N]
        if not math.isfinite(float(top.sum())) and not bool(torch.isfinite(top).all()):
            row = int(torch.nonzero(~torch.isfinite(top))[0])
            raise ValueError(f"x: point {row} is so far from every component that its quadratic form overflows "
                             f"{self._dtype} (log p(x) is below the dtype's range)"
                             + ("; float64 has a far larger range" if self._dtype == torch.float32 else ""))
        return log_joint, grads

    @staticmethod
    def _weighted_component_score(coef: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        r""":math:`\sum_k c_k s_k` with :math:`s_k = -P_k(x - \mu_k) = -g_k`, ``[N, K], [K, d, N] -> [N, d]``."""
        weights = coef.T.unsqueeze(1)  # [K, 1, N]
        if coef.requires_grad or grads.requires_grad or grads.shape[1] <= _SMALL_DIM:
            return -torch.einsum("nk,kdn->nd", coef, grads)
        out = torch.zeros_like(grads[0])  # [d, N]
        for k in range(grads.shape[0]):  # K passes over [d, N]: no [K, d, N] temporary
            out.addcmul_(grads[k], weights[k])
        return out.neg_().T

    def component_log_prob(self, x: Tensorish) -> torch.Tensor:
        r""":math:`\log \pi_k + \log\mathcal N(x; \mu_k, \Sigma_k)` for every component, ``[N, K]``."""
        return self._components(self._points(x))[0]

    def log_prob(self, x: Tensorish) -> torch.Tensor:
        r""":math:`\log p(x) = \operatorname{logsumexp}_k(\log\pi_k + \log\mathcal N_k(x))`, ``[N, d] -> [N]``."""
        return _logsumexp_softmax(self.component_log_prob(x))[0]

    def responsibilities(self, x: Tensorish) -> torch.Tensor:
        r""":math:`r_k(x) = \pi_k\mathcal N_k(x)/p(x)`, a softmax of the log joint, ``[N, K]``."""
        return _logsumexp_softmax(self.component_log_prob(x))[1]

    def score(self, x: Tensorish) -> torch.Tensor:
        r""":math:`\nabla_x \log p(x) = -\sum_k r_k(x)\, \Sigma_k^{-1}(x - \mu_k)`, ``[N, d] -> [N, d]``."""
        return self.log_prob_and_score(x)[1]

    def log_prob_and_score(self, x: Tensorish) -> tuple[torch.Tensor, torch.Tensor]:
        """``log p(x)`` and the score from one pass of the engine."""
        log_joint, grads = self._components(self._points(x))
        log_p, r = _logsumexp_softmax(log_joint)  # [N], [N, K]
        return log_p, self._weighted_component_score(r, grads)

    # --- class posteriors -----------------------------------------------------------------------------
    def log_class_posterior(self, x: Tensorish) -> torch.Tensor:
        r""":math:`\log p(c \mid x)` for every class, columns in :attr:`classes` order, ``[N, C]``.

        Computed as ``logsumexp`` of the log joint over each class's components minus ``log p(x)``, so tiny
        posteriors keep their relative precision.
        """
        log_joint = self.component_log_prob(x)  # [N, K]
        mask = torch.zeros(self._membership.shape, dtype=log_joint.dtype)
        mask.masked_fill_(~self._membership, -math.inf)  # 0 where component k is in class c, -inf elsewhere
        per_class = torch.logsumexp(log_joint.unsqueeze(-1) + mask, dim=1)  # [N, C]
        return per_class - torch.logsumexp(log_joint, dim=-1, keepdim=True)

    def class_posterior(self, x: Tensorish) -> torch.Tensor:
        r""":math:`p(c \mid x)` for every class, columns in :attr:`classes` order, ``[N, C]``; rows sum to 1."""
        return _logsumexp_softmax(self.component_log_prob(x))[1] @ self._membership.to(self._dtype)

    def log_condition_posterior(self, x: Tensorish, condition: Condition) -> torch.Tensor:
        r""":math:`\log p(c \mid x)` for one condition (label, token or token set), ``[N]``."""
        mask = self.matches(condition)
        log_joint = self.component_log_prob(x)
        return torch.logsumexp(log_joint[:, mask], dim=-1) - torch.logsumexp(log_joint, dim=-1)

    def grad_log_posterior(self, x: Tensorish, condition: Condition) -> torch.Tensor:
        r""":math:`\nabla_x \log p(c \mid x) = \sum_k (r^c_k - r_k)\, s_k`, ``[N, d]``.

        :math:`r^c` are the responsibilities within the components matching ``c`` and :math:`s_k` the component
        scores. This equals ``given(c).score(x) - score(x)`` (Bayes' rule in score form) but is formed as one
        weighted sum, without subtracting two large scores.
        """
        mask = self.matches(condition)
        log_joint, grads = self._components(self._points(x))
        r = _logsumexp_softmax(log_joint)[1]
        r_c = _logsumexp_softmax(log_joint.masked_fill(~mask, -math.inf))[1]
        return self._weighted_component_score(r_c - r, grads)

    # --- sampling -------------------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` points, ``[n, d]``; randomness only from ``generator`` (torch's global one if None).

        Draws in float64 and casts, so the float32 and float64 mixtures give the same points up to rounding.
        """
        return self.sample_with_components(n, generator)[0]

    def sample_with_components(self, n: int, generator: torch.Generator | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Points ``[n, d]`` and the index ``[n]`` of the component each was drawn from."""
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool):
            raise TypeError(f"n: must be a non-negative int, got {type(n).__name__} {n!r}")
        if n < 0:
            raise ValueError(f"n: must be a non-negative int, got {n!r}")
        check_generator(generator)
        n = int(n)
        comp = (torch.multinomial(self._w64, n, replacement=True, generator=generator) if n
                else torch.zeros(0, dtype=torch.long))
        noise = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        out = torch.empty(n, self.dim, dtype=torch.float64)
        for k in range(self.n_components):  # per component: no [n, d, d] gather of Cholesky factors
            idx = comp == k
            out[idx] = self._mu64[k] + noise[idx] @ self._chol64[k].T
        return out.to(self._dtype), comp

    # --- one-dimensional helpers ----------------------------------------------------------------------
    def cdf(self, x: Tensorish) -> torch.Tensor:
        r"""CDF of a one-dimensional mixture, :math:`\sum_k \pi_k \Phi((x - \mu_k)/\sqrt{\Sigma_k})`,
        ``[N, 1] -> [N]``."""
        if self.dim != 1:
            raise ValueError(f"x: cdf is defined for d = 1 only, this mixture has d = {self.dim}")
        pts = self._points(x).to(torch.float64)
        std = self._chol64[:, 0, 0]
        return (torch.special.ndtr((pts - self._mu64[:, 0]) / std) @ self._w64).to(self._dtype)

    def _points(self, x: Tensorish) -> torch.Tensor:
        return check_points(x, self.dim, self._dtype)


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum_i a[:, i] * b[:, i]`` for ``[K, d, N]`` inputs, ``[K, N]``.

    For small d as d whole-row multiply-adds (a strided reduction over a short axis is several times slower);
    above that torch's ``vecdot``.
    """
    if a.shape[1] > _SMALL_DIM:
        return torch.linalg.vecdot(a, b, dim=1)
    out = a[:, 0] * b[:, 0]
    for i in range(1, a.shape[1]):
        out = out + a[:, i] * b[:, i] if out.requires_grad else out.addcmul_(a[:, i], b[:, i])
    return out


def _logsumexp_softmax(log_joint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``logsumexp`` over the last axis and the softmax, from one max-shifted exponential.

    Written out because torch's float64 CPU softmax is about 4x slower than this (measured with
    ``benchmarks/score.py``); in place where autograd does not need the intermediates.

    Responsibilities below ``sqrt(tiny)`` of the dtype (1e-19 in float32, 1e-154 in float64) are set to 0, so that
    neither they nor their products with the whitened residuals are subnormal numbers, whose arithmetic is slower
    by an order of magnitude (seen in float32 at d = 64). What this drops from a score is at most
    ``K sqrt(tiny) max_k |s_k|``, below the dtype's rounding of the result unless one component's score exceeds
    the mixture's by ``u / (K sqrt(tiny))`` (3e10 in float32): a zero-measure corner of no practical reach. The
    log-density is unaffected beyond ``K sqrt(tiny)`` relative.
    """
    cut = math.sqrt(torch.finfo(log_joint.dtype).tiny)
    shift = log_joint.detach().amax(dim=-1, keepdim=True)  # [N, 1], finite: some weight is positive
    if log_joint.requires_grad:
        e = torch.exp(log_joint - shift)
        e = torch.where(e < cut, 0.0, e)
    else:
        e = torch.nn.functional.threshold_((log_joint - shift).exp_(), cut, 0.0)  # [N, K], one allocation
    total = e.sum(-1, keepdim=True)
    return (shift + torch.log(total)).squeeze(-1), (e / total if log_joint.requires_grad else e.div_(total))


def _read_labels(labels: Tensorish | None, n_comp: int) -> torch.Tensor:
    if labels is None:
        return torch.arange(n_comp)
    arr = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if arr.shape != (n_comp,):
        raise ValueError(f"labels: expected shape [K] = [{n_comp}], got {list(arr.shape)}")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or
                                 (np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0))):
        raise ValueError(f"labels: must be integers, got dtype {arr.dtype}")
    return torch.as_tensor(arr.astype(np.int64))


def _read_attributes(attributes: Mapping[str, Sequence[str]] | None, n_comp: int) -> dict[str, tuple[str, ...]]:
    if attributes is None:
        return {}
    if not isinstance(attributes, Mapping):
        raise ValueError("attributes: expected a mapping from attribute name to K token strings")
    out: dict[str, tuple[str, ...]] = {}
    owner: dict[str, str] = {}
    for name, values in attributes.items():
        values = tuple(values)
        if len(values) != n_comp or not all(isinstance(v, str) for v in values):
            raise ValueError(f"attributes: {name!r} must list {n_comp} token strings, one per component")
        for tok in set(values):
            if tok in owner:
                raise ValueError(f"attributes: token {tok!r} appears in both {owner[tok]!r} and {name!r}")
            owner[tok] = name
        out[str(name)] = values
    return out
