r"""The exact law that continuous-time guided sampling produces, for Gaussian worlds.

With Gaussian :math:`p(x|c) = \mathcal N(m_c, S_c)` and :math:`p(x) = \mathcal N(m_u, S_u)`, the noised laws are
:math:`\mathcal N(\alpha m, C)` with :math:`C(t) = \alpha_t^2 S + \sigma_t^2 I`, and the CFG score is affine,

.. math::  \tilde s(x, t) = (1 + w)\nabla\log p_t(x|c) - w \nabla\log p_t(x) = -A(t)\,x + b(t), \qquad
           A = (1 + w) C_c^{-1} - w C_u^{-1}, \quad b = \alpha\,[(1 + w) C_c^{-1} m_c - w C_u^{-1} m_u].

So the guided probability-flow ODE :math:`\dot x = f x - \tfrac{g^2}{2}\tilde s` and the guided reverse SDE
:math:`dx = (f x - g^2 \tilde s)\,dt + g\,d\bar W` (Song et al. 2021, eqs. 6 and 13, run from t = 1 to 0) map a
Gaussian start to a Gaussian, whose mean :math:`\mu` and covariance :math:`\Sigma` solve the moment ODEs

.. math::
    \text{ODE:}\quad \dot\mu = M\mu - \tfrac{g^2}{2} b,\quad \dot\Sigma = M\Sigma + \Sigma M^\top,\quad
    M = f I + \tfrac{g^2}{2} A;
    \qquad
    \text{SDE:}\quad \dot\mu = N\mu - g^2 b,\quad \dot\Sigma = N\Sigma + \Sigma N^\top - g^2 I,\quad N = f I + g^2 A

(the SDE's noise adds :math:`g^2\,|dt|` of covariance per step backwards in time). These are integrated with an
8th-order Dormand-Prince method at relative tolerance 1e-12. In one dimension on a VP schedule the ODE's variance
has a closed form (:func:`closed_form_ode_variance_1d`), and the tests check the two agree. At ``w = 0`` from the
marginal start both ODE and SDE return the data law :math:`p_0(x|c)` exactly, another check.

Note the tilted target :math:`p(x|c)^{1+w}p(x)^{-w}` appears nowhere in these equations: the guided score at time t
is the score of the tilted *noised* laws, which are not the noised tilted law (``proofs/prop2_tilted_score.py``).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import solve_ivp

from toy_models._checks import as_real_tensor, as_scalar, check_generator
from toy_models.gaussian_mixture import GaussianMixture
from toy_models.schedules import Schedule, get_schedule

__all__ = ["exact_gaussian_cfg_law", "closed_form_ode_variance_1d", "Law1D", "pf_ode_law_1d", "reverse_sde_law_1d",
           "discrete_sampler_law", "FineStepReference", "fine_step_reference", "guided_score_1d"]

F64 = torch.float64
SAMPLERS = ("ode", "sde")
STARTS = ("prior", "marginal")


def _single_gaussian(law: GaussianMixture, name: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(law, GaussianMixture) or law.n_components != 1:
        raise ValueError(f"{name}: expected a single-component GaussianMixture")
    return law.means[0].to(F64).numpy(), law.covariances[0].to(F64).numpy()


def _check_start(start) -> None:
    if not isinstance(start, str) or start not in STARTS:
        raise ValueError(f"start: must be one of {STARTS}, got {start!r}")


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}: must be an int >= {minimum}, got {value!r}")
    return int(value)


def _start(schedule: Schedule, start: str, m_c: np.ndarray, s_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = len(m_c)
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(1.0))
    if start == "marginal":  # the noised conditional at t = 1
        return alpha * m_c, alpha**2 * s_c + sigma**2 * np.eye(d)
    # the prior: N(0, I) for VP schedules (alpha_1^2 + sigma_1^2 = 1), N(0, sigma_1^2 I) when alpha = 1
    prior_var = 1.0 if abs(alpha**2 + sigma**2 - 1.0) < 1e-12 else sigma**2
    return np.zeros(d), prior_var * np.eye(d)


def exact_gaussian_cfg_law(cond: GaussianMixture, uncond: GaussianMixture, w: float, sampler: str = "ode",
                           schedule: str | Schedule = "vp-linear", start: str = "prior", *, t_end: float = 0.0,
                           rtol: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[d]`` and covariance ``[d, d]`` (float64) of the law of x at ``t_end`` (default 0) produced by the
    continuous-time CFG probability-flow ODE (``sampler="ode"``) or reverse SDE (``"sde"``) run from t = 1.

    ``w`` is Ho & Salimans' strength (``w = 0``: the conditional score). ``start="prior"`` draws x_1 from the prior
    (N(0, I) on VP schedules), ``start="marginal"`` from the noised conditional at t = 1. The public contract of
    docs/contract.md.

    Arguments are checked by the input policy (``docs/input-policy.md``), each refusal naming its argument: ``w`` a
    finite real, ``t_end`` in [0, 1), ``rtol`` in (0, 1), ``cond``/``uncond`` single Gaussians of one dimension.
    Strong guidance can make the moments grow without bound (the guided drift expands where :math:`A(t)` is
    negative); a solution that overflows float64 is refused, naming ``w``, never returned as inf or NaN.
    """
    if not isinstance(sampler, str) or sampler not in SAMPLERS:
        raise ValueError(f"sampler: must be one of {SAMPLERS}, got {sampler!r}")
    _check_start(start)
    w = as_scalar(w, "w")
    sched = get_schedule(schedule)
    if sched.alpha_vanishes_at_one:
        raise ValueError(f"schedule: {sched.name!r} has alpha = 0 at t = 1, where the guided drift is singular")
    t_end = as_scalar(t_end, "t_end")
    if not 0.0 <= t_end < 1.0:
        raise ValueError(f"t_end: must lie in [0, 1), got {t_end!r}")
    rtol = as_scalar(rtol, "rtol")
    if not 0.0 < rtol < 1.0:
        raise ValueError(f"rtol: must lie in (0, 1), got {rtol!r}")
    m_c, s_c = _single_gaussian(cond, "cond")
    m_u, s_u = _single_gaussian(uncond, "uncond")
    if m_c.shape != m_u.shape:
        raise ValueError(f"cond, uncond: dimensions differ ({len(m_c)} vs {len(m_u)})")
    d = len(m_c)
    eye = np.eye(d)
    noise_factor = 1.0 if sampler == "ode" else 2.0  # M uses g^2/2, N uses g^2

    def rhs(t: float, state: np.ndarray) -> np.ndarray:
        tt = torch.tensor(t, dtype=F64)
        alpha, sigma = (float(v) for v in sched.alpha_sigma(tt))
        f, g2 = float(sched.drift(tt)), float(sched.diffusion_squared(tt))
        inv_c = np.linalg.inv(alpha**2 * s_c + sigma**2 * eye)
        inv_u = np.linalg.inv(alpha**2 * s_u + sigma**2 * eye)
        a_mat = (1 + w) * inv_c - w * inv_u
        b_vec = alpha * ((1 + w) * inv_c @ m_c - w * inv_u @ m_u)
        mu, cov = state[:d], state[d:].reshape(d, d)
        k = noise_factor * g2 / 2.0
        drift_mat = f * eye + k * a_mat
        dmu = drift_mat @ mu - k * b_vec
        dcov = drift_mat @ cov + cov @ drift_mat.T
        if sampler == "sde":
            dcov = dcov - g2 * eye
        return np.concatenate([dmu, dcov.ravel()])

    mu0, cov0 = _start(sched, start, m_c, s_c)
    sol = solve_ivp(rhs, (1.0, t_end), np.concatenate([mu0, cov0.ravel()]), method="DOP853", rtol=rtol,
                    atol=rtol * 1e-2)
    final = sol.y[:, -1]
    if not sol.success or not np.all(np.isfinite(final)):
        raise ValueError(f"w: the moment ODEs of the guided {sampler.upper()} at w = {w!r} could not be integrated "
                         f"to a finite law ({sol.message}); the guided dynamics diverge at this strength")
    cov = final[d:].reshape(d, d)
    # the ODE keeps Sigma symmetric in exact arithmetic; the integrator's rounding does not, by ~rtol: symmetrise
    return torch.as_tensor(final[:d], dtype=F64), torch.as_tensor(0.5 * (cov + cov.T), dtype=F64)


