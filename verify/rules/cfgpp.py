r"""CFG++ (Chung, Kim, Park, Nam & Ye 2024): guide the clean estimate, re-noise with the unconditional eps."""

from __future__ import annotations

import math

import torch

from toy_models._checks import as_scalar
from toy_models.schedules import Schedule, get_schedule

from . import register
from ._base import LinearRule, StepContext
from ._math import combine_homogeneous, predictions

Tensor = torch.Tensor

RENOISING_SAMPLERS = ("ddim", "ddpm")


def _check_lam(lam) -> float:
    value = as_scalar(lam, "lam")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"lam: CFG++'s lambda interpolates between the unconditional and the conditional estimate "
                         f"and must lie in [0, 1], got {value!r}")
    return value


def cfgpp_eps(eps_uncond: Tensor, eps_cond: Tensor, *, lam: float) -> Tensor:
    r"""The eps that fixes CFG++'s clean estimate, :math:`\varepsilon_\lambda = \varepsilon_\varnothing +
    \lambda(\varepsilon_c - \varepsilon_\varnothing)` (one ``torch.lerp``), ``lam`` in [0, 1]; the re-noising eps is
    :math:`\varepsilon_\varnothing` itself and is not formed here."""
    lam = _check_lam(lam)
    tensors = predictions({"eps_uncond": eps_uncond, "eps_cond": eps_cond})
    return combine_homogeneous(lambda u, c: torch.lerp(u, c, lam), tensors, "eps_cond")


def equivalent_guidance_scale(lam: float, t: float, s: float, schedule: str | Schedule = "vp-linear", *,
                              sampler: str = "ddim", eta: float = 0.0) -> float:
    r"""The CFG ``guidance_scale`` whose one step from ``t`` to ``s < t`` equals one CFG++ step with ``lam``.

    Write the re-noising step of DDIM (eta) and DDPM as :math:`x_s = \alpha_s\hat x_0 + \rho\,\varepsilon_r + c z`
    with :math:`\hat x_0 = (x_t - \sigma_t\tilde\varepsilon)/\alpha_t`; CFG has :math:`\varepsilon_r =
    \tilde\varepsilon`, CFG++ has :math:`\tilde\varepsilon = \varepsilon_\lambda` and :math:`\varepsilon_r =
    \varepsilon_\varnothing`. Both are :math:`\tfrac{\alpha_s}{\alpha_t} x_t + c z` plus a combination of the two
    predictions; matching the coefficient of :math:`\varepsilon_c - \varepsilon_\varnothing` (that of
    :math:`\varepsilon_\varnothing` then matches too) gives

    .. math::  g = \frac{\lambda\,\alpha_s\sigma_t}{\alpha_s\sigma_t - \alpha_t\rho}
               = \frac{\lambda}{1 - \sqrt{1 - \eta^2 q}\;e^{-\Delta/2}}, \qquad
               \Delta = \lambda_s - \lambda_t > 0,\quad q = 1 - e^{-\Delta},

    (:math:`\lambda_t` the log-SNR), with :math:`\rho = \sigma_s\sqrt{1 - \eta^2 q}` for DDIM and
    :math:`\rho = \sigma_s\sqrt{1 - q}` for DDPM (:math:`\eta = 1`). DDIM at :math:`\eta = 0`:
    :math:`g = \lambda/(1 - e^{-\Delta/2}) \approx 2\lambda/\Delta`; DDPM: :math:`g = \lambda/q \approx
    \lambda/\Delta`. A last step to :math:`\sigma_s = 0` (:math:`\Delta = \infty`) gives :math:`g = \lambda`.
    So the CFG strength CFG++ applies grows without bound as its steps are refined, at a rate that differs between
    DDIM and DDPM."""
    lam = _check_lam(lam)
    if not isinstance(sampler, str) or sampler not in RENOISING_SAMPLERS:
        raise ValueError(f"sampler: CFG++ re-noises only in {RENOISING_SAMPLERS}, got {sampler!r}")
    eta = 1.0 if sampler == "ddpm" else as_scalar(eta, "eta")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta: must lie in [0, 1], got {eta!r}")
    t, s = as_scalar(t, "t"), as_scalar(s, "s")
    if not 0.0 <= s < t <= 1.0:
        raise ValueError(f"t, s: need 0 <= s < t <= 1, got t={t!r}, s={s!r}")
    sched = get_schedule(schedule)
    lam_t, lam_s = (float(v) for v in sched.log_snr(torch.tensor([t, s], dtype=torch.float64)))
    if not math.isfinite(lam_t):
        raise ValueError(f"t: the log-SNR is infinite at t={t!r} on {sched.name!r}")
    if lam_s == math.inf:
        return lam
    delta = lam_s - lam_t
    q = -math.expm1(-delta)
    # 1 - sqrt(1 - eta^2 q) e^{-delta/2}, without cancellation when delta is small and eta = 0 or 1
    if eta == 0.0:
        denominator = -math.expm1(-0.5 * delta)
    elif eta == 1.0:
        denominator = q
    else:
        denominator = 1.0 - math.sqrt(1.0 - eta * eta * q) * math.exp(-0.5 * delta)
    return lam / denominator


