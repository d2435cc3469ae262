r"""Proposition 1 of source 000: CFG is classifier guidance with the implicit classifier.

Source 000 (명제 1 · CFG = Implicit Classifier Guidance): with
:math:`s_c = \nabla \log p(x_t \mid c)`, :math:`s_\varnothing = \nabla \log p(x_t)` and the implicit classifier
:math:`p(c \mid x_t) = p(x_t \mid c) p(c) / p(x_t)`,

.. math::  (1+w) s_c - w s_\varnothing = s_\varnothing + (1+w) \nabla \log p(c \mid x_t),

i.e. CFG with strength ``w`` is classifier guidance with classifier scale :math:`s = 1 + w`. Source 001
("수학적 직관") writes the same statement in the ``guidance_scale`` convention:
:math:`\nabla \log p_g(x_t \mid y) = \nabla \log p(x_t) + g \nabla \log p(y \mid x_t)` where the guided score is
:math:`s_\varnothing + g (s_c - s_\varnothing)`, i.e. :math:`s = g`.

Three residuals, all zero:

* :func:`residual`: the score form, ``w`` convention, :math:`s = 1 + w`;
* :func:`residual_guidance_scale`: the score form, ``guidance_scale`` convention, :math:`s = g`;
* :func:`residual_eps`: the noise-prediction form :math:`(1+w)\epsilon_c - w\epsilon_\varnothing =
  \epsilon_\varnothing - s\,\sigma_t \nabla \log p(c \mid x_t)` with :math:`\epsilon = -\sigma_t s`.

The densities are arbitrary positive functions of one real variable, which proves the identities coordinate-wise in
any dimension and at every noise level t (see :mod:`proofs._common`). The identities are per-t statements about the
guided *score*; which law a sampler driven by that score produces is a separate question
(:mod:`proofs.prop2_tilted_score`).
"""

from __future__ import annotations

import sympy

from ._common import (
    SOURCE_000,
    SOURCE_001,
    classifier_scale,
    density,
    eps_from_score,
    guidance_scale,
    prior_c,
    score,
    score_from_eps,
    sigma,
    tidy,
    w,
)

NAME = "prop1_cfg_is_classifier_guidance"
CLAIM_IDS = ("S0-PROP1", "S1-SCORE-FORM")
SOURCE = (f"{SOURCE_000}, 명제 1 (Proposition 1); "
          f"{SOURCE_001}, section '수학적 직관: 왜 작동하는가'")
STATEMENT = ("CFG with strength w, (1+w) eps(x,c) - w eps(x,null), is classifier guidance with the implicit classifier "
             "p(c|x) at scale s = 1 + w (equivalently s = g in the guidance_scale convention).")
EXPECTED = "zero"
COUNTEREXAMPLE = ""

p_cond = density("p_c")
p_uncond = density("p_u")
s_cond = score(p_cond)
s_uncond = score(p_uncond)


def implicit_classifier() -> sympy.Expr:
    """:math:`p(c \\mid x) = p(x \\mid c) p(c) / p(x)`."""
    return p_cond * prior_c / p_uncond


def cfg_score_w(strength: sympy.Expr = w) -> sympy.Expr:
    """The CFG score in the ``w`` convention: :math:`(1+w) s_c - w s_\\varnothing`."""
    return (1 + strength) * s_cond - strength * s_uncond


def cfg_score_guidance_scale(scale: sympy.Expr = guidance_scale) -> sympy.Expr:
    """The CFG score in the ``guidance_scale`` convention: :math:`s_\\varnothing + g (s_c - s_\\varnothing)`."""
    return s_uncond + scale * (s_cond - s_uncond)


def classifier_guided_score(scale: sympy.Expr = classifier_scale) -> sympy.Expr:
    """Classifier guidance: :math:`s_\\varnothing + s \\nabla \\log p(c \\mid x)`."""
    return s_uncond + scale * score(implicit_classifier())


def cfg_eps_w(strength: sympy.Expr = w) -> sympy.Expr:
    """:math:`(1+w)\\epsilon_c - w\\epsilon_\\varnothing` with :math:`\\epsilon = -\\sigma_t s`."""
    return (1 + strength) * eps_from_score(s_cond) - strength * eps_from_score(s_uncond)


def classifier_guided_eps(scale: sympy.Expr = classifier_scale) -> sympy.Expr:
    """:math:`\\epsilon_\\varnothing - s\\,\\sigma_t \\nabla \\log p(c \\mid x)` (eps-form classifier guidance)."""
    return eps_from_score(s_uncond) - scale * sigma * score(implicit_classifier())


def residual() -> sympy.Expr:
    """Score form, ``w`` convention: CFG score - classifier-guided score at s = 1 + w."""
    return tidy(cfg_score_w(w) - classifier_guided_score(1 + w))


def residual_guidance_scale() -> sympy.Expr:
    """Score form, ``guidance_scale`` convention: CFG score - classifier-guided score at s = g."""
    return tidy(cfg_score_guidance_scale(guidance_scale) - classifier_guided_score(guidance_scale))


def residual_eps() -> sympy.Expr:
    """Noise-prediction form, ``w`` convention: guided eps - classifier-guided eps at s = 1 + w.

    Also checks that the eps rule and the score rule are the same rule: the score read off the guided eps.
    """
    eps_residual = cfg_eps_w(w) - classifier_guided_eps(1 + w)
    roundtrip = score_from_eps(cfg_eps_w(w)) - cfg_score_w(w)
    return tidy(tidy(eps_residual) ** 2 + tidy(roundtrip) ** 2)


def further_residuals() -> dict[str, sympy.Expr]:
    """The other two forms of the statement (each must be zero as well)."""
    return {"guidance_scale convention (s = g)": residual_guidance_scale(),
            "eps form (eps_u - s sigma grad log p(c|x))": residual_eps()}
