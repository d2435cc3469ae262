r"""The noised tilted target :math:`\pi_t` and a denoiser that samples the tilted target exactly.

A linear rule with branch weights :math:`a_b` (:math:`\sum_b a_b = 1`) implies the tilted target
:math:`\pi(x) \propto \prod_b p(x \mid b)^{a_b}` (:mod:`verify.tilted`). Its *noised* law is the law of
:math:`x_t = \alpha_t x_0 + \sigma_t \varepsilon` with :math:`x_0 \sim \pi`,

.. math::  \pi_t(x) = \int \pi(y)\, \mathcal N(x;\ \alpha_t y,\ \sigma_t^2 I)\, dy,

which is *not* the tilted product of the noised branch laws that guidance follows (``proofs/prop2_tilted_score.py``;
Chidambaram et al. 2024, "What does guidance do? A fine-grained analysis in a simple setting").
Driving the probability-flow ODE or the reverse SDE
(Song et al. 2021, eqs. 6 and 13) with :math:`\nabla \log \pi_t` from :math:`x_1 \sim \pi_1` returns
:math:`x_0 \sim \pi` exactly: :math:`\pi_t` is the forward process's marginal from :math:`\pi`, and both reverse
dynamics carry a process's marginals backwards (Anderson 1982). This module gives that ideal sampler as a
:class:`TiltedDenoiser`, so the gap between guidance and its target can be measured against a sampler that hits
the target.

Gaussian branch laws (any d, full covariances): :math:`\pi = \mathcal N(m, S)` with :math:`S^{-1} = \sum_b a_b
P_b` (:meth:`verify.tilted.TiltedLaw.gaussian`; refused unless positive definite) and
:math:`\pi_t = \mathcal N(\alpha m,\ \alpha^2 S + \sigma^2 I)` in closed form.

Mixtures in 1-D and 2-D: :math:`\pi`'s unnormalised density :math:`\tilde\pi` is explicit and the convolution is
a trapezoid sum in one of two variables, whichever keeps the integrand resolved with a fixed number of nodes
(:math:`r = \sigma/\alpha` is the kernel's width in data units, :math:`s` the node-spacing scale of
:math:`\tilde\pi`, :func:`_length_scale`):

* :math:`r \le s` (low noise): :math:`y = x/\alpha + r z`, so :math:`\pi_t(x) = \alpha^{-d} \int \tilde\pi(x/\alpha
  + r z)\,\varphi(z)\,dz / Z`, nodes :math:`z_j` on :math:`[-L, L]^d` with spacing :math:`h_z`; the score is
  :math:`\alpha^{-1} \sum_j \rho_j \nabla\log\tilde\pi(y_j)` (:math:`\rho_j` the normalised node weights), which
  stays accurate as :math:`\sigma \to 0` (Tweedie's form :math:`(\alpha E[y|x] - x)/\sigma^2` divides the
  quadrature error by :math:`\sigma^2`);
* :math:`r > s` (high noise): :math:`y` on :meth:`verify.tilted.TiltedLaw`'s quadrature window with spacing
  :math:`h_y = s/k`; the score is Tweedie's :math:`\sum_j \rho_j (\alpha y_j - x)/\sigma^2`.

Error bound, stated per term. Truncation: the low-noise nodes are a translate of :math:`[-L, L]^d`, centred on the
integrand's peak by Newton steps (:meth:`NoisedTilted._peak`; in :math:`\pi`'s tail the peak is far from z = 0);
the high-noise nodes cover the window where :math:`\tilde\pi` has fallen below :math:`e^{-40}` of its peak
(checked by :meth:`~verify.tilted.TiltedLaw._quadrature`). Every evaluation checks that no node on the edge of its
grid carries more than 1e-12 of the normalised weight and refuses the point (``ValueError`` naming ``x``) otherwise;
beyond the edge the integrand keeps decaying at least like a Gaussian, so the truncated mass is of that order.
Discretisation: both integrands are analytic in a strip and decay like Gaussians, for which the trapezoid rule
converges geometrically in :math:`1/h` (Trefethen & Weideman 2014, "The exponentially convergent trapezoidal rule",
SIAM Review 56, section 5), so the difference between the rule at :math:`h` and at :math:`2h` bounds the error at
:math:`h` once the coarse rule is in the geometric regime; the tests confirm it against the closed form on Gaussian
worlds in 1-D and 2-D (observed on gauss1d: errors of 1e-14, the rounding level, at every time tested).
``with_error=True`` returns that halving difference.

Normaliser and moments of :math:`\pi_t` follow from :math:`\pi`'s for any law: the convolution keeps the mass
(:math:`\log Z_t = \log Z` for :math:`\tilde\pi_t = \tilde\pi * \mathcal N`), :math:`E_{\pi_t} x = \alpha m`,
:math:`\operatorname{Cov}_{\pi_t} x = \alpha^2 S + \sigma^2 I`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from toy_models import World, get_schedule
from toy_models import parametrization as param
from toy_models._checks import Tensorish, as_scalar, as_tensor, check_points
from toy_models.gaussian_mixture import Condition
from toy_models.schedules import Schedule

from .rules import Rule
from .tilted import TiltedLaw, tilted_law

__all__ = ["NoisedTilted", "noised_tilted", "TiltedDenoiser", "tilted_moment_law", "tilted_flow_law_1d"]

F64 = torch.float64
#: half-width of the low-noise quadrature in standard normal units: erfc(9 / sqrt 2) = 2.3e-19 per axis
_L = 9.0
#: nodes per unit of z in the low-noise form (spacing 1/4) and per length scale s in the high-noise form
_PER_UNIT = 4
METHODS = ("auto", "closed form", "quadrature")


def _length_scale(law: TiltedLaw) -> float:
    r"""The node-spacing scale of :math:`\tilde\pi`: the smallest component standard deviation over the factors
    divided by :math:`\sqrt{\sum_b |a_b|}` (where one component dominates each factor, the curvature of
    :math:`\sum_b a_b \log p_b` is at most :math:`\sum_b |a_b|` times the largest component precision; between
    components it can be larger, which the halving estimate then shows)."""
    smallest = min(float(torch.linalg.eigvalsh(law_b.covariances).min()) for law_b, _ in law.factors)
    return math.sqrt(smallest) / math.sqrt(sum(abs(e) for e in law.exponents))


class NoisedTilted:
    r""":math:`\pi_t`, the tilted target noised to time ``t`` of ``schedule`` (module docstring).

    ``method``: ``"auto"`` (closed form when every factor is a single Gaussian, else quadrature), ``"closed form"``
    or ``"quadrature"`` (allowed on Gaussian factors too, to check one against the other; d <= 2)."""

    def __init__(self, law: TiltedLaw, schedule: str | Schedule = "vp-linear", method: str = "auto"):
        if not isinstance(law, TiltedLaw):
            raise TypeError(f"law: expected a verify.tilted.TiltedLaw, got {type(law).__name__}")
        if not isinstance(method, str) or method not in METHODS:
            raise ValueError(f"method: must be one of {METHODS}, got {method!r}")
        self.schedule = get_schedule(schedule)
        self.law = law
        law.check_normalisable()
        gaussian = law.is_gaussian()
        if method == "closed form" and not gaussian:
            raise ValueError("method: the closed form needs single-Gaussian factors")
        self.method = "closed form" if method == "auto" and gaussian else ("quadrature" if method == "auto"
                                                                            else method)
        if self.method == "quadrature" and law.dim > 2:
            raise ValueError(f"law: quadrature covers d <= 2, got d = {law.dim}")
        summary = law.summary()
        self.data_mean, self.data_cov, self.log_normaliser = summary.mean, summary.cov, summary.log_normaliser
        self.log_normaliser_error = summary.log_normaliser_error
        self.scale = _length_scale(law)

    @property
    def dim(self) -> int:
        return self.law.dim

    def alpha_sigma(self, t: float) -> tuple[float, float]:
        t = as_scalar(t, "t")
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"t: must lie in [0, 1], got {t!r}")
        alpha, sigma = (float(v) for v in self.schedule.alpha_sigma(t))
        if alpha <= 0.0:
            raise ValueError(f"t: alpha(t) = 0 at t = {t!r} on {self.schedule.name!r}; pi_t is pure noise there")
        return alpha, sigma

    # --- moments (exact for any law, from pi's) ----------------------------------------------------------------
    def mean(self, t: float) -> torch.Tensor:
        r""":math:`E_{\pi_t} x = \alpha_t m`, ``[d]``."""
        alpha, _ = self.alpha_sigma(t)
        return alpha * self.data_mean

    def cov(self, t: float) -> torch.Tensor:
        r""":math:`\operatorname{Cov}_{\pi_t} = \alpha_t^2 S + \sigma_t^2 I`, ``[d, d]``."""
        alpha, sigma = self.alpha_sigma(t)
        return alpha**2 * self.data_cov + sigma**2 * torch.eye(self.dim, dtype=F64)

    # --- density and score -------------------------------------------------------------------------------------
    def log_prob(self, x: Tensorish, t: float, *, with_error: bool = False):
        r""":math:`\log \pi_t(x)` (normalised), ``[N]``; with ``with_error``, ``(values, halving difference)``."""
        x = check_points(x, self.dim, F64)
        alpha, sigma = self.alpha_sigma(t)
        if self.method == "closed form":
            out = self._gaussian_log_prob(x, alpha, sigma)
            return (out, torch.zeros_like(out)) if with_error else out
        fine = self._quadrature(x, alpha, sigma, 1)[0]
        if not with_error:
            return fine
        return fine, (fine - self._quadrature(x, alpha, sigma, 2)[0]).abs()

    def score(self, x: Tensorish, t: float, *, with_error: bool = False):
        r""":math:`\nabla \log \pi_t(x)`, ``[N, d]``; with ``with_error``, ``(values, halving difference [N])``."""
        x = check_points(x, self.dim, F64)
        alpha, sigma = self.alpha_sigma(t)
        if self.method == "closed form":
            out = self._gaussian_score(x, alpha, sigma)
            return (out, torch.zeros(x.shape[0], dtype=F64)) if with_error else out
        fine = self._quadrature(x, alpha, sigma, 1)[1]
        if not with_error:
            return fine
        return fine, (fine - self._quadrature(x, alpha, sigma, 2)[1]).norm(dim=1)

    def _gaussian_log_prob(self, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        cov = alpha**2 * self.data_cov + sigma**2 * torch.eye(self.dim, dtype=F64)
        return torch.distributions.MultivariateNormal(alpha * self.data_mean, covariance_matrix=cov).log_prob(x)

    def _gaussian_score(self, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        cov = alpha**2 * self.data_cov + sigma**2 * torch.eye(self.dim, dtype=F64)
        return -torch.linalg.solve(cov, (x - alpha * self.data_mean).T).T

    def _peak(self, x0: torch.Tensor, r: float, iterations: int = 6) -> torch.Tensor:
        r"""Centre of the low-noise nodes: the peak of :math:`-|z|^2/2 + \log\tilde\pi(x_0 + r z)` by damped Newton
        steps (curvature of :math:`\log\tilde\pi` from a central difference of its score along each axis, its
        convex part dropped so every step ascends). Where :math:`\pi` is steep the peak lies far from z = 0, beyond
        a fixed :math:`[-L, L]`; the grid is a translate of the uniform one, so the trapezoid rule is unchanged."""
        z = torch.zeros_like(x0)
        delta = 1e-4 * self.scale
        steps = delta * torch.eye(self.dim, dtype=F64)  # [d, d]
        n = x0.shape[0]
        for _ in range(iterations):
            y = x0 + r * z
            # one batched call: the score at y and at y +- delta e_i for every axis i
            probes = torch.cat([y[None], y[None] + steps[:, None, :], y[None] - steps[:, None, :]])
            probes = probes.reshape(-1, self.dim)
            scores = self.law.score(probes).reshape(1 + 2 * self.dim, n, self.dim)
            grad = -z + r * scores[0]
            axes = torch.arange(self.dim)
            diff = scores[1:1 + self.dim, :, axes] - scores[1 + self.dim:, :, axes]  # [d, N, d]
            curv = diff.diagonal(dim1=0, dim2=2) / (2 * delta)  # [N, d]: d s_i / d y_i
            z = z + grad / (1.0 + r * r * (-curv).clamp_min(0.0))
        return z

    def _quadrature(self, x: torch.Tensor, alpha: float, sigma: float, coarsen: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log pi_t(x) [N], score [N, d])`` by the trapezoid rule, node spacing multiplied by ``coarsen``."""
        d = self.dim
        r = sigma / alpha
        if r <= self.scale:  # low noise: y = x / alpha + r z
            h = coarsen / _PER_UNIT
            axis = torch.arange(-_L, _L + 0.5 * h, h, dtype=F64)
            u = torch.stack(torch.meshgrid(*([axis] * d), indexing="ij"), dim=-1).reshape(-1, d)  # [M, d]
            shift = self._peak(x / alpha, r)  # [N, d]
            z = shift[:, None, :] + u[None, :, :]  # [N, M, d]
            log_phi = -0.5 * (z * z).sum(2) - 0.5 * d * math.log(2 * math.pi) + d * math.log(h)  # [N, M]
            y = (x / alpha)[:, None, :] + r * z  # [N, M, d]
            flat = y.reshape(-1, d)
            log_q = self.law.log_unnormalized(flat).reshape(y.shape[:2]) + log_phi  # [N, M]
            rho = torch.softmax(log_q, dim=1)
            _check_edges(rho, (u.abs() >= _L - 0.5 * h).any(1), x)
            score = (rho[:, :, None] * self.law.score(flat).reshape(y.shape)).sum(1) / alpha
            log_p = torch.logsumexp(log_q, dim=1) - d * math.log(alpha)
        else:  # high noise: y on pi's window, spacing s / _PER_UNIT
            lo, hi = self.law._window
            h = coarsen * self.scale / _PER_UNIT
            axes = [torch.arange(float(lo[i]), float(hi[i]) + 0.5 * h, h, dtype=F64) for i in range(d)]
            y = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, d)  # [M, d]
            log_pi = self.law.log_unnormalized(y) + d * math.log(h)  # [M]
            resid = alpha * y[None, :, :] - x[:, None, :]  # [N, M, d]
            log_k = -0.5 * (resid * resid).sum(2) / sigma**2 - d * math.log(sigma) - 0.5 * d * math.log(2 * math.pi)
            log_q = log_pi[None, :] + log_k
            rho = torch.softmax(log_q, dim=1)
            edge = torch.zeros(y.shape[0], dtype=torch.bool)
            for i in range(d):
                edge |= (y[:, i] <= axes[i][0]) | (y[:, i] >= axes[i][-1])
            _check_edges(rho, edge, x)
            score = (rho[:, :, None] * resid).sum(1) / sigma**2
            log_p = torch.logsumexp(log_q, dim=1)
        return log_p - self.log_normaliser, score


