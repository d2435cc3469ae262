r"""One DDIM (or DDPM) step of CFG++ is one step of CFG at a step-dependent guidance scale.

CFG++ (Chung et al. 2024, arXiv 2406.08070, Algorithm 1): :math:`\hat x_0 = (x_t - \sigma_t\varepsilon_\lambda)/
\alpha_t` with :math:`\varepsilon_\lambda = \varepsilon_\varnothing + \lambda(\varepsilon_c - \varepsilon_\varnothing)`,
then :math:`x_s = \alpha_s\hat x_0 + \rho\,\varepsilon_\varnothing + c z`. CFG at ``guidance_scale`` g takes the same
step with :math:`\varepsilon_g = \varepsilon_\varnothing + g(\varepsilon_c - \varepsilon_\varnothing)` in both places.
:math:`\rho` is the re-noising coefficient: :math:`\sigma_s` for deterministic DDIM,
:math:`\sigma_s\sqrt{1 - \eta^2 q}` with noise, :math:`\alpha_t\sigma_s^2/(\alpha_s\sigma_t)` for DDPM
(:mod:`verify.samplers`); it is kept a free positive symbol, so one residual covers all of them. The noise term
:math:`c z` is common to both and drops out.

Proved (:func:`residual`, zero): the two steps agree for every :math:`x_t, \varepsilon_c, \varepsilon_\varnothing`
when :math:`g = \lambda\alpha_s\sigma_t/(\alpha_s\sigma_t - \alpha_t\rho)`. Further forms: with
:math:`\alpha = e^{\lambda/2}\sigma` written through the log-SNR, deterministic DDIM gives
:math:`g = \lambda/(1 - e^{-\Delta/2})` and DDPM gives :math:`g = \lambda/(1 - e^{-\Delta})`,
:math:`\Delta = \lambda_s - \lambda_t`; and :math:`\Delta\,g \to 2\lambda` (DDIM), :math:`\lambda` (DDPM) as
:math:`\Delta \to 0`: at fixed :math:`\lambda` the equivalent CFG scale grows like (number of steps) and there is no
step-count-independent continuous-time limit.
"""

from __future__ import annotations

import sympy

from ._common import tidy

NAME = "cfgpp_ddim"
CLAIM_IDS = ("L-CFGPP",)
SOURCE = ("Chung et al. 2024, 'CFG++: Manifold-constrained Classifier Free Guidance for Diffusion Models' "
          "(arXiv 2406.08070), Algorithm 1")
STATEMENT = ("A DDIM step of CFG++ with lambda from t to s equals a DDIM step of CFG with guidance_scale "
             "g = lambda alpha_s sigma_t / (alpha_s sigma_t - alpha_t sigma_s) = lambda / (1 - exp(-(logSNR_s - "
             "logSNR_t)/2)); DDPM: g = lambda / (1 - exp(-(logSNR_s - logSNR_t))).")
EXPECTED = "zero"
COUNTEREXAMPLE = ""

x_t, eps_c, eps_u = sympy.symbols("x_t eps_c eps_u", real=True)
alpha_t, sigma_t, alpha_s, sigma_s, rho = sympy.symbols("alpha_t sigma_t alpha_s sigma_s rho", positive=True)
lam = sympy.Symbol("lambda", nonnegative=True)
g = sympy.Symbol("g", real=True)
log_snr_t, delta = sympy.symbols("logsnr_t Delta", positive=True)


def _step(eps_x0: sympy.Expr, eps_renoise: sympy.Expr, a_t=alpha_t, s_t=sigma_t, a_s=alpha_s, r=rho) -> sympy.Expr:
    """The re-noising step without its noise term: alpha_s x0(eps_x0) + rho eps_renoise."""
    x0 = (x_t - s_t * eps_x0) / a_t
    return a_s * x0 + r * eps_renoise


def equivalent_scale(a_t=alpha_t, s_t=sigma_t, a_s=alpha_s, r=rho) -> sympy.Expr:
    return lam * a_s * s_t / (a_s * s_t - a_t * r)


def residual() -> sympy.Expr:
    """CFG++'s step minus CFG's step at the equivalent scale."""
    eps_lam = eps_u + lam * (eps_c - eps_u)
    cfgpp = _step(eps_lam, eps_u)
    eps_g = eps_u + equivalent_scale() * (eps_c - eps_u)
    cfg = _step(eps_g, eps_g)
    return tidy(sympy.simplify(cfgpp - cfg))


def further_residuals() -> dict[str, sympy.Expr]:
    """The log-SNR forms for deterministic DDIM and DDPM, and the small-step limits Delta g -> 2 lambda, lambda."""
    # sigma = 1 at t and s without loss of generality (g depends on alpha/sigma only); alpha = e^{logSNR/2}
    a_t, a_s = sympy.exp(log_snr_t / 2), sympy.exp((log_snr_t + delta) / 2)
    ddim = equivalent_scale(a_t, 1, a_s, 1)
    ddpm = equivalent_scale(a_t, 1, a_s, a_t / (a_s * 1))  # rho = alpha_t sigma_s^2 / (alpha_s sigma_t)
    return {
        "DDIM: g = lambda / (1 - exp(-Delta/2))": tidy(sympy.simplify(ddim - lam / (1 - sympy.exp(-delta / 2)))),
        "DDPM: g = lambda / (1 - exp(-Delta))": tidy(sympy.simplify(ddpm - lam / (1 - sympy.exp(-delta)))),
        "DDIM: Delta g -> 2 lambda as Delta -> 0": tidy(sympy.limit(delta * lam / (1 - sympy.exp(-delta / 2)),
                                                                    delta, 0) - 2 * lam),
        "DDPM: Delta g -> lambda as Delta -> 0": tidy(sympy.limit(delta * lam / (1 - sympy.exp(-delta)), delta, 0)
                                                      - lam),
    }
