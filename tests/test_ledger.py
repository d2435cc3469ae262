"""The ledger itself: declarations, the records built from them, the writers, ``cfgtruth run`` and ``--claim``.

Static checks read the declarations only (no evidence is computed): every test id a claim names exists, every
figure it names is registered, committed and draws evidence the claim reads, the order is the ledger's. The record
checks read one quick ledger built from the session's shared evidence (``conftest.quick_evidence``).
"""

from __future__ import annotations

import ast
import json
import pathlib
import re

import pytest

from verify.claims import ClaimRecord, Decision, RunConfig, claims, evaluate, get_claim, order, process_words
from verify.cli import main
from verify.evidence import Evidence, needs_of, providers
from verify.figures import figures, get_figure
from verify.report import ledger_table, write_ledger

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUICK = RunConfig(quick=True, show_progress=False)


# --------------------------------------------------------------------------------------------------------------
# declarations
# --------------------------------------------------------------------------------------------------------------
def _test_names(path: pathlib.Path) -> set[str]:
    """``name`` for every module-level test function and ``Class::name`` for every method of a test class."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            names |= {f"{node.name}::{m.name}" for m in node.body if isinstance(m, ast.FunctionDef)}
    return names


def test_every_test_id_named_by_a_claim_exists():
    missing = []
    for entry in claims():
        assert entry.tests, f"{entry.id} names no test"
        for test_id in entry.tests:
            file, _, name = test_id.partition("::")
            path = ROOT / file
            if not path.is_file():
                missing.append(f"{entry.id}: {file} does not exist")
            elif name and re.sub(r"\[.*\]$", "", name) not in _test_names(path):
                missing.append(f"{entry.id}: {test_id} is not defined")
    assert not missing, "\n".join(missing)


def test_the_id_checker_catches_a_missing_test():
    """The check above can fail: a name that is not defined in an existing file is reported."""
    assert "test_bayes_record" not in _test_names(ROOT / "tests" / "test_ledger.py")
    assert "test_every_test_id_named_by_a_claim_exists" in _test_names(ROOT / "tests" / "test_ledger.py")


def test_every_figure_named_by_a_claim_is_registered_committed_and_draws_its_evidence():
    for entry in claims():
        reads = set(Evidence(QUICK).closure(entry.needs))
        for name in entry.figures:
            spec = get_figure(name)  # raises for an unregistered figure
            assert name == spec.path, f"{entry.id}: name figures as figures/<file>.png, got {name}"
            assert (ROOT / spec.path).is_file(), f"{entry.id}: {spec.path} is not committed (cfgtruth figures)"
            drawn = set(Evidence(QUICK).closure(spec.needs))
            assert drawn & reads, (f"{entry.id} names {name}, which draws {sorted(drawn)}, none of which the claim "
                                   f"reads ({sorted(reads)})")


def test_every_registered_figure_is_committed_and_every_committed_figure_is_registered():
    registered = {spec.filename for spec in figures()}
    committed = {p.name for p in (ROOT / "figures").glob("*.png")}
    assert registered == committed, (f"not committed: {sorted(registered - committed)}; "
                                     f"not drawn by cfgtruth figures: {sorted(committed - registered)}")


def test_every_need_is_a_provider_and_the_order_is_the_ledger_order():
    known = set(providers())
    for entry in claims():
        assert set(entry.needs) <= known, entry.id
    for spec in figures():
        assert set(spec.needs) <= known, spec.filename
    for name, entry in providers().items():
        assert set(entry.needs) <= known, name
    ids = order()
    assert len(set(ids)) == len(ids)
    bands = [{"S0": 1, "S1": 2, "L": 3}[i.split("-")[0]] for i in ids]
    assert bands == sorted(bands), "source 000, then source 001, then the literature"


def test_the_readme_table_lists_the_declared_claims_in_order():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("<!-- ledger -->", 1)[1].split("<!-- /ledger -->", 1)[0]
    assert re.findall(r"^\| `([^`]+)` \|", table, flags=re.MULTILINE) == list(order())


def test_bad_declarations_and_unknown_needs_are_refused_before_anything_is_computed():
    from verify.claims import claim
    from verify.evidence import check_needs

    calls = []

    def decide(no_such_provider) -> Decision:
        calls.append(1)
        raise AssertionError

    assert needs_of(decide) == ("no_such_provider",)
    with pytest.raises(ValueError, match="^needs: X reads unknown providers"):
        check_needs("X", needs_of(decide))
    with pytest.raises(ValueError, match="^needs: "):
        Evidence(QUICK).arguments(decide)
    assert calls == []
    with pytest.raises(ValueError, match="^id: expected"):
        claim("bayes", order=100, source="s", statement="s")
    with pytest.raises(ValueError, match="^order: L-NEW belongs between 300 and 399"):
        claim("L-NEW", order=150, source="s", statement="s")
    taken = get_claim("S0-BAYES").order
    with pytest.raises(ValueError, match="^order: S0-OTHER and S0-BAYES"):
        claim("S0-OTHER", order=taken, source="s", statement="s")(decide)
    assert "S0-OTHER" not in order()


# --------------------------------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_ledger(quick_evidence) -> list[ClaimRecord]:
    return evaluate(quick_evidence.config, None, quick_evidence)


def test_every_claim_has_a_record_built_from_its_declaration(quick_ledger):
    assert [r.id for r in quick_ledger] == list(order())
    for record in quick_ledger:
        entry = get_claim(record.id)
        assert (record.source, record.statement, record.tests, record.figures) == (
            entry.source, entry.statement, entry.tests, entry.figures)
        assert record.evidence and record.headline and record.uncertainty, record.id
        if record.verdict == "pending":
            assert record.evidence["decided_by"], record.id
        else:
            assert record.procedure and record.procedure != "not evaluated", record.id
        json.dumps(record.evidence, allow_nan=False)  # JSON-ready, no bare inf/NaN


def test_no_record_mentions_how_the_project_was_built(quick_ledger):
    for record in quick_ledger:
        assert process_words(record) == [], record.id


def test_records_are_frozen_and_refuse_process_words():
    record = ClaimRecord(id="X", source="s", statement="s", procedure="p", verdict="holds")
    with pytest.raises(AttributeError):
        record.verdict = "fails"  # type: ignore[misc]
    with pytest.raises(ValueError, match="verdict"):
        ClaimRecord(id="X", source="s", statement="s", procedure="p", verdict="true")
    assert process_words(ClaimRecord(id="X", source="s", statement="s", procedure="see the network issue",
                                     verdict="pending", headline="TODO")) == ["issue", "todo"]


def test_report_writers(tmp_path, quick_ledger):
    extra = ClaimRecord(id="X-INF", source="s", statement="a|b", procedure="p", verdict="pending",
                        evidence={"bound": float("inf")})
    json_path, md_path = write_ledger([*quick_ledger, extra], tmp_path, QUICK)
    payload = json.loads(json_path.read_text(encoding="utf-8"))
    assert payload["provenance"]["quick"] is True
    assert [r["id"] for r in payload["records"]] == [*order(), "X-INF"]
    assert payload["records"][-1]["evidence"]["bound"] == "inf"  # valid JSON, no bare Infinity
    md = md_path.read_text(encoding="utf-8")
    assert "| `S0-BAYES` | **proved** |" in md and "a\\|b" in md
    assert ledger_table(quick_ledger).count("\n") == len(quick_ledger) + 1


# --------------------------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------------------------
def test_run_one_claim_writes_its_record_and_its_figures(tmp_path, capsys):
    entry = get_claim("S0-BAYES")
    assert main(["run", "--quick", "--claim", "S0-BAYES", "--out", str(tmp_path), "--no-progress"]) == 0
    payload = json.loads((tmp_path / "ledger.json").read_text(encoding="utf-8"))
    assert [r["id"] for r in payload["records"]] == ["S0-BAYES"]
    for name in entry.figures:
        assert (tmp_path / name).is_file()
    assert "| `S0-BAYES` |" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["run", "--claim", "S0-NOPE"], "cfgtruth run: --claim: unknown claim 'S0-NOPE'"),
    (["run", "--claim", "S0-BAYES", "--update-readme", "README.md"], "cfgtruth run: --update-readme: "),
])
def test_run_usage_errors_are_one_line(tmp_path, capsys, argv, message):
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_prefetch_in_worker_processes_gives_the_sequential_results():
    """Providers computed in two spawned workers equal those computed here, one after the other (every provider is a
    function of the configuration and its needs; cheap quick providers, one of them needing another)."""
    from verify.evidence import Evidence, RunConfig, to_json

    names = ["bimodal1d_monte_carlo", "bimodal1d_laws", "network_models"]
    config = RunConfig(quick=True, show_progress=False)
    here, there = Evidence(config), Evidence(config)
    there.prefetch(names, jobs=2)
    assert set(here.closure(names)) <= set(there._results)
    for name in here.closure(names):
        if name == "network_models":  # networks, not data: the same checkpoints, loaded in a worker
            assert {w: d.card for w, d in there.get(name).main.items()} == {
                w: d.card for w, d in here.get(name).main.items()}
            continue
        assert to_json(there.get(name)) == to_json(here.get(name)), name
