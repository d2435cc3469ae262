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
* Centred before it squares: per component, the residual :math:`c_k = x - \mu_k` first, then the quadratic form
  :math:`c_k^\top P_k c_k` (:math:`P_k = \Sigma_k^{-1}`) and the component score :math:`s_k = -P_k c_k`.
  Expanding the quadratic form instead (:math:`x^\top P x - 2\mu^\top P x + \mu^\top P \mu`) cancels
  catastrophically at a narrow mode far from the origin (covariance 1e-12 I at (1e3, 1e3): three terms of size 1e18
  for a result of size 1), so the log density there would be wrong in every digit while the score stayed right.
  Centred, the rounding is proportional to :math:`|x - \mu_k|^2 \|P_k\|` (and :math:`x - \mu_k` is exact when the
  two are within a factor 2 of each other, Sterbenz's lemma). Two engines compute this, with chains of roundings
  that ``verify.tolerances`` bounds alike:

  - the *block engine* (d <= 32, autograd not recording): the points in blocks of a few thousand, each quantity a
    ``[K, n]`` block with one row per component, the coordinates one at a time; the quadratic form summed over the
    upper triangle of :math:`P_k`, the score as :math:`-\sum_j P_{\cdot j}\,(e \odot c_j)` (one ``[d, K] x [K, n]``
    product per coordinate) divided by the softmax's normaliser. Its temporaries stay in the core's cache and are
    reused from block to block: for d = 2 about 15 passes over each block, no ``[K, d, N]`` array (on ring2d at
    10^6 points, one thread: 5x faster than the batched engine for the eight components, 3x for one; 1.8x-3.6x
    for d = 1 to 32, see ``_BLOCK_ENGINE_MAX_DIM``);
  - the *batched engine* (larger d, or autograd): points as columns, :math:`g_k = P_k c_k` for all components in
    one batched product, the quadratic form :math:`c_k \cdot g_k`. Cost :math:`N K d^2`; memory :math:`O(N K d)`
    for the residuals and the :math:`g_k`, no ``[N, K, d, d]`` intermediate.

  The two agree within the rounding bound (tests/test_gaussian_mixture.py), not to the bit; neither is invariant to
  the batch to the bit either (matrix products over K may sum in an order that depends on the number of points).
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
from typing import Any, NamedTuple

import numpy as np
import torch

from ._checks import Tensorish, as_scalar, as_tensor, check_generator, check_magnitude, check_points

__all__ = ["GaussianMixture", "LabelledComponents", "Condition", "normalize_condition", "checked_noise_levels"]

Condition = None | int | str | Sequence[str]
_UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24}
_LOG_2PI = math.log(2.0 * math.pi)
#: up to this dimension, reductions over d are written as whole-row operations (measured faster in
#: benchmarks/score.py); above it, torch's batched kernels
_SMALL_DIM = 8
#: up to this dimension the block engine (_block_log_joint) evaluates every point; above it, and whenever autograd
#: is recording, the batched engine (_components). The block engine makes d (d + 1) / 2 + d passes over [K, n]
#: blocks for the log joint, so its advantage shrinks with d (one thread, K = 10-16 random full covariances, per
#: call: 3.6x faster at d = 1, 3.1x at d = 8, 2.2x at d = 16 (tokens16d too), 1.8x at d = 32; 0.63x on highdim,
#: d = 64)
_BLOCK_ENGINE_MAX_DIM = 32
#: the block engine walks the points in blocks of at most this many [K, n] entries per intra-op thread (512 KiB in
#: float64) and at most _BLOCK_POINTS points: its ~15 passes over a block then stay in the cores' caches, and fewer,
#: larger blocks spend less on the dispatch of each operation (on ring2d at 10^6 points, eight components, one
#: thread: blocks of 2^16 entries 78 ms, 2^17 92 ms, 2^20 with 21,000 minor page faults 235 ms; two threads: 2^17
#: 55-62 ms, 2^16 63-67 ms; one component, two threads: 2^17 points 10 ms, 2^15 15 ms)
_BLOCK_ENTRIES_PER_THREAD = 2**16
_BLOCK_POINTS = 2**17


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


