"""Implementations for the rule audit's own tests: independent correct routes that must pass, and mutants (the bugs
that reach users of real libraries) that must fail with the diagnosis naming what they compute instead.

Every function here is written independently of :mod:`verify.rules` (plain torch on the dict of branch predictions),
so a correct route passing is evidence about the audit, not the rule checking itself. ``ROUTES`` and ``MUTANTS``
list them with the rule and parameters they are audited against; a mutant's ``expect`` is a substring of the
diagnosis it must get, or ``None`` where no known variant describes it (it must still fail).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


def _rows(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(1, t.ndim))


def _norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).reshape(-1, *([1] * (t.ndim - 1)))


def _unit(t: torch.Tensor) -> torch.Tensor:
    n = _norm(t)
    return torch.where(n > 0, t / torch.where(n > 0, n, torch.ones_like(n)), torch.zeros_like(t))


# ----------------------------------------------------------------------------------------------------------------
# APG (Sadat et al. 2024, Algorithm 1), in x0 space as the audit feeds it
# ----------------------------------------------------------------------------------------------------------------
def _apg(preds, guidance_scale, eta, norm_threshold, momentum, state, *, base="cond", shift=-1.0, norm=_norm,
         unit=_unit):
    c, u = preds["cond"], preds["uncond"]
    d = c - u
    if momentum:
        previous = state.get("average")
        d = d if previous is None else d + momentum * previous
        state["average"] = d
    if norm_threshold is not None:
        n = norm(d)
        d = d * torch.clamp(norm_threshold / torch.where(n > 0, n, torch.ones_like(n)), max=1.0)
    e = unit(c)
    parallel = (d * e).sum(dim=_rows(d), keepdim=True) * e if norm is _norm else \
        (d * e).sum(dim=-1, keepdim=True) * e
    update = d - parallel + eta * parallel
    return preds[base] + (guidance_scale + shift) * update


def apg_paper(preds, *, guidance_scale, eta, norm_threshold, momentum, state):
    """Algorithm 1 as written: D_c + (w - 1) * update."""
    return _apg(preds, guidance_scale, eta, norm_threshold, momentum, state)


def apg_diffusers_default(preds, *, guidance_scale, eta, norm_threshold, momentum, state):
    """diffusers' normalized_guidance: D_u + g * update."""
    return _apg(preds, guidance_scale, eta, norm_threshold, momentum, state, base="uncond", shift=0.0)


def apg_original_formulation(preds, *, guidance_scale, eta, norm_threshold, momentum, state):
    """diffusers' use_original_formulation=True read as the default: D_c + g * update."""
    return _apg(preds, guidance_scale, eta, norm_threshold, momentum, state, shift=0.0)


def _last_norm(t):
    return t.norm(dim=-1, keepdim=True)


def _last_unit(t):
    n = _last_norm(t)
    return torch.where(n > 0, t / torch.where(n > 0, n, torch.ones_like(n)), torch.zeros_like(t))


def apg_last_axis(preds, *, guidance_scale, eta, norm_threshold, momentum, state):
    """Norms and projections over the last axis only (right for [N, d], wrong for images and packed latents)."""
    return _apg(preds, guidance_scale, eta, norm_threshold, momentum, state, norm=_last_norm, unit=_last_unit)


def apg_whole_batch(preds, *, guidance_scale, eta, norm_threshold, momentum, state):
    """Norms over the whole batch (torch's default dim=None): one sample's cap depends on the others."""
    def batch_norm(t):
        return t.norm().reshape(*([1] * t.ndim)).expand(t.shape[0], *([1] * (t.ndim - 1)))

    def batch_unit(t):
        n = t.norm()
        return t / n if n > 0 else torch.zeros_like(t)

    c, u = preds["cond"], preds["uncond"]
    d = c - u
    if norm_threshold is not None:
        n = d.norm()
        d = d * min(1.0, norm_threshold / float(n)) if n > 0 else d
    e = batch_unit(c)
    parallel = (d * e).sum() * e
    del batch_norm
    return c + (guidance_scale - 1.0) * (d - parallel + eta * parallel)


def apg_float32(preds, *, guidance_scale, eta, norm_threshold, momentum, state):
    """The whole rule in float32 (the inputs cast down, the result cast back)."""
    low = {b: p.float() for b, p in preds.items()}
    return _apg(low, guidance_scale, eta, norm_threshold, momentum, state).to(preds["cond"].dtype)


_LEAKY: dict[str, Any] = {}


def apg_momentum_module_global(preds, *, guidance_scale, eta, norm_threshold, momentum):
    """The momentum buffer in a module-level dict, reset only when the batch's shape or dtype changes: it leaks
    across runs."""
    key = (tuple(preds["cond"].shape), preds["cond"].dtype)
    if _LEAKY.get("shape") != key:
        _LEAKY.clear()
        _LEAKY["shape"] = key
    return _apg(preds, guidance_scale, eta, norm_threshold, momentum, _LEAKY)


# ----------------------------------------------------------------------------------------------------------------
# CFG-Zero* (Fan et al. 2025), in velocity space with zero-init of the first step
# ----------------------------------------------------------------------------------------------------------------
def _zero_star(preds, guidance_scale, step, zero_init_steps, *, scaled_shift=True, reduce=_rows):
    c, u = preds["cond"], preds["uncond"]
    if step < zero_init_steps:
        return torch.zeros_like(c)
    dims = reduce(c)
    uu = (u * u).sum(dim=dims, keepdim=True)
    s = (c * u).sum(dim=dims, keepdim=True) / torch.where(uu > 0, uu, torch.ones_like(uu))
    base = s * u
    return base + guidance_scale * (c - (base if scaled_shift else u))


