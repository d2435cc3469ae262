r"""Benchmark: training throughput of the cross-attention eps-network (``toy_models.neural``), CPU and CUDA side
by side, and the training time to a score-error target.

Run from the repository root::

    python benchmarks/training.py                        # about 2 minutes on 2 shared CPU cores (+ seconds on a GPU)
    python benchmarks/training.py --steps 50             # a smoke run
    python benchmarks/training.py --worlds ring2d tokens16d --repeats 3
    python benchmarks/training.py --time-to-target       # also: ring2d to pooled relative score error 0.05

What is measured
----------------
*Throughput*: for each world (default ``ring2d attributes2d tokens16d``; ``shapes16``, ``shapes32`` time the
``image`` preset's patch network) and each device (the CPU, and ``cuda`` when
available), one call of :func:`toy_models.neural.train` with the ``default`` preset (batch 1024, width 64, depth 2,
4 heads; on CUDA bf16 autocast and TF32 as in real training, unless ``--full-precision``) run for
``--warmup + --steps`` steps. Every step is a whole training step as the real run does it: drawing a fresh batch
(components, conditions with dropout, t, noise) on the CPU, the forward and backward pass, gradient clipping,
AdamW, the EMA update, and reading the loss back (which synchronises CUDA every step). The ``train`` callback
stamps ``time.perf_counter`` after each step; throughput = ``steps x batch_size / (stamp of the last step - stamp
of the last warm-up step)``, so start-up (network build, first kernels, allocator growth) is excluded. The
devices of one world run back to back (``--repeats`` rounds in alternating order, CPU first in even rounds; the
fastest round of each is reported, since on a shared machine a busy neighbour only ever slows a round down), and
the GPU/CPU ratio is printed per world. The 1-minute load average is printed before and after: another busy process
on the same cores slows the CPU side.

CPU threads: ``--threads 1`` by default. On a 2-core machine shared with other jobs, 2 intra-op threads make every
parallel operator wait for whichever thread is descheduled: measured at a load average of about 5 on 2 cores, the
default invocation took 9 min 44 s with 2 threads (ring2d 403, attributes2d 245, tokens16d 2118 ms/step) and
2 min 5 s with 1 (69, 88, 392 ms/step). On an idle machine, compare ``--threads 2``.

*Time to target* (``--time-to-target``): ring2d, ``default`` preset with ``target_error=0.05`` (``--target``) and
``eval_every=500``: every 500 steps rank 0 evaluates the EMA network's pooled relative score error
(:func:`toy_models.neural.score_error_table`, 512 points per cell, seed 12345) and stops once it is at or below
the target. Reported: the training time to that evaluation *excluding* the evaluations themselves
(``TrainResult.time_to_target_s``), the steps, the wall time including evaluations, and each evaluation. On CUDA
when available, else on the CPU (the line says which). ``--max-steps`` caps the run (default: the preset's 8000);
it is the run's ``steps``, so it also shortens the cosine learning-rate decay: a capped run is not the first part of
the default one.

The whole GPU work package (every shipped checkpoint, its throughput and time to a target, one summary JSON) is
``checkpoints/make_gpu.sh``.

The exit code is 0 (benchmarks do not gate CI)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

try:
    from toy_models.neural import config_from_preset, train
except ImportError:  # not installed: run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from toy_models.neural import config_from_preset, train

WORLDS = ("ring2d", "attributes2d", "tokens16d")
#: image worlds (``--worlds shapes16``) time their own preset: the patch network needs a patch size
IMAGE_PRESETS = {"shapes16": "image", "shapes32": "image"}
DEFAULT_STEPS = 200
DEFAULT_WARMUP = 20
TARGET_WORLD = "ring2d"
TARGET_ERROR = 0.05
TARGET_EVAL_EVERY = 500


# --- throughput -----------------------------------------------------------------------------------------
@dataclass
class Throughput:
    world: str
    device: str
    device_name: str
    batch_size: int
    steps: int
    seconds: list[float]  # one per round: the timed steps' wall time
    final_loss: float

    @property
    def best_seconds(self) -> float:
        return min(self.seconds)

    @property
    def samples_per_s(self) -> float:
        return self.steps * self.batch_size / self.best_seconds

    @property
    def ms_per_step(self) -> float:
        return 1e3 * self.best_seconds / self.steps


def timed_training(world: str, device: str, steps: int, warmup: int, reduced_precision: bool
                   ) -> tuple[float, str, int, float]:
    """Seconds of ``steps`` steps after ``warmup`` steps of the default preset; also the device's name, the batch
    size and the mean loss of the timed steps."""
    config = config_from_preset(world, IMAGE_PRESETS.get(world, "default"), steps=warmup + steps,
                                reduced_precision=reduced_precision)
    stamps: list[float] = []
    result = train(config, device=device, show_progress=False,
                   callback=lambda step, loss: stamps.append(time.perf_counter()))
    if len(stamps) != warmup + steps:
        raise RuntimeError(f"{world} on {device}: {len(stamps)} steps ran, {warmup + steps} were asked for")
    tail = result.losses[-steps:]
    return stamps[-1] - stamps[warmup - 1], result.device, config.batch_size, sum(tail) / len(tail)


def measure_throughput(worlds: list[str], devices: list[str], steps: int, warmup: int, repeats: int,
                       reduced_precision: bool) -> list[Throughput]:
    results = []
    for world in worlds:
        rows: dict[str, Throughput] = {}
        for round_index in range(repeats):
            order = devices if round_index % 2 == 0 else devices[::-1]
            for device in order:
                seconds, name, batch, loss = timed_training(world, device, steps, warmup, reduced_precision)
                if device not in rows:
                    rows[device] = Throughput(world, device, name, batch, steps, [], loss)
                rows[device].seconds.append(seconds)
        results.extend(rows[d] for d in devices)
    return results


def print_throughput(results: list[Throughput]) -> None:
    header = (f"{'world':<13} {'device':<6} {'batch':>6} {'steps':>6} {'ms/step':>9} {'samples/s':>11} "
              f"{'rounds (s)':>18} {'loss':>7}  device name")
    print(header)
    print("-" * len(header))
    for r in results:
        rounds = ", ".join(f"{s:.2f}" for s in r.seconds)
        print(f"{r.world:<13} {r.device:<6} {r.batch_size:>6} {r.steps:>6} {r.ms_per_step:>9.2f} "
              f"{r.samples_per_s:>11,.0f} {rounds:>18} {r.final_loss:>7.4f}  {r.device_name}")
    print("ms/step, samples/s: the fastest round; loss: mean training loss of the timed steps (first round).")
    print()
    by_world: dict[str, dict[str, Throughput]] = {}
    for r in results:
        by_world.setdefault(r.world, {})[r.device] = r
    for world, rows in by_world.items():
        if "cuda" in rows:
            ratio = rows["cuda"].samples_per_s / rows["cpu"].samples_per_s
            print(f"ratio {world}: GPU/CPU throughput {ratio:.1f}x "
                  f"({rows['cuda'].samples_per_s:,.0f} / {rows['cpu'].samples_per_s:,.0f} samples/s)")
        else:
            print(f"ratio {world}: no CUDA device, GPU/CPU ratio not measured "
                  f"(CPU {rows['cpu'].samples_per_s:,.0f} samples/s)")


# --- time to target -------------------------------------------------------------------------------------
def time_to_target(device: str, target: float, max_steps: int | None, reduced_precision: bool) -> None:
    config = config_from_preset(TARGET_WORLD, "default", steps=max_steps, target_error=target,
                                eval_every=TARGET_EVAL_EVERY, reduced_precision=reduced_precision)
    print(f"time to target: {TARGET_WORLD}, default preset (batch {config.batch_size}, width {config.width}, depth "
          f"{config.depth}), target pooled relative score error {target:g}, checked every {config.eval_every} "
          f"steps, at most {config.steps} steps, on {device}")
    result = train(config, device=device, show_progress=False)
    for e in result.evaluations:
        print(f"  step {e['step']:>6}: pooled relative error {e['pooled_relative_error']:.4f} after "
              f"{e['train_time_s']:.1f} s of training")
    if result.time_to_target_s is None:
        last = result.evaluations[-1]["pooled_relative_error"] if result.evaluations else float("nan")
        print(f"target {target:g} NOT reached in {result.steps_done} steps on {device} ({result.device}); last "
              f"evaluation {last:.4f}; wall time {result.wall_time_s:.1f} s")
    else:
        print(f"target {target:g} reached after {result.steps_done} steps: {result.time_to_target_s:.1f} s of "
              f"training on {device} ({result.device}), evaluations excluded; wall time "
              f"{result.wall_time_s:.1f} s with them")


# --- command line ---------------------------------------------------------------------------------------
def load_note() -> str:
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Training throughput of toy_models.neural, CPU and CUDA side by "
                                                 "side; optionally the time to a score-error target.")
    parser.add_argument("--worlds", nargs="+", default=list(WORLDS), choices=[*WORLDS, *IMAGE_PRESETS],
                        metavar="WORLD", help=f"worlds to time (default: {' '.join(WORLDS)}; also "
                                              f"{' '.join(IMAGE_PRESETS)} with the image preset)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"timed steps per world and device (default {DEFAULT_STEPS})")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                        help=f"untimed steps before them (default {DEFAULT_WARMUP})")
    parser.add_argument("--repeats", type=int, default=1, help="rounds per world, alternating order (default 1)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads on the CPU (default 1; see the module docstring)")
    parser.add_argument("--no-cuda", action="store_true", help="time the CPU only, even if CUDA is available")
    parser.add_argument("--full-precision", action="store_true",
                        help="no bf16 autocast / TF32 on CUDA (default: as in real training)")
    parser.add_argument("--time-to-target", action="store_true",
                        help=f"also train {TARGET_WORLD} to --target and report the training time")
    parser.add_argument("--target", type=float, default=TARGET_ERROR,
                        help=f"pooled relative score error target (default {TARGET_ERROR:g})")
    parser.add_argument("--max-steps", type=int, help="cap of the time-to-target run (default: the preset's)")
    parser.add_argument("--skip-throughput", action="store_true", help="only the time-to-target run")
    args = parser.parse_args(argv)
    for name in ("steps", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the last warm-up step starts the clock)")
    if args.skip_throughput and not args.time_to_target:
        parser.error("--skip-throughput needs --time-to-target")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available() and not args.no_cuda
    devices = ["cpu", "cuda"] if cuda else ["cpu"]
    gpu = f", GPU {torch.cuda.get_device_name()}" if cuda else ", no CUDA device"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads{gpu}; "
          f"{'full precision' if args.full_precision else 'bf16 autocast + TF32 on CUDA'}; {load_note()} at start")
    if not args.skip_throughput:
        print(f"throughput: default preset, {args.warmup} warm-up + {args.steps} timed steps per world and device, "
              f"{args.repeats} round(s)")
        results = measure_throughput(args.worlds, devices, args.steps, args.warmup, args.repeats,
                                     not args.full_precision)
        print(f"{load_note()} after the throughput runs (other processes on these cores slow the CPU side)")
        print()
        print_throughput(results)
    if args.time_to_target:
        print()
        time_to_target("cuda" if cuda else "cpu", args.target, args.max_steps, not args.full_precision)
        print(f"{load_note()} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
