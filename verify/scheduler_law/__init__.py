r"""Scheduler laws: the exact law of what a diffusers scheduler produces when its model is exact.

::

    from verify.scheduler_law import scheduler_law, assert_scheduler_law
    audit = scheduler_law("DDIMScheduler", "cfg", params={"guidance_scale": 3.0}, steps=50)
    print(audit.report())

A scheduler (a diffusers class name, class or instance; any object with diffusers' ``set_timesteps``/``step``/
``timesteps`` API) is driven as a pipeline drives it, with the exact guided prediction of an analytic world
(:mod:`toy_models`) at the level each timestep names on the scheduler's training grid, in its ``prediction_type``
(:mod:`verify.scheduler_law._drive`). Its law is found

* exactly, by the **affine probe**, when the run is deterministic and affine in :math:`x_T` (a deterministic
  scheduler, a linear rule, a world whose branches are single Gaussians): :math:`y = A x_T + b` from runs at 0 and
  the basis vectors, checked at extra points within a rounding bound, gives :math:`\mathcal N(b, s^2 A A^\top)` for
  :math:`x_T \sim \mathcal N(0, s^2 I)`, ``s = init_noise_sigma``;
* else by **Monte Carlo** (fixed seed; standard errors of the mean and of each covariance entry).

Beside it: the **continuous-time law** of the same rule (probability-flow ODE for deterministic schedulers, reverse
SDE for stochastic ones) from :math:`\mathcal N(0, I)` at the scheduler's first level to its last, and the **tilted
target** (:mod:`verify.scheduler_law._reference`). The **bias** is the scheduler's law against the continuous one;
**convergence** repeats it at N, 2N, 4N steps and reads the observed order
:math:`\log_2(\mathrm{bias}(N)/\mathrm{bias}(2N))`; **settings** re-runs each documented non-default configuration
and flags **traps**. ``docs/schedulers.md`` explains the output and carries the table :func:`scheduler_table`
prints (``python -m verify.scheduler_law --table``).
"""

from __future__ import annotations

import json
import math
import numbers
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toy_models.scenarios import get_world
from verify import rules as _rules

from . import _drive, _reference
from ._drive import ExactModel, NotAffine, RawLaw, levels_of, monte_carlo_law, prediction_type_of, probe_law
from ._reference import compare, continuous_law, tilted_target
from ._schedules import GridSchedule, LogSNRWindow

__all__ = ["table_audits", "GaussianLaw", "SettingResult", "SchedulerAudit", "scheduler_law", "assert_scheduler_law",
           "scheduler_table", "settings_of", "ORDER_BAND", "TABLE", "GridSchedule", "LogSNRWindow", "SCHEDULERS",
           "EXPECTED_ORDER"]

#: the schedulers of the published table
SCHEDULERS = ("DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler",
              "DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler")
#: the order of each scheduler's global (weak, for the stochastic ones) error in the step size, by class (a
#: subclass inherits its base's): DDIM is the first-order exponential integrator of the PF-ODE (Song et al. 2021a;
#: Lu et al. 2022, DPM-Solver-1), DDPM a first-order weak scheme of the reverse SDE, Euler first order, Heun second
#: order (Karras et al. 2022, alg. 1), DPM-Solver++(2M) second order (Lu et al. 2022b), UniPC with order-2 predictor
#: and corrector (Zhao et al. 2023, bh2) third order, flow-matching Euler first order. DPM-Solver's and UniPC's
#: follow ``solver_order`` (UniPC: one more with the corrector on).
EXPECTED_ORDER = {"DDIMScheduler": 1, "DDPMScheduler": 1, "EulerDiscreteScheduler": 1, "HeunDiscreteScheduler": 2,
                  "DPMSolverMultistepScheduler": 2, "UniPCMultistepScheduler": 3,
                  "FlowMatchEulerDiscreteScheduler": 1}
#: how far below the expected order the finest observed order may fall before it is a finding. The observed order
#: drifts towards the asymptotic one as O(1/N) (docs/tolerances.md section 4 measures 0.1 between 100 and 200 steps
#: for the project's own samplers); here a multistep warm-up, the first step from a start that is not the exact
#: marginal and the final step to sigma = 0 add lower-order terms whose size is not known in advance, so the band
#: is widened to 0.5: it still separates order 1 from 2, and an error that does not shrink (order <= 0) from both
ORDER_BAND = 0.5
#: how far (in log-SNR) a scheduler's final level may lie above the first trained level and still be that level:
#: lambda = -2 log(sigma) of a float32 sigma carries 2 * (a few ulps) * 2^-24; 16 ulps, 9.5e-7, as in the
#: model-level check of _drive._model_level, far below the smallest real gap (log-SNR of levels 0 and 1: 0.69)
END_SLACK = 16.0 * 2.0**-24
#: a Monte Carlo difference counts only beyond this many standard errors (one-sided 0.135 % per comparison)
Z_MC = 3.0
DEFAULT_SAMPLES = 20_000


