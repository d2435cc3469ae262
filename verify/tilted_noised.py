r"""The noised tilted target :math:`\pi_t` and a denoiser that samples the tilted target exactly.

A linear rule with branch weights :math:`a_b` (:math:`\sum_b a_b = 1`) implies the tilted target
:math:`\pi(x) \propto \prod_b p(x \mid b)^{a_b}` (:mod:`verify.tilted`). Its *noised* law is the law of
:math:`x_t = \alpha_t x_0 + \sigma_t \varepsilon` with :math:`x_0 \sim \pi`,

.. math::  \pi_t(x) = \int \pi(y)\, \mathcal N(x;\ \alpha_t y,\ \sigma_t^2 I)\, dy
           = \alpha_t^{-d}\, (\pi * \mathcal N(0, r^2 I))(x/\alpha_t), \qquad r = \sigma_t/\alpha_t,

which is *not* the tilted product of the noised branch laws that guidance follows (``proofs/prop2_tilted_score.py``;
Chidambaram et al. 2024, "What does guidance do? A fine-grained analysis in a simple setting").
Driving the probability-flow ODE or the reverse SDE
(Song et al. 2021, eqs. 6 and 13) with :math:`\nabla \log \pi_t` from :math:`x_1 \sim \pi_1` returns
:math:`x_0 \sim \pi` exactly: :math:`\pi_t` is the forward process's marginal from :math:`\pi`, and both reverse
dynamics carry a process's marginals backwards (Anderson 1982). This module gives that ideal sampler as a
:class:`TiltedDenoiser`, so the gap between guidance and its target can be measured against a sampler that hits
the target.

**Closed forms.** Gaussian branch laws (any d, full covariances): :math:`\pi = \mathcal N(m, S)` with
:math:`S^{-1} = \sum_b a_b P_b` (:meth:`verify.tilted.TiltedLaw.gaussian`; refused unless positive definite) and
:math:`\pi_t = \mathcal N(\alpha m,\ \alpha^2 S + \sigma^2 I)`. A target that is a finite Gaussian mixture
(:meth:`verify.tilted.TiltedLaw.as_mixture`: mixtures with a shared covariance raised to integer powers) is noised
component by component.

**Quadrature in 1-D and 2-D** (every other mixture target). :math:`\log\tilde\pi` (unnormalised) is tabulated once
on a uniform tensor grid over a box holding :math:`\pi`'s mass: the box is cut from
:attr:`verify.tilted.TiltedLaw.window` where :math:`\tilde\pi` has fallen below :math:`e^{-60}` of its peak
(found on nodes at the length scale :math:`s`, :func:`_length_scale`, two nodes of margin), the base spacing is at
most :math:`s/4`, and level :math:`k` halves it :math:`k` times (level k's nodes contain level k - 1's). The
convolution with the Gaussian kernel of width :math:`r` (data units) is a trapezoid sum on the finest level whose
spacing is at most :math:`r/2`; the kernel is a product over axes, so on a tensor grid of outputs the sums are
matrix products, :math:`S = K_1 P K_2^\top` (:math:`K_i` the kernel matrices, each row shifted by its largest
exponent so nothing underflows), and at scattered points :math:`S_n = \sum_a K_{1,na} (K_2 P^\top)_{na}`, in chunks
that keep memory near 100 MB. The score is Tweedie's :math:`(E[y \mid x]\,\alpha - x)/\sigma^2`, computed as
:math:`E[y - X \mid X]/(\alpha r^2)` with :math:`X = x/\alpha` and the first-moment kernel :math:`(y - X) K`, so no
two large numbers are subtracted. Only nodes within :math:`10 r` of the outputs are used (the kernel beyond is below
:math:`e^{-50}` of its peak).

*Error bound, per term* (each evaluation reports their sum per point). (i) Discretisation: the integrand
:math:`\tilde\pi(y) K(X - y)` is analytic in a strip and decays like a Gaussian, so the trapezoid rule converges
geometrically in :math:`1/h` (Trefethen & Weideman 2014, "The exponentially convergent trapezoidal rule", SIAM
Review 56, section 5); for the kernel factor alone the first aliasing term of the Poisson summation formula is
:math:`e^{-2\pi^2 r^2/h^2}`, below :math:`e^{-79}` at :math:`h \le r/2`. The difference from the same sum on every
other node (spacing 2h, where the kernel's term is :math:`e^{-19.7} \approx 3\cdot 10^{-9}`) therefore bounds the
error at h. Where it exceeds what a caller asks for (``max_error``), the point is recomputed one level finer (the
halving difference of a geometrically converging sum overstates the error at h, often by orders of magnitude).
(ii) Truncation: every evaluation computes the normalised weight the integrand puts on the edges of the nodes it
used (all nodes on the edge lines, summed); a point whose edge weight exceeds :data:`_EDGE_WEIGHT` (1e-12) is refused
(``ValueError`` naming ``x``), otherwise the edge weight is added to the log-density error and, times
:math:`(\mathrm{dist}(X, \mathrm{box}) + 10\sqrt d\, r)/(\alpha r^2)` (the largest :math:`|y - X|` among the nodes
that carry weight), to the score error. (iii) Rounding (Higham's :math:`\gamma_n`, *Accuracy and Stability of
Numerical Algorithms*, Lemma 3.1): :math:`\gamma_{n+8}` relative for the sums of :math:`n = n_1 + n_2` terms, plus
u per unit of the terms' exponents (below 60 + 50), plus :math:`\delta`, the factor mixtures' own rounding of
:math:`\log\tilde\pi` (:mod:`verify.tolerances`, times :math:`|a_b|`, largest over the base grid's nodes within
:math:`e^{-60}` of the peak: a relative error of every term), for the log density; for the score, :math:`\gamma_{n+8}
+ 2\delta` times the terms' size :math:`|y - X|/(\alpha r^2)`, plus the rounding of the differences :math:`y - X`
themselves, :math:`4u(|X| + \max|y|)/(\alpha r^2)`, which grows as :math:`r \to 0` and is why small r goes to the
local form.
(iv) The normaliser :math:`\log Z` (:meth:`verify.tilted.TiltedLaw.summary`) carries its own halving estimate,
added to the log-density error (``log_prob(..., with_error=True)``).

**Small noise** (:math:`r < 10^{-3} s`, or where the finest level the kernel needs would exceed :math:`2^{23}`
nodes): the kernel is narrower than the grid. There the direct local quadrature is used, centred on the integrand's
peak: with :math:`y = x/\alpha + r z`, :math:`\pi_t(x) = \alpha^{-d}\int\tilde\pi(x/\alpha + r z)\varphi(z)\,dz / Z`,
nodes on :math:`[-9, 9]^d` (spacing 1/4) translated to the peak of the integrand found by damped Newton steps
(:meth:`NoisedTilted._peak`), score :math:`\alpha^{-1}\sum_j\rho_j\nabla\log\tilde\pi(y_j)`, which stays accurate as
:math:`\sigma \to 0` (no division by :math:`r^2`); its error estimate is again the halving difference plus
:math:`\gamma_{M+8} + 2\delta` times the terms' size (:math:`M = 73^d` nodes, :math:`\delta` the factors' rounding of
:math:`\log\tilde\pi` at the integrand's peak) and the factors' rounding of the score there, and the same
edge-weight refusal applies. At :math:`\sigma = 0` exactly, :math:`\pi_0(x) = \alpha^{-d}\pi(x/\alpha)` is
evaluated directly (the analytic limit, exact; its error is the factors' rounding bounds).

**Interpolated score** (:meth:`NoisedTilted.interpolated_score`, what :class:`TiltedDenoiser` uses for many points):
the exact score on a tensor grid of nodes spanning the points, interpolated by a tensor-product not-a-knot cubic
spline. The interpolation error of a cubic spline is :math:`O(h^4 f^{(4)})` with its largest value at the midpoints
of the cells; it is measured at every midpoint (edge midpoints and cell centres) against the exact score there, and
a cell's estimate is 1.5 times the largest over the cell and its neighbours (:func:`_cell_max`,
:data:`_INTERPOLATION_MARGIN`), plus the spline's Lebesgue constant (below 2 per axis, 1.97 measured in the tests)
to the power d times its nodes' own error. The spacing is halved (or the data level refined, where the nodes' error
dominates) while more than ``max_exact`` points lie in cells above the requested bound; those left (single points
far in the tails) get the exact score.

Normaliser and moments of :math:`\pi_t` follow from :math:`\pi`'s for any law: the convolution keeps the mass
(:math:`\log Z_t = \log Z` for :math:`\tilde\pi_t = \tilde\pi * \mathcal N`), :math:`E_{\pi_t} x = \alpha m`,
:math:`\operatorname{Cov}_{\pi_t} x = \alpha^2 S + \sigma^2 I`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from toy_models import GaussianMixture, World, get_schedule
from toy_models import parametrization as param
from toy_models._checks import Tensorish, as_scalar, as_tensor, check_points
from toy_models.gaussian_mixture import Condition
from toy_models.schedules import Schedule

from .exact_law import flow_map_law_1d, moment_ode_law
from .rules import Rule
from .tilted import NotNormalisableError, TiltedLaw, tilted_law

__all__ = ["NoisedTilted", "noised_tilted", "TiltedDenoiser", "tilted_moment_law", "tilted_flow_law_1d"]

F64 = torch.float64
#: half-width of the low-noise quadrature in standard normal units: erfc(9 / sqrt 2) = 2.3e-19 per axis
_L = 9.0
#: nodes per unit of z in the low-noise form (spacing 1/4) and per length scale s on the base data grid
_PER_UNIT = 4
#: the data box holds every coarse node where log pi~ is above its peak minus this
_CUT = 60.0
#: the grid convolution needs r >= _KERNEL_NODES h: its kernel's aliasing term is exp(-2 pi^2 4) = e^-79, and
#: exp(-2 pi^2) = 2.7e-9 on the halving grid
_KERNEL_NODES = 2.0
#: nodes farther than _REACH r from every output are dropped: the kernel there is below e^-50 of its peak
_REACH = 10.0
#: below r = _LOCAL_BELOW s the local quadrature is used: Tweedie's form divides the nodes' rounding, u |x|, by r^2
#: (there 4e-9 / s^2 for |x| <= 10, below 1e-7 of the score's scale 1/s when s >= 0.05), and the grid's finest
#: level would hold 2000 nodes per length scale
_LOCAL_BELOW = 1e-3
#: most data-grid nodes one evaluation may use (64 MB of float64); beyond, the local quadrature is used
_MAX_GRID_NODES = 2**23
#: largest normalised weight the nodes on the edges of a quadrature grid may carry (truncation guard)
_EDGE_WEIGHT = 1e-12
#: elements per chunk of the scattered-point sums (each chunk holds a few [chunk, n] float64 arrays: ~100 MB)
_CHUNK_ELEMENTS = 2**21
#: most fine-grid nodes of an interpolation table
_MAX_TABLE_NODES = 2**20
#: factor on the measured interpolation error (the largest midpoint error over a cell and its neighbours): over 64
#: tables (1-D and 2-D, 17 to 513 nodes per axis, bounds 1e-3 to 1e-6) the true error at 5000 points exceeded it
#: by at most 1.7 %, on a 17-node table; 1.5 leaves a margin
_INTERPOLATION_MARGIN = 1.5
#: the grid route refines its data grid (for a caller's bound) at most this many levels beyond the one its kernel needs
_TABLE_LEVELS = 2
#: TiltedDenoiser(table="auto") interpolates when a call has more points than this
_AUTO_TABLE_POINTS = 256
METHODS = ("auto", "closed form", "quadrature")


def _length_scale(law: TiltedLaw) -> float:
    r"""The node-spacing scale of :math:`\tilde\pi`: the smallest component standard deviation over the factors
    divided by :math:`\sqrt{\sum_b |a_b|}` (where one component dominates each factor, the curvature of
    :math:`\sum_b a_b \log p_b` is at most :math:`\sum_b |a_b|` times the largest component precision; between
    components it can be larger, which the halving estimate then shows)."""
    smallest = min(float(torch.linalg.eigvalsh(law_b.covariances).min()) for law_b, _ in law.factors)
    return math.sqrt(smallest) / math.sqrt(sum(abs(e) for e in law.exponents))


# ----------------------------------------------------------------------------------------------------------------
# pi~ on nested tensor grids, and the separable Gaussian convolution
# ----------------------------------------------------------------------------------------------------------------
class _DataGrid:
    r""":math:`\log\tilde\pi - \text{peak}` on nested uniform grids over a box holding :math:`\pi`'s mass (module
    docstring). Level 0 is kept; finer levels are computed on the sub-box an evaluation needs (the last one per
    level is kept, padded, since a sampler's successive calls need nearly the same one)."""

    def __init__(self, law: TiltedLaw, scale: float):
        self.law, self.dim = law, law.dim
        lo_w, hi_w = (v.to(F64) for v in law.window)
        coarse = [torch.arange(float(lo_w[i]), float(hi_w[i]) + 0.5 * scale, scale, dtype=F64)
                  for i in range(self.dim)]
        logq = self._log_q(coarse)
        keep = logq > float(logq.max()) - _CUT
        lo, hi = [], []
        for i in range(self.dim):
            other = tuple(j for j in range(self.dim) if j != i)
            idx = torch.nonzero(keep.any(dim=other) if other else keep).flatten()
            first, last = max(int(idx[0]) - 2, 0), min(int(idx[-1]) + 2, coarse[i].numel() - 1)
            lo.append(float(coarse[i][first]))
            hi.append(float(coarse[i][last]))
        # level 0: an even number of intervals per axis, spacing at most s / _PER_UNIT
        self.lo = torch.tensor(lo, dtype=F64)
        self.intervals = [2 * max(1, math.ceil((hi[i] - lo[i]) * _PER_UNIT / (2 * scale))) for i in range(self.dim)]
        self.h0 = torch.tensor([(hi[i] - lo[i]) / self.intervals[i] for i in range(self.dim)], dtype=F64)
        self.hi = torch.tensor(hi, dtype=F64)
        base = self._log_q(self.axes(0, [(0, m) for m in self.intervals]))
        self.peak = float(base.max())
        self.base = base - self.peak
        # the largest rounding of log pi~ over the nodes that carry weight (the factor mixtures' bounds, times
        # |exponent|): a relative error of every term of the sums
        from .tolerances import log_prob_rounding_bound

        mesh = torch.stack(torch.meshgrid(*self.axes(0, [(0, m) for m in self.intervals]), indexing="ij"),
                           dim=-1).reshape(-1, self.dim)[self.base.reshape(-1) > -_CUT]
        self.log_rounding = float(sum(abs(e) * log_prob_rounding_bound(law_i, mesh) for law_i, e in law.factors).max())
        self._cache: dict[int, tuple[list[tuple[int, int]], torch.Tensor]] = {}  # level -> (ranges, values)

    def _log_q(self, axes: list[torch.Tensor]) -> torch.Tensor:
        mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, self.dim)
        return self.law.log_unnormalized(mesh).reshape(*[a.numel() for a in axes])

    def spacing(self, level: int) -> torch.Tensor:
        return self.h0 / 2**level

    def axes(self, level: int, ranges: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Node coordinates of ``level`` over the inclusive index ranges, one tensor per axis."""
        h = self.spacing(level)
        return [float(self.lo[i]) + float(h[i]) * torch.arange(j0, j1 + 1, dtype=F64)
                for i, (j0, j1) in enumerate(ranges)]

    def level_for(self, r: float) -> int:
        """The coarsest level whose spacing is at most r / _KERNEL_NODES on every axis."""
        worst = float(self.h0.max())
        return max(0, math.ceil(math.log2(_KERNEL_NODES * worst / r))) if r > 0 else 10**6

    def ranges(self, level: int, lo_x: torch.Tensor, hi_x: torch.Tensor, r: float) -> list[tuple[int, int]]:
        """Inclusive index ranges of ``level`` covering [lo_x - 10 r, hi_x + 10 r] within the box: even start and
        even length (so every other node is the level below), at least two intervals."""
        h = self.spacing(level)
        out = []
        for i in range(self.dim):
            top = self.intervals[i] * 2**level
            j0 = math.floor((float(lo_x[i]) - _REACH * r - float(self.lo[i])) / float(h[i]))
            j1 = math.ceil((float(hi_x[i]) + _REACH * r - float(self.lo[i])) / float(h[i]))
            j0, j1 = min(max(j0, 0), top), min(max(j1, 0), top)
            j0 -= j0 % 2
            j1 += (j1 - j0) % 2
            if j1 - j0 < 2:
                j0, j1 = (j1 - 2, j1) if j1 >= 2 else (0, 2)
            out.append((j0, j1))
        return out

    def block(self, level: int, ranges: list[tuple[int, int]]) -> torch.Tensor:
        r""":math:`\log\tilde\pi - \text{peak}` on ``level`` over ``ranges``."""
        if level == 0:
            return self.base[tuple(slice(j0, j1 + 1) for j0, j1 in ranges)]
        cached = self._cache.get(level)
        if cached is None or not all(c0 <= j0 and j1 <= c1 for (c0, c1), (j0, j1) in zip(cached[0], ranges,
                                                                                       strict=True)):
            padded = []
            for i, (j0, j1) in enumerate(ranges):
                pad = 2 * ((j1 - j0) // 8 + 1)
                padded.append((max(j0 - pad, 0), min(j1 + pad, self.intervals[i] * 2**level)))
            cached = (padded, self._log_q(self.axes(level, padded)) - self.peak)
            self._cache[level] = cached
        (c0s, values) = cached
        return values[tuple(slice(j0 - c0, j1 - c0 + 1) for (c0, _), (j0, j1) in zip(c0s, ranges, strict=True))]


def _kernel(out: torch.Tensor, nodes: torch.Tensor, r: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(K, D, shift)``: K[o, n] = exp(-(nodes - out)^2 / 2 r^2 - shift[o]) (each row's largest entry 1),
    D = (nodes - out) K."""
    diff = nodes[None, :] - out[:, None]
    expo = -0.5 * (diff / r) ** 2
    shift = expo.max(dim=1).values
    k = torch.exp(expo - shift[:, None])
    return k, diff * k, shift


def _on_tensor_grid(axes: list[torch.Tensor], log_p: torch.Tensor, h: torch.Tensor, outs: list[torch.Tensor],
                    r: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""``(log S, E[y - X] [..., d], edge weight)`` on the tensor grid of outputs ``outs``: log of the trapezoid sum
    of :math:`\exp(\text{log\_p}(y))\,\mathcal N(X; y, r^2 I)` over the nodes, the kernel's first moment and the
    normalised weight on the nodes' edge lines. Outputs are taken in blocks so that no kernel matrix holds more
    than :data:`_CHUNK_ELEMENTS` entries."""
    if len(axes) == 2 and outs[1].numel() * max(a.numel() for a in axes) > _CHUNK_ELEMENTS:
        step = max(1, _CHUNK_ELEMENTS // max(a.numel() for a in axes))
        parts = [_on_tensor_grid(axes, log_p, h, [outs[0], outs[1][j:j + step]], r)
                 for j in range(0, outs[1].numel(), step)]
        return tuple(torch.cat([part[k] for part in parts], dim=1) for k in range(3))  # type: ignore[return-value]
    if outs[0].numel() * axes[0].numel() > _CHUNK_ELEMENTS:
        step = max(1, _CHUNK_ELEMENTS // axes[0].numel())
        parts = [_on_tensor_grid(axes, log_p, h, [outs[0][i:i + step], *outs[1:]], r)
                 for i in range(0, outs[0].numel(), step)]
        return tuple(torch.cat([part[k] for part in parts], dim=0) for k in range(3))  # type: ignore[return-value]
    p = torch.exp(log_p)
    k1, d1, c1 = _kernel(outs[0], axes[0], r)
    const = float(torch.log(h).sum()) - 0.5 * len(axes) * math.log(2 * math.pi * r * r)
    if len(axes) == 1:
        s = k1 @ p
        mom = (d1 @ p / s)[:, None]
        edge = (k1[:, 0] * p[0] + k1[:, -1] * p[-1]) / s
        return torch.log(s) + c1 + const, mom, edge
    k2, d2, c2 = _kernel(outs[1], axes[1], r)
    a, b = p @ k2.T, p @ d2.T  # [n1, o2]
    s = k1 @ a
    mom = torch.stack([d1 @ a / s, k1 @ b / s], dim=-1)
    edge = (k1[:, :1] * a[0] + k1[:, -1:] * a[-1] + (k1 @ p[:, 0])[:, None] * k2[:, 0]
            + (k1 @ p[:, -1])[:, None] * k2[:, -1]) / s
    return torch.log(s) + c1[:, None] + c2[None, :] + const, mom, edge


def _at_points(axes: list[torch.Tensor], log_p: torch.Tensor, h: torch.Tensor, x: torch.Tensor, r: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_on_tensor_grid` at scattered points ``x`` ``[N, d]``: ``(log S [N], E[y - X] [N, d], edge [N])``."""
    p = torch.exp(log_p)
    k1, d1, c1 = _kernel(x[:, 0], axes[0], r)
    const = float(torch.log(h).sum()) - 0.5 * len(axes) * math.log(2 * math.pi * r * r)
    if len(axes) == 1:
        s = k1 @ p
        edge = (k1[:, 0] * p[0] + k1[:, -1] * p[-1]) / s
        return torch.log(s) + c1 + const, (d1 @ p / s)[:, None], edge
    k2, d2, c2 = _kernel(x[:, 1], axes[1], r)
    q, qd = k2 @ p.T, d2 @ p.T  # [N, n1]: sums over the second axis
    s = (k1 * q).sum(1)
    mom = torch.stack([(d1 * q).sum(1) / s, (k1 * qd).sum(1) / s], dim=1)
    edge = (k1[:, 0] * q[:, 0] + k1[:, -1] * q[:, -1] + k2[:, 0] * (k1 @ p[:, 0]) + k2[:, -1] * (k1 @ p[:, -1])) / s
    return torch.log(s) + c1 + c2 + const, mom, edge


_U = 2.0**-53


def _log_rounding(n: int, log_p: torch.Tensor) -> torch.Tensor:
    """Rounding bound of a log-density from a sum of ``n`` positive terms: gamma_{n + 8} relative for the sums
    (Higham, Lemma 3.1; a blocked sum is no worse) and u per unit of each term's exponent, whose size is at most
    the cut-off plus the kernel's reach, 60 + 50 (plus |log p| itself for the final log)."""
    return _U * (n + 8 + 4 * (_CUT + 0.5 * _REACH**2) + log_p.detach().abs())


def _distance_to_box(x: torch.Tensor, axes: list[torch.Tensor]) -> torch.Tensor:
    """Euclidean distance from each point ``[N, d]`` to the box the node ``axes`` span (0 inside)."""
    lo = torch.stack([a[0] for a in axes])
    hi = torch.stack([a[-1] for a in axes])
    return (torch.clamp(lo - x, min=0.0) + torch.clamp(x - hi, min=0.0)).norm(dim=1)


def _largest_node(axes: list[torch.Tensor]) -> float:
    return float(torch.stack([torch.stack([a[0].abs(), a[-1].abs()]).max() for a in axes]).norm())


def _refuse_tail(edge: torch.Tensor, x: torch.Tensor) -> None:
    """Refuse points whose integrand has not decayed at the edge of the quadrature grid (truncation)."""
    bad = ~(edge <= _EDGE_WEIGHT)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        raise ValueError(f"x: {int(bad.sum())} point(s) lie too far in the tail for the quadrature grid (first: "
                         f"{x[i].tolist()}, edge weight {float(edge[i]):.2g} > {_EDGE_WEIGHT:g})")


class NoisedTilted:
    r""":math:`\pi_t`, the tilted target noised to time ``t`` of ``schedule`` (module docstring).

    ``method``: ``"auto"`` (closed form when the target is a Gaussian or a finite Gaussian mixture, else
    quadrature), ``"closed form"`` or ``"quadrature"`` (allowed on closed-form targets too, to check one against the
    other; d <= 2). ``length_scale``: the data grid's length scale :math:`s` (base spacing :math:`s/4`; default
    :func:`_length_scale`); a larger value coarsens the grid, and the error estimates then show it.
    :attr:`log_normaliser` and :attr:`log_normaliser_error` are :math:`\pi`'s (and every :math:`\pi_t`'s)
    :math:`\log Z` and its error estimate, :attr:`moment_error` that of :math:`\pi`'s mean and covariance (0 for the
    closed forms)."""

    def __init__(self, law: TiltedLaw, schedule: str | Schedule = "vp-linear", method: str = "auto", *,
                 length_scale: float | None = None):
        if not isinstance(law, TiltedLaw):
            raise TypeError(f"law: expected a verify.tilted.TiltedLaw, got {type(law).__name__}")
        if not isinstance(method, str) or method not in METHODS:
            raise ValueError(f"method: must be one of {METHODS}, got {method!r}")
        self.schedule = get_schedule(schedule)
        self.law = law
        law.check_normalisable()
        self.mixture: GaussianMixture | None = None
        try:
            self.mixture, log_z = law.as_mixture()
        except NotNormalisableError:
            raise
        except ValueError:
            pass
        if method == "closed form" and self.mixture is None:
            raise ValueError("method: the closed form needs single-Gaussian factors or a finite-mixture target "
                             "(verify.tilted.TiltedLaw.as_mixture)")
        self.method = method if method != "auto" else ("closed form" if self.mixture is not None else "quadrature")
        if self.method == "quadrature" and law.dim > 2:
            raise ValueError(f"law: quadrature covers d <= 2, got d = {law.dim}")
        if self.mixture is not None:
            self.data_mean, self.data_cov = self.mixture.mean(), self.mixture.covariance()
            self.log_normaliser, self.log_normaliser_error, self.moment_error = log_z, 0.0, 0.0
        else:
            summary = law.summary()
            self.data_mean, self.data_cov, self.log_normaliser = summary.mean, summary.cov, summary.log_normaliser
            self.log_normaliser_error, self.moment_error = summary.log_normaliser_error, summary.moment_error
        if length_scale is None:
            self.scale = _length_scale(law)
        else:
            self.scale = as_scalar(length_scale, "length_scale")
            if not self.scale > 0:
                raise ValueError(f"length_scale: must be > 0, got {length_scale!r}")
        self._grid: _DataGrid | None = None

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

    @property
    def grid(self) -> _DataGrid:
        """The tabulated data density (built at the first quadrature)."""
        if self._grid is None:
            self._grid = _DataGrid(self.law, self.scale)
        return self._grid

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
        r""":math:`\log \pi_t(x)` (normalised), ``[N]``; with ``with_error``, ``(values, error estimate [N])``: the
        quadrature's (halving difference and edge weight) plus :attr:`log_normaliser_error`."""
        x = check_points(x, self.dim, F64)
        log_p, _, err, _ = self._evaluate(x, *self.alpha_sigma(t))
        return (log_p, err + self.log_normaliser_error) if with_error else log_p

    def score(self, x: Tensorish, t: float, *, with_error: bool = False, max_error: float | None = None):
        r""":math:`\nabla \log \pi_t(x)`, ``[N, d]``; with ``with_error``, ``(values, error estimate [N])`` (2-norm:
        the halving difference plus the truncation term of the module docstring). ``max_error``: points whose
        estimate exceeds it are recomputed with the data grid's spacing halved, as often as the node budget allows
        (the estimate is then checked by the caller)."""
        x = check_points(x, self.dim, F64)
        tol = math.inf if max_error is None else as_scalar(max_error, "max_error")
        _, score, _, err = self._evaluate(x, *self.alpha_sigma(t), tol)
        return (score, err) if with_error else score

    def quadrature_nodes(self, t: float) -> list[int] | None:
        """Data-grid nodes per axis over the whole box at the level the grid route uses at ``t`` (an evaluation
        uses the part within 10 r of its points), or ``None`` where another route is used."""
        alpha, sigma = self.alpha_sigma(t)
        if self._route(alpha, sigma, None) != "grid convolution":
            return None
        level = self.grid.level_for(sigma / alpha)
        return [m * 2**level + 1 for m in self.grid.intervals]

    def method_at(self, t: float) -> str:
        """Which computation :meth:`score` uses at ``t``: ``"closed form"``, ``"exact at sigma = 0"``,
        ``"grid convolution"`` or ``"local quadrature"``."""
        alpha, sigma = self.alpha_sigma(t)
        return self._route(alpha, sigma, None)

    def _route(self, alpha: float, sigma: float, x: torch.Tensor | None) -> str:
        if self.method == "closed form":
            return "closed form"
        if sigma == 0.0:
            return "exact at sigma = 0"
        r = sigma / alpha
        if r < _LOCAL_BELOW * self.scale:
            return "local quadrature"
        grid = self.grid
        level = grid.level_for(r)
        lo, hi = (grid.lo, grid.hi) if x is None else (x.detach().min(0).values / alpha,
                                                       x.detach().max(0).values / alpha)
        ranges = grid.ranges(level, lo, hi, r)
        return "grid convolution" if math.prod(j1 - j0 + 1 for j0, j1 in ranges) <= _MAX_GRID_NODES \
            else "local quadrature"

    def _evaluate(self, x: torch.Tensor, alpha: float, sigma: float, score_tol: float = math.inf
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(log pi_t [N], score [N, d], log error [N], score error [N])`` at ``x`` (normaliser error excluded);
        on the grid route, points whose score error exceeds ``score_tol`` are recomputed on finer levels."""
        route = self._route(alpha, sigma, x if x.shape[0] else None)
        if route == "closed form":
            law = self.mixture.noised(alpha, sigma)
            zeros = torch.zeros(x.shape[0], dtype=F64)
            return law.log_prob(x), law.score(x), zeros, zeros.clone()
        if route == "exact at sigma = 0":
            # pi's own log density and score; their rounding: the factor mixtures' bounds (verify.tolerances), times
            # |exponent|, and a few roundings for the sums, the division and the constants
            from .tolerances import log_prob_rounding_bound, score_rounding_bound

            y = x / alpha
            log_p = self.law.log_unnormalized(y) - self.dim * math.log(alpha) - self.log_normaliser
            score = self.law.score(y) / alpha
            yd = y.detach()
            err_lp = sum(abs(e) * log_prob_rounding_bound(law, yd) for law, e in self.law.factors)
            err_sc = sum(abs(e) * score_rounding_bound(law, yd) for law, e in self.law.factors) / alpha
            n = len(self.law.factors) + 4
            return (log_p, score, err_lp + n * _U * (log_p.detach().abs() + abs(self.log_normaliser)),
                    err_sc + n * _U * score.detach().norm(dim=1))
        if route == "local quadrature":
            per_point = (2 * round(_L * _PER_UNIT) + 1) ** self.dim * self.dim
            run = self._local
        else:
            level = self.grid.level_for(sigma / alpha)
            per_point = max(m * 2**level + 1 for m in self.grid.intervals)

            def run(xc: torch.Tensor, a: float, s: float):
                return self._convolve_points(xc, a, s, score_tol)
        chunk = max(1, _CHUNK_ELEMENTS // per_point)
        parts = [run(x[i:i + chunk], alpha, sigma) for i in range(0, x.shape[0], chunk)]
        if not parts:
            empty = torch.zeros(0, dtype=F64)
            return empty, torch.zeros(0, self.dim, dtype=F64), empty, empty
        return tuple(torch.cat([p[k] for p in parts]) for k in range(4))  # type: ignore[return-value]

    def _finish(self, log_s: torch.Tensor, mom: torch.Tensor, alpha: float, r: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi_t and the score from the convolution's log sum and first moment (module docstring)."""
        log_p = log_s + self.grid.peak - self.dim * math.log(alpha) - self.log_normaliser
        return log_p, mom / (alpha * r * r)

    def _convolve_points(self, x: torch.Tensor, alpha: float, sigma: float, score_tol: float = math.inf
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The grid route at ``x``: the finest level the kernel needs, then up to :data:`_TABLE_LEVELS` finer ones
        for the points whose score error exceeds ``score_tol`` (the halving difference overstates a geometrically
        converging error: one more level usually shows it), while the sub-box fits :data:`_MAX_GRID_NODES`; in
        chunks that keep each kernel matrix within :data:`_CHUNK_ELEMENTS` entries."""
        grid, r = self.grid, sigma / alpha
        first = grid.level_for(r)
        out = self._convolve_at_level(x, alpha, r, first)
        for level in range(first + 1, first + _TABLE_LEVELS + 1):
            redo = torch.nonzero(out[3] > score_tol).flatten()
            if redo.numel() == 0:
                break
            xs = x[redo].detach() / alpha
            ranges = grid.ranges(level, xs.min(0).values, xs.max(0).values, r)
            if math.prod(j1 - j0 + 1 for j0, j1 in ranges) > _MAX_GRID_NODES:
                break
            step = max(1, _CHUNK_ELEMENTS // max(j1 - j0 + 1 for j0, j1 in ranges))
            for i in range(0, redo.numel(), step):
                rows = redo[i:i + step]
                finer = self._convolve_at_level(x[rows], alpha, r, level)
                for whole, part in zip(out, finer, strict=True):
                    whole[rows] = part
        return out

    def _convolve_at_level(self, x: torch.Tensor, alpha: float, r: float, level: int
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        grid = self.grid
        xs = x / alpha
        ranges = grid.ranges(level, xs.detach().min(0).values, xs.detach().max(0).values, r)
        axes, log_p, h = grid.axes(level, ranges), grid.block(level, ranges), grid.spacing(level)
        fine = _at_points(axes, log_p, h, xs, r)
        _refuse_tail(fine[2], x)
        coarse_slice = tuple(slice(None, None, 2) for _ in axes)
        coarse = _at_points([a[::2] for a in axes], log_p[coarse_slice], 2 * h, xs, r)
        lp, sc = self._finish(fine[0], fine[1], alpha, r)
        lp2, sc2 = self._finish(coarse[0], coarse[1], alpha, r)
        n, delta = sum(a.numel() for a in axes), grid.log_rounding
        reach = _distance_to_box(xs.detach(), axes) + _REACH * math.sqrt(self.dim) * r
        err_lp = (lp - lp2).abs() + fine[2] + _log_rounding(n, lp) + delta
        err_sc = ((sc - sc2).norm(dim=1) + fine[2] * (fine[1].norm(dim=1) + reach) / (alpha * r * r)
                  + (_U * (4 * (xs.detach().norm(dim=1) + _largest_node(axes)) + (n + 8) * reach) + 2 * delta * reach)
                  / (alpha * r * r))
        return lp, sc, err_lp, err_sc

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

    def _local(self, x: torch.Tensor, alpha: float, sigma: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The low-noise form at spacing 1/4 and 1/2 (module docstring): values and halving differences."""
        r = sigma / alpha
        shift = self._peak(x / alpha, r)
        fine = self._local_sum(x, alpha, r, shift, 1)
        coarse = self._local_sum(x, alpha, r, shift, 2)
        n = (2 * round(_L * _PER_UNIT) + 1) ** self.dim
        # the factor mixtures' own rounding at the integrand's peak (its nodes lie within 9 r sqrt(d) of it, r below
        # 1e-3 s, where the bounds barely change): of log pi~ (each weight moves by up to twice it) and of the score
        from .tolerances import log_prob_rounding_bound, score_rounding_bound

        peak = (x.detach() / alpha + r * shift).detach()
        delta = sum(abs(e) * log_prob_rounding_bound(law, peak) for law, e in self.law.factors)
        delta_sc = sum(abs(e) * score_rounding_bound(law, peak) for law, e in self.law.factors) / alpha
        return (fine[0], fine[1], (fine[0] - coarse[0]).abs() + _log_rounding(n, fine[0]) + delta,
                (fine[1] - coarse[1]).norm(dim=1) + (_U * (n + 8) + 2 * delta) * fine[2] + delta_sc)

    def _local_sum(self, x: torch.Tensor, alpha: float, r: float, shift: torch.Tensor, coarsen: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(log pi_t, score, sum_j rho_j |grad log pi~(y_j)| / alpha)``: the last is the scale of the score's
        terms, for its rounding bound."""
        d = self.dim
        h = coarsen / _PER_UNIT
        axis = torch.arange(-_L, _L + 0.5 * h, h, dtype=F64)
        u = torch.stack(torch.meshgrid(*([axis] * d), indexing="ij"), dim=-1).reshape(-1, d)  # [M, d]
        z = shift[:, None, :] + u[None, :, :]  # [N, M, d]
        log_phi = -0.5 * (z * z).sum(2) - 0.5 * d * math.log(2 * math.pi) + d * math.log(h)  # [N, M]
        y = (x / alpha)[:, None, :] + r * z  # [N, M, d]
        flat = y.reshape(-1, d)
        log_q = self.law.log_unnormalized(flat).reshape(y.shape[:2]) + log_phi  # [N, M]
        rho = torch.softmax(log_q, dim=1)
        edge = (u.abs() >= _L - 0.5 * h).any(1)
        _refuse_tail(rho[:, edge].sum(1), x)
        terms = self.law.score(flat).reshape(y.shape)
        score = (rho[:, :, None] * terms).sum(1) / alpha
        log_p = torch.logsumexp(log_q, dim=1) - d * math.log(alpha)
        return log_p - self.log_normaliser, score, (rho * terms.norm(dim=2)).sum(1) / alpha

    # --- the interpolated score --------------------------------------------------------------------------------
    def interpolated_score(self, x: Tensorish, t: float, *, max_error: float, nodes: int = 16,
                           max_exact: int = 256) -> tuple[torch.Tensor, dict]:
        r"""``(score [N, d], info)``: :math:`\nabla\log\pi_t` at ``x`` from a tensor-product cubic spline of the
        exact score (module docstring), each point within ``max_error`` (score units, 2-norm) by the estimate.

        The spline's nodes span the points, ``nodes`` cells along their longest extent to start. A cell's estimate
        is its largest interpolation error at the doubled grid's nodes (edge midpoints and centre) plus the
        Lebesgue-constant bound :math:`2^d` times its nodes' own quadrature error. The spacing is halved while
        more than ``max_exact`` points lie in cells above ``max_error`` (and the fine grid stays within
        :data:`_MAX_TABLE_NODES`); the points left in such cells (far in the tails, one per cell) get the exact
        score instead. ``info``: ``error`` (the largest estimate over the points), ``interpolation`` and
        ``nodes_error`` (their largest parts), ``nodes`` (per axis), ``exact`` (how many points were evaluated
        exactly) and ``route``. Refused (``ValueError`` naming ``max_error``) when even the exact score's estimate
        exceeds ``max_error``. Closed-form targets and sigma = 0 are evaluated directly."""
        x = check_points(x, self.dim, F64)
        max_error = as_scalar(max_error, "max_error")
        if not max_error > 0:
            raise ValueError(f"max_error: must be > 0, got {max_error!r}")
        for value, name, least in ((nodes, "nodes", 2), (max_exact, "max_exact", 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name}: must be an int >= {least}, got {value!r}")
        alpha, sigma = self.alpha_sigma(t)
        route = self._route(alpha, sigma, x)
        if route in ("closed form", "exact at sigma = 0") or x.shape[0] == 0 or (
                route == "local quadrature" and x.shape[0] <= (2 * nodes + 1) ** self.dim):
            _, score, _, err = self._evaluate(x, alpha, sigma)
            worst = float(err.max()) if err.numel() else 0.0
            self._check_exact(worst, max_error, t)
            return score, {"error": worst, "interpolation": 0.0, "nodes_error": worst, "nodes": None,
                           "exact": x.shape[0], "route": route}
        d = self.dim
        xs = x / alpha
        lo, hi = xs.min(0).values, xs.max(0).values
        width = (hi - lo).clamp_min(1e-3 * self.scale)
        lo, hi = lo - 1e-9 * width, lo + width * (1 + 2e-9)
        width = hi - lo
        cells = [max(2, math.ceil(nodes * float(width[i] / width.max()))) for i in range(d)]
        level = first_level = self.grid.level_for(sigma / alpha) if route == "grid convolution" else 0
        while True:
            fine_axes = [torch.linspace(float(lo[i]), float(hi[i]), 2 * cells[i] + 1, dtype=F64) for i in range(d)]
            coarse_axes = [a[::2] for a in fine_axes]
            idx, off = _cells(coarse_axes, xs)
            occupied = _occupied_cells(coarse_axes, idx)
            exact, node_err = self._resolved_score_on_grid(fine_axes, occupied, alpha, sigma, route, t, level)
            coarse_values = exact[tuple(slice(None, None, 2) for _ in range(d))]
            coef = _spline_coefficients(coarse_axes, coarse_values)
            interp = (_spline_on_doubled_grid(coef, [float(a[1] - a[0]) for a in coarse_axes]) - exact).norm(dim=-1)
            interp_cell, node_cell = _INTERPOLATION_MARGIN * _cell_max(interp), 2.0**d * _cell_max(node_err)
            cell_total = interp_cell + node_cell
            over = cell_total[tuple(idx)] > max_error
            if int(over.sum()) <= max_exact:
                break
            # too many points above the bound: refine what dominates their estimate (the nodes' quadrature: a finer
            # data level; the interpolation: finer cells), within the budgets
            failing = occupied & (cell_total > max_error)
            nodes_dominate = bool((node_cell[failing] > interp_cell[failing]).any())
            if (route == "grid convolution" and nodes_dominate and level < first_level + _TABLE_LEVELS
                    and self._level_fits(level + 1, fine_axes, sigma / alpha)):
                level += 1
            elif nodes_dominate and float(node_cell[failing].min()) > max_error:
                raise ValueError(f"max_error: the table nodes' own error estimate (at least "
                                 f"{float(node_cell[failing].min()):.3g}) exceeds max_error = {max_error:.3g} at "
                                 f"t = {float(t):.6g} on the finest data level tried; raise max_error")
            elif math.prod(4 * c + 1 for c in cells) <= _MAX_TABLE_NODES:
                cells = [2 * c for c in cells]
            else:
                break
        score = _spline_eval(coef, idx, off)
        kept = occupied & (cell_total <= max_error)
        worst = float(cell_total[kept].max()) if bool(kept.any()) else 0.0
        info = {"interpolation": float(interp_cell[kept].max()) if bool(kept.any()) else 0.0,
                "nodes_error": float(node_cell[kept].max()) if bool(kept.any()) else 0.0,
                "nodes": [c + 1 for c in cells], "exact": int(over.sum()), "route": route}
        if bool(over.any()):
            _, exact_score, _, err = self._evaluate(x[over], alpha, sigma, max_error)
            self._check_exact(float(err.max()), max_error, t)
            score[over] = exact_score
            worst = max(worst, float(err.max()))
        info["error"] = worst
        return score, info

    @staticmethod
    def _check_exact(error: float, max_error: float, t: float) -> None:
        if error > max_error:
            raise ValueError(f"max_error: the exact score's estimated error {error:.3g} exceeds max_error = "
                             f"{max_error:.3g} at t = {float(t):.6g}")

    def _level_fits(self, level: int, axes: list[torch.Tensor], r: float) -> bool:
        ranges = self.grid.ranges(level, torch.stack([a[0] for a in axes]), torch.stack([a[-1] for a in axes]), r)
        return math.prod(j1 - j0 + 1 for j0, j1 in ranges) <= _MAX_GRID_NODES

    def _resolved_score_on_grid(self, axes: list[torch.Tensor], occupied: torch.Tensor, alpha: float,
                                sigma: float, route: str, t: float, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_score_on_grid` with its unresolved nodes handled: nodes of cells that hold points must be
        resolved (else the points are refused, naming ``x``); the others only feed the spline, whose error in the
        occupied cells is measured, so a far node that is not (a box corner deep in the tail) gets the score of
        pi_t's Gaussian moment match instead, finite and of the right size."""
        exact, node_err, edge = self._score_on_grid(axes, alpha, sigma, route, level)
        used = _cell_nodes(occupied)
        if bool((~(edge[used] <= _EDGE_WEIGHT)).any()):
            mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
            _refuse_tail(torch.where(used, edge, 0.0).reshape(-1), alpha * mesh.reshape(-1, self.dim))
        bad = ~(edge <= _EDGE_WEIGHT) | ~torch.isfinite(exact).all(-1)
        if bool(bad.any()):
            mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
            gauss = -torch.linalg.solve(self.cov(t), (alpha * mesh[bad] - self.mean(t)).T).T
            exact, node_err = exact.clone(), node_err.clone()
            exact[bad], node_err[bad] = gauss, 0.0
        return exact, node_err

    def _score_on_grid(self, axes: list[torch.Tensor], alpha: float, sigma: float, route: str, level: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The exact score ``[n1, (n2,) d]``, its error and the edge weight ``[n1, (n2)]`` on the tensor grid
        ``axes`` (data units X = x / alpha)."""
        shape = [a.numel() for a in axes]
        if route == "local quadrature":  # every node must be resolved here (the local sums refuse otherwise)
            mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, self.dim)
            _, score, _, err = self._evaluate(alpha * mesh, alpha, sigma)
            return score.reshape(*shape, self.dim), err.reshape(shape), torch.zeros(shape, dtype=F64)
        grid, r = self.grid, sigma / alpha
        ranges = grid.ranges(level, torch.stack([a[0] for a in axes]), torch.stack([a[-1] for a in axes]), r)
        data_axes, log_p, h = grid.axes(level, ranges), grid.block(level, ranges), grid.spacing(level)
        fine = _on_tensor_grid(data_axes, log_p, h, axes, r)
        coarse_slice = tuple(slice(None, None, 2) for _ in data_axes)
        coarse = _on_tensor_grid([a[::2] for a in data_axes], log_p[coarse_slice], 2 * h, axes, r)
        score, score2 = fine[1] / (alpha * r * r), coarse[1] / (alpha * r * r)
        mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
        flat = mesh.reshape(-1, self.dim)
        n, delta = sum(a.numel() for a in data_axes), grid.log_rounding
        reach = (_distance_to_box(flat, data_axes) + _REACH * math.sqrt(self.dim) * r).reshape(shape)
        err = ((score - score2).norm(dim=-1) + fine[2] * (fine[1].norm(dim=-1) + reach) / (alpha * r * r)
               + (_U * (4 * (mesh.norm(dim=-1) + _largest_node(data_axes)) + (n + 8) * reach) + 2 * delta * reach)
               / (alpha * r * r))
        return score, err, fine[2]


def _spline_coefficients(axes: list[torch.Tensor], values: torch.Tensor) -> torch.Tensor:
    """Piecewise-cubic coefficients of the not-a-knot tensor-product spline through ``values`` ``[n1, (n2,) k]``:
    ``[m1, 4, k]`` in 1-D, ``[m1, m2, 4, 4, k]`` in 2-D (powers of the offset from the cell's lower corner, highest
    first; axis 1's index before axis 2's)."""
    from scipy.interpolate import CubicSpline

    c = CubicSpline(axes[0].numpy(), values.numpy(), axis=0).c  # [4, m1, (n2,) k]
    if len(axes) == 1:
        return torch.as_tensor(c, dtype=F64).permute(1, 0, 2).contiguous()
    c2 = CubicSpline(axes[1].numpy(), c, axis=2).c  # [4 (axis 2 power), m2, 4 (axis 1 power), m1, k]
    return torch.as_tensor(c2, dtype=F64).permute(3, 1, 2, 0, 4).contiguous()


def _cells(axes: list[torch.Tensor], x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each point's cell index per axis (uniform nodes: arithmetic, no search) and its offset from the cell's
    lower node."""
    idx, off = [], []
    for i, a in enumerate(axes):
        step = float(a[1] - a[0])
        j = ((x[:, i] - float(a[0])) / step).floor().clamp(0, a.numel() - 2).long()
        idx.append(j)
        off.append(x[:, i] - a[j])
    return idx, off


def _spline_on_doubled_grid(coef: torch.Tensor, steps: list[float]) -> torch.Tensor:
    """The spline of :func:`_spline_coefficients` on its doubled grid (nodes and midpoints, ``[2 m1 + 1, (2 m2 + 1,)
    k]``), from each cell's polynomial at offsets 0 and h/2 (and h for the last cell)."""
    def powers(u: float) -> torch.Tensor:
        return torch.tensor([u**3, u**2, u, 1.0], dtype=F64)

    if coef.ndim == 3:  # [m, 4, k]
        m = coef.shape[0]
        out = torch.empty(2 * m + 1, coef.shape[-1], dtype=F64)
        for j, u in enumerate((0.0, 0.5 * steps[0])):
            out[j:2 * m:2] = torch.einsum("p,mpk->mk", powers(u), coef)
        out[2 * m] = torch.einsum("p,pk->k", powers(steps[0]), coef[-1])
        return out
    m1, m2, k = coef.shape[0], coef.shape[1], coef.shape[-1]
    out = torch.empty(2 * m1 + 1, 2 * m2 + 1, k, dtype=F64)
    offsets = [(0.0, 0.5 * steps[0], steps[0]), (0.0, 0.5 * steps[1], steps[1])]
    for a in range(3):
        rows = coef if a < 2 else coef[-1:]
        row_slice = slice(a, 2 * m1, 2) if a < 2 else slice(2 * m1, 2 * m1 + 1)
        for b in range(3):
            cells = rows if b < 2 else rows[:, -1:]
            col_slice = slice(b, 2 * m2, 2) if b < 2 else slice(2 * m2, 2 * m2 + 1)
            out[row_slice, col_slice] = torch.einsum("p,q,ijpqk->ijk", powers(offsets[0][a]), powers(offsets[1][b]),
                                                     cells)
    return out


def _spline_eval(coef: torch.Tensor, idx: list[torch.Tensor], off: list[torch.Tensor]) -> torch.Tensor:
    """The spline of :func:`_spline_coefficients` at the points whose cells and offsets are ``idx, off``
    (:func:`_cells`): ``[N, k]``."""

    def powers(u: torch.Tensor) -> torch.Tensor:
        return torch.stack([u**3, u**2, u, torch.ones_like(u)], dim=1)  # [N, 4]

    k = coef.shape[-1]
    if len(idx) == 1:
        rows = coef.reshape(-1, 4 * k).index_select(0, idx[0]).reshape(-1, 4, k)
        return torch.bmm(powers(off[0])[:, None, :], rows)[:, 0]
    m2 = coef.shape[1]
    rows = coef.reshape(-1, 16 * k).index_select(0, idx[0] * m2 + idx[1]).reshape(-1, 16, k)
    basis = (powers(off[0])[:, :, None] * powers(off[1])[:, None, :]).reshape(-1, 1, 16)
    return torch.bmm(basis, rows)[:, 0]


def _occupied_cells(axes: list[torch.Tensor], idx: list[torch.Tensor]) -> torch.Tensor:
    """Bool mask ``[m1, (m2)]`` of the cells that hold at least one point (``idx`` from :func:`_cells`)."""
    shape = [a.numel() - 1 for a in axes]
    flat = idx[0] if len(axes) == 1 else idx[0] * shape[1] + idx[1]
    return (torch.bincount(flat, minlength=math.prod(shape)) > 0).reshape(shape)


def _cell_nodes(occupied: torch.Tensor) -> torch.Tensor:
    """Bool mask of the doubled grid's nodes ``[2 m1 + 1, (2 m2 + 1)]`` that belong to an occupied cell (its 3^d
    nodes)."""
    grown = occupied.to(F64)[None, None]
    if occupied.ndim == 1:
        out = torch.nn.functional.conv_transpose1d(grown, torch.ones(1, 1, 3, dtype=F64), stride=2)
    else:
        out = torch.nn.functional.conv_transpose2d(grown, torch.ones(1, 1, 3, 3, dtype=F64), stride=2)
    return out[0, 0] > 0


def _cell_max(values: torch.Tensor) -> torch.Tensor:
    """The largest value over each cell's nodes of the doubled grid ``[2 m1 + 1, (2 m2 + 1)]`` and the nearest
    nodes of its neighbours (its edge midpoints and centre and theirs): ``[m1, (m2)]``. The interpolation error's
    leading term is :math:`h^4 f^{(4)} \theta^2(1-\theta)^2/24` per axis, largest at the midpoint; the next,
    :math:`O(h^5 f^{(5)})`, moves the cell's maximum off the midpoint by about as much as the midpoint errors of
    neighbouring cells differ, so the neighbours' midpoints cover it (measured: up to 1.6 % above the cell's own
    midpoint)."""
    if values.ndim == 1:
        return torch.nn.functional.max_pool1d(values[None, None], 5, 2, padding=1)[0, 0]
    return torch.nn.functional.max_pool2d(values[None, None], 5, 2, padding=1)[0, 0]


def noised_tilted(world: World, rule: Rule, conditions: Mapping[str, Condition] | Condition = None,
                  schedule: str | Schedule = "vp-linear", method: str = "auto", *,
                  length_scale: float | None = None) -> NoisedTilted:
    r""":math:`\pi_t` for the tilted target of ``rule`` on ``world`` (:func:`verify.tilted.tilted_law`)."""
    return NoisedTilted(tilted_law(world, rule, conditions), schedule, method, length_scale=length_scale)


class TiltedDenoiser:
    r"""A :class:`~toy_models.denoiser.Denoiser` whose prediction is :math:`-\sigma_t \nabla\log\pi_t(x)` (the
    ``condition`` argument is ignored): every registered sampler run with it from :math:`\pi_1` samples the tilted
    target :math:`\pi` up to its own discretisation. ``t`` is a float or one time per row (``[N]``), as for
    :class:`toy_models.AnalyticDenoiser`.

    ``table``: how quadrature targets are evaluated. ``None``: the exact score at every point; an int M >= 4: the
    interpolated score (:meth:`NoisedTilted.interpolated_score`) starting from M nodes per axis; ``"auto"``
    (default): interpolated when a call has more than 256 points (one time), else exact.

    ``max_table_error``: the largest estimated error allowed on the prediction, in eps units (2-norm per point;
    :math:`\sigma_t` times the score's). Every quadrature call checks it: the interpolated score refines its nodes
    until its estimate is below, and a call whose estimate stays above (or whose exact evaluation's estimate is
    above) is refused with a ``ValueError`` naming ``max_table_error``. The default 1e-5 keeps a sampler's
    displacement small: a DDPM step moves x by about :math:`\Delta\lambda\,\sigma_t\,|\delta\varepsilon|` for an eps
    error :math:`\delta\varepsilon` (its x0 estimate moves by :math:`\sigma_t\delta\varepsilon/\alpha_t`, weighted by
    :math:`q_{ts} \approx \Delta\lambda`), so a run across a log-SNR range :math:`\Lambda` moves by at most
    :math:`\Lambda \cdot 10^{-5}` (2e-4 on vp-linear from t = 1 to 1e-3, :math:`\Lambda \approx 19`), and the
    interpolation errors change sign from cell to cell, so the moments move far less. :attr:`largest_error` is the
    largest estimate met so far."""

    def __init__(self, world: World, rule: Rule, conditions: Mapping[str, Condition] | Condition = None,
                 schedule: str | Schedule = "vp-linear", *, table: int | str | None = "auto",
                 max_table_error: float = 1e-5, method: str = "auto"):
        self.target = noised_tilted(world, rule, conditions, schedule, method)
        self.schedule = self.target.schedule
        if table is not None and table != "auto":
            if isinstance(table, bool) or not isinstance(table, int) or table < 4:
                raise ValueError(f"table: must be None, 'auto' or an int >= 4, got {table!r}")
        self.table = table
        max_table_error = as_scalar(max_table_error, "max_table_error")
        if not max_table_error > 0:
            raise ValueError(f"max_table_error: must be > 0, got {max_table_error!r}")
        self.max_table_error = max_table_error
        self.largest_error = 0.0
        self._start = 16 if table in (None, "auto") else table
        self._nodes = self._start

    @property
    def dim(self) -> int:
        return self.target.dim

    def score(self, x: Tensorish, t: Tensorish) -> torch.Tensor:
        r""":math:`\nabla\log\pi_t(x)`, ``[N, d]`` float64; ``t`` a float or ``[N]``."""
        x = check_points(x, self.dim, F64)
        times = as_tensor(t, "t", copy=False).to(F64)
        if times.numel() == 1:
            return self._score_at(x, float(times.reshape(())))
        if times.shape != (x.shape[0],):
            raise ValueError(f"t: expected a scalar or shape [N] = [{x.shape[0]}], got {list(times.shape)}")
        out = torch.empty_like(x)
        for value in torch.unique(times):  # group equal times: one evaluation each
            rows = times == value
            out[rows] = self._score_at(x[rows], float(value))
        return out

    def _score_at(self, x: torch.Tensor, t: float) -> torch.Tensor:
        target = self.target
        sigma = target.alpha_sigma(t)[1]
        if target.method == "closed form" or sigma == 0.0:
            return target.score(x, t)
        use_table = self.table is not None and (self.table != "auto" or x.shape[0] > _AUTO_TABLE_POINTS)
        if use_table:
            try:
                score, info = target.interpolated_score(x, t, max_error=self.max_table_error / sigma,
                                                        nodes=self._nodes, max_exact=_AUTO_TABLE_POINTS)
            except ValueError as err:
                if not str(err).startswith("max_error:"):
                    raise
                raise ValueError(f"max_table_error: {self.max_table_error:.3g} in eps units (max_error "
                                 f"{self.max_table_error / sigma:.3g} in score units) cannot be met: "
                                 f"{str(err).split(': ', 1)[1]}") from None
            if info["nodes"] is not None:
                # the next call starts where this one ended, or one halving coarser when the interpolation error
                # (h^4: 16 times larger at twice the spacing) would still fit the bound with a margin of 2
                last = max(info["nodes"]) - 1
                coarser = 32 * info["interpolation"] * sigma <= self.max_table_error
                self._nodes = max(self._start, last // 2 if coarser else last)
            error = sigma * info["error"]
        else:
            score, err = target.score(x, t, with_error=True, max_error=self.max_table_error / sigma)
            error = sigma * float(err.max()) if err.numel() else 0.0
            if error > self.max_table_error:
                raise ValueError(f"max_table_error: the exact score's estimated error {error:.3g} (eps units) "
                                 f"exceeds {self.max_table_error:.3g} at t = {t:.6g}")
        self.largest_error = max(self.largest_error, error)
        return score

    def eps(self, x: torch.Tensor, t: Tensorish, condition: Condition = None) -> torch.Tensor:
        r""":math:`\hat\varepsilon = -\sigma_t \nabla\log\pi_t(x)`, ``[N, d]`` in ``x``'s dtype; ``t`` a float or
        ``[N]``."""
        dtype = x.dtype if isinstance(x, torch.Tensor) and x.dtype in (torch.float32, F64) else F64
        x64 = check_points(x, self.dim, F64)
        times = as_tensor(t, "t", copy=False).to(F64)
        sigma = self.schedule.sigma(times)
        sigma = sigma.reshape(-1, 1) if sigma.numel() > 1 else sigma.reshape(())
        return param.score_to_eps(self.score(x64, times), sigma).to(dtype)

    def __repr__(self) -> str:
        return f"TiltedDenoiser({self.target.law.name!r}, schedule={self.schedule.name!r}, {self.target.method})"


def tilted_moment_law(target: NoisedTilted, nu: float = 0.0, *, t_end: float = 0.0, rtol: float = 1e-12
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean and covariance at ``t_end`` of the sampler family :math:`dx = (f x - \tfrac{1+\nu}{2} g^2
    \nabla\log\pi_t)\,dt + \sqrt\nu\, g\, d\bar W` started from :math:`\pi_1`, for a Gaussian target: the moment
    ODEs of :func:`verify.exact_law.moment_ode_law` with one branch :math:`\mathcal N(m, S)` of weight 1, whose
    noised score is :math:`\nabla\log\pi_t = -C_t^{-1}(x - \alpha_t m)`, :math:`C_t = \alpha_t^2 S + \sigma_t^2 I`.
    Their solution is :math:`(\alpha_t m, C_t)` at every t (substitute: :math:`\dot C = 2\alpha\dot\alpha S +
    2\sigma\dot\sigma I = 2 f C + g^2 I` by the definitions of f and g), so the result is :math:`(m, S)` at
    ``t_end = 0`` up to the DOP853 tolerance ``rtol``."""
    if not isinstance(target, NoisedTilted) or not target.law.is_gaussian():
        raise ValueError("target: expected a NoisedTilted with single-Gaussian factors (a Gaussian target)")
    pi = GaussianMixture([1.0], target.data_mean[None], target.data_cov[None])
    return moment_ode_law({"pi": pi}, {"pi": 1.0}, nu, target.schedule, target.mean(1.0), target.cov(1.0),
                          t_end=t_end, rtol=rtol)


def tilted_flow_law_1d(target: NoisedTilted, *, n_nodes: int = 401, rtol: float = 1e-9
                       ) -> tuple[float, float, dict]:
    r"""``(mean, var, error)`` at t = 0 of the probability-flow ODE :math:`\dot x = f x - \tfrac12 g^2
    \nabla\log\pi_t(x)` run from :math:`\pi_1` (1-D), by its flow map (:func:`verify.exact_law.flow_map_law_1d`):
    ``n_nodes`` starts spanning 7 standard deviations of :math:`\pi_1` either side of its mean (:math:`\pi_1` is
    Gaussian to within :math:`\alpha_1^2 S`, and a Gaussian's mass beyond 7 deviations is 2.6e-12; wider starts
    reach the tail edge of the quadrature on their way, which refuses them), weighted by :math:`\pi_1`'s density
    (:meth:`NoisedTilted.log_prob`), the score by :meth:`NoisedTilted.score` down to t = 0. ``error``: the
    differences from half the nodes and 100x the tolerance."""
    if not isinstance(target, NoisedTilted) or target.dim != 1:
        raise ValueError("target: expected a one-dimensional NoisedTilted")
    m1, v1 = float(target.mean(1.0)[0]), float(target.cov(1.0)[0, 0])
    fine, coarse = flow_map_law_1d(
        lambda x, t, piece: target.score(torch.as_tensor(x, dtype=F64)[:, None], t)[:, 0].numpy(), target.schedule,
        lambda x: target.log_prob(torch.as_tensor(x, dtype=F64)[:, None], 1.0).numpy(),
        m1 - 7 * math.sqrt(v1), m1 + 7 * math.sqrt(v1), n_nodes=n_nodes, rtol=rtol)
    return fine.mean, fine.var, {"mean": abs(fine.mean - coarse.mean), "var": abs(fine.var - coarse.var)}