def closed_form_ode_variance_1d(v_c: float, v_u: float, w: float, start_var: float,
                                schedule: str | Schedule = "vp-linear", t_end: float = 0.0) -> float:
    r"""The guided PF-ODE's variance at ``t_end`` in one dimension on a VP schedule, in closed form.

    :math:`\dot\Sigma = 2M\Sigma` gives :math:`\Sigma(t_e) = \Sigma(1)\exp(-2\int_{t_e}^1 M)`, and with
    :math:`u = \alpha^2` (:math:`\dot u = 2fu`, :math:`g^2 = -2f` on VP) and :math:`C = u(v - 1) + 1`,
    :math:`\int \tfrac{g^2}{2C} dt = -\tfrac12 \ln(u/C)`. So
    :math:`\int_{t_e}^1 M = \ln\tfrac{\alpha_1}{\alpha_{t_e}} - \tfrac{1+w}{2}\Big[\ln\tfrac{u}{C_c}\Big]_{t_e}^{1}
    + \tfrac{w}{2}\Big[\ln\tfrac{u}{C_u}\Big]_{t_e}^{1}`. Variances ``v_c``, ``v_u``, ``start_var`` > 0, ``w`` finite,
    ``t_end`` in [0, 1)."""
    v_c, v_u, start_var = (as_scalar(v, n) for v, n in ((v_c, "v_c"), (v_u, "v_u"), (start_var, "start_var")))
    for value, name in ((v_c, "v_c"), (v_u, "v_u"), (start_var, "start_var")):
        if not value > 0:
            raise ValueError(f"{name}: must be a variance > 0, got {value!r}")
    w, t_end = as_scalar(w, "w"), as_scalar(t_end, "t_end")
    if not 0.0 <= t_end < 1.0:
        raise ValueError(f"t_end: must lie in [0, 1), got {t_end!r}")
    sched = get_schedule(schedule)
    a1, s1 = (float(v) for v in sched.alpha_sigma(1.0))
    ae, se = (float(v) for v in sched.alpha_sigma(t_end))
    if abs(a1**2 + s1**2 - 1) > 1e-12 or abs(ae**2 + se**2 - 1) > 1e-12:
        raise ValueError(f"schedule: the closed form needs a VP schedule, got {sched.name!r}")

    def log_u_over_c(u: float, v: float) -> float:
        return math.log(u) - math.log(u * (v - 1.0) + 1.0)

    integral = (math.log(a1 / ae) - 0.5 * (1 + w) * (log_u_over_c(a1**2, v_c) - log_u_over_c(ae**2, v_c))
                + 0.5 * w * (log_u_over_c(a1**2, v_u) - log_u_over_c(ae**2, v_u)))
    log_var = math.log(start_var) - 2.0 * integral
    if log_var > math.log(torch.finfo(F64).max):
        raise ValueError(f"w: the guided ODE's variance at w = {w!r} overflows float64 (log variance {log_var:.4g})")
    return math.exp(log_var)


