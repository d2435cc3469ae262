r"""The diagnosis: what an implementation that fails its audit computes instead.

Each **variant** is an :class:`~verify.conformance.implementations.Implementation` built from the reference, wrong in
one known way. The diagnosis replays every failing check's calls (value, shape, dtype, batch-order-free state and
degenerate checks) through each variant and keeps those within the rounding bound of the implementation's outputs
everywhere (the bound of :func:`~verify.conformance.reference.rounding_bound`, computed for the variant itself, since
its sensitivity differs from the reference's). The families:

* **conventions**: the guidance scale read as Ho & Salimans' w (``guidance_scale + 1``: diffusers'
  ``use_original_formulation``), ``w`` passed where ``guidance_scale`` is expected (``guidance_scale - 1``), the
  scale rounded to float32;
* **branches**: every pair of branches swapped;
* **spaces**: the rule applied in each other prediction space it accepts (its predictions converted there and its
  result converted back);
* **axes**: per-sample reductions (norms, inner products, standard deviations) taken over the last axis only, over
  the channel axis only, or over the whole batch (which mixes samples);
* **precision**: the rule computed in float32;
* **state**: memory kept across runs (never reset);
* **no guidance**: the conditional or the unconditional branch itself;
* **documented variants** the rule's class lists in :meth:`verify.rules.Rule.variants` (a popular implementation's
  formula where it differs from the paper's);
* **other rules**: every other registered rule with the same branches at the same guidance scale.
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any

import torch

from verify import rules
from verify.rules import GuidanceState, StepContext

from .implementations import Call, Implementation, RuleImplementation, Wrapper
from .reference import PROBE_STRENGTH, Reference, rounding_bound

__all__ = ["variants", "diagnose"]

Tensor = torch.Tensor
F64, F32 = torch.float64, torch.float32
#: a variant is examined closely only if it is within this factor of the reference's bound everywhere (a cheap
#: screen: the variant's own bound differs from the reference's by the ratio of their sensitivities)
SCREEN = 1e4


class _Shifted(Wrapper):
    def __init__(self, reference: Reference, change, label: str):
        super().__init__(reference.implementation(), label)
        self.change = change

    def __call__(self, call: Call) -> Any:
        params = dict(call.params)
        params["guidance_scale"] = self.change(float(params["guidance_scale"]))
        return self.inner(call.replace(params=params))


class _Swapped(Wrapper):
    def __init__(self, reference: Reference, a: str, b: str, label: str):
        super().__init__(reference.implementation(), label)
        self.a, self.b = a, b

    def __call__(self, call: Call) -> Any:
        preds = dict(call.preds)
        preds[self.a], preds[self.b] = call.preds[self.b], call.preds[self.a]
        return self.inner(call.replace(preds=preds))


class _Axes(Wrapper):
    """Per-sample reductions over the wrong axes: the samples re-batched so that a 'row' is what the bug reduces."""

    def __init__(self, reference: Reference, mode: str, label: str):
        super().__init__(reference.implementation(), label)
        self.mode = mode

    def _fold(self, t: Tensor) -> Tensor:
        if self.mode == "batch":
            return t.reshape(1, -1)
        if self.mode == "last":
            return t.reshape(-1, t.shape[-1])
        if t.ndim < 3:  # channel axis of [N, d] is the whole row
            return t
        moved = t.movedim(1, -1)
        return moved.reshape(-1, moved.shape[-1])

    def _unfold(self, t: Tensor, like: Tensor) -> Tensor:
        if self.mode == "channel" and like.ndim >= 3:
            moved = like.movedim(1, -1)
            return t.reshape(moved.shape).movedim(-1, 1)
        return t.reshape(like.shape)

    def __call__(self, call: Call) -> Any:
        like = call.x
        preds = {b: self._fold(p) for b, p in call.preds.items()}
        out = self.inner(call.replace(preds=preds, x=self._fold(call.x)))
        if isinstance(out, tuple):
            return tuple(self._unfold(o, like) for o in out)
        return self._unfold(out, like)


class _Float32(Wrapper):
    precision = F32  # judged with float32's rounding bound

    def __init__(self, reference: Reference, label: str):
        super().__init__(reference.implementation(), label)

    def __call__(self, call: Call) -> Any:
        dtype = next(iter(call.preds.values())).dtype
        out = self.inner(call.replace(preds={b: p.to(F32) for b, p in call.preds.items()}, x=call.x.to(F32)))
        return tuple(o.to(dtype) for o in out) if isinstance(out, tuple) else out.to(dtype)


class _NeverReset(Implementation):
    """Memory kept from run to run, cleared only when the batch's shape changes (what a module-level or
    object-level buffer that is never reset does: the first call of another shape cannot use it)."""

    def __init__(self, reference: Reference, label: str):
        self.inner, self.name, self.shape = reference.implementation(), label, None

    def __call__(self, call: Call) -> Any:
        shape = (tuple(call.x.shape), next(iter(call.preds.values())).dtype)
        if shape != self.shape:
            self.inner.start_run(call.n_steps)
            self.shape = shape
        return self.inner(call)


class _Branch(Implementation):
    def __init__(self, branch: str, label: str):
        self.branch, self.name = branch, label

    def __call__(self, call: Call) -> Any:
        return call.preds[self.branch]


class _OffBelow(Wrapper):
    """Guidance switched off (the conditional branch returned) for guidance scales below ``limit``."""

    def __init__(self, reference: Reference, limit: float, label: str):
        super().__init__(reference.implementation(), label)
        self.limit = limit

    def __call__(self, call: Call) -> Any:
        if float(call.params["guidance_scale"]) < self.limit:
            return call.preds["cond"]
        return self.inner(call)


class _Formula(Implementation):
    """A documented variant of the rule: ``formula(rule, preds, ctx) -> Tensor`` in the rule's space."""

    def __init__(self, reference: Reference, key: str, label: str):
        self.reference, self.key, self.name = reference, key, label
        self.state = GuidanceState()

    def start_run(self, n_steps: int) -> None:
        self.state = GuidanceState()

    def __call__(self, call: Call) -> Any:
        strength = call.params.get("guidance_scale") if self.reference.vary_strength else None
        rule = self.reference.build(strength)
        shape = call.x.shape
        flat = {b: p.reshape(p.shape[0], -1) for b, p in call.preds.items()}
        x = call.x.reshape(shape[0], -1)
        self.state.step = call.step
        if hasattr(rule, "memory_key"):  # one variant, one memory, whatever the strength of the call
            rule.memory_key = f"variant-{id(self)}"
        ctx = StepContext(x, call.t, call.alpha, call.sigma, call.schedule, {}, self.state)
        return rule.variants()[self.key](flat, ctx).reshape(shape)


