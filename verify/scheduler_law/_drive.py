r"""Driving a scheduler with exact predictions, and the law of what it produces.

A *run* is what a diffusers pipeline does: ``set_timesteps(steps)``, :math:`x_T = \text{init\_noise\_sigma}\cdot z`,
then for each ``timestep`` of ``scheduler.timesteps``: ``model_input = scale_model_input(x, timestep)``, the model's
output at ``(model_input, timestep)``, ``x = step(output, timestep, x).prev_sample``. Here the model is the exact
guided prediction of an analytic world (:mod:`toy_models`, :mod:`verify.rules`) at the noise level the timestep
names on the scheduler's training grid (:class:`~verify.scheduler_law._schedules.GridSchedule`), given in the
scheduler's ``prediction_type``.

**The probe.** When the run is deterministic and affine in :math:`x_T`, :math:`y = A x_T + b`, its law from
:math:`x_T \sim \mathcal N(0, s^2 I)` is :math:`\mathcal N(b, s^2 A A^\top)` exactly. ``b`` is the run from
:math:`x_T = 0`, column ``i`` of ``A`` is the run from :math:`s e_i` minus ``b``, over ``s``; extra runs from points
up to :math:`4s` check the affine prediction within a rounding bound (:func:`affinity_tolerance`). All probe points
go through the scheduler as one batch. A second run with another random generator tells whether the scheduler draws
noise; a stochastic or non-affine run falls back to Monte Carlo.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from toy_models import parametrization as param
from toy_models.denoiser import AnalyticDenoiser
from toy_models.schedules import RectifiedFlow, Schedule
from toy_models.world import World
from verify.rules import Rule
from verify.tolerances import gamma

from ._schedules import LAM_PURE_NOISE, GridSchedule, log_snr_of

F64 = torch.float64
F32_U = 2.0**-24
#: the log-SNR used for a first level of pure noise (flow matching's sigma = 1, lambda = -inf): N(0, I) there is
#: the exact marginal to within alpha^2 = e^{-40} = 4e-18 of every moment, far below any bias reported here
#: flow matching at sigma = 1 (alpha = 0) has no analytic denoiser; it is evaluated at sigma = 1 - 2^-20, where the
#: exact velocity differs by O(2^-20) |d v / d sigma| ~ 1e-6 (one step of length 1/steps: 1e-6/steps on the sample)
#: and the x0 route's rounding u / 2^-20 ~ 2e-10
FLOW_EDGE = 2.0**-20


class NotAffine(Exception):
    """The probe found the run not affine in x_T (within its rounding bound)."""


class NonFinite(ValueError):
    """A run produced inf or NaN from finite inputs."""


def _diffusers():
    try:
        import diffusers
    except ImportError as err:  # pragma: no cover - exercised only without diffusers
        raise ImportError("scheduler: naming a diffusers scheduler needs diffusers; pip install cfgtruth[diffusers]"
                          ) from err
    return diffusers


def _is_scheduler_class(obj: Any) -> bool:
    return isinstance(obj, type) and all(callable(getattr(obj, m, None)) for m in ("set_timesteps", "step"))


@dataclass
class Factory:
    """Makes fresh scheduler instances: the user's class and configuration, with overrides."""

    cls: type
    config: dict
    instance: Any | None = None  # a duck-typed object without from_config: deep-copied, never reconfigured

    @property
    def configurable(self) -> bool:
        return self.instance is None

    def make(self, overrides: Mapping[str, Any] | None = None):
        overrides = dict(overrides or {})
        if self.instance is not None:
            if overrides:
                raise ValueError(f"scheduler: a {type(self.instance).__name__} without from_config cannot be "
                                 f"reconfigured with {overrides}")
            import copy

            return copy.deepcopy(self.instance)
        return self.cls.from_config({**self.config, **overrides})

    def defaults(self) -> dict:
        """The class's own defaults (its ``__init__`` signature)."""
        out = {}
        for name, p in inspect.signature(self.cls.__init__).parameters.items():
            if name != "self" and p.default is not inspect.Parameter.empty:
                out[name] = p.default
        return out


