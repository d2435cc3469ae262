r"""Sympy proofs of the propositions of the source texts, one module per proposition.

Every module exposes ``NAME``, ``CLAIM_IDS``, ``SOURCE``, ``STATEMENT``, ``EXPECTED`` (``"zero"``: the statement
holds and its residual simplifies to 0; ``"nonzero"``: the statement as written is false and the residual is the
counterexample), ``COUNTEREXAMPLE`` and ``residual() -> sympy.Expr`` (lhs - rhs, simplified). Optional:
``corrected_residual()`` (the corrected statement, must be 0) and ``further_residuals() -> dict[str, Expr]`` (other
forms of the same statement, each must be 0 when ``EXPECTED == "zero"``).

Sign convention of the residuals: lhs is what the guidance rule (or the left side of the source's identity) produces,
rhs what the source states. Why functions of one real variable prove the identities in any dimension: see
:mod:`proofs._common`.

``run_all()`` evaluates every proof; ``format_results(run_all())`` is the report printed by ``cfgtruth proofs``,
which exits 1 when some result is not ``as_expected``.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from dataclasses import dataclass
from types import ModuleType

import sympy

#: every proof module of this package (name not starting with ``_``), sorted by name: a new proof is one file
PROOFS: tuple[ModuleType, ...] = tuple(
    importlib.import_module(f"{__name__}.{m.name}")
    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name) if not m.name.startswith("_"))


@dataclass(frozen=True)
class ProofResult:
    """The outcome of one proof module.

    ``holds``: the residual is 0 (and so is every further residual of the module); ``as_expected``:
    ``holds == (expected == "zero")``, and the corrected residual, when there is one, is 0.
    ``further`` lists (label, residual) of the module's further forms of the statement.
    """

    name: str
    claim_ids: tuple[str, ...]
    source: str
    statement: str
    expected: str
    residual: str
    holds: bool
    as_expected: bool
    counterexample: str
    corrected_residual: str
    corrected_holds: bool | None
    seconds: float
    further: tuple[tuple[str, str], ...] = ()


def _is_zero(expr: sympy.Expr) -> bool:
    return bool(expr == 0)


def run_one(module: ModuleType) -> ProofResult:
    """Evaluate one proof module."""
    start = time.perf_counter()
    main = module.residual()
    further = module.further_residuals() if hasattr(module, "further_residuals") else {}
    corrected = module.corrected_residual() if hasattr(module, "corrected_residual") else None
    seconds = time.perf_counter() - start
    holds = _is_zero(main) and all(_is_zero(r) for r in further.values())
    corrected_holds = None if corrected is None else _is_zero(corrected)
    as_expected = holds == (module.EXPECTED == "zero") and corrected_holds is not False
    return ProofResult(
        name=module.NAME,
        claim_ids=tuple(module.CLAIM_IDS),
        source=module.SOURCE,
        statement=module.STATEMENT,
        expected=module.EXPECTED,
        residual=str(main),
        holds=holds,
        as_expected=as_expected,
        counterexample=module.COUNTEREXAMPLE,
        corrected_residual="" if corrected is None else str(corrected),
        corrected_holds=corrected_holds,
        seconds=seconds,
        further=tuple((label, str(r)) for label, r in further.items()),
    )


def run_all() -> list[ProofResult]:
    """Evaluate every proof in :data:`PROOFS`, in order."""
    return [run_one(module) for module in PROOFS]


def format_results(results: list[ProofResult]) -> str:
    """A readable multi-line report: one block per proof, then a summary line."""
    blocks = []
    for r in results:
        lines = [f"[{'ok' if r.as_expected else 'UNEXPECTED'}] {r.name}  ({', '.join(r.claim_ids)})  {r.seconds:.2f} s",
                 f"  source: {r.source}",
                 f"  statement: {r.statement}"]
        if r.holds:
            lines.append("  residual: 0 (holds)")
        else:
            why = r.counterexample or "no counterexample recorded"
            lines.append(f"  residual: {r.residual} (fails as written: {why})")
        for label, value in r.further:
            lines.append(f"  also: {label}: {value}{' (holds)' if value == '0' else ''}")
        if r.corrected_holds is not None:
            verdict = "holds" if r.corrected_holds else "FAILS"
            lines.append(f"  corrected statement: residual {r.corrected_residual} ({verdict})")
        if not r.as_expected:
            lines.append(f"  expected a {r.expected} residual")
        blocks.append("\n".join(lines))
    n_ok = sum(r.as_expected for r in results)
    total = sum(r.seconds for r in results)
    summary = (f"{n_ok}/{len(results)} proofs as expected; "
               f"{sum(r.holds for r in results)} statements hold, {sum(not r.holds for r in results)} fail as written; "
               f"{total:.2f} s")
    return "\n\n".join(blocks) + "\n\n" + summary
