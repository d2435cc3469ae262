r"""The CFG score is the score of the tilted density (per noise level t).

Source 000 (명제 2 · CFG의 Distribution Sharpening), the displayed formula and the
first line of its proof:

.. math::  p^{(w)}(x \mid c) \propto p(x \mid c)^{1+w} p(x)^{-w}, \qquad
           \log p^{(w)}(x \mid c) = (1+w) \log p(x \mid c) - w \log p(x) + \text{const}.

Proved here (:func:`residual`): at one noise level t, the guided score :math:`(1+w) s_c - w s_\varnothing` is the
x-gradient of :math:`\log\big(p_t(x \mid c)^{1+w} p_t(x)^{-w}\big)`. The densities are arbitrary positive functions
of one real variable, which proves the identity coordinate-wise in any dimension (see :mod:`proofs._common`).

What is *not* proved, and is false in general: the source's proof says the trajectory following the guided score
"converges to" the tilted law :math:`p_0(x \mid c)^{1+w} p_0(x)^{-w}`. The family
:math:`\{p_t(x\mid c)^{1+w} p_t(x)^{-w}\}_t` is not the noising of its t = 0 member, so the guided score is not the
score of any diffusion path and the sampler's output law differs from the tilt (Chidambaram et al. 2024;
Bradley & Nakkiran 2024). :func:`diffusion_path_residual` exhibits this with Gaussians: the variance of the tilt of
the noised laws minus the variance of the noised tilt, which is nonzero. The ledger therefore treats the statement
as holding per t (the score) and not at the level of the sampled law.
"""

from __future__ import annotations

import sympy

from ._common import SOURCE_000, density, gaussian_from_log_quadratic, log_normal, score, tidy, w, x

NAME = "prop2_tilted_score"
CLAIM_IDS = ("S0-PROP2-SCORE",)
SOURCE = f"{SOURCE_000}, 명제 2 (Proposition 2), displayed formula and first line of its proof"
STATEMENT = ("The CFG score (1+w) grad log p(x|c) - w grad log p(x) is the score of p(x|c)^(1+w) p(x)^(-w) "
             "(at each noise level t).")
EXPECTED = "zero"
COUNTEREXAMPLE = ""

p_cond = density("p_c")
p_uncond = density("p_u")


def guided_score(strength: sympy.Expr = w) -> sympy.Expr:
    """:math:`(1+w) s_c - w s_\\varnothing`, the score form of :math:`(1+w)\\epsilon_c - w\\epsilon_\\varnothing`."""
    return (1 + strength) * score(p_cond) - strength * score(p_uncond)


def tilted_density(cond_exponent: sympy.Expr = 1 + w, uncond_exponent: sympy.Expr = -w) -> sympy.Expr:
    """:math:`p(x \\mid c)^{a} p(x)^{b}`, by default :math:`a = 1 + w`, :math:`b = -w`."""
    return p_cond**cond_exponent * p_uncond**uncond_exponent


def residual() -> sympy.Expr:
    """lhs - rhs: guided score - score of the tilted density."""
    return tidy(guided_score(w) - score(tilted_density()))


def diffusion_path_residual() -> sympy.Expr:
    r"""Gaussian witness that the tilt does not commute with noising (nonzero).

    World: :math:`p_0(x \mid c) = \mathcal N(\mu, v)`, :math:`p_0(x) = \mathcal N(0, 1)`, noised by
    :math:`x_t = \alpha x_0 + \sigma \epsilon`. Returns the variance of the tilt of the noised laws,
    :math:`[(1+w)/(\alpha^2 v + \sigma^2) - w/(\alpha^2 + \sigma^2)]^{-1}`, minus the variance of the noised tilt,
    :math:`\alpha^2 [(1+w)/v - w]^{-1} + \sigma^2`. It vanishes at w = 0 (or v = 1, or alpha = 0, sigma = 0), and not
    in general.
    """
    mu = sympy.Symbol("mu", real=True)
    v = sympy.Symbol("v", positive=True)
    alpha = sympy.Symbol("alpha", positive=True)
    sig = sympy.Symbol("sigma", positive=True)
    tilt_of_noised = ((1 + w) * log_normal(x, alpha * mu, alpha**2 * v + sig**2)
                      - w * log_normal(x, 0, alpha**2 + sig**2))
    _, var_tilt_of_noised = gaussian_from_log_quadratic(tilt_of_noised)
    _, var_tilt_0 = gaussian_from_log_quadratic((1 + w) * log_normal(x, mu, v) - w * log_normal(x, 0, 1))
    return sympy.factor(sympy.simplify(var_tilt_of_noised - (alpha**2 * var_tilt_0 + sig**2)))
