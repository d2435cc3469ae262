r"""Sequential Monte Carlo along the guided reverse SDE, reweighted to the tilted target.

A linear rule with branch weights :math:`a_b` (:math:`\sum_b a_b = 1`) drives its sampler with the score of the
product of the *noised* branch laws,

.. math::  \tilde q_t(x) = \prod_b p_t(x \mid b)^{a_b}, \qquad s_q = \nabla\log\tilde q_t = \sum_b a_b s_b,

whose normalised law :math:`q_t` ends at the tilted target :math:`q_0 = \pi \propto \prod_b p(x \mid b)^{a_b}`
(:mod:`verify.tilted`). The reverse SDE driven by :math:`s_q` does not carry :math:`q_1` to :math:`q_0`: the product
of noised laws is not a marginal of the forward process (:mod:`verify.tilted_noised`). Feynman-Kac corrector weights
(Skreta et al. 2025, "Feynman-Kac Correctors in Diffusion: Annealing, Guidance, and Product of Experts", ICML,
section 3 and their product-of-experts weights) make a weighted particle system follow :math:`q_t` at every t.
The increment derived here for a product of noised branch laws:

Derivation. Forward SDE :math:`dx = f x\,dt + g\,dW` in :math:`\mathbb R^d`. Each branch marginal solves the
Fokker-Planck equation :math:`\partial_t p = -\nabla\cdot(f x p) + \tfrac{g^2}{2}\Delta p`; dividing by :math:`p`,

.. math::  \partial_t \log p_b = -f d - f x\cdot s_b + \tfrac{g^2}{2}(\Delta\log p_b + |s_b|^2).

Summing with weights :math:`a_b` gives, for :math:`u = \log\tilde q_t`,

.. math::  \partial_t u = -f d\,{\textstyle\sum_b a_b} - f x\cdot\nabla u + \tfrac{g^2}{2}\big(\Delta u +
           {\textstyle\sum_b a_b |s_b|^2}\big),

while a solution of the Fokker-Planck equation would have :math:`|\nabla u|^2` in place of
:math:`\sum_b a_b |s_b|^2` (and :math:`\sum_b a_b = 1`). Hence :math:`\tilde q` solves it with a source,

.. math::  \partial_t \tilde q = -\nabla\cdot(f x \tilde q) + \tfrac{g^2}{2}\Delta\tilde q + r_t\,\tilde q,\qquad
           r_t(x) = \tfrac{g^2}{2}\Big(\sum_b a_b |s_b|^2 - \big|\sum_b a_b s_b\big|^2\Big)
                    + f d\Big(1 - \sum_b a_b\Big).

The reverse SDE :math:`dx = (f x - g^2 s_q)\,dt + g\,d\bar W` (run from t = 1 to 0; Anderson 1982, Song et al.
2021, eq. 6) has marginals :math:`\rho` with :math:`\partial_t\rho = -\nabla\cdot((f x - g^2 s_q)\rho) -
\tfrac{g^2}{2}\Delta\rho`; at :math:`\rho = \tilde q` (where :math:`s_q\tilde q = \nabla\tilde q`) the right side
equals :math:`-\nabla\cdot(f x\tilde q) + \tfrac{g^2}{2}\Delta\tilde q`: the guided SDE reproduces every term of
:math:`\tilde q`'s evolution except the source. Stepping backwards from t to t - h, :math:`\tilde q_{t-h} =
\tilde q_t - h\,\partial_t\tilde q_t`, so the transported density must be multiplied by :math:`\exp(-\int_{t-h}^t
r_s\,ds)`: by the Feynman-Kac formula, a particle carried by the guided SDE with log-weight

.. math::  \log w \mathrel{+}= -\int_{t-h}^{t} r_s(x_s)\,ds

has weighted law :math:`q_{t-h}` (normalised), and the mean of the unnormalised weights estimates
:math:`\int\tilde q_{t-h}`. For CFG (:math:`a_c = 1 + w`, :math:`a_u = -w`) the bracket is
:math:`\sum_b a_b |s_b - s_q|^2 = -w(1+w)|s_c - s_u|^2`, so the increment is
:math:`+\tfrac{g^2}{2} w(1+w)|s_c - s_u|^2\,h`: particles where the branches disagree gain weight. Skreta et al.
obtain corrector weights for products of experts by the same comparison of evolution equations; the form above, the
constant term for :math:`\sum_b a_b \ne 1` and the sign conventions are derived here, not copied.

Discretisation. Euler-Maruyama steps of the guided reverse SDE on the given time grid, the weight integral by the
left-point rule (the rate at the particles before each move), so no score is needed at the last time (where
:math:`\sigma = 0` leaves the eps parametrisation without one). Both are first order in h, so the weighted law at
t = 0 is :math:`\pi` up to O(h) and a Monte Carlo error. On single-Gaussian worlds :func:`smc_limit_law` gives the
exact N -> infinity law at any step count, so the time error and the Monte Carlo error are measured apart (the tests
and the ledger's L-FKC-EXACT give the numbers). At w = 7 on gauss1d the finite-N estimate is biased beyond its
standard error (heavy-tailed weights, not the time grid); :func:`smc_limit_law` with ``power=2`` gives the exact
second moment of the unresampled weights, whose growth shows why.

Start. The particles ``x`` at ``timesteps[0]`` must be draws of :math:`\mathcal N(0, \sigma_{t_0}^2 I)` (the
reverse process's usual start); their log-weights are :math:`\log\tilde q_{t_0}(x) - \log\mathcal N(x; 0,
\sigma_{t_0}^2 I)` (importance sampling, exact in law). The sampler knows :math:`\tilde q_{t_0}` only through its
score (a denoiser gives nothing else), so it uses :math:`\log\tilde q_{t_0}(x) - \log\tilde q_{t_0}(0) =
\int_0^1 x\cdot\tilde s_{t_0}(\tau x)\,d\tau` by 8-point Gauss-Legendre, with the 4-point value's difference
as an error estimate (:attr:`SMCResult.start_weight_error`, the largest over the particles; the unknown constant
:math:`\log\tilde q_{t_0}(0)` cancels in the normalised weights and is added back to the normaliser only when the
caller gives it, as :func:`smc_tilted` does). On an affine score (every Gaussian world) the rule is exact.

Resampling: systematic (Kitagawa 1996; Douc, Cappe & Moulines 2005 "Comparison of resampling
schemes for particle filtering") whenever the effective sample size :math:`(\sum w)^2/\sum w^2` falls below
:math:`N/2`, never at the last step (the run's particles keep their weights; the registered sampler :func:`fkc`
resamples them once more so that it returns equally weighted draws).

Standard errors. The weighted mean of :math:`\varphi` has two estimates of its Monte Carlo standard error:
``ess`` (:math:`\widehat{\operatorname{sd}}_W(\varphi)/\sqrt{\text{ESS}}`, blind to the duplication resampling
leaves) and ``lineage`` (Chan & Lai 2013, "A general theory of particle filters in hidden Markov models and some
applications", Ann. Statist. 41(6), section 4; Lee & Whiteley 2018, Biometrika 105(3): :math:`\sum_j
(\sum_{i: E_i = j} W_i(\varphi_i - \bar\varphi))^2` over the time-1 ancestors :math:`E_i`), which accounts for it but
degenerates when few ancestors survive. :attr:`SMCMoments.mean_se` etc. is the larger of the two. Both are
optimistic when the weights are heavy-tailed: on gauss1d at w = 3 and 7 (1e4 particles, 100 steps) the spread of 30
independent replicates was 1.6x to 2.3x the reported value, so calibrated checks should use independent replicates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from toy_models import AnalyticDenoiser, World, get_schedule
from toy_models._checks import as_int, as_real_tensor, as_scalar, check_generator, real_dtype_of
from toy_models.denoiser import Denoiser, predict_many
from toy_models.gaussian_mixture import Condition
from toy_models.schedules import Schedule

from .rules import Rule
from .rules._base import GuidedDenoiser
from .samplers import check_prediction, check_times, register_tilted_sampler, time_grid
from .tilted import NotNormalisableError, linear_terms, tilted_law

__all__ = ["SMCMoments", "SMCResult", "fkc", "smc_run", "smc_tilted", "systematic_resample", "fk_log_weight_rate",
           "smc_limit_law", "guided_terms"]

F64 = torch.float64
Tensor = torch.Tensor
#: resampling threshold as a fraction of N (the usual choice; Doucet & Johansen 2011, "A tutorial on particle
#: filtering and smoothing", section 3.5)
RESAMPLE_FRACTION = 0.5
#: Gauss-Legendre nodes of the start weights' ray integral (module docstring), and the coarser rule of the estimate
_RAY_NODES, _RAY_NODES_COARSE = 8, 4


@dataclass(frozen=True)
class SMCMoments:
    """Weighted moments of the particles at one time, with Monte Carlo standard errors (module docstring)."""

    t: float
    mean: Tensor  # [d]
    var: Tensor  # [d], the diagonal of the weighted covariance
    cov: Tensor  # [d, d]
    mean_se: Tensor  # [d], max of the ESS and lineage estimates
    var_se: Tensor  # [d]
    ess: float
    n_ancestors: int  # distinct start ancestors among the particles


@dataclass(frozen=True)
class SMCResult:
    """Output of :func:`smc_run` / :func:`smc_tilted`."""

    particles: Tensor  # [N, d] at the last time
    log_weights: Tensor  # [N], normalised (logsumexp = 0)
    moments: tuple[SMCMoments, ...]  # at the recorded times, in decreasing t; the last is the last time
    n_resamples: int
    ess: Tensor  # [steps + 1], before any resampling at that time
    log_weight_var: Tensor  # [steps + 1], variance of the log-weights, before any resampling
    log_normaliser: float  # estimate of log int prod_b p(x|b)^{a_b} dx, less log q~_{t_0}(0) unless it was given
    start_weight_error: float  # largest error estimate of a start log-weight (module docstring)
    evaluations: int  # batched calls of the base denoiser (each evaluates every branch at every particle)

    @property
    def final(self) -> SMCMoments:
        return self.moments[-1]


def systematic_resample(weights: Tensor, generator: torch.Generator) -> Tensor:
    r"""Indices ``[N]`` by systematic resampling: one uniform :math:`U`, points :math:`(U + i)/N`, each mapped to the
    first index whose cumulative normalised weight exceeds it. Unbiased (particle i is copied
    :math:`N W_i` times in expectation) with at most one copy of difference from :math:`N W_i`."""
    if not isinstance(weights, Tensor) or weights.ndim != 1 or weights.numel() == 0:
        raise ValueError("weights: expected a non-empty 1-D tensor")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
        raise ValueError("weights: must be finite, non-negative and not all zero")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    n = weights.numel()
    cum = torch.cumsum(weights.to(F64), 0)
    cum = cum / cum[-1]
    u = (torch.rand(1, dtype=F64, generator=generator) + torch.arange(n, dtype=F64)) / n
    return torch.searchsorted(cum, u, right=True).clamp_max(n - 1)


def fk_log_weight_rate(scores: Sequence[Tensor], weights: Sequence[float], f: float, g2: float,
                       guided: Tensor | None = None) -> Tensor:
    r""":math:`-r_t(x) = \tfrac{g^2}{2}(|\sum_b a_b s_b|^2 - \sum_b a_b |s_b|^2) - f d(1 - \sum_b a_b)`, ``[N]``: the
    rate at which a particle's log-weight grows per unit of reverse time (module docstring). ``scores``: the branch
    scores ``[N, d]`` each, ``weights`` the :math:`a_b`; ``guided``: :math:`\sum_b a_b s_b` if the caller already
    has it (the sampler does: it drives the move), else formed here."""
    if len(scores) != len(weights) or not scores:
        raise ValueError("scores: need one [N, d] score per weight")
    if guided is None:
        guided = sum(a * s for a, s in zip(weights, scores, strict=True))
    spread = sum(a * (s * s).sum(1) for a, s in zip(weights, scores, strict=True))
    d = scores[0].shape[1]
    return 0.5 * g2 * ((guided * guided).sum(1) - spread) - f * d * (1.0 - sum(weights))


def _moments(t: float, x: Tensor, log_w: Tensor, eve: Tensor) -> SMCMoments:
    x = x.to(F64)
    w = torch.softmax(log_w, 0)
    ess = float(1.0 / (w * w).sum())
    mean = w @ x
    dev = x - mean
    cov = (w[:, None] * dev).T @ dev
    sq = dev * dev
    var = cov.diagonal().clone()

    def se(phi: Tensor, centre: Tensor) -> Tensor:
        resid = phi - centre  # [N, d]
        by_ess = torch.sqrt((w[:, None] * resid * resid).sum(0) / ess)
        groups = torch.zeros(int(eve.max()) + 1, x.shape[1], dtype=F64)
        groups.index_add_(0, eve, w[:, None] * resid)
        by_lineage = torch.sqrt((groups * groups).sum(0))
        return torch.maximum(by_ess, by_lineage)

    return SMCMoments(t, mean, var, cov, se(x, mean), se(sq, var), ess, int(torch.unique(eve).numel()))


def guided_terms(denoiser: Denoiser, name: str = "denoiser"
                 ) -> tuple[Denoiser, tuple[Condition, ...], tuple[float, ...]]:
    r"""``(base, conditions, weights)`` of a guided denoiser whose rule is linear with fixed weights: the guided eps
    is :math:`\sum_b a_b \hat\varepsilon(x, t, c_b)` of ``base`` at every t (:func:`verify.tilted.linear_terms`).
    Refused (``ValueError`` naming ``name``): anything but a :class:`~verify.rules.GuidedDenoiser`, and the rules
    :func:`~verify.tilted.linear_terms` refuses (no fixed linear weights, re-noising, a weak model)."""
    if not isinstance(denoiser, GuidedDenoiser):
        raise ValueError(f"{name}: a sampler of the tilted target reads the branches of a guided denoiser "
                         f"(rules.get(name, ...).guide(base, conditions)); got {type(denoiser).__name__}")
    try:
        terms = linear_terms(denoiser.rule, denoiser.conditions)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: {str(err).split(': ', 1)[-1]}") from None
    return denoiser.denoiser, tuple(c for c, _ in terms), tuple(float(a) for _, a in terms)


class _Branches:
    """The branch scores of a guided denoiser, one batched base-model call per evaluation, counted."""

    def __init__(self, denoiser: Denoiser):
        self.base, self.conditions, self.weights = guided_terms(denoiser)
        self.calls = 0

    def scores(self, x: Tensor, t: float, sigma: float) -> tuple[list[Tensor], Tensor, Tensor]:
        """``(branch scores, guided score, guided eps)`` at ``(x, t)``, ``sigma`` the grid's sigma(t); each prediction
        checked as it arrives."""
        self.calls += 1
        eps = [check_prediction(e, f"eps of condition {c!r}", x, f"at t = {t:.6g} (evaluation {self.calls})")
               for e, c in zip(predict_many(self.base, x, t, list(self.conditions)), self.conditions, strict=True)]
        guided_eps = sum(a * e for a, e in zip(self.weights, eps, strict=True))
        scores = [-e / sigma for e in eps]
        return scores, -guided_eps / sigma, guided_eps


def _start_log_weights(branches: _Branches, x: Tensor, t: float, sigma: float) -> tuple[Tensor, float]:
    r"""Start log-weights :math:`\log\tilde q_{t}(x) - \log\tilde q_t(0) - \log\mathcal N(x; 0, \sigma^2 I)` up to
    the constant :math:`d\log(\sigma\sqrt{2\pi})` (module docstring), and the largest error estimate."""
    def ray(nodes: int) -> Tensor:
        tau, weight = np.polynomial.legendre.leggauss(nodes)
        total = torch.zeros(x.shape[0], dtype=F64)
        for node, wt in zip(0.5 * (tau + 1.0), 0.5 * weight, strict=True):
            total += float(wt) * (x * branches.scores(float(node) * x, t, sigma)[1]).sum(1).to(F64)
        return total

    fine, coarse = ray(_RAY_NODES), ray(_RAY_NODES_COARSE)
    d = x.shape[1]
    log_prior = -0.5 * (x.to(F64) ** 2).sum(1) / sigma**2 - d * math.log(sigma) - 0.5 * d * math.log(2 * math.pi)
    return fine - log_prior, float((fine - coarse).abs().max())


def smc_run(denoiser: Denoiser, x: Tensor, timesteps, *, generator: torch.Generator, record: Sequence[float] = (),
            corrector: bool = True, resample: bool = True, log_density_at_origin: float = 0.0,
            callback: Callable[[int, float, Tensor, Tensor], None] | None = None) -> SMCResult:
    r"""Particles whose weighted law at ``timesteps[-1]`` is the tilted target of the guided ``denoiser``'s rule
    (module docstring), with the weights and diagnostics.

    ``denoiser``: a guided denoiser of a linear rule (:func:`guided_terms`); its base model may be any denoiser.
    ``x``: ``[N, d]`` draws of :math:`\mathcal N(0, \sigma_{t_0}^2 I)` (computed in its dtype, the weights in
    float64). ``record``: times strictly inside the grid at which to keep the weighted moments (each the nearest grid
    time; the last time is always kept, last). ``corrector=False`` keeps the start weights and never resamples: the
    particles then follow the plain guided SDE, whose law is the rule's sampled law, not :math:`\pi`.
    ``resample=False`` never resamples (plain sequential importance sampling, whose N / ESS tends to the exact
    second moment of :func:`smc_limit_law` with ``power=2``). ``log_density_at_origin``: :math:`\log\tilde
    q_{t_0}(0)` if known (it only shifts the normaliser).
    ``callback(i, t, x, eps)`` after each move: the time reached, the (weighted) particles, the guided eps used."""
    branches = _Branches(denoiser)
    check_generator(generator, optional=False)
    x = as_real_tensor(x, "x", real_dtype_of(x, F64))
    if x.ndim != 2 or x.shape[1] != denoiser.dim or x.shape[0] < 2:
        raise ValueError(f"x: expected [N, {denoiser.dim}] with N >= 2, got {list(x.shape)}")
    for flag, value in (("corrector", corrector), ("resample", resample)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag}: expected a bool, got {type(value).__name__}")
    if isinstance(record, (str, bytes)) or not isinstance(record, Sequence):
        raise TypeError(f"record: expected a sequence of times, got {type(record).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable, got {type(callback).__name__}")
    origin = as_scalar(log_density_at_origin, "log_density_at_origin")
    grid = check_times(timesteps, denoiser.schedule)
    times = grid.times
    record_times = [as_scalar(r, "record") for r in record]
    if any(not times[-1] < r < times[0] for r in record_times):
        raise ValueError(f"record: times must lie strictly inside ({times[-1]:g}, {times[0]:g}), got {record_times}")
    steps = grid.steps
    record_steps = sorted({min(range(steps + 1), key=lambda k, r=r: abs(times[k] - r)) for r in record_times}
                          - {0, steps})
    n = x.shape[0]
    log_w, start_error = _start_log_weights(branches, x, times[0], grid.sigma[0])
    log_z = origin  # running log of the product of mean weights at past resampling events
    eve = torch.arange(n)
    ess_trace = torch.empty(steps + 1, dtype=F64)
    var_trace = torch.empty(steps + 1, dtype=F64)
    moments = []
    n_resamples = 0
    for k in range(steps + 1):
        w = torch.softmax(log_w, 0)
        ess_trace[k] = 1.0 / (w * w).sum()
        var_trace[k] = log_w.var()
        if k in record_steps or k == steps:
            moments.append(_moments(times[k], x, log_w, eve))
        if k == steps:
            break
        if corrector and resample and float(ess_trace[k]) < RESAMPLE_FRACTION * n:
            log_z += float(torch.logsumexp(log_w, 0)) - math.log(n)
            idx = systematic_resample(w, generator)
            x, eve = x[idx], eve[idx]
            log_w = torch.zeros(n, dtype=F64)
            n_resamples += 1
        t, h = times[k], times[k] - times[k + 1]
        f, g2 = float(grid.schedule.drift(t)), float(grid.schedule.diffusion_squared(t))
        scores, guided, eps = branches.scores(x, t, grid.sigma[k])
        if corrector:  # left-point rule for the integral of -r over [t_{k+1}, t_k]
            log_w = log_w + h * fk_log_weight_rate(scores, branches.weights, f, g2, guided).to(F64)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x = x - h * (f * x - g2 * guided) + math.sqrt(g2 * h) * noise
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"x: the state overflows {x.dtype} at step {k + 1} of {steps} (t = {times[k + 1]:.6g})")
        if callback is not None:
            callback(k, times[k + 1], x, eps)
    log_z += float(torch.logsumexp(log_w, 0)) - math.log(n)
    return SMCResult(x, log_w - torch.logsumexp(log_w, 0), tuple(moments), n_resamples, ess_trace, var_trace,
                     log_z, start_error, branches.calls)


@register_tilted_sampler("fkc", limit="particles -> infinity and steps -> infinity (first order in the step)")
def fkc(denoiser: Denoiser, x: Tensor, timesteps, *, condition: Condition = None, eta: float = 0.0,
        generator: torch.Generator | None = None, noise: Tensor | None = None,
        callback: Callable[[int, float, Tensor, Tensor], None] | None = None) -> Tensor:
    r"""SMC with Feynman-Kac corrector weights (module docstring; Skreta et al. 2025), as a registered sampler:
    :func:`smc_run` followed by one systematic resampling, so the ``[N, d]`` rows returned are equally weighted
    draws whose law tends to the tilted target :math:`\pi` of the guided ``denoiser``'s rule as N and the number of
    steps grow. ``x``: draws of :math:`\mathcal N(0, \sigma_{t_0}^2 I)`. ``generator`` is required (the moves and
    the resampling draw from it); ``noise`` is refused (resampling needs uniforms of its own); ``eta`` is ignored;
    ``condition`` must be ``None`` (the guided denoiser carries its conditions). For the weights, the effective
    sample size and the log-weight variance use :func:`smc_run`."""
    if noise is not None:
        raise ValueError("noise: fkc draws its moves and its resampling uniforms from generator; pass generator")
    if condition is not None:
        raise ValueError("condition: the guided denoiser carries its branch conditions; pass condition=None")
    check_generator(generator, optional=False)
    run = smc_run(denoiser, x, timesteps, generator=generator, callback=callback)
    return run.particles[systematic_resample(torch.exp(run.log_weights), generator)]


def smc_tilted(world: World, rule: Rule, conditions: Mapping[str, Condition] | Condition = None, *,
               n_particles: int = 10_000, n_steps: int = 100, schedule: str | Schedule = "vp-linear",
               record: Sequence[float] = (), corrector: bool = True, resample: bool = True, seed: int = 0
               ) -> SMCResult:
    r""":func:`smc_run` on the exact denoiser of ``world`` guided by ``rule``: ``n_particles`` start draws of
    :math:`\mathcal N(0, \sigma_1^2 I)`, ``n_steps`` uniform steps from t = 1 to 0, seed ``seed`` (one generator
    for the start, the moves and the resampling). The normaliser estimate includes :math:`\log\tilde q_1(0)` (from
    the exact noised laws). Refused: a ``world`` that is not a :class:`toy_models.World`, a target that is not
    certified normalisable (``ValueError`` naming ``rule``), ``n_particles`` below 2, ``n_steps`` below 1, a negative
    ``seed``, and the refusals of :func:`smc_run`."""
    if not isinstance(world, World):
        raise TypeError(f"world: expected a World, got {type(world).__name__}")
    n = as_int(n_particles, "n_particles", 2)
    n_steps = as_int(n_steps, "n_steps", 1)
    seed = as_int(seed, "seed", 0)
    sched = get_schedule(schedule)
    terms = linear_terms(rule, conditions)
    try:
        tilted_law(world, rule, conditions).check_normalisable()
    except NotNormalisableError as err:
        raise ValueError(f"rule: {rule.describe()} on {world.name}: {str(err).split(': ', 1)[-1]}") from None
    base = AnalyticDenoiser(world, sched)
    origin = sum(a * float(base.noised_law(1.0, c).log_prob(torch.zeros(1, world.dim, dtype=F64))[0])
                 for c, a in terms)
    gen = torch.Generator().manual_seed(seed)
    x = float(sched.sigma(1.0)) * torch.randn(n, world.dim, dtype=F64, generator=gen)
    return smc_run(rule.guide(base, conditions), x, time_grid(n_steps), generator=gen, record=record,
                   corrector=corrector, resample=resample, log_density_at_origin=origin)


def _times_exp_quadratic(log_z: float, mean: Tensor, cov: Tensor, quad: Tensor, lin: Tensor, const: float
                         ) -> tuple[float, Tensor, Tensor]:
    r"""The measure :math:`e^{\log Z}\mathcal N(m, C)` times :math:`\exp(-\tfrac12 x^\top R x + \rho^\top x + k)`,
    as ``(log Z', m', C')``: precisions add, :math:`\Lambda' = C^{-1} + R`, :math:`\eta' = C^{-1}m + \rho`, and
    :math:`\log Z' = \log Z + k + \tfrac12(\log\det C' - \log\det C) + \tfrac12(\eta'^\top C'\eta' -
    m^\top C^{-1} m)`. Refused when :math:`\Lambda'` is not positive definite (the weights are not integrable)."""
    prec = torch.linalg.inv(cov)
    eta = prec @ mean
    new_prec = 0.5 * (prec + quad + (prec + quad).T)
    if float(torch.linalg.eigvalsh(new_prec).min()) <= 0.0:
        raise NotNormalisableError("n_steps: the weights are not integrable against the particles' law at this "
                                   "step (their moment of this power is infinite)")
    new_cov = torch.linalg.inv(new_prec)
    new_eta = eta + lin
    new_mean = new_cov @ new_eta
    log_z = (log_z + const + 0.5 * float(torch.logdet(new_cov) - torch.logdet(cov))
             + 0.5 * float(new_eta @ new_mean - eta @ mean))
    return log_z, new_mean, new_cov


def smc_limit_law(world: World, rule: Rule, conditions: Mapping[str, Condition] | Condition = None, *,
                  n_steps: int = 100, schedule: str | Schedule = "vp-linear", power: int = 1
                  ) -> tuple[tuple[float, Tensor, Tensor], ...]:
    r"""The law :func:`smc_tilted` samples as :math:`N\to\infty` at ``n_steps``, exactly, when every branch law is a
    single Gaussian: ``((log Z_k, mean_k, cov_k) for k = 0..n_steps)`` on the grid :math:`t_k = 1 - k/n`, where
    :math:`Z_k\,\mathcal N(m_k, C_k)` is the weighted particle measure at :math:`t_k` (its total mass is what the
    mean unnormalised weight estimates; :attr:`SMCResult.log_normaliser` at k = n).

    Why this is the limit: the weighted empirical measure of an SMC sampler converges, as the number of particles
    grows, to the discrete-time Feynman-Kac measure :math:`\gamma_{k+1}(dy) = \int\gamma_k(dx)\,G_k(x)\,K_k(x, dy)`
    of its Markov kernels and weight factors, resampling or not (Del Moral 2004, "Feynman-Kac formulae", chapter 7;
    resampling adds variance, not bias in the limit). Here :math:`\gamma_0(dx) = \tilde q_1(x)\,dx` (the start
    weights), :math:`G_k = \exp(h(-r_{t_k}))` (the left-point weight, :math:`-r` a quadratic in x) and :math:`K_k`
    the Euler-Maruyama step :math:`y = ((1 - h f)I - h g^2 A_k)x + h g^2 n_k + \sqrt{g^2 h}\,\xi` with the guided
    score :math:`\sum_b a_b s_b = -A_k x + n_k` (affine on single Gaussians). Each operation maps an unnormalised
    Gaussian to one: the recursion is exact up to rounding. Comparing :func:`smc_tilted` with this separates the
    Monte Carlo error (the difference) from the time discretisation (this against :math:`\pi`).

    ``power=p`` gives instead the p-th moment of the unresampled weights (``p = 2``: :math:`\gamma^{(2)}_0(dx) =
    \tilde q_1(x)^2/\mathcal N(x; 0, \sigma_1^2 I)\,dx` and :math:`G_k^2`, so that :math:`Z^{(2)}_k/Z_k^2 = 1 +
    \chi^2` of the weighted law from the proposal path's, the factor by which importance sampling without
    resampling up to :math:`t_k` loses effective sample size (N / ESS tends to it); for general p,
    :math:`\gamma^{(p)}_0 = \tilde q_1^p/\mathcal N^{p-1}` and :math:`G_k^p`). :class:`NotNormalisableError` where
    that moment is infinite, naming the step. Refused: branch laws that are not single Gaussians (``ValueError``
    naming ``world``), ``power`` not an int >= 1, the refusals of :func:`smc_tilted`."""
    if not isinstance(world, World):
        raise TypeError(f"world: expected a World, got {type(world).__name__}")
    n_steps = as_int(n_steps, "n_steps", 1)
    power = as_int(power, "power", 1)
    sched = get_schedule(schedule)
    terms = linear_terms(rule, conditions)
    law0 = tilted_law(world, rule, conditions)
    if not law0.is_gaussian():
        raise ValueError(f"world: {world.name}: the exact limit needs single-Gaussian branch laws")
    try:
        law0.check_normalisable()
    except NotNormalisableError as err:
        raise ValueError(f"rule: {rule.describe()} on {world.name}: {str(err).split(': ', 1)[-1]}") from None
    laws = [world.law(c).to(F64) for c, _ in terms]
    a = [float(e) for _, e in terms]
    d = laws[0].dim
    eye = torch.eye(d, dtype=F64)
    grid = time_grid(n_steps)

    def score_terms(k: int) -> tuple[list[Tensor], list[Tensor]]:
        """Branch scores s_b(x) = -P_b x + n_b at grid time k: ``([P_b], [n_b])``."""
        alpha, sigma = (float(v) for v in sched.alpha_sigma(grid[k]))
        precs, shifts = [], []
        for law in laws:
            prec = torch.linalg.inv(alpha**2 * law.covariances[0] + sigma**2 * eye)
            precs.append(prec)
            shifts.append(prec @ (alpha * law.means[0]))
        return precs, shifts

    def weight_factor(k: int, h: float) -> tuple[Tensor, Tensor, float]:
        r"""``(R, rho, c)`` with :math:`p\,h(-r_{t_k}(x)) = -\tfrac12 x^\top R x + \rho^\top x + c`."""
        precs, shifts = score_terms(k)
        f, g2 = float(sched.drift(grid[k])), float(sched.diffusion_squared(grid[k]))
        big_a = sum(e * p for e, p in zip(a, precs, strict=True))
        n_q = sum(e * s for e, s in zip(a, shifts, strict=True))
        quad = -g2 * (big_a @ big_a - sum(e * p @ p for e, p in zip(a, precs, strict=True)))
        lin = -g2 * (big_a @ n_q - sum(e * p @ s for e, p, s in zip(a, precs, shifts, strict=True)))
        const = 0.5 * g2 * (float(n_q @ n_q) - sum(e * float(s @ s) for e, s in zip(a, shifts, strict=True)))
        const -= f * d * (1.0 - sum(a))
        return power * h * quad, power * h * lin, power * h * const

    # gamma_0 = q~_1^p / N(0, sigma_1^2 I)^(p - 1), q~_1 = prod_b N(x; alpha mu_b, alpha^2 Sigma_b + sigma^2 I)^{a_b}:
    # precisions and shifts add
    precs, shifts = score_terms(0)
    sigma_1 = float(sched.sigma(grid[0]))
    prec_1 = power * sum(e * p for e, p in zip(a, precs, strict=True)) - (power - 1) * eye / sigma_1**2
    eta_1 = power * sum(e * s for e, s in zip(a, shifts, strict=True))
    if float(torch.linalg.eigvalsh(0.5 * (prec_1 + prec_1.T)).min()) <= 0.0:
        raise NotNormalisableError("power: the start weights' moment of this power is infinite")
    cov = torch.linalg.inv(0.5 * (prec_1 + prec_1.T))
    mean = cov @ eta_1
    log_z = 0.5 * float(torch.logdet(2 * math.pi * cov)) + 0.5 * float(eta_1 @ mean)
    for e, p, s in zip(a, precs, shifts, strict=True):
        centre = torch.linalg.solve(p, s)
        log_z += power * e * (0.5 * float(torch.logdet(p / (2 * math.pi))) - 0.5 * float(centre @ s))
    log_z += (power - 1) * (d * math.log(sigma_1) + 0.5 * d * math.log(2 * math.pi))
    out = [(log_z, mean, cov)]
    for k in range(n_steps):
        h = float(grid[k] - grid[k + 1])
        try:
            log_z, mean, cov = _times_exp_quadratic(log_z, mean, cov, *weight_factor(k, h))
        except NotNormalisableError as err:
            raise NotNormalisableError(f"{err} (step {k + 1} of {n_steps}, t = {float(grid[k]):.4g})") from None
        precs, shifts = score_terms(k)
        f, g2 = float(sched.drift(grid[k])), float(sched.diffusion_squared(grid[k]))
        big_a = sum(e * p for e, p in zip(a, precs, strict=True))
        n_q = sum(e * s for e, s in zip(a, shifts, strict=True))
        step = (1.0 - h * f) * eye - h * g2 * big_a
        mean = step @ mean + h * g2 * n_q
        cov = step @ cov @ step.T + g2 * h * eye
        cov = 0.5 * (cov + cov.T)
        out.append((log_z, mean, cov))
    return tuple(out)
