"""The L-CFGPP and L-AUTOGUIDANCE records (quick config): their structure, and verdicts that follow from the evidence
computed in the same run."""

from __future__ import annotations

import pytest

from verify.claims import VERDICTS, ClaimRecord, RunConfig, rule_autoguidance, rule_cfgpp


@pytest.fixture(scope="module")
def cfgpp_record() -> ClaimRecord:
    (record,) = rule_cfgpp.evaluate(RunConfig(quick=True, show_progress=False))
    return record


@pytest.fixture(scope="module")
def autoguidance_record(tmp_path_factory) -> ClaimRecord:
    # the networks are skipped here (an empty checkpoint folder) to keep the file fast; the ledger run covers them
    folder = tmp_path_factory.mktemp("no-checkpoints")
    (record,) = rule_autoguidance.evaluate(RunConfig(quick=True, show_progress=False, checkpoints=str(folder)))
    return record


def test_cfgpp_record_structure(cfgpp_record):
    r = cfgpp_record
    assert r.id == "L-CFGPP" and r.verdict in VERDICTS and r.headline and r.uncertainty
    assert "tests/test_rule_cfgpp.py" in r.tests
    for key in ("proof", "identity_float64", "exact_laws_gauss1d_ddim", "ring2d_excursions",
                "matched_strength_comparisons", "stable_diffusion_equivalent_scales"):
        assert key in r.evidence


def test_cfgpp_verdict_follows_the_evidence(cfgpp_record):
    e = cfgpp_record.evidence
    assert e["proof"]["holds"] and e["identity_float64"]["holds"]
    assert e["identity_float64"]["max_error_over_bound"] <= 1.0
    # at fixed lam the exact law keeps moving with the step count: CFG++'s variance collapses
    laws = e["exact_laws_gauss1d_ddim"]
    v = [laws["cfgpp lam=0.6"][n]["var"] for n in ("10", "25", "50")]
    assert v[0] > v[1] > v[2] and e["no_step_count_independent_limit"]
    better = [c for c in e["matched_strength_comparisons"] if c["x0_fewer_outside"]]
    assert cfgpp_record.verdict == ("conditional" if better else "fails")
    sd = e["stable_diffusion_equivalent_scales"]
    assert sd["last_step"] == 1.0 and sd["min"] < sd["median"] < sd["max"]


def test_autoguidance_record_structure(autoguidance_record):
    r = autoguidance_record
    assert r.id == "L-AUTOGUIDANCE" and r.verdict in VERDICTS and r.headline and r.uncertainty
    assert "skipped" in r.evidence["networks"] and "networks" not in r.evidence["judged"]
    for level in ("gauss1d_exact", "ring2d_sampled"):
        for method in ("unguided", "cfg", "autoguidance"):
            assert {"frechet", "frechet_se", "spread_ratio", "precision"} <= set(r.evidence[level][method])


def test_autoguidance_verdict_follows_the_evidence(autoguidance_record):
    judged = autoguidance_record.evidence["judged"]
    analytic = judged["gauss1d_exact"]["holds"] and judged["ring2d_sampled"]["holds"]
    # networks skipped: the analytic level alone makes it conditional at best
    assert autoguidance_record.verdict == ("conditional" if analytic else "fails")
    g = autoguidance_record.evidence["gauss1d_exact"]
    # exact laws: the judgement is about numbers without sampling error
    assert judged["gauss1d_exact"]["quality_improves"] == (g["autoguidance"]["frechet"] < g["unguided"]["frechet"])
