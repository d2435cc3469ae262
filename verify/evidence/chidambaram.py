r"""Guidance on compactly supported classes: the guided probability-flow ODE's exact law (read by
L-CHIDAMBARAM-BOUNDARY).

Chidambaram, Gatmiry, Chen, Lee & Lu (2024), "What does guidance do? A fine-grained analysis in a simple setting"
(arXiv 2409.13074), Assumption 1 and Theorem 1 (informal; Theorem 4 formal): for :math:`p = \tfrac12 p^{(1)} +
\tfrac12 p^{(-1)}` with bounded densities on the disjoint intervals :math:`[\alpha_1, \alpha_2]` and
:math:`[-\alpha_2, -\alpha_1]`, the probability-flow ODE guided with strength w (their eq. 4 with the CFG score
:math:`(1+w)\nabla\log p_t(x|z) - w\nabla\log p_t(x)`) ends, with probability :math:`1 - e^{-\Omega(w)}`, within
:math:`O(\alpha_2/\sqrt{\ln w})` of :math:`\alpha_2`: the end of the class's support away from the other class.
Their Theorem 3: with any nonzero score error, large enough w puts the samples outside the support.

**The world** (:class:`UniformMixture1D`): their setting with uniform classes, class 1 on [1, 2], class -1 on
[-2, -1], equal weights. Convolved with :math:`\mathcal N(0, \sigma^2)` after scaling by :math:`\alpha`, a uniform on
[a, b] has the density :math:`[\Phi(u_a) - \Phi(u_b)]/(\alpha(b - a))`, :math:`u_a = (x - \alpha a)/\sigma`,
:math:`u_b = (x - \alpha b)/\sigma`, so log-density, score, class posterior and CDF are closed-form; the log of the
difference of normal CDFs is formed from ``torch.special.log_ndtr`` on the side where it does not cancel.

**The flow map.** With :math:`y = x/\alpha` and :math:`\lambda = \sigma/\alpha`, every VP schedule's probability-flow
ODE driven by any eps field :math:`\tilde\varepsilon` is :math:`dy/d\lambda = \tilde\varepsilon` (the DDIM ODE), so
the law at the end depends on the schedule only through :math:`\lambda` at the start: their Ornstein-Uhlenbeck time
and our vp-linear time are reparametrisations of one flow. In :math:`s = \ln\lambda`,

.. math::  \frac{dy}{ds} = (1 + w)\,(y - D_1(y, \lambda)) - w\,(y - D(y, \lambda)),

:math:`D = y + \lambda^2\nabla_y\log q_\lambda` the denoiser of the data law smoothed by :math:`\mathcal N(0,
\lambda^2)`. Near a support edge at small :math:`\lambda` the field is self-similar in :math:`z/\lambda`, so
integrating in :math:`s` (DOP853) resolves the edge layers down to :math:`\lambda_{end} = 10^{-7}` with a bounded
number of steps per decade. Start: the noised class law at t = 1 of vp-linear (:math:`\lambda_1 \approx 152`), on
nodes spanning 9 of its standard deviations. The map is monotone (1-D ODE flows do not cross), so the output CDF at
any c is :math:`F_1(\Phi^{-1}(c))` with :math:`F_1` the start law's closed-form CDF.

**Score error** (Theorem 3's regime): the eps of each branch is replaced by :math:`\varepsilon\,(1 + \delta
\tanh(a x + b))`: a smooth error of relative size at most :math:`\delta` at every point and time, with ``a, b``
drawn per condition and seed as :class:`verify.evidence.shared.PerturbedDenoiser` draws its field. A bounded
*additive* eps error cannot leave the support as :math:`\lambda \to 0` (outside the support the exact restoring term
:math:`(y - \alpha_2)/\lambda` dominates any bounded term, so :math:`y - \alpha_2 = O(\lambda\ln\lambda) \to 0`); a
relative error can: beyond :math:`\alpha_2` the guided field is :math:`(y - \alpha_2)(1 + \delta[(1+w)h_1 - w
h_\varnothing])/\lambda`, whose restoring sign flips once :math:`w\,\delta\,(h_\varnothing - h_1) > 1 + \delta h_1`.

Errors: the difference from a run with half the nodes at 100x the integration tolerance.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from toy_models import get_schedule
from verify.config import RunConfig

from . import provider
from .shared import SCHEDULE, one_thread

__all__ = ["UniformMixture1D", "NoisedUniformMixture1D", "BoundaryRun", "PerturbedRun", "ChidambaramBoundary",
           "chidambaram_boundary", "relative_error_field", "guided_flow_map"]

F64 = torch.float64
LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)

#: the world: class 1 uniform on [ALPHA_1, ALPHA_2], class -1 on the mirror interval, equal weights (Assumption 1)
ALPHA_1, ALPHA_2 = 1.0, 2.0
#: width of the boundary layers whose mass is measured (5% of the support's length)
LAYER = 0.05
#: distance beyond the support that counts as outside: far above the offset the flow leaves at lambda_end
#: (O(lambda_end ln lambda_end) ~ 2e-6) and far below LAYER
OUTSIDE = 1e-4
LAMBDA_END = 1e-7
WS = (0.0, 1.0, 3.0, 7.0, 15.0, 63.0, 255.0)
QUICK_WS = (0.0, 3.0, 15.0, 255.0)
#: the strengths of the perturbed runs (a subset of WS)
PERTURBED_WS, QUICK_PERTURBED_WS = (0.0, 3.0, 15.0, 63.0, 255.0), (0.0, 15.0, 255.0)
DELTAS = (0.01, 0.1)
SEEDS, QUICK_SEEDS = (0, 1), (0,)
NODES, QUICK_NODES = 301, 201
RTOL = 1e-9


def _as_points(x, name: str = "x") -> torch.Tensor:
    t = torch.as_tensor(x, dtype=F64)
    if t.dim() != 1:
        raise ValueError(f"{name}: expected a 1-D tensor of points [N], got shape {tuple(t.shape)}")
    return t


def _log_ndtr_difference(hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    r""":math:`\log(\Phi(hi) - \Phi(lo))` for ``hi > lo``, computed on the side where nothing cancels: the upper
    tails :math:`\Phi(-lo) - \Phi(-hi)` where the pair lies right of 0, the lower tails otherwise."""
    right = (hi + lo) > 0
    a = torch.where(right, -lo, hi)  # the larger of the two CDF values' arguments
    b = torch.where(right, -hi, lo)
    la, lb = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    return la + torch.log(-torch.expm1(lb - la))


@dataclass(frozen=True)
class NoisedUniformMixture1D:
    r"""A mixture of uniforms pushed through the forward process: :math:`x = \alpha x_0 + \sigma\varepsilon`.
    Points are 1-D tensors ``[N]`` (float64)."""

    lows: tuple[float, ...]
    highs: tuple[float, ...]
    weights: tuple[float, ...]
    labels: tuple[int, ...]
    alpha: float
    sigma: float

    def _u(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lows, highs = torch.tensor(self.lows, dtype=F64), torch.tensor(self.highs, dtype=F64)
        x = _as_points(x)[:, None]
        return (x - self.alpha * lows) / self.sigma, (x - self.alpha * highs) / self.sigma  # u_a > u_b, [N, K]

    def component_log_prob(self, x) -> torch.Tensor:
        """``[N, K]``: log density of each noised component."""
        u_a, u_b = self._u(x)
        width = torch.tensor(self.highs, dtype=F64) - torch.tensor(self.lows, dtype=F64)
        return _log_ndtr_difference(u_a, u_b) - torch.log(self.alpha * width)

    def log_prob(self, x) -> torch.Tensor:
        return torch.logsumexp(self.component_log_prob(x) + torch.log(torch.tensor(self.weights, dtype=F64)), -1)

    def class_posterior(self, x) -> torch.Tensor:
        """``[N, K]``: :math:`p_t(z \\mid x)` in the order of ``labels``."""
        joint = self.component_log_prob(x) + torch.log(torch.tensor(self.weights, dtype=F64))
        return torch.softmax(joint, -1)

    def component_score(self, x) -> torch.Tensor:
        r"""``[N, K]``: :math:`(\varphi(u_a) - \varphi(u_b)) / (\sigma(\Phi(u_a) - \Phi(u_b)))` in log space."""
        u_a, u_b = self._u(x)
        log_d = _log_ndtr_difference(u_a, u_b)
        r_a = torch.exp(-0.5 * u_a**2 - LOG_SQRT_2PI - log_d)
        r_b = torch.exp(-0.5 * u_b**2 - LOG_SQRT_2PI - log_d)
        return (r_a - r_b) / self.sigma

    def score(self, x) -> torch.Tensor:
        return (self.class_posterior(x) * self.component_score(x)).sum(-1)

    def denoised(self, x) -> torch.Tensor:
        r"""Tweedie's :math:`E[x_0 \mid x] = (x + \sigma^2\nabla\log p_t(x))/\alpha`."""
        return (_as_points(x) + self.sigma**2 * self.score(x)) / self.alpha

    def cdf(self, x) -> torch.Tensor:
        r""":math:`P(X \le x)`. A uniform's: :math:`\tfrac{\sigma}{\alpha(b-a)}[G(u_a) - G(u_b)]`,
        :math:`G(u) = u\Phi(u) + \varphi(u)` (the antiderivative of :math:`\Phi`)."""
        u_a, u_b = self._u(x)

        def g(u: torch.Tensor) -> torch.Tensor:
            return u * torch.special.ndtr(u) + torch.exp(-0.5 * u**2 - LOG_SQRT_2PI)

        width = torch.tensor(self.highs, dtype=F64) - torch.tensor(self.lows, dtype=F64)
        comp = (self.sigma / (self.alpha * width)) * (g(u_a) - g(u_b))
        return (comp.clamp(0.0, 1.0) * torch.tensor(self.weights, dtype=F64)).sum(-1)


