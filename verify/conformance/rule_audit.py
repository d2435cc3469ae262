r"""``audit_rule``: any implementation against any registered rule, with its contracts and a diagnosis.

What is checked (every check is a :class:`Check` ``(name, passed, detail)``; the ``kind`` says which family):

* **value** - the implementation's output against the float64 reference on the grid of
  :mod:`verify.conformance.grid` (2 worlds x 5 noise levels x bulk/tails x 6 strengths = 120 cases for a rule with a
  ``guidance_scale``), in the reference rule's own prediction space, within :func:`~verify.conformance.reference.\
rounding_bound`. A stateful reference (APG's momentum, CFG-Zero*'s zero-init) is checked over a run of 3 steps on
  the same inputs, every step;
* **shape** - the same points passed as ``[B, C, H, W]`` images and ``[B, L, D]`` packed latents (the 64 features of
  ``highdim``): the output must be the reference's, reshaped (norms over the wrong axes fail here);
* **dtype** - float32 inputs: a float32 output within the float32 rounding bound;
* **batch** - each sample alone (batch size 1) and the batch reversed: every row's output must be what it was in
  the batch (one sample must not depend on another);
* **state** - a sampling run of six steps (fresh points at falling noise), run twice: each run must match the
  reference's run, and the second the first (memory reset between runs; none leaking across them);
* **contract** - over every call: no exception, a tensor back, shape and dtype kept, finite, inputs untouched
  (bitwise), determinism (a repeated call is bitwise equal), and no output that *is* an input tensor (aliasing: a
  note, not a finding, for implementations whose API documents it);
* **degenerate** - zero-norm and zero-spread rows (cond = uncond, a zero branch, constant rows): the output must be
  finite and equal to the reference's defined value;
* **space** (report) - the implementation fed eps, x0, v and velocity predictions, its output converted back to eps
  and compared with the reference's eps: which spaces agree. For a linear rule all do; for a non-linear rule only
  the reference's own space is the paper's rule. It does not decide ``passed``: applying a formula in another space
  is a choice, reported so that a pipeline that feeds eps to an x0-space rule knows what it computes.

When a value, shape, batch, dtype or state check fails, :func:`verify.conformance.variants.diagnose` searches the
known variants (conventions, swapped branches, other spaces, other axes, float32, state leaks, the rule's documented
variants and the other registered rules) for what the implementation matches instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from verify import rules
from verify.rules import SPACES

from . import grid
from .implementations import Call, Implementation, as_implementation, strength_parameter
from .reference import PROBE_STRENGTH, Reference, rounding_bound

__all__ = ["Check", "SpaceAgreement", "Diagnosis", "RuleAudit", "audit_rule", "Outcome", "evaluate", "compare"]

Tensor = torch.Tensor
F64, F32 = torch.float64, torch.float32
#: the length of the sampling run the one-case checks are placed in (a step window is checked inside it)
WINDOW_STEPS = 10
#: the reference's rounding bounds by (rule, params, window, seed, check): the same for every implementation audited
#: against one reference, so a suite of audits computes them once
_BOUNDS: dict[tuple, list[Any]] = {}


@dataclass(frozen=True)
class Check:
    """One check: unpacks as ``(name, passed, detail)``; ``kind`` is its family; a ``note`` never fails the audit."""

    name: str
    passed: bool
    detail: str
    kind: str = "value"
    note: bool = False

    def __iter__(self):
        return iter((self.name, self.passed, self.detail))


@dataclass(frozen=True)
class SpaceAgreement:
    """Whether the implementation, fed predictions in ``space``, gives the reference's guided eps."""

    space: str
    agrees: bool
    worst_ratio: float


@dataclass(frozen=True)
class Diagnosis:
    """What the implementation matches instead: ``matches`` (variants that explain every failing check),
    ``summary`` (one sentence), ``candidates`` (label, checks matched, checks compared) of the closest ones."""

    matches: tuple[str, ...]
    summary: str
    candidates: tuple[tuple[str, int, int], ...] = ()


