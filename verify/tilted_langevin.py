r"""CFG with a Langevin corrector: a predictor-corrector sampler whose corrector targets the guided product law.

A linear rule with branch weights :math:`a_b` (CFG: :math:`a_c = g = 1 + w`, :math:`a_\varnothing = 1 - g`) gives at
time t the score of the product of the *noised* branch laws,

.. math::  \tilde s_t(x) = \sum_b a_b \nabla\log p_t(x \mid b) = \nabla\log q_t(x), \qquad
           q_t(x) \propto \prod_b p_t(x \mid b)^{a_b},

and :math:`q_0 = \pi`, the tilted target of :mod:`verify.tilted`. Plain CFG follows :math:`\tilde s_t` with a
sampler built for the marginals of one forward process, which :math:`q_t` are not (``proofs/prop2_tilted_score.py``),
so its output misses :math:`\pi`. Bradley & Nakkiran 2024 ("Classifier-Free Guidance is a Predictor-Corrector",
arXiv 2408.09000, section 4) read CFG itself as a predictor step plus a Langevin corrector on a *different* product
(exponent :math:`2\gamma - 1`, see :mod:`verify.evidence.bradley_nakkiran`). The sampler here is the explicit
predictor-corrector scheme of Song et al. 2021 ("Score-Based Generative Modeling through Stochastic Differential
Equations", section 4.2 and Algorithms 2-5) driven by the guided score: per step :math:`t \to s`

1. predictor: one DDPM (default) or DDIM step with the guided eps :math:`\tilde\varepsilon = -\sigma_t\tilde s_t`
   (:func:`verify.samplers.ddpm` / :func:`verify.samplers.ddim`);
2. corrector: K unadjusted Langevin steps at the time reached,
   :math:`x \leftarrow x + h_s\,\tilde s_s(x) + \sqrt{2h_s}\,z` (Roberts & Tweedie 1996, Bernoulli 2(4), eq. 1.3 in
   their notation, the Euler-Maruyama step of :math:`dX = \nabla\log q_s\,dt + \sqrt 2\,dW`).

What it targets. For fixed s the Langevin diffusion has :math:`q_s` as its invariant law, so as
:math:`K \to \infty` with :math:`h_s \to 0` the state after each corrector is a draw of :math:`q_s` whatever the
predictor did, and at the last time, :math:`s \to 0`, a draw of :math:`q_0 = \pi`. The finite-K, finite-h law is
what this module measures: the unadjusted step is biased (on a Gaussian :math:`q_s = \mathcal N(\mu, A^{-1})` its
invariant law is :math:`\mathcal N(\mu, [A(1 - hA/2)]^{-1})`, variance too large by a factor
:math:`1/(1 - hA/2)`), and K steps contract the distance to that law by :math:`(1 - hA)^K` in the mean.

Metropolis adjustment (the registered ``mcmc``). With ``metropolis=True`` each corrector proposal is accepted with
MALA's probability (Roberts & Tweedie 1996, eqs. 2.2-2.3), so :math:`q_s` is invariant at every step size and the
bias of the unadjusted step disappears. A denoiser gives :math:`\nabla\log q_s` but not :math:`\log q_s`, so the
log-density difference in the acceptance ratio is the trapezoid rule along the proposal's segment,
:math:`\log q_s(y) - \log q_s(x) \approx \tfrac12(\tilde s(x) + \tilde s(y))\cdot(y - x)`: exact when the score
is affine (every Gaussian world), otherwise off by :math:`\tfrac1{12}` of the third directional derivative of
:math:`\log q_s` times :math:`|y - x|^3`, a few percent of a step's log-ratio at the step sizes used here. This is
the annealed MCMC of Du et al. 2023 ("Reduce, Reuse, Recycle: Compositional Generation with Energy-Based Diffusion
Models and MCMC", ICML, section 4), who need an energy-parametrised model for the exact ratio; the score-only
trapezoid estimate is this module's. The noise levels act as a tempering ladder, so chains reach separated modes
while the levels are still smooth; whether they end in the right proportions is measured, not assumed.

The corrector needs :math:`\tilde s_s = -\tilde\varepsilon/\sigma_s`, which the eps parametrisation does not give at
:math:`\sigma_s = 0`: a step to such a time (``t_end = 0`` on VP) runs its predictor only. To let the corrector act
at the end, end the grid at a small ``t_end > 0``; the output is then a draw near :math:`q_{t_{end}}`, whose moments
differ from :math:`\pi`'s by :math:`O(\sigma_{t_{end}}^2)` (:func:`corrector_table`'s errors are against
:math:`\pi` itself, so they include that gap; at ``t_end = 1e-3`` on vp-linear :math:`\sigma^2 \approx 1e-4`).

Step size. ``step_size`` fixes :math:`h_s` (a number, or a function of ``(s, alpha_s, sigma_s)``): every corrector
step is then affine in x on a Gaussian world, the output law is Gaussian, and :func:`cfg_langevin_law` computes it
exactly. ``snr`` is Song et al.'s rule (Algorithm 5, and ``LangevinCorrector`` in their code, score_sde
``sampling.py``): :math:`h = 2\,\big(r\,\overline{|z|}/\overline{|\tilde s|}\big)^2`, the bars averaging the
per-sample norms over the batch; their code multiplies by :math:`1 - \beta_i` of the 1000-step VP grid (within 2% of
1), which is left out here. That step depends on the batch, so its law is not computed exactly.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch

from toy_models import AnalyticDenoiser, World, get_world
from toy_models import parametrization as param
from toy_models._checks import as_real_tensor, as_scalar, check_generator, real_dtype_of
from toy_models.denoiser import Denoiser
from toy_models.gaussian_mixture import Condition

from .exact_law import discrete_sampler_law
from .rules import get as get_rule
from .samplers import check_prediction, check_times, ddim, ddpm, register_tilted_sampler, time_grid
from .tilted import tilted_law

__all__ = ["PREDICTORS", "PCResult", "pc_run", "langevin", "mcmc", "cfg_langevin",
           "cfg_langevin_law", "AffineEps", "CorrectorRow", "corrector_table"]

F64 = torch.float64
PREDICTORS = ("ddpm", "ddim")
StepSize = float | Callable[[float, float, float], float]


# ----------------------------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------------------------
def _check_denoiser(denoiser, name: str = "denoiser") -> None:
    if not callable(getattr(denoiser, "eps", None)) or not hasattr(denoiser, "schedule"):
        raise TypeError(f"{name}: expected a Denoiser (with eps() and schedule), got {type(denoiser).__name__}")
    if getattr(denoiser, "stateful", False):
        raise ValueError(f"{name}: its rule keeps state across the steps of a run; the corrector's extra evaluations "
                         f"have no place in that state, so stateful rules are refused")
    if getattr(denoiser, "renoises", False):
        raise ValueError(f"{name}: its rule re-noises with another prediction than the guided one (CFG++); the "
                         f"corrector reads one score, so such rules are refused")


def _check_k(corrector_steps) -> int:
    if isinstance(corrector_steps, bool) or not isinstance(corrector_steps, numbers.Integral) or corrector_steps < 0:
        raise ValueError(f"corrector_steps: must be an int >= 0, got {corrector_steps!r}")
    return int(corrector_steps)


def _check_predictor(predictor) -> Callable:
    if not isinstance(predictor, str) or predictor not in PREDICTORS:
        raise ValueError(f"predictor: must be one of {PREDICTORS}, got {predictor!r}")
    return ddpm if predictor == "ddpm" else ddim


def _check_step_rule(step_size, snr, *, exact: bool) -> None:
    if (step_size is None) == (snr is None):
        raise ValueError("step_size, snr: give exactly one (a fixed step size, or Song et al.'s signal-to-noise "
                         "ratio)")
    if snr is not None:
        if exact:
            raise ValueError("snr: the step depends on the batch, so the law is not Gaussian; the exact law takes "
                             "step_size")
        r = as_scalar(snr, "snr")
        if not r > 0.0:
            raise ValueError(f"snr: must be > 0, got {snr!r}")
    elif not callable(step_size):
        h = as_scalar(step_size, "step_size")
        if not h > 0.0:
            raise ValueError(f"step_size: must be > 0, got {step_size!r}")


def _step_at(step_size: StepSize, s: float, alpha: float, sigma: float) -> float:
    h = step_size(s, alpha, sigma) if callable(step_size) else step_size
    try:
        h = as_scalar(h, "step_size")
    except (TypeError, ValueError):
        raise ValueError(f"step_size: returned {h!r} at s = {s:.6g}, not a finite real") from None
    if not h > 0.0:
        raise ValueError(f"step_size: must be > 0, got {h!r} at s = {s:.6g}")
    return h


# ----------------------------------------------------------------------------------------------------------------
# The samplers
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PCResult:
    """One predictor-corrector run: the final state, and per step the corrector's step size and acceptance rate
    (1 for the unadjusted corrector; NaN where no corrector ran)."""

    x: torch.Tensor
    step_sizes: torch.Tensor  # [steps]
    acceptance: torch.Tensor  # [steps]


def _snr_step(score: torch.Tensor, z: torch.Tensor, snr: float) -> float:
    r"""Song et al.'s step: :math:`2 (r\,\overline{|z|}/\overline{|\tilde s|})^2`, batch means of per-row norms."""
    ratio = float(z.norm(dim=1).mean()) / max(float(score.norm(dim=1).mean()), 1e-300)
    return 2.0 * (snr * ratio) ** 2


