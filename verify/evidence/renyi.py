r"""The Rényi correction of the CFG score (read by L-RENYI-CORRECTION and drawn by ``renyi_correction.png``).

Moufad, Janati, Durmus, Ghorbel, Moulines & Olsson (2025), arXiv 2505.21101, section 2: with the guidance scale
:math:`\gamma = 1 + w` (diffusers' ``guidance_scale``; ``w`` is Ho & Salimans' strength used by this package) the
tilted data law :math:`\pi \propto p(x_0 \mid c)^\gamma p(x_0)^{1-\gamma}`, noised like the data
(:math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon`), has the score

.. math::  \nabla\log\pi_t = \underbrace{\gamma s_c + (1-\gamma) s_u}_{\text{CFG}}
           + (\gamma - 1)\,\nabla_x D_\gamma\big(p(\cdot \mid x, c)\,\|\,p(\cdot \mid x)\big)

(``proofs/renyi_correction.py``). Two computations:

* **The identity in float64** on Gaussian worlds (``gauss1d`` and two full-covariance worlds in d = 2 and 16):
  the left side from the tilted Gaussian (:meth:`verify.tilted.TiltedLaw.gaussian`) noised in closed form; the
  right side from the two noised scores and the Rényi divergence of the two Gaussian denoising posteriors,
  differentiated by **autograd** (an independent route: no score formula of :math:`\pi_t` enters it). At points
  drawn from :math:`\pi_t` (the bulk) and the same points spread 3x (the tails), each error against its derived
  rounding bound (:func:`identity_bound`).
* **The gap** :math:`g = \nabla\log\pi_t - s_{\mathrm{CFG}}` per t, as the relative RMS
  :math:`\sqrt{E_{\pi_t}|g|^2 / E_{\pi_t}|\nabla\log\pi_t|^2}`. Gaussian worlds: every score is affine in x, so
  both expectations are closed-form traces (no sampling). ``bimodal1d`` (class 1, a mixture: the tilt of a
  mixture is no mixture and :math:`\pi_t` has no closed form): trapezoid quadrature of
  :math:`\pi_t(x) = \int \pi(x_0) \mathcal N(x; \alpha x_0, \sigma^2) dx_0` on a grid, the score by Tweedie
  (:math:`\nabla\log\pi_t = (\alpha E_\pi[x_0 \mid x] - x)/\sigma^2`), the error estimated by halving both grids.
  ``ring2d`` is not computed (a 2-D grid fine enough for :math:`\sigma_{0.01}/\alpha \approx 0.045` costs
  ~10^10 kernel evaluations per time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from toy_models import get_world
from toy_models.gaussian_mixture import GaussianMixture
from verify.config import RunConfig
from verify.tilted import TiltedLaw

from . import provider
from .shared import alpha_sigma

__all__ = ["IdentityCheck", "GapProfile", "ScoreSlice", "RenyiCorrection", "renyi_correction", "gaussian_pairs",
           "renyi_terms", "tilted_gaussian", "identity_bound", "gaussian_gap", "mixture_gap", "WS", "GAP_TIMES"]

F64 = torch.float64
EPS = torch.finfo(F64).eps
#: Ho & Salimans strengths (guidance scale gamma = 1 + w = 2, 4, 8)
WS = (1.0, 3.0, 7.0)
QUICK_WS = (3.0,)
IDENTITY_TIMES = (0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
QUICK_IDENTITY_TIMES = (0.01, 0.5, 1.0)
GAP_TIMES = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)
QUICK_GAP_TIMES = (0.01, 0.1, 0.3, 0.7, 1.0)
#: the time and strength of the score slice drawn next to the profiles
SLICE_T, SLICE_W = 0.3, 3.0


@dataclass(frozen=True)
class IdentityCheck:
    """One Gaussian world: the identity's largest error, the largest error over its rounding bound, the largest
    score norm, the largest condition number met and the number of points checked (all t and w)."""

    world: str
    dim: int
    max_abs_error: float
    max_error_over_bound: float
    max_score_norm: float
    max_condition_number: float
    checks: int


@dataclass(frozen=True)
class GapProfile:
    """The relative RMS gap between CFG's score and the tilted score at each time of ``times`` (one world, one w);
    ``error``: the quadrature's error estimate per time (zeros for closed forms)."""

    world: str
    w: float
    times: tuple[float, ...]
    relative_rms_gap: tuple[float, ...]
    error: tuple[float, ...]
    method: str

    @property
    def peak(self) -> tuple[float, float]:
        """(largest relative gap, its time)."""
        i = max(range(len(self.times)), key=lambda k: self.relative_rms_gap[k])
        return self.relative_rms_gap[i], self.times[i]