def _scalar(value: Tensorish, name: str) -> float:
    """``as_scalar(value, name)``, with a shortcut for a finite Python float (what samplers pass at every step)."""
    if type(value) is float and math.isfinite(value):
        return value
    return as_scalar(value, name)


def checked_noise_levels(alpha: Tensorish, sigma: Tensorish, dtype: torch.dtype, mean_abs_max: float,
                         variance_abs_max: float) -> tuple[float, float]:
    r"""``(alpha, sigma)`` as floats, refused unless the noised law :math:`\mathcal N(\alpha\mu, \alpha^2 S +
    \sigma^2 I)` of a mixture whose largest mean entry is ``mean_abs_max`` and largest (co)variance entry
    ``variance_abs_max`` is representable in the compute ``dtype``: ``alpha > 0``, ``sigma >= 0``, both finite, and
    :math:`\alpha|\mu|`, :math:`\alpha^2 S` and :math:`\sigma^2` (and sums of two of them) finite in ``dtype``,
    each refusal naming the argument that overflows (the noise-level check of every mixture family's ``noised``)."""
    a, s = _scalar(alpha, "alpha"), _scalar(sigma, "sigma")
    if a <= 0:
        raise ValueError(f"alpha: must be > 0, got {a!r}")
    if s < 0:
        raise ValueError(f"sigma: must be >= 0, got {s!r}")
    top = float(torch.finfo(dtype).max)
    big = math.sqrt(top) / 4.0  # squares, and sums of two of them, stay finite
    name = str(dtype).removeprefix("torch.")
    check_magnitude(s, big, "sigma", f"sigma**2 would overflow {name}")
    check_magnitude(a * math.sqrt(variance_abs_max), big, "alpha",
                    f"alpha**2 times the largest covariance entry would overflow {name}")
    check_magnitude(a * mean_abs_max, top / 4.0, "alpha", f"alpha times the largest mean entry would overflow {name}")
    return a, s


def _input_roundoff(value: Tensorish) -> float:
    """Unit roundoff of the dtype the caller's numbers were stored in (float64 for Python floats)."""
    if isinstance(value, torch.Tensor) and value.dtype in _UNIT_ROUNDOFF:
        return _UNIT_ROUNDOFF[value.dtype]
    if isinstance(value, np.ndarray) and value.dtype == np.float32:
        return _UNIT_ROUNDOFF[torch.float32]
    return _UNIT_ROUNDOFF[torch.float64]


