r"""Benchmark: sampling ring2d with CFG at 10^6 points x 100 steps, cfgtruth's exact denoiser against a
``torch.distributions`` + autograd denoiser driven by the same loop, for two samplers: DDIM (the guided process)
and ``fkc`` (SMC with Feynman-Kac weights, a sampler of the tilted target).

Run from the repository root::

    python benchmarks/sampling.py            # about 2 minutes on 2 idle CPU cores
    python benchmarks/sampling.py --quick    # N / 10 and subset / 10, a smoke run (its 10^4-point subset is
                                             # dominated by per-call overhead: its ratios are not the targets')
    python benchmarks/sampling.py --strict   # exit 1 if a target is missed
    python benchmarks/sampling.py --profile  # also cProfile both of cfgtruth's loops (Python calls)

What is compared
----------------
Each loop is written once and driven by two denoisers that describe the same model: the mixture parameters and
:math:`\alpha(t), \sigma(t)` of the baseline are taken from cfgtruth's world and schedule, so any difference is the
implementation. Both run in float64 on the CPU, on ``time_grid(100)`` (100 uniform steps from t = 1 to 0,
vp-linear), from one fixed-seed draw made before any timing.

*DDIM*: ``verify.samplers.ddim`` with ``eta = 0`` from ``x_1 ~ N(0, I)``. Per step it calls ``denoiser.eps(x, t)``
once and applies :math:`x_s = \alpha_s (x_t - \sigma_t\hat\varepsilon)/\alpha_t + \sigma_s\hat\varepsilon`.

* cfgtruth: ``rules.get("cfg", w=3).guide(AnalyticDenoiser(ring2d, "vp-linear"), 0)``, the closed-form
  :math:`\hat\varepsilon = \varepsilon_\varnothing + g(\varepsilon_0 - \varepsilon_\varnothing)`, ``g = 4``.
* baseline: what a user would write without cfgtruth. At every call, for the unconditional law (the 8 ring
  components) and the conditional law of class 0 (its one component), build the noised mixture
  ``MixtureSameFamily(Categorical(probs=w), MultivariateNormal(alpha * mu, covariance_matrix=alpha^2 S + sigma^2 I))``
  and take its score by autograd of ``log_prob`` (``torch.autograd.grad(dist.log_prob(x.requires_grad_()).sum(),
  x)``); then :math:`\hat\varepsilon = -\sigma s` and the same CFG combination. ``torch.distributions`` keeps its
  default argument validation, as a user would.

*SMC*: ``sample("fkc", guided, x, time_grid(100), generator=...)`` (``verify.tilted_smc.fkc``) from
:math:`x_1 \sim \mathcal N(0, \sigma_1^2 I)`: start weights from 12 evaluations of both conditions along rays at
t = 1 (Gauss-Legendre, 8 and 4 nodes), then per step one evaluation of both conditions (the base denoiser's
``eps_multi`` or ``eps``), the Feynman-Kac log-weight increment, systematic resampling when the effective sample
size falls below N/2 and an Euler-Maruyama move of the guided reverse SDE; at the end one systematic resampling
returns equally weighted ``[N, 2]`` particles. Both denoisers are guided by the same rule,
``rules.get("cfg", w=3).guide(base, 0)``; only the base differs:

* cfgtruth: ``AnalyticDenoiser(ring2d, "vp-linear")``;
* baseline: the same ``torch.distributions`` + autograd law per condition as DDIM's baseline, as a base denoiser
  (``eps(x, t, condition)``: ``None`` the 8-component ring mixture, ``0`` class 0's component).

Time
----
Wall-clock ``time.perf_counter`` of the whole sampler call; the start points are drawn before, outside every timing
(for both), and a fresh generator with the same seed is made before each SMC run (outside the timing).
``torch.set_num_threads(2)``. Both denoisers first run each loop once on 1,000 points x 2 steps (warm-up). The
baselines are slow, so they run on a *subset*: the first 10^5 of the 10^6 starting points, all 100 steps. On that
subset ``--repeats`` rounds (default 3) each run both denoisers once, in alternating order (cfgtruth first in even
rounds), and the fastest run of each gives the like-for-like speed ratio, per sample-step (``N x steps / seconds``).
The minimum, not the median: on a shared 2-core machine a busy neighbour slows single runs 5-40x (measured here with
the earlier batched engine: cfgtruth's DDIM subset run took 1.45 s in a quiet round and 12-13 s in two disturbed
ones, the baseline 5.3 s and 74-92 s), and the least-disturbed run is the estimate of each loop's own cost; all runs
are printed. The baselines' times for 10^6 x 100 are *extrapolated* linearly from the subset (labelled so); for
DDIM, as a check of that extrapolation, the baseline also runs once on all 10^6 points for the first 10 steps of the
same grid (a DDIM step costs the same at every t; the cost per point need not stay constant at 10x the size, as
memory traffic grows). SMC has no such check: its start weights cost 12 evaluations whatever the number of steps.
cfgtruth runs both loops at the full 10^6 x 100 for real, ``--full-repeats`` times each (default 2) after the
rounds; the fastest run is the one judged against the target (all are printed), with its user and system CPU time
and minor page faults (``getrusage``). The 1-minute load average is printed before and after: with 2 intra-op
threads another busy process on the same 2 cores costs far more than its share, so run on an otherwise idle machine.
Every parallel operator ends at a barrier that waits for both threads; with a busy neighbour the thread that shares
its core is descheduled for a whole time slice, and GNU OpenMP's default wait (spinning first) keeps the other core
busy meanwhile. cfgtruth's block engine runs over a thousand operators per evaluation of the ring2d mixture at 10^6
points (small blocks that stay in cache), against some 30 for the batched engine, so a neighbour hits it far harder:
measured here with one busy neighbour, one evaluation took 11.5 s instead of 0.06 s (batched: 0.56 s).
``OMP_WAIT_POLICY=PASSIVE`` (set before Python starts) lets the waiting thread sleep and the scheduler move the
other one; the same evaluation then took 0.11 s, but on an idle machine that policy costs about a third (72-90 ms
against 54-62 ms per evaluation), so the benchmark leaves the default.

Where the time goes
-------------------
Always printed, before the ratios: ``torch.profiler``'s per-operator table (self CPU time, top 12) of each of
cfgtruth's loops on 5 steps at full size (for SMC the 5 steps come after its 12 start evaluations, which the
table includes), and from ``cProfile`` of another such run the shares of the wall time spent in the exact denoiser
(``AnalyticDenoiser.eps_multi``, both conditions), in the guidance rule (``GuidedDenoiser.predict`` less the
denoiser) and in the rest of the loop. ``--profile`` adds the ``cProfile`` tables (Python calls, by cumulative
time).

Agreement
---------
DDIM: max abs difference of the final samples of the two loops on the subset (float64: ~1e-12 expected; the first
step's :math:`1/\alpha_1 = 150` amplifies rounding of eps), and of cfgtruth's subset run against the same rows of
its full run. SMC: the two runs draw the same random numbers, so their particles are the same up to rounding except
where a rounding difference moves a resampling boundary (a particle copied once more or less): the share of the
subset's rows that agree within the same tolerance is printed, with the largest difference of the particle means
(information, not a target).

Targets
-------
DDIM: cfgtruth's full run in at most 10 s, and at least 2x faster than the baseline per sample-step, with the
subset agreement below 1e-10. SMC: cfgtruth's full run in at most 30 s (its ratio to the baseline is printed). The
ratios are printed last, one ``ratio`` line per sampler with PASS or FAIL for each target, then
``all targets met: yes/no``. Exit code 0 unless ``--strict`` and a target is missed."""

