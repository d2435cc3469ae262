r"""Closed form of a tilted Gaussian: a product of real powers of Gaussian densities is Gaussian.

.. math::  \prod_i \mathcal N(x; \mu_i, v_i)^{e_i} \propto \mathcal N(x; m, V), \qquad
           V^{-1} = \sum_i e_i / v_i, \quad m = V \sum_i e_i \mu_i / v_i,

valid (normalisable) iff :math:`\sum_i e_i / v_i > 0`; otherwise the product is not integrable and no law exists
(e.g. CFG with :math:`p(x \mid c) = \mathcal N(\mu, v)`, :math:`p(x) = \mathcal N(0, 1)`, :math:`v > 1`, has
precision :math:`(1+w)/v - w \le 0` once :math:`w \ge 1/(v-1)`). The exponents are signed reals.

This is the closed form behind the Gaussian checks of Proposition 2 (:mod:`proofs.prop2_tilted_score`), the
temperature claim (:mod:`proofs.temperature`) and the negative-prompt density (:mod:`proofs.negprompt_000`).

Proved here: (:func:`residual`, zero) for 3 factors in one dimension, the x-derivative of
:math:`\sum_i e_i \log \mathcal N(x; \mu_i, v_i) - \log \mathcal N(x; m, V)` vanishes, i.e. the two log-densities
differ by a constant; (:func:`multivariate_check`) for 2 factors in two dimensions with symmetric precision matrices
:math:`\Lambda_i` of symbolic entries, the gradient of the log-density difference with
:math:`\Lambda = \sum_i e_i \Lambda_i`, :math:`m = \Lambda^{-1} \sum_i e_i \Lambda_i \mu_i` vanishes (a 2-vector of
zeros). The derivative argument needs no normalisability; the normalisability condition is what makes the
right-hand side a density.
"""

from __future__ import annotations

from collections.abc import Sequence

import sympy

from ._common import SOURCE_000, log_normal, tidy, x

NAME = "gaussian_tilted"
CLAIM_IDS = ("S0-PROP2-SCORE", "S0-TEMPERATURE", "S0-NEGPROMPT-DENSITY")
SOURCE = f"closed form used to evaluate {SOURCE_000}, 명제 2 and the negative-prompt density (derived here)"
STATEMENT = ("prod_i N(x; mu_i, v_i)^(e_i) is proportional to N(x; m, V) with 1/V = sum_i e_i/v_i and "
             "m = V sum_i e_i mu_i/v_i, whenever sum_i e_i/v_i > 0.")
EXPECTED = "zero"
COUNTEREXAMPLE = ""

N_FACTORS = 3
means = sympy.symbols(f"mu_1:{N_FACTORS + 1}", real=True)
variances = sympy.symbols(f"v_1:{N_FACTORS + 1}", positive=True)
exponents = sympy.symbols(f"e_1:{N_FACTORS + 1}", real=True)


def tilted_parameters(mus: Sequence[sympy.Expr] = means, vs: Sequence[sympy.Expr] = variances,
                      es: Sequence[sympy.Expr] = exponents) -> tuple[sympy.Expr, sympy.Expr]:
    """(m, V) of the closed form; V is only a variance when sum_i e_i / v_i > 0 (:func:`normalisable`)."""
    precision = sum(e / v for e, v in zip(es, vs, strict=True))
    var = 1 / precision
    mean = var * sum(e * mu / v for e, mu, v in zip(es, mus, vs, strict=True))
    return mean, var


def normalisable(vs: Sequence[sympy.Expr] = variances, es: Sequence[sympy.Expr] = exponents) -> sympy.Expr:
    """The condition sum_i e_i / v_i > 0 (a sympy relational)."""
    return sum(e / v for e, v in zip(es, vs, strict=True)) > 0


def residual(mean: sympy.Expr | None = None, var: sympy.Expr | None = None) -> sympy.Expr:
    """x-derivative of (sum_i e_i log N(x; mu_i, v_i) - log N(x; m, V)); m, V from the closed form unless given."""
    m, v = tilted_parameters()
    m = m if mean is None else mean
    v = v if var is None else var
    lhs = sum(e * log_normal(x, mu, vi) for e, mu, vi in zip(exponents, means, variances, strict=True))
    # log N(x; m, V) up to its normaliser, which does not depend on x (and needs V > 0 to be real).
    rhs = -(x - m) ** 2 / (2 * v)
    return tidy(sympy.together(sympy.diff(lhs - rhs, x)))


def _symmetric(name: str) -> sympy.Matrix:
    a, b, c = sympy.symbols(f"{name}_11 {name}_12 {name}_22", real=True)
    return sympy.Matrix([[a, b], [b, c]])


def multivariate_check(n_factors: int = 2) -> sympy.Matrix:
    """Gradient residual (2-vector) of the 2-D closed form with symbolic symmetric precisions; zero.

    log N(x; mu, Lambda^-1) = -(x - mu)^T Lambda (x - mu) / 2 + const; grad = Lambda (mu - x).
    """
    xs = sympy.Matrix(sympy.symbols("x_1 x_2", real=True))
    precisions = [_symmetric(f"L{i}") for i in range(1, n_factors + 1)]
    mus = [sympy.Matrix(sympy.symbols(f"m{i}_1 m{i}_2", real=True)) for i in range(1, n_factors + 1)]
    es = sympy.symbols(f"e_1:{n_factors + 1}", real=True)

    def log_gauss(mu: sympy.Matrix, lam: sympy.Matrix) -> sympy.Expr:
        d = xs - mu
        return -(d.T * lam * d)[0, 0] / 2

    lam = sympy.zeros(2, 2)
    h = sympy.zeros(2, 1)
    for e, L, mu in zip(es, precisions, mus, strict=True):
        lam += e * L
        h += e * L * mu
    mean = lam.adjugate() * h / lam.det()  # Lambda^{-1} h, written with the adjugate to keep the expression small
    lhs = sum(e * log_gauss(mu, L) for e, L, mu in zip(es, precisions, mus, strict=True))
    diff = lhs - log_gauss(mean, lam)
    grad = sympy.Matrix([sympy.diff(diff, xi) for xi in xs])
    # Each entry is a rational function of the symbols; cancel() gives its canonical form p/q (p, q coprime
    # polynomials), which is 0 iff the entry vanishes identically. Cheaper than simplify() and just as decisive.
    return grad.applyfunc(lambda g: sympy.cancel(sympy.together(g)))


def further_residuals() -> dict[str, sympy.Expr]:
    """The 2-D, 2-factor check as one expression (sum of squares of the gradient residual)."""
    grad = multivariate_check()
    return {"2-D, 2 factors, symbolic symmetric precisions (sum of squares of the gradient residual)":
            tidy(sum(g**2 for g in grad))}
