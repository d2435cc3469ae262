r"""The variances of the laws DDIM-CFG and DDPM-CFG produce on a centred Gaussian pair, in closed form.

Bradley & Nakkiran 2024 ('Classifier-Free Guidance is a Predictor-Corrector', arXiv 2408.09000), section 3 (the
Gaussian example showing that CFG with DDIM and CFG with DDPM sample different laws, neither of them the
:math:`\gamma`-powered one): :math:`p_0(x \mid c) = \mathcal N(0, v_c)`, :math:`p_0(x) = \mathcal N(0, v_\varnothing)`,
variance-exploding diffusion, guidance scale :math:`\gamma` (diffusers' ``guidance_scale`` g; ``docs/conventions.md``),
run from :math:`\sigma_{max} \to \infty` down to :math:`\sigma = 0`. With :math:`\rho = v_c / v_\varnothing`:

.. math::  \mathrm{Var}_{\mathrm{DDIM}} = v_c^{\gamma} v_\varnothing^{1 - \gamma}, \qquad
           \mathrm{Var}_{\mathrm{DDPM}} = v_\varnothing\,\frac{\rho - \rho^{2\gamma}}{(2\gamma - 1)(1 - \rho)},

beside the :math:`\gamma`-powered law's :math:`(\gamma / v_c + (1 - \gamma)/v_\varnothing)^{-1}`.

Derivation (what :func:`residual` checks). On VE (:math:`f = 0`, :math:`g^2 dt = d\sigma^2`) write
:math:`s = \sigma^2`. The noised laws are :math:`\mathcal N(0, v + s)`, so the CFG score is :math:`-A(s)\,x` with
:math:`A = \gamma/(v_c + s) + (1 - \gamma)/(v_\varnothing + s)`, and the moment ODEs of ``verify.exact_law`` become,
in :math:`s` (integrated from :math:`s_1 = \sigma_{max}^2` down to :math:`s_0 = \sigma_{min}^2`),

.. math::  \text{ODE: } \frac{d\Sigma}{ds} = A\Sigma, \qquad \text{SDE: } \frac{d\Sigma}{ds} = 2A\Sigma - 1 .

Their solutions from :math:`\Sigma(s_1) = \Sigma_1` (:func:`ddim_variance`, :func:`ddpm_variance`) are checked by
substitution (a linear ODE with a given value at :math:`s_1` has one solution). The SDE's integrating factor is
:math:`\mu = (v_c + s)^{2\gamma}(v_\varnothing + s)^{2 - 2\gamma}` and, with :math:`r = (v_c + s)/(v_\varnothing + s)`,
:math:`ds/\mu = r^{-2\gamma} dr / (v_\varnothing - v_c)`, which integrates in closed form. The paper's setting is
the limit :math:`s_0 \to 0`, :math:`s_1 \to \infty` with the start variance :math:`\Sigma_1 = s_1 + k`
(:math:`k = 0`: the prior :math:`\mathcal N(0, \sigma_{max}^2)`; :math:`k = v_c`: the noised conditional);
:func:`ddim_limit` and :func:`ddpm_limit` pass to it by writing the solution at :math:`s_0 = 0` as a product of
powers of rational functions of :math:`s_1` whose limits sympy computes. The residual is the closed form above
minus that limit. :math:`\gamma \ne 1/2` and :math:`\rho \ne 1` (removable singularities of the DDPM form).
"""

from __future__ import annotations

import sympy

NAME = "bn_gaussian_laws"
CLAIM_IDS = ("L-BN-GAUSSIAN-LAWS",)
SOURCE = ("Bradley & Nakkiran 2024, 'Classifier-Free Guidance is a Predictor-Corrector' (arXiv 2408.09000), "
          "section 3 (the Gaussian example: DDIM and DDPM with CFG give different laws)")
STATEMENT = ("centred Gaussian pair N(0, v_c), N(0, v_u), variance-exploding, sigma from infinity to 0: DDIM-CFG "
             "gives variance v_c^gamma v_u^(1 - gamma), DDPM-CFG gives v_u (rho - rho^(2 gamma)) / ((2 gamma - 1)"
             "(1 - rho)) with rho = v_c / v_u")
EXPECTED = "zero"
COUNTEREXAMPLE = ""

