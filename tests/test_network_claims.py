"""The network evidence: its measurements checked on models whose answer is known, and its records in the ledger.

The measurement functions of ``verify.claims.network`` take any denoiser. Given the exact (analytic) denoiser they
must report zero error up to float64 rounding, and given a denoiser with a known injected error they must report
it; only then are their numbers on a trained network worth reading.
"""

from __future__ import annotations

import json
import math
import pathlib

import pytest
import torch

from toy_models import AnalyticDenoiser, get_world
from toy_models.neural import score_error_table
from verify.claims import RunConfig
from verify.claims import network as net
from verify.claims._common import PerturbedDenoiser

QUICK = RunConfig(quick=True, show_progress=False)
CHECKPOINTS = pathlib.Path(__file__).resolve().parent.parent / "checkpoints"
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


def _shipped_card(name: str) -> dict:
    return json.loads((CHECKPOINTS / f"{name}.json").read_text(encoding="utf-8"))


def test_network_cards_in_the_ledger_are_the_shipped_ones(quick_run):
    """Every checkpoint block the ledger records is the card of the file it names: the SHA-256 prefix, steps, device
    and p_uncond are the shipped card's (and each ablation network's p_uncond is the rate its name says)."""
    blocks = dict(_record(quick_run, "S0-NULL-TOKEN").evidence["network"]["checkpoints"])
    blocks.update({f"ablation/ring2d_p{p}": c
                   for p, c in _record(quick_run, "S1-DROPOUT").evidence["network"]["checkpoints"].items()})
    assert len(blocks) == 8
    for name, block in blocks.items():
        card = _shipped_card(name)
        assert block == {"checkpoint_sha256": card["sha256"][:16], "trained_on": card["device"],
                         "steps": card["steps"], "wall_time_s": card["wall_time_s"],
                         "p_uncond": card["config"]["p_uncond"]}, name
        if name.startswith("ablation/"):
            assert block["p_uncond"] == float(name.removeprefix("ablation/ring2d_p")), name


# Two Monte Carlo estimates of the same cell (the ledger's, n = 256 points per cell in the quick run, and the card's,
# n = 2048, measured when the network was trained) differ by their noise alone: z = difference / hypot(se, se_card).
# 81 cells (3 networks x 3 conditions x 9 times); at 5 standard errors a normal z exceeds the bound with chance
# 5.7e-7 per cell, 5e-5 for the family. The bound is above the 4.4 of a 1e-3 Bonferroni family because the
# delta-method SE of a ratio of sums of squared errors at n = 256 is itself rough (heavy-tailed squares); measured
# largest |z|: 3.8 (tokens16d). The wrong network, schedule or input scaling moves cells by many times the error
# itself, i.e. by tens to hundreds of SEs.
Z_CARD = 5.0


def test_network_score_tables_agree_with_the_cards(quick_run):
    tables = _record(quick_run, "S0-NULL-TOKEN").evidence["network"]["score_error_tables"]
    assert set(tables) == {"ring2d", "attributes2d", "tokens16d"}
    for world, table in tables.items():
        card = _shipped_card(world)["score_error"]
        assert table["times"] == card["times"]
        for key, row in table["by_condition"].items():
            for i, (mine, theirs) in enumerate(zip(row, card["by_condition"][key], strict=True)):
                se = math.hypot(table["standard_error"][key][i], card["standard_error"][key][i])
                assert abs(mine - theirs) <= Z_CARD * se, (world, key, table["times"][i], mine, theirs, se)


