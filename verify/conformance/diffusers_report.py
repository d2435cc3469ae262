r"""The published tables of what the audits find in the installed diffusers release.

``python -m verify.conformance.diffusers_report --update docs/diffusers.md README.md`` audits every guider setting of
:data:`verify.conformance.diffusers_findings.SETTINGS` and every scheduler setting of
:data:`verify.scheduler_law.TABLE` (about six minutes on one core), and writes, between the markers
``<!-- diffusers-guiders -->`` / ``<!-- /diffusers-guiders -->`` and ``<!-- diffusers-schedulers -->`` /
``<!-- /diffusers-schedulers -->`` of each file, the full tables (``docs/...`` files) or the short ones (any other
file: the README). Without ``--update`` it prints the full tables.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
from collections.abc import Sequence

__all__ = ["Report", "build", "guider_summary", "scheduler_summary", "update", "main"]


class Report:
    """The guider findings and the scheduler audits of one run, with the diffusers version they were made on."""

    def __init__(self, findings, schedulers, version: str):
        self.findings, self.schedulers, self.version = findings, schedulers, version

    def guiders_full(self) -> str:
        from .diffusers_findings import findings_table

        return f"diffusers {self.version}.\n\n" + findings_table(self.findings)

    def schedulers_full(self) -> str:
        from verify.scheduler_law import scheduler_table

        return f"diffusers {self.version}. " + scheduler_table(audits=self.schedulers)


def build(progress: bool = False) -> Report:
    """Run every audit of the tables."""
    import diffusers

    from verify.scheduler_law import table_audits

    from .diffusers_findings import guider_findings

    return Report(guider_findings(progress=progress), table_audits(progress=False), diffusers.__version__)


def _cell(text: str, limit: int = 220) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def guider_summary(report: Report) -> str:
    """The short guider table: guider, setting, verdict, what the audit found, how large."""
    lines = [f"diffusers {report.version}.", "",
             "| guider | setting | verdict | what the audit finds | relative deviation |", "|---|---|---|---|---|"]
    for f in report.findings:
        rel = "-" if f.relative_deviation != f.relative_deviation else (
            "raises" if f.relative_deviation == float("inf") else f"{f.relative_deviation:.2g}")
        lines.append(f"| {f.guider} | {_cell(f.setting, 60)} | **{f.verdict}** | {_cell(f.diagnosis)} | {rel} |")
    return "\n".join(lines)


def scheduler_summary(report: Report) -> str:
    """The short scheduler table: each scheduler at its default, its bias, its convergence and its traps."""
    lines = [f"diffusers {report.version}; CFG (guidance_scale 3) on gauss1d, 50 steps, from N(0, I).", "",
             "| scheduler | law (mean, variance) | W2 to the continuous law | observed orders (expected) | "
             "settings that move the law beyond its discretisation bias |",
             "|---|---|---|---|---|"]
    for name, audit in report.schedulers:
        bias = audit.bias.get("scheduler_vs_continuous")
        w2 = "-" if bias is None else f"{bias['w2']:.3g}"
        orders = ", ".join("-" if o is None else f"{o:.2f}" for o in audit.convergence.get("orders", []))
        mean = ", ".join(f"{m:.4g}" for m in audit.law.mean)
        var = ", ".join(f"{audit.law.cov[i][i]:.4g}" for i in range(len(audit.law.mean)))
        traps = [s.name for s in audit.settings if s.trap]
        lines.append(f"| {name} | {mean}, {var} | {w2} | {orders} ({audit.convergence.get('expected_order')}) | "
                     f"{_cell('; '.join(traps) or '-', 160)} |")
    return "\n".join(lines)


def _replace(text: str, marker: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {marker} -->\n).*?(<!-- /{marker} -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"paths: no <!-- {marker} --> ... <!-- /{marker} --> markers")
    return pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text)


def update(report: Report, paths: Sequence[str]) -> None:
    """Write the tables between the markers of each path (full tables in ``docs/``, short ones elsewhere)."""
    for path in paths:
        file = pathlib.Path(path)
        full = file.parent.name == "docs"
        text = file.read_text()
        text = _replace(text, "diffusers-guiders", report.guiders_full() if full else guider_summary(report))
        text = _replace(text, "diffusers-schedulers", report.schedulers_full() if full else scheduler_summary(report))
        file.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m verify.conformance.diffusers_report",
                                     description="audit the installed diffusers' guiders and schedulers")
    parser.add_argument("--update", nargs="+", metavar="PATH", help="write the tables between the markers of PATH")
    args = parser.parse_args(argv)
    for path in args.update or ():  # before six minutes of audits
        text = pathlib.Path(path).read_text() if pathlib.Path(path).is_file() else ""
        try:
            _replace(_replace(text, "diffusers-guiders", ""), "diffusers-schedulers", "")
        except ValueError:
            parser.error(f"--update: {path} lacks the <!-- diffusers-guiders --> ... <!-- /diffusers-guiders --> and "
                         "<!-- diffusers-schedulers --> ... <!-- /diffusers-schedulers --> markers")
    report = build(progress=True)
    if args.update:
        update(report, args.update)
    else:
        print(report.guiders_full() + "\n\n" + report.schedulers_full())
    return 0


if __name__ == "__main__":
    sys.exit(main())