# ----------------------------------------------------------------------------------------------------------------
# One-dimensional mixtures: deterministic references of the continuous-time guided ODE and SDE laws
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Law1D:
    """A one-dimensional law on a grid: mean, variance, mass below 0, each with an error estimate."""

    mean: float
    var: float
    mass_below_0: float
    error: dict  # absolute error estimates of the three numbers (halving the discretisation)
    method: str

    def as_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "mass_below_0": self.mass_below_0,
                "error": self.error, "method": self.method}


def _mixture_score_1d(law: GaussianMixture, x: np.ndarray, alpha: float, sigma: float) -> np.ndarray:
    """Score of the noised 1-D mixture in numpy (the same log-space formula as GaussianMixture.score; the tests
    compare the two): many small evaluations inside the Fokker-Planck loop make torch's overhead dominate."""
    w = law.weights.numpy()
    m = alpha * law.means[:, 0].numpy()
    v = alpha**2 * law.covariances[:, 0, 0].numpy() + sigma**2
    z = x[:, None] - m  # [N, K]
    logj = np.log(w) - 0.5 * np.log(2 * np.pi * v) - 0.5 * z * z / v
    r = np.exp(logj - logj.max(axis=1, keepdims=True))
    r /= r.sum(axis=1, keepdims=True)
    return -(r * z / v).sum(axis=1)


