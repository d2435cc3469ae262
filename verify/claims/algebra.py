r"""Claims about guidance algebra at the level of scores (evidence: :mod:`verify.evidence.algebra`).

* S0-CG-SCORE, S1-CG-EPS: classifier guidance is :math:`\nabla\log p_t + s\nabla\log p(y|x)`, in eps form
  :math:`\varepsilon - s\sigma\nabla\log p(y|x)`;
* S0-PROP1, S1-SCORE-FORM: CFG at strength ``w`` (``guidance_scale`` g = 1 + w) is classifier guidance with the
  model's implicit noisy classifier at :math:`s = 1 + w`;
* S0-PROP2-SCORE: the CFG score is the score of :math:`p_t(x|c)^{1+w}p_t(x)^{-w}` at every t;
* S1-CFG-FORM: in source 001's convention scale 0 is unconditional and scale 1 conditional, exactly;
* S0-CFG-COST: CFG evaluates the denoiser on twice the rows per step.

Verdicts: ``proved`` when the float64 check stays within its derived bound and every sympy proof of the claim
holds; ``holds`` when the check passes and no proof bears on the claim; ``fails`` otherwise.
"""

from __future__ import annotations

from verify.evidence.algebra import CFGCost, CFGEndpoints, GuidanceIdentities, GuidedScoreFields, ModelErrorDegradation
from verify.evidence.network import ImplicitClassifier
from verify.evidence.proofs import ProofResults

from . import Decision, Verdict, claim
from .sources import S0, S1

EXACT = "exact (float64 rounding bound)"


def proof_verdict(proof: dict, within_bound: bool) -> Verdict:
    """``proved`` when the numeric check is within its bound and every proof holds; ``holds`` when it is within and
    no proof bears on the claim; ``fails`` otherwise."""
    if within_bound and proof["all_hold"]:
        return "proved"
    return "holds" if within_bound and not proof["proofs"] else "fails"


@claim("S0-CG-SCORE", order=102, source=f"{S0}, '출발점: Bayes' rule과 score 분해', second display",
       statement="classifier guidance follows the augmented score s(x_t) + s * grad log p(y|x_t)",
       tests=("tests/test_rule_functions.py::test_classifier_guidance_eps_form",
              "tests/test_claims_analytic.py::test_algebra_records", "tests/test_proofs.py"))
def cg_score(guidance_identities: GuidanceIdentities, proof_results: ProofResults) -> Decision:
    """The eps form of classifier guidance against -sigma_t times the augmented score, every world."""
    ev = guidance_identities
    worst = ev.worst("cg_eps_vs_augmented_score")
    proof = proof_results.status("S0-CG-SCORE")
    verdict = proof_verdict(proof, worst <= 1.0)
    return Decision(
        verdict=verdict,
        headline=f"max error / derived bound {worst:.2g} on every world; sympy residual 0",
        procedure=(f"classifier-guided eps (eps - s sigma grad log p_t(y|x)) against -sigma times the augmented "
                   f"score, every world, {ev.grid}, s = 1 + w; plus the sympy proof"),
        uncertainty=EXACT,
        evidence={"max_error_over_bound": worst, "per_world": ev.per_world("cg_eps_vs_augmented_score"), **proof},
        conditions="per-t score identity; which law a sampler driven by it produces is S0-PROP2-SAMPLES' question",
    )


@claim("S1-CG-EPS", order=200, source=f"{S1}, '기존 Classifier Guidance 방식', display",
       statement="eps_hat(x_t, y) = eps(x_t) - s sigma_t grad log p(y|x_t)",
       tests=("tests/test_rule_functions.py::test_classifier_guidance_eps_form",
              "tests/test_claims_analytic.py::test_algebra_records"))
def cg_eps(guidance_identities: GuidanceIdentities, proof_results: ProofResults) -> Decision:
    """As S0-CG-SCORE, in source 001's words."""
    worst = guidance_identities.worst("cg_eps_vs_augmented_score")
    proof = proof_results.status("S1-CG-EPS")
    return Decision(
        verdict=proof_verdict(proof, worst <= 1.0),
        headline=f"max error / derived bound {worst:.2g}; sympy residual 0",
        procedure="as S0-CG-SCORE: the eps form equals -sigma_t times the augmented score; sympy proof",
        uncertainty=EXACT, evidence={"max_error_over_bound": worst, **proof},
    )


