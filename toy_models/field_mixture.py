r"""Gaussian mixtures of images whose covariances share one orthonormal basis: exact at image scale.

A component of a :class:`FieldMixture` is an image-shaped Gaussian :math:`\mathcal N(m_k, \Sigma_k)` on
:math:`x \in \mathbb R^{C \times H \times W}` (d = CHW) whose covariance is diagonal in a fixed orthonormal basis B,
:math:`\Sigma_k = B\,\mathrm{diag}(\nu_k)\,B^\top`: here B is the orthonormal 2-D DCT-II per channel (a stationary
field with reflecting boundaries has such a covariance; Strang 1999, "The discrete cosine transform", SIAM Review
41(1), section 4, gives the DCT as the eigenbasis of the second-difference matrix with Neumann ends), and
:math:`\nu_k \in \mathbb R^{C \times H \times W}_{>0}` is the component's spectrum.

Why it stays exact. Forward noising maps :math:`\Sigma_k` to :math:`\alpha^2\Sigma_k + \sigma^2 I = B\,\mathrm{diag}
(\alpha^2\nu_k + \sigma^2)\,B^\top`: still diagonal in B. So every noised law is again a field mixture, and with
:math:`z_k = B^\top(x - m_k)` (one separable transform, :math:`D_H X D_W^\top` per channel),

.. math::  \log\mathcal N(x; m_k, \Sigma_k) = -\tfrac12\sum_j z_{kj}^2/\nu_{kj} - \tfrac12\sum_j\log\nu_{kj}
           - \tfrac d2\log 2\pi, \qquad \nabla_x \log\mathcal N = -B(z_k/\nu_k),

at cost O(K N C H W (H + W)) with matrix transforms instead of O(K N d^2) with dense covariances. Density, score,
responsibilities and class posteriors follow as for :class:`~toy_models.gaussian_mixture.GaussianMixture`, which
:meth:`FieldMixture.to_dense` builds for d <= 1024 (the tests compare the two).

Points are ``[N, d]`` (images flattened channel-major, as ``x.reshape(N, C, H, W)`` reads them), float64 or float32.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

import torch

from ._checks import Tensorish, as_tensor, check_points, real_dtype_of
from .gaussian_mixture import GaussianMixture

__all__ = ["FieldMixture", "dct_matrix", "DENSE_LIMIT"]

F64 = torch.float64
#: the largest dimension :meth:`FieldMixture.to_dense` converts (a [K, d, d] covariance of 1024 is 8 MB per component)
DENSE_LIMIT = 1024


def dct_matrix(n: int, dtype: torch.dtype = F64) -> torch.Tensor:
    r"""The orthonormal DCT-II matrix ``[n, n]``: row j is :math:`c_j \cos(\pi j (2i + 1) / 2n)`, :math:`c_0 =
    \sqrt{1/n}`, :math:`c_j = \sqrt{2/n}` (Strang 1999, eq. 4); :math:`D D^\top = I` to rounding."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: must be an int >= 1, got {n!r}")
    i = torch.arange(n, dtype=F64)
    j = torch.arange(n, dtype=F64)[:, None]
    out = torch.cos(math.pi * j * (2 * i + 1) / (2 * n)) * math.sqrt(2.0 / n)
    out[0] = math.sqrt(1.0 / n)
    return out.to(dtype)


