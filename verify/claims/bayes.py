"""S0-BAYES: the Bayes decomposition of the score at every noise level (evidence: :mod:`verify.evidence.bayes`)."""

from __future__ import annotations

import math

from verify.evidence.bayes import BayesIdentity
from verify.evidence.network import ImplicitClassifier
from verify.evidence.proofs import ProofResults

from . import Decision, claim
from .sources import S0

NOT_JOINT = ("p(x|c) and p(x) are given separately: the classifier is the implicit density ratio and the identity "
             "holds by its definition")


@claim("S0-BAYES", order=100, source=f"{S0}, section '출발점: Bayes' rule과 score 분해' (first display)",
       statement="grad log p_t(x|y) = grad log p_t(x) + grad log p_t(y|x) at every noise level t",
       tests=("tests/test_gaussian_mixture.py::test_bayes_identity_at_every_noise_level",
              "tests/test_bayes_claim.py::test_bayes_record",
              "tests/test_bayes_claim.py::test_bayes_record_fails_when_the_score_is_wrong", "tests/test_proofs.py"),
       figure="figures/worlds.png")
def bayes(bayes_identity: BayesIdentity, proof_results: ProofResults,
          network_implicit_classifier: ImplicitClassifier) -> Decision:
    """Proved when every joint world stays within its rounding bound and the sympy proof holds; fails otherwise."""
    ev = bayes_identity
    worst = ev.max_error_over_bound
    within = worst <= 1.0
    proof = proof_results.status("S0-BAYES")
    verdict = ("proved" if proof["all_hold"] else "holds") if within else "fails"
    worlds = {}
    for w in ev.worlds:
        if w.joint_law:
            worlds[w.name] = {"joint_law": True, "max_abs_error": w.max_abs_error,
                              "max_error_over_bound": w.max_error_over_bound, "max_score_norm": w.max_score_norm,
                              "checks": w.checks}
        else:
            worlds[w.name] = {"joint_law": False, "note": NOT_JOINT,
                              "largest_p_c_admitting_a_joint_law": w.largest_p_c_admitting_a_joint_law}
    decision = Decision(
        verdict=verdict,
        headline=f"max error / derived bound {worst:.2g} on {len(ev.checked)} joint worlds"
                 + ("; sympy residual 0" if verdict == "proved" else ""),
        procedure=("float64, vp-linear schedule, t in " + ", ".join(f"{t:g}" for t in ev.times) + f"; per world and "
                   f"class: {ev.n_points} points from p_t plus the same points spread 3x (tails); "
                   "grad log p_t(c|x) by autograd of log_class_posterior (independent of any score formula), "
                   "compared with score(p_t(.|c)) - score(p_t); tolerance: the derived per-point rounding bound "
                   "(verify/tolerances.py)"),
        conditions="" if within else "see evidence: some world exceeds the rounding bound",
        evidence={"worlds": worlds, "worlds_checked": list(ev.checked), "max_error_over_bound": worst,
                  "times": list(ev.times), **proof},
        uncertainty=(f"deterministic float64 check; the largest error is {worst:.3g} of the derived rounding bound "
                     f"(1.0 would be a failure)" if math.isfinite(worst) else "n/a"),
    )
    return decision.with_block("network", network_implicit_classifier.block())
