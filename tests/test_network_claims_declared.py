"""The network evidence: its measurements checked on models whose answer is known, its records, and the network
blocks it hands to other claims' records.

The measurements of ``verify.evidence.network`` take any denoiser. Given the exact (analytic) denoiser they must
report zero error up to float64 rounding, and given a denoiser with a known injected error they must report it; only
then are their numbers on a trained network worth reading. The record tests read the quick ledger of the shipped
checkpoints (the session's shared evidence, ``ledger`` and ``quick_evidence`` in conftest).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib

import pytest
import torch

from toy_models import AnalyticDenoiser, get_world
from toy_models.neural import score_error_table
from toy_models.neural.shipped import SHIPPED
from verify.claims import RunConfig, evaluate
from verify.evidence import Evidence
from verify.evidence import network as net
from verify.evidence.shared import PerturbedDenoiser

QUICK = RunConfig(quick=True, show_progress=False)
CHECKPOINTS = pathlib.Path(__file__).resolve().parent.parent / "checkpoints"
NETWORK_CLAIMS = ("S0-NULL-TOKEN", "S0-XATTN", "S1-DROPOUT", "S1-FID-IS")
# float64 ground truth against itself: every relative error is a ratio of rounding residues. The eps of a mixture
# costs O(K d^2) flops (K <= 8, d = 2 here), so 1e-12 is ~100x the gamma_n bound of such a computation (n ~ 100,
# u = 1.1e-16 gives ~1e-14) and still 10 orders of magnitude below any network's error.
EXACT = 1e-12
# the implicit classifier is a difference of two eps (each rounded to ~1e-14 relative to |eps|) divided by
# sigma grad log p(c|x), which at t = 1 is ~1e-3 of |eps| on ring2d: 1e-14 / 1e-3 = 1e-11, with 100x headroom
EXACT_DIFFERENCE = 1e-9


@pytest.fixture(scope="module")
def ring_exact():
    return AnalyticDenoiser(get_world("ring2d"))


# ------------------------------------------------------------------------------------------------------------
# the measurements on models whose answer is known
# ------------------------------------------------------------------------------------------------------------
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
    rows = net.implicit_classifier_rows(ring_exact, QUICK)
    assert max(rows.classifier_relative_error) < EXACT_DIFFERENCE
    assert max(rows.conditional_score_relative_error) < EXACT


def test_cfg_sampling_runs_of_disjoint_samplers_merge_into_one_call(ring_exact):
    """S0-PROP2-SAMPLES reads DDIM and DDPM alone, L-DDIM-DDPM every sampler: the second provider adds the other
    samplers' runs to the first's, which must give exactly what one call with all of them gives (same seed per
    sampler, registry order)."""
    both = net.cfg_sampling(ring_exact, QUICK, ("ddim", "ddpm", "euler"))
    merged = net.cfg_sampling(ring_exact, QUICK, ("ddpm", "ddim")).merged(net.cfg_sampling(ring_exact, QUICK,
                                                                                           ("euler",)))
    assert merged.by_w == both.by_w
    assert list(merged.by_w["3"].samplers) == [s for s in net.SAMPLERS if s in ("ddim", "ddpm", "euler")]
    for name in ("ddim", "ddpm", "euler"):
        assert torch.equal(merged.samples["3"][name].network, both.samples["3"][name].network)
    with pytest.raises(ValueError, match="^other: "):
        merged.merged(dataclasses.replace(both, n=both.n + 1))


def test_paired_cfg_sampling_of_the_exact_denoiser_has_no_deviation(ring_exact):
    res = net.cfg_sampling(ring_exact, QUICK)
    assert res.by_w and not res.skipped
    for w, row in res.by_w.items():
        for name, v in row.samplers.items():
            assert v.network_minus_analytic == 0.0 and v.rms_paired_displacement == 0.0, (w, name)
            # the analytic finding itself: samplers do not reach the tilted target's mean
            assert v.gap_exceeds_network_deviation, (w, name)
    block = res.block()
    cases = sum(len(r.samplers) for r in res.by_w.values())
    assert block.evidence["not_resolved"] == [] and f"in {cases}/{cases} (w, sampler) cases" in block.headline


def test_guided_eps_error_of_the_exact_denoiser_is_zero(ring_exact):
    assert net.guided_eps_error(ring_exact, QUICK).pooled_relative_error < EXACT


def test_attributes_sampling_pairs_identical_models():
    res = net.attributes_sampling(AnalyticDenoiser(get_world("attributes2d")), QUICK, n=100)  # equality: any n
    assert set(res.cases) == {"negative_001", "negative_000", "compose"}  # identifiers, not prose
    for case in res.cases.values():
        assert case.network_fraction == case.analytic_fraction and case.paired_se_of_difference == 0.0
    block = res.block()
    assert set(block.evidence["ddim_samples"]) == set(res.cases) and block.headline == block.conditions == ""
    json.dumps(block.evidence)  # JSON data, no tensors


def test_rms_with_se_is_the_delta_method():
    """rms of (3, 4) over 2 cells is sqrt(12.5); its SE by the delta method is sqrt((3*0.1)^2 + (4*0.2)^2)/(2 rms)."""
    rms, se = net.rms_with_se([3.0, 4.0], [0.1, 0.2])
    assert rms == math.sqrt(12.5)
    assert math.isclose(se, math.sqrt(0.09 + 0.64) / (2 * math.sqrt(12.5)), rel_tol=1e-15)
    with pytest.raises(ValueError, match="^row"):
        net.rms_with_se([1.0], [])


def test_missing_checkpoints_leave_the_claims_pending_and_the_blocks_skipped(tmp_path):
    evidence = Evidence(RunConfig(quick=True, show_progress=False, checkpoints=str(tmp_path)))
    for record in evaluate(evidence.config, NETWORK_CLAIMS, evidence):
        assert record.verdict == "pending", record.id
        assert record.evidence["network"]["skipped"].startswith("no checkpoint for"), record.id
        assert record.evidence["decided_by"] and record.headline.startswith("pending: "), record.id
    for name in ("network_implicit_classifier", "network_cfg_sampling", "network_attribute_sampling"):
        block = evidence.get(name).block()
        assert block.evidence["skipped"].startswith("no checkpoint for") and block.headline == "", name
    for claim_id in net.NetworkQuality.CLAIMS:
        assert "skipped" in evidence.get("network_quality").block_for(claim_id).evidence, claim_id
    with pytest.raises(ValueError, match="^claim_id"):
        evidence.get("network_quality").block_for("S0-BAYES")


# ------------------------------------------------------------------------------------------------------------
# the quick ledger on the shipped checkpoints
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def records(ledger):
    return ledger(*NETWORK_CLAIMS)


@pytest.mark.parametrize("claim_id", NETWORK_CLAIMS)
def test_network_records_are_decided(records, claim_id):
    record = records[claim_id]
    assert "skipped" not in record.evidence["network"], record.evidence["network"]
    assert record.verdict != "pending" and record.headline and record.procedure != "not evaluated"


def test_null_token_record_reads_the_score_tables(records):
    ev = records["S0-NULL-TOKEN"].evidence["network"]
    for world, table in ev["score_error_tables"].items():
        assert "null" in table["by_condition"], world
        for row, se in zip(table["by_condition"].values(), table["standard_error"].values(), strict=True):
            assert all(math.isfinite(r) and r >= 0 for r in row)
            assert all(0 <= s < r for s, r in zip(se, row, strict=True))  # a measured error, resolved by its SE


def test_attention_maps_are_probabilities(records):
    ev = records["S0-XATTN"].evidence["network"]["attention"]
    for t, block in ev.items():
        maps = torch.tensor(block["map_by_layer"])  # [depth, 16, 4]
        assert maps.shape[1:] == (16, 4), t
        # each row is a softmax over 4 tokens in float32 (eps 1.2e-7), averaged over heads, points and labels:
        # a sum of 4 terms carries a few ulps, far below 1e-5
        assert torch.allclose(maps.sum(-1), torch.ones(maps.shape[:2], dtype=maps.dtype), atol=1e-5), t


def _shipped_card(name: str) -> dict:
    return json.loads((CHECKPOINTS / f"{name}.json").read_text(encoding="utf-8"))


def test_network_cards_in_the_ledger_are_the_shipped_ones(records):
    """Every checkpoint block the ledger records is the card of the file it names: the SHA-256 prefix, steps, device
    and p_uncond are the shipped card's (and each ablation network's p_uncond is the rate its name says)."""
    blocks = dict(records["S0-NULL-TOKEN"].evidence["network"]["checkpoints"])
    blocks.update({f"ablation/ring2d_p{p}": c
                   for p, c in records["S1-DROPOUT"].evidence["network"]["checkpoints"].items()})
    blocks["imperfect/ring2d"] = records["S1-FID-IS"].evidence["network"]["checkpoint"]
    # every shipped checkpoint the repository holds (shapes32 is trained only by the GPU package)
    assert set(blocks) == {s.name for s in SHIPPED if (CHECKPOINTS / f"{s.name}.json").is_file()}
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


def test_network_score_tables_agree_with_the_cards(records):
    tables = records["S0-NULL-TOKEN"].evidence["network"]["score_error_tables"]
    assert set(tables) == set(net.MAIN)
    for world, table in tables.items():
        card = _shipped_card(world)["score_error"]
        assert table["times"] == card["times"]
        for key, row in table["by_condition"].items():
            for i, (mine, theirs) in enumerate(zip(row, card["by_condition"][key], strict=True)):
                se = math.hypot(table["standard_error"][key][i], card["standard_error"][key][i])
                assert abs(mine - theirs) <= Z_CARD * se, (world, key, table["times"][i], mine, theirs, se)


def test_dropout_ablation_orderings_with_their_standard_errors(records):
    """What S1-DROPOUT and the README claim of the five ablation networks, each difference beyond net.Z = 3
    standard errors: the null branch of the p = 0 network is worse than every other; the CFG prediction error at
    w = 3 falls with every step up in p_uncond; and the record's 'best' and 'band beaten by' follow from the rows."""
    record = records["S1-DROPOUT"]
    ev = record.evidence["network"]
    rows = ev["by_p_uncond"]
    rates = list(net.P_UNCOND)
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
    band = min(net.BAND, key=lambda p: rows[p]["cfg_w3_eps_error"])
    beaten = [p for p in rows if p not in net.BAND
              and beyond(rows[band]["cfg_w3_eps_error"], rows[band]["cfg_w3_eps_error_se"],
                         rows[p]["cfg_w3_eps_error"], rows[p]["cfg_w3_eps_error_se"])]
    assert ev["band_beaten_by"] == beaten
    assert record.verdict == ("holds" if not beaten else "conditional")
    # S0-NULL-TOKEN reads the same two networks' null branches: the very same numbers
    by_p = records["S0-NULL-TOKEN"].evidence["network"]["ring2d_null_rms_error_by_p_uncond"]
    for p in net.NULL_PAIR:
        assert by_p[p] == {"rms": rows[p]["null_rms_relative_error"], "se": rows[p]["null_se"]}, p


