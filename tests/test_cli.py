"""The command line as a user meets it: one-line usage errors with exit 2, bugs with their traceback, atomic
outputs, Ctrl-C with exit 130 and nothing half-written.

The long commands are never run here: their work (``evaluate``, the figures, ``train``) is replaced by fakes
that write a file or raise, because what is under test is what the command line does around the work. Two tests
start a real process (``python -m verify.cli``): the entry point's one-line error, and a real SIGINT during
``cfgtruth run --quick``.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import verify.cli as cli
from verify.claims import ClaimRecord
from verify.cli import main

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHECKPOINTS = ROOT / "checkpoints"


def run_main(argv: list[str]) -> int:
    """``main(argv)``, its exit status whether returned or raised (argparse); a KeyboardInterrupt escaping it is a
    failure (the command must handle Ctrl-C itself), not a reason to stop the test session."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped cfgtruth's main()")


def one_line(capsys, prefix: str) -> str:
    """The single line on stderr (nothing on stdout), which must start with ``prefix``."""
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err and captured.out == "", captured
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


@pytest.fixture
def no_long_work(monkeypatch):
    """Fail the test if a command starts its long work after a usage error should have stopped it."""
    import toy_models.neural
    import verify.claims

    def refuse(*args, **kwargs):
        raise AssertionError("the long work started although the input was bad")

    monkeypatch.setattr(verify.claims, "evaluate", refuse)
    monkeypatch.setattr(toy_models.neural, "train", refuse)