@dataclass(frozen=True)
class ScoreSlice:
    """The tilted score and CFG's score on a 1-D grid at one (world, t, w): what the figure's right panel draws."""

    world: str
    t: float
    w: float
    x: tuple[float, ...]
    tilted_score: tuple[float, ...]
    cfg_score: tuple[float, ...]
    density: tuple[float, ...]


@dataclass(frozen=True)
class RenyiCorrection:
    identity: tuple[IdentityCheck, ...]
    profiles: tuple[GapProfile, ...]
    slices: tuple[ScoreSlice, ...]
    identity_times: tuple[float, ...]
    ws: tuple[float, ...]
    n_points: int

    @property
    def max_error_over_bound(self) -> float:
        return max(c.max_error_over_bound for c in self.identity)

    def profile(self, world: str, w: float) -> GapProfile:
        for p in self.profiles:
            if p.world == world and p.w == w:
                return p
        raise ValueError(f"world, w: no profile for ({world!r}, {w!r})")


# ------------------------------------------------------------------------------------------------------------------
# Gaussian worlds
# ------------------------------------------------------------------------------------------------------------------
def _full_covariance_pair(dim: int, seed: int) -> tuple[GaussianMixture, GaussianMixture]:
    """A conditional N(mu_c, S_c) and an unconditional N(mu_u, S_u) with S_u - S_c positive semi-definite, so the
    tilt's precision gamma S_c^-1 + (1 - gamma) S_u^-1 >= S_c^-1 is positive definite for every gamma >= 1."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, dtype=F64, generator=gen)
    b = torch.randn(dim, dim, dtype=F64, generator=gen)
    mu_c = torch.randn(dim, dtype=F64, generator=gen)
    s_c = a @ a.T / dim + 0.3 * torch.eye(dim, dtype=F64)
    s_u = s_c + b @ b.T / dim + 0.5 * torch.outer(mu_c, mu_c)
    mu_u = 0.5 * mu_c
    return (GaussianMixture([1.0], mu_c[None], s_c[None]), GaussianMixture([1.0], mu_u[None], s_u[None]))


def gaussian_pairs(seed: int = 0) -> dict[str, tuple[GaussianMixture, GaussianMixture]]:
    """``{name: (conditional, unconditional)}``: ``gauss1d`` (class 1) and full-covariance pairs in d = 2, 16."""
    world = get_world("gauss1d")
    return {"gauss1d": (world.law(1), world.law(None)),
            "gauss2d_full": _full_covariance_pair(2, 1000 + seed),
            "gauss16d_full": _full_covariance_pair(16, 1600 + seed)}


def _posterior(law: GaussianMixture, x: torch.Tensor, alpha: float, sigma: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The Gaussian denoising posterior :math:`p(x_0 \mid x_t = x)` of :math:`x_0 \sim \mathcal N(\mu, S)`:
    precision :math:`P = S^{-1} + (\alpha^2/\sigma^2) I`, mean :math:`P^{-1}(S^{-1}\mu + \alpha x/\sigma^2)`.
    Returns (means ``[N, d]``, covariance ``[d, d]``, precision ``[d, d]``)."""
    s_inv = torch.linalg.inv(law.covariances[0])
    prec = s_inv + (alpha / sigma) ** 2 * torch.eye(law.dim, dtype=F64)
    cov = torch.linalg.inv(prec)
    means = (s_inv @ law.means[0] + alpha * x / sigma**2) @ cov.T
    return means, cov, prec


