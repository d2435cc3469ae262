"""The rule claims (L-RESCALE, L-APG, L-CFGPP, L-CFG-ZERO-STAR, L-AUTOGUIDANCE, L-CFG-SCHEDULE), quick config: their
declarations, the records' structure, verdicts recomputed here from the evidence the records show (not compared with
a constant), and the pieces the providers are built from."""

from __future__ import annotations

import dataclasses
import math
import pathlib

import pytest
import torch

from toy_models import AnalyticDenoiser, get_schedule, get_world
from verify import rules
from verify.claims import VERDICTS, get_claim
from verify.claims import rule_autoguidance as autoguidance_claim
from verify.evidence import rule_apg, rule_autoguidance, rule_cfg_schedule, rule_cfg_zero_star, rule_cfgpp
from verify.evidence.shared import one_thread
from verify.metrics import holm_reject
from verify.tolerances import gamma

RULE_CLAIMS = {"L-RESCALE": 306, "L-APG": 308, "L-CFGPP": 310, "L-CFG-ZERO-STAR": 312, "L-AUTOGUIDANCE": 314,
               "L-CFG-SCHEDULE": 316}
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def records(ledger):
    return ledger(*RULE_CLAIMS)


# ------------------------------------------------------------------------------------------------------------
# declarations
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cid", RULE_CLAIMS)
def test_declaration_order_and_tests_exist(cid):
    """Each claim sits at its ledger position, and every test it names is a file of tests/ and, where it names a
    function, a function defined in that file."""
    entry = get_claim(cid)
    assert entry.order == RULE_CLAIMS[cid]
    assert entry.tests
    for test in entry.tests:
        path, _, name = test.partition("::")
        text = (REPO / path).read_text(encoding="utf-8")
        assert path.startswith("tests/") and (not name or f"def {name}(" in text), test


def _check_structure(rec, cid: str) -> None:
    assert rec.id == cid and rec.verdict in VERDICTS and rec.verdict != "pending"
    for text in (rec.source, rec.statement, rec.procedure, rec.uncertainty, rec.headline):
        assert isinstance(text, str) and text
    assert rec.to_dict()["id"] == cid


def test_rescale_verdict_follows_from_its_tests(records):
    """L-RESCALE's verdict recomputed from the per-model, per-(space, w) outcomes the record shows (space v)."""
    rec = records["L-RESCALE"]
    _check_structure(rec, "L-RESCALE")
    models = {m: e for m, e in rec.evidence.items() if isinstance(e, dict) and "tests" in e}
    assert "gaussian" in models and {t["space"] for t in models["gaussian"]["tests"]} == {"v", "eps"}
    over, helped, fixed = [], [], []
    for m, e in models.items():
        exposed = [t for t in e["tests"] if t["space"] == "v" and t["over_exposed"]]
        if exposed:
            over.append(m)
            if all(t["reduced"] for t in exposed):
                helped.append(m)
                if all(t["fixed"] for t in exposed):
                    fixed.append(m)
        assert (e["over_exposed"], e["reduced"], e["fixed"]) == (m in over, m in helped, m in fixed)
        for t in e["tests"]:
            assert 0.0 <= t["rescaled_out_of_range"] <= 1.0 and 0.0 <= t["residual_test_power_at_half_margin"] <= 1.0
            assert not t["reduced"] or t["reduction_p"] < 0.01  # Holm never rejects above the family-wise alpha
    expected = ("conditional" if not over else "holds" if len(fixed) == len(over) else "fails" if not helped
                else "conditional")
    assert rec.verdict == expected
    # the pair's Monte Carlo CFG arm agrees with its exact law (z of a mean over independent samples): |z| > 4.5 has
    # two-sided probability 7e-6 per w under a correct sampler, below 5e-5 for the family of at most 6 ws
    assert all(abs(v["monte_carlo_z"]) < 4.5 for v in rec.evidence["gaussian_exact_cfg_law"].values())


# ------------------------------------------------------------------------------------------------------------
# L-APG
# ------------------------------------------------------------------------------------------------------------
def test_apg_record(records):
    rec = records["L-APG"]
    _check_structure(rec, "L-APG")
    assert "2410.02416" in rec.source
    ev = rec.evidence
    assert set(ev["by_guidance_scale"]) == {"8", "15"}  # quick grid
    for row in ev["by_guidance_scale"].values():
        assert set(row) == {*rule_apg.ARMS, "paired_apg_minus_cfg"}
        for rule in ("cfg", "apg"):
            assert 0.0 <= row[rule]["fraction_classified_as_class"] <= 1.0 and row[rule]["se_overshoot"] > 0
        assert 0.0 <= row["paired_apg_minus_cfg"]["power_against_out_of_range_reduction"] <= 1.0
    assert len(ev["checks"]) == 3 * len(ev["by_guidance_scale"])


