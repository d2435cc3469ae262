r"""Samplers: DDPM ancestral, DDIM, Euler and Heun on the probability-flow ODE, Euler–Maruyama on the reverse SDE,
DPM-Solver++(2M).

Every sampler has one signature (k-diffusion's pattern, with times instead of sigmas)::

    sampler(denoiser, x, timesteps, *, condition=None, eta=0.0, generator=None, noise=None, callback=None)

* ``denoiser`` — any :class:`~toy_models.denoiser.Denoiser` (analytic, neural, or guided such as
  ``rules.get("cfg", w=3).guide(den, cond)``): guidance is a denoiser wrapper, so no sampler has guidance code. A
  guided denoiser whose rule keeps state across steps gets one :class:`~verify.rules.GuidanceState` per run, created
  here and passed with every call (``state.step`` set before each step); one whose rule re-noises with another eps
  (CFG++) is honoured by the samplers registered with ``supports_renoise`` (DDIM, DDPM) and refused by the others.
* ``x`` — the state at ``timesteps[0]``, ``[N, d]``; the sampler computes in ``x``'s dtype and returns it.
  Schedule coefficients are formed in float64 and enter as Python floats.
* ``timesteps`` — a strictly decreasing 1-D sequence in ``[0, 1]`` (``t_start`` first, ``t_end`` last);
  :func:`time_grid` makes uniform or log-SNR-uniform grids. Every time but the last needs
  :math:`\sigma_t > 0` and :math:`\alpha_t > 0`; the last may have :math:`\sigma = 0` (``t_end = 0`` on VP).
* ``condition`` — passed to ``denoiser.eps``.
* ``eta`` — the DDIM noise level (ignored by the other samplers).
* ``generator`` / ``noise`` — the only sources of randomness. ``noise`` is ``[steps, N, d]`` (``steps =
  len(timesteps) - 1``); without it a stochastic sampler draws ``torch.randn(x.shape, generator=generator)`` once
  per step, every step, in order (:func:`sampler_noise` reproduces those draws). Deterministic samplers ignore
  both.
* ``callback(i, t, x, eps)`` — after step ``i`` (0-based): ``t = timesteps[i + 1]`` the time reached, ``x`` the new
  state, ``eps`` the prediction made at ``timesteps[i]``.

Inputs follow the input policy (``docs/input-policy.md``): ``x`` a finite real ``[N, d]`` tensor (float32/float64
kept, integers converted exactly to float64; complex, bool, float16 refused), ``timesteps`` finite reals, ``eta`` a
finite real in [0, 1], ``generator`` a ``torch.Generator`` (``TypeError`` otherwise), ``noise`` finite reals of
shape ``[steps, N, d]``, ``callback`` callable. Every refusal names its argument. **Every prediction is checked as it
arrives**: at the first one that is not a finite real tensor of ``x``'s shape the sampler stops with a
``ValueError`` that starts with ``denoiser:`` and names the step (1-based, of how many), its time ``t`` and how many
rows hold NaN or infinity, instead of carrying NaN to the end of the trajectory. A state that overflows from finite
predictions (inputs near the dtype's largest value) is refused the same way, naming ``x``.

Notation: one step goes from ``t`` to ``s < t``; :math:`\hat\varepsilon` is the denoiser's prediction at
``(x_t, t)``, :math:`\hat x_0 = (x_t - \sigma_t\hat\varepsilon)/\alpha_t` and :math:`\hat s = -\hat\varepsilon/
\sigma_t` (:mod:`toy_models.parametrization`); :math:`f, g^2` are the forward SDE's coefficients
(:mod:`toy_models.schedules`); :math:`\lambda = \log(\alpha^2/\sigma^2)` (the log-SNR of docs/conventions.md) and
:math:`q_{ts} = 1 - e^{\lambda_t - \lambda_s} = \sigma_{t|s}^2/\sigma_t^2 \in (0, 1]` with
:math:`\alpha_{t|s} = \alpha_t/\alpha_s`, :math:`\sigma_{t|s}^2 = \sigma_t^2 - \alpha_{t|s}^2\sigma_s^2`
(Kingma et al. 2021, eq. 33). At :math:`\sigma_s = 0`, :math:`\lambda_s = +\infty` and :math:`q_{ts} = 1`.

Function evaluations (:func:`sampler_nfe`): one denoiser call per step, except Heun, which makes two per step and
one on a last step to :math:`\sigma = 0`. A CFG denoiser asks its base model for the conditional and null
predictions in one batched call (``eps_multi``: one forward pass of 2N rows): :func:`count_evaluations` counts calls and
rows at both levels.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch

from toy_models import parametrization as param
from toy_models._checks import all_finite, as_real_tensor, as_scalar, check_generator, real_dtype_of
from toy_models.denoiser import CountingDenoiser, Denoiser
from toy_models.gaussian_mixture import Condition
from toy_models.schedules import Schedule, get_schedule

__all__ = [
    "SAMPLERS",
    "SamplerSpec",
    "TimeGrid",
    "check_times",
    "check_prediction",
    "TILTED_SAMPLERS",
    "TiltedSamplerSpec",
    "register_sampler",
    "register_tilted_sampler",
    "get_sampler",
    "EvaluationCount",
    "count_evaluations",
    "ddim",
    "ddpm",
    "dpmpp_2m",
    "euler",
    "euler_maruyama",
    "heun",
    "sample",
    "sampler_nfe",
    "sampler_noise",
    "time_grid",
]

Tensor = torch.Tensor
Callback = Callable[[int, float, Tensor, Tensor], None]
F64 = torch.float64


# --------------------------------------------------------------------------------------------------------------
# Validation and the per-step coefficients
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TimeGrid:
    """Validated times and their schedule coefficients, all Python floats (formed in float64): what
    :func:`check_times` returns, shared by every sampler that steps along a grid."""

    times: list[float]
    alpha: list[float]
    sigma: list[float]
    log_snr: list[float]  # log(alpha^2 / sigma^2); +inf where sigma = 0
    schedule: Schedule

    @property
    def steps(self) -> int:
        return len(self.times) - 1

    def q(self, i: int) -> float:
        """:math:`q_{ts} = 1 - e^{\\lambda_t - \\lambda_s}` for step ``i`` (expm1: no cancellation on short steps)."""
        return -math.expm1(self.log_snr[i] - self.log_snr[i + 1])


def check_times(timesteps, schedule: Schedule) -> TimeGrid:
    """``timesteps`` checked against the sampler contract (module docstring) with their coefficients on
    ``schedule``; refusals name ``timesteps``."""
    times = as_real_tensor(timesteps, "timesteps", F64).detach()
    if times.ndim != 1 or times.numel() < 2:
        raise ValueError(f"timesteps: expected a 1-D sequence of at least 2 times, got shape {list(times.shape)}")
    if bool((times < 0).any()) or bool((times > 1).any()):
        raise ValueError(f"timesteps: must lie in [0, 1], got range [{float(times.min()):.6g}, "
                         f"{float(times.max()):.6g}]")
    if not bool((times[1:] < times[:-1]).all()):
        raise ValueError("timesteps: must be strictly decreasing (from t_start to t_end)")
    if schedule.alpha_vanishes_at_one and float(times[0]) == 1.0:
        raise ValueError(f"timesteps: schedule {schedule.name!r} has alpha = 0 at t = 1 (x0 and the drift are "
                         f"singular there); start at t < 1")
    alpha, sigma = schedule.alpha_sigma(times)
    if not bool((alpha > 0).all()):
        raise ValueError(f"timesteps: alpha(t) must be > 0 at every time on schedule {schedule.name!r}")
    if not bool((sigma[:-1] > 0).all()):
        raise ValueError("timesteps: sigma(t) must be > 0 at every time but the last (the denoiser's eps is "
                         "undefined at sigma = 0)")
    log_snr = schedule.log_snr(times)
    return TimeGrid(times.tolist(), alpha.tolist(), sigma.tolist(), log_snr.tolist(), schedule)


def _check_inputs(denoiser: Denoiser, x: Tensor, timesteps) -> tuple[Tensor, TimeGrid]:
    if not callable(getattr(denoiser, "eps", None)) or not hasattr(denoiser, "schedule"):
        raise TypeError(f"denoiser: expected a Denoiser (with eps() and schedule), got {type(denoiser).__name__}")
    x = as_real_tensor(x, "x", real_dtype_of(x, F64), copy=False)
    dim = getattr(denoiser, "dim", None)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        raise ValueError(f"x: expected shape [N, {dim if dim is not None else 'd'}], got {list(x.shape)}")
    return x, check_times(timesteps, get_schedule(denoiser.schedule))


def _check_callback(callback) -> None:
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable (i, t, x, eps) or None, got {type(callback).__name__}")


def _check_eta(eta) -> float:
    eta = as_scalar(eta, "eta")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta: must lie in [0, 1], got {eta!r}")
    return eta


def _noise_source(grid: TimeGrid, x: Tensor, generator: torch.Generator | None, noise: Tensor | None,
                  name: str) -> Callable[[int], Tensor]:
    """``i -> z_i`` of shape ``x.shape``: rows of ``noise``, or one draw from ``generator`` per step."""
    if noise is not None:
        noise = as_real_tensor(noise, "noise", x.dtype, copy=False).detach()  # the sampler computes in x's dtype
        expected = [grid.steps, *x.shape]
        if list(noise.shape) != expected:
            raise ValueError(f"noise: expected shape [steps, N, d] = {expected}, got {list(noise.shape)}")
        noise = noise.to(device=x.device)
        return lambda i: noise[i]
    if generator is None:
        raise ValueError(f"generator, noise: {name} is stochastic; pass a torch.Generator or a noise tensor "
                         f"(no hidden randomness)")
    check_generator(generator, optional=False)
    return lambda i: torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def sampler_noise(steps: int, shape, generator: torch.Generator, dtype: torch.dtype = F64) -> Tensor:
    """The ``[steps, *shape]`` noise a stochastic sampler draws from ``generator``: one ``torch.randn(shape)`` per
    step, in order. Passing it as ``noise=`` reproduces the generator run exactly."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"steps: must be an int >= 0, got {steps!r}")
    check_generator(generator, optional=False)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype: must be torch.float64 or torch.float32, got {dtype}")
    try:
        shape = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape: expected a sequence of sizes, got {shape!r}") from None
    return torch.stack([torch.randn(shape, generator=generator, dtype=dtype) for _ in range(int(steps))]) \
        if steps else torch.zeros((0, *shape), dtype=dtype)


