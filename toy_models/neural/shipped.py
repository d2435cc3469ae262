r"""The shipped checkpoints as data, and the GPU work package that rebuilds them all (``checkpoints/make_gpu.sh``).

:data:`SHIPPED` lists every checkpoint of ``checkpoints/`` with the command that made it on the CPU
(``checkpoints/make.sh``) and its GPU-scale settings. :func:`build` trains a selection, evaluates each against the
exact denoiser (:func:`~toy_models.neural.evaluate.score_error_table`), writes ``NAME.safetensors`` + ``NAME.json``
and returns one summary row per checkpoint: throughput, training time to the stated score error, final errors.
Cards say where they were trained (``device``: ``torch.cuda.get_device_name`` or ``cpu (MODEL, N threads)``;
``reduced_precision.used``: whether bf16 autocast + TF32 ran) and that this package built them (``built_by``).

Scales: ``gpu`` is the GPU package; ``tiny`` runs the same path with a network and step count that take a second
each on one CPU thread (CI exercises the package with it, ``make_gpu.sh --tiny``).

Time budget (one H200, 12 minutes for the whole package)
--------------------------------------------------------
No GPU was lent when this was written, so the step counts are planned from CPU measurements and stated
assumptions, and every run is also capped by wall clock (``TrainConfig.max_seconds``), so the package cannot
overrun whatever the GPU really does:

* Measured on one CPU thread (x86-64 at ~60 GFLOP/s): ring2d default preset 69 ms/step at batch 1024 (about
  1.4 MFLOP per sample: 6 x 116k parameters x 2 positions), the shapes16 patch network (width 96, depth 3, 390k
  parameters, 16 positions) 83 ms/step at batch 128 (6 x 0.39 M x 16 x 128 = 4.8 GFLOP a step).
* Assumption 1: a step of the coordinate networks is bound by kernel launches and the CPU-side batch draw, not
  FLOPs (ring2d at batch 4096 is 5.7 GFLOP, under 0.1 ms of H200 bf16 work): about 400 launches (forward, backward,
  AdamW, one EMA lerp per tensor) at ~10 us plus ~2 ms of drawing = 8 ms/step.
* Assumption 2: the image networks reach 60 TFLOP/s effective bf16 (6 % of the H200's dense peak; small matrices):
  shapes16 ``image-gpu`` (width 192, depth 4, ~1.9 M parameters, 16 patches, batch 1024) is 6 x 1.9 M x 16 x 1024
  = 187 GFLOP = 3 ms + 8 ms overhead = 11 ms/step; shapes32 (64 patches) 4 x 3 = 12 ms + 10 ms = 22 ms/step.
* Assumption 3: three processes share the GPU (one per stream, 4 CPU threads each of the 16), which slows each
  by 1.5x: 12, 17 and 33 ms/step.

Plan (training seconds per stream, with the 1.5x):

* stream 0: ring2d 10000 x 12 ms = 120 s; ablation 5 x 3000 x 12 ms = 180 s; imperfect 600 x 12 ms = 7 s: 307 s.
* stream 1: attributes2d 8000 x 12 ms = 96 s; tokens16d 5000 x 12 ms = 60 s; shapes32 4000 x 33 ms = 132 s: 288 s.
* stream 2: shapes16 6000 x 17 ms = 102 s.

Each run's cap is twice its planned time (so a 2x misestimate still finishes the planned steps), and no run may
start its training beyond the stream's budget of :data:`STREAM_BUDGET_S` = 540 s of training: the cap of each run
is the smaller of its own and what is left of the stream's budget. The rest of the 720 s: start-up and imports
(~15 s), the target evaluations (at most 3 per run on the CPU, ~5 s each for the image worlds, well under 1 s
otherwise), the final evaluations (GPU, float32, < 10 s each) and saving: :data:`RESERVE_S` = 120 s in all.
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..scenarios import get_world
from .checkpoint import save_checkpoint
from .denoiser import NeuralDenoiser
from .evaluate import score_error_table
from .training import card_facts, config_from_preset, resolve_device, train

__all__ = ["Shipped", "SHIPPED", "SCALES", "STREAM_BUDGET_S", "RESERVE_S", "build", "summarize"]

#: training seconds one stream of the GPU package may spend in all (module docstring)
STREAM_BUDGET_S = 540.0
#: the rest of the package's 12 minutes: start-up, evaluations, saving
RESERVE_S = 120.0
SCALES = ("gpu", "tiny")
#: the tiny scale: the same path in seconds on one CPU thread (patch sizes stay the presets')
TINY = {"steps": 6, "batch_size": 16, "width": 8, "depth": 1, "heads": 2, "warmup_steps": 2, "eval_every": 3,
        "eval_n": 4}
SUMMARY = "make_gpu_summary.json"


@dataclass(frozen=True)
class Shipped:
    """One shipped checkpoint: ``name`` (its path under checkpoints/, no suffix), the world, the preset and overrides
    of its GPU-scale run, the score-error target whose training time is measured (``None``: not timed), the points per
    cell of the card's score-error table, the planned GPU step time (ms, module docstring) and the package stream."""

    name: str
    world: str
    preset: str
    gpu: dict = field(default_factory=dict)
    target_error: float | None = 0.05
    eval_n: int = 2048
    planned_ms_per_step: float = 12.0
    stream: int = 0

    def config(self, scale: str, max_seconds: float | None = None):
        """The ``TrainConfig`` of this checkpoint at ``scale``."""
        overrides = dict(self.gpu) if scale == "gpu" else dict(TINY)
        if scale == "tiny" and "p_uncond" in self.gpu:
            overrides["p_uncond"] = self.gpu["p_uncond"]  # the ablation's rates stay what they are
        target = self.target_error if scale == "gpu" else (None if self.target_error is None else 10.0)
        return config_from_preset(self.world, self.preset, target_error=target, stop_at_target=False,
                                  max_seconds=max_seconds, **overrides)

    def planned_seconds(self) -> float:
        return self.config("gpu").steps * self.planned_ms_per_step / 1e3