def _public(config) -> dict:
    """A configuration without diffusers' bookkeeping entries (``_use_default_values``, ``_class_name``...), which
    would otherwise make ``from_config`` drop the overrides it is given."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def resolve(scheduler) -> Factory:
    """A :class:`Factory` for a diffusers class name, a scheduler class or an instance (its config the default)."""
    if isinstance(scheduler, str):
        diffusers = _diffusers()
        cls = getattr(diffusers, scheduler, None)
        if not _is_scheduler_class(cls):
            known = sorted(n for n in dir(diffusers) if n.endswith("Scheduler"))[:12]
            raise ValueError(f"scheduler: no class {scheduler!r} in diffusers; pass a scheduler class, an instance, "
                             f"or a name such as {known}")
        return Factory(cls, _public(cls().config))
    if isinstance(scheduler, type):
        if not _is_scheduler_class(scheduler):
            raise TypeError(f"scheduler: class {scheduler.__name__} has no set_timesteps/step (the diffusers "
                            f"scheduler API)")
        if callable(getattr(scheduler, "from_config", None)):
            return Factory(scheduler, _public(scheduler().config))
        return Factory(scheduler, {}, instance=scheduler())
    if not all(callable(getattr(scheduler, m, None)) for m in ("set_timesteps", "step")):
        raise TypeError(f"scheduler: expected a diffusers scheduler name, class or instance (with set_timesteps "
                        f"and step), got {type(scheduler).__name__}")
    config = getattr(scheduler, "config", None)
    if config is not None and callable(getattr(type(scheduler), "from_config", None)):
        return Factory(type(scheduler), _public(config))
    return Factory(type(scheduler), {}, instance=scheduler)


# ------------------------------------------------------------------------------------------------------------
# The noise levels a scheduler uses
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Levels:
    """How a scheduler's timesteps name noise levels: ``"vp"`` (a training grid ``alphas_cumprod``; VE sigmas
    :math:`\\sigma/\\alpha` where the scheduler keeps them) or ``"flow"`` (:math:`x = (1 - s)x_0 + s\\varepsilon`,
    ``s = timestep / N``)."""

    kind: str
    n_train: int
    schedule: Schedule
    grid: GridSchedule | None = None

    def t_of_timestep(self, timestep: float) -> float:
        if self.kind == "flow":
            return min(max(timestep / self.n_train, 0.0), 1.0 - FLOW_EDGE)
        k = min(max(timestep, -1.0), self.n_train - 1.0)
        return (k + 1.0) / self.n_train

    def lam_at_t(self, t: float) -> float:
        if self.kind == "flow":
            return 2.0 * (math.log1p(-t) - math.log(t)) if 0 < t < 1 else (math.inf if t <= 0 else -math.inf)
        return float(self.schedule.log_snr(t))

    def lam_of_sigma(self, sigma: float) -> float:
        """Log-SNR of the scheduler's own ``sigmas`` entry (VE ratio on VP grids, flow sigma on flow)."""
        if sigma <= 0:
            return math.inf
        if self.kind == "flow":
            return -math.inf if sigma >= 1 else 2.0 * (math.log1p(-sigma) - math.log(sigma))
        return -2.0 * math.log(sigma)


def levels_of(sched) -> Levels:
    n_train = int(getattr(getattr(sched, "config", {}), "get", lambda *_: None)("num_train_timesteps") or 1000)
    ac = getattr(sched, "alphas_cumprod", None)
    if ac is not None:
        grid = GridSchedule(ac)
        return Levels("vp", grid.n, grid, grid)
    if getattr(sched, "sigmas", None) is not None:
        return Levels("flow", n_train, RectifiedFlow())
    raise TypeError("scheduler: has neither alphas_cumprod (a VP training grid) nor sigmas (flow matching); cannot "
                    "tell which noise level a timestep names")


def _scalar(v) -> float:
    return float(v.item() if isinstance(v, torch.Tensor) else v)


