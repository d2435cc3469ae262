"""Ledger -> ``ledger.json`` and ``ledger.md`` (docs/ledger.md). Reads records; decides nothing."""

from __future__ import annotations

import json
import math
import pathlib
import platform
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

import torch

from verify.claims import ClaimRecord, RunConfig

__all__ = ["write_ledger", "ledger_markdown", "ledger_table"]


def _json_safe(value: Any) -> Any:
    """JSON has no inf or NaN: write them as strings so the file stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _provenance(config: RunConfig) -> dict[str, Any]:
    try:
        version = metadata.version("cfgtruth")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"cfgtruth": version, "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "torch": torch.__version__, "quick": config.quick,
            "seed": config.seed, "checkpoints": config.checkpoints or "checkpoints/ (default)"}


def _headline(record: ClaimRecord) -> str:
    """One short evidence line for the summary table."""
    return record.headline or record.uncertainty or ""


def _cell(text: str) -> str:
    """A Markdown table cell: ``|`` would end the cell, so it is escaped."""
    return text.replace("|", "\\|").replace("\n", " ")


def ledger_table(records: Sequence[ClaimRecord]) -> str:
    """The summary table in Markdown: the one the README shows."""
    lines = ["| id | verdict | statement | evidence |", "|---|---|---|---|"]
    for r in records:
        lines.append(f"| `{r.id}` | **{r.verdict}** | {_cell(r.statement)} | {_cell(_headline(r))} |")
    return "\n".join(lines)


def ledger_markdown(records: Sequence[ClaimRecord], config: RunConfig) -> str:
    prov = _provenance(config)
    parts = ["# cfgtruth claims ledger", "",
             f"Generated {prov['generated']} by cfgtruth {prov['cfgtruth']} (torch {prov['torch']}, "
             f"Python {prov['python']}){', quick run' if config.quick else ''}, seed {config.seed}.", "",
             ledger_table(records), ""]
    for r in records:
        parts += [f"## {r.id}: {r.verdict}", "", f"**Statement.** {r.statement}", "", f"**Source.** {r.source}", "",
                  f"**Procedure.** {r.procedure}", ""]
        if r.conditions:
            parts += [f"**Conditions.** {r.conditions}", ""]
        parts += [f"**Uncertainty.** {r.uncertainty}", "", "**Evidence.**", "", "```json",
                  json.dumps(_json_safe(r.evidence), indent=2, ensure_ascii=False), "```", ""]
        if r.tests:
            parts += ["**Tests.** " + ", ".join(f"`{t}`" for t in r.tests), ""]
        shown = list(r.figures) or ([r.figure] if r.figure else [])
        if shown:
            parts += [("**Figures.** " if len(shown) > 1 else "**Figure.** ") + ", ".join(f"`{f}`" for f in shown),
                      ""]
    return "\n".join(parts)


def write_ledger(records: Sequence[ClaimRecord], out_dir: str | pathlib.Path, config: RunConfig
                 ) -> tuple[pathlib.Path, pathlib.Path]:
    """Write ``ledger.json`` and ``ledger.md`` into ``out_dir``; return their paths."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "ledger.json", out / "ledger.md"
    payload = {"provenance": _provenance(config), "records": [_json_safe(r.to_dict()) for r in records]}
    json_path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md_path.write_text(ledger_markdown(records, config), encoding="utf-8")
    return json_path, md_path