def renyi_divergence(gamma: float, cond: GaussianMixture, uncond: GaussianMixture, x: torch.Tensor, alpha: float,
                     sigma: float) -> torch.Tensor:
    r""":math:`D_\gamma(p(\cdot \mid x, c) \| p(\cdot \mid x))` per point, ``[N]``: with posteriors
    :math:`\mathcal N(a_i, V_i)`, :math:`\log\int P^\gamma Q^{1-\gamma}` is the Gaussian integral of
    :math:`\exp(\sum_i e_i \log \mathcal N(a_i, V_i))`, :math:`e = (\gamma, 1 - \gamma)`: with
    :math:`\Lambda = \sum e_i V_i^{-1}`, :math:`\eta = \sum e_i V_i^{-1} a_i`, it is
    :math:`\sum_i e_i(-\tfrac12\log|2\pi V_i| - \tfrac12 a_i^\top V_i^{-1} a_i) + \tfrac12\log|2\pi\Lambda^{-1}|
    + \tfrac12 \eta^\top\Lambda^{-1}\eta`; divided by :math:`\gamma - 1`. Differentiable in ``x``."""
    if gamma == 1.0:
        raise ValueError("gamma: the Renyi divergence of order 1 is the KL divergence; this form needs gamma != 1")
    parts = [(gamma, *_posterior(cond, x, alpha, sigma)), (1.0 - gamma, *_posterior(uncond, x, alpha, sigma))]
    lam = sum(e * prec for e, _, _, prec in parts)
    eta = sum(e * (a @ prec.T) for e, a, _, prec in parts)
    const = sum(e * (-0.5 * torch.logdet(2 * math.pi * cov) - 0.5 * ((a @ prec) * a).sum(-1))
                for e, a, cov, prec in parts)
    lam_inv = torch.linalg.inv(0.5 * (lam + lam.T))
    log_z = const + 0.5 * torch.logdet(2 * math.pi * lam_inv) + 0.5 * ((eta @ lam_inv) * eta).sum(-1)
    return log_z / (gamma - 1.0)


def tilted_gaussian(w: float, cond: GaussianMixture, uncond: GaussianMixture) -> tuple[torch.Tensor, torch.Tensor]:
    r"""(mean, covariance) of :math:`\pi \propto p(x \mid c)^{1+w} p(x)^{-w}` for single Gaussians: precision
    :math:`\Lambda = (1+w) S_c^{-1} - w S_u^{-1}`, mean :math:`\Lambda^{-1}((1+w) S_c^{-1}\mu_c - w S_u^{-1}\mu_u)`
    (the closed form of :meth:`verify.tilted.TiltedLaw.gaussian`, which the tests compare; that method also
    certifies normalisability by a direction search costing seconds in d = 16, where the smallest eigenvalue of
    :math:`\Lambda` decides it exactly). Raises ``ValueError`` (``w``) when :math:`\Lambda` is not positive definite."""
    p_c, p_u = torch.linalg.inv(cond.covariances[0]), torch.linalg.inv(uncond.covariances[0])
    lam = (1.0 + w) * p_c - w * p_u
    lam = 0.5 * (lam + lam.T)
    if float(torch.linalg.eigvalsh(lam)[0]) <= 0.0:
        raise ValueError(f"w: the tilt p(x|c)^(1+w) p(x)^(-w) is not normalisable at w = {w!r}")
    cov = torch.linalg.inv(lam)
    mean = cov @ ((1.0 + w) * p_c @ cond.means[0] - w * p_u @ uncond.means[0])
    return mean, 0.5 * (cov + cov.T)