def test_null_token_summary_follows_from_its_tables(records):
    """S0-NULL-TOKEN's per-network summary is the rms over t of its own tables, 'within range' is the 3-SE
    comparison it states, and the verdict follows from 'within range' and the p_uncond = 0 / 0.1 comparison."""
    record = records["S0-NULL-TOKEN"]
    ev = record.evidence["network"]
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
    by_p = ev["ring2d_null_rms_error_by_p_uncond"]
    needed = by_p["0.00"]["rms"] - by_p["0.10"]["rms"] > net.Z * math.hypot(by_p["0.00"]["se"], by_p["0.10"]["se"])
    usable = all(s["null_within_conditional_range"] for s in ev["summary"].values())
    assert record.verdict == ("holds" if usable and needed else "conditional" if needed else "fails")


def test_attention_summary_follows_from_the_maps(records):
    """The mass on each position's own token and the count of positions whose largest mass is there are read off
    the recorded maps (position p's token is its block's, p // 4), and the verdict follows from the counts."""
    record = records["S0-XATTN"]
    best = {}
    for t, block in record.evidence["network"]["attention"].items():
        maps = torch.tensor(block["map_by_layer"], dtype=torch.float64)  # [depth, 16, 4]
        own = torch.arange(16) // 4
        mass = maps[:, torch.arange(16), own].mean(1)
        count = (maps.argmax(-1) == own).sum(1)
        # the network hands its attention probabilities over in float64 and the recorded masses are float64 means
        # of the same 16 numbers: summed in another order they differ by ~16 ulps (4e-15), far below 1e-12
        assert torch.allclose(mass, torch.tensor(block["mass_on_controlling_token_by_layer"], dtype=torch.float64),
                              rtol=0, atol=1e-12), t
        assert count.tolist() == block["positions_whose_argmax_is_controlling_by_layer"], t
        best[t] = int(count.max())
    assert record.evidence["summary"]["positions_attending_most_to_their_token_best_layer"] == best
    expected = "holds" if all(v == 16 for v in best.values()) else (
        "conditional" if all(v >= 8 for v in best.values()) else "fails")
    assert record.verdict == expected


