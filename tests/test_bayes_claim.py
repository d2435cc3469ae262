"""S0-BAYES: its record, and its ability to fail."""

from __future__ import annotations

import math

from toy_models.gaussian_mixture import GaussianMixture
from verify.claims import RunConfig, evaluate


def test_bayes_record(ledger):
    record = ledger("S0-BAYES")["S0-BAYES"]
    assert record.verdict == "proved" and record.evidence["all_hold"]
    ev = record.evidence
    assert set(ev["worlds_checked"]) == {"bimodal1d", "ring2d", "attributes2d", "tokens16d", "highdim"}
    assert 0 < ev["max_error_over_bound"] <= 1
    # gauss1d: the largest p(c) with a joint law is inf_x N(x;0,1)/N(x;1,0.5) = sqrt(0.5) e^{-1}
    # (the exponent -x^2/2 + (x-1)^2 is minimal at x = 2); the grid is fine enough for 1e-9 relative.
    got = ev["worlds"]["gauss1d"]["largest_p_c_admitting_a_joint_law"]["1"]
    assert math.isclose(got, math.sqrt(0.5) * math.exp(-1), rel_tol=1e-9)


def test_bayes_record_fails_when_the_score_is_wrong(monkeypatch, tmp_path):
    """A score off by one part in 1e9 must turn the verdict to 'fails' (the check can fail). The run reads an empty
    checkpoint folder, so its network block is skipped and only the Bayes evidence is computed."""
    original = GaussianMixture.score
    monkeypatch.setattr(GaussianMixture, "score", lambda self, x: original(self, x) * (1 + 1e-9))
    (record,) = evaluate(RunConfig(quick=True, show_progress=False, checkpoints=str(tmp_path)), ["S0-BAYES"])
    assert record.verdict == "fails" and record.evidence["max_error_over_bound"] > 1
    assert "skipped" in record.evidence["network"]
