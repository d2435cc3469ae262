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

Discretisation. Euler-Maruyama steps of the guided reverse SDE on a uniform grid of ``n_steps`` steps from t = 1 to
t = 0, the weight integral by the trapezoid rule (both endpoints are evaluated anyway: the scores at the new point
drive the next step). Both are first order in h, so the weighted law at t = 0 is :math:`\pi` up to O(h) and a Monte
Carlo error. On single-Gaussian worlds :func:`smc_limit_law` gives the exact N -> infinity law at any step count:
on gauss1d its bias against :math:`\pi` is first order (mean bias 4.4e-3, 2.2e-3, 1.1e-3 at 200, 400, 800 steps for
w = 1; fitted order 1.00-1.02 for w = 1, 3, 7), and the sampler agrees with it at w = 1, 3. At w = 7 the finite-N
estimate is biased beyond its standard error (t = 0 mean +0.03 at N = 1e5, +0.007 at 1e6): heavy-tailed weights,
not the time grid. Start: :math:`x_1 \sim \mathcal N(0,
\sigma_1^2 I)` with log-weights :math:`\log\tilde q_1(x) - \log\mathcal N(x; 0, \sigma_1^2 I)` (importance
sampling, exact). Resampling: systematic (Kitagawa 1996; Douc, Cappe & Moulines 2005 "Comparison of resampling
schemes for particle filtering") whenever the effective sample size :math:`(\sum w)^2/\sum w^2` falls below
:math:`N/2`, never at the last step (the returned particles keep their weights).

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
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from toy_models import World, get_schedule
from toy_models._checks import as_scalar
from toy_models.gaussian_mixture import Condition
from toy_models.schedules import Schedule

from .rules import Rule
from .tilted import NotNormalisableError, linear_terms, tilted_law

__all__ = ["SMCMoments", "SMCResult", "smc_tilted", "systematic_resample", "fk_log_weight_rate", "smc_limit_law"]

F64 = torch.float64
#: resampling threshold as a fraction of N (the usual choice; Doucet & Johansen 2011, "A tutorial on particle
#: filtering and smoothing", section 3.5)
RESAMPLE_FRACTION = 0.5


@dataclass(frozen=True)
class SMCMoments:
    """Weighted moments of the particles at one time, with Monte Carlo standard errors (module docstring)."""

    t: float
    mean: torch.Tensor  # [d]
    var: torch.Tensor  # [d], the diagonal of the weighted covariance
    cov: torch.Tensor  # [d, d]
    mean_se: torch.Tensor  # [d], max of the ESS and lineage estimates
    var_se: torch.Tensor  # [d]
    ess: float
    n_ancestors: int  # distinct time-1 ancestors among the particles


@dataclass(frozen=True)
class SMCResult:
    """Output of :func:`smc_tilted`."""

    particles: torch.Tensor  # [N, d] at t = 0
    log_weights: torch.Tensor  # [N], normalised (logsumexp = 0)
    moments: tuple[SMCMoments, ...]  # at the recorded times, in decreasing t; the last is t = 0
    n_resamples: int
    ess: torch.Tensor  # [n_steps + 1], before any resampling at that time
    log_weight_var: torch.Tensor  # [n_steps + 1], variance of the log-weights, before any resampling
    log_normaliser: float  # estimate of log int prod_b p(x|b)^{a_b} dx (the target's normaliser)

    @property
    def final(self) -> SMCMoments:
        return self.moments[-1]


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}: must be an int >= {minimum}, got {value!r}")
    return int(value)