def pc_run(denoiser: Denoiser, x: torch.Tensor, timesteps, *, corrector_steps: int, step_size: StepSize | None = None,
           snr: float | None = None, predictor: str = "ddpm", metropolis: bool = False, condition: Condition = None,
           generator: torch.Generator | None = None, callback=None) -> PCResult:
    r"""Predictor-corrector sampling with a guided denoiser (module docstring): per step ``timesteps[i] ->
    timesteps[i + 1] = s``, one ``predictor`` step with the guided eps, then ``corrector_steps`` Langevin steps
    :math:`y = x + h\,	ilde s_s(x) + \sqrt{2h}\,z` with :math:`	ilde s_s = -	ildearepsilon(x, s)/\sigma_s`
    (none where :math:`\sigma_s = 0`): each accepted as is (``metropolis=False``) or with the Metropolis-Hastings
    probability of MALA (``metropolis=True``, module docstring), which makes :math:`q_s` invariant at every h.

    Randomness: ``generator`` only. Each step draws, in order, the predictor's noise (one ``torch.randn(x.shape)``
    for DDPM, none for DDIM) and then per corrector step one ``torch.randn(x.shape)`` (and with ``metropolis`` one
    ``torch.rand(N)``), so ``corrector_steps=0`` with DDPM reproduces :func:`verify.samplers.ddpm` on the same grid
    and generator draw for draw. ``x``: the state at ``timesteps[0]``, ``[N, d]``; computed in its dtype.
    ``step_size``: :math:`h_s > 0`, a number or a function of ``(s, alpha_s, sigma_s)``; or ``snr``: Song et al.'s
    rule (module docstring; with ``metropolis`` it is computed once per level, at its first corrector step, and
    then frozen, so that the kernel of each chain does not move during the level). Exactly one.
    ``callback(i, s, x, eps)`` after each step (predictor and correctors), ``eps`` the predictor's."""
    _check_denoiser(denoiser)
    k = _check_k(corrector_steps)
    step = _check_predictor(predictor)
    _check_step_rule(step_size, snr, exact=False)
    check_generator(generator, optional=False)
    if not isinstance(metropolis, bool):
        raise TypeError(f"metropolis: expected a bool, got {type(metropolis).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable, got {type(callback).__name__}")
    x = as_real_tensor(x, "x", real_dtype_of(x, F64), copy=False)
    dim = getattr(denoiser, "dim", None)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        raise ValueError(f"x: expected shape [N, {dim if dim is not None else 'd'}], got {list(x.shape)}")
    grid = check_times(timesteps, denoiser.schedule)
    times = torch.tensor(grid.times, dtype=F64)
    sizes = torch.full((grid.steps,), math.nan, dtype=F64)
    rates = torch.full((grid.steps,), math.nan, dtype=F64)
    for i in range(grid.steps):
        kw = {"generator": generator} if predictor == "ddpm" else {}
        seen: list[torch.Tensor] = []
        x = step(denoiser, x, times[i:i + 2], condition=condition, callback=lambda *a, seen=seen: seen.append(a[3]),
                 **kw)
        s, alpha, sigma = grid.times[i + 1], grid.alpha[i + 1], grid.sigma[i + 1]
        if sigma != 0.0 and k > 0:
            x, sizes[i], rates[i] = _correct(denoiser, x, s, alpha, sigma, k, step_size, snr, metropolis, condition,
                                             generator)
        if callback is not None:
            callback(i, s, x, seen[0])
    return PCResult(x, sizes, rates)