#: largest weight a quadrature node on the edge of its grid may carry: the integrand has decayed to 1e-12 of its
#: total there, so the Gaussian-type tail beyond (decaying faster still) adds less than that relative error
_EDGE_WEIGHT = 1e-12


def _check_edges(rho: torch.Tensor, edge: torch.Tensor, x: torch.Tensor) -> None:
    """Refuse points whose integrand has not decayed at the edge of the quadrature grid (truncation)."""
    worst = rho[:, edge].amax(dim=1) if bool(edge.any()) else torch.zeros(rho.shape[0], dtype=F64)
    bad = worst > _EDGE_WEIGHT
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        raise ValueError(f"x: {int(bad.sum())} point(s) lie too far in the tail for the quadrature grid (first: "
                         f"{x[i].tolist()}, edge weight {float(worst[i]):.2g} > {_EDGE_WEIGHT:g})")


def noised_tilted(world: World, rule: Rule, conditions: Mapping[str, Condition] | Condition = None,
                  schedule: str | Schedule = "vp-linear", method: str = "auto") -> NoisedTilted:
    r""":math:`\pi_t` for the tilted target of ``rule`` on ``world`` (:func:`verify.tilted.tilted_law`)."""
    return NoisedTilted(tilted_law(world, rule, conditions), schedule, method)


