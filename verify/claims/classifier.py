r"""S0-CLEAN-CLASSIFIER: a clean-image classifier applied to :math:`x_t` gives unreliable gradients at high noise
(evidence: :mod:`verify.evidence.classifier`).

The classifier-guided score at scale 1 with the clean classifier, :math:`\nabla\log p_t(x) + \nabla\log p_0(c|x_t)`,
is compared with the exact :math:`\nabla\log p_t(x|c)`. "Reliable" means a mean relative error below 5 %,
"unreliable" above 100 % (the error exceeds the signal). The claim holds if every joint world is reliable at the
lowest noise and unreliable at the highest.
"""

from __future__ import annotations

from verify.evidence.classifier import RELIABLE, UNRELIABLE, CleanClassifierErrors, CleanClassifierSampled

from . import Decision, claim
from .sources import S0


@claim("S0-CLEAN-CLASSIFIER", order=104, source=f"{S0}, 'Classifier Guidance의 한계'",
       statement="a clean-image classifier used as is gives unreliable gradients in the high-noise regime",
       tests=("tests/test_claims_analytic.py::test_clean_classifier_record",))
def clean_classifier(clean_classifier_errors: CleanClassifierErrors,
                     clean_classifier_sampled: CleanClassifierSampled) -> Decision:
    """Holds when every joint world's relative error is below :data:`RELIABLE` at the lowest t and above
    :data:`UNRELIABLE` at the highest; the sampled comparison is reported beside it."""
    ev, sampled = clean_classifier_errors, clean_classifier_sampled
    table, low, high = ev.relative_error, ev.low, ev.high
    reliable_low = all(r[low] < RELIABLE for r in table.values())
    unreliable_high = all(r[high] > UNRELIABLE for r in table.values())
    ok = reliable_low and unreliable_high
    return Decision(
        verdict="holds" if ok else "fails",
        headline=(f"relative score error at t = {low}: <= {max(r[low] for r in table.values()):.2g}; "
                  f"at t = {high}: >= {min(r[high] for r in table.values()):.2g}"),
        procedure=("relative error of the score guided (scale 1) by grad log p_0(c|x_t) against the exact "
                   "grad log p_t(x|c), mean over x_t ~ p_t(.|c), per joint world and t (vp-linear); reliable < "
                   f"{RELIABLE:.0%}, unreliable > {UNRELIABLE:.0%}; {sampled.world} class {sampled.condition} "
                   f"sampled with each classifier ({sampled.n} samples, {sampled.steps} DDIM steps)"),
        uncertainty=("Monte Carlo over 128-512 points per condition; the errors span orders of magnitude across t, "
                     "far beyond that noise"),
        evidence={"relative_error_by_t": table, "first_t_unreliable": ev.first_t_unreliable(),
                  "sampling": {"ring2d_class0_ddim_100_steps_scale_1": sampled.by_classifier}},
        conditions="" if ok else "see the table: the pattern is not uniform",
    )