def _correct(denoiser: Denoiser, x: torch.Tensor, s: float, alpha: float, sigma: float, k: int,
             step_size: StepSize | None, snr: float | None, metropolis: bool, condition: Condition,
             generator: torch.Generator) -> tuple[torch.Tensor, float, float]:
    """``k`` corrector steps at level ``s``: ``(x, the last step size, the mean acceptance rate)``."""
    def score_at(points: torch.Tensor) -> torch.Tensor:
        eps = check_prediction(denoiser.eps(points, s, condition), "eps", points,
                               f"in a corrector step at s = {s:.6g}")
        return param.eps_to_score(eps, sigma)

    score = score_at(x)
    h = None if snr is not None else _step_at(step_size, s, alpha, sigma)
    accepted = 0.0
    for j in range(k):
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        if snr is not None and (not metropolis or j == 0):
            h = _snr_step(score, z, float(snr))
        y = x + h * score + math.sqrt(2.0 * h) * z
        if not metropolis:
            x = y
            accepted += 1.0
            if j + 1 < k:
                score = score_at(x)
            continue
        score_y = score_at(y)
        # log target ratio by the trapezoid rule along the segment (exact for an affine score), plus the proposal
        # ratio log q(x | y) - log q(y | x) of the Gaussian Langevin proposals
        step = y - x
        log_ratio = 0.5 * ((score + score_y) * step).sum(1)
        back = x - y - h * score_y
        log_ratio = log_ratio - (back * back).sum(1) / (4.0 * h) + (z * z).sum(1) / 2.0
        u = torch.rand(x.shape[0], generator=generator, dtype=F64, device=x.device)
        take = torch.log(u) < log_ratio.to(F64)
        x = torch.where(take[:, None], y, x)
        score = torch.where(take[:, None], score_y, score)
        accepted += float(take.to(F64).mean())
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"step_size: the corrector diverged at s = {s:.6g} (non-finite state); the step is too "
                         f"large for the curvature of q_s")
    return x, float(h), accepted / k