@claim("S0-PROP1", order=106, source=f"{S0}, 명제 1 (Proposition 1) and its proof",
       statement="CFG with scale w equals classifier guidance with the implicit classifier at s = 1 + w",
       tests=("tests/test_rule_functions.py::test_cfg_is_classifier_guidance",
              "tests/test_claims_analytic.py::test_algebra_records",
              "tests/test_claims_analytic.py::test_algebra_records_fail_for_a_wrong_combiner"))
def prop1(guidance_identities: GuidanceIdentities, model_error_degradation: ModelErrorDegradation,
          proof_results: ProofResults, network_implicit_classifier: ImplicitClassifier) -> Decision:
    """CFG eps against classifier-guided eps with the exact (or implicit) noisy classifier; the degradation of the
    identity with model error is reported beside it."""
    ev, deg = guidance_identities, model_error_degradation
    worst = ev.worst("cfg_vs_classifier")
    proof = proof_results.status("S0-PROP1")
    decision = Decision(
        verdict=proof_verdict(proof, worst <= 1.0),
        headline=f"max error / derived bound {worst:.2g}; sympy residual 0 in both conventions",
        procedure=(f"CFG eps against classifier-guided eps with the exact noisy classifier grad log p_t(c|x) at "
                   f"s = 1 + w, every world, {ev.grid}; sympy proof in both conventions; perturbed models for the "
                   f"degradation with model error"),
        uncertainty=EXACT,
        evidence={"max_error_over_bound": worst, "per_world": ev.per_world("cfg_vs_classifier"),
                  "classifier_per_world": {w.world: w.classifier for w in ev.worlds},
                  "degradation_with_model_error": {"world": deg.world, "t": deg.t, "condition": deg.condition,
                                                   "guided_error_over_model_error_by_relative_error_and_w":
                                                       deg.ratios, "reading": deg.READING},
                  **proof},
        conditions=("exact for the model's own implicit classifier; it equals guidance by the true p_t(c|x) only "
                    "when both branches are exact (errors are amplified ~linearly in w, see evidence); for worlds "
                    "given as two separate laws (gauss1d) the implicit classifier is a density ratio, a proper "
                    "posterior only if p(c) <= 0.26 (S0-BAYES)"),
    )
    return decision.with_block("network", network_implicit_classifier.block())


@claim("S1-SCORE-FORM", order=206, source=f"{S1}, '수학적 직관: 왜 작동하는가', display",
       statement="grad log p_w(x_t|y) = grad log p(x_t) + w grad log p(y|x_t) (w = guidance_scale)",
       tests=("tests/test_rule_functions.py::test_cfg_is_classifier_guidance",
              "tests/test_claims_analytic.py::test_algebra_records"))
def score_form(guidance_identities: GuidanceIdentities, proof_results: ProofResults) -> Decision:
    """S0-PROP1's check in the guidance_scale convention."""
    worst = guidance_identities.worst("cfg_vs_classifier")
    proof = proof_results.status("S1-SCORE-FORM")
    return Decision(
        verdict=proof_verdict(proof, worst <= 1.0),
        headline=f"max error / derived bound {worst:.2g} (w = guidance_scale)",
        procedure="as S0-PROP1 in the guidance_scale convention (g = 1 + w of source 000)",
        uncertainty=EXACT, evidence={"max_error_over_bound": worst, **proof},
        conditions="source 001's w is diffusers' guidance_scale: the same letter is 1 + w in source 000",
    )


@claim("S0-PROP2-SCORE", order=114, source=f"{S0}, 명제 2 (Proposition 2), proof",
       statement="the CFG-guided score is the score of p_t(x|c)^(1+w) p_t(x)^(-w) at each noise level",
       tests=("tests/test_rule_functions.py::test_cfg_score_is_tilted_score",
              "tests/test_claims_analytic.py::test_algebra_records",
              "tests/test_figures_analytic.py::test_guided_score_is_the_tilted_score_and_the_cfg_eps"),
       figure="figures/guided_score_fields.png")
