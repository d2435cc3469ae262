r"""A Markov chain Monte Carlo reference for the tilted target :math:`\pi(x) \propto \prod_b p(x \mid b)^{a_b}`.

:mod:`verify.tilted` gives :math:`\pi`'s moments by closed form, quadrature (d <= 2) or importance sampling; this
module gives an independent route that needs nothing but :math:`\log\tilde\pi` and its gradient: the
Metropolis-adjusted Langevin algorithm (MALA; Roberts & Tweedie 1996, "Exponential convergence of Langevin
distributions and their discrete approximations", Bernoulli 2(4), eqs. 2.2-2.3 in their notation). From :math:`x`
it proposes

.. math::  y = x + h\,\nabla\log\tilde\pi(x) + \sqrt{2h}\,\xi, \qquad \xi \sim \mathcal N(0, I),

a step of the Langevin diffusion :math:`dX = \nabla\log\pi\,dt + \sqrt 2\,dW` (whose invariant law is :math:`\pi`),
and accepts with probability

.. math::  \min\Big(1,\ \frac{\tilde\pi(y)\, q(x \mid y)}{\tilde\pi(x)\, q(y \mid x)}\Big), \qquad
           \log q(y \mid x) = -\frac{|y - x - h\nabla\log\tilde\pi(x)|^2}{4h} + \text{const},

so :math:`\pi` is invariant exactly, whatever :math:`h` (the discretisation error of the Langevin step is removed by
the Metropolis-Hastings correction). The normaliser cancels: :math:`\tilde\pi` is enough.

Step size. Roberts & Rosenthal 1998 ("Optimal scaling of discrete approximations to Langevin diffusions", JRSS-B
60(1), Theorem 1 and section 2) show that in high dimension the efficiency is maximal at an acceptance rate of
0.574. During burn-in only, :math:`\log h` follows a Robbins-Monro recursion towards that rate (the mean acceptance
probability over all chains at each step, gains :math:`k^{-0.6}`; Andrieu & Thoms 2008, "A tutorial on adaptive
MCMC", Statistics and Computing 18, section 4). After burn-in :math:`h` is frozen, so the kept samples come from a
time-homogeneous Markov chain with invariant law :math:`\pi`: adaptation changes the efficiency, never the target.

Effective sample size. With :math:`M` chains of length :math:`n`, the autocovariances :math:`\hat\gamma_k` are averaged
over chains (centred at the grand mean), and the integrated autocorrelation time is Geyer's initial monotone
sequence estimator (Geyer 1992, "Practical Markov chain Monte Carlo", Statistical Science 7(4), section 3.3): with
:math:`\Gamma_m = \hat\gamma_{2m} + \hat\gamma_{2m+1}`, keep the initial run of positive :math:`\Gamma_m`, force it
non-increasing, and set :math:`\tau = (-\hat\gamma_0 + 2\sum_m \Gamma_m)/\hat\gamma_0`, :math:`\text{ESS} = Mn/\tau`.
For a reversible chain (MALA is) the :math:`\Gamma_m` are positive and decreasing, so the estimator is consistent and
conservative asymptotically (Geyer 1992, Theorem 3.1). The Monte Carlo standard error of the mean of :math:`f` is
:math:`\mathrm{sd}(f)/\sqrt{\text{ESS}_f}`; the mean uses :math:`f = x_i`, the variance :math:`f = (x_i - \bar x_i)^2`,
each with its own ESS.

Multimodal targets. MALA moves between separated modes only through their low-density gap, which can take longer
than any run, and the ESS estimator cannot see modes the chains never visit. Parallel tempering is not built: a
target with more than one local maximum (found by L-BFGS from every factor component's mean, with a positive
definite Hessian there, :meth:`verify.tilted.TiltedLaw.modes`) is refused (``ValueError`` naming ``rule``). That
search starts from every component of every factor; a mode unreachable from all of them would go undetected. On the
toy worlds' CFG targets at the data level (gauss1d, bimodal1d with ``cond = 1`` at w up to 7) there is one mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from toy_models import World
from toy_models._checks import Tensorish, as_int, as_real_tensor, as_scalar, check_generator
from toy_models.gaussian_mixture import Condition

from .rules import Rule
from .tilted import NotNormalisableError, tilted_law

__all__ = ["MALAResult", "MCMCResult", "mala", "tilted_log_density", "mcmc_tilted", "effective_sample_size"]

F64 = torch.float64
#: the acceptance rate the burn-in adaptation aims at (Roberts & Rosenthal 1998)
TARGET_ACCEPTANCE = 0.574
#: exponent of the Robbins-Monro gains k^-kappa; any kappa in (1/2, 1] makes the gains square-summable but not
#: summable (Andrieu & Thoms 2008, section 4)
_GAIN_EXPONENT = 0.6

LogDensity = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class MALAResult:
    """Output of :func:`mala`."""

    samples: torch.Tensor  # [n_steps - n_burn, N, d], the states after burn-in
    acceptance: float  # mean acceptance probability after burn-in, over steps and chains
    trace: torch.Tensor  # [N, n_steps], the first coordinate of every chain at every step (burn-in included)
    step_size: float  # h after adaptation (the value used for every kept sample)
    n_burn: int


@dataclass(frozen=True)
class MCMCResult:
    """Output of :func:`mcmc_tilted`: pooled moments of the kept samples and their Monte Carlo standard errors."""

    samples: torch.Tensor  # [n_kept, N, d]
    acceptance: float
    step_size: float
    mean: torch.Tensor  # [d]
    var: torch.Tensor  # [d], per coordinate
    ess_mean: torch.Tensor  # [d], ESS of x_i
    ess_var: torch.Tensor  # [d], ESS of (x_i - mean_i)^2
    se_mean: torch.Tensor  # [d], sd(x_i) / sqrt(ess_mean)
    se_var: torch.Tensor  # [d], sd((x_i - mean_i)^2) / sqrt(ess_var)
    trace: torch.Tensor  # [N, n_steps]


def _evaluate(log_density_and_grad: LogDensity, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log density [N], gradient [N, d])`` with shapes checked; non-finite log densities become -inf (a proposal
    there is rejected) and their gradients 0 (never used: the state is never accepted)."""
    out = log_density_and_grad(x)
    if not isinstance(out, tuple) or len(out) != 2:
        raise TypeError("log_density_and_grad: must return a (log density [N], gradient [N, d]) pair")
    logp, grad = (torch.as_tensor(v, dtype=F64) for v in out)
    if logp.shape != x.shape[:1] or grad.shape != x.shape:
        raise ValueError(f"log_density_and_grad: expected shapes [{x.shape[0]}] and {list(x.shape)}, got "
                         f"{list(logp.shape)} and {list(grad.shape)}")
    bad = ~torch.isfinite(logp) | ~torch.isfinite(grad).all(dim=1)
    logp = torch.where(bad, torch.full_like(logp, -math.inf), logp)
    grad = torch.where(bad[:, None], torch.zeros_like(grad), grad)
    return logp, grad