def test_dropout_ablation_orderings_with_their_standard_errors(quick_run):
    """What S1-DROPOUT and the README claim of the five ablation networks, each difference beyond net.Z = 3
    standard errors: the null branch of the p = 0 network is worse than every other; the CFG prediction error at
    w = 3 falls with every step up in p_uncond; and the record's 'best' and 'band beaten by' follow from the rows."""
    ev = _record(quick_run, "S1-DROPOUT").evidence["network"]
    rows = ev["by_p_uncond"]
    rates = ["0.00", "0.05", "0.10", "0.20", "0.50"]
    assert list(rows) == rates

    def beyond(a, a_se, b, b_se):  # a exceeds b by more than Z standard errors of the difference
        return a - b > net.Z * math.hypot(a_se, b_se)

    zero = rows["0.00"]
    for p in rates[1:]:
        assert beyond(zero["null_rms_relative_error"], zero["null_se"], rows[p]["null_rms_relative_error"],
                      rows[p]["null_se"]), p
    for lower, higher in zip(rates[:-1], rates[1:], strict=True):
        a, b = rows[lower], rows[higher]
        assert beyond(a["cfg_w3_eps_error"], a["cfg_w3_eps_error_se"], b["cfg_w3_eps_error"],
                      b["cfg_w3_eps_error_se"]), (lower, higher)
    assert ev["best_p_uncond_for_cfg"] == min(rows, key=lambda p: rows[p]["cfg_w3_eps_error"])
    band = min(("0.10", "0.20"), key=lambda p: rows[p]["cfg_w3_eps_error"])
    beaten = [p for p in rows if p not in ("0.10", "0.20")
              and beyond(rows[band]["cfg_w3_eps_error"], rows[band]["cfg_w3_eps_error_se"],
                         rows[p]["cfg_w3_eps_error"], rows[p]["cfg_w3_eps_error_se"])]
    assert ev["band_beaten_by"] == beaten
    assert _record(quick_run, "S1-DROPOUT").verdict == ("holds" if not beaten else "conditional")
    # S0-NULL-TOKEN reads the same two networks' null branches: the very same numbers
    by_p = _record(quick_run, "S0-NULL-TOKEN").evidence["network"]["ring2d_null_rms_error_by_p_uncond"]
    for p in ("0.00", "0.10"):
        assert by_p[p] == {"rms": rows[p]["null_rms_relative_error"], "se": rows[p]["null_se"]}, p


def test_null_token_summary_follows_from_its_tables(quick_run):
    """S0-NULL-TOKEN's per-network summary is the rms over t of its own tables, and 'within range' is the 3-SE
    comparison it states."""
    ev = _record(quick_run, "S0-NULL-TOKEN").evidence["network"]
    for world, summary in ev["summary"].items():
        table = ev["score_error_tables"][world]
        null = table["by_condition"]["null"]
        assert math.isclose(summary["null_rms_relative_error"], math.sqrt(sum(r * r for r in null) / len(null)),
                            rel_tol=1e-12)
        worst = max(math.sqrt(sum(r * r for r in row) / len(row))
                    for key, row in table["by_condition"].items() if key != "null")
        assert math.isclose(summary["conditional_rms_relative_error_max"], worst, rel_tol=1e-12)
        within = summary["null_rms_relative_error"] <= worst + net.Z * math.hypot(summary["null_se"],
                                                                                summary["conditional_max_se"])
        assert summary["null_within_conditional_range"] == within, world


def test_attention_summary_follows_from_the_maps(quick_run):
    """The mass on each position's own token and the count of positions whose largest mass is there are read off
    the recorded maps (position p's token is its block's, p // 4), and the verdict follows from the counts."""
    record = _record(quick_run, "S0-XATTN")
    best = {}
    for t, block in record.evidence["network"]["attention"].items():
        maps = torch.tensor(block["map_by_layer"], dtype=torch.float64)  # [depth, 16, 4]
        own = torch.arange(16) // 4
        mass = maps[:, torch.arange(16), own].mean(1)
        count = (maps.argmax(-1) == own).sum(1)
        assert torch.allclose(mass, torch.tensor(block["mass_on_controlling_token_by_layer"], dtype=torch.float64),
                              rtol=0, atol=1e-12), t
        assert count.tolist() == block["positions_whose_argmax_is_controlling_by_layer"], t
        best[t] = int(count.max())
    assert record.evidence["summary"]["positions_attending_most_to_their_token_best_layer"] == best
    expected = "holds" if all(v == 16 for v in best.values()) else (
        "conditional" if all(v >= 8 for v in best.values()) else "fails")
    assert record.verdict == expected


def test_implicit_classifier_amplification_is_its_ratio(quick_run):
    ev = _record(quick_run, "S0-PROP1").evidence["network"]["implicit_classifier"]
    for world, rows in ev.items():
        for c, s, a in zip(rows["classifier_relative_error"], rows["conditional_score_relative_error"],
                           rows["amplification"], strict=True):
            assert math.isclose(a, c / s, rel_tol=1e-12), world
    ring = ev["ring2d"]
    i = max(range(len(ring["times"])), key=lambda k: ring["amplification"][k])
    assert (f"implicit classifier error {ring['classifier_relative_error'][i]:.2f} at t = {ring['times'][i]:g}, "
            f"{ring['amplification'][i]:.0f}x its score error") in _record(quick_run, "S0-PROP1").headline
