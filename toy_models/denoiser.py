r"""The Denoiser protocol and the exact denoiser of a Gaussian-mixture world.

A denoiser predicts the noise :math:`\varepsilon` in :math:`x_t = \alpha_t x_0 + \sigma_t \varepsilon` for a
point, a time and a condition (``None`` for the null condition, a class label, or tokens). Everything downstream
(guidance combiners, samplers, claim checks) talks to this protocol only, so the analytic ground truth and a
trained network (``toy_models.neural``) are interchangeable.

The exact prediction is :math:`\hat\varepsilon(x, t, c) = -\sigma_t \nabla_x \log p_t(x \mid c)` with
:math:`p_t(\cdot \mid c)` the noised law of the world (``GaussianMixture.noised``): the minimiser of the
denoising loss :math:`E\|\varepsilon_\theta(x_t, t, c) - \varepsilon\|^2` (Vincent 2011; Song et al. 2021, eq. 7).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from typing import Protocol, runtime_checkable

import torch

from . import parametrization as param
from ._checks import COMPUTE_DTYPES, Tensorish, as_tensor, check_points, real_dtype_of
from .gaussian_mixture import Condition, GaussianMixture, normalize_condition
from .schedules import Schedule, get_schedule
from .world import World

__all__ = ["Denoiser", "AnalyticDenoiser", "WrappedDenoiser", "CountingDenoiser", "predict_many"]

#: noised laws an AnalyticDenoiser keeps (the most recently used): a sampler's step asks for every condition at one
#: time, and x0() for the same law again, so a few suffice; a law is small (K d^2 numbers per parameter)
NOISED_LAW_CACHE = 8
#: scalar times whose schedule coefficients an AnalyticDenoiser keeps (two floats each; emptied when full)
COEFFICIENT_CACHE = 1024


@runtime_checkable
class Denoiser(Protocol):
    """Anything that predicts eps for ``(x [N, d], t, condition)``.

    ``t`` is a float or a tensor of shape ``[N]``; ``condition`` is ``None`` (null), an int label, a token or a
    sequence of tokens. Returns ``[N, d]`` in ``x``'s dtype; never modifies ``x``.

    A denoiser may also offer ``eps_multi(x, t, conditions) -> list of [N, d]``: the predictions for several
    conditions at the same points in one batched call (a network runs one forward pass of ``len(conditions) N``
    rows). Guidance wrappers use it when present (:func:`predict_many`).
    """

    schedule: Schedule
    dim: int

    def eps(self, x: torch.Tensor, t: Tensorish, condition: Condition = None) -> torch.Tensor: ...


class AnalyticDenoiser:
    """The exact eps-prediction of a world under a schedule: ``-sigma_t * score of p_t(x | c)``.

    Parameters
    ----------
    world : World or GaussianMixture
    schedule : a schedule name (``"vp-linear"``, ...) or a :class:`~toy_models.schedules.Schedule`
    dtype : compute dtype (float64 default; float32 supported)

    The law of each condition and the last :data:`NOISED_LAW_CACHE` noised laws (keyed by condition, alpha_t and
    sigma_t) are kept, so a sampler's step builds each noised law once; the laws are immutable, so a kept law is the
    one that would be built again. The points are checked once per call (once for all conditions of
    :meth:`eps_multi`).
    """

    def __init__(self, world: World | GaussianMixture, schedule: str | Schedule = "vp-linear",
                 dtype: torch.dtype = torch.float64):
        if isinstance(world, GaussianMixture):
            world = World("mixture", world)
        if not isinstance(world, World):
            raise TypeError(f"world: expected a World or a GaussianMixture, got {type(world).__name__}")
        if dtype not in COMPUTE_DTYPES:
            raise ValueError(f"dtype: must be torch.float64 or torch.float32, got {dtype}")
        self.world = world.to(dtype)
        self.schedule = get_schedule(schedule)
        self.dtype = dtype
        self._laws: dict[Hashable, GaussianMixture] = {}
        self._noised: OrderedDict[tuple[Hashable, float, float], GaussianMixture] = OrderedDict()
        self._coefficients: dict[float, tuple[float, float]] = {}

    @property
    def dim(self) -> int:
        return self.world.dim

    def noised_law(self, t: float, condition: Condition = None) -> GaussianMixture:
        r""":math:`p_t(x \mid c)`: the world's law of ``condition`` pushed through the forward process to ``t``."""
        if type(t) is float:
            alpha, sigma = self._scalar_coefficients(t)
        else:
            alpha, sigma = (float(v) for v in self.schedule.alpha_sigma(t))
        if alpha <= 0:
            raise ValueError(f"t: alpha(t) = 0 at t = {float(t)!r} on schedule {self.schedule.name!r}; "
                             f"the noised law is not a Gaussian mixture there (pure noise)")
        key = normalize_condition(condition)
        law = self._laws.get(key)
        if law is None:
            law = self._laws[key] = self.world.law(condition)
        cache_key = (key, alpha, sigma)
        noised = self._noised.get(cache_key)
        if noised is None:
            noised = self._noised[cache_key] = law.noised(alpha, sigma)
            if len(self._noised) > NOISED_LAW_CACHE:
                self._noised.popitem(last=False)
        else:
            self._noised.move_to_end(cache_key)
        return noised

    def _scalar_coefficients(self, t: float) -> tuple[float, float]:
        """``(alpha_t, sigma_t)`` of a time given as a Python float, from the schedule (which checks ``t``) the first
        time, then kept: the schedule is immutable."""
        found = self._coefficients.get(t)
        if found is None:
            alpha, sigma = self.schedule.alpha_sigma(t)
            found = (float(alpha), float(sigma))
            if len(self._coefficients) >= COEFFICIENT_CACHE:
                self._coefficients.clear()
            self._coefficients[t] = found
        return found

    def _sigma(self, t: Tensorish, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\sigma_t` in ``x``'s dtype, one value or one per row ``[N, 1]`` (the schedule's float64, cast)."""
        if type(t) is float:
            return torch.tensor(self._scalar_coefficients(t)[1], dtype=torch.float64).to(x.dtype)
        return self._per_row(self.schedule.sigma(t), x)

    def score(self, x: torch.Tensor, t: Tensorish, condition: Condition = None) -> torch.Tensor:
        r""":math:`\nabla_x \log p_t(x \mid c)`, ``[N, d]``. ``t`` a float or ``[N]``."""
        return self._score(self._points(x), t, condition)

    def _score(self, x: torch.Tensor, t: Tensorish, condition: Condition) -> torch.Tensor:
        """:meth:`score` of points already checked by :meth:`_points`."""
        if type(t) is float:
            return self._law_score(self.noised_law(t, condition), x)
        times = as_tensor(t, "t", copy=False)
        if times.numel() == 1:
            return self._law_score(self.noised_law(float(times.reshape(())), condition), x)
        if times.shape != (x.shape[0],):
            raise ValueError(f"t: expected a scalar or shape [N] = [{x.shape[0]}], got {list(times.shape)}")
        out = torch.empty(x.shape, dtype=x.dtype)
        for value in torch.unique(times):  # group equal times: one noised law each
            rows = times == value
            out[rows] = self._law_score(self.noised_law(float(value), condition), x[rows])
        return out

    @staticmethod
    def _law_score(law: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
        """``law.score(x)`` in ``x``'s dtype, for checked points (converted to the law's dtype as ``law.score`` would:
        exactly from float32 to float64, rounded the other way); the law does not check them again."""
        return law._checked_score(x.to(law.dtype)).to(x.dtype)

    def eps(self, x: torch.Tensor, t: Tensorish, condition: Condition = None) -> torch.Tensor:
        r""":math:`\hat\varepsilon = -\sigma_t \nabla_x \log p_t(x \mid c)`, ``[N, d]``."""
        x = self._points(x)
        return self._eps(x, t, condition, self._sigma(t, x))

    def eps_multi(self, x: torch.Tensor, t: Tensorish, conditions: list[Condition]) -> list[torch.Tensor]:
        """The predictions for several conditions at the same points, in one call (the batched interface)."""
        x = self._points(x)
        sigma = self._sigma(t, x)
        return [self._eps(x, t, c, sigma) for c in conditions]

    def _eps(self, x: torch.Tensor, t: Tensorish, condition: Condition, sigma: torch.Tensor) -> torch.Tensor:
        """eps of checked points: ``(-sigma) * score`` (the formula of ``parametrization.score_to_eps``, to the bit,
        computed in place: the score is this call's own tensor); a result that overflows goes through that function
        with the score computed again, which rescales or refuses it."""
        eps = self._score(x, t, condition).mul_(-sigma)
        if math.isfinite(float(eps.sum())) or bool(torch.isfinite(eps).all()):
            return eps
        return param.score_to_eps(self._score(x, t, condition), sigma)

    def x0(self, x: torch.Tensor, t: Tensorish, condition: Condition = None) -> torch.Tensor:
        r""":math:`E[x_0 \mid x_t = x, c]` by Tweedie's formula, ``[N, d]``."""
        x = self._points(x)
        alpha, sigma = (self._per_row(v, x) for v in self.schedule.alpha_sigma(t))
        return param.convert(self.eps(x, t, condition), "eps", "x0", x=x, alpha=alpha, sigma=sigma)

    def _points(self, x: Tensorish) -> torch.Tensor:
        """``x`` under the input policy: float32/float64 kept (the output has the caller's dtype), integers
        converted exactly to the denoiser's dtype, everything else refused."""
        return check_points(x, self.dim, real_dtype_of(x, self.dtype))

    @staticmethod
    def _per_row(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        value = value.to(x.dtype)
        return value.reshape(-1, 1) if value.numel() > 1 else value.reshape(())

    def __repr__(self) -> str:
        return f"AnalyticDenoiser(world={self.world.name!r}, schedule={self.schedule.name!r}, dtype={self.dtype})"


def predict_many(denoiser: Denoiser, x: torch.Tensor, t: Tensorish, conditions: list[Condition]) -> list[torch.Tensor]:
    """Predictions for several conditions: one batched ``eps_multi`` call if the denoiser has it, else one ``eps``
    call per condition."""
    batched = getattr(denoiser, "eps_multi", None)
    if batched is not None:
        return batched(x, t, conditions)
    return [denoiser.eps(x, t, c) for c in conditions]


class WrappedDenoiser:
    """Base of denoisers built on another (``self.denoiser``): they share its schedule and dimension."""

    denoiser: Denoiser

    @property
    def schedule(self) -> Schedule:
        return self.denoiser.schedule

    @property
    def dim(self) -> int:
        return self.denoiser.dim


class CountingDenoiser(WrappedDenoiser):
    """Wraps a denoiser and counts its evaluations, for compute claims: ``calls`` (forward passes; a batched
    ``eps_multi`` call is one) and ``points`` (rows evaluated: ``len(conditions) N`` for a batched call).

    A guided denoiser underneath keeps working through it: its run state (``new_state``, ``state=``) and its
    re-noising prediction (``predict``) pass through unchanged."""

    def __init__(self, denoiser: Denoiser):
        self.denoiser, self.calls, self.points = denoiser, 0, 0

    @property
    def stateful(self) -> bool:
        return bool(getattr(self.denoiser, "stateful", False))

    @property
    def renoises(self) -> bool:
        return bool(getattr(self.denoiser, "renoises", False))

    def new_state(self):
        new = getattr(self.denoiser, "new_state", None)
        return new() if new is not None else None

    def _count(self, rows: int) -> None:
        self.calls += 1
        self.points += rows

    def eps(self, x: torch.Tensor, t: Tensorish, condition: Condition = None, **kw) -> torch.Tensor:
        self._count(int(x.shape[0]))
        return self.denoiser.eps(x, t, condition, **kw)

    def predict(self, x: torch.Tensor, t: Tensorish, condition: Condition = None, **kw):
        """The wrapped guided denoiser's ``predict`` (samplers call it only when ``renoises`` is true, i.e. when
        the wrapped denoiser has one), counted as one call."""
        self._count(int(x.shape[0]))
        return self.denoiser.predict(x, t, condition, **kw)

    def eps_multi(self, x: torch.Tensor, t: Tensorish, conditions: list[Condition]) -> list[torch.Tensor]:
        self._count(int(x.shape[0]) * len(conditions))
        return predict_many(self.denoiser, x, t, conditions)
