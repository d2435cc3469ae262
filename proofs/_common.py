r"""Shared symbols and helpers of the sympy proofs.

Why one dimension suffices
--------------------------
Every statement proved here is an identity between gradients of logarithms of positive functions, and each side is
*linear in the gradient*: :math:`\nabla \log \prod_i f_i^{a_i} = \sum_i a_i \nabla \log f_i`. The :math:`j`-th
coordinate of either side only involves the partial derivative :math:`\partial_{x_j}`, i.e. the one-dimensional
derivative of the functions restricted to the line through :math:`x` along :math:`e_j`; those restrictions are again
arbitrary positive functions of one real variable. So a proof with *arbitrary* positive functions of one real variable
``x`` (``sympy.Function(..., positive=True)(x)``, no other property used) proves the identity coordinate-wise in any
dimension. The same holds at every noise level t: the functions stand for the noised densities :math:`p_t` at one
fixed t, so every identity is a per-t identity.

Conventions (``docs/conventions.md``): :math:`\epsilon = -\sigma\, s` with :math:`s = \nabla \log p`;
``w`` (Ho & Salimans, source 000): :math:`\tilde\epsilon = (1+w)\epsilon_c - w\epsilon_\varnothing`;
``guidance_scale`` ``g`` (diffusers, source 001): :math:`\tilde\epsilon = \epsilon_\varnothing
+ g(\epsilon_c - \epsilon_\varnothing)`, :math:`g = 1 + w`; the classifier scale ``s`` multiplies
:math:`\nabla \log p(c \mid x)`.
"""

from __future__ import annotations

import sympy

#: the two source texts, cited by number, title and date
SOURCE_000 = "source 000, 'Classifier Guidance에서 Negative Prompt까지, 조건부 생성의 수학' (2026-05-03)"
SOURCE_001 = "source 001, 'Classifier-Free Guidance 논문 리뷰: 조건부 생성 모델의 핵심 기법 완전 정리' (2026-02-06)"

x = sympy.Symbol("x", real=True)
"""The (one coordinate of the) state :math:`x_t`."""

sigma = sympy.Symbol("sigma", positive=True)
"""The noise level :math:`\\sigma_t` of the forward process at the fixed time t."""

w = sympy.Symbol("w", nonnegative=True)
"""CFG strength, Ho & Salimans convention (source 000)."""

guidance_scale = sympy.Symbol("g", real=True)
"""CFG strength, diffusers convention (source 001): ``g = 1 + w``."""

classifier_scale = sympy.Symbol("s", real=True)
"""Classifier-guidance scale: multiplies :math:`\\nabla \\log p(c \\mid x)`."""

prior_c = sympy.Symbol("p_cond", positive=True)
"""The prior probability :math:`p(c)` of a condition: a positive constant (does not depend on x)."""


def density(name: str) -> sympy.Expr:
    """An arbitrary positive function of ``x`` standing for a (noised) density."""
    return sympy.Function(name, positive=True)(x)


def score(expr: sympy.Expr) -> sympy.Expr:
    r""":math:`\partial_x \log(\text{expr})` for a product of real powers of positive functions."""
    return sympy.diff(sympy.expand_log(sympy.log(expr), force=True), x)


def eps_from_score(score_expr: sympy.Expr) -> sympy.Expr:
    r""":math:`\hat\epsilon = -\sigma_t s` (the convention of docs/conventions.md)."""
    return -sigma * score_expr


def score_from_eps(eps_expr: sympy.Expr) -> sympy.Expr:
    r""":math:`s = -\hat\epsilon / \sigma_t`."""
    return -eps_expr / sigma


def tidy(expr: sympy.Expr) -> sympy.Expr:
    """The simplified residual: expand (the residuals are linear combinations of scores), then simplify."""
    return sympy.simplify(sympy.expand(expr))


def instantiate(expr: sympy.Expr, replacements: dict) -> sympy.Expr:
    """Replace abstract densities (and symbols) by concrete expressions, evaluate the derivatives, simplify."""
    return sympy.simplify(expr.subs(replacements).doit())


def log_normal(arg: sympy.Expr, mean: sympy.Expr, var: sympy.Expr) -> sympy.Expr:
    r""":math:`\log \mathcal N(\text{arg}; \text{mean}, \text{var})` in one dimension (var is a variance)."""
    return -(arg - mean) ** 2 / (2 * var) - sympy.log(2 * sympy.pi * var) / 2


def normal(arg: sympy.Expr, mean: sympy.Expr, var: sympy.Expr) -> sympy.Expr:
    r""":math:`\mathcal N(\text{arg}; \text{mean}, \text{var})` in one dimension (var is a variance)."""
    return sympy.exp(-(arg - mean) ** 2 / (2 * var)) / sympy.sqrt(2 * sympy.pi * var)


def gaussian_from_log_quadratic(log_density: sympy.Expr) -> tuple[sympy.Expr, sympy.Expr]:
    r"""(mean, variance) of the Gaussian :math:`\propto \exp(\text{log\_density})`, a quadratic in ``x``.

    :math:`a x^2 + b x + c` with :math:`a < 0` is :math:`\mathcal N(-b/(2a), -1/(2a))` up to a constant factor.
    The caller is responsible for :math:`a < 0` (normalisability).
    """
    poly = sympy.Poly(sympy.expand(log_density), x)
    if poly.degree() != 2:
        raise ValueError(f"not a quadratic in x: {log_density}")
    a, b, _ = poly.all_coeffs()
    return sympy.simplify(-b / (2 * a)), sympy.simplify(-1 / (2 * a))
