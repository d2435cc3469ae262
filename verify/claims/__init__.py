r"""The claims ledger: one declaration per claim, one record per claim and run (docs/ledger.md).

A claim is declared once, with :func:`claim`, on its decision function::

    @claim("S0-BAYES", order=110, source=f"{S0}, section '...'", statement="grad log p_t(x|y) = ...",
           tests=("tests/test_claims.py::test_bayes_record",), figure="figures/worlds.png")
    def bayes(bayes_identity: BayesIdentity, proofs: ProofResults) -> Decision:
        ...
        return Decision(verdict="proved", headline=..., procedure=..., uncertainty=..., evidence={...})

The decision function's parameters name the evidence it needs (the providers of :mod:`verify.evidence`, computed
once per run and shared with the figures); it turns that evidence into a :class:`Decision`: the verdict, the
conditions, the headline and the evidence written to the record. The ledger's order (``order``: hundreds for source
000, two hundreds for source 001, three hundreds for the literature), the README table and the record all come from
the declaration, and each record is built once, frozen, by :func:`build_record`.

Verdicts, only ever set from evidence computed in the same run:

* ``proved``: a sympy proof in ``proofs/`` and a float64 check;
* ``holds``: exact (to a derived rounding bound) or statistically confirmed on every scenario tried;
* ``fails``: a counterexample, with its size;
* ``conditional``: holds at one level and not at another, which the record names;
* ``pending``: not evaluated by this code; the record says what would decide it.

Every module of this package whose name does not start with ``_`` is imported with the package, so a new claim is
one declaration in a (new or existing) module plus its test (``docs/extending.md``).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from tqdm.auto import tqdm

from verify.config import RunConfig
from verify.evidence import Evidence, check_needs, needs_of, resolve_call, to_json

__all__ = ["ClaimRecord", "Claim", "Decision", "RunConfig", "VERDICTS", "claim", "claims", "get_claim", "order",
           "build_record", "evaluate", "process_words"]

VERDICTS = ("proved", "holds", "fails", "conditional", "pending")
Verdict = Literal["proved", "holds", "fails", "conditional", "pending"]

#: words about how this project was built, never about a claim: a record that contains one is refused
PROCESS_WORDS = re.compile(r"\b(issues?|sessions?|helpers?|TODO|FIXME|XXX|ticket|sprint|milestone)\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class ClaimRecord:
    """One claim of a source text or of the literature, and what this run found about it (frozen: a record is
    built once, by :func:`build_record`, and never edited)."""

    id: str
    source: str
    statement: str
    procedure: str
    verdict: Verdict
    conditions: str = ""
    evidence: dict[str, Any] = dataclasses.field(default_factory=dict)
    uncertainty: str = ""
    tests: tuple[str, ...] = ()
    figure: str = ""
    #: one line of the evidence for the summary table (the full evidence is in ``evidence``)
    headline: str = ""
    #: every figure that draws this record's evidence (``figure`` is the first)
    figures: tuple[str, ...] = ()

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict: must be one of {VERDICTS}, got {self.verdict!r}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["tests"], out["figures"] = list(self.tests), list(self.figures)
        return out


@dataclasses.dataclass(frozen=True)
class Decision:
    """What a decision function concludes from its evidence. ``evidence`` is what the record shows (dataclasses,
    tensors and tuples in it are turned into JSON data by :func:`verify.evidence.to_json`)."""

    verdict: Verdict
    headline: str
    procedure: str
    uncertainty: str
    evidence: dict[str, Any]
    conditions: str = ""

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict: must be one of {VERDICTS}, got {self.verdict!r}")
        if not isinstance(self.evidence, dict):
            raise TypeError(f"evidence: expected a dict, got {type(self.evidence).__name__}")

    def with_block(self, key: str, block: Any) -> Decision:
        """This decision with a second evidence block: ``block.evidence`` under ``evidence[key]``, ``block.headline``
        appended to the headline after ``"; "`` and ``block.conditions`` to the conditions after ``". "`` (each
        when non-empty). The verdict is unchanged: the block reports how a trained model fares on the same claim
        (for example :class:`verify.evidence.network.NetworkBlock`)."""
        if key in self.evidence:
            raise ValueError(f"key: the evidence already has a {key!r} block")
        headline = f"{self.headline}; {block.headline}" if block.headline else self.headline
        if block.conditions:
            conditions = f"{self.conditions.rstrip('. ')}. {block.conditions}" if self.conditions else block.conditions
        else:
            conditions = self.conditions
        return dataclasses.replace(self, evidence={**self.evidence, key: block.evidence}, headline=headline,
                                   conditions=conditions)

    @classmethod
    def pending(cls, decided_by: str) -> Decision:
        """A claim this code does not decide: the record names what would decide it."""
        return cls(verdict="pending", headline="pending: " + decided_by.split(" (")[0].split(": ")[0],
                   procedure="not evaluated", uncertainty="n/a", evidence={"decided_by": decided_by})


@dataclasses.dataclass(frozen=True)
class Claim:
    """A declared claim: what it says, where it comes from, what decides it, and what checks it."""

    id: str
    order: int
    source: str
    statement: str
    decide: Callable[..., Decision]
    tests: tuple[str, ...]
    figures: tuple[str, ...]
    module: str

    @property
    def needs(self) -> tuple[str, ...]:
        """The providers its decision function reads."""
        return needs_of(self.decide)


_CLAIMS: dict[str, Claim] = {}
_ID = re.compile(r"^(S0|S1|L)-[A-Z0-9]+(-[A-Z0-9]+)*$")


def claim(id: str, *, order: int, source: str, statement: str, tests: Sequence[str] = (),
          figure: str | Sequence[str] = ()) -> Callable[[Callable[..., Decision]], Callable[..., Decision]]:
    """Decorator: declare the claim ``id`` decided by the decorated function (see the module docstring)."""
    if not isinstance(id, str) or not _ID.match(id):
        raise ValueError(f"id: expected S0-..., S1-... or L-... in capitals, got {id!r}")
    if not isinstance(order, int) or isinstance(order, bool):
        raise TypeError(f"order: expected an int, got {type(order).__name__}")
    band = {"S0": 1, "S1": 2, "L": 3}[id.split("-")[0]]
    if order // 100 != band:
        raise ValueError(f"order: {id} belongs between {band}00 and {band}99, got {order}")
    for name, text in (("source", source), ("statement", statement)):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{name}: {id} needs a non-empty {name}")
    figures = (figure,) if isinstance(figure, str) else tuple(figure)
    figures = tuple(f for f in figures if f)

    def register(decide: Callable[..., Decision]) -> Callable[..., Decision]:
        entry = Claim(id, order, source, statement, decide, tuple(tests), figures, decide.__module__)
        for other in _CLAIMS.values():
            if other.id != id and other.order == order:
                raise ValueError(f"order: {id} and {other.id} both declare order {order}")
        previous = _CLAIMS.get(id)
        if previous is not None and (previous.module, previous.decide.__qualname__) != (entry.module,
                                                                                         decide.__qualname__):
            raise ValueError(f"id: {id} is already declared in {previous.module}")
        _CLAIMS[id] = entry
        return decide

    return register


def claims() -> list[Claim]:
    """Every declared claim, in ledger order."""
    return sorted(_CLAIMS.values(), key=lambda c: c.order)


def order() -> tuple[str, ...]:
    """The ledger's claim ids, in order."""
    return tuple(c.id for c in claims())