def test_fid_is_record_follows_from_its_curves(records):
    """S1-FID-IS: the best strengths are the curves' Frechet minima, and the verdict is the stated 3-SE comparison
    of the two minima (CFG no worse than classifier guidance)."""
    record = records["S1-FID-IS"]
    ev = record.evidence["network"]
    curves = ev["curves"]
    assert set(curves["cfg"]) == set(curves["classifier"]) and curves["score_error"] > 0

    def best(curve):
        g = min(curve, key=lambda k: curve[k]["frechet_to_conditional"])
        return g, curve[g]["frechet_to_conditional"], curve[g]["frechet_se"]

    (g_cfg, fd_cfg, se_cfg), (g_cg, fd_cg, se_cg) = best(curves["cfg"]), best(curves["classifier"])
    assert ev["best_cfg"] == {"guidance_scale": g_cfg, "frechet": fd_cfg}
    assert ev["best_classifier"] == {"scale": g_cg, "frechet": fd_cg}
    for curve in curves.values():
        for point in curve.values() if isinstance(curve, dict) else ():
            assert 0 <= point["precision"] <= 1 and point["frechet_se"] > 0
    not_worse = fd_cfg <= fd_cg + net.Z * math.hypot(se_cfg, se_cg)
    assert record.verdict == ("holds" if not_worse else "fails")
    assert f"CFG {fd_cfg:.3f} (g = {g_cfg})" in record.headline


