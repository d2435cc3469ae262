r"""The continuous-time law and the tilted target beside a scheduler's law, and distances between Gaussian laws.

The continuous law is that of the process the scheduler discretises, from :math:`\mathcal N(0, I)` at the log-SNR
of its first model call to the log-SNR of its final output: the guided probability-flow ODE for deterministic
schedulers, the guided reverse SDE for stochastic ones (Song et al. 2021, eqs. 6 and 13), given exactly by
:func:`verify.exact_law.exact_gaussian_law` on Gaussian worlds (moment ODEs) and by
:func:`~verify.exact_law.pf_ode_law_1d` / :func:`~verify.exact_law.reverse_sde_law_1d` on 1-D mixtures, run on a
:class:`~verify.scheduler_law._schedules.LogSNRWindow` (the laws depend on the schedule only through the two end
levels). The tilted target is :math:`\propto \prod_b p(x \mid c_b)^{a_b}` (:func:`verify.tilted.tilted_law`), the
law a linear rule is usually read as aiming at; the guided dynamics do not reach it in general (Chidambaram et al.
2024; Bradley & Nakkiran 2024), and the distance between the two is reported as what it is.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from toy_models.gaussian_mixture import GaussianMixture
from toy_models.world import World
from verify.metrics import frechet_distance
from verify.rules import Rule
from verify.rules._base import bind_conditions

from ._drive import RawLaw
from ._schedules import LogSNRWindow

F64 = torch.float64


def branch_laws(world: World, rule: Rule, conditions) -> dict[str, GaussianMixture]:
    return {b: world.law(c) for b, c in bind_conditions(rule, conditions).items()}


_CACHE: dict = {}


def continuous_law(world: World, rule: Rule, conditions, lam_first: float, lam_last: float, stochastic: bool
                   ) -> tuple[RawLaw | None, str]:
    """``(law, "")``, or ``(None, why not)``; remembered per world, rule, conditions, end levels and kind (the
    settings of one audit share most of them)."""
    key = (world.name, id(world), repr(rule), repr(sorted(bind_conditions(rule, conditions).items(), key=str)),
           lam_first, lam_last, stochastic)
    if key not in _CACHE:
        if len(_CACHE) > 256:
            _CACHE.clear()
        _CACHE[key] = (_continuous_law(world, rule, conditions, lam_first, lam_last, stochastic), world)
    return _CACHE[key][0]


def _continuous_law(world: World, rule: Rule, conditions, lam_first: float, lam_last: float, stochastic: bool
                    ) -> tuple[RawLaw | None, str]:
    if rule.linear_weights is None and rule.weights_at(0.5, LogSNRWindow(lam_first, lam_last)) is None:
        return None, f"{rule.describe()} is not linear: no exact continuous-time law"
    if not lam_last > lam_first:
        return None, f"the final level (log-SNR {lam_last:.4g}) is not below the first ({lam_first:.4g})"
    window = LogSNRWindow(lam_first, lam_last)
    laws = branch_laws(world, rule, conditions)
    kind = "reverse SDE" if stochastic else "PF-ODE"
    span = f"from N(0, I) at log-SNR {lam_first:.4g} to {lam_last:.4g}"
    from verify.exact_law import exact_gaussian_law, pf_ode_law_1d, reverse_sde_law_1d

    try:
        if all(law.n_components == 1 for law in laws.values()):
            mean, cov = exact_gaussian_law(rule, laws, "sde" if stochastic else "ode", window, "prior")
            return RawLaw(mean.numpy(), cov.numpy(), f"{kind} moment ODEs {span}"), ""
        if world.dim == 1:
            if stochastic:
                law1 = reverse_sde_law_1d(rule, laws, window, "prior", n_cells=1000, n_steps=1000)
            else:
                law1 = pf_ode_law_1d(rule, laws, window, "prior", n_nodes=1001)
            return RawLaw(np.array([law1.mean]), np.array([[law1.var]]),
                          f"{kind} {span}: {law1.method} (error estimate mean {law1.error['mean']:.1e}, var "
                          f"{law1.error['var']:.1e})"), ""
    except ValueError as err:
        return None, f"{kind}: {err}"
    return None, f"no exact continuous law for a {world.dim}-D mixture world (exact laws: Gaussian or 1-D worlds)"


def denoising_jump(law: RawLaw, model, t_floor: float, dim: int) -> RawLaw | None:
    r"""``law`` pushed through the exact guided denoising step :math:`x \mapsto \hat x_0(x) = (x - \sigma
    \tilde\varepsilon(x))/\alpha` at the grid's last level ``t_floor``: the step every scheduler that outputs clean
    data ends with, from the last trained level however many steps it takes (DDIM to ``final_alpha_cumprod = 1``,
    DDPM at timestep 0, Euler to sigma = 0). For a linear rule on Gaussian branches :math:`\hat x_0` is affine,
    read from its values at 0 and the basis vectors (float64, exact to rounding); ``None`` when it is not affine
    (checked at two further points within 1e3 u of the scale: a non-affine map misses by far more)."""
    import torch

    from toy_models import parametrization as param

    pts = torch.cat([torch.zeros(1, dim, dtype=F64), torch.eye(dim, dtype=F64),
                     torch.full((1, dim), 2.0, dtype=F64), torch.full((1, dim), -3.0, dtype=F64)])
    schedule = model.levels.schedule
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(t_floor))
    eps = model.guided.eps(pts, t_floor, state=model.guided.new_state())
    x0 = param.convert(eps, "eps", "x0", x=pts, alpha=alpha, sigma=sigma).numpy()
    b = x0[0]
    a_mat = (x0[1:1 + dim] - b).T
    pred = b + pts[1 + dim:].numpy() @ a_mat.T
    scale = max(1.0, float(np.abs(x0).max()))
    if float(np.abs(pred - x0[1 + dim:]).max()) > 1e3 * 2.0**-53 * scale / alpha:
        return None
    return RawLaw(a_mat @ law.mean + b, a_mat @ law.cov @ a_mat.T,
                  f"{law.method}, then the exact denoising step at log-SNR {float(schedule.log_snr(t_floor)):.4g}")


def tilted_target(world: World, rule: Rule, conditions) -> tuple[RawLaw | None, str]:
    from verify.tilted import tilted_law

    try:
        law = tilted_law(world, rule, conditions)
        summary = law.summary()
    except ValueError as err:
        return None, str(err)
    return RawLaw(summary.mean.numpy(), summary.cov.numpy(), f"tilted target: {summary.method}"), ""


def _gaussian(law: RawLaw) -> GaussianMixture:
    d = len(law.mean)
    cov = 0.5 * (law.cov + law.cov.T)
    floor = np.eye(d) * max(1e-300, 1e-14 * float(np.abs(cov).max()))  # a covariance that rounding left singular
    return GaussianMixture([1.0], [law.mean], [cov + floor])


def _sd_se(law: RawLaw) -> np.ndarray:
    """Standard error of each coordinate's standard deviation, from that of the variance: d sd = d var / (2 sd)."""
    if law.se_cov is None:
        return np.zeros(len(law.mean))
    sd = np.sqrt(np.maximum(np.diag(law.cov), 1e-300))
    return np.diag(law.se_cov) / (2.0 * sd)


def compare(a: RawLaw, b: RawLaw) -> dict:
    r"""How law ``a`` differs from law ``b``: ``mean_diff`` (a - b), ``var_ratio`` (diagonal a / b), ``frechet``
    (the squared 2-Wasserstein distance between the Gaussians, :func:`verify.metrics.frechet_distance`), ``w2`` (its
    root, in data units) and ``se_w2``: the Monte Carlo standard error of ``w2`` where either law is estimated,
    :math:`\sqrt{\sum_i se(m_i)^2 + se(sd_i)^2}` over both laws (the error of the coordinates' means and standard
    deviations, which is what W2 between near-equal Gaussians measures; it ignores the correlation of common
    random numbers, so it overstates the noise of a difference between two runs with one seed)."""
    frechet = frechet_distance(_gaussian(a), _gaussian(b))
    se = 0.0
    for law in (a, b):
        if law.se_mean is not None:
            se += float(np.sum(law.se_mean**2) + np.sum(_sd_se(law) ** 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.diag(a.cov) / np.diag(b.cov)
    return {"mean_diff": [float(v) for v in a.mean - b.mean], "var_ratio": [float(v) for v in ratio],
            "frechet": float(frechet), "w2": math.sqrt(frechet), "se_w2": math.sqrt(se)}
