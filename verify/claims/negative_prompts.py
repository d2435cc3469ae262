r"""Negative prompts and composition: the laws the rules imply, and what a sampler produces with them
(evidence: :mod:`verify.evidence.attributes`).

* S0-NEGPROMPT-DENSITY: source 000's density for its negative-prompt rule;
* S1-NEGPROMPT: source 001's negative prompt in place of the null prediction;
* S0-COMPOSITION and S0-PURPLE-DOG: Liu et al.'s composition and the "purple dog".

Each decision reads the implied law (quadrature, tail coefficients, sympy) and the sampled case of
:func:`~verify.evidence.attributes.attribute_samples` (DDIM, 100 steps): a sampler that leaves samples where the
implied law has none is reported in the headline and the conditions.
"""

from __future__ import annotations

from verify.evidence.attributes import (
    AttributeSamples,
    CompositionLaw,
    NarrowNegativeSampled,
    NegativePromptLaws,
    SampledCase,
)
from verify.evidence.network import AttributeSampling
from verify.evidence.proofs import ProofResults

from . import Decision, claim
from .sources import S0, S1

FIGURES = ("figures/negative_and_composition.png", "figures/negative_composition_samples.png")
TESTS = ("tests/test_claims_analytic.py::test_target_records",
         "tests/test_claims_analytic.py::test_negative_prompt_and_composition_as_sampled",
         "tests/test_figures_analytic.py::test_negative_composition_fractions_against_the_tilted_masses")


def sampled_evidence(case_key: str, case: SampledCase, samples: AttributeSamples) -> dict:
    """The sampled case as a record shows it (the samples themselves stay in the provider, for the figure)."""
    own = case.own_region
    return {"case": case_key, "description": case.description, "sampler": samples.sampler, "steps": samples.steps,
            "n": samples.n, "region": case.region, "sampled_fraction": own.fraction, "se": own.se,
            "target_mass": own.target_mass, "target_quadrature_error": own.target_quadrature_error,
            "sampled_mean": list(case.sampled_mean)}


def stays_on_negative(case: SampledCase) -> bool:
    """True when the sampled fraction on the negative's region exceeds what the implied law allows: more than 10
    standard errors plus 10 times the target mass (a false alarm at 10 sd has probability below 1e-20 under a
    binomial count; power: any sampler leaving 10 sd more than the target's mass there)."""
    own = case.own_region
    return own.fraction > 10 * own.se + 10 * own.target_mass


def sampled_headline(case: SampledCase, samples: AttributeSamples) -> str:
    own = case.own_region
    return (f"; as sampled ({samples.sampler.upper()} {samples.steps} steps) {own.fraction:.2f} of the samples stay "
            f"on the red dog, where the implied law has {own.target_mass:.0e}")


NOT_REACHED = ("; the sampler does not reach the implied law: a fraction of samples stays on the negative's region "
               "(evidence)")


@claim("S0-NEGPROMPT-DENSITY", order=126, source=f"{S0}, 'Negative Prompt: Score의 반대 부호 활용', second display",
       statement=("the rule eps(null) + w+ (eps(y+) - eps(null)) - w- (eps(y-) - eps(null)) generates "
                  "p(x|y+)^(w+) p(x|y-)^(-w-) p(x)^(1 - w+ - w-)"),
       tests=(*TESTS, "tests/test_proofs.py"), figure=FIGURES)
