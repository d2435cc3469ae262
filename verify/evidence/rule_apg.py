r"""APG against CFG at high guidance scales on ring2d class 0, paired (read by L-APG; Sadat, Hilliges & Weber 2024,
arXiv 2410.02416, Algorithm 1).

The paper's claim: the part of the CFG update parallel to the conditional prediction is what oversaturates at high
guidance scales, while the orthogonal part carries the condition; down-weighting the parallel part (:math:`\eta = 0`)
removes the oversaturation and keeps the condition. Here, on ring2d class 0 (vp-linear, DDIM 50 steps from the
noised conditional at t = 1), CFG and APG (:math:`\eta = 0`, no threshold, no momentum: the parallel-component claim
alone) at the same ``guidance_scale`` start from the same points, so every comparison is paired:

* class kept: the fraction of final samples whose exact posterior :math:`p(c \mid x)` picks class 0, compared by a
  one-sided non-inferiority test (margin 0.01) with Agresti-Caffo standard errors (one success and one failure
  added to each arm, so a fraction of exactly 1 still has a standard error):
  :math:`z = (\tilde p_{APG} - \tilde p_{CFG} + 0.01)/\mathrm{SE}`, :math:`\tilde p = (k + 1)/(n + 2)`;
* oversaturation: per path, the fraction of the 50 guided :math:`\hat x_0 = (x_t - \sigma_t\hat\varepsilon)/\alpha_t`
  outside the data range (per coordinate, the central 99.9 % interval of :math:`p(x)`, as S0-THRESHOLDING),
  compared by a one-sided paired z-test;
* overshoot: per sample, the displacement along the class direction :math:`e_0 = (1, 0)` beyond the class mean 3,
  compared by a one-sided paired z-test.

This provider computes the per-scale summaries and each check's one-sided p-value (and the p-value of the reverse
alternative); the claim applies Holm's correction over the family. Each check's power is stated at level
``ALPHA / m`` (Holm's first threshold, the most stringent) against a named alternative (:data:`ALTERNATIVES`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from scipy import stats

from toy_models import AnalyticDenoiser, get_schedule, get_world
from toy_models.denoiser import WrappedDenoiser
from verify import rules
from verify.config import RunConfig
from verify.samplers import ddim, time_grid

from . import provider
from .shared import one_thread

__all__ = ["ALPHA", "MARGIN", "ALTERNATIVES", "ArmSummary", "PairedAPGMinusCFG", "APGCheck", "APGScale",
           "APGOversaturation", "X0Recorder", "run_recording", "apg_oversaturation"]

ALPHA = 0.01  # family-wise false-alarm rate of the claim's Holm procedure
MARGIN = 0.01  # non-inferiority margin on the fraction classified as the class
SCHEDULE = "vp-linear"
STEPS = 50
CLASS, CLASS_MEAN = 0, 3.0  # ring2d class 0 sits at (3, 0)
#: reductions the power is stated against: of the out-of-range fraction, and of the overshoot
ALTERNATIVES = {"out_of_range": 0.01, "overshoot": 0.05}
#: the arms at each scale: CFG, APG (eta = 0, the claim's rule) and APG with threshold 2 and momentum -0.5 (reported)
ARMS = ("cfg", "apg", "apg_r2_beta_minus0.5")


class X0Recorder(WrappedDenoiser):
    """Passes a guided denoiser through (its run state included), recording per call and per point whether the
    guided :math:`\\hat x_0 = (x - \\sigma\\hat\\varepsilon)/\\alpha` leaves ``[lo, hi]`` in some coordinate."""

    def __init__(self, denoiser, lo: torch.Tensor, hi: torch.Tensor):
        self.denoiser, self.lo, self.hi, self.outside = denoiser, lo, hi, []

    @property
    def stateful(self) -> bool:
        return getattr(self.denoiser, "stateful", False)

    def new_state(self):
        return self.denoiser.new_state()

    def eps(self, x, t, condition=None, *, state=None):
        eps = self.denoiser.eps(x, t, condition, state=state) if state is not None else self.denoiser.eps(x, t)
        a, s = (float(v) for v in self.schedule.alpha_sigma(float(t)))
        x0 = (x - s * eps) / a
        self.outside.append(((x0 < self.lo) | (x0 > self.hi)).any(dim=1).double())
        return eps


def run_recording(rule: rules.Rule, den, x1: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """DDIM ``STEPS`` steps of ``rule`` guiding ``den`` towards class 0 from ``x1``: the final samples [n, 2] and,
    per path, the fraction of steps whose guided x0-prediction is outside ``[lo, hi]`` [n]."""
    recorder = X0Recorder(rule.guide(den, CLASS), lo, hi)
    x = ddim(recorder, x1, time_grid(STEPS))
    return x, torch.stack(recorder.outside).mean(0)


def _one_sided_lower(d: torch.Tensor) -> tuple[float, float, float]:
    """(mean, standard error, p) of the one-sided z-test of H0: E[d] >= 0 against E[d] < 0."""
    n = d.numel()
    mean, se = float(d.mean()), float(d.std() / math.sqrt(n))
    if se == 0.0:
        return mean, se, 0.0 if mean < 0 else 1.0
    return mean, se, float(stats.norm.cdf(mean / se))


def _power(effect: float, se: float, level: float) -> float:
    """One-sided z-test power at ``level`` when the true effect is ``effect`` and the statistic's SE is ``se``."""
    if se == 0.0:
        return 1.0
    return float(stats.norm.sf(stats.norm.isf(level) - effect / se))


