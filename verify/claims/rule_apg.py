"""L-APG: adaptive projected guidance keeps the class while reducing oversaturation at high guidance scales
(evidence: :mod:`verify.evidence.rule_apg`)."""

from __future__ import annotations

from verify.evidence.image_guidance import ImageGuidance, image_block
from verify.evidence.rule_apg import ALPHA, ALTERNATIVES, MARGIN, SCHEDULE, STEPS, APGOversaturation
from verify.metrics import holm_reject

from . import Decision, claim


@claim("L-APG", order=308,
       source=("Sadat, Hilliges & Weber 2024, 'Eliminating Oversaturation and Artifacts of High Guidance Scales in "
               "Diffusion Models' (arXiv 2410.02416, ICLR 2025), Algorithm 1"),
       statement=("down-weighting the component of the CFG update parallel to the conditional prediction (APG, "
                  "eta = 0) removes the oversaturation of high guidance scales while keeping the condition"),
       tests=("tests/test_rule_apg.py", "tests/test_claims_rules_declared.py::test_apg_record",
              "tests/test_claims_rules_declared.py::test_apg_verdict_follows_from_its_evidence"))
def apg(apg_oversaturation: APGOversaturation, image_guidance: ImageGuidance) -> Decision:
    """Holds when, at every scale, Holm (family-wise ``ALPHA``) rejects all three null hypotheses (class lost beyond
    the margin, no fewer out-of-range x0, no less overshoot); fails when some check is significant the wrong way at
    Holm's first threshold; conditional otherwise."""
    ev = apg_oversaturation
    m = len(ev.checks)
    rejected = holm_reject([c.p for c in ev.checks], ALPHA)
    wrong_way = [c.check for c in ev.checks if c.p_reverse <= ev.level]
    checks = [{"check": c.check, "p": c.p, "rejected_H0": bool(r)} for c, r in zip(ev.checks, rejected, strict=True)]
    if all(rejected):
        verdict, conditions = "holds", ("on ring2d class 0 with DDIM 50 steps at every scale tried: the class is "
                                        "kept (non-inferior within 0.01) while out-of-range x0-predictions and the "
                                        "overshoot beyond the class mean both fall")
    elif wrong_way:
        verdict, conditions = "fails", f"significantly the wrong way: {wrong_way}"
    else:
        verdict = "conditional"
        conditions = (f"established only for {[c['check'] for c in checks if c['rejected_H0']]}; not for "
                      f"{[c['check'] for c in checks if not c['rejected_H0']]}")
    scales = [s.guidance_scale for s in ev.scales]
    top = ev.scales[-1]
    cfg_, apg_ = top.arms["cfg"], top.arms["apg"]
    headline = (f"g = {top.guidance_scale:g}: x0 out of range {cfg_.mean_fraction_of_x0_out_of_range:.3f} (CFG) vs "
                f"{apg_.mean_fraction_of_x0_out_of_range:.3f} (APG eta=0); overshoot "
                f"{cfg_.mean_overshoot_beyond_class_mean:.3f} vs {apg_.mean_overshoot_beyond_class_mean:.3f}; class "
                f"kept {cfg_.fraction_classified_as_class:.3f} vs {apg_.fraction_classified_as_class:.3f}")
    by_scale = {f"{s.guidance_scale:g}": {**s.arms, "paired_apg_minus_cfg": s.paired_apg_minus_cfg}
                for s in ev.scales}
    decision = Decision(
        verdict=verdict, headline=headline, conditions=conditions,
        procedure=(f"ring2d class 0, {SCHEDULE}, DDIM {STEPS} steps from the noised conditional at t = 1, n = {ev.n} "
                   f"paired paths per rule (same start points); CFG vs APG (eta = 0, no threshold, no momentum, "
                   f"x0 space) at guidance_scale {scales}; per scale: class kept (exact posterior argmax; "
                   f"one-sided non-inferiority, margin {MARGIN}, Agresti-Caffo SE), fraction of guided x0-predictions "
                   "outside the central 99.9 % range of p(x) per coordinate (paired one-sided z), overshoot along "
                   f"the class direction beyond the class mean 3 (paired one-sided z); Holm over the {m} checks at "
                   f"family-wise {ALPHA}. APG with r = 2, beta = -0.5 is reported alongside (not tested)"),
        evidence={"by_guidance_scale": by_scale, "checks": checks, "family_alpha": ALPHA,
                  "data_range": {"lo": list(ev.data_range_lo), "hi": list(ev.data_range_hi)},
                  "wrong_way_significant": wrong_way},
        uncertainty=(f"Monte Carlo over {ev.n} paired paths: binomial (Agresti-Caffo) and paired z standard errors "
                     f"in evidence; family-wise false-alarm rate {ALPHA} (Holm); power at level {ev.level:.2g} "
                     "against an equal class fraction (non-inferiority), a "
                     f"{ALTERNATIVES['out_of_range']:g} reduction of the out-of-range fraction and a "
                     f"{ALTERNATIVES['overshoot']:g} reduction of the overshoot, per scale in evidence"),
    )
    return decision.with_block("images", image_block(image_guidance, "L-APG"))
