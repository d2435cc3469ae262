"""The ledger records L-APG (verify.claims.rule_apg) and L-CFG-ZERO-STAR (verify.claims.rule_cfg_zero_star), quick
config: structure, and verdicts that follow from the evidence of the same run (recomputed here from the evidence,
not compared with a constant), plus the pieces they are built from."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from toy_models import AnalyticDenoiser, get_world
from verify.claims import VERDICTS, ClaimRecord, RunConfig, rule_apg, rule_cfg_zero_star
from verify.metrics import holm_reject
from verify.tolerances import gamma


@functools.cache
def _record(module) -> ClaimRecord:
    records = module.evaluate(RunConfig(quick=True, seed=0, show_progress=False))
    assert len(records) == 1
    return records[0]


def _check_structure(rec: ClaimRecord, cid: str) -> None:
    assert rec.id == cid and rec.verdict in VERDICTS and rec.verdict != "pending"
    for text in (rec.source, rec.statement, rec.procedure, rec.conditions, rec.uncertainty, rec.headline):
        assert isinstance(text, str) and text
    assert rec.tests and all(t.startswith("tests/") for t in rec.tests)
    assert "tests/test_claims_apg_zero_star.py" in rec.tests
    assert rec.to_dict()["id"] == cid


# ------------------------------------------------------------------------------------------------------------
# L-APG
# ------------------------------------------------------------------------------------------------------------
def test_apg_record_structure():
    rec = _record(rule_apg)
    _check_structure(rec, "L-APG")
    assert "2410.02416" in rec.source
    ev = rec.evidence
    assert set(ev["by_guidance_scale"]) == {"8", "15"}  # quick grid
    for row in ev["by_guidance_scale"].values():
        assert {"cfg", "apg", "paired_apg_minus_cfg"} <= set(row)
        for rule in ("cfg", "apg"):
            assert 0.0 <= row[rule]["fraction_classified_as_class"] <= 1.0 and row[rule]["se_overshoot"] > 0
        assert 0.0 <= row["paired_apg_minus_cfg"]["power_against_reduction_0.01"] <= 1.0
    assert len(ev["checks"]) == 3 * len(ev["by_guidance_scale"])


def test_apg_verdict_follows_from_its_evidence():
    rec = _record(rule_apg)
    checks = rec.evidence["checks"]
    rejected = holm_reject([c["p"] for c in checks], rec.evidence["family_alpha"])
    assert [c["rejected_H0"] for c in checks] == rejected.tolist()
    if all(rejected):
        expected = "holds"
    elif rec.evidence["wrong_way_significant"]:
        expected = "fails"
    else:
        expected = "conditional"
    assert rec.verdict == expected
    # the headline's numbers are the evidence's
    top = rec.evidence["by_guidance_scale"]["15"]
    assert f"{top['apg']['mean_fraction_of_x0_out_of_range']:.3f}" in rec.headline


def test_apg_recorder_passes_the_run_state_through():
    """The x0 recorder forwards the run state, so APG with momentum runs inside it (it is refused without)."""
    world = get_world("ring2d")
    den = AnalyticDenoiser(world)
    lo, hi = torch.tensor([-3.5, -3.5], dtype=torch.float64), torch.tensor([3.5, 3.5], dtype=torch.float64)
    x1 = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    from verify import rules

    x, outside = rule_apg._run(rules.get("apg", guidance_scale=10.0, momentum=-0.5), den, x1, lo, hi)
    assert x.shape == (16, 2) and outside.shape == (16,) and bool(((outside >= 0) & (outside <= 1)).all())


# ------------------------------------------------------------------------------------------------------------
# L-CFG-ZERO-STAR
# ------------------------------------------------------------------------------------------------------------
def test_zero_star_record_structure():
    rec = _record(rule_cfg_zero_star)
    _check_structure(rec, "L-CFG-ZERO-STAR")
    assert "2503.18886" in rec.source
    grid = rec.evidence["by_guidance_scale_and_error"]
    assert set(grid) == {"3"}
    assert set(grid["3"]) == {f"{e:g}" for e in rule_cfg_zero_star.ERRORS}
    control = grid["3"]["0"]
    # the control: with the exact model CFG is its own target, bit for bit
    assert control["cfg"]["mean_pathwise_squared_error"] == 0.0


def test_zero_star_verdict_follows_from_its_evidence():
    rec = _record(rule_cfg_zero_star)
    grid = rec.evidence["by_guidance_scale_and_error"]
    comparisons = [(claim, row[key]) for by_error in grid.values() for row in by_error.values()
                   for claim, key in (("a", "(a) cfg_zero_star minus cfg"), ("b", "(b) zero_init minus none"))]
    rejected = holm_reject([c["p"] for _, c in comparisons], rec.evidence["family_alpha"])
    verdicts = {}
    for claim in ("a", "b"):
        words = [("helps" if c["mean_difference"] < 0 else "hurts") if r else "none"
                 for (k, c), r in zip(comparisons, rejected, strict=True) if k == claim]
        verdicts[claim] = ("holds" if "hurts" not in words else "conditional") if "helps" in words else "fails"
    assert (rec.evidence["verdict_a"], rec.evidence["verdict_b"]) == (verdicts["a"], verdicts["b"])
    order = ("fails", "conditional", "holds")
    assert rec.verdict == min(verdicts.values(), key=order.index)


def test_uncond_perturbed_only_touches_the_null_branch():
    exact = AnalyticDenoiser(get_world("ring2d"), "rectified-flow")
    model = rule_cfg_zero_star.UncondPerturbed(exact, 0.1)
    x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.eps(x, 0.5, 0), exact.eps(x, 0.5, 0))
    diff = (model.eps(x, 0.5, None) - exact.eps(x, 0.5, None)).abs()
    rms = exact.eps(x, 0.5, None).pow(2).mean().sqrt()
    # the perturbation is 0.1 rms tanh(...): nonzero, and at most 0.1 rms in each entry plus the rounding of adding
    # and subtracting it (gamma_3 times |eps| + 0.1 rms)
    bound = 0.1 * rms + gamma(3, torch.float64) * (exact.eps(x, 0.5, None).abs() + 0.1 * rms)
    assert float(diff.max()) > 0 and bool((diff <= bound).all())
    assert model.schedule is exact.schedule and model.dim == 2


def test_paired_comparison_of_a_diverged_run():
    inf = torch.full((4,), math.inf, dtype=torch.float64)
    ok = torch.ones(4, dtype=torch.float64)
    assert rule_cfg_zero_star._paired(ok, inf)["mean_difference"] == -math.inf
    assert rule_cfg_zero_star._paired(ok, inf)["p"] == 0.0
    assert rule_cfg_zero_star._paired(inf, inf)["p"] == 1.0


@pytest.mark.parametrize("module", [rule_apg, rule_cfg_zero_star])
def test_one_thread_inside_and_threads_restored(module):
    """Both evaluate() run under verify.claims._common.one_thread: one intra-op thread inside (checked on a
    function decorated the same way), the caller's setting restored after, also when the body raises."""
    from verify.claims._common import one_thread

    assert getattr(module.evaluate, "__wrapped__", None) is not None  # decorated
    seen = []

    @one_thread()
    def probe(fail: bool):
        seen.append(torch.get_num_threads())
        if fail:
            raise RuntimeError("inside")
        return []

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert probe(False) == [] and seen == [1] and torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="inside"):
            probe(True)
        assert seen == [1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