def renyi_terms(w: float, cond: GaussianMixture, uncond: GaussianMixture, x: torch.Tensor, t: float,
                tilted: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    r"""The four terms of the identity at points ``x`` ``[N, d]``: ``tilted`` (:math:`\nabla\log\pi_t`, closed form),
    ``cond`` (:math:`\gamma s_c`), ``uncond`` (:math:`(1-\gamma) s_u`), ``renyi``
    (:math:`(\gamma - 1)\nabla D_\gamma`, by autograd), and the scales of :func:`identity_bound`: ``condition`` (the
    largest condition number of the matrices inverted), ``precision`` (the largest precision met), ``mean_norm``
    (the largest noised mean) and ``gamma``. ``tilted``: :func:`tilted_gaussian`, if already computed."""
    gamma = 1.0 + w
    alpha, sigma = alpha_sigma(t)
    mean, cov = tilted if tilted is not None else tilted_gaussian(w, cond, uncond)
    tilted_t = GaussianMixture([1.0], mean[None], cov[None]).noised(alpha, sigma)
    c_t, u_t = cond.noised(alpha, sigma), uncond.noised(alpha, sigma)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(renyi_divergence(gamma, cond, uncond, xr, alpha, sigma).sum(), xr)
    eye = torch.eye(cond.dim, dtype=F64)
    mats = [tilted_t.covariances[0], c_t.covariances[0], u_t.covariances[0],
            cond.covariances[0], uncond.covariances[0], cov,
            torch.linalg.inv(cond.covariances[0]) + (alpha / sigma) ** 2 * eye]
    kappa = max(float(torch.linalg.cond(m)) for m in mats)
    precision = max(float(torch.linalg.eigvalsh(m)[0]) ** -1 for m in mats[:3]) + (alpha / sigma) ** 2
    mean_norm = alpha * max(float(torch.linalg.vector_norm(v)) for v in (mean, cond.means[0], uncond.means[0]))
    as_t = lambda v: torch.tensor(v, dtype=F64)  # noqa: E731
    return {"tilted": tilted_t.score(x), "cond": gamma * c_t.score(x), "uncond": (1.0 - gamma) * u_t.score(x),
            "renyi": (gamma - 1.0) * grad, "condition": as_t(kappa), "precision": as_t(precision),
            "mean_norm": as_t(mean_norm), "gamma": as_t(gamma)}


def identity_bound(terms: dict[str, torch.Tensor], x: torch.Tensor, dim: int) -> torch.Tensor:
    r"""The rounding bound of :math:`|\nabla\log\pi_t - \gamma s_c - (1-\gamma)s_u - (\gamma-1)\nabla D_\gamma|`
    per point.

    Each term is a chain of at most four backward-stable solves or inversions of matrices with condition number at
    most :math:`\kappa` (the tilt's precision, the noised covariance; the posterior precision, the Rényi
    :math:`\Lambda`, and their adjoints in autograd), and a solve's relative forward error is at most
    :math:`\kappa\,\gamma_{d}`, :math:`\gamma_d \approx d\,\epsilon` (Higham 2002, Thm 7.2 and section 14.1).
    Relative to the size of its ingredients, each term is thus within :math:`4\kappa(d+2)\epsilon`; four terms and
    three additions give :math:`16\kappa(d+2)\epsilon` times the ingredient scale. The ingredient scale is the sum
    of the four terms' norms plus :math:`(1 + 2|\gamma|)\,p\,(\|x\| + \|\alpha\mu\|_{\max})`, ``p`` the largest
    precision met: a score :math:`-C^{-1}(x - \alpha\mu)` can cancel to ~0 while its rounding stays
    :math:`\propto \|C^{-1}\|(\|x\| + \|\alpha\mu\|)`, and the Rényi term is a difference of such products
    weighted by :math:`\gamma` and :math:`1 - \gamma`."""
    names = ("tilted", "cond", "uncond", "renyi")
    norms = torch.stack([torch.linalg.vector_norm(terms[n], dim=-1) for n in names]).sum(0)
    ingredients = (1.0 + 2.0 * abs(float(terms["gamma"]))) * float(terms["precision"]) * (
        torch.linalg.vector_norm(x, dim=-1) + float(terms["mean_norm"]))
    return 16.0 * float(terms["condition"]) * (dim + 2) * EPS * (norms + ingredients)


def gaussian_gap(w: float, cond: GaussianMixture, uncond: GaussianMixture, t: float,
                 tilted: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
    r"""Relative RMS gap in closed form. Scores are affine: :math:`\nabla\log\pi_t = -C_\pi^{-1}(x - \alpha m_\pi)`
    and the gap :math:`g(x) = Gx + h`, so under :math:`x \sim \mathcal N(\alpha m_\pi, C_\pi)`:
    :math:`E|g|^2 = \mathrm{tr}(G C_\pi G^\top) + |G\alpha m_\pi + h|^2` and :math:`E|\nabla\log\pi_t|^2 =
    \mathrm{tr}(C_\pi^{-1})` (the Fisher information). ``tilted``: :func:`tilted_gaussian`, if already computed."""
    gamma = 1.0 + w
    alpha, sigma = alpha_sigma(t)
    mean, cov = tilted if tilted is not None else tilted_gaussian(w, cond, uncond)
    eye = torch.eye(cond.dim, dtype=F64)
    c_pi = alpha**2 * cov + sigma**2 * eye
    p_pi = torch.linalg.inv(c_pi)
    p_c = torch.linalg.inv(alpha**2 * cond.covariances[0] + sigma**2 * eye)
    p_u = torch.linalg.inv(alpha**2 * uncond.covariances[0] + sigma**2 * eye)
    g_mat = -p_pi + gamma * p_c + (1.0 - gamma) * p_u
    h = alpha * (p_pi @ mean - gamma * p_c @ cond.means[0] - (1.0 - gamma) * p_u @ uncond.means[0])
    centre = g_mat @ (alpha * mean) + h
    gap2 = float(torch.trace(g_mat @ c_pi @ g_mat.T)) + float(centre @ centre)
    return math.sqrt(max(gap2, 0.0) / float(torch.trace(p_pi)))


# ------------------------------------------------------------------------------------------------------------------
# bimodal1d: quadrature
# ------------------------------------------------------------------------------------------------------------------
def _mixture_fields(w: float, cond: GaussianMixture, uncond: GaussianMixture, t: float, n0: int, nx: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""(x grid, tilted score, CFG score, normalised :math:`\pi_t` weights) on 1-D mixtures, by trapezoid quadrature
    over an ``n0``-point x0 grid spanning the tilted law (:meth:`TiltedLaw._window`-like: 12 standard deviations of
    every factor) and an ``nx``-point x grid spanning :math:`\alpha x_0 \pm 10\sigma`."""
    gamma = 1.0 + w
    alpha, sigma = alpha_sigma(t)
    law = TiltedLaw(((cond, gamma), (uncond, 1.0 - gamma)))
    means = torch.cat([cond.means[:, 0], uncond.means[:, 0]])
    sds = torch.cat([cond.covariances[:, 0, 0], uncond.covariances[:, 0, 0]]).sqrt()
    lo, hi = float((means - 12 * sds).min()), float((means + 12 * sds).max())
    x0 = torch.linspace(lo, hi, n0, dtype=F64)
    log_pi0 = law.log_unnormalized(x0[:, None])
    log_pi0 = log_pi0 - log_pi0.max()
    trap = torch.full((n0,), 1.0, dtype=F64)
    trap[[0, -1]] = 0.5
    log_w0 = log_pi0 + trap.log()
    x = torch.linspace(alpha * lo - 10 * sigma, alpha * hi + 10 * sigma, nx, dtype=F64)
    log_k = -0.5 * ((x[:, None] - alpha * x0[None, :]) / sigma) ** 2  # [nx, n0]
    log_joint = log_w0[None, :] + log_k
    log_pt = torch.logsumexp(log_joint, dim=1)
    post = (log_joint - log_pt[:, None]).exp_()
    tilted = (alpha * (post @ x0) - x) / sigma**2
    cfg = gamma * cond.noised(alpha, sigma).score(x[:, None])[:, 0] + (1 - gamma) * uncond.noised(
        alpha, sigma).score(x[:, None])[:, 0]
    trap_x = torch.full((nx,), 1.0, dtype=F64)
    trap_x[[0, -1]] = 0.5
    weights = torch.softmax(log_pt + trap_x.log(), dim=0)
    return x, tilted, cfg, weights


def mixture_gap(w: float, cond: GaussianMixture, uncond: GaussianMixture, t: float, n0: int, nx: int
                ) -> tuple[float, float]:
    """(relative RMS gap, error estimate: the difference from half of both grids) on 1-D mixtures."""
    def gap(m0: int, mx: int) -> float:
        _, tilted, cfg, weights = _mixture_fields(w, cond, uncond, t, m0, mx)
        return math.sqrt(float(weights @ (tilted - cfg) ** 2) / float(weights @ tilted**2))

    fine = gap(n0, nx)
    return fine, abs(fine - gap((n0 + 1) // 2, (nx + 1) // 2))


@provider
def renyi_correction(config: RunConfig) -> RenyiCorrection:
    """The identity's error against its rounding bound on Gaussian worlds, and CFG's score gap per t (module
    docstring)."""
    quick = config.quick
    ws = QUICK_WS if quick else WS
    id_times = QUICK_IDENTITY_TIMES if quick else IDENTITY_TIMES
    gap_times = QUICK_GAP_TIMES if quick else GAP_TIMES
    n_points = 64 if quick else 256
    generator = torch.Generator().manual_seed(config.seed)
    pairs = gaussian_pairs(config.seed)
    tilts = {(name, w): tilted_gaussian(w, c, u) for name, (c, u) in pairs.items() for w in ws}
    identity = []
    for name, (cond, uncond) in pairs.items():
        worst_abs = worst_ratio = worst_norm = worst_kappa = 0.0
        checks = 0
        for t in id_times:
            alpha, sigma = alpha_sigma(t)
            for w in ws:
                mean, cov = tilts[name, w]
                bulk = GaussianMixture([1.0], mean[None], cov[None]).noised(alpha, sigma).sample(n_points, generator)
                centre = bulk.mean(0)
                x = torch.cat([bulk, centre + 3.0 * (bulk - centre)])
                terms = renyi_terms(w, cond, uncond, x, t, tilts[name, w])
                err = torch.linalg.vector_norm(terms["tilted"] - terms["cond"] - terms["uncond"] - terms["renyi"],
                                               dim=-1)
                bound = identity_bound(terms, x, cond.dim)
                worst_abs = max(worst_abs, float(err.max()))
                worst_ratio = max(worst_ratio, float((err / bound).max()))
                worst_norm = max(worst_norm, float(torch.linalg.vector_norm(terms["tilted"], dim=-1).max()))
                worst_kappa = max(worst_kappa, float(terms["condition"]))
                checks += x.shape[0]
        identity.append(IdentityCheck(name, cond.dim, worst_abs, worst_ratio, worst_norm, worst_kappa, checks))
    profiles = []
    for name, (cond, uncond) in pairs.items():
        for w in ws:
            gaps = tuple(gaussian_gap(w, cond, uncond, t, tilts[name, w]) for t in gap_times)
            profiles.append(GapProfile(name, w, gap_times, gaps, (0.0,) * len(gap_times),
                                       "closed form (affine scores, trace formulas)"))
    bimodal = get_world("bimodal1d")
    cond, uncond = bimodal.law(1), bimodal.law(None)
    n0, nx = (2001, 401) if quick else (2401, 481)
    for w in ws:
        pairs_t = [mixture_gap(w, cond, uncond, t, n0, nx) for t in gap_times]
        profiles.append(GapProfile("bimodal1d", w, gap_times, tuple(g for g, _ in pairs_t),
                                   tuple(e for _, e in pairs_t),
                                   f"trapezoid quadrature, {n0} x0 nodes x {nx} x nodes (error: halving both)"))
    slices = []
    for name, (c, u) in (("gauss1d", pairs["gauss1d"]), ("bimodal1d", (cond, uncond))):
        x, tilted, cfg, weights = _mixture_fields(SLICE_W, c, u, SLICE_T, 2001, 401)
        step = float(x[1] - x[0])
        slices.append(ScoreSlice(name, SLICE_T, SLICE_W, tuple(x.tolist()), tuple(tilted.tolist()),
                                 tuple(cfg.tolist()), tuple((weights / step).tolist())))
    return RenyiCorrection(tuple(identity), tuple(profiles), tuple(slices), tuple(id_times), tuple(ws), n_points)
