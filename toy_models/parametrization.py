r"""Conversions between the four parametrisations of a denoiser: eps, score, x0 and v.

This is the only module where these formulas are written (docs/conventions.md). With
:math:`x_t = \alpha x_0 + \sigma \varepsilon`:

.. math::
    s = \nabla_x \log p_t(x) = -\varepsilon/\sigma, \qquad
    \hat x_0 = (x - \sigma \hat\varepsilon)/\alpha = (x + \sigma^2 s)/\alpha \;\text{(Tweedie)}, \qquad
    v = \alpha \varepsilon - \sigma x_0 \;\text{(Salimans \& Ho 2022, eq. 6)}.

For any :math:`\alpha, \sigma` (VP or not) the pair :math:`(x, v)` gives back
:math:`\varepsilon = (\alpha v + \sigma x)/(\alpha^2 + \sigma^2)` and
:math:`x_0 = (\alpha x - \sigma v)/(\alpha^2 + \sigma^2)`.

Where precision is lost
-----------------------
* ``eps -> x0`` divides :math:`x - \sigma\varepsilon` by :math:`\alpha`. As :math:`\alpha \to 0` the numerator is a
  difference of two nearly equal terms (:math:`x \approx \sigma \varepsilon`); its rounding error
  :math:`u\,|x|` is amplified by :math:`1/\alpha`, so the relative error of :math:`\hat x_0` is about
  :math:`u\,|x| / (\alpha\,|x_0|)`. At ``t = 1`` of vp-linear (:math:`\alpha \approx 6.6\times10^{-3}`) that is
  a factor 150 over the input rounding; on vp-cosine and rectified flow it is unbounded. The v route
  (``v -> x0``) has no such division and is the one to use near pure noise.
* ``eps <-> score`` divides or multiplies by :math:`\sigma`; as :math:`\sigma \to 0` the score grows like
  :math:`1/\sigma` and ``score -> eps`` is exact to rounding, while ``eps -> score`` of a *learned* eps amplifies
  its error by :math:`1/\sigma`.
* ``x0 -> eps`` divides by :math:`\sigma`: at low noise (:math:`\sigma \to 0`) the same cancellation as above,
  with the roles of signal and noise swapped.

Inputs (the input policy of ``docs/input-policy.md``, through :mod:`toy_models._checks`)
-----------------------------------------------------------------------------------------
* The prediction and ``x`` are real tensors (or arrays) of **one shape** (no broadcasting of ``[N, 1]`` against
  ``[N, d]``) and one dtype: float64 or float32, which is also the output's dtype. Integers are converted exactly
  (to the other argument's dtype when that one is floating, else float64); complex, bool, float16/bfloat16 and
  meta tensors are refused with ``TypeError`` (``ValueError`` for meta); NaN and infinity with ``ValueError``.
  Float32 against float64 is refused (``TypeError``): convert one explicitly.
* ``alpha`` and ``sigma`` are real numbers or tensors whose shape broadcasts into the prediction's without changing
  it (``[]``, ``[N, 1]``). Both are scales of the forward process, so a negative or non-finite value is refused
  everywhere; zero is refused only where the formula divides by it (``sigma`` in ``eps -> score`` and ``x0 -> eps``,
  ``alpha`` in ``eps -> x0`` and ``eps -> v``, both together in ``v -> *``). A formula that only multiplies by a
  coefficient keeps its exact value at zero: ``score -> eps`` gives 0 at :math:`\sigma = 0`, ``v -> x0`` gives
  :math:`x/\alpha`, ``x0 -> eps`` gives :math:`x/\sigma` at :math:`\alpha = 0`.
* Nothing returns NaN or infinity for finite inputs. If a formula's intermediate overflows while its result does
  not (``(alpha^2 + sigma^2) eps`` at ``|eps|`` near the dtype's maximum), the prediction and ``x`` are scaled by a
  power of two per element (exact), converted and scaled back, so the result is bit for bit what exact-range
  arithmetic gives. A result that itself overflows the dtype is refused, naming the prediction. ``alpha`` and
  ``sigma`` so large that :math:`\alpha^2 + \sigma^2` overflows are refused.
* Inputs are never modified and the result never aliases them. A prediction that carries an autograd graph keeps it
  (the conversions are differentiable).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._checks import Tensorish, all_finite, as_real_tensor, real_dtype_of
from ._pow2 import ldexp

__all__ = [
    "PARAMETRIZATIONS",
    "convert",
    "eps_to_score",
    "eps_to_velocity",
    "eps_to_v",
    "eps_to_x0",
    "score_to_eps",
    "v_to_eps",
    "v_to_x0",
    "velocity_to_eps",
    "x0_to_eps",
    "x0_to_v",
]

Coefficient = float | torch.Tensor
PARAMETRIZATIONS = ("eps", "score", "x0", "v")
Tensor = torch.Tensor


# ------------------------------------------------------------------------------------------------------------
# Validation (the input policy) and overflow-safe evaluation
# ------------------------------------------------------------------------------------------------------------
def _prediction(pred: Tensorish, name: str, x: Tensorish | None = None) -> tuple[Tensor, Tensor | None]:
    """``pred`` (and ``x``) as finite real tensors of one dtype and one shape; not copied (differentiable).

    The dtype is the floating one among them (float64 when neither is floating); float32 against float64 is
    refused, naming ``x``."""
    dtype_pred = real_dtype_of(pred, None)
    dtype_x = real_dtype_of(x, None) if x is not None else None
    if dtype_pred is not None and dtype_x is not None and dtype_pred != dtype_x:
        raise TypeError(f"x: dtype {dtype_x} differs from {name}'s {dtype_pred}; convert one explicitly (no silent "
                        f"promotion)")
    dtype = dtype_pred or dtype_x or torch.float64
    pred_t = as_real_tensor(pred, name, dtype, copy=False)
    if x is None:
        return pred_t, None
    x_t = as_real_tensor(x, "x", dtype, copy=False)
    if tuple(x_t.shape) != tuple(pred_t.shape):
        raise ValueError(f"x: shape {list(x_t.shape)} differs from {name}'s {list(pred_t.shape)}; shapes must match "
                         f"exactly (no broadcasting)")
    return pred_t, x_t


def _coefficient(value: Coefficient, name: str, like: Tensor, *, divides: bool) -> Coefficient:
    """``alpha`` or ``sigma``: a finite, non-negative real number (kept a Python float) or tensor (cast to the
    prediction's dtype) of one value or one value per row (``[N, 1]`` for an ``[N, d]`` prediction: a noise level is
    constant over the features); zero refused where the formula divides by it."""
    if isinstance(value, (float, int)) and not isinstance(value, bool):
        number = float(value)
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(f"{name}: must be finite, got {value!r}")
        coef: Coefficient = number
        low, has_zero = number, number == 0
    else:
        tensor = as_real_tensor(value, name, like.dtype, copy=False)
        per_row = like.ndim >= 1 and tuple(tensor.shape) == (like.shape[0],) + (1,) * (like.ndim - 1)
        single = tensor.numel() == 1 and tensor.ndim <= max(like.ndim, 1)
        if not (per_row or single):
            raise ValueError(f"{name}: shape {list(tensor.shape)} is neither one value nor one per row "
                             f"{[like.shape[0]] + [1] * (like.ndim - 1) if like.ndim else []} of the prediction "
                             f"{list(like.shape)}")
        coef = tensor
        detached = tensor.detach()
        low = float(detached.min()) if detached.numel() else 0.0
        has_zero = bool((detached == 0).any())
    if low < 0:
        raise ValueError(f"{name}: must be >= 0 (a scale of the forward process x = alpha x0 + sigma eps), got "
                         f"{low!r}")
    if divides and has_zero:
        raise ValueError(f"{name}: must be > 0 for this conversion (it divides by {name}), got 0")
    return coef


def _norm2(alpha: Coefficient, sigma: Coefficient, *, divides: bool) -> Coefficient:
    """:math:`\\alpha^2 + \\sigma^2` of validated coefficients, refused where it overflows or (when divided by) is 0."""
    s2 = alpha * alpha + sigma * sigma
    values = s2 if isinstance(s2, Tensor) else torch.tensor(s2, dtype=torch.float64)
    if not bool(torch.isfinite(values).all()):
        raise ValueError("alpha, sigma: alpha^2 + sigma^2 overflows; the coefficients are too large for this dtype")
    if divides and bool((values == 0).any()):
        raise ValueError("alpha^2 + sigma^2: must be > 0 for this conversion (it divides by alpha^2 + sigma^2); "
                         "alpha and sigma are both 0")
    return s2


def _homogeneous(formula: Callable[..., Tensor], tensors: list[Tensor], name: str, what: str) -> Tensor:
    """``formula(*tensors)``, elementwise, linear and homogeneous of degree 1 in ``tensors`` (all of one shape), without
    spurious overflow.

    The direct evaluation is returned when it is finite (the usual case: no extra work, bit for bit the formula).
    Otherwise an intermediate overflowed: every element of every tensor is divided by the same power of two near
    the largest of their magnitudes at that element (exact, a change of exponent), the formula applied, and the
    result multiplied back (exact again, unless the result itself overflows: then it is refused, naming ``name``).
    Scaling by a power of two commutes with rounding, so the answer is what the formula gives in exact-range
    arithmetic. Also used by the rule functions of :mod:`verify.rules`."""
    out = formula(*tensors)
    if all_finite(out):
        return out
    mag = tensors[0].detach().abs()
    for tensor in tensors[1:]:
        mag = torch.maximum(mag, tensor.detach().abs())
    exponent = torch.frexp(mag).exponent  # torch.ldexp scales exactly even where 2**exponent is not representable
    out = ldexp(formula(*(ldexp(tensor, -exponent) for tensor in tensors)), exponent)
    if not bool(torch.isfinite(out.detach()).all()):
        raise ValueError(f"{name}: {what} overflows {out.dtype} (largest finite magnitude "
                         f"{torch.finfo(out.dtype).max:.3g})")
    return out


def _evaluate(formula: Callable, pred: Tensor, x: Tensor | None, name: str, target: str) -> Tensor:
    """A conversion by :func:`_homogeneous` (the prediction and x scaled together)."""
    what = f"the {target} it converts to (the prediction, or 1/alpha, 1/sigma, is too large)"
    if x is None:
        return _homogeneous(lambda p: formula(p, None), [pred], name, what)
    return _homogeneous(formula, [pred, x], name, what)


# ------------------------------------------------------------------------------------------------------------
# The formulas (on validated inputs) and the public conversions
# ------------------------------------------------------------------------------------------------------------
def _kernel(source: str, target: str, alpha: Coefficient, sigma: Coefficient) -> Callable:
    """The formula ``(pred, x) -> converted`` for one direct step, on validated coefficients."""
    if (source, target) == ("eps", "score"):
        return lambda p, x: -p / sigma
    if (source, target) == ("score", "eps"):
        return lambda p, x: -sigma * p
    if (source, target) == ("eps", "x0"):
        return lambda p, x: (x - sigma * p) / alpha
    if (source, target) == ("x0", "eps"):
        return lambda p, x: (x - alpha * p) / sigma
    if (source, target) == ("eps", "v"):
        s2 = _norm2(alpha, sigma, divides=False)
        return lambda p, x: (s2 * p - sigma * x) / alpha
    if (source, target) == ("x0", "v"):
        s2 = _norm2(alpha, sigma, divides=False)
        return lambda p, x: (alpha * x - s2 * p) / sigma
    if (source, target) == ("v", "eps"):
        s2 = _norm2(alpha, sigma, divides=True)
        return lambda p, x: (alpha * p + sigma * x) / s2
    if (source, target) == ("v", "x0"):
        s2 = _norm2(alpha, sigma, divides=True)
        return lambda p, x: (alpha * x - sigma * p) / s2
    raise AssertionError((source, target))  # pragma: no cover


#: which coefficients each direct step divides by (zero refused there)
_DIVIDES = {("eps", "score"): ("sigma",), ("score", "eps"): (), ("eps", "x0"): ("alpha",), ("x0", "eps"): ("sigma",),
            ("eps", "v"): ("alpha",), ("x0", "v"): ("sigma",), ("v", "eps"): (), ("v", "x0"): ()}


def _step(pred: Tensorish, name: str, source: str, target: str, x: Tensorish | None, alpha: Coefficient | None,
          sigma: Coefficient) -> Tensor:
    """Validate and apply one direct formula (the public functions)."""
    p, xt = _prediction(pred, name, x)
    divides = _DIVIDES[(source, target)]
    a = None if alpha is None else _coefficient(alpha, "alpha", p, divides="alpha" in divides)
    s = _coefficient(sigma, "sigma", p, divides="sigma" in divides)
    return _evaluate(_kernel(source, target, a, s), p, xt, name, target)


def eps_to_score(eps: Tensorish, sigma: Coefficient) -> Tensor:
    r""":math:`s = -\varepsilon/\sigma`."""
    return _step(eps, "eps", "eps", "score", None, None, sigma)


def score_to_eps(score: Tensorish, sigma: Coefficient) -> Tensor:
    r""":math:`\varepsilon = -\sigma s` (0 at :math:`\sigma = 0`)."""
    return _step(score, "score", "score", "eps", None, None, sigma)


def eps_to_x0(x: Tensorish, eps: Tensorish, alpha: Coefficient, sigma: Coefficient) -> Tensor:
    r""":math:`\hat x_0 = (x - \sigma\varepsilon)/\alpha`; loses precision as :math:`\alpha \to 0` (see the
    module docstring)."""
    return _step(eps, "eps", "eps", "x0", x, alpha, sigma)


def x0_to_eps(x: Tensorish, x0: Tensorish, alpha: Coefficient, sigma: Coefficient) -> Tensor:
    r""":math:`\varepsilon = (x - \alpha x_0)/\sigma`; loses precision as :math:`\sigma \to 0`."""
    return _step(x0, "x0", "x0", "eps", x, alpha, sigma)


def eps_to_v(x: Tensorish, eps: Tensorish, alpha: Coefficient, sigma: Coefficient) -> Tensor:
    r""":math:`v = \alpha\varepsilon - \sigma x_0 = ((\alpha^2 + \sigma^2)\varepsilon - \sigma x)/\alpha`."""
    return _step(eps, "eps", "eps", "v", x, alpha, sigma)


def x0_to_v(x: Tensorish, x0: Tensorish, alpha: Coefficient, sigma: Coefficient) -> Tensor:
    r""":math:`v = (\alpha x - (\alpha^2 + \sigma^2) x_0)/\sigma`: no division by :math:`\alpha`, so exact at
    :math:`\alpha = 0` (:math:`v = -x_0` there on a VP schedule)."""
    return _step(x0, "x0", "x0", "v", x, alpha, sigma)


def v_to_eps(x: Tensorish, v: Tensorish, alpha: Coefficient, sigma: Coefficient) -> Tensor:
    r""":math:`\varepsilon = (\alpha v + \sigma x)/(\alpha^2 + \sigma^2)`."""
    return _step(v, "v", "v", "eps", x, alpha, sigma)


def v_to_x0(x: Tensorish, v: Tensorish, alpha: Coefficient, sigma: Coefficient) -> Tensor:
    r""":math:`x_0 = (\alpha x - \sigma v)/(\alpha^2 + \sigma^2)`: stable at :math:`\alpha \to 0`."""
    return _step(v, "v", "v", "x0", x, alpha, sigma)


def _route(source: str, target: str) -> list[tuple[str, str]]:
    """The direct steps ``convert`` takes: through eps, except v <-> x0 (direct, stable as alpha -> 0)."""
    if source == target:
        return []
    if (source, target) in (("v", "x0"), ("x0", "v")) or "eps" in (source, target):
        return [(source, target)]
    return [(source, "eps"), ("eps", target)]


def convert(pred: Tensorish, source: str, target: str, *, x: Tensorish, alpha: Coefficient,
            sigma: Coefficient) -> Tensor:
    """Convert a prediction between any two of ``"eps"``, ``"score"``, ``"x0"``, ``"v"``.

    Routes through eps, except ``v -> x0`` and ``x0 -> v``, which use the direct formulas (stable as
    alpha -> 0, where the eps route divides by alpha). ``x`` is required and checked (shape and dtype of ``pred``)
    even where the route does not use it. ``source == target`` returns a copy.
    """
    for name, kind in (("source", source), ("target", target)):
        if not isinstance(kind, str) or kind not in PARAMETRIZATIONS:
            raise ValueError(f"{name}: unknown parametrisation {kind!r}; choose one of {PARAMETRIZATIONS}")
    p, xt = _prediction(pred, "pred", x)
    steps = _route(source, target)
    divides = {c for step in steps for c in _DIVIDES[step]}
    a = _coefficient(alpha, "alpha", p, divides="alpha" in divides)
    s = _coefficient(sigma, "sigma", p, divides="sigma" in divides)
    if not steps:
        return p.clone()
    kernels = [_kernel(src, tgt, a, s) for src, tgt in steps]

    def formula(q: Tensor, xx: Tensor | None) -> Tensor:
        for kernel in kernels:
            q = kernel(q, xx)
        return q

    return _evaluate(formula, p, xt, "pred", target)


# ------------------------------------------------------------------------------------------------------------
# The probability-flow velocity (what flow-matching models predict), which also needs the schedule's f and g^2
# ------------------------------------------------------------------------------------------------------------
def _velocity_coefficients(sigma: Coefficient, drift: Coefficient, diffusion_squared: Coefficient, like: Tensor
                           ) -> tuple[Coefficient, Coefficient]:
    """``(f, g^2 / (2 sigma))`` validated: sigma > 0, g^2 > 0, f any finite real (one value or one per row)."""
    s = _coefficient(sigma, "sigma", like, divides=True)
    g2 = _coefficient(diffusion_squared, "diffusion_squared", like, divides=True)
    if isinstance(drift, (float, int)) and not isinstance(drift, bool):
        f: Coefficient = float(drift)
        if f != f or f in (float("inf"), float("-inf")):
            raise ValueError(f"drift: must be finite, got {drift!r}")
    else:
        f = as_real_tensor(drift, "drift", like.dtype, copy=False)
    gain = g2 / (2.0 * s)
    gain_values = gain if isinstance(gain, Tensor) else torch.tensor(gain, dtype=torch.float64)
    if not bool(torch.isfinite(gain_values).all()):
        raise ValueError("diffusion_squared, sigma: g^2 / (2 sigma) overflows")
    return f, gain


def eps_to_velocity(x: Tensorish, eps: Tensorish, sigma: Coefficient, drift: Coefficient,
                    diffusion_squared: Coefficient) -> Tensor:
    r"""The probability-flow velocity :math:`u = dx/dt = f x - \tfrac{g^2}{2} s = f x + \frac{g^2}{2\sigma}
    \varepsilon` (Song et al. 2021, eq. 13), with the forward SDE's :math:`f = d\log\alpha/dt` and
    :math:`g^2 = d\sigma^2/dt - 2f\sigma^2` (``Schedule.drift``, ``Schedule.diffusion_squared``). It equals
    :math:`\dot\alpha\hat x_0 + \dot\sigma\hat\varepsilon`; on rectified flow (:math:`\alpha = 1 - t`,
    :math:`\sigma = t`) it is the flow-matching target :math:`\hat\varepsilon - \hat x_0` (Lipman et al. 2023).
    ``sigma`` and ``diffusion_squared`` > 0."""
    p, xt = _prediction(eps, "eps", x)
    f, gain = _velocity_coefficients(sigma, drift, diffusion_squared, p)
    return _homogeneous(lambda e, xx: f * xx + gain * e, [p, xt], "eps", "the velocity it converts to")


def velocity_to_eps(x: Tensorish, velocity: Tensorish, sigma: Coefficient, drift: Coefficient,
                    diffusion_squared: Coefficient) -> Tensor:
    r""":math:`\varepsilon = \frac{2\sigma}{g^2}(u - f x)`, the inverse of :func:`eps_to_velocity`."""
    p, xt = _prediction(velocity, "velocity", x)
    f, gain = _velocity_coefficients(sigma, drift, diffusion_squared, p)
    return _homogeneous(lambda u, xx: (u - f * xx) / gain, [p, xt], "velocity", "the eps it converts to")
