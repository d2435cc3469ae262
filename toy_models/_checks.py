"""The input policy of cfgtruth, written once and used by every public entry point.

Every refusal is a ``TypeError`` (the value is of the wrong *kind*) or a ``ValueError`` (right kind, wrong
*value*), and its message starts with the name of the argument at fault.

The rules, the same everywhere:

* **Real numbers only.** Complex, bool, string and object arrays are refused with ``TypeError``: converting them
  would silently drop an imaginary part or turn ``True`` into ``1.0``.
* **Integers are converted exactly.** An integer array or Python ``int`` is converted to the compute dtype when
  every entry is exactly representable there (``|n| <= 2**53`` in float64, ``2**24`` in float32); otherwise it is
  refused. The result is a floating tensor of the compute dtype, never an integer tensor.
* **float64 and float32 only.** float16 and bfloat16 carry 11 and 8 significant bits: every tolerance of the ground
  truth would have to be re-derived for them, so they are refused with a ``TypeError`` that says so; convert
  explicitly (``x.double()``) if the rounding of the input is acceptable.
* **No meta or sparse tensors** (they hold no values); tensors on another device are moved to the CPU.
* **Finite values only.** NaN and infinity are refused with ``ValueError``.
* **Copies, never references.** Parameters that an object keeps (means, covariances, weights ...) are copied, so a
  caller who changes their array afterwards does not move the object. Points that are only evaluated are not kept,
  so they are not copied; nothing here writes into them.
* **Magnitudes.** What overflows is refused where it is detected, with the argument's name (see
  :func:`check_magnitude`); nothing returns NaN for a finite input.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch

__all__ = ["Tensorish", "as_tensor", "as_real_tensor", "check_finite", "all_finite", "check_points", "as_scalar",
           "as_int", "check_magnitude", "check_same_shape", "check_generator", "real_dtype_of"]

Tensorish = Any  # array-like, number or torch.Tensor

#: the floating dtypes the ground truth computes in; everything else is converted by the rules above or refused
COMPUTE_DTYPES = (torch.float64, torch.float32)
_LOW_PRECISION = (torch.float16, torch.bfloat16)
#: largest integer magnitude that every integer up to it is exactly representable in the dtype (2**(mantissa+1))
_EXACT_INT = {torch.float64: 2**53, torch.float32: 2**24}


def _from_numpy(arr: np.ndarray, name: str) -> torch.Tensor:
    """A tensor from a numpy array of a real kind, refusing complex, bool, string and object arrays."""
    kind = arr.dtype.kind
    if kind == "c":
        raise TypeError(f"{name}: complex values are not accepted (got dtype {arr.dtype}); pass the real part "
                        f"explicitly if that is what is meant")
    if kind == "b":
        raise TypeError(f"{name}: bool values are not numbers here (got dtype {arr.dtype})")
    if kind in "USV":
        raise TypeError(f"{name}: expected numbers, got strings or bytes (dtype {arr.dtype})")
    if kind == "O":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name}: cannot be read as an array of real numbers ({err})") from None
    elif kind in "iu":
        # integers go through int64 (exact); anything beyond 2**53 is refused in _convert or here
        if arr.size and max(abs(int(arr.min())), abs(int(arr.max()))) > _EXACT_INT[torch.float64]:
            raise ValueError(f"{name}: integer values beyond 2**53 are not exactly representable in float64")
        arr = arr.astype(np.int64)
    elif kind != "f":
        raise TypeError(f"{name}: cannot be read as an array of real numbers (dtype {arr.dtype})")
    # a native-byte-order copy: the caller's array is never shared
    return torch.from_numpy(np.array(arr, dtype=arr.dtype.newbyteorder("="), copy=True))


def _read(value: Tensorish, name: str) -> torch.Tensor:
    """The caller's value as a tensor (not yet converted), refusing what holds no real numbers."""
    if isinstance(value, torch.Tensor):
        tensor = value
    elif isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: a bool is not a number here (got {value!r})")
    elif isinstance(value, complex):
        raise TypeError(f"{name}: complex values are not accepted (got {value!r})")
    elif value is None:
        raise TypeError(f"{name}: expected numbers, got None")
    elif isinstance(value, (str, bytes)):
        raise TypeError(f"{name}: expected numbers, got {type(value).__name__} {value!r}")
    else:
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError) as err:  # ragged nested lists, unconvertible objects
            raise TypeError(f"{name}: cannot be read as an array of real numbers ({err})") from None
        tensor = _from_numpy(arr, name)
    if tensor.is_meta:
        raise ValueError(f"{name}: is a meta tensor and holds no values")
    if tensor.layout != torch.strided:
        raise TypeError(f"{name}: expected a dense tensor, got layout {tensor.layout}")
    if tensor.is_complex():
        raise TypeError(f"{name}: complex values are not accepted (got dtype {tensor.dtype}); pass the real part "
                        f"explicitly if that is what is meant")
    if tensor.dtype == torch.bool:
        raise TypeError(f"{name}: bool values are not numbers here (got dtype {tensor.dtype})")
    if tensor.dtype in _LOW_PRECISION:
        raise TypeError(f"{name}: {tensor.dtype} is not accepted (11 or 8 significant bits; the ground truth's "
                        f"tolerances are derived for float32 and float64); convert explicitly, e.g. x.double()")
    return tensor


