r"""Adaptive projected guidance, APG (Sadat, Hilliges & Weber 2024, "Eliminating Oversaturation and Artifacts of
High Guidance Scales in Diffusion Models", arXiv 2410.02416, ICLR 2025)."""

from __future__ import annotations

import itertools

import torch

from toy_models._checks import as_scalar
from toy_models._pow2 import ldexp

from . import register
from ._base import GuidanceState, Rule, StepContext
from ._math import guidance_scale_from, predictions, row_dot, row_norm
from .cfg import cfg

Tensor = torch.Tensor
_KEYS = itertools.count()


def _check_norm_threshold(norm_threshold) -> float | None:
    if norm_threshold is None:
        return None
    r = as_scalar(norm_threshold, "norm_threshold")
    if not r > 0.0:
        raise ValueError(f"norm_threshold: must be > 0 (None switches the rescaling off), got {norm_threshold!r}")
    return r


def _check_momentum(momentum) -> float:
    beta = as_scalar(momentum, "momentum")
    if not -1.0 < beta < 1.0:
        raise ValueError(f"momentum: must lie in (-1, 1) (a running sum with |beta| >= 1 does not forget; the paper's "
                         f"reverse momentum is negative, e.g. -0.5), got {momentum!r}")
    return beta


def unit_rows(y: Tensor) -> tuple[Tensor, Tensor]:
    """``(y / ||y||, ||y||)`` per sample over every feature axis (``[N, 1, ...]`` norms; 0 for a zero row, whose unit
    vector is 0). Each row is first divided by a power of two near its largest magnitude (exact), so the squares
    neither overflow nor underflow: a row of 1e-300 has a direction, a row near the dtype's maximum a finite unit
    vector (its norm may still be inf or 0 where the true norm lies beyond the dtype's range)."""
    flat = y.detach().abs().reshape(y.shape[0], -1)
    exponent = torch.frexp(flat.amax(dim=1)).exponent.reshape(-1, *([1] * (y.ndim - 1)))
    scaled = ldexp(y, -exponent)
    norm = row_norm(scaled)
    return scaled / torch.where(norm > 0, norm, torch.ones_like(norm)), ldexp(norm, exponent)


def project(diff: Tensor, onto: Tensor) -> tuple[Tensor, Tensor]:
    r"""``(parallel, orthogonal)``: per sample, the component of ``diff`` along ``onto`` and the rest,
    :math:`\Delta_\parallel = \langle\Delta, \hat c\rangle\hat c`, :math:`\hat c = c/\lVert c\rVert`, over every
    feature axis. A row with :math:`c = 0` has no direction: its parallel component is 0 (all of :math:`\Delta` is
    orthogonal), which is what the authors' code and diffusers return there (``F.normalize`` maps a zero vector to
    zero; it also maps a row of norm below 1e-12 to a multiple of it, which this function does not). The unit
    vector is formed first (:func:`unit_rows`), so no squared norm is formed."""
    unit, _ = unit_rows(onto)
    parallel = row_dot(diff, unit) * unit
    return parallel, diff - parallel


def apg_update(diff: Tensor, cond: Tensor, *, eta: float, norm_threshold: float | None) -> Tensor:
    r"""The normalised update :math:`\Delta_\perp + \eta\,\Delta_\parallel` of ``diff`` (already momentum-averaged)
    after the norm rescaling :math:`\Delta \leftarrow \Delta\min(1, r/\lVert\Delta\rVert)` (skipped when
    ``norm_threshold`` is None), formed as :math:`r\,\hat\Delta` on the rows whose norm exceeds :math:`r` (no
    overflow of the norm, no ``r/0``: a row with :math:`\Delta = 0` keeps its zero difference).
    With :math:`\eta = 1` the projection is skipped (:math:`\Delta_\perp + \Delta_\parallel = \Delta`)."""
    if norm_threshold is not None:
        unit, norm = unit_rows(diff)
        diff = torch.where(norm > norm_threshold, norm_threshold * unit, diff)
    if eta == 1.0:
        return diff
    parallel, orthogonal = project(diff, cond)
    return orthogonal + eta * parallel