@dataclass(frozen=True)
class RuleAudit:
    """The outcome of :func:`audit_rule`."""

    implementation: str
    reference: dict[str, Any]
    checks: tuple[Check, ...]
    spaces: tuple[SpaceAgreement, ...]
    diagnosis: Diagnosis | None
    worst_ratio: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed or c.note for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed and not c.note]

    @property
    def notes(self) -> list[Check]:
        return [c for c in self.checks if not c.passed and c.note]

    def summary(self) -> str:
        n_fail = len(self.failures)
        by_kind = {}
        for c in self.failures:
            by_kind[c.kind] = by_kind.get(c.kind, 0) + 1
        kinds = ", ".join(f"{k} {n}" for k, n in by_kind.items())
        return f"{len(self.checks) - n_fail} passed, {n_fail} failed" + (f" ({kinds})" if kinds else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "implementation": self.implementation,
            "reference": self.reference,
            "summary": self.summary(),
            "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail, "kind": c.kind, "note": c.note}
                       for c in self.checks],
            "spaces": [asdict(s) for s in self.spaces],
            "diagnosis": None if self.diagnosis is None else {
                "matches": list(self.diagnosis.matches), "summary": self.diagnosis.summary,
                "candidates": [list(c) for c in self.diagnosis.candidates]},
        }

    def report(self, *, all_checks: bool = False) -> str:
        """What the command line prints: the reference, the failing checks (every check with ``all_checks``), the
        notes, the spaces, the diagnosis and the summary."""
        ref = self.reference
        lines = [f"audit of {self.implementation} against {ref['rule']}({_params_text(ref['params'])})",
                 f"  reference: {ref['source']}"]
        for c in self.checks:
            if all_checks or not c.passed:
                mark = "ok  " if c.passed else ("note" if c.note else "FAIL")
                lines.append(f"{mark} [{c.kind}] {c.name}: {c.detail}")
        agree = [s.space for s in self.spaces if s.agrees]
        differ = [s.space for s in self.spaces if not s.agrees]
        if self.spaces:
            lines.append(f"spaces: agrees with the reference when fed {', '.join(agree) or 'none'}"
                         + (f"; differs when fed {', '.join(differ)}" if differ else ""))
        if self.diagnosis is not None:
            lines.append(f"diagnosis: {self.diagnosis.summary}")
        lines.append(("PASSED " if self.passed else "FAILED ") + self.summary())
        return "\n".join(lines)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, default=str)


def _params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items())