def _refuse_noise(name: str, noise) -> None:
    if noise is not None:
        raise ValueError(f"noise: {name} draws its corrector noise from generator; pass generator")


#: Song et al.'s released configurations (score_sde, ``configs/default_*_configs.py``): one corrector step per
#: predictor step, signal-to-noise ratio 0.16; the defaults of the registered samplers
DEFAULT_CORRECTOR_STEPS, DEFAULT_SNR = 1, 0.16


@register_tilted_sampler("langevin", limit="corrector steps -> infinity and step size -> 0 at every level, "
                                           "last time -> 0 (no exactness at finite K: unadjusted Langevin is biased)")
def langevin(denoiser: Denoiser, x: torch.Tensor, timesteps, *, condition: Condition = None, eta: float = 0.0,
             generator: torch.Generator | None = None, noise: torch.Tensor | None = None, callback=None,
             corrector_steps: int = DEFAULT_CORRECTOR_STEPS, step_size: StepSize | None = None,
             snr: float | None = None, predictor: str = "ddpm") -> torch.Tensor:
    """CFG with an unadjusted Langevin corrector (:func:`pc_run` with ``metropolis=False``), as a registered sampler.
    Without ``step_size`` or ``snr`` it uses ``snr = DEFAULT_SNR``; ``eta`` is ignored, ``noise`` refused."""
    _refuse_noise("langevin", noise)
    if step_size is None and snr is None:
        snr = DEFAULT_SNR
    return pc_run(denoiser, x, timesteps, corrector_steps=corrector_steps, step_size=step_size, snr=snr,
                  predictor=predictor, condition=condition, generator=generator, callback=callback).x