# ------------------------------------------------------------------------------------------------------------
# the network blocks other claims' records carry
# ------------------------------------------------------------------------------------------------------------
def test_implicit_classifier_block(quick_evidence):
    """S0-BAYES / S0-PROP1: amplification is the ratio of the two errors, and the headline fragment names the most
    amplified time of ring2d."""
    block = quick_evidence.get("network_implicit_classifier").block()
    ev = block.evidence["implicit_classifier"]
    assert set(ev) == {"ring2d", "attributes2d"} and set(block.evidence["checkpoints"]) == set(ev)
    for world, rows in ev.items():
        for c, s, a in zip(rows["classifier_relative_error"], rows["conditional_score_relative_error"],
                           rows["amplification"], strict=True):
            assert math.isclose(a, c / s, rel_tol=1e-12), world
    ring = ev["ring2d"]
    i = max(range(len(ring["times"])), key=lambda k: ring["amplification"][k])
    assert block.headline == (f"network (ring2d): implicit classifier error {ring['classifier_relative_error'][i]:.2f}"
                              f" at t = {ring['times'][i]:g}, {ring['amplification'][i]:.0f}x its score error")
    assert block.conditions == ""


def test_cfg_sampling_block_and_its_samples(quick_evidence):
    """S0-PROP2-SAMPLES: the block's means are those of the samples the figure draws, and 'not resolved' lists
    exactly the (w, sampler) cases whose finding does not transfer."""
    res = quick_evidence.get("network_cfg_sampling")
    block = res.block()
    for w, row in res.by_w.items():
        for name, means in row.samplers.items():
            pair = res.samples[w][name]
            assert pair.network.shape == pair.analytic.shape == (res.n, 2)
            assert means.network_mean_e1 == float(pair.network[:, 0].mean()), (w, name)
            assert means.analytic_mean_e1 == float(pair.analytic[:, 0].mean()), (w, name)
    flags = block.evidence["finding_transfers"]
    assert block.evidence["not_resolved"] == [{"w": float(w), "sampler": s} for w, row in flags.items()
                                              for s, ok in row.items() if not ok]
    total = sum(len(row) for row in flags.values())
    assert f"in {total - len(block.evidence['not_resolved'])}/{total} (w, sampler) cases" in block.headline
    # the samples stay out of the record: each (w, sampler) row holds the summary fields alone
    fields = set(dataclasses.asdict(next(iter(next(iter(res.by_w.values())).samplers.values()))))
    for row in block.evidence["ring2d_class0_mean_e1"].values():
        assert all(set(v) == fields for v in row["samplers"].values())


def test_attribute_sampling_block(quick_evidence):
    """The four attribute claims' block: fractions are fractions, and the paired SE is that of a difference of two
    0/1 variables over n samples (at most 1/sqrt(n))."""
    block = quick_evidence.get("network_attribute_sampling").block()
    n = block.evidence["n"]
    for case, v in block.evidence["ddim_samples"].items():
        assert 0 <= v["network_fraction"] <= 1 and 0 <= v["analytic_fraction"] <= 1, case
        assert 0 <= v["paired_se_of_difference"] <= 1 / math.sqrt(n - 1), case
        assert v["region"] in ("red_dog", "purple_band") and len(v["network_mean"]) == 2, case


def test_quality_blocks(quick_evidence):
    """S0-QUALITY-DIVERSITY's block states what its flags say; S1-SCALE-TABLE's carries both networks' scale-1
    points, the same numbers as the curves."""
    quality = quick_evidence.get("network_quality")
    qd = quality.block_for("S0-QUALITY-DIVERSITY")
    cfg = qd.evidence["curves"]["imperfect"]["cfg"]
    assert qd.headline == (f"imperfect network: precision {cfg['1']['precision']:.2f} -> {cfg['4']['precision']:.2f}"
                           " at g = 1 -> 4")
    rises = qd.evidence["imperfect_precision_rises_g1_to_g4"]
    assert rises == (cfg["4"]["precision"] - cfg["1"]["precision"]
                     > net.Z * math.hypot(cfg["4"]["precision_se"], cfg["1"]["precision_se"]))
    assert ("guidance does raise precision" in qd.conditions) == rises
    scale = quality.block_for("S1-SCALE-TABLE")
    assert scale.evidence["imperfect_network_guidance_scale_1"] == cfg["1"]
    assert scale.evidence["main_network_guidance_scale_1"] == qd.evidence["curves"]["main"]["cfg"]["1"]
    assert scale.headline == scale.conditions == ""