@register
class CFGPlusPlus(LinearRule):
    r"""CFG++ (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance for Diffusion Models",
    arXiv 2406.08070, Algorithm 1 (DDIM) and its ancestral variant): the clean estimate is taken from the
    interpolated eps, the re-noising from the unconditional one,

    .. math::  \hat x_0 = \frac{x_t - \sigma_t\varepsilon_\lambda}{\alpha_t}, \quad
               \varepsilon_\lambda = \varepsilon_\varnothing + \lambda(\varepsilon_c - \varepsilon_\varnothing),
               \quad x_s = \alpha_s\hat x_0 + \sigma_s\,\varepsilon_\varnothing \qquad (\lambda \in [0, 1]).

    So ``linear_weights`` ``{cond: lam, uncond: 1 - lam}`` are the weights of the guided clean estimate
    :math:`\hat x_0 = \lambda\hat x_0^c + (1-\lambda)\hat x_0^\varnothing` (an interpolation: it never leaves the
    segment between the two estimates), and ``renoise_branch = "uncond"``: samplers with a re-noising step (DDIM,
    DDPM) use :math:`\varepsilon_\varnothing` there; the others refuse a CFG++ denoiser.

    **No continuous-time law.** Because the sampler re-noises with :math:`\varepsilon_\varnothing`, a CFG++ run is not
    a discretisation of any guided ODE or SDE with these weights: the exact continuous-time laws
    (:mod:`verify.exact_law`'s moment ODEs) and the tilted targets (:mod:`verify.tilted`) of the weights do not apply.
    One DDIM step of CFG++ from t to s *is* one DDIM step of CFG with ``guidance_scale``
    :math:`g = \lambda\alpha_s\sigma_t/(\alpha_s\sigma_t - \alpha_t\sigma_s) = \lambda/(1 - e^{-(\lambda_s -
    \lambda_t)/2})` (:func:`equivalent_guidance_scale`, ``proofs/cfgpp_ddim.py``): about :math:`2\lambda/\Delta` on
    a step of :math:`\Delta` in log-SNR. At fixed :math:`\lambda` the equivalent CFG strength therefore grows in
    proportion to the number of steps and CFG++ has no step-count-independent continuous-time limit; what is fixed
    across step counts is :math:`\lambda` per step, not a guidance strength per unit of log-SNR.

    Implementations: the authors' code (``CFGpp-diffusion/CFGpp``, ``latent_diffusion.py``, solver ``ddim_cfg++``)
    is this DDIM step on :math:`\bar\alpha` with its parameter named ``cfg_guidance``; its README says
    :math:`\lambda \in [0, 1]` acts like CFG's :math:`\omega \in [1, 12.5]`, a fixed correspondence which the
    identity above makes step-count dependent. ComfyUI's ``euler_cfg_pp`` / ``euler_ancestral_cfg_pp``
    (``comfy/k_diffusion/sampling.py``) write the same update in the k-diffusion sigma form (guided ``denoised``,
    direction from the unconditional ``denoised``) and read the node's CFG value as :math:`\lambda`;
    its ``dpmpp_sde_cfg_pp`` divides the CFG value by 12.5 first. Linear in the predictions with weights summing
    to 1, so its guided estimate is the same in every prediction space (eps by default)."""

    name = "cfgpp"
    reference = ("Chung, Kim, Park, Nam & Ye 2024, 'CFG++: Manifold-constrained Classifier Free Guidance for "
                 "Diffusion Models' (arXiv 2406.08070), Algorithm 1")
    renoise_branch = "uncond"

    @classmethod
    def examples(cls, world) -> list[dict]:
        return [{"lam": 0.6}]

    def __init__(self, *, lam: float, space: str = "eps"):
        self.lam = _check_lam(lam)
        self._set_space(space)
        self.branches = ("uncond", "cond")
        self._weights = {"cond": self.lam, "uncond": 1.0 - self.lam}
        self.params = {"lam": self.lam} if space == "eps" else {"lam": self.lam, "space": space}

    def combine(self, preds: dict[str, Tensor], ctx: StepContext) -> Tensor:
        return cfgpp_eps(preds["uncond"], preds["cond"], lam=self.lam)