def mala(log_density_and_grad: LogDensity, x0: Tensorish, n_steps: int, step_size: float,
         generator: torch.Generator, *, adapt: bool = True, n_burn: int | None = None) -> MALAResult:
    r"""Metropolis-adjusted Langevin on :math:`N` independent chains (module docstring for the proposal, the
    acceptance ratio and the adaptation).

    ``log_density_and_grad`` maps float64 points ``[N, d]`` to :math:`(\log\tilde\pi\ [N],\ \nabla\log\tilde\pi\
    [N, d])`, up to an additive constant; ``x0`` ``[N, d]`` are the starting states; ``step_size`` the initial
    :math:`h > 0`; ``n_burn`` (default ``n_steps // 2``) the steps discarded, during which :math:`h` is adapted
    towards an acceptance rate of 0.574 when ``adapt`` is true (and held fixed otherwise). All chains share one
    :math:`h`. A proposal whose log density or gradient is not finite is rejected. Returns the kept states, the
    mean acceptance probability after burn-in, the first coordinate's trace and the final :math:`h`."""
    if not callable(log_density_and_grad):
        raise TypeError(f"log_density_and_grad: expected a callable, got {type(log_density_and_grad).__name__}")
    x = as_real_tensor(x0, "x0", F64).detach().clone()
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"x0: expected [N, d] with N >= 1 and d >= 1, got shape {list(x.shape)}")
    n_steps = as_int(n_steps, "n_steps", 2)
    h = as_scalar(step_size, "step_size")
    if not h > 0.0:
        raise ValueError(f"step_size: must be > 0, got {step_size!r}")
    check_generator(generator, optional=False)
    if not isinstance(adapt, bool):
        raise TypeError(f"adapt: expected a bool, got {type(adapt).__name__}")
    n_burn = n_steps // 2 if n_burn is None else as_int(n_burn, "n_burn", 0)
    if n_burn >= n_steps:
        raise ValueError(f"n_burn: must be < n_steps = {n_steps}, got {n_burn}")

    logp, grad = _evaluate(log_density_and_grad, x)
    if not bool(torch.isfinite(logp).all()):
        raise ValueError("x0: the log density is not finite at every starting state")
    n, d = x.shape
    kept = torch.empty(n_steps - n_burn, n, d, dtype=F64)
    trace = torch.empty(n, n_steps, dtype=F64)
    log_h = math.log(h)
    accepted_sum = 0.0
    for k in range(n_steps):
        h = math.exp(log_h)
        noise = torch.randn(n, d, dtype=F64, generator=generator)
        forward_mean = x + h * grad
        y = forward_mean + math.sqrt(2.0 * h) * noise
        logp_y, grad_y = _evaluate(log_density_and_grad, y)
        log_q_forward = -(noise * noise).sum(1) / 2.0  # |y - x - h g(x)|^2 / (4h) = |noise|^2 / 2
        log_q_backward = -((x - y - h * grad_y) ** 2).sum(1) / (4.0 * h)
        log_ratio = logp_y - logp + log_q_backward - log_q_forward
        log_ratio = torch.where(torch.isnan(log_ratio), torch.full_like(log_ratio, -math.inf), log_ratio)
        accept_prob = torch.exp(log_ratio.clamp(max=0.0))
        accept = torch.rand(n, dtype=F64, generator=generator) < accept_prob
        x = torch.where(accept[:, None], y, x)
        logp = torch.where(accept, logp_y, logp)
        grad = torch.where(accept[:, None], grad_y, grad)
        trace[:, k] = x[:, 0]
        mean_prob = float(accept_prob.mean())
        if k < n_burn:
            if adapt:
                log_h += (k + 1) ** -_GAIN_EXPONENT * (mean_prob - TARGET_ACCEPTANCE)
        else:
            kept[k - n_burn] = x
            accepted_sum += mean_prob
    return MALAResult(kept, accepted_sum / (n_steps - n_burn), trace, math.exp(log_h), n_burn)


