"""``cfgtruth audit`` on functions: exit statuses, the report's last line, the time limit (one line naming the step
that was running, exit 3), loading errors, and the whole command in a fresh process."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import time

import pytest

from verify.audit import EXIT_TIMEOUT, SpecError
from verify.cli import main
from verify.conformance.command import audit_target_command, parse_params, prepare

#: the first step the rule audit reports for CFG (the first value case of its grid)
FIRST_STEP = "value ring2d vp-linear t=0.02 bulk g=0"
# The watchdog fires at the deadline; the audit then unwinds one sleep call. Slack 1.5 s on a loaded 2-core
# machine, far below the 600 s the function would sleep.
SLACK_S = 1.5


def _prepared(target: str, **kw):
    return prepare(target=target, guider=None, scheduler=None, rule=kw.get("rule"), params=kw.get("params", {}),
                   steps=50, world=None)


def test_exit_statuses_and_last_line():
    buffer = io.StringIO()
    assert audit_target_command(_prepared("audit_mutants:x0_space"), stream=buffer) == 0
    assert buffer.getvalue().splitlines()[-1].startswith("audit passed: audit_mutants:x0_space (")
    buffer = io.StringIO()
    assert audit_target_command(_prepared("audit_mutants:inverse_w_mixup"), stream=buffer) == 1
    lines = buffer.getvalue().splitlines()
    assert lines[-1].startswith("audit failed: audit_mutants:inverse_w_mixup (")
    assert any(line.startswith("diagnosis: matches `cfg` with guidance_scale - 1") for line in lines)


def test_unloadable_spec_is_a_spec_error():
    with pytest.raises(SpecError, match=r"^spec: 'no_such_module_xyz:f': no module named"):
        audit_target_command(_prepared("no_such_module_xyz:f"), stream=io.StringIO())


def test_times_out_with_one_line_and_exit_3(tmp_path, monkeypatch, capsys):
    (tmp_path / "sleepy_rule_mod.py").write_text(textwrap.dedent("""
        import time
        def combine(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
            time.sleep(600)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    start = time.monotonic()
    try:
        assert audit_target_command(_prepared("sleepy_rule_mod:combine"), timeout=1.0) == EXIT_TIMEOUT == 3
    finally:
        sys.modules.pop("sleepy_rule_mod", None)
    assert time.monotonic() - start < 1.0 + SLACK_S + 3.0  # + the grid's first build (about 1-3 s, once)
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"cfgtruth audit: timed out after 1 s during {FIRST_STEP}")


def test_times_out_in_a_slow_import(tmp_path, monkeypatch, capsys):
    (tmp_path / "slow_rule_import.py").write_text("import time\ntime.sleep(600)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert audit_target_command(_prepared("slow_rule_import:f"), timeout=1.0) == EXIT_TIMEOUT
    finally:
        sys.modules.pop("slow_rule_import", None)
    assert "during the import of 'slow_rule_import:f'" in capsys.readouterr().err


def test_cli_timeout_in_a_fresh_process(tmp_path):
    """The whole command, interpreter start-up and torch's import included, ends within the limit plus the slack:
    exit 3, one line on stderr naming the step that was running (the limit counts from the process's start)."""
    (tmp_path / "sleepy_cli_rule.py").write_text("import time\ndef combine(*a, **k):\n    time.sleep(600)\n")
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "verify.cli", "audit", "sleepy_cli_rule:combine", "--timeout", "10"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert run.returncode == 3, run.stderr
    (line,) = run.stderr.splitlines()
    assert line.startswith("cfgtruth audit: timed out after 10 s during ")
    assert run.stdout == "" and elapsed < 10.0 + SLACK_S


def test_parse_params():
    assert parse_params(["eta=0.5", "space='x0'", "norm_threshold=None", "shape=linear", "flag=True"]) == {
        "eta": 0.5, "space": "x0", "norm_threshold": None, "shape": "linear", "flag": True}
    with pytest.raises(ValueError, match="^--param: expected KEY=VALUE"):
        parse_params(["=3"])


def test_cli_exit_statuses(capsys):
    assert main(["audit", "audit_mutants:lerp_eps", "--no-progress"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("audit passed: audit_mutants:lerp_eps")
    assert main(["audit", "audit_mutants:sign_error", "--timeout", "0", "--no-progress"]) == 1  # 0: no limit
    assert capsys.readouterr().out.splitlines()[-1].startswith("audit failed: audit_mutants:sign_error")
