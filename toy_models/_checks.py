"""Input validation shared by the models: every failure is a ``ValueError`` that names the argument."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

Tensorish = Any  # array-like, number or torch.Tensor


def as_tensor(value: Tensorish, name: str, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Convert ``value`` to a tensor of ``dtype`` and reject NaN or infinity, naming ``name``."""
    try:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().to(dtype) if value.dtype != dtype else value
        else:
            tensor = torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=dtype)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: cannot be read as an array of numbers ({err})") from None
    check_finite(tensor, name)
    return tensor


def check_finite(tensor: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``tensor`` holds NaN or infinity."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = "NaN" if bool(torch.isnan(tensor).any()) else "infinity"
        raise ValueError(f"{name}: contains {bad}; every entry must be finite")


def check_points(x: Tensorish, dim: int, dtype: torch.dtype, name: str = "x") -> torch.Tensor:
    """Validate a batch of points: a finite ``[N, dim]`` tensor, converted to ``dtype``.

    A tensor that requires grad keeps its graph (the conversion is differentiable), so scores can be
    compared against autograd of ``log_prob``.
    """
    if isinstance(x, torch.Tensor):
        tensor = x if x.dtype == dtype else x.to(dtype)
    else:
        try:
            tensor = torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=dtype)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name}: cannot be read as an array of numbers ({err})") from None
    if tensor.ndim != 2 or tensor.shape[1] != dim:
        raise ValueError(f"{name}: expected shape [N, {dim}], got {list(tensor.shape)}")
    check_finite(tensor.detach(), name)
    return tensor


def as_scalar(value: Tensorish, name: str) -> float:
    """Read a finite Python float from a number or a one-element tensor/array."""
    tensor = as_tensor(value, name)
    if tensor.numel() != 1:
        raise ValueError(f"{name}: expected a scalar, got shape {list(tensor.shape)}")
    return float(tensor.reshape(()))
