r""""CFG sharpens the conditional distribution with temperature tau = 1/(1+w)": false as written.

Source 000 (명제 2 · CFG의 Distribution Sharpening, and the summary "정리"):
"CFG scale :math:`w > 0` sharpens the conditional distribution with temperature :math:`\tau = 1/(1+w)`", followed
by :math:`p^{(w)}(x \mid c) \propto p(x \mid c)^{1+w} p(x)^{-w}` and "as :math:`w \to \infty`, :math:`\tau \to 0`
and it concentrates near the argmax".

Literal reading tested by :func:`residual`: the conditional at temperature :math:`\tau` is
:math:`p(x \mid c)^{1/\tau} = p(x \mid c)^{1+w}`. Its score differs from that of the tilted law by

.. math::  \nabla \log\big(p(x \mid c)^{1+w} p(x)^{-w}\big) - \nabla \log p(x \mid c)^{1+w} = -w \nabla \log p(x),

which is nonzero whenever :math:`w > 0` and :math:`p(x)` is not constant. :func:`gaussian_instance` computes both
laws in closed form for :math:`p(x \mid c) = \mathcal N(1, 1/2)`, :math:`p(x) = \mathcal N(0, 1)` (variances):
the tilted law is :math:`\mathcal N(2(1+w)/(2+w), 1/(2+w))`, the tempered conditional is
:math:`\mathcal N(1, 1/(2(1+w)))`. They differ in mean and in variance; as :math:`w \to \infty` the tilted law
concentrates at x = 2, the argmax of the implicit classifier :math:`p(c \mid x) \propto p(x \mid c)/p(x)`, not at
x = 1, the argmax of :math:`p(x \mid c)`.

Corrected statement (:func:`corrected_residual`, zero): :math:`p(x \mid c)^{1+w} p(x)^{-w} \propto
p(x)\, p(c \mid x)^{1+w}`: CFG tempers the *implicit classifier* (temperature :math:`1/(1+w)`) and tilts the
*unconditional* law by it. The densities are arbitrary positive functions of one real variable, which proves the
identities coordinate-wise in any dimension and at every noise level t (see :mod:`proofs._common`).
"""

from __future__ import annotations

import sympy

from ._common import SOURCE_000, density, gaussian_from_log_quadratic, log_normal, prior_c, score, tidy, w, x

NAME = "temperature"
CLAIM_IDS = ("S0-TEMPERATURE",)
SOURCE = f"{SOURCE_000}, 명제 2 (Proposition 2), statement; and summary '정리', fourth bullet"
STATEMENT = ("CFG scale w > 0 sharpens the conditional distribution with temperature tau = 1/(1+w), i.e. "
             "p(x|c)^(1+w) p(x)^(-w) is the conditional p(x|c) at temperature tau, p(x|c)^(1/tau).")
EXPECTED = "nonzero"
COUNTEREXAMPLE = ("The score residual is -w grad log p(x), nonzero for every w > 0 and non-constant p(x): for "
                  "p(x|c) = N(1, 0.5), p(x) = N(0, 1) (variances) it is w x (= 1 at w = 1, x = 1), and the tilted law "
                  "N(2(1+w)/(2+w), 1/(2+w)) is not the tempered conditional N(1, 0.5/(1+w)): at w = 1, N(4/3, 1/3) "
                  "vs N(1, 1/4); as w -> infinity the tilt concentrates at x = 2, not at the argmax x = 1 of p(x|c).")

p_cond = density("p_c")
p_uncond = density("p_u")

COND_MEAN, COND_VAR = sympy.Integer(1), sympy.Rational(1, 2)
UNCOND_MEAN, UNCOND_VAR = sympy.Integer(0), sympy.Integer(1)


def temperature(strength: sympy.Expr = w) -> sympy.Expr:
    """:math:`\\tau = 1/(1+w)` as the source writes it."""
    return 1 / (1 + strength)


def tilted_density(strength: sympy.Expr = w, uncond_exponent: sympy.Expr | None = None) -> sympy.Expr:
    """The CFG law per t: :math:`p(x \\mid c)^{1+w} p(x)^{b}`, :math:`b = -w` unless given."""
    b = -strength if uncond_exponent is None else uncond_exponent
    return p_cond ** (1 + strength) * p_uncond**b


def tempered_conditional(strength: sympy.Expr = w) -> sympy.Expr:
    """:math:`p(x \\mid c)^{1/\\tau}`, the conditional at temperature :math:`\\tau = 1/(1+w)` (unnormalised)."""
    return p_cond ** (1 / temperature(strength))


def residual() -> sympy.Expr:
    """lhs - rhs: score of the tilted (CFG) law - score of the tempered conditional. Equals -w grad log p(x)."""
    return tidy(score(tilted_density()) - score(tempered_conditional()))


def corrected_residual() -> sympy.Expr:
    """Score of the tilted law - score of :math:`p(x) p(c \\mid x)^{1+w}` (implicit classifier at temperature tau)."""
    implicit_classifier = p_cond * prior_c / p_uncond
    return tidy(score(tilted_density()) - score(p_uncond * implicit_classifier ** (1 / temperature())))


def concrete_instance(strength: sympy.Expr | int = 1, at: sympy.Expr | int = 1) -> sympy.Expr:
    """The residual for p(x) = N(0, 1) (p(x|c) arbitrary) at the given w and x: equals w x."""
    value = residual().subs(p_uncond, sympy.exp(log_normal(x, UNCOND_MEAN, UNCOND_VAR))).doit()
    return sympy.simplify(value.subs({w: sympy.sympify(strength), x: sympy.sympify(at)}))


def gaussian_instance() -> tuple[sympy.Expr, sympy.Expr, sympy.Expr, sympy.Expr]:
    """(tilted_mean, tilted_var, tempered_mean, tempered_var) for p(x|c) = N(1, 1/2), p(x) = N(0, 1), in w.

    Completes the square of the log-densities: the tilted law is normalisable for every w >= 0 since its precision
    (1+w)/0.5 - w = 2 + w is positive.
    """
    log_cond = log_normal(x, COND_MEAN, COND_VAR)
    log_uncond = log_normal(x, UNCOND_MEAN, UNCOND_VAR)
    tilted_mean, tilted_var = gaussian_from_log_quadratic((1 + w) * log_cond - w * log_uncond)
    tempered_mean, tempered_var = gaussian_from_log_quadratic(log_cond / temperature())
    return tilted_mean, tilted_var, tempered_mean, tempered_var
