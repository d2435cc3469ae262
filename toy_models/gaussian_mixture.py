r"""Gaussian mixtures with labelled components: the ground-truth worlds of cfgtruth.

A mixture :math:`p(x) = \sum_k \pi_k\, \mathcal N(x; \mu_k, \Sigma_k)` stays a mixture under the forward process
:math:`x_t = \alpha x_0 + \sigma \varepsilon`:

.. math::  p_t(x) = \sum_k \pi_k\, \mathcal N(x;\ \alpha \mu_k,\ \alpha^2 \Sigma_k + \sigma^2 I),

so its density, score, class posterior and the gradient of the class posterior are closed-form at every noise
level (DESIGN.md section 1). Each component carries a class label and, optionally, several attributes (a colour
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
* No ``[N, K, d, d]`` intermediate. For :math:`d \le 4` the log joint is linear in the quadratic features
  :math:`\phi(x) = (x_i x_j)_{i \le j} \oplus x \oplus 1`, so all components are one ``[N, D] x [D, K]`` product
  and the score is :math:`r B - (\sum_k r_k P_k) x` with :math:`B_k = P_k \mu_k`: memory :math:`O(N (K + d^2))`.
  Above that, :math:`g_k = \Sigma_k^{-1}(x - \mu_k)` for all components is one ``[N, d] x [d, K d]`` product;
  the quadratic forms are :math:`x \cdot g_k - b_k \cdot x + c_k` and the score is :math:`-\sum_k r_k g_k`, so
  that product is the only one of its size: memory :math:`O(N K d)`.

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

from ._checks import Tensorish, as_scalar, as_tensor, check_points

__all__ = ["GaussianMixture", "Condition", "normalize_condition"]

Condition = None | int | str | Sequence[str]
_UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24}
_LOG_2PI = math.log(2.0 * math.pi)
#: largest dimension evaluated through quadratic features (one [N, D] x [D, K] product) instead of precisions
_FEATURE_DIM_MAX = 4


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
        precision = whiten.transpose(1, 2) @ whiten  # P_k = W_k^T W_k = Sigma_k^{-1}, [K, d, d]
        precision = 0.5 * (precision + precision.transpose(1, 2))
        lin_coef = torch.einsum("kij,kj->ki", precision, mu)  # b_k = P_k mu_k, [K, d]
        quad_const = (lin_coef * mu).sum(-1)  # c_k = mu_k^T P_k mu_k, [K]
        log_det_half = torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(-1)  # log |L_k| = log det(S_k) / 2
        log_norm = -log_det_half - 0.5 * dim * _LOG_2PI  # [K]
        self._log_w = torch.log(w).to(dtype)  # -inf for a zero weight; the softmax handles it
        self._use_features = dim <= _FEATURE_DIM_MAX
        # Features engine (see _prepare): log pi_k + log N_k(x) = phi(x) . c_k + log pi_k with
        # phi(x) = [x_i x_j (all i, j), x, 1]. Coefficients in float64, then cast.
        quad_coef = -0.5 * precision.reshape(n_comp, dim * dim)  # [K, d^2]
        feature_coef = torch.cat([quad_coef, lin_coef, (log_norm - 0.5 * quad_const)[:, None]], dim=1)
        self._feature_coef = feature_coef.T.contiguous().to(dtype)  # [d^2 + d + 1, K]
        # coef @ _score_coef = [sum_k c_k b_k, vec(sum_k c_k P_k)], [N, d + d^2]
        self._score_coef = torch.cat([lin_coef, precision.reshape(n_comp, dim * dim)], dim=1).to(dtype)
        # Precision engine: x @ _precision_cols gives [N, K d] with block k equal to (P_k x)^T (P_k symmetric)
        self._precision_cols = precision.permute(1, 0, 2).reshape(dim, n_comp * dim).to(dtype)
        self._lin_coef = lin_coef.to(dtype)  # [K, d]
        self._log_joint_const = (log_norm - 0.5 * quad_const).to(dtype)  # [K]
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
        cov = a * a * self._cov64 + s * s * torch.eye(dim, dtype=torch.float64)
        chol, info = torch.linalg.cholesky_ex(cov)
        if bool((info != 0).any()):
            raise ValueError(f"alpha: alpha^2 Sigma + sigma^2 I is numerically singular at alpha={a!r}, sigma={s!r}")
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
        return self._derived(self._w64, self._mu64, self._cov64, self._chol64, dtype=dtype)

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
        :math:`\sum_k \pi_k(\Sigma_k + \mu_k\mu_k^\top) - m m^\top`, ``[d, d]``."""
        m = self._w64 @ self._mu64
        second = torch.einsum("k,kij->ij", self._w64, self._cov64 + self._mu64[:, :, None] * self._mu64[:, None, :])
        return (second - torch.outer(m, m)).to(self._dtype)

    def __repr__(self) -> str:
        return (f"GaussianMixture(K={self.n_components}, d={self.dim}, classes={self.classes.tolist()}, "
                f"attributes={list(self._attributes)}, dtype={self._dtype})")

    # --- densities and scores -------------------------------------------------------------------------
    # Two engines compute the same quantities. For d <= 4 the log joint is linear in the quadratic features
    # phi(x) = [x_i x_j, x, 1], so all K log densities are one [N, D] x [D, K] product and the score is
    # r @ B - (r @ vec P) x: nothing of size [N, K, d] exists. Above that, g_k = P_k x - b_k for all k is one
    # [N, d] x [d, K d] product, the quadratic forms are x . g_k - b_k . x + c_k and the score is -sum_k r_k g_k.
    # Both take x in absolute coordinates; verify.tolerances bounds their rounding (and the tests compare them with
    # each other and with 40-digit mpmath, near and far from the modes).
    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Per-point state: the features ``phi(x)`` ``[N, D]``, or ``g_k = Sigma_k^{-1}(x - mu_k)`` ``[N, K, d]``."""
        n, d = x.shape
        if self._use_features:
            return torch.cat([(x.unsqueeze(2) * x.unsqueeze(1)).view(n, d * d), x, torch.ones_like(x[:, :1])],
                             dim=1)  # [N, d^2 + d + 1]
        # the shift is in place: the product's output is not needed by autograd
        return (x @ self._precision_cols).view(n, self.n_components, d).sub_(self._lin_coef)  # [N, K, d]

    def _log_joint(self, state: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``log pi_k + log N(x; mu_k, Sigma_k)``, ``[N, K]``."""
        if self._use_features:
            return torch.addmm(self._log_w, state, self._feature_coef)  # [N, K]
        # (x - mu)^T P (x - mu) = x . (P x - b) - b . x + c
        quad = torch.einsum("nd,nkd->nk", x, state) - x @ self._lin_coef.T  # [N, K]
        return (self._log_w + self._log_joint_const) - 0.5 * quad

    def _weighted_component_score(self, coef: torch.Tensor, state: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\sum_k c_k s_k` with :math:`s_k = -\Sigma_k^{-1}(x - \mu_k)`, ``[N, d]``.

        Features engine: :math:`c B - (\sum_k c_k P_k) x`. Precision engine: :math:`-\sum_k c_k g_k`.
        """
        if self._use_features:
            n = x.shape[0]
            mixed = coef @ self._score_coef  # [N, d + d^2]
            mixed_precision = mixed[:, self.dim:].view(n, self.dim, self.dim)  # sum_k c_k P_k, [N, d, d]
            return mixed[:, :self.dim] - (mixed_precision @ x.unsqueeze(-1)).squeeze(-1)
        return -torch.einsum("nk,nkd->nd", coef, state)

    def component_log_prob(self, x: Tensorish) -> torch.Tensor:
        r""":math:`\log \pi_k + \log\mathcal N(x; \mu_k, \Sigma_k)` for every component, ``[N, K]``."""
        pts = self._points(x)
        return self._log_joint(self._prepare(pts), pts)

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
        pts = self._points(x)
        state = self._prepare(pts)
        log_p, r = _logsumexp_softmax(self._log_joint(state, pts))  # [N], [N, K]
        return log_p, self._weighted_component_score(r, state, pts)

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
        pts = self._points(x)
        state = self._prepare(pts)
        log_joint = self._log_joint(state, pts)
        r = _logsumexp_softmax(log_joint)[1]
        r_c = _logsumexp_softmax(log_joint.masked_fill(~mask, -math.inf))[1]
        return self._weighted_component_score(r_c - r, state, pts)

    # --- sampling -------------------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` points, ``[n, d]``; randomness only from ``generator`` (torch's global one if None).

        Draws in float64 and casts, so the float32 and float64 mixtures give the same points up to rounding.
        """
        return self.sample_with_components(n, generator)[0]

    def sample_with_components(self, n: int, generator: torch.Generator | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Points ``[n, d]`` and the index ``[n]`` of the component each was drawn from."""
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n: must be a non-negative int, got {n!r}")
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