class TiltedDenoiser:
    r"""A :class:`~toy_models.denoiser.Denoiser` whose prediction is :math:`-\sigma_t \nabla\log\pi_t(x)` (the
    ``condition`` argument is ignored): every registered sampler run with it from :math:`\pi_1` samples the tilted
    target :math:`\pi` up to its own discretisation.

    ``table``: ``None`` (every call evaluates the score by quadrature at every point) or, in 1-D, a number of nodes
    M: each call evaluates the exact score at M nodes spanning the points and interpolates it with a cubic spline
    (scipy's ``CubicSpline``, not-a-knot), which makes a sampler with 1e5 points affordable. The interpolation error
    is measured at every call against the exact score at the M - 1 midpoints, an estimate of its maximum (on
    bimodal1d with M = 400 the error at 2000 random points was 4.1e-7 against 3.8e-7 at the midpoints); its largest
    value over the calls so far is :attr:`max_table_error` (in score units)."""

    def __init__(self, world: World, rule: Rule, conditions: Mapping[str, Condition] | Condition = None,
                 schedule: str | Schedule = "vp-linear", *, table: int | None = None, method: str = "auto"):
        self.target = noised_tilted(world, rule, conditions, schedule, method)
        self.schedule = self.target.schedule
        if table is not None:
            if isinstance(table, bool) or not isinstance(table, int) or table < 4:
                raise ValueError(f"table: must be None or an int >= 4, got {table!r}")
            if self.target.dim != 1:
                raise ValueError(f"table: interpolation covers d = 1, got d = {self.target.dim}")
        self.table = table
        self.max_table_error = 0.0

    @property
    def dim(self) -> int:
        return self.target.dim

    def score(self, x: torch.Tensor, t: float) -> torch.Tensor:
        if self.table is None or self.target.method == "closed form":
            return self.target.score(x, t)
        from scipy.interpolate import CubicSpline

        lo, hi = float(x.min()), float(x.max())
        pad = 1e-3 * max(hi - lo, 1.0)
        nodes = torch.linspace(lo - pad, hi + pad, self.table, dtype=F64)
        mids = 0.5 * (nodes[1:] + nodes[:-1])
        values = self.target.score(torch.cat([nodes, mids])[:, None], t)[:, 0].numpy()
        spline = CubicSpline(nodes.numpy(), values[: self.table])
        err = float(np.abs(spline(mids.numpy()) - values[self.table:]).max())
        self.max_table_error = max(self.max_table_error, err)
        # evaluate the piecewise cubic directly on the uniform nodes (the cell index is arithmetic, no search)
        coef = torch.as_tensor(spline.c, dtype=F64)  # [4, M - 1], highest power first
        step = float(nodes[1] - nodes[0])
        cell = ((x[:, 0] - float(nodes[0])) / step).floor().clamp(0, self.table - 2).long()
        dx = x[:, 0] - nodes[cell]
        c = coef[:, cell]
        return (((c[0] * dx + c[1]) * dx + c[2]) * dx + c[3])[:, None]

    def eps(self, x: torch.Tensor, t: Tensorish, condition: Condition = None) -> torch.Tensor:
        r""":math:`\hat\varepsilon = -\sigma_t \nabla\log\pi_t(x)`, ``[N, d]`` in ``x``'s dtype (scalar ``t``)."""
        times = as_tensor(t, "t", copy=False)
        if times.numel() != 1:
            if not bool((times == times.reshape(-1)[0]).all()):
                raise ValueError("t: TiltedDenoiser takes one time per call")
        t = float(times.reshape(-1)[0])
        dtype = x.dtype if isinstance(x, torch.Tensor) and x.dtype in (torch.float32, F64) else F64
        x64 = check_points(x, self.dim, F64)
        sigma = float(self.schedule.sigma(t))
        return param.score_to_eps(self.score(x64, t), torch.tensor(sigma, dtype=F64)).to(dtype)

    def __repr__(self) -> str:
        return f"TiltedDenoiser({self.target.law.name!r}, schedule={self.schedule.name!r}, {self.target.method})"