def zero_star_paper(preds, *, guidance_scale, zero_init_steps, step):
    return _zero_star(preds, guidance_scale, step, zero_init_steps)


def zero_star_unscaled_shift(preds, *, guidance_scale, zero_init_steps, step):
    """An early diffusers guider: the shift formed from the unscaled unconditional prediction."""
    return _zero_star(preds, guidance_scale, step, zero_init_steps, scaled_shift=False)


def zero_star_no_zero_init(preds, *, guidance_scale, zero_init_steps, step):
    """Zero-init forgotten."""
    return _zero_star(preds, guidance_scale, 10**9, zero_init_steps)


def zero_star_last_axis(preds, *, guidance_scale, zero_init_steps, step):
    """The optimised scale over the last axis only."""
    return _zero_star(preds, guidance_scale, step, zero_init_steps, reduce=lambda t: (-1,))


# ----------------------------------------------------------------------------------------------------------------
# Guidance rescale (Lin et al. 2023, eqs. 15-16), in v space
# ----------------------------------------------------------------------------------------------------------------
def _rescale(preds, guidance_scale, phi, dims=_rows):
    c, u = preds["cond"], preds["uncond"]
    guided = u + guidance_scale * (c - u)
    std_c = c.std(dim=dims(c), keepdim=True)
    std_g = guided.std(dim=dims(c), keepdim=True)
    ratio = torch.where(std_g > 0, std_c / torch.where(std_g > 0, std_g, torch.ones_like(std_g)),
                        torch.ones_like(std_g))
    return phi * guided * ratio + (1.0 - phi) * guided


def rescale_paper(preds, *, guidance_scale, phi):
    return _rescale(preds, guidance_scale, phi)


def rescale_phi_swapped(preds, *, guidance_scale, phi):
    """phi and 1 - phi exchanged."""
    return _rescale(preds, guidance_scale, 1.0 - phi)


def rescale_batch_std(preds, *, guidance_scale, phi):
    """Standard deviations over the whole batch."""
    return _rescale(preds, guidance_scale, phi, dims=lambda t: tuple(range(t.ndim)))


# ----------------------------------------------------------------------------------------------------------------
# Linear rules through the dict-of-branches form; CFG++'s re-noising pair
# ----------------------------------------------------------------------------------------------------------------
def negative_001(preds, *, guidance_scale):
    """source text 001's negative prompt: the negative branch in place of the unconditional one."""
    return preds["negative"] + guidance_scale * (preds["cond"] - preds["negative"])


def negative_001_on_uncond(preds, *, guidance_scale):
    """The negative prompt ignored: the negative branch treated as the positive (swapped)."""
    return preds["cond"] + guidance_scale * (preds["negative"] - preds["cond"])


def cfgpp_pair(preds, *, lam):
    """CFG++: the guided eps fixes x0, the unconditional eps re-noises."""
    return preds["uncond"] + lam * (preds["cond"] - preds["uncond"]), preds["uncond"]


def cfgpp_renoise_guided(preds, *, lam):
    """CFG++ re-noising with the guided eps (what plain CFG does): the re-noise branch is wrong."""
    guided = preds["uncond"] + lam * (preds["cond"] - preds["uncond"])
    return guided, guided


@dataclass(frozen=True)
class Case:
    """An implementation, the rule and parameters it is audited against, and (mutants) the diagnosis expected."""

    name: str
    impl: Any
    rule: str
    params: dict = field(default_factory=dict)
    expect: str | None = None


APG_CAPPED = {"eta": 0.0, "norm_threshold": 2.0}
APG_MOMENTUM = {"eta": 0.0, "momentum": -0.5}

ROUTES = [
    Case("apg_paper", apg_paper, "apg", APG_CAPPED),
    Case("apg_paper_momentum", apg_paper, "apg", APG_MOMENTUM),
    Case("zero_star_paper", zero_star_paper, "cfg_zero_star"),
    Case("rescale_paper", rescale_paper, "rescale", {"phi": 0.7}),
    Case("negative_001", negative_001, "negative_prompt_001"),
    Case("cfgpp_pair", cfgpp_pair, "cfgpp", {"lam": 0.6}),
]

MUTANTS = [
    Case("apg_diffusers_default", apg_diffusers_default, "apg", APG_CAPPED, "diffusers' form D_uncond + g"),
    Case("apg_original_formulation", apg_original_formulation, "apg", APG_CAPPED, "guidance_scale + 1"),
    Case("apg_last_axis", apg_last_axis, "apg", APG_CAPPED, "over the last axis only"),
    Case("apg_whole_batch", apg_whole_batch, "apg", APG_CAPPED, "whole batch"),
    Case("apg_float32", apg_float32, "apg", APG_CAPPED, "computed in float32"),
    Case("apg_momentum_module_global", apg_momentum_module_global, "apg", APG_MOMENTUM, "never reset"),
    Case("zero_star_unscaled_shift", zero_star_unscaled_shift, "cfg_zero_star", {}, "early diffusers shift"),
    Case("zero_star_no_zero_init", zero_star_no_zero_init, "cfg_zero_star", {}, None),
    Case("zero_star_last_axis", zero_star_last_axis, "cfg_zero_star", {}, "over the last axis only"),
    Case("rescale_phi_swapped", rescale_phi_swapped, "rescale", {"phi": 0.7}, None),
    Case("rescale_batch_std", rescale_batch_std, "rescale", {"phi": 0.7}, "whole batch"),
    Case("negative_001_on_uncond", negative_001_on_uncond, "negative_prompt_001", {}, "branches swapped"),
    Case("cfgpp_renoise_guided", cfgpp_renoise_guided, "cfgpp", {"lam": 0.6}, None),
]
