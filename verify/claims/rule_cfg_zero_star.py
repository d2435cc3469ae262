"""L-CFG-ZERO-STAR: CFG-Zero*'s optimised scale corrects an inaccurate unconditional velocity, and zeroing the first
steps helps (evidence: :mod:`verify.evidence.rule_cfg_zero_star`)."""

from __future__ import annotations

import math

from verify.evidence import rule_cfg_zero_star as zs
from verify.evidence import to_json
from verify.evidence.image_guidance import ImageGuidance, image_block
from verify.evidence.rule_cfg_zero_star import CFGZeroStarCorrection, ZeroStarRun
from verify.metrics import holm_reject

from . import Decision, claim

#: verdicts from the weakest to the strongest: the claim's verdict is the weaker of (a) and (b)
STRENGTH = ("fails", "conditional", "holds")


def _run_json(run: ZeroStarRun) -> dict:
    """A run's fields that apply (a diverged run has only ``diverged``)."""
    return {k: v for k, v in to_json(run).items() if v is not None}


def _verdict_of(words: dict[str, str]) -> tuple[str, str]:
    """(verdict, where) of one part from its outcome per cell: holds if it helps somewhere and hurts nowhere."""
    helps = [k for k, v in words.items() if v == "helps"]
    hurts = [k for k, v in words.items() if v == "hurts"]
    if helps and not hurts:
        return "holds", f"helps at {helps}"
    if helps and hurts:
        return "conditional", f"helps at {helps}; hurts at {hurts}"
    return "fails", f"never helps (hurts at {hurts})" if hurts else "never helps"


@claim("L-CFG-ZERO-STAR", order=312,
       source=("Fan, Zheng, Yeh & Liu 2025, 'CFG-Zero*: Improved Classifier-Free Guidance for Flow Matching Models' "
               "(arXiv 2503.18886), sections 4.1 and 4.2"),
       statement=("(a) the optimised scale s* = <v_c, v_u>/||v_u||^2 corrects an inaccurate unconditional velocity; "
                  "(b) zeroing the velocity of the first ODE steps (zero-init) improves the samples further"),
       tests=("tests/test_rule_cfg_zero_star.py", "tests/test_claims_rules_declared.py::test_zero_star_record",
              "tests/test_claims_rules_declared.py::test_zero_star_verdict_follows_from_its_evidence"))
def cfg_zero_star(cfg_zero_star_correction: CFGZeroStarCorrection, image_guidance: ImageGuidance) -> Decision:
    """Holm over every comparison at family-wise ``ALPHA``; per part, holds / conditional / fails by where it helps
    and hurts; the claim's verdict is the weaker part's."""
    ev = cfg_zero_star_correction
    comparisons = [(part, c, cmp) for c in ev.cells for part, cmp in (("a", c.a_cfg_zero_star_minus_cfg),
                                                                      ("b", c.b_zero_init_minus_none))]
    rejected = holm_reject([cmp.p for _, _, cmp in comparisons], zs.ALPHA)
    outcomes: dict[str, dict[str, dict[str, str]]] = {"a": {}, "b": {}}
    words: dict[str, dict[str, str]] = {"a": {}, "b": {}}
    judged: dict[tuple[str, float, float], dict] = {}
    for (part, c, cmp), rej in zip(comparisons, rejected, strict=True):
        word = ("helps" if cmp.mean_difference < 0 else "hurts") if rej else "no significant difference"
        outcomes[part].setdefault(f"{c.guidance_scale:g}", {})[f"{c.relative_error:g}"] = word
        words[part][f"g={c.guidance_scale:g}, relative_error={c.relative_error:g}"] = word
        judged[(part, c.guidance_scale, c.relative_error)] = {**to_json(cmp), "holm_rejected": bool(rej),
                                                              "outcome": word}
    by_cell: dict[str, dict[str, dict]] = {}
    for c in ev.cells:
        by_cell.setdefault(f"{c.guidance_scale:g}", {})[f"{c.relative_error:g}"] = {
            **{label: _run_json(run) for label, run in c.runs.items()},
            "a_cfg_zero_star_minus_cfg": judged[("a", c.guidance_scale, c.relative_error)],
            "b_zero_init_minus_none": judged[("b", c.guidance_scale, c.relative_error)]}

    def fd(run: ZeroStarRun) -> float:
        return run.frechet_to_class_law if run.frechet_to_class_law is not None else math.inf

    closer_to_data = [f"g={c.guidance_scale:g}, relative_error={c.relative_error:g}" for c in ev.cells
                      if fd(c.runs["cfg_zero_star_zero_init"]) < fd(c.runs["cfg_zero_star"])]
    v_a, c_a = _verdict_of(words["a"])
    v_b, c_b = _verdict_of(words["b"])
    verdict = min(v_a, v_b, key=STRENGTH.index)
    g0 = ev.scales[0]
    ex, big = ev.cell(g0, 0.0).runs, ev.cell(g0, zs.ERRORS[-1]).runs

    def err(run: ZeroStarRun) -> str:
        return f"{run.mean_pathwise_squared_error:.3g}" if run.diverged is None else "diverged"

    headline = (f"g = {g0:g}, pathwise squared error to the exact CFG law: exact model CFG {err(ex['cfg'])}, "
                f"CFG-Zero* {err(ex['cfg_zero_star'])}; unconditional error {zs.ERRORS[-1]:g}: CFG {err(big['cfg'])}, "
                f"CFG-Zero* {err(big['cfg_zero_star'])}, + zero-init {err(big['cfg_zero_star_zero_init'])}")
    decision = Decision(
        verdict=verdict, headline=headline,
        procedure=(f"ring2d class 0 on {zs.SCHEDULE}, Euler {zs.STEPS} steps from t = {zs.T_START} to 0, "
                   f"n = {ev.n} paths from the same start points; target: CFG with the exact model at guidance_scale "
                   f"{list(ev.scales)}; unconditional branch perturbed by PerturbedDenoiser at relative errors "
                   f"{list(zs.ERRORS)} (0: the exact model, control); CFG, CFG-Zero* without zero-init and with "
                   f"{zs.ZERO_INIT_STEPS} zero-init steps (velocity space); pathwise squared error to the target with "
                   "paired two-sided z-tests, (a) CFG-Zero* vs CFG, (b) zero-init vs none; Holm over all "
                   f"{len(comparisons)} comparisons at family-wise {zs.ALPHA}; Frechet distances to the target and to "
                   "p(x|c) alongside"),
        conditions=(f"(a) {v_a}: {c_a}. (b) {v_b}: {c_b}. With the exact model CFG reaches its target exactly and "
                    "the optimised scale only adds a bias (s* != 1 wherever v_c - v_u is not orthogonal to v_u); the "
                    "correction pays off once the unconditional error is large enough. Against p(x|c) itself rather "
                    f"than the exact CFG law, zero-init gives the smaller Frechet distance at {closer_to_data} "
                    "(estimates, not tested): it weakens guidance, which an exact-CFG target counts as an error"),
        evidence={"by_guidance_scale_and_error": by_cell, "outcomes": outcomes, "family_alpha": zs.ALPHA,
                  "verdict_a": v_a, "verdict_b": v_b, "zero_init_closer_to_class_law_by_frechet": closer_to_data},
        uncertainty=(f"Monte Carlo over {ev.n} paired paths: standard errors of the mean pathwise error and of "
                     f"each paired difference in evidence; family-wise false-alarm rate {zs.ALPHA} (Holm); each "
                     "test's power against a difference of 10 % of the larger mean error in evidence"),
    )
    return decision.with_block("images", image_block(image_guidance, "L-CFG-ZERO-STAR"))
