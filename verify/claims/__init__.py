"""The claims ledger: one record per claim, with its source, procedure, verdict and evidence (DESIGN.md section 4).

Each family of claims lives in its own module and exposes ``evaluate(config) -> list[ClaimRecord]``;
:func:`evaluate_all` runs every family. A verdict is only ever set from evidence computed in the same run:

* ``proved``: a sympy proof in ``proofs/`` and a float64 check;
* ``holds``: exact (to a derived rounding bound) or statistically confirmed on every scenario tried;
* ``fails``: a counterexample, with its size;
* ``conditional``: holds at one level and not at another, which the record names;
* ``pending``: not yet evaluated; the record says what will decide it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["ClaimRecord", "RunConfig", "VERDICTS", "evaluate_all"]

VERDICTS = ("proved", "holds", "fails", "conditional", "pending")
Verdict = Literal["proved", "holds", "fails", "conditional", "pending"]


@dataclass(frozen=True)
class RunConfig:
    """What a ledger run evaluates. ``quick`` trims grids for a smoke run; it never changes a tolerance."""

    quick: bool = False
    seed: int = 0
    show_progress: bool = True


@dataclass
class ClaimRecord:
    """One claim of a source text or of the literature, and what this run found about it."""

    id: str
    source: str
    statement: str
    procedure: str
    verdict: Verdict
    conditions: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    uncertainty: str = ""
    tests: list[str] = field(default_factory=list)
    figure: str = ""

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict: must be one of {VERDICTS}, got {self.verdict!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_all(config: RunConfig) -> list[ClaimRecord]:
    """Every claim family, in ledger order."""
    from . import bayes

    return bayes.evaluate(config)