def guided_score_1d(cond: GaussianMixture, uncond: GaussianMixture, w: float, sched: Schedule):
    """The CFG score ``(1 + w) s(x|c) - w s(x)`` of two 1-D mixtures as a numpy function ``score(x, t)``."""
    def score(x: np.ndarray, t: float) -> np.ndarray:
        alpha, sigma = (float(v) for v in sched.alpha_sigma(t))
        return (1 + w) * _mixture_score_1d(cond, x, alpha, sigma) - w * _mixture_score_1d(uncond, x, alpha, sigma)
    return score


def _start_law_1d(cond: GaussianMixture, sched: Schedule, start: str) -> GaussianMixture:
    alpha, sigma = (float(v) for v in sched.alpha_sigma(1.0))
    if start == "marginal":
        return cond.noised(alpha, sigma)
    prior_var = 1.0 if abs(alpha**2 + sigma**2 - 1.0) < 1e-12 else sigma**2
    return GaussianMixture([1.0], [[0.0]], [[[prior_var]]])


def _check_1d(cond, uncond, schedule, start):
    for law, name in ((cond, "cond"), (uncond, "uncond")):
        if not isinstance(law, GaussianMixture) or law.dim != 1:
            raise ValueError(f"{name}: expected a one-dimensional GaussianMixture")
    _check_start(start)
    sched = get_schedule(schedule)
    if sched.alpha_vanishes_at_one:
        raise ValueError(f"schedule: {sched.name!r} has alpha = 0 at t = 1, where the guided drift is singular")
    return sched