def negprompt_density(negative_prompt_laws: NegativePromptLaws, attribute_samples: AttributeSamples,
                      proof_results: ProofResults, network_attribute_sampling: AttributeSampling) -> Decision:
    """Fails: the sympy residual of the written density's score, and its tails (not normalisable for w- > 1/2)."""
    laws = negative_prompt_laws
    case = attribute_samples.cases["negative_000"]
    proof = proof_results.status("S0-NEGPROMPT-DENSITY")
    conditions = ("the exponent of p(x) must be 1 - w+ + w- (exponents summing to 1); as written they sum to "
                  "1 - 2 w-, the score is off by -2 w- grad log p(x), and on attributes2d the written density is "
                  "not normalisable for w- > 1/2 (its log grows like +r^2 along every direction)")
    decision = Decision(
        verdict="fails",
        headline=("exponent of p(x) should be 1 - w+ + w-: score off by 2 w- grad log p(x); as written not "
                  "normalisable for w- > 1/2" + sampled_headline(case, attribute_samples)),
        procedure=(f"sympy: score of the written density against the rule's score; attributes2d, y+ = dog, y- = red, "
                   f"w+ = {laws.w_pos:g}, w- = {laws.w_neg:g}: tail analysis of the written and the corrected "
                   f"densities; the rule sampled ({attribute_samples.sampler.upper()}, {attribute_samples.steps} "
                   f"steps, {attribute_samples.n} samples from the noised p(x|dog))"),
        uncertainty="symbolic residual; tail coefficients exact for isotropic components; binomial standard errors",
        evidence={"written": {"tail_coefficient_bounds": list(laws.written_tail_bounds),
                              "normalisable": laws.written_normalisable},
                  "corrected": {"tail_coefficient_bounds": list(laws.corrected_tail_bounds),
                                "normalisable": laws.corrected_normalisable,
                                "red_dog_mass": list(laws.corrected_red_dog_mass),
                                "red_dog_mass_without_negative": 0.5},
                  **proof, "sampling": {"ddim_100_steps": sampled_evidence("negative_000", case, attribute_samples)}},
        conditions=conditions + (NOT_REACHED if stays_on_negative(case) else ""),
    )
    return decision.with_block("network", network_attribute_sampling.block())


@claim("S1-NEGPROMPT", order=210, source=f"{S1}, 'Negative Prompt와의 관계'",
       statement="putting the negative prompt's prediction in place of the null one actively avoids its features",
       tests=TESTS, figure=FIGURES)
def negprompt_001(negative_prompt_laws: NegativePromptLaws, attribute_samples: AttributeSamples,
                  narrow_negative_sampled: NarrowNegativeSampled, proof_results: ProofResults,
                  network_attribute_sampling: AttributeSampling) -> Decision:
    """Conditional: the implied law avoids the negative's region, but exists only while the negative is not
    narrower than the positive at large g; the sampler's output is reported beside it."""
    laws, narrow = negative_prompt_laws, narrow_negative_sampled
    case = attribute_samples.cases["negative_001"]
    proof = proof_results.status("S1-NEGPROMPT")
    rows = {g: {"red_dog_mass": list(m)} for g, m in laws.red_dog_mass_by_guidance_scale.items()}
    counterexample = {"positive": laws.narrow_positive, "negative": laws.narrow_negative,
                      "by_guidance_scale": {g: {"precision": laws.narrow_precision_by_guidance_scale[g],
                                                "normalisable": laws.narrow_normalisable_by_guidance_scale[g]}
                                            for g in laws.narrow_precision_by_guidance_scale}}
    narrow_rows = {steps: {"finite": narrow.finite[steps], "mean": narrow.mean[steps], "std": narrow.sd[steps],
                           "min": narrow.minimum[steps]} for steps in narrow.finite}
    conditions = ("the implied law suppresses the negative's region (red-dog mass falls from 0.5 at g = 1), but it "
                  "exists only while g / v_pos > (g - 1) / v_neg for Gaussian factors: a negative prompt narrower "
                  "than the positive one gives a non-normalisable target at large g (evidence)")
    conditions += NOT_REACHED if stays_on_negative(case) else ""
    conditions += ("; where no target law exists the sampler still returns finite samples (evidence): the output "
                   "then depends on the step count, not on any law")
    decision = Decision(
        verdict="conditional" if proof["all_hold"] else "fails",
        headline=(f"red-dog mass 0.5 at g = 1, {laws.red_dog_mass_by_guidance_scale['7.5'][0]:.2g} at g = 7.5; no "
                  "law when the negative is narrower than the positive" + sampled_headline(case, attribute_samples)),
        procedure=("sympy: the rule's per-t score is that of p(x|+)^g p(x|-)^(1-g); attributes2d (+ = dog, - = red): "
                   "mass of the red-dog quadrant under the implied law by g (quadrature); a 1-D counterexample to "
                   f"normalisability, sampled at {', '.join(narrow.finite)} steps; the rule at g = 3 sampled "
                   f"({attribute_samples.sampler.upper()}, {attribute_samples.steps} steps, {attribute_samples.n} "
                   "samples from the noised p(x|dog))"),
        uncertainty="trapezoid with halving error (mass error < 1e-3); binomial standard errors",
        evidence={"red_dog_mass_by_guidance_scale": rows, "narrow_negative_counterexample": counterexample, **proof,
                  "sampling": {"ddim_100_steps": sampled_evidence("negative_001", case, attribute_samples),
                               "non_normalisable_target_sampled": {"guidance_scale": narrow.guidance_scale,
                                                                   "n": narrow.n, "by_steps": narrow_rows}}},
        conditions=conditions,
    )
    return decision.with_block("network", network_attribute_sampling.block())


