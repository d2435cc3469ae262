r"""Case generators for the robustness suite: a hostile-but-fair fuzz of cfgtruth's public API.

Each generator takes a seeded ``numpy.random.Generator`` and returns a :class:`Case`: a description, a thunk that
calls the API, an oracle that judges the outcome, and the code a user can paste to reproduce it. The oracle sorts
every outcome into exactly one of

* ``refused clearly``  -- ``ValueError``/``TypeError`` whose message starts with the offending argument's name
  (the text before the first ``:``, split at commas, names it);
* ``correct``          -- finite and right, judged against an independent reference (mpmath at 50 digits with
  explicit centring for mixture densities and scores, closed forms, identities, float64 references);
* ``wrong``            -- finite but outside the derived tolerance, or an invalid input silently accepted;
* ``NaN``              -- NaN or infinity in an output where the input was valid or should have been refused;
* ``other exception``  -- any other exception type, a refusal blaming another argument, or a valid input refused.

A case knows which argument is bad (``bad``); where an input is odd but has a well-defined answer (an int or
float16 array, a bool that reads as 0/1, an object array of numbers, a covariance of 1e-310) the oracle accepts
either a clear refusal or the right answer (``bad`` *and* ``check``). A valid input has ``bad=None`` and must give
the right answer; a clearly invalid one has ``check=None`` and must be refused.

Tolerances (the derivation the mixture oracles use)
---------------------------------------------------
For a component :math:`k` with residual :math:`r = x - \mu_k`, precision :math:`P_k`, whitened quadratic
:math:`q_k = r^\top P_k r`, component score :math:`s_k = -P_k r`, condition number :math:`\kappa_k` and
:math:`\ell_k = \log\pi_k + \log\mathcal N_k(x)`, a backward-stable evaluation (centre first, then solve with the
Cholesky factor) in a dtype of unit roundoff :math:`u` commits at most

* rounding of the inputs / the residual: :math:`|\delta r| \le u(|x| + |\mu_k|)` per coordinate, so
  :math:`|\delta q_k| \le 2|s_k|\,\sqrt d\,u(|x| + |\mu_k|)`;
* Cholesky / triangular solve (Higham, Thm 10.3 and 8.5): relative backward error :math:`c\,d\,u` in
  :math:`\Sigma_k`, which moves :math:`q_k` by at most :math:`c\,d\,u\,\kappa_k q_k` (a bound on
  :math:`\|\Sigma\| |P r|^2`) and :math:`\log\det\Sigma_k` by :math:`c\,d^2 u\,\kappa_k`;
* the sum of d logarithms and the constants: :math:`d\,u\,|\log\det\Sigma_k| + u|\ell_k|`.

So :math:`|\delta\ell_k| \le C u T_k` with
:math:`T_k = \sqrt d\,|s_k|(|x| + |\mu_k|) + d^2\kappa_k(q_k + d) + d|\log\det\Sigma_k| + |\ell_k| + d`, and
:math:`C = 32` covering the small constants ``c`` and the float64 -> compute-dtype casts. The log-sum-exp is
linear in the :math:`\ell_k` with weights :math:`r_k` (the responsibilities), so

* :math:`\log p`: :math:`C u(\sum_k r_k T_k + |\log p| + \log K + 1)`;
* responsibilities: :math:`|\delta r_k| \le r_k\,C u (T_k + \bar T)`, :math:`\bar T = \sum_j r_j T_j`;
* the score :math:`\sum_k r_k s_k`: each :math:`s_k` errs by :math:`C u(\sqrt d\|P_k\|(|x| + |\mu_k|) +
  d\kappa_k|s_k|)`, plus the responsibilities' error times :math:`|s_k - \bar s|`;
* the class posterior: the responsibilities' error summed; the class-posterior gradient: the score bound for the
  class-restricted responsibilities plus the one for all of them.

Responsibilities below :math:`\sqrt{\text{tiny}}` may be dropped (documented): :math:`K\sqrt{\text{tiny}}` more.
These bounds are what a centred evaluation achieves; an algorithm that forms :math:`x^\top P x` in absolute
coordinates cancels terms of size :math:`\|P\||x|^2` and can miss them by orders of magnitude.

Other oracles bound a formula's rounding by the running-error rule: an expression of ``n`` operations, evaluated
with every subtraction replaced by an addition of absolute values (``f_abs``), errs by at most ``2 n u f_abs``
when no denominator cancels.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
import shutil
import signal
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mpmath as mp
import numpy as np
import torch

mp.mp.dps = 50

REFUSED, CORRECT, WRONG, NAN, OTHER = "refused clearly", "correct", "wrong", "NaN", "other exception"
OUTCOMES = (REFUSED, CORRECT, WRONG, NAN, OTHER)
F64, F32 = torch.float64, torch.float32
U = {F64: 2.0**-53, F32: 2.0**-24}
C_SAFETY = 32.0
TIMEOUT_S = 30.0


# ================================================================================================================
# Cases, oracles, judging
# ================================================================================================================
@dataclass
class Oracle:
    """``bad``: argument names a clear refusal may start with (None: the input is valid and must not be refused).
    ``check``: judges a returned result (None: any result of a bad input is wrong). ``mention``: a predicate the
    refusal message must also satisfy."""

    check: Callable[[Any], tuple[str, str]] | None = None
    bad: tuple[str, ...] | None = None
    mention: Callable[[str], bool] | None = None

    def judge_exception(self, exc: BaseException) -> tuple[str, str]:
        msg = str(exc)
        kind = type(exc).__name__
        if isinstance(exc, (ValueError, TypeError)):
            if self.bad is None:
                return OTHER, f"valid input refused: {kind}: {msg[:300]}"
            head = msg.split(":", 1)[0] if ":" in msg else ""
            names = {n.strip() for n in head.split(",")}
            if "path" in self.bad and head.endswith((".json", ".safetensors")):
                names.add("path")  # a checkpoint refusal names the file itself, then the field
            if names & set(self.bad) and (self.mention is None or self.mention(msg)):
                return REFUSED, f"{kind}: {msg[:200]}"
            return OTHER, f"unclear refusal (the bad argument is {'/'.join(self.bad)}): {kind}: {msg[:300]}"
        return OTHER, f"{kind}: {msg[:300]}"

    def judge_result(self, result: Any) -> tuple[str, str]:
        if self.check is None:
            if not all_finite(result):
                return NAN, f"invalid input ({'/'.join(self.bad or ())}) not refused; NaN/inf in the output"
            return WRONG, f"invalid input ({'/'.join(self.bad or ())}) silently accepted: {short(result)}"
        try:
            return self.check(result)
        except Exception as err:  # the result could not even be read as the documented type
            return WRONG, f"result not of the documented form ({type(err).__name__}: {err}): {short(result)}"


@dataclass
class Case:
    api: str
    description: str
    thunk: Callable[[], Any]
    oracle: Oracle
    repro: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout(f"no answer within {TIMEOUT_S:g} s")


def judge(case: Case) -> tuple[str, str]:
    """Run the case's thunk (with a timeout) and judge the outcome."""
    use_alarm = hasattr(signal, "setitimer")
    if use_alarm:
        try:
            old = signal.signal(signal.SIGALRM, _alarm)
            signal.setitimer(signal.ITIMER_REAL, TIMEOUT_S)
        except ValueError:  # not the main thread
            use_alarm = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = case.thunk()
    except _Timeout as exc:
        return OTHER, f"timeout: {exc}"
    except Exception as exc:
        return case.oracle.judge_exception(exc)
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return case.oracle.judge_result(result)


# ================================================================================================================
# Helpers: finiteness, comparison, literals for reproducers
# ================================================================================================================
def _leaves(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, np.ndarray):
        yield obj
    elif isinstance(obj, (float, int, np.floating, np.integer)) and not isinstance(obj, bool):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _leaves(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _leaves(o)
    elif hasattr(obj, "__dataclass_fields__"):
        for name in obj.__dataclass_fields__:
            yield from _leaves(getattr(obj, name))


def all_finite(obj) -> bool:
    for leaf in _leaves(obj):
        if isinstance(leaf, torch.Tensor):
            if leaf.device.type == "meta":
                continue
            if (leaf.is_floating_point() or leaf.is_complex()) and not bool(torch.isfinite(leaf).all()):
                return False
        elif isinstance(leaf, np.ndarray):
            if leaf.dtype.kind in "fc" and not np.all(np.isfinite(leaf)):
                return False
        elif isinstance(leaf, (float, np.floating)) and not math.isfinite(float(leaf)):
            return False
    return True


def short(obj, n: int = 160) -> str:
    s = repr(obj)
    return s if len(s) <= n else s[:n] + "..."


def to_np(result) -> np.ndarray:
    """A real float64 array from a tensor/array result; complex, meta or non-numeric results raise."""
    if isinstance(result, torch.Tensor):
        if result.device.type == "meta":
            raise TypeError("a meta tensor holds no values")
        if result.is_complex():
            raise TypeError(f"complex result ({result.dtype})")
        return result.detach().to("cpu").to(F64).numpy()
    arr = np.asarray(result)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"non-real result dtype {arr.dtype}")
    return arr.astype(np.float64)


def compare(result, ref, tol, what: str = "", *, need_float: bool = True, inf_ok: bool = False
            ) -> tuple[str, str]:
    """``result`` against ``ref`` (float64 array, may hold +-inf where the exact value overflows) with absolute
    tolerance ``tol`` (scalar or array)."""
    if need_float and isinstance(result, torch.Tensor) and not result.is_floating_point():
        return WRONG, f"{what}: dtype {result.dtype}, expected a floating dtype; got {short(result)}"
    got = to_np(result)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return WRONG, f"{what}: shape {list(got.shape)}, expected {list(ref.shape)}"
    ref_inf = ~np.isfinite(ref)
    if not np.all(np.isfinite(got[~ref_inf])):
        return NAN, f"{what}: NaN/inf where the exact value is finite: {short(got)}"
    if np.any(ref_inf):  # exact value overflows: the rounded answer is +-inf (or a refusal)
        same = got[ref_inf] == ref[ref_inf]
        if not np.all(same):
            if np.any(np.isnan(got[ref_inf])):
                return NAN, f"{what}: NaN where the exact value overflows to {ref[ref_inf][0]}"
            return WRONG, f"{what}: {got[ref_inf]} where the exact value overflows to {ref[ref_inf]}"
    if not inf_ok and np.any(~np.isfinite(got[~ref_inf])):
        return NAN, f"{what}: non-finite output"
    tol = np.broadcast_to(np.asarray(tol, dtype=np.float64), ref.shape)
    if isinstance(result, torch.Tensor) and result.is_floating_point():
        # the result is documented to come back in a given dtype: its final rounding to that dtype is allowed
        tol = tol + float(torch.finfo(result.dtype).eps) / 2 * np.abs(np.where(np.isfinite(ref), ref, 0.0))
    fin = ~ref_inf
    err = np.abs(got[fin] - ref[fin])
    if err.size and np.any(err > tol[fin]):
        i = int(np.argmax(err / np.maximum(tol[fin], 1e-300)))
        return WRONG, (f"{what}: got {got[fin].ravel()[i]!r}, exact {ref[fin].ravel()[i]!r}, "
                       f"error {err.ravel()[i]:.3g} "
                       f"> tolerance {tol[fin].ravel()[i]:.3g}")
    return CORRECT, f"{what}: within tolerance"


def _fix_literal(s: str) -> str:
    s = re.sub(r"(?<![\w'.])nan(?![\w'])", "float('nan')", s)
    s = re.sub(r"(?<![\w'.])-inf(?![\w'])", "-float('inf')", s)
    return re.sub(r"(?<![\w'.-])inf(?![\w'])", "float('inf')", s)


def lit(v) -> str:
    """A Python literal that rebuilds ``v`` exactly (tensors with their dtype, arrays, floats)."""
    if isinstance(v, torch.Tensor):
        if v.device.type == "meta":
            return f"torch.empty({list(v.shape)}, dtype={v.dtype}, device='meta')"
        if v.dtype in (torch.bfloat16, torch.float16):
            return f"torch.tensor({_fix_literal(repr(v.float().tolist()))}, dtype={v.dtype})"
        return f"torch.tensor({_fix_literal(repr(v.tolist()))}, dtype={v.dtype})"
    if isinstance(v, np.ndarray):
        dt = "object" if v.dtype == object else f"np.{v.dtype}"
        return f"np.array({_fix_literal(repr(v.tolist()))}, dtype={dt})"
    if isinstance(v, float):
        return _fix_literal(repr(v))
    if isinstance(v, torch.dtype):
        return str(v)
    return _fix_literal(repr(v))


# ================================================================================================================
# Random inputs
# ================================================================================================================
def log_uniform(rng, lo: float, hi: float) -> float:
    return float(10.0 ** rng.uniform(lo, hi))


def rand_spd(rng, d: int, scale: float, kappa: float) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    eig = scale * 10.0 ** rng.uniform(0.0, math.log10(kappa), d)
    c = (q * eig) @ q.T
    return 0.5 * (c + c.T)  # exactly symmetric (IEEE addition commutes)


@dataclass
class MixParams:
    w: np.ndarray
    mu: np.ndarray
    cov: np.ndarray
    labels: np.ndarray
    attributes: dict | None = None

    @property
    def K(self):
        return len(self.w)

    @property
    def d(self):
        return self.mu.shape[1]


