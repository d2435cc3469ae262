"""L-RESCALE: rescaling the guided prediction's spread fixes over-exposure at high scales (evidence:
:mod:`verify.evidence.image_guidance`, shapes16 images)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

from verify.evidence.image_guidance import MODELS, ImageGuidance, paired_difference
from verify.metrics import holm_reject

from . import Decision, claim

#: family-wise error rate of the decision's tests (Holm over every test of the family)
ALPHA = 0.01
#: "fixed" means: the rescaled out-of-range fraction exceeds the data's own by less than this fraction of CFG's
#: excess (a residual of 10 % of the over-exposure is called fixed; more is "reduced, not fixed")
RESIDUAL = 0.1
SPACES = {"v": "rescale_v", "eps": "rescale_eps"}


def _normal_sf(z: float) -> float:
    """The standard normal survival function, accurate far in the tail (scipy's)."""
    return float(stats.norm.sf(z))


@dataclass(frozen=True)
class RescaleTest:
    """One (space, w) on one model: CFG's and rescale's mean out-of-range fractions, the paired reduction's z and
    one-sided p ("rescale reduces"), the residual test's z and p ("the residual excess is below ``RESIDUAL`` of
    CFG's"), and the power of that residual test against a residual of half the margin."""

    space: str
    w: float
    cfg: float
    rescaled: float
    reduction_z: float
    reduction_p: float
    residual_z: float
    residual_p: float
    residual_power: float
    excess_p: float

    def json(self, over_exposed: bool, reduced: bool, fixed: bool) -> dict:  # noqa: FBT001
        return {"space": self.space, "w": self.w, "guidance_scale": 1 + self.w, "cfg_out_of_range": self.cfg,
                "rescaled_out_of_range": self.rescaled, "reduction_z": self.reduction_z,
                "reduction_p": self.reduction_p, "residual_z": self.residual_z, "residual_p": self.residual_p,
                "residual_test_power_at_half_margin": self.residual_power, "cfg_over_data_p": self.excess_p,
                "over_exposed": over_exposed, "reduced": reduced, "fixed": fixed}


def rescale_tests(ev: ImageGuidance, model: str = "gaussian") -> list[RescaleTest]:
    """The tests of :func:`rescale` on one model's runs (module constants; paired over the shared start points).

    * reduction: the per-sample differences ``oor_cfg - oor_rescaled`` (same start point, deterministic DDIM) are
      independent over samples; z = mean / SE, one-sided p = P(Z > z) under "no reduction";
    * premise: CFG is over-exposed at this w, z = (oor_cfg - data rate) / SE (both SEs combined);
    * residual (non-inferiority): H0 "oor_rescaled - data rate >= RESIDUAL x (oor_cfg - data rate)"; the margin uses
      CFG's estimate (plug-in; its SE is added to the test's); rejected for small z. Power: the probability of
      rejecting when the true residual is half the margin, Phi(margin / (2 SE) - z_alpha) with z_alpha the
      unadjusted one-sided quantile (an upper bound on Holm's power).
    """
    data, data_se = ev.data_out_of_range, ev.data_out_of_range_se
    z_alpha = float(stats.norm.isf(ALPHA))
    out = []
    arms = ev.runs(model).arms
    for space, variant in SPACES.items():
        if variant not in arms:
            continue
        for w in (w for w in ev.high_ws if f"{w:g}" in arms[variant]):
            base, resc = ev.arm(model, "cfg", w), ev.arm(model, variant, w)
            red_z = paired_difference(resc, base)["z"]  # CFG's fraction minus rescale's, paired
            excess_se = math.hypot(base.out_of_range_se, data_se)
            ex_z = (base.out_of_range - data) / excess_se if excess_se > 0 else math.inf
            margin = RESIDUAL * (base.out_of_range - data)
            res_se = math.sqrt(resc.out_of_range_se**2 + data_se**2 + (RESIDUAL * base.out_of_range_se) ** 2)
            res_z = (resc.out_of_range - data - margin) / res_se if res_se > 0 else -math.inf
            power = 1 - _normal_sf(margin / (2 * res_se) - z_alpha) if res_se > 0 else 1.0
            out.append(RescaleTest(space, w, base.out_of_range, resc.out_of_range, red_z, _normal_sf(red_z),
                                   res_z, 1 - _normal_sf(res_z), power, _normal_sf(ex_z)))
    return out


Outcome = dict[str, dict[tuple[str, float], tuple[bool, bool, bool]]]


def decide_models(ev: ImageGuidance) -> tuple[dict[str, list[RescaleTest]], Outcome]:
    """Every model's tests (:func:`rescale_tests`) and, under one Holm family over all of them at family-wise
    ``ALPHA``, per model and (space, w) whether the premise (CFG over-exposed), the reduction and the fix are
    established."""
    tests = {m: rescale_tests(ev, m) for m in MODELS if not ev.runs(m).skipped}
    flat = [(m, t) for m, ts in tests.items() for t in ts]
    rejected = holm_reject([p for _, t in flat for p in (t.excess_p, t.reduction_p, t.residual_p)], ALPHA).tolist()
    outcome: Outcome = {m: {} for m in tests}
    for i, (m, t) in enumerate(flat):
        premise, reduced, fixed = (bool(r) for r in rejected[3 * i: 3 * i + 3])
        # "fixed" is read only where there is over-exposure to fix and rescale reduced it
        outcome[m][(t.space, t.w)] = (premise, reduced, premise and reduced and fixed)
    return tests, outcome


def _fmt(x: float) -> str:
    return f"{100 * x:.2f} %"


LABEL = {"gaussian": "the Gaussian pair (exact model)", "joint": "shapes16 itself (exact model)",
         "network": "the trained network"}


@claim("L-RESCALE", order=306,
       source="Lin et al. 2023, 'Common diffusion noise schedules and sample steps are flawed', section 3.4",
       statement=("rescaling the guided prediction's standard deviation to the conditional one's fixes overexposure "
                  "at high scales"),
       tests=("tests/test_image_guidance.py",
              "tests/test_claims_rules_declared.py::test_rescale_verdict_follows_from_its_tests"),
       figure="figures/image_guidance.png")
def rescale(image_guidance: ImageGuidance) -> Decision:
    """In the paper's space (v), on every model where CFG over-exposes at some high w (more values out of [-1, 1]
    than the data): **holds** when rescale reduces the out-of-range fraction and leaves a residual below
    ``RESIDUAL`` of CFG's excess at every such w on every such model; **fails** when it reduces it on none of them;
    **conditional** otherwise (and when no model over-exposes: nothing to fix). All tests form one Holm family at
    family-wise ``ALPHA``. Diffusers' eps-space rescale is reported beside it."""
    ev = image_guidance
    tests, outcome = decide_models(ev)
    over, helped, fixed = [], [], []
    for m, by in outcome.items():
        exposed = [key for key, (premise, _, _) in by.items() if key[0] == "v" and premise]
        if exposed:
            over.append(m)
            if all(by[key][1] for key in exposed):
                helped.append(m)
                if all(by[key][2] for key in exposed):
                    fixed.append(m)
    if not over:
        verdict = "conditional"
    elif len(fixed) == len(over):
        verdict = "holds"
    elif not helped:
        verdict = "fails"
    else:
        verdict = "conditional"
    top = max(ev.high_ws)
    lines = []
    for m, ts in tests.items():
        t_top = next(t for t in ts if t.space == "v" and t.w == max(u.w for u in ts))
        runs = ev.runs(m).arms
        word = ("not over-exposed" if m not in over else "fixed" if m in fixed else "reduced, not fixed"
                if m in helped else "not reduced")
        lines.append(f"{LABEL[m]}: {word} (scale {1 + t_top.w:g}: CFG {_fmt(t_top.cfg)} out of range -> rescale (v) "
                     f"{_fmt(t_top.rescaled)}; pixel std {runs['cfg'][f'{t_top.w:g}'].pixel_std:.3f} -> "
                     f"{runs['rescale_v'][f'{t_top.w:g}'].pixel_std:.3f})")
    eps = [t for t in tests["gaussian"] if t.space == "eps"]
    eps_reduced = [t.w for t in eps if outcome["gaussian"][("eps", t.w)][1]]
    lines.append("in eps space (diffusers' rescale_noise_cfg) on the Gaussian pair the reduction is established at "
                 + (", ".join(f"w = {w:g}" for w in eps_reduced) or "no w"))
    g_top = next(t for t in tests["gaussian"] if t.space == "v" and t.w == top)
    headline = (f"scale {1 + top:g}, values out of [-1, 1]: exact Gaussian pair CFG {_fmt(g_top.cfg)}, rescale (v) "
                f"{_fmt(g_top.rescaled)}")
    if "network" in tests:
        n_top = next(t for t in tests["network"] if t.space == "v" and t.w == max(u.w for u in tests["network"]))
        headline += f"; trained network CFG {_fmt(n_top.cfg)}, rescale (v) {_fmt(n_top.rescaled)}"
    laws = ev.exact_laws
    worst_power = min((t.residual_power for m, ts in tests.items() for t in ts if outcome[m][(t.space, t.w)][0]),
                      default=math.nan)
    return Decision(
        verdict=verdict,
        headline=headline,
        procedure=(f"{ev.world} conditioned on '{' '.join(ev.condition)}', three models: its Gaussian pair (p(x|c) "
                   "one component, p(x) the mixture moment-matched per DCT coefficient; CFG's DDIM law exact), "
                   f"{ev.world} itself and the trained network; DDIM {ev.steps} steps from shared start points "
                   f"noised to t = 1 ({ev.n} per run on the pair, {ev.joint_n} on {ev.world}, {ev.network_n} on the "
                   "network); per sample the "
                   "fraction of values outside [-1, 1]; rescale (phi = 0.7) in v (and in eps on the pair) against "
                   "CFG at w = " + ", ".join(f"{w:g}" for w in ev.high_ws) + "; per model and w: CFG's excess over "
                   f"the data's rate ({ev.n_data} exact draws), a paired one-sided reduction test and a "
                   f"non-inferiority test of the residual (margin {RESIDUAL:.0%} of CFG's excess), one Holm family "
                   f"at {ALPHA}"),
        conditions="; ".join(lines),
        uncertainty=("per-sample fractions over independent samples (pixels not treated as independent); the "
                     "residual tests' power against a residual of half the margin, where CFG over-exposes, is "
                     + (f"{worst_power:.2f}" if over else "not applicable") + " at worst; the Monte Carlo "
                     "CFG arm on the pair agrees with its exact law (z = "
                     + ", ".join(f"{law.monte_carlo_z:.1f}" for law in laws.values()) + ")"),
        evidence={m: {"tests": [t.json(*outcome[m][(t.space, t.w)]) for t in ts],
                      "pixel_std": {v: {w: a.pixel_std for w, a in ev.runs(m).arms[v].items()}
                                    for v in ev.runs(m).arms if v in ("cfg", *SPACES.values())},
                      "over_exposed": m in over, "reduced": m in helped, "fixed": m in fixed,
                      **({"checkpoint": ev.runs(m).card} if m == "network" else {})}
                  for m, ts in tests.items()}
        | {"network_skipped": ev.network.skipped, "data_out_of_range": ev.data_out_of_range,
           "data_pixel_std": ev.data_pixel_std,
           "gaussian_exact_cfg_law": {w: {"expected_out_of_range": law.out_of_range,
                                          "monte_carlo_z": law.monte_carlo_z,
                                          "frechet_to_conditional": law.frechet_to_conditional,
                                          "frechet_to_tilted": law.frechet_to_tilted} for w, law in laws.items()}})