@dataclass(frozen=True)
class ArmSummary:
    """One rule at one scale: fraction classified as the class, mean fraction of out-of-range x0-predictions per
    path, mean overshoot beyond the class mean, each with its standard error over the ``n`` paths."""

    fraction_classified_as_class: float
    se: float
    mean_fraction_of_x0_out_of_range: float
    se_out_of_range: float
    mean_overshoot_beyond_class_mean: float
    se_overshoot: float


@dataclass(frozen=True)
class PairedAPGMinusCFG:
    """APG (eta = 0) minus CFG at one scale: the Agresti-Caffo difference of the class fractions, the paired mean
    differences of the out-of-range fraction and of the overshoot, their standard errors, and each check's power at
    level ``ALPHA / m`` against its alternative (an equal class fraction; :data:`ALTERNATIVES`)."""

    class_kept_difference_agresti_caffo: float
    se: float
    power_at_equal_fractions: float
    out_of_range_fraction: float
    se_out_of_range: float
    power_against_out_of_range_reduction: float
    overshoot: float
    se_overshoot: float
    power_against_overshoot_reduction: float


@dataclass(frozen=True)
class APGCheck:
    """One one-sided test of the family: its readable name, scale and kind, its p-value, and the p-value of the
    opposite one-sided alternative (evidence of the wrong direction)."""

    check: str
    guidance_scale: float
    kind: str  # "class_kept_non_inferior", "fewer_x0_out_of_range", "less_overshoot"
    p: float
    p_reverse: float


@dataclass(frozen=True)
class APGScale:
    """Every arm's summary at one guidance scale (keys: :data:`ARMS`) and the paired APG - CFG comparison."""

    guidance_scale: float
    arms: dict[str, ArmSummary]
    paired_apg_minus_cfg: PairedAPGMinusCFG


@dataclass(frozen=True)
class APGOversaturation:
    scales: tuple[APGScale, ...]
    checks: tuple[APGCheck, ...]
    n: int
    data_range_lo: tuple[float, ...]
    data_range_hi: tuple[float, ...]
    level: float  # ALPHA / m: the level each power is stated at

    def at(self, guidance_scale: float) -> APGScale:
        return next(s for s in self.scales if s.guidance_scale == guidance_scale)