def _run_state(denoiser: Denoiser):
    """The guidance state of one run: ``denoiser.new_state()`` for a stateful guided denoiser, else ``None``."""
    new_state = getattr(denoiser, "new_state", None)
    return new_state() if callable(new_state) and getattr(denoiser, "stateful", False) else None


def _refuse_renoise(denoiser: Denoiser, name: str) -> None:
    if getattr(denoiser, "renoises", False) and not SAMPLERS[name].supports_renoise:
        supported = sorted(n for n, spec in SAMPLERS.items() if spec.supports_renoise)
        raise ValueError(f"denoiser: its rule re-noises with another prediction than the guided one (CFG++); "
                         f"sampler {name!r} has no re-noising step: use one of {supported}")


def check_prediction(pred, what: str, x: Tensor, where: str) -> Tensor:
    """``pred`` if it is a finite real tensor of ``x``'s shape (in ``x``'s dtype); else a ``ValueError`` starting
    ``denoiser:`` that says ``what`` was returned ``where`` (the step and time) and how many rows are bad."""
    if not isinstance(pred, Tensor):
        raise ValueError(f"denoiser: {what} returned {type(pred).__name__}, not a tensor, {where}")
    if pred.shape != x.shape:
        raise ValueError(f"denoiser: {what} returned shape {list(pred.shape)} for x of shape {list(x.shape)} {where}")
    if pred.is_complex() or not pred.is_floating_point():
        raise ValueError(f"denoiser: {what} returned dtype {pred.dtype}, not a real floating tensor, {where}")
    if not all_finite(pred):
        finite = torch.isfinite(pred.detach())
        nan_rows = int(torch.isnan(pred.detach()).any(dim=1).sum())
        bad_rows = int((~finite).any(dim=1).sum())
        kind = (f"NaN in {nan_rows}" if nan_rows == bad_rows else
                f"NaN or infinity in {bad_rows}" if nan_rows else f"infinity in {bad_rows}")
        raise ValueError(f"denoiser: non-finite prediction {where}: {kind} of {x.shape[0]} rows")
    return pred.to(x.dtype)


