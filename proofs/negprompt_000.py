r"""Negative prompt of source 000: the stated density has the wrong exponent on p(x).

Source 000 (section "Negative Prompt: Score의 반대 부호 활용"): the rule

.. math::  \tilde\epsilon = \epsilon(x,\varnothing) + w_+[\epsilon(x,y_+) - \epsilon(x,\varnothing)]
           - w_-[\epsilon(x,y_-) - \epsilon(x,\varnothing)]

is said to make the generated density proportional to
:math:`p(x \mid y_+)^{w_+} p(x \mid y_-)^{-w_-} p(x)^{1-w_+-w_-}`.

With :math:`\epsilon = -\sigma_t s`, the rule's score is
:math:`w_+ s_+ - w_- s_- + (1 - w_+ + w_-) s_\varnothing`: the coefficient of :math:`s_\varnothing` is
:math:`1 - w_+ + w_-` (the :math:`-w_-[\ldots - \epsilon(x,\varnothing)]` term *adds* :math:`w_-\epsilon_\varnothing`).
:func:`residual` = (score the rule implies) - (score of the stated density) = :math:`+2 w_- \nabla \log p(x)`
(the sign convention of every module here: lhs is what the guidance rule produces, rhs is what the source states;
the opposite order gives :math:`-2 w_- \nabla \log p(x)`). Nonzero whenever :math:`w_- \ne 0`.

Corrected statement (:func:`corrected_residual`, zero): the exponent of :math:`p(x)` is :math:`1 - w_+ + w_-`.
Check on the exponents: the stated ones sum to :math:`w_+ - w_- + 1 - w_+ - w_- = 1 - 2w_-`, the correct ones to 1
(a combination of scores whose coefficients sum to 1 is what every guidance rule built from differences of
predictions gives). The source contradicts itself: its own composition rule (:mod:`proofs.composition`) with
:math:`w_1 = w_+`, :math:`w_2 = -w_-` is this same eps rule and gives the exponent :math:`1 - w_+ + w_-`.
The densities are arbitrary positive functions of one real variable, which proves the statements coordinate-wise in
any dimension and at every noise level t (see :mod:`proofs._common`).
"""

from __future__ import annotations

import sympy

from ._common import SOURCE_000, density, eps_from_score, log_normal, score, score_from_eps, tidy, x

NAME = "negprompt_000"
CLAIM_IDS = ("S0-NEGPROMPT-DENSITY",)
SOURCE = f"{SOURCE_000}, section 'Negative Prompt: Score의 반대 부호 활용', first and second displays"
STATEMENT = ("eps~ = eps(null) + w+ (eps(y+) - eps(null)) - w- (eps(y-) - eps(null)) generates a density "
             "proportional to p(x|y+)^(w+) p(x|y-)^(-w-) p(x)^(1 - w+ - w-).")
EXPECTED = "nonzero"
COUNTEREXAMPLE = ("The rule's score minus the stated density's score is +2 w- grad log p(x) (the stated exponent of "
                  "p(x) should be 1 - w+ + w-): for w- = 1 the residual is 2 grad log p(x), e.g. with p(x) = N(0, 1) "
                  "it is -2x, = -2 at x = 1 (for every w+).")

w_pos = sympy.Symbol("w_+", real=True)
w_neg = sympy.Symbol("w_-", real=True)
p_pos = density("p_pos")
p_neg = density("p_neg")
p_uncond = density("p_u")


def rule_score(weight_pos: sympy.Expr = w_pos, weight_neg: sympy.Expr = w_neg) -> sympy.Expr:
    """The score implied by the eps rule (computed in eps space, converted with :math:`s = -\\epsilon/\\sigma_t`)."""
    eps_pos, eps_neg, eps_uncond = (eps_from_score(score(p)) for p in (p_pos, p_neg, p_uncond))
    eps_guided = eps_uncond + weight_pos * (eps_pos - eps_uncond) - weight_neg * (eps_neg - eps_uncond)
    return score_from_eps(eps_guided)


def stated_density(uncond_exponent: sympy.Expr | None = None) -> sympy.Expr:
    """:math:`p(x \\mid y_+)^{w_+} p(x \\mid y_-)^{-w_-} p(x)^{b}`, :math:`b = 1 - w_+ - w_-` unless given."""
    b = 1 - w_pos - w_neg if uncond_exponent is None else uncond_exponent
    return p_pos**w_pos * p_neg ** (-w_neg) * p_uncond**b


def residual() -> sympy.Expr:
    """Score the rule implies - score of the stated density. Equals +2 w_- grad log p(x)."""
    return tidy(rule_score() - score(stated_density()))


def corrected_residual() -> sympy.Expr:
    """Same, with the exponent of p(x) equal to 1 - w_+ + w_-."""
    return tidy(rule_score() - score(stated_density(1 - w_pos + w_neg)))


def exponent_sums() -> tuple[sympy.Expr, sympy.Expr]:
    """(sum of the stated exponents, sum of the correct exponents) = (1 - 2 w_-, 1)."""
    stated = sympy.expand(w_pos - w_neg + (1 - w_pos - w_neg))
    correct = sympy.expand(w_pos - w_neg + (1 - w_pos + w_neg))
    return stated, correct


def concrete_instance(weight_neg: sympy.Expr | int = 1, at: sympy.Expr | int = 1) -> sympy.Expr:
    """The residual for p(x) = N(0, 1) (the conditionals arbitrary) at the given w_- and x: equals -2 w_- x."""
    value = residual().subs(p_uncond, sympy.exp(log_normal(x, 0, 1))).doit()
    return sympy.simplify(value.subs({w_neg: sympy.sympify(weight_neg), x: sympy.sympify(at)}))