from __future__ import annotations

import argparse
import cProfile
import io
import math
import os
import pstats
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

try:
    from toy_models import AnalyticDenoiser, get_world
except ImportError:  # not installed: run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from toy_models import AnalyticDenoiser, get_world
from toy_models.gaussian_mixture import GaussianMixture
from toy_models.schedules import get_schedule
from verify import rules
from verify.samplers import ddim, sample, time_grid

F64 = torch.float64
SEED = 20240612
SMC_SEED = 20240613  # the moves and resampling uniforms of fkc (a fresh generator per run)
N_FULL, N_SUBSET, N_STEPS = 1_000_000, 100_000, 100
W, CONDITION, SCHEDULE, WORLD = 3.0, 0, "vp-linear", "ring2d"
TIME_TARGET_S = 10.0  # DDIM, the full run
SMC_TIME_TARGET_S = 30.0  # SMC, the full run
SPEED_TARGET = 2.0  # DDIM, like for like on the subset
AGREEMENT_TOLERANCE = 1e-10
PROFILE_STEPS = 5
PROFILE_ROWS = 12
SHORT_STEPS = 10  # the DDIM baseline's full-size run
MIN_REPEATS = 1


# --- the loops and the denoisers ---------------------------------------------------------------------------
def run_ddim(denoiser, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The one DDIM loop both denoisers drive (eta = 0, no callback: no trajectory is kept)."""
    return ddim(denoiser, x, timesteps, eta=0.0)


def run_fkc(denoiser, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The one SMC loop both denoisers drive, with a fresh generator of the same seed each time."""
    return sample("fkc", denoiser, x, timesteps, generator=torch.Generator().manual_seed(SMC_SEED))


def cfgtruth_base() -> AnalyticDenoiser:
    return AnalyticDenoiser(get_world(WORLD), SCHEDULE)


def guided(base) -> rules.GuidedDenoiser:
    return rules.get("cfg", w=W).guide(base, CONDITION)


class TorchDistributionsDenoiser:
    """eps per condition from ``torch.distributions`` mixtures rebuilt at each call, scores by autograd of
    ``log_prob``: ``None`` is the world's unconditional law, ``CONDITION`` its class's law."""

    def __init__(self, laws: dict, schedule: str):
        self.laws = {c: (law.weights.to(F64), law.means.to(F64), law.covariances.to(F64)) for c, law in laws.items()}
        self.schedule = get_schedule(schedule)
        self.dim = next(iter(laws.values())).dim

    def score(self, x: torch.Tensor, alpha: float, sigma: float, condition) -> torch.Tensor:
        weights, means, covariances = self.laws[condition]
        eye = torch.eye(self.dim, dtype=F64)
        dist = MixtureSameFamily(Categorical(probs=weights),
                                 MultivariateNormal(alpha * means, covariance_matrix=alpha**2 * covariances
                                                    + sigma**2 * eye))
        x_req = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(dist.log_prob(x_req).sum(), x_req)
        return grad

    def eps(self, x: torch.Tensor, t, condition=None) -> torch.Tensor:
        alpha, sigma = (float(v) for v in self.schedule.alpha_sigma(t))
        return -sigma * self.score(x, alpha, sigma, condition)


class TorchDistributionsCFG:
    """DDIM's baseline: CFG of the two conditions of :class:`TorchDistributionsDenoiser`, written out."""

    def __init__(self, unconditional: GaussianMixture, conditional: GaussianMixture, w: float, schedule: str):
        self.base = TorchDistributionsDenoiser({None: unconditional, CONDITION: conditional}, schedule)
        self.guidance_scale = 1.0 + w
        self.schedule = self.base.schedule
        self.dim = self.base.dim

    def eps(self, x: torch.Tensor, t, condition=None) -> torch.Tensor:
        eps_uncond, eps_cond = (self.base.eps(x, t, c) for c in (None, CONDITION))
        return eps_uncond + self.guidance_scale * (eps_cond - eps_uncond)


def baseline_laws() -> dict:
    world = get_world(WORLD)
    return {None: world.law(None), CONDITION: world.law(CONDITION)}


def baseline_ddim_denoiser() -> TorchDistributionsCFG:
    laws = baseline_laws()
    return TorchDistributionsCFG(laws[None], laws[CONDITION], W, SCHEDULE)


def baseline_smc_denoiser() -> rules.GuidedDenoiser:
    return guided(TorchDistributionsDenoiser(baseline_laws(), SCHEDULE))


# --- measurement ----------------------------------------------------------------------------------------
Loop = Callable[[object, torch.Tensor, torch.Tensor], torch.Tensor]


def timed(loop: Loop, denoiser, x: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    out = loop(denoiser, x, timesteps)
    return out, time.perf_counter() - start


def timed_with_usage(loop: Loop, denoiser, x: torch.Tensor, timesteps: torch.Tensor
                     ) -> tuple[torch.Tensor, float, tuple[float, float, int]]:
    before = resource.getrusage(resource.RUSAGE_SELF)
    out, seconds = timed(loop, denoiser, x, timesteps)
    after = resource.getrusage(resource.RUSAGE_SELF)
    usage = (after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, after.ru_minflt - before.ru_minflt)
    return out, seconds, usage


@dataclass
class Results:
    """One sampler's measurements: cfgtruth at full size, both denoisers on the subset."""

    name: str
    n_full: int
    n_subset: int
    steps: int
    time_target_s: float
    cfgtruth_full_runs: list[float]
    cfgtruth_subset_runs: list[float]
    baseline_subset_runs: list[float]
    full_rusage: tuple[float, float, int]  # user s, system s, minor page faults of the fastest full run
    max_diff_subset: float  # DDIM: max |cfgtruth - baseline| on the subset; SMC: of the particle means
    agreeing_rows: float  # share of subset rows within AGREEMENT_TOLERANCE of the baseline's
    max_diff_full_rows: float | None  # DDIM: cfgtruth's subset run against the same rows of its full run
    max_abs_sample: float
    baseline_short_s: float | None = None  # DDIM: the baseline on all n_full points, SHORT_STEPS steps

    @property
    def cfgtruth_full_s(self) -> float:
        return min(self.cfgtruth_full_runs)

    @property
    def subset_sample_steps(self) -> int:
        return self.n_subset * self.steps

    @property
    def cfgtruth_subset_s(self) -> float:
        return min(self.cfgtruth_subset_runs)

    @property
    def baseline_subset_s(self) -> float:
        return min(self.baseline_subset_runs)

    @property
    def speedup(self) -> float:
        return self.baseline_subset_s / self.cfgtruth_subset_s

    @property
    def baseline_extrapolated_s(self) -> float:
        return self.baseline_subset_s * (self.n_full * self.steps) / self.subset_sample_steps

    @property
    def baseline_short_extrapolated_s(self) -> float | None:
        return None if self.baseline_short_s is None else self.baseline_short_s * self.steps / SHORT_STEPS

    @property
    def full_size_speedup(self) -> float:
        """The baseline extrapolated to full size (from its full-size short run if there is one) over cfgtruth's
        full run."""
        reference = self.baseline_short_extrapolated_s or self.baseline_extrapolated_s
        return reference / self.cfgtruth_full_s

    @property
    def time_ok(self) -> bool:
        return self.cfgtruth_full_s <= self.time_target_s


def run_rounds(loop: Loop, ours, baseline, subset: torch.Tensor, timesteps: torch.Tensor, repeats: int
               ) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
    """``repeats`` rounds on the subset, each running both denoisers once in alternating order."""
    runs: dict[str, list[float]] = {"cfgtruth": [], "baseline": []}
    finals: dict[str, torch.Tensor] = {}
    for round_index in range(repeats):
        order = [("cfgtruth", ours), ("baseline", baseline)]
        for name, denoiser in order if round_index % 2 == 0 else order[::-1]:
            finals[name], seconds = timed(loop, denoiser, subset, timesteps)
            runs[name].append(seconds)
    return runs, finals


def agreeing_share(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs().amax(dim=1) <= AGREEMENT_TOLERANCE).double().mean())


def full_runs_of(loop: Loop, denoiser, x: torch.Tensor, timesteps: torch.Tensor, repeats: int
                 ) -> tuple[torch.Tensor, list[float], tuple[float, float, int]]:
    """cfgtruth at full size, ``repeats`` times: the output, every wall time, and the usage of the fastest run."""
    runs, best = [], None
    for _ in range(repeats):
        out, seconds, usage = timed_with_usage(loop, denoiser, x, timesteps)
        runs.append(seconds)
        if best is None or seconds <= min(runs):
            best = usage
    return out, runs, best


def side_by_side(loop: Loop, baseline, x: torch.Tensor, n_subset: int, timesteps: torch.Tensor, repeats: int
                 ) -> tuple[object, dict[str, list[float]], dict[str, torch.Tensor]]:
    """cfgtruth's guided exact model and ``baseline`` under ``loop`` on the first ``n_subset`` points of ``x``: both
    warmed up (1000 points, 2 steps), then :func:`run_rounds`. Returns cfgtruth's denoiser, the rounds' wall times
    and the final points of each."""
    ours = guided(cfgtruth_base())
    warm_x, warm_ts = x[:1000].clone(), time_grid(2)
    loop(ours, warm_x, warm_ts)
    loop(baseline, warm_x, warm_ts)
    runs, finals = run_rounds(loop, ours, baseline, x[:n_subset].clone(), timesteps, repeats)
    return ours, runs, finals


def measure_ddim(n_full: int, n_subset: int, steps: int, repeats: int, full_repeats: int) -> Results:
    timesteps = time_grid(steps)
    x = torch.randn(n_full, 2, generator=torch.Generator().manual_seed(SEED), dtype=F64)  # outside every timing
    baseline = baseline_ddim_denoiser()
    ours, runs, finals = side_by_side(run_ddim, baseline, x, n_subset, timesteps, repeats)
    _, short_s = timed(run_ddim, baseline, x, timesteps[:SHORT_STEPS + 1])
    ours_full, full_runs, usage = full_runs_of(run_ddim, ours, x, timesteps, full_repeats)
    return Results("DDIM", n_full, n_subset, steps, TIME_TARGET_S, full_runs, runs["cfgtruth"], runs["baseline"], usage,
                   float((finals["cfgtruth"] - finals["baseline"]).abs().max()),
                   agreeing_share(finals["cfgtruth"], finals["baseline"]),
                   float((ours_full[:n_subset] - finals["cfgtruth"]).abs().max()),
                   float(finals["baseline"].abs().max()), short_s)


def smc_start(n: int) -> torch.Tensor:
    """``x_1 ~ N(0, sigma_1^2 I)``, the start of fkc."""
    sigma_1 = float(get_schedule(SCHEDULE).sigma(1.0))
    return sigma_1 * torch.randn(n, 2, generator=torch.Generator().manual_seed(SEED), dtype=F64)


def measure_smc(n_full: int, n_subset: int, steps: int, repeats: int, full_repeats: int) -> Results:
    timesteps = time_grid(steps)
    x = smc_start(n_full)  # outside every timing
    ours, runs, finals = side_by_side(run_fkc, baseline_smc_denoiser(), x, n_subset, timesteps, repeats)
    _, full_runs, usage = full_runs_of(run_fkc, ours, x, timesteps, full_repeats)
    return Results("SMC (fkc)", n_full, n_subset, steps, SMC_TIME_TARGET_S, full_runs, runs["cfgtruth"],
                   runs["baseline"], usage,
                   float((finals["cfgtruth"].mean(0) - finals["baseline"].mean(0)).abs().max()),
                   agreeing_share(finals["cfgtruth"], finals["baseline"]), None,
                   float(finals["baseline"].abs().max()))


# --- where the time goes --------------------------------------------------------------------------------
def operator_table(loop: Loop, denoiser, x: torch.Tensor, timesteps: torch.Tensor) -> str:
    """``torch.profiler``'s per-operator table (self CPU time) of one run."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loop(denoiser, x, timesteps)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=PROFILE_ROWS)


def profiled(loop: Loop, denoiser, x: torch.Tensor, timesteps: torch.Tensor) -> pstats.Stats:
    """``cProfile``'s statistics of one run."""
    profiler = cProfile.Profile()
    profiler.enable()
    loop(denoiser, x, timesteps)
    profiler.disable()
    return pstats.Stats(profiler, stream=io.StringIO())


def python_table(stats: pstats.Stats) -> str:
    """The table (Python calls, by cumulative time)."""
    text = io.StringIO()
    stats.stream = text
    stats.sort_stats("cumulative").print_stats(18)
    return "\n".join(line for line in text.getvalue().splitlines() if line.strip())[:6000]


def cumulative(stats: pstats.Stats, path_end: str, name: str) -> float:
    """Cumulative seconds of the functions called ``name`` in files ending with ``path_end``."""
    return sum(entry[3] for (path, _, function), entry in stats.stats.items()
               if function == name and path.replace("\\", "/").endswith(path_end))


def time_shares(stats: pstats.Stats, loop_name: str) -> str:
    """The loop's time split into cfgtruth's exact denoiser (``AnalyticDenoiser.eps_multi``: both conditions), the
    guidance rule (``GuidedDenoiser.predict`` less the denoiser: the CFG combination and its checks) and the rest
    (the sampler's own arithmetic and checks, and for SMC its weights and resampling)."""
    total = max(stats.total_tt, 1e-12)
    denoiser = cumulative(stats, "toy_models/denoiser.py", "eps_multi")
    predict = cumulative(stats, "verify/rules/_base.py", "predict")
    rule = max(predict - denoiser, 0.0) if predict else 0.0
    rest = total - denoiser - rule
    parts = [("exact denoiser (both conditions)", denoiser), ("guidance rule", rule), (loop_name, rest)]
    return ", ".join(f"{label} {100 * seconds / total:.0f} %" for label, seconds in parts if seconds > 0)


def print_profiles(n: int, python_too: bool) -> None:
    """Where cfgtruth's time goes, for both loops, on PROFILE_STEPS steps at size ``n``."""
    timesteps = time_grid(N_STEPS)[:PROFILE_STEPS + 1]
    cases = [("DDIM", run_ddim, torch.randn(n, 2, generator=torch.Generator().manual_seed(SEED), dtype=F64),
              "the DDIM update and its checks"),
             ("SMC (fkc), with its 12 start evaluations", run_fkc, smc_start(n),
              "the SMC weights, moves, resampling and checks")]
    for label, loop, x, rest in cases:
        ours = guided(cfgtruth_base())
        loop(ours, x[:1000].clone(), timesteps)
        print(f"where cfgtruth's time goes, {label}: {n} points x {PROFILE_STEPS} steps, torch operators by self CPU "
              f"time:")
        print(operator_table(loop, ours, x, timesteps))
        stats = profiled(loop, ours, x, timesteps)
        print(f"the same run by Python function (cProfile): {time_shares(stats, rest)}")
        if python_too:
            print("cProfile of the same run, by cumulative time:")
            print(python_table(stats))
        print()


# --- report ---------------------------------------------------------------------------------------------
def runs_text(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def rate(sample_steps: int, seconds: float) -> str:
    return f"{sample_steps / seconds / 1e6:.2f} M sample-steps/s"


def print_table(r: Results) -> None:
    full_steps = r.n_full * r.steps
    rows = [
        ("cfgtruth", f"{r.n_subset} x {r.steps}", r.cfgtruth_subset_s, runs_text(r.cfgtruth_subset_runs),
         rate(r.subset_sample_steps, r.cfgtruth_subset_s), "measured, fastest run"),
        ("baseline", f"{r.n_subset} x {r.steps}", r.baseline_subset_s, runs_text(r.baseline_subset_runs),
         rate(r.subset_sample_steps, r.baseline_subset_s), "measured, fastest run"),
        ("cfgtruth", f"{r.n_full} x {r.steps}", r.cfgtruth_full_s, runs_text(r.cfgtruth_full_runs),
         rate(full_steps, r.cfgtruth_full_s), "measured, fastest run"),
        ("baseline", f"{r.n_full} x {r.steps}", r.baseline_extrapolated_s, "",
         rate(r.subset_sample_steps, r.baseline_subset_s), f"EXTRAPOLATED from {r.n_subset} x {r.steps}"),
    ]
    if r.baseline_short_s is not None:
        rows += [
            ("baseline", f"{r.n_full} x {SHORT_STEPS}", r.baseline_short_s, "",
             rate(r.n_full * SHORT_STEPS, r.baseline_short_s), "measured, one run"),
            ("baseline", f"{r.n_full} x {r.steps}", r.baseline_short_extrapolated_s, "",
             rate(r.n_full * SHORT_STEPS, r.baseline_short_s), f"EXTRAPOLATED from {r.n_full} x {SHORT_STEPS}"),
        ]
    print(f"{r.name}:")
    header = f"{'denoiser':<9} {'N x steps':>16} {'seconds':>9} {'runs':>24} {'throughput':>24}  how"
    print(header)
    print("-" * (len(header) + 26))
    for name, size, seconds, runs, throughput, how in rows:
        print(f"{name:<9} {size:>16} {seconds:>9.2f} {runs:>24} {throughput:>24}  {how}")
    user, system, faults = r.full_rusage
    print(f"cfgtruth's fastest full run: {user:.1f} s user + {system:.1f} s system CPU over {r.cfgtruth_full_s:.1f} s "
          f"wall, "
          f"{faults:,} minor page faults; at full size cfgtruth is {r.full_size_speedup:.1f}x faster per sample-step "
          f"than the baseline's extrapolated time")


def print_agreement(ddim_r: Results, smc_r: Results) -> None:
    verdict = "ok" if ddim_agrees(ddim_r) else f"ABOVE {AGREEMENT_TOLERANCE:g}"
    print(f"DDIM agreement on the subset: max |cfgtruth - baseline| = {ddim_r.max_diff_subset:.2e} over final samples "
          f"of max |x| {ddim_r.max_abs_sample:.2f} ({verdict}); cfgtruth subset vs the same rows of its full run: "
          f"{ddim_r.max_diff_full_rows:.2e}")
    print(f"SMC agreement on the subset: {100 * smc_r.agreeing_rows:.3f} % of the particles within "
          f"{AGREEMENT_TOLERANCE:g} of the baseline's (the rest moved by a resampling boundary); particle means "
          f"differ by {smc_r.max_diff_subset:.2e} (information)")


def ddim_agrees(r: Results) -> bool:
    return r.max_diff_subset <= AGREEMENT_TOLERANCE


def size_text(n: int) -> str:
    return f"10^{round(math.log10(n))}" if n == 10 ** round(math.log10(n)) else str(n)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def ratio_lines(ddim_r: Results, smc_r: Results) -> list[str]:
    speed_ok = ddim_r.speedup >= SPEED_TARGET
    return [
        f"ratio sampling: cfgtruth {size_text(ddim_r.n_full)} x {ddim_r.steps} DDIM CFG in "
        f"{ddim_r.cfgtruth_full_s:.1f} s (target <= {TIME_TARGET_S:g} s) {verdict(ddim_r.time_ok)}; "
        f"{ddim_r.speedup:.1f}x faster per sample-step than torch.distributions + autograd "
        f"(target >= {SPEED_TARGET:g}x) {verdict(speed_ok)}",
        f"ratio smc: cfgtruth {size_text(smc_r.n_full)} particles x {smc_r.steps} steps fkc CFG in "
        f"{smc_r.cfgtruth_full_s:.1f} s (target <= {SMC_TIME_TARGET_S:g} s) {verdict(smc_r.time_ok)}; "
        f"{smc_r.speedup:.1f}x faster per sample-step than torch.distributions + autograd",
    ]


def load_note() -> str:
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"


# --- command line ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="DDIM and SMC sampling with CFG: cfgtruth vs torch.distributions + "
                                                 "autograd.")
    parser.add_argument("--quick", action="store_true", help="N / 10 and subset / 10: a smoke run")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--profile", action="store_true", help="also cProfile cfgtruth's loops (Python calls)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds on the subset (default 3)")
    parser.add_argument("--full-repeats", type=int, default=2, help="cfgtruth's runs at full size (default 2)")
    args = parser.parse_args(argv)
    if args.repeats < MIN_REPEATS or args.full_repeats < MIN_REPEATS:
        parser.error(f"--repeats and --full-repeats must be at least {MIN_REPEATS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    scale = 10 if args.quick else 1
    n_full, n_subset = N_FULL // scale, N_SUBSET // scale
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {WORLD}, CFG w={W:g} towards class "
          f"{CONDITION}, {SCHEDULE}, {N_STEPS} uniform steps, float64, DDIM eta=0 and fkc"
          f"{', quick (N/10)' if args.quick else ''}, {args.repeats} rounds on the subset; {load_note()} at start")
    ddim_r = measure_ddim(n_full, n_subset, N_STEPS, args.repeats, args.full_repeats)
    smc_r = measure_smc(n_full, n_subset, N_STEPS, args.repeats, args.full_repeats)
    print(f"{load_note()} at end (other processes on these cores slow both denoisers)")
    print_table(ddim_r)
    print_table(smc_r)
    print("cfgtruth: rules.get('cfg').guide(AnalyticDenoiser); baseline: torch.distributions MixtureSameFamily + "
          "autograd; DDIM through verify.samplers.ddim (eta = 0), SMC through sample('fkc'), float64.")
    print_agreement(ddim_r, smc_r)
    print()
    print_profiles(n_full, args.profile)
    print()
    for line in ratio_lines(ddim_r, smc_r):
        print(line)
    all_met = ddim_r.time_ok and ddim_r.speedup >= SPEED_TARGET and ddim_agrees(ddim_r) and smc_r.time_ok
    print(f"all targets met: {'yes' if all_met else 'no'}")
    return 1 if args.strict and not all_met else 0


if __name__ == "__main__":
    sys.exit(main())