def _predict(denoiser: Denoiser, x: Tensor, t: float, condition: Condition, grid: TimeGrid, i: int, state,
             second: bool = False) -> tuple[Tensor, Tensor]:
    """The denoiser's prediction at ``(x, t)``, checked: ``(eps, renoise)``, each a real tensor of ``x``'s shape,
    finite in every entry; ``renoise`` is the eps to re-noise with (``eps`` itself unless a guided denoiser's rule
    says otherwise). A stateful guided denoiser gets the run's ``state``. Step ``i`` is reported 1-based, with its
    time (and whether it is Heun's second evaluation)."""
    where = (f"at step {i + 1} of {grid.steps} ({'second evaluation, ' if second else ''}t = {t:.6g})")
    if getattr(denoiser, "renoises", False):
        pred = denoiser.predict(x, t, condition, state=state)
        eps = check_prediction(pred.eps, "eps", x, where)
        if pred.renoise is pred.eps:
            return eps, eps
        return eps, check_prediction(pred.renoise, "the re-noising eps", x, where)
    eps = denoiser.eps(x, t, condition, state=state) if state is not None else denoiser.eps(x, t, condition)
    eps = check_prediction(eps, "eps", x, where)
    return eps, eps


def _eps(denoiser: Denoiser, x: Tensor, t: float, condition: Condition, grid: TimeGrid, i: int, state,
         second: bool = False) -> Tensor:
    """The checked guided eps (samplers with no re-noising step)."""
    return _predict(denoiser, x, t, condition, grid, i, state, second)[0]


def _check_state(x: Tensor, grid: TimeGrid, i: int) -> Tensor:
    """Refuse a state that overflowed in step ``i`` (finite inputs and predictions near the dtype's maximum)."""
    if not all_finite(x):
        rows = int((~torch.isfinite(x.detach())).any(dim=1).sum())
        raise ValueError(f"x: the state overflows {x.dtype} at step {i + 1} of {grid.steps} (t = "
                         f"{grid.times[i + 1]:.6g}) in {rows} of {x.shape[0]} rows; the input or the predictions are "
                         f"too large for this dtype")
    return x