@provider
@one_thread()
def apg_oversaturation(config: RunConfig) -> APGOversaturation:
    """CFG, APG (eta = 0) and APG (r = 2, beta = -0.5) on ring2d class 0 from shared start points, per scale; the
    checks' p-values (see the module docstring)."""
    world = get_world("ring2d")
    den = AnalyticDenoiser(world, SCHEDULE)
    gen = torch.Generator().manual_seed(config.seed + 2410)
    data = world.law(None).sample(100_000, gen)
    lo, hi = torch.quantile(data, 0.0005, dim=0), torch.quantile(data, 0.9995, dim=0)
    n = 2000 if config.quick else 10000
    scales = (8.0, 15.0) if config.quick else (8.0, 12.0, 15.0, 20.0)
    a1, s1 = (float(v) for v in get_schedule(SCHEDULE).alpha_sigma(1.0))
    x1 = world.law(CLASS).noised(a1, s1).sample(n, gen)
    posterior = world.law(None)
    level = ALPHA / (3 * len(scales))

    rows, checks = [], []
    for g in scales:
        out = {}
        for label, rule in zip(ARMS, (rules.get("cfg", guidance_scale=g), rules.get("apg", guidance_scale=g, eta=0.0),
                                      rules.get("apg", guidance_scale=g, eta=0.0, norm_threshold=2.0,
                                                momentum=-0.5)), strict=True):
            x, outside = run_recording(rule, den, x1, lo, hi)
            kept = (posterior.class_posterior(x).argmax(1) == CLASS).double()
            out[label] = {"outside": outside, "kept": kept, "overshoot": x[:, 0] - CLASS_MEAN}
        cfg_, apg_ = out["cfg"], out["apg"]
        # class kept: Agresti-Caffo difference, non-inferiority at MARGIN
        k_a, k_c = float(apg_["kept"].sum()), float(cfg_["kept"].sum())
        pa, pc = (k_a + 1) / (n + 2), (k_c + 1) / (n + 2)
        se_kept = math.sqrt(pa * (1 - pa) / (n + 2) + pc * (1 - pc) / (n + 2))
        z_kept = (pa - pc + MARGIN) / se_kept
        p_kept = float(stats.norm.sf(z_kept))
        rev_kept = float(stats.norm.cdf(z_kept))  # evidence of a loss beyond the margin
        d_out, se_out, p_out = _one_sided_lower(apg_["outside"] - cfg_["outside"])
        d_over, se_over, p_over = _one_sided_lower(apg_["overshoot"] - cfg_["overshoot"])
        checks += [APGCheck(f"g={g:g} class kept (non-inferior)", g, "class_kept_non_inferior", p_kept, rev_kept),
                   APGCheck(f"g={g:g} fewer out-of-range x0", g, "fewer_x0_out_of_range", p_out, 1.0 - p_out),
                   APGCheck(f"g={g:g} less overshoot", g, "less_overshoot", p_over, 1.0 - p_over)]
        arms = {}
        for label, v in out.items():
            frac = float(v["kept"].mean())
            arms[label] = ArmSummary(frac, math.sqrt(max(frac * (1 - frac), 0.0) / n), float(v["outside"].mean()),
                                     float(v["outside"].std() / math.sqrt(n)), float(v["overshoot"].mean()),
                                     float(v["overshoot"].std() / math.sqrt(n)))
        paired = PairedAPGMinusCFG(pa - pc, se_kept, _power(MARGIN, se_kept, level), d_out, se_out,
                                   _power(ALTERNATIVES["out_of_range"], se_out, level), d_over, se_over,
                                   _power(ALTERNATIVES["overshoot"], se_over, level))
        rows.append(APGScale(g, arms, paired))
    return APGOversaturation(tuple(rows), tuple(checks), n, tuple(lo.tolist()), tuple(hi.tolist()), level)
