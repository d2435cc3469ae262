r"""Benchmark: false-alarm rate and power of the project's sampling checks, measured over many seeds.

Run from the repository root::

    python benchmarks/calibration.py            # 200 seeds, about 2-3 minutes on 2 idle CPU cores
    python benchmarks/calibration.py --quick    # 50 seeds, a smoke run

The check under test
--------------------
"Do these N samples follow the reference law?" (docs/tolerances.md): a Holm-corrected family
(:func:`verify.metrics.run_family`) of three tests against a one-dimensional Gaussian reference
:math:`\mathcal N(m, v)`,

* the mean and the variance z-tests of :func:`verify.metrics.moment_pvalues`;
* the Kolmogorov-Smirnov test of :func:`verify.metrics.ks_pvalue` against the reference CDF (a one-component
  ``GaussianMixture`` with that mean and variance, whose ``cdf`` is :math:`\Phi((x - m)/\sqrt v)`),

at family-wise ``alpha = 0.01`` (the headline) and ``0.05``. The family rejects when any test does.

Setting
-------
World ``gauss1d`` (``cond = world.law(1) = N(1, 0.5)``, ``uncond = world.law(None) = N(0, 1)``), the exact
``AnalyticDenoiser`` on ``vp-linear``, guided by ``rules.get("cfg", guidance_scale=g).guide(..., 1)`` with
``g = 4`` (w = 3).
Samplers: ``ddpm`` (stochastic) and ``ddim`` with ``eta = 0`` (deterministic given the start), 50 uniform steps
from t = 1 to 0 (``time_grid(50)``), ``N`` samples per seed from ``x_1 ~ N(0, 1)``, float64.

Reference law: the *exact* law of the discrete sampler at ``g = 4``, computed without sampling. In a Gaussian world
the guided eps is affine in x, so every step is :math:`x' = a_i x + b_i + c_i z` (``c_i = 0`` for DDIM). Running the
project's sampler for one step on the points 0 and 1 (and, for DDPM, on 0 with unit noise) gives
:math:`b_i = F(0)`, :math:`a_i = F(1) - F(0)`, :math:`c_i = F(0; z = 1) - F(0)`, and the moments propagate as
:math:`m' = a m + b`, :math:`v' = a^2 v + c^2` from :math:`(0, 1)`. The law is Gaussian, so mean and variance fix it.
(This is the device of ``tests/test_samplers.py``'s ``discrete_law``, copied, in one dimension.) As a cross-check
the law is computed a second way, from one run over all steps on the points 0, 1 and one unit-noise row per step,
and the two must agree to 1e-12 relative. Discretisation bias is therefore excluded from the false-alarm rate;
for context the table also prints how many standard errors the continuous-time law
(:func:`verify.exact_law.exact_gaussian_cfg_law`, SDE for DDPM, ODE for DDIM) is away from the discrete one.

What is measured
----------------
For each seed, one set of N samples is drawn at ``g = 4`` (the null) and an independent one at ``g = 4 x 1.02``
(the alternative: guidance_scale off by 2 %); both are checked against the reference at ``g = 4``.

* false-alarm rate = fraction of seeds whose null samples the family rejects;
* power = fraction of seeds whose alternative samples it rejects.

Each rate comes with a 95 % Clopper-Pearson interval (``scipy.stats.binomtest(k, n).proportion_ci()``). The
false-alarm rate is *consistent* with the nominal alpha when alpha lies inside the interval or above it (the rate is
then significantly below alpha: Holm is conservative, and the three tests are positively dependent); it is
miscalibrated only if alpha lies below the interval. The table also gives each test's unadjusted rejection rate
at 0.01, to show which test carries the power.

For context, the power the normal approximation predicts for the mean test alone, at the level ``alpha / 3`` of
Holm's first step (a lower bound on the family's power through that test): noncentrality
:math:`\mu = |m_{1.02g} - m_g| / (\sqrt{v_{1.02g}/N})`, power :func:`verify.metrics.z_test_power`, and the N at
which it reaches 80 %. Where the measured power at N = 10,000 is below 80 %, the sampler is run again (false
alarm and power) at the next size of ``--larger-n`` (default 30,000 then 100,000, stopping at the first size whose
measured power reaches 80 %), so the report says at what N the check detects a 2 % error in guidance_scale.

Seeds and processes
-------------------
Every (sampler, N, hypothesis, seed) draws from its own ``torch.Generator`` seeded from
``numpy.random.SeedSequence([SEED, N, seed, hypothesis])``: the start ``x_1`` first, then DDPM's per-step noise.
Seeds are independent, so the counts are binomial. The seeds run in ``--workers`` spawned processes (default 2),
each with one torch thread: the tensors are small ([N, 1]), and one thread per process is faster than two threads
in one (measured: a 10^4-point DDPM run takes 0.15 s with 1 thread, over 1 s with 2 on a loaded machine). The
results do not depend on the number of workers. The exit code is 0 unless ``--strict`` is given and a false-alarm
rate is miscalibrated."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from scipy import stats

try:
    from toy_models import AnalyticDenoiser, get_world
except ImportError:  # not installed: run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from toy_models import AnalyticDenoiser, get_world
from toy_models.gaussian_mixture import GaussianMixture
from verify import rules
from verify.exact_law import exact_gaussian_cfg_law
from verify.metrics import ks_pvalue, moment_pvalues, run_family, z_test_power
from verify.samplers import get_sampler, sample, time_grid

F64 = torch.float64
SEED = 20240611
GUIDANCE = 4.0  # guidance_scale g (w = 3)
OFF_BY = 1.02  # the alternative: g off by 2 %
N_STEPS = 50
SCHEDULE = "vp-linear"
N_SAMPLES = 10_000
LARGER_N = (30_000, 100_000)
SEEDS, QUICK_SEEDS = 200, 50
ALPHAS = (0.01, 0.05)
HEADLINE_ALPHA = 0.01
TARGET_POWER = 0.8
CONFIDENCE = 0.95
SAMPLERS = {"ddpm": {}, "ddim": {"eta": 0.0}}  # name -> sampler kwargs
#: the continuous-time law each discretises, from the sampler registry ("sde" for DDPM, "ode" for DDIM at eta = 0)
CONTINUOUS = {name: get_sampler(name).continuous_limit(kw.get("eta", 0.0)) for name, kw in SAMPLERS.items()}
TESTS = ("mean", "var", "ks")
HYPOTHESES = {"null": GUIDANCE, "alt": GUIDANCE * OFF_BY}  # guidance_scale the samples are drawn at
CHUNK = 10  # seeds per worker task


# --- the exact law of the discrete sampler ----------------------------------------------------------------
def guided_denoiser(g: float) -> rules.GuidedDenoiser:
    return rules.get("cfg", guidance_scale=g).guide(AnalyticDenoiser(get_world("gauss1d"), SCHEDULE), 1)


def _stochastic(name: str) -> bool:
    """Whether the sampler draws noise with its benchmark kwargs (the registry's ``is_stochastic``)."""
    return get_sampler(name).is_stochastic(SAMPLERS[name].get("eta", 0.0))


def timesteps() -> torch.Tensor:
    return time_grid(N_STEPS)


def _run_rows(name: str, g: float, ts: torch.Tensor, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    kw = dict(SAMPLERS[name])
    if _stochastic(name):
        kw["noise"] = noise
    return sample(name, guided_denoiser(g), x, ts, **kw)[:, 0]


def reference_law(name: str, g: float) -> tuple[float, float]:
    """Mean and variance of the discrete sampler's output from ``x_1 ~ N(0, 1)``, stepwise (see the docstring)."""
    ts = timesteps()
    x = torch.tensor([[0.0], [1.0], [0.0]], dtype=F64)
    noise = torch.tensor([[[0.0], [0.0], [1.0]]], dtype=F64)  # one step; only the third row gets z = 1
    mean, var = 0.0, 1.0
    for i in range(N_STEPS):
        out = _run_rows(name, g, ts[i:i + 2], x, noise)
        b, a, c = float(out[0]), float(out[1] - out[0]), float(out[2] - out[0])
        mean, var = a * mean + b, a * a * var + c * c
    return mean, var


def reference_law_one_run(name: str, g: float) -> tuple[float, float]:
    """The same law from one run over all steps: rows 0, 1 and (stochastic) one unit-noise row per step."""
    ts = timesteps()
    n_noise = N_STEPS if _stochastic(name) else 0
    x = torch.zeros(2 + n_noise, 1, dtype=F64)
    x[1, 0] = 1.0
    noise = torch.zeros(N_STEPS, 2 + n_noise, 1, dtype=F64)
    for k in range(n_noise):
        noise[k, 2 + k, 0] = 1.0
    out = _run_rows(name, g, ts, x, noise)
    columns = out[1:] - out[0]
    return float(out[0]), float((columns * columns).sum())


def gaussian_law(mean: float, var: float) -> GaussianMixture:
    return GaussianMixture([1.0], [[mean]], [[[var]]])


# --- one seed: samples and the three p-values (runs in the workers) ------------------------------------------
def seed_generator(n: int, seed: int, hypothesis: str, name: str) -> torch.Generator:
    entropy = [SEED, n, seed, list(HYPOTHESES).index(hypothesis), list(SAMPLERS).index(name)]
    return torch.Generator().manual_seed(int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1))


def seed_pvalues(task: tuple[str, int, str, list[int], float, float]) -> np.ndarray:
    """``[len(seeds), 3]`` p-values (mean, var, KS) of samples drawn under ``hypothesis`` against the reference."""
    name, n, hypothesis, seeds, ref_mean, ref_var = task
    torch.set_num_threads(1)
    denoiser = guided_denoiser(HYPOTHESES[hypothesis])
    ts = timesteps()
    law = gaussian_law(ref_mean, ref_var)
    mean_t, cov_t = torch.tensor([ref_mean], dtype=F64), torch.tensor([[ref_var]], dtype=F64)
    rows = []
    for seed in seeds:
        generator = seed_generator(n, seed, hypothesis, name)
        x1 = torch.randn(n, 1, generator=generator, dtype=F64)
        out = sample(name, denoiser, x1, ts, generator=generator, **SAMPLERS[name])
        p_mean, p_var = moment_pvalues(out, mean_t, cov_t)
        rows.append((p_mean, p_var, ks_pvalue(out, law)))
    return np.asarray(rows, dtype=np.float64)


# --- rates ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rate:
    k: int
    n: int

    @property
    def value(self) -> float:
        return self.k / self.n

    @property
    def interval(self) -> tuple[float, float]:
        ci = stats.binomtest(self.k, self.n).proportion_ci(confidence_level=CONFIDENCE, method="exact")
        return float(ci.low), float(ci.high)

    def text(self, digits: int = 3) -> str:
        lo, hi = self.interval
        return f"{self.value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def family_rejects(pvalues: np.ndarray, alpha: float) -> np.ndarray:
    """Per seed: does the Holm family (moments + KS) reject at family-wise ``alpha``?"""
    return np.array([any(check.rejected for check in run_family({"moments": row[:2], "ks": row[2]}, alpha))
                     for row in pvalues])


def nominal_verdict(rate: Rate, alpha: float) -> tuple[bool, str]:
    """(consistent, words): alpha inside the interval, or above it (conservative)."""
    lo, hi = rate.interval
    if lo <= alpha <= hi:
        return True, "nominal inside: yes"
    if alpha > hi:
        return True, "nominal inside: no, rate below alpha (conservative): consistent"
    return False, "nominal inside: no, rate ABOVE alpha: MISCALIBRATED"


@dataclass
class Cell:
    """One (sampler, N, hypothesis): p-values per seed."""

    name: str
    n: int
    hypothesis: str
    pvalues: np.ndarray

    def rate(self, alpha: float) -> Rate:
        return Rate(int(family_rejects(self.pvalues, alpha).sum()), len(self.pvalues))

    def test_rate(self, index: int, alpha: float) -> float:
        return float((self.pvalues[:, index] <= alpha).mean())


def run_cells(specs: list[tuple[str, int, str]], seeds: int, laws: dict[str, tuple[float, float]],
              pool: ProcessPoolExecutor | None) -> list[Cell]:
    tasks, owners = [], []
    for cell_index, (name, n, hypothesis) in enumerate(specs):
        for start in range(0, seeds, CHUNK):
            tasks.append((name, n, hypothesis, list(range(start, min(start + CHUNK, seeds))), *laws[name]))
            owners.append(cell_index)
    results = list(pool.map(seed_pvalues, tasks)) if pool is not None else [seed_pvalues(task) for task in tasks]
    return [Cell(*spec, np.concatenate([r for r, o in zip(results, owners, strict=True) if o == i]))
            for i, spec in enumerate(specs)]


# --- context: predicted power and the continuous law --------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    delta_sd: float  # |m_alt - m_null| / sd_alt

    def power(self, n: int, alpha: float = HEADLINE_ALPHA) -> float:
        return float(z_test_power(self.delta_sd * math.sqrt(n), alpha / len(TESTS)))

    def n_for(self, power: float, alpha: float = HEADLINE_ALPHA) -> float:
        z = stats.norm.isf(alpha / len(TESTS) / 2) + stats.norm.isf(1.0 - power)
        return (z / self.delta_sd) ** 2


def context_lines(name: str, laws: dict, alt_laws: dict, prediction: Prediction, n: int) -> list[str]:
    world = get_world("gauss1d")
    c_mean, c_cov = exact_gaussian_cfg_law(world.law(1), world.law(None), GUIDANCE - 1.0, CONTINUOUS[name],
                                           SCHEDULE, "prior")
    m, v = laws[name]
    m_alt, v_alt = alt_laws[name]
    se = math.sqrt(v / n)
    return [
        f"{name}: exact discrete law at g={GUIDANCE:g}: mean {m:.6f} var {v:.6f}; at g={GUIDANCE * OFF_BY:g}: "
        f"mean {m_alt:.6f} var {v_alt:.6f} (var ratio {v_alt / v:.4f})",
        f"{name}: continuous {CONTINUOUS[name].upper()} law: mean {float(c_mean[0]):.6f} var {float(c_cov[0, 0]):.6f}"
        f"; its mean is {abs(float(c_mean[0]) - m) / se:.1f} standard errors (N={n}) from the discrete one "
        f"(why the reference is the discrete law)",
        f"{name}: predicted power of the mean test alone at level {HEADLINE_ALPHA:g}/{len(TESTS)} (normal approx., "
        f"shift {prediction.delta_sd:.4f} sd): {prediction.power(n):.3f} at N={n}; 80 % at "
        f"N={prediction.n_for(TARGET_POWER):,.0f}",
    ]


# --- report -----------------------------------------------------------------------------------------------
def print_table(cells: list[Cell]) -> None:
    header = (f"{'sampler':<7} {'N':>7} {'samples at':>12} {'seeds':>5} "
              f"{'family reject @0.01 [95% CI]':>30} {'family reject @0.05 [95% CI]':>30} "
              f"{'mean@.01':>8} {'var@.01':>8} {'ks@.01':>8}")
    print(header)
    print("-" * len(header))
    for cell in cells:
        label = f"g={HYPOTHESES[cell.hypothesis]:g}" + (" (H0)" if cell.hypothesis == "null" else "")
        print(f"{cell.name:<7} {cell.n:>7} {label:>12} {len(cell.pvalues):>5} "
              f"{cell.rate(0.01).text():>30} {cell.rate(0.05).text():>30} "
              + " ".join(f"{cell.test_rate(i, 0.01):>8.3f}" for i in range(len(TESTS))))
    print(f"reference: the exact discrete law at g={GUIDANCE:g}; H0 rows are false-alarm rates, the others power "
          f"against g off by {100 * (OFF_BY - 1):.0f} %. mean/var/ks@.01: each test's unadjusted rejection rate.")


def summary_line(name: str, cells: list[Cell]) -> tuple[str, bool]:
    mine = {(c.n, c.hypothesis): c for c in cells if c.name == name}
    sizes = sorted({n for n, _ in mine})
    base = sizes[0]
    alarm = mine[(base, "null")].rate(HEADLINE_ALPHA)
    ok, verdict = nominal_verdict(alarm, HEADLINE_ALPHA)
    alarm05 = mine[(base, "null")].rate(0.05)
    ok05, verdict05 = nominal_verdict(alarm05, 0.05)
    parts = [f"calibration {name}: false alarm {alarm.text()} at alpha {HEADLINE_ALPHA:g} ({verdict}); "
             f"power vs g off by {100 * (OFF_BY - 1):.0f}%: {mine[(base, 'alt')].rate(HEADLINE_ALPHA).text(2)} "
             f"at N={base}"]
    for n in sizes[1:]:
        alarm_n = mine[(n, "null")].rate(HEADLINE_ALPHA)
        ok_n, verdict_n = nominal_verdict(alarm_n, HEADLINE_ALPHA)
        ok = ok and ok_n
        parts.append(f", {mine[(n, 'alt')].rate(HEADLINE_ALPHA).text(2)} at N={n} (false alarm there "
                     f"{alarm_n.text()}, {verdict_n})")
    reached = [n for n in sizes if mine[(n, "alt")].rate(HEADLINE_ALPHA).value >= TARGET_POWER]
    parts.append(f"; >= {100 * TARGET_POWER:.0f}% power at N={reached[0]}" if reached
                 else f"; {100 * TARGET_POWER:.0f}% power NOT reached up to N={sizes[-1]}")
    parts.append(f"; at alpha 0.05: false alarm {alarm05.text()} ({verdict05})")
    return "".join(parts), ok and ok05


def load_note() -> str:
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"


# --- command line ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="False-alarm rate and power of the sampling checks.")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SEEDS} seeds: a smoke run")
    parser.add_argument("--seeds", type=int, default=None, help=f"seeds per cell (default {SEEDS})")
    parser.add_argument("--n", type=int, default=N_SAMPLES, help=f"samples per seed (default {N_SAMPLES})")
    parser.add_argument("--larger-n", type=int, nargs="*", default=list(LARGER_N),
                        help="sample sizes tried in turn where the power is still below 80 %% (default "
                             f"{' '.join(map(str, LARGER_N))}; none: never)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes (default 2)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a false-alarm rate is miscalibrated")
    args = parser.parse_args(argv)
    if args.seeds is None:
        args.seeds = QUICK_SEEDS if args.quick else SEEDS
    if args.seeds < 1 or args.n < 2 or args.workers < 1:
        parser.error("--seeds, --n and --workers must be positive (--n at least 2)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    print(f"torch {torch.__version__}; {args.seeds} seeds, N={args.n}, {args.workers} worker processes x 1 thread; "
          f"gauss1d, CFG g={GUIDANCE:g}, {SCHEDULE}, {N_STEPS} uniform steps; {load_note()} at start")
    laws = {name: reference_law(name, GUIDANCE) for name in SAMPLERS}
    alt_laws = {name: reference_law(name, GUIDANCE * OFF_BY) for name in SAMPLERS}
    for name in SAMPLERS:
        for g, law in ((GUIDANCE, laws[name]), (GUIDANCE * OFF_BY, alt_laws[name])):
            other = reference_law_one_run(name, g)
            rel = max(abs(a - b) / abs(b) for a, b in zip(law, other, strict=True))
            if rel > 1e-12:
                raise RuntimeError(f"{name} g={g:g}: stepwise and one-run exact laws differ by {rel:.1e} relative")
    print("exact discrete laws: stepwise and one-run computations agree to 1e-12 relative (both samplers, both g)")
    predictions = {name: Prediction(abs(alt_laws[name][0] - laws[name][0]) / math.sqrt(alt_laws[name][1]))
                   for name in SAMPLERS}
    for name in SAMPLERS:
        for line in context_lines(name, laws, alt_laws, predictions[name], args.n):
            print(line)

    pool = (ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) if args.workers > 1
            else None)
    try:
        cells = run_cells([(name, args.n, hyp) for name in SAMPLERS for hyp in HYPOTHESES], args.seeds, laws, pool)
        low_power = [c.name for c in cells if c.hypothesis == "alt" and c.rate(HEADLINE_ALPHA).value < TARGET_POWER]
        previous = args.n
        for n in sorted(n for n in args.larger_n if n > args.n):
            if not low_power:
                break
            print(f"power below {100 * TARGET_POWER:.0f} % at N={previous} for {', '.join(low_power)}: running N={n} "
                  "(predicted mean-test power there: "
                  + ", ".join(f"{name} {predictions[name].power(n):.3f}" for name in low_power) + ")")
            new = run_cells([(name, n, hyp) for name in low_power for hyp in HYPOTHESES], args.seeds, laws, pool)
            cells += new
            low_power = [c.name for c in new if c.hypothesis == "alt" and c.rate(HEADLINE_ALPHA).value < TARGET_POWER]
            previous = n
    finally:
        if pool is not None:
            pool.shutdown()
    cells.sort(key=lambda c: (list(SAMPLERS).index(c.name), c.n, list(HYPOTHESES).index(c.hypothesis)))
    print()
    print_table(cells)
    print(f"runtime {time.perf_counter() - start:.0f} s; {load_note()} at end")
    print()
    all_ok = True
    for name in SAMPLERS:
        line, ok = summary_line(name, cells)
        all_ok = all_ok and ok
        print(line)
    return 1 if args.strict and not all_ok else 0


if __name__ == "__main__":
    sys.exit(main())