def get_claim(claim_id: str) -> Claim:
    """The declaration of ``claim_id``."""
    if not isinstance(claim_id, str) or claim_id not in _CLAIMS:
        raise ValueError(f"claim_id: unknown claim {claim_id!r}; declared: {', '.join(order())}")
    return _CLAIMS[claim_id]


def process_words(record: ClaimRecord) -> list[str]:
    """The words of the work process (issue, session, TODO, ...) in a record's text and evidence."""
    text = " ".join([record.statement, record.source, record.procedure, record.conditions, record.uncertainty,
                     record.headline, json.dumps(record.evidence, ensure_ascii=False)])
    return sorted({m.group(0).lower() for m in PROCESS_WORDS.finditer(text)})


def build_record(entry: Claim, evidence: Evidence) -> ClaimRecord:
    """The record of ``entry``: its declaration plus what its decision function concludes from ``evidence``."""
    decision = resolve_call(entry.decide, evidence)
    if not isinstance(decision, Decision):
        raise TypeError(f"decide: {entry.id}'s decision function returned {type(decision).__name__}, not Decision")
    record = ClaimRecord(id=entry.id, source=entry.source, statement=entry.statement, procedure=decision.procedure,
                         verdict=decision.verdict, conditions=decision.conditions,
                         evidence=to_json(decision.evidence), uncertainty=decision.uncertainty, tests=entry.tests,
                         figure=entry.figures[0] if entry.figures else "", headline=decision.headline,
                         figures=entry.figures)
    words = process_words(record)
    if words:
        raise ValueError(f"record: {entry.id} mentions how the project was built ({words}); say what was measured")
    return record


def evaluate(config: RunConfig, ids: Iterable[str] | None = None, evidence: Evidence | None = None,
             jobs: int = 1) -> list[ClaimRecord]:
    """The records of ``ids`` (default: every claim), in ledger order, computing only the evidence they need.

    Every need is checked before anything is computed. Pass ``evidence`` to share one run's providers with the
    figures (:mod:`verify.figures`). ``jobs > 1`` first computes the evidence the claims read in that many worker
    processes (:meth:`~verify.evidence.Evidence.prefetch`; the records do not depend on it). Claims do not look
    downstream: a figure's own extra providers (portraits, density grids, about a second in all) are computed when
    the figure is drawn."""
    selected = claims() if ids is None else sorted((get_claim(i) for i in ids), key=lambda c: c.order)
    for entry in selected:
        check_needs(entry.id, entry.needs)
    evidence = evidence if evidence is not None else Evidence(config)
    if jobs > 1:
        evidence.prefetch(sorted({n for e in selected for n in e.needs}), jobs=jobs)
    bar = tqdm(selected, desc="claims", disable=not config.show_progress, leave=False)
    records = []
    for entry in bar:
        bar.set_postfix_str(entry.id)
        records.append(build_record(entry, evidence))
    return records


for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
