r"""Two schedules for driving a diffusers scheduler with an analytic world.

:class:`GridSchedule` is the scheduler's own training grid: the model that a scheduler calls at ``timestep`` k was
trained on :math:`x_k = \sqrt{\bar\alpha_k}\,x_0 + \sqrt{1 - \bar\alpha_k}\,\varepsilon` (Ho et al. 2020, eq. 4), so
the exact prediction at k is the analytic one at :math:`\alpha = \sqrt{\bar\alpha_k}`,
:math:`\sigma = \sqrt{1 - \bar\alpha_k}`. The grid puts timestep k at :math:`t = (k + 1)/N` (N =
``num_train_timesteps``): t = 1 is the last trained level (where the pipelines start), t = 0 is the clean data,
which is diffusers' "timestep -1" (DDIM's ``final_alpha_cumprod = 1``). This is the ``t = k/N`` of the training code
shifted by one step so that the clean end is part of the schedule. Between grid points the log-SNR
:math:`\lambda = \log(\bar\alpha/(1 - \bar\alpha))` is interpolated linearly in t, which is the interpolation that
diffusers' ``_sigma_to_t`` inverts (linear in :math:`\log\sigma_{VE} = -\lambda/2`), so fractional timesteps
(Karras sigmas) land where diffusers puts them. Below the first grid point the noise-to-signal ratio falls linearly
to 0: :math:`\lambda(t) = \lambda_0 - 2\log(tN)` for :math:`t \le 1/N`.

:class:`LogSNRWindow` is a smooth VP schedule running from a given log-SNR at t = 1 down to :math:`+\infty` at
t = 0, used for the continuous-time reference laws. On a VP schedule the probability-flow ODE and the reverse SDE are
invariant under a change of time variable (both are written in :math:`\lambda` alone once :math:`f` and :math:`g^2`
are expressed through :math:`d\lambda`; Kingma et al. 2021, appendix D), so their law from :math:`\mathcal N(0, I)`
at :math:`\lambda_{start}` to :math:`\lambda_{end}` depends on the schedule only through the two end points. The
window is :math:`\lambda(t) = \lambda_s + 2a(1 - t) - 2\log t`: smooth, strictly decreasing, with no kinks for the
integrator to resolve (the grid's piecewise-linear log-SNR has a thousand).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from toy_models.schedules import Schedule

__all__ = ["GridSchedule", "LogSNRWindow", "log_snr_of", "LAM_PURE_NOISE"]

F64 = torch.float64
#: the log-SNR standing for pure noise (alpha = 0): alpha^2 = e^-40 = 4e-18
LAM_PURE_NOISE = -40.0


def log_snr_of(alphas_cumprod) -> np.ndarray:
    r""":math:`\log(\bar\alpha/(1 - \bar\alpha))` in float64, formed as ``log(a) - log1p(-a)`` (no cancellation as
    :math:`\bar\alpha \to 1`)."""
    a = np.asarray(torch.as_tensor(alphas_cumprod).detach().to(F64).cpu().numpy(), dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.log(a) - np.log1p(-a)


class GridSchedule(Schedule):
    r"""The VP schedule of a discrete training grid ``alphas_cumprod`` (module docstring): timestep k at
    :math:`t = (k + 1)/N`, log-SNR piecewise linear in t between grid points, :math:`+\infty` at t = 0."""

    name = "diffusers-grid"

    def __init__(self, alphas_cumprod):
        lam = log_snr_of(alphas_cumprod)
        if lam.ndim != 1 or lam.size < 2:
            raise ValueError(f"alphas_cumprod: expected a 1-D grid of at least 2 levels, got shape {lam.shape}")
        if np.isnan(lam).any() or np.isposinf(lam).any():
            raise ValueError("alphas_cumprod: every level must lie in [0, 1) (a level of 1 is noiseless, where the "
                             "eps prediction is undefined)")
        # a level of exactly 0 (zero terminal SNR, Lin et al. 2024, where diffusers' DDIM/DDPM keep alpha-bar = 0):
        # pure noise has no analytic denoiser; it is taken at log-SNR LAM_PURE_NOISE = -40, where every exact
        # prediction differs from its alpha = 0 limit by O(alpha) = O(e^-20) = 2e-9
        lam = np.maximum(lam, LAM_PURE_NOISE)
        # diffusers' Euler, DPM-Solver and UniPC replace a zero last level by 2^-24, which lies *above* the level
        # before it (4.2e-9 on the default linear betas): the grid is then not monotone. A level that does not
        # fall is moved just below its predecessor (1e-6 in log-SNR; both are pure noise to alpha < 1e-4) and
        # listed in ``repaired``
        self.repaired: list[int] = []
        for k in range(1, lam.size):
            if not lam[k] < lam[k - 1]:
                lam[k] = lam[k - 1] - 1e-6
                self.repaired.append(k)
        self.n = lam.size
        self._lam = torch.as_tensor(lam, dtype=F64)
        self._lam_ascending = torch.flip(self._lam, [0])

    def __repr__(self) -> str:
        return f"GridSchedule(num_train_timesteps={self.n})"

    # t -> lambda ---------------------------------------------------------------------------------------------
    def _pieces(self, t: torch.Tensor):
        pos = t.to(F64) * self.n - 1.0
        k0 = torch.clamp(torch.floor(pos), 0, self.n - 2).long()
        frac = pos - k0.to(F64)
        return pos, k0, frac

    def _log_snr(self, t):
        t = t.to(F64)
        pos, k0, frac = self._pieces(t)
        bulk = self._lam[k0] + frac * (self._lam[k0 + 1] - self._lam[k0])
        with np.errstate(divide="ignore"):
            below = self._lam[0] - 2.0 * torch.log(t * self.n)
        return torch.where(pos >= 0.0, bulk, below)

    def _slope(self, t: torch.Tensor) -> torch.Tensor:
        """:math:`d\\lambda/dt` in the bulk (the right-hand slope at a grid point)."""
        _, k0, _ = self._pieces(t)
        return self.n * (self._lam[k0 + 1] - self._lam[k0])

    def _alpha(self, t):
        return torch.sqrt(torch.sigmoid(self._log_snr(t)))

    def _sigma(self, t):
        return torch.sqrt(torch.sigmoid(-self._log_snr(t)))

    def _t_from_log_snr(self, lam):
        lam = lam.to(F64)
        lam0 = self._lam[0]
        below = torch.exp(0.5 * (lam0 - lam)) / self.n  # the inverse of lambda_0 - 2 log(t N)
        # bulk: lambda between lambda_{k+1} < lambda_k; searchsorted on the ascending copy
        j = torch.searchsorted(self._lam_ascending, lam.clamp(self._lam_ascending[0], lam0)).clamp(1, self.n - 1)
        k = (self.n - 1) - j  # lambda_{k+1} <= lam <= lambda_k
        frac = (lam - self._lam[k]) / (self._lam[k + 1] - self._lam[k])
        bulk = (k.to(F64) + frac + 1.0) / self.n
        return torch.where(lam >= lam0, below, bulk)

    def _drift(self, t):
        # f = d log alpha/dt = sigma^2 lambda'/2 (alpha^2 = sigmoid(lambda)); below the grid, with
        # r^2 = e^{-lambda} = (tN)^2 e^{-lambda_0}: sigma^2 lambda'/2 = -t N^2 e^{-lambda_0}/(1 + r^2), finite at t = 0
        t = t.to(F64)
        pos, _, _ = self._pieces(t)
        lam = self._log_snr(t)
        bulk = 0.5 * torch.sigmoid(-lam) * self._slope(t)
        r2 = (t * self.n) ** 2 * torch.exp(-self._lam[0])
        below = -t * self.n**2 * torch.exp(-self._lam[0]) / (1.0 + r2)
        return torch.where(pos >= 0.0, bulk, below)

    def _diffusion_squared(self, t):
        return -2.0 * self._drift(t)  # VP: g^2 = -2 f (alpha^2 + sigma^2 = 1)


class LogSNRWindow(Schedule):
    r"""VP schedule from :math:`\lambda_s` at t = 1 to :math:`\lambda_e` at t = 0 (module docstring).

    With a finite end the log-SNR is linear, :math:`\lambda(t) = \lambda_e + (\lambda_s - \lambda_e) t`; with
    :math:`\lambda_e = +\infty` (clean data) it is :math:`\lambda(t) = \lambda_s + 2a(1 - t) - 2\log t`, where
    ``a`` spreads the log-SNR range [lambda_s, 12] over most of [0, 1]."""

    name = "log-snr-window"

    def __init__(self, lam_start: float, lam_end: float = math.inf):
        lam_start, lam_end = float(lam_start), float(lam_end)
        if not math.isfinite(lam_start):
            raise ValueError(f"lam_start: must be finite, got {lam_start!r}")
        if not lam_end > lam_start:
            raise ValueError(f"lam_end: must exceed lam_start = {lam_start!r}, got {lam_end!r}")
        self.lam_start, self.lam_end = lam_start, lam_end
        self.clean = math.isinf(lam_end)
        self.a = max(1.0, 0.5 * (12.0 - lam_start))

    def __repr__(self) -> str:
        return f"LogSNRWindow(lam_start={self.lam_start:.6g}, lam_end={self.lam_end:.6g})"

    def _log_snr(self, t):
        t = t.to(F64)
        if not self.clean:
            return self.lam_end + (self.lam_start - self.lam_end) * t
        with np.errstate(divide="ignore"):
            return self.lam_start + 2.0 * self.a * (1.0 - t) - 2.0 * torch.log(t)

    def _alpha(self, t):
        return torch.sqrt(torch.sigmoid(self._log_snr(t)))

    def _sigma(self, t):
        t = t.to(F64)
        if not self.clean:
            return torch.sqrt(torch.sigmoid(-self._log_snr(t)))
        # sigma^2 = r^2/(1 + r^2) with r^2 = e^{-lambda} = t^2 e^{-lambda_s - 2a(1 - t)}: exactly 0 at t = 0
        r2 = t**2 * torch.exp(-self.lam_start - 2.0 * self.a * (1.0 - t))
        return torch.sqrt(r2 / (1.0 + r2))

    def _t_from_log_snr(self, lam):
        lam_t = lam.to(F64)
        if not self.clean:
            return (lam_t - self.lam_end) / (self.lam_start - self.lam_end)
        # a t + log t = c, c = (lambda_s + 2a - lambda)/2, so t = W(a e^c)/a (Lambert W, principal branch)
        from scipy.special import lambertw

        lam_np = lam_t.cpu().numpy()
        with np.errstate(over="ignore"):
            arg = self.a * np.exp(0.5 * (self.lam_start + 2.0 * self.a - lam_np))
        t = np.real(lambertw(arg)) / self.a
        return torch.as_tensor(np.where(np.isposinf(lam_np), 0.0, t), dtype=F64).reshape(lam.shape)

    def _drift(self, t):
        # f = d log alpha/dt = sigma^2 lambda'/2
        t = t.to(F64)
        if not self.clean:
            return 0.5 * torch.sigmoid(-self._log_snr(t)) * (self.lam_start - self.lam_end)
        # = -(a + 1/t) sigma^2 = -(a t + 1) t e^{-lambda_s - 2a(1 - t)} / (1 + r^2): finite at t = 0
        e = torch.exp(-self.lam_start - 2.0 * self.a * (1.0 - t))
        return -(self.a * t + 1.0) * t * e / (1.0 + t**2 * e)

    def _diffusion_squared(self, t):
        return -2.0 * self._drift(t)
