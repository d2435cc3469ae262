"""The claims ledger: one record per claim, with its source, procedure, verdict and evidence (docs/ledger.md).

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
    #: folder of the trained networks (default: ./checkpoints, else the repository's checkpoints/)
    checkpoints: str | None = None


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
    #: one line of the evidence for the summary table (the full evidence is in ``evidence``)
    headline: str = ""

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict: must be one of {VERDICTS}, got {self.verdict!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: the ledger's order: source 000, then source 001, then the literature
ORDER = ("S0-BAYES", "S0-CG-SCORE", "S0-CLEAN-CLASSIFIER", "S0-PROP1", "S0-CFG-COST", "S0-NULL-TOKEN", "S0-XATTN",
         "S0-PROP2-SCORE", "S0-PROP2-SAMPLES", "S0-TEMPERATURE", "S0-WINF", "S0-QUALITY-DIVERSITY", "S0-THRESHOLDING",
         "S0-NEGPROMPT-DENSITY", "S0-COMPOSITION", "S0-PURPLE-DOG", "S1-CG-EPS", "S1-DROPOUT", "S1-CFG-FORM",
         "S1-SCORE-FORM", "S1-SCALE-TABLE", "S1-NEGPROMPT", "S1-FID-IS", "L-DDIM-DDPM", "L-OVERSHOOT", "L-INTERVAL",
         "L-RESCALE", "L-APG", "L-CFGPP", "L-CFG-ZERO-STAR", "L-AUTOGUIDANCE",
         "L-CFG-SCHEDULE")


def evaluate_all(config: RunConfig) -> list[ClaimRecord]:
    """Every claim family, in ledger order."""
    from . import (
        algebra,
        bayes,
        classifier,
        network,
        pending,
        rule_apg,
        rule_autoguidance,
        rule_cfg_schedule,
        rule_cfg_zero_star,
        rule_cfgpp,
        sampling,
        targets,
    )

    families = (bayes, algebra, classifier, targets, pending, rule_apg, rule_cfgpp, rule_cfg_zero_star,
                rule_autoguidance, rule_cfg_schedule)
    records = [r for family in families for r in family.evaluate(config)]
    by_id = {r.id: r for r in records}
    missing = set(ORDER) - set(by_id)
    if missing or len(by_id) != len(records):
        raise RuntimeError(f"ledger: missing or duplicated claim records: {sorted(missing)}")
    sampling.augment(by_id, config)
    network.augment(by_id, config)
    return [by_id[cid] for cid in ORDER]