def test_apg_verdict_follows_from_its_evidence(records):
    rec = records["L-APG"]
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
    den = AnalyticDenoiser(get_world("ring2d"))
    lo, hi = torch.tensor([-3.5, -3.5], dtype=torch.float64), torch.tensor([3.5, 3.5], dtype=torch.float64)
    x1 = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x, outside = rule_apg.run_recording(rules.get("apg", guidance_scale=10.0, momentum=-0.5), den, x1, lo, hi)
    assert x.shape == (16, 2) and outside.shape == (16,) and bool(((outside >= 0) & (outside <= 1)).all())


# ------------------------------------------------------------------------------------------------------------
# L-CFG-ZERO-STAR
# ------------------------------------------------------------------------------------------------------------
def test_zero_star_record(records):
    rec = records["L-CFG-ZERO-STAR"]
    _check_structure(rec, "L-CFG-ZERO-STAR")
    assert "2503.18886" in rec.source
    grid = rec.evidence["by_guidance_scale_and_error"]
    assert set(grid) == {"3"}
    assert set(grid["3"]) == {f"{e:g}" for e in rule_cfg_zero_star.ERRORS}
    # the control: with the exact model CFG is its own target, bit for bit
    assert grid["3"]["0"]["cfg"]["mean_pathwise_squared_error"] == 0.0


def test_zero_star_verdict_follows_from_its_evidence(records):
    rec = records["L-CFG-ZERO-STAR"]
    grid = rec.evidence["by_guidance_scale_and_error"]
    comparisons = [(part, row[key]) for by_error in grid.values() for row in by_error.values()
                   for part, key in (("a", "a_cfg_zero_star_minus_cfg"), ("b", "b_zero_init_minus_none"))]
    rejected = holm_reject([c["p"] for _, c in comparisons], rec.evidence["family_alpha"])
    verdicts = {}
    for part in ("a", "b"):
        words = [("helps" if c["mean_difference"] < 0 else "hurts") if r else "none"
                 for (k, c), r in zip(comparisons, rejected, strict=True) if k == part]
        verdicts[part] = ("holds" if "hurts" not in words else "conditional") if "helps" in words else "fails"
    assert (rec.evidence["verdict_a"], rec.evidence["verdict_b"]) == (verdicts["a"], verdicts["b"])
    strength = ("fails", "conditional", "holds")
    assert rec.verdict == min(verdicts.values(), key=strength.index)


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
    assert rule_cfg_zero_star.paired(ok, inf).mean_difference == -math.inf
    assert rule_cfg_zero_star.paired(ok, inf).p == 0.0
    assert rule_cfg_zero_star.paired(inf, inf).p == 1.0


@pytest.mark.parametrize("function", [rule_apg.apg_oversaturation, rule_cfg_zero_star.cfg_zero_star_correction,
                                      rule_cfg_schedule.cfg_schedule_diversity, rule_cfgpp.cfgpp_relation,
                                      rule_autoguidance.autoguidance_comparison])
def test_one_thread_inside_and_threads_restored(function):
    """These providers run under verify.evidence.shared.one_thread (their tensors are tiny: on a loaded 2-core
    machine two intra-op threads made the quick CFG++ and autoguidance evidence over ten times slower): one intra-op
    thread inside (checked on a function decorated the same way), the caller's setting restored after, also when the
    body raises."""
    assert getattr(function, "__wrapped__", None) is not None  # decorated
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


# ------------------------------------------------------------------------------------------------------------
# L-CFGPP
# ------------------------------------------------------------------------------------------------------------
def test_cfgpp_record(records):
    r = records["L-CFGPP"]
    _check_structure(r, "L-CFGPP")
    assert "tests/test_rule_cfgpp.py" in r.tests
    for key in ("proof", "identity_float64", "exact_laws_gauss1d_ddim", "ring2d_excursions",
                "matched_strength_comparisons", "stable_diffusion_equivalent_scales"):
        assert key in r.evidence
    assert r.evidence["proof"]["module"] == "proofs/cfgpp_ddim.py"


def test_cfgpp_verdict_follows_the_evidence(records):
    r = records["L-CFGPP"]
    e = r.evidence
    assert e["proof"]["holds"] and e["identity_float64"]["holds"]
    assert e["identity_float64"]["max_error_over_bound"] <= 1.0
    # at fixed lam the exact law keeps moving with the step count: CFG++'s variance collapses
    laws = e["exact_laws_gauss1d_ddim"]["cfgpp"]["0.6"]
    v = [laws[n]["var"] for n in ("10", "25", "50")]
    assert v[0] > v[1] > v[2] and e["no_step_count_independent_limit"]
    better = [c for c in e["matched_strength_comparisons"] if c["x0_fewer_outside"]]
    assert r.verdict == ("conditional" if better else "fails")
    sd = e["stable_diffusion_equivalent_scales"]
    assert sd["last_step"] == 1.0 and sd["min"] < sd["median"] < sd["max"]


