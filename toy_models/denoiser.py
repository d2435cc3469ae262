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

from typing import Protocol, runtime_checkable

import torch

from . import parametrization as param
from ._checks import COMPUTE_DTYPES, Tensorish, as_tensor, check_points, real_dtype_of
from .gaussian_mixture import Condition, GaussianMixture
from .schedules import Schedule, get_schedule
from .world import World

__all__ = ["Denoiser", "AnalyticDenoiser", "WrappedDenoiser", "CountingDenoiser", "predict_many"]


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

    @property
    def dim(self) -> int:
        return self.world.dim

    def noised_law(self, t: float, condition: Condition = None) -> GaussianMixture:
        r""":math:`p_t(x \mid c)`: the world's law of ``condition`` pushed through the forward process to ``t``."""
        alpha, sigma = self.schedule.alpha_sigma(t)
        if float(alpha) <= 0:
            raise ValueError(f"t: alpha(t) = 0 at t = {float(t)!r} on schedule {self.schedule.name!r}; "
                             f"the noised law is not a Gaussian mixture there (pure noise)")
        return self.world.law(condition).noised(float(alpha), float(sigma))

    def score(self, x: torch.Tensor, t: Tensorish, condition: Condition = None) -> torch.Tensor:
        r""":math:`\nabla_x \log p_t(x \mid c)`, ``[N, d]``. ``t`` a float or ``[N]``."""
        x = self._points(x)
        times = as_tensor(t, "t", copy=False)
        if times.numel() == 1:
            return self.noised_law(float(times.reshape(())), condition).score(x).to(x.dtype)
        if times.shape != (x.shape[0],):
            raise ValueError(f"t: expected a scalar or shape [N] = [{x.shape[0]}], got {list(times.shape)}")
        out = torch.empty(x.shape, dtype=x.dtype)
        for value in torch.unique(times):  # group equal times: one noised law each
            rows = times == value
            out[rows] = self.noised_law(float(value), condition).score(x[rows]).to(x.dtype)
        return out

    def eps(self, x: torch.Tensor, t: Tensorish, condition: Condition = None) -> torch.Tensor:
        r""":math:`\hat\varepsilon = -\sigma_t \nabla_x \log p_t(x \mid c)`, ``[N, d]``."""
        x = self._points(x)
        sigma = self._per_row(self.schedule.sigma(t), x)
        return param.score_to_eps(self.score(x, t, condition), sigma)

    def eps_multi(self, x: torch.Tensor, t: Tensorish, conditions: list[Condition]) -> list[torch.Tensor]:
        """The predictions for several conditions at the same points, in one call (the batched interface)."""
        return [self.eps(x, t, c) for c in conditions]

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