def _pf_ode_velocity(grid: TimeGrid, i: int, x: Tensor, eps: Tensor, *, sde: bool = False) -> Tensor:
    r"""Probability-flow velocity :math:`f x - \tfrac{g^2}{2}\hat s` at time index ``i`` (reverse-SDE drift
    :math:`f x - g^2 \hat s` when ``sde``)."""
    t = grid.times[i]
    f, g2 = float(grid.schedule.drift(t)), float(grid.schedule.diffusion_squared(t))
    score = param.eps_to_score(eps, grid.sigma[i])
    return f * x - (g2 if sde else 0.5 * g2) * score



# --------------------------------------------------------------------------------------------------------------
# The registry: every fact about a sampler, in one entry
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplerSpec:
    r"""One registered sampler and what is known about it.

    * ``function``: the sampler, with the common signature (the spec is callable and forwards to it);
    * ``order``: the order p of its global error in the step size (the weak order for a stochastic sampler): halving
      the step divides the error of its law by about :math:`2^p`;
    * ``evaluations_per_step``: denoiser calls per step (Heun: 2, and 1 on a last step to :math:`\sigma = 0`);
    * ``noise(eta)``: the fraction :math:`\eta^2 \in [0, 1]` of the reverse SDE's noise in its continuous-time limit,
      the family :math:`dx = [f x - \tfrac{1 + \eta^2}{2} g^2 s]\,dt + \eta\,g\,d\bar W` (0: the probability-flow
      ODE, 1: the reverse SDE; DDIM with :math:`\eta` is this family's first-order discretisation, Song et al.
      2021a, section 4.1 and Zhang & Chen 2023);
    * ``supports_renoise``: whether it honours a rule that re-noises with another eps than the guided one (CFG++);
      samplers that do not refuse such a denoiser;
    * ``multistep``: whether a step reads predictions of earlier steps (DPM-Solver++(2M)), so the run cannot be
      split into independent one-step runs (:func:`verify.exact_law.discrete_sampler_law` reads it).
    """

    name: str
    function: Callable[..., Tensor]
    order: int
    evaluations_per_step: int
    noise: Callable[[float], float]
    supports_renoise: bool = False
    multistep: bool = False

    def __call__(self, *args, **kw) -> Tensor:
        return self.function(*args, **kw)

    def is_stochastic(self, eta: float = 0.0) -> bool:
        """Whether a run draws noise (with this ``eta``)."""
        return self.noise(eta) > 0

    def continuous_limit(self, eta: float = 0.0) -> str:
        """``"ode"``, ``"sde"`` or ``"sde(eta^2=...)"``: the continuous-time process the sampler discretises."""
        fraction = self.noise(eta)
        return "ode" if fraction == 0 else "sde" if fraction == 1 else f"sde(eta^2={fraction:g})"

    def nfe(self, timesteps, schedule: str | Schedule) -> int:
        """Denoiser calls on ``timesteps``."""
        grid = check_times(timesteps, get_schedule(schedule))
        if self.evaluations_per_step == 2:  # the second evaluation is skipped on a last step to sigma = 0
            return 2 * grid.steps - (1 if grid.sigma[-1] == 0 else 0)
        return self.evaluations_per_step * grid.steps


SAMPLERS: dict[str, SamplerSpec] = {}


