r"""The exact sampler of the tilted target: a process sampler driven by the score of the noised tilted law.

A linear rule with weights :math:`a_b` on a world has the tilted target :math:`\pi \propto \prod_b p(x \mid
c_b)^{a_b}` (:mod:`verify.tilted`). Its forward noising :math:`\pi_t` (the law of :math:`\alpha_t x_0 + \sigma_t
\varepsilon`, :math:`x_0 \sim \pi`) is a marginal of the forward process, so the reverse SDE and the PF-ODE driven by
:math:`\nabla\log\pi_t` carry :math:`\pi_1` to :math:`\pi` (Anderson 1982; Song et al. 2021, eqs. 6 and 13): any
registered process sampler with :class:`~verify.tilted_noised.TiltedDenoiser` in place of the guided denoiser
samples :math:`\pi` up to its own discretisation. This module registers that as the sampler ``exact``: DDPM
(:func:`verify.samplers.ddpm`) with the eps of :math:`\pi_t`. It needs the exact noised laws of the world, so the
guided denoiser's base must be an :class:`~toy_models.denoiser.AnalyticDenoiser`; a trained network has no exact
tilted score (for those, :mod:`verify.tilted_smc`'s ``fkc``, :mod:`verify.tilted_langevin`'s ``langevin`` and
``mcmc``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from toy_models.denoiser import AnalyticDenoiser, Denoiser
from toy_models.gaussian_mixture import Condition

from .rules._base import GuidedDenoiser
from .samplers import ddpm, register_tilted_sampler
from .tilted_noised import TiltedDenoiser

__all__ = ["exact", "tilted_denoiser"]


def tilted_denoiser(denoiser: Denoiser) -> TiltedDenoiser:
    """The :class:`~verify.tilted_noised.TiltedDenoiser` of a guided analytic denoiser (its world, rule, conditions
    and schedule). Refused (``ValueError`` naming ``denoiser``): anything but a guided denoiser whose base is an
    :class:`~toy_models.denoiser.AnalyticDenoiser`, and the rules :func:`verify.tilted.linear_terms` refuses."""
    if not isinstance(denoiser, GuidedDenoiser) or not isinstance(denoiser.denoiser, AnalyticDenoiser):
        raise ValueError(f"denoiser: the exact sampler needs the exact noised laws of a world: a guided "
                         f"AnalyticDenoiser (rules.get(name, ...).guide(AnalyticDenoiser(world), conditions)); got "
                         f"{denoiser!r}")
    base = denoiser.denoiser
    try:
        return TiltedDenoiser(base.world, denoiser.rule, denoiser.conditions, base.schedule)
    except (TypeError, ValueError) as err:
        raise ValueError(f"denoiser: {err}") from None


@register_tilted_sampler("exact", limit="steps -> infinity (DDPM's first order), exact in law in that limit",
                         analytic_only=True)
def exact(denoiser: Denoiser, x: torch.Tensor, timesteps, *, condition: Condition = None, eta: float = 0.0,
          generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
          callback: Callable | None = None) -> torch.Tensor:
    r""":func:`verify.samplers.ddpm` driven by :func:`tilted_denoiser` ``(denoiser)``: from draws of :math:`\pi_{t_0}`
    (at :math:`t_0 = 1` on VP, :math:`\mathcal N(0, \sigma_1^2 I)` up to :math:`\alpha_1^2`), a sample of the tilted
    target :math:`\pi` of the guided ``denoiser``'s rule up to DDPM's first-order error in the step. ``eta`` is
    ignored; ``generator`` / ``noise`` and ``callback`` as in :func:`verify.samplers.ddpm`."""
    if condition is not None:
        raise ValueError("condition: the guided denoiser carries its branch conditions; pass condition=None")
    return ddpm(tilted_denoiser(denoiser), x, timesteps, generator=generator, noise=noise, callback=callback)