@dataclass(frozen=True)
class GaussianLaw:
    """A law by its first two moments. ``method``: "affine probe" (exact to the stated rounding ``tolerance``),
    "monte carlo" (with ``se_mean`` and ``se_cov``, standard errors), or the continuous/tilted method."""

    mean: list
    cov: list
    method: str
    se_mean: list | None = None
    se_cov: list | None = None
    tolerance: float = 0.0

    @classmethod
    def of(cls, raw: RawLaw | None) -> GaussianLaw | None:
        if raw is None:
            return None
        return cls([float(v) for v in raw.mean], [[float(v) for v in row] for row in np.atleast_2d(raw.cov)],
                   raw.method, None if raw.se_mean is None else [float(v) for v in raw.se_mean],
                   None if raw.se_cov is None else [[float(v) for v in row] for row in raw.se_cov],
                   float(raw.tolerance))

    def raw(self) -> RawLaw:
        return RawLaw(np.array(self.mean), np.array(self.cov), self.method,
                      None if self.se_mean is None else np.array(self.se_mean),
                      None if self.se_cov is None else np.array(self.se_cov), self.tolerance)

    def to_json(self) -> dict:
        return {"mean": self.mean, "cov": self.cov, "method": self.method, "se_mean": self.se_mean,
                "se_cov": self.se_cov, "tolerance": self.tolerance}


@dataclass(frozen=True)
class SettingResult:
    """One non-default configuration: its law, how far it moves the law from the default's (``shift_from_default``),
    its own bias against its own continuous law (``bias``), and whether it is a trap (``detail`` says which side)."""

    name: str
    overrides: dict
    law: GaussianLaw | None
    shift_from_default: dict | None
    bias: dict | None
    trap: bool
    detail: str

    def to_json(self) -> dict:
        return {"name": self.name, "overrides": _plain(self.overrides),
                "law": None if self.law is None else self.law.to_json(),
                "shift_from_default": self.shift_from_default, "bias": self.bias, "trap": self.trap,
                "detail": self.detail}


@dataclass(frozen=True)
class SchedulerAudit:
    """What :func:`scheduler_law` found (see the module docstring); ``passed`` when there are no findings."""

    scheduler: str
    config: dict
    rule: str
    params: dict
    steps: int
    world: str
    law: GaussianLaw
    continuous_law: GaussianLaw | None
    tilted_law: GaussianLaw | None
    bias: dict
    convergence: dict
    settings: list
    findings: list
    condition: Any = None
    reference: str = ""
    notes: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.findings

    def to_json(self) -> dict:
        """Plain JSON data (``json.dumps`` accepts it)."""
        return _plain({
            "passed": self.passed, "scheduler": self.scheduler, "config": self.config,
            "reference": {"rule": self.rule, "params": self.params, "source": self.reference},
            "steps": self.steps, "world": self.world, "condition": self.condition,
            "law": self.law.to_json(),
            "continuous_law": None if self.continuous_law is None else self.continuous_law.to_json(),
            "tilted_law": None if self.tilted_law is None else self.tilted_law.to_json(),
            "bias": self.bias, "convergence": self.convergence,
            "settings": [s.to_json() for s in self.settings], "findings": self.findings, "notes": self.notes,
            "seconds": self.seconds})

    def report(self) -> str:
        """The lines the command line prints."""
        head = (f"{self.scheduler}{_config_text(self.config)}, {self.rule}({_config_text(self.params, bare=True)}) "
                f"on {self.world} (condition {self.condition!r}), {self.steps} steps")
        lines = [head, "", f"  {'law':<22}{'mean':>28}  {'variance':>28}  method"]
        for label, law in (("scheduler", self.law), ("continuous", self.continuous_law),
                           ("tilted target", self.tilted_law)):
            if law is None:
                why = self.bias.get(f"{label.split()[0]}_reason", "none")
                lines.append(f"  {label:<22}{'-':>28}  {'-':>28}  {why}")
                continue
            se = ""
            if law.se_mean is not None:
                se = f" (se {_vec(law.se_mean)}, {_vec(np.diag(np.array(law.se_cov)))})"
            lines.append(f"  {label:<22}{_vec(law.mean):>28}  {_vec(np.diag(np.array(law.cov))):>28}  "
                         f"{law.method}{se}")
        lines.append("")
        for key, label in (("scheduler_vs_continuous", "discretisation bias (scheduler - continuous)"),
                           ("continuous_vs_tilted", "continuous - tilted target")):
            b = self.bias.get(key)
            if b is not None:
                lines.append(f"  {label}: mean {_vec(b['mean_diff'])}, variance ratio {_vec(b['var_ratio'])}, "
                             f"W2 {b['w2']:.3g}" + (f" (se {b['se_w2']:.2g})" if b["se_w2"] else ""))
        conv = self.convergence
        if conv.get("w2"):
            pairs = ", ".join(f"{n}: {w:.3g}" for n, w in zip(conv["steps"], conv["w2"], strict=True))
            orders = ", ".join("-" if o is None else f"{o:.2f}" for o in conv["orders"])
            lines.append(f"  convergence (W2 to the continuous law): {pairs}; observed order {orders} "
                         f"(expected {conv['expected_order']})")
        if self.settings:
            lines += ["", f"  {'setting':<44}{'shift W2':>10}{'own bias':>10}  verdict"]
            for s in self.settings:
                shift = "-" if s.shift_from_default is None else f"{s.shift_from_default['w2']:.3g}"
                own = "-" if s.bias is None else f"{s.bias['w2']:.3g}"
                lines.append(f"  {s.name:<44}{shift:>10}{own:>10}  {'TRAP: ' if s.trap else ''}{s.detail}")
        lines.append("")
        if self.findings:
            lines += ["  findings:"] + [f"  - {f}" for f in self.findings]
        else:
            lines.append("  no findings")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _vec(values) -> str:
    return "[" + ", ".join(f"{float(v):.5g}" for v in np.ravel(values)) + "]"