def register_sampler(name: str, *, order: int, evaluations_per_step: int = 1, noise: Callable[[float], float],
                     supports_renoise: bool = False, multistep: bool = False
                     ) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator: register a sampler function under ``name`` with its facts (:class:`SamplerSpec`)."""

    def decorate(function: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in SAMPLERS or name in TILTED_SAMPLERS:
            raise ValueError(f"name: a sampler named {name!r} is already registered")
        SAMPLERS[name] = SamplerSpec(name, function, order, evaluations_per_step, noise, supports_renoise, multistep)
        return function

    return decorate


@dataclass(frozen=True)
class TiltedSamplerSpec:
    r"""One registered sampler of the *tilted target* :math:`\pi \propto \prod_b p(x \mid c_b)^{a_b}` of a linear
    rule (:mod:`verify.tilted`), as opposed to the discretisations of the guided process in :data:`SAMPLERS`, whose
    laws are the process's (not :math:`\pi`).

    * ``function``: the sampler, with the common signature (the spec is callable and forwards to it); it takes the
      same guided denoiser as the process samplers (``rules.get("cfg", w=3).guide(base, cond)``) and reads the rule
      and the branch conditions from it;
    * ``limit``: the limit in which its output law is :math:`\pi` (e.g. "steps -> inf, particles -> inf");
    * ``analytic_only``: whether it needs the exact noised laws of a world (the base denoiser an
      :class:`~toy_models.denoiser.AnalyticDenoiser`) rather than any denoiser (a trained network included).
    """

    name: str
    function: Callable[..., Tensor]
    limit: str
    analytic_only: bool = False

    def __call__(self, *args, **kw) -> Tensor:
        return self.function(*args, **kw)


#: samplers of the tilted target, by name (registered by the modules that define them, imported by ``verify``)
TILTED_SAMPLERS: dict[str, TiltedSamplerSpec] = {}


def register_tilted_sampler(name: str, *, limit: str, analytic_only: bool = False
                            ) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator: register a sampler of the tilted target under ``name`` (:class:`TiltedSamplerSpec`). The names
    share one namespace with :data:`SAMPLERS`."""

    def decorate(function: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in SAMPLERS or name in TILTED_SAMPLERS:
            raise ValueError(f"name: a sampler named {name!r} is already registered")
        TILTED_SAMPLERS[name] = TiltedSamplerSpec(name, function, limit, analytic_only)
        return function

    return decorate


def get_sampler(name: str) -> SamplerSpec | TiltedSamplerSpec:
    """The registered sampler ``name``: a discretisation of the guided process (:data:`SAMPLERS`) or a sampler of
    the tilted target (:data:`TILTED_SAMPLERS`)."""
    if isinstance(name, str) and name in SAMPLERS:
        return SAMPLERS[name]
    if isinstance(name, str) and name in TILTED_SAMPLERS:
        return TILTED_SAMPLERS[name]
    raise ValueError(f"name: unknown sampler {name!r}; choose one of {sorted(SAMPLERS) + sorted(TILTED_SAMPLERS)}")


def _ode(eta: float) -> float:
    return 0.0


def _sde(eta: float) -> float:
    return 1.0


# --------------------------------------------------------------------------------------------------------------
# The samplers
# --------------------------------------------------------------------------------------------------------------
@register_sampler("ddim", order=1, noise=lambda eta: eta * eta, supports_renoise=True)
def ddim(denoiser: Denoiser, x: Tensor, timesteps, *, condition: Condition = None, eta: float = 0.0,
         generator: torch.Generator | None = None, noise: Tensor | None = None,
         callback: Callback | None = None) -> Tensor:
    r"""DDIM (Song, Meng & Ermon 2021, eq. 12 with eq. 16's :math:`\sigma_t(\eta)`), for any :math:`\alpha,\sigma`:

    .. math::  x_s = \alpha_s \hat x_0 + \sqrt{\sigma_s^2 - c^2}\,\hat\varepsilon + c\,z, \qquad
               c = \eta\,\sigma_s\sqrt{q_{ts}} = \eta\,\sigma_s\sqrt{1 - \Big(\frac{\alpha_t\sigma_s}
               {\alpha_s\sigma_t}\Big)^2}.

    :math:`c^2 = \eta^2\sigma_{t|s}^2\sigma_s^2/\sigma_t^2` is :math:`\eta^2` times the forward posterior variance;
    on VP (:math:`\sigma^2 = 1 - \alpha^2`) it is eq. 16's :math:`\eta^2 \tfrac{1 - \bar a_s}{1 - \bar a_t}
    (1 - \bar a_t/\bar a_s)` with :math:`\bar a = \alpha^2`. ``eta = 0`` is deterministic and is the first-order
    exponential integrator of the PF-ODE in :math:`\lambda` (DPM-Solver-1, Lu et al. 2022a, eq. 3.7);
    ``eta = 1`` makes :math:`\sqrt{\sigma_s^2 - c^2} = \alpha_{t|s}\sigma_s^2/\sigma_t` and equals :func:`ddpm`
    (same mean and variance). ``eta`` in ``[0, 1]``. At :math:`\sigma_s = 0` the step returns
    :math:`\alpha_s\hat x_0`.
    """
    x, grid = _check_inputs(denoiser, x, timesteps)
    eta = _check_eta(eta)
    _check_callback(callback)
    _refuse_renoise(denoiser, "ddim")
    state = _run_state(denoiser)
    draw = _noise_source(grid, x, generator, noise, "ddim with eta > 0") if eta > 0 else None
    for i in range(grid.steps):
        t, s = grid.times[i], grid.times[i + 1]
        if state is not None:
            state.step = i
        alpha_t, sigma_t, alpha_s, sigma_s = grid.alpha[i], grid.sigma[i], grid.alpha[i + 1], grid.sigma[i + 1]
        eps, renoise = _predict(denoiser, x, t, condition, grid, i, state)
        x0 = param.eps_to_x0(x, eps, alpha_t, sigma_t)
        q = grid.q(i)
        x_next = alpha_s * x0 + (sigma_s * math.sqrt(1.0 - eta * eta * q)) * renoise
        if draw is not None:
            z = draw(i)  # drawn on every step (also where c = 0), so the stream does not depend on the grid
            x_next = x_next + (eta * sigma_s * math.sqrt(q)) * z
        x = x_next
        x = _check_state(x, grid, i)
        if callback is not None:
            callback(i, s, x, eps)
    return x


@register_sampler("ddpm", order=1, noise=_sde, supports_renoise=True)
def ddpm(denoiser: Denoiser, x: Tensor, timesteps, *, condition: Condition = None, eta: float = 0.0,
         generator: torch.Generator | None = None, noise: Tensor | None = None,
         callback: Callback | None = None) -> Tensor:
    r"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) for any :math:`\alpha,\sigma`: draw from the forward
    posterior :math:`q(x_s \mid x_t, x_0 = \hat x_0)` (Kingma et al. 2021, eqs. 32-33),

    .. math::  x_s = \frac{\alpha_{t|s}\sigma_s^2}{\sigma_t^2} x_t + \alpha_s q_{ts}\,\hat x_0
               + \sigma_s\sqrt{q_{ts}}\, z, \qquad
               q_{ts} = \frac{\sigma_{t|s}^2}{\sigma_t^2} = 1 - e^{\lambda_t - \lambda_s}.

    A last step to :math:`\sigma_s = 0` returns :math:`\alpha_s \hat x_0` (its variance is 0; the draw is still
    made). ``eta`` is ignored.
    """
    x, grid = _check_inputs(denoiser, x, timesteps)
    _check_callback(callback)
    _refuse_renoise(denoiser, "ddpm")
    state = _run_state(denoiser)
    draw = _noise_source(grid, x, generator, noise, "ddpm")
    for i in range(grid.steps):
        t, s = grid.times[i], grid.times[i + 1]
        if state is not None:
            state.step = i
        alpha_t, sigma_t, alpha_s, sigma_s = grid.alpha[i], grid.sigma[i], grid.alpha[i + 1], grid.sigma[i + 1]
        eps, renoise = _predict(denoiser, x, t, condition, grid, i, state)
        x0 = param.eps_to_x0(x, eps, alpha_t, sigma_t)
        q = grid.q(i)
        if renoise is eps:
            coef_x = (alpha_t / alpha_s) * (sigma_s / sigma_t) ** 2
            x = coef_x * x + (alpha_s * q) * x0 + (sigma_s * math.sqrt(q)) * draw(i)
        else:  # x_t = alpha_t x0 + sigma_t eps, so the step is alpha_s x0 + sigma_s sqrt(1 - q) eps + noise
            x = alpha_s * x0 + (sigma_s * math.sqrt(1.0 - q)) * renoise + (sigma_s * math.sqrt(q)) * draw(i)
        x = _check_state(x, grid, i)
        if callback is not None:
            callback(i, s, x, eps)
    return x


@register_sampler("euler", order=1, noise=_ode)
def euler(denoiser: Denoiser, x: Tensor, timesteps, *, condition: Condition = None, eta: float = 0.0,
          generator: torch.Generator | None = None, noise: Tensor | None = None,
          callback: Callback | None = None) -> Tensor:
    r"""Explicit Euler in t on the probability-flow ODE (Song et al. 2021, eq. 13):

    .. math::  x_s = x_t + (s - t)\big(f(t)\,x_t - \tfrac12 g(t)^2 \hat s\big), \qquad
               \hat s = -\hat\varepsilon/\sigma_t.

    Evaluates only at step starts, so ``t_end = 0`` needs nothing special. Deterministic.
    """
    x, grid = _check_inputs(denoiser, x, timesteps)
    _check_callback(callback)
    _refuse_renoise(denoiser, "euler")
    state = _run_state(denoiser)
    for i in range(grid.steps):
        t, s = grid.times[i], grid.times[i + 1]
        if state is not None:
            state.step = i
        eps = _eps(denoiser, x, t, condition, grid, i, state)
        x = x + (s - t) * _pf_ode_velocity(grid, i, x, eps)
        x = _check_state(x, grid, i)
        if callback is not None:
            callback(i, s, x, eps)
    return x


@register_sampler("heun", order=2, evaluations_per_step=2, noise=_ode)
def heun(denoiser: Denoiser, x: Tensor, timesteps, *, condition: Condition = None, eta: float = 0.0,
         generator: torch.Generator | None = None, noise: Tensor | None = None,
         callback: Callback | None = None) -> Tensor:
    r"""Heun's second-order method in t on the probability-flow ODE (Karras et al. 2022, Algorithm 1, written in t
    with :math:`v(x, t) = f x - \tfrac12 g^2 \hat s`):

    .. math::  \tilde x = x_t + (s - t)\,v(x_t, t), \qquad
               x_s = x_t + \tfrac{s - t}{2}\big(v(x_t, t) + v(\tilde x, s)\big).

    Where :math:`\sigma_s = 0` (the last step to ``t_end = 0`` on VP) the score is undefined and the step is Euler's
    :math:`\tilde x`, as in Karras' Algorithm 1 (line 6). Two evaluations per step, one on such a last step.
    """
    x, grid = _check_inputs(denoiser, x, timesteps)
    _check_callback(callback)
    _refuse_renoise(denoiser, "heun")
    state = _run_state(denoiser)
    for i in range(grid.steps):
        t, s = grid.times[i], grid.times[i + 1]
        if state is not None:
            state.step = i
        eps = _eps(denoiser, x, t, condition, grid, i, state)
        velocity = _pf_ode_velocity(grid, i, x, eps)
        x_euler = x + (s - t) * velocity
        if grid.sigma[i + 1] > 0:
            x_euler = _check_state(x_euler, grid, i)
            eps_next = _eps(denoiser, x_euler, s, condition, grid, i, state, second=True)
            x = x + (0.5 * (s - t)) * (velocity + _pf_ode_velocity(grid, i + 1, x_euler, eps_next))
        else:
            x = x_euler
        x = _check_state(x, grid, i)
        if callback is not None:
            callback(i, s, x, eps)
    return x


@register_sampler("euler_maruyama", order=1, noise=_sde)
def euler_maruyama(denoiser: Denoiser, x: Tensor, timesteps, *, condition: Condition = None, eta: float = 0.0,
                   generator: torch.Generator | None = None, noise: Tensor | None = None,
                   callback: Callback | None = None) -> Tensor:
    r"""Euler–Maruyama on the reverse-time SDE (Song et al. 2021, eq. 6; Anderson 1982), backwards in t:

    .. math::  x_s = x_t + (s - t)\big(f(t)\,x_t - g(t)^2 \hat s\big) + g(t)\sqrt{t - s}\; z.

    Noise is added on every step, the last included (no final denoising step), so the output is the
    discretised SDE's state at ``t_end``. ``eta`` is ignored.
    """
    x, grid = _check_inputs(denoiser, x, timesteps)
    _check_callback(callback)
    _refuse_renoise(denoiser, "euler_maruyama")
    state = _run_state(denoiser)
    draw = _noise_source(grid, x, generator, noise, "euler_maruyama")
    for i in range(grid.steps):
        t, s = grid.times[i], grid.times[i + 1]
        if state is not None:
            state.step = i
        eps = _eps(denoiser, x, t, condition, grid, i, state)
        g2 = float(grid.schedule.diffusion_squared(t))
        x = x + (s - t) * _pf_ode_velocity(grid, i, x, eps, sde=True) + math.sqrt(g2 * (t - s)) * draw(i)
        x = _check_state(x, grid, i)
        if callback is not None:
            callback(i, s, x, eps)
    return x


@register_sampler("dpmpp_2m", order=2, noise=_ode, multistep=True)
def dpmpp_2m(denoiser: Denoiser, x: Tensor, timesteps, *, condition: Condition = None, eta: float = 0.0,
             generator: torch.Generator | None = None, noise: Tensor | None = None,
             callback: Callback | None = None) -> Tensor:
    r"""DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Algorithm 2): multistep data prediction in
    :math:`\ell = \log(\alpha/\sigma) = \lambda/2`, with :math:`h_i = \ell_s - \ell_t`, :math:`r_i = h_{i-1}/h_i`,

    .. math::  D_i = \Big(1 + \frac{1}{2r_i}\Big)\hat x_0^{(i)} - \frac{1}{2r_i}\hat x_0^{(i-1)}, \qquad
               x_s = \frac{\sigma_s}{\sigma_t} x_t - \alpha_s\big(e^{-h_i} - 1\big) D_i,

    and :math:`D_0 = \hat x_0^{(0)}` on the first step (first order, DDIM). A last step to :math:`\sigma_s = 0`
    (:math:`h = \infty`) is first order too, :math:`x_s = \alpha_s \hat x_0` (as k-diffusion's ``sample_dpmpp_2m``
    and diffusers' ``final_sigmas_type="zero"``); that step's error is :math:`O(\sigma_t^2)`, which on a uniform
    t grid to ``t_end = 0`` is :math:`O(1/n)`: for second-order convergence end at ``t_end > 0``. Deterministic.
    """
    x, grid = _check_inputs(denoiser, x, timesteps)
    _check_callback(callback)
    _refuse_renoise(denoiser, "dpmpp_2m")
    state = _run_state(denoiser)
    x0_prev, h_prev = None, None
    for i in range(grid.steps):
        t, s = grid.times[i], grid.times[i + 1]
        if state is not None:
            state.step = i
        alpha_t, sigma_t, alpha_s, sigma_s = grid.alpha[i], grid.sigma[i], grid.alpha[i + 1], grid.sigma[i + 1]
        eps = _eps(denoiser, x, t, condition, grid, i, state)
        x0 = param.eps_to_x0(x, eps, alpha_t, sigma_t)
        if sigma_s == 0:
            x, h = alpha_s * x0, math.inf
        else:
            h = 0.5 * (grid.log_snr[i + 1] - grid.log_snr[i])
            if x0_prev is None:
                data = x0
            else:
                half_inv_r = 0.5 * h / h_prev  # 1 / (2 r_i)
                data = (1.0 + half_inv_r) * x0 - half_inv_r * x0_prev
            x = (sigma_s / sigma_t) * x - (alpha_s * math.expm1(-h)) * data
        x0_prev, h_prev = x0, h
        x = _check_state(x, grid, i)
        if callback is not None:
            callback(i, s, x, eps)
    return x


def sample(name: str, denoiser: Denoiser, x: Tensor, timesteps, **kw) -> Tensor:
    """Run the sampler called ``name`` (a key of :data:`SAMPLERS` or :data:`TILTED_SAMPLERS`) with the common
    signature."""
    return get_sampler(name)(denoiser, x, timesteps, **kw)


# --------------------------------------------------------------------------------------------------------------
# Grids and evaluation counts
# --------------------------------------------------------------------------------------------------------------
def time_grid(n_steps: int, t_start: float = 1.0, t_end: float = 0.0, spacing: str = "uniform",
              schedule: str | Schedule | None = None) -> Tensor:
    r"""``n_steps + 1`` decreasing float64 times from ``t_start`` to ``t_end``.

    ``spacing="uniform"``: equal steps in t. ``"log_snr"``: equal steps in :math:`\lambda(t)` of ``schedule``
    (DPM-Solver's "logSNR" skip type, Lu et al. 2022a, section 3.3); needs :math:`\sigma(t_{end}) > 0` (finite
    :math:`\lambda`) and :math:`\alpha(t_{start}) > 0`.
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, numbers.Integral) or n_steps < 1:
        raise ValueError(f"n_steps: must be a positive int, got {n_steps!r}")
    n_steps = int(n_steps)
    t_start, t_end = as_scalar(t_start, "t_start"), as_scalar(t_end, "t_end")
    if not 0.0 <= t_end < t_start <= 1.0:
        raise ValueError(f"t_start, t_end: need 0 <= t_end < t_start <= 1, got t_start={t_start!r}, t_end={t_end!r}")
    if not isinstance(spacing, str):
        raise ValueError(f"spacing: must be 'uniform' or 'log_snr', got {spacing!r}")
    if spacing == "uniform":
        return torch.linspace(t_start, t_end, n_steps + 1, dtype=F64)
    if spacing != "log_snr":
        raise ValueError(f"spacing: must be 'uniform' or 'log_snr', got {spacing!r}")
    if schedule is None:
        raise ValueError("schedule: spacing='log_snr' needs the schedule")
    sched = get_schedule(schedule)
    lam_start, lam_end = (float(v) for v in sched.log_snr(torch.tensor([t_start, t_end], dtype=F64)))
    if not math.isfinite(lam_end):
        raise ValueError(f"t_end: log-SNR is infinite at t_end={t_end!r} on {sched.name!r} (sigma = 0); use t_end > 0")
    if not math.isfinite(lam_start):
        raise ValueError(f"t_start: log-SNR is infinite at t_start={t_start!r} on {sched.name!r} (alpha = 0)")
    times = sched.t_from_log_snr(torch.linspace(lam_start, lam_end, n_steps + 1, dtype=F64))
    times[0], times[-1] = t_start, t_end
    if not bool((times[1:] < times[:-1]).all()):
        raise ValueError(f"n_steps: {n_steps} log-SNR steps are too fine to stay strictly decreasing in t")
    return times


