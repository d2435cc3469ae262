r"""Gaussian mixtures of images whose covariances share one orthonormal basis: exact at image scale.

A component of a :class:`FieldMixture` is an image-shaped Gaussian :math:`\mathcal N(m_k, \Sigma_k)` on
:math:`x \in \mathbb R^{C \times H \times W}` (d = CHW) whose covariance is diagonal in a fixed orthonormal basis B,
:math:`\Sigma_k = B\,\mathrm{diag}(\nu_k)\,B^\top`: here B is the orthonormal 2-D DCT-II per channel (a stationary
field with reflecting boundaries has such a covariance; Strang 1999, "The discrete cosine transform", SIAM Review
41(1), section 4, gives the DCT as the eigenbasis of the second-difference matrix with Neumann ends), and
:math:`\nu_k \in \mathbb R^{C \times H \times W}_{>0}` is the component's spectrum.

Why it stays exact. Forward noising maps :math:`\Sigma_k` to :math:`\alpha^2\Sigma_k + \sigma^2 I = B\,\mathrm{diag}
(\alpha^2\nu_k + \sigma^2)\,B^\top`: still diagonal in B. So every noised law is again a field mixture, and with
:math:`z_k = B^\top(x - m_k)`,

.. math::  \log\mathcal N(x; m_k, \Sigma_k) = -\tfrac12\sum_j z_{kj}^2/\nu_{kj} - \tfrac12\sum_j\log\nu_{kj}
           - \tfrac d2\log 2\pi, \qquad \nabla_x \log\mathcal N = -B(z_k/\nu_k).

The engine. B is linear, so :math:`z_k = B^\top x - B^\top m_k`: each point is transformed once
(:math:`D_H X D_W^\top` per channel, O(d (H + W))) and the transformed means :math:`c_k = B^\top m_k` (computed once,
in float64) are subtracted; the quadratic forms and the responsibility-weighted sum of the :math:`z_k/\nu_k` are
then O(K d) per point, and the score takes one inverse transform per point. The points are processed in blocks of at
most :data:`BLOCK_ENTRIES` coordinates, the quadratic forms one component at a time in a buffer the size of a block
(it stays in cache), so no ``[N, K, d]`` array exists. Measured on shapes32 (K = 48, d = 3072), one thread: the
score of 10^4 points takes about 2.2 s (a ``[n, K, d]`` formulation took 6 s, memory-bound). Density, score,
responsibilities and posteriors follow as for :class:`~toy_models.gaussian_mixture.GaussianMixture` (whose label,
attribute and condition logic this class shares, and whose log-sum-exp it calls), which :meth:`FieldMixture.to_dense`
builds for d <= :data:`DENSE_LIMIT` (the tests compare the two).

Rounding (what :meth:`FieldMixture.rounding_bounds` evaluates). With the compute dtype's unit roundoff u and Higham's
:math:`\gamma_n = nu/(1 - nu)` (*Accuracy and Stability of Numerical Algorithms*, 2nd ed., Lemma 3.1 and section
3.5: a product of matrices errs by at most :math:`\gamma_n |A||B|` with n the inner length), per point and component:

* transform: :math:`|\delta(B^\top x)| \le \gamma_{H+W+1} A_x` with :math:`A_x = |D_H|\,|X|\,|D_W|^\top` per channel
  (two products, and the rounding of x to the compute dtype); the mean's coefficients, formed in float64 and
  rounded once, err by at most :math:`\gamma_{H+W+1} A_{m_k}`;
* residual: the difference of the two, rounded once, :math:`|\delta z_k| \le e_k := \gamma_{H+W+2}(A_x + A_{m_k})
  + u|z_k|`. Subtracting transformed quantities costs this :math:`A_x + A_{m_k}` (the size of the two transforms)
  where transforming each residual would cost :math:`A_{x - m_k}`: the price of transforming once, visible only at
  a narrow mode far from the origin;
* whitened residual :math:`g_k = z_k/\nu_k` (the reciprocal prepared in float64 and rounded: 3 roundings):
  :math:`|\delta g_k| \le ((1 + \gamma_3) e_k + \gamma_3 |z_k|)/\nu_k`;
* quadratic form :math:`q_k = \sum_j z_{kj}^2\,\nu_{kj}^{-1}`. In float32 (and under autograd) it is centred: the
  squared residual, then a length-d dot product with the reciprocals, one component at a time:
  :math:`|\delta q_k| \le (1 + \gamma_{d+3}) \sum_j (2|z_{kj}| e_{kj} + e_{kj}^2)/\nu_{kj} + \gamma_{d+3} S_k`,
  :math:`S_k = \sum_j z_{kj}^2/\nu_{kj}`. In float64 it is expanded, :math:`q_k = \sum_j z_{x,j}^2/\nu_{kj}
  - 2\sum_j z_{x,j} c_{kj}/\nu_{kj} + \sum_j c_{kj}^2/\nu_{kj}` (the first two as ``[n, d] x [d, K]`` matrix
  products, the third once per mixture, then clamped at 0, which only moves q towards its true value): the same
  first term, and :math:`\gamma_{d+3} T_k` with :math:`T_k = \sum_j (|z_{x,j}| + |c_{kj}|)^2/\nu_{kj} \ge S_k` in
  place of :math:`\gamma_{d+3} S_k`. The cancellation costs digits only in float32's range: on shapes16 at t = 0.01,
  :math:`T_k \approx 2 \cdot 10^5` bounds the log density's error by about :math:`10^{-8}` in float64 but by
  about 5 in float32, which is why float32 keeps the centred loop. Measured on the score of 2000 points, one thread
  (``shapes(s).unconditional.noised(0.8, 0.6)``): 2.9x faster than the loop at s = 32, 2.4x at s = 64, where the
  transforms then take most of the time;
* log joint :math:`l_k = \kappa_k - q_k/2`, :math:`\kappa_k` formed in float64 from d + 2 terms of absolute sum
  :math:`C_k` and rounded: :math:`\Delta_k = |\delta q_k|/2 + \gamma^{(64)}_{d+2} C_k + u(|\kappa_k| + |l_k|)`;
* log density: the log-sum-exp moves by at most :math:`\bar\Delta = \log\sum_k r_k e^{\Delta_k}` under those
  perturbations (monotone, and Jensen for the lower side), plus its own :math:`\gamma_{K+3} + u|\log p|`;
* score: responsibilities within :math:`r_k e^{\pm(\Delta_k + \bar\Delta)}`, so the mixed whitened residual
  :math:`\bar g = \sum_k r_k g_k`, formed as :math:`z_x \odot \sum_k r_k\nu_k^{-1} - \sum_k r_k (c_k/\nu_k)` (two
  ``[n, K] x [K, d]`` products, so no ``[n, K, d]`` array), errs by at most
  :math:`E = \sum_k (r_k + m_k)\|\delta g_k\| + \sum_k m_k \|g_k - \bar g\| + \gamma_{2K+5}\sum_k (r_k + m_k)
  \|(|z_x| + |c_k|)/\nu_k\| + \sqrt{\text{tiny}}\sum_k\|g_k - \bar g\|` with
  :math:`m_k = \min(r_k\,\mathrm{expm1}(\Delta_k + \bar\Delta), 1)` (the softmax's own K + 3 roundings, the
  products' K + 2 and the difference's one, relative to the size of the two transformed quantities as for the
  residual; responsibilities below :math:`\sqrt{\text{tiny}}` flushed to 0 as GaussianMixture does); the inverse
  transform adds
  :math:`\gamma_{H+W}(\|A_{\bar g}\| + \sqrt{HW} E)` and multiplies E by :math:`\|B\| \le 1 + \gamma_{H+W}`.

Points are ``[N, d]`` (images flattened channel-major, as ``x.reshape(N, C, H, W)`` reads them) under the input
policy of :mod:`toy_models._checks`: computed in the mixture's dtype (float64 default, or float32), integers
converted exactly, anything else refused; a point so far from every component that its quadratic forms overflow is
refused with a ``ValueError`` naming ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from ._checks import Tensorish, as_tensor, check_magnitude, check_points
from .gaussian_mixture import (
    Condition,
    GaussianMixture,
    LabelledComponents,
    _flush_below,
    _logsumexp_softmax,
    _read_attributes,
    _read_labels,
    checked_noise_levels,
)

__all__ = ["FieldMixture", "dct_matrix", "DENSE_LIMIT", "COVARIANCE_LIMIT", "BLOCK_ENTRIES"]

F64 = torch.float64
_UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24}
_LOG_2PI = math.log(2.0 * math.pi)
#: the largest dimension :meth:`FieldMixture.to_dense` converts (a [K, d, d] covariance of 1024 is 8 MB per component)
DENSE_LIMIT = 1024
#: the largest dimension :meth:`FieldMixture.covariance` returns as a dense [d, d] matrix (128 MiB in float64)
COVARIANCE_LIMIT = 4096
#: the engine's blocks hold at most this many point coordinates (n d) and at least one point
BLOCK_ENTRIES = 2**17


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


def _gamma(n: int, u: float) -> float:
    return n * u / (1.0 - n * u)


class FieldMixture(LabelledComponents):
    r"""A mixture of image Gaussians diagonal in the per-channel 2-D DCT basis (module docstring), with the interface
    of :class:`~toy_models.gaussian_mixture.GaussianMixture` wherever a world's law is read.

    Parameters
    ----------
    weights : ``[K]``, non-negative, summing to 1 (within ``2 K u``; renormalised).
    means : ``[K, C, H, W]``, the component mean images.
    spectra : ``[K, C, H, W]``, the variances :math:`\nu_k` of the DCT coefficients, positive normal float64 numbers.
    labels : ``[K]`` ints, optional (default ``0..K-1``).
    attributes : mapping ``name -> K token strings``, optional, as for GaussianMixture (``{"colour": ..., ...}``).
    dtype : float64 (default) or float32, the dtype of per-point computations (parameters are prepared in float64).
    """

    def __init__(self, weights: Tensorish, means: Tensorish, spectra: Tensorish, labels: Tensorish | None = None,
                 *, attributes: Mapping[str, Sequence[str]] | None = None, dtype: torch.dtype = F64):
        w = as_tensor(weights, "weights")
        mu = as_tensor(means, "means")
        nu = as_tensor(spectra, "spectra")
        if w.ndim != 1 or w.numel() == 0:
            raise ValueError(f"weights: expected shape [K] with K >= 1, got {list(w.shape)}")
        k = w.numel()
        if mu.ndim != 4 or mu.shape[0] != k or 0 in mu.shape:
            raise ValueError(f"means: expected shape [K, C, H, W] with K = {k}, got {list(mu.shape)}")
        if nu.shape != mu.shape:
            raise ValueError(f"spectra: expected the shape of means {list(mu.shape)}, got {list(nu.shape)}")
        if bool((w < 0).any()) or abs(float(w.sum()) - 1.0) > 2.0 * k * 2.0**-52:
            raise ValueError(f"weights: must be non-negative and sum to 1, got sum {float(w.sum())!r}")
        if not bool((nu >= torch.finfo(F64).tiny).all()):
            raise ValueError("spectra: every variance must be > 0 and a normal float64 number (>= 2.2e-308)")
        check_magnitude(float(nu.max()), torch.finfo(F64).max / 4, "spectra", "sums of variances would overflow")
        labels64 = _read_labels(labels, k)
        self._init(w / w.sum(), mu, nu, None, labels64, _read_attributes(attributes, k), dtype)

    def _init(self, w, mu, nu, coef, labels, attributes, dtype, parent: FieldMixture | None = None) -> None:
        """Set every field from validated float64 parameters; ``coef`` (:math:`B^\\top m_k`) is computed unless
        given. ``parent`` shares its transform matrices and, for the same labels, its classes."""
        if dtype not in _UNIT_ROUNDOFF:
            raise ValueError(f"dtype: must be torch.float64 or torch.float32, got {dtype}")
        self._w64, self._mu64, self._nu64, self._dtype = w, mu, nu, dtype
        self._set_labels(labels, attributes, parent)
        self.shape = tuple(int(s) for s in mu.shape[1:])
        if parent is None:
            self._dh64, self._dw64 = dct_matrix(self.shape[1]), dct_matrix(self.shape[2])
        else:
            self._dh64, self._dw64 = parent._dh64, parent._dw64
        self._coef64 = self.to_basis(mu) if coef is None else coef  # B^T m_k, [K, C, H, W]
        k, d = self.n_components, self.dim
        # per-point arithmetic in the compute dtype, parameters prepared in float64 and rounded once
        self._dh, self._dw = self._dh64.to(dtype), self._dw64.to(dtype)
        self._coef = self._coef64.reshape(k, d).to(dtype)
        self._inv_nu = (1.0 / nu.reshape(k, d)).to(dtype)
        self._weighted_coef = (self._coef64.reshape(k, d) / nu.reshape(k, d)).to(dtype)  # c_k / nu_k
        self._coef_quad = (self._coef64.reshape(k, d) ** 2 / nu.reshape(k, d)).sum(-1).to(dtype)  # sum c_k^2 / nu_k
        self._const64 = torch.log(w) - 0.5 * torch.log(nu).reshape(k, d).sum(-1) - 0.5 * d * _LOG_2PI
        self._const = self._const64.to(dtype)  # kappa_k, -inf for a zero weight

    def _derived(self, w, mu, nu, coef, mask=None, dtype=None) -> FieldMixture:
        out = object.__new__(FieldMixture)
        labels, attrs = self._labels, self._attributes
        if mask is not None:
            labels, attrs = labels[mask], self._sub_attributes(mask)
        out._init(w, mu, nu, coef, labels, attrs, dtype or self._dtype, parent=self)
        return out

    # --- structure ----------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        c, h, w = self.shape
        return c * h * w

    @property
    def means(self) -> torch.Tensor:
        """``[K, d]``, flattened channel-major, in the compute dtype."""
        return self._mu64.reshape(self.n_components, -1).to(self._dtype)

    @property
    def mean_images(self) -> torch.Tensor:
        """``[K, C, H, W]`` in float64."""
        return self._mu64.clone()

    @property
    def spectra(self) -> torch.Tensor:
        """``[K, C, H, W]`` in float64: the variances of the DCT coefficients."""
        return self._nu64.clone()

    def mean(self) -> torch.Tensor:
        r"""Mixture mean :math:`\sum_k \pi_k m_k`, ``[d]``."""
        return (self._w64 @ self._mu64.reshape(self.n_components, -1)).to(self._dtype)

    def marginal_variance(self) -> torch.Tensor:
        r"""The diagonal of :meth:`covariance` without the ``[d, d]`` matrix, ``[d]``: per pixel (c, h, w) of
        component k, :math:`\sum_{p,q} D_H[p,h]^2\, \nu_k[c,p,q]\, D_W[q,w]^2` (:math:`\sum_j B_{ij}^2\nu_{kj}`), then
        the law of total variance :math:`\sum_k \pi_k(\mathrm{var}_k + (m_k - m)^2)`."""
        mean_nu = torch.einsum("k,kchw->chw", self._w64, self._nu64)  # B diag(.) B^T is linear in the spectrum
        within = (self._dh64**2).T @ mean_nu @ self._dw64**2
        flat = self._mu64.reshape(self.n_components, -1)
        spread = flat - self._w64 @ flat
        return (within.reshape(-1) + self._w64 @ spread**2).to(self._dtype)

    def covariance(self) -> torch.Tensor:
        r"""Mixture covariance :math:`B\,\mathrm{diag}(\sum_k\pi_k\nu_k)B^\top + \sum_k\pi_k(m_k - m)(m_k - m)^\top`,
        dense ``[d, d]``; refused (``ValueError`` naming ``dim``) above :data:`COVARIANCE_LIMIT`, where
        :meth:`marginal_variance` gives its diagonal."""
        if self.dim > COVARIANCE_LIMIT:
            raise ValueError(f"dim: covariance() returns a dense [d, d] matrix for d <= {COVARIANCE_LIMIT}, this "
                             f"mixture has d = {self.dim}; marginal_variance() gives its diagonal")
        cols = self._basis_columns()
        mean_nu = torch.einsum("k,kchw->chw", self._w64, self._nu64).reshape(-1)
        flat = self._mu64.reshape(self.n_components, -1)
        spread = flat - self._w64 @ flat
        cov = (cols * mean_nu) @ cols.T + (spread.T * self._w64) @ spread
        return (0.5 * (cov + cov.T)).to(self._dtype)

    def moment_matched(self) -> FieldMixture:
        r"""The one-component field law with this mixture's mean and, for every basis coefficient, its variance:
        :math:`\mathcal N(m, B\,\mathrm{diag}(\bar\nu)B^\top)` with :math:`m = \sum_k\pi_k m_k` and
        :math:`\bar\nu_j = \sum_k \pi_k(\nu_{kj} + (c_{kj} - \bar c_j)^2)`, :math:`c_k = B^\top m_k` (the law of
        total variance per coefficient). It is the Gaussian closest to the mixture among those diagonal in B (it
        matches the diagonal of :math:`B^\top\Sigma B`, not its off-diagonal part, which the means' spread fills), so
        a pair (one component of this mixture, its moment-matched law) is a Gaussian conditional/unconditional pair
        diagonal in one basis: every linear rule's sampled law then factorises over the coefficients (exact)."""
        k, d = self.n_components, self.dim
        coef = self._coef64.reshape(k, d)
        centre = self._w64 @ coef
        nu = self._w64 @ (self._nu64.reshape(k, d) + (coef - centre) ** 2)
        mean = (self._w64 @ self._mu64.reshape(k, d)).reshape(1, *self.shape)
        return FieldMixture(torch.ones(1, dtype=F64), mean, nu.reshape(1, *self.shape), dtype=self._dtype)

    def _basis_columns(self) -> torch.Tensor:
        """``[d, d]``, column j the basis image :math:`B e_j` (flattened)."""
        c, h, w = self.shape
        basis = torch.eye(self.dim, dtype=F64).reshape(self.dim, c, h, w)
        return self.from_basis(basis).reshape(self.dim, -1).T

    # --- laws ---------------------------------------------------------------------------------------
    def noised(self, alpha: Tensorish, sigma: Tensorish) -> FieldMixture:
        r"""The law of :math:`\alpha x + \sigma\varepsilon`: means :math:`\alpha m_k`, spectra
        :math:`\alpha^2\nu_k + \sigma^2` (exact: the basis is orthonormal); same weights, labels and attributes.
        Refuses ``alpha <= 0``, ``sigma < 0``, non-finite values and a law that overflows the compute dtype
        (:func:`~toy_models.gaussian_mixture.checked_noise_levels`, as GaussianMixture)."""
        a, s = checked_noise_levels(alpha, sigma, self._dtype, float(self._mu64.abs().max()), float(self._nu64.max()))
        return self._derived(self._w64, a * self._mu64, (self._nu64 * a) * a + s * s, a * self._coef64)

    def given(self, condition: Condition) -> FieldMixture:
        r""":math:`p(x \mid c)`: the components matching ``condition`` (``None``, an int label, a token or a sequence
        of tokens, see :meth:`matches`) with renormalised weights; ``None`` returns the mixture itself."""
        mask = self.matches(condition)
        if bool(mask.all()):
            return self
        w = self._w64[mask]
        return self._derived(w / w.sum(), self._mu64[mask], self._nu64[mask], self._coef64[mask], mask=mask)

    def to(self, dtype: torch.dtype) -> FieldMixture:
        """The same mixture computing in ``dtype`` (float64 or float32)."""
        if dtype == self._dtype:
            return self
        if dtype not in _UNIT_ROUNDOFF:
            raise ValueError(f"dtype: must be torch.float64 or torch.float32, got {dtype}")
        if dtype == torch.float32 and float(self._nu64.min()) < torch.finfo(torch.float32).tiny * 2**24:
            raise ValueError(f"dtype: cannot compute this mixture in {dtype}: its smallest variance "
                             f"{float(self._nu64.min()):.3g} has a reciprocal beyond float32's range")
        return self._derived(self._w64, self._mu64, self._nu64, self._coef64, dtype=dtype)

    # --- the transform ------------------------------------------------------------------------------
    def to_basis(self, images: torch.Tensor) -> torch.Tensor:
        r""":math:`B^\top x` for ``[..., C, H, W]`` images: :math:`D_H X D_W^\top` per channel."""
        dh, dw = (self._dh64, self._dw64) if images.dtype == F64 else (self._dh, self._dw)
        return dh @ images @ dw.T

    def from_basis(self, coefficients: torch.Tensor) -> torch.Tensor:
        r""":math:`B z`: the inverse (transpose) transform."""
        dh, dw = (self._dh64, self._dw64) if coefficients.dtype == F64 else (self._dh, self._dw)
        return dh.T @ coefficients @ dw

    # --- the engine ---------------------------------------------------------------------------------
    def _points(self, x: Tensorish) -> torch.Tensor:
        return check_points(x, self.dim, self._dtype)

    def _blocks(self, n: int) -> list[tuple[int, int]]:
        size = max(1, BLOCK_ENTRIES // self.dim)
        return [(start, min(start + size, n)) for start in range(0, n, size)]

    def _quadratic_forms(self, zx: torch.Tensor) -> torch.Tensor:
        r""":math:`q_k = \sum_j (z_{x,j} - c_{kj})^2/\nu_{kj}` ``[n, K]`` for transformed points ``zx`` ``[n, d]``,
        centred before squaring in float32 (without autograd one component at a time in a reused ``[n, d]`` buffer,
        which stays in the core's cache; no ``[n, K, d]`` array) and under autograd (one ``[n, K, d]`` expression);
        expanded into two matrix products in float64 (module docstring: the rounding and why float32 differs)."""
        if self._dtype == F64 and not zx.requires_grad:
            q = zx.square() @ self._inv_nu.T
            q.addmm_(zx, self._weighted_coef.T, alpha=-2.0).add_(self._coef_quad)
            return q.clamp_min_(0.0)
        if zx.requires_grad:
            z = zx[:, None, :] - self._coef
            return torch.linalg.vecdot(z * z, self._inv_nu)
        n = zx.shape[0]
        out, buffer = torch.empty(self.n_components, n, dtype=zx.dtype), torch.empty_like(zx)
        for k in range(self.n_components):
            torch.mv(torch.sub(zx, self._coef[k], out=buffer).square_(), self._inv_nu[k], out=out[k])
        return out.T

    def _evaluate(self, x: torch.Tensor, *, log_p: bool = False, score: bool = False,
                  condition: torch.Tensor | None = None, log_joint: bool = False) -> dict[str, torch.Tensor]:
        r"""One pass of the engine over checked points, block by block: any of ``log_p`` ``[N]``, ``log_joint``
        ``[N, K]`` and a score-like vector ``[N, d]`` (``score``): :math:`-B\sum_k a_k (z_k/\nu_k)` with
        :math:`a = r`, or :math:`a = r^c - r` when ``condition`` (a component mask) is given (the gradient of the log
        posterior). The mixed whitened residual is formed as
        :math:`z_x \odot (a\,\nu^{-1}) - a\,(\nu^{-1} \odot c)`, two ``[n, K] x [K, d]`` products (module
        docstring: its rounding is relative to :math:`(|z_x| + |c_k|)/\nu_k`, like the residual's)."""
        parts: dict[str, list[torch.Tensor]] = {"log_p": [], "score": [], "log_joint": []}
        n_total = x.shape[0]
        for start, stop in self._blocks(n_total):
            n = stop - start
            zx = self.to_basis(x[start:stop].reshape(n, *self.shape)).reshape(n, self.dim)
            lj = self._const - 0.5 * self._quadratic_forms(zx)
            top = lj.detach().amax(-1)
            if not math.isfinite(float(top.sum())) and not bool(torch.isfinite(top).all()):
                row = start + int(torch.nonzero(~torch.isfinite(top))[0])
                raise ValueError(f"x: point {row} is so far from every component that its quadratic form overflows "
                                 f"{self._dtype} (log p(x) is below the dtype's range)"
                                 + ("; float64 has a far larger range" if self._dtype == torch.float32 else ""))
            if log_joint:
                parts["log_joint"].append(lj)
            if log_p or score:
                lp, r = _logsumexp_softmax(lj)
                parts["log_p"].append(lp)
                if score:
                    if condition is not None:
                        r = _logsumexp_softmax(lj.masked_fill(~condition, -math.inf))[1] - r
                    mixed = zx * (r @ self._inv_nu) - r @ self._weighted_coef  # B is linear: mix, then transform
                    parts["score"].append(-self.from_basis(mixed.reshape(n, *self.shape)).reshape(n, self.dim))
        empty = {"log_p": (0,), "score": (0, self.dim), "log_joint": (0, self.n_components)}
        return {key: torch.cat(v) if v else torch.zeros(empty[key], dtype=x.dtype) for key, v in parts.items()}

    # --- densities and scores -----------------------------------------------------------------------
    def component_log_prob(self, x: Tensorish) -> torch.Tensor:
        """``[N, K]``: log w_k + log N(x; m_k, S_k)."""
        return self._evaluate(self._points(x), log_joint=True)["log_joint"]

    def log_prob(self, x: Tensorish) -> torch.Tensor:
        """``[N]``."""
        return self._evaluate(self._points(x), log_p=True)["log_p"]

    def score(self, x: Tensorish) -> torch.Tensor:
        r""":math:`\nabla_x\log p(x) = -B\sum_k r_k (z_k/\nu_k)`, ``[N, d]``."""
        return self._checked_score(self._points(x))

    def _checked_score(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`score` of points already checked by the input policy (``[N, d]``, finite, of this mixture's dtype):
        what :class:`~toy_models.denoiser.AnalyticDenoiser` calls after its own check."""
        return self._evaluate(x, score=True)["score"]

    def log_prob_and_score(self, x: Tensorish) -> tuple[torch.Tensor, torch.Tensor]:
        """``log p(x)`` and the score from one pass of the engine."""
        out = self._evaluate(self._points(x), log_p=True, score=True)
        return out["log_p"], out["score"]

    def grad_log_posterior(self, x: Tensorish, condition: Condition) -> torch.Tensor:
        r""":math:`\nabla_x \log p(c \mid x) = -B\sum_k (r^c_k - r_k)(z_k/\nu_k)`, ``[N, d]``: one weighted sum,
        equal to ``given(c).score(x) - score(x)`` (Bayes' rule in score form) without subtracting two large scores."""
        mask = self.matches(condition)
        return self._evaluate(self._points(x), score=True, condition=mask)["score"]

    # --- sampling -----------------------------------------------------------------------------------
    def sample_with_components(self, n: int, generator: torch.Generator | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Points ``[n, d]`` and the component index ``[n]`` of each: a component by weight, then
        :math:`m_k + B(\sqrt{\nu_k}\,\xi)`, drawn in float64 and cast; randomness only from ``generator``."""
        n, comp = self._draw_components(n, generator)
        xi = torch.randn((n, *self.shape), dtype=F64, generator=generator)
        out = self._mu64[comp] + self.from_basis(self._nu64[comp].sqrt() * xi)
        return out.reshape(n, self.dim).to(self._dtype), comp

    # --- dense form and rounding bounds ----------------------------------------------------------------
    def to_dense(self) -> GaussianMixture:
        r"""The same law as a :class:`~toy_models.gaussian_mixture.GaussianMixture` with dense covariances
        :math:`B\,\mathrm{diag}(\nu_k) B^\top` (d <= :data:`DENSE_LIMIT`; ``ValueError`` beyond)."""
        if self.dim > DENSE_LIMIT:
            raise ValueError(f"dim: to_dense covers d <= {DENSE_LIMIT}, got {self.dim}")
        cols = self._basis_columns()
        cov = torch.stack([(cols * nu.reshape(-1)) @ cols.T for nu in self._nu64])
        cov = 0.5 * (cov + cov.transpose(1, 2))
        return GaussianMixture(self._w64, self._mu64.reshape(self.n_components, -1), cov, self._labels,
                               attributes=self._attributes or None, dtype=self._dtype)

    def _abs_transform(self, images: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """:math:`|D_H|\\,|X|\\,|D_W|^\\top` (``inverse``: :math:`|D_H|^\\top |X| |D_W|`) in float64: the sums of
        absolute values of the terms a transform adds up, per coefficient."""
        dh, dw = self._dh64.abs(), self._dw64.abs()
        return dh.T @ images.abs() @ dw if inverse else dh @ images.abs() @ dw.T

    def rounding_bounds(self, x: Tensorish) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-point bounds ``([N], [N])`` on the rounding errors of :meth:`log_prob` and of :meth:`score` (2-norm) as
        this mixture computes them in its dtype: the derivation of the module docstring, evaluated in float64."""
        x64 = check_points(x, self.dim, F64).detach()
        u, (c, h, w), k, d = _UNIT_ROUNDOFF[self._dtype], self.shape, self.n_components, self.dim
        n = x64.shape[0]
        images = x64.reshape(n, c, h, w)
        zx = self.to_basis(images).reshape(n, 1, d)
        z = zx - self._coef64.reshape(1, k, d)  # [n, K, d]
        size_z = zx.abs() + self._coef64.reshape(1, k, d).abs()  # |z_x| + |c_k|
        size = self._abs_transform(images).reshape(n, 1, d) + self._abs_transform(self._mu64).reshape(1, k, d)
        e = _gamma(h + w + 2, u) * size + u * z.abs()
        nu = self._nu64.reshape(1, k, d)
        g = z / nu
        s_quad = (z * g).sum(-1)  # S_k, [n, K]
        # the expanded float64 form's summation error is relative to T_k >= S_k (module docstring)
        summed = ((size_z * size_z) / nu).sum(-1) if self._dtype == F64 else s_quad
        dq = (1 + _gamma(d + 3, u)) * ((2 * z.abs() * e + e * e) / nu).sum(-1) + _gamma(d + 3, u) * summed
        const_terms = torch.log(self._w64).abs().nan_to_num(posinf=0.0) + 0.5 * torch.log(
            self._nu64).abs().reshape(k, d).sum(-1) + 0.5 * d * _LOG_2PI
        log_joint = self._const64 - 0.5 * s_quad
        delta = (0.5 * dq + _gamma(d + 2, 2.0**-53) * const_terms
                 + u * (self._const64.abs().nan_to_num(posinf=0.0) + log_joint.abs().nan_to_num(posinf=0.0)))
        log_r = torch.log_softmax(log_joint, dim=-1)
        log_p = torch.logsumexp(log_joint, dim=-1)
        delta_bar = torch.logsumexp(log_r + delta, dim=-1)  # log sum_k r_k exp(Delta_k)
        log_p_bound = delta_bar + _gamma(k + 3, u) + u * log_p.abs()
        r = log_r.exp()
        g_err = torch.linalg.vector_norm(((1 + _gamma(3, u)) * e + _gamma(3, u) * z.abs()) / nu, dim=-1)
        g_bar = torch.einsum("nk,nkd->nd", r, g)
        gap = torch.linalg.vector_norm(g - g_bar[:, None], dim=-1)
        x_arg = (delta + delta_bar[:, None]).clamp(max=700.0)
        moved = torch.minimum(r * torch.expm1(x_arg), torch.ones_like(r))
        mix_err = ((r + moved) * g_err).sum(-1) + (moved * gap).sum(-1) \
            + _gamma(2 * k + 5, u) * ((r + moved) * torch.linalg.vector_norm(size_z / nu, dim=-1)).sum(-1) \
            + _flush_below(self._dtype) * gap.sum(-1)
        a_bar = torch.linalg.vector_norm(self._abs_transform(g_bar.reshape(n, c, h, w), inverse=True).reshape(n, d),
                                         dim=-1)
        g_hw = _gamma(h + w, u)
        score_bound = (1 + g_hw) * mix_err + g_hw * (a_bar + math.sqrt(h * w) * mix_err)
        return log_p_bound, score_bound

    def __repr__(self) -> str:
        return (f"FieldMixture(K={self.n_components}, shape={self.shape}, classes={self.classes.tolist()}, "
                f"attributes={list(self._attributes)}, dtype={self._dtype})")
