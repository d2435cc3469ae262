"""The ledger: the S0-BAYES record, its ability to fail, the report writers and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from toy_models.gaussian_mixture import GaussianMixture
from verify.claims import ClaimRecord, RunConfig, bayes
from verify.cli import main
from verify.report import ledger_table, write_ledger

QUICK = RunConfig(quick=True, show_progress=False)


@pytest.fixture(scope="module")
def quick_records(quick_run):
    return quick_run[0]


def _record(records, claim_id):
    (record,) = [r for r in records if r.id == claim_id]
    return record


def test_every_claim_has_a_record_with_evidence(quick_records):
    from verify.claims import ORDER

    assert [r.id for r in quick_records] == list(ORDER)
    for r in quick_records:
        assert r.source and r.statement and r.evidence, r.id
        if r.verdict == "pending":
            assert r.evidence["decided_by"], r.id
        else:
            assert r.procedure != "not evaluated yet", r.id


def test_bayes_record(quick_records):
    record = _record(quick_records, "S0-BAYES")
    assert record.verdict == "proved" and record.evidence["all_hold"]
    ev = record.evidence
    assert set(ev["worlds_checked"]) == {"bimodal1d", "ring2d", "attributes2d", "tokens16d", "highdim"}
    assert 0 < ev["max_error_over_bound"] <= 1
    # gauss1d: the largest p(c) with a joint law is inf_x N(x;0,1)/N(x;1,0.5) = sqrt(0.5) e^{-1}
    # (the exponent -x^2/2 + (x-1)^2 is minimal at x = 2); the grid is fine enough for 1e-9 relative.
    got = ev["worlds"]["gauss1d"]["largest_p_c_admitting_a_joint_law"]["1"]
    assert math.isclose(got, math.sqrt(0.5) * math.exp(-1), rel_tol=1e-9)


def test_bayes_record_fails_when_the_score_is_wrong(monkeypatch):
    """A score off by one part in 1e9 must turn the verdict to 'fails' (the check can fail)."""
    original = GaussianMixture.score
    monkeypatch.setattr(GaussianMixture, "score", lambda self, x: original(self, x) * (1 + 1e-9))
    (record,) = bayes.evaluate(QUICK)
    assert record.verdict == "fails" and record.evidence["max_error_over_bound"] > 1


def test_algebra_records(quick_records):
    for cid in ("S0-CG-SCORE", "S1-CG-EPS", "S0-PROP1", "S1-SCORE-FORM", "S0-PROP2-SCORE", "S1-CFG-FORM"):
        record = _record(quick_records, cid)
        assert record.verdict == "proved", cid
        if "max_error_over_bound" in record.evidence:
            assert 0 <= record.evidence["max_error_over_bound"] <= 1, cid
    degradation = _record(quick_records, "S0-PROP1").evidence["degradation_with_model_error"]
    row = degradation["guided error / model error"]["relative eps error 0.01"]
    # independent smooth errors in the two branches: the guided error grows with w (about linearly)
    assert row["w=0"] < row["w=1"] < row["w=3"] < row["w=7"] and row["w=7"] > 5
    assert _record(quick_records, "S0-CFG-COST").evidence["points_ratio_cfg"] == 2


def test_algebra_records_fail_for_a_wrong_combiner(monkeypatch):
    """A CFG combiner with a 1e-9 relative error must break S0-PROP1's numeric check."""
    from verify.claims import algebra
    from verify.rules.cfg import cfg as original

    monkeypatch.setattr(algebra, "cfg", lambda u, c, **kw: original(u, c, **kw) * (1 + 1e-9))
    records = {r.id: r for r in algebra.evaluate(QUICK)}
    assert records["S0-PROP1"].verdict == "fails" and records["S0-PROP1"].evidence["max_error_over_bound"] > 1


def test_clean_classifier_record(quick_records):
    record = _record(quick_records, "S0-CLEAN-CLASSIFIER")
    assert record.verdict == "holds"
    for row in record.evidence["relative_error_by_t"].values():
        assert row["0.01"] < 0.05 and row["1"] > 1.0


def test_target_records(quick_records):
    temperature = _record(quick_records, "S0-TEMPERATURE")
    assert temperature.verdict == "fails"
    row = temperature.evidence["gauss1d"]["3"]
    assert math.isclose(row["tilted_mean"], 8 / 5, rel_tol=1e-12) and math.isclose(row["tilted_var"], 1 / 5,
                                                                                  rel_tol=1e-12)
    winf = _record(quick_records, "S0-WINF")
    assert winf.verdict == "fails" and winf.evidence["bimodal1d"]["100"]["var"] > 0.4
    assert winf.evidence["gauss1d"]["100"]["var"] < 0.01  # 1 / (2 + w)
    neg = _record(quick_records, "S0-NEGPROMPT-DENSITY")
    assert neg.verdict == "fails"
    assert neg.evidence["written"]["normalisable"] is False and neg.evidence["corrected"]["normalisable"] is True
    s1 = _record(quick_records, "S1-NEGPROMPT")
    assert s1.verdict == "conditional"
    masses = [v["red_dog_mass"][0] for v in s1.evidence["red_dog_mass_by_guidance_scale"].values()]
    assert masses[0] > masses[1] > masses[2]  # the negative's region loses mass as g grows
    assert s1.evidence["narrow_negative_counterexample"]["g=3"]["normalisable"] is False
    purple = _record(quick_records, "S0-PURPLE-DOG")
    assert purple.verdict == "holds" and purple.evidence["purple_mass"] > 0.99
    assert _record(quick_records, "S0-COMPOSITION").verdict == "proved"


def test_record_validation():
    with pytest.raises(ValueError, match="verdict"):
        ClaimRecord(id="X", source="s", statement="s", procedure="p", verdict="true")


def test_report_writers(tmp_path, quick_records):
    extra = ClaimRecord(id="X-INF", source="s", statement="a|b", procedure="p", verdict="pending",
                        evidence={"bound": float("inf")})
    json_path, md_path = write_ledger([*quick_records, extra], tmp_path, QUICK)
    payload = json.loads(json_path.read_text(encoding="utf-8"))
    assert payload["provenance"]["quick"] is True
    assert [r["id"] for r in payload["records"]][-1] == "X-INF" and payload["records"][0]["id"] == "S0-BAYES"
    assert payload["records"][-1]["evidence"]["bound"] == "inf"  # valid JSON, no bare Infinity
    md = md_path.read_text(encoding="utf-8")
    assert "| `S0-BAYES` | **proved** |" in md and "a\\|b" in md
    assert ledger_table(quick_records).count("\n") == len(quick_records) + 1


def test_cli_run_and_figures(tmp_path, capsys, quick_run):
    out = quick_run[1]
    assert (out / "ledger.json").exists() and (out / "ledger.md").exists() and (out / "figures" / "worlds.png").exists()
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- ledger -->\nold\n<!-- /ledger -->\nafter\n", encoding="utf-8")
    from verify.cli import _replace_between_markers

    _replace_between_markers(readme, "ledger", "| new |")
    assert readme.read_text(encoding="utf-8") == "before\n<!-- ledger -->\n| new |\n<!-- /ledger -->\nafter\n"
    with pytest.raises(SystemExit):
        main(["nope"])
    assert main(["proofs"]) == 0
    assert "proofs as expected" in capsys.readouterr().out
    assert main(["audit", "tests.audit_mutants:lerp_eps"]) == 0
    assert main(["audit", "tests.audit_mutants:swapped_branches"]) == 1
    torch.manual_seed(0)