def sampler_nfe(name: str, timesteps, schedule: str | Schedule) -> int:
    """Denoiser calls a sampler makes on ``timesteps`` (:meth:`SamplerSpec.nfe`): one per step; Heun two per step,
    one on a last step to sigma = 0. (A guided denoiser makes one batched base-model call per call.)"""
    return get_sampler(name).nfe(timesteps, schedule)


@dataclass(frozen=True)
class EvaluationCount:
    """What a sampler run cost: ``calls`` of the denoiser it was given (the sampler's NFE), ``model_calls`` and
    ``model_points`` of the base model underneath the guidance wrapper (one batched call of 2N rows per CFG call)."""

    output: Tensor
    calls: int
    model_calls: int
    model_points: int


def count_evaluations(name: str, model: Denoiser, x: Tensor, timesteps, *,
                      guide: Callable[[Denoiser], Denoiser] | None = None, **kw) -> EvaluationCount:
    """Run ``sample(name, guide(model), x, timesteps, **kw)`` and count evaluations at both levels.

    ``guide`` builds the guided denoiser from the (counted) base model, e.g.
    ``lambda m: rules.get("cfg", w=3).guide(m, 1)``; without it the sampler calls ``model`` directly and both counts
    agree.
    """
    if guide is not None and not callable(guide):
        raise TypeError(f"guide: expected a callable (Denoiser -> Denoiser) or None, got {type(guide).__name__}")
    base = CountingDenoiser(model)
    outer = CountingDenoiser(guide(base) if guide is not None else base)
    output = sample(name, outer, x, timesteps, **kw)
    return EvaluationCount(output, outer.calls, base.calls, base.points)