s = sympy.Symbol("s", positive=True)
"""The VE noise variance :math:`\\sigma^2` (the time variable of the moment ODEs)."""
s1 = sympy.Symbol("s_1", positive=True)
"""Where the sampler starts: :math:`\\sigma_{max}^2`."""
start_var = sympy.Symbol("Sigma_1", positive=True)
"""The variance of the start law at :math:`s_1`."""
start_offset = sympy.Symbol("k", nonnegative=True)
"""The start law's variance minus :math:`s_1` (0: the prior; :math:`v_c`: the noised conditional)."""
v_c = sympy.Symbol("v_c", positive=True)
v_u = sympy.Symbol("v_u", positive=True)
gamma = sympy.Symbol("gamma", positive=True)
"""Bradley & Nakkiran's :math:`\\gamma`: diffusers' guidance_scale."""


def rate(at: sympy.Expr = s) -> sympy.Expr:
    r""":math:`A(s) = \gamma/(v_c + s) + (1 - \gamma)/(v_\varnothing + s)`: minus the CFG score's slope."""
    return gamma / (v_c + at) + (1 - gamma) / (v_u + at)


def paper_ddim() -> sympy.Expr:
    r"""The closed form of the DDIM-CFG (probability-flow ODE) variance: :math:`v_c^\gamma v_\varnothing^{1-\gamma}`."""
    return v_c**gamma * v_u**(1 - gamma)


def paper_ddpm() -> sympy.Expr:
    r"""The closed form of the DDPM-CFG (reverse SDE) variance:
    :math:`v_\varnothing (\rho - \rho^{2\gamma}) / ((2\gamma - 1)(1 - \rho))`, :math:`\rho = v_c / v_\varnothing`."""
    rho = v_c / v_u
    return v_u * (rho - rho**(2 * gamma)) / ((2 * gamma - 1) * (1 - rho))


def tilted_variance() -> sympy.Expr:
    r"""The :math:`\gamma`-powered law :math:`p(x|c)^\gamma p(x)^{1-\gamma}`'s variance."""
    return 1 / (gamma / v_c + (1 - gamma) / v_u)


def ddim_variance(at: sympy.Expr = s) -> sympy.Expr:
    r"""The ODE's solution at ``at`` from :math:`\Sigma(s_1) = \Sigma_1`:
    :math:`\Sigma_1 \big(\tfrac{v_c + s}{v_c + s_1}\big)^{\gamma}\big(\tfrac{v_\varnothing + s}{v_\varnothing + s_1}
    \big)^{1 - \gamma}`."""
    return start_var * ((v_c + at) / (v_c + s1))**gamma * ((v_u + at) / (v_u + s1))**(1 - gamma)


def _mu(at: sympy.Expr) -> sympy.Expr:
    return (v_c + at)**(2 * gamma) * (v_u + at)**(2 - 2 * gamma)


def _ratio(at: sympy.Expr) -> sympy.Expr:
    return (v_c + at) / (v_u + at)


def ddpm_variance(at: sympy.Expr = s) -> sympy.Expr:
    r"""The SDE's solution at ``at`` from :math:`\Sigma(s_1) = \Sigma_1`:
    :math:`\mu(s)\big[\Sigma_1/\mu(s_1) + (r(s_1)^{1-2\gamma} - r(s)^{1-2\gamma}) / ((1 - 2\gamma)(v_\varnothing -
    v_c))\big]`."""
    return _mu(at) * (start_var / _mu(s1) + (_ratio(s1)**(1 - 2 * gamma) - _ratio(at)**(1 - 2 * gamma))
                      / ((1 - 2 * gamma) * (v_u - v_c)))


def _zero(expr: sympy.Expr) -> sympy.Expr:
    """Simplified, with powers of positive symbols combined (every base here is positive)."""
    split = sympy.expand_power_base(sympy.expand(expr), force=True)
    return sympy.simplify(sympy.powsimp(sympy.expand(split), force=True))


def _log_ratio(lhs: sympy.Expr, rhs: sympy.Expr) -> sympy.Expr:
    """:math:`\\log(lhs) - \\log(rhs)` with the logarithms of products and powers expanded (both sides positive
    products of powers): 0 iff they are equal."""
    return sympy.simplify(sympy.expand(sympy.expand_log(sympy.log(lhs), force=True)
                                       - sympy.expand_log(sympy.log(rhs), force=True)))


