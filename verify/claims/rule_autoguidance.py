"""L-AUTOGUIDANCE: guiding a model with a weaker version of itself improves quality without the loss of diversity
that CFG causes (evidence: :mod:`verify.evidence.rule_autoguidance`)."""

from __future__ import annotations

import math

from verify.evidence import to_json
from verify.evidence.rule_autoguidance import STRONG, WEAK, AutoguidanceEvidence, AutoguidanceLevel, G

from . import Decision, claim

#: a difference counts beyond Z standard errors of the difference: one-sided false-alarm rate 0.135 % per comparison;
#: a true 4-SE effect is detected with probability Phi(1) = 0.84 (exact values have SE 0: any difference counts)
Z = 3.0


def _below(a: float, a_se: float, b: float, b_se: float) -> bool:
    """``a < b`` by more than Z standard errors of the difference."""
    return b - a > Z * math.hypot(a_se, b_se)


def _judge(level: AutoguidanceLevel) -> dict[str, bool]:
    """Autoguidance against unguided sampling and CFG at the same strength: quality = its Frechet distance to the
    exact model's output is below the unguided model's; diversity kept = its spread is closer to the exact model's
    than CFG's is (|spread ratio - 1| smaller beyond Z SE); and whether CFG's spread is below the exact model's."""
    auto, plain, cfg = level.methods["autoguidance"], level.methods["unguided"], level.methods["cfg"]
    quality = _below(auto.frechet, auto.frechet_se, plain.frechet, plain.frechet_se)
    cfg_loses = _below(cfg.spread_ratio, cfg.spread_ratio_se, 1.0, 0.0)
    auto_keeps = _below(abs(auto.spread_ratio - 1.0), auto.spread_ratio_se, abs(cfg.spread_ratio - 1.0),
                        cfg.spread_ratio_se)
    return {"quality_improves": quality, "cfg_loses_diversity": cfg_loses,
            "autoguidance_spread_closer_than_cfg": auto_keeps, "holds": quality and auto_keeps}


def _level_json(level: AutoguidanceLevel) -> dict:
    """``{"exact_model": ..., method: {metric: value}}``, the fields that apply to the level."""
    return {"exact_model": level.exact_model,
            **{name: {k: v for k, v in to_json(r).items() if v is not None} for name, r in level.methods.items()}}


def _line(name: str, level: AutoguidanceLevel) -> str:
    u, c, a = (level.methods[k] for k in ("unguided", "cfg", "autoguidance"))
    return (f"{name}: Frechet unguided {u.frechet:.3g} / CFG {c.frechet:.3g} / autoguidance {a.frechet:.3g}, "
            f"spread {u.spread_ratio:.2f} / {c.spread_ratio:.2f} / {a.spread_ratio:.2f} of the exact model's")


@claim("L-AUTOGUIDANCE", order=314,
       source=("Karras, Aittala, Kynkaanniemi, Lehtinen, Aila & Laine 2024, 'Guiding a Diffusion Model with a Bad "
               "Version of Itself' (NeurIPS 2024, arXiv 2406.02507), sections 3-5"),
       statement=("Guiding a conditional model with a weaker version of itself (same condition), D_w = w D_1 + "
                  "(1 - w) D_0, improves sample quality without the loss of diversity that CFG causes."),
       tests=("tests/test_rule_autoguidance.py", "tests/test_claims_rules_declared.py::test_autoguidance_record",
              "tests/test_claims_rules_declared.py::test_autoguidance_verdict_follows_the_evidence"))
def autoguidance(autoguidance_comparison: AutoguidanceEvidence) -> Decision:
    """Holds when it holds at the analytic level (gauss1d and ring2d) and with the trained networks; conditional
    when at one of the two; fails otherwise."""
    ev = autoguidance_comparison
    nets = ev.networks
    judged = {"gauss1d_exact": _judge(ev.gauss1d), "ring2d_sampled": _judge(ev.ring2d)}
    if nets.results is not None:
        judged["networks"] = _judge(nets.results)
    analytic = judged["gauss1d_exact"]["holds"] and judged["ring2d_sampled"]["holds"]
    network = judged.get("networks", {}).get("holds")
    verdict = "holds" if analytic and network else "conditional" if analytic or network else "fails"

    parts = [_line("gauss1d (exact)", ev.gauss1d), _line("ring2d", ev.ring2d)]
    if nets.results is not None:
        parts.append(_line("networks", nets.results))
    premise = ("the shipped pair fits the paper's premise in form (same world, schedule, vocabulary and condition "
               "dropout; the weak network is smaller and trained for fewer steps)"
               if nets.same_task_and_conditioning and nets.weak_is_smaller_and_shorter_trained else
               "the shipped pair does not fit the paper's premise (see evidence cards)" if nets.cards is not None else
               f"the networks were not evaluated ({nets.skipped})")
    level = {True: "holds", False: "does not hold", None: "was not evaluated"}
    conditions = (f"Analytic level (an underfit model whose weak version has the same error twice as large): "
                  f"{'holds' if analytic else 'does not hold'}; trained networks: {level[network]}. {premise}; "
                  "whether autoguidance helps on them depends on whether the weak network's errors are a larger "
                  "version of the strong one's (the paper's condition), which only the measurement decides: "
                  + "; ".join(parts) + f" (g = {G:g} for CFG and autoguidance)")
    if nets.skipped is not None:
        networks = {"skipped": nets.skipped}
    else:
        networks = {"cards": nets.cards, "same_task_and_conditioning": nets.same_task_and_conditioning,
                    "weak_is_smaller_and_shorter_trained": nets.weak_is_smaller_and_shorter_trained,
                    "results": _level_json(nets.results), "steps": nets.steps}
    network_steps = f"{nets.steps} DDIM steps" if nets.steps is not None else "DDIM"
    return Decision(
        verdict=verdict, headline="; ".join(parts), conditions=conditions,
        procedure=(f"strong model = world with covariances x{STRONG:g}, weak = x{WEAK:g} (same error, twice as "
                   "large); gauss1d: exact DDIM laws (100 steps, discrete_sampler_law), Frechet distance and variance "
                   f"ratio to the exact model's law, precision and recall against p(x|c); ring2d class 0: DDIM "
                   f"samples ({ev.ring2d_steps} steps), "
                   "precision against p(x|c), Frechet distance and spread tr Cov relative to the exact model run "
                   "through the same sampler from the same start points, paired bootstrap SEs; the "
                   "shipped networks (checkpoints/ring2d strong, checkpoints/imperfect/ring2d weak), the same "
                   f"metrics at {network_steps}; unguided vs CFG vs autoguidance at guidance_scale {G:g}"),
        evidence={"gauss1d_exact": _level_json(ev.gauss1d), "ring2d_sampled": _level_json(ev.ring2d),
                  "networks": networks, "judged": judged, "strong_inflation": STRONG, "weak_inflation": WEAK,
                  "guidance_scale": G},
        uncertainty=(f"gauss1d: exact laws (no sampling error), precision/recall binomial SEs from their reference "
                     f"draws; ring2d and networks: binomial SEs (precision) and bootstrap SEs (Frechet, spread); a "
                     f"difference counts beyond {Z:g} SE (one-sided false-alarm 0.135 % per comparison); one network "
                     f"per configuration (training-seed variation not covered)"),
    )