def real_dtype_of(value: Tensorish, default: torch.dtype = torch.float64) -> torch.dtype:
    """The compute dtype a value asks for: its own dtype if float32/float64, else ``default``."""
    if isinstance(value, torch.Tensor) and value.dtype in COMPUTE_DTYPES:
        return value.dtype
    if isinstance(value, np.ndarray) and value.dtype == np.float32:
        return torch.float32
    return default


def _convert(tensor: torch.Tensor, name: str, dtype: torch.dtype) -> torch.Tensor:
    """Cast to ``dtype`` by the rules of the module docstring (integers exactly or not at all)."""
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"dtype: must be torch.float64 or torch.float32, got {dtype}")
    if not tensor.is_floating_point():
        limit = _EXACT_INT[dtype]
        if tensor.numel() and int(tensor.detach().abs().max()) > limit:
            raise ValueError(f"{name}: integer values beyond {limit} are not exactly representable in {dtype}")
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def as_real_tensor(value: Tensorish, name: str, dtype: torch.dtype = torch.float64, *,
                   copy: bool = True, allow_infinite: bool = False) -> torch.Tensor:
    """``value`` as a finite real tensor of ``dtype`` under the input policy; a copy unless ``copy=False``.

    The copy is detached: a parameter an object keeps never carries the caller's autograd graph. Without a copy
    the conversion is differentiable. ``allow_infinite`` admits +-inf (never NaN) where infinity is a meaningful
    value, such as the log-SNR at the ends of a schedule.
    """
    tensor = _convert(_read(value, name), name, dtype)
    if copy and isinstance(value, torch.Tensor):  # arrays and lists were copied when they were read
        tensor = tensor.detach().clone()
    if allow_infinite:
        if bool(torch.isnan(tensor.detach()).any()):
            raise ValueError(f"{name}: contains NaN")
    else:
        check_finite(tensor, name)
    return tensor


#: the previous name, kept for callers inside the package
as_tensor = as_real_tensor


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every entry is finite: a finite sum proves it (NaN and infinity propagate through a sum), so the
    entrywise test runs only when the sum is not finite (a NaN, an infinity, or an overflowing sum of finite
    entries)."""
    values = tensor.detach()
    return math.isfinite(float(values.sum())) or bool(torch.isfinite(values).all())


def check_finite(tensor: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` if ``tensor`` holds NaN or infinity."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return
    if all_finite(tensor):
        return
    bad = "NaN" if bool(torch.isnan(tensor.detach()).any()) else "infinity"
    raise ValueError(f"{name}: contains {bad}; every entry must be finite")


def check_points(x: Tensorish, dim: int, dtype: torch.dtype, name: str = "x") -> torch.Tensor:
    """Validate a batch of points under the input policy: a finite ``[N, dim]`` tensor of ``dtype``.

    Not copied (points are evaluated, not kept). A tensor that requires grad keeps its graph (the conversion is
    differentiable), so scores can be compared against autograd of ``log_prob``.
    """
    tensor = _convert(_read(x, name), name, dtype)
    if tensor.ndim != 2 or tensor.shape[1] != dim:
        raise ValueError(f"{name}: expected shape [N, {dim}], got {list(tensor.shape)}")
    check_finite(tensor, name)
    return tensor


def as_scalar(value: Tensorish, name: str) -> float:
    """A finite Python float from a real number or a one-element tensor/array, under the input policy."""
    tensor = as_real_tensor(value, name, copy=False)
    if tensor.numel() != 1:
        raise ValueError(f"{name}: expected a scalar, got shape {list(tensor.shape)}")
    return float(tensor.reshape(()))


def as_int(value: Any, name: str, minimum: int) -> int:
    """A Python int ``>= minimum`` from an integral number (``bool`` refused: ``True`` is not a count)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}: must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_magnitude(value: float, limit: float, name: str, what: str) -> None:
    """Refuse ``|value| > limit``: ``what`` says which derived quantity would overflow beyond it."""
    if abs(value) > limit:
        raise ValueError(f"{name}: {value!r} is too large: {what} (limit {limit:.3g})")


def check_same_shape(tensors: dict[str, torch.Tensor], *, what: str = "shape") -> None:
    """Refuse tensors whose shapes differ (no silent broadcasting), naming the first that differs."""
    items = list(tensors.items())
    first_name, first = items[0]
    for name, tensor in items[1:]:
        if tuple(tensor.shape) != tuple(first.shape):
            raise ValueError(f"{name}: {what} {list(tensor.shape)} differs from {first_name}'s "
                             f"{list(first.shape)}; shapes must match exactly (no broadcasting)")


def check_generator(generator: Any, *, optional: bool = True) -> None:
    """Refuse a ``generator`` that is not a ``torch.Generator`` (``None`` too, unless ``optional``)."""
    if generator is None and optional:
        return
    if not isinstance(generator, torch.Generator):
        allowed = "a torch.Generator or None" if optional else "a torch.Generator"
        raise TypeError(f"generator: expected {allowed}, got {type(generator).__name__}")
