r"""Negative prompt of source 001: the negative prompt replaces the null prompt.

Source 001 (section "Negative Prompt와의 관계"):

.. math::  \hat\epsilon = \epsilon(x_t, y_\text{neg}) + g\,[\epsilon(x_t, y_\text{pos}) - \epsilon(x_t, y_\text{neg})]

(``guidance_scale`` convention, written ``w`` in the source). Proved here (:func:`residual`, zero): at each noise
level t its score, :math:`g\, s_\text{pos} + (1-g)\, s_\text{neg}`, is the score of
:math:`p(x \mid \text{pos})^{g}\, p(x \mid \text{neg})^{1-g}`; the exponents sum to 1 and p(x) does not enter.

Cross-check with source 000 (:mod:`proofs.negprompt_000`): this is source 000's rule with :math:`w_+ = g`,
:math:`w_- = g - 1`, for which source 000's stated density would carry :math:`p(x)^{2 - 2g}` instead of
:math:`p(x)^0` (:func:`source_000_exponent_of_p_x`). The densities are arbitrary positive functions of one real
variable, which proves the identity coordinate-wise in any dimension (see :mod:`proofs._common`).
"""

from __future__ import annotations

import sympy

from ._common import SOURCE_001, density, eps_from_score, guidance_scale, score, score_from_eps, tidy

NAME = "negprompt_001"
CLAIM_IDS = ("S1-NEGPROMPT",)
SOURCE = f"{SOURCE_001}, section 'Negative Prompt와의 관계' (display)"
STATEMENT = ("With a negative prompt in place of the null prompt, eps^ = eps(y_neg) + g (eps(y_pos) - eps(y_neg)); "
             "its score is that of p(x|pos)^g p(x|neg)^(1-g) at each noise level.")
EXPECTED = "zero"
COUNTEREXAMPLE = ""

p_pos = density("p_pos")
p_neg = density("p_neg")


def rule_score(scale: sympy.Expr = guidance_scale) -> sympy.Expr:
    """Score implied by the eps rule (eps space, converted with :math:`s = -\\epsilon/\\sigma_t`)."""
    eps_pos, eps_neg = eps_from_score(score(p_pos)), eps_from_score(score(p_neg))
    return score_from_eps(eps_neg + scale * (eps_pos - eps_neg))


def target_density(pos_exponent: sympy.Expr = guidance_scale, neg_exponent: sympy.Expr | None = None) -> sympy.Expr:
    """:math:`p(x \\mid \\text{pos})^{a} p(x \\mid \\text{neg})^{b}`, by default :math:`a = g`, :math:`b = 1 - g`."""
    b = 1 - pos_exponent if neg_exponent is None else neg_exponent
    return p_pos**pos_exponent * p_neg**b


def residual() -> sympy.Expr:
    """Score of the rule - score of p(x|pos)^g p(x|neg)^(1-g)."""
    return tidy(rule_score() - score(target_density()))


def source_000_exponent_of_p_x() -> sympy.Expr:
    """The exponent of p(x) that source 000's formula 1 - w+ - w- assigns at w+ = g, w- = g - 1: 2 - 2g."""
    return sympy.expand(1 - guidance_scale - (guidance_scale - 1))