def own_sigma(sched, i: int, n_timesteps: int) -> float | None:
    """The scheduler's own ``sigmas[i]`` for the i-th model call, where it keeps one per timestep."""
    sigmas = getattr(sched, "sigmas", None)
    if sigmas is None or not hasattr(sigmas, "__len__") or len(sigmas) < n_timesteps:
        return None
    return _scalar(sigmas[i])


def start_end_levels(sched, levels: Levels) -> tuple[float, float]:
    """``(lambda_first, lambda_last)``: the log-SNR of the first model call and of the final output.

    The last level is the scheduler's final ``sigmas`` entry where it keeps one (0: clean), DDIM's
    ``final_alpha_cumprod`` (1 with ``set_alpha_to_one``: clean), else clean data (DDPM's last step goes to
    timestep -1, whose alpha-bar is 1)."""
    ts = sched.timesteps
    first = _model_level(sched, levels, 0, _scalar(ts[0]), len(ts))[0]
    sigmas = getattr(sched, "sigmas", None)
    if sigmas is not None and hasattr(sigmas, "__len__") and len(sigmas) > len(ts):
        last = levels.lam_of_sigma(_scalar(sigmas[-1]))
    elif getattr(sched, "final_alpha_cumprod", None) is not None:
        a = _scalar(sched.final_alpha_cumprod)
        last = math.inf if a >= 1.0 else float(log_snr_of(torch.tensor([a]))[0])
    else:
        last = math.inf
    if first == -math.inf:
        first = LAM_PURE_NOISE
    return first, last


def start_variance(sched, levels: Levels) -> tuple[float, float]:
    r"""``(v0, end_scale)``: the variance of the start in VP coordinates, :math:`(s \cdot c_0)^2` with ``s`` the
    ``init_noise_sigma`` and :math:`c_0` the factor ``scale_model_input`` applies at the first timestep (1 for VP
    states, :math:`1/\sqrt{1 + \sigma^2}` for the VE states of Euler and Heun); and the factor that takes the
    continuous (VP) law's final level back to the scheduler's coordinates (:math:`\sqrt{1 + \sigma_{last}^2}` for
    a VE state that ends at :math:`\sigma_{last} > 0`, else 1). Read by probing ``scale_model_input``."""
    ts = sched.timesteps
    s = init_noise_sigma(sched)
    if levels.kind == "flow":
        first = min(max(_scalar(ts[0]) / levels.n_train, 0.0), 1.0)
        return (s / math.hypot(1.0 - first, first)) ** 2, 1.0
    c0 = 1.0
    if callable(getattr(sched, "scale_model_input", None)):
        probe = torch.ones(1, 1, 1, 1, dtype=F64)
        c0 = float(sched.scale_model_input(probe, ts[0]).reshape(()))  # call on a scheduler that is not run
    end_scale = 1.0
    sigmas = getattr(sched, "sigmas", None)
    if c0 != 1.0 and sigmas is not None and len(sigmas) > len(ts):
        end_scale = math.sqrt(1.0 + _scalar(sigmas[-1]) ** 2)
    return (s * c0) ** 2, end_scale


def _model_level(sched, levels: Levels, i: int, timestep: float, n_timesteps: int) -> tuple[float, float, float]:
    r"""``(lambda, t, mismatch)`` for the i-th call: the level the timestep names on the training grid, or the
    scheduler's own sigma where it lies in the grid cell of a fractional timestep (between two trained levels the
    network's level is not defined; diffusers interpolates the sigma linearly or in log there). ``mismatch`` is
    :math:`|\lambda_{own} - \lambda_{grid}|` when the scheduler's own sigma is outside the cell (the model is then
    told another level than the one the update assumes), else 0."""
    t = levels.t_of_timestep(timestep)
    lam = levels.lam_at_t(t)
    sigma = own_sigma(sched, i, n_timesteps)
    if sigma is None or levels.kind == "flow":
        return lam, t, 0.0
    lam_own = levels.lam_of_sigma(sigma)
    lo_k, hi_k = math.floor(timestep), math.ceil(timestep)
    cell = [levels.lam_at_t(levels.t_of_timestep(k)) for k in (hi_k, lo_k)]
    # the scheduler keeps sigmas in float32: a few ulps of sigma, 2 * 8 * 2^-24 in lambda = -2 log sigma
    slack = 16.0 * F32_U
    if cell[0] - slack <= lam_own <= cell[1] + slack:
        lam_own = min(max(lam_own, cell[0]), cell[1])
        return lam_own, float(levels.schedule.t_from_log_snr(lam_own)), 0.0
    return lam, t, abs(lam_own - lam)


