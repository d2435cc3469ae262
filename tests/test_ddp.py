"""Data-parallel training: ``cfgtruth train`` under ``torchrun`` with two gloo processes on the CPU.

The command runs in a child process (``python -m torch.distributed.run --standalone --nproc_per_node=2``), one
intra-op thread per rank (the machine may have only 2 cores). The GPU is hidden from the ranks: this checks the CPU
(gloo) path, and ``train`` picks NCCL whenever CUDA is available, whatever ``--device`` says.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from toy_models import get_world
from toy_models.neural import TrainConfig, Vocabulary, load_checkpoint
from toy_models.neural.training import build_network

ROOT = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT_S = 120  # measured: about 8 s on an idle 2-core machine (two interpreters importing torch, 30 steps each)

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed or its gloo backend is not available in this build")


def torchrun_train(out: pathlib.Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "verify.cli", "train", "--world", "ring2d", "--preset", "small", "--out", str(out),
               "--no-progress", "--eval-n", "64", "--device", "cpu", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def test_torchrun_two_gloo_processes(tmp_path):
    run = torchrun_train(tmp_path / "m", "--steps", "30")
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr[-4000:]}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]  # rank 0 alone writes
    assert run.stdout.count("wrote ") == 1
    card = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    assert card["world_size"] == 2 and card["steps"] == 30 and card["config"]["batch_size"] == 256
    loaded = load_checkpoint(tmp_path / "m")
    assert loaded.card["sha256"] == card["sha256"]

    # trained weights: finite, moved away from the seeded initialisation every rank starts from
    config = TrainConfig(**card["config"])
    world = get_world("ring2d")
    initial = build_network(config, world, Vocabulary.from_world(world)).state_dict()
    weights = loaded.network.state_dict()
    assert all(bool(torch.isfinite(v).all()) for v in weights.values())
    assert torch.equal(weights["frequencies"], initial["frequencies"])  # a buffer: never trained
    unchanged = {name for name, param in loaded.network.named_parameters() if torch.equal(param, initial[name])}
    # ring2d's conditions are one token each: softmax over a single key is 1, so the cross-attention's query path and
    # its LayerNorm get exactly zero gradient; AdamW's weight decay still shrinks their nonzero weights, but leaves
    # the zero-initialised norm_cross bias at 0. Every other parameter must have moved.
    assert unchanged <= {"blocks.0.norm_cross.bias"}, unchanged
    assert not torch.equal(weights["readout.weight"], initial["readout.weight"])
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(loaded.eps(x, 0.5, None)).all())


def test_torchrun_stops_every_rank_at_the_target(tmp_path):
    # the small preset evaluates every 50 steps; an error target of 100 is met at the first evaluation
    run = torchrun_train(tmp_path / "m", "--steps", "100", "--target-error", "100")
    assert run.returncode == 0, run.stderr[-4000:]