def systematic_resample(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    r"""Indices ``[N]`` by systematic resampling: one uniform :math:`U`, points :math:`(U + i)/N`, each mapped to the
    first index whose cumulative normalised weight exceeds it. Unbiased (particle i is copied
    :math:`N W_i` times in expectation) with at most one copy of difference from :math:`N W_i`."""
    if not isinstance(weights, torch.Tensor) or weights.ndim != 1 or weights.numel() == 0:
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


def fk_log_weight_rate(scores: Sequence[torch.Tensor], weights: Sequence[float], f: float, g2: float
                       ) -> torch.Tensor:
    r""":math:`-r_t(x) = \tfrac{g^2}{2}(|\sum_b a_b s_b|^2 - \sum_b a_b |s_b|^2) - f d(1 - \sum_b a_b)`, ``[N]``: the
    rate at which a particle's log-weight grows per unit of reverse time (module docstring). ``scores``: the branch
    scores ``[N, d]`` each, ``weights`` the :math:`a_b`."""
    if len(scores) != len(weights) or not scores:
        raise ValueError("scores: need one [N, d] score per weight")
    guided = sum(a * s for a, s in zip(weights, scores, strict=True))
    spread = sum(a * (s * s).sum(1) for a, s in zip(weights, scores, strict=True))
    d = scores[0].shape[1]
    return 0.5 * g2 * ((guided * guided).sum(1) - spread) - f * d * (1.0 - sum(weights))


def _moments(t: float, x: torch.Tensor, log_w: torch.Tensor, eve: torch.Tensor) -> SMCMoments:
    w = torch.softmax(log_w, 0)
    ess = float(1.0 / (w * w).sum())
    mean = w @ x
    dev = x - mean
    cov = (w[:, None] * dev).T @ dev
    sq = dev * dev
    var = cov.diagonal().clone()

    def se(phi: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        resid = phi - centre  # [N, d]
        by_ess = torch.sqrt((w[:, None] * resid * resid).sum(0) / ess)
        groups = torch.zeros(int(eve.max()) + 1, x.shape[1], dtype=F64)
        groups.index_add_(0, eve, w[:, None] * resid)
        by_lineage = torch.sqrt((groups * groups).sum(0))
        return torch.maximum(by_ess, by_lineage)

    return SMCMoments(t, mean, var, cov, se(x, mean), se(sq, var), ess, int(torch.unique(eve).numel()))


def smc_tilted(world: World, rule: Rule, conditions: Mapping[str, Condition] | Condition = None, *,
               n_particles: int = 10_000, n_steps: int = 100, schedule: str | Schedule = "vp-linear",
               record: Sequence[float] = (), corrector: bool = True, seed: int = 0) -> SMCResult:
    r"""Particles whose weighted law at t = 0 is the tilted target of ``rule`` on ``world`` (module docstring).

    ``record``: times in (0, 1) at which to keep the weighted moments (each rounded to the nearest grid time; t = 0
    is always kept, last). ``corrector=False`` leaves the weights at their initial importance weights and never
    resamples: the particles then follow the plain guided SDE, whose final law is the rule's sampled law, not
    :math:`\pi`. Refused: a rule without fixed linear weights (:func:`verify.tilted.linear_terms`), a target that
    is not certified normalisable (``ValueError`` naming ``rule``), ``n_particles`` below 2, ``n_steps`` below 1,
    a negative ``seed``, recorded times outside (0, 1)."""
    if not isinstance(world, World):
        raise TypeError(f"world: expected a World, got {type(world).__name__}")
    n = _check_int(n_particles, "n_particles", 2)
    n_steps = _check_int(n_steps, "n_steps", 1)
    seed = _check_int(seed, "seed", 0)
    if not isinstance(corrector, bool):
        raise TypeError(f"corrector: expected a bool, got {type(corrector).__name__}")
    if isinstance(record, (str, bytes)) or not isinstance(record, Sequence):
        raise TypeError(f"record: expected a sequence of times, got {type(record).__name__}")
    record_times = [as_scalar(r, "record") for r in record]
    if any(not 0.0 < r < 1.0 for r in record_times):
        raise ValueError(f"record: times must lie in (0, 1), got {record_times}")
    sched = get_schedule(schedule)
    terms = linear_terms(rule, conditions)
    try:
        tilted_law(world, rule, conditions).check_normalisable()
    except NotNormalisableError as err:
        raise ValueError(f"rule: {rule.describe()} on {world.name}: {str(err).split(': ', 1)[-1]}") from None
    laws = [world.law(c).to(F64) for c, _ in terms]
    a = [float(e) for _, e in terms]
    d = laws[0].dim
    grid = torch.linspace(1.0, 0.0, n_steps + 1, dtype=F64)
    record_steps = sorted({int(round((1.0 - r) * n_steps)) for r in record_times} - {0, n_steps})

    def evaluate(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """``(log q~_t(x), guided score, branch scores)`` at grid time k."""
        alpha, sigma = (float(v) for v in sched.alpha_sigma(grid[k]))
        pairs = [law.noised(alpha, sigma).log_prob_and_score(x) for law in laws]
        log_q = sum(e * lp for e, (lp, _) in zip(a, pairs, strict=True))
        scores = [s for _, s in pairs]
        return log_q, sum(e * s for e, s in zip(a, scores, strict=True)), scores

    def rate(scores: list[torch.Tensor], k: int) -> torch.Tensor:
        tk = grid[k]
        return fk_log_weight_rate(scores, a, float(sched.drift(tk)), float(sched.diffusion_squared(tk)))

    gen = torch.Generator().manual_seed(seed)
    sigma_1 = float(sched.sigma(grid[0]))
    x = sigma_1 * torch.randn(n, d, dtype=F64, generator=gen)
    log_q, guided, scores = evaluate(x, 0)
    log_prior = -0.5 * (x * x).sum(1) / sigma_1**2 - d * math.log(sigma_1) - 0.5 * d * math.log(2 * math.pi)
    log_w = log_q - log_prior
    log_z = 0.0  # running log of the product of mean weights at past resampling events
    eve = torch.arange(n)
    ess_trace = torch.empty(n_steps + 1, dtype=F64)
    var_trace = torch.empty(n_steps + 1, dtype=F64)
    moments = []
    n_resamples = 0
    current_rate = rate(scores, 0)
    for k in range(n_steps + 1):
        w = torch.softmax(log_w, 0)
        ess_trace[k] = 1.0 / (w * w).sum()
        var_trace[k] = log_w.var()
        if k in record_steps or k == n_steps:
            moments.append(_moments(float(grid[k]), x, log_w, eve))
        if k == n_steps:
            break
        if corrector and float(ess_trace[k]) < RESAMPLE_FRACTION * n:
            log_z += float(torch.logsumexp(log_w, 0)) - math.log(n)
            idx = systematic_resample(w, gen)
            x, guided, current_rate, eve = x[idx], guided[idx], current_rate[idx], eve[idx]
            log_w = torch.zeros(n, dtype=F64)
            n_resamples += 1
        tk = grid[k]
        h = float(grid[k] - grid[k + 1])
        f, g2 = float(sched.drift(tk)), float(sched.diffusion_squared(tk))
        noise = torch.randn(n, d, dtype=F64, generator=gen)
        x = x - h * (f * x - g2 * guided) + math.sqrt(g2 * h) * noise
        _, guided, scores = evaluate(x, k + 1)
        new_rate = rate(scores, k + 1)
        if corrector:
            # trapezoid rule for the integral of -r over [t_{k+1}, t_k]
            log_w = log_w + 0.5 * h * (current_rate + new_rate)
        current_rate = new_rate
    log_z += float(torch.logsumexp(log_w, 0)) - math.log(n)
    return SMCResult(x, log_w - torch.logsumexp(log_w, 0), tuple(moments), n_resamples, ess_trace, var_trace,
                     log_z)


def _times_exp_quadratic(log_z: float, mean: torch.Tensor, cov: torch.Tensor, quad: torch.Tensor,
                         lin: torch.Tensor, const: float) -> tuple[float, torch.Tensor, torch.Tensor]:
    r"""The measure :math:`e^{\log Z}\mathcal N(m, C)` times :math:`\exp(-\tfrac12 x^\top R x + \rho^\top x + k)`,
    as ``(log Z', m', C')``: precisions add, :math:`\Lambda' = C^{-1} + R`, :math:`\eta' = C^{-1}m + \rho`, and
    :math:`\log Z' = \log Z + k + \tfrac12(\log\det C' - \log\det C) + \tfrac12(\eta'^\top C'\eta' -
    m^\top C^{-1} m)`. Refused when :math:`\Lambda'` is not positive definite (the weights are not integrable)."""
    prec = torch.linalg.inv(cov)
    eta = prec @ mean
    new_prec = 0.5 * (prec + quad + (prec + quad).T)
    if float(torch.linalg.eigvalsh(new_prec).min()) <= 0.0:
        raise ValueError("n_steps: the discrete weights are not integrable at this step size")
    new_cov = torch.linalg.inv(new_prec)
    new_eta = eta + lin
    new_mean = new_cov @ new_eta
    log_z = (log_z + const + 0.5 * float(torch.logdet(new_cov) - torch.logdet(cov))
             + 0.5 * float(new_eta @ new_mean - eta @ mean))
    return log_z, new_mean, new_cov


def smc_limit_law(world: World, rule: Rule, conditions: Mapping[str, Condition] | Condition = None, *,
                  n_steps: int = 100, schedule: str | Schedule = "vp-linear"
                  ) -> tuple[tuple[float, torch.Tensor, torch.Tensor], ...]:
    r"""The law :func:`smc_tilted` samples as :math:`N\to\infty` at ``n_steps``, exactly, when every branch law is a
    single Gaussian: ``((log Z_k, mean_k, cov_k) for k = 0..n_steps)`` on the grid :math:`t_k = 1 - k/n`, where
    :math:`Z_k\,\mathcal N(m_k, C_k)` is the weighted particle measure at :math:`t_k` (its total mass is what the
    mean unnormalised weight estimates; :attr:`SMCResult.log_normaliser` at k = n).

    Why this is the limit: the weighted empirical measure of an SMC sampler converges, as the number of particles
    grows, to the discrete-time Feynman-Kac measure :math:`\gamma_{k+1}(dy) = \int\gamma_k(dx)\,G_k(x)\,K_k(x, dy)
    \,G'_k(y)` of its Markov kernels and weight factors, resampling or not (Del Moral 2004, "Feynman-Kac formulae",
    chapter 7; resampling adds variance, not bias in the limit). Here :math:`\gamma_0 = \tilde q_1` (the initial
    importance weights), :math:`K_k` is the Euler-Maruyama step :math:`y = ((1 - h f)I - h g^2 A_k)x + h g^2 n_k +
    \sqrt{g^2 h}\,\xi` with the guided score :math:`\sum_b a_b s_b = -A_k x + n_k` (linear on single Gaussians),
    and :math:`G_k = \exp(\tfrac h2 (-r_{t_k}))`, :math:`G'_k = \exp(\tfrac h2(-r_{t_{k+1}}))` the two trapezoid
    halves, :math:`-r` a quadratic in x. Each operation maps an unnormalised Gaussian to one: the recursion is
    exact up to rounding. Comparing :func:`smc_tilted` with this separates the Monte Carlo error (the difference)
    from the time discretisation (this against :math:`\pi`). Refused: branch laws that are not single Gaussians
    (``ValueError`` naming ``world``), the refusals of :func:`smc_tilted`."""
    if not isinstance(world, World):
        raise TypeError(f"world: expected a World, got {type(world).__name__}")
    n_steps = _check_int(n_steps, "n_steps", 1)
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
    grid = torch.linspace(1.0, 0.0, n_steps + 1, dtype=F64)

    def score_terms(k: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Branch scores s_b(x) = -P_b x + n_b at grid time k: ``([P_b], [n_b])``."""
        alpha, sigma = (float(v) for v in sched.alpha_sigma(grid[k]))
        precs, shifts = [], []
        for law in laws:
            prec = torch.linalg.inv(alpha**2 * law.covariances[0] + sigma**2 * eye)
            precs.append(prec)
            shifts.append(prec @ (alpha * law.means[0]))
        return precs, shifts

    def half_weight(k: int, h: float) -> tuple[torch.Tensor, torch.Tensor, float]:
        r"""``(R, rho, c)`` with :math:`\tfrac h2(-r_{t_k}(x)) = -\tfrac12 x^\top R x + \rho^\top x + c`."""
        precs, shifts = score_terms(k)
        f, g2 = float(sched.drift(grid[k])), float(sched.diffusion_squared(grid[k]))
        big_a = sum(e * p for e, p in zip(a, precs, strict=True))
        n_q = sum(e * s for e, s in zip(a, shifts, strict=True))
        quad = -g2 * (big_a @ big_a - sum(e * p @ p for e, p in zip(a, precs, strict=True)))
        lin = -g2 * (big_a @ n_q - sum(e * p @ s for e, p, s in zip(a, precs, shifts, strict=True)))
        const = 0.5 * g2 * (float(n_q @ n_q) - sum(e * float(s @ s) for e, s in zip(a, shifts, strict=True)))
        const -= f * d * (1.0 - sum(a))
        return 0.5 * h * quad, 0.5 * h * lin, 0.5 * h * const

    # gamma_0 = q~_1 = prod_b N(x; alpha mu_b, alpha^2 Sigma_b + sigma^2 I)^{a_b}: precisions and shifts add
    precs, shifts = score_terms(0)
    prec_1 = sum(e * p for e, p in zip(a, precs, strict=True))
    eta_1 = sum(e * s for e, s in zip(a, shifts, strict=True))
    cov = torch.linalg.inv(0.5 * (prec_1 + prec_1.T))
    mean = cov @ eta_1
    log_z = 0.5 * float(torch.logdet(2 * math.pi * cov)) + 0.5 * float(eta_1 @ mean)
    for e, p, s in zip(a, precs, shifts, strict=True):
        centre = torch.linalg.solve(p, s)
        log_z += e * (0.5 * float(torch.logdet(p / (2 * math.pi))) - 0.5 * float(centre @ s))
    out = [(log_z, mean, cov)]
    for k in range(n_steps):
        h = float(grid[k] - grid[k + 1])
        log_z, mean, cov = _times_exp_quadratic(log_z, mean, cov, *half_weight(k, h))
        precs, shifts = score_terms(k)
        f, g2 = float(sched.drift(grid[k])), float(sched.diffusion_squared(grid[k]))
        big_a = sum(e * p for e, p in zip(a, precs, strict=True))
        n_q = sum(e * s for e, s in zip(a, shifts, strict=True))
        step = (1.0 - h * f) * eye - h * g2 * big_a
        mean = step @ mean + h * g2 * n_q
        cov = step @ cov @ step.T + g2 * h * eye
        log_z, mean, cov = _times_exp_quadratic(log_z, mean, cov, *half_weight(k + 1, h))
        out.append((log_z, mean, cov))
    return tuple(out)
