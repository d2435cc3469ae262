r"""Conversions between the four parametrisations of a denoiser: eps, score, x0 and v.

This is the only module where these formulas are written (DESIGN.md section 3). With
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

Every function broadcasts ``alpha`` and ``sigma`` (Python floats or tensors of shape ``[]`` or ``[N, 1]``) against
the ``[N, d]`` predictions, never modifies its inputs, and raises ``ValueError`` on a coefficient it would divide by
when that coefficient is not positive.
"""

from __future__ import annotations

import torch

__all__ = [
    "PARAMETRIZATIONS",
    "convert",
    "eps_to_score",
    "eps_to_v",
    "eps_to_x0",
    "score_to_eps",
    "v_to_eps",
    "v_to_x0",
    "x0_to_eps",
    "x0_to_v",
]

Coefficient = float | torch.Tensor
PARAMETRIZATIONS = ("eps", "score", "x0", "v")


def _positive(value: Coefficient, name: str) -> Coefficient:
    bad = (~(value > 0)).any() if isinstance(value, torch.Tensor) else not value > 0  # NaN fails "> 0" too
    if bool(bad):
        raise ValueError(f"{name}: must be > 0 for this conversion (it divides by {name}); NaN is rejected")
    return value


def eps_to_score(eps: torch.Tensor, sigma: Coefficient) -> torch.Tensor:
    r""":math:`s = -\varepsilon/\sigma`."""
    return -eps / _positive(sigma, "sigma")


def score_to_eps(score: torch.Tensor, sigma: Coefficient) -> torch.Tensor:
    r""":math:`\varepsilon = -\sigma s`."""
    return -sigma * score


def eps_to_x0(x: torch.Tensor, eps: torch.Tensor, alpha: Coefficient, sigma: Coefficient) -> torch.Tensor:
    r""":math:`\hat x_0 = (x - \sigma\varepsilon)/\alpha`; loses precision as :math:`\alpha \to 0` (see the
    module docstring)."""
    return (x - sigma * eps) / _positive(alpha, "alpha")


def x0_to_eps(x: torch.Tensor, x0: torch.Tensor, alpha: Coefficient, sigma: Coefficient) -> torch.Tensor:
    r""":math:`\varepsilon = (x - \alpha x_0)/\sigma`; loses precision as :math:`\sigma \to 0`."""
    return (x - alpha * x0) / _positive(sigma, "sigma")


def eps_to_v(x: torch.Tensor, eps: torch.Tensor, alpha: Coefficient, sigma: Coefficient) -> torch.Tensor:
    r""":math:`v = \alpha\varepsilon - \sigma x_0 = ((\alpha^2 + \sigma^2)\varepsilon - \sigma x)/\alpha`."""
    return ((alpha * alpha + sigma * sigma) * eps - sigma * x) / _positive(alpha, "alpha")


def x0_to_v(x: torch.Tensor, x0: torch.Tensor, alpha: Coefficient, sigma: Coefficient) -> torch.Tensor:
    r""":math:`v = (\alpha x - (\alpha^2 + \sigma^2) x_0)/\sigma`: no division by :math:`\alpha`, so exact at
    :math:`\alpha = 0` (:math:`v = -x_0` there on a VP schedule)."""
    return (alpha * x - (alpha * alpha + sigma * sigma) * x0) / _positive(sigma, "sigma")


def v_to_eps(x: torch.Tensor, v: torch.Tensor, alpha: Coefficient, sigma: Coefficient) -> torch.Tensor:
    r""":math:`\varepsilon = (\alpha v + \sigma x)/(\alpha^2 + \sigma^2)`."""
    return (alpha * v + sigma * x) / _positive(alpha * alpha + sigma * sigma, "alpha^2 + sigma^2")


def v_to_x0(x: torch.Tensor, v: torch.Tensor, alpha: Coefficient, sigma: Coefficient) -> torch.Tensor:
    r""":math:`x_0 = (\alpha x - \sigma v)/(\alpha^2 + \sigma^2)`: stable at :math:`\alpha \to 0`."""
    return (alpha * x - sigma * v) / _positive(alpha * alpha + sigma * sigma, "alpha^2 + sigma^2")


def _to_eps(kind: str, pred: torch.Tensor, x: torch.Tensor, alpha: Coefficient, sigma: Coefficient) -> torch.Tensor:
    if kind == "eps":
        return pred
    if kind == "score":
        return score_to_eps(pred, sigma)
    if kind == "x0":
        return x0_to_eps(x, pred, alpha, sigma)
    return v_to_eps(x, pred, alpha, sigma)


def convert(pred: torch.Tensor, source: str, target: str, *, x: torch.Tensor, alpha: Coefficient,
            sigma: Coefficient) -> torch.Tensor:
    """Convert a prediction between any two of ``"eps"``, ``"score"``, ``"x0"``, ``"v"``.

    Routes through eps, except ``v -> x0`` and ``x0 -> v``, which use the direct formulas (stable as
    alpha -> 0, where the eps route divides by alpha).
    """
    for name, kind in (("source", source), ("target", target)):
        if kind not in PARAMETRIZATIONS:
            raise ValueError(f"{name}: unknown parametrisation {kind!r}; choose one of {PARAMETRIZATIONS}")
    if source == target:
        return pred.clone()
    if source == "v" and target == "x0":
        return v_to_x0(x, pred, alpha, sigma)
    if source == "x0" and target == "v":
        return x0_to_v(x, pred, alpha, sigma)
    eps = _to_eps(source, pred, x, alpha, sigma)
    if target == "eps":
        return eps if eps is not pred else pred.clone()
    if target == "score":
        return eps_to_score(eps, sigma)
    if target == "x0":
        return eps_to_x0(x, eps, alpha, sigma)
    return eps_to_v(x, eps, alpha, sigma)