def _ablation(p: str) -> Shipped:
    # S1-DROPOUT: five networks identical but for p_uncond (checkpoints/make.sh)
    return Shipped(f"ablation/ring2d_p{p}", "ring2d", "ablation",
                   {"steps": 3000, "batch_size": 2048, "p_uncond": float(p)}, target_error=None)


#: every shipped checkpoint (checkpoints/README.md), with its GPU-package settings
SHIPPED: tuple[Shipped, ...] = (
    Shipped("ring2d", "ring2d", "default", {"steps": 10000, "batch_size": 4096}),
    *(_ablation(p) for p in ("0.00", "0.05", "0.10", "0.20", "0.50")),
    # deliberately short-trained (S0-QUALITY-DIVERSITY, S1-FID-IS): the imperfect preset as it is, on the GPU too
    Shipped("imperfect/ring2d", "ring2d", "imperfect", {}, target_error=None),
    Shipped("attributes2d", "attributes2d", "default", {"steps": 8000, "batch_size": 4096}, stream=1),
    Shipped("tokens16d", "tokens16d", "default", {"steps": 5000, "batch_size": 2048}, target_error=0.1, stream=1),
    Shipped("shapes32", "shapes32", "image-gpu", {"steps": 4000}, target_error=0.2, eval_n=128,
            planned_ms_per_step=33.0, stream=1),
    Shipped("shapes16", "shapes16", "image-gpu", {}, target_error=0.2, eval_n=256, planned_ms_per_step=17.0,
            stream=2),
)


def _evaluation_copy(denoiser: NeuralDenoiser, device: torch.device) -> NeuralDenoiser:
    """The float32 network on ``device`` for the card's score-error table (full precision: TF32 and autocast are
    only ever on inside training)."""
    if device.type == "cpu":
        return denoiser
    return NeuralDenoiser(copy.deepcopy(denoiser.network).to(device), denoiser.vocabulary, denoiser.schedule,
                          denoiser.world_name)