@register
class APG(Rule):
    r"""Adaptive projected guidance (Sadat, Hilliges & Weber 2024, Algorithm 1). With the branch predictions
    :math:`D_c` (``cond``) and :math:`D_\varnothing` (``uncond``) in the rule's space, per sample:

    .. math::
        \Delta_k &= (D_c - D_\varnothing) + \beta\,\Delta_{k-1} \quad (\Delta_{-1} = 0;\ \beta = 0:
            \text{off}),\\
        \Delta &\leftarrow \Delta_k \min\!\big(1,\ r/\lVert\Delta_k\rVert\big) \quad (\text{skipped when }
            r = \text{None}),\\
        \Delta_\parallel &= \frac{\langle\Delta, D_c\rangle}{\lVert D_c\rVert^2} D_c, \qquad
            \Delta_\perp = \Delta - \Delta_\parallel,\\
        \tilde D &= D_c + (g - 1)\,(\Delta_\perp + \eta\,\Delta_\parallel),

    inner products and norms over every feature axis of one sample. The paper writes CFG as :math:`D_c + (w - 1)
    (D_c - D_\varnothing)`, so its :math:`w` is diffusers' ``guidance_scale`` :math:`g` (Ho & Salimans'
    :math:`w` is :math:`g - 1`); give exactly one of ``guidance_scale`` and ``w``. The parallel component is the part
    of the update that rescales :math:`D_c` itself (the paper's explanation of oversaturation); ``eta`` weights it
    (the paper recommends :math:`\eta = 0`). ``norm_threshold`` :math:`r > 0` caps the update's norm (None: off);
    ``momentum`` :math:`\beta \in (-1, 1)` is the paper's reverse momentum (negative values, e.g. -0.5; 0: off).

    **Space.** The paper applies APG to the denoised prediction :math:`D = \hat x_0` (``space="x0"``, the
    default); ``"eps"``, ``"v"`` and ``"velocity"`` apply the same formula to those predictions, which is not the
    same rule (projections and norms are not preserved by the affine conversions).

    **State.** With :math:`\beta \ne 0` the rule is stateful: the running :math:`\Delta_k` lives in the run's
    :class:`~verify.rules.GuidanceState` (``state.memory``, under a key unique to this rule object), never on the
    rule, so one rule serves many runs and each run starts from :math:`\Delta_{-1} = 0`. It is updated **once per
    evaluation** of the guided denoiser, as the authors' code and diffusers' ``MomentumBuffer`` do (the buffer's
    ``update`` runs inside every ``normalized_guidance`` call); Heun, which evaluates twice per step, therefore
    updates it twice per step. diffusers resets its buffer when its step counter is 0.

    **Degenerate rows.** :math:`D_c = 0`: the projection has no direction; :math:`\Delta_\parallel := 0` (see
    :func:`project`). :math:`\Delta = 0`: the rescaling factor is 1 (the update stays 0). Neither gives NaN. Other
    inputs are refused as :mod:`verify.rules._math` says; a guided prediction that overflows the dtype is refused
    naming ``preds``.

    **Linearity.** With :math:`\eta = 1`, no threshold and no momentum the update is :math:`D_c - D_\varnothing`
    and APG *is* CFG at the same ``guidance_scale``: ``linear_weights`` is then ``{cond: g, uncond: 1 - g}`` and the
    rule computes CFG's own formula (bit for bit :class:`~verify.rules.cfg.CFG` in the same space). Otherwise
    ``linear_weights`` is None.

    **diffusers** (``AdaptiveProjectedGuidance``, ``normalized_guidance`` in
    ``src/diffusers/guiders/adaptive_projected_guidance.py``): by default it returns :math:`D_\varnothing + g\,
    (\Delta_\perp + \eta\Delta_\parallel)`, which equals the paper's :math:`D_c + (g - 1)(\ldots)` only when
    :math:`\eta = 1` (the two differ by :math:`(1 - \eta)\Delta_\parallel`); ``use_original_formulation=True``
    returns :math:`D_c + g(\ldots)`, the paper's form with :math:`w = g + 1`. Its defaults are ``eta=1.0``,
    ``adaptive_projected_guidance_rescale=15.0`` (:math:`r`; 0 switches it off) and momentum None; it normalises
    over every axis but the batch (as here), computes the projection in float64, and applies the rule to whatever
    the model predicts (eps for most pipelines), not to :math:`\hat x_0` as the paper does."""

    name = "apg"
    reference = ("Sadat, Hilliges & Weber 2024, 'Eliminating Oversaturation and Artifacts of High Guidance Scales in "
                 "Diffusion Models' (arXiv 2410.02416, ICLR 2025), Algorithm 1")
    spaces = ("x0", "eps", "v", "velocity")

    @classmethod
    def examples(cls, world) -> list[dict]:
        return [{"guidance_scale": 12.0}, {"guidance_scale": 12.0, "eta": 0.5, "norm_threshold": 2.0, "momentum": -0.5},
                {"guidance_scale": 7.5, "eta": 1.0, "space": "eps"}]

    def __init__(self, *, w: float | None = None, guidance_scale: float | None = None, eta: float = 0.0,
                 norm_threshold: float | None = None, momentum: float = 0.0, space: str = "x0"):
        self.guidance_scale = guidance_scale_from(w=w, guidance_scale=guidance_scale)
        self.eta = as_scalar(eta, "eta")
        self.norm_threshold = _check_norm_threshold(norm_threshold)
        self.momentum = _check_momentum(momentum)
        self._set_space(space)
        self.branches = ("uncond", "cond")
        self.memory_key = f"apg-{next(_KEYS)}"  # unique per rule object; keys the run state's momentum buffer
        self.params = {"guidance_scale": self.guidance_scale, "eta": self.eta, "norm_threshold": self.norm_threshold,
                       "momentum": self.momentum, "space": self.space}

    @property
    def stateful(self) -> bool:  # type: ignore[override]
        return self.momentum != 0.0

    @property
    def is_cfg(self) -> bool:
        """Whether the rule reduces to CFG exactly (eta = 1, no threshold, no momentum)."""
        return self.eta == 1.0 and self.norm_threshold is None and self.momentum == 0.0

    @property
    def linear_weights(self) -> dict[str, float] | None:
        if self.is_cfg:
            return {"cond": self.guidance_scale, "uncond": 1.0 - self.guidance_scale}
        return None

    def variants(self) -> dict:
        """diffusers' ``normalized_guidance`` (``adaptive_projected_guidance.py``): :math:`D_\\varnothing + g\\,
        (\\ldots)` by default, :math:`D_c + g\\,(\\ldots)` with ``use_original_formulation=True``, the update
        itself as here (momentum, cap, projection); each also as the guider runs it, switched off (the conditional
        prediction returned) at guidance_scale 1."""
        g = self.guidance_scale

        def diffusers(base: str, guider: bool):
            def formula(preds: dict[str, Tensor], ctx: StepContext) -> Tensor:
                if guider and g == 1.0:
                    return preds["cond"].clone()
                diff = self._running(preds["cond"] - preds["uncond"], ctx, f"variant-{base}-{guider}")
                return preds[base] + g * apg_update(diff, preds["cond"], eta=self.eta,
                                                    norm_threshold=self.norm_threshold)
            return formula

        out = {}
        for base, text in (("uncond", "form D_uncond + g * update"),
                           ("cond", "use_original_formulation D_cond + g * update")):
            out[f"diffusers' {text}"] = diffusers(base, False)
            out[f"diffusers' guider ({text}, off at guidance_scale 1)"] = diffusers(base, True)
        return out

    def _running(self, diff: Tensor, ctx: StepContext, tag: str = "") -> Tensor:
        """:math:`\\Delta_k = \\Delta + \\beta\\Delta_{k-1}` from the run's state (``diff`` itself without
        momentum); ``tag`` keeps separate buffers for separate formulas evaluated in one run."""
        if self.momentum == 0.0:
            return diff
        state = ctx.state
        if not isinstance(state, GuidanceState):
            raise ValueError("state: APG with momentum keeps a running average across the evaluations of a run; "
                             "evaluate it through a GuidedDenoiser with state=guided.new_state()")
        key = f"{self.memory_key}{tag}"
        previous = state.memory.get(key)
        if previous is not None:
            if previous.shape != diff.shape:
                raise ValueError(f"state: the momentum buffer has shape {list(previous.shape)}, this evaluation "
                                 f"{list(diff.shape)}; use one state per run")
            diff = diff + self.momentum * previous
        state.memory[key] = diff
        return diff

    def combine(self, preds: dict[str, Tensor], ctx: StepContext) -> Tensor:
        uncond, cond = predictions({"preds['uncond']": preds["uncond"], "preds['cond']": preds["cond"]})
        if self.is_cfg:
            return cfg(uncond, cond, guidance_scale=self.guidance_scale)
        diff = self._running(cond - uncond, ctx)
        update = apg_update(diff, cond, eta=self.eta, norm_threshold=self.norm_threshold)
        out = cond + (self.guidance_scale - 1.0) * update
        if not bool(torch.isfinite(out.detach()).all()):
            raise ValueError(f"preds: the APG prediction overflows {out.dtype} (predictions too large for this dtype)")
        return out
