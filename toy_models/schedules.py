r"""Noise schedules: :math:`x_t = \alpha_t x_0 + \sigma_t \varepsilon` on :math:`t \in [0, 1]`.

Each schedule gives :math:`\alpha(t)`, :math:`\sigma(t)`, the log signal-to-noise ratio
:math:`\lambda(t) = \log(\alpha_t^2 / \sigma_t^2)` and its inverse, and the coefficients of the forward SDE

.. math::  dx = f(t)\, x\, dt + g(t)\, dW, \qquad
           f(t) = \frac{d \log \alpha_t}{dt}, \qquad
           g(t)^2 = \frac{d \sigma_t^2}{dt} - 2 f(t)\, \sigma_t^2,

whose marginals are exactly those of the forward process (Song et al. 2021, eqs. 5 and 29; Kingma et al.
2021, appendix A). The reverse-time samplers of :mod:`verify.samplers` use ``drift`` and ``diffusion_squared``.

Named schedules (docs/conventions.md):

* ``vp-linear`` — the VP-SDE of Song et al. (2021): :math:`\beta(t) = 0.1 + 19.9\,t`,
  :math:`\alpha_t = \exp(-\tfrac12 \int_0^t \beta)`, :math:`\sigma_t^2 = 1 - \alpha_t^2`
  (the continuous limit of DDPM's 1000 linear steps).
* ``vp-cosine`` — Nichol & Dhariwal (2021), eq. 17 with :math:`s = 0.008`:
  :math:`\bar\alpha_t = \cos^2(\phi_t)/\cos^2(\phi_0)`, :math:`\phi_t = \tfrac{\pi}{2}\,\tfrac{t + s}{1 + s}`.
* ``ve`` — the VE-SDE of Song et al. (2021): :math:`\alpha = 1`,
  :math:`\sigma_t = \sigma_{\min} (\sigma_{\max}/\sigma_{\min})^t`, :math:`\sigma_{\min} = 0.01`,
  :math:`\sigma_{\max} = 50`.
* ``edm`` — Karras et al. (2022): :math:`\alpha = 1`, :math:`\sigma` on the :math:`\rho = 7` ramp
  :math:`\sigma_t = (\sigma_{\min}^{1/\rho} + t(\sigma_{\max}^{1/\rho} - \sigma_{\min}^{1/\rho}))^\rho`,
  :math:`\sigma_{\min} = 0.002`, :math:`\sigma_{\max} = 80` (their eq. 5 as a continuous map of t).
* ``rectified-flow`` — Liu et al. (2023), Lipman et al. (2023): :math:`\alpha_t = 1 - t`, :math:`\sigma_t = t`.

Time domain. Every function accepts ``t`` in ``[0, 1]`` and raises ``ValueError`` outside it. ``vp-cosine`` and
``rectified-flow`` reach :math:`\alpha = 0` at ``t = 1`` (``vp-cosine`` to rounding, 6e-17); there ``alpha``,
``sigma`` and ``log_snr`` still answer but ``drift`` and ``diffusion_squared`` are singular and raise. At ``t = 0``
the VP and flow schedules have :math:`\sigma = 0` and :math:`\lambda = +\infty`.

All values are float64 tensors with the shape of ``t``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from ._checks import Tensorish, as_tensor

__all__ = ["Schedule", "VPLinear", "VPCosine", "VE", "EDM", "RectifiedFlow", "get_schedule", "SCHEDULES"]


class Schedule(ABC):
    """A forward noising schedule on ``t in [0, 1]``; see the module docstring for the conventions."""

    name: str
    #: whether alpha reaches 0 at t = 1 (drift and diffusion are then singular there)
    alpha_vanishes_at_one: bool = False

    # --- validation -------------------------------------------------------------------------------
    def _time(self, t: Tensorish, *, open_at_one: bool = False) -> torch.Tensor:
        tt = as_tensor(t, "t", copy=False)  # evaluated, not kept: keeps an autograd graph
        if bool((tt < 0).any()) or bool((tt > 1).any()):
            raise ValueError(f"t: must lie in [0, 1] for schedule {self.name!r}; got range "
                             f"[{float(tt.min()):.6g}, {float(tt.max()):.6g}]")
        if open_at_one and self.alpha_vanishes_at_one and bool((tt == 1).any()):
            raise ValueError(f"t: schedule {self.name!r} has alpha = 0 at t = 1, where the forward SDE's "
                             f"drift and diffusion are singular; use t < 1")
        return tt

    # --- public API -------------------------------------------------------------------------------
    def alpha(self, t: Tensorish) -> torch.Tensor:
        r""":math:`\alpha(t)`, the signal coefficient."""
        return self._alpha(self._time(t))

    def sigma(self, t: Tensorish) -> torch.Tensor:
        r""":math:`\sigma(t)`, the noise coefficient."""
        return self._sigma(self._time(t))

    def alpha_sigma(self, t: Tensorish) -> tuple[torch.Tensor, torch.Tensor]:
        """Both coefficients at once."""
        tt = self._time(t)
        return self._alpha(tt), self._sigma(tt)

    def log_snr(self, t: Tensorish) -> torch.Tensor:
        r""":math:`\lambda(t) = \log(\alpha_t^2/\sigma_t^2)`, strictly decreasing in t."""
        return self._log_snr(self._time(t))

    def t_from_log_snr(self, log_snr: Tensorish) -> torch.Tensor:
        r"""The inverse of :meth:`log_snr`; raises if :math:`\lambda` is outside the schedule's range."""
        lam = as_tensor(log_snr, "log_snr", copy=False, allow_infinite=True)  # +-inf: the ends of the range
        lo, hi = self.log_snr_range()
        if bool((lam < lo).any()) or bool((lam > hi).any()):
            raise ValueError(f"log_snr: must lie in [{lo:.6g}, {hi:.6g}] for schedule {self.name!r}; got range "
                             f"[{float(lam.min()):.6g}, {float(lam.max()):.6g}]")
        return self._t_from_log_snr(lam).clamp(0.0, 1.0)

    def log_snr_range(self) -> tuple[float, float]:
        """``(lambda(1), lambda(0))``, the range of the log-SNR."""
        ends = self._log_snr(torch.tensor([1.0, 0.0], dtype=torch.float64))
        return float(ends[0]), float(ends[1])

    def drift(self, t: Tensorish) -> torch.Tensor:
        r""":math:`f(t) = d\log\alpha_t/dt` of the forward SDE :math:`dx = f x\,dt + g\,dW`."""
        return self._drift(self._time(t, open_at_one=True))

    def diffusion_squared(self, t: Tensorish) -> torch.Tensor:
        r""":math:`g(t)^2 = d\sigma_t^2/dt - 2 f(t) \sigma_t^2` of the forward SDE."""
        return self._diffusion_squared(self._time(t, open_at_one=True))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # --- to implement -----------------------------------------------------------------------------
    @abstractmethod
    def _alpha(self, t: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _sigma(self, t: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _log_snr(self, t: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _t_from_log_snr(self, lam: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _drift(self, t: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _diffusion_squared(self, t: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True, repr=True)
class VPLinear(Schedule):
    r"""VP-SDE with :math:`\beta(t) = \beta_0 + (\beta_1 - \beta_0) t` (Song et al. 2021, eq. 11 and appendix B)."""

    beta_0: float = 0.1
    beta_1: float = 20.0
    name = "vp-linear"

    def _integral(self, t: torch.Tensor) -> torch.Tensor:  # B(t) = int_0^t beta
        return self.beta_0 * t + 0.5 * (self.beta_1 - self.beta_0) * t**2

    def _alpha(self, t):
        return torch.exp(-0.5 * self._integral(t))

    def _sigma(self, t):
        # sigma^2 = 1 - exp(-B): expm1 keeps full relative precision as t -> 0
        return torch.sqrt(-torch.expm1(-self._integral(t)))

    def _log_snr(self, t):
        # log(alpha^2 / sigma^2) = -log(exp(B) - 1)
        return -torch.log(torch.expm1(self._integral(t)))

    def _t_from_log_snr(self, lam):
        b = torch.log1p(torch.exp(-lam))  # B(t) = log(1 + e^{-lambda})
        a = 0.5 * (self.beta_1 - self.beta_0)
        # positive root of a t^2 + beta_0 t - b = 0, in the cancellation-free form 2b / (beta_0 + sqrt(...))
        return 2.0 * b / (self.beta_0 + torch.sqrt(self.beta_0**2 + 4.0 * a * b))

    def beta(self, t: Tensorish) -> torch.Tensor:
        r""":math:`\beta(t)`."""
        return self.beta_0 + (self.beta_1 - self.beta_0) * self._time(t)

    def _drift(self, t):
        return -0.5 * (self.beta_0 + (self.beta_1 - self.beta_0) * t)

    def _diffusion_squared(self, t):
        return self.beta_0 + (self.beta_1 - self.beta_0) * t


@dataclass(frozen=True, repr=True)
class VPCosine(Schedule):
    r"""Cosine VP schedule (Nichol & Dhariwal 2021, eq. 17), in continuous time."""

    s: float = 0.008
    name = "vp-cosine"
    alpha_vanishes_at_one = True

    def _phi(self, t):
        return 0.5 * math.pi * (t + self.s) / (1.0 + self.s)

    def _phi0(self) -> float:
        return 0.5 * math.pi * self.s / (1.0 + self.s)

    def _alpha(self, t):
        # cos(phi_t) = sin(pi/2 - phi_t) = sin((pi/2)(1 - t)/(1 + s)): exactly 0 at t = 1 (cos of the rounded
        # phi_1 would give 6e-17 and admit t = 1 as a valid noise level) and accurate near it
        return torch.sin(0.5 * math.pi * (1.0 - t) / (1.0 + self.s)).clamp_min(0.0) / math.cos(self._phi0())

    def _sigma(self, t):
        # sigma^2 = 1 - cos^2(phi_t)/cos^2(phi_0) = sin(phi_t - phi_0) sin(phi_t + phi_0) / cos^2(phi_0), with
        # phi_t - phi_0 = (pi/2) t/(1+s) formed directly: no cancellation as t -> 0 (1 - alpha^2 loses u/sigma^2).
        phi0 = self._phi0()
        diff = 0.5 * math.pi * t / (1.0 + self.s)
        return torch.sqrt((torch.sin(diff) * torch.sin(diff + 2 * phi0)).clamp_min(0.0)) / math.cos(phi0)

    def _log_snr(self, t):
        a = self._alpha(t)
        return 2.0 * (torch.log(a) - torch.log(self._sigma(t)))

    def _t_from_log_snr(self, lam):
        # cos(phi) = c0 alpha with alpha^2 = sigmoid(lambda); sin^2(phi) = sin^2(phi_0) + c0^2 sigmoid(-lambda).
        # atan2 of the two keeps full precision at both ends (arccos of a number near 1 would not).
        # The angle phi_t - phi_0 is formed directly (subtracting phi_0 from phi_t would cancel as t -> 0):
        # sin(phi - phi_0) = c0 (sin phi - alpha s0) = c0 sigma^2 / (sin phi + alpha s0) after rationalising
        # (sin^2 phi - alpha^2 s0^2 = sigma^2 since alpha^2 + sigma^2 = 1), cos(phi - phi_0) = c0^2 alpha + s0 sin phi.
        c0, s0 = math.cos(self._phi0()), math.sin(self._phi0())
        alpha, sigma2 = torch.sqrt(torch.sigmoid(lam)), torch.sigmoid(-lam)
        sin_phi = torch.sqrt(s0**2 + c0**2 * sigma2)
        angle = torch.atan2(c0 * sigma2 / (sin_phi + alpha * s0), c0**2 * alpha + s0 * sin_phi)
        return angle * 2.0 * (1.0 + self.s) / math.pi

    def _drift(self, t):
        return -torch.tan(self._phi(t)) * 0.5 * math.pi / (1.0 + self.s)

    def _diffusion_squared(self, t):
        # sigma^2 = 1 - alpha^2 so d sigma^2/dt = -2 f alpha^2 and g^2 = -2 f (alpha^2 + sigma^2) = -2 f
        return -2.0 * self._drift(t)


@dataclass(frozen=True, repr=True)
class VE(Schedule):
    r"""VE-SDE (Song et al. 2021, eq. 9): :math:`\alpha = 1`, geometric :math:`\sigma_t`."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    name = "ve"

    def _alpha(self, t):
        return torch.ones_like(t)

    def _sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def _log_snr(self, t):
        return -2.0 * torch.log(self._sigma(t))

    def _t_from_log_snr(self, lam):
        return (-0.5 * lam - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)

    def _drift(self, t):
        return torch.zeros_like(t)

    def _diffusion_squared(self, t):
        return 2.0 * self._sigma(t) ** 2 * math.log(self.sigma_max / self.sigma_min)


@dataclass(frozen=True, repr=True)
class EDM(Schedule):
    r"""EDM (Karras et al. 2022): :math:`\alpha = 1`, :math:`\sigma_t` on the :math:`\rho`-ramp of their eq. 5."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    name = "edm"

    def _ramp(self):
        return self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)

    def _alpha(self, t):
        return torch.ones_like(t)

    def _sigma(self, t):
        lo, hi = self._ramp()
        return (lo + t * (hi - lo)) ** self.rho

    def _log_snr(self, t):
        return -2.0 * torch.log(self._sigma(t))

    def _t_from_log_snr(self, lam):
        lo, hi = self._ramp()
        return (torch.exp(-0.5 * lam / self.rho) - lo) / (hi - lo)

    def _drift(self, t):
        return torch.zeros_like(t)

    def _diffusion_squared(self, t):
        lo, hi = self._ramp()
        base = lo + t * (hi - lo)  # sigma = base^rho, d sigma^2/dt = 2 rho base^(2 rho - 1) (hi - lo)
        return 2.0 * self.rho * base ** (2 * self.rho - 1) * (hi - lo)


@dataclass(frozen=True, repr=True)
class RectifiedFlow(Schedule):
    r"""Rectified flow / conditional flow matching: :math:`\alpha_t = 1 - t`, :math:`\sigma_t = t`."""

    name = "rectified-flow"
    alpha_vanishes_at_one = True

    def _alpha(self, t):
        return 1.0 - t

    def _sigma(self, t):
        return t.clone()

    def _log_snr(self, t):
        return 2.0 * (torch.log1p(-t) - torch.log(t))

    def _t_from_log_snr(self, lam):
        return torch.sigmoid(-0.5 * lam)

    def _drift(self, t):
        return -1.0 / (1.0 - t)

    def _diffusion_squared(self, t):
        # d t^2/dt - 2 f t^2 = 2t + 2t^2/(1-t) = 2t/(1-t)
        return 2.0 * t / (1.0 - t)


SCHEDULES: dict[str, type[Schedule]] = {
    "vp-linear": VPLinear,
    "vp-cosine": VPCosine,
    "ve": VE,
    "edm": EDM,
    "rectified-flow": RectifiedFlow,
}


def get_schedule(schedule: str | Schedule) -> Schedule:
    """Return the named schedule (with its default parameters), or ``schedule`` itself if it already is one."""
    if isinstance(schedule, Schedule):
        return schedule
    try:
        return SCHEDULES[schedule]()
    except (KeyError, TypeError):
        raise ValueError(f"schedule: unknown schedule {schedule!r}; choose one of {sorted(SCHEDULES)}") from None