def ode_residuals() -> dict[str, sympy.Expr]:
    """Each solution satisfies its ODE and its value at :math:`s_1` (each entry must be 0)."""
    ddim, ddpm = ddim_variance(), ddpm_variance()
    return {"DDIM: d Sigma/ds - A Sigma": _zero(sympy.diff(ddim, s) - rate() * ddim),
            "DDIM: Sigma(s_1) - Sigma_1": _zero(ddim_variance(s1) - start_var),
            "DDPM: d Sigma/ds - (2 A Sigma - 1)": _zero(sympy.diff(ddpm, s) - (2 * rate() * ddpm - 1)),
            "DDPM: Sigma(s_1) - Sigma_1": _zero(ddpm_variance(s1) - start_var)}


def _start_factors() -> tuple[sympy.Expr, sympy.Expr]:
    r""":math:`q_1 = \Sigma_1/(v_\varnothing + s_1)`, :math:`q_2 = (v_\varnothing + s_1)/(v_c + s_1)` with
    :math:`\Sigma_1 = s_1 + k`; both tend to 1 as :math:`s_1 \to \infty`."""
    return (s1 + start_offset) / (v_u + s1), (v_u + s1) / (v_c + s1)


def ddim_limit() -> tuple[sympy.Expr, sympy.Expr]:
    r"""``(limit, rewrite residual)``: the ODE's variance at :math:`s_0 = 0` is
    :math:`v_c^\gamma v_\varnothing^{1-\gamma} q_1 q_2^\gamma`; its limit as :math:`s_1 \to \infty`, and the
    residual of that rewrite (0)."""
    q1, q2 = _start_factors()
    at_zero = ddim_variance(0).subs(start_var, s1 + start_offset)
    rewrite = _log_ratio(at_zero, paper_ddim() * q1 * q2**gamma)
    lim_q1, lim_q2 = (sympy.limit(q, s1, sympy.oo) for q in (q1, q2))
    return paper_ddim() * lim_q1 * lim_q2**gamma, rewrite


def ddpm_limit() -> tuple[sympy.Expr, sympy.Expr]:
    r"""``(limit, rewrite residual)``: at :math:`s_0 = 0`, :math:`\Sigma_1/\mu(s_1) = q_1 q_2^{2\gamma}/(v_\varnothing
    + s_1)` and :math:`r(s_1) = 1/q_2`; the limit as :math:`s_1 \to \infty` follows from the limits of
    :math:`q_1, q_2, 1/(v_\varnothing + s_1)` (1, 1, 0) and the continuity of powers at 1."""
    q1, q2 = _start_factors()
    decay = 1 / (v_u + s1)
    rewrite = _log_ratio((s1 + start_offset) / _mu(s1), q1 * q2**(2 * gamma) * decay)
    lim_q1, lim_q2, lim_decay = (sympy.limit(q, s1, sympy.oo) for q in (q1, q2, decay))
    head = lim_q1 * lim_q2**(2 * gamma) * lim_decay  # the start's share: Sigma_1 / mu(s_1) -> 0
    limit = _mu(0) * (head + ((1 / lim_q2)**(1 - 2 * gamma) - _ratio(0)**(1 - 2 * gamma))
                      / ((1 - 2 * gamma) * (v_u - v_c)))
    return limit, rewrite


def residual() -> sympy.Expr:
    """The paper's DDPM-CFG closed form minus the limit of the SDE's solution (the DDIM form is a further
    residual)."""
    return _zero(paper_ddpm() - ddpm_limit()[0])


def further_residuals() -> dict[str, sympy.Expr]:
    """The DDIM form, the two solutions' checks and the two limit rewrites (each 0)."""
    ddim_lim, ddim_rewrite = ddim_limit()
    _, ddpm_rewrite = ddpm_limit()
    return {"DDIM closed form minus the limit of the ODE's solution": _zero(paper_ddim() - ddim_lim),
            **ode_residuals(),
            "DDIM rewrite at s_0 = 0": ddim_rewrite,
            "DDPM rewrite of Sigma_1 / mu(s_1)": ddpm_rewrite,
            "both forms at gamma = 1 minus v_c (no guidance: the conditional law)":
                _zero((paper_ddim() - v_c).subs(gamma, 1)) + _zero((paper_ddpm() - v_c).subs(gamma, 1))}


def ddim_ddpm_gap() -> sympy.Expr:
    r"""The DDPM form minus the DDIM form: nonzero away from :math:`\gamma = 1` (the two samplers differ)."""
    return sympy.simplify(paper_ddpm() - paper_ddim())