def rand_mixture(rng, *, K: int | None = None, d: int | None = None, log_scale=(-12.0, 6.0),
                 far: float = 4.0, attributes: bool = False) -> MixParams:
    """Random mixture: K in 1..5, d in 1..6, SPD covariances of scale 10^U(log_scale), condition up to 1e3, means up
    to 10^far from the origin."""
    K = int(rng.integers(1, 6)) if K is None else K
    d = int(rng.integers(1, 7)) if d is None else d
    scale = log_uniform(rng, *log_scale)
    kappa = log_uniform(rng, 0.0, 3.0)
    centre = np.zeros(d) if rng.random() < 0.3 else (rng.standard_normal(d) / math.sqrt(d)) * log_uniform(rng, 0, far)
    spread = math.sqrt(scale) * log_uniform(rng, 0.0, 1.5)
    mu = centre + rng.standard_normal((K, d)) * spread
    cov = np.stack([rand_spd(rng, d, scale * log_uniform(rng, -1.0, 1.0), kappa) for _ in range(K)])
    w = rng.dirichlet(np.ones(K) * 2.0)
    w = w / w.sum()
    labels = rng.integers(0, max(1, K // 2 + 1), K)
    attrs = None
    if attributes:
        colours, shapes = ["red", "blue", "green"], ["dog", "cat"]
        attrs = {"colour": [colours[int(i)] for i in rng.integers(0, 3, K)],
                 "shape": [shapes[int(i)] for i in rng.integers(0, 2, K)]}
    return MixParams(w, mu, cov, labels, attrs)


def rand_points(rng, p: MixParams, n: int | None = None) -> np.ndarray:
    """Points at, near, far from and between the modes (float64)."""
    n = int(rng.integers(1, 4)) if n is None else n
    out = []
    for _ in range(n):
        k = int(rng.integers(p.K))
        chol = np.linalg.cholesky(p.cov[k])
        kind = rng.choice(["mode", "near", "far", "between"])
        if kind == "mode":
            x = p.mu[k].copy()
        elif kind == "near":
            x = p.mu[k] + chol @ rng.standard_normal(p.d) * rng.uniform(0, 3)
        elif kind == "far":
            z = rng.standard_normal(p.d)
            x = p.mu[k] + chol @ (z / np.linalg.norm(z)) * log_uniform(rng, 1.0, 4.0)
        else:
            j = int(rng.integers(p.K))
            a = rng.uniform()
            x = a * p.mu[k] + (1 - a) * p.mu[j]
        out.append(x)
    return np.stack(out)


def gm_call(p: MixParams, dtype=F64) -> str:
    extra = "" if p.attributes is None else f", attributes={p.attributes!r}"
    dt = "" if dtype == F64 else f", dtype={dtype}"
    return f"GaussianMixture({lit(p.w)}, {lit(p.mu)}, {lit(p.cov)}, {lit(p.labels)}{extra}{dt})"


def make_gm(p: MixParams, dtype=F64):
    from toy_models import GaussianMixture

    return GaussianMixture(p.w.copy(), p.mu.copy(), p.cov.copy(), p.labels.copy(), attributes=p.attributes,
                           dtype=dtype)


IMPORTS_GM = "import numpy as np, torch\nfrom toy_models import GaussianMixture\n"


# ================================================================================================================
# mpmath reference for mixtures
# ================================================================================================================
class MixRef:
    """Exact (50-digit) log densities, responsibilities and scores of a mixture, centred at each component."""

    def __init__(self, w, mu, cov):
        w = np.asarray(w, dtype=np.float64)
        self.K, self.d = np.asarray(mu).shape
        total = mp.fsum(mp.mpf(float(v)) for v in w)
        self.logw = [mp.log(mp.mpf(float(v)) / total) if v > 0 else mp.ninf for v in w]
        self.mu = np.asarray(mu, dtype=np.float64)
        self.prec, self.logdet, self.kappa, self.pnorm = [], [], [], []
        for k in range(self.K):
            s = mp.matrix(np.asarray(cov[k], dtype=np.float64).tolist())
            self.prec.append(mp.inverse(s))
            self.logdet.append(mp.log(mp.det(s)))
            ev = np.linalg.eigvalsh(np.asarray(cov[k], dtype=np.float64))
            self.kappa.append(float(ev[-1] / ev[0]) if ev[0] > 0 else math.inf)
            self.pnorm.append(float(1.0 / ev[0]) if ev[0] > 0 else math.inf)

    def point(self, x):
        """For one point: dict with log_joint [K] (mp), log_p (mp), r [K] (float), s [K, d] (mp), q, T."""
        x = np.asarray(x, dtype=np.float64)
        d = self.d
        lj, ss, qs = [], [], []
        c0 = mp.mpf(d) / 2 * mp.log(2 * mp.pi)
        for k in range(self.K):
            r = mp.matrix([mp.mpf(float(x[i])) - mp.mpf(float(self.mu[k, i])) for i in range(d)])
            pr = self.prec[k] * r
            q = mp.fsum(r[i] * pr[i] for i in range(d))
            lj.append(self.logw[k] - q / 2 - self.logdet[k] / 2 - c0)
            ss.append([-pr[i] for i in range(d)])
            qs.append(q)
        finite = [v for v in lj if v != mp.ninf]
        m = max(finite)
        log_p = m + mp.log(mp.fsum(mp.exp(v - m) for v in finite))
        r = [float(mp.exp(v - log_p)) if v != mp.ninf else 0.0 for v in lj]
        xn = float(np.linalg.norm(x))
        T = []
        for k in range(self.K):
            snorm = float(mp.sqrt(mp.fsum(v * v for v in ss[k])))
            T.append(math.sqrt(d) * snorm * (xn + float(np.linalg.norm(self.mu[k]))) + d * d * self.kappa[k] *
                     (float(qs[k]) + d) + d * abs(float(self.logdet[k])) + abs(float(lj[k])) + d
                     if lj[k] != mp.ninf else 0.0)
        return {"lj": lj, "log_p": log_p, "r": r, "s": ss, "q": qs, "T": T, "xn": xn}

    def score_of(self, pt, r):
        return [mp.fsum(mp.mpf(r[k]) * pt["s"][k][i] for k in range(self.K)) for i in range(self.d)]

    def score_tol(self, pt, r, u):
        """Absolute tolerance (2-norm) of sum_k r_k s_k under the module docstring's bound."""
        d = self.d
        s_bar = np.array([float(v) for v in self.score_of(pt, r)])
        t_bar = sum(rk * tk for rk, tk in zip(r, pt["T"], strict=True))
        total = float(_scaled_norm(s_bar))
        smax = 0.0
        for k in range(self.K):
            if r[k] == 0.0:
                continue
            sk = np.array([float(v) for v in pt["s"][k]])
            smax = max(smax, float(_scaled_norm(sk)))
            e_k = math.sqrt(d) * self.pnorm[k] * (pt["xn"] + float(_scaled_norm(self.mu[k]))) + \
                d * self.kappa[k] * float(_scaled_norm(sk))
            total += r[k] * (e_k + (pt["T"][k] + t_bar) * float(_scaled_norm(sk - s_bar)))
        return C_SAFETY * u * total + self.K * math.sqrt(torch.finfo(F32 if u > 1e-10 else F64).tiny) * smax


def _scaled_norm(v) -> float:
    """2-norm without under/overflow of the squares (numpy's norm squares directly: 1e-253 gives 0)."""
    v = np.asarray(v, dtype=np.float64)
    top = float(np.abs(v).max()) if v.size else 0.0
    return top * float(np.linalg.norm(v / top)) if top > 0 and math.isfinite(top) else top


def mp_f(v) -> float:
    """float of an mpf, +-inf when it overflows float64."""
    try:
        f = float(v)
    except OverflowError:
        f = math.inf if v > 0 else -math.inf
    if abs(f) > np.finfo(np.float64).max:
        return math.copysign(math.inf, f)
    return f


# ================================================================================================================
# GaussianMixture: constructor
# ================================================================================================================
def _mix_dtype(rng):
    return F64 if rng.random() < 0.75 else F32


def gen_constructor(rng) -> Case:
    from toy_models import GaussianMixture

    p = rand_mixture(rng, attributes=rng.random() < 0.3)
    dtype = _mix_dtype(rng)
    kind = rng.choice(["valid", "valid", "valid", "valid", "alias_torch", "alias_numpy", "neg_weight", "sum_weight",
                       "nan_weight", "complex_weights", "complex_means", "complex_cov", "shape_means", "shape_cov",
                       "asym_cov", "nonpd_cov", "zero_cov", "subnormal_cov", "huge_means", "huge_cov", "labels_float",
                       "labels_len", "labels_bool", "labels_str", "attr_len", "attr_notmap", "dtype_f16",
                       "dtype_str", "means_str", "inf_means", "bf16_weights", "weights_2d", "empty"])
    w, mu, cov, labels, attrs = p.w.copy(), p.mu.copy(), p.cov.copy(), p.labels.copy(), p.attributes
    bad: tuple[str, ...] | None = None
    probe = "params"
    if kind == "neg_weight" and p.K > 1:
        w[0] = -w[0]
        bad = ("weights",)
    elif kind == "sum_weight":
        w = w * 1.5
        bad = ("weights",)
    elif kind == "nan_weight":
        w[0] = np.nan
        bad = ("weights",)
    elif kind == "complex_weights":
        w = torch.tensor(w, dtype=torch.complex128) + 0.25j
        bad = ("weights",)
    elif kind == "complex_means":
        mu = torch.tensor(mu, dtype=torch.complex128) * (1 + 1j)
        bad = ("means",)
    elif kind == "complex_cov":
        cov = torch.tensor(cov, dtype=torch.complex128) + 1e-3j * torch.tensor(cov)
        bad = ("covariances",)
    elif kind == "shape_means":
        mu = mu[:, :1] if p.d > 1 else np.concatenate([mu, mu], 1)
        bad = ("means", "covariances")
    elif kind == "shape_cov":
        cov = cov[:, :, :1] if p.d > 1 else np.concatenate([cov, cov], 2)
        bad = ("covariances",)
    elif kind == "asym_cov" and p.d > 1:
        cov[0, 0, 1] += 0.3 * abs(cov[0, 0, 0])
        bad = ("covariances",)
    elif kind == "nonpd_cov":
        cov[0] = -cov[0]
        bad = ("covariances",)
    elif kind == "zero_cov":
        cov[0] = 0.0
        bad = ("covariances",)
    elif kind == "subnormal_cov":
        cov = np.stack([np.eye(p.d) * 1e-310 for _ in range(p.K)])
        mu = mu - mu.mean(0) if p.K > 0 else mu
        bad, probe = ("covariances",), "density"
    elif kind == "huge_means":
        dtype = F64  # 1e155 is not a float32 number
        mu = mu / max(np.abs(mu).max(), 1e-300) * 1e155
        cov = np.stack([np.eye(p.d) for _ in range(p.K)])
        probe = "density"
    elif kind == "huge_cov":
        dtype = F64  # (scores ~ 1e-250 stay clear of gradual underflow)
        cov = cov / np.abs(cov).max() * 1e250
        probe = "density"
    elif kind == "labels_float":
        labels = labels.astype(np.float64) + 0.5
        bad = ("labels",)
    elif kind == "labels_len":
        labels = np.concatenate([labels, [0]])
        bad = ("labels",)
    elif kind == "labels_bool":
        labels = labels.astype(bool)
        bad = ("labels",)
    elif kind == "labels_str":
        labels = np.array(["a"] * p.K)
        bad = ("labels",)
    elif kind == "attr_len":
        attrs = {"colour": ["red"] * (p.K + 1)}
        bad = ("attributes",)
    elif kind == "attr_notmap":
        attrs = [("colour", ["red"] * p.K)]
        bad = ("attributes",)
    elif kind == "dtype_f16":
        dtype = torch.float16
        bad = ("dtype",)
    elif kind == "dtype_str":
        dtype = "float32"
        bad = ("dtype",)
    elif kind == "means_str":
        mu = "origin"
        bad = ("means",)
    elif kind == "inf_means":
        mu[0, 0] = np.inf
        bad = ("means",)
    elif kind == "bf16_weights":
        w = torch.full((p.K,), 1.0 / p.K).to(torch.bfloat16)
        if p.K in (3, 5):  # 1/3 and 1/5 are not exact in bfloat16: the weights are off the simplex by 2^-9
            bad = ("weights",)
        else:
            bad = ("weights",)  # exact: either refuse or take them
            probe = "params"
    elif kind == "weights_2d":
        w = w[:, None]
        bad = ("weights",)
    elif kind == "empty":
        w, mu, cov, labels = np.zeros(0), np.zeros((0, p.d)), np.zeros((0, p.d, p.d)), np.zeros(0, dtype=np.int64)
        bad = ("weights",)
    if kind in ("alias_torch", "alias_numpy"):
        return _alias_case(rng, p, dtype, kind)
    if bad is None and probe == "params":
        kind = "valid"  # the modification did not apply (d = 1 or K = 1)
    accept_value = bad is None or kind in ("subnormal_cov", "bf16_weights")
    if kind == "bf16_weights" and p.K in (3, 5):
        accept_value = False

    w_in, mu_in, cov_in, lab_in = w, mu, cov, labels

    def thunk():
        gm = GaussianMixture(w_in, mu_in, cov_in, lab_in, attributes=attrs, dtype=dtype)
        if probe == "density":
            at = gm.means.to(F64).clone()
            return gm, gm.log_prob(at.to(dtype)), gm.score(at.to(dtype))
        return gm, gm.mean(), gm.covariance()

    wf = np.asarray(torch.as_tensor(w).real.double() if isinstance(w, torch.Tensor) else w, dtype=np.float64)

    def check(res):
        gm, a, b = res
        if probe == "density":
            ref = MixRef(wf, np.asarray(mu, dtype=np.float64), np.asarray(cov, dtype=np.float64))
            u = U[dtype]
            for i in range(gm.n_components):
                pt = ref.point(np.asarray(mu, dtype=np.float64)[i])
                tol = C_SAFETY * u * (sum(rk * tk for rk, tk in zip(pt["r"], pt["T"], strict=True)) +
                                      abs(float(pt["log_p"])) + math.log(ref.K) + 1)
                st, det = compare(a[i:i + 1], [mp_f(pt["log_p"])], tol, f"log_prob at mean {i}")
                if st != CORRECT:
                    return st, det
                s_ref = [mp_f(v) for v in ref.score_of(pt, pt["r"])]
                st, det = compare(b[i], s_ref, ref.score_tol(pt, pt["r"], u), f"score at mean {i}")
                if st != CORRECT:
                    return st, det
            return CORRECT, "log_prob and score at the means within tolerance"
        # parameters: stored exactly; mean and covariance by the law of total covariance (float64 reference)
        wn = wf / wf.sum()
        m = wn @ mu
        second = np.einsum("k,kij->ij", wn, cov + mu[:, :, None] * mu[:, None, :])
        u = U[dtype]
        K = len(wn)
        st, det = compare(gm.weights, wn, 4 * K * u * (1 + wn), "weights")
        if st != CORRECT:
            return st, det
        st, det = compare(gm.means, mu, u * np.abs(mu), "means (stored)")
        if st != CORRECT:
            return st, det
        st, det = compare(a, m, 4 * K * u * (np.abs(wn) @ np.abs(mu) + 1e-300), "mean()")
        if st != CORRECT:
            return st, det
        # condition of sum_k w_k (Sigma_k + (mu_k - m)(mu_k - m)^T): perturbing mu_k by u|mu_k| moves the spread
        # term by 2 w_k |mu_k - m| u |mu_k|; nothing depends on |mu_k|^2 (a far, narrow law has a small covariance)
        dev = mu - m
        absmag = np.einsum("k,kij->ij", wn, np.abs(cov) + np.abs(dev[:, :, None] * dev[:, None, :]) +
                           np.abs(dev)[:, :, None] * np.abs(mu)[:, None, :] + np.abs(mu)[:, :, None] *
                           np.abs(dev)[:, None, :])
        cov_ref = np.einsum("k,kij->ij", wn, cov + dev[:, :, None] * dev[:, None, :])
        del second
        return compare(b, cov_ref, 8 * (K + 2) * u * absmag + 1e-300, "covariance()")

    w_lit = lit(w) if not isinstance(w, torch.Tensor) else lit(w)
    extra = "" if attrs is None else f", attributes={attrs!r}"
    code = (IMPORTS_GM + f"gm = GaussianMixture({w_lit}, {lit(mu)}, {lit(cov)}, {lit(labels)}{extra}, "
            f"dtype={dtype if isinstance(dtype, torch.dtype) else repr(dtype)})\n")
    code += ("print(gm.log_prob(gm.means), gm.score(gm.means))" if probe == "density" else
             "print(gm.mean(), gm.covariance())")
    return Case("GaussianMixture()", f"constructor {kind} K={p.K} d={p.d} {dtype}", thunk,
                Oracle(check if accept_value else None, bad), code)


def _alias_case(rng, p: MixParams, dtype, kind) -> Case:
    """Mutate the caller's arrays after construction; the mixture must not move."""
    from toy_models import GaussianMixture

    def thunk():
        if kind == "alias_torch":
            w, mu, cov = torch.tensor(p.w), torch.tensor(p.mu), torch.tensor(p.cov)
        else:
            w, mu, cov = p.w.copy(), p.mu.copy(), p.cov.copy()
        gm = GaussianMixture(w, mu, cov, dtype=dtype)
        mu += 1000.0
        cov *= 4.0
        w[...] = w[::-1].copy() if kind == "alias_numpy" else w.flip(0)
        return gm.mean(), gm.sample(8, torch.Generator().manual_seed(0)), gm.covariance()

    def check(res):
        fresh = GaussianMixture(p.w.copy(), p.mu.copy(), p.cov.copy(), dtype=dtype)
        ref = (fresh.mean(), fresh.sample(8, torch.Generator().manual_seed(0)), fresh.covariance())
        for name, a, b in zip(("mean()", "sample()", "covariance()"), res, ref, strict=True):
            if not torch.equal(a, b):
                return WRONG, f"{name} moved after the caller mutated its arrays ({short(a)} vs {short(b)})"
        return CORRECT, "unaffected by later mutation of the caller's arrays"

    make = ("w, mu, cov = torch.tensor({w}), torch.tensor({mu}), torch.tensor({cov})" if kind == "alias_torch" else
            "w, mu, cov = {w}, {mu}, {cov}").format(w=lit(p.w), mu=lit(p.mu), cov=lit(p.cov))
    code = (IMPORTS_GM + make + f"\ngm = GaussianMixture(w, mu, cov, dtype={dtype})\nbefore = gm.mean().clone()\n"
            "mu += 1000.0\ncov *= 4.0\nprint(before, gm.mean())  # must be equal")
    return Case("GaussianMixture()", f"aliasing ({kind}) K={p.K} d={p.d}", thunk, Oracle(check, None), code)


# ================================================================================================================
# GaussianMixture: per-point methods (log_prob, score, class_posterior, grad_log_posterior)
# ================================================================================================================
_X_ADVERSARIAL = ["complex", "bool", "int", "float16", "bfloat16", "meta", "object_num", "object_str", "string",
                  "nan", "inf", "shape_extra", "shape_1d", "shape_3d", "empty", "huge", "huge300", "subnormal",
                  "list", "requires_grad"]


def _adversarial_x(rng, kind: str, x: np.ndarray, dtype, p: MixParams):
    """(x_input, x_exact float64 or None, bad names or None, accept_value). ``x_exact`` is what a correct
    implementation evaluates when it accepts the input."""
    td = dtype
    if kind == "complex":
        return torch.tensor(x, dtype=torch.complex128) + 1j, None, ("x",), False
    if kind == "bool":
        xb = torch.tensor(x) > np.median(x)
        return xb, xb.double().numpy(), ("x",), True
    if kind == "int":
        xi = torch.tensor(np.round(x).clip(-1e15, 1e15)).to(torch.int64)
        return xi, xi.double().numpy(), ("x",), True
    if kind in ("float16", "bfloat16"):
        half = torch.float16 if kind == "float16" else torch.bfloat16
        xh = torch.tensor(x).clamp(-6e4, 6e4).to(half)
        return xh, xh.double().numpy(), ("x",), True
    if kind == "meta":
        return torch.empty(x.shape, dtype=td, device="meta"), None, ("x",), False
    if kind == "object_num":
        xo = np.empty(x.shape, dtype=object)
        for idx in np.ndindex(x.shape):
            xo[idx] = float(x[idx])
        return xo, x.astype(np.float64) if dtype == F64 else x.astype(np.float32).astype(np.float64), ("x",), True
    if kind == "object_str":
        xo = np.empty(x.shape, dtype=object)
        for idx in np.ndindex(x.shape):
            xo[idx] = float(x[idx])
        xo.flat[0] = "one"
        return xo, None, ("x",), False
    if kind == "string":
        return "x", None, ("x",), False
    if kind == "nan":
        xx = x.copy()
        xx.flat[rng.integers(xx.size)] = np.nan
        return torch.tensor(xx, dtype=td), None, ("x",), False
    if kind == "inf":
        xx = x.copy()
        xx.flat[rng.integers(xx.size)] = -np.inf
        return torch.tensor(xx, dtype=td), None, ("x",), False
    if kind == "shape_extra":
        return torch.tensor(np.concatenate([x, x[:, :1]], 1), dtype=td), None, ("x",), False
    if kind == "shape_1d":
        if p.d == 1:  # [N] for d = 1 is ambiguous: a batch or one point; refusal is the documented contract
            return torch.tensor(x[:, 0], dtype=td), None, ("x",), False
        return torch.tensor(x[0], dtype=td), None, ("x",), False
    if kind == "shape_3d":
        return torch.tensor(x[:, :, None], dtype=td), None, ("x",), False
    if kind == "empty":
        return torch.zeros(0, p.d, dtype=td), np.zeros((0, p.d)), None, True
    if kind == "huge":
        big = dtype == F64
        xx = x / max(np.abs(x).max(), 1e-300) * (1e155 if big else 1e18) if np.abs(x).max() > 0 else x + (
            1e155 if big else 1e18)
        xt = torch.tensor(xx, dtype=td)
        # huge but finite: computed finitely and right, or refused naming x (the input policy allows both: the log
        # density of such a point can be below the dtype's range)
        return xt, xt.double().numpy(), ("x",), True
    if kind == "huge300":
        xx = x.copy()
        xx.flat[0] = 1e300 if dtype == F64 else 1e37
        xt = torch.tensor(xx, dtype=td)
        return xt, xt.double().numpy(), ("x",), True
    if kind == "subnormal":
        xt = torch.full(x.shape, 1e-310 if dtype == F64 else 1e-40, dtype=td)
        return xt, xt.double().numpy(), None, True
    if kind == "list":
        xt = torch.tensor(x, dtype=td)
        return xt.tolist(), xt.double().numpy(), None, True
    if kind == "requires_grad":
        xt = torch.tensor(x, dtype=td).requires_grad_(True)
        return xt, xt.detach().double().numpy(), None, True
    raise AssertionError(kind)


def _pointwise_case(rng, api: str) -> Case:
    p = rand_mixture(rng, attributes=api == "grad_log_posterior" and rng.random() < 0.4)
    dtype = _mix_dtype(rng)
    x64 = rand_points(rng, p)
    adversarial = rng.random() < 0.35
    if adversarial:
        kind = str(rng.choice(_X_ADVERSARIAL))
        x_in, x_exact, bad, accept = _adversarial_x(rng, kind, x64, dtype, p)
    else:
        kind = "valid"
        xt = torch.tensor(x64, dtype=dtype)
        x_in, x_exact, bad, accept = xt, xt.double().numpy(), None, True
    condition = None
    if api == "grad_log_posterior":
        if p.attributes is not None and rng.random() < 0.5:
            condition = str(p.attributes["colour"][int(rng.integers(p.K))])
        else:
            condition = int(p.labels[int(rng.integers(p.K))])
        if not adversarial and rng.random() < 0.15:  # a bad condition with a valid x
            condition = rng.choice([999, True, 1.5, "purple", [0, 1]]).item() if False else \
                [999, True, 1.5, "purple", (0, 1)][int(rng.integers(5))]
            bad, accept, kind = ("condition",), False, f"bad condition {condition!r}"

    def thunk():
        gm = make_gm(p, dtype)
        if api == "log_prob":
            return gm.log_prob(x_in)
        if api == "score":
            return gm.score(x_in)
        if api == "class_posterior":
            return gm.class_posterior(x_in)
        return gm.grad_log_posterior(x_in, condition)

    def check(res):
        ref = MixRef(p.w, p.mu, p.cov)
        u = U[dtype]
        n = x_exact.shape[0]
        if api == "log_prob":
            want, tol = np.zeros(n), np.zeros(n)
        elif api == "class_posterior":
            classes = sorted(set(int(v) for v in p.labels))
            want, tol = np.zeros((n, len(classes))), np.zeros((n, len(classes)))
        else:
            want, tol = np.zeros((n, p.d)), np.zeros((n, p.d))
        if api == "grad_log_posterior":
            gm = make_gm(p)
            mask = gm.matches(condition).numpy()
        for i in range(n):
            pt = ref.point(x_exact[i])
            r = pt["r"]
            t_bar = sum(rk * tk for rk, tk in zip(r, pt["T"], strict=True))
            if api == "log_prob":
                want[i] = mp_f(pt["log_p"])
                tol[i] = C_SAFETY * u * (t_bar + abs(float(pt["log_p"])) + math.log(ref.K) + 1) + \
                    ref.K * math.sqrt(torch.finfo(dtype).tiny)
            elif api == "score":
                want[i] = [mp_f(v) for v in ref.score_of(pt, r)]
                tol[i] = ref.score_tol(pt, r, u)
            elif api == "class_posterior":
                for j, c in enumerate(classes):
                    want[i, j] = sum(rk for rk, lab in zip(r, p.labels, strict=True) if int(lab) == c)
                tol[i] = C_SAFETY * u * (2 * t_bar + 1) + ref.K * math.sqrt(torch.finfo(dtype).tiny) + 2 * u
            else:
                lj = pt["lj"]
                sel = [lj[k] for k in range(ref.K) if mask[k] and lj[k] != mp.ninf]
                m = max(sel)
                z = m + mp.log(mp.fsum(mp.exp(v - m) for v in sel))
                rc = [float(mp.exp(lj[k] - z)) if mask[k] and lj[k] != mp.ninf else 0.0 for k in range(ref.K)]
                g = [mp.fsum((mp.mpf(rc[k]) - mp.mpf(r[k])) * pt["s"][k][j] for k in range(ref.K))
                     for j in range(p.d)]
                want[i] = [mp_f(v) for v in g]
                tol[i] = ref.score_tol(pt, rc, u) + ref.score_tol(pt, r, u)
        return compare(res, want, tol, f"{api} ({dtype})")

    call = {"log_prob": "gm.log_prob(x)", "score": "gm.score(x)", "class_posterior": "gm.class_posterior(x)",
            "grad_log_posterior": f"gm.grad_log_posterior(x, {condition!r})"}[api]
    x_lit = lit(x_in) if not isinstance(x_in, (str, list)) else repr(x_in)
    code = IMPORTS_GM + f"gm = {gm_call(p, dtype)}\nx = {x_lit}\nprint({call})"
    if x_exact is not None and accept and api in ("log_prob",) and x_exact.shape[0] > 0:
        try:
            code += f"  # exact: {[mp.nstr(MixRef(p.w, p.mu, p.cov).point(v)['log_p'], 17) for v in x_exact]}"
        except Exception:
            pass
    return Case(api, f"{api} x={kind} K={p.K} d={p.d} {dtype}", thunk,
                Oracle(check if accept and x_exact is not None else None, bad), code)


def gen_log_prob(rng):
    return _pointwise_case(rng, "log_prob")


def gen_score(rng):
    return _pointwise_case(rng, "score")


def gen_class_posterior(rng):
    return _pointwise_case(rng, "class_posterior")


def gen_grad_log_posterior(rng):
    return _pointwise_case(rng, "grad_log_posterior")


# ================================================================================================================
# GaussianMixture.noised
# ================================================================================================================
def gen_noised(rng) -> Case:
    p = rand_mixture(rng)
    dtype = _mix_dtype(rng)
    alpha = log_uniform(rng, -3, 0.5)
    sigma = 0.0 if rng.random() < 0.15 else log_uniform(rng, -6, 3)
    kind = str(rng.choice(["valid"] * 6 + ["alpha0", "alpha_neg", "sigma_neg", "alpha_nan", "sigma_inf",
                                           "alpha_huge", "sigma_huge", "sigma_subnormal", "alpha_complex",
                                           "alpha_str", "alpha_vec", "alpha_bool", "alpha_np32", "sigma_tensor"]))
    bad, accept = None, True
    if kind == "alpha0":
        alpha, bad, accept = 0.0, ("alpha",), False
    elif kind == "alpha_neg":
        alpha, bad, accept = -alpha, ("alpha",), False
    elif kind == "sigma_neg":
        sigma, bad, accept = -max(sigma, 0.1), ("sigma",), False
    elif kind == "alpha_nan":
        alpha, bad, accept = math.nan, ("alpha",), False
    elif kind == "sigma_inf":
        sigma, bad, accept = math.inf, ("sigma",), False
    elif kind == "alpha_huge":
        alpha = float(rng.choice([1e155, 1e160, 1e300]))
    elif kind == "sigma_huge":
        sigma = float(rng.choice([1e155, 1e160, 1e300]))
    elif kind == "sigma_subnormal":
        sigma = 1e-310
    elif kind == "alpha_complex":
        alpha, bad, accept = complex(alpha, 0.5), ("alpha",), False
    elif kind == "alpha_str":
        alpha, bad, accept = "half", ("alpha",), False
    elif kind == "alpha_vec":
        alpha, bad, accept = torch.tensor([alpha, alpha]), ("alpha",), False
    elif kind == "alpha_bool":
        alpha, bad = True, ("alpha",)
    elif kind == "alpha_np32":
        alpha = np.float32(alpha)
    elif kind == "sigma_tensor":
        sigma = torch.tensor(sigma, dtype=F32)
    a_val = float(alpha) if accept else None
    s_val = float(sigma) if accept else None
    if accept:
        # the noised means alpha mu and covariances alpha^2 Sigma + sigma^2 I must be representable in the
        # mixture's compute dtype: otherwise the input is out of range and the refusal must name whichever of
        # alpha, sigma overflows
        a2 = mp.mpf(a_val) ** 2 * mp.mpf(float(np.abs(p.cov).max()))
        s2 = mp.mpf(s_val) ** 2
        limit = mp.mpf(float(np.finfo(np.float64 if dtype == F64 else np.float32).max)) / 4
        over = [n for n, v in (("alpha", a2), ("sigma", s2)) if v > limit]
        if a_val * float(np.abs(p.mu).max()) > float(limit):
            over.append("alpha")
        if over:
            bad, accept = tuple(over), False
            kind += f" (out of {dtype} range: must be refused)"
    from toy_models import GaussianMixture  # noqa: F401

    def thunk():
        return make_gm(p, dtype).noised(alpha, sigma)

    def check(law):
        u = U[dtype]
        mu_ref = a_val * p.mu  # float64 product: its own rounding is <= u |alpha mu|
        st, det = compare(law.means, mu_ref, 2 * u * np.abs(mu_ref) + 1e-300, "noised means")
        if st != CORRECT:
            return st, det
        cov_ref = np.array([[[mp_f(mp.mpf(a_val) ** 2 * mp.mpf(float(c)) + (mp.mpf(s_val) ** 2 if i == j else 0))
                              for j, c in enumerate(row)] for i, row in enumerate(mat)] for mat in p.cov])
        mag = (np.abs(p.cov) * a_val) * a_val + s_val**2 * np.eye(p.d)  # (S a) a: a**2 alone may overflow
        st, det = compare(law.covariances, cov_ref, 8 * u * mag + 1e-300, "noised covariances")
        if st != CORRECT:
            return st, det
        return compare(law.weights, p.w / p.w.sum(), 4 * p.K * u, "noised weights")

    alpha_code = lit(alpha) if not isinstance(alpha, complex) else repr(alpha)
    code = IMPORTS_GM + f"gm = {gm_call(p, dtype)}\nprint(gm.noised({alpha_code}, {lit(sigma)}).covariances)"
    return Case("noised", f"noised {kind} alpha={alpha!r} sigma={sigma!r}", thunk,
                Oracle(check if accept else None, bad),
                code)


# ================================================================================================================
# GaussianMixture.given
# ================================================================================================================
def gen_given(rng) -> Case:
    p = rand_mixture(rng, attributes=rng.random() < 0.5, log_scale=(-3, 3))
    kind = str(rng.choice(["label", "label", "token", "tokens", "none", "empty_tuple", "np_int", "tensor_int",
                           "unknown_label", "bool", "float", "int_list", "unknown_token", "no_match", "tensor_vec",
                           "dict"]))
    bad = None
    cond: Any
    if kind == "label":
        cond = int(p.labels[int(rng.integers(p.K))])
    elif kind in ("token", "tokens"):
        if p.attributes is None:
            cond, kind = int(p.labels[0]), "label"
        elif kind == "token":
            cond = p.attributes["colour"][int(rng.integers(p.K))]
        else:
            k = int(rng.integers(p.K))
            cond = (p.attributes["colour"][k], p.attributes["shape"][k])
    elif kind == "none":
        cond = None
    elif kind == "empty_tuple":
        cond = ()
    elif kind == "np_int":
        cond = np.int64(p.labels[0])
    elif kind == "tensor_int":
        cond = torch.tensor(int(p.labels[0]))
    elif kind == "unknown_label":
        cond, bad = 999, ("condition",)
    elif kind == "bool":
        cond, bad = True, ("condition",)
    elif kind == "float":
        cond, bad = float(p.labels[0]) + 0.5, ("condition",)
    elif kind == "int_list":
        cond, bad = [int(p.labels[0])], ("condition",)
    elif kind == "unknown_token":
        cond, bad = "purple", ("condition",)
    elif kind == "no_match":
        if p.attributes is None:
            cond, bad = -5, ("condition",)
        else:
            colours = set(p.attributes["colour"])
            pairs = {(c, s) for c, s in zip(p.attributes["colour"], p.attributes["shape"], strict=True)}
            missing = [(c, s) for c in colours for s in set(p.attributes["shape"]) if (c, s) not in pairs]
            cond = missing[0] if missing else "nothing"
            bad = ("condition",)
    elif kind == "tensor_vec":
        cond, bad = torch.tensor([0, 1]), ("condition",)
    else:
        cond, bad = {"colour": "red"}, ("condition",)

    def selected():
        if cond is None or (isinstance(cond, tuple) and cond == ()):
            return np.ones(p.K, dtype=bool)
        if isinstance(cond, (int, np.integer)) or (isinstance(cond, torch.Tensor) and cond.numel() == 1):
            return p.labels == int(cond)
        toks = (cond,) if isinstance(cond, str) else cond
        m = np.ones(p.K, dtype=bool)
        for tok in toks:
            owner = "colour" if tok in p.attributes["colour"] else "shape"
            m &= np.array([v == tok for v in p.attributes[owner]])
        return m

    def thunk():
        return make_gm(p).given(cond)

    def check(law):
        m = selected()
        w = p.w[m] / p.w[m].sum()
        st, det = compare(law.weights, w, 4 * p.K * U[F64] * (1 + w), "given weights")
        if st != CORRECT:
            return st, det
        st, det = compare(law.means, p.mu[m], 0.0, "given means")
        if st != CORRECT:
            return st, det
        return compare(law.covariances, p.cov[m], 0.0, "given covariances")

    code = IMPORTS_GM + f"gm = {gm_call(p)}\nprint(gm.given({cond!r}))"
    return Case("given", f"given {kind} {cond!r}", thunk, Oracle(check if bad is None else None, bad), code)


# ================================================================================================================
# GaussianMixture.sample
# ================================================================================================================
def gen_sample(rng) -> Case:
    p = rand_mixture(rng)
    dtype = _mix_dtype(rng)
    kind = str(rng.choice(["valid", "valid", "valid", "zero", "np_int", "neg", "float", "bool", "str", "gen_str",
                           "alias", "big_float"]))
    n: Any = int(rng.integers(500, 3000))
    gen: Any = torch.Generator().manual_seed(int(rng.integers(2**31)))
    bad = None
    if kind == "zero":
        n = 0
    elif kind == "np_int":
        n = np.int64(n)
    elif kind == "neg":
        n, bad = -3, ("n",)
    elif kind == "float":
        n, bad = 10.5, ("n",)
    elif kind == "big_float":
        n, bad = 1e300, ("n",)
    elif kind == "bool":
        n, bad = True, ("n",)
    elif kind == "str":
        n, bad = "10", ("n",)
    elif kind == "gen_str":
        gen, bad = "seed", ("generator",)
    seed = int(rng.integers(2**31))

    def thunk():
        if kind == "alias":
            mu = torch.tensor(p.mu)
            gm = make_gm(MixParams(p.w, mu, p.cov, p.labels), dtype) if False else None
            from toy_models import GaussianMixture
            gm = GaussianMixture(torch.tensor(p.w), mu, torch.tensor(p.cov), dtype=dtype)
            mu.add_(1e3)
            return gm.sample(64, torch.Generator().manual_seed(seed))
        return make_gm(p, dtype).sample(n, gen)

    def check(x):
        nn = 64 if kind == "alias" else int(n)
        if kind == "alias":
            want = make_gm(p, dtype).sample(64, torch.Generator().manual_seed(seed))
            return (CORRECT, "unaffected by mutation") if torch.equal(x, want) else (
                WRONG, "sample() moved after the caller mutated the means it was built from")
        if not isinstance(x, torch.Tensor) or list(x.shape) != [nn, p.d] or x.dtype != dtype:
            return WRONG, f"expected a {dtype} tensor of shape [{nn}, {p.d}], got {short(x)}"
        if not bool(torch.isfinite(x).all()):
            return NAN, "non-finite samples"
        if nn < 2:
            return CORRECT, "empty draw"
        # z-test of each coordinate's mean: exact mean and variance of the mixture; |z| > 7 has probability
        # < 3e-12 per coordinate, so a failure here is a bug, not chance
        wn = p.w / p.w.sum()
        m = wn @ p.mu
        cov = np.einsum("k,kij->ij", wn, p.cov + p.mu[:, :, None] * p.mu[:, None, :]) - np.outer(m, m)
        sd = np.sqrt(np.maximum(np.diag(cov), 0) / nn)
        xm = x.double().mean(0).numpy()
        slack = U[dtype] * 4 * np.abs(p.mu).max()  # the casts of the draws
        z = np.abs(xm - m) / np.maximum(sd + slack, 1e-300)
        if np.any(z > 7):
            return WRONG, f"sample mean {xm} is {z.max():.1f} standard errors from the exact mean {m}"
        return CORRECT, "sample moments consistent with the law"

    gen_code = "torch.Generator().manual_seed(0)" if not isinstance(gen, str) else repr(gen)
    code = IMPORTS_GM + f"gm = {gm_call(p, dtype)}\nprint(gm.sample({n!r}, {gen_code}))"
    return Case("sample", f"sample {kind} n={n!r}", thunk, Oracle(check if bad is None else None, bad), code)


# ================================================================================================================
# Schedules
# ================================================================================================================
SCHED_NAMES = ["vp-linear", "vp-cosine", "ve", "edm", "rectified-flow"]


def _mp_sched(name: str):
    """My own (alpha, sigma) of each named schedule, from the definitions in toy_models/schedules.py's docstring."""
    if name == "vp-linear":
        def a(t):
            return mp.exp(-mp.mpf(1) / 2 * (mp.mpf("0.1") * t + mp.mpf("19.9") / 2 * t * t))

        def s(t):
            return mp.sqrt(1 - a(t) ** 2)
    elif name == "vp-cosine":
        ss = mp.mpf("0.008")

        def a(t):
            return mp.cos(mp.pi / 2 * (t + ss) / (1 + ss)) / mp.cos(mp.pi / 2 * ss / (1 + ss))

        def s(t):
            return mp.sqrt(max(1 - a(t) ** 2, mp.mpf(0)))
    elif name == "ve":
        def a(t):
            return mp.mpf(1)

        def s(t):
            return mp.mpf("0.01") * (mp.mpf(50) / mp.mpf("0.01")) ** t
    elif name == "edm":
        lo, hi = mp.mpf("0.002") ** (mp.mpf(1) / 7), mp.mpf(80) ** (mp.mpf(1) / 7)

        def a(t):
            return mp.mpf(1)

        def s(t):
            return (lo + t * (hi - lo)) ** 7
    else:
        def a(t):
            return 1 - t

        def s(t):
            return t
    return a, s


def _mp_fn(name: str, method: str):
    a, s = _mp_sched(name)
    if method == "alpha":
        return a
    if method == "sigma":
        return s

    def lam(t):
        av, sv = a(t), s(t)
        if sv == 0:
            return mp.inf
        if av == 0:
            return mp.ninf
        return 2 * (mp.log(av) - mp.log(sv))

    if method == "log_snr":
        return lam

    def drift(t):
        return mp.diff(lambda v: mp.log(a(v)), t)

    if method == "drift":
        return drift

    def g2(t):
        return mp.diff(lambda v: s(v) ** 2, t) - 2 * drift(t) * s(t) ** 2

    return g2


def _sched_ref(name, method, tv: float):
    """(value, tolerance) at t: tolerance C u (|f| + (|t| + 0.01)|f'|), the function's condition in t plus the
    absolute rounding of the phase (0.01 covers vp-cosine's offset s = 0.008)."""
    f = _mp_fn(name, method)
    t = mp.mpf(tv)
    val = f(t)
    if val in (mp.inf, mp.ninf):
        return mp_f(val), None
    try:  # one-sided near the ends: the formulas leave their real domain outside [0, 1]
        if 1e-3 <= tv <= 1 - 1e-3:
            der = mp.diff(f, t)
        elif tv < 1e-3:
            der = mp.diff(f, t, direction=1)
        else:
            der = mp.diff(f, t, direction=-1)
        der = abs(mp_f(mp.re(der)))
    except (ZeroDivisionError, ValueError, TypeError):
        der = math.inf
    if isinstance(val, mp.mpc):
        val = mp.re(val)
    return mp_f(val), 64 * U[F64] * (abs(mp_f(val)) + (abs(tv) + 0.01) * der) + 1e-300


def gen_schedules(rng) -> Case:
    from toy_models import get_schedule

    name = str(rng.choice(SCHED_NAMES))
    method = str(rng.choice(["alpha", "sigma", "log_snr", "alpha_sigma", "t_from_log_snr", "drift",
                             "diffusion_squared"]))
    n = int(rng.integers(1, 5))
    edges = [0.0, 1.0, 1e-300, 5e-324, 1 - 2**-53, 0.5, 1e-8]
    tv = np.where(rng.random(n) < 0.3, rng.choice(edges, n), rng.uniform(0, 1, n))
    shape_scalar = rng.random() < 0.3
    if shape_scalar:
        tv = tv[:1]
    t_in: Any = float(tv[0]) if shape_scalar else torch.tensor(tv)
    kind = str(rng.choice(["valid"] * 5 + ["neg", "above", "nan", "complex", "string", "bool", "empty", "int",
                                           "np_array", "list", "unknown_schedule", "2d"]))
    bad, accept = None, True
    if kind == "neg":
        t_in, bad, accept = -0.25, ("t", "log_snr"), False
    elif kind == "above":
        t_in, bad, accept = 1.5, ("t", "log_snr"), False
    elif kind == "nan":
        t_in, bad, accept = torch.tensor([0.5, math.nan]), ("t", "log_snr"), False
    elif kind == "complex":
        t_in, bad, accept = torch.tensor([0.5 + 0.5j]), ("t", "log_snr"), False
    elif kind == "string":
        t_in, bad, accept = "half", ("t", "log_snr"), False
    elif kind == "bool":
        t_in, bad = True, ("t", "log_snr")
        tv = np.array([1.0])
    elif kind == "empty":
        t_in, tv = torch.zeros(0, dtype=F64), np.zeros(0)
    elif kind == "int":
        t_in, tv = 1, np.array([1.0])
    elif kind == "np_array":
        t_in = np.asarray(tv)
    elif kind == "list":
        t_in = [float(v) for v in tv]
    elif kind == "2d":
        t_in = torch.tensor(tv)[None, :]
    elif kind == "unknown_schedule":
        name, bad, accept = "cosine-ish", ("schedule",), False
    alpha_vanishes = name in ("vp-cosine", "rectified-flow")
    lam_in: Any = None
    if method == "t_from_log_snr" and accept and kind in ("valid", "np_array", "list", "2d"):
        # log-SNR values inside the schedule's range (by my own reference formulas)
        lam_of = _mp_fn(name, "log_snr")
        lam_vals = [lam_of(mp.mpf(min(max(v, 1e-6), 1 - 1e-6))) for v in tv]
        lam_in_np = np.array([mp_f(v) for v in lam_vals])
        lam_in = torch.tensor(lam_in_np) if not isinstance(t_in, (list, float, np.ndarray)) else lam_in_np
        if kind == "2d":
            lam_in = torch.tensor(lam_in_np)[None, :]
        if shape_scalar and kind == "valid":
            lam_in = float(lam_in_np[0])
    elif method == "t_from_log_snr" and accept:
        method = "log_snr"  # the odd-t kinds exercise the forward functions
    if method == "t_from_log_snr" and not accept and kind in ("neg", "above"):
        lam_in = 1e6 if kind == "above" else -1e6
        lam_of = _mp_fn(name, "log_snr")
        lo, hi = lam_of(mp.mpf(1)), lam_of(mp.mpf(0))
        if lo <= lam_in <= hi:  # inside this schedule's (infinite) range: a valid input
            bad, accept, tv = None, True, np.array([mp_f(_mp_inverse(name, mp.mpf(lam_in)))])
        else:
            bad = ("log_snr",)
    elif method == "t_from_log_snr" and not accept:
        lam_in = t_in

    def thunk():
        sched = get_schedule(name)
        if method == "alpha_sigma":
            return sched.alpha_sigma(t_in)
        if method == "t_from_log_snr":
            return sched.t_from_log_snr(lam_in)
        return getattr(sched, method)(t_in)

    def check(res):
        shape = np.shape(to_np(res[0] if method == "alpha_sigma" else res))
        if method == "t_from_log_snr":
            lams = to_np(torch.as_tensor(lam_in, dtype=F64)).reshape(-1)
            got = to_np(res).reshape(-1)
            lam_of = _mp_fn(name, "log_snr")
            want, tol = [], []
            for lv in lams:
                tt = _mp_inverse(name, mp.mpf(lv))
                want.append(mp_f(tt))
                try:
                    direction = 0 if 1e-3 <= tt <= 1 - 1e-3 else (1 if tt < 0.5 else -1)
                    d_lam = abs(mp_f(mp.re(mp.diff(lam_of, tt, direction=direction)))) if 0 < tt < 1 else math.inf
                except (ZeroDivisionError, ValueError, TypeError):
                    d_lam = math.inf
                tol.append(64 * U[F64] * (abs(mp_f(tt)) + (abs(lv) + 1) / max(d_lam, 1e-300)) + 1e-300)
            return compare(got, np.array(want), np.array(tol), f"{name}.t_from_log_snr")
        methods = ["alpha", "sigma"] if method == "alpha_sigma" else [method]
        outs = list(res) if method == "alpha_sigma" else [res]
        tvals = np.asarray(tv, dtype=np.float64).reshape(-1)
        for m, out in zip(methods, outs, strict=True):
            got = to_np(out).reshape(-1)
            if got.shape != tvals.shape:
                return WRONG, f"{m}: shape {list(np.shape(to_np(out)))} for t of {tvals.size} values"
            for g, tval in zip(got, tvals, strict=True):
                if m in ("drift", "diffusion_squared") and alpha_vanishes and tval == 1.0:
                    return WRONG, f"{m} at t = 1 on {name} returned {g} (alpha = 0: singular, documented to raise)"
                val, tol = _sched_ref(name, m, float(tval))
                if tol is None or not math.isfinite(tol):  # infinite exact value or infinite condition
                    if math.isinf(val):
                        if g != val and not (np.isfinite(g) and abs(g) > 30 and np.sign(g) == np.sign(val)):
                            return (NAN if np.isnan(g) else WRONG), f"{m}({tval!r}) on {name}: {g}, exact {val}"
                    continue
                st, det = compare(np.array([g]), np.array([val]), tol, f"{name}.{m}({tval!r})")
                if st != CORRECT:
                    return st, det
        del shape
        return CORRECT, "matches the 50-digit reference"

    if method in ("drift", "diffusion_squared") and alpha_vanishes and accept and np.any(np.asarray(tv) == 1.0):
        bad = ("t",)  # documented refusal at t = 1; any returned value is judged by check (which fails it)
    arg = lit(lam_in) if method == "t_from_log_snr" else lit(t_in)
    code = (f"import torch, numpy as np\nfrom toy_models import get_schedule\n"
            f"print(get_schedule({name!r}).{method}({arg}))")
    return Case("schedules", f"{name}.{method} t={kind}", thunk, Oracle(check if accept else None, bad), code)


def _mp_inverse(name: str, lam):
    """t with lambda(t) = lam, in closed form per schedule (derived from the definitions)."""
    if lam == mp.inf:
        return mp.mpf(0)
    sig = 1 / (1 + mp.exp(-lam))  # alpha^2 on VP: sigmoid(lambda)
    if name == "vp-linear":
        b = mp.log(1 + mp.exp(-lam))
        a = mp.mpf("19.9") / 2
        return 2 * b / (mp.mpf("0.1") + mp.sqrt(mp.mpf("0.01") + 4 * a * b))
    if name == "vp-cosine":
        ss = mp.mpf("0.008")
        c0 = mp.cos(mp.pi / 2 * ss / (1 + ss))
        phi = mp.acos(c0 * mp.sqrt(sig))
        return phi * 2 * (1 + ss) / mp.pi - ss
    if name == "ve":
        return (-lam / 2 - mp.log(mp.mpf("0.01"))) / mp.log(mp.mpf(50) / mp.mpf("0.01"))
    if name == "edm":
        lo, hi = mp.mpf("0.002") ** (mp.mpf(1) / 7), mp.mpf(80) ** (mp.mpf(1) / 7)
        return (mp.exp(-lam / 14) - lo) / (hi - lo)
    return 1 / (1 + mp.exp(lam / 2))


# ================================================================================================================
# Parametrisation conversions
# ================================================================================================================
PARAMS = ("eps", "score", "x0", "v")


def _mp_convert(pred, source, target, x, a, s):
    """Exact conversion of scalars (mpf), routed through eps (definitions in parametrization.py's docstring)."""
    if source == "eps":
        eps = pred
    elif source == "score":
        eps = -s * pred
    elif source == "x0":
        eps = (x - a * pred) / s
    else:
        eps = (a * pred + s * x) / (a * a + s * s)
    if target == "eps":
        return eps
    if target == "score":
        return -eps / s
    if source == "v" and target == "x0":  # x0 = (alpha x - sigma v) / (alpha^2 + sigma^2): no division by alpha
        return (a * x - s * pred) / (a * a + s * s)
    if target == "x0":
        return (x - s * eps) / a
    if source == "x0":  # v = alpha eps - sigma x0 with x0 given: no division by alpha
        return a * eps - s * pred
    return a * eps - s * (x - s * eps) / a


def _abs_convert(pred, source, target, x, a, s):
    """The same expressions with every subtraction an addition of absolute values (running-error magnitude)."""
    pred, x = abs(pred), abs(x)
    if source == "eps":
        eps = pred
    elif source == "score":
        eps = s * pred
    elif source == "x0":
        eps = (x + a * pred) / s
    else:
        eps = (a * pred + s * x) / (a * a + s * s)
    if target == "eps":
        return eps
    if target == "score":
        return eps / s
    if source == "v" and target == "x0":
        return (a * x + s * pred) / (a * a + s * s)
    if target == "x0":
        return (x + s * eps) / a
    if source == "x0":
        return a * eps + s * pred
    return a * eps + s * (x + s * eps) / a



def _converts_without_dividing(source: str, target: str, alpha: float, sigma: float) -> bool:
    """Whether the exact conversion is defined at these coefficients (no division by a zero one)."""
    try:
        value = _mp_convert(mp.mpf(1), source, target, mp.mpf(1), mp.mpf(alpha), mp.mpf(sigma))
    except ZeroDivisionError:
        return False
    return bool(mp.isfinite(value))


def gen_parametrization(rng) -> Case:
    from toy_models import parametrization as param

    n, d = int(rng.integers(1, 4)), int(rng.integers(1, 5))
    dtype = F64 if rng.random() < 0.7 else F32
    source, target = str(rng.choice(PARAMS)), str(rng.choice(PARAMS))
    mag = log_uniform(rng, -3, 3)
    x_np = rng.standard_normal((n, d)) * mag
    pred_np = rng.standard_normal((n, d)) * log_uniform(rng, -3, 3)
    a, s = log_uniform(rng, -4, 0), log_uniform(rng, -4, 1)
    per_row = rng.random() < 0.3
    kind = str(rng.choice(["valid"] * 6 + ["sigma0", "alpha0", "sigma_neg", "alpha_neg", "nan_sigma",
                                           "complex_pred", "int_pred", "bcast_x", "unknown", "huge"]))
    pred = torch.tensor(pred_np, dtype=dtype)
    x = torch.tensor(x_np, dtype=dtype)
    alpha: Any = torch.full((n, 1), a, dtype=dtype) if per_row else a
    sigma: Any = torch.full((n, 1), s, dtype=dtype) if per_row else s
    bad, accept = None, True
    # which coefficients the conversion uses (score <-> eps uses sigma only; eps -> x0 ...)
    uses_alpha = not ({source, target} <= {"eps", "score"}) and source != target
    uses_sigma = source != target
    if kind == "sigma0" and uses_sigma:
        # a zero coefficient is refused where the conversion divides by it and answered where it does not
        # (score -> eps at sigma = 0 is 0; x0 -> eps at alpha = 0 is x / sigma): both outcomes are judged
        sigma, bad = 0.0, ("sigma", "alpha^2 + sigma^2")
        accept = _converts_without_dividing(source, target, a, 0.0)
    elif kind == "alpha0" and uses_alpha:
        alpha, bad = 0.0, ("alpha", "alpha^2 + sigma^2")
        accept = _converts_without_dividing(source, target, 0.0, s)
    elif kind == "sigma_neg" and uses_sigma:
        sigma, bad, accept = -s, ("sigma",), False
    elif kind == "alpha_neg" and uses_alpha:
        alpha, bad, accept = -a, ("alpha",), False
    elif kind == "nan_sigma" and uses_sigma:
        sigma, bad, accept = math.nan, ("sigma", "alpha^2 + sigma^2"), False
    elif kind == "complex_pred":
        pred, bad, accept = pred.to(torch.complex128) + 1j, ("pred",), False
    elif kind == "int_pred":
        pred = torch.tensor(np.round(pred_np * 10), dtype=torch.int64)
        bad = ("pred",)
    elif kind == "bcast_x" and d > 1:
        x, bad, accept = x[:, :1], ("x",), False
    elif kind == "unknown":
        target, bad, accept = "velocity", ("target",), False
    elif kind == "huge":
        pred = pred / pred.abs().max() * (1e150 if dtype == F64 else 1e15)
    else:
        kind = "valid"

    def thunk():
        return param.convert(pred, source, target, x=x, alpha=alpha, sigma=sigma)

    def check(res):
        u = U[dtype]
        pe = to_np(pred).reshape(n, d)
        xe = to_np(x).reshape(n, -1)
        ae = float(to_np(torch.as_tensor(alpha)).reshape(-1)[0]) if isinstance(alpha, torch.Tensor) else float(alpha)
        se = float(to_np(torch.as_tensor(sigma)).reshape(-1)[0]) if isinstance(sigma, torch.Tensor) else float(sigma)
        # coefficients stored in the compute dtype (float32 tensors) are the exact inputs
        want = np.zeros((n, d))
        tol = np.zeros((n, d))
        for i in range(n):
            for j in range(d):
                am, sm = mp.mpf(ae), mp.mpf(se)
                if dtype == F32 and not isinstance(alpha, torch.Tensor):
                    pass
                want[i, j] = mp_f(_mp_convert(mp.mpf(pe[i, j]), source, target, mp.mpf(xe[i, j]), am, sm))
                # two conversions of <= 8 operations each; coefficients rounded to the dtype add 2 u relative
                tol[i, j] = 2 * 20 * u * mp_f(_abs_convert(mp.mpf(pe[i, j]), source, target, mp.mpf(xe[i, j]),
                                                           am, sm)) + 1e-300
        return compare(res, want, tol, f"convert {source} -> {target} ({dtype})", need_float=source != target)

    code = ("import torch\nfrom toy_models import parametrization as param\n"
            f"print(param.convert({lit(pred)}, {source!r}, {target!r}, x={lit(x)}, alpha={lit(alpha)}, "
            f"sigma={lit(sigma)}))")
    return Case("parametrization", f"convert {source}->{target} {kind} {dtype}", thunk,
                Oracle(check if accept else None, bad), code)


# ================================================================================================================
# AnalyticDenoiser
# ================================================================================================================
def gen_denoiser(rng) -> Case:
    from toy_models import AnalyticDenoiser, get_schedule

    p = rand_mixture(rng, log_scale=(-6, 3), far=3.0)
    dtype = _mix_dtype(rng)
    name = str(rng.choice(SCHED_NAMES))
    method = str(rng.choice(["eps", "x0", "score"]))
    tval = float(rng.uniform(0.02, 0.98))
    x64 = rand_points(rng, p)
    sched = get_schedule(name)
    a, s = (float(v) for v in sched.alpha_sigma(tval))
    x64 = a * x64 + s * rng.standard_normal(x64.shape)  # a point of the noised law's support
    kind = str(rng.choice(["valid"] * 5 + ["int_x", "complex_x", "bool_x", "t_neg", "t_nan", "t_vec", "t_vec_bad",
                                           "unknown_cond", "bool_cond", "shape_x", "meta_x", "nan_x", "world_str",
                                           "schedule_bad", "t_one", "float16_x", "list_x"]))
    x_in: Any = torch.tensor(x64, dtype=dtype)
    t_in: Any = tval
    cond: Any = None if rng.random() < 0.4 else int(p.labels[int(rng.integers(p.K))])
    world: Any = None
    bad, accept = None, True
    x_exact = x_in.double().numpy()
    if kind == "int_x":
        x_in = torch.tensor(np.round(x64)).to(torch.int64)
        x_exact, bad = x_in.double().numpy(), ("x",)
    elif kind == "float16_x":
        x_in = torch.tensor(x64).clamp(-6e4, 6e4).to(torch.float16)
        x_exact, bad = x_in.double().numpy(), ("x",)
    elif kind == "bool_x":
        x_in = torch.tensor(x64) > 0
        x_exact, bad = x_in.double().numpy(), ("x",)
    elif kind == "list_x":
        x_in = torch.tensor(x64, dtype=dtype).tolist()
        bad = ("x",)
    elif kind == "complex_x":
        x_in, bad, accept = torch.tensor(x64, dtype=torch.complex128) + 1j, ("x",), False
    elif kind == "t_neg":
        t_in, bad, accept = -0.1, ("t",), False
    elif kind == "t_nan":
        t_in, bad, accept = math.nan, ("t",), False
    elif kind == "t_vec":
        t_in = torch.full((x64.shape[0],), tval, dtype=F64)
    elif kind == "t_vec_bad":
        t_in, bad, accept = torch.full((x64.shape[0] + 1,), tval, dtype=F64), ("t",), False
    elif kind == "unknown_cond":
        cond, bad, accept = 999, ("condition",), False
    elif kind == "bool_cond":
        cond, bad, accept = True, ("condition",), False
    elif kind == "shape_x":
        x_in, bad, accept = torch.tensor(np.concatenate([x64, x64[:, :1]], 1), dtype=dtype), ("x",), False
    elif kind == "meta_x":
        x_in, bad, accept = torch.empty(x64.shape, dtype=dtype, device="meta"), ("x",), False
    elif kind == "nan_x":
        xx = x64.copy()
        xx[0, 0] = np.nan
        x_in, bad, accept = torch.tensor(xx, dtype=dtype), ("x",), False
    elif kind == "world_str":
        world, bad, accept = "ring2d-ish", ("world",), False
    elif kind == "schedule_bad":
        name, bad, accept = "linear", ("schedule",), False
    elif kind == "t_one" and name in ("rectified-flow", "vp-cosine"):
        t_in, bad, accept = 1.0, ("t",), False
    else:
        kind = "valid" if kind == "t_one" else kind

    def thunk():
        den = AnalyticDenoiser(make_gm(p) if world is None else world, name, dtype=dtype)
        return getattr(den, method)(x_in, t_in, cond)

    def check(res):
        from toy_models import GaussianMixture  # noqa: F401

        u = U[dtype]
        sub = np.ones(p.K, dtype=bool) if cond is None else (p.labels == cond)
        am, sm = mp.mpf(a), mp.mpf(s)
        mu_t = a * p.mu[sub]
        cov_t = np.stack([np.array([[mp_f(am**2 * mp.mpf(float(c)) + (sm**2 if i == j else 0))
                                     for j, c in enumerate(row)] for i, row in enumerate(mat)]) for mat in p.cov[sub]])
        ref = MixRef(p.w[sub], mu_t, cov_t)
        n = x_exact.shape[0]
        want, tol = np.zeros((n, p.d)), np.zeros((n, p.d))
        for i in range(n):
            pt = ref.point(x_exact[i])
            sc = ref.score_of(pt, pt["r"])
            st = ref.score_tol(pt, pt["r"], u)
            xi = x_exact[i]
            for j in range(p.d):
                if method == "score":
                    want[i, j], tol[i, j] = mp_f(sc[j]), st
                elif method == "eps":
                    want[i, j], tol[i, j] = mp_f(-sm * sc[j]), s * st + 4 * u * abs(s * float(sc[j]))
                else:
                    eps = -sm * sc[j]
                    want[i, j] = mp_f((mp.mpf(xi[j]) - sm * eps) / am)
                    tol[i, j] = (s * (s * st) + 8 * u * (abs(xi[j]) + abs(s * float(eps)))) / a
        return compare(res, want, tol, f"AnalyticDenoiser.{method} ({name}, t={tval:.4g}, {dtype})")

    x_lit = lit(x_in) if not isinstance(x_in, list) else repr(x_in)
    code = ("import numpy as np, torch\nfrom toy_models import GaussianMixture, AnalyticDenoiser\n"
            f"den = AnalyticDenoiser({gm_call(p) if world is None else repr(world)}, {name!r}, dtype={dtype})\n"
            f"print(den.{method}({x_lit}, {lit(t_in)}, {cond!r}))")
    return Case("AnalyticDenoiser", f"{method} {kind} {name} {dtype}", thunk,
                Oracle(check if accept else None, bad), code)


# ================================================================================================================
# Guidance combiners
# ================================================================================================================
def _eps_tensor(rng, n, d, dtype, mag=None):
    mag = log_uniform(rng, -3, 3) if mag is None else mag
    return torch.tensor(rng.standard_normal((n, d)) * mag, dtype=dtype)


def _mpa(t) -> list:
    return [[mp.mpf(float(v)) for v in row] for row in to_np(t).reshape(t.shape[0], -1)]


#: the rule functions and the module of ``verify.rules`` each lives in (the API names of the tables stay the same)
RULE_FUNCTIONS = {"cfg": "cfg", "classifier_guidance": "classifier", "negative_prompt_000": "negative_prompt_000",
                  "negative_prompt_001": "negative_prompt_001", "compose": "compose", "rescale": "rescale",
                  "static_threshold": "static_threshold", "dynamic_threshold": "dynamic_threshold"}


def _rule_functions():
    """The rule functions, as attributes (``combiners.cfg(...)``)."""
    import importlib
    from types import SimpleNamespace

    return SimpleNamespace(**{name: getattr(importlib.import_module(f"verify.rules.{module}"), name)
                              for name, module in RULE_FUNCTIONS.items()})


def imports_g(*names: str) -> str:
    """The import lines of a reproducer that calls the rule functions ``names``."""
    return "import torch\n" + "".join(f"from verify.rules.{RULE_FUNCTIONS[n]} import {n}\n" for n in names)


def _elementwise_case(api, rng, build):
    """Shared frame for the linear combiners: ``build`` returns (thunk, exact fn, magnitude fn, code, kind, bad,
    accept, dtype, n_ops)."""
    thunk, exact, absmag, code, kind, bad, accept, dtype, n_ops = build
    u = U[dtype]

    def check(res):
        want, tol = exact(), absmag()
        return compare(res, want, 2 * n_ops * u * tol + 1e-300, f"{api} ({dtype})")

    return Case(api, f"{api} {kind} {dtype}", thunk, Oracle(check if accept else None, bad), code)


def gen_cfg(rng) -> Case:
    combiners = _rule_functions()

    n, d = int(rng.integers(1, 5)), int(rng.integers(1, 6))
    dtype = F64 if rng.random() < 0.7 else F32
    eu, ec = _eps_tensor(rng, n, d, dtype), _eps_tensor(rng, n, d, dtype)
    w = float(rng.uniform(-2, 20))
    by_scale = rng.random() < 0.5
    kw: dict = {"guidance_scale": 1 + w} if by_scale else {"w": w}
    kind = str(rng.choice(["valid"] * 5 + ["both", "neither", "nan_w", "inf_scale", "bcast", "shape", "complex",
                                           "int", "huge", "g0", "g1", "str_w", "w_tensor"]))
    bad, accept = None, True
    if kind == "both":
        kw, bad, accept = {"w": w, "guidance_scale": 1 + w}, ("w", "guidance_scale"), False
    elif kind == "neither":
        kw, bad, accept = {}, ("w", "guidance_scale"), False
    elif kind == "nan_w":
        kw, bad, accept = {"w": math.nan}, ("w",), False
    elif kind == "inf_scale":
        kw, bad, accept = {"guidance_scale": math.inf}, ("guidance_scale",), False
    elif kind == "bcast" and d > 1:
        ec, bad, accept = ec[:, :1], ("eps_cond", "eps_uncond"), False
    elif kind == "shape":
        ec, bad, accept = ec[:0] if n > 1 else torch.cat([ec, ec]), ("eps_cond", "eps_uncond"), False
    elif kind == "complex":
        ec, bad, accept = ec.to(torch.complex128) * (1 + 1j), ("eps_cond",), False
    elif kind == "int":
        eu, ec = eu.round().to(torch.int64), ec.round().to(torch.int64)
        bad = ("eps_uncond", "eps_cond")
    elif kind == "huge":
        eu, ec = eu / eu.abs().max() * (1e300 if dtype == F64 else 1e36), ec / ec.abs().max() * (
            1e300 if dtype == F64 else 1e36)
        kw = {"w": min(abs(w), 5.0)}
    elif kind == "g0":
        kw = {"guidance_scale": 0.0}
    elif kind == "g1":
        kw = {"guidance_scale": 1.0}
    elif kind == "str_w":
        kw, bad, accept = {"w": "three"}, ("w",), False
    elif kind == "w_tensor":
        kw = {"w": torch.tensor(w)}
    else:
        kind = "valid"
    g = kw.get("guidance_scale", 1 + float(kw["w"]) if "w" in kw and accept else None)

    def thunk():
        return combiners.cfg(eu, ec, **kw)

    def exact():
        a, b = _mpa(eu), _mpa(ec)
        gm_ = mp.mpf(float(g))
        return np.array([[mp_f(ai + gm_ * (bi - ai)) for ai, bi in zip(ra, rb, strict=True)]
                         for ra, rb in zip(a, b, strict=True)])

    def absmag():
        a, b = np.abs(to_np(eu)), np.abs(to_np(ec))
        return a + abs(float(g)) * (a + b) + abs(float(g) - 1) * (a + b)

    kw_lit = ", ".join(f"{k}={lit(v)}" for k, v in kw.items())
    code = imports_g("cfg") + f"print(cfg({lit(eu)}, {lit(ec)}, {kw_lit}))"
    if kind in ("g0", "g1"):  # exact identities: lerp at 0 and 1 returns its endpoints bit for bit
        def check(res):
            want = eu if kind == "g0" else ec
            if isinstance(res, torch.Tensor) and torch.equal(res, want):
                return CORRECT, "exact endpoint"
            which = "unconditional" if kind == "g0" else "conditional"
            return WRONG, f"cfg at guidance_scale {g} is not exactly the {which} prediction"

        return Case("cfg", f"cfg {kind}", thunk, Oracle(check, None), code)
    return _elementwise_case("cfg", rng, (thunk, exact, absmag, code, kind, bad, accept, dtype, 4))


def gen_classifier_guidance(rng) -> Case:
    combiners = _rule_functions()

    n, d = int(rng.integers(1, 5)), int(rng.integers(1, 6))
    dtype = F64 if rng.random() < 0.7 else F32
    eps, grad = _eps_tensor(rng, n, d, dtype), _eps_tensor(rng, n, d, dtype)
    sigma: Any = log_uniform(rng, -3, 1)
    scale: Any = float(rng.uniform(0, 20))
    kind = str(rng.choice(["valid"] * 5 + ["sigma_neg", "scale_nan", "sigma_nan", "bcast", "complex", "sigma_row",
                                           "huge", "sigma_inf", "scale_str", "sigma_vec_bad"]))
    bad, accept = None, True
    if kind == "sigma_neg":
        sigma, bad, accept = -sigma, ("sigma",), False
    elif kind == "scale_nan":
        scale, bad, accept = math.nan, ("scale",), False
    elif kind == "sigma_nan":
        sigma, bad, accept = math.nan, ("sigma",), False
    elif kind == "sigma_inf":
        sigma, bad, accept = math.inf, ("sigma",), False
    elif kind == "bcast" and d > 1:
        grad, bad, accept = grad[:, :1], ("grad_log_classifier",), False
    elif kind == "complex":
        grad, bad, accept = grad.to(torch.complex128) + 1j, ("grad_log_classifier",), False
    elif kind == "sigma_row":
        sigma = torch.full((n, 1), float(sigma), dtype=dtype)
    elif kind == "sigma_vec_bad":  # neither one value nor one per row (a one-element tensor is one value)
        sigma, bad, accept = torch.full((n + 1,), float(sigma), dtype=dtype), ("sigma",), False
    elif kind == "huge":
        eps = eps / eps.abs().max() * (1e300 if dtype == F64 else 1e36)
    elif kind == "scale_str":
        scale, bad, accept = "5", ("scale",), False
    else:
        kind = "valid"
    sig_val = float(sigma.reshape(-1)[0]) if isinstance(sigma, torch.Tensor) else sigma

    def thunk():
        return combiners.classifier_guidance(eps, grad, sigma, scale)

    def exact():
        a, b = _mpa(eps), _mpa(grad)
        k = mp.mpf(float(scale)) * mp.mpf(sig_val)
        return np.array([[mp_f(ai - k * bi) for ai, bi in zip(ra, rb, strict=True)]
                         for ra, rb in zip(a, b, strict=True)])

    def absmag():
        return np.abs(to_np(eps)) + abs(float(scale) * sig_val) * np.abs(to_np(grad))

    code = imports_g("classifier_guidance") + (f"print(classifier_guidance({lit(eps)}, {lit(grad)}, {lit(sigma)}, "
                                                f"{lit(scale)}))")
    return _elementwise_case("classifier_guidance", rng, (thunk, exact, absmag, code, kind, bad, accept, dtype, 4))


def gen_negative_prompt(rng) -> Case:
    combiners = _rule_functions()

    n, d = int(rng.integers(1, 5)), int(rng.integers(1, 6))
    dtype = F64 if rng.random() < 0.7 else F32
    e0, ep, en = (_eps_tensor(rng, n, d, dtype) for _ in range(3))
    variant = "000" if rng.random() < 0.5 else "001"
    wp, wn = float(rng.uniform(0, 10)), float(rng.uniform(0, 5))
    kind = str(rng.choice(["valid"] * 5 + ["nan_wneg", "inf_wpos", "bcast", "complex", "huge", "both_001",
                                           "shape"]))
    bad, accept = None, True
    if kind == "nan_wneg":
        wn, bad, accept = math.nan, ("w_neg", "w"), False
    elif kind == "inf_wpos":
        wp, bad, accept = math.inf, ("w_pos", "guidance_scale"), False
    elif kind == "bcast" and d > 1:
        en, bad, accept = en[:, :1], ("eps_neg",), False
    elif kind == "shape":
        en, bad, accept = torch.cat([en, en]), ("eps_neg",), False
    elif kind == "complex":
        ep, bad, accept = ep.to(torch.complex128) + 1j, ("eps_pos",), False
    elif kind == "huge":
        e0, ep, en = (t / t.abs().max() * (1e300 if dtype == F64 else 1e36) for t in (e0, ep, en))
        wp, wn = min(wp, 3.0), min(wn, 3.0)
    elif kind == "both_001":
        variant = "001"
        bad, accept = ("w", "guidance_scale"), False
    else:
        kind = "valid"

    if variant == "000":
        def thunk():
            return combiners.negative_prompt_000(e0, ep, en, wp, wn)

        def exact():
            a, b, c = _mpa(e0), _mpa(ep), _mpa(en)
            P, N = mp.mpf(wp), mp.mpf(wn)
            return np.array([[mp_f(x0 + P * (x1 - x0) - N * (x2 - x0)) for x0, x1, x2 in zip(ra, rb, rc, strict=True)]
                             for ra, rb, rc in zip(a, b, c, strict=True)])

        def absmag():
            a, b, c = (np.abs(to_np(t)) for t in (e0, ep, en))
            return a + abs(wp) * (a + b) + abs(wn) * (a + c)

        code = imports_g("negative_prompt_000") + (f"print(negative_prompt_000({lit(e0)}, {lit(ep)}, {lit(en)}, "
                                                   f"{lit(wp)}, {lit(wn)}))")
    else:
        kw = {"guidance_scale": wp} if kind != "both_001" else {"w": wp, "guidance_scale": wp}
        if kind == "nan_wneg":
            kw = {"w": wn}

        def thunk():
            return combiners.negative_prompt_001(ep, en, **kw)

        def exact():
            b, c = _mpa(ep), _mpa(en)
            g = mp.mpf(wp)
            return np.array([[mp_f(x2 + g * (x1 - x2)) for x1, x2 in zip(rb, rc, strict=True)]
                             for rb, rc in zip(b, c, strict=True)])

        def absmag():
            b, c = np.abs(to_np(ep)), np.abs(to_np(en))
            return c + (abs(wp) + abs(wp - 1)) * (b + c)

        code = imports_g("negative_prompt_001") + f"print(negative_prompt_001({lit(ep)}, {lit(en)}, " + ", ".join(
            f"{k}={lit(v)}" for k, v in kw.items()) + "))"
        if kind == "bcast" or kind == "shape":
            bad = ("eps_neg", "eps_pos")
    return _elementwise_case("negative_prompt", rng, (thunk, exact, absmag, code, f"{variant} {kind}", bad, accept,
                                                      dtype, 6))


def gen_compose(rng) -> Case:
    combiners = _rule_functions()

    n, d, K = int(rng.integers(1, 4)), int(rng.integers(1, 5)), int(rng.integers(1, 5))
    dtype = F64 if rng.random() < 0.7 else F32
    e0 = _eps_tensor(rng, n, d, dtype)
    conds = [_eps_tensor(rng, n, d, dtype) for _ in range(K)]
    weights: Any = [float(v) for v in rng.uniform(-3, 8, K)]
    kind = str(rng.choice(["valid"] * 5 + ["len", "empty", "nan_w", "bcast", "complex", "huge", "tuple",
                                           "tensor_w", "str_w"]))
    bad, accept = None, True
    if kind == "len":
        weights, bad, accept = weights + [1.0], ("eps_conds", "weights"), False
    elif kind == "empty":
        conds, weights, bad, accept = [], [], ("eps_conds", "weights"), False
    elif kind == "nan_w":
        weights[0], bad, accept = math.nan, ("weights",), False
    elif kind == "bcast" and d > 1:
        conds[0], bad, accept = conds[0][:, :1], ("eps_conds",), False
    elif kind == "complex":
        conds[-1], bad, accept = conds[-1].to(torch.complex128) + 1j, ("eps_conds",), False
    elif kind == "huge":
        e0 = e0 / e0.abs().max() * (1e300 if dtype == F64 else 1e36)
        weights = [float(v) for v in rng.uniform(-1, 1, K)]
    elif kind == "tuple":
        conds, weights = tuple(conds), tuple(weights)
    elif kind == "tensor_w":
        weights = torch.tensor(weights)
    elif kind == "str_w":
        weights, bad, accept = ["1"] * K, ("weights",), False
    else:
        kind = "valid"

    def thunk():
        return combiners.compose(e0, conds, weights)

    def exact():
        a = _mpa(e0)
        cs = [_mpa(c) for c in conds]
        ws = [mp.mpf(float(v)) for v in weights]
        return np.array([[mp_f(a[i][j] * (1 - mp.fsum(ws)) + mp.fsum(ws[k] * cs[k][i][j] for k in range(K)))
                          for j in range(d)] for i in range(n)])

    def absmag():
        ws = np.abs(np.array([float(v) for v in weights]))
        return np.abs(to_np(e0)) * (1 + ws.sum()) + sum(ws[k] * np.abs(to_np(conds[k])) for k in range(K))

    weights_code = lit(weights) if not isinstance(weights, list) else repr(weights)
    code = imports_g("compose") + f"print(compose({lit(e0)}, [{', '.join(lit(c) for c in conds)}], {weights_code}))"
    return _elementwise_case("compose", rng, (thunk, exact, absmag, code, kind, bad, accept, dtype, 2 * (K + 3)))


def _mp_std(vals):
    m = mp.fsum(vals) / len(vals)
    return mp.sqrt(mp.fsum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def gen_rescale(rng) -> Case:
    combiners = _rule_functions()

    n, d = int(rng.integers(1, 4)), int(rng.integers(2, 6))
    dtype = F64 if rng.random() < 0.7 else F32
    eg, ec = _eps_tensor(rng, n, d, dtype, 1.0), _eps_tensor(rng, n, d, dtype, 1.0)
    x = _eps_tensor(rng, n, d, dtype, log_uniform(rng, -1, 1))
    a, s = float(rng.uniform(0.05, 1)), float(rng.uniform(0.05, 1))
    phi: Any = float(rng.uniform(0, 1))
    space = str(rng.choice(["v", "eps", "x0", "score"]))
    kind = str(rng.choice(["valid"] * 5 + ["zero_spread_guided", "zero_spread_cond", "phi_neg", "phi_nan", "d1",
                                           "alpha0", "bcast_x", "complex", "space_bad", "sigma_neg"]))
    bad, accept = None, True
    if kind == "zero_spread_guided":
        space = "eps"
        eg = torch.full((n, d), float(rng.uniform(-1, 1)), dtype=dtype)
        bad = ("eps_guided",)
    elif kind == "zero_spread_cond":
        space = "eps"
        ec = torch.full((n, d), float(rng.uniform(-1, 1)), dtype=dtype)
    elif kind == "phi_neg":
        phi, bad, accept = -0.5, ("phi",), False
    elif kind == "phi_nan":
        phi, bad, accept = math.nan, ("phi",), False
    elif kind == "d1":
        eg, ec, x, bad, accept = eg[:, :1], ec[:, :1], x[:, :1], ("eps_guided",), False
    elif kind == "alpha0":
        # alpha enters only the x0 and v spaces (dividing by it); in eps and score space alpha = 0 (zero terminal
        # SNR, the setting of Lin et al.) is a valid input
        a, bad, accept = 0.0, ("alpha",), space in ("eps", "score")
    elif kind == "sigma_neg":
        s, bad, accept = -s, ("sigma",), False
    elif kind == "bcast_x":
        x, bad, accept = x[:, :1], ("x",), False
    elif kind == "complex":
        ec, bad, accept = ec.to(torch.complex128) + 1j, ("eps_cond",), False
    elif kind == "space_bad":
        space, bad, accept = "latent", ("space",), False
    else:
        kind = "valid"

    def thunk():
        return combiners.rescale(eg, ec, phi, x=x, alpha=a, sigma=s, space=space)

    def check(res):
        u = U[dtype]
        G, Cc, X = _mpa(eg), _mpa(ec), _mpa(x)
        am, sm, ph = mp.mpf(a), mp.mpf(s), mp.mpf(phi)
        want, tol = np.zeros((n, d)), np.zeros((n, d))
        for i in range(n):
            yg = [_mp_convert(G[i][j], "eps", space, X[i][j], am, sm) for j in range(d)]
            yc = [_mp_convert(Cc[i][j], "eps", space, X[i][j], am, sm) for j in range(d)]
            sg, sc = _mp_std(yg), _mp_std(yc)
            if sg == 0:
                ratio = None
                blend = yg  # no spread to rescale: the prediction is unchanged
            else:
                ratio = sc / sg
                blend = [ph * v * ratio + (1 - ph) * v for v in yg]
            # condition of a standard deviation: relative error ~ d u max|y| / std
            cond_g = float(max(abs(v) for v in yg) / sg) if sg != 0 else 0.0
            cond_c = float(max(abs(v) for v in yc) / sc) if sc != 0 else 0.0
            for j in range(d):
                want[i, j] = mp_f(_mp_convert(blend[j], space, "eps", X[i][j], am, sm))
                mag_y = float(_abs_convert(blend[j], space, "eps", X[i][j], am, sm))
                fwd = float(max(_abs_convert(G[i][k], "eps", space, X[i][k], am, sm) for k in range(d)))
                back_gain = float(_abs_convert(mp.mpf(1), space, "eps", mp.mpf(0), am, sm))
                tol[i, j] = 64 * d * u * (mag_y + back_gain * fwd * (1 + cond_g + cond_c) *
                                          (float(ratio) if ratio is not None else 1.0 + 1.0))
        return compare(res, want, tol, f"rescale (space {space}, {dtype})")

    code = imports_g("rescale") + (f"print(rescale({lit(eg)}, {lit(ec)}, {lit(phi)}, x={lit(x)}, alpha={lit(a)}, "
                        f"sigma={lit(s)}, space={space!r}))")
    return Case("rescale", f"rescale {kind} space={space} {dtype}", thunk, Oracle(check if accept else None, bad),
                code)


def gen_threshold(rng) -> Case:
    combiners = _rule_functions()

    n, d = int(rng.integers(1, 4)), int(rng.integers(1, 7))
    dtype = F64 if rng.random() < 0.7 else F32
    eps = _eps_tensor(rng, n, d, dtype, 1.0)
    x = _eps_tensor(rng, n, d, dtype, log_uniform(rng, -1, 1))
    a, s = float(rng.uniform(0.02, 1)), float(rng.uniform(0.05, 1))
    variant = "static" if rng.random() < 0.5 else "dynamic"
    limit: Any = float(rng.uniform(0.5, 3))
    pct: Any = float(rng.uniform(0.5, 1.0))
    kind = str(rng.choice(["valid"] * 5 + ["limit_neg", "limit0", "limit_nan", "pct0", "pct_big", "alpha0", "sigma0",
                                           "bcast_x", "complex", "limit_inf"]))
    bad, accept = None, True
    if kind == "limit_neg":
        limit, bad, accept = -limit, ("limit",), False
    elif kind == "limit0":
        limit, bad, accept = 0.0, ("limit",), False
    elif kind == "limit_nan":
        limit, bad, accept = math.nan, ("limit",), False
    elif kind == "limit_inf":
        limit = math.inf
        bad = ("limit",)
        if variant == "dynamic":
            accept = False
    elif kind == "pct0" and variant == "dynamic":
        pct, bad, accept = 0.0, ("percentile",), False
    elif kind == "pct_big" and variant == "dynamic":
        pct, bad, accept = 1.5, ("percentile",), False
    elif kind == "alpha0":
        a, bad, accept = 0.0, ("alpha",), False
    elif kind == "sigma0":
        s, bad, accept = 0.0, ("sigma",), False
    elif kind == "bcast_x" and d > 1:
        x, bad, accept = x[:, :1], ("x",), False
    elif kind == "complex":
        eps, bad, accept = eps.to(torch.complex128) + 1j, ("eps",), False
    else:
        kind = "valid"

    def thunk():
        if variant == "static":
            return combiners.static_threshold(eps, x=x, alpha=a, sigma=s, limit=limit)
        return combiners.dynamic_threshold(eps, x=x, alpha=a, sigma=s, percentile=pct, limit=limit)

    def check(res):
        u = U[dtype]
        E, X = _mpa(eps), _mpa(x)
        am, sm = mp.mpf(a), mp.mpf(s)
        lim = mp.mpf(limit) if math.isfinite(limit) else mp.inf
        want, tol = np.zeros((n, d)), np.zeros((n, d))
        for i in range(n):
            x0 = [(X[i][j] - sm * E[i][j]) / am for j in range(d)]
            if variant == "static":
                c = [min(max(v, -lim), lim) for v in x0]
            else:
                ab = sorted(abs(v) for v in x0)
                pos = mp.mpf(pct) * (d - 1)
                lo = int(mp.floor(pos))
                hi = min(lo + 1, d - 1)
                q = ab[lo] + (pos - lo) * (ab[hi] - ab[lo])
                sthr = max(q, lim)
                c = [min(max(v, -sthr), sthr) * (lim / sthr) for v in x0]
            for j in range(d):
                want[i, j] = mp_f((X[i][j] - am * c[j]) / sm)
                # eps -> x0 -> clip -> eps: x0 errs by 4u(|x| + s|eps|)/a, the clip is 1-Lipschitz (the dynamic
                # scale s's own error moves x0 s/s by the same relative amount), the way back multiplies by a/s
                tol[i, j] = 16 * u * ((abs(float(X[i][j])) + a * abs(float(c[j]))) / s +
                                      2 * (abs(float(X[i][j])) + s * abs(float(E[i][j]))) / s)
        return compare(res, want, tol, f"{variant}_threshold ({dtype})")

    call = (f"static_threshold({lit(eps)}, x={lit(x)}, alpha={lit(a)}, sigma={lit(s)}, limit={lit(limit)})"
            if variant == "static" else
            f"dynamic_threshold({lit(eps)}, x={lit(x)}, alpha={lit(a)}, sigma={lit(s)}, "
            f"percentile={lit(pct)}, limit={lit(limit)})")
    return Case("threshold", f"{variant}_threshold {kind} {dtype}", thunk, Oracle(check if accept else None, bad),
                imports_g(f"{variant}_threshold") + f"print({call})")


# ================================================================================================================
# Samplers
# ================================================================================================================
class _NaNAfter:
    """A denoiser that answers NaN from its ``k``-th call on (a model that broke mid-run)."""

    def __init__(self, den, k: int, value: float = math.nan):
        self.den, self.k, self.calls, self.value = den, k, 0, value
        self.schedule, self.dim = den.schedule, den.dim

    def eps(self, x, t, condition=None):
        self.calls += 1
        out = self.den.eps(x, t, condition)
        if self.calls > self.k:
            out = out.clone()
            out[0, 0] = self.value
        return out


def _ref_sampler(name, den, x, times, condition, eta, noise):
    """Float64 reference implementations of the samplers, from their published update rules (the formulas in
    verify/samplers.py's docstrings, written out again here independently)."""
    sched = den.schedule
    ts = [float(v) for v in times]
    al = [float(sched.alpha(t)) for t in ts]
    sg = [float(sched.sigma(t)) for t in ts]
    x = x.to(F64).clone()

    def eps_at(xx, t):
        return den.eps(xx, t, condition).to(F64)

    def vel(xx, i, e, sde=False):
        t = ts[i]
        f, g2 = float(sched.drift(t)), float(sched.diffusion_squared(t))
        score = -e / sg[i]
        return f * xx - (g2 if sde else 0.5 * g2) * score

    x0_prev = h_prev = None
    for i in range(len(ts) - 1):
        t, s_ = ts[i], ts[i + 1]
        e = eps_at(x, t)
        x0 = (x - sg[i] * e) / al[i]
        ratio = (al[i] * sg[i + 1]) / (al[i + 1] * sg[i])
        q = 1.0 - ratio * ratio
        if name == "ddim":
            xn = al[i + 1] * x0 + sg[i + 1] * math.sqrt(max(1.0 - eta * eta * q, 0.0)) * e
            if eta > 0:
                xn = xn + eta * sg[i + 1] * math.sqrt(q) * noise[i].to(F64)
            x = xn
        elif name == "ddpm":
            x = (al[i] / al[i + 1]) * (sg[i + 1] / sg[i]) ** 2 * x + al[i + 1] * q * x0 + \
                sg[i + 1] * math.sqrt(q) * noise[i].to(F64)
        elif name == "euler":
            x = x + (s_ - t) * vel(x, i, e)
        elif name == "heun":
            v1 = vel(x, i, e)
            xe = x + (s_ - t) * v1
            if sg[i + 1] > 0:
                x = x + 0.5 * (s_ - t) * (v1 + vel(xe, i + 1, eps_at(xe, s_)))
            else:
                x = xe
        elif name == "euler_maruyama":
            g2 = float(sched.diffusion_squared(t))
            x = x + (s_ - t) * vel(x, i, e, sde=True) + math.sqrt(g2 * (t - s_)) * noise[i].to(F64)
        else:  # dpmpp_2m
            if sg[i + 1] == 0:
                x, h = al[i + 1] * x0, math.inf
            else:
                h = math.log(al[i + 1] / sg[i + 1]) - math.log(al[i] / sg[i])
                data = x0 if x0_prev is None else (1 + 0.5 * h / h_prev) * x0 - 0.5 * h / h_prev * x0_prev
                x = (sg[i + 1] / sg[i]) * x - al[i + 1] * math.expm1(-h) * data
            x0_prev, h_prev = x0, h
    return x


def gen_samplers(rng) -> Case:
    from toy_models import AnalyticDenoiser
    from verify import rules, samplers

    name = str(rng.choice(sorted(samplers.SAMPLERS)))
    p = rand_mixture(rng, K=int(rng.integers(1, 4)), d=int(rng.integers(1, 4)), log_scale=(-2, 1), far=1.0)
    sched = str(rng.choice(["vp-linear", "vp-cosine", "ve", "edm", "rectified-flow"]))
    dtype = F64 if rng.random() < 0.7 else F32
    steps = int(rng.integers(2, 9))
    t_end = 0.0 if rng.random() < 0.4 and sched not in ("ve", "edm") else float(rng.uniform(0.01, 0.2))
    if sched in ("ve", "edm"):
        t_end = max(t_end, 0.0)
    t_start = float(rng.uniform(0.6, 0.99))
    times = torch.linspace(t_start, t_end, steps + 1, dtype=F64)
    n = int(rng.integers(1, 5))
    x = torch.tensor(rng.standard_normal((n, p.d)), dtype=dtype)
    spec = samplers.get_sampler(name)
    stochastic = spec.is_stochastic(0.0)
    takes_eta = spec.noise(1.0) != spec.noise(0.0)  # the registry: eta changes the noise (DDIM's family)
    eta = float(rng.uniform(0, 1)) if takes_eta and rng.random() < 0.5 else 0.0
    noise = torch.tensor(rng.standard_normal((steps, n, p.d)), dtype=dtype) if (stochastic or eta > 0) else None
    guided = rng.random() < 0.3
    cond_label = int(p.labels[0])
    w = float(rng.uniform(0, 5))
    kind = str(rng.choice(["valid"] * 5 + ["nan_den", "nan_den", "inf_den", "x_int", "x_nan", "x_shape", "times_inc",
                                           "times_range", "times_nan", "eta_bad", "noise_shape", "no_noise",
                                           "unknown", "alias_x", "x_complex"]))
    bad, accept, mention = None, True, None
    nan_at = int(rng.integers(0, steps))
    x_in, times_in, noise_in, name_in, eta_in = x, times, noise, name, eta
    if kind in ("nan_den", "inf_den"):
        bad = ("denoiser",)
        accept = False

        def mention(msg, _k=nan_at):  # the error must say where: the step and its time
            return "step" in msg.lower() and re.search(r"\bt\s*=|\btime", msg) is not None
    elif kind == "x_int":
        x_in, bad = x.round().to(torch.int64), ("x",)
    elif kind == "x_complex":
        x_in, bad, accept = x.to(torch.complex128), ("x",), False
    elif kind == "x_nan":
        x_in = x.clone()
        x_in[0, 0] = math.nan
        bad, accept = ("x",), False
    elif kind == "x_shape":
        x_in, bad, accept = torch.cat([x, x[:, :1]], 1), ("x",), False
    elif kind == "times_inc":
        times_in, bad, accept = times.flip(0), ("timesteps",), False
    elif kind == "times_range":
        times_in = times.clone()
        times_in[0] = 1.5
        bad, accept = ("timesteps",), False
    elif kind == "times_nan":
        times_in = times.clone()
        times_in[1] = math.nan
        bad, accept = ("timesteps",), False
    elif kind == "eta_bad" and takes_eta:
        eta_in, bad, accept = 1.5, ("eta",), False
    elif kind == "noise_shape" and noise is not None:
        noise_in, bad, accept = noise[:-1], ("noise",), False
    elif kind == "no_noise" and stochastic:
        noise_in, bad, accept = None, ("generator", "noise"), False
    elif kind == "unknown":
        name_in, bad, accept = "euler_a", ("name",), False
    elif kind == "alias_x":
        pass
    else:
        kind = "valid"

    def build():
        base = AnalyticDenoiser(make_gm(p), sched)
        den = rules.get("cfg", w=w).guide(base, cond_label) if guided else base
        if kind in ("nan_den", "inf_den"):
            den = _NaNAfter(den, nan_at, math.nan if kind == "nan_den" else math.inf)
        return den

    def run(den, xx, tt, nz, nm, et):
        kw: dict = {"condition": cond_label if guided else None}
        if takes_eta:
            kw["eta"] = et
        if nz is not None:
            kw["noise"] = nz
        return samplers.sample(nm, den, xx, tt, **kw)

    def thunk():
        den = build()
        if kind == "alias_x":
            before = x_in.clone()
            out = run(den, x_in, times_in, noise_in, name_in, eta_in)
            return out, torch.equal(before, x_in)
        return run(den, x_in, times_in, noise_in, name_in, eta_in)

    def check(res):
        if kind == "alias_x":
            res, untouched = res
            if not untouched:
                return WRONG, "the sampler modified the caller's x in place"
        x_exact = x_in.to(F64)
        base = AnalyticDenoiser(make_gm(p), sched)
        den = rules.get("cfg", w=w).guide(base, cond_label) if guided else base
        ref = _ref_sampler(name, den, x_exact, times_in, cond_label if guided else None, eta_in, noise_in)
        if isinstance(res, torch.Tensor) and res.dtype != (x_in.dtype if x_in.is_floating_point() else F64) and \
                kind != "x_int":
            return WRONG, f"output dtype {res.dtype}, the input's is {x_in.dtype}"
        # rounding: each step forms x0 = (x - sigma eps)/alpha (amplifies by 1/alpha) and adds O(1) terms; the
        # denoiser itself is evaluated at the rounded state: error per step <= 64 u (1 + |x|) / alpha_min, summed over
        # steps and amplified at most by the flow's Lipschitz growth (1 + w)^steps bounded by 4^steps here
        u = U[x_in.dtype] if x_in.is_floating_point() else U[F64]
        a_min = min(float(den.schedule.alpha(t)) for t in times_in)
        mag = 1.0 + float(ref.abs().max())
        growth = min((2.0 + w) ** steps, 1e6) if guided else 4.0**steps
        tol = 64 * steps * u * mag * growth / a_min
        return compare(res, ref.numpy(), tol, f"{name} on {sched} ({x_in.dtype})")

    noise_code = "" if noise_in is None else f", noise={lit(noise_in)}"
    eta_code = f", eta={eta_in!r}" if takes_eta else ""
    wrap = f"rules.get('cfg', w={w!r}).guide(base, {cond_label})" if guided else "base"
    nan_code = ""
    if kind in ("nan_den", "inf_den"):
        nan_code = (f"\nclass Broken:  # answers {'NaN' if kind == 'nan_den' else 'inf'} from call {nan_at + 1} on\n"
                    "    def __init__(self, den):\n"
                    "        self.den, self.calls, self.schedule, self.dim = den, 0, den.schedule, den.dim\n"
                    "    def eps(self, x, t, condition=None):\n"
                    "        self.calls += 1; out = self.den.eps(x, t, condition).clone()\n"
                    f"        if self.calls > {nan_at}: out[0, 0] = float({'nan' if kind == 'nan_den' else 'inf'!r})\n"
                    "        return out\nden = Broken(den)")
    code = ("import torch, numpy as np\nfrom toy_models import GaussianMixture, AnalyticDenoiser\n"
            "from verify import rules\nfrom verify.samplers import sample\n"
            f"base = AnalyticDenoiser({gm_call(p)}, {sched!r})\nden = {wrap}{nan_code}\n"
            f"print(sample({name_in!r}, den, {lit(x_in)}, {lit(times_in)}, condition={cond_label if guided else None!r}"
            f"{eta_code}{noise_code}))")
    return Case("samplers", f"{name} {kind} {sched} {'cfg' if guided else ''} {dtype}", thunk,
                Oracle(check if accept else None, bad, mention), code)


# ================================================================================================================
# Exact laws
# ================================================================================================================
def _my_moment_law(m_c, s_c, m_u, s_u, w, sampler, name, start, t_end, rtol=1e-10):
    """Independent float64 reference: the moment ODEs of the guided PF-ODE / reverse SDE (derived in
    verify/exact_law.py's docstring), integrated with Radau on my own schedule formulas."""
    from scipy.integrate import solve_ivp

    a_fn, s_fn = _mp_sched(name)

    def coeffs(t):
        tt = mp.mpf(t)
        al, sg = a_fn(tt), s_fn(tt)
        direction = 0 if 1e-3 <= t <= 1 - 1e-3 else (1 if t < 0.5 else -1)  # stay inside [0, 1]
        f = mp.re(mp.diff(lambda v: mp.log(a_fn(v)), tt, direction=direction))
        g2 = mp.re(mp.diff(lambda v: s_fn(v) ** 2, tt, direction=direction)) - 2 * f * sg**2
        return float(mp.re(al)), float(mp.re(sg)), float(f), float(g2)

    d = len(m_c)
    eye = np.eye(d)
    k_f = 1.0 if sampler == "ode" else 2.0

    def rhs(t, y):
        al, sg, f, g2 = coeffs(t)
        ic = np.linalg.inv(al**2 * s_c + sg**2 * eye)
        iu = np.linalg.inv(al**2 * s_u + sg**2 * eye)
        A = (1 + w) * ic - w * iu
        b = al * ((1 + w) * ic @ m_c - w * iu @ m_u)
        mu, cov = y[:d], y[d:].reshape(d, d)
        M = f * eye + k_f * g2 / 2 * A
        dmu = M @ mu - k_f * g2 / 2 * b
        dcov = M @ cov + cov @ M.T - (g2 * eye if sampler == "sde" else 0)
        return np.concatenate([dmu, dcov.ravel()])

    al1, sg1, _, _ = coeffs(1.0)
    if start == "marginal":
        mu0, cov0 = al1 * m_c, al1**2 * s_c + sg1**2 * eye
    else:
        var = 1.0 if abs(al1**2 + sg1**2 - 1) < 1e-12 else sg1**2
        mu0, cov0 = np.zeros(d), var * eye
    sol = solve_ivp(rhs, (1.0, t_end), np.concatenate([mu0, cov0.ravel()]), method="Radau", rtol=rtol,
                    atol=rtol * 1e-3)
    y = sol.y[:, -1]
    return y[:d], y[d:].reshape(d, d)


def gen_exact_law(rng) -> Case:
    from verify.exact_law import exact_gaussian_cfg_law

    d = int(rng.integers(1, 3))
    pc = rand_mixture(rng, K=1, d=d, log_scale=(-1, 0.5), far=0.5)
    pu = rand_mixture(rng, K=1, d=d, log_scale=(-0.5, 0.5), far=0.5)
    w: Any = float(rng.uniform(0, 4))
    sampler = str(rng.choice(["ode", "sde"]))
    sched = str(rng.choice(["vp-linear", "ve", "edm"]))
    start = str(rng.choice(["prior", "marginal"]))
    t_end: Any = 0.0 if rng.random() < 0.5 else float(rng.uniform(0, 0.5))
    rtol: Any = 1e-9
    kind = str(rng.choice(["valid"] * 5 + ["identity"] * 2 + ["w_nan", "w_inf", "sampler_bad", "start_bad",
                                                              "flow", "t_end1", "t_end_neg", "mixture_cond",
                                                              "dim_mismatch", "cond_str", "rtol_neg", "w_str",
                                                              "t_end_nan"]))
    bad, accept = None, True
    cond_in: Any = None
    uncond_in: Any = None
    if kind == "identity":
        w, start = 0.0, "marginal"  # w = 0 from the marginal start returns p_0(x|c) exactly (docstring)
    elif kind == "w_nan":
        w, bad, accept = math.nan, ("w",), False
    elif kind == "w_inf":
        w, bad, accept = math.inf, ("w",), False
    elif kind == "w_str":
        w, bad, accept = "two", ("w",), False
    elif kind == "sampler_bad":
        sampler, bad, accept = "euler", ("sampler",), False
    elif kind == "start_bad":
        start, bad, accept = "noise", ("start",), False
    elif kind == "flow":
        sched, bad, accept = "rectified-flow", ("schedule",), False
    elif kind == "t_end1":
        t_end, bad, accept = 1.0, ("t_end",), False
    elif kind == "t_end_neg":
        t_end, bad, accept = -0.1, ("t_end",), False
    elif kind == "t_end_nan":
        t_end, bad, accept = math.nan, ("t_end",), False
    elif kind == "mixture_cond":
        q = rand_mixture(rng, K=2, d=d)
        cond_in, bad, accept = make_gm(q), ("cond",), False
    elif kind == "dim_mismatch":
        q = rand_mixture(rng, K=1, d=d + 1)
        uncond_in, bad, accept = make_gm(q), ("cond", "uncond"), False
    elif kind == "cond_str":
        cond_in, bad, accept = "gauss1d", ("cond",), False
    elif kind == "rtol_neg":
        rtol, bad, accept = -1.0, ("rtol",), False

    def thunk():
        c = make_gm(pc) if cond_in is None else cond_in
        u_ = make_gm(pu) if uncond_in is None else uncond_in
        return exact_gaussian_cfg_law(c, u_, w, sampler, sched, start, t_end=t_end, rtol=rtol)

    def check(res):
        mean, cov = res
        if kind == "identity":  # w = 0 from the marginal start: the exact score keeps the marginals p_t(x|c)
            a_fn, s_fn = _mp_sched(sched)
            a_e, s_e = float(a_fn(mp.mpf(float(t_end)))), float(s_fn(mp.mpf(float(t_end))))
            m_ref, c_ref = a_e * pc.mu[0], a_e * a_e * pc.cov[0] + s_e * s_e * np.eye(d)
        else:
            m_ref, c_ref = _my_moment_law(pc.mu[0], pc.cov[0], pu.mu[0], pu.cov[0], float(w), sampler, sched, start,
                                          float(t_end))
        scale = 1.0 + np.abs(m_ref).max() + np.abs(c_ref).max()
        tol = 1e-6 * scale  # both integrators at rtol <= 1e-9 over a stable linear system: 1e-6 is ample
        st, det = compare(mean, m_ref, tol, f"exact law mean ({sampler}, {sched}, {start}, w={w:.3g})")
        if st != CORRECT:
            return st, det
        return compare(cov, c_ref, tol, f"exact law covariance ({sampler}, {sched}, {start}, w={w:.3g})")

    cond_code = gm_call(pc) if cond_in is None else ("..." if not isinstance(cond_in, str) else repr(cond_in))
    code = ("import torch, numpy as np\nfrom toy_models import GaussianMixture\nfrom verify.exact_law import "
            f"exact_gaussian_cfg_law\ncond = {cond_code}\n"
            f"uncond = {gm_call(pu) if uncond_in is None else '...'}\n"
            f"print(exact_gaussian_cfg_law(cond, uncond, {lit(w)}, {sampler!r}, {sched!r}, {start!r}, "
            f"t_end={lit(t_end)}, rtol={rtol!r}))")
    return Case("exact_law", f"exact_gaussian_cfg_law {kind} {sampler} {sched} {start}", thunk,
                Oracle(check if accept else None, bad), code)


# ================================================================================================================
# Tilted laws
# ================================================================================================================
def gen_tilted(rng) -> Case:
    from toy_models import World
    from verify import rules
    from verify.tilted import TiltedLaw, tilted_law

    d = int(rng.integers(1, 4))
    kind = str(rng.choice(["gauss"] * 5 + ["mixture1d"] * 2 + ["t_bad", "schedule_bad", "unknown_cond", "nan_exp",
                                                              "empty", "dims", "not_normalisable", "noised"]))
    pc = rand_mixture(rng, K=1, d=d, log_scale=(-2, 2), far=2.0)
    pu = rand_mixture(rng, K=1, d=d, log_scale=(-2, 2), far=2.0)
    w = float(rng.uniform(0, 6))
    t: Any = None
    schedule = "vp-linear"
    bad, accept = None, True
    cond = 0
    if kind == "not_normalisable":
        pu = MixParams(pu.w, pu.mu, pc.cov * 0.25, pu.labels)  # the null narrower than the conditional: w large
        w = 10.0
        bad = ("factors",)  # refusal is right; a result is judged against the exact verdict below
    elif kind == "noised":
        t = float(rng.uniform(0.01, 0.99))
    elif kind == "t_bad":
        t, bad, accept = 1.5, ("t",), False
    elif kind == "schedule_bad":
        t, schedule, bad, accept = 0.5, "linear", ("schedule",), False
    elif kind == "unknown_cond":
        cond, bad, accept = 7, ("condition", "conditions"), False
    elif kind in ("nan_exp", "empty", "dims"):
        bad, accept = ("factors",), False
    if kind in ("gauss", "noised", "not_normalisable"):
        # normalisable iff Lambda = (1 + w) P_c - w P_u is positive definite (exact for Gaussian factors); near
        # the boundary (smallest eigenvalue below 1e-6 of the largest) a refusal as "undecided" is also right
        cc, cu = pc.cov[0], pu.cov[0]
        if t is not None:
            from toy_models import get_schedule

            a_, s_ = (float(v) for v in get_schedule(schedule).alpha_sigma(t))
            cc, cu = a_ * a_ * cc + s_ * s_ * np.eye(d), a_ * a_ * cu + s_ * s_ * np.eye(d)
        lam = (1 + w) * np.linalg.inv(cc) - w * np.linalg.inv(cu)
        ev = np.linalg.eigvalsh(0.5 * (lam + lam.T))
        if ev[0] <= 1e-6 * abs(ev).max():
            bad = ("factors",)
    if kind == "mixture1d":
        pm = rand_mixture(rng, K=int(rng.integers(2, 4)), d=1, log_scale=(-1, 1), far=1.0)
        pm.labels = np.arange(pm.K) % 2
        w = float(rng.uniform(0, 3))

    def world_of():
        if kind == "mixture1d":
            return World("mix", make_gm(pm))
        return World("g", make_gm(pu), conditionals={0: make_gm(pc)})

    def thunk():
        if kind == "nan_exp":
            return TiltedLaw(((make_gm(pc), math.nan), (make_gm(pu), 1.0))).summary()
        if kind == "empty":
            return TiltedLaw(()).summary()
        if kind == "dims":
            q = rand_mixture(np.random.default_rng(1), K=1, d=d + 1)
            return TiltedLaw(((make_gm(pc), 2.0), (make_gm(q), -1.0))).summary()
        law = tilted_law(world_of(), rules.get("cfg", w=w), {"cond": cond}, t=t, schedule=schedule)
        if kind == "mixture1d":
            return law.summary(n_grid=801)
        return law.summary()

    def check(res):
        if kind == "mixture1d":
            # independent reference: trapezoid on 200001 points over a window 14 component-std wide around every
            # component, in float64 with centred log densities
            g = make_gm(pm)
            wts, mus, sds = p_w(pm), pm.mu[:, 0], np.sqrt(pm.cov[:, 0, 0])
            cmask = pm.labels == cond
            lo = float((mus - 14 * sds).min() - 20 * sds.max())
            hi = float((mus + 14 * sds).max() + 20 * sds.max())
            xs = np.linspace(lo, hi, 200001)

            def logmix(msk):
                comps = np.log(wts[msk] / wts[msk].sum())[:, None] - 0.5 * ((xs[None, :] - mus[msk, None]) /
                                                                             sds[msk, None]) ** 2 - \
                    np.log(sds[msk, None] * math.sqrt(2 * math.pi))
                m = comps.max(0)
                return m + np.log(np.exp(comps - m).sum(0))

            lq = (1 + w) * logmix(cmask) - w * logmix(np.ones(pm.K, dtype=bool))
            pk = lq.max()
            q = np.exp(lq - pk)
            if q[0] > 1e-17 or q[-1] > 1e-17:
                return CORRECT, "reference window too small to judge (counted as correct)"
            trapezoid = getattr(np, "trapezoid", None) or getattr(np, "trapz")  # numpy 2 renamed it  # noqa: B009
            z = trapezoid(q, xs)
            mean = trapezoid(q * xs, xs) / z
            var = trapezoid(q * (xs - mean) ** 2, xs) / z
            del g
            tol = max(10 * res.moment_error, 1e-7 * (abs(mean) + var + 1))
            st, det = compare(res.mean, [mean], tol, "tilted mean (1-D mixture)")
            if st != CORRECT:
                return st, det
            return compare(res.cov, [[var]], tol, "tilted variance (1-D mixture)")
        # Gaussian factors: q = N(m, L^-1), L = (1 + w) P_c - w P_u, m = L^-1 ((1 + w) P_c mu_c - w P_u mu_u)
        if t is not None:
            from toy_models import get_schedule

            a, s = (float(v) for v in get_schedule(schedule).alpha_sigma(t))
            mc, mu_ = a * pc.mu[0], a * pu.mu[0]
            cc, cu = a * a * pc.cov[0] + s * s * np.eye(d), a * a * pu.cov[0] + s * s * np.eye(d)
        else:
            mc, mu_, cc, cu = pc.mu[0], pu.mu[0], pc.cov[0], pu.cov[0]
        Pc, Pu = mp.inverse(mp.matrix(cc.tolist())), mp.inverse(mp.matrix(cu.tolist()))
        L = (1 + mp.mpf(w)) * Pc - mp.mpf(w) * Pu
        ev = mp.eigsy(L)[0]
        if min(ev) <= 0:
            return WRONG, (f"returned a summary for a non-normalisable target (precision eigenvalues "
                           f"{[float(v) for v in ev]})")
        cov = mp.inverse(L)
        eta = (1 + mp.mpf(w)) * Pc * mp.matrix(mc.tolist()) - mp.mpf(w) * Pu * mp.matrix(mu_.tolist())
        mean = cov * eta
        m_ref = np.array([mp_f(mean[i]) for i in range(d)])
        c_ref = np.array([[mp_f(cov[i, j]) for j in range(d)] for i in range(d)])
        kap = float(max(abs(v) for v in ev) / min(abs(v) for v in ev))
        kap_f = max(np.linalg.cond(cc), np.linalg.cond(cu))
        # inverting P and L: relative error ~ d u (kappa(L) kappa(factors)) (1 + w); C = 64
        rel = 64 * d * U[F64] * kap * kap_f * (1 + 2 * w)
        st, det = compare(res.mean, m_ref, rel * (np.abs(m_ref).max() + np.sqrt(np.abs(c_ref).max()) + 1e-300) +
                          rel * float(np.abs(mc).max() + np.abs(mu_).max()) * (1 + w), "tilted mean (Gaussian)")
        if st != CORRECT:
            return st, det
        return compare(res.cov, c_ref, rel * np.abs(c_ref).max(), "tilted covariance (Gaussian)")

    code = ("import numpy as np, torch\nfrom toy_models import GaussianMixture, World\nfrom verify import rules\n"
            "from verify.tilted import tilted_law, TiltedLaw\n")
    if kind == "mixture1d":
        code += f"world = World('mix', {gm_call(pm)})\n"
    else:
        code += f"world = World('g', {gm_call(pu)}, conditionals={{0: {gm_call(pc)}}})\n"
    code += (f"print(tilted_law(world, rules.get('cfg', w={w!r}), {{'cond': {cond!r}}}, t={t!r}, "
             f"schedule={schedule!r}).summary())")
    return Case("tilted", f"tilted {kind} d={d} w={w:.3g}", thunk, Oracle(check if accept else None, bad), code)


def p_w(p: MixParams) -> np.ndarray:
    return p.w / p.w.sum()


# ================================================================================================================
# Metrics (frechet_distance)
# ================================================================================================================
def gen_metrics(rng) -> Case:
    from toy_models import GaussianMixture
    from verify.metrics import frechet_distance

    d = int(rng.integers(1, 5))
    scale = log_uniform(rng, -12, 6)
    a = scale * 10 ** rng.uniform(0, 2, d)
    b = scale * 10 ** rng.uniform(0, 2, d)
    centre = rng.standard_normal(d) * log_uniform(rng, 0, 4)
    m1 = centre + rng.standard_normal(d) * math.sqrt(scale) * log_uniform(rng, -1, 1)
    m2 = centre + rng.standard_normal(d) * math.sqrt(scale) * log_uniform(rng, -1, 1)
    kind = str(rng.choice(["valid"] * 5 + ["samples_nan", "samples_dim", "samples_one", "samples_complex",
                                           "samples_str", "samples_ok"]))
    bad, accept = None, True
    samples = None
    if kind == "samples_nan":
        samples = rng.standard_normal((10, d))
        samples[0, 0] = np.nan
        bad, accept = ("x",), False
    elif kind == "samples_dim":
        samples, bad, accept = rng.standard_normal((10, d + 1)), ("law_or_samples", "x"), False
    elif kind == "samples_one":
        samples, bad, accept = rng.standard_normal((1, d)), ("x",), False
    elif kind == "samples_complex":
        samples, bad, accept = torch.tensor(rng.standard_normal((10, d))) + 1j, ("x",), False
    elif kind == "samples_str":
        samples, bad, accept = "samples", ("x",), False
    elif kind == "samples_ok":
        samples = rng.standard_normal((50, d)) * math.sqrt(scale) + m1

    def thunk():
        g1 = GaussianMixture([1.0], m1[None, :], np.diag(a)[None])
        g2 = GaussianMixture([1.0], m2[None, :], np.diag(b)[None])
        return frechet_distance(g1 if samples is None else samples, g2)

    def check(res):
        if samples is not None:
            x = np.asarray(samples, dtype=np.float64)
            mx = x.mean(0)
            cx = np.atleast_2d(np.cov(x.T))
            # reference: mpmath matrix square roots (eigen-decomposition of the symmetric cx)
            ev, vec = mp.eigsy(mp.matrix(cx.tolist()))
            root = vec * mp.diag([mp.sqrt(max(v, 0)) for v in ev]) * vec.T
            inner = root * mp.diag([mp.mpf(float(v)) for v in b]) * root
            ev2 = mp.eigsy((inner + inner.T) / 2)[0]
            cross = mp.fsum(mp.sqrt(max(v, 0)) for v in ev2)
            ref = mp.fsum((mp.mpf(float(mx[i])) - mp.mpf(float(m2[i]))) ** 2 for i in range(d)) + \
                mp.fsum(cx[i, i] for i in range(d)) + mp.fsum(b) - 2 * cross
            ref = max(float(ref), 0.0)
            # the sample mean of n points errs by n u max|x| (a sum of n terms), the covariance likewise
            mag = x.shape[0] * (float(np.sum((mx - m2) ** 2) + np.trace(np.abs(cx)) + b.sum()) + 2 * float(
                np.abs(mx - m2).sum()) * float(np.abs(x).max() + np.abs(m2).max()))
            return compare(np.array([res]), [ref], 64 * d * d * U[F64] * mag * np.linalg.cond(cx) + 1e-300,
                           "frechet_distance (samples)")
        ref = mp.fsum((mp.mpf(float(m1[i])) - mp.mpf(float(m2[i]))) ** 2 for i in range(d)) + mp.fsum(
            (mp.sqrt(mp.mpf(float(a[i]))) - mp.sqrt(mp.mpf(float(b[i])))) ** 2 for i in range(d))
        # rounding: the mean term's difference errs by u(|m1| + |m2|), the trace term by c d u (tr S1 + tr S2)
        # (eigen-decompositions are backward stable): the second dominates wherever the covariances do
        mag = 2 * float(np.abs(m1 - m2).sum()) * float(np.abs(m1).max() + np.abs(m2).max()) + float(
            np.sum((m1 - m2) ** 2)) + float(a.sum() + b.sum()) * max(float(a.max() / a.min()), 1.0)
        return compare(np.array([res]), [mp_f(ref)], 64 * d * d * U[F64] * mag + 1e-300, "frechet_distance (laws)")

    samples_code = "g1" if samples is None else (lit(samples) if not isinstance(samples, str) else repr(samples))
    code = ("import numpy as np, torch\nfrom toy_models import GaussianMixture\nfrom verify.metrics import "
            f"frechet_distance\ng1 = GaussianMixture([1.0], {lit(m1[None, :])}, {lit(np.diag(a)[None])})\n"
            f"g2 = GaussianMixture([1.0], {lit(m2[None, :])}, {lit(np.diag(b)[None])})\n"
            f"print(frechet_distance({samples_code}, g2))")
    return Case("metrics", f"frechet_distance {kind} d={d}", thunk, Oracle(check if accept else None, bad), code)


# ================================================================================================================
# Checkpoints
# ================================================================================================================
def checkpoint_dir() -> pathlib.Path:
    import toy_models

    return pathlib.Path(toy_models.__file__).resolve().parent.parent / "checkpoints"


def _ck(stem: pathlib.Path, ext: str) -> pathlib.Path:
    """``stem`` + ``ext`` (names such as ``ring2d_p0.50`` have a dot that is not a suffix)."""
    return stem.parent / (stem.name + ext)


def shipped_checkpoints() -> list[pathlib.Path]:
    root = checkpoint_dir()
    stems = (p.parent / p.name[: -len(".safetensors")] for p in root.rglob("*.safetensors"))
    return sorted(s for s in stems if _ck(s, ".json").is_file())


_TMP_ROOT: list[pathlib.Path] = []


def _tmp_dir() -> pathlib.Path:
    if not _TMP_ROOT:
        _TMP_ROOT.append(pathlib.Path(tempfile.mkdtemp(prefix="cfgtruth_fuzz_ckpt_")))
    return pathlib.Path(tempfile.mkdtemp(dir=_TMP_ROOT[0]))


def cleanup_tmp():
    for p in _TMP_ROOT:
        shutil.rmtree(p, ignore_errors=True)
    _TMP_ROOT.clear()


def _sha(path: pathlib.Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def gen_checkpoint(rng) -> Case:
    from safetensors.torch import load_file, save_file

    from toy_models.neural.checkpoint import load_checkpoint

    ships = shipped_checkpoints()
    src = ships[int(rng.integers(len(ships)))]
    kind = str(rng.choice(["verbatim"] * 3 + ["truncated", "truncated_rehash", "garbage", "garbage_rehash",
                                              "binary_card", "card_missing", "card_wrong_type", "nan_weights",
                                              "schedule_edit", "schedule_unknown", "card_list", "card_empty",
                                              "extra_field", "network_wrong_type", "tensors_wrong_type",
                                              "world_unknown", "missing_weights", "inf_weights"]))
    required = ["format", "world", "schedule", "network", "vocabulary", "tensors", "sha256"]
    field_pick = str(rng.choice(required))
    cut = float(rng.uniform(0.05, 0.95))
    seed = int(rng.integers(2**31))
    bad = ("path", "card")
    accept = False
    if kind in ("verbatim",):
        bad, accept = None, True
    elif kind == "extra_field":
        accept = True  # a card with one more (harmless) key: loading it or refusing (signed cards) are both fine

    def write() -> pathlib.Path:
        out = _tmp_dir() / src.name
        wsrc, csrc = _ck(src, ".safetensors"), _ck(src, ".json")
        wdst, cdst = _ck(out, ".safetensors"), _ck(out, ".json")
        shutil.copyfile(wsrc, wdst)
        shutil.copyfile(csrc, cdst)
        r = np.random.default_rng(seed)
        card = json.loads(csrc.read_text(encoding="utf-8"))

        def rewrite(c):
            cdst.write_text(json.dumps(c, indent=1) + "\n", encoding="utf-8")

        if kind in ("truncated", "truncated_rehash"):
            data = wsrc.read_bytes()
            wdst.write_bytes(data[: max(1, int(len(data) * cut))])
            if kind.endswith("rehash"):
                card["sha256"] = _sha(wdst)
                rewrite(card)
        elif kind in ("garbage", "garbage_rehash"):
            data = bytearray(wsrc.read_bytes())
            pos = int(r.integers(0, min(len(data), 4096)))
            data[pos:pos + 64] = r.integers(0, 256, 64, dtype=np.uint8).tobytes()
            wdst.write_bytes(bytes(data))
            if kind.endswith("rehash"):
                card["sha256"] = _sha(wdst)
                rewrite(card)
        elif kind == "binary_card":
            cdst.write_bytes(r.integers(0, 256, 512, dtype=np.uint8).tobytes())
        elif kind == "card_missing":
            card.pop(field_pick, None)
            rewrite(card)
        elif kind == "card_wrong_type":
            card[field_pick] = [1, 2, 3] if field_pick != "format" else 7
            rewrite(card)
        elif kind == "network_wrong_type":
            card["network"] = {**card["network"], "width": "wide"}
            rewrite(card)
        elif kind == "tensors_wrong_type":
            name0 = next(iter(card["tensors"]))
            card["tensors"][name0] = "float32"
            rewrite(card)
        elif kind == "card_list":
            cdst.write_text("[1, 2, 3]\n", encoding="utf-8")
        elif kind == "card_empty":
            cdst.write_text("", encoding="utf-8")
        elif kind in ("nan_weights", "inf_weights"):
            tensors = load_file(str(wsrc))
            name0 = sorted(tensors)[int(r.integers(len(tensors)))]
            t = tensors[name0].clone()
            t.view(-1)[0] = math.nan if kind == "nan_weights" else math.inf
            tensors[name0] = t
            save_file(tensors, str(wdst), metadata={"format": card.get("format", ""), "world": card.get("world", "")})
            card["sha256"] = _sha(wdst)
            rewrite(card)
        elif kind == "schedule_edit":
            card["schedule"] = "ve" if card["schedule"] != "ve" else "vp-linear"
            rewrite(card)
        elif kind == "schedule_unknown":
            card["schedule"] = "linear-ish"
            rewrite(card)
        elif kind == "extra_field":
            card["notes"] = "copied for a test"
            rewrite(card)
        elif kind == "world_unknown":
            card["world"] = "nowhere"
            rewrite(card)
        elif kind == "missing_weights":
            wdst.unlink()
        return out

    def thunk():
        return load_checkpoint(write())

    def check(den):
        ref = load_file(str(_ck(src, ".safetensors")))
        card = json.loads(_ck(src, ".json").read_text(encoding="utf-8"))
        state = den.network.state_dict()
        if set(state) != set(ref):
            return WRONG, "loaded tensor names differ from the shipped file"
        for k, v in ref.items():
            if not torch.equal(state[k].to(v.dtype), v):
                return WRONG, f"tensor {k} differs from the shipped file"
        if den.schedule.name != card["schedule"]:
            return WRONG, f"schedule {den.schedule.name} != card's {card['schedule']}"
        x = torch.zeros(3, den.dim)
        out = den.eps(x, 0.5, None)
        if not bool(torch.isfinite(out).all()):
            return NAN, "eps of the loaded network is not finite"
        return CORRECT, "loaded the shipped tensors and schedule"

    rel = src.relative_to(checkpoint_dir())
    code = ("# copy checkpoints/{}.safetensors and .json to /tmp/ck/, then apply: {}\n"
            "from toy_models.neural.checkpoint import load_checkpoint\n"
            "print(load_checkpoint('/tmp/ck/{}'))").format(rel, kind if kind != "card_missing" else
                                                            f"del card[{field_pick!r}]", src.name)
    return Case("load_checkpoint", f"load_checkpoint {kind} {rel}", thunk,
                Oracle(check if accept else None, bad), code)


# ================================================================================================================
# Registry and the known bugs
# ================================================================================================================
GENERATORS: dict[str, Callable[[np.random.Generator], Case]] = {
    "GaussianMixture()": gen_constructor,
    "noised": gen_noised,
    "given": gen_given,
    "log_prob": gen_log_prob,
    "score": gen_score,
    "class_posterior": gen_class_posterior,
    "grad_log_posterior": gen_grad_log_posterior,
    "sample": gen_sample,
    "schedules": gen_schedules,
    "parametrization": gen_parametrization,
    "AnalyticDenoiser": gen_denoiser,
    "cfg": gen_cfg,
    "classifier_guidance": gen_classifier_guidance,
    "negative_prompt": gen_negative_prompt,
    "compose": gen_compose,
    "rescale": gen_rescale,
    "threshold": gen_threshold,
    "samplers": gen_samplers,
    "exact_law": gen_exact_law,
    "tilted": gen_tilted,
    "metrics": gen_metrics,
    "load_checkpoint": gen_checkpoint,
}
APIS = list(GENERATORS)


def make_case(api: str, seed: int) -> Case:
    """The case of ``api`` drawn from ``seed`` (deterministic)."""
    rng = np.random.default_rng([seed, APIS.index(api)])
    return GENERATORS[api](rng)


def _known(api, desc, thunk, oracle, code):
    return Case(api, "known bug: " + desc, thunk, oracle, code, ("known",))


def known_bug_cases() -> list[Case]:
    """One case per bug found by the earlier trial (the @examples of tests/test_robustness.py)."""
    from toy_models import AnalyticDenoiser, GaussianMixture
    combiners = _rule_functions()

    cases = []
    # 1. a narrow component far from the origin: log_prob at the mean is 25.79, not 0.0
    p = MixParams(np.array([1.0]), np.array([[1e3, 1e3]]), np.array([np.eye(2) * 1e-12]), np.array([0]))

    def lp_check(res):
        pt = MixRef(p.w, p.mu, p.cov).point(p.mu[0])
        return compare(res, [mp_f(pt["log_p"])], C_SAFETY * U[F64] * (pt["T"][0] + abs(float(pt["log_p"])) + 1),
                       "log_prob at the mean")

    cases.append(_known("log_prob", "narrow component (1e-12 I) at (1e3, 1e3): log_prob at the mean",
                        lambda: make_gm(p).log_prob(torch.tensor([[1e3, 1e3]], dtype=F64)), Oracle(lp_check),
                        IMPORTS_GM + "gm = GaussianMixture([1.0], [[1e3, 1e3]], [[[1e-12, 0.0], [0.0, 1e-12]]])\n"
                        "print(gm.log_prob(torch.tensor([[1e3, 1e3]])))  # exact 25.79"))
    # 2. complex tensors lose their imaginary part
    cases.append(_known("GaussianMixture()", "complex means accepted (imaginary part dropped)",
                        lambda: GaussianMixture([1.0], torch.tensor([[1 + 2j]]), [[[1.0]]]), Oracle(None, ("means",)),
                        IMPORTS_GM + "print(GaussianMixture([1.0], torch.tensor([[1 + 2j]]), [[[1.0]]]).means)"))
    # 3. integer x to AnalyticDenoiser.eps
    q = MixParams(np.array([0.5, 0.5]), np.array([[-2.0], [2.0]]), np.array([[[1.0]], [[1.0]]]), np.array([0, 1]))

    def int_check(res):
        a, s = (float(v) for v in __import__("toy_models").get_schedule("vp-linear").alpha_sigma(0.5))
        cov_t = np.array([[[a * a + s * s]], [[a * a + s * s]]])
        ref = MixRef(q.w, a * q.mu, cov_t)
        want = [[mp_f(-mp.mpf(s) * ref.score_of(ref.point(np.array([v])), ref.point(np.array([v]))["r"])[0])]
                for v in (1.0, 3.0)]
        return compare(res, want, 1e-12, "eps of int x")

    cases.append(_known("AnalyticDenoiser", "integer x to eps returns an all-zero integer tensor",
                        lambda: AnalyticDenoiser(make_gm(q)).eps(torch.tensor([[1], [3]]), 0.5),
                        Oracle(int_check, ("x",)),
                        "import torch\nfrom toy_models import GaussianMixture, AnalyticDenoiser\n"
                        "den = AnalyticDenoiser(GaussianMixture([0.5, 0.5], [[-2.0], [2.0]], [[[1.0]], [[1.0]]]))\n"
                        "print(den.eps(torch.tensor([[1], [3]]), 0.5))"))
    # 4. aliasing: the caller's tensor mutated after construction moves mean()/sample()
    alias_params = MixParams(np.array([0.5, 0.5]), np.array([[0.0, 0.0], [1.0, 1.0]]), np.stack([np.eye(2)] * 2),
                             np.array([0, 1]))
    cases.append(_alias_case(np.random.default_rng(0), alias_params, F64, "alias_torch"))
    cases[-1].tags = ("known",)
    cases[-1].description = "known bug: " + cases[-1].description
    # 5. rescale at zero spread
    eg = torch.ones(2, 3, dtype=F64)
    ec = torch.tensor([[0.0, 1.0, 2.0], [1.0, -1.0, 0.5]], dtype=F64)
    xs = torch.zeros(2, 3, dtype=F64)

    def rescale_check(res):
        return compare(res, eg.numpy(), 1e-12, "rescale at zero spread (nothing to rescale)")

    cases.append(_known("rescale", "zero spread of the guided prediction gives inf/NaN",
                        lambda: combiners.rescale(eg, ec, 0.7, x=xs, alpha=0.8, sigma=0.6, space="eps"),
                        Oracle(rescale_check, ("eps_guided",)),
                        imports_g("rescale") + "print(rescale(torch.ones(2, 3, dtype=torch.float64), "
                        "torch.tensor([[0.0, 1.0, 2.0], "
                        "[1.0, -1.0, 0.5]], dtype=torch.float64), 0.7, x=torch.zeros(2, 3, dtype=torch.float64), "
                        "alpha=0.8, sigma=0.6, space='eps'))"))
    # 6. thresholding accepts a negative limit
    cases.append(_known("threshold", "static_threshold accepts limit = -1",
                        lambda: combiners.static_threshold(torch.ones(1, 2, dtype=F64), x=torch.ones(1, 2, dtype=F64),
                                                          alpha=0.5, sigma=0.5, limit=-1.0),
                        Oracle(None, ("limit",)),
                        imports_g("static_threshold") + "print(static_threshold(torch.ones(1, 2), x=torch.ones(1, 2), "
                        "alpha=0.5, "
                        "sigma=0.5, limit=-1.0))"))
    # 7. classifier guidance accepts a negative sigma
    cases.append(_known("classifier_guidance", "negative sigma accepted",
                        lambda: combiners.classifier_guidance(torch.ones(1, 2, dtype=F64), torch.ones(1, 2, dtype=F64),
                                                             -0.5, 2.0),
                        Oracle(None, ("sigma",)),
                        imports_g("classifier_guidance")
                        + "print(classifier_guidance(torch.ones(1, 2), torch.ones(1, 2), -0.5, 2.0))"))
    # 8. |x| ~ 1e155 gives NaN (the score is finite: -x / 1 for N(0, I)); the input policy allows the finite
    # answer or a refusal naming x (|x|^2 = 2e310 overflows float64, and log p(x) with it)
    cases.append(_known("score", "|x| ~ 1e155 gives NaN",
                        lambda: GaussianMixture([1.0], [[0.0, 0.0]], [np.eye(2)]).score(torch.tensor([[1e155, -1e155]],
                                                                                                    dtype=F64)),
                        Oracle(lambda r: compare(r, [[-1e155, 1e155]], 4 * U[F64] * 1e155, "score at 1e155"), ("x",)),
                        IMPORTS_GM + "print(GaussianMixture([1.0], [[0.0, 0.0]], [np.eye(2)])"
                        ".score(torch.tensor([[1e155, -1e155]])))"))
    # 9. sigma ~ 1e155 in noised: sigma^2 overflows; the refusal must name sigma, not alpha
    cases.append(_known("noised", "sigma = 1e155 blamed on alpha",
                        lambda: GaussianMixture([1.0], [[0.0]], [[[1.0]]]).noised(0.5, 1e155),
                        Oracle(None, ("sigma",)),
                        IMPORTS_GM + "print(GaussianMixture([1.0], [[0.0]], [[[1.0]]]).noised(0.5, 1e155))"))
    # 10. covariances ~ 1e-310 give NaN: log N(mu; mu, 1e-310) = -0.5 log(2 pi 1e-310) = 355.98...
    def sub_check(res):
        want = mp_f(-mp.log(2 * mp.pi * mp.mpf(1e-310)) / 2)
        return compare(res, [want], 64 * U[F64] * abs(want), "log_prob at the mean, covariance 1e-310")

    cases.append(_known("GaussianMixture()", "covariance 1e-310: log_prob at the mean is NaN",
                        lambda: GaussianMixture([1.0], [[0.0]], [[[1e-310]]]).log_prob(torch.zeros(1, 1, dtype=F64)),
                        Oracle(sub_check, ("covariances",)),
                        IMPORTS_GM + "print(GaussianMixture([1.0], [[0.0]], [[[1e-310]]])"
                        ".log_prob(torch.zeros(1, 1, dtype=torch.float64)))"))
    return cases