def tilted_moment_law(target: NoisedTilted, nu: float = 0.0, *, t_end: float = 0.0, rtol: float = 1e-12
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean and covariance at ``t_end`` of the sampler family :math:`dx = (f x - \tfrac{1+\nu}{2} g^2
    \nabla\log\pi_t)\,dt + \sqrt\nu\, g\, d\bar W` (:mod:`verify.exact_law`'s moment ODEs, with the affine score
    :math:`-C_t^{-1}(x - \alpha_t m)`, :math:`C_t = \alpha_t^2 S + \sigma_t^2 I`) started from :math:`\pi_1`, for a
    Gaussian target. Their solution is :math:`(\alpha_t m, C_t)` at every t (substitute: :math:`\dot C = 2\alpha
    \dot\alpha S + 2\sigma\dot\sigma I = 2 f C + g^2 I` by the definitions of f and g), so the result is
    :math:`(m, S)` at ``t_end = 0`` up to the DOP853 tolerance ``rtol``."""
    from scipy.integrate import solve_ivp

    if not isinstance(target, NoisedTilted) or target.method != "closed form":
        raise ValueError("target: expected a NoisedTilted with the closed form (Gaussian factors)")
    nu = as_scalar(nu, "nu")
    if not 0.0 <= nu <= 1.0:
        raise ValueError(f"nu: must lie in [0, 1], got {nu!r}")
    sched, d = target.schedule, target.dim
    m, s = target.data_mean.numpy(), target.data_cov.numpy()
    eye = np.eye(d)

    def rhs(t: float, state: np.ndarray) -> np.ndarray:
        tt = torch.tensor(t, dtype=F64)
        alpha, sigma = (float(v) for v in sched.alpha_sigma(tt))
        f, g2 = float(sched.drift(tt)), float(sched.diffusion_squared(tt))
        a_mat = np.linalg.inv(alpha**2 * s + sigma**2 * eye)
        k = 0.5 * (1.0 + nu) * g2
        drift = f * eye + k * a_mat
        mu, cov = state[:d], state[d:].reshape(d, d)
        dmu = drift @ mu - k * alpha * (a_mat @ m)
        dcov = drift @ cov + cov @ drift.T - nu * g2 * eye
        return np.concatenate([dmu, dcov.ravel()])

    state = np.concatenate([target.mean(1.0).numpy(), target.cov(1.0).numpy().ravel()])
    sol = solve_ivp(rhs, (1.0, float(t_end)), state, method="DOP853", rtol=rtol, atol=rtol * 1e-2)
    if not sol.success:
        raise RuntimeError(f"moment ODEs failed: {sol.message}")
    out = sol.y[:, -1]
    cov = out[d:].reshape(d, d)
    return torch.as_tensor(out[:d], dtype=F64), torch.as_tensor(0.5 * (cov + cov.T), dtype=F64)


def tilted_flow_law_1d(target: NoisedTilted, *, n_nodes: int = 401, rtol: float = 1e-9
                       ) -> tuple[float, float, dict]:
    r"""``(mean, var, error)`` at t = 0 of the probability-flow ODE :math:`\dot x = f x - \tfrac12 g^2
    \nabla\log\pi_t(x)` run from :math:`\pi_1` (1-D), by its flow map: the map is monotone, so
    :math:`E h(x_0) = \int h(\Phi(x_1))\,\pi_1(x_1)\,dx_1`, a trapezoid sum over ``n_nodes`` starts spanning 7
    standard deviations of :math:`\pi_1` either side of its mean (:math:`\pi_1` is Gaussian to within
    :math:`\alpha_1^2 S`, and a Gaussian's mass beyond 7 deviations is 2.6e-12; wider starts reach the tail edge
    of the quadrature window on their way, which refuses them), the score by
    :meth:`NoisedTilted.score` down to t = 0 (the low-noise form stays resolved there). ``error``: the differences
    from half the nodes and 100x the tolerance."""
    from scipy.integrate import solve_ivp

    if not isinstance(target, NoisedTilted) or target.dim != 1:
        raise ValueError("target: expected a one-dimensional NoisedTilted")
    if isinstance(n_nodes, bool) or not isinstance(n_nodes, int) or n_nodes < 3:
        raise ValueError(f"n_nodes: must be an int >= 3, got {n_nodes!r}")
    rtol = as_scalar(rtol, "rtol")
    if not 0.0 < rtol < 1e-2:
        raise ValueError(f"rtol: must lie in (0, 0.01) (the error estimate runs at 100 rtol), got {rtol!r}")
    sched = target.schedule

    def rhs(t: float, x: np.ndarray) -> np.ndarray:
        tt = torch.tensor(t, dtype=F64)
        f, g2 = float(sched.drift(tt)), float(sched.diffusion_squared(tt))
        s = target.score(torch.as_tensor(x, dtype=F64)[:, None], t)[:, 0].numpy()
        return f * x - 0.5 * g2 * s

    m1, v1 = float(target.mean(1.0)[0]), float(target.cov(1.0)[0, 0])

    def run(nodes: int, tol: float) -> tuple[float, float]:
        x1 = np.linspace(m1 - 7 * math.sqrt(v1), m1 + 7 * math.sqrt(v1), nodes)
        sol = solve_ivp(rhs, (1.0, 0.0), x1, method="DOP853", rtol=tol, atol=tol)
        if not sol.success:
            raise RuntimeError(f"probability-flow ODE failed: {sol.message}")
        x0 = sol.y[:, -1]
        w = np.exp(target.log_prob(torch.as_tensor(x1[:, None]), 1.0).numpy())
        w[[0, -1]] *= 0.5
        w /= w.sum()
        mean = float(w @ x0)
        return mean, float(w @ (x0 - mean) ** 2)

    fine = run(n_nodes, rtol)
    coarse = run((n_nodes + 1) // 2, rtol * 100)
    return fine[0], fine[1], {"mean": abs(fine[0] - coarse[0]), "var": abs(fine[1] - coarse[1])}
