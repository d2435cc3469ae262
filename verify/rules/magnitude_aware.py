r"""MAMBO-G, magnitude-aware mitigation for boosted guidance (Zhu et al. 2025, "MAMBO-G: Magnitude-Aware Mitigation
for Boosted Guidance", arXiv 2508.03442): CFG whose strength is damped, per sample, by the size of the guidance
update relative to the unconditional prediction."""

from __future__ import annotations

import torch

from toy_models._checks import as_scalar
from toy_models._pow2 import ldexp

from . import register
from ._base import Rule, StepContext
from ._math import combine_homogeneous, guidance_scale_from, predictions, row_norm
from .cfg import cfg

Tensor = torch.Tensor
F64 = torch.float64


def _check_alpha(alpha) -> float:
    a = as_scalar(alpha, "alpha")
    if not a >= 0.0:
        raise ValueError(f"alpha: must be >= 0 (0 is CFG; a negative alpha would boost large updates instead of "
                         f"damping them), got {alpha!r}")
    return a


def _scaled_norm(y: Tensor) -> tuple[Tensor, Tensor]:
    """``(n, e)`` with ``||y|| = n 2^e`` per sample over every feature axis (``[N, 1, ...]`` each): the row is divided
    by a power of two near its largest magnitude (exact) before the squares are formed, so neither overflows nor
    underflows; ``n`` lies in [1/2, sqrt(F)] (F features), or is 0 for a zero row."""
    flat = y.detach().abs().reshape(y.shape[0], -1)
    exponent = torch.frexp(flat.amax(dim=1)).exponent.reshape(-1, *([1] * (y.ndim - 1)))
    return row_norm(ldexp(y, -exponent)), exponent


def magnitude_ratio(uncond: Tensor, cond: Tensor) -> Tensor:
    r""":math:`r = \lVert D_c - D_\varnothing\rVert / \lVert D_\varnothing\rVert` per sample, norms over every
    feature axis, in float64 whatever the inputs' dtype (``[N, 1, ...]``).

    Both rows are first divided by one power of two near their largest magnitude (exact; :math:`r` does not
    change), so the difference cannot overflow; each norm is then formed from its own power-of-two scaling, so the
    squares neither overflow nor underflow, and :math:`r` is a quotient of two numbers in :math:`[1/2, \sqrt F]`
    times a power of two. :math:`r` may be ``inf`` (beyond float64's range, or :math:`D_\varnothing = 0`) or 0; never
    NaN: a row with :math:`D_\varnothing = 0` gets ``inf``, also when :math:`D_c = 0` as well (where every value of
    :math:`r` gives the same guided prediction, 0)."""
    uncond, cond = predictions({"uncond": uncond, "cond": cond})
    u, c = uncond.to(F64), cond.to(F64)
    top = torch.maximum(u.detach().abs(), c.detach().abs()).reshape(u.shape[0], -1).amax(dim=1)
    shift = torch.frexp(top).exponent.reshape(-1, *([1] * (u.ndim - 1)))
    u, c = ldexp(u, -shift), ldexp(c, -shift)
    n_d, e_d = _scaled_norm(c - u)
    n_u, e_u = _scaled_norm(u)
    ratio = ldexp(n_d / torch.where(n_u > 0, n_u, torch.ones_like(n_u)), e_d - e_u)
    return torch.where(n_u > 0, ratio, torch.full_like(ratio, float("inf")))


def effective_scale(ratio: Tensor, guidance_scale: float, alpha: float) -> Tensor:
    r""":math:`g_{\mathrm{eff}} = 1 + (g - 1)\,e^{-\alpha r}` (float64, the shape of ``ratio``); :math:`r = \infty`
    gives 1 for :math:`\alpha > 0`, and :math:`\alpha = 0` gives :math:`g` for every :math:`r` (no
    :math:`0 \cdot \infty`)."""
    if alpha == 0.0:
        return torch.full_like(ratio, guidance_scale)
    return 1.0 + (guidance_scale - 1.0) * torch.exp(-alpha * ratio)


