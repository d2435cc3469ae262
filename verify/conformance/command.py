r"""``cfgtruth audit``: the command behind the three audits, with a time limit and a JSON report.

* ``cfgtruth audit MODULE:FUNCTION [--rule NAME] [--param KEY=VALUE ...]``: :func:`verify.conformance.audit_rule`
  on a function (a CFG combiner ``combine(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma)`` or a
  dict-of-branches function ``fn(preds, *, ...)``), against the registered rule ``NAME`` (default ``cfg``);
* ``cfgtruth audit --diffusers-guider CLASS [--param KEY=VALUE ...]``: a diffusers guider built with those
  constructor arguments, driven through its own API, against its analytic counterpart
  (:func:`verify.conformance.diffusers_guider.audit_guider`);
* ``cfgtruth audit --diffusers-scheduler CLASS [--rule NAME] [--param ...] [--steps N] [--world NAME]``: the law a
  diffusers scheduler produces with exact predictions guided by the rule, beside the continuous-time law and the
  tilted target (:func:`verify.scheduler_law.scheduler_law`).

Exit status: 0 when everything conforms, 1 with findings, 2 for usage errors (one line, raised here as
:class:`~verify.audit.SpecError` or ``ValueError``/``TypeError`` before any work starts), 3 when the time runs out
(:data:`verify.audit.EXIT_TIMEOUT`; the watchdog of :mod:`verify.audit` interrupts the audit and one line on
stderr names the step that was running). ``--json FILE`` writes the whole result.
"""

from __future__ import annotations

import ast
import json
import pathlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from verify.audit import (
    DEFAULT_TIMEOUT_S,
    EXIT_TIMEOUT,
    Activity,
    AuditTimeout,
    call_with_deadline,
    check_timeout,
    load_combiner,
)

__all__ = ["parse_params", "audit_target_command", "Prepared", "prepare"]

#: a rough count of the progress steps of one rule audit (value cases, probes, runs), for the progress bar
_STEPS_ESTIMATE = 140


def parse_params(items: Sequence[str] | None, option: str = "--param") -> dict[str, Any]:
    """``["eta=0.5", "space='x0'", "norm_threshold=None"]`` -> ``{"eta": 0.5, "space": "x0", ...}``: each value a
    Python literal (numbers, True/False/None, quoted strings, lists) or, failing that, the bare string."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"{option}: expected KEY=VALUE, got {item!r}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out[key.strip()] = value
    return out


class Prepared:
    """What the command will run, resolved (and so validated) before the time limit's work starts."""

    def __init__(self, label: str, run: Callable[[Callable[[str], None]], Any], first: str | None = None):
        self.label, self.run = label, run
        self.first = first or f"the start of the audit of {label}"


def prepare(*, target: str | None, guider: str | None, scheduler: str | None, rule: str | None,
            params: Mapping[str, Any], steps: int, world: str | None) -> Prepared:
    """Validate the request and return the audit to run; ``ValueError``/``TypeError`` (named after the option)
    for a bad request. Loading ``MODULE:FUNCTION`` happens in the timed part (an import may hang)."""
    from verify import rules

    chosen = [name for name, value in (("MODULE:FUNCTION", target), ("--diffusers-guider", guider),
                                        ("--diffusers-scheduler", scheduler)) if value]
    if len(chosen) != 1:
        raise ValueError("target: give exactly one of MODULE:FUNCTION, --diffusers-guider CLASS, "
                         f"--diffusers-scheduler CLASS (got {', '.join(chosen) or 'none'})")
    if rule is not None and rule not in rules.names():
        raise ValueError(f"--rule: unknown rule {rule!r}; choose one of {rules.names()}")
    if guider:
        if rule is not None:
            raise ValueError("--rule: a guider is audited against its own analytic counterpart; drop --rule")
        built = _build_guider(guider, params)
        from .diffusers_guider import audit_guider

        return Prepared(f"diffusers guider {guider}({', '.join(f'{k}={v!r}' for k, v in params.items())})",
                        lambda progress: audit_guider(built, progress=progress))
    if scheduler:
        from verify.scheduler_law import scheduler_law

        if steps < 1:
            raise ValueError(f"--steps: must be >= 1, got {steps}")
        chosen_rule = rule or "cfg"
        _validate(chosen_rule, params)
        return Prepared(f"diffusers scheduler {scheduler}", lambda progress: scheduler_law(
            scheduler, chosen_rule, params=params or None, steps=steps, world=world or "gauss1d",
            progress=False))
    if world is not None:
        raise ValueError("--world: only the scheduler audit takes a world (the rule audit runs its own grid)")
    from .rule_audit import audit_rule

    chosen_rule = rule or "cfg"
    _validate(chosen_rule, params)

    def run(progress: Callable[[str], None]) -> Any:
        impl = load_combiner(target)
        return audit_rule(impl, chosen_rule, params=params, progress=progress)

    return Prepared(target, run, first=f"the import of {target!r}")