def variants(reference: Reference) -> list[Implementation]:
    """Every variant of the families in the module docstring, for this reference."""
    rule = reference.build(PROBE_STRENGTH if reference.vary_strength else None)
    name = reference.rule
    out: list[Implementation] = []
    if reference.vary_strength or "guidance_scale" in rule.params:
        out.append(_Shifted(reference, lambda g: g + 1.0, f"`{name}` with guidance_scale + 1 (the scale read as Ho "
                            f"& Salimans' w: diffusers' use_original_formulation)"))
        out.append(_Shifted(reference, lambda g: g - 1.0, f"`{name}` with guidance_scale - 1 (Ho & Salimans' w "
                            f"passed where guidance_scale is expected)"))
        out.append(_Shifted(reference, lambda g: float(torch.tensor(g, dtype=F32)),
                            f"`{name}` with the guidance scale rounded to float32"))
        if "cond" in rule.branches:
            out.append(_OffBelow(reference, 1.0, f"`{name}` with guidance switched off (the cond branch returned) "
                                                  f"for guidance_scale < 1"))
    for a, b in itertools.combinations(rule.branches, 2):
        out.append(_Swapped(reference, a, b, f"`{name}` with the {a} and {b} branches swapped"))
    if rule.linear_weights is None:
        for space in type(rule).spaces:
            if space != rule.space:
                out.append(reference.implementation(space, f"`{name}` applied in {space} space instead of "
                                                           f"{rule.space}"))
        out.append(_Axes(reference, "last", f"`{name}` with its per-sample norms over the last axis only"))
        out.append(_Axes(reference, "channel", f"`{name}` with its per-sample norms over the channel axis (dim 1) "
                                               f"only"))
        out.append(_Axes(reference, "batch", f"`{name}` with its norms over the whole batch (mixes samples)"))
    out.append(_Float32(reference, f"`{name}` computed in float32"))
    if rule.stateful:
        out.append(_NeverReset(reference, f"`{name}` with its memory never reset between runs (kept until the batch "
                                          f"shape changes)"))
    for branch in rule.branches:
        out.append(_Branch(branch, f"the {branch} branch itself (no guidance)"))
    for key in rule.variants():
        out.append(_Formula(reference, key, f"`{name}` as {key}"))
    for other in rules.names():
        if other == name:
            continue
        try:
            built = rules.get(other, **({"guidance_scale": PROBE_STRENGTH} if reference.vary_strength else {}))
        except (TypeError, ValueError):
            continue
        if built.branches != rule.branches:
            continue
        out.append(RuleImplementation(other, space=built.space))
        out[-1].name = f"`{other}` at the same guidance scale"
    return out


def _replay(variant: Implementation, record) -> tuple[list[Any], bool]:
    outs = []
    starts = set(record.runs)
    try:
        with torch.no_grad():
            for i, call in enumerate(record.calls):
                if i in starts:
                    variant.start_run(call.n_steps)
                outs.append(variant(call))
    except Exception:  # noqa: BLE001 - a variant that cannot take these inputs does not match them
        return [], False
    return outs, True


