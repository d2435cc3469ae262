r"""The CFG formula of source 001 and its end points; the clash of conventions with source 000.

Source 001 (section "추론 단계"):
:math:`\hat\epsilon = \epsilon(x_t, \varnothing) + w\,[\epsilon(x_t, y) - \epsilon(x_t, \varnothing)]`, "w = 1 is
ordinary conditional generation, w = 0 fully unconditional generation". Proved here (:func:`residual`, zero): the
sum of squares of :math:`\hat\epsilon|_{w=0} - \epsilon(\varnothing)` and :math:`\hat\epsilon|_{w=1} - \epsilon(y)`
(pure algebra in the two predictions, which are arbitrary real symbols: one coordinate of any vector).

Convention clash. Source 001's ``w`` is the ``guidance_scale`` ``g`` of diffusers; source 000's ``w`` (Ho &
Salimans) is :math:`g - 1`: :math:`(1+w_{000})\epsilon_c - w_{000}\epsilon_\varnothing = \epsilon_\varnothing +
(1 + w_{000})(\epsilon_c - \epsilon_\varnothing)`, so :math:`w_{000} = w_{001} - 1`; plain conditional sampling is
:math:`w_{000} = 0` but :math:`w_{001} = 1`, and "w = 7.5" means different rules in the two texts.
:func:`convention_residual` proves the mapping (zero).
"""

from __future__ import annotations

import sympy

from ._common import SOURCE_001, guidance_scale, tidy, w

NAME = "cfg_form_001"
CLAIM_IDS = ("S1-CFG-FORM",)
SOURCE = f"{SOURCE_001}, section '추론 단계' (display and the sentence after the list)"
STATEMENT = ("In eps^ = eps(null) + w (eps(y) - eps(null)), w = 0 gives the unconditional prediction eps(null) and "
             "w = 1 the conditional prediction eps(y) exactly.")
EXPECTED = "zero"
COUNTEREXAMPLE = ""

eps_cond = sympy.Symbol("eps_c", real=True)
eps_uncond = sympy.Symbol("eps_u", real=True)


def cfg_eps_guidance_scale(scale: sympy.Expr = guidance_scale) -> sympy.Expr:
    """Source 001 / diffusers: :math:`\\epsilon_\\varnothing + g(\\epsilon_c - \\epsilon_\\varnothing)`."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def cfg_eps_w(strength: sympy.Expr = w) -> sympy.Expr:
    """Source 000 / Ho & Salimans: :math:`(1+w)\\epsilon_c - w\\epsilon_\\varnothing`."""
    return (1 + strength) * eps_cond - strength * eps_uncond


def residual() -> sympy.Expr:
    """(eps^(w=0) - eps(null))^2 + (eps^(w=1) - eps(y))^2."""
    at_zero = cfg_eps_guidance_scale(0) - eps_uncond
    at_one = cfg_eps_guidance_scale(1) - eps_cond
    return tidy(at_zero**2 + at_one**2)


def convention_residual() -> sympy.Expr:
    """Source 001's rule at g = 1 + w minus source 000's rule at w: zero, i.e. w_000 = w_001 - 1."""
    return tidy(cfg_eps_guidance_scale(1 + w) - cfg_eps_w(w))


def further_residuals() -> dict[str, sympy.Expr]:
    """The convention mapping g = 1 + w (must be zero as well)."""
    return {"convention: source 001 at g = 1 + w equals source 000 at w": convention_residual()}
