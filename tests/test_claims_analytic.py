"""The analytic claims: guidance algebra (S0-CG-SCORE, S1-CG-EPS, S0-PROP1, S1-SCORE-FORM, S0-PROP2-SCORE,
S1-CFG-FORM, S0-CFG-COST), the clean classifier (S0-CLEAN-CLASSIFIER), negative prompts and composition
(S0-NEGPROMPT-DENSITY, S1-NEGPROMPT, S0-COMPOSITION, S0-PURPLE-DOG): their quick records, and checks that fail when
the evidence is wrong."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from verify.claims import RunConfig, get_claim, negative_prompts
from verify.claims import algebra as algebra_claims
from verify.evidence import algebra as algebra_evidence
from verify.evidence.attributes import AttributeSamples, CompositionLaw, RegionMass, SampledCase
from verify.evidence.network import AttributeSampling
from verify.figures import get_figure

QUICK = RunConfig(quick=True, show_progress=False)
ALGEBRA = ("S0-CG-SCORE", "S1-CG-EPS", "S0-PROP1", "S1-SCORE-FORM", "S0-PROP2-SCORE", "S1-CFG-FORM")
ATTRIBUTES = ("S0-NEGPROMPT-DENSITY", "S1-NEGPROMPT", "S0-COMPOSITION", "S0-PURPLE-DOG")
MINE = (*ALGEBRA, "S0-CFG-COST", "S0-CLEAN-CLASSIFIER", *ATTRIBUTES)


def test_algebra_records(ledger):
    records = ledger(*ALGEBRA, "S0-CFG-COST")
    for cid in ALGEBRA:
        record = records[cid]
        assert record.verdict == "proved", cid
        if "max_error_over_bound" in record.evidence:
            assert 0 <= record.evidence["max_error_over_bound"] <= 1, cid
    assert records["S1-CFG-FORM"].evidence["bitwise_equal_at_endpoints"] is True
    field = records["S0-PROP2-SCORE"].evidence["ring2d_field"]
    assert 0 <= field["max_error_over_bound_vs_tilted_law_score"] <= 1
    degradation = records["S0-PROP1"].evidence["degradation_with_model_error"]
    row = degradation["guided_error_over_model_error_by_relative_error_and_w"]["0.01"]
    # independent smooth errors in the two branches: the guided error grows with w (about linearly); at w = 0
    # CFG is the conditional model, so the ratio is exactly its own error's (1 up to rounding)
    assert row["0"] == pytest.approx(1.0, rel=1e-12)
    assert row["0"] < row["1"] < row["3"] < row["7"] and row["7"] > 5
    assert records["S0-CFG-COST"].evidence["points_ratio_cfg"] == 2


def test_algebra_records_fail_for_a_wrong_combiner(monkeypatch, quick_evidence):
    """A CFG combiner with a 1e-9 relative error must break S0-PROP1's numeric check (1e-9 is about 1e5 times the
    float64 rounding bound of the combination, gamma_4 ~ 4.4e-16 times the terms): the check can fail."""
    original = algebra_evidence.cfg
    monkeypatch.setattr(algebra_evidence, "cfg", lambda u, c, **kw: original(u, c, **kw) * (1 + 1e-9))
    wrong = algebra_evidence.guidance_identities(QUICK)
    decision = algebra_claims.prop1(wrong, quick_evidence.get("model_error_degradation"),
                                    quick_evidence.get("proof_results"),
                                    quick_evidence.get("network_implicit_classifier"))
    assert decision.verdict == "fails" and decision.evidence["max_error_over_bound"] > 1
    assert algebra_claims.prop2_score(wrong, quick_evidence.get("guided_score_fields"),
                                      quick_evidence.get("proof_results")).verdict == "fails"


def test_proof_verdict_needs_both_the_proof_and_the_bound():
    held = {"proofs": [{"holds": True}], "all_hold": True}
    broken = {"proofs": [{"holds": False}], "all_hold": False}
    none = {"proofs": [], "all_hold": False}
    assert algebra_claims.proof_verdict(held, True) == "proved"
    assert algebra_claims.proof_verdict(held, False) == "fails"
    assert algebra_claims.proof_verdict(broken, True) == "fails"
    assert algebra_claims.proof_verdict(none, True) == "holds"
    assert algebra_claims.proof_verdict(none, False) == "fails"


def test_cfg_cost_counts_per_sampler(ledger):
    evidence = ledger("S0-CFG-COST")["S0-CFG-COST"].evidence
    per_sampler = evidence["per_sampler_50_steps"]
    assert set(per_sampler) == {"ddpm", "ddim", "euler", "heun", "euler_maruyama", "dpmpp_2m"}
    for name, row in per_sampler.items():
        # batched: as many forward calls as the conditional model, twice the rows
        assert row["model_calls_cfg"] == row["model_calls_conditional"], name
        assert row["model_rows_cfg"] == 2 * row["model_rows_conditional"], name
    assert evidence["evaluations"]["cfg"] == {"denoiser_calls": 1, "points_evaluated": 200}
    assert evidence["evaluations"]["classifier_guidance"]["points_evaluated"] == 100


def test_clean_classifier_record(ledger):
    record = ledger("S0-CLEAN-CLASSIFIER")["S0-CLEAN-CLASSIFIER"]
    assert record.verdict == "holds"
    for row in record.evidence["relative_error_by_t"].values():
        assert row["0.01"] < 0.05 and row["1"] > 1.0
    sampled = record.evidence["sampling"]["ring2d_class0_ddim_100_steps_scale_1"]
    # the exact noisy classifier lands on p(x|c); the clean one, reused at x_t, does not
    assert sampled["noisy"]["fraction_classified_as_c"] > 0.95 > sampled["clean"]["fraction_classified_as_c"]
    assert sampled["clean"]["frechet_to_conditional"] > 100 * sampled["noisy"]["frechet_to_conditional"]


def test_target_records(ledger):
    records = ledger(*ATTRIBUTES)
    neg = records["S0-NEGPROMPT-DENSITY"]
    assert neg.verdict == "fails"
    assert neg.evidence["written"]["normalisable"] is False and neg.evidence["corrected"]["normalisable"] is True
    s1 = records["S1-NEGPROMPT"]
    assert s1.verdict == "conditional"
    masses = [v["red_dog_mass"][0] for v in s1.evidence["red_dog_mass_by_guidance_scale"].values()]
    assert masses[0] > masses[1] > masses[2]  # the negative's region loses mass as g grows
    # at g = 1 the law is p(x|dog): half its mass on the red dog (quadrature error < 1e-3)
    assert masses[0] == pytest.approx(0.5, abs=1e-3)
    narrow = s1.evidence["narrow_negative_counterexample"]["by_guidance_scale"]
    assert narrow["1.2"]["normalisable"] is True and narrow["3"]["normalisable"] is False
    purple = records["S0-PURPLE-DOG"]
    assert purple.verdict == "holds" and purple.evidence["purple_mass"] > 0.99
    # P(x1 > -1) under N(-2, 0.25) = 1 - Phi(2)
    assert purple.evidence["mass_under_red_dog_alone"] == pytest.approx(0.5 * math.erfc(2 / math.sqrt(2)), rel=1e-12)
    assert records["S0-COMPOSITION"].verdict == "proved"


def test_negative_prompt_and_composition_as_sampled(ledger):
    records = ledger(*ATTRIBUTES)
    purple = records["S0-PURPLE-DOG"].evidence["sampling"]["ddim_100_steps"]
    assert purple["case"] == "compose" and purple["sampled_fraction"] > 0.9
    narrow = records["S1-NEGPROMPT"].evidence["sampling"]["non_normalisable_target_sampled"]["by_steps"]
    assert set(narrow) == {"50", "100", "200"} and all(row["finite"] for row in narrow.values())
    for cid, case in (("S1-NEGPROMPT", "negative_001"), ("S0-NEGPROMPT-DENSITY", "negative_000")):
        row = records[cid].evidence["sampling"]["ddim_100_steps"]
        assert row["case"] == case and row["region"] == "red_dog"
        # the implied law has (almost) no mass on the red dog, the samples do: the record says so
        assert row["target_mass"] < 1e-20 and row["sampled_fraction"] > 10 * row["se"]
        assert "as sampled (DDIM 100 steps)" in records[cid].headline
        assert "does not reach the implied law" in records[cid].conditions


def _case(fraction: float) -> SampledCase:
    region = RegionMass(fraction, 0.001, 0.99, 1e-6)
    return SampledCase("red dog 1, blue dog 1", "purple_band", region, {}, (0.0, 2.0), (0.1, 0.5), np.zeros((0, 2)))


@pytest.mark.parametrize(("law_mass", "sampled", "verdict"),
                         [(0.99, 0.99, "holds"), (0.99, 0.2, "conditional"), (0.2, 0.2, "fails"), (0.2, 0.9, "fails")])
def test_purple_dog_verdict_follows_the_law_and_the_samples(law_mass, sampled, verdict):
    law = CompositionLaw(law_mass, 1e-6, (0.0, 2.0), ((0.03, 0.0), (0.0, 0.25)), "grid", 0.023)
    samples = AttributeSamples("ddim", 100, 4000, 0, {"compose": _case(sampled)})
    no_network = AttributeSampling({}, 0, 0, None, "not read by this test")
    assert negative_prompts.purple_dog(law, samples, no_network).verdict == verdict


def test_stays_on_negative_needs_more_than_sampling_noise():
    case = _case(0.0)
    at = lambda f, se, m: dataclasses.replace(case, own_region=RegionMass(f, se, m, 0.0))  # noqa: E731
    assert negative_prompts.stays_on_negative(at(0.07, 0.004, 1e-80))
    assert not negative_prompts.stays_on_negative(at(0.03, 0.004, 1e-80))  # 7.5 sd: not beyond 10
    assert not negative_prompts.stays_on_negative(at(0.5, 0.008, 0.5))  # the law itself has that mass


def test_the_figures_of_these_claims_draw_a_provider_the_decision_reads_itself():
    """Stricter than tests/test_ledger.py's check (which follows the providers' own needs): each figure named here
    draws one of the providers the decision function names directly. (That every named test exists is checked
    for every claim by tests/test_ledger.py.)"""
    for cid in MINE:
        entry = get_claim(cid)
        for fig in entry.figures:
            assert set(get_figure(fig).needs) & set(entry.needs), (cid, fig)


def test_record_evidence_keys_are_identifiers(ledger):
    """Dict keys in the records are identifiers or numbers (no prose such as 'negative_001 (+dog, -red, g=3)')."""

    def keys(value):
        if isinstance(value, dict):
            for k, v in value.items():
                yield k
                yield from keys(v)
        elif isinstance(value, list):
            for v in value:
                yield from keys(v)

    records = ledger(*MINE)
    for cid, record in records.items():
        for key in keys(record.evidence):
            numeric = key.replace(".", "", 1).isdigit()
            assert key.isidentifier() or numeric, (cid, key)
