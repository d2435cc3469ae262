r"""Audit a user's classifier-free-guidance combiner against the analytic ground truth.

What is audited
---------------
A *combiner* is any callable

.. code-block:: python

    combine(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma) -> eps

with ``eps_uncond``, ``eps_cond`` and ``x`` float64 tensors of shape ``[N, d]``, ``guidance_scale`` a Python float in
the diffusers convention (docs/conventions.md; Ho & Salimans' ``w`` is ``guidance_scale - 1``) and ``alpha``,
``sigma`` Python floats (``x = alpha x_0 + sigma eps``). The correct answer is

.. math::  \tilde\varepsilon = \varepsilon_\varnothing + g\,(\varepsilon_c - \varepsilon_\varnothing).

``x``, ``alpha`` and ``sigma`` are given so that a combiner that works in x0, score or v space can convert.

The inputs are the exact eps-predictions of :class:`~toy_models.denoiser.AnalyticDenoiser` (float64), so they look
like what a real model produces at that point and time; the reference is the guided prediction computed from those
same float64 inputs, i.e. the audit judges the combiner as a function of its inputs. It runs on the grid

* worlds ``bimodal1d`` (condition: label 1, d = 1), ``ring2d`` (label 2, d = 2), ``attributes2d`` (tokens
  ``("red", "dog")``, d = 2) and ``tokens16d`` (tokens ``("b0+", "b2-")``, d = 16);
* noise levels: vp-linear at t = 0.02 (sigma = 0.077), 0.3 (alpha = 0.63, sigma = 0.78: alpha ~ sigma but not
  equal, so an alpha/sigma swap shows) and 0.9 (alpha = 0.017), and edm (alpha = 1) at t = 0.5 (sigma = 2.5) and
  0.9 (sigma = 45), where every VP-only assumption (``alpha^2 + sigma^2 = 1``, ``sigma <= 1``) is false;
* guidance scales g in {0, 1, 0.3, 1.5, 3.3, 7.5}: g = 0 and g = 1 are endpoint checks against ``eps_uncond`` and
  ``eps_cond`` themselves; the other four are off the endpoints, where every convention mix-up
  (``w`` for ``g``, ``1 + g``, swapped branches) changes the answer. 0.3 lies inside (0, 1) (torch.lerp's other
  branch; negative ``w``); 0.3 and 3.3 are not float32 numbers, so a guidance scale silently rounded to float32
  shows; 7.5 (diffusers' default) is beyond every "large g" shortcut below 5;
* points: 32 "bulk" points (16 drawn from the noised conditional law, 16 from the noised unconditional law, one
  fixed ``torch.Generator`` seed) and 32 "tail" points, the bulk points pushed 4x further from the unconditional
  mean.

That is 4 x 5 x 6 x 2 = 240 value checks, each named like ``"ring2d vp-linear t=0.30 g=3.3 tails: matches analytic
CFG"``. Every call also feeds seven contract checks, each reported once over all calls:

* the call returns a ``torch.Tensor`` and does not raise;
* output shape equals the input shape; output dtype is float64 (catches a silent float32 result); output finite;
* the inputs are unchanged afterwards (bitwise, against copies: catches in-place writes to ``eps_uncond``,
  ``eps_cond`` or ``x``);
* the output shares no storage with an input. A value-correct combiner may be tempted to ``return eps_cond`` at
  g = 1; this check fails it on purpose: samplers and pipelines reuse and update prediction buffers in place
  (``noise_pred.chunk(2)``, schedulers' in-place steps), so an output that *is* an input changes when that buffer
  is reused, and an in-place update of the output corrupts the model's prediction. ``torch.lerp`` and every
  arithmetic expression allocate a new tensor, so the check costs a correct combiner nothing;
* determinism: a second call on fresh copies returns a bitwise-equal tensor (the computation is elementwise, so
  there is no reduction order that could legitimately differ on the CPU).

Finally one layout check per world (vp-linear t = 0.3, g = 3.3, bulk) passes the inputs the way diffusers does,
``eps_uncond, eps_cond = batch.chunk(2)`` (two views of one ``[2N, d]`` tensor) with a column-major ``x``: the
value must match and the batch, ``x`` and their storages must be left alone. Each combiner call gets fresh copies of
the inputs, so a combiner that writes into them cannot disturb any other check. ``passed`` is true when all 251
checks pass.

Tolerances (float64)
--------------------
Every value check is elementwise: ``|combine - reference| <= tol`` with

.. math::  \mathrm{tol} = \gamma_{18}\; K\, \big(|\varepsilon_\varnothing| + |\varepsilon_c| + 2|x|/\sigma\big),
           \qquad K = 1 + |g| + |1 - g|,

Higham's :math:`\gamma_n = nu/(1 - nu)` (:func:`verify.tolerances.gamma`). This is the rounding error, to first
order in u, of any correct combiner that works in one of the four parametrisations; see :func:`cfg_tolerance` for the
operation counts. At the audited points it is typically 2e-14 of the guided prediction (median over rows), while
computing in float32 errs by about 6e-8 of the inputs: every one of the 240 value checks fails a float32 combiner,
the least clear-cut of them by a factor of 5e4 (``tests/test_audit.py`` asserts more than 1e3). The points are
kept where |x|/sigma stays moderate (at most about 220, vp-linear t = 0.02 tails); a correct combiner errs by at
most 0.09 of the bound there (measured on the eps, score, x0, Tweedie-x0 and v routes).

Running it
----------
This is the CFG-only audit of the public contract (``audit_cfg``), kept for its callers. The command line,
``cfgtruth audit MODULE:FUNCTION``, runs the general rule audit (:func:`verify.conformance.audit_rule`, CFG by
default), which covers everything here and adds image shapes, float32, batch independence, state, the space report
and a diagnosis; its time limit is this module's watchdog (:func:`call_with_deadline`), and its spec loader is
:func:`load_combiner`. The time limit raises :class:`AuditTimeout` (default :data:`DEFAULT_TIMEOUT_S` = 300 s on
the command line, exit status :data:`EXIT_TIMEOUT` = 3 there: not a finding about the combiner's values, and not a
usage error).

A correct combiner finishes the whole audit in about a second, so the default leaves room for combiners that are
thousands of times slower while still ending an audit whose combiner sleeps or loops for ever. From Python:

.. code-block:: python

    from verify.audit import audit_cfg
    result = audit_cfg(my_cfg, timeout=60.0)   # AuditTimeout (a BaseException) if it runs out
    result.passed                      # bool
    [c for c in result.checks if not c.passed]   # (name, passed, detail) named tuples

How the timeout interrupts a combiner
-------------------------------------
In the main thread of a Unix process a ``SIGALRM`` watchdog (``signal.setitimer``) raises :class:`AuditTimeout`
inside whatever the combiner is doing (``time.sleep``, a Python loop), and keeps re-raising it every 0.5 s in case
the combiner swallows it with a bare ``except``. :class:`AuditTimeout` derives from ``BaseException``, so the
combiner's ``except Exception`` and the audit's own do not catch it. Elsewhere (another thread, an alarm already in
use, no ``setitimer``) the checks run in a daemon worker thread that the caller stops waiting for at the deadline;
the worker makes no further combiner call after it. A combiner stuck inside one C call cannot be interrupted by
either; for that case the command line (``hard_exit=True``) prints the timeout line and ends the process 5 s after
the deadline. The audit records the check it is running in an :class:`Activity`, which is what the timeout names.
"""

