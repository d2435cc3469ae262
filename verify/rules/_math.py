r"""Numerics shared by the rules: validating the predictions a rule combines, overflow-safe linear combination, the
two guidance-scale conventions, and per-sample norms.

Inputs follow the input policy (``docs/input-policy.md``, :mod:`toy_models._checks`): the predictions a rule
combines are real tensors of exactly one shape (no broadcasting of ``[N, 1]`` against ``[N, d]``) and one dtype,
float64 or float32, which is also the output's (integers converted exactly; complex, bool, float16 refused with
``TypeError``; NaN and infinity with ``ValueError``); strengths and weights are finite reals; every refusal starts
with the argument's name. Predictions near the dtype's largest value give the finite answer even where an
intermediate (``eps_c - eps_u``) overflows, or a refusal where the answer itself does: never inf or NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from toy_models import parametrization as param
from toy_models._checks import Tensorish, as_real_tensor, as_scalar, check_same_shape, real_dtype_of

__all__ = ["guidance_scale_from", "predictions", "convert_named", "combine_homogeneous", "weighted_sum", "weight_list",
           "row_dot", "row_norm"]

Tensor = torch.Tensor


def guidance_scale_from(*, w: float | None = None, guidance_scale: float | None = None) -> float:
    """The diffusers ``guidance_scale`` from exactly one of ``w`` (Ho & Salimans) or ``guidance_scale``:
    ``guidance_scale = 1 + w``. Each is a finite real number (a one-element tensor or array is read as one)."""
    if (w is None) == (guidance_scale is None):
        raise ValueError("w, guidance_scale: give exactly one (w = guidance_scale - 1)")
    if guidance_scale is not None:
        return as_scalar(guidance_scale, "guidance_scale")
    return 1.0 + as_scalar(w, "w")


def predictions(named: dict[str, Tensorish]) -> list[Tensor]:
    """The predictions a rule combines, under the input policy: real tensors of one dtype (float64 or float32,
    kept; integers converted exactly to it, float64 if none is floating) and exactly one shape (no broadcasting).
    Not copied: a graph the caller built is kept."""
    dtypes = {name: real_dtype_of(value, None) for name, value in named.items()}
    floating = [(name, dt) for name, dt in dtypes.items() if dt is not None]
    for name, dt in floating[1:]:
        if dt != floating[0][1]:
            raise TypeError(f"{name}: dtype {dt} differs from {floating[0][0]}'s {floating[0][1]}; the predictions "
                            f"must share one dtype (convert one explicitly)")
    dtype = floating[0][1] if floating else torch.float64
    tensors = {name: as_real_tensor(value, name, dtype, copy=False) for name, value in named.items()}
    check_same_shape(tensors)
    return list(tensors.values())


def combine_homogeneous(formula: Callable[..., Tensor], tensors: list[Tensor], name: str) -> Tensor:
    """``formula(*tensors)`` (linear, homogeneous of degree 1) with no spurious overflow: huge-but-finite
    predictions give the finite answer, or a refusal naming ``name`` where the answer itself overflows (see
    :func:`toy_models.parametrization._homogeneous`)."""
    return param._homogeneous(formula, tensors, name, "the guided prediction")


def weighted_sum(weights: list[float], tensors: list[Tensor], name: str) -> Tensor:
    r""":math:`\sum_i a_i y_i` in the given order, overflow-safe (:func:`combine_homogeneous`)."""

    def formula(*preds):
        out = None
        for weight, pred in zip(weights, preds, strict=True):
            term = weight * pred
            out = term if out is None else out + term
        return out

    return combine_homogeneous(formula, tensors, name)


def weight_list(weights, name: str = "weights") -> list[float]:
    """A 1-D sequence (or tensor/array) of finite reals, as Python floats."""
    if isinstance(weights, (str, bytes)):
        raise TypeError(f"{name}: expected a sequence of numbers, got {type(weights).__name__} {weights!r}")
    try:
        values = as_real_tensor(weights if isinstance(weights, Tensor) else list(weights), name, copy=False)
    except TypeError:
        raise TypeError(f"{name}: expected a sequence of numbers, got {type(weights).__name__}") from None
    if values.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of numbers, got shape {list(values.shape)}")
    return [float(v) for v in values]


def _flat(y: Tensor) -> Tensor:
    return y.reshape(y.shape[0], -1)


def row_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product over every feature axis, ``[N, 1, ...]`` broadcastable against ``a``."""
    out = (_flat(a) * _flat(b)).sum(dim=1)
    return out.reshape(-1, *([1] * (a.ndim - 1)))


def row_norm(a: Tensor) -> Tensor:
    """Per-sample Euclidean norm over every feature axis (``torch.linalg.vector_norm``), ``[N, 1, ...]``. Its
    squares can overflow or underflow (inf for a row of 1e200, 0 for one of 1e-200, in float64): callers that
    take rows of any magnitude scale them by a power of two first (:func:`verify.rules.apg.unit_rows`)."""
    out = torch.linalg.vector_norm(_flat(a), dim=1)
    return out.reshape(-1, *([1] * (a.ndim - 1)))


def convert_named(pred: Tensor, name: str, source: str, target: str, *, x: Tensor, alpha, sigma) -> Tensor:
    """:func:`toy_models.parametrization.convert` of an already validated prediction, its refusals naming ``name``
    where they blame the prediction (an overflow) rather than ``alpha``/``sigma``."""
    try:
        return param.convert(pred, source, target, x=x, alpha=alpha, sigma=sigma)
    except ValueError as err:
        message = str(err)
        if message.startswith("pred:"):
            raise ValueError(f"{name}:{message[len('pred:'):]}") from None
        raise
