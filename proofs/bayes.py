r"""Bayes' rule in score space.

Source 000 (section "출발점: Bayes' rule과 score 분해", first display):

.. math::  \nabla_{x_t} \log p(x_t \mid y) = \nabla_{x_t} \log p(x_t) + \nabla_{x_t} \log p(y \mid x_t).

Proof. Write :math:`p(y \mid x) = p(x \mid y)\, p(y) / p(x)` (Bayes) with :math:`p(y) > 0` a constant, take the
log-derivative of the right-hand side, subtract the left-hand side. The densities are arbitrary positive functions
of one real variable, which proves the identity coordinate-wise in any dimension and at every noise level t
(see :mod:`proofs._common`).
"""

from __future__ import annotations

import sympy

from ._common import SOURCE_000, density, prior_c, score, tidy

NAME = "bayes"
CLAIM_IDS = ("S0-BAYES",)
SOURCE = f"{SOURCE_000}, section '출발점: Bayes' rule과 score 분해' (first display)"
STATEMENT = "grad log p(x_t|y) = grad log p(x_t) + grad log p(y|x_t)."
EXPECTED = "zero"
COUNTEREXAMPLE = ""

p_x_given_y = density("p_x_given_y")
p_x = density("p_x")


def classifier() -> sympy.Expr:
    """:math:`p(y \\mid x) = p(x \\mid y) p(y) / p(x)`."""
    return p_x_given_y * prior_c / p_x


def residual() -> sympy.Expr:
    """lhs - rhs: grad log p(x|y) - (grad log p(x) + grad log p(y|x))."""
    return tidy(score(p_x_given_y) - (score(p_x) + score(classifier())))