from __future__ import annotations

import importlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

import torch

from toy_models.denoiser import AnalyticDenoiser
from toy_models.scenarios import get_world
from verify.tolerances import gamma

__all__ = [
    "Activity",
    "AuditResult",
    "AuditTimeout",
    "SpecError",
    "call_with_deadline",
    "check_timeout",
    "Check",
    "audit_cfg",
    "cfg_tolerance",
    "load_combiner",
    "DEFAULT_TIMEOUT_S",
    "EXIT_TIMEOUT",
    "GUIDANCE_SCALES",
    "NOISE_LEVELS",
    "ROUNDING_CHAIN",
    "WORLDS",
]

Tensor = torch.Tensor
Combiner = Callable[..., Any]

#: (world, condition): d = 1, 2, 2, 16; a class label or a token set
WORLDS: tuple[tuple[str, Hashable], ...] = (
    ("bimodal1d", 1),
    ("ring2d", 2),
    ("attributes2d", ("red", "dog")),
    ("tokens16d", ("b0+", "b2-")),
)
#: (schedule, t): low / middle / high noise on vp-linear, then alpha = 1 with sigma > 1 on edm
NOISE_LEVELS: tuple[tuple[str, float], ...] = (
    ("vp-linear", 0.02),
    ("vp-linear", 0.3),
    ("vp-linear", 0.9),
    ("edm", 0.5),
    ("edm", 0.9),
)
#: diffusers guidance scales: the two endpoints first, then four off them (w = g - 1)
GUIDANCE_SCALES: tuple[float, ...] = (0.0, 1.0, 0.3, 1.5, 3.3, 7.5)
N_BULK = 32  # half from the noised conditional law, half from the noised unconditional law
TAIL_FACTOR = 4.0  # tail points: bulk points pushed this many times further from the unconditional mean
LAYOUT_CASE = ("vp-linear", 0.3, 3.3, "bulk")

