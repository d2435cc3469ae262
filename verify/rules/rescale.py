r"""Guidance rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", section 3.4)."""

from __future__ import annotations

import torch

from toy_models import parametrization as param
from toy_models._checks import as_scalar
from toy_models._pow2 import ldexp

from . import register
from ._base import Rule, StepContext
from ._math import convert_named, guidance_scale_from, predictions
from .cfg import cfg

Tensor = torch.Tensor


def _check_phi(phi) -> float:
    phi = as_scalar(phi, "phi")
    if not 0.0 <= phi <= 1.0:
        raise ValueError(f"phi: must lie in [0, 1], got {phi!r}")
    return phi


def rescale_rows(guided: Tensor, cond: Tensor, phi: float, *, space: str = "v") -> tuple[Tensor, Tensor]:
    """Eqs. 15-16 on predictions already in one space: ``(blended, spread)`` with ``spread`` the ``[N, 1]`` mask of
    rows whose guided prediction has a non-zero spread (the others are to be returned unchanged; see
    :func:`rescale`). ``guided`` and ``cond``: validated ``[N, d]``, d >= 2."""
    (m_g, e_g), (m_c, e_c) = _spread(guided), _spread(cond)
    spread = m_g > 0
    # ratio = std_c / std_g = (m_c / m_g) 2^(e_c - e_g): the mantissa quotient lies in (1/2, 2) and never
    # overflows; the power of two is applied once, to the product, exactly (unless the product itself over- or
    # underflows), so this is bit for bit phi * y * (std_c / std_g) wherever that is representable
    rescaled = ldexp((phi * guided) * (m_c / torch.where(spread, m_g, torch.ones_like(m_g))), e_c - e_g)
    if not bool(torch.isfinite(rescaled.detach()).all()):
        row = int((~torch.isfinite(rescaled.detach())).any(dim=1).nonzero()[0, 0])
        raise ValueError(f"eps_guided: row {row} has a spread of {float(ldexp(m_g[row], e_g[row])):.3g} over "
                         f"the features in {space} space against the conditional prediction's "
                         f"{float(ldexp(m_c[row], e_c[row])):.3g}; the rescaled prediction overflows "
                         f"{guided.dtype}")
    blended = rescaled + (1.0 - phi) * guided
    return blended, spread


def rescale(eps_guided: Tensor, eps_cond: Tensor, phi: float, *, x: Tensor, alpha: float, sigma: float,
            space: str = "v") -> Tensor:
    r"""Guidance rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
    section 3.4, eqs. 15-16): in the parametrisation ``space`` (the paper uses v, its models' parametrisation;
    diffusers' ``rescale_noise_cfg`` uses eps), per sample,

    .. math::  y_{rescaled} = y_{cfg}\,\frac{\mathrm{std}(y_{c})}{\mathrm{std}(y_{cfg})}, \qquad
               \hat y = \phi\, y_{rescaled} + (1 - \phi)\, y_{cfg},

    where :math:`y_{cfg}` is the guided prediction, :math:`y_c` the conditional (positive) one and the standard
    deviations run over the feature axis (``[N, d]``, d >= 2: a standard deviation over one feature is 0). The
    ratio does not depend on Bessel's correction (both use the same). Returns eps.

    **Zero spread.** If :math:`\mathrm{std}(y_{cfg}) = 0` the guided prediction is constant over the features: no
    factor :math:`c` can give :math:`c\,y_{cfg}` the conditional spread (its spread stays 0), so eq. 15 defines
    nothing, and as the spread tends to 0 its value diverges like :math:`1/\mathrm{std}(y_{cfg})` unless
    :math:`y_{cfg} \to 0`. Such a row is returned **unchanged** (ratio := 1, for every ``phi``), exactly
    ``eps_guided``: the rescale is a correction of an over-spread guided prediction, and a prediction with no spread
    has none to correct. diffusers' ``rescale_noise_cfg`` divides by the zero standard deviation and returns
    inf/NaN there (diffusers issue 13425). **Near-zero spread** is computed as the formula says: the ratio is
    formed from the mantissas and exponents of the two standard deviations (bit for bit
    ``y * std_c / std_cfg`` whenever that is representable), so a tiny spread gives the large but finite
    prediction the formula defines, or a refusal naming ``eps_guided`` if that prediction overflows the dtype;
    never inf or NaN. A conditional prediction with zero spread gives ratio 0 and :math:`(1 - \phi) y_{cfg}`, as
    the formula says.

    ``phi`` in [0, 1] (the paper recommends 0.7); values outside are refused (an extrapolation the paper does not
    define). ``phi = 0`` returns ``eps_guided`` exactly. ``eps_guided``, ``eps_cond`` and ``x``: one shape, one
    dtype; ``alpha``, ``sigma`` as in :mod:`toy_models.parametrization` (``space`` decides which must be > 0)."""
    eps_guided, eps_cond, x = predictions({"eps_guided": eps_guided, "eps_cond": eps_cond, "x": x})
    if eps_guided.ndim != 2 or eps_guided.shape[1] < 2:
        raise ValueError(f"eps_guided: rescale needs [N, d] with d >= 2, got {list(eps_guided.shape)}")
    phi = _check_phi(phi)
    if not isinstance(space, str) or space not in param.PARAMETRIZATIONS:
        raise ValueError(f"space: unknown parametrisation {space!r}; choose one of {param.PARAMETRIZATIONS}")
    guided = convert_named(eps_guided, "eps_guided", "eps", space, x=x, alpha=alpha, sigma=sigma)
    cond = convert_named(eps_cond, "eps_cond", "eps", space, x=x, alpha=alpha, sigma=sigma)
    if phi == 0.0:
        return eps_guided.clone()
    blended, spread = rescale_rows(guided, cond, phi, space=space)
    out = convert_named(blended, "eps_guided", space, "eps", x=x, alpha=alpha, sigma=sigma)
    return torch.where(spread, out, eps_guided)


