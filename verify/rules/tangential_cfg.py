r"""TCFG, tangential damping classifier-free guidance (Kwon, Kim, Jeong, Hsiao & Uh 2025, "TCFG: Tangential Damping
Classifier-free Guidance", arXiv 2503.18137, CVPR 2025): CFG with the unconditional prediction replaced by its
projection on the first right singular vector of the stacked pair of predictions."""

from __future__ import annotations

import math

import torch

from toy_models._pow2 import ldexp

from . import register
from ._base import Rule, StepContext
from ._math import combine_homogeneous, guidance_scale_from, predictions, row_dot
from .cfg import cfg

Tensor = torch.Tensor
F64 = torch.float64


def projection_coefficients(uncond: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
    r"""``(k_c, k_u)``, float64 ``[N, 1, ...]``, with :math:`P D_\varnothing = k_c D_c + k_u D_\varnothing` the
    projection of :math:`D_\varnothing` on the first right singular vector :math:`v_1` of
    :math:`M = [D_c; D_\varnothing]` (2 x F per sample, F the features).

    **Derivation.** With the Gram matrix :math:`G = M M^\top = \begin{pmatrix} p & q \\ q & r\end{pmatrix}`,
    :math:`p = \lVert D_c\rVert^2`, :math:`q = \langle D_c, D_\varnothing\rangle`, :math:`r = \lVert
    D_\varnothing\rVert^2`, and :math:`a = (a_1, a_2)` its unit eigenvector of the larger eigenvalue
    :math:`\sigma_1^2`: :math:`v_1 = M^\top a / \sigma_1` and :math:`\langle D_\varnothing, v_1\rangle = (G a)_2 /
    \sigma_1 = \sigma_1 a_2`, so :math:`P D_\varnothing = a_2 M^\top a = a_1 a_2 D_c + a_2^2 D_\varnothing`: no
    :math:`\sigma_1`, no F x F work, and the sign of :math:`a` (of :math:`v_1`) cancels. For a symmetric 2 x 2
    matrix, :math:`a = (\cos\theta, \sin\theta)` with :math:`2\theta = \operatorname{atan2}(2q, p - r)`; with
    :math:`\delta = p - r` and :math:`h = \sqrt{4q^2 + \delta^2} = \sigma_1^2 - \sigma_2^2` (the eigenvalue gap):

    .. math::  k_c = a_1 a_2 = \frac{q}{h}, \qquad k_u = a_2^2 = \frac{h - \delta}{2h} =
               \frac{2q^2}{h\,(h + \delta)},

    the first form of :math:`k_u` where :math:`\delta < 0`, the second where :math:`\delta \ge 0` (no
    cancellation in either). :math:`|k_c| \le 1/2`, :math:`0 \le k_u \le 1`.

    **Numerics.** Computed in float64 whatever the inputs' dtype, after dividing both rows by one power of two near
    their largest magnitude (exact; the coefficients are scale-invariant), so :math:`p, q, r \le F` and nothing
    overflows. Forming :math:`G` does not square the conditioning of :math:`v_1` here: a perturbation
    :math:`\Delta G` turns :math:`a` by at most :math:`\lVert\Delta G\rVert / h` (Davis-Kahan), with
    :math:`\lVert\Delta G\rVert \lesssim \gamma_F \sigma_1^2`, i.e. :math:`\gamma_F \sigma_1^2 / ((\sigma_1 -
    \sigma_2)(\sigma_1 + \sigma_2)) \le \gamma_F \sigma_1 / (\sigma_1 - \sigma_2)`, the order of a backward-stable
    SVD's own bound for :math:`v_1`.

    **Degenerate rows.** :math:`h = 0` (:math:`q = 0` and :math:`p = r`: :math:`D_c \perp D_\varnothing` with equal
    norms, or both zero): the top singular value is double and :math:`v_1` is not unique. The projector onto the
    whole top singular subspace (well defined where a single vector is not) is used: it contains
    :math:`D_\varnothing`, so :math:`P D_\varnothing = D_\varnothing` (:math:`k_c = 0, k_u = 1`) and TCFG is CFG on
    that row. Near such rows (:math:`h \ll p + r`) :math:`v_1` is ill-conditioned for any algorithm (the bound
    above). Every other row has :math:`h > 0` and gives finite coefficients; never NaN."""
    uncond, cond = predictions({"uncond": uncond, "cond": cond})
    u, c = uncond.to(F64), cond.to(F64)
    top = torch.maximum(u.detach().abs(), c.detach().abs()).reshape(u.shape[0], -1).amax(dim=1)
    shift = torch.frexp(top).exponent.reshape(-1, *([1] * (u.ndim - 1)))
    u, c = ldexp(u, -shift), ldexp(c, -shift)
    p, q, r = row_dot(c, c), row_dot(c, u), row_dot(u, u)
    delta = p - r
    h = torch.hypot(2.0 * q, delta)
    double = h == 0
    safe_h = torch.where(double, torch.ones_like(h), h)
    k_c = torch.where(double, torch.zeros_like(h), q / safe_h)
    k_u = torch.where(delta >= 0, 2.0 * q * q / (safe_h * (safe_h + delta)), (h - delta) / (2.0 * safe_h))
    return k_c, torch.where(double, torch.ones_like(h), k_u)


def tangential_projection(uncond: Tensor, cond: Tensor) -> Tensor:
    r""":math:`P D_\varnothing = \langle D_\varnothing, v_1\rangle v_1` per sample (see
    :func:`projection_coefficients`), in the inputs' dtype. With one feature (F = 1) :math:`v_1 = \pm 1` and the
    projection is :math:`D_\varnothing` itself, returned exactly."""
    uncond, cond = predictions({"uncond": uncond, "cond": cond})
    if math.prod(uncond.shape[1:]) == 1:
        return uncond.clone()
    k_c, k_u = (k.to(cond.dtype) for k in projection_coefficients(uncond, cond))
    return combine_homogeneous(lambda u, c: k_c * c + k_u * u, [uncond, cond], "uncond")


def tangential_cfg(uncond: Tensor, cond: Tensor, guidance_scale: float) -> Tensor:
    r"""The TCFG guided prediction :math:`P D_\varnothing + g(D_c - P D_\varnothing)` (see
    :class:`TangentialCFG`), as one ``torch.lerp`` per entry in the inputs' dtype with the projection's
    coefficients from float64, overflow-safe (a guided prediction that itself overflows is refused naming
    ``cond``). :math:`g = 1` gives ``cond`` bit for bit; one feature (F = 1) gives CFG's formula bit for bit."""
    uncond, cond = predictions({"uncond": uncond, "cond": cond})
    g = float(guidance_scale)
    if math.prod(uncond.shape[1:]) == 1:
        return cfg(uncond, cond, guidance_scale=g)
    k_c, k_u = (k.to(cond.dtype) for k in projection_coefficients(uncond, cond))
    return combine_homogeneous(lambda u, c: torch.lerp(k_c * c + k_u * u, c, g), [uncond, cond], "cond")


@register
class TangentialCFG(Rule):
    r"""TCFG (Kwon et al. 2025): classifier-free guidance after removing from the unconditional prediction what
    does not lie along the pair's dominant direction. With the branch predictions :math:`D_c` (``cond``) and
    :math:`D_\varnothing` (``uncond``) in the rule's space, per sample,

    .. math::
        M = \begin{pmatrix} D_c^\top \\ D_\varnothing^\top \end{pmatrix} = U\,\Sigma\,V^\top, \qquad
        P D_\varnothing = \langle D_\varnothing, v_1\rangle\, v_1, \qquad
        \tilde D = P D_\varnothing + g\,(D_c - P D_\varnothing),

    :math:`M` the 2 x F matrix of the two predictions flattened over every feature axis of the sample and
    :math:`v_1` its first right singular vector (of the larger singular value). The second right singular vector is
    the tangential direction the paper damps (to zero). :math:`g` is the paper's :math:`\omega` in the CFG form
    :math:`s_\varnothing + \omega(s_c - s_\varnothing)`, i.e. diffusers' ``guidance_scale`` (Ho & Salimans'
    :math:`w = g - 1`); give exactly one of ``guidance_scale`` and ``w``. The computation goes through the 2 x 2
    Gram matrix, in float64 (:func:`projection_coefficients`): :math:`P D_\varnothing = a_1 a_2 D_c + a_2^2
    D_\varnothing`, so :math:`\tilde D = (g + (1 - g) a_1 a_2) D_c + (1 - g) a_2^2 D_\varnothing`, weights that
    depend on the predictions and do not sum to 1 in general.

    **What was read.** Of the paper: the abstract (arXiv v1) and third-party summaries of its method (CFG written
    as above; a rank-2 SVD of the stacked conditional and unconditional scores; the unconditional score projected
    onto the dominant singular direction, the remaining one treated as tangential); its algorithm and equation
    numbers were not read. The rule follows those summaries together with diffusers'
    ``TangentialClassifierFreeGuidance`` (``normalized_guidance``), which keeps the first row of :math:`V^\top`,
    projects the unconditional prediction only and then applies CFG, as written above.

    **Exact reductions.** :math:`g = 1`: :math:`D_c` (``linear_weights`` ``{cond: 1, uncond: 0}``, CFG's formula
    bit for bit). :math:`D_\varnothing \parallel D_c` (including either being 0): :math:`M` has rank 1,
    :math:`P D_\varnothing = D_\varnothing` and TCFG is CFG at :math:`g` (to rounding). One feature (F = 1, the
    one-dimensional worlds): always the case, and CFG's formula is used bit for bit. Otherwise ``linear_weights``
    is None (also in one dimension, where the rule does not know F in advance).

    **Space.** The paper writes TCFG on scores; eps is :math:`-\sigma_t` times the score, a common factor that
    leaves :math:`v_1`, the projection and the combination unchanged, so ``space="eps"`` (the default) is the
    paper's rule. ``"x0"``, ``"v"`` and ``"velocity"`` apply the same formula to those predictions: a different
    rule (the affine conversions move the singular vectors).

    **Degenerate rows.** Both predictions zero: 0. :math:`D_c \perp D_\varnothing` with :math:`\lVert D_c\rVert =
    \lVert D_\varnothing\rVert`: equal singular values, :math:`v_1` not unique; the projector onto the whole top
    singular subspace is used, so :math:`P D_\varnothing = D_\varnothing` and the row gets CFG (see
    :func:`projection_coefficients`, which also bounds the ill-conditioning near such rows). Never NaN. Huge or tiny
    predictions are scaled by a power of two before the Gram matrix is formed; a guided prediction that overflows
    the dtype is refused naming ``preds``.

    **Dtype.** The projection's coefficients are computed in float64 for float32 inputs too; the guided prediction
    is formed in the inputs' dtype (float32 in, float32 out).

    **diffusers** (``normalized_guidance`` in ``src/diffusers/guiders/tangential_classifier_free_guidance.py``):
    (1) it runs ``torch.linalg.svd`` on the stacked predictions cast to float32 (the result cast back to the
    model's dtype), so its :math:`v_1` errs by about :math:`2^{-24}\sigma_1/(\sigma_1 - \sigma_2)` (LAPACK scales
    the matrix, so huge and tiny entries are handled); (2) at equal singular values it keeps whichever vector LAPACK
    returns first, which depends on the coordinates: for :math:`D_c = e_1, D_\varnothing = e_2` it keeps
    :math:`e_1` (:math:`P D_\varnothing = 0`, the result :math:`g D_c`), for :math:`D_c = e_2, D_\varnothing = e_1`
    it keeps :math:`e_1` too (:math:`P D_\varnothing = D_\varnothing`, CFG); (3) with one feature per sample
    (F = 1) it raises ``IndexError`` (it zeroes the second row of :math:`V^\top`, which does not exist); (4)
    ``use_original_formulation=True`` returns :math:`D_c + g(D_c - P D_\varnothing)`, Ho & Salimans' form with
    :math:`w = g`; (5) it applies the formula to whatever the model predicts (eps for SD 1.5 and SDXL, the
    flow velocity for SD3), switches itself off (returns :math:`D_c`) at ``guidance_scale`` 1 and outside its
    ``start``/``stop`` fraction of the steps, and can apply guidance rescale afterwards (``guidance_rescale``,
    default 0)."""

    name = "tangential_cfg"
    reference = ("Kwon, Kim, Jeong, Hsiao & Uh 2025, 'TCFG: Tangential Damping Classifier-free Guidance' "
                 "(arXiv 2503.18137, CVPR 2025), method: the unconditional score projected on the first right "
                 "singular vector of the stacked scores, then CFG")
    spaces = ("eps", "x0", "v", "velocity")

    @classmethod
    def examples(cls, world) -> list[dict]:
        return [{"guidance_scale": 7.5}, {"guidance_scale": 4.0, "space": "x0"}]

    def __init__(self, *, w: float | None = None, guidance_scale: float | None = None, space: str = "eps"):
        self.guidance_scale = guidance_scale_from(w=w, guidance_scale=guidance_scale)
        self._set_space(space)
        self.branches = ("uncond", "cond")
        self.params = {"guidance_scale": self.guidance_scale, "space": self.space}

    @property
    def is_cfg(self) -> bool:
        """Whether the rule is exactly CFG for every input (g = 1, where it returns D_c)."""
        return self.guidance_scale == 1.0

    @property
    def linear_weights(self) -> dict[str, float] | None:
        if self.is_cfg:
            return {"cond": 1.0, "uncond": 0.0}
        return None

    def combine(self, preds: dict[str, Tensor], ctx: StepContext) -> Tensor:
        uncond, cond = predictions({"preds['uncond']": preds["uncond"], "preds['cond']": preds["cond"]})
        if self.is_cfg:
            return cfg(uncond, cond, guidance_scale=self.guidance_scale)
        try:
            return tangential_cfg(uncond, cond, self.guidance_scale)
        except ValueError as err:
            raise ValueError(f"preds: the TCFG prediction overflows {cond.dtype} ({err})") from None
