r"""CFG++ and CFG at three levels (read by L-CFGPP; Chung, Kim, Park, Nam & Ye 2024, arXiv 2406.08070, Algorithm 1).

1. **Algebra**: one DDIM step of CFG++ with :math:`\lambda` is one DDIM step of CFG at ``guidance_scale``
   :math:`g = \lambda/(1 - e^{-\Delta/2})` (DDPM: :math:`\lambda/(1 - e^{-\Delta})`), :math:`\Delta` the step in
   log-SNR (``proofs/cfgpp_ddim.py``, read through :mod:`verify.evidence.proofs`; the float64 check is here,
   :func:`identity_check`). So the *states* of a CFG++ run are those of CFG with that per-step schedule; only the
   clean estimate :math:`\hat x_0` differs (an interpolation for CFG++, an extrapolation by :math:`g` for CFG).
2. **Exact laws** (no sampling): on ``gauss1d`` every guided eps is affine in x, so
   :func:`~verify.exact_law.discrete_sampler_law` gives DDIM's output law exactly at each step count
   (:func:`exact_laws`). At fixed :math:`\lambda` the law of CFG++ keeps changing as the steps are refined (its
   equivalent scale grows like :math:`2\lambda/\Delta`), where CFG at a fixed scale converges at DDIM's first order.
3. **Off-manifold excursions** (Monte Carlo, ``ring2d`` class 2, DDIM; :func:`excursions`): along the trajectory,
   the fraction of clean estimates :math:`\hat x_0` outside the 0.99 highest-density region of :math:`p(x|c)` and
   of states :math:`x_s` outside that of the noised :math:`p_s(x|c)` (per sample over the steps, then averaged over
   the samples); CFG++ at :math:`\lambda` against CFG on a grid of constant scales, and against CFG at the constant
   scale that gives the same final spread (matched strength).

Also the per-step equivalent scale of CFG++ on Stable Diffusion's 50-step DDIM grid
(:func:`stable_diffusion_scales`), the setting of the paper's figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from toy_models import AnalyticDenoiser, GaussianMixture, get_schedule, get_world
from verify import rules
from verify.config import RunConfig
from verify.exact_law import discrete_sampler_law
from verify.rules.cfgpp import equivalent_guidance_scale
from verify.samplers import sample, time_grid
from verify.tolerances import gamma

from . import provider
from .shared import one_thread

__all__ = ["CLASS", "LEVEL", "LAMS", "N_REFERENCE", "N_REFERENCE_QUICK", "IdentityCheck", "StepLaw", "ExactLaws",
           "SDScales", "Excursion", "CFGPPCell", "ExcursionRow", "CFGPPRelation", "identity_check", "exact_laws",
           "stable_diffusion_scales", "excursions", "matched_cfg_scale", "cfgpp_relation"]

F64 = torch.float64
SCHEDULE = "vp-linear"
LEVEL = 0.99  # highest-density region for "on the manifold"
CLASS = 2
LAMS = (0.2, 0.6)  # the CFG++ strengths of the excursion runs and the exact laws
LAM_IDENTITY = 0.6
CFG_EXACT_SCALE = 2.0  # the constant CFG scale the exact laws are set against
N_REFERENCE, N_REFERENCE_QUICK = 20000, 2000  # draws per 0.99-region threshold


def _alpha_sigma(t: float) -> tuple[float, float]:
    a, s = get_schedule(SCHEDULE).alpha_sigma(t)
    return float(a), float(s)


# --------------------------------------------------------------------------------------------------------------
# 1. the identity, in float64
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IdentityCheck:
    """The largest |CFG++ step - CFG step at the equivalent scale| over a ``steps``-step grid, relative to the
    derived rounding bound; ``holds`` when it is at most 1."""

    max_error_over_bound: float
    holds: bool
    steps: int
    lam: float


def identity_check(seed: int, steps: int) -> IdentityCheck:
    """Max |CFG++ step - CFG step at the equivalent scale| along a ``steps``-step CFG++ run on ring2d, relative to
    the rounding bound gamma_32 x (size of the step's terms): each step is a handful of roundings per term through
    the eps combination, the x0 estimate and the re-noising (tests/test_rule_cfgpp.py derives n = 32)."""
    world = get_world("ring2d")
    den = AnalyticDenoiser(world)
    gen = torch.Generator().manual_seed(seed)
    x = world.law(CLASS).noised(*_alpha_sigma(1.0)).sample(256, gen)
    grid = time_grid(steps).tolist()
    worst = 0.0
    for t, s in zip(grid[:-1], grid[1:], strict=True):
        g = equivalent_guidance_scale(LAM_IDENTITY, t, s)
        a = sample("ddim", rules.get("cfgpp", lam=LAM_IDENTITY).guide(den, CLASS), x, [t, s])
        b = sample("ddim", rules.get("cfg", guidance_scale=g).guide(den, CLASS), x, [t, s])
        a_t, s_t = _alpha_sigma(t)
        a_s, s_s = _alpha_sigma(s)
        e = den.eps(x, t, None).abs() + den.eps(x, t, CLASS).abs()
        size = (a_s / a_t) * (x.abs() + s_t * (1 + 2 * g) * e) + s_s * (1 + 2 * g) * e
        worst = max(worst, float(((a - b).abs() / (gamma(32, F64) * size)).max()))
        x = a
    return IdentityCheck(worst, worst <= 1.0, steps, LAM_IDENTITY)


# --------------------------------------------------------------------------------------------------------------
# 2. exact laws on gauss1d
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepLaw:
    """DDIM's exact output law on gauss1d at one step count, and the range of the per-step equivalent CFG scale
    (the constant scale itself for CFG)."""

    mean: float
    var: float
    equivalent_guidance_scale_range: tuple[float, float]


@dataclass(frozen=True)
class ExactLaws:
    """``cfgpp[lam][steps]`` and ``cfg[steps]`` (CFG at ``cfg_guidance_scale``); keys are numbers as strings."""

    steps: tuple[int, ...]
    cfgpp: dict[str, dict[str, StepLaw]]
    cfg: dict[str, StepLaw]
    cfg_guidance_scale: float


def exact_laws(steps: tuple[int, ...], lams: tuple[float, ...]) -> ExactLaws:
    """DDIM's exact laws on gauss1d class 1 from the noised conditional at t = 1, CFG++ at each ``lam`` and CFG at
    :data:`CFG_EXACT_SCALE`, at each step count."""
    world = get_world("gauss1d")
    den = AnalyticDenoiser(world)
    cond = world.law(1)
    a, s = _alpha_sigma(1.0)
    m0 = torch.tensor([a * float(cond.means[0, 0])], dtype=F64)
    c0 = torch.tensor([[a * a * float(cond.covariances[0, 0, 0]) + s * s]], dtype=F64)

    def laws(rule: rules.Rule) -> dict[str, StepLaw]:
        out = {}
        for n in steps:
            mean, cov = discrete_sampler_law("ddim", rule.guide(den, 1), time_grid(n), m0, c0)
            grid = time_grid(n).tolist()
            scales = [equivalent_guidance_scale(rule.lam, t, u) for t, u in zip(grid[:-2], grid[1:-1], strict=True)] \
                if rule.name == "cfgpp" else [CFG_EXACT_SCALE]
            out[str(n)] = StepLaw(float(mean[0]), float(cov[0, 0]), (min(scales), max(scales)))
        return out

    return ExactLaws(tuple(steps), {f"{lam:g}": laws(rules.get("cfgpp", lam=lam)) for lam in lams},
                     laws(rules.get("cfg", guidance_scale=CFG_EXACT_SCALE)), CFG_EXACT_SCALE)


@dataclass(frozen=True)
class SDScales:
    """CFG++'s per-step equivalent CFG scale at ``lam`` on Stable Diffusion's ``steps``-step DDIM grid: min, median
    and max over the inner steps, and the last step's."""

    lam: float
    steps: int
    min: float
    median: float
    max: float
    last_step: float


def stable_diffusion_scales(lam: float = 1.0, steps: int = 50) -> SDScales:
    """The per-step equivalent CFG scale of CFG++ at ``lam`` on Stable Diffusion's discrete schedule (scaled-linear
    betas 0.00085..0.012 over 1000 steps; DDIM on ``steps`` evenly spaced timesteps 981, 961, .., 1, i.e.
    diffusers' "leading" spacing with steps_offset = 1), the setting of the paper's figures:
    :math:`g_i = \\lambda / (1 - e^{-\\Delta_i/2})`, :math:`\\Delta_i` the step's rise in log-SNR. The authors' code
    returns the last clean estimate itself (a last step to sigma = 0, where the scale is lam), included here."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    abar = np.cumprod(1.0 - betas)
    ts = np.arange(0, 1000, 1000 // steps)[::-1] + 1
    log_snr = [math.log(abar[t] / (1 - abar[t])) for t in ts] + [math.inf]
    g = [lam / (-math.expm1(-(log_snr[i + 1] - log_snr[i]) / 2)) if math.isfinite(log_snr[i + 1]) else lam
         for i in range(len(ts))]
    inner = g[:-1]
    return SDScales(lam, steps, min(inner), float(np.median(inner)), max(inner), g[-1])


# --------------------------------------------------------------------------------------------------------------
# 3. off-manifold excursions on ring2d
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Excursion:
    """One run's excursions: per sample the fraction of steps whose clean estimate is outside the 0.99 region of
    p(x) (``x0_outside_data_law``) or of p(x|c) (``x0_outside``), or whose state is outside that of p_s(x|c)
    (``xt_outside``), averaged over the samples with standard errors; the worst single step; the final spread."""

    x0_outside_data_law: float
    x0_outside_data_law_se: float
    x0_outside: float
    x0_outside_se: float
    xt_outside: float
    xt_outside_se: float
    x0_outside_worst_step: float
    xt_outside_worst_step: float
    final_trace_cov: float


def _threshold(law: GaussianMixture, n: int, generator: torch.Generator) -> float:
    """log p on the boundary of ``law``'s LEVEL highest-density region, from ``n`` draws."""
    draws = law.sample(n, generator)
    return float(np.quantile(law.log_prob(draws).numpy(), 1.0 - LEVEL))


class _Excursions:
    """Per-step fractions of clean estimates outside the data's HDR and of states outside the noised law's HDR."""

    def __init__(self, steps: int, n_reference: int, seed: int):
        world = get_world("ring2d")
        self.law, self.data = world.law(CLASS), world.law(None)
        gen = torch.Generator().manual_seed(seed + 7)
        self.tau_data = _threshold(self.law, n_reference, gen)
        self.tau_all = _threshold(self.data, n_reference, gen)
        self.grid = time_grid(steps).tolist()
        self.tau_t = [_threshold(self.law.noised(*_alpha_sigma(s)), n_reference, gen) if _alpha_sigma(s)[1] > 0
                      else self.tau_data for s in self.grid[1:]]

    def run(self, guided, x: torch.Tensor) -> Excursion:
        """Per sample, the fraction of the run's steps at which its clean estimate (its state) is outside the
        region; their mean over the samples has a plain standard error (the samples are independent; the steps of
        one sample are not, which is why they are averaged within the sample first)."""
        x0_out, x0_all_out, xt_out, prev = [], [], [], [x]

        def callback(i, s, x_new, eps):
            a_t, s_t = _alpha_sigma(self.grid[i])
            x0 = (prev[0] - s_t * eps) / a_t
            x0_out.append((self.law.log_prob(x0) < self.tau_data).double())
            x0_all_out.append((self.data.log_prob(x0) < self.tau_all).double())
            a_s, s_s = _alpha_sigma(s)
            if s_s > 0:  # the last state is the last clean estimate itself
                xt_out.append((self.law.noised(a_s, s_s).log_prob(x_new) < self.tau_t[i]).double())
            prev[0] = x_new

        final = sample("ddim", guided, x, self.grid, callback=callback)
        n = len(x)
        per_x0, per_xt = torch.stack(x0_out).mean(0), torch.stack(xt_out).mean(0)
        per_all = torch.stack(x0_all_out).mean(0)
        return Excursion(float(per_all.mean()), float(per_all.std() / math.sqrt(n)),
                         float(per_x0.mean()), float(per_x0.std() / math.sqrt(n)),
                         float(per_xt.mean()), float(per_xt.std() / math.sqrt(n)),
                         float(torch.stack(x0_out).mean(1).max()), float(torch.stack(xt_out).mean(1).max()),
                         float(torch.cov(final.T).trace()))


def matched_cfg_scale(target_trace: float, traces: dict[float, float]) -> float | None:
    """The constant CFG scale whose final spread equals ``target_trace`` (linear interpolation in log trace over
    the measured grid, which must be monotone there); ``None`` outside the grid."""
    gs = sorted(traces)
    logs = [math.log(traces[g]) for g in gs]
    lt = math.log(target_trace)
    for g0, g1, l0, l1 in zip(gs[:-1], gs[1:], logs[:-1], logs[1:], strict=True):
        if min(l0, l1) <= lt <= max(l0, l1) and l0 != l1:
            return g0 + (lt - l0) * (g1 - g0) / (l1 - l0)
    return None


@dataclass(frozen=True)
class CFGPPCell:
    """CFG++ at one lam and step count: its excursions, the matched constant CFG scale (``None`` outside the CFG
    grid) and that run's excursions, and the range of the per-step equivalent scale (inner steps)."""

    cfgpp: Excursion
    matched_cfg_scale: float | None
    matched_cfg: Excursion | None
    equivalent_scale_range: tuple[float, float]


@dataclass(frozen=True)
class ExcursionRow:
    """One step count: CFG at each constant scale of the grid, and CFG++ at each lam (keys: numbers as strings)."""

    cfg_constant: dict[str, Excursion]
    cfgpp: dict[str, CFGPPCell]


def excursions(config: RunConfig) -> dict[str, ExcursionRow]:
    """``{steps: ExcursionRow}``: CFG++ at :data:`LAMS` and CFG on a grid of constant scales from the same start
    points on ring2d class :data:`CLASS` (DDIM)."""
    world = get_world("ring2d")
    den = AnalyticDenoiser(world)
    n = 300 if config.quick else 1500
    n_reference = N_REFERENCE_QUICK if config.quick else N_REFERENCE
    steps_list = (25,) if config.quick else (10, 25, 50, 100)
    cfg_grid = (0.5, 1.0, 2.0, 4.0, 8.0) if config.quick else (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0)
    out: dict[str, ExcursionRow] = {}
    for steps in steps_list:
        ex = _Excursions(steps, n_reference, config.seed)
        gen = torch.Generator().manual_seed(config.seed + steps)
        x = world.law(CLASS).noised(*_alpha_sigma(1.0)).sample(n, gen)
        cfg_runs = {g: ex.run(rules.get("cfg", guidance_scale=g).guide(den, CLASS), x) for g in cfg_grid}
        traces = {g: r.final_trace_cov for g, r in cfg_runs.items()}
        cells = {}
        for lam in LAMS:
            pp = ex.run(rules.get("cfgpp", lam=lam).guide(den, CLASS), x)
            g_match = matched_cfg_scale(pp.final_trace_cov, traces)
            matched = ex.run(rules.get("cfg", guidance_scale=g_match).guide(den, CLASS), x) if g_match else None
            grid = ex.grid
            equiv = [equivalent_guidance_scale(lam, t, s) for t, s in zip(grid[:-1], grid[1:], strict=True)]
            cells[f"{lam:g}"] = CFGPPCell(pp, g_match, matched, (min(equiv[:-1]), max(equiv[:-1])))
        out[str(steps)] = ExcursionRow({f"{g:g}": r for g, r in cfg_runs.items()}, cells)
    return out


# --------------------------------------------------------------------------------------------------------------
# the provider
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CFGPPRelation:
    identity: IdentityCheck
    exact_laws: ExactLaws
    stable_diffusion: SDScales
    excursions: dict[str, ExcursionRow]
    n_reference: int


@provider
@one_thread()
def cfgpp_relation(config: RunConfig) -> CFGPPRelation:
    """The float64 identity check, the exact gauss1d laws over step counts, the Stable Diffusion scales and the
    ring2d excursions (see the module docstring)."""
    identity = identity_check(config.seed, 10 if config.quick else 25)
    laws = exact_laws((10, 25, 50) if config.quick else (10, 25, 50, 100, 200), LAMS)
    return CFGPPRelation(identity, laws, stable_diffusion_scales(), excursions(config),
                         N_REFERENCE_QUICK if config.quick else N_REFERENCE)