def pf_ode_law_1d(cond: GaussianMixture, uncond: GaussianMixture, w: float, schedule: str | Schedule = "vp-linear",
                  start: str = "marginal", *, n_nodes: int = 4001, rtol: float = 1e-10) -> Law1D:
    r"""The law of the guided probability-flow ODE's output in 1-D, for mixtures: the flow map :math:`\Phi` from
    t = 1 to 0 is monotone (ODE trajectories cannot cross), so moments are :math:`\int h(\Phi(x_1)) p_1(x_1) dx_1`,
    by the trapezoid rule over ``n_nodes`` starting points spanning 12 standard deviations of the start law, and
    the mass below 0 is :math:`F_1(\Phi^{-1}(0))`. Errors: the difference from half the nodes and 100x looser
    integration tolerance."""
    sched = _check_1d(cond, uncond, schedule, start)
    w = as_scalar(w, "w")
    n_nodes = _check_int(n_nodes, "n_nodes", 3)
    rtol = as_scalar(rtol, "rtol")
    if not 0.0 < rtol < 1e-2:
        raise ValueError(f"rtol: must lie in (0, 0.01) (the error estimate runs at 100 rtol), got {rtol!r}")
    score = guided_score_1d(cond, uncond, w, sched)
    start_law = _start_law_1d(cond, sched, start)

    def rhs(t, x):
        tt = torch.tensor(t, dtype=F64)
        return float(sched.drift(tt)) * x - 0.5 * float(sched.diffusion_squared(tt)) * score(x, t)

    def run(nodes: int, tol: float):
        m, v = float(start_law.mean()[0]), float(start_law.covariance()[0, 0])
        x1 = np.linspace(m - 12 * math.sqrt(v), m + 12 * math.sqrt(v), nodes)
        sol = solve_ivp(rhs, (1.0, 0.0), x1, method="DOP853", rtol=tol, atol=tol)
        if not sol.success:
            raise RuntimeError(f"probability-flow ODE failed: {sol.message}")
        x0 = sol.y[:, -1]
        dens = np.exp(start_law.log_prob(torch.as_tensor(x1[:, None])).numpy())
        weights = dens * np.gradient(x1)
        weights[[0, -1]] *= 0.5
        weights /= weights.sum()
        mean = float(weights @ x0)
        var = float(weights @ (x0 - mean) ** 2)
        if np.any(np.diff(x0) <= 0):
            raise RuntimeError("probability-flow map is not monotone: the integration is not resolved")
        root = np.interp(0.0, x0, x1) if x0[0] < 0 < x0[-1] else (x1[-1] if x0[-1] < 0 else x1[0])
        below = float(start_law.cdf(torch.tensor([[root]], dtype=F64))[0])
        return mean, var, below

    fine = run(n_nodes, rtol)
    coarse = run((n_nodes + 1) // 2, rtol * 100)
    err = {k: abs(a - b) for k, a, b in zip(("mean", "var", "mass_below_0"), fine, coarse, strict=True)}
    return Law1D(*fine, error=err, method=f"PF-ODE flow map on {n_nodes} nodes (DOP853, rtol {rtol:g})")


def reverse_sde_law_1d(cond: GaussianMixture, uncond: GaussianMixture, w: float,
                       schedule: str | Schedule = "vp-linear", start: str = "marginal", *, n_cells: int = 2000,
                       n_steps: int = 2000) -> Law1D:
    r"""The law of the guided reverse SDE's output in 1-D, for mixtures, by solving its Fokker-Planck equation.

    In reverse time :math:`\tau = 1 - t` the density obeys :math:`\partial_\tau\rho = -\partial_x(b\rho) +
    D\,\partial_x^2\rho` with :math:`b = -(f x - g^2\tilde s)` and :math:`D = g^2/2`. Finite volumes with
    Scharfetter-Gummel fluxes (exact for locally constant drift, positive and stable at any cell Peclet number),
    Crank-Nicolson in time on a grid uniform in :math:`\sqrt{t}` (finer where the diffusion is weak and the drift
    sharp), zero flux at the walls. The error estimate is the difference from a run with half the cells and steps.
    """
    from scipy.linalg import solve_banded

    sched = _check_1d(cond, uncond, schedule, start)
    w = as_scalar(w, "w")
    n_cells, n_steps = _check_int(n_cells, "n_cells", 4), _check_int(n_steps, "n_steps", 2)
    score = guided_score_1d(cond, uncond, w, sched)
    start_law = _start_law_1d(cond, sched, start)
    means = torch.cat([cond.means[:, 0], uncond.means[:, 0], start_law.means[:, 0]])
    lo, hi = float(means.min()) - 8.0, float(means.max()) + 8.0

    def run(cells: int, steps: int):
        edges = np.linspace(lo, hi, cells + 1)
        h = edges[1] - edges[0]
        centres = 0.5 * (edges[:-1] + edges[1:])
        rho = np.exp(start_law.log_prob(torch.as_tensor(centres[:, None])).numpy())
        rho /= rho.sum() * h
        ts = (1.0 - np.linspace(0.0, 1.0, steps + 1)) ** 2  # t from 1 to 0, uniform in sqrt(t)

        def operator(t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            """Tridiagonal L with d rho/d tau = L rho: lower, diagonal, upper bands."""
            tt = torch.tensor(t, dtype=F64)
            f, g2 = float(sched.drift(tt)), float(sched.diffusion_squared(tt))
            faces = edges[1:-1]
            b = -(f * faces - g2 * score(faces, t))  # drift in reverse time at interior faces
            diff = 0.5 * g2
            pe = b * h / diff
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                bern = np.where(np.abs(pe) < 1e-8, 1.0 - pe / 2, pe / np.expm1(pe))  # B(Pe) = Pe / (e^Pe - 1)
                bern_neg = np.where(np.abs(pe) < 1e-8, 1.0 + pe / 2, -pe / np.expm1(-pe))  # B(-Pe)
            # flux J_{i+1/2} = (D/h) [B(-Pe) rho_i - B(Pe) rho_{i+1}]
            left, right = diff / h * bern_neg, diff / h * bern
            n = cells
            diag = np.zeros(n)
            lower = np.zeros(n)
            upper = np.zeros(n)
            # d rho_i/d tau = (J_{i-1/2} - J_{i+1/2}) / h
            diag[:-1] -= left / h
            upper[1:] += right / h  # coefficient of rho_{i+1} in row i, stored at column i+1
            diag[1:] -= right / h
            lower[:-1] += left / h  # coefficient of rho_{i-1} in row i, stored at column i-1
            return lower, diag, upper

        current = operator(ts[0])
        for k in range(steps):
            dtau = ts[k] - ts[k + 1]
            lo0, d0, up0 = current
            current = lo1, d1, up1 = operator(ts[k + 1])
            # (L rho)_i = d_i rho_i + up_{i+1} rho_{i+1} + lo_{i-1} rho_{i-1} (bands stored by column)
            l_rho = d0 * rho + np.concatenate([up0[1:] * rho[1:], [0.0]]) + np.concatenate([[0.0], lo0[:-1] * rho[:-1]])
            bands = np.vstack([-0.5 * dtau * up1, 1.0 - 0.5 * dtau * d1, -0.5 * dtau * lo1])
            rho = solve_banded((1, 1), bands, rho + 0.5 * dtau * l_rho)
        mass = rho.sum() * h
        p = rho * h / mass
        mean = float(p @ centres)
        var = float(p @ (centres - mean) ** 2)
        # cells wholly below 0, plus the part of the cell that 0 cuts (density taken constant across a cell)
        inside = np.clip((0.0 - edges[:-1]) / h, 0.0, 1.0)
        below = float(p @ inside)
        return mean, var, below

    fine = run(n_cells, n_steps)
    coarse = run(n_cells // 2, n_steps // 2)
    err = {k: abs(a - b) for k, a, b in zip(("mean", "var", "mass_below_0"), fine, coarse, strict=True)}
    return Law1D(*fine, error=err, method=f"Fokker-Planck, {n_cells} cells x {n_steps} Crank-Nicolson steps")


# ----------------------------------------------------------------------------------------------------------------
# The exact law of a DISCRETE sampler on a Gaussian world (no sampling)
# ----------------------------------------------------------------------------------------------------------------
def _is_stochastic(name: str, kw: dict) -> bool:
    from verify.samplers import get_sampler

    return get_sampler(name).is_stochastic(kw.get("eta", 0.0))


def _affine_columns(name, denoiser, timesteps, mean, chol, **kw):
    """Run one sampler on ``[m, m + L e_1, .., m + L e_d]`` and, if it is stochastic, ``steps x d`` more rows at m
    whose noise is one unit vector at one step; returns (image of m ``[d]``, columns ``[rows - 1, d]``)."""
    d = mean.numel()
    steps = len(timesteps) - 1
    n_noise = steps * d if _is_stochastic(name, kw) else 0
    x = mean.expand(1 + d + n_noise, d).clone()
    x[1:1 + d] += chol.T  # row j: m + L e_j
    if n_noise:
        noise = torch.zeros(steps, 1 + d + n_noise, d, dtype=F64)
        for k in range(steps):
            noise[k, 1 + d + k * d: 1 + d + (k + 1) * d] = torch.eye(d, dtype=F64)  # row (k, j): unit z_k e_j
        kw = dict(kw, noise=noise)
    from verify.samplers import sample  # local: samplers is the heavier module and needs nothing from here

    out = sample(name, denoiser, x, timesteps, **kw)
    return out[0], out[1:] - out[0]  # [d], [rows - 1, d]


def discrete_sampler_law(name: str, denoiser, timesteps, mean: torch.Tensor | None = None,
                         cov: torch.Tensor | None = None, *, stepwise: bool = True,
                         **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact output law (mean ``[d]``, covariance ``[d, d]``) of the discrete sampler from ``x ~ N(mean, cov)``
    (default N(0, I)), for a denoiser affine in x (the guided score of a Gaussian world is affine: every sampler
    step is then an affine map plus Gaussian noise, and the law of the output is exact without sampling).

    Deterministic samplers: one run on the d + 1 points m, m + L e_j (L = chol(cov)); the map is affine, so the output
    mean is the image of m and the covariance is sum_j c_j c_j^T over the columns c_j = F(m + L e_j) - F(m).
    Stochastic samplers (each step Markov: x' = A x + b + C z), ``stepwise=True``: one step at a time, pushing the
    mean, the d covariance columns and d unit noise vectors, then Sigma' = A Sigma A^T + C C^T (cost linear in the
    steps). ``stepwise=False``: one run with a unit-noise row per (step, coordinate) (cost quadratic;
    ``tests/test_samplers.py`` checks the two agree).
    """
    d = getattr(denoiser, "dim", None)
    if not isinstance(d, int) or not callable(getattr(denoiser, "eps", None)):
        raise TypeError(f"denoiser: expected a Denoiser with eps() and an int dim, got {type(denoiser).__name__}")
    mean = torch.zeros(d, dtype=F64) if mean is None else as_real_tensor(mean, "mean")
    cov = torch.eye(d, dtype=F64) if cov is None else as_real_tensor(cov, "cov")
    if mean.shape != (d,):
        raise ValueError(f"mean: expected shape [{d}], got {list(mean.shape)}")
    if cov.shape != (d, d):
        raise ValueError(f"cov: expected shape [{d}, {d}], got {list(cov.shape)}")
    # a covariance assembled from d-term dot products (A^T A, A S A^T) in two summation orders is symmetric to
    # within 2 gamma_d max|cov| <= 4 d u max|cov|; beyond that it is not a covariance
    if float((cov - cov.T).abs().max()) > 4 * d * 2.0**-53 * float(cov.abs().max()):
        raise ValueError("cov: must be symmetric")
    cov = 0.5 * (cov + cov.T)
    chol, info = torch.linalg.cholesky_ex(cov)
    if int(info) != 0:
        raise ValueError("cov: must be positive definite (its Cholesky factorisation fails)")
    if not _is_stochastic(name, kw) or not stepwise:
        image, cols = _affine_columns(name, denoiser, timesteps, mean, chol, **kw)
        return image, cols.T @ cols
    for k in range(len(timesteps) - 1):
        chol = torch.linalg.cholesky(cov)
        mean, cols = _affine_columns(name, denoiser, timesteps[k:k + 2], mean, chol, **kw)
        cov = cols.T @ cols  # A L (A L)^T + C C^T
    return mean, cov


# ----------------------------------------------------------------------------------------------------------------
# Two dimensions and up: fine-step references whose own error is measured
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FineStepReference:
    """Samples of a continuous-time guided law by a fine-step solver, with the solver's own error measured."""

    samples: torch.Tensor  # [N, d] at the fine resolution
    mean: torch.Tensor  # [d]
    cov: torch.Tensor  # [d, d]
    moment_error: float  # max |moment(fine) - moment(half resolution)| over mean and covariance entries
    path_error: float  # mean per-sample distance between the two resolutions (same start, same Brownian path)
    method: str


def fine_step_reference(denoiser, x_init: torch.Tensor, kind: str = "ode", *, steps: int = 800,
                        condition=None, generator: torch.Generator | None = None) -> FineStepReference:
    r"""The law of the continuous-time guided ODE (``kind="ode"``, Heun, order 2) or SDE (``"sde"``,
    Euler-Maruyama) from the points ``x_init`` at t = 1 to t = 0, on a uniform grid of ``steps`` steps.

    Its error is measured, not assumed: the same solver at half the resolution runs from the same points and, for
    the SDE, along the same Brownian path (each coarse increment is the sum of two fine ones, so
    :math:`z_{coarse} = (z_{2k} + z_{2k+1})/\sqrt 2`). The moment differences bound the fine run's discretisation
    error from above (for order p the fine error is about :math:`1/(2^p - 1)` of the difference)."""
    from verify.samplers import sample, time_grid

    if not isinstance(kind, str) or kind not in SAMPLERS:
        raise ValueError(f"kind: must be one of {SAMPLERS}, got {kind!r}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 2 or steps % 2:
        raise ValueError(f"steps: must be an even number >= 2, got {steps!r}")
    steps = int(steps)
    x_init = as_real_tensor(x_init, "x_init", x_init.dtype if isinstance(x_init, torch.Tensor) and
                            x_init.dtype in (torch.float32, F64) else F64, copy=False)
    if x_init.ndim != 2 or x_init.shape[0] < 2:
        raise ValueError(f"x_init: expected [N, d] with N >= 2 (moments are estimated), got {list(x_init.shape)}")
    check_generator(generator)
    fine_grid, coarse_grid = time_grid(steps), time_grid(steps // 2)
    if kind == "ode":
        fine = sample("heun", denoiser, x_init, fine_grid, condition=condition)
        coarse = sample("heun", denoiser, x_init, coarse_grid, condition=condition)
        method = f"Heun, {steps} uniform steps (error: against {steps // 2} steps)"
    else:
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        noise = torch.randn(steps, *x_init.shape, dtype=x_init.dtype, generator=gen)
        coarse_noise = (noise[0::2] + noise[1::2]) / math.sqrt(2.0)
        fine = sample("euler_maruyama", denoiser, x_init, fine_grid, condition=condition, noise=noise)
        coarse = sample("euler_maruyama", denoiser, x_init, coarse_grid, condition=condition, noise=coarse_noise)
        method = f"Euler-Maruyama, {steps} uniform steps (error: against {steps // 2} steps, same Brownian path)"
    diff = max(float((fine.mean(0) - coarse.mean(0)).abs().max()),
               float((torch.cov(fine.T) - torch.cov(coarse.T)).abs().max()))
    return FineStepReference(fine, fine.mean(0), torch.atleast_2d(torch.cov(fine.T)), diff,
                             float((fine - coarse).norm(dim=-1).mean()), method)