@register_tilted_sampler("mcmc", limit="corrector steps -> infinity at the last level (exact there for any step "
                                       "size when the score is affine; else up to the trapezoid rule's error)")
def mcmc(denoiser: Denoiser, x: torch.Tensor, timesteps, *, condition: Condition = None, eta: float = 0.0,
         generator: torch.Generator | None = None, noise: torch.Tensor | None = None, callback=None,
         corrector_steps: int = 10, step_size: StepSize | None = None, snr: float | None = None,
         predictor: str = "ddpm") -> torch.Tensor:
    """Annealed MALA on the guided product: :func:`pc_run` with ``metropolis=True``, as a registered sampler. The
    chains follow the noise levels of ``timesteps`` (the annealing that lets them find the modes; Du et al. 2023,
    "Reduce, Reuse, Recycle", section 4) and at every level their kernel leaves :math:`q_s` invariant. Without
    ``step_size`` or ``snr`` it uses ``snr = DEFAULT_SNR``; ``eta`` is ignored, ``noise`` refused. The data-level
    reference on the exact density (t = 0, where a denoiser has no score) is :func:`verify.tilted_mcmc.mcmc_tilted`."""
    _refuse_noise("mcmc", noise)
    if step_size is None and snr is None:
        snr = DEFAULT_SNR
    return pc_run(denoiser, x, timesteps, corrector_steps=corrector_steps, step_size=step_size, snr=snr,
                  predictor=predictor, metropolis=True, condition=condition, generator=generator,
                  callback=callback).x