# ------------------------------------------------------------------------------------------------------------
# The exact model in the scheduler's prediction type
# ------------------------------------------------------------------------------------------------------------
def prediction_type_of(sched, levels: Levels) -> str:
    if levels.kind == "flow":
        return "flow"
    config = getattr(sched, "config", None)
    return str(config.get("prediction_type", "epsilon")) if config is not None else "epsilon"


class _CachedDenoiser(AnalyticDenoiser):
    """The exact denoiser, keeping each noised law it builds (a scheduler's runs revisit the same few levels; the
    law at a level is a pure function of the level and the condition, so a cached one is the same object)."""

    def __init__(self, world: World, schedule: Schedule):
        super().__init__(world, schedule)
        self._laws: dict = {}

    def noised_law(self, t: float, condition=None):
        key = (float(t), repr(condition))
        law = self._laws.get(key)
        if law is None:
            law = self._laws[key] = super().noised_law(t, condition)
        return law


_DENOISERS: dict = {}


def _denoiser(world: World, levels: Levels) -> _CachedDenoiser:
    """One cached denoiser per world and training grid (the grid is identified by its log-SNR values)."""
    grid_key = "flow" if levels.grid is None else levels.grid._lam.numpy().tobytes()
    key = (world.name, id(world), grid_key)
    if key not in _DENOISERS:
        if len(_DENOISERS) > 16:
            _DENOISERS.clear()
        _DENOISERS[key] = (world, _CachedDenoiser(world, levels.schedule))  # keeps world alive: id stays unique
    return _DENOISERS[key][1]


class ExactModel:
    """The guided exact prediction at the level a timestep names, in the scheduler's ``prediction_type``."""

    def __init__(self, world: World, rule: Rule, conditions, levels: Levels, prediction_type: str):
        self.levels = levels
        self.denoiser = _denoiser(world, levels)
        levels.schedule = self.denoiser.schedule  # one schedule object for the model and the conversions
        self.guided = rule.guide(self.denoiser, conditions)
        if prediction_type not in ("epsilon", "v_prediction", "sample", "flow", "flow_prediction"):
            raise ValueError(f"scheduler: prediction_type {prediction_type!r} is not one the audit can produce "
                             f"(epsilon, v_prediction, sample, flow velocity)")
        self.prediction_type = prediction_type
        self.max_mismatch = 0.0

    def __call__(self, sched, x_in: torch.Tensor, timestep: float, i: int, n_timesteps: int, state) -> torch.Tensor:
        _, t, mismatch = _model_level(sched, self.levels, i, timestep, n_timesteps)
        self.max_mismatch = max(self.max_mismatch, mismatch)
        x = x_in
        eps = self.guided.eps(x, t, state=state) if state is not None else self.guided.eps(x, t)
        alpha, sigma = (float(v) for v in self.levels.schedule.alpha_sigma(t))
        kind = self.prediction_type
        if kind == "epsilon":
            out = eps
        elif kind == "sample":
            out = param.convert(eps, "eps", "x0", x=x, alpha=alpha, sigma=sigma)
        elif kind == "v_prediction":
            out = param.convert(eps, "eps", "v", x=x, alpha=alpha, sigma=sigma)
        else:  # flow velocity d x / d s = eps - x0 (Lipman et al. 2023), also DPM-Solver's flow_prediction
            if self.levels.kind == "flow":
                out = eps - param.convert(eps, "eps", "x0", x=x, alpha=alpha, sigma=sigma)
            else:
                raise ValueError("scheduler: flow_prediction on a VP training grid is not a velocity the audit "
                                 "defines (use use_flow_sigmas)")
        return out.to(x_in.dtype)


