r"""k-diffusion-style CFG wrappers audited through their own call: ``wrapper(x, sigma, uncond=..., cond=...,
cond_scale=...)`` returning the guided denoised :math:`\hat x_0`.

**Convention** (k-diffusion, ComfyUI): the variance-exploding scale of Karras et al. 2022 (EDM, section 2 and
table 1), :math:`x_{VE} = x_0 + \sigma_{VE}\,n`. A point of this project's schedules, :math:`x = \alpha x_0 +
\sigma\varepsilon`, is the VE point :math:`x_{VE} = x/\alpha` at :math:`\sigma_{VE} = \sigma/\alpha`, and the
denoiser :math:`D(x_{VE}; \sigma_{VE}) = E[x_0 \mid x]` is the same x0 prediction in both scales (the conversion
divides x by alpha, not the target). The wrapper is built around an inner model with ``factory(inner_model)`` (the
user's class, e.g. ``lambda inner: CFGDenoiser(inner)``); :class:`KDiffusionWrapper` supplies the inner model,
``inner_model(x, sigma, cond=...) -> x0``, analytic: for each row it returns the call's x0 prediction of the branch
that row's condition names.

**Conditions** are tensors that concatenate, as real wrappers ``torch.cat([uncond, cond])`` them: a ``[B, 2]`` tensor
per branch, column 0 the branch's label (0 for ``uncond``, 1 for ``cond``), column 1 the sample's row index. The
inner model reads both, and checks that the point and sigma it receives for that row are the call's (a wrapper that
pairs a point with another sample's condition, or rescales the point, gets a ``ValueError``: the audit then reports
the exception). The wrapper's output is compared in x0 space: the call's predictions are converted from
``call.space`` to x0 for the inner model (:meth:`verify.rules.StepContext.from_space` / ``to_space``), and its x0
output back to ``call.space`` for the audit. For CFG (a linear rule) every space gives the same rule; audit with
``params={"space": "x0"}`` to compare in x0 directly, without the conversions.

``cond_scale`` is the audit's ``guidance_scale`` (k-diffusion's ``uncond + (cond - uncond) * cond_scale`` is
diffusers' convention, Ho & Salimans' w = cond_scale - 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from verify.rules import StepContext

from .implementations import Call, Implementation

__all__ = ["KDiffusionWrapper", "LABELS"]

Tensor = torch.Tensor
#: the label each branch's condition carries (column 0 of its condition tensor)
LABELS: dict[str, float] = {"uncond": 0.0, "cond": 1.0}


class _AnalyticInner(torch.nn.Module):
    """The inner model of one call: ``forward(x, sigma, cond=...)`` -> each row's x0 prediction (see the module
    docstring). ``x0`` maps each branch to its ``[N, ...]`` prediction; ``x_ve`` and ``sigma_ve`` are the call's
    points and noise level in the VE scale."""

    def __init__(self, x0: dict[str, Tensor], x_ve: Tensor, sigma_ve: float):
        super().__init__()
        self.x0, self.x_ve, self.sigma_ve = x0, x_ve, sigma_ve
        self.by_label = {LABELS[b]: b for b in x0}

    def forward(self, x: Tensor, sigma: Tensor, cond: Tensor | None = None, **kwargs: Any) -> Tensor:
        if not isinstance(cond, Tensor) or cond.ndim != 2 or cond.shape[1] != 2 or cond.shape[0] != x.shape[0]:
            raise ValueError(f"cond: expected the [rows, 2] (label, sample) conditions the adapter made, one row per "
                             f"point, got {type(cond).__name__} {list(getattr(cond, 'shape', []))} for "
                             f"{x.shape[0]} points")
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        if sigma.numel() not in (1, x.shape[0]):
            raise ValueError(f"sigma: expected one noise level per point, got {sigma.numel()} for {x.shape[0]}")
        # the wrapper may pass sigma in the points' dtype: it must be sigma_ve rounded there, at most one unit off
        tol = 2.0 * torch.finfo(x.dtype).eps * self.sigma_ve
        if bool(((sigma - self.sigma_ve).abs() > tol).any()):
            raise ValueError(f"sigma: the inner model got {sigma.tolist()[:4]}, the call's VE noise level is "
                             f"{self.sigma_ve:.17g}")
        rows = []
        for i in range(x.shape[0]):
            label, sample = float(cond[i, 0]), int(cond[i, 1])
            branch = self.by_label.get(label)
            if branch is None or not 0 <= sample < self.x_ve.shape[0] or float(cond[i, 1]) != sample:
                raise ValueError(f"cond: row {i} carries ({label}, {float(cond[i, 1])}), not a (branch label, sample "
                                 f"index) the adapter made")
            if not torch.equal(x[i].to(self.x_ve.dtype), self.x_ve[sample]):
                raise ValueError(f"x: row {i} of the inner model's input is not the point of sample {sample} its "
                                 f"condition names (the wrapper changed or re-paired the points)")
            rows.append(self.x0[branch][sample])
        return torch.stack(rows).to(x.dtype)


class KDiffusionWrapper(Implementation):
    """A k-diffusion-style CFG wrapper built by ``factory(inner_model)`` (see the module docstring). Two-branch
    rules with a guidance scale (``uncond``, ``cond``). ``scale_keyword``, ``cond_keyword``, ``uncond_keyword``:
    the wrapper's argument names (k-diffusion's ``cond_scale``, ``cond``, ``uncond``)."""

    def __init__(self, factory: Callable[[torch.nn.Module], Callable], *, name: str | None = None,
                 scale_keyword: str = "cond_scale", cond_keyword: str = "cond", uncond_keyword: str = "uncond"):
        if not callable(factory):
            raise TypeError(f"factory: expected a callable inner_model -> wrapper, got {type(factory).__name__}")
        self.factory = factory
        self.keywords = (scale_keyword, cond_keyword, uncond_keyword)
        self.name = name or f"k-diffusion wrapper {getattr(factory, '__qualname__', type(factory).__name__)}"

    def __call__(self, call: Call) -> Any:
        if set(call.preds) != set(LABELS):
            raise ValueError(f"rule: a k-diffusion CFG wrapper combines uncond and cond; this rule reads "
                             f"{sorted(call.preds)}")
        g = call.params.get("guidance_scale")
        if g is None:
            raise ValueError("rule: a k-diffusion CFG wrapper takes a cond_scale; this rule has no guidance_scale")
        if not call.alpha > 0.0:
            raise ValueError(f"alpha: the VE scale x / alpha needs alpha > 0, got {call.alpha}")
        shape = call.x.shape
        n = shape[0]
        like = next(iter(call.preds.values()))
        flat_x = call.x.reshape(n, -1).to(like.dtype)
        ctx = StepContext(flat_x, call.t, call.alpha, call.sigma, call.schedule, {})
        x0 = {b: ctx.to_space(ctx.from_space(p.reshape(n, -1), call.space), "x0").reshape(shape)
              for b, p in call.preds.items()}
        x_ve = call.x / call.alpha
        sigma_ve = call.sigma / call.alpha
        index = torch.arange(n, dtype=like.dtype).reshape(n, 1)
        conds = {b: torch.cat([torch.full((n, 1), label, dtype=like.dtype), index], dim=1)
                 for b, label in LABELS.items()}
        wrapper = self.factory(_AnalyticInner(x0, x_ve, sigma_ve))
        scale_kw, cond_kw, uncond_kw = self.keywords
        sigma = torch.full((n,), sigma_ve, dtype=like.dtype)
        out = wrapper(x_ve, sigma, **{uncond_kw: conds["uncond"], cond_kw: conds["cond"], scale_kw: float(g)})
        if not isinstance(out, Tensor):
            return out
        if call.space == "x0":
            return out
        return ctx.to_space(ctx.from_space(out.reshape(n, -1), "x0"), call.space).reshape(out.shape) \
            if out.shape == shape else out