# ----------------------------------------------------------------------------------------------------------------
# Calling an implementation and judging what comes back
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One call: the output (or the error), and the contract problems seen."""

    output: Any = None
    error: str | None = None
    problems: dict[str, str] = field(default_factory=dict)


def _short(text: Any, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _storage(t: Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except Exception:  # noqa: BLE001 - tensor subclasses without storage
        return -1


def invoke(impl: Implementation, call: Call) -> Outcome:
    """Call ``impl`` on copies of the inputs and record every contract problem."""
    mine = call.copy()
    copies, x_copy = mine.preds, mine.x
    try:
        out = impl(mine)
    except Exception as exc:  # noqa: BLE001 - an implementation that raises fails its checks, it does not stop them
        return Outcome(error=f"raised {type(exc).__name__}: {_short(exc)}", problems={"raises": _short(exc)})
    problems: dict[str, str] = {}
    for name, before, after in [*((f"preds[{b!r}]", call.preds[b], copies[b]) for b in copies), ("x", call.x, x_copy)]:
        if not torch.equal(before, after):
            problems["inputs untouched"] = f"{name} modified in place"
    parts = out if isinstance(out, tuple) else (out,)
    shape, dtype = next(iter(call.preds.values())).shape, next(iter(call.preds.values())).dtype
    for part in parts:
        if not isinstance(part, Tensor):
            problems["returns a tensor"] = f"returned {type(part).__name__}"
            continue
        if part.shape != shape:
            problems["shape kept"] = f"shape {list(part.shape)} for inputs {list(shape)}"
        if part.dtype != dtype:
            problems["dtype kept"] = f"dtype {part.dtype} for {dtype} inputs"
        if not bool(torch.isfinite(part.detach()).all()):
            problems["finite"] = "non-finite output"
        pointers = {_storage(p) for p in [*copies.values(), x_copy]}
        if part is parts[0] and _storage(part) in pointers:  # a re-noise eps is an input branch by definition
            problems["no aliasing"] = "the output is (a view of) an input tensor"
    return Outcome(output=out, problems=problems)


def compare(out: Any, ref: Any, tol: Any) -> tuple[bool, float, str]:
    """(passed, worst |error| / bound, detail) of an output against the reference and its bound."""
    outs = out if isinstance(out, tuple) else (out,)
    refs = ref if isinstance(ref, tuple) else (ref,)
    tols = tol if isinstance(tol, tuple) else (tol,)
    if len(outs) != len(refs):
        what = "a (guided, renoise) pair" if len(refs) == 2 else "one tensor"
        return False, math.inf, f"returned {len(outs)} value(s); the reference returns {what}"
    worst, detail = 0.0, ""
    for o, r, b in zip(outs, refs, tols, strict=True):
        if not isinstance(o, Tensor):
            return False, math.inf, f"returned {type(o).__name__}, not a tensor"
        if o.numel() != r.numel():
            return False, math.inf, f"shape {list(o.shape)}, expected {list(r.shape)}"
        o = o.detach().to(F64).reshape(r.shape)
        if not (bool(torch.isfinite(r).all()) and bool(torch.isfinite(b).all())):
            return False, math.inf, "the reference or its bound is not finite here: nothing can be judged"
        err = (o - r.detach()).abs()
        if not bool(torch.isfinite(o).all()):
            return False, math.inf, f"non-finite output where the reference is {_first_bad(o, r)}"
        ratio = err / b
        ratio = torch.where(err == 0, torch.zeros_like(ratio), ratio)
        here = float(ratio.max())
        if here > worst:
            worst = here
            idx = int(ratio.argmax())
            detail = (f"max |error| {float(err.max()):.3g}, {here:.3g}x the rounding bound (element {idx}: "
                      f"{float(o.flatten()[idx]):.6g} vs {float(r.detach().flatten()[idx]):.6g})")
    return worst <= 1.0, worst, detail or "exact"


def _first_bad(o: Tensor, r: Tensor) -> str:
    idx = int((~torch.isfinite(o)).flatten().nonzero()[0, 0])
    return f"{float(r.detach().flatten()[idx]):.6g}"


def evaluate(impl: Implementation, calls: list[Call]) -> list[Outcome]:
    """One sampling run of ``impl`` over ``calls``."""
    impl.start_run(len(calls))
    return [invoke(impl, c) for c in calls]


def _reference_outputs(reference: Reference, calls: list[Call]) -> list[Any]:
    ev = reference.implementation()
    ev.start_run(len(calls))
    with torch.no_grad():  # on copies: the reference's outputs (the cond branch outside a window) are kept
        return [ev(c.copy()) for c in calls]


# ----------------------------------------------------------------------------------------------------------------
# The audit
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Record:
    """One judged run, kept for the diagnosis: its calls, the implementation's outputs and the reference's bounds
    (computed in ``dtype`` at ``strength``)."""

    kind: str
    name: str
    calls: list[Call]
    outputs: list[Any]
    bounds: list[Any]
    dtype: torch.dtype
    amplification: float
    linear: bool = False
    #: where each sampling run starts in ``calls`` (one run unless given)
    runs: tuple[int, ...] = (0,)


class _Audit:
    def __init__(self, impl: Implementation, reference: Reference, strengths: tuple[float | None, ...], seed: int,
                 progress: Callable[[str], None] | None):
        self.impl, self.reference, self.strengths, self.seed = impl, reference, strengths, seed
        self.progress = progress
        probe = self.reference.build(None if strengths == (None,) else PROBE_STRENGTH if PROBE_STRENGTH in strengths
                                     else strengths[-1])
        self.probe_strength = None if strengths == (None,) else float(probe.params["guidance_scale"])
        window = reference.guided_steps
        guided = [i for i in range(WINDOW_STEPS) if window is None or window(i, WINDOW_STEPS)]
        if not guided:
            raise ValueError(f"guided_steps: the reference guides on none of the {WINDOW_STEPS} steps of a run")
        self.first_step = guided[0]
        self.branches, self.space, self.stateful = probe.branches, probe.space, probe.stateful
        self.linear = probe.linear_weights is not None
        self.checks: list[Check] = []
        self.ratios: dict[str, float] = {}
        self.contracts: dict[str, list[str]] = {}
        self.records: list[Record] = []

    # -- helpers ----------------------------------------------------------------------------------------------------
    def _steps(self, count: int, run: bool) -> list[tuple[int, int]]:
        """(step, n_steps) of each call: a whole run (``run``), or ``count`` steps of a run of :data:`WINDOW_STEPS`
        from the first step the reference guides on (so that a step window does not make a check compare the cond
        branch with itself)."""
        if run:
            return [(i, count) for i in range(count)]
        return [(self.first_step + i, max(WINDOW_STEPS, self.first_step + count)) for i in range(count)]

    def _calls(self, cases: list[grid.Case], strength: float | None, *, dtype=F64, shape: tuple[int, ...] | None = None,
               space: str | None = None, rows: slice | list[int] | None = None, run: bool = False) -> list[Call]:
        space = space or self.space
        params = self.reference.call_params(strength)
        calls = []
        for (step, n_steps), case in zip(self._steps(len(cases), run), cases, strict=True):
            preds = grid.to_space(case, case.eps, space)
            x = case.x
            if rows is not None:
                preds, x = {b: p[rows] for b, p in preds.items()}, x[rows]
            if shape is not None:
                preds = {b: p.reshape(p.shape[0], *shape) for b, p in preds.items()}
                x = x.reshape(x.shape[0], *shape)
            preds = {b: p.to(dtype).clone() for b, p in preds.items()}  # never the grid's cached tensors
            calls.append(Call(preds, space, x.to(dtype).clone(), case.t, case.alpha, case.sigma, case.schedule,
                              step, n_steps, params))
        return calls

    def _note_contracts(self, outcomes: list[Outcome], where: str) -> None:
        for o in outcomes:
            for key, problem in o.problems.items():
                self.contracts.setdefault(key, []).append(f"{where}: {problem}")

    def _judge(self, kind: str, name: str, calls: list[Call], outcomes: list[Outcome], strength: float | None,
               expect_dtype=F64) -> bool:
        """Compare a run's outcomes with the reference's (rounding bound in ``expect_dtype``), add one check."""
        ref_calls = [_as_reference_input(c) for c in calls]
        refs = _reference_outputs(self.reference, ref_calls)
        key = (self.reference.rule, repr(sorted(self.reference.params.items())), self.reference.guided_steps,
               self.seed, kind, name, expect_dtype, repr(strength), self.first_step)
        bounds = _BOUNDS.get(key)
        if bounds is None:
            bounds = rounding_bound(self.reference.implementation(), ref_calls, expect_dtype,
                                    self.reference.amplification(strength), self.linear,
                                    check_derivative=kind != "degenerate")
            if len(_BOUNDS) > 4096:
                _BOUNDS.clear()
            _BOUNDS[key] = bounds
        worst, detail, ok = 0.0, "exact", True
        for step, (o, r, b) in enumerate(zip(outcomes, refs, bounds, strict=True)):
            if o.error is not None:
                ok, worst, detail = False, math.inf, o.error
                break
            good, ratio, text = compare(o.output, r, b)
            if ratio > worst:
                worst, detail = ratio, (f"step {step}: {text}" if len(calls) > 1 else text)
            ok = ok and good
        self.checks.append(Check(name, ok, detail, kind))
        self.ratios[name] = worst
        self.records.append(Record(kind, name, calls, [o.output for o in outcomes], bounds, expect_dtype,
                                   self.reference.amplification(strength), self.linear))
        return ok

    def _step(self, what: str) -> None:
        if self.progress is not None:
            self.progress(what)

    # -- the families -------------------------------------------------------------------------------------------------
    def values(self) -> None:
        steps = 3 if self.stateful else 1
        for case in grid.value_cases(self.branches, self.seed):
            for strength in self.strengths:
                name = f"{case.label}" + ("" if strength is None else f" g={strength:g}")
                self._step(f"value {name}")
                calls = self._calls([case] * steps, strength)
                outcomes = evaluate(self.impl, calls)
                self._note_contracts(outcomes, name)
                self._judge("value", name, calls, outcomes, strength)

    def _probe_cases(self) -> list[grid.Case]:
        cases = grid.value_cases(self.branches, self.seed)
        wanted = (("highdim", "vp-linear", 0.3), ("ring2d", "edm", 0.9))  # the image-sized world first
        return [c for key in wanted for c in cases if c.region == "bulk" and (c.world, c.schedule_name, c.t) == key]

    def shapes(self) -> None:
        case = self._probe_cases()[0]
        steps = 3 if self.stateful else 1
        for label, shape in grid.SHAPES.items():
            if len(shape) == 1:
                continue
            name = f"{case.label} g={self.probe_strength} as {label} {list(shape)}"
            self._step(f"shape {name}")
            calls = self._calls([case] * steps, self.probe_strength, shape=shape)
            outcomes = evaluate(self.impl, calls)
            self._note_contracts(outcomes, name)
            self._judge("shape", name, calls, outcomes, self.probe_strength)

    def dtypes(self) -> None:
        for case in self._probe_cases():
            name = f"{case.label} g={self.probe_strength} float32"
            self._step(f"dtype {name}")
            calls = self._calls([case] * (3 if self.stateful else 1), self.probe_strength, dtype=F32)
            outcomes = evaluate(self.impl, calls)
            self._note_contracts(outcomes, name)
            self._judge("dtype", name, calls, outcomes, self.probe_strength, expect_dtype=F32)

    def batch(self) -> None:
        case = self._probe_cases()[0]
        full = evaluate(self.impl, self._calls([case], self.probe_strength))[0]
        self._note_contracts([full], f"{case.label} full batch")
        problems = []
        n = case.x.shape[0]
        order = list(range(n - 1, -1, -1))
        variants = [([i], f"sample {i} alone") for i in (0, n // 2, n - 1)] + [(order, "batch reversed")]
        single = rounding_bound(self.reference.implementation(),
                                [_as_reference_input(c) for c in self._calls([case], self.probe_strength)], F64,
                                self.reference.amplification(self.probe_strength), self.linear)[0]
        # the implementation against itself: each side may err by one bound
        bound = tuple(2 * b for b in single) if isinstance(single, tuple) else 2 * single
        for rows, label in variants:
            self._step(f"batch {label}")
            o = evaluate(self.impl, self._calls([case], self.probe_strength, rows=rows))[0]
            self._note_contracts([o], f"{case.label} {label}")
            if full.error or o.error or not isinstance(full.output, (Tensor, tuple)):
                problems.append(f"{label}: {o.error or full.error or 'no tensor returned'}")
                continue
            expected = _select(full.output, rows)
            ok, ratio, text = compare(o.output, expected, _select(bound, rows))
            if not ok:
                problems.append(f"{label}: differs from its rows in the full batch ({text})")
        name = f"{case.label} g={self.probe_strength}: each sample independent of the others"
        self.checks.append(Check(name, not problems, "; ".join(problems) or
                                  "batch size 1 and a reversed batch give each sample's output", "batch"))

    def state(self) -> None:
        cases = list(grid.run_cases(self.branches, self.seed))
        calls = self._calls(cases, self.probe_strength, run=True)
        self._step("state: first run")
        first = evaluate(self.impl, calls)
        self._note_contracts(first, "run 1")
        self._judge("state", f"sampling run of {len(cases)} steps matches the reference run", calls, first,
                    self.probe_strength)
        self._step("state: second run")
        second = evaluate(self.impl, calls)
        self._note_contracts(second, "run 2")
        same = all(a.error is None and b.error is None and _bitwise(a.output, b.output) for a, b in
                   zip(first, second, strict=True))
        run_record = self.records[-1]  # the first run's, just judged: its bounds serve the second run too
        if not same:
            close, _, text = _within_bounds(second, first, run_record.bounds)
            detail = ("a second run differs from the first" + (" bitwise, within the rounding bound" if close
                                                                else f" ({text})"))
        else:
            detail = "the second run repeats the first bitwise (memory reset between runs)"
        name = "a second run repeats the first (no state leaks across runs)"
        self.checks.append(Check(name, same, detail, "state"))
        self.records.append(Record("state", name, calls + calls, [o.output for o in first + second],
                                   run_record.bounds + run_record.bounds, F64, run_record.amplification,
                                   self.linear, runs=(0, len(calls))))

    def determinism(self) -> None:
        case = self._probe_cases()[0]
        calls = self._calls([case], self.probe_strength)
        a, b = evaluate(self.impl, calls)[0], evaluate(self.impl, calls)[0]
        self._note_contracts([a, b], f"{case.label} repeated")
        ok = a.error is None and b.error is None and _bitwise(a.output, b.output)
        self.contracts.setdefault("deterministic", [])
        if not ok:
            self.contracts["deterministic"].append("a repeated call returned a different result")

    def degenerate(self) -> None:
        case = self._probe_cases()[0]
        base = grid.to_space(case, case.eps, self.space)
        some = [b for b in self.branches if b != "uncond"]
        first = some[0] if some else self.branches[0]
        other = "uncond" if "uncond" in base else [b for b in self.branches if b != first][0] \
            if len(self.branches) > 1 else first
        rows = {
            "branches equal (zero difference)": {**base, first: base[other].clone()},
            f"{other} branch zero (zero norm)": {**base, other: torch.zeros_like(base[other])},
            f"{first} branch zero (zero norm)": {**base, first: torch.zeros_like(base[first])},
            "constant rows (zero spread)": {b: p.mean(dim=1, keepdim=True).expand_as(p).clone()
                                            for b, p in base.items()},
        }
        params = self.reference.call_params(self.probe_strength)
        for label, preds in rows.items():
            self._step(f"degenerate {label}")
            name = f"{case.label} g={self.probe_strength}: {label}"
            calls = [Call({b: p.clone() for b, p in preds.items()}, self.space, case.x.clone(), case.t, case.alpha,
                          case.sigma, case.schedule, step, n_steps, params)
                     for step, n_steps in self._steps(3 if self.stateful else 1, run=False)]
            outcomes = evaluate(self.impl, calls)
            self._note_contracts(outcomes, name)
            self._judge("degenerate", name, calls, outcomes, self.probe_strength)

    def spaces(self) -> list[SpaceAgreement]:
        agreements = []
        for space in SPACES:
            worst = 0.0
            for case in self._probe_cases():
                calls = self._calls([case] * (3 if self.stateful else 1), self.probe_strength, space=space)
                outcomes = evaluate(self.impl, calls)
                self._note_contracts(outcomes, f"{case.label} fed {space}")
                eps_calls = self._calls([case] * (3 if self.stateful else 1), self.probe_strength, space="eps")
                refs = _reference_outputs(self.reference, [_as_reference_input(c) for c in
                                                           self._calls([case] * len(calls), self.probe_strength)])
                bounds = rounding_bound(self.reference.implementation(space=self.space),
                                        [_as_reference_input(c) for c in eps_calls], F64,
                                        self.reference.amplification(self.probe_strength), self.linear)
                for o, r, b in zip(outcomes, refs, bounds, strict=True):
                    if o.error is not None:
                        worst = math.inf
                        continue
                    try:
                        got = _to_eps(o.output, case, space)
                    except (ValueError, RuntimeError):  # non-finite or mis-shaped: it does not agree
                        worst = math.inf
                        continue
                    want = _to_eps(r, case, self.space)
                    _, ratio, _ = compare(got, want, b)
                    worst = max(worst, ratio)
            agreements.append(SpaceAgreement(space, worst <= 1.0, worst))
        return agreements

    def contract_checks(self) -> None:
        names = {"raises": "never raises", "returns a tensor": "returns tensors", "shape kept": "keeps the shape",
                 "dtype kept": "keeps the dtype", "finite": "finite outputs", "inputs untouched":
                 "leaves its inputs untouched", "deterministic": "deterministic", "no aliasing":
                 "returns new tensors (no output is an input)"}
        for key, label in names.items():
            problems = self.contracts.get(key, [])
            note = key == "no aliasing" and self.impl.may_alias
            detail = (f"{len(problems)} call(s), e.g. {problems[0]}" if problems else "every call")
            if note and problems:
                detail += f" (documented: {self.impl.alias_reason})"
            self.checks.append(Check(label, not problems, detail, "contract", note=note))


def _to_eps(out: Any, case: grid.Case, space: str) -> Any:
    if isinstance(out, tuple):
        return tuple(_to_eps(o, case, space) for o in out)
    if not isinstance(out, Tensor):
        return out
    flat = out.detach().to(F64).reshape(case.x.shape)
    return grid.from_space(case, flat, space)


def _within_bounds(outs: list[Outcome], refs: list[Outcome], bounds: list[Any]) -> tuple[bool, float, str]:
    """Whether each of ``outs`` is within its bound of the matching ``refs`` (two runs of the implementation)."""
    for step, (o, r, b) in enumerate(zip(outs, refs, bounds, strict=True)):
        if o.error or r.error:
            return False, math.inf, o.error or r.error or ""
        if not isinstance(r.output, (Tensor, tuple)):
            return False, math.inf, f"step {step}: returned {type(r.output).__name__}"
        ok, ratio, text = compare(o.output, rows64(r.output), b)
        if not ok:
            return False, ratio, f"step {step}: {text}"
    return True, 0.0, "within the rounding bound"


def _as_reference_input(call: Call) -> Call:
    """The call in float64 ``[N, D]`` (the reference's own shape)."""
    return call.replace(preds={b: rows64(p) for b, p in call.preds.items()}, x=rows64(call.x))


def _select(value: Any, rows: list[int]) -> Any:
    if isinstance(value, tuple):
        return tuple(_select(v, rows) for v in value)
    return rows64(value)[rows]


def rows64(value: Any) -> Any:
    """An output (a tensor, or a (guided, renoise) pair) as float64 ``[N, D]`` rows, detached; anything else as
    it is (what the comparisons read)."""
    if isinstance(value, tuple):
        return tuple(rows64(v) for v in value)
    if not isinstance(value, Tensor):
        return value
    return value.detach().to(F64).reshape(value.shape[0], -1)


def _bitwise(a: Any, b: Any) -> bool:
    if isinstance(a, tuple) or isinstance(b, tuple):
        return isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b) and all(
            _bitwise(x, y) for x, y in zip(a, b, strict=True))
    return isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and a.dtype == b.dtype and \
        bool(torch.equal(torch.nan_to_num(a), torch.nan_to_num(b)))