# ------------------------------------------------------------------------------------------------------------
# One run
# ------------------------------------------------------------------------------------------------------------
def _step_kwargs(sched, generator: torch.Generator, extra: Mapping[str, Any]) -> dict:
    params = inspect.signature(sched.step).parameters
    kw = {k: v for k, v in extra.items() if k in params}
    if "generator" in params:
        kw["generator"] = generator
    return kw


def init_noise_sigma(sched) -> float:
    return _scalar(getattr(sched, "init_noise_sigma", 1.0))


def run(sched, model: ExactModel, x_T: torch.Tensor, *, seed: int, step_kwargs: Mapping[str, Any] | None = None,
        trace: list | None = None) -> torch.Tensor:
    """One pipeline run from ``x_T`` (already scaled by ``init_noise_sigma``); ``trace`` collects ``max |x|``."""
    generator = torch.Generator().manual_seed(seed)
    kw = _step_kwargs(sched, generator, step_kwargs or {})
    state = model.guided.new_state()
    timesteps = list(sched.timesteps)
    # pipelines hand schedulers image-shaped [B, C, H, W] samples, and some of diffusers' code (dynamic
    # thresholding) needs a dimension beyond the channels: the d coordinates are the channels of a 1-pixel sample
    x = x_T.reshape(x_T.shape[0], x_T.shape[1], 1, 1)
    for i, tau in enumerate(timesteps):
        if state is not None:
            state.step = i
        x_in = sched.scale_model_input(x, tau) if callable(getattr(sched, "scale_model_input", None)) else x
        flat = x_in.reshape(x_T.shape).to(F64)
        out = model(sched, flat, _scalar(tau), i, len(timesteps), state).reshape(x.shape)
        res = sched.step(out, tau, x, **kw)
        x = res.prev_sample if hasattr(res, "prev_sample") else res[0]
        x = x.to(F64)
        if not bool(torch.isfinite(x).all()):
            raise NonFinite(f"the run produces non-finite values at step {i} (timestep {_scalar(tau):g})")
        if trace is not None:
            trace.append(float(x.abs().max()))
    return x.reshape(x_T.shape)


def fresh(factory: Factory, overrides: Mapping[str, Any], steps: int):
    sched = factory.make({k: v for k, v in overrides.items() if k not in STEP_ARGS})
    sched.set_timesteps(steps)
    return sched


#: settings that are arguments of ``step`` rather than of the configuration
STEP_ARGS = ("eta",)


def step_args(overrides: Mapping[str, Any]) -> dict:
    return {k: v for k, v in overrides.items() if k in STEP_ARGS}


# ------------------------------------------------------------------------------------------------------------
# Laws
# ------------------------------------------------------------------------------------------------------------
@dataclass
class RawLaw:
    mean: np.ndarray
    cov: np.ndarray
    method: str
    se_mean: np.ndarray | None = None
    se_cov: np.ndarray | None = None
    tolerance: float = 0.0  # the probe's rounding bound on the map (0 for Monte Carlo)


def affinity_tolerance(n_calls: int, scale: float, gain: float) -> float:
    r"""Bound on :math:`|y - (A x + b)|` at a probe point from rounding alone.

    Each step of a scheduler is at most about 10 roundings of quantities of the size of the state (a prediction
    conversion, an x0 estimate, a two- or three-term update), and diffusers keeps its coefficients, and in several
    schedulers the state itself, in float32, so the unit roundoff is float32's. A rounding made at one step is
    carried by the later steps with a gain bounded by that of the whole map, ``gain = max(1, ||A||)``. Three runs
    enter the comparison (the point, 0 and the basis vectors). So ``3 gain gamma_{10 n} (float32) scale`` with
    ``scale`` the largest ``|x|`` met along the probe trajectories."""
    return 3.0 * gain * gamma(10 * n_calls, torch.float32) * scale


