"""diffusers guiders audited through their own API: conformance, conventions, step windows, refusals, the table."""

from __future__ import annotations

import pytest

pytest.importorskip("diffusers", reason="diffusers is an optional extra: pip install cfgtruth[diffusers]")

from verify.conformance import audit_rule  # noqa: E402
from verify.conformance.diffusers_findings import SETTINGS, findings_table, guider_findings  # noqa: E402
from verify.conformance.diffusers_guider import (  # noqa: E402
    SUPPORTED,
    DiffusersGuider,
    StepWindow,
    audit_guider,
    batch_routing,
    build_guider,
    counterpart,
)

#: two scales off every endpoint (not float32 numbers; 3.3 is the audit's probe strength): enough to tell the
#: conventions apart, and a third of the grid's time
FAST = (0.3, 3.3)


def test_cfg_at_defaults_conforms():
    result = audit_guider("ClassifierFreeGuidance")
    assert result.passed, result.report()
    assert [c.name for c in result.notes] == ["returns new tensors (no output is an input)"]  # documented aliasing


def test_original_formulation_conforms_through_the_translated_scale():
    guider = build_guider("ClassifierFreeGuidance", {"use_original_formulation": True})
    result = audit_rule(DiffusersGuider(guider), "cfg", strengths=FAST)
    assert result.passed, result.report()


def test_original_formulation_audited_as_plain_cfg_is_diagnosed():
    guider = build_guider("ClassifierFreeGuidance", {"use_original_formulation": True})
    result = audit_rule(DiffusersGuider(guider, translate_scale=False), "cfg", strengths=FAST)
    assert not result.passed
    assert "guidance_scale + 1" in result.diagnosis.summary


def test_step_window_is_honoured_and_required():
    guider = build_guider("ClassifierFreeGuidance", {"start": 0.2, "stop": 0.8})
    match = counterpart(guider)
    assert match.guided_steps == StepWindow(0.2, 0.8)
    # 6-step runs: int(0.2 * 6) = 1 <= step < int(0.8 * 6) = 4 guided
    assert [match.guided_steps(i, 6) for i in range(6)] == [False, True, True, True, False, False]
    assert audit_guider(guider, strengths=FAST).passed
    unwindowed = audit_rule(DiffusersGuider(guider), "cfg", strengths=FAST)
    assert not unwindowed.passed
    assert {c.kind for c in unwindowed.failures} >= {"value", "state"}


def test_counterparts_follow_the_documentation():
    apg = counterpart(build_guider("AdaptiveProjectedGuidance", {"adaptive_projected_guidance_rescale": 0.0}))
    assert (apg.rule, apg.params) == ("apg", {"eta": 1.0, "norm_threshold": None, "momentum": 0.0, "space": "eps"})
    rescale = counterpart(build_guider("ClassifierFreeGuidance", {"guidance_rescale": 0.7}))
    assert (rescale.rule, rescale.params) == ("rescale", {"phi": 0.7, "space": "eps"})
    zero = counterpart(build_guider("ClassifierFreeZeroStarGuidance", {"zero_init_steps": 2}))
    assert zero.params == {"use_zero_init": True, "space": "velocity", "zero_init_steps": 2}
    assert counterpart(build_guider("AutoGuidance")).rule == "autoguidance"


def test_guiders_without_counterpart_are_refused():
    for name in ("PerturbedAttentionGuidance", "SmoothedEnergyGuidance", "FrequencyDecoupledGuidance"):
        with pytest.raises(ValueError, match="^guider: .*no analytic counterpart"):
            audit_guider(name)
    with pytest.raises(ValueError, match="^guider: SkipLayerGuidance has no analytic counterpart"):
        counterpart(build_guider("SkipLayerGuidance", {"skip_layer_guidance_layers": [0]}))
    with pytest.raises(TypeError, match="^guider:"):
        counterpart(object())
    with pytest.raises(ValueError, match="^guider_or_name:"):
        build_guider("NoSuchGuidance")
    with pytest.raises(ValueError, match="^guider: .*guidance_rescale"):
        counterpart(build_guider("AdaptiveProjectedGuidance", {"guidance_rescale": 0.5}))


def test_autoguidance_routes_the_degraded_network_to_pred_uncond():
    routes = batch_routing(build_guider("AutoGuidance"))
    assert routes == [("pred_cond", "cond", False), ("pred_uncond", "uncond", True)]


def test_apg_default_deviates_as_diffusers_form():
    result = audit_guider("AdaptiveProjectedGuidance", strengths=FAST)
    assert not result.passed
    assert "diffusers' form D_uncond + g * update" in result.diagnosis.summary


def test_every_guider_in_the_table_has_a_verdict():
    assert {name for name, _ in SETTINGS} == set(SUPPORTED)
    # every guider at its defaults, and two settings with known verdicts, at one scale: the table module runs every
    # setting over the full grid (about 3 minutes)
    keep = ({}, {"auto_guidance_layers": [0], "dropout": 1.0}, {"adaptive_projected_guidance_rescale": 0.0})
    chosen = tuple(s for s in SETTINGS if s[1] in keep)
    findings = guider_findings(settings=chosen, strengths=(3.3,), sizes=False, diagnose=False)
    assert len(findings) == len(chosen)
    verdicts = {(f.guider, f.setting): f.verdict for f in findings}
    assert all(v in ("conforms", "deviates", "raises", "deviates and raises") for v in verdicts.values())
    assert verdicts[("ClassifierFreeGuidance", "defaults")] == "conforms"
    assert verdicts[("AutoGuidance", "auto_guidance_layers=[0], dropout=1.0")] == "raises"
    assert verdicts[("AdaptiveProjectedGuidance", "adaptive_projected_guidance_rescale=0.0")] == "conforms"
    assert verdicts[("TangentialClassifierFreeGuidance", "defaults")] == "deviates"  # its SVD runs in float32
    # its values are autoguidance's when fed the weak prediction at c, but it runs the weak network on the negative
    # conditioning: a routing finding the table adds to the value audit
    auto = next(f for f in findings if (f.guider, f.setting) == ("AutoGuidance", "defaults"))
    assert auto.verdict == "deviates" and "unconditional (negative) conditioning" in auto.diagnosis
    table = findings_table(findings)
    assert table.count("\n") == len(findings) + 1


def test_the_worked_example_of_docs_audit_md():
    """docs/audit.md's suite for a user's project, as written there (a doc that cannot drift from the code)."""
    from diffusers import DDIMScheduler
    from diffusers.guiders import ClassifierFreeGuidance

    from verify.testing import assert_guider_conforms, assert_scheduler_law

    assert assert_guider_conforms(ClassifierFreeGuidance(guidance_scale=5.0)).passed
    assert_scheduler_law(DDIMScheduler(clip_sample=False), steps=50, max_bias=0.05)
    with pytest.raises(AssertionError, match="non-finite output"):  # the comment's claim: NaN at zero spread
        assert_guider_conforms(ClassifierFreeGuidance(guidance_rescale=0.7))
    with pytest.raises(AssertionError):  # DDIMScheduler() itself: the clip_sample default
        assert_scheduler_law(DDIMScheduler(), steps=50, max_bias=0.05, settings=False, convergence=False)