#: ``cfgtruth audit``'s default time limit in seconds (a correct combiner needs about one)
DEFAULT_TIMEOUT_S = 300.0
#: exit status of ``cfgtruth audit`` when the time runs out (0 passed, 1 failed checks, 2 usage error)
EXIT_TIMEOUT = 3
#: seconds past the deadline after which the command line gives up on a combiner stuck in a C call
HARD_EXIT_GRACE_S = 5.0
#: the watchdog re-raises every this many seconds after the deadline (a combiner may swallow the first one)
_REARM_S = 0.5

#: Longest chain of roundings behind one term of the bound (see cfg_tolerance): 15 for the v-space route, the
#: longest of the four, plus 3 for the float64 reference itself.
ROUNDING_CHAIN = 18


# --------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------
class Check(NamedTuple):
    """One audit check: unpacks as ``(name, passed, detail)``."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class AuditResult:
    """The outcome of :func:`audit_cfg`.

    ``checks`` lists every check in order; ``worst_ratio`` maps each value check's name to the largest
    ``|error| / tolerance`` over its elements (``inf`` when no comparable tensor came back).
    """

    checks: list[Check]
    worst_ratio: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def summary(self) -> str:
        n_fail = len(self.failures)
        return f"{len(self.checks) - n_fail} passed, {n_fail} failed"


class SpecError(ValueError):
    """A ``MODULE:FUNCTION`` spec that cannot be loaded (malformed, no module, no attribute, not callable)."""


@dataclass
class Activity:
    """What the audit is doing now: shared with the watchdog, so that a timeout can say which check was running.

    ``what`` describes the current step (a check's name and parameters, or the import), ``done`` counts the value
    and layout checks already finished out of ``total``; ``cancelled`` tells a worker thread to stop.
    """

    what: str = "starting"
    done: int = 0
    total: int = 0
    cancelled: bool = False


class AuditTimeout(BaseException):
    """The audit's time ran out. A ``BaseException`` (like ``KeyboardInterrupt``), so that neither the combiner's
    ``except Exception`` nor the audit's own handling of a raising combiner can swallow it.

    ``timeout`` (seconds), ``what`` (the check that was running, with its parameters), ``done`` and ``total``.
    """

    def __init__(self, timeout: float, what: str, done: int, total: int):
        super().__init__(timeout, what, done, total)
        self.timeout, self.what, self.done, self.total = timeout, what, done, total

    def __str__(self) -> str:
        return (f"timed out after {self.timeout:g} s during {self.what}; {self.done} of {self.total} checks "
                "had finished")


def check_timeout(timeout: float | None) -> float | None:
    """``None`` (no limit) or a positive finite number of seconds."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout: expected a number of seconds or None, got {type(timeout).__name__}")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout: must be a positive finite number of seconds or None, got {timeout!r}")
    return float(timeout)


def call_with_deadline(fn: Callable[[], Any], timeout: float | None, activity: Activity,
                        hard_exit: bool = False, started: float | None = None) -> Any:
    """``fn()``, stopped with :class:`AuditTimeout` ``timeout`` seconds after ``started`` (a ``time.monotonic()``
    reading; default: now). See the module docstring."""
    if timeout is None:
        return fn()
    remaining = timeout - (time.monotonic() - started) if started is not None else timeout
    if remaining <= 0:
        raise AuditTimeout(timeout, activity.what, activity.done, activity.total)
    backstop = None
    if hard_exit:
        def give_up() -> None:  # the combiner is stuck where no exception reaches it
            print(f"cfgtruth audit: {AuditTimeout(timeout, activity.what, activity.done, activity.total)} "
                  f"(the combiner did not return {HARD_EXIT_GRACE_S:g} s after the deadline; process ended)",
                  file=sys.stderr, flush=True)
            os._exit(EXIT_TIMEOUT)

        backstop = threading.Timer(remaining + HARD_EXIT_GRACE_S, give_up)
        backstop.daemon = True
        backstop.start()
    try:
        if _alarm_available():
            return _with_alarm(fn, timeout, remaining, activity)
        return _with_worker(fn, timeout, remaining, activity)
    finally:
        if backstop is not None:
            backstop.cancel()


