r"""Composition of conditions (Liu et al. 2022) as written in source 000.

Source 000 (section "Negative Prompt", third display):

.. math::  \tilde\epsilon = \sum_{k=1}^{K} w_k\, \epsilon(x, c_k) + \Big(1 - \sum_k w_k\Big) \epsilon(x, \varnothing),

with :math:`w_k > 0` a positive and :math:`w_k < 0` a negative condition. Proved here for K = 3 signed symbolic
weights (:func:`residual`, zero): at each noise level t its score is that of
:math:`\prod_k p(x \mid c_k)^{w_k}\, p(x)^{1 - \sum_k w_k}` — a product of experts, whose exponents sum to 1.

For the "purple dog" remark (red dog + blue dog may give a purple dog) this establishes the object the remark is
about: the per-t law is the product :math:`p(x \mid \text{red})^{w_1} p(x \mid \text{blue})^{w_2}
p(x)^{1-w_1-w_2}`, which puts its mass where *both* conditionals are large, whatever the true joint
:math:`p(x \mid \text{red}, \text{blue})` is (that this can create samples with neither attribute's training mode is
a property of the world, checked numerically in the ledger). The densities are arbitrary positive functions of one
real variable, which proves the identity coordinate-wise in any dimension (see :mod:`proofs._common`).
"""

from __future__ import annotations

from collections.abc import Sequence

import sympy

from ._common import SOURCE_000, density, eps_from_score, score, score_from_eps, tidy

NAME = "composition"
CLAIM_IDS = ("S0-COMPOSITION", "S0-PURPLE-DOG")
SOURCE = f"{SOURCE_000}, section 'Negative Prompt: Score의 반대 부호 활용', third display (Liu et al. 2022)"
STATEMENT = ("eps~ = sum_k w_k eps(x, c_k) + (1 - sum_k w_k) eps(x, null) has, at each noise level, the score of "
             "prod_k p(x|c_k)^(w_k) p(x)^(1 - sum_k w_k) (signed weights).")
EXPECTED = "zero"
COUNTEREXAMPLE = ""

K = 3
weights = sympy.symbols(f"w_1:{K + 1}", real=True)
p_conds = tuple(density(f"p_c{k}") for k in range(1, K + 1))
p_uncond = density("p_u")


def rule_score(ws: Sequence[sympy.Expr] = weights) -> sympy.Expr:
    """Score implied by the eps rule (eps space, converted with :math:`s = -\\epsilon/\\sigma_t`)."""
    eps_guided = sum(wk * eps_from_score(score(p)) for wk, p in zip(ws, p_conds, strict=True))
    eps_guided += (1 - sum(ws)) * eps_from_score(score(p_uncond))
    return score_from_eps(eps_guided)


def composed_density(ws: Sequence[sympy.Expr] = weights, uncond_exponent: sympy.Expr | None = None) -> sympy.Expr:
    """:math:`\\prod_k p(x \\mid c_k)^{w_k} p(x)^{b}`, :math:`b = 1 - \\sum_k w_k` unless given."""
    b = 1 - sum(ws) if uncond_exponent is None else uncond_exponent
    out = p_uncond**b
    for wk, p in zip(ws, p_conds, strict=True):
        out *= p**wk
    return out


def residual() -> sympy.Expr:
    """Score of the rule - score of the product of experts."""
    return tidy(rule_score() - score(composed_density()))