def cfg_langevin(denoiser: Denoiser, x: torch.Tensor, timesteps, *, corrector_steps: int,
                 step_size: StepSize | None = None, snr: float | None = None, predictor: str = "ddpm",
                 condition: Condition = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`pc_run`'s state with the unadjusted corrector (the step rule required: ``step_size`` or ``snr``)."""
    return pc_run(denoiser, x, timesteps, corrector_steps=corrector_steps, step_size=step_size, snr=snr,
                  predictor=predictor, condition=condition, generator=generator).x


# ----------------------------------------------------------------------------------------------------------------
# Its exact law on Gaussian worlds
# ----------------------------------------------------------------------------------------------------------------
def cfg_langevin_law(guided_denoiser: Denoiser, timesteps, mean: torch.Tensor | None = None,
                     cov: torch.Tensor | None = None, *, corrector_steps: int, step_size: StepSize,
                     predictor: str = "ddpm", condition: Condition = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The exact output law (mean ``[d]``, covariance ``[d, d]``) of :func:`cfg_langevin` with a fixed
    ``step_size`` from :math:`x \sim \mathcal N(\text{mean}, \text{cov})` (default N(0, I)), for a guided eps affine
    in x (a linear rule on a Gaussian world).

    Predictor: :func:`verify.exact_law.discrete_sampler_law` on the one-step grid. Corrector: at time s the guided
    score is affine, :math:`\tilde s(x) = \tilde s(0) + J x` (read at 0 and the :math:`e_j`); one Langevin step
    maps :math:`\mathcal N(m, \Sigma)` to :math:`\mathcal N(m + h\tilde s(m),\
    M\Sigma M^\top + 2h I)`, :math:`M = I + hJ`; K steps repeat it. The eps is read through :class:`AffineEps`, which
    refuses one that is not affine (a mixture world, a non-linear rule): the law would not be Gaussian."""
    _check_denoiser(guided_denoiser, "guided_denoiser")
    affine = AffineEps(guided_denoiser)  # refuses an eps that is not affine in x (the law would not be Gaussian)
    k = _check_k(corrector_steps)
    _check_predictor(predictor)
    _check_step_rule(step_size, None, exact=True)
    d = getattr(guided_denoiser, "dim", None)
    if not isinstance(d, int):
        raise TypeError(f"guided_denoiser: expected an int dim, got {d!r}")
    grid = check_times(timesteps, guided_denoiser.schedule)
    times = torch.tensor(grid.times, dtype=F64)
    mean = torch.zeros(d, dtype=F64) if mean is None else as_real_tensor(mean, "mean")
    cov = torch.eye(d, dtype=F64) if cov is None else as_real_tensor(cov, "cov")
    eye = torch.eye(d, dtype=F64)
    for i in range(grid.steps):
        mean, cov = discrete_sampler_law(predictor, affine, times[i:i + 2], mean, cov, condition=condition)
        s, alpha, sigma = grid.times[i + 1], grid.alpha[i + 1], grid.sigma[i + 1]
        if sigma == 0.0 or k == 0:
            continue
        h = _step_at(step_size, s, alpha, sigma)
        b, jac_eps = affine.coefficients(s, condition)
        jac = -jac_eps / sigma  # the score -eps / sigma = -(b + J_eps x) / sigma
        step_map = eye + h * jac
        for _ in range(k):
            mean = mean + h * (-b / sigma + jac @ mean)
            cov = step_map @ cov @ step_map.T + 2.0 * h * eye
            cov = 0.5 * (cov + cov.T)
    return mean, cov


# ----------------------------------------------------------------------------------------------------------------
# A fast stand-in for an affine eps (Monte Carlo with 1e5 points and thousands of steps)
# ----------------------------------------------------------------------------------------------------------------
#: tolerance of the affinity check, in units of u times the magnitude: the analytic guided eps is a few dozen
#: roundings of numbers of the magnitude of its terms (noised means, variances, their quotients), so its value at a
#: point departs from the affine interpolation of its values at 0 and e_j by at most ~64 u of that magnitude; a
#: non-affine eps (a mixture's) departs by O(1)
_AFFINE_ULPS = 64.0


class AffineEps:
    r"""A denoiser whose eps is :math:`b(t) + J(t)\,x`, read from ``denoiser`` at the d + 1 points 0 and
    :math:`e_j` once per time (cached) and checked at the point :math:`(2, \dots, 2)` against the affine
    interpolation (``ValueError`` naming ``denoiser`` where it is not affine). On a Gaussian world a linear rule's
    guided eps is affine, so this computes the same eps with one matrix product per call."""

    def __init__(self, denoiser: Denoiser):
        _check_denoiser(denoiser)
        d = getattr(denoiser, "dim", None)
        if not isinstance(d, int):
            raise TypeError(f"denoiser: expected an int dim, got {d!r}")
        self.denoiser, self.dim, self.schedule = denoiser, d, denoiser.schedule
        self._cache: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}

    def coefficients(self, t: float, condition: Condition = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(b [d], J [d, d])`` at time ``t``."""
        t = float(t)
        if t not in self._cache:
            eye = torch.eye(self.dim, dtype=F64)
            probe = torch.full((1, self.dim), 2.0, dtype=F64)
            points = torch.cat([torch.zeros(1, self.dim, dtype=F64), eye, probe])
            eps = self.denoiser.eps(points, t, condition).to(F64)
            b, jac = eps[0], (eps[1:1 + self.dim] - eps[0]).T
            predicted = b + jac @ probe[0]
            scale = float(eps.abs().max()) + float(jac.abs().sum(1).max()) * 2.0 + 1.0
            if float((predicted - eps[-1]).abs().max()) > _AFFINE_ULPS * 2.0**-53 * scale:
                raise ValueError(f"denoiser: its eps is not affine in x at t = {t:.6g} (a Gaussian world and a "
                                 f"linear rule are needed)")
            self._cache[t] = (b, jac)
        return self._cache[t]

    def eps(self, x: torch.Tensor, t, condition: Condition = None) -> torch.Tensor:
        times = torch.as_tensor(t, dtype=F64).reshape(-1)
        if not bool((times == times[0]).all()):
            raise ValueError("t: AffineEps takes one time per call")
        b, jac = self.coefficients(float(times[0]), condition)
        return (b + x.to(F64) @ jac.T).to(x.dtype)


# ----------------------------------------------------------------------------------------------------------------
# How many corrector steps reach pi
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CorrectorRow:
    """One (w, K): the exact law's errors against :math:`\\pi` and, in units of the standard errors of ``n``
    samples (:math:`\\sqrt{v_\\pi/n}` for the mean, :math:`v_\\pi\\sqrt{2/(n-1)}` for the variance), its z-scores;
    with Monte Carlo, the sample's errors and their standard errors."""

    w: float
    corrector_steps: int
    step_size: float
    mean_error: float
    var_error: float
    z_mean: float
    z_var: float
    mc_mean_error: float | None = None
    mc_var_error: float | None = None
    mc_se_mean: float | None = None
    mc_se_var: float | None = None


def corrector_table(ws=(1.0, 3.0, 7.0), ks=(0, 1, 2, 5, 10, 20), *, world: World | str = "gauss1d",
                    steps: int = 50, kappa: float = 0.01, t_end: float = 1e-3, spacing: str = "log_snr",
                    n: int = 100_000, monte_carlo: bool = False, seed: int = 0) -> list[CorrectorRow]:
    r"""The distance to :math:`\pi` of CFG-DDPM with K Langevin corrector steps, per w and K (1-D Gaussian worlds).

    Grid: ``steps`` predictor steps from t = 1 to ``t_end`` (``spacing`` of :func:`verify.samplers.time_grid`, on
    vp-linear), started from N(0, 1). Step size :math:`h = \kappa\,v_\pi` (``kappa`` is :math:`h` times
    :math:`\pi`'s precision, the largest curvature of :math:`\log q_s` on gauss1d, where
    :math:`A_s = g/C_c(s) - (g - 1)/C_\varnothing(s)` grows from 1 at s = 1 to :math:`1/v_\pi` at s = 0); the
    Langevin bias of the variance at s = 0 is then :math:`\kappa/2` relative (module docstring). Exact law by
    :func:`cfg_langevin_law`; with ``monte_carlo``, also ``n`` samples of :func:`cfg_langevin` (through
    :class:`AffineEps`, seed ``seed``)."""
    world = get_world(world) if isinstance(world, str) else world
    if not isinstance(world, World) or world.dim != 1:
        raise ValueError("world: expected a one-dimensional Gaussian world")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
        raise ValueError(f"n: must be an int >= 2, got {n!r}")
    kappa = as_scalar(kappa, "kappa")
    if not 0.0 < kappa < 2.0:
        raise ValueError(f"kappa: must lie in (0, 2) (beyond 2 the Langevin step diverges), got {kappa!r}")
    den = AnalyticDenoiser(world, "vp-linear")
    grid = time_grid(steps, 1.0, t_end, spacing, "vp-linear")
    rows = []
    for w in ws:
        rule = get_rule("cfg", w=w)
        summary = tilted_law(world, rule, 1).summary()
        pm, pv = float(summary.mean[0]), float(summary.cov[0, 0])
        se_m, se_v = math.sqrt(pv / n), pv * math.sqrt(2.0 / (n - 1))
        guided = rule.guide(den, 1)
        fast = AffineEps(guided)
        h = kappa * pv
        for k in ks:
            mean, cov = cfg_langevin_law(guided, grid, corrector_steps=k, step_size=h)
            dm, dv = float(mean[0]) - pm, float(cov[0, 0]) - pv
            extra = {}
            if monte_carlo:
                gen = torch.Generator().manual_seed(seed)
                x0 = torch.randn(n, 1, dtype=F64, generator=gen)
                out = cfg_langevin(fast, x0, grid, corrector_steps=k, step_size=h, generator=gen)[:, 0]
                var = float(out.var())
                # standard errors of the sample's mean and variance from its own moments (the fourth central
                # moment for the variance: Var(s^2) ~ (mu_4 - s^4) / n)
                mu4 = float(((out - out.mean()) ** 4).mean())
                extra = {"mc_mean_error": float(out.mean()) - pm, "mc_var_error": var - pv,
                         "mc_se_mean": math.sqrt(var / n), "mc_se_var": math.sqrt(max(mu4 - var**2, 0.0) / n)}
            rows.append(CorrectorRow(float(w), int(k), h, dm, dv, dm / se_m, dv / se_v, **extra))
    return rows