def effective_sample_size(chains: Tensorish) -> torch.Tensor:
    r"""ESS of each coordinate of ``chains`` ``[n, M, d]`` (``n`` steps of ``M`` chains) by Geyer's initial monotone
    sequence estimator on the chain-averaged autocovariances (module docstring). It exceeds ``M n`` for antithetic
    chains (:math:`\tau < 1`); a constant coordinate has ESS 0."""
    z = as_real_tensor(chains, "chains", F64).detach()
    if z.ndim != 3 or z.shape[0] < 4 or z.shape[1] < 1:
        raise ValueError(f"chains: expected [n, M, d] with n >= 4 steps and M >= 1 chains, got {list(z.shape)}")
    n, m, d = z.shape
    arr = z.numpy()
    centred = arr - arr.reshape(-1, d).mean(0)
    size = 1 << (2 * n - 1).bit_length()
    spec = np.fft.rfft(centred, n=size, axis=0)
    # gamma_k = (1 / (M n)) sum_chains sum_t c_t c_{t+k} (the biased form, which keeps the sequence positive definite)
    acov = np.fft.irfft(spec * np.conj(spec), n=size, axis=0)[:n].sum(1) / (m * n)  # [n, d]
    out = np.empty(d)
    for i in range(d):
        g = acov[:, i]
        if g[0] <= 0.0:
            out[i] = 0.0
            continue
        pairs = g[: 2 * (n // 2)].reshape(-1, 2).sum(1)
        positive = np.flatnonzero(pairs <= 0.0)
        pairs = pairs[: positive[0]] if positive.size else pairs
        pairs = np.minimum.accumulate(pairs)
        tau = (-g[0] + 2.0 * pairs.sum()) / g[0]
        out[i] = m * n / max(tau, 1.0 / (m * n))
    return torch.as_tensor(out, dtype=F64)


def tilted_log_density(world: World, rule: Rule, conditions: Mapping[str, Condition] | Condition = None
                       ) -> LogDensity:
    r"""``f(x) -> (log pi~(x) [N], grad log pi~(x) [N, d])``: :meth:`verify.tilted.TiltedLaw.log_unnormalized` and
    :meth:`~verify.tilted.TiltedLaw.score` of :func:`verify.tilted.tilted_law` ``(world, rule, conditions)`` (the
    data-level laws, t = 0), with ``x`` checked. Refusals: those of
    :func:`verify.tilted.linear_terms` (``rule:``), a ``world`` that is not a :class:`toy_models.World`."""
    if not isinstance(world, World):
        raise TypeError(f"world: expected a World, got {type(world).__name__}")
    law = tilted_law(world, rule, conditions)

    def log_density_and_grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = as_real_tensor(x, "x", F64)
        if x.ndim != 2 or x.shape[1] != law.dim:
            raise ValueError(f"x: expected [N, {law.dim}], got shape {list(x.shape)}")
        return law.log_unnormalized(x), law.score(x)

    return log_density_and_grad


def mcmc_tilted(world: World, rule: Rule, conditions: Mapping[str, Condition] | Condition = None,
                n_chains: int = 200, n_steps: int = 2000, seed: int = 0) -> MCMCResult:
    r"""MALA samples of the tilted target of ``rule`` on ``world`` (:func:`tilted_log_density`), with their moments,
    effective sample sizes and Monte Carlo standard errors (module docstring).

    The chains start from independent draws of the positive-exponent factors (mixed in proportion to their
    exponents), which cover the target's mass; the first half of the steps is burn-in with step-size adaptation,
    starting from :math:`h_0 = 1/\sum_b |a_b| \max_k \|P_{bk}\|_2` (the inverse of a bound on the curvature of
    :math:`\log\tilde\pi`'s quadratic parts). Refused: a target that is not certified normalisable or that has
    more than one local maximum (``ValueError`` naming ``rule``; parallel tempering is not built), ``n_chains`` below
    2, ``n_steps`` below 16 (eight kept steps, the least the ESS estimator is given), a negative ``seed``."""
    n_chains = as_int(n_chains, "n_chains", 2)
    n_steps = as_int(n_steps, "n_steps", 16)
    seed = as_int(seed, "seed", 0)
    target = tilted_law(world, rule, conditions)
    label = f"{rule.describe()} on {world.name}"
    try:
        target.check_normalisable()
    except NotNormalisableError as err:
        raise ValueError(f"rule: {label}: {str(err).split(': ', 1)[-1]}") from None
    n_modes = len(target.laplace_components())
    if n_modes > 1:
        raise ValueError(f"rule: the target of {label} has {n_modes} local maxima; MALA without tempering does not "
                         f"mix between separated modes, so no reference is given")
    f = tilted_log_density(world, rule, conditions)
    gen = torch.Generator().manual_seed(seed)
    positive = [(law, e) for law, e in target.factors if e > 0]
    total = sum(e for _, e in positive)
    picks = torch.multinomial(torch.tensor([e / total for _, e in positive], dtype=F64), n_chains, True,
                              generator=gen)
    x0 = torch.empty(n_chains, target.dim, dtype=F64)
    for j, (law, _) in enumerate(positive):
        rows = (picks == j).nonzero().flatten()
        if rows.numel():
            x0[rows] = law.sample(rows.numel(), gen)
    curvature = sum(abs(e) * float(torch.linalg.matrix_norm(torch.linalg.inv(law.covariances), 2).max())
                    for law, e in target.factors)
    run = mala(f, x0, n_steps, 1.0 / curvature, gen)
    flat = run.samples.reshape(-1, target.dim)
    mean = flat.mean(0)
    sq = (run.samples - mean) ** 2
    var = sq.reshape(-1, target.dim).mean(0)
    ess_mean = effective_sample_size(run.samples)
    ess_var = effective_sample_size(sq)
    se_mean = flat.std(0) / ess_mean.sqrt()
    se_var = sq.reshape(-1, target.dim).std(0) / ess_var.sqrt()
    return MCMCResult(run.samples, run.acceptance, run.step_size, mean, var, ess_mean, ess_var, se_mean, se_var,
                      run.trace)
