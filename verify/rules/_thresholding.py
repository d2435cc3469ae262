r"""Static and dynamic thresholding of the x0-prediction (Saharia et al. 2022, section 2.3): shared helpers."""

from __future__ import annotations

import torch

from toy_models._checks import as_scalar

from ._math import convert_named

Tensor = torch.Tensor


def _limit(limit) -> float:
    value = as_scalar(limit, "limit")
    if not value > 0:
        raise ValueError(f"limit: must be > 0 (the x0 range is [-limit, limit]), got {value!r}")
    return value


def _consistent_eps(eps: Tensor, x0: Tensor, x0_new: Tensor, *, x: Tensor, alpha, sigma) -> Tensor:
    """The eps consistent with the thresholded x0: converted where thresholding changed x0, ``eps`` itself (exact,
    no round trip) where it did not."""
    back = convert_named(x0_new, "eps", "x0", "eps", x=x, alpha=alpha, sigma=sigma)
    return torch.where(x0_new != x0, back, eps)
