r"""The noised tilted target's score is the CFG score plus a Rényi-divergence gradient (Gaussian pairs, any t).

Moufad, Janati, Durmus, Ghorbel, Moulines & Olsson (2025), "Conditional diffusion models with classifier-free
Gibbs-like guidance", arXiv 2505.21101, section 2 (the decomposition of the tilted score). In their convention the
guidance scale :math:`\gamma` (diffusers' ``guidance_scale``, :math:`\gamma = 1 + w` in Ho & Salimans' ``w``)
tilts the data law to :math:`\pi \propto p(x_0 \mid c)^{\gamma} p(x_0)^{1-\gamma}`, and the law of
:math:`x_t = \alpha_t x_0 + \sigma_t \varepsilon` with :math:`x_0 \sim \pi` has the score

.. math::  \nabla \log \pi_t(x) = \gamma\, \nabla\log p_t(x \mid c) + (1 - \gamma)\, \nabla\log p_t(x)
           + (\gamma - 1)\, \nabla_x D_\gamma\big(p(\cdot \mid x_t = x, c) \,\big\|\, p(\cdot \mid x_t = x)\big),

:math:`D_\gamma(P \| Q) = \tfrac{1}{\gamma - 1} \log \int P^\gamma Q^{1-\gamma}` the Rényi divergence of order
:math:`\gamma`, the conditional denoising posterior first. Why (any law): :math:`p(x_0 \mid c)^\gamma
p(x_0)^{1-\gamma} q(x \mid x_0) = [p_t(x \mid c)\, p(x_0 \mid x, c)]^\gamma [p_t(x)\, p(x_0 \mid x)]^{1-\gamma}`;
integrating over :math:`x_0` gives :math:`\pi_t \propto p_t(x \mid c)^\gamma p_t(x)^{1-\gamma}
e^{(\gamma-1) D_\gamma}`, and the gradient of its logarithm is the display.

Proved here (:func:`residual`) in closed form on a 1-D Gaussian pair :math:`p(x_0 \mid c) = \mathcal N(m_1, v_1)`,
:math:`p(x_0) = \mathcal N(m_2, v_2)`, all symbolic (means, variances, :math:`\alpha, \sigma, \gamma`): the left
side is the score of the noised tilted Gaussian, the right side is built from the two noised scores and the
Rényi divergence of the two Gaussian denoising posteriors, each integral done by completing the square. The
further residual checks the mechanism: :math:`\log \int P^\gamma Q^{1-\gamma}` of the posteriors differs from
:math:`\log \pi_t - \gamma \log p_t(\cdot \mid c) - (1-\gamma) \log p_t` by a constant in :math:`x`.
"""

from __future__ import annotations

import sympy

from ._common import log_normal, x

NAME = "renyi_correction"
CLAIM_IDS = ("L-RENYI-CORRECTION",)
SOURCE = ("Moufad et al. 2025, 'Conditional diffusion models with classifier-free Gibbs-like guidance', "
          "arXiv 2505.21101, section 2 (tilted score = CFG score + Renyi gradient)")
STATEMENT = ("score of the noised tilted law pi_t, pi ~ p(x|c)^g p(x)^(1-g), equals g s_c + (1-g) s_u + "
             "(g-1) grad_x D_g(p(x0|x_t,c) || p(x0|x_t)) at every noise level")
EXPECTED = "zero"
COUNTEREXAMPLE = ""

m1, m2 = sympy.symbols("m1 m2", real=True)
v1, v2, alpha, sig = sympy.symbols("v1 v2 alpha sigma", positive=True)
gamma = sympy.Symbol("gamma", real=True)
x0 = sympy.Symbol("x0", real=True)


def _log_integral(log_density: sympy.Expr) -> sympy.Expr:
    r""":math:`\log \int e^{a x_0^2 + b x_0 + c} dx_0 = c - b^2/(4a) + \tfrac12 \log(\pi / (-a))` (``a < 0``)."""
    poly = sympy.Poly(sympy.expand(log_density), x0)
    a, b, c = poly.all_coeffs()
    return c - b**2 / (4 * a) + sympy.log(sympy.pi / (-a)) / 2


def _posterior(mean: sympy.Expr, var: sympy.Expr) -> tuple[sympy.Expr, sympy.Expr]:
    r"""Mean and variance of :math:`p(x_0 \mid x_t = x)` for :math:`x_0 \sim \mathcal N(m, v)`: precision
    :math:`1/v + \alpha^2/\sigma^2`, mean :math:`(m/v + \alpha x/\sigma^2) / \text{precision}`."""
    prec = 1 / var + alpha**2 / sig**2
    return (mean / var + alpha * x / sig**2) / prec, 1 / prec


def _log_renyi_integral() -> sympy.Expr:
    r""":math:`\log \int p(x_0 \mid x, c)^\gamma p(x_0 \mid x)^{1-\gamma} dx_0 = (\gamma - 1) D_\gamma`."""
    a1, b1 = _posterior(m1, v1)
    a2, b2 = _posterior(m2, v2)
    return _log_integral(gamma * log_normal(x0, a1, b1) + (1 - gamma) * log_normal(x0, a2, b2))


def _noised_tilted_log_density() -> sympy.Expr:
    r""":math:`\log \pi_t` up to a constant: the tilted Gaussian :math:`\mathcal N(m_\pi, v_\pi)`,
    :math:`1/v_\pi = \gamma/v_1 + (1-\gamma)/v_2`, noised to
    :math:`\mathcal N(\alpha m_\pi, \alpha^2 v_\pi + \sigma^2)`."""
    prec = gamma / v1 + (1 - gamma) / v2
    v_pi = 1 / prec
    m_pi = (gamma * m1 / v1 + (1 - gamma) * m2 / v2) / prec
    return log_normal(x, alpha * m_pi, alpha**2 * v_pi + sig**2)


def _cfg_log_density() -> sympy.Expr:
    r""":math:`\gamma \log p_t(x \mid c) + (1 - \gamma) \log p_t(x)` (the CFG score's potential)."""
    return (gamma * log_normal(x, alpha * m1, alpha**2 * v1 + sig**2)
            + (1 - gamma) * log_normal(x, alpha * m2, alpha**2 * v2 + sig**2))


def _canonical(expr: sympy.Expr) -> sympy.Expr:
    """A rational function in canonical form (one fraction, common factors cancelled): zero iff it is identically
    zero. ``cancel`` is exact and decides this in seconds where ``simplify`` takes a minute."""
    return sympy.cancel(sympy.together(expr))


def residual() -> sympy.Expr:
    """lhs - rhs: score of pi_t - [CFG score + (gamma - 1) grad D_gamma]; (gamma - 1) D_gamma is the log integral."""
    lhs = sympy.diff(_noised_tilted_log_density(), x)
    rhs = sympy.diff(_cfg_log_density(), x) + sympy.diff(_log_renyi_integral(), x)
    return _canonical(lhs - rhs)


def further_residuals() -> dict[str, sympy.Expr]:
    """The second derivative in x of log pi_t - CFG potential - (gamma - 1) D_gamma (zero: they differ by a
    constant in x, the normaliser)."""
    gap = _noised_tilted_log_density() - _cfg_log_density() - _log_renyi_integral()
    return {"d2/dx2 [log pi_t - CFG potential - (g-1) D_g]": _canonical(sympy.diff(gap, x, 2))}