def _spread(y: Tensor) -> tuple[Tensor, Tensor]:
    """The standard deviation of each row of ``y`` over the features (``torch.std``, Bessel-corrected) as
    ``(mantissa, exponent)`` with ``std = mantissa * 2**exponent``, mantissa in [1/2, 1) or 0, never formed as a
    float (it may lie beyond the dtype's range in either direction).

    The row is divided by a power of two near its largest magnitude (exact), shifted by its first entry (the
    spread is shift-invariant; for a nearly constant row the differences are exact by Sterbenz's lemma, so the
    spread keeps its digits instead of drowning in the rounding of a mean of size |y|: ``torch.std`` of a constant
    row need not return 0), divided again by a power of two near the largest difference (so squaring neither
    overflows nor underflows), and only then reduced. A row is constant exactly when its spread is 0."""
    _, top = torch.frexp(y.detach().abs().amax(dim=1, keepdim=True))
    scaled = ldexp(y, -top)
    diff = scaled - scaled[:, :1]
    _, top2 = torch.frexp(diff.detach().abs().amax(dim=1, keepdim=True))
    spread = ldexp(diff, -top2).std(dim=1, keepdim=True)
    exponent = torch.frexp(spread.detach()).exponent
    # the mantissa by an exact power-of-two scaling rather than frexp's, which carries no derivative (the audit's
    # rounding bound differentiates the rule)
    return ldexp(spread, -exponent), exponent + top + top2


@register
class Rescale(Rule):
    r"""CFG followed by guidance rescale (Lin et al. 2023, section 3.4, eqs. 15-16): with :math:`y_{cfg} =
    y_\varnothing + g(y_c - y_\varnothing)`, per sample :math:`\phi\,y_{cfg}\,\mathrm{std}(y_c)/\mathrm{std}
    (y_{cfg}) + (1 - \phi)\,y_{cfg}` (standard deviations over the features; zero-spread rows unchanged, see
    :func:`rescale`).

    ``space="v"`` is the paper's (its models predict v); ``space="eps"`` is diffusers' ``rescale_noise_cfg``
    (``guidance_rescale``), which applies the same formula to whatever the model predicts, eps for most pipelines.
    The two differ: the standard deviation of v is not that of eps. Give ``w`` or ``guidance_scale``; ``phi`` in
    [0, 1] (the paper recommends 0.7). Not linear (the ratio depends on the predictions)."""

    name = "rescale"
    reference = ("Lin et al. 2023, 'Common Diffusion Noise Schedules and Sample Steps are Flawed', section 3.4, "
                 "eqs. 15-16")
    spaces = ("v", "eps", "x0", "velocity")

    def __init__(self, *, w: float | None = None, guidance_scale: float | None = None, phi: float = 0.7,
                 space: str = "v"):
        self.guidance_scale = guidance_scale_from(w=w, guidance_scale=guidance_scale)
        self.phi = _check_phi(phi)
        self._set_space(space)
        self.branches = ("uncond", "cond")
        self.params = {"guidance_scale": self.guidance_scale, "phi": self.phi, "space": self.space}

    @classmethod
    def examples(cls, world) -> list[dict]:
        return [{"guidance_scale": 7.5, "phi": 0.7}, {"guidance_scale": 7.5, "phi": 0.7, "space": "eps"}]

    def combine(self, preds: dict[str, Tensor], ctx: StepContext) -> Tensor:
        guided = cfg(preds["uncond"], preds["cond"], guidance_scale=self.guidance_scale)
        if guided.ndim != 2 or guided.shape[1] < 2:
            raise ValueError(f"x: rescale needs [N, d] with d >= 2 (a spread over the features), got "
                             f"{list(guided.shape)}")
        if self.phi == 0.0:
            return guided
        cond = predictions({"preds['cond']": preds["cond"]})[0]
        blended, spread = rescale_rows(guided, cond, self.phi, space=self.space)
        return torch.where(spread, blended, guided)
