r"""CFG with the reverse SDE is, per small step, a conditional probability-flow step plus a Langevin corrector.

Bradley & Nakkiran 2024 ('Classifier-Free Guidance is a Predictor-Corrector', arXiv 2408.09000), section 4 (the
SDE-limit equivalence of CFG-DDPM and predictor-corrector guidance): in the small-step limit, a DDPM step guided at
scale :math:`\gamma` equals a DDIM step for :math:`p(x \mid c)` followed by one Langevin step on
:math:`p_t(x \mid c)^{\gamma'} p_t(x)^{1 - \gamma'}` with :math:`\gamma' = 2\gamma - 1`.

Their :math:`\gamma` is the diffusers ``guidance_scale`` g of ``docs/conventions.md`` (the guided score is
:math:`\gamma s_c + (1 - \gamma) s_\varnothing`), so :math:`\gamma = g = 1 + w` and :math:`\gamma' = 2g - 1 = 1 + 2w`:
the corrector is CFG at twice the Ho & Salimans strength, :math:`w' = 2w`.

What is proved (:func:`residual`), for the general forward SDE :math:`dx = f(t)\,x\,dt + g(t)\,dW` (VP and VE alike)
and one backward step of length :math:`h` from :math:`t` to :math:`t - h`:

* the reverse SDE with the CFG score moves :math:`x` by :math:`-h\,(f x - g^2 \tilde s) + g\sqrt h\, z`,
  :math:`\tilde s = \gamma s_c + (1 - \gamma) s_\varnothing` (Song et al. 2021, eq. 6);
* the probability-flow ODE with the conditional score moves it by :math:`-h\,(f x - \tfrac{g^2}{2} s_c)` (eq. 13);
* a Langevin step of size :math:`\varepsilon` on :math:`\pi` moves it by :math:`\varepsilon \nabla\log\pi
  + \sqrt{2\varepsilon}\, z`.

The SDE's increment minus the ODE's is the Langevin increment on
:math:`\pi = p_t(x \mid c)^{2\gamma - 1} p_t(x)^{2 - 2\gamma}` with :math:`\varepsilon = h g^2 / 2`, drift and noise
(:func:`further_residuals`: the noise variances :math:`g^2 h` and :math:`2\varepsilon` agree; in Ho & Salimans'
w the corrector's strength is :math:`2w`). The densities are arbitrary positive
functions of one real variable, which proves the identity coordinate-wise in any dimension
(:mod:`proofs._common`). Running the ODE step and then the corrector at the moved point instead of the same point
changes the increment by :math:`O(h^2)`, which vanishes in the small-step limit and is what the ledger's
exact-law comparison measures at finite steps.
"""

from __future__ import annotations

import sympy

from ._common import density, guidance_scale, score, tidy, w, x

NAME = "bn_predictor_corrector"
CLAIM_IDS = ("L-BN-PREDICTOR-CORRECTOR",)
SOURCE = ("Bradley & Nakkiran 2024, 'Classifier-Free Guidance is a Predictor-Corrector' (arXiv 2408.09000), "
          "section 4 (CFG as a predictor-corrector: the SDE-limit theorem)")
STATEMENT = ("reverse-SDE increment with the CFG score gamma s_c + (1 - gamma) s_u minus the probability-flow "
             "increment with s_c = a Langevin step of size h g^2 / 2 (noise g sqrt(h)) on "
             "p_t(x|c)^(2 gamma - 1) p_t(x)^(2 - 2 gamma), for any drift f(t) x and diffusion g(t)")
EXPECTED = "zero"
COUNTEREXAMPLE = ""

p_cond = density("p_c")
p_uncond = density("p_u")
drift = sympy.Symbol("f", real=True)
"""The forward drift coefficient :math:`f(t)` at the fixed time (VP: negative; VE: 0)."""
diffusion = sympy.Symbol("g_t", positive=True)
"""The forward diffusion coefficient :math:`g(t)`."""
step = sympy.Symbol("h", positive=True)
"""The length of the backward step, :math:`t \\to t - h`."""
gamma = guidance_scale
"""Bradley & Nakkiran's :math:`\\gamma`: diffusers' guidance_scale g."""


def cfg_score(scale: sympy.Expr = gamma) -> sympy.Expr:
    r""":math:`\gamma s_c + (1 - \gamma) s_\varnothing`."""
    return scale * score(p_cond) + (1 - scale) * score(p_uncond)


def sde_increment_mean(scale: sympy.Expr = gamma) -> sympy.Expr:
    r"""The mean increment of one reverse-SDE step with the CFG score: :math:`-h (f x - g^2 \tilde s)`."""
    return -step * (drift * x - diffusion**2 * cfg_score(scale))


def ode_increment() -> sympy.Expr:
    r"""One probability-flow step with the conditional score: :math:`-h (f x - \tfrac{g^2}{2} s_c)`."""
    return -step * (drift * x - diffusion**2 / 2 * score(p_cond))


def corrector_exponent(scale: sympy.Expr = gamma) -> sympy.Expr:
    r""":math:`\gamma' = 2\gamma - 1`."""
    return 2 * scale - 1


def langevin_step_size() -> sympy.Expr:
    r""":math:`\varepsilon = h g^2 / 2`."""
    return step * diffusion**2 / 2


def langevin_increment_mean(scale: sympy.Expr = gamma) -> sympy.Expr:
    r""":math:`\varepsilon \nabla \log (p_c^{\gamma'} p_\varnothing^{1 - \gamma'})`."""
    g_prime = corrector_exponent(scale)
    return langevin_step_size() * score(p_cond**g_prime * p_uncond**(1 - g_prime))


def residual() -> sympy.Expr:
    """lhs - rhs: (SDE increment - ODE increment) - Langevin increment, means."""
    return tidy(sde_increment_mean() - ode_increment() - langevin_increment_mean())


def further_residuals() -> dict[str, sympy.Expr]:
    """The noise and the conventions, each 0."""
    return {
        "noise variance: reverse SDE g^2 h minus Langevin 2 epsilon": tidy(diffusion**2 * step
                                                                          - 2 * langevin_step_size()),
        "in w (gamma = 1 + w): corrector exponent minus (1 + 2 w)": tidy(corrector_exponent(1 + w) - (1 + 2 * w)),
        "in w: the same identity at gamma = 1 + w": tidy(sde_increment_mean(1 + w) - ode_increment()
                                                        - langevin_increment_mean(1 + w)),
    }


def wrong_exponent_residual() -> sympy.Expr:
    r"""The same difference against a corrector at :math:`\gamma` itself (not :math:`2\gamma - 1`): nonzero,
    :math:`\tfrac{h g^2}{2}(\gamma - 1)(s_c - s_\varnothing)`, so the proof can tell the exponents apart."""
    g_prime = gamma
    wrong = langevin_step_size() * score(p_cond**g_prime * p_uncond**(1 - g_prime))
    return tidy(sde_increment_mean() - ode_increment() - wrong)
