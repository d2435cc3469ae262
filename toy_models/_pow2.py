"""``ldexp`` with the right derivative.

``torch.ldexp(x, e)`` scales by :math:`2^e` exactly (even where :math:`2^e` itself is not representable), which is
what the overflow-safe formulas of the rules and conversions need; but in torch 2.13 its derivative with respect to
``x`` is computed with :math:`2^e` in the integer dtype of ``e``, which is 0 for every negative ``e`` (e.g.
``torch.ldexp(x, torch.tensor(-2))`` has gradient 0 instead of 1/4). :func:`ldexp` computes the same values and
differentiates as :math:`2^e` (by ``torch.ldexp`` of the incoming gradient, exact as well).
"""

from __future__ import annotations

import torch

__all__ = ["ldexp"]


class _Ldexp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(exponent)
        return torch.ldexp(x, exponent)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (exponent,) = ctx.saved_tensors
        return torch.ldexp(grad, exponent), None


def ldexp(x: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """``x * 2**exponent``, exact, bit for bit ``torch.ldexp``, with the derivative ``2**exponent``."""
    if not x.requires_grad:
        return torch.ldexp(x, exponent)
    return _Ldexp.apply(x, exponent)