def magnitude_aware(uncond: Tensor, cond: Tensor, guidance_scale: float, alpha: float) -> Tensor:
    r"""The MAMBO-G guided prediction :math:`D_\varnothing + g_{\mathrm{eff}}(D_c - D_\varnothing)` (see
    :class:`MagnitudeAware`), in the inputs' dtype; :math:`r` and :math:`g_{\mathrm{eff}}` are computed in float64
    (:func:`magnitude_ratio`, :func:`effective_scale`) and the combination, one ``torch.lerp`` per entry, in the
    inputs' dtype, overflow-safe (a guided prediction that itself overflows is refused naming ``cond``).
    :math:`g_{\mathrm{eff}} = 1` returns ``cond`` bit for bit (``lerp`` is exact at weight 1)."""
    uncond, cond = predictions({"uncond": uncond, "cond": cond})
    weight = effective_scale(magnitude_ratio(uncond, cond), float(guidance_scale), float(alpha)).to(cond.dtype)
    return combine_homogeneous(lambda u, c: torch.lerp(u, c, weight), [uncond, cond], "cond")


@register
class MagnitudeAware(Rule):
    r"""MAMBO-G (Zhu et al. 2025): classifier-free guidance whose strength is damped per sample by the magnitude of
    the guidance update relative to the prediction. With the branch predictions :math:`D_c` (``cond``) and
    :math:`D_\varnothing` (``uncond``) in the rule's space, per sample,

    .. math::
        r = \frac{\lVert D_c - D_\varnothing\rVert}{\lVert D_\varnothing\rVert}, \qquad
        g_{\mathrm{eff}} = 1 + (g - 1)\,e^{-\alpha r}, \qquad
        \tilde D = D_\varnothing + g_{\mathrm{eff}}\,(D_c - D_\varnothing),

    the norms over every feature axis of one sample. :math:`g` is the paper's largest guidance weight
    :math:`w_{\max}` in the CFG form :math:`D_\varnothing + w(D_c - D_\varnothing)`, i.e. diffusers'
    ``guidance_scale`` (Ho & Salimans' :math:`w = g - 1`); give exactly one of ``guidance_scale`` and ``w``.
    ``alpha`` :math:`\ge 0` sets how fast the strength falls as :math:`r` grows (default 8.0, diffusers' default and
    the value of the authors' published example). :math:`g_{\mathrm{eff}}` lies between 1 and :math:`g`: a sample
    whose update is small next to its prediction gets (nearly) CFG at :math:`g`, one whose update dominates gets
    (nearly) the plain conditional prediction. :math:`r` is homogeneous of degree 0, so the rule is positively
    homogeneous of degree 1 in the pair of predictions, but it is not the same rule in different spaces.

    **What was read.** Of the paper: the abstract (arXiv v3) and the authors' project page (an ICML 2026 poster;
    its diffusers example uses ``guidance_scale=10, alpha=8``), and a third-party summary of its method section
    stating the weight :math:`w(r_t) = 1 + (w_{\max} - 1)\exp(-\alpha r_t)` with :math:`r_t` a ratio formed
    from the conditional and unconditional velocities of flow-matching models (the abstract: the magnitude of the
    update relative to the prediction). The method section itself (its equation numbers, and exactly which norm
    ratio :math:`r_t` is) was not read; this rule takes :math:`r` from diffusers' ``mambo_guidance``, which the
    abstract says is the authors' implementation merged into diffusers.

    **Exact reductions.** :math:`\alpha = 0`: CFG at ``guidance_scale`` (``linear_weights`` ``{cond: g, uncond:
    1 - g}``; the rule then computes CFG's own formula, bit for bit :class:`~verify.rules.cfg.CFG`). :math:`g = 1`:
    :math:`D_c` (the same, with weights ``{cond: 1, uncond: 0}``). Otherwise ``linear_weights`` is None.
    :math:`D_c = D_\varnothing`: :math:`r = 0` and :math:`\tilde D = D_c`.

    **Space.** The paper's models (SD3.5, Lumina, Wan, Qwen-Image) are flow-matching models predicting a velocity;
    here that is the PF-ODE velocity (``space="velocity"``, the default; :meth:`StepContext.to_space`), equal to
    :math:`\varepsilon - x_0` on ``rectified-flow``. ``"eps"``, ``"x0"`` and ``"v"`` apply the same formula to those
    predictions: a different rule, since the norm ratio is not preserved by the affine conversions.

    **Degenerate rows.** :math:`D_\varnothing = 0`: :math:`r = \infty` (if :math:`D_c \ne 0`), so for
    :math:`\alpha > 0` :math:`g_{\mathrm{eff}} = 1` and the rule returns :math:`D_c`, which is also the limit as
    :math:`D_\varnothing \to 0` along any path with :math:`D_c` fixed; if :math:`D_c = 0` too, every
    :math:`g_{\mathrm{eff}}` gives 0, returned as :math:`D_c = 0`. Never NaN (see :func:`magnitude_ratio`). Huge or
    tiny predictions are scaled by powers of two before any square is formed; a guided prediction that overflows
    the dtype is refused naming ``preds``.

    **Dtype.** :math:`r` and :math:`g_{\mathrm{eff}}` are computed in float64 for float32 inputs too; the guided
    prediction is formed in the inputs' dtype (float32 in, float32 out).

    **diffusers** (``MagnitudeAwareGuidance`` and ``mambo_guidance`` in
    ``src/diffusers/guiders/magnitude_aware_guidance.py``, 0.42.1): by default it computes this formula, with norms
    over every axis but the batch (as here), but (1) with ``torch.norm(..., dim=[1, ..., n-1])``, whose default
    ``p="fro"`` takes at most two axes in current torch (2.13 here): on [B, C, H, W] latents it raises
    ``RuntimeError`` (it runs on [B, L, D] token sequences), and in the model's dtype with unscaled squares, which
    in float32 overflow for entries beyond about 2e19 and turn subnormal below about 1e-19 and 0 below about 4e-23
    (the ratio then becomes inf, 0, NaN or inaccurate); (2) at :math:`D_\varnothing = 0` it divides by zero: for
    :math:`D_c \ne 0` and :math:`\alpha > 0` the inf ratio gives :math:`D_c`, as here, but :math:`D_c =
    D_\varnothing = 0` gives NaN (0/0), and so does :math:`\alpha = 0` (:math:`0 \cdot \infty`); (3)
    ``use_original_formulation=True`` returns :math:`D_c + g\,e^{-\alpha r}(D_c - D_\varnothing)`, which damps
    the whole of :math:`g` towards 0 rather than :math:`g - 1` towards 0, a different rule; (4) it applies the
    formula to whatever the model predicts (the velocity for flow models, as the paper; eps for SD 1.5 and SDXL);
    (5) it switches itself off (returns :math:`D_c`) at ``guidance_scale`` 1 and outside its ``start``/``stop``
    fraction of the steps, and can apply guidance rescale afterwards (``guidance_rescale``, default 0;
    :class:`~verify.rules.rescale.Rescale`)."""

    name = "magnitude_aware"
    reference = ("Zhu et al. 2025, 'MAMBO-G: Magnitude-Aware Mitigation for Boosted Guidance' (arXiv 2508.03442), "
                 "method: w(r_t) = 1 + (w_max - 1) exp(-alpha r_t), r_t the update-to-prediction norm ratio")
    spaces = ("velocity", "eps", "x0", "v")

    @classmethod
    def examples(cls, world) -> list[dict]:
        return [{"guidance_scale": 10.0, "alpha": 8.0}, {"guidance_scale": 5.0, "alpha": 2.0, "space": "eps"},
                {"guidance_scale": 7.5, "alpha": 0.0}]

    def __init__(self, *, w: float | None = None, guidance_scale: float | None = None, alpha: float = 8.0,
                 space: str = "velocity"):
        self.guidance_scale = guidance_scale_from(w=w, guidance_scale=guidance_scale)
        self.alpha = _check_alpha(alpha)
        self._set_space(space)
        self.branches = ("uncond", "cond")
        self.params = {"guidance_scale": self.guidance_scale, "alpha": self.alpha, "space": self.space}

    @property
    def is_cfg(self) -> bool:
        """Whether the rule is exactly CFG at ``guidance_scale`` (alpha = 0, or g = 1 where every g_eff is 1)."""
        return self.alpha == 0.0 or self.guidance_scale == 1.0

    @property
    def linear_weights(self) -> dict[str, float] | None:
        if self.is_cfg:
            return {"cond": self.guidance_scale, "uncond": 1.0 - self.guidance_scale}
        return None

    def combine(self, preds: dict[str, Tensor], ctx: StepContext) -> Tensor:
        uncond, cond = predictions({"preds['uncond']": preds["uncond"], "preds['cond']": preds["cond"]})
        if self.is_cfg:
            return cfg(uncond, cond, guidance_scale=self.guidance_scale)
        try:
            return magnitude_aware(uncond, cond, self.guidance_scale, self.alpha)
        except ValueError as err:
            raise ValueError(f"preds: the MAMBO-G prediction overflows {cond.dtype} ({err})") from None