def broken_checkpoints(tmp_path: pathlib.Path) -> pathlib.Path:
    """A checkpoint folder whose ring2d weights had one byte flipped after the card was signed."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(CHECKPOINTS / f"ring2d{suffix}", folder / f"ring2d{suffix}")
    raw = bytearray((folder / "ring2d.safetensors").read_bytes())
    raw[-1] ^= 1
    (folder / "ring2d.safetensors").write_bytes(bytes(raw))
    return folder


def lone_card(tmp_path: pathlib.Path) -> pathlib.Path:
    folder = tmp_path / "lone"
    folder.mkdir()
    shutil.copy(CHECKPOINTS / "tokens16d.json", folder / "tokens16d.json")
    return folder


def broken_default_checkpoints(tmp_path: pathlib.Path) -> pathlib.Path:
    """./checkpoints (the default folder, the test runs in tmp_path) with a broken ring2d."""
    return broken_checkpoints(tmp_path).rename(tmp_path / "checkpoints")


def a_file(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "plain_file"
    path.write_text("not a folder", encoding="utf-8")
    return path


# (argv built from tmp_path, command, the message after "cfgtruth <command>: " must start with this;
# {tmp} stands for tmp_path)
USAGE_ERRORS = {
    "train-unknown-world": (lambda tmp: ["train", "--world", "nosuch"], "train",
                            "--world: unknown world 'nosuch'; choose one of"),
    "train-separate-gaussians": (lambda tmp: ["train", "--world", "gauss1d"], "train",
                                 "--world: 'gauss1d' is two separate Gaussians"),
    "train-negative-steps": (lambda tmp: ["train", "--world", "ring2d", "--steps", "-1"], "train",
                             "--steps: must be a positive int, got -1"),
    "train-steps-not-a-number": (lambda tmp: ["train", "--world", "ring2d", "--steps", "many"], "train",
                                 "argument --steps: invalid int value: 'many'"),
    "train-p-uncond-above-1": (lambda tmp: ["train", "--world", "ring2d", "--p-uncond", "1.5"], "train",
                               "--p-uncond: must be a probability in [0, 1], got 1.5"),
    "train-p-uncond-nan": (lambda tmp: ["train", "--world", "ring2d", "--p-uncond", "nan"], "train",
                           "--p-uncond: must be a finite number, got nan"),
    "train-p-uncond-not-a-number": (lambda tmp: ["train", "--world", "ring2d", "--p-uncond", "half"], "train",
                                    "argument --p-uncond: invalid float value: 'half'"),
    "train-unknown-preset": (lambda tmp: ["train", "--world", "ring2d", "--preset", "huge"], "train",
                             "argument --preset: invalid choice: 'huge'"),
    "train-unknown-schedule": (lambda tmp: ["train", "--world", "ring2d", "--schedule", "vp-quadratic"], "train",
                               "--schedule: unknown schedule 'vp-quadratic'"),
    "train-heads-width": (lambda tmp: ["train", "--world", "ring2d", "--width", "30"], "train",
                          "--heads: must divide width = 30, got 4"),
    "train-negative-seed": (lambda tmp: ["train", "--world", "ring2d", "--seed", "-3"], "train",
                            "--seed: must be a non-negative int, got -3"),
    "train-huge-seed": (lambda tmp: ["train", "--world", "ring2d", "--seed", str(2**40)], "train",
                        "--seed: must be below 2^32, got 1099511627776"),
    "train-eval-n-zero": (lambda tmp: ["train", "--world", "ring2d", "--eval-n", "0"], "train",
                          "argument --eval-n: invalid positive integer value: '0'"),
    "train-unknown-device": (lambda tmp: ["train", "--world", "ring2d", "--device", "gpu7"], "train",
                             "--device: 'gpu7' is not a device torch understands; use cpu, cuda or cuda:N"),
    "train-out-under-a-file": (lambda tmp: ["train", "--world", "ring2d", "--out", str(a_file(tmp) / "sub" / "m")],
                               "train", "--out: cannot write into"),
    "train-out-is-a-folder": (lambda tmp: ["train", "--world", "ring2d", "--out", str(tmp)], "train",
                              "--out: {tmp} is a directory; give a path without suffix"),
    "train-missing-world": (lambda tmp: ["train"], "train", "the following arguments are required: --world"),
    "train-unknown-option": (lambda tmp: ["train", "--world", "ring2d", "--bogus"], "train",
                             "unrecognized arguments: --bogus"),
    "audit-no-module": (lambda tmp: ["audit", "nosuchmodule_xyz:f"], "audit",
                        "spec: 'nosuchmodule_xyz:f': no module named 'nosuchmodule_xyz'"),
    "audit-no-attribute": (lambda tmp: ["audit", "audit_mutants:notthere"], "audit",
                           "spec: 'audit_mutants:notthere': 'audit_mutants' has no attribute 'notthere'"),
    "audit-not-callable": (lambda tmp: ["audit", "audit_mutants:MUTANTS"], "audit",
                           "spec: 'audit_mutants:MUTANTS' names a dict, not a callable"),
    "audit-malformed-spec": (lambda tmp: ["audit", "audit_mutants"], "audit", "spec: expected 'MODULE:FUNCTION'"),
    "audit-negative-timeout": (lambda tmp: ["audit", "audit_mutants:lerp_eps", "--timeout", "-1"], "audit",
                               "argument --timeout: invalid number of seconds (>= 0) value: '-1'"),
    "run-checkpoints-missing": (lambda tmp: ["run", "--checkpoints", str(tmp / "none")], "run",
                                "--checkpoints: {tmp}/none is not a directory"),
    "run-checkpoints-a-file": (lambda tmp: ["run", "--checkpoints", str(a_file(tmp))], "run",
                               "--checkpoints: {tmp}/plain_file is not a directory"),
    "run-checkpoints-empty": (lambda tmp: ["run", "--checkpoints", str(tmp)], "run",
                              "--checkpoints: {tmp} holds none of the checkpoints ring2d, attributes2d"),
    "run-checkpoints-broken": (lambda tmp: ["run", "--checkpoints", str(broken_checkpoints(tmp))], "run",
                               "--checkpoints: {tmp}/ckpt/ring2d.safetensors: sha256: the file's SHA-256"),
    "run-default-checkpoints-broken": (lambda tmp: broken_default_checkpoints(tmp) and ["run"], "run",
                                       "the default checkpoints (no --checkpoints): checkpoints/ring2d.safetensors: "
                                       "sha256: the file's SHA-256"),
    "run-checkpoints-lone-card": (lambda tmp: ["run", "--checkpoints", str(lone_card(tmp))], "run",
                                  "--checkpoints: {tmp}/lone/tokens16d.json has no tokens16d.safetensors"),
    "run-out-a-file": (lambda tmp: ["run", "--out", str(a_file(tmp))], "run",
                       "--out: {tmp}/plain_file exists and is not a directory"),
    "run-out-under-a-file": (lambda tmp: ["run", "--out", str(a_file(tmp) / "results")], "run",
                             "--out: cannot write into"),
    "run-readme-missing": (lambda tmp: ["run", "--update-readme", str(tmp / "README.md")], "run",
                           "--update-readme: cannot read"),
    "run-readme-no-markers": (lambda tmp: ["run", "--update-readme", str(a_file(tmp))], "run",
                              "--update-readme: {tmp}/plain_file: no <!-- ledger --> ... <!-- /ledger --> "
                              "markers"),
    "run-negative-seed": (lambda tmp: ["run", "--seed", "-1"], "run",
                          "argument --seed: invalid seed (an integer in [0, 2^32)) value: '-1'"),
    "figures-checkpoints-broken": (lambda tmp: ["figures", "--checkpoints", str(broken_checkpoints(tmp))],
                                   "figures", "--checkpoints: {tmp}/ckpt/ring2d.safetensors: sha256:"),
    "figures-out-a-file": (lambda tmp: ["figures", "--out", str(a_file(tmp))], "figures",
                           "--out: {tmp}/plain_file exists and is not a directory"),
    "no-command": (lambda tmp: [], "", "the following arguments are required: COMMAND"),
    "unknown-command": (lambda tmp: ["nope"], "", "argument COMMAND: invalid choice: 'nope'"),
}


@pytest.mark.parametrize("case", list(USAGE_ERRORS))
def test_usage_error_is_one_line_and_exit_2(case, tmp_path, capsys, monkeypatch, no_long_work):
    build, command, message = USAGE_ERRORS[case]
    monkeypatch.chdir(tmp_path)  # a run that went ahead would write here, not into the repository
    argv = build(tmp_path)  # may create the file or folder the case is about
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert run_main(argv) == 2
    prog = f"cfgtruth {command}".rstrip()
    one_line(capsys, f"{prog}: {message.format(tmp=tmp_path)}")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written or created


def test_cuda_requested_without_cuda(capsys, monkeypatch, no_long_work):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run_main(["train", "--world", "ring2d", "--device", "cuda"]) == 2
    line = one_line(capsys, "cfgtruth train: --device: cuda was requested but torch.cuda.is_available() is False")
    assert f"torch {torch.__version__}" in line


def test_debug_reraises_the_original_error(capsys, no_long_work):
    for argv in (["--debug", "train", "--world", "nosuch"], ["train", "--world", "nosuch", "--debug"]):
        with pytest.raises(ValueError, match=r"^world: unknown world 'nosuch'"):
            main(argv)
    with pytest.raises(ValueError, match=r"^spec: 'nosuchmodule_xyz:f'"):
        main(["audit", "nosuchmodule_xyz:f", "--debug"])


def test_an_internal_error_keeps_its_traceback(monkeypatch, tmp_path):
    """A ValueError raised by the work itself, after the inputs were accepted, is a bug: it is not turned into a
    usage error."""
    import toy_models.neural

    def broken_train(*args, **kwargs):
        raise ValueError("internal: something the inputs did not cause")

    monkeypatch.setattr(toy_models.neural, "train", broken_train)
    with pytest.raises(ValueError, match="^internal:"):
        main(["train", "--world", "ring2d", "--preset", "small", "--out", str(tmp_path / "m"), "--no-progress"])
    assert list(tmp_path.iterdir()) == []


def test_help_documents_the_exit_statuses(capsys):
    assert run_main(["audit", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--timeout SECONDS" in out and "(default: 300; 0: no limit)" in out
    assert "3 the time ran out" in out and "2 usage error (the target cannot be loaded" in out
    assert run_main(["--help"]) == 0
    assert "2 usage error, 3 audit timed out, 130 interrupted" in " ".join(capsys.readouterr().out.split())


def test_entry_point_one_line_error_in_a_fresh_process(tmp_path):
    run = subprocess.run([sys.executable, "-m", "verify.cli", "train", "--world", "nosuch"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.splitlines() == [
        "cfgtruth train: --world: unknown world 'nosuch'; choose one of ['attributes2d', 'bimodal1d', 'gauss1d', "
        "'highdim', 'ring2d', 'shapes16', 'shapes32', 'tokens16d']"]



# --------------------------------------------------------------------------------------------------------------
# outputs: atomic, and Ctrl-C leaves nothing that looks complete
# --------------------------------------------------------------------------------------------------------------
def tiny_records(config, ids=None, evidence=None, jobs=1):
    return [ClaimRecord(id="S0-BAYES", source="s", statement="a claim", procedure="p", verdict="proved",
                        headline=f"seed {config.seed}", figure="figures/worlds.png", figures=("figures/worlds.png",))]


def fake_plot(names, out_dir, evidence):
    return [fake_png(pathlib.Path(out_dir) / pathlib.Path(n).name) for n in names]


def fake_png(path, **kwargs):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG fake")
    return path


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.fixture
def fast_run(monkeypatch):
    """``cfgtruth run`` with its work replaced: one record, a fake worlds figure."""
    import verify.claims
    import verify.figures

    monkeypatch.setattr(verify.claims, "evaluate", tiny_records)
    monkeypatch.setattr(verify.figures, "plot", fake_plot)
    return monkeypatch


def files_under(folder: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_run_writes_its_outputs_and_nothing_else(fast_run, tmp_path, capsys):
    out = tmp_path / "results"
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- ledger -->\nold\n<!-- /ledger -->\nb\n", encoding="utf-8")
    assert run_main(["run", "--out", str(out), "--no-progress", "--seed", "4", "--update-readme", str(readme)]) == 0
    assert sorted(files_under(out)) == ["figures/worlds.png", "ledger.json", "ledger.md"]  # no staging left
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    assert json.loads((out / "ledger.json").read_text(encoding="utf-8"))["records"][0]["headline"] == "seed 4"
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("a\n<!-- ledger -->\n| id |") and text.endswith("<!-- /ledger -->\nb\n")
    assert "old" not in text and sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "results"]
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith(f"wrote {out / 'ledger.json'}")


def test_interrupted_run_removes_its_partial_outputs(fast_run, tmp_path, capsys):
    """Ctrl-C after the ledger was written but before the figure: exit 130, one line, and the previous run's files
    untouched (before, write_ledger wrote ledger.json into the output folder directly, so an interrupted run left a
    new ledger beside an old figure)."""
    import verify.figures

    out = tmp_path / "results"
    (out / "figures").mkdir(parents=True)
    for name, data in (("ledger.json", b'{"old": 1}'), ("ledger.md", b"old"), ("figures/worlds.png", b"old")):
        (out / name).write_bytes(data)
    before = files_under(out)
    fast_run.setattr(verify.figures, "plot", interrupt)
    assert run_main(["run", "--out", str(out), "--no-progress"]) == 130
    one_line(capsys, "cfgtruth run: interrupted; partial outputs removed")
    assert files_under(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["figures", "ledger.json", "ledger.md"]  # no staging folder


def test_interrupted_run_in_a_new_folder_leaves_no_folder(fast_run, tmp_path, capsys):
    import verify.claims

    fast_run.setattr(verify.claims, "evaluate", interrupt)
    assert run_main(["run", "--out", str(tmp_path / "new" / "results"), "--no-progress"]) == 130
    one_line(capsys, "cfgtruth run: interrupted; nothing written")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_the_commit_waits_for_it(fast_run, tmp_path, capsys):
    """A SIGINT while the staged files are being moved into place is held until every file is there: the ledger is
    complete and kept, and the command still reports the interruption (exit 130)."""
    out = tmp_path / "results"
    real_replace = os.replace
    sent = []

    def replace_with_sigint(src, dst):
        if not sent:
            sent.append(dst)
            signal.raise_signal(signal.SIGINT)  # delivered now, in the main thread, between two moves
        real_replace(src, dst)

    fast_run.setattr(cli.os, "replace", replace_with_sigint)
    assert run_main(["run", "--out", str(out), "--no-progress"]) == 130
    one_line(capsys, "cfgtruth run: interrupted; the outputs were complete and are kept")
    assert sorted(files_under(out)) == ["figures/worlds.png", "ledger.json", "ledger.md"] and sent


def test_interrupted_figures_write_nothing(monkeypatch, tmp_path, capsys):
    import verify.figures

    def some_then_interrupt(out_dir, evidence=None, config=None):
        fake_png(pathlib.Path(out_dir) / "worlds.png")
        raise KeyboardInterrupt

    monkeypatch.setattr(verify.figures, "plot_all", some_then_interrupt)
    out = tmp_path / "figures"
    out.mkdir()
    (out / "worlds.png").write_bytes(b"old")
    assert run_main(["figures", "--out", str(out)]) == 130
    one_line(capsys, "cfgtruth figures: interrupted; partial outputs removed")
    assert files_under(out) == {"worlds.png": b"old"} and len(list(out.iterdir())) == 1

    monkeypatch.setattr(verify.figures, "plot_all", lambda out_dir, evidence=None, config=None: [
        fake_png(pathlib.Path(out_dir) / "a.png"), fake_png(pathlib.Path(out_dir) / "b.png")])
    assert run_main(["figures", "--out", str(out)]) == 0
    assert sorted(files_under(out)) == ["a.png", "b.png", "worlds.png"] and len(list(out.iterdir())) == 3
    assert capsys.readouterr().out.splitlines() == [f"wrote {out / 'a.png'}", f"wrote {out / 'b.png'}"]


def test_interrupted_training_writes_nothing(monkeypatch, tmp_path, capsys):
    import toy_models.neural

    monkeypatch.setattr(toy_models.neural, "train", interrupt)
    out = tmp_path / "new" / "deeper" / "m"
    assert run_main(["train", "--world", "ring2d", "--preset", "small", "--out", str(out), "--no-progress"]) == 130
    one_line(capsys, "cfgtruth train: interrupted; nothing written")
    assert list(tmp_path.iterdir()) == []  # the folders made for --out are gone again


def test_real_sigint_during_a_run(tmp_path):
    """A real Ctrl-C (SIGINT) to ``cfgtruth run --quick`` while it evaluates: exit 130, one line, and no ledger, no
    staging folder, no output folder left. The signal is sent once the staging folder exists (the inputs were
    accepted and the evaluation has begun)."""
    out = tmp_path / "results"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "verify.cli", "run", "--quick", "--no-progress", "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out.is_dir() and any(p.name.startswith(cli.STAGING_PREFIX) for p in out.iterdir())):
            assert proc.poll() is None and time.monotonic() < deadline, "the run never started its evaluation"
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert stderr.splitlines()[-1] == "cfgtruth run: interrupted; nothing written", stderr[-2000:]
    assert "Traceback" not in stderr and not out.exists()