@claim("S0-COMPOSITION", order=128, source=f"{S0}, 'Negative Prompt' section, Liu et al. display",
       statement="sum_k w_k eps(c_k) + (1 - sum_k w_k) eps(null) composes K conditions; w_k < 0 negates",
       tests=("tests/test_proofs.py", *TESTS), figure=FIGURES)
def composition(composition_law: CompositionLaw, attribute_samples: AttributeSamples,
                proof_results: ProofResults, network_attribute_sampling: AttributeSampling) -> Decision:
    """Proved by the sympy residual (K = 3, signed weights); the composed law and its samples are reported."""
    law = composition_law
    proof = proof_results.status("S0-COMPOSITION")
    case = attribute_samples.cases["compose"]
    decision = Decision(
        verdict="proved" if proof["all_hold"] else "fails",
        headline="sympy residual 0 (K = 3, signed weights); per-t only",
        procedure=("sympy: the rule's per-t score is that of prod_k p(x|c_k)^(w_k) p(x)^(1 - sum w_k); the composed "
                   "law on attributes2d by quadrature, and sampled"),
        uncertainty="symbolic; quadrature with halving error",
        evidence={"red_dog_and_blue_dog": {"mean": list(law.mean), "cov": [list(r) for r in law.cov],
                                           "method": law.method}, **proof,
                  "sampling": {"ddim_100_steps": sampled_evidence("compose", case, attribute_samples)}},
        conditions=("per-t score identity; the composed law multiplies densities, so it ignores interactions between "
                    "conditions (S0-PURPLE-DOG) and needs not be normalisable with negative weights (S0-NEGPROMPT-"
                    "DENSITY); the sampler's output law is a separate question (S0-PROP2-SAMPLES; the composed "
                    "samples here: evidence)"),
    )
    return decision.with_block("network", network_attribute_sampling.block())


@claim("S0-PURPLE-DOG", order=130, source=f"{S0}, 'Negative Prompt' section, last sentences",
       statement="composing 'a red dog' and 'a blue dog' can give a purple dog",
       tests=(*TESTS, "tests/test_figures_analytic.py::test_purple_dog_mass_on_the_grid_matches_the_quadrature"),
       figure=FIGURES)
def purple_dog(composition_law: CompositionLaw, attribute_samples: AttributeSamples,
               network_attribute_sampling: AttributeSampling) -> Decision:
    """Holds when the composed law puts most of its mass between red and blue; conditional when the sampler does
    not follow it there; fails when the law itself does not."""
    law = composition_law
    case = attribute_samples.cases["compose"]
    sampled = case.own_region.fraction
    in_law = law.purple_mass > 0.5
    if not in_law:
        verdict, conditions = "fails", "the composed law does not put its mass between red and blue"
    elif sampled < 0.5:
        verdict, conditions = "conditional", "the implied law puts its mass there, but the sampler does not"
    else:
        verdict, conditions = "holds", "at the level of the implied law (t = 0) and as sampled (evidence)"
    decision = Decision(
        verdict=verdict,
        headline=(f"{law.purple_mass:.4f} of the composed mass between red and blue, {law.mass_under_red_dog_alone:.3f}"
                  f" under red dog alone; DDIM samples: {sampled:.3f}"),
        procedure=("attributes2d: the composed law p(x|red dog) p(x|blue dog) / p(x) (weights 1, 1); its mass between "
                   "red and blue (|x1| < 1), where neither conditional nor the data put mass; the fraction of "
                   f"{attribute_samples.n} samples ({attribute_samples.sampler.upper()}, {attribute_samples.steps} "
                   "steps) there"),
        uncertainty=f"quadrature error {law.quadrature_error:.1e}; binomial standard error {case.own_region.se:.1e}",
        evidence={"purple_mass": law.purple_mass, "quadrature_error": law.quadrature_error,
                  "mass_under_red_dog_alone": law.mass_under_red_dog_alone, "composed_mean": list(law.mean),
                  "sampling": {"ddim_100_steps": sampled_evidence("compose", case, attribute_samples)}},
        conditions=conditions,
    )
    return decision.with_block("network", network_attribute_sampling.block())
