"""The ledger: the S0-BAYES record, its ability to fail, the report writers and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from toy_models.gaussian_mixture import GaussianMixture
from verify.claims import ClaimRecord, RunConfig, bayes, evaluate_all
from verify.cli import main
from verify.report import ledger_table, write_ledger

QUICK = RunConfig(quick=True, show_progress=False)


@pytest.fixture(scope="module")
def quick_records():
    return evaluate_all(QUICK)


def test_bayes_record(quick_records):
    (record,) = [r for r in quick_records if r.id == "S0-BAYES"]
    assert record.verdict == "holds"
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


def test_record_validation():
    with pytest.raises(ValueError, match="verdict"):
        ClaimRecord(id="X", source="s", statement="s", procedure="p", verdict="true")


def test_report_writers(tmp_path, quick_records):
    extra = ClaimRecord(id="X-INF", source="s", statement="a|b", procedure="p", verdict="pending",
                        evidence={"bound": float("inf")})
    json_path, md_path = write_ledger([*quick_records, extra], tmp_path, QUICK)
    payload = json.loads(json_path.read_text(encoding="utf-8"))
    assert payload["provenance"]["quick"] is True
    assert [r["id"] for r in payload["records"]] == ["S0-BAYES", "X-INF"]
    assert payload["records"][1]["evidence"]["bound"] == "inf"  # valid JSON, no bare Infinity
    md = md_path.read_text(encoding="utf-8")
    assert "| `S0-BAYES` | **holds** |" in md and "a\\|b" in md
    assert ledger_table(quick_records).count("\n") == 2


def test_cli_run_and_figures(tmp_path, capsys):
    assert main(["run", "--quick", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert (tmp_path / "run" / "ledger.json").exists() and (tmp_path / "run" / "figures" / "worlds.png").exists()
    assert "S0-BAYES" in capsys.readouterr().out
    assert main(["figures", "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "worlds.png").stat().st_size > 10_000
    with pytest.raises(SystemExit):
        main(["nope"])
    torch.manual_seed(0)
