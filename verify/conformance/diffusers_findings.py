r"""What the audit finds in diffusers' guiders: every guider with an analytic counterpart, at its defaults and over
its documented parameters, against the paper's rule (:func:`~verify.conformance.diffusers_guider.counterpart`).

``python -m verify.conformance.diffusers_findings`` prints the table (:func:`findings_table`); each row is a
:class:`Finding`:

* **verdict**: ``conforms`` (every check of :func:`~verify.conformance.audit_rule` passes), ``deviates`` (a value,
  shape, dtype, batch, state or degenerate check fails), ``raises`` (the guider raises on inputs the rule takes, and
  every other failure is that), ``deviates and raises`` (both);
* **diagnosis**: the audit's (:mod:`verify.conformance.variants`: among them the documented diffusers forms each
  rule's class lists in its ``variants()``);
* **size**: the worst ratio of the error to the float64 rounding bound over the audit's checks; the largest
  per-sample relative deviation :math:`\max_n \lVert \tilde y_n - y_n\rVert / \lVert y_n\rVert` of the guided
  prediction from the rule's on the value grid at guidance scales 3.3 and 7.5; and the worst ratio to the
  reference's **float32** rounding bound there (at most 1: the deviation is what computing in float32 may cost, a
  precision choice rather than another formula; both bounds are
  :func:`~verify.conformance.reference.rounding_bound`, derived in its docstring);
* **spaces**: the prediction spaces in which the guider, fed that space, gives the rule's guided prediction;
* **routing**: what each model evaluation the guider asks for is conditioned on (:func:`~verify.conformance.\
diffusers_guider.batch_routing`): the identifiers alone do not say that ``AutoGuidance`` runs its degraded network
  on the *negative* conditioning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from . import grid
from .diffusers_guider import DiffusersGuider, audit_guider, batch_routing, build_guider, counterpart
from .implementations import Call, Implementation
from .reference import PROBE_STRENGTH, Reference, rounding_bound
from .rule_audit import WINDOW_STEPS, _as_reference_input, compare

__all__ = ["Finding", "SETTINGS", "guider_findings", "findings_table", "main"]

Tensor = torch.Tensor
F64, F32 = torch.float64, torch.float32

#: (guider, constructor keyword arguments) audited: the defaults and the documented parameters
SETTINGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("ClassifierFreeGuidance", {}),
    ("ClassifierFreeGuidance", {"use_original_formulation": True}),
    ("ClassifierFreeGuidance", {"guidance_rescale": 0.7}),
    ("ClassifierFreeGuidance", {"start": 0.2, "stop": 0.8}),
    ("AdaptiveProjectedGuidance", {}),
    ("AdaptiveProjectedGuidance", {"eta": 0.0}),
    ("AdaptiveProjectedGuidance", {"adaptive_projected_guidance_momentum": -0.5}),
    ("AdaptiveProjectedGuidance", {"adaptive_projected_guidance_rescale": 0.0}),
    ("AdaptiveProjectedGuidance", {"adaptive_projected_guidance_norm_dim": 1}),
    ("AdaptiveProjectedGuidance", {"use_original_formulation": True}),
    ("ClassifierFreeZeroStarGuidance", {}),
    ("ClassifierFreeZeroStarGuidance", {"zero_init_steps": 2}),
    ("MagnitudeAwareGuidance", {}),
    ("MagnitudeAwareGuidance", {"alpha": 2.0}),
    ("TangentialClassifierFreeGuidance", {}),
    ("AutoGuidance", {}),
    ("AutoGuidance", {"auto_guidance_layers": [0], "dropout": 1.0}),
)
#: the guidance scales of the size columns (off every endpoint; 7.5 is diffusers' default)
SIZE_STRENGTHS: tuple[float, ...] = (3.3, 7.5)


@dataclass(frozen=True)
class Finding:
    """One guider setting audited against its counterpart (see the module docstring)."""

    guider: str
    setting: str
    rule: str
    verdict: str
    diagnosis: str
    worst_ratio: float
    relative_deviation: float
    float32_ratio: float
    spaces: tuple[str, ...]
    summary: str
    routing: str
    notes: tuple[str, ...] = field(default_factory=tuple)


# ----------------------------------------------------------------------------------------------------------------
# Sizes
# ----------------------------------------------------------------------------------------------------------------
def _runs(reference: Reference, seed: int, strengths: tuple[float, ...]) -> list[list[Call]]:
    """The value grid's runs at ``strengths`` (3 steps for a stateful rule), plus the highdim bulk case as
    ``[B, C, H, W]`` images (norms over the wrong axes show there)."""
    probe = reference.build(PROBE_STRENGTH)
    steps = 3 if probe.stateful else 1
    window = reference.guided_steps  # place the calls where the reference guides (as the audit does)
    first = next(i for i in range(WINDOW_STEPS) if window is None or window(i, WINDOW_STEPS))
    runs = []
    for case in grid.value_cases(probe.branches, seed):
        shapes = [None]
        if case.world == "highdim" and case.region == "bulk" and case.schedule_name == "vp-linear" and case.t == 0.3:
            shapes.append(grid.SHAPES["[B, C, H, W]"])
        for shape in shapes:
            for g in strengths:
                params = reference.call_params(g)
                preds = grid.to_space(case, case.eps, probe.space)
                x = case.x
                if shape is not None:
                    preds = {b: p.reshape(p.shape[0], *shape) for b, p in preds.items()}
                    x = x.reshape(x.shape[0], *shape)
                runs.append([Call(preds, probe.space, x, case.t, case.alpha, case.sigma, case.schedule, first + s,
                                  max(WINDOW_STEPS, first + steps), params) for s in range(steps)])
    return runs


def _outputs(impl: Implementation, calls: list[Call]) -> list[Any] | None:
    impl.start_run(len(calls))
    try:
        with torch.no_grad():
            return [impl(c.copy()) for c in calls]
    except Exception:  # noqa: BLE001 - an implementation that raises has no size here; its audit says it raises
        return None


def _sizes(adapter: DiffusersGuider, reference: Reference, seed: int, strengths: tuple[float, ...]
           ) -> tuple[float, float]:
    """(largest per-sample relative deviation, worst ratio to the float32 rounding bound)."""
    rel, ratio32 = 0.0, 0.0
    for calls in _runs(reference, seed, strengths):
        outs = _outputs(adapter, calls)
        if outs is None:
            return math.inf, math.inf
        ref_calls = [_as_reference_input(c) for c in calls]
        refs = _outputs(reference.implementation(), ref_calls)
        g = float(calls[0].params["guidance_scale"])
        bounds32 = rounding_bound(reference.implementation(), ref_calls, F32, reference.amplification(g),
                                  reference.build(g).linear_weights is not None)
        for out, ref, b32 in zip(outs, refs, bounds32, strict=True):
            o = out.detach().to(F64).reshape(ref.shape)
            err = (o - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(torch.finfo(F64).tiny)
            rel = max(rel, float(err.max()))
            ratio32 = max(ratio32, compare(o, ref, b32)[1])
    return rel, ratio32


# ----------------------------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------------------------
def _setting_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items()) or "defaults"


def _routing_text(guider: Any) -> str:
    try:
        routes = batch_routing(guider)
    except Exception as err:  # noqa: BLE001 - a guider that cannot prepare its models: say so
        return f"raises {type(err).__name__}: {err}"
    return "; ".join(f"{ident} <- {cond}" + (" (degraded network)" if degraded else "")
                     for ident, cond, degraded in routes)


def _misrouted_weak_model(guider: Any, rule: str) -> str:
    """For a counterpart with a weak branch (autoguidance: the weak model at the same condition c), a finding when
    the guider runs its degraded network on another conditioning than the conditional one; "" otherwise. The value
    audit cannot see this: it feeds each identifier the branch the identifiers name."""
    from verify import rules

    if "weak" not in rules.get(rule, **({"guidance_scale": 2.0})).branches:
        return ""
    try:
        routes = batch_routing(guider)
    except Exception:  # noqa: BLE001 - reported by the routing column
        return ""
    wrong = [ident for ident, conditioning, degraded in routes if degraded and conditioning != "cond"]
    if not wrong:
        return ""
    return (f"in a pipeline its degraded (weak) network is evaluated on the unconditional (negative) conditioning "
            f"({', '.join(wrong)}), where the paper evaluates the weak model on the condition c: a weak-unconditional "
            f"rule, not autoguidance (the values above are the rule's when fed the weak model's prediction at c)")


def _verdict(audit) -> str:
    failing = audit.failures
    if not failing:
        return "conforms"
    raising = [c for c in failing if c.name == "never raises" or "raised" in c.detail]
    if not raising:
        return "deviates"
    # every other failure is a raising call (or the determinism of two raising calls): it raises, nothing else
    others = [c for c in failing if c not in raising and c.name != "deterministic"]
    return "raises" if not others else "deviates and raises"


def guider_findings(progress: bool = False, *, settings: tuple[tuple[str, dict[str, Any]], ...] = SETTINGS,
                    strengths: Any = "grid", seed: int = 0, sizes: bool = True,
                    diagnose: bool = True) -> list[Finding]:
    """Audit every setting of ``settings`` (default :data:`SETTINGS`) and measure its deviation (see the module
    docstring). ``strengths`` as :func:`~verify.conformance.audit_rule`; the size columns use
    :data:`SIZE_STRENGTHS` (those of ``strengths`` when it is a sequence); ``sizes=False`` skips them (NaN) and
    ``diagnose=False`` the audit's diagnosis, for a quick verdict."""
    sizes_at = SIZE_STRENGTHS if strengths in ("grid", None) else tuple(float(s) for s in strengths)
    findings = []
    for name, params in settings:
        if progress:
            print(f"auditing {name}({_setting_text(params)})", flush=True)
        guider = build_guider(name, params)
        match = counterpart(guider)
        audit = audit_guider(guider, strengths=strengths, seed=seed, diagnose=diagnose)
        reference = Reference(match.rule, match.params, True, match.guided_steps)
        rel, ratio32 = (_sizes(DiffusersGuider(guider), reference, seed, sizes_at) if sizes
                        else (math.nan, math.nan))
        diagnosis = "" if audit.diagnosis is None else audit.diagnosis.summary
        worst = max([r for r in audit.worst_ratio.values()] or [0.0])
        if any(c.name == "never raises" for c in audit.failures):
            raised = next(c for c in audit.failures if c.name == "never raises")
            diagnosis = (diagnosis + "; " if diagnosis else "") + f"raises on {raised.detail}"
        ref_params = ", ".join(f"{k}={v!r}" for k, v in match.params.items())
        verdict = _verdict(audit)
        misrouted = _misrouted_weak_model(guider, match.rule)
        if misrouted:
            verdict = "deviates" if verdict == "conforms" else verdict
            diagnosis = (diagnosis + "; " if diagnosis else "") + misrouted
        findings.append(Finding(name, _setting_text(params), f"{match.rule}({ref_params})", verdict,
                                diagnosis or "-", worst, rel, ratio32,
                                tuple(s.space for s in audit.spaces if s.agrees), audit.summary(),
                                _routing_text(guider), (match.note,)))
    return findings


def _number(x: float) -> str:
    if x == 0.0:
        return "0"
    if math.isnan(x):
        return "-"
    if not math.isfinite(x):
        return "inf"
    return f"{x:.2g}"


def findings_table(findings: list[Finding]) -> str:
    """The Markdown table of ``findings`` (one row per guider setting)."""
    head = ("| guider | setting | paper's rule | verdict | diagnosis | worst / f64 bound | relative deviation | "
            "worst / f32 bound | spaces that agree | model evaluations |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for f in findings:
        cells = [f.guider, f.setting, f"`{f.rule}`", f"**{f.verdict}**", f.diagnosis.replace("|", "\\|"),
                 _number(f.worst_ratio), _number(f.relative_deviation), _number(f.float32_ratio),
                 ", ".join(f.spaces) or "none", f.routing]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    """Print the table (``python -m verify.conformance.diffusers_findings``)."""
    import argparse

    argparse.ArgumentParser(prog="python -m verify.conformance.diffusers_findings",
                            description="audit every diffusers guider setting and print the table").parse_args(argv)
    print(findings_table(guider_findings(progress=False)))


if __name__ == "__main__":
    main()