# ------------------------------------------------------------------------------------------------------------
# L-AUTOGUIDANCE
# ------------------------------------------------------------------------------------------------------------
def test_autoguidance_record(records):
    r = records["L-AUTOGUIDANCE"]
    _check_structure(r, "L-AUTOGUIDANCE")
    for level in ("gauss1d_exact", "ring2d_sampled"):
        for method in rule_autoguidance.METHODS:
            assert {"frechet", "frechet_se", "spread_ratio", "precision"} <= set(r.evidence[level][method])
    assert {"recall", "mean", "var"} <= set(r.evidence["gauss1d_exact"]["autoguidance"])
    nets = r.evidence["networks"]
    assert ("skipped" in nets) != ("results" in nets)
    assert ("networks" in r.evidence["judged"]) == ("results" in nets)


def test_autoguidance_verdict_follows_the_evidence(records):
    r = records["L-AUTOGUIDANCE"]
    judged = r.evidence["judged"]
    analytic = judged["gauss1d_exact"]["holds"] and judged["ring2d_sampled"]["holds"]
    network = judged.get("networks", {}).get("holds")
    assert r.verdict == ("holds" if analytic and network else "conditional" if analytic or network else "fails")
    g = r.evidence["gauss1d_exact"]
    # exact laws: the judgement is about numbers without sampling error
    assert judged["gauss1d_exact"]["quality_improves"] == (g["autoguidance"]["frechet"] < g["unguided"]["frechet"])


def test_autoguidance_without_checkpoints(quick_evidence, tmp_path):
    """An empty checkpoint folder skips the networks and says so; the claim then rests on the analytic level alone
    (conditional at best). The analytic evidence is the session's, with only the networks replaced."""
    from verify.config import RunConfig

    nets = rule_autoguidance._networks(RunConfig(quick=True, show_progress=False, checkpoints=str(tmp_path)))
    assert nets.results is None and "checkpoints missing" in nets.skipped
    ev = dataclasses.replace(quick_evidence.get("autoguidance_comparison"), networks=nets)
    decision = autoguidance_claim.autoguidance(ev)
    assert decision.evidence["networks"] == {"skipped": nets.skipped}
    judged = decision.evidence["judged"]
    assert "networks" not in judged and "not evaluated" in decision.conditions
    analytic = judged["gauss1d_exact"]["holds"] and judged["ring2d_sampled"]["holds"]
    assert decision.verdict == ("conditional" if analytic else "fails")


def test_inflated_world_scales_every_covariance():
    world = get_world("ring2d")
    wide = rule_autoguidance.inflated(world, 1.5)
    for c in (None, *world.class_conditions()):
        assert torch.equal(wide.law(c).covariances, world.law(c).covariances * 1.5)
        assert torch.equal(wide.law(c).means, world.law(c).means)


# ------------------------------------------------------------------------------------------------------------
# L-CFG-SCHEDULE
# ------------------------------------------------------------------------------------------------------------
def test_cfg_schedule_record_is_decided_by_its_exact_evidence(records):
    """L-CFG-SCHEDULE (quick): the verdict follows from the cases it lists; the constant rule's ODE variance on gauss1d
    equals the closed form of verify.exact_law.closed_form_ode_variance_1d (moment ODEs at rtol 1e-12, so 1e-9
    relative is far above the integration error); the left-mode masses lie in [0, 1]."""
    from verify.exact_law import closed_form_ode_variance_1d

    record = records["L-CFG-SCHEDULE"]
    _check_structure(record, "L-CFG-SCHEDULE")
    cases = record.evidence["cases"]
    kept = sum(c["more_diversity"] for c in cases)
    assert record.verdict == ("holds" if kept == len(cases) else "fails" if kept == 0 else "conditional")
    ode = record.evidence["within_one_mode_gauss1d"]["3"]["ode"]
    a1, s1 = (float(v) for v in get_schedule("vp-linear").alpha_sigma(1.0))
    closed = closed_form_ode_variance_1d(0.5, 1.0, 3.0, a1**2 * 0.5 + s1**2, "vp-linear")
    assert math.isclose(ode["constant"]["var"], closed, rel_tol=1e-9)
    for laws in record.evidence["across_modes_two_mode_class"]["3"].values():
        assert all(0.0 <= law["mass_below_0"] <= 1.0 for law in laws.values())