@dataclass(frozen=True)
class UniformMixture1D:
    """A labelled mixture of uniform laws on intervals of the line: Chidambaram et al.'s compactly supported world."""

    lows: tuple[float, ...]
    highs: tuple[float, ...]
    weights: tuple[float, ...]
    labels: tuple[int, ...]

    def __post_init__(self):
        n = len(self.lows)
        if not (len(self.highs) == len(self.weights) == len(self.labels) == n) or n == 0:
            raise ValueError("lows: lows, highs, weights and labels need one entry per component")
        if any(not lo < hi for lo, hi in zip(self.lows, self.highs, strict=True)):
            raise ValueError(f"lows: every interval needs low < high, got lows {self.lows}, highs {self.highs}")
        if any(w <= 0 for w in self.weights) or abs(sum(self.weights) - 1.0) > 1e-12:
            raise ValueError(f"weights: must be positive and sum to 1, got {self.weights}")

    def law(self, label: int | None) -> UniformMixture1D:
        """The class ``label``'s law (``None``: the whole mixture)."""
        if label is None:
            return self
        if label not in self.labels:
            raise ValueError(f"label: expected one of {self.labels} or None, got {label!r}")
        k = self.labels.index(label)
        return UniformMixture1D((self.lows[k],), (self.highs[k],), (1.0,), (label,))

    def noised(self, alpha: float, sigma: float) -> NoisedUniformMixture1D:
        if not (alpha > 0 and sigma > 0):
            raise ValueError(f"alpha: need alpha > 0 and sigma > 0, got alpha={alpha!r}, sigma={sigma!r}")
        return NoisedUniformMixture1D(self.lows, self.highs, self.weights, self.labels, float(alpha), float(sigma))


