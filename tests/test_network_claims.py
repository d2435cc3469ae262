"""The network evidence: its measurements checked on models whose answer is known, and its records in the ledger.

The measurement functions of ``verify.claims.network`` take any denoiser. Given the exact (analytic) denoiser they
must report zero error up to float64 rounding, and given a denoiser with a known injected error they must report
it; only then are their numbers on a trained network worth reading.
"""

from __future__ import annotations

import math

import pytest
import torch

from toy_models import AnalyticDenoiser, get_world
from toy_models.neural import score_error_table
from verify.claims import RunConfig
from verify.claims import network as net
from verify.claims._common import PerturbedDenoiser

QUICK = RunConfig(quick=True, show_progress=False)
# float64 ground truth against itself: every relative error is a ratio of rounding residues. The eps of a mixture
# costs O(K d^2) flops (K <= 8, d = 2 here), so 1e-12 is ~100x the gamma_n bound of such a computation (n ~ 100,
# u = 1.1e-16 gives ~1e-14) and still 10 orders of magnitude below any network's error.
EXACT = 1e-12


@pytest.fixture(scope="module")
def ring_exact():
    return AnalyticDenoiser(get_world("ring2d"))


def test_score_error_of_the_exact_denoiser_is_zero(ring_exact):
    table = score_error_table(ring_exact, get_world("ring2d"), conditions=[None, 0], n=64)
    assert table["pooled_relative_error"] < EXACT and table["rms_relative_error"] < EXACT


def test_score_error_reports_an_injected_error(ring_exact):
    """PerturbedDenoiser adds eps_rel * rms(eps) * tanh(Ax + b), |tanh| <= 1 and of rms about 0.5-0.8 for these A, b:
    the measured relative error must come out of the same order as eps_rel (between 0.1 and 1.5 times it)."""
    eps_rel = 0.05
    table = score_error_table(PerturbedDenoiser(ring_exact, eps_rel, seed=1), get_world("ring2d"),
                              times=(0.5, 1.0), conditions=[None, 0], n=512)
    assert 0.1 * eps_rel < table["pooled_relative_error"] < 1.5 * eps_rel
    # its standard errors are small against the value (512 points per cell): the table can tell 5 % from 0
    se = [s for row in table["standard_error"].values() for s in row]
    assert max(se) < 0.2 * eps_rel


def test_implicit_classifier_of_the_exact_denoiser_matches(ring_exact):
    rows = net.implicit_classifier(ring_exact, QUICK)
    assert max(rows["classifier_relative_error"]) < 1e-9  # difference of two eps: relative to a smaller quantity
    assert max(rows["conditional_score_relative_error"]) < EXACT


def test_paired_cfg_sampling_of_the_exact_denoiser_has_no_deviation(ring_exact):
    res = net.cfg_sampling(ring_exact, QUICK)
    for row in res.values():
        for name, v in row.items():
            if isinstance(v, dict):
                assert v["network_minus_analytic"] == 0.0 and v["rms_paired_displacement"] == 0.0, name
                # the analytic finding itself: samplers do not reach the tilted target's mean
                assert v["gap_exceeds_network_deviation"], name


def test_guided_eps_error_of_the_exact_denoiser_is_zero(ring_exact):
    assert net.guided_eps_error(ring_exact, QUICK)["pooled_relative_error"] < EXACT


def test_attributes_sampling_pairs_identical_models():
    res = net.attributes_sampling(AnalyticDenoiser(get_world("attributes2d")), QUICK)
    for case in res.values():
        fractions = [v for k, v in case.items() if k.endswith("_fraction")]
        assert fractions[0] == fractions[1] and case["paired_se_of_difference"] == 0.0


def test_missing_checkpoints_leave_pending_records_pending(tmp_path):
    from verify.claims import ORDER, ClaimRecord

    records = {cid: ClaimRecord(id=cid, source="s", statement="s", procedure="p", verdict="pending")
               for cid in ORDER}
    net.augment(records, RunConfig(quick=True, show_progress=False, checkpoints=str(tmp_path)))
    for cid in ("S0-NULL-TOKEN", "S0-XATTN", "S1-DROPOUT", "S1-FID-IS"):
        assert records[cid].verdict == "pending"
        skipped = records[cid].evidence["network"]["skipped"]
        assert "no checkpoint" in skipped or "checkpoints missing" in skipped, skipped


# ------------------------------------------------------------------------------------------------------------
# the ledger written by `cfgtruth run --quick` on the shipped checkpoints
# ------------------------------------------------------------------------------------------------------------
def _record(quick_run, claim_id):
    (record,) = [r for r in quick_run[0] if r.id == claim_id]
    return record


NETWORK_RECORDS = ("S0-BAYES", "S0-PROP1", "S0-NULL-TOKEN", "S0-XATTN", "S0-PROP2-SAMPLES", "S0-QUALITY-DIVERSITY",
                   "S0-NEGPROMPT-DENSITY", "S0-COMPOSITION", "S0-PURPLE-DOG", "S1-DROPOUT", "S1-NEGPROMPT",
                   "S1-FID-IS")


@pytest.mark.parametrize("claim_id", NETWORK_RECORDS)
def test_network_evidence_block_present(quick_run, claim_id):
    record = _record(quick_run, claim_id)
    block = record.evidence["network"]
    assert "skipped" not in block, block
    if claim_id in ("S0-NULL-TOKEN", "S0-XATTN", "S1-DROPOUT", "S1-FID-IS"):
        assert record.verdict != "pending" and record.headline and record.procedure != "not evaluated yet"


def test_null_token_record_reads_the_score_tables(quick_run):
    ev = _record(quick_run, "S0-NULL-TOKEN").evidence["network"]
    for world, table in ev["score_error_tables"].items():
        assert "null" in table["by_condition"], world
        for row, se in zip(table["by_condition"].values(), table["standard_error"].values(), strict=True):
            assert all(math.isfinite(r) and r >= 0 for r in row)
            assert all(0 <= s < r for s, r in zip(se, row, strict=True))  # a measured error, resolved by its SE


def test_attention_maps_are_probabilities(quick_run):
    ev = _record(quick_run, "S0-XATTN").evidence["network"]["attention"]
    for t, block in ev.items():
        maps = torch.tensor(block["map_by_layer"])  # [depth, 16, 4]
        assert maps.shape[1:] == (16, 4), t
        assert torch.allclose(maps.sum(-1), torch.ones(maps.shape[:2], dtype=maps.dtype), atol=1e-5), t


def test_network_cards_say_where_they_were_trained(quick_run):
    ev = _record(quick_run, "S0-NULL-TOKEN").evidence["network"]["checkpoints"]
    for world, card in ev.items():
        assert card["trained_on"] and card["steps"] > 0 and card["wall_time_s"] > 0, world
