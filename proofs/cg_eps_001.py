r"""Classifier guidance in noise-prediction form (source 001) is the augmented score of source 000.

Source 001 (section "기존 Classifier Guidance 방식"):
:math:`\hat\epsilon(x_t, y) = \epsilon(x_t) - s\,\sigma_t \nabla_{x_t} \log p_\phi(y \mid x_t)`.
Source 000 (section "출발점", second display): the augmented score
:math:`\tilde s = s_\theta(x_t) + s \nabla_{x_t} \log p_\phi(y \mid x_t)`.

Proved here (:func:`residual`, zero): with :math:`\epsilon = -\sigma_t s`, :math:`\hat\epsilon = -\sigma_t \tilde s`,
so the two texts describe the same guidance. The classifier :math:`p_\phi(y \mid x_t)` is an arbitrary positive
function (an external classifier need not be the implicit one), as is the unconditional density; this proves the
identity coordinate-wise in any dimension and at every noise level (see :mod:`proofs._common`). The sign matters:
with ``+`` in the eps form the guidance pushes *away* from the class (:func:`eps_rule` takes the sign as argument).
"""

from __future__ import annotations

import sympy

from ._common import SOURCE_000, SOURCE_001, classifier_scale, density, eps_from_score, score, sigma, tidy

NAME = "cg_eps_001"
CLAIM_IDS = ("S1-CG-EPS", "S0-CG-SCORE")
SOURCE = (f"{SOURCE_001}, section '기존 Classifier Guidance 방식' (display); "
          f"{SOURCE_000}, section '출발점' (second display)")
STATEMENT = ("Classifier guidance eps^ = eps(x_t) - s sigma_t grad log p_phi(y|x_t) is -sigma_t times the augmented "
             "score grad log p(x_t) + s grad log p_phi(y|x_t).")
EXPECTED = "zero"
COUNTEREXAMPLE = ""

p_uncond = density("p_u")
p_classifier = density("p_phi")


def augmented_score(scale: sympy.Expr = classifier_scale) -> sympy.Expr:
    """Source 000: :math:`s_\\theta(x_t) + s \\nabla \\log p_\\phi(y \\mid x_t)`."""
    return score(p_uncond) + scale * score(p_classifier)


def eps_rule(scale: sympy.Expr = classifier_scale, sign: int = -1) -> sympy.Expr:
    """Source 001 (sign = -1): :math:`\\epsilon(x_t) + \\text{sign}\\, s \\sigma_t \\nabla \\log p_\\phi(y|x_t)`."""
    return eps_from_score(score(p_uncond)) + sign * scale * sigma * score(p_classifier)


def residual() -> sympy.Expr:
    """Eps rule - (-sigma_t times the augmented score)."""
    return tidy(eps_rule() - eps_from_score(augmented_score()))