def audit_target_command(prepared: Prepared, *, stream: TextIO | None = None,
                         timeout: float | None = DEFAULT_TIMEOUT_S, show_progress: bool | None = False,
                         hard_exit: bool = False, started: float | None = None, json_path: str | None = None,
                         all_checks: bool = False) -> int:
    """Run a prepared audit under the time limit, print its report, write ``json_path``; the exit status."""
    out = sys.stdout if stream is None else stream
    timeout = check_timeout(timeout)
    activity = Activity(what=prepared.first, total=_STEPS_ESTIMATE)
    from tqdm.auto import tqdm

    bar = tqdm(total=activity.total, desc="audit", unit="step", file=sys.stderr, leave=False, mininterval=0.5,
               disable=None if show_progress is None else not show_progress)

    def progress(what: str) -> None:
        activity.what, activity.done = what, activity.done + 1
        bar.update(1)

    begin = time.perf_counter()
    try:
        result = call_with_deadline(lambda: prepared.run(progress), timeout, activity, hard_exit=hard_exit,
                                     started=started)
    except AuditTimeout as exc:
        bar.close()
        print(f"cfgtruth audit: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    bar.close()
    elapsed = time.perf_counter() - begin
    from .rule_audit import RuleAudit

    text = result.report(all_checks=all_checks) if isinstance(result, RuleAudit) else result.report()
    print(text, file=out)
    if json_path:
        path = pathlib.Path(json_path)
        path.write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n")
    verdict = "passed" if result.passed else "failed"
    print(f"audit {verdict}: {prepared.label} ({elapsed:.1f} s)", file=out)
    return 0 if result.passed else 1


def _validate(rule: str, params: Mapping[str, Any]) -> None:
    """The rule's parameters, checked now (as the audit will build them), as one ``--param:`` line."""
    from .implementations import strength_parameter
    from .reference import Reference

    varies = strength_parameter(rule) is not None and not ({"guidance_scale", "w"} & set(params))
    try:
        Reference(rule, dict(params), varies)
    except (TypeError, ValueError) as err:
        raise ValueError(f"--param: {err}") from err


def _build_guider(name: str, params: Mapping[str, Any]) -> Any:
    """``diffusers.guiders.<name>(**params)``, with one-line errors naming the option."""
    try:
        import diffusers.guiders as guiders
    except ImportError as err:
        raise ValueError("--diffusers-guider: diffusers is not installed (pip install cfgtruth[diffusers])") from err
    from .diffusers_guider import REFUSED

    if name in REFUSED:
        raise ValueError(f"--diffusers-guider: {name} has no analytic counterpart: {REFUSED[name]}")
    cls = getattr(guiders, name, None)
    if not isinstance(cls, type):
        known = sorted(n for n in dir(guiders) if n.endswith("Guidance") and n != "BaseGuidance")
        raise ValueError(f"--diffusers-guider: no guider {name!r} in diffusers.guiders; choose one of {known}")
    from .diffusers_guider import build_guider

    try:
        return build_guider(name, dict(params))  # its defaults for AutoGuidance's layer configuration
    except (TypeError, ValueError) as err:
        raise ValueError(f"--param: {name}({', '.join(f'{k}={v!r}' for k, v in params.items())}): {err}") from err