def _within(outputs: list[Any], candidates: list[Any], bounds: list[Any], factor: float) -> bool:
    from .rule_audit import compare, rows64

    for out, cand, bound in zip(outputs, candidates, bounds, strict=True):
        if out is None:
            return False
        scaled = tuple(b * factor for b in bound) if isinstance(bound, tuple) else bound * factor
        ok, _, _ = compare(out, rows64(cand), scaled)
        if not ok:
            return False
    return True


def _bounds_for(variant: Implementation, record) -> list[Any] | None:
    from .rule_audit import _as_reference_input

    try:  # on a copy: the bound runs the variant, which must not advance the memory the replays carry
        dtype = F32 if F32 in (record.dtype, getattr(variant, "precision", F64)) else F64
        return rounding_bound(copy.deepcopy(variant), [_as_reference_input(c) for c in record.calls], dtype,
                              record.amplification, record.linear, check_derivative=False)
    except Exception:  # noqa: BLE001 - not differentiable: fall back to the reference's bound
        return None


def diagnose(audit, failing, extra: tuple[Implementation, ...] = ()) -> Any:
    """The :class:`~verify.conformance.rule_audit.Diagnosis` of a failed audit (``audit`` is the internal run).

    A variant **matches** when it reproduces every judged run (value, shape, dtype, state and degenerate checks); it
    matches **but for the degenerate rows** when it reproduces every other run. Otherwise the closest variants are
    ranked by the failing checks they explain (a variant that only agrees where the implementation already agrees
    with the reference, such as a float32 computation judged with float32's looser bound, explains nothing)."""
    from .rule_audit import Diagnosis

    failing_names = {c.name for c in failing}
    records = list(audit.records)
    failed_records = [r for r in records if r.name in failing_names]
    if not failed_records:
        kinds = sorted({c.kind for c in failing})
        return Diagnosis((), f"only {', '.join(kinds)} checks fail; no value differs from the reference")
    if all(r.kind == "degenerate" for r in failed_records):
        labels = "; ".join(f"{r.name.split(': ', 1)[-1]}" for r in failed_records)
        details = {c.name: c.detail for c in failing}
        first = details.get(failed_records[0].name, "")
        return Diagnosis((), f"agrees with the reference everywhere but on degenerate rows ({labels}): {first}")
    scores = []
    matches = []
    partial = []  # variants that explain every run but the degenerate rows'
    for variant in [*variants(audit.reference), *extra]:
        matched, explained = 0, 0
        for record in records:
            outs, ok = _replay(variant, record)
            screen = SCREEN * (2.0**29 if getattr(variant, "precision", F64) == F32 else 1.0)  # u32 / u64
            if ok and _matches(variant, record, outs, screen):
                matched += 1
                explained += record.name in failing_names
                continue
            if record.kind != "degenerate" and record.name in failing_names and explained == 0:
                break  # it cannot match, nor explain the first failing run it met: not a candidate
        scores.append((variant.name, explained, len(failed_records)))
        if matched == len(records):
            matches.append(variant.name)
        elif explained and _explains(variant, records, "degenerate"):
            partial.append(variant.name)
    scores.sort(key=lambda s: -s[1])
    if matches:
        summary = "matches " + " or ".join(matches)
    elif partial:
        summary = ("matches " + " or ".join(partial) + " everywhere but on the degenerate rows (zero norm or zero "
                   "spread), where it differs")
    else:
        best = [s for s in scores if s[1] > 0][:3]
        summary = "no known variant explains every failure" + (
            "; closest: " + ", ".join(f"{n} (explains {m} of {t} failing checks)" for n, m, t in best)
            if best else "")
    return Diagnosis(tuple(matches), summary, tuple(scores[:5]))


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, tuple):
        return tuple(x + y for x, y in zip(a, b, strict=True))
    return a + b


def _explains(variant: Implementation, records, skip_kind: str) -> bool:
    """Whether ``variant`` matches every record but those of ``skip_kind`` (re-checked without early exit)."""
    for record in records:
        if record.kind == skip_kind:
            continue
        outs, ok = _replay(variant, record)
        if not ok or not _matches(variant, record, outs, math.inf):
            return False
    return True


def _matches(variant: Implementation, record, outs: list[Any], screen: float) -> bool:
    """Whether the variant's outputs are within rounding of the implementation's: first against the reference's
    bound (enough for most variants, whose sensitivity is the reference's), then, if within ``screen`` times that,
    against the variant's own bound plus the reference's (computed only then: it differentiates the variant)."""
    if _within(record.outputs, outs, record.bounds, 1.0):
        return True
    if not _within(record.outputs, outs, record.bounds, screen):
        return False
    own = _bounds_for(variant, record) or record.bounds
    both = [_add(a, b) for a, b in zip(own, record.bounds, strict=True)]
    return _within(record.outputs, outs, both, 1.0)