class LabelledComponents:
    r"""Labels, attributes and conditions of a mixture's components: what a condition selects, written once for every
    mixture family (:class:`GaussianMixture`, :class:`~toy_models.field_mixture.FieldMixture`).

    Also what follows from a family's log joint :math:`\log\pi_k + \log p_k(x)` alone (``component_log_prob``, which
    each family computes its own way): responsibilities, class and condition posteriors, and the drawing of component
    indices for sampling.

    A subclass sets ``_w64`` (weights ``[K]``, float64) and ``_dtype`` (the compute dtype), calls :meth:`_set_labels`
    (``_labels``, ``_attributes``, ``_token_attribute``, ``_classes``, ``_membership``), and defines
    ``component_log_prob``, ``dim`` and ``sample_with_components``.
    """

    _w64: torch.Tensor
    _dtype: torch.dtype
    _labels: torch.Tensor
    _classes: torch.Tensor
    _membership: torch.Tensor
    _attributes: dict[str, tuple[str, ...]]
    _token_attribute: dict[str, str]

    def _set_labels(self, labels: torch.Tensor, attributes: dict[str, tuple[str, ...]],
                    parent: LabelledComponents | None = None) -> None:
        """Labels and attributes, and the classes and the ``[K, C]`` class membership (shared with ``parent`` when it
        holds the very same labels)."""
        self._labels, self._attributes = labels, attributes
        self._token_attribute = {tok: name for name, values in attributes.items() for tok in values}
        if parent is not None and labels is parent._labels:
            self._classes, self._membership = parent._classes, parent._membership
        else:
            self._classes = torch.unique(labels)
            self._membership = labels[:, None] == self._classes[None, :]  # [K, C]

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def weights(self) -> torch.Tensor:
        return self._w64.to(self._dtype)

    @property
    def n_components(self) -> int:
        return self._w64.shape[0]

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

    def _sub_attributes(self, mask: torch.Tensor) -> dict[str, tuple[str, ...]]:
        """The attributes of the components ``mask`` selects."""
        idx = torch.nonzero(mask).flatten().tolist()
        return {name: tuple(values[i] for i in idx) for name, values in self._attributes.items()}

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

    # --- what follows from the log joint -------------------------------------------------------------------
    def responsibilities(self, x: Tensorish) -> torch.Tensor:
        r""":math:`r_k(x) = \pi_k p_k(x)/p(x)`, a softmax of the log joint, ``[N, K]``."""
        return _logsumexp_softmax(self.component_log_prob(x))[1]

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
        return self.responsibilities(x) @ self._membership.to(self._dtype)

    def log_condition_posterior(self, x: Tensorish, condition: Condition) -> torch.Tensor:
        r""":math:`\log p(c \mid x)` for one condition (label, token or token set), ``[N]``."""
        mask = self.matches(condition)
        log_joint = self.component_log_prob(x)
        return torch.logsumexp(log_joint[:, mask], dim=-1) - torch.logsumexp(log_joint, dim=-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` points, ``[n, d]``; randomness only from ``generator`` (torch's global one if None).

        Draws in float64 and casts, so the float32 and float64 mixtures give the same points up to rounding.
        """
        return self.sample_with_components(n, generator)[0]

    def _draw_components(self, n: int, generator: torch.Generator | None) -> tuple[int, torch.Tensor]:
        """``(n, k)``: ``n`` checked (a non-negative int) and ``n`` component indices drawn by weight from
        ``generator`` (the first draw of :meth:`sample_with_components`)."""
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool):
            raise TypeError(f"n: must be a non-negative int, got {type(n).__name__} {n!r}")
        if n < 0:
            raise ValueError(f"n: must be a non-negative int, got {n!r}")
        check_generator(generator)
        n = int(n)
        return n, (torch.multinomial(self._w64, n, replacement=True, generator=generator) if n
                   else torch.zeros(0, dtype=torch.long))


class GaussianMixture(LabelledComponents):
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
    def _init_from_valid(self, w, mu, cov, chol, labels, attributes, dtype, parent: GaussianMixture | None = None):
        """Set every field from validated float64 parameters. ``parent``: a mixture with the same labels (and, if
        ``w`` is its weight tensor, the same weights), whose classes and log-weights are reused instead of being
        derived again (``noised`` and ``to``: each step of a sampler builds noised laws)."""
        if dtype not in _UNIT_ROUNDOFF:
            raise ValueError(f"dtype: must be torch.float64 or torch.float32, got {dtype}")
        self._w64, self._mu64, self._cov64, self._chol64 = w, mu, cov, chol
        self._dtype = dtype
        self._set_labels(labels, attributes, parent)
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
        if parent is not None and w is parent._w64 and dtype == parent._dtype:
            self._log_w = parent._log_w
        else:
            self._log_w = torch.log(w).to(dtype)  # -inf for a zero weight; the softmax handles it
        # Centred engine (see _components): the residual x - mu_k is formed first, then g_k = P_k (x - mu_k) and
        # the quadratic form (x - mu_k) . g_k. In float32 the means are held as hi + lo (hi = mu rounded to
        # float32, lo = the rest): x - hi is exact near the mode (Sterbenz) and subtracting lo leaves a rounding
        # relative to |x - mu|; rounding mu itself would move a narrow far mode by u |mu| (6e-5 at |mu| = 1e3).
        self._mu_hi = mu.to(dtype)  # [K, d]
        self._mu_lo = (mu - self._mu_hi.double()).to(dtype) if dtype != mu.dtype else None  # [K, d]
        self._precision = precision.contiguous().to(dtype)  # [K, d, d]
        self._log_joint_const = (self._log_w + (-log_det_half - 0.5 * dim * _LOG_2PI).to(dtype))  # [K]
        self._block_params: _BlockParams | None = None  # built on the block engine's first use
        self._cov_abs_max: float | None = None  # max |Sigma_ij|, built on noised's first use

    def _derived(self, w, mu, cov, chol, mask=None, dtype=None) -> GaussianMixture:
        new = object.__new__(GaussianMixture)
        labels, attrs = self._labels, self._attributes
        if mask is not None:
            labels, attrs = labels[mask], self._sub_attributes(mask)
        new._init_from_valid(w, mu, cov, chol, labels, attrs, dtype or self._dtype, parent=self)
        return new

    def noised(self, alpha: Tensorish, sigma: Tensorish) -> GaussianMixture:
        r"""The law of :math:`\alpha x_0 + \sigma \varepsilon`: components
        :math:`\mathcal N(\alpha\mu_k, \alpha^2\Sigma_k + \sigma^2 I)`, same weights, labels and attributes.

        Raises ``ValueError`` if ``alpha <= 0``, ``sigma < 0``, either is not finite, or the noised law overflows
        the compute dtype (:func:`checked_noise_levels`).
        """
        dim = self.dim
        # alpha mu and alpha^2 Sigma + sigma^2 I must stay finite in the compute dtype (and the Cholesky factor
        # too): refuse, naming the argument that overflows, instead of returning a mixture of inf or NaN
        if self._cov_abs_max is None:
            self._cov_abs_max = float(self._cov64.abs().max())
        a, s = checked_noise_levels(alpha, sigma, self._dtype, float(self._mu64.abs().max()), self._cov_abs_max)
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

    # --- properties -----------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._mu64.shape[1]

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

    def marginal_variance(self) -> torch.Tensor:
        r"""The diagonal of :meth:`covariance` without the ``[d, d]`` matrix,
        :math:`\sum_k \pi_k(\Sigma_{k,ii} + (\mu_{k,i} - m_i)^2)`, ``[d]`` (the interface every mixture family
        offers; the dense one is :meth:`covariance`)."""
        spread = self._mu64 - self._w64 @ self._mu64
        return (self._w64 @ (torch.diagonal(self._cov64, dim1=1, dim2=2) + spread**2)).to(self._dtype)

    def __repr__(self) -> str:
        return (f"GaussianMixture(K={self.n_components}, d={self.dim}, classes={self.classes.tolist()}, "
                f"attributes={list(self._attributes)}, dtype={self._dtype})")

    # --- densities and scores -------------------------------------------------------------------------
    # Two engines, both centred before they square (the residuals x - mu_k first, then g_k = P_k (x - mu_k) and the
    # quadratic forms (x - mu_k) . g_k; the score is -sum_k r_k g_k), with the same chains of roundings, so
    # verify.tolerances bounds both and the tests compare both against 50-digit mpmath at narrow modes far from
    # the origin:
    # * the block engine (d <= _BLOCK_ENGINE_MAX_DIM, no autograd): points in blocks, every quantity a [K, n] block
    #   with one row per component, coordinates one at a time (_block_log_joint);
    # * the batched engine (larger d, or autograd recording): points as columns ([K, d, N]), one batched product
    #   for the g_k (_components).
    def _uses_block_engine(self, x: torch.Tensor) -> bool:
        return self.dim <= _BLOCK_ENGINE_MAX_DIM and not x.requires_grad

    def _block_parameters(self) -> _BlockParams:
        """The parameters laid out for the block engine, built once per mixture (a few [K, 1] and [d, K] tensors)."""
        if self._block_params is None:
            prec, dim = self._precision, self.dim
            self._block_params = _BlockParams(
                mu=tuple(self._mu_hi[:, j:j + 1].contiguous() for j in range(dim)),
                mu_lo=None if self._mu_lo is None else tuple(self._mu_lo[:, j:j + 1].contiguous()
                                                             for j in range(dim)),
                # quad[i][i] = -P_ii / 2 and quad[i][j] = -P_ij (j > i): the quadratic form's coefficients over the
                # upper triangle, the halving of the log density folded in (both scalings exact)
                quad=tuple(tuple((-0.5 * prec[:, i, i:i + 1] if j == i else -prec[:, i, j:j + 1]).contiguous()
                                 if j >= i else None for j in range(dim)) for i in range(dim)),
                const=self._log_joint_const[:, None].contiguous(),
                # neg_prec[j][i, k] = -P_k[j, i] = -P_k[i, j]: P_k is symmetric to the bit (symmetrised as
                # (P + P^T) / 2, and floating-point addition commutes); negating is exact
                neg_prec=tuple((-prec[:, j, :]).T.contiguous() for j in range(dim)))
        return self._block_params

    def _unreachable(self, row: int) -> ValueError:
        return ValueError(f"x: point {row} is so far from every component that its quadratic form overflows "
                          f"{self._dtype} (log p(x) is below the dtype's range)"
                          + ("; float64 has a far larger range" if self._dtype == torch.float32 else ""))

    def _blocks(self, n: int):
        """``(start, stop)`` of blocks of at most ``_BLOCK_ENTRIES_PER_THREAD`` [K, n] entries per intra-op thread and
        ``_BLOCK_POINTS`` points, all of nearly the same size (a small last block would pay the per-operation cost
        of a whole one)."""
        limit = max(1, min(_BLOCK_POINTS, _BLOCK_ENTRIES_PER_THREAD * torch.get_num_threads() // self.n_components))
        count = -(-n // limit)
        size = -(-n // count) if count else 0
        return [(start, min(start + size, n)) for start in range(0, n, max(size, 1))]

    def _block_log_joint(self, xt: torch.Tensor, start: int, ws: _Workspace
                         ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        r"""The block engine on a block of points given by coordinates, ``xt`` ``[d, n]`` (points ``start``.. of the
        caller's), in the buffers of ``ws`` (the results are views of them, valid until the next block).

        Returns the log joints ``[K, n]``, the residuals :math:`c_{k,j} = x_j - \mu_{k,j}` (one ``[K, n]`` block
        per coordinate j) and the maxima over k of the log joints ``[1, n]``. The log joint is the centred quadratic
        form summed over the upper triangle of the symmetric :math:`P_k`,

        .. math::  l_k = \kappa_k + \sum_i c_{k,i}\Big(-\tfrac12 P_{k,ii} c_{k,i} - \sum_{j>i} P_{k,ij} c_{k,j}\Big)
                   = \kappa_k - \tfrac12 c_k^\top P_k c_k,

        (d(d+1)/2 + d passes over the block instead of the d^2 + d of :math:`c_k \cdot P_k c_k`). Rounding: the
        residual (two steps in float32, hi then lo), at most d roundings in the bracket, one for the product with
        :math:`c_{k,i}` and d in the sum over i after :math:`\kappa_k`: a chain of at most 2d + 2 roundings, and the
        terms' absolute values add up to :math:`|c_k|^\top |P_k| |c_k| + |\kappa_k|`, within the
        :math:`\gamma_{2d+4} (S_k + C_k)` that verify.tolerances charges the log joint (the scalings by -1/2 and -1
        are exact). Refuses a point whose quadratic form overflows for every component, as :meth:`_components`
        does.
        """
        par = self._block_parameters()
        n = xt.shape[1]
        cols = [torch.sub(xt[j], par.mu[j], out=ws.cols[j][:, :n]) for j in range(self.dim)]  # [K, n] each
        if par.mu_lo is not None:  # float32: the low part of the means (see _init_from_valid)
            for j, c in enumerate(cols):
                c.sub_(par.mu_lo[j])
        log_joint, inner = ws.log_joint[:, :n], ws.inner[:, :n]
        for i in range(self.dim):  # kappa_k + sum_i c_i (-P_ii c_i / 2 - sum_{j > i} P_ij c_j)
            torch.mul(cols[i], par.quad[i][i], out=inner)
            for j in range(i + 1, self.dim):
                inner.addcmul_(cols[j], par.quad[i][j])
            if i == 0:
                torch.addcmul(par.const, inner, cols[0], out=log_joint)
            else:
                log_joint.addcmul_(inner, cols[i])
        top = log_joint if self.n_components == 1 else torch.amax(log_joint, 0, keepdim=True, out=ws.top[:, :n])
        # a point's log joints are all -inf exactly when every quadratic form overflowed (NaN: inf - inf or 0 * inf
        # in the products); the sum of the maxima is finite in the common case, one cheap test
        if not math.isfinite(float(top.sum())) and not bool(torch.isfinite(top).all()):
            raise self._unreachable(start + int(torch.nonzero(~torch.isfinite(top.reshape(-1)))[0]))
        return log_joint, cols, top

    def _block_score(self, coef: torch.Tensor | None, cols: list[torch.Tensor], ws: _Workspace) -> torch.Tensor:
        r""":math:`\sum_k a_k s_k = -\sum_j \sum_k P_{k,j\cdot}\, a_k c_{k,j}` as ``[d, n]``, for weights ``coef``
        ``[K, n]`` (all 1 when ``None``): one ``[d, K] x [K, n]`` product per coordinate j, then d - 1 elementwise
        additions. Per term: the weight (1 rounding), the product with :math:`P` and the sum over k (K roundings),
        the sum over j (d - 1): within the chain verify.tolerances counts for :math:`\sum_k r_k g_k`. One component
        takes a broadcast product instead of the matrix product (the same single rounding; a product over an inner
        dimension of 1 is several times slower). Overwrites ``cols`` (scratch); the result is a view of ``ws``."""
        neg_prec = self._block_parameters().neg_prec
        product = torch.mul if self.n_components == 1 else torch.mm
        n = cols[0].shape[1]
        out, term = ws.rows[:, :n], ws.term[:, :n]
        for j, c in enumerate(cols):
            product(neg_prec[j], c if coef is None else c.mul_(coef), out=out if j == 0 else term)  # [d, n]
            if j > 0:
                out.add_(term)
        return out

    def _block_evaluate(self, x: torch.Tensor, *, log_p: bool, score: bool
                        ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        r"""``log p(x)`` ``[N]`` (if ``log_p``) and the score ``[N, d]`` (if ``score``) by the block engine.

        With :math:`e_k = \exp(l_k - \max_k l_k)` (flushed to 0 below :math:`\sqrt{\text{tiny}}`, as
        :func:`_logsumexp_softmax` does) and :math:`E = \sum_k e_k`: :math:`\log p = \max_k l_k + \log E` and
        :math:`s = (\sum_k e_k s_k)/E`. A single component has :math:`e = E = 1` exactly, so it skips that
        arithmetic and returns the same bits. Either output is the same whether or not the other is asked for."""
        n = x.shape[0]
        log_p_out = torch.empty(n, dtype=x.dtype) if log_p else None
        totals = torch.empty(n, dtype=x.dtype) if log_p and self.n_components > 1 else None
        score_out = torch.empty(n, self.dim, dtype=x.dtype) if score else None
        blocks = self._blocks(n)
        ws = _Workspace(self.dim, self.n_components, blocks[0][1] if blocks else 0, x.dtype)
        for start, stop in blocks:
            log_joint, cols, top = self._block_log_joint(ws.coordinates(x[start:stop]), start, ws)
            if log_p_out is not None:
                log_p_out[start:stop] = top[0]
            if self.n_components == 1:
                if score_out is not None:
                    _store(self._block_score(None, cols, ws), score_out[start:stop])
                continue
            e = torch.nn.functional.threshold_(log_joint.sub_(top).exp_(), _flush_below(x.dtype), 0.0)  # [K, n]
            total = torch.sum(e, 0, keepdim=True, out=ws.total[:, :stop - start])  # [1, n]
            if score_out is not None:
                _store(self._block_score(e, cols, ws).div_(total), score_out[start:stop])
            if totals is not None:
                totals[start:stop] = total[0]
        if totals is not None:  # one logarithm for all points
            log_p_out.add_(totals.log_())
        return log_p_out, score_out

    def _components(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batched engine: log joints ``log pi_k + log N(x; mu_k, Sigma_k)`` ``[N, K]`` and
        ``g_k = P_k (x - mu_k)`` ``[K, d, N]``.

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
            raise self._unreachable(int(torch.nonzero(~torch.isfinite(top))[0]))
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
        x = self._points(x)
        if not self._uses_block_engine(x):
            return self._components(x)[0]
        out = torch.empty(x.shape[0], self.n_components, dtype=x.dtype)
        blocks = self._blocks(x.shape[0])
        ws = _Workspace(self.dim, self.n_components, blocks[0][1] if blocks else 0, x.dtype)
        for start, stop in blocks:
            out[start:stop] = self._block_log_joint(ws.coordinates(x[start:stop]), start, ws)[0].T
        return out

    def log_prob(self, x: Tensorish) -> torch.Tensor:
        r""":math:`\log p(x) = \operatorname{logsumexp}_k(\log\pi_k + \log\mathcal N_k(x))`, ``[N, d] -> [N]``."""
        x = self._points(x)
        if self._uses_block_engine(x):
            return self._block_evaluate(x, log_p=True, score=False)[0]
        return _logsumexp_softmax(self._components(x)[0])[0]

    def score(self, x: Tensorish) -> torch.Tensor:
        r""":math:`\nabla_x \log p(x) = -\sum_k r_k(x)\, \Sigma_k^{-1}(x - \mu_k)`, ``[N, d] -> [N, d]``."""
        return self._checked_score(self._points(x))

    def _checked_score(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`score` of points already checked by the input policy (``[N, d]``, finite, of this mixture's
        dtype): what :class:`~toy_models.denoiser.AnalyticDenoiser` calls after its own check. The bits of
        ``log_prob_and_score(x)[1]``."""
        if self._uses_block_engine(x):
            return self._block_evaluate(x, log_p=False, score=True)[1]
        return self._batched_log_prob_and_score(x)[1]

    def log_prob_and_score(self, x: Tensorish) -> tuple[torch.Tensor, torch.Tensor]:
        """``log p(x)`` and the score from one pass of the engine."""
        x = self._points(x)
        if self._uses_block_engine(x):
            return self._block_evaluate(x, log_p=True, score=True)
        return self._batched_log_prob_and_score(x)

    def _batched_log_prob_and_score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_joint, grads = self._components(x)
        log_p, r = _logsumexp_softmax(log_joint)  # [N], [N, K]
        return log_p, self._weighted_component_score(r, grads)

    # --- class posteriors -----------------------------------------------------------------------------
    def grad_log_posterior(self, x: Tensorish, condition: Condition) -> torch.Tensor:
        r""":math:`\nabla_x \log p(c \mid x) = \sum_k (r^c_k - r_k)\, s_k`, ``[N, d]``.

        :math:`r^c` are the responsibilities within the components matching ``c`` and :math:`s_k` the component
        scores. This equals ``given(c).score(x) - score(x)`` (Bayes' rule in score form) but is formed as one
        weighted sum, without subtracting two large scores.
        """
        mask = self.matches(condition)
        x = self._points(x)
        if not self._uses_block_engine(x):
            log_joint, grads = self._components(x)
            r = _logsumexp_softmax(log_joint)[1]
            r_c = _logsumexp_softmax(log_joint.masked_fill(~mask, -math.inf))[1]
            return self._weighted_component_score(r_c - r, grads)
        out = torch.empty(x.shape, dtype=x.dtype)
        blocks = self._blocks(x.shape[0])
        ws = _Workspace(self.dim, self.n_components, blocks[0][1] if blocks else 0, x.dtype)
        for start, stop in blocks:
            log_joint, cols, _ = self._block_log_joint(ws.coordinates(x[start:stop]), start, ws)
            log_joint = log_joint.T  # [n, K]
            r_c = _logsumexp_softmax(log_joint.masked_fill(~mask, -math.inf))[1]
            _store(self._block_score((r_c - _logsumexp_softmax(log_joint)[1]).T, cols, ws), out[start:stop])
        return out

    # --- sampling -------------------------------------------------------------------------------------
    def sample_with_components(self, n: int, generator: torch.Generator | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Points ``[n, d]`` and the index ``[n]`` of the component each was drawn from."""
        n, comp = self._draw_components(n, generator)
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


class _BlockParams(NamedTuple):
    """A mixture's parameters as the block engine reads them (``GaussianMixture._block_parameters``)."""

    mu: tuple[torch.Tensor, ...]  # mu[j][k, 0] = mu_{k,j} (the high part in float32), [K, 1]
    mu_lo: tuple[torch.Tensor, ...] | None  # the low part of the means in float32, [K, 1] each; else None
    quad: tuple[tuple[torch.Tensor | None, ...], ...]  # quad[i][i] = -P_{k,ii} / 2, quad[i][j] = -P_{k,ij} (j > i)
    const: torch.Tensor  # kappa_k, [K, 1]
    neg_prec: tuple[torch.Tensor, ...]  # neg_prec[j][i, k] = -P_{k,ji}, [d, K]


class _Workspace:
    """The buffers the block engine reuses from block to block: operations write into them (``out=``, in place)
    instead of allocating fresh temporaries (on ring2d at 10^6 points, one thread: 72 ms per evaluation of the
    eight-component law against 75 ms)."""

    def __init__(self, dim: int, n_components: int, size: int, dtype: torch.dtype):
        def buffer(rows: int) -> torch.Tensor:
            return torch.empty(rows, size, dtype=dtype)

        self.xt, self.rows, self.term = buffer(dim), buffer(dim), buffer(dim)
        self.cols = [buffer(n_components) for _ in range(dim)]
        self.inner, self.log_joint = buffer(n_components), buffer(n_components)
        self.top, self.total = buffer(1), buffer(1)

    def coordinates(self, x: torch.Tensor) -> torch.Tensor:
        """Points ``[n, d]`` as coordinate rows ``[d, n]``. Copied a column at a time: a strided 1-D copy is several
        times faster than torch's copy of the transposed matrix when d is small."""
        out = self.xt[:, :x.shape[0]]
        for j in range(x.shape[1]):
            out[j].copy_(x[:, j])
        return out


def _store(rows: torch.Tensor, out: torch.Tensor) -> None:
    """Write coordinate rows ``[d, n]`` into points ``out`` ``[n, d]``, a column at a time (see
    :meth:`_Workspace.coordinates`)."""
    for j in range(rows.shape[0]):
        out[:, j].copy_(rows[j])


def _flush_below(dtype: torch.dtype) -> float:
    """Responsibilities below ``sqrt(tiny)`` of the dtype are set to 0 (see :func:`_logsumexp_softmax`)."""
    return math.sqrt(torch.finfo(dtype).tiny)


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
    cut = _flush_below(log_joint.dtype)
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
