"""checkpoints/make_gpu.sh, the GPU work package, in its tiny form (no CUDA here; the same code path on one CPU
thread), and the budget plan of toy_models.neural.shipped.

The tiny package trains every shipped checkpoint for a few steps of a width-8 network: measured about 15 s on one
CPU thread, most of it imports and the image worlds' exact score-error tables.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

from toy_models.neural import config_from_preset, load_checkpoint, train
from toy_models.neural.shipped import RESERVE_S, SHIPPED, STREAM_BUDGET_S, SUMMARY

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: the GPU lending budget of the package: 12 minutes of wall time on one H200
PACKAGE_BUDGET_S = 720.0


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """``(out folder, completed process)`` of ``make_gpu.sh --tiny --out DIR``."""
    out = tmp_path_factory.mktemp("make_gpu")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    proc = subprocess.run(["bash", str(ROOT / "checkpoints" / "make_gpu.sh"), "--tiny", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc


def test_every_shipped_checkpoint_is_written_and_loads(package):
    out, _ = package
    for entry in SHIPPED:
        weights, card = out / f"{entry.name}.safetensors", out / f"{entry.name}.json"
        assert weights.is_file() and card.is_file(), entry.name
        denoiser = load_checkpoint(out / entry.name)
        assert denoiser.world_name == entry.world
        assert denoiser.card["config"]["world"] == entry.world


def test_cards_say_where_and_how_they_were_trained(package):
    out, _ = package
    for entry in SHIPPED:
        card = json.loads((out / f"{entry.name}.json").read_text())
        assert card["trained_on"] == "cpu" and re.match(r"^cpu \(.+, 1 threads\)$", card["device"]), card["device"]
        assert card["reduced_precision"]["used"] is False  # bf16/TF32 only ever on a GPU
        assert "make_gpu.sh" in card["built_by"] and "tiny" in card["built_by"]
        assert card["score_error_device"] == "cpu float32"


def test_summary_has_throughput_time_to_target_and_errors(package):
    out, proc = package
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["missing"] == [] and summary["cuda_device"] is None
    assert [row["name"] for row in summary["checkpoints"]] == [e.name for e in SHIPPED]
    for entry, row in zip(SHIPPED, summary["checkpoints"], strict=True):
        assert row["samples_per_s"] > 0 and row["ms_per_step"] > 0
        assert math.isfinite(row["pooled_relative_error"]) and math.isfinite(row["rms_relative_error"])
        assert row["steps"] == row["steps_planned"] and not row["stopped_at_time_cap"]
        # the tiny scale sets a target every untrained network meets (10): the timing path runs, and reports
        assert (row["time_to_target_s"] is not None) == (entry.target_error is not None)
    assert f"checkpoints and {SUMMARY} in {out}" in proc.stdout
    assert not list(out.glob(".rows-*.json"))  # the streams' parts were merged and removed


def test_the_gpu_plan_fits_the_budget():
    """Each stream's planned training seconds fit its budget, and the streams' budget plus the reserve fit the
    package's 12 minutes (the caps then hold whatever the GPU really does)."""
    assert STREAM_BUDGET_S + RESERVE_S <= PACKAGE_BUDGET_S
    streams = {e.stream for e in SHIPPED}
    for stream in streams:
        planned = sum(e.planned_seconds() for e in SHIPPED if e.stream == stream)
        assert planned <= STREAM_BUDGET_S, (stream, planned)


def test_the_table_lists_what_make_sh_builds():
    """SHIPPED names every checkpoint checkpoints/make.sh writes (and the GPU-only shapes32)."""
    text = (ROOT / "checkpoints" / "make.sh").read_text()
    rates = re.search(r"for p in ([^;]+);", text).group(1).split()
    outs = set()
    for out in re.findall(r"--out\s+\"?checkpoints/([^\s\"]+)", text):
        outs |= {out.replace("$p", p) for p in rates} if "$p" in out else {out}
    assert len(outs) >= 9
    assert outs == {e.name for e in SHIPPED} - {"shapes32"}


def test_max_seconds_caps_a_run():
    config = config_from_preset("ring2d", "small", steps=10_000, max_seconds=0.5)
    result = train(config, show_progress=False)
    assert result.stopped_at_time_cap and 1 <= result.steps_done < config.steps
    # the check runs after each step: the overshoot is at most one step (under 0.1 s on any CPU for this net)
    assert result.wall_time_s < 0.5 + 2.0