class FieldMixture:
    r"""A mixture of image Gaussians diagonal in the per-channel 2-D DCT basis (module docstring).

    Parameters
    ----------
    weights : ``[K]``, non-negative, summing to 1 (renormalised).
    means : ``[K, C, H, W]``, the component mean images.
    spectra : ``[K, C, H, W]``, the variances :math:`\nu_k` of the DCT coefficients, positive.
    labels : ``[K]`` ints, optional (default ``0..K-1``).
    dtype : float64 (default) or float32, the dtype of per-point computations.
    """

    def __init__(self, weights: Tensorish, means: Tensorish, spectra: Tensorish, labels: Tensorish | None = None,
                 *, dtype: torch.dtype = F64):
        w = as_tensor(weights, "weights")
        mu = as_tensor(means, "means")
        nu = as_tensor(spectra, "spectra")
        if w.ndim != 1 or w.numel() == 0:
            raise ValueError(f"weights: expected shape [K] with K >= 1, got {list(w.shape)}")
        k = w.numel()
        if mu.ndim != 4 or mu.shape[0] != k:
            raise ValueError(f"means: expected shape [K, C, H, W] with K = {k}, got {list(mu.shape)}")
        if nu.shape != mu.shape:
            raise ValueError(f"spectra: expected the shape of means {list(mu.shape)}, got {list(nu.shape)}")
        if bool((w < 0).any()) or abs(float(w.sum()) - 1.0) > 2.0 * k * 2.0**-52:
            raise ValueError(f"weights: must be non-negative and sum to 1, got sum {float(w.sum())!r}")
        if not bool((nu > 0).all()):
            raise ValueError("spectra: every variance must be > 0")
        if dtype not in (F64, torch.float32):
            raise ValueError(f"dtype: must be torch.float64 or torch.float32, got {dtype}")
        labels = torch.arange(k) if labels is None else as_tensor(labels, "labels").to(torch.int64)
        if labels.shape != (k,):
            raise ValueError(f"labels: expected shape [{k}], got {list(labels.shape)}")
        self._w, self._mu, self._nu, self._labels, self._dtype = w / w.sum(), mu, nu, labels, dtype
        self.shape = tuple(int(s) for s in mu.shape[1:])
        self._dh, self._dw = dct_matrix(self.shape[1]), dct_matrix(self.shape[2])

    # --- structure ----------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        c, h, w = self.shape
        return c * h * w

    @property
    def n_components(self) -> int:
        return self._w.numel()

    @property
    def weights(self) -> torch.Tensor:
        return self._w.clone()

    @property
    def means(self) -> torch.Tensor:
        """``[K, d]``, flattened channel-major."""
        return self._mu.reshape(self.n_components, -1).clone()

    @property
    def spectra(self) -> torch.Tensor:
        return self._nu.clone()

    @property
    def labels(self) -> torch.Tensor:
        return self._labels.clone()

    @property
    def classes(self) -> torch.Tensor:
        return torch.unique(self._labels)

    def _derived(self, w, mu, nu, labels) -> FieldMixture:
        out = object.__new__(FieldMixture)
        out._w, out._mu, out._nu, out._labels, out._dtype = w, mu, nu, labels, self._dtype
        out.shape, out._dh, out._dw = self.shape, self._dh, self._dw
        return out

    def noised(self, alpha: float, sigma: float) -> FieldMixture:
        r"""The law of :math:`\alpha x + \sigma\varepsilon`: means :math:`\alpha m_k`, spectra
        :math:`\alpha^2\nu_k + \sigma^2` (exact: the basis is orthonormal)."""
        a, s = float(alpha), float(sigma)
        if not (math.isfinite(a) and math.isfinite(s)) or a < 0 or s < 0 or (a == 0 and s == 0):
            raise ValueError(f"alpha, sigma: need finite alpha >= 0, sigma >= 0, not both 0; got {a!r}, {s!r}")
        return self._derived(self._w, a * self._mu, a * a * self._nu + s * s, self._labels)

    def given(self, condition: Hashable) -> FieldMixture:
        """The components of class ``condition`` (an int label; ``None``: the mixture itself), reweighted."""
        if condition is None:
            return self
        mask = self._labels == int(condition)
        if not bool(mask.any()):
            raise ValueError(f"condition: unknown label {condition!r}; labels are {self.classes.tolist()}")
        w = self._w[mask]
        return self._derived(w / w.sum(), self._mu[mask], self._nu[mask], self._labels[mask])

    def to(self, dtype: torch.dtype) -> FieldMixture:
        if dtype not in (F64, torch.float32):
            raise ValueError(f"dtype: must be torch.float64 or torch.float32, got {dtype}")
        out = self._derived(self._w, self._mu, self._nu, self._labels)
        out._dtype = dtype
        return out

    # --- the transform ------------------------------------------------------------------------------
    def to_basis(self, images: torch.Tensor) -> torch.Tensor:
        r""":math:`B^\top x` for ``[..., C, H, W]`` images: :math:`D_H X D_W^\top` per channel."""
        return self._dh.to(images.dtype) @ images @ self._dw.to(images.dtype).T

    def from_basis(self, coefficients: torch.Tensor) -> torch.Tensor:
        r""":math:`B z`: the inverse (transpose) transform."""
        return self._dh.to(coefficients.dtype).T @ coefficients @ self._dw.to(coefficients.dtype)

    # --- densities ----------------------------------------------------------------------------------
    def _points(self, x: Tensorish) -> torch.Tensor:
        return check_points(x, self.dim, real_dtype_of(x, self._dtype))

    def _components(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log w_k + log N(x; m_k, S_k) [N, K], whitened residual z_k / nu_k [N, K, C, H, W])``."""
        n, (c, h, w) = x.shape[0], self.shape
        images = x.reshape(n, 1, c, h, w)
        mu, nu = self._mu.to(x.dtype), self._nu.to(x.dtype)
        z = self.to_basis(images - mu)  # [N, K, C, H, W]: centred before transforming (exact at narrow modes)
        g = z / nu
        quad = (z * g).flatten(2).sum(-1)
        const = torch.log(self._w).to(x.dtype) - 0.5 * torch.log(nu).flatten(1).sum(-1) \
            - 0.5 * self.dim * math.log(2 * math.pi)
        return const - 0.5 * quad, g

    def component_log_prob(self, x: Tensorish) -> torch.Tensor:
        """``[N, K]``: log w_k + log N(x; m_k, S_k)."""
        return self._components(self._points(x))[0]

    def log_prob(self, x: Tensorish) -> torch.Tensor:
        """``[N]``."""
        return torch.logsumexp(self.component_log_prob(x), dim=-1)

    def responsibilities(self, x: Tensorish) -> torch.Tensor:
        """``[N, K]``: p(k | x)."""
        return torch.softmax(self.component_log_prob(x), dim=-1)

    def score(self, x: Tensorish) -> torch.Tensor:
        r""":math:`\nabla_x\log p(x) = -\sum_k r_k B(z_k/\nu_k)`, ``[N, d]``."""
        x = self._points(x)
        log_joint, g = self._components(x)
        r = torch.softmax(log_joint, dim=-1)
        mixed = (r[:, :, None, None, None] * g).sum(1)  # B is linear: mix in the basis, transform once
        return -self.from_basis(mixed).reshape(x.shape[0], -1)

    def class_posterior(self, x: Tensorish) -> torch.Tensor:
        """``[N, n_classes]``, columns in :attr:`classes` order."""
        r = self.responsibilities(x)
        member = (self._labels[:, None] == self.classes[None, :]).to(r.dtype)
        return r @ member

    def grad_log_posterior(self, x: Tensorish, condition: Hashable) -> torch.Tensor:
        r""":math:`\nabla_x \log p(c \mid x) = \sum_k (r^c_k - r_k)(-B z_k/\nu_k)`, ``[N, d]`` (one weighted sum)."""
        x = self._points(x)
        mask = self._labels == int(condition)
        if not bool(mask.any()):
            raise ValueError(f"condition: unknown label {condition!r}; labels are {self.classes.tolist()}")
        log_joint, g = self._components(x)
        r = torch.softmax(log_joint, dim=-1)
        r_c = torch.softmax(log_joint.masked_fill(~mask, -math.inf), dim=-1)
        mixed = ((r_c - r)[:, :, None, None, None] * g).sum(1)
        return -self.from_basis(mixed).reshape(x.shape[0], -1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[n, d]`` draws: a component by weight, then :math:`m_k + B(\\sqrt{\\nu_k}\\,\\xi)`."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n: must be an int >= 0, got {n!r}")
        idx = torch.multinomial(self._w, n, replacement=True, generator=generator) if n else torch.zeros(0, dtype=int)
        xi = torch.randn((n, *self.shape), dtype=F64, generator=generator)
        out = self._mu[idx] + self.from_basis(self._nu[idx].sqrt() * xi)
        return out.reshape(n, -1).to(self._dtype)

    def to_dense(self) -> GaussianMixture:
        r"""The same law as a :class:`~toy_models.gaussian_mixture.GaussianMixture` with dense covariances
        :math:`B\,\mathrm{diag}(\nu_k) B^\top` (d <= :data:`DENSE_LIMIT`; ``ValueError`` beyond)."""
        if self.dim > DENSE_LIMIT:
            raise ValueError(f"dim: to_dense covers d <= {DENSE_LIMIT}, got {self.dim}")
        c, h, w = self.shape
        basis = torch.eye(self.dim, dtype=F64).reshape(self.dim, c, h, w)
        cols = self.from_basis(basis).reshape(self.dim, -1).T  # column j: B e_j
        cov = torch.stack([(cols * nu.reshape(-1)) @ cols.T for nu in self._nu])
        cov = 0.5 * (cov + cov.transpose(1, 2))
        return GaussianMixture(self._w, self.means, cov, self._labels, dtype=self._dtype)

    def __repr__(self) -> str:
        return f"FieldMixture(K={self.n_components}, shape={self.shape}, dtype={self._dtype})"