def _strengths(rule: str, params: Mapping[str, Any], strengths) -> tuple[float | None, ...]:
    if strength_parameter(rule) is None:
        if strengths not in (None, "grid"):
            raise ValueError(f"strengths: rule {rule!r} takes no guidance_scale to vary")
        return (None,)
    if strengths == "grid":
        pinned = "guidance_scale" in params or "w" in params
        return (None,) if pinned else grid.STRENGTHS
    if strengths is None:
        return (None,)
    try:
        values = tuple(float(s) for s in strengths)
    except (TypeError, ValueError):
        raise ValueError(f"strengths: expected 'grid', None or a sequence of guidance scales, got {strengths!r}") \
            from None
    if not values or not all(math.isfinite(s) for s in values):
        raise ValueError(f"strengths: expected finite guidance scales, got {strengths!r}")
    return values


def audit_rule(impl: Any, rule: str = "cfg", *, params: Mapping[str, Any] | None = None,
               strengths: Any = "grid", guided_steps: Callable[[int, int], bool] | None = None, seed: int = 0,
               diagnose: bool = True, progress: bool | Callable[[str], None] = False,
               extra_variants: tuple[Implementation, ...] = ()) -> RuleAudit:
    """Audit ``impl`` against the registered rule ``rule`` with ``params`` (see the module docstring).

    ``impl``: a function (combiner or dict-of-branches), a registered rule, a diffusers guider, or an
    :class:`~verify.conformance.implementations.Implementation`. ``strengths``: ``"grid"`` (default: the six
    guidance scales of :data:`verify.conformance.grid.STRENGTHS` unless ``params`` pins ``guidance_scale`` or
    ``w``), ``None`` (only ``params``), or a sequence of guidance scales. ``guided_steps(step, n_steps)``: the steps
    on which the reference guides (the conditional branch elsewhere; diffusers' ``start``/``stop``).
    ``extra_variants``: more candidates for the diagnosis (an adapter's knowledge of its library's own forms).
    """
    if not isinstance(rule, str):
        raise TypeError(f"rule: expected a registered rule name, got {type(rule).__name__}")
    if rule not in rules.names():
        raise ValueError(f"rule: unknown rule {rule!r}; choose one of {rules.names()}")
    params = dict(params or {})
    chosen = _strengths(rule, params, strengths)
    if chosen != (None,):
        params.pop("w", None)
        params.pop("guidance_scale", None)
    reference = Reference(rule, params, chosen != (None,), guided_steps)
    implementation = as_implementation(impl)
    report: Callable[[str], None] | None = None
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(desc="audit", unit="check", leave=False)

        def report(what: str) -> None:
            bar.update(1)
            bar.set_postfix_str(what[:60])
    elif callable(progress):
        report = progress
    audit = _Audit(implementation, reference, chosen, seed, report)
    try:
        audit.values()
        audit.shapes()
        audit.dtypes()
        audit.batch()
        audit.state()
        audit.determinism()
        audit.degenerate()
        spaces = audit.spaces()
        audit.contract_checks()
    finally:
        if bar is not None:
            bar.close()
    checks = tuple(audit.checks)
    failing = [c for c in checks if not c.passed and not c.note]
    diagnosis = None
    if failing and diagnose:
        from .variants import diagnose as run_diagnosis

        diagnosis = run_diagnosis(audit, failing, tuple(extra_variants))
    shown = reference.call_params(audit.probe_strength if chosen != (None,) else None)
    if chosen != (None,):
        shown["guidance_scale"] = ("grid " if chosen == grid.STRENGTHS else "") + ", ".join(f"{s:g}" for s in chosen)
    return RuleAudit(implementation.name, {"rule": rule, "params": shown, "source": reference.source}, checks,
                     tuple(spaces), diagnosis, dict(audit.ratios))