def prop2_score(guidance_identities: GuidanceIdentities, guided_score_fields: GuidedScoreFields,
                proof_results: ProofResults) -> Decision:
    """-eps_cfg / sigma against autograd of the tilted log density on every world; on ring2d the plotted field
    (``guided_score_fields.png``) against the tilted law's score on the plotted grid."""
    ev, fields = guidance_identities, guided_score_fields
    worst = ev.worst("cfg_vs_tilted_score")
    proof = proof_results.status("S0-PROP2-SCORE")
    field_ok = fields.max_error_over_bound <= 1.0
    return Decision(
        verdict=proof_verdict(proof, worst <= 1.0 and field_ok),
        headline=f"max error / derived bound {worst:.2g}; holds per t only",
        procedure=(f"-eps_cfg / sigma against autograd of (1+w) log p_t(x|c) - w log p_t(x), every world, {ev.grid}; "
                   f"sympy proof; the ring2d fields of the figure (t in {', '.join(f'{t:g}' for t in fields.times)}, "
                   f"w in {', '.join(f'{w:g}' for w in fields.strengths_w)}) against the score of "
                   "verify.tilted's law at t"),
        uncertainty=EXACT,
        evidence={"max_error_over_bound": worst, "per_world": ev.per_world("cfg_vs_tilted_score"),
                  "ring2d_field": {"condition": fields.condition,
                                   "max_error_over_bound_vs_tilted_law_score": fields.max_error_over_bound,
                                   "modes_of_the_guided_density": fields.modes_by_t_and_w()},
                  **proof},
        conditions=("per-t: the tilted family p_t(x|c)^(1+w) p_t(x)^(-w) is not the forward noising of "
                    "p_0(x|c)^(1+w) p_0(x)^(-w), so the sampler's output law is a separate question "
                    "(S0-PROP2-SAMPLES)"),
    )


@claim("S1-CFG-FORM", order=204, source=f"{S1}, '추론 단계', display and the sentence after it",
       statement="in eps(null) + w (eps(y) - eps(null)): w = 0 is unconditional, w = 1 conditional, w > 1 stronger",
       tests=("tests/test_rule_functions.py::test_cfg_endpoints_are_exact",
              "tests/test_claims_analytic.py::test_algebra_records"))
def cfg_form(cfg_endpoints: CFGEndpoints, proof_results: ProofResults) -> Decision:
    """Bitwise equality at the endpoints of source 001's convention, and its sympy proof."""
    ok = cfg_endpoints.all_bitwise_equal
    proof = proof_results.status("S1-CFG-FORM")
    return Decision(
        verdict="proved" if ok and proof["all_hold"] else ("holds" if ok else "fails"),
        headline="bitwise exact at scale 0 and 1 (its own convention: 000's w is this w - 1)",
        procedure=("verify.rules.cfg.cfg at guidance_scale 0 and 1 against the unconditional and conditional eps, "
                   "bit for bit, every world; sympy proof"),
        uncertainty="exact",
        evidence={"bitwise_equal_at_endpoints": ok, "per_world": cfg_endpoints.per_world, **proof},
        conditions=("in source 001's own convention (diffusers guidance_scale); in source 000's convention w = 0 is "
                    "the conditional model: the two texts use 'w' for quantities that differ by one"),
    )


@claim("S0-CFG-COST", order=108, source=f"{S0}, paragraph after 명제 1 ('계산량이 약 2배')",
       statement="CFG needs both the unconditional and the conditional forward pass: about twice the compute",
       tests=("tests/test_rule_functions.py::test_counting_denoiser",
              "tests/test_claims_analytic.py::test_cfg_cost_counts_per_sampler"))
def cfg_cost_claim(cfg_cost: CFGCost) -> Decision:
    """Rows evaluated per guided prediction and per sampler run, CFG against the conditional model alone."""
    ratio = cfg_cost.points_ratio_cfg
    batched = all(r.model_calls_cfg == r.model_calls_conditional and r.model_rows_cfg == 2 * r.model_rows_conditional
                  for r in cfg_cost.per_sampler.values())
    return Decision(
        verdict="holds" if ratio == 2 and batched else "fails",
        headline=f"{ratio:g}x the denoiser evaluations of the conditional model per step",
        procedure=("count denoiser evaluations (forward calls and rows) per guided prediction with a counting wrapper "
                   f"({cfg_cost.world}, condition {' '.join(cfg_cost.condition)}, w = {cfg_cost.w:g}), and per "
                   f"sampler over {cfg_cost.steps} steps"),
        uncertainty="exact count",
        evidence={"evaluations": cfg_cost.per_prediction, "points_ratio_cfg": ratio,
                  "per_sampler_50_steps": cfg_cost.per_sampler, "every_sampler_batched_at_twice_the_rows": batched},
        conditions=("in rows evaluated (and so FLOPs) per step: the conditional and null predictions go through one "
                    "batched call of 2N rows, so forward calls do not double, work does; wall time of that batched "
                    "forward on a GPU is measured with the network"),
    )