def build(entries: Sequence[Shipped], out: str | pathlib.Path, scale: str = "gpu", device: str | None = None,
          budget_s: float = STREAM_BUDGET_S, log=print) -> list[dict]:
    """Train, evaluate and save ``entries`` one after the other under ``out``; returns their summary rows.

    Each run is capped at twice its planned time and at what is left of ``budget_s`` (training seconds for all of
    ``entries``); a run whose turn comes with under a second left is skipped (its row says so).
    """
    if scale not in SCALES:
        raise ValueError(f"scale: must be one of {SCALES}, got {scale!r}")
    out = pathlib.Path(out)
    dev = resolve_device(device)
    rows = []
    spent = 0.0
    for entry in entries:
        left = budget_s - spent
        if left < 1.0:
            rows.append({"name": entry.name, "world": entry.world, "skipped": f"stream budget {budget_s:g} s spent"})
            log(f"{entry.name}: skipped, the stream's {budget_s:g} s of training are spent")
            continue
        cap = min(2.0 * entry.planned_seconds(), left) if scale == "gpu" else left
        config = entry.config(scale, max_seconds=cap)
        result = train(config, device=dev, show_progress=False)
        spent += result.wall_time_s  # the target evaluations during training count against the budget too
        world = get_world(entry.world)
        tick = time.perf_counter()
        eval_n = entry.eval_n if scale == "gpu" else TINY["eval_n"]
        error = score_error_table(_evaluation_copy(result.denoiser, dev), world, n=eval_n, seed=config.seed + 1)
        facts = card_facts(result, error)
        facts["built_by"] = f"checkpoints/make_gpu.sh ({scale} scale)"
        facts["score_error_device"] = "cuda float32" if dev.type == "cuda" else "cpu float32"
        save_checkpoint(out / entry.name, result.denoiser, facts)
        row = {"name": entry.name, "world": entry.world, "device": result.device,
               "reduced_precision": result.reduced_precision_used, "steps": result.steps_done,
               "steps_planned": config.steps, "stopped_at_time_cap": result.stopped_at_time_cap,
               "time_cap_s": round(cap, 1), "samples_per_s": round(result.samples_per_s, 1),
               "ms_per_step": round(1e3 * config.batch_size / result.samples_per_s, 3),
               "target_error": config.target_error, "time_to_target_s": result.time_to_target_s,
               "pooled_relative_error": error["pooled_relative_error"],
               "rms_relative_error": error["rms_relative_error"], "eval_n": eval_n,
               "train_wall_s": round(result.wall_time_s, 2), "eval_s": round(time.perf_counter() - tick, 2)}
        rows.append(row)
        log(f"{entry.name}: {row['steps']}/{row['steps_planned']} steps on {row['device']} "
            f"({row['ms_per_step']:.2f} ms/step, {row['samples_per_s']:,.0f} samples/s), pooled error "
            f"{row['pooled_relative_error']:.4f}, rms {row['rms_relative_error']:.4f}, time to "
            f"{config.target_error}: {row['time_to_target_s']}")
    return rows


def summarize(out: str | pathlib.Path, started: float | None = None) -> dict:
    """Merge the streams' ``.rows-*.json`` under ``out`` into ``out/make_gpu_summary.json`` (returned)."""
    out = pathlib.Path(out)
    rows = []
    for part in sorted(out.glob(".rows-*.json")):
        rows.extend(json.loads(part.read_text(encoding="utf-8")))
        part.unlink()
    order = [e.name for e in SHIPPED]
    rows.sort(key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    summary = {"checkpoints": rows, "expected": order,
               "missing": [n for n in order if n not in {r["name"] for r in rows if "skipped" not in r}],
               "torch": torch.__version__,
               "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    if started is not None:
        summary["package_wall_s"] = round(time.time() - started, 1)
    (out / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the shipped checkpoints (the GPU work package).")
    parser.add_argument("action", choices=["build", "summarize"])
    parser.add_argument("--out", required=True, help="folder of the checkpoints (NAME.safetensors + NAME.json)")
    parser.add_argument("--scale", choices=SCALES, default="gpu")
    parser.add_argument("--stream", type=int, help="build only this stream's checkpoints (default: all)")
    parser.add_argument("--budget-s", type=float, default=STREAM_BUDGET_S, help="training seconds for them all")
    parser.add_argument("--started", type=float, help="the package's start (epoch seconds), for the summary")
    args = parser.parse_args(argv)
    if args.action == "summarize":
        summary = summarize(args.out, args.started)
        print(f"wrote {pathlib.Path(args.out) / SUMMARY}; missing: {summary['missing'] or 'none'}")
        return 1 if summary["missing"] else 0
    entries = [e for e in SHIPPED if args.stream is None or e.stream == args.stream]
    rows = build(entries, args.out, args.scale, budget_s=args.budget_s)
    part = pathlib.Path(args.out) / f".rows-{'all' if args.stream is None else args.stream}.json"
    part.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