def probe_points(dim: int, s: float, seed: int) -> torch.Tensor:
    """0, ``s e_i`` and 6 check points at ``+-{1, 2.5, 4} s`` along a fixed random unit direction."""
    g = torch.Generator().manual_seed(10_007 + seed)
    u = torch.randn(dim, generator=g, dtype=F64)
    u = u / u.norm()
    checks = torch.stack([c * s * u for c in (1.0, -1.0, 2.5, -2.5, 4.0, -4.0)])
    return torch.cat([torch.zeros(1, dim, dtype=F64), s * torch.eye(dim, dtype=F64), checks])


def probe_law(factory: Factory, overrides: Mapping[str, Any], model_of: Callable, steps: int, dim: int,
              seed: int) -> tuple[RawLaw, float]:
    """The exact law by the affine probe; raises :class:`NotAffine` (with the reason) when it does not apply.
    Returns ``(law, largest model-level mismatch)``."""
    sched = fresh(factory, overrides, steps)
    s = init_noise_sigma(sched)
    pts = probe_points(dim, s, seed)
    model = model_of(sched)
    trace: list[float] = []
    y = run(sched, model, pts, seed=seed, step_kwargs=step_args(overrides), trace=trace)
    sched2 = fresh(factory, overrides, steps)
    y2 = run(sched2, model_of(sched2), pts, seed=seed + 1, step_kwargs=step_args(overrides))
    if not torch.equal(y, y2):
        raise NotAffine("stochastic: two runs from the same x_T with different generators differ")
    b = y[0]
    a_mat = (y[1:1 + dim] - b).T / s  # [d_out, d_in]
    pred = b + pts[1 + dim:] @ a_mat.T
    n_calls = len(sched.timesteps)
    gain = max(1.0, float(torch.linalg.matrix_norm(a_mat, ord=2)) * s)
    scale = max(trace + [float(pts.abs().max())])
    tol = affinity_tolerance(n_calls, scale, gain)
    dev = float((y[1 + dim:] - pred).abs().max())
    if not math.isfinite(dev) or dev > tol:
        raise NotAffine(f"not affine: the check points miss the affine map by {dev:.3g} > rounding bound {tol:.3g}")
    cov = s**2 * (a_mat @ a_mat.T)
    return RawLaw(b.numpy().copy(), cov.numpy().copy(), "affine probe", tolerance=tol), model.max_mismatch


def monte_carlo_law(factory: Factory, overrides: Mapping[str, Any], model_of: Callable, steps: int, dim: int,
                    seed: int, n: int) -> tuple[RawLaw, float, np.ndarray]:
    r"""Mean and covariance from ``n`` runs (fixed seed), with standard errors: of the mean
    :math:`\sqrt{S_{ii}/n}`, of each covariance entry :math:`\sqrt{\widehat{\mathrm{Var}}((x_i - m_i)(x_j - m_j))/n}`
    (the sample variance of the products; the CLT makes each estimate's error about normal with that scale, to
    O(n^-1/2) relative, so a |z| > 3 rule has a false-alarm rate of about 0.27 % per comparison)."""
    sched = fresh(factory, overrides, steps)
    s = init_noise_sigma(sched)
    g = torch.Generator().manual_seed(seed)
    x_T = s * torch.randn(n, dim, generator=g, dtype=F64)
    model = model_of(sched)
    y = run(sched, model, x_T, seed=seed, step_kwargs=step_args(overrides))
    y_np = y.numpy()
    mean = y_np.mean(0)
    c = y_np - mean
    cov = np.atleast_2d(np.cov(y_np.T))
    prods = c[:, :, None] * c[:, None, :]
    se_cov = np.sqrt(prods.var(0, ddof=1) / n)
    se_mean = np.sqrt(np.diag(cov) / n)
    return RawLaw(mean, cov, "monte carlo", se_mean, se_cov), model.max_mismatch, y_np