def two_uniforms() -> UniformMixture1D:
    """Class 1 uniform on [ALPHA_1, ALPHA_2], class -1 uniform on [-ALPHA_2, -ALPHA_1], weights 1/2."""
    return UniformMixture1D((ALPHA_1, -ALPHA_2), (ALPHA_2, -ALPHA_1), (0.5, 0.5), (1, -1))


def relative_error_field(delta: float, seed: int, condition) -> tuple[float, float, float]:
    r"""``(delta, a, b)`` of the factor :math:`1 + \delta\tanh(a x + b)` that multiplies a branch's eps,
    ``a, b ~ N(0, 1)`` drawn from ``seed`` and ``condition`` as :class:`verify.evidence.shared.PerturbedDenoiser`
    draws its field (d = 1)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(str(condition).encode()))
    a = float(torch.randn(1, 1, dtype=F64, generator=gen)[0, 0])
    b = float(torch.randn(1, dtype=F64, generator=gen)[0])
    return float(delta), a, b


def _lambda_1() -> float:
    a1, s1 = (float(v) for v in get_schedule(SCHEDULE).alpha_sigma(1.0))
    return s1 / a1


@dataclass(frozen=True)
class Block:
    """One flow-map run inside a batch: strength ``w`` and the relative eps error (``delta = 0``: exact)."""

    w: float
    delta: float = 0.0
    seed: int = 0


def guided_flow_map(world: UniformMixture1D, label: int, blocks: Sequence[Block], y1: np.ndarray, *,
                    rtol: float = RTOL, lambda_end: float = LAMBDA_END) -> np.ndarray:
    r"""``[len(blocks), len(y1)]``: the CFG probability-flow map from :math:`\lambda_1` (vp-linear, t = 1) down to
    ``lambda_end`` of the points ``y1`` (in :math:`y = x/\alpha`), integrated in :math:`s = \ln\lambda` (module
    docstring), for every block at once (one integration: the blocks share the step sizes, the strictest block
    setting them). A block with ``delta > 0`` gives each branch the relative eps error of
    :func:`relative_error_field`."""
    from scipy.integrate import solve_ivp

    y1 = np.asarray(y1, dtype=np.float64)
    n = len(y1)
    uncond_law = world
    rows = len(blocks)
    w = torch.tensor([b.w for b in blocks], dtype=F64).repeat_interleave(n)
    fields = [(relative_error_field(b.delta, b.seed, label), relative_error_field(b.delta, b.seed, None))
              for b in blocks]
    d_c, a_c, b_c, d_u, a_u, b_u = (torch.tensor([f[i][j] for f in fields], dtype=F64).repeat_interleave(n)
                                    for i in (0, 1) for j in (0, 1, 2))

    k = world.labels.index(label)

    def rhs(s: float, y: np.ndarray) -> np.ndarray:
        lam = math.exp(s)
        yt = torch.from_numpy(y)
        law = uncond_law.noised(1.0, lam)
        comp = law.component_score(yt)  # [N, K]; the class's law is its component k
        r_c = -(lam**2) * comp[:, k]  # y - D_c = lambda * eps_c
        r_u = -(lam**2) * (law.class_posterior(yt) * comp).sum(-1)
        x = yt / math.sqrt(1.0 + lam**2)  # the VP coordinate alpha y, alpha = 1/sqrt(1 + lambda^2)
        r_c = r_c * (1.0 + d_c * torch.tanh(a_c * x + b_c))
        r_u = r_u * (1.0 + d_u * torch.tanh(a_u * x + b_u))
        return ((1.0 + w) * r_c - w * r_u).numpy()

    with one_thread():
        sol = solve_ivp(rhs, (math.log(_lambda_1()), math.log(lambda_end)), np.tile(y1, rows), method="DOP853",
                        rtol=rtol, atol=rtol)
    if not sol.success:
        raise RuntimeError(f"guided flow map failed: {sol.message}")
    return sol.y[:, -1].reshape(rows, n)


def _start(world: UniformMixture1D, label: int) -> NoisedUniformMixture1D:
    return world.law(label).noised(1.0, _lambda_1())  # the noised class law at t = 1, in y = x / alpha


def _nodes(start: NoisedUniformMixture1D, n: int) -> np.ndarray:
    """``n`` start points at the normal quantiles of probabilities evenly spaced in [1e-12, 1 - 1e-12] (the start
    law is the class law smoothed by lambda_1 ~ 152: normal to 1e-5 relative), so the nodes follow the mass."""
    from scipy.special import ndtri

    centre = 0.5 * (start.lows[0] + start.highs[0])
    sd = math.sqrt(start.sigma**2 + (start.highs[0] - start.lows[0]) ** 2 / 12.0)
    return centre + sd * ndtri(np.linspace(1e-12, 1.0 - 1e-12, n))


def _output_cdf(start: NoisedUniformMixture1D, y1: np.ndarray, y0: np.ndarray, points: Sequence[float]
                ) -> np.ndarray:
    r""":math:`P(Y_0 \le c) = F_1(\Phi^{-1}(c))` by inverting the monotone node map linearly."""
    # a 1-D flow is monotone; the integrator's error (atol = rtol = RTOL, global error ~ 1e3 RTOL) may reorder
    # points the flow has squeezed closer than that: tolerate and undo reorderings below 1e4 RTOL (1 + |y|)
    drop = np.diff(y0)
    if np.any(drop < -1e4 * RTOL * (1.0 + np.abs(y0[1:]))):
        raise RuntimeError(f"flow map: not monotone (a step of {drop.min():.3g}), the integration is not resolved")
    y0 = np.maximum.accumulate(y0)
    pts = np.asarray(points, dtype=np.float64)
    pre = np.interp(pts, y0, y1)
    cdf = start.cdf(torch.from_numpy(pre)).numpy()
    return np.where(pts < y0[0], 0.0, np.where(pts > y0[-1], 1.0, cdf))


#: the edges at which the output CDF is read: the two boundary layers and the outside margins
EDGES = (ALPHA_1 - OUTSIDE, ALPHA_1 + LAYER, ALPHA_2 - LAYER, ALPHA_2 + OUTSIDE)
#: histogram bins of the output density drawn by the figure (every run reads its CDF there)
HIST_EDGES = tuple(np.linspace(0.505, 2.505, 201).tolist())  # the edges 1 and 2 inside bins


def _masses(cdf_edges: np.ndarray) -> dict[str, float]:
    lo_out, near_hi, far_lo, hi_out = cdf_edges
    return {"near": float(near_hi - lo_out), "far": float(hi_out - far_lo), "outside": float(lo_out + 1.0 - hi_out)}


#: the output quantiles recorded (their levels)
LEVELS = (0.01, 0.1, 0.5, 0.99)


def _runs(world: UniformMixture1D, blocks: Sequence[Block], nodes: int, rtol: float
          ) -> list[tuple[dict[str, float], np.ndarray, dict[str, float]]]:
    """Per block: the masses, the histogram over HIST_EDGES and the output quantiles at LEVELS (the monotone map
    carries the start law's quantiles to the output's)."""
    start = _start(world, 1)
    y1 = _nodes(start, nodes)
    y0 = guided_flow_map(world, 1, blocks, y1, rtol=rtol)
    pre = np.interp(LEVELS, start.cdf(torch.from_numpy(y1)).numpy(), y1)
    out = []
    for row in y0:
        masses = _masses(_output_cdf(start, y1, row, EDGES))
        hist = np.diff(_output_cdf(start, y1, row, HIST_EDGES))
        out.append((masses, hist, {f"q{round(100 * p):02d}": float(v) for p, v in zip(LEVELS, np.interp(
            pre, y1, np.maximum.accumulate(row)), strict=True)}))
    return out


@dataclass(frozen=True)
class BoundaryRun:
    """The exact guided law at one w: mass within LAYER of the far edge (ALPHA_2) and of the near edge (ALPHA_1),
    mass further than OUTSIDE beyond the support, each with its error estimate; ``width_90`` = ALPHA_2 minus the
    output's 10% quantile; ``quantiles``: the output's 1%, 10%, 50% and 99% quantiles; ``histogram``: mass per bin
    of HIST_EDGES."""

    w: float
    far: float
    near: float
    outside: float
    error: dict[str, float]
    width_90: float
    quantiles: dict[str, float]
    histogram: tuple[float, ...]


@dataclass(frozen=True)
class PerturbedRun:
    """The guided law with the relative eps error ``delta`` (field seed ``seed``) at one w (fields as
    :class:`BoundaryRun`'s)."""

    delta: float
    seed: int
    w: float
    far: float
    near: float
    outside: float
    error: dict[str, float]
    quantiles: dict[str, float]
    histogram: tuple[float, ...]


@dataclass(frozen=True)
class ChidambaramBoundary:
    alpha_1: float
    alpha_2: float
    layer: float
    outside_margin: float
    lambda_end: float
    nodes: int
    rtol: float
    ws: tuple[float, ...]
    exact: tuple[BoundaryRun, ...]
    perturbed: tuple[PerturbedRun, ...]
    hist_edges: tuple[float, ...]

    def perturbed_outside(self, delta: float) -> dict[str, float]:
        """``{w: largest outside mass over the seeds}`` for the error size ``delta``."""
        out: dict[str, float] = {}
        for r in self.perturbed:
            if r.delta == delta:
                out[f"{r.w:g}"] = max(out.get(f"{r.w:g}", 0.0), r.outside)
        return out


@provider
def chidambaram_boundary(config: RunConfig) -> ChidambaramBoundary:
    """The guided PF-ODE's exact law on two uniform classes against w, with and without a relative score error
    (every run in one batched integration, and again with half the nodes at 100x the tolerance for the errors)."""
    ws = QUICK_WS if config.quick else WS
    seeds = tuple(config.seed + s for s in (QUICK_SEEDS if config.quick else SEEDS))
    nodes = QUICK_NODES if config.quick else NODES
    world = two_uniforms()
    pws = QUICK_PERTURBED_WS if config.quick else PERTURBED_WS
    blocks = [Block(w) for w in ws] + [Block(w, d, s) for d in DELTAS for s in seeds for w in pws]
    fine = _runs(world, blocks, nodes, RTOL)
    coarse = _runs(world, blocks, (nodes + 1) // 2, RTOL * 100)
    exact, perturbed = [], []
    for block, (masses, hist, qs), (masses_c, _, qs_c) in zip(blocks, fine, coarse, strict=True):
        err = {k: abs(masses[k] - masses_c[k]) for k in masses} | {k: abs(qs[k] - qs_c[k]) for k in qs}
        if block.delta == 0.0:
            exact.append(BoundaryRun(block.w, masses["far"], masses["near"], masses["outside"], err,
                                     ALPHA_2 - qs["q10"], qs, tuple(hist.tolist())))
        else:
            perturbed.append(PerturbedRun(block.delta, block.seed, block.w, masses["far"], masses["near"],
                                          masses["outside"], err, qs, tuple(hist.tolist())))
    return ChidambaramBoundary(ALPHA_1, ALPHA_2, LAYER, OUTSIDE, LAMBDA_END, nodes, RTOL, tuple(ws), tuple(exact),
                               tuple(perturbed), HIST_EDGES)