def _alarm_available() -> bool:
    """SIGALRM is usable: Unix, the main thread, and no other alarm pending or handler installed."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        return False
    return signal.getitimer(signal.ITIMER_REAL)[0] == 0 and signal.getsignal(signal.SIGALRM) in (
        signal.SIG_DFL, signal.SIG_IGN, None)


def _with_alarm(fn: Callable[[], Any], timeout: float, remaining: float, activity: Activity) -> Any:
    def expired(signum, frame):
        raise AuditTimeout(timeout, activity.what, activity.done, activity.total)

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, remaining, _REARM_S)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _with_worker(fn: Callable[[], Any], timeout: float, remaining: float, activity: Activity) -> Any:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="cfgtruth-audit", daemon=True)
    worker.start()
    worker.join(remaining)
    if worker.is_alive():
        activity.cancelled = True  # the worker makes no further combiner call
        raise AuditTimeout(timeout, activity.what, activity.done, activity.total)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# --------------------------------------------------------------------------------------------------------------
# Tolerance
# --------------------------------------------------------------------------------------------------------------
def cfg_tolerance(eps_uncond: Tensor, eps_cond: Tensor, x: Tensor, guidance_scale: float, sigma: float,
                  dtype: torch.dtype = torch.float64) -> Tensor:
    r"""Elementwise bound on ``|combine - reference|`` for a correct combiner computing in ``dtype``.

    Write :math:`a = \varepsilon_\varnothing`, :math:`b = \varepsilon_c`, :math:`y = a + g(b - a)`,
    :math:`K = 1 + |g| + |1 - g|`, u the unit roundoff; all bounds are elementwise and first order in u
    (each :math:`\gamma_m + \gamma_n \le \gamma_{m+n}`).

    * eps space. ``a + g*(b - a)``, ``(1 - g)*a + g*b``, ``(1 + w)*b - w*a`` with ``w = g - 1`` and ``torch.lerp``
      (``b - (b - a)*(1 - g)`` for g >= 0.5) each round at most 5 times along a term (the coefficient, the
      difference, the product, the sum) whose size is at most :math:`K(|a| + |b|)`: error
      :math:`\le \gamma_5 K (|a| + |b|)`.
    * score space, :math:`s = -\varepsilon/\sigma` (1 rounding, or 2 through ``1/sigma``), the same combination
      (5), back with :math:`-\sigma s` (1, or 2): :math:`\le \gamma_9 K(|a| + |b|)`.
    * x0 space (:mod:`toy_models.parametrization`). :math:`\hat x_0 = (x - \sigma a)/\alpha` errs by
      :math:`\gamma_3 (|x| + \sigma|a|)/\alpha` (product, difference, quotient). The combination adds
      :math:`\gamma_5 K Q` and carries the inputs' errors with weights :math:`|1 - g| + |g| \le K`, so
      :math:`\hat x_{0,g}` errs by :math:`\delta \le \gamma_8 K Q`, :math:`Q = (2|x| + \sigma(|a| + |b|))/\alpha`.
      Back, :math:`\varepsilon = (x - \alpha x_0)/\sigma` turns :math:`\delta` into :math:`\alpha\delta/\sigma` and
      rounds three times on terms :math:`|x| + \alpha|x_{0,g}| \le 2|x| + \sigma|y|`. The :math:`1/\alpha` of the
      forward conversion cancels against the :math:`\alpha` of the backward one, leaving
      :math:`\le \gamma_{11} K (|a| + |b| + 2|x|/\sigma)`: the only amplification is :math:`|x|/\sigma`, the
      size of x measured in noise units. Tweedie's form :math:`(x + \sigma^2 s)/\alpha` adds 2 roundings:
      :math:`\gamma_{13}`.
    * v space, :math:`v = ((\alpha^2 + \sigma^2)\varepsilon - \sigma x)/\alpha` (5 roundings, with the
      coefficient's 2), the combination (5, plus the carried input error, 5), back with
      :math:`(\alpha v + \sigma x)/(\alpha^2 + \sigma^2)` (5): :math:`\le \gamma_{15} K(|a| + |b| +
      2\sigma|x|/(\alpha^2 + \sigma^2))`, and :math:`\sigma/(\alpha^2 + \sigma^2) \le 1/\sigma`.

    The reference :math:`a + g(b - a)`, itself computed in float64, errs by :math:`\gamma_3 K(|a| + |b|)`.
    Hence ``tol = gamma(15 + 3) * K * (|a| + |b| + 2|x|/sigma)`` (:data:`ROUNDING_CHAIN` = 18) covers every route
    and the reference. The endpoint references (g = 0, 1) are exact, so there the bound has 3 roundings to spare.
    """
    g = float(guidance_scale)
    k = 1.0 + abs(g) + abs(1.0 - g)
    scale = eps_uncond.abs() + eps_cond.abs() + (2.0 / float(sigma)) * x.abs()
    return gamma(ROUNDING_CHAIN, dtype) * k * scale


# --------------------------------------------------------------------------------------------------------------
# The audit grid
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _PointSet:
    world: str
    schedule: str
    t: float
    region: str
    alpha: float
    sigma: float
    x: Tensor
    eps_uncond: Tensor
    eps_cond: Tensor

    def label(self, g: float) -> str:
        return f"{self.world} {self.schedule} t={self.t:.2f} g={g:g} {self.region}"


@lru_cache(maxsize=4)
def _point_sets(seed: int) -> tuple[_PointSet, ...]:
    """The audit's inputs (never handed out: every call gets copies)."""
    generator = torch.Generator().manual_seed(seed)
    sets = []
    for world_name, condition in WORLDS:
        world = get_world(world_name)
        for schedule, t in NOISE_LEVELS:
            den = AnalyticDenoiser(world, schedule)
            alpha, sigma = (float(v) for v in den.schedule.alpha_sigma(t))
            law_c, law_u = den.noised_law(t, condition), den.noised_law(t, None)
            bulk = torch.cat([law_c.sample(N_BULK // 2, generator), law_u.sample(N_BULK - N_BULK // 2, generator)])
            centre = law_u.mean()
            tails = centre + TAIL_FACTOR * (bulk - centre)
            for region, x in (("bulk", bulk), ("tails", tails)):
                eps_u, eps_c = den.eps(x, t, None), den.eps(x, t, condition)
                if not (torch.isfinite(eps_u).all() and torch.isfinite(eps_c).all()):  # pragma: no cover
                    raise RuntimeError(f"audit grid: non-finite analytic eps in {world_name} {schedule} t={t}")
                sets.append(_PointSet(world_name, schedule, t, region, alpha, sigma, x, eps_u, eps_c))
    return tuple(sets)


def _reference(ps: _PointSet, g: float) -> Tensor:
    if g == 0.0:
        return ps.eps_uncond
    if g == 1.0:
        return ps.eps_cond
    return ps.eps_uncond + g * (ps.eps_cond - ps.eps_uncond)


# --------------------------------------------------------------------------------------------------------------
# Calling the combiner and inspecting what comes back
# --------------------------------------------------------------------------------------------------------------
@dataclass
class _Call:
    output: Any = None
    error: str | None = None


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _invoke(combine: Combiner, eps_u: Tensor, eps_c: Tensor, g: float, x: Tensor, alpha: float,
            sigma: float) -> _Call:
    try:
        return _Call(output=combine(eps_u, eps_c, g, x=x, alpha=alpha, sigma=sigma))
    except Exception as exc:  # noqa: BLE001 - a combiner that raises fails the audit, it does not stop it
        return _Call(error=f"raised {type(exc).__name__}: {_short(exc)}")


def _storage_ptr(t: Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except Exception:  # noqa: BLE001 - e.g. tensor subclasses without storage
        return -1


def _changed(before: Tensor, after: Any, name: str) -> str | None:
    """Why ``after`` (an input tensor after the call) differs from ``before``; None if bitwise equal."""
    if not isinstance(after, Tensor):  # pragma: no cover - the audit built it
        return f"{name} is no longer a tensor"
    if after.shape != before.shape or after.dtype != before.dtype:
        return f"{name} changed shape/dtype to {list(after.shape)} {after.dtype}"
    if torch.equal(after, before):
        return None
    diff = (after.to(torch.float64) - before).abs()
    return f"{name} modified in place (max change {float(diff.nan_to_num(float('inf')).max()):.3g})"


def _value_error(out: Any, ref: Tensor, tol: Tensor) -> tuple[bool, float, str]:
    """(passed, worst |err|/tol, detail) of one output against its reference."""
    if not isinstance(out, Tensor):
        return False, float("inf"), f"returned {type(out).__name__}, not a torch.Tensor"
    if out.shape != ref.shape:
        return False, float("inf"), f"shape {list(out.shape)} != input shape {list(ref.shape)}"
    if out.is_complex() or out.dtype == torch.bool:
        return False, float("inf"), f"dtype {out.dtype} cannot be compared"
    err = (out.detach().cpu().to(torch.float64) - ref).abs().nan_to_num(nan=float("inf"))
    ratio = torch.where(err == 0, torch.zeros_like(err), err / tol)
    worst = int(torch.argmax(ratio.reshape(-1)))
    r = float(ratio.reshape(-1)[worst])
    e, t = float(err.reshape(-1)[worst]), float(tol.reshape(-1)[worst])
    passed = bool((err <= tol).all())
    detail = (f"max |err| {float(err.max()):.3g}; worst element |err| {e:.3g} vs tol {t:.3g} "
              f"(err/tol = {r:.3g})")
    return passed, r, detail


class _Tally:
    """A contract property observed over many calls: reported as one check."""

    def __init__(self, name: str):
        self.name, self.calls, self.failed, self.first = name, 0, 0, ""

    def observe(self, where: str, problem: str | None) -> None:
        self.calls += 1
        if problem is not None:
            self.failed += 1
            if not self.first:
                self.first = f"{where}: {problem}"

    def check(self) -> Check:
        if self.failed == 0:
            return Check(self.name, True, f"held in all {self.calls} calls")
        return Check(self.name, False, f"failed in {self.failed} of {self.calls} calls; first: {self.first}")


_CONTRACT = {
    "tensor": "returns a torch.Tensor without raising",
    "shape": "output shape equals input shape [N, d]",
    "dtype": "output dtype is float64 for float64 inputs",
    "finite": "output is finite",
    "inputs": "inputs unchanged after the call (eps_uncond, eps_cond, x)",
    "alias": "output shares no storage with an input",
    "determinism": "deterministic: a second call on fresh copies is bitwise equal",
}


def _contract_problems(call: _Call, shape: torch.Size, inputs: tuple[Tensor, ...]) -> dict[str, str | None]:
    out = call.output
    if call.error is not None or not isinstance(out, Tensor):
        why = call.error or f"returned {type(out).__name__}, not a torch.Tensor"
        return {key: why for key in ("tensor", "shape", "dtype", "finite", "alias")}
    shared = {_storage_ptr(t) for t in inputs} - {-1, 0}
    return {
        "tensor": None,
        "shape": None if out.shape == shape else f"shape {list(out.shape)} != {list(shape)}",
        "dtype": None if out.dtype == torch.float64 else f"dtype {out.dtype}",
        "finite": None if bool(torch.isfinite(out).all()) else f"{int((~torch.isfinite(out)).sum())} non-finite",
        "alias": "output shares storage with an input" if _storage_ptr(out) in shared else None,
    }


def _bitwise_equal(a: Tensor, b: Tensor) -> bool:
    """Equal element by element, NaN matching NaN (a NaN is reported by the finiteness check, not here)."""
    if a.is_floating_point() or a.is_complex():
        return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())
    return torch.equal(a, b)


def _same_outcome(first: _Call, second: _Call) -> str | None:
    if first.error is not None or second.error is not None:
        return None if first.error == second.error else f"first: {first.error}; second: {second.error}"
    a, b = first.output, second.output
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
        return None if type(a) is type(b) else f"returned {type(a).__name__} then {type(b).__name__}"
    if a.shape == b.shape and a.dtype == b.dtype and _bitwise_equal(a, b):
        return None
    if a.shape == b.shape:
        diff = float((a.to(torch.float64) - b.to(torch.float64)).abs().nan_to_num(float("inf")).max())
        return f"second call differs (max |difference| {diff:.3g})"
    return f"second call shape {list(b.shape)} != {list(a.shape)}"


# --------------------------------------------------------------------------------------------------------------
# The audit
# --------------------------------------------------------------------------------------------------------------
def audit_cfg(combine: Combiner, *, seed: int = 0, timeout: float | None = None,
              progress: Callable[[int, int, str], None] | None = None) -> AuditResult:
    """Audit ``combine(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma) -> eps`` (diffusers convention).

    Runs the checks listed in the module docstring and returns an :class:`AuditResult`; ``seed`` seeds the one
    ``torch.Generator`` that draws the bulk points. Never raises for a misbehaving combiner (exceptions it raises
    are failed checks), except that after ``timeout`` seconds (``None``: no limit) it raises :class:`AuditTimeout`
    naming the check that was running. ``progress(done, total, what)`` is called before each value or layout check.
    Raises ``TypeError`` if ``combine`` is not callable, ``ValueError``/``TypeError`` starting with ``timeout:``
    for a timeout that is not a positive finite number.
    """
    if not callable(combine):
        raise TypeError(f"combine: expected a callable, got {type(combine).__name__}")
    timeout = check_timeout(timeout)
    activity = Activity(total=_n_checks_timed())
    return call_with_deadline(lambda: _run_checks(combine, int(seed), activity, progress), timeout, activity)


def _n_checks_timed() -> int:
    """Value and layout checks: the steps that progress and timeouts count."""
    n_sets = len(WORLDS) * len(NOISE_LEVELS) * 2
    return n_sets * len(GUIDANCE_SCALES) + len(WORLDS)


def _describe(ps: _PointSet, name: str, g: float, call: str) -> str:
    condition = dict(WORLDS)[ps.world]
    return (f"check {name!r} ({call}; world={ps.world}, condition={condition!r}, schedule={ps.schedule}, "
            f"t={ps.t:g}, alpha={ps.alpha:.4g}, sigma={ps.sigma:.4g}, guidance_scale={g:g}, points={ps.region}, "
            f"x of shape {list(ps.x.shape)})")


def _step(activity: Activity, what: str, progress: Callable[[int, int, str], None] | None) -> None:
    """Record the step about to run; stop here if a watchdog thread has given up on this audit."""
    if activity.cancelled:
        raise AuditTimeout(0.0, activity.what, activity.done, activity.total)
    activity.what = what
    if progress is not None:
        progress(activity.done, activity.total, what)


def _run_checks(combine: Combiner, seed: int, activity: Activity,
                progress: Callable[[int, int, str], None] | None) -> AuditResult:
    tallies = {key: _Tally(name) for key, name in _CONTRACT.items()}
    value_checks: list[Check] = []
    ratios: dict[str, float] = {}
    activity.what = "the construction of the audit's inputs"
    point_sets = _point_sets(seed)

    for ps in point_sets:
        for g in GUIDANCE_SCALES:
            where = ps.label(g)
            if g == 0.0:
                name = f"{where}: endpoint, equals eps_uncond"
            elif g == 1.0:
                name = f"{where}: endpoint, equals eps_cond"
            else:
                name = f"{where}: matches analytic CFG"
            pristine = (ps.eps_uncond, ps.eps_cond, ps.x)
            given = tuple(t.clone() for t in pristine)
            _step(activity, _describe(ps, name, g, "first of its 2 calls"), progress)
            first = _invoke(combine, given[0], given[1], g, given[2], ps.alpha, ps.sigma)
            problems = _contract_problems(first, ps.x.shape, given)
            changed = [why for why in (_changed(p, a, n) for p, a, n in
                                       zip(pristine, given, ("eps_uncond", "eps_cond", "x"), strict=True)) if why]
            problems["inputs"] = "; ".join(changed) if changed else None
            again = tuple(t.clone() for t in pristine)
            _step(activity, _describe(ps, name, g, "second call, the determinism check"), progress)
            second = _invoke(combine, again[0], again[1], g, again[2], ps.alpha, ps.sigma)
            problems["determinism"] = _same_outcome(first, second)
            for key, problem in problems.items():
                tallies[key].observe(where, problem)

            if first.error is not None:
                passed, ratio, detail = False, float("inf"), first.error
            else:
                tol = cfg_tolerance(ps.eps_uncond, ps.eps_cond, ps.x, g, ps.sigma)
                passed, ratio, detail = _value_error(first.output, _reference(ps, g), tol)
            value_checks.append(Check(name, passed, detail))
            ratios[name] = ratio
            activity.done += 1

    layout_checks = []
    for ps in point_sets:
        if (ps.schedule, ps.t, ps.region) == (LAYOUT_CASE[0], LAYOUT_CASE[1], LAYOUT_CASE[3]):
            _step(activity, _describe(ps, f"{ps.label(LAYOUT_CASE[2])}, diffusers layout", LAYOUT_CASE[2],
                                      "layout check"), progress)
            layout_checks.append(_layout_check(combine, ps, ratios))
            activity.done += 1
    activity.what = "finished"
    if progress is not None:
        progress(activity.done, activity.total, "finished")
    checks = [t.check() for t in tallies.values()] + value_checks + layout_checks
    return AuditResult(checks, ratios)


def _layout_check(combine: Combiner, ps: _PointSet, ratios: dict[str, float]) -> Check:
    """diffusers' layout: both branches are views of one [2N, d] batch (uncond first); x column-major."""
    g = LAYOUT_CASE[2]
    name = (f"{ps.world} {ps.schedule} t={ps.t:.2f} g={g:g} {ps.region}, diffusers layout "
            f"(eps_uncond, eps_cond = batch.chunk(2); column-major x): matches, inputs intact")
    batch = torch.cat([ps.eps_uncond, ps.eps_cond])
    eps_u, eps_c = batch.chunk(2)
    x = ps.x.t().contiguous().t()
    call = _invoke(combine, eps_u, eps_c, g, x, ps.alpha, ps.sigma)
    problems = [why for why in (_changed(torch.cat([ps.eps_uncond, ps.eps_cond]), batch, "batch"),
                                _changed(ps.x, x, "x")) if why]
    if call.error is not None:
        ratios[name] = float("inf")
        return Check(name, False, "; ".join([call.error, *problems]))
    tol = cfg_tolerance(ps.eps_uncond, ps.eps_cond, ps.x, g, ps.sigma)
    passed, ratio, detail = _value_error(call.output, _reference(ps, g), tol)
    ratios[name] = ratio
    if isinstance(call.output, Tensor) and _storage_ptr(call.output) in {_storage_ptr(batch), _storage_ptr(x)}:
        problems.append("output shares storage with an input")
    if isinstance(call.output, Tensor) and call.output.dtype != torch.float64:
        problems.append(f"dtype {call.output.dtype}")
    return Check(name, passed and not problems, "; ".join([detail, *problems]))


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------
def load_combiner(spec: str) -> Combiner:
    """Import ``"MODULE:FUNCTION"`` (``FUNCTION`` may be dotted, e.g. ``"pkg.mod:Guidance.combine"``).

    The module is imported from ``sys.path``; if it is not found there, the current working directory is appended
    to ``sys.path`` (and stays there, so the module's own lazy imports keep working) and the import is retried.
    Raises :class:`SpecError` (a ``ValueError`` starting with ``spec:``) when the spec is malformed, the module
    cannot be imported, the attribute is missing, or it is not callable.
    """
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise SpecError(f"spec: expected 'MODULE:FUNCTION' (e.g. 'mypkg.guidance:my_cfg'), got {spec!r}")
    module_name, attr_path = (part.strip() for part in spec.split(":"))
    if not module_name or not attr_path:
        raise SpecError(f"spec: expected 'MODULE:FUNCTION' with both parts non-empty, got {spec!r}")
    module = _import(module_name, spec)
    target: Any = module
    for attr in attr_path.split("."):
        if not hasattr(target, attr):
            raise SpecError(f"spec: {spec!r}: {getattr(target, '__name__', module_name)!r} has no attribute "
                             f"{attr!r}")
        target = getattr(target, attr)
    if not callable(target):
        raise SpecError(f"spec: {spec!r} names a {type(target).__name__}, not a callable")
    return target


def _import(module_name: str, spec: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if not _is_missing(exc, module_name):
            raise SpecError(f"spec: {spec!r}: importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - a broken module is a bad spec, reported as such
        raise SpecError(f"spec: {spec!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}") from exc
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
        importlib.invalidate_caches()
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if not _is_missing(exc, module_name):
                raise SpecError(f"spec: {spec!r}: importing {module_name!r} failed: {exc}") from exc
        except Exception as exc:  # noqa: BLE001
            raise SpecError(f"spec: {spec!r}: importing {module_name!r} raised {type(exc).__name__}: "
                             f"{exc}") from exc
    raise SpecError(f"spec: {spec!r}: no module named {module_name!r} on sys.path or in {cwd}")


def _is_missing(exc: ModuleNotFoundError, module_name: str) -> bool:
    """Whether the error is about ``module_name`` (or a parent package) itself, not one of its imports."""
    missing = exc.name or ""
    return module_name == missing or module_name.startswith(missing + ".")