def _config_text(config: Mapping, bare: bool = False) -> str:
    inner = ", ".join(f"{k}={v!r}" for k, v in config.items())
    if bare:
        return inner
    return f"({inner})" if inner else "()"


def _plain(obj):
    """``obj`` as plain JSON data (numbers, strings, lists, dicts, None); inf/NaN become strings."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, (bool, type(None), str)):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        value = float(obj)
        return value if math.isfinite(value) else str(value)
    return str(obj)


# ------------------------------------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------------------------------------
def _check_args(rule, params, steps, world, condition, seed, settings, progress, n_samples):
    if not isinstance(rule, str):
        raise TypeError(f"rule: expected a registered rule's name (str), got {type(rule).__name__}")
    if rule not in _rules.names():
        raise ValueError(f"rule: unknown rule {rule!r}; choose one of {_rules.names()}")
    if params is not None and not isinstance(params, Mapping):
        raise TypeError(f"params: expected a mapping of the rule's parameters, got {type(params).__name__}")
    for value, name, lo in ((steps, "steps", 2), (seed, "seed", 0), (n_samples, "n_samples", 100)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
            raise ValueError(f"{name}: must be an int >= {lo}, got {value!r}")
    if not isinstance(world, str):
        raise TypeError(f"world: expected a world's name (str), got {type(world).__name__}")
    for value, name in ((settings, "settings"), (progress, "progress")):
        if not isinstance(value, bool):
            raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    try:
        w = get_world(world)
    except ValueError as err:
        raise ValueError(f"world: {str(err).split(': ', 1)[-1]}") from None
    params = dict(params) if params is not None else None
    if params is None:
        import inspect

        sig = inspect.signature(_rules.rule_class(rule).__init__).parameters
        params = {"guidance_scale": 3.0} if "guidance_scale" in sig else {}
    rule_obj = _rules.get(rule, **params)
    if "weak" in rule_obj.branches:
        raise ValueError(f"rule: {rule_obj.describe()} reads a weaker model (branch 'weak'), which a world does "
                         f"not define")
    if rule_obj.renoise_branch is not None:
        raise ValueError(f"rule: {rule_obj.describe()} re-noises with another prediction than its guided one "
                         f"(CFG++), which a diffusers scheduler's single model output cannot carry")
    conditions = _conditions(w, rule_obj, condition)
    return w, params, rule_obj, conditions


def _conditions(world, rule, condition):
    """``condition`` as the rule's branch conditions: a mapping is used as given; a bare condition is the ``cond``
    branch's; ``None`` picks the world's first class for ``cond`` and the next classes for the other branches."""
    if isinstance(condition, Mapping):
        return dict(condition)
    classes = world.class_conditions()
    keys = [k for k in rule.condition_keys if k != "uncond"]
    out = {}
    for i, key in enumerate(keys):
        if key == "cond" and condition is not None:
            out[key] = condition
        else:
            out[key] = classes[i % len(classes)] if classes else None
    if condition is not None and "cond" not in keys:
        raise ValueError(f"condition: rule {rule.name!r} reads no 'cond' branch; pass a mapping of its branches "
                         f"{list(rule.condition_keys)}")
    return out


# ------------------------------------------------------------------------------------------------------------
# The settings each scheduler documents
# ------------------------------------------------------------------------------------------------------------
def settings_of(config: Mapping[str, Any], step_params: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    """``[(name, overrides)]``: every documented non-default setting that the configuration has (generic over the
    configuration's keys, so a subclass or another scheduler with the same options gets the same ones)."""
    c = dict(config)
    out: list[tuple[str, dict]] = []

    def add(overrides: dict) -> None:
        name = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        out.append((name, overrides))

    def others(key: str, choices) -> None:
        if key in c:
            for v in choices:
                if v != c[key]:
                    add({key: v})

    def toggle(key: str) -> None:
        if key in c and isinstance(c[key], bool):
            add({key: not c[key]})

    toggle("clip_sample")
    others("timestep_spacing", ("leading", "trailing", "linspace"))
    if "steps_offset" in c:
        add({"steps_offset": 0 if c["steps_offset"] else 1})
    toggle("set_alpha_to_one")
    if c.get("rescale_betas_zero_snr") is False:
        add({"rescale_betas_zero_snr": True})
        if "timestep_spacing" in c and c["timestep_spacing"] != "trailing":
            add({"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"})
    if c.get("thresholding") is False:
        add({"thresholding": True})
    others("prediction_type", ("epsilon", "v_prediction", "sample"))
    if c.get("variance_type") in ("fixed_small", "fixed_large"):
        others("variance_type", ("fixed_small", "fixed_large"))
    if "algorithm_type" in c:
        for algorithm in ("dpmsolver++", "dpmsolver", "sde-dpmsolver++", "sde-dpmsolver"):
            if algorithm != c["algorithm_type"]:
                # diffusers refuses the first-order-in-eps variants with a final sigma of 0
                extra = {"final_sigmas_type": "sigma_min"} if algorithm in ("dpmsolver", "sde-dpmsolver") else {}
                add({"algorithm_type": algorithm, **extra})
    others("solver_order", (1, 2, 3))
    if c.get("solver_type") in ("midpoint", "heun"):
        others("solver_type", ("midpoint", "heun"))
    if c.get("solver_type") in ("bh1", "bh2"):
        others("solver_type", ("bh1", "bh2"))
    toggle("lower_order_final")
    others("final_sigmas_type", ("zero", "sigma_min"))
    if c.get("use_karras_sigmas") is False:
        add({"use_karras_sigmas": True})
    others("interpolation_type", ("linear", "log_linear"))
    if "shift" in c and not c.get("use_dynamic_shifting"):
        add({"shift": 3.0})
    if c.get("stochastic_sampling") is False:
        add({"stochastic_sampling": True})
    if "eta" in step_params:
        add({"eta": 1.0})
    return out


# ------------------------------------------------------------------------------------------------------------
# One configuration's law and references
# ------------------------------------------------------------------------------------------------------------
@dataclass
class _Run:
    law: RawLaw
    continuous: RawLaw | None
    continuous_reason: str
    stochastic: bool
    mismatch: float
    why_mc: str = ""
    start_variance: float = 1.0
    clean: RawLaw | None = None  # the continuous law all the way to clean data (beside the grid's limit)


def _law_of(factory, overrides, steps, world, rule, conditions, seed, n_samples, want_continuous=True) -> _Run:
    """The law of one configuration (probe, else Monte Carlo) and its continuous limit on the training grid."""

    def model_of(sched):
        levels = levels_of(sched)
        return ExactModel(world, rule, conditions, levels, prediction_type_of(sched, levels))

    stochastic, why_mc = False, ""
    try:
        law, mismatch = probe_law(factory, overrides, model_of, steps, world.dim, seed)
    except NotAffine as err:
        why_mc = str(err)
        stochastic = why_mc.startswith("stochastic")
        law, mismatch, _ = monte_carlo_law(factory, overrides, model_of, steps, world.dim, seed, n_samples)
    cont, reason, v0, clean = None, "", 1.0, None
    if want_continuous:
        sched = _drive.fresh(factory, overrides, steps)
        levels = levels_of(sched)
        lam_first, lam_last = _drive.start_end_levels(sched, levels)
        v0, end_scale = _drive.start_variance(_drive.fresh(factory, overrides, steps), levels)
        # the training grid's last level: however many steps, the model is never asked below it, and a scheduler
        # that outputs clean data ends with one denoising jump from there (module docstring of _reference)
        lam_floor = levels.lam_at_t(1.0 / levels.n_train)
        # a scheduler that ends AT the first trained level (final_sigmas_type='sigma_min') stores that sigma in
        # float32, so its log-SNR -2 log(sigma) lands a few float32 ulps of sigma off the float64 grid value (2.4e-8
        # above it for UniPC and DPM-Solver): within END_SLACK it is that level, and no denoising jump follows
        jump = lam_last > lam_floor + END_SLACK
        cont, reason = continuous_law(world, rule, conditions, lam_first, lam_floor if jump else lam_last,
                                      stochastic)
        if cont is not None and jump:
            clean, _ = continuous_law(world, rule, conditions, lam_first, lam_last, stochastic)
            mapped = _reference.denoising_jump(cont, model_of(sched), 1.0 / levels.n_train, world.dim)
            if mapped is None:
                cont, clean = clean, None  # no exact jump for a non-Gaussian world: the clean law, floor included
            else:
                cont = mapped
        for which in ("cont", "clean"):
            ref = cont if which == "cont" else clean
            if ref is None:
                continue
            # the moment ODEs are linear: from N(0, v0 I) instead of N(0, I) the ODE's covariance is v0 times
            # its own (the mean does not see the start covariance); the SDE adds noise independent of the start,
            # so there the reference keeps N(0, I) and says so
            scale_cov = v0 if not stochastic else 1.0
            ref = RawLaw(ref.mean * end_scale, ref.cov * scale_cov * end_scale**2,
                         ref.method.replace("N(0, I)", f"N(0, {v0:.6g} I)" if not stochastic and v0 != 1.0
                                            else "N(0, I)"))
            if which == "cont":
                cont = ref
            else:
                clean = ref
    return _Run(law, cont, reason, stochastic, mismatch, why_mc, v0, clean)


def _noise(cmp: dict) -> float:
    return Z_MC * cmp["se_w2"]


def _convergence(factory, base_run: _Run, steps, world, rule, conditions, seed, n_samples, expected) -> dict:
    out = {"steps": [steps, 2 * steps, 4 * steps], "w2": [], "se_w2": [], "orders": [], "expected_order": expected,
           "method": base_run.law.method}
    if base_run.continuous is None:
        out["why_not"] = base_run.continuous_reason
        return out
    try:
        runs = [base_run] + [_law_of(factory, {}, n, world, rule, conditions, seed, n_samples) for n in
                             (2 * steps, 4 * steps)]
    except Exception as err:  # e.g. more steps than the training grid has timesteps
        out["why_not"] = f"the scheduler refuses {4 * steps} steps: {type(err).__name__}: {str(err)[:120]}"
        return out
    for r in runs:
        if r.continuous is None:
            out["why_not"] = r.continuous_reason
            out["w2"] = []
            return out
        cmp = compare(r.law, r.continuous)
        out["w2"].append(cmp["w2"])
        out["se_w2"].append(cmp["se_w2"])
    for i in range(2):
        a, b = out["w2"][i], out["w2"][i + 1]
        significant = a > _noise({"se_w2": out["se_w2"][i]}) and b > _noise({"se_w2": out["se_w2"][i + 1]})
        out["orders"].append(math.log2(a / b) if significant and a > 0 and b > 0 else None)
    return out


def _expected_order(cls: type, config: Mapping) -> int:
    for base in cls.__mro__:
        if base.__name__ in EXPECTED_ORDER:
            name = base.__name__
            if name == "DPMSolverMultistepScheduler":
                return int(config.get("solver_order", 2))
            if name == "UniPCMultistepScheduler":
                return int(config.get("solver_order", 2)) + 1
            return EXPECTED_ORDER[name]
    return 1


# ------------------------------------------------------------------------------------------------------------
# The audit
# ------------------------------------------------------------------------------------------------------------
def scheduler_law(scheduler, rule: str = "cfg", *, params: Mapping | None = None, steps: int = 50,
                  world: str = "gauss1d", condition=None, seed: int = 0, settings: bool = True,
                  progress: bool = False, n_samples: int = DEFAULT_SAMPLES,
                  convergence: bool = True) -> SchedulerAudit:
    """Audit ``scheduler`` driven by the exact predictions of ``world`` guided by ``rule`` (module docstring).

    ``scheduler``: a class name in ``diffusers`` (str), a scheduler class, or an instance (its configuration is the
    default; an object without ``from_config`` is deep-copied and its settings are not varied). ``params``: the
    rule's parameters (default ``{"guidance_scale": 3.0}`` for rules that take one). ``condition``: the ``cond``
    branch's condition, or a mapping of every branch's (default: the world's first class). ``n_samples``: Monte
    Carlo runs where the probe does not apply; ``convergence``: whether to repeat at 2N and 4N steps. Bad input
    raises ValueError/TypeError naming the argument."""
    factory = _drive.resolve(scheduler)
    w, params, rule_obj, conditions = _check_args(rule, params, steps, world, condition, seed, settings, progress,
                                                  n_samples)
    started = time.perf_counter()
    notes: list[str] = []
    findings: list[str] = []
    base = _law_of(factory, {}, steps, w, rule_obj, conditions, seed, n_samples)
    if base.why_mc:
        notes.append(f"Monte Carlo ({n_samples} runs): {base.why_mc}")
    if base.start_variance != 1.0:
        notes.append(f"the scheduler starts from variance {base.start_variance:.6g} in VP coordinates "
                     f"(init_noise_sigma and scale_model_input), not 1: the pure-noise start N(0, I) and the "
                     f"marginal at its first level differ (non-zero terminal SNR); "
                     + ("the continuous law starts where the scheduler does" if not base.stochastic
                        else "the continuous (SDE) law starts from N(0, I)"))
    if base.mismatch > 0:
        notes.append(f"the scheduler's own sigma differs from the level its timestep names by up to "
                     f"{base.mismatch:.3g} in log-SNR (the model is told the timestep's level)")
    tilted, tilted_reason = tilted_target(w, rule_obj, conditions)
    bias = {"scheduler_vs_continuous": None if base.continuous is None else compare(base.law, base.continuous),
            "continuous_vs_tilted": None if base.continuous is None or tilted is None
            else compare(base.continuous, tilted),
            "grid_floor": None if base.clean is None or base.continuous is None
            else compare(base.continuous, base.clean),
            "continuous_reason": base.continuous_reason, "tilted_reason": tilted_reason}
    expected = _expected_order(factory.cls, factory.config)
    if not isinstance(convergence, bool):
        raise TypeError(f"convergence: expected a bool, got {type(convergence).__name__}")
    conv = (_convergence(factory, base, steps, w, rule_obj, conditions, seed, n_samples, expected) if convergence
            else {"steps": [], "w2": [], "se_w2": [], "orders": [], "expected_order": expected,
                  "why_not": "not asked for (convergence=False)"})
    finest = conv["orders"][-1] if conv.get("orders") else None
    if conv.get("w2") and finest is not None and finest < expected - ORDER_BAND:
        findings.append(f"convergence: the bias at {conv['steps']} steps is {[f'{v:.3g}' for v in conv['w2']]}, "
                        f"observed order {finest:.2f} where {expected} is expected (band {ORDER_BAND}): the "
                        f"scheduler does not converge to the continuous law as it should")
    elif conv.get("w2") and finest is None and conv["w2"][-1] > conv["w2"][0] + _noise({"se_w2": conv["se_w2"][0]}):
        findings.append(f"convergence: the bias grows with the steps ({[f'{v:.3g}' for v in conv['w2']]})")
    results = []
    if settings:
        results = _settings(factory, base, steps, w, rule_obj, conditions, seed, n_samples, progress, findings,
                            notes)
    defaults = factory.defaults()
    config = {k: v for k, v in factory.config.items() if not k.startswith("_") and k in defaults
              and defaults[k] != v}
    return SchedulerAudit(
        scheduler=factory.cls.__name__, config=_plain(config), rule=rule_obj.name, params=_plain(params),
        steps=int(steps), world=w.name, law=GaussianLaw.of(base.law), continuous_law=GaussianLaw.of(base.continuous),
        tilted_law=GaussianLaw.of(tilted), bias=_plain(bias), convergence=_plain(conv), settings=results,
        findings=findings, condition=_plain(conditions), reference=type(rule_obj).reference, notes=notes,
        seconds=round(time.perf_counter() - started, 3))


def _settings(factory, base: _Run, steps, world, rule, conditions, seed, n_samples, progress, findings, notes):
    if not factory.configurable:
        notes.append("settings not varied: the scheduler object has no from_config")
        return []
    import inspect

    sched = _drive.fresh(factory, {}, steps)
    step_params = tuple(inspect.signature(sched.step).parameters)
    catalogue = settings_of(factory.config, step_params)
    own_bias = None if base.continuous is None else compare(base.law, base.continuous)
    bar = None
    if progress:
        import sys

        from tqdm.auto import tqdm

        bar = tqdm(total=len(catalogue), desc="settings", unit="setting", file=sys.stderr, leave=False)
    out = []
    for name, overrides in catalogue:
        out.append(_one_setting(factory, base, own_bias, name, overrides, steps, world, rule, conditions, seed,
                                n_samples, findings))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out


def _one_setting(factory, base: _Run, own_bias, name, overrides, steps, world, rule, conditions, seed, n_samples,
                 findings) -> SettingResult:
    try:
        run = _law_of(factory, overrides, steps, world, rule, conditions, seed, n_samples)
    except _drive.NonFinite as err:
        return SettingResult(name, dict(overrides), None, None, None, True, f"{err}: the sampler breaks down")
    except Exception as err:  # the scheduler refuses the combination (diffusers raises ValueError, NotImplemented..)
        return SettingResult(name, dict(overrides), None, None, None, False,
                             f"refused by the scheduler: {type(err).__name__}: {str(err)[:160]}")
    shift = compare(run.law, base.law)
    bias = None if run.continuous is None else compare(run.law, run.continuous)
    law = GaussianLaw.of(run.law)
    mc = " (Monte Carlo)" if run.law.se_mean is not None else ""
    if run.mismatch > 0:
        mc += (f"; the model is told timesteps up to {run.mismatch:.3g} in log-SNR away from the scheduler's own "
               f"sigmas")
    if "prediction_type" in overrides and len(overrides) == 1:
        # the model's output is given in the new type, so the law must not move beyond rounding (probe) or beyond
        # Monte Carlo noise (common random numbers: one seed for both runs)
        allowed = max(2.0 * (run.law.tolerance + base.law.tolerance), _noise(shift))
        if shift["w2"] > allowed:
            findings.append(f"prediction_type: {name} moves the law by W2 {shift['w2']:.3g} (allowed {allowed:.2g}) "
                            f"although the model's output is the same prediction in that type")
            return SettingResult(name, dict(overrides), law, shift, bias, True,
                                 f"the law changes with the prediction type (W2 {shift['w2']:.3g})")
        return SettingResult(name, dict(overrides), law, shift, bias, False,
                             f"same law (W2 {shift['w2']:.2g} within {allowed:.2g}){mc}")
    yard = [b["w2"] for b in (own_bias, bias) if b is not None]
    if not yard:
        return SettingResult(name, dict(overrides), law, shift, bias, False, f"no continuous law to compare with{mc}")
    yardstick = min(yard)
    trap = shift["w2"] > yardstick and shift["w2"] > _noise(shift)
    if not trap:
        return SettingResult(name, dict(overrides), law, shift, bias, False,
                             f"moves the law by less than the discretisation bias ({yardstick:.3g}){mc}")
    # which side is the trap: the one farther from the default configuration's continuous law
    if base.continuous is not None:
        to_setting = compare(run.law, base.continuous)["w2"]
        to_default = compare(base.law, base.continuous)["w2"]
    else:
        to_setting, to_default = 1.0, 0.0
    if to_default > to_setting + yardstick:
        detail = (f"the DEFAULT is the trap: this setting moves the law by W2 {shift['w2']:.3g} toward the "
                  f"continuous law (default {to_default:.3g} from it, this setting {to_setting:.3g}){mc}")
        findings.append(f"default configuration: {name} brings the law {to_default - to_setting:.3g} closer to the "
                        f"continuous law (the default is {to_default:.3g} from it, beyond its discretisation bias "
                        f"{yardstick:.3g})")
    elif to_setting > to_default + yardstick:
        detail = (f"moves the law by W2 {shift['w2']:.3g} > discretisation bias {yardstick:.3g}, away from the "
                  f"continuous law ({to_setting:.3g} vs the default's {to_default:.3g}){mc}")
    else:
        detail = (f"moves the law by W2 {shift['w2']:.3g} > discretisation bias {yardstick:.3g}, to a law as far "
                  f"from the default's continuous law as the default's ({to_setting:.3g} vs {to_default:.3g}: "
                  f"another discretisation of about the same accuracy){mc}")
    return SettingResult(name, dict(overrides), law, shift, bias, True, detail)


def assert_scheduler_law(scheduler, rule: str = "cfg", *, max_bias: float | None = None,
                         **kwargs) -> SchedulerAudit:
    """:func:`scheduler_law`, raising ``AssertionError`` with the report when the audit has findings or when the
    discretisation bias (W2 to the continuous law) exceeds ``max_bias``."""
    if max_bias is not None and (isinstance(max_bias, bool) or not isinstance(max_bias, numbers.Real)
                                 or not max_bias >= 0):
        raise ValueError(f"max_bias: must be a real >= 0 or None, got {max_bias!r}")
    audit = scheduler_law(scheduler, rule, **kwargs)
    problems = list(audit.findings)
    b = audit.bias.get("scheduler_vs_continuous")
    if max_bias is not None:
        if b is None:
            why = audit.bias.get("continuous_reason")
            problems.append(f"max_bias: no continuous law to measure the bias against ({why})")
        elif b["w2"] > max_bias:
            problems.append(f"max_bias: the discretisation bias W2 {b['w2']:.3g} exceeds {max_bias:g}")
    if problems:
        raise AssertionError("\n".join(problems) + "\n\n" + audit.report())
    return audit


# ------------------------------------------------------------------------------------------------------------
# The published table
# ------------------------------------------------------------------------------------------------------------
#: the table's rows: every scheduler at its defaults, and DDIM and DDPM as Stable Diffusion's configurations load
#: them (clip_sample=False), since their default clipping hides every other setting on a world outside [-1, 1]
TABLE = (*SCHEDULERS, ("DDIMScheduler", {"clip_sample": False}), ("DDPMScheduler", {"clip_sample": False}))


def table_audits(schedulers=TABLE, *, rule: str = "cfg", params: Mapping | None = None, steps: int = 50,
                 world: str = "gauss1d", progress: bool = False) -> list[tuple[str, SchedulerAudit]]:
    """``(label, audit)`` for every entry of ``schedulers`` (a class name, or ``(name, constructor overrides)``)."""
    out = []
    for entry in schedulers:
        name, overrides = entry if isinstance(entry, tuple) else (entry, {})
        target = getattr(_drive._diffusers(), name)(**overrides) if overrides else name
        audit = scheduler_law(target, rule, params=params, steps=steps, world=world, progress=progress)
        out.append((name + (_config_text(overrides) if overrides else ""), audit))
    return out


def scheduler_table(schedulers=TABLE, *, rule: str = "cfg", params: Mapping | None = None, steps: int = 50,
                    world: str = "gauss1d", progress: bool = False,
                    audits: list[tuple[str, SchedulerAudit]] | None = None) -> str:
    """A Markdown table: every scheduler at its default and each setting, with its law, its shift from the default,
    its bias against its own continuous law, and the verdict (``audits``: from :func:`table_audits`, computed here
    when not given)."""
    if audits is None:
        audits = table_audits(schedulers, rule=rule, params=params, steps=steps, world=world, progress=progress)
    lines = [f"Rule {rule}({_config_text(params or {'guidance_scale': 3.0}, bare=True)}) on {world}, {steps} steps.",
             "",
             "| scheduler | setting | method | mean | variance | shift W2 | own bias W2 | orders | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, audit in audits:
        b = audit.bias.get("scheduler_vs_continuous")
        orders = ", ".join("-" if o is None else f"{o:.2f}" for o in audit.convergence.get("orders", []))
        verdict = "pass" if audit.passed else "; ".join(audit.findings)
        own = "-" if b is None else f"{b['w2']:.3g}"
        lines.append(f"| {name} | default | {audit.law.method} | {_vec(audit.law.mean)} | "
                     f"{_vec(np.diag(np.array(audit.law.cov)))} | 0 | {own} | "
                     f"{orders} (exp. {audit.convergence.get('expected_order')}) | {verdict} |")
        for s in audit.settings:
            if s.law is None:
                lines.append(f"| | {s.name} | - | - | - | - | - | | {s.detail} |")
                continue
            shift = _w2_text(s.shift_from_default["w2"])
            own = "-" if s.bias is None else f"{s.bias['w2']:.3g}"
            verdict = ("**trap**: " if s.trap else "") + s.detail
            lines.append(f"| | {s.name} | {s.law.method} | {_vec(s.law.mean)} | {_vec(np.diag(np.array(s.law.cov)))} "
                         f"| {shift} | {own} | | {verdict} |")
    return "\n".join(lines)


def _w2_text(w2: float) -> str:
    """A distance, with the rounding floor of the float64 laws (about 1e-12 for these unit-scale worlds) shown
    as 0."""
    return "0" if w2 < 1e-12 else f"{w2:.3g}"


def _main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m verify.scheduler_law",
                                     description="Audit a diffusers scheduler against exact guided laws.")
    parser.add_argument("scheduler", nargs="?", default="DDIMScheduler")
    parser.add_argument("--table", action="store_true", help="print the table of docs/schedulers.md")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--world", default="gauss1d")
    parser.add_argument("--rule", default="cfg")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.table:
        print(scheduler_table(steps=args.steps, world=args.world, rule=args.rule, progress=True))
        return 0
    audit = scheduler_law(args.scheduler, args.rule, steps=args.steps, world=args.world, progress=True)
    print(json.dumps(audit.to_json(), indent=2) if args.json else audit.report())
    return 0 if audit.passed else 1
