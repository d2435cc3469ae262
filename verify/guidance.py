r"""Guidance rules: pure functions of noise predictions, and wrappers that turn a denoiser into a guided one.

Two layers, both pure (nothing is modified in place, nothing is remembered between calls):

* **combiners** act on eps-predictions already computed (``cfg``, ``classifier_guidance``, ``negative_prompt_000``,
  ``negative_prompt_001``, ``compose``, ``rescale``, ``static_threshold``, ``dynamic_threshold``);
* **guided denoisers** (``CFGDenoiser``, ``ClassifierGuidedDenoiser``, ``LinearGuidedDenoiser``) call a
  :class:`~toy_models.denoiser.Denoiser` and apply a combiner; each is itself a Denoiser, so guidance composes with
  samplers exactly as a plain model does (k-diffusion's ``CFGDenoiser`` pattern). They accept the analytic
  ground truth and a neural network alike.

Conventions (DESIGN.md section 3): ``w`` is Ho & Salimans' strength, :math:`\tilde\varepsilon = (1 + w)
\varepsilon_c - w \varepsilon_\varnothing` (source text 000); ``guidance_scale`` is diffusers',
:math:`\tilde\varepsilon = \varepsilon_\varnothing + g (\varepsilon_c - \varepsilon_\varnothing)` (source text 001),
:math:`g = 1 + w`. Functions that take a strength take exactly one of the two, by keyword.

Every linear rule here is a weighted sum of predictions whose weights sum to one; :func:`linear_rule` returns those
weights, which is what :mod:`verify.tilted` turns into the target law the algebra implies.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

from toy_models import parametrization as param
from toy_models.denoiser import Denoiser, predict_many
from toy_models.gaussian_mixture import Condition, normalize_condition
from toy_models.schedules import Schedule

__all__ = [
    "guidance_scale_from",
    "cfg",
    "classifier_guidance",
    "negative_prompt_000",
    "negative_prompt_001",
    "compose",
    "rescale",
    "static_threshold",
    "dynamic_threshold",
    "LinearRule",
    "linear_rule",
    "CFGDenoiser",
    "LinearGuidedDenoiser",
    "ClassifierGuidedDenoiser",
    "CountingDenoiser",
    "WrappedDenoiser",
]

Tensor = torch.Tensor


def guidance_scale_from(*, w: float | None = None, guidance_scale: float | None = None) -> float:
    """The diffusers ``guidance_scale`` from exactly one of ``w`` (Ho & Salimans) or ``guidance_scale``."""
    if (w is None) == (guidance_scale is None):
        raise ValueError("w, guidance_scale: give exactly one (w = guidance_scale - 1)")
    value = float(guidance_scale) if guidance_scale is not None else 1.0 + float(w)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{'w' if w is not None else 'guidance_scale'}: must be finite")
    return value


# --------------------------------------------------------------------------------------------------------------
# Combiners on eps-predictions
# --------------------------------------------------------------------------------------------------------------
def cfg(eps_uncond: Tensor, eps_cond: Tensor, *, w: float | None = None, guidance_scale: float | None = None
        ) -> Tensor:
    r"""Classifier-free guidance (Ho & Salimans 2022, eq. 6; source 000 and 001):
    :math:`\varepsilon_\varnothing + g(\varepsilon_c - \varepsilon_\varnothing) = (1 + w)\varepsilon_c - w
    \varepsilon_\varnothing`, written as one ``lerp`` (exact at g = 0 and g = 1)."""
    g = guidance_scale_from(w=w, guidance_scale=guidance_scale)
    return torch.lerp(eps_uncond, eps_cond, g)


def classifier_guidance(eps: Tensor, grad_log_classifier: Tensor, sigma: float | Tensor, scale: float) -> Tensor:
    r"""Classifier guidance in eps form (Dhariwal & Nichol 2021, Algorithm 2; source 001):
    :math:`\hat\varepsilon = \varepsilon - s\,\sigma_t \nabla_x \log p(y \mid x_t)`, i.e. the score
    :math:`\nabla \log p_t(x) + s \nabla \log p(y \mid x)` (source 000's augmented score) times :math:`-\sigma_t`."""
    return eps - (scale * sigma) * grad_log_classifier


def negative_prompt_000(eps_null: Tensor, eps_pos: Tensor, eps_neg: Tensor, w_pos: float, w_neg: float) -> Tensor:
    r"""Source 000's negative prompt: :math:`\varepsilon_\varnothing + w_+(\varepsilon_+ - \varepsilon_\varnothing)
    - w_-(\varepsilon_- - \varepsilon_\varnothing)`. Its per-t score is that of
    :math:`p(x|y_+)^{w_+} p(x|y_-)^{-w_-} p(x)^{1 - w_+ + w_-}` (not :math:`1 - w_+ - w_-` as 000 writes)."""
    return eps_null + w_pos * (eps_pos - eps_null) - w_neg * (eps_neg - eps_null)


def negative_prompt_001(eps_pos: Tensor, eps_neg: Tensor, *, w: float | None = None,
                        guidance_scale: float | None = None) -> Tensor:
    r"""Source 001's negative prompt (diffusers ``negative_prompt``): the negative prediction replaces the null one,
    :math:`\varepsilon_- + g(\varepsilon_+ - \varepsilon_-)`; per-t score of :math:`p(x|+)^g p(x|-)^{1-g}`."""
    return cfg(eps_neg, eps_pos, w=w, guidance_scale=guidance_scale)


def compose(eps_null: Tensor, eps_conds: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    r"""Composition of K conditions with signed weights (Liu et al. 2022, eq. 11 as in source 000):
    :math:`\sum_k w_k \varepsilon_k + (1 - \sum_k w_k)\varepsilon_\varnothing`; negative :math:`w_k` negate."""
    if len(eps_conds) != len(weights) or not eps_conds:
        raise ValueError(f"eps_conds, weights: need the same positive length, got {len(eps_conds)}, {len(weights)}")
    out = eps_null * (1.0 - float(sum(weights)))
    for eps_k, w_k in zip(eps_conds, weights, strict=True):
        out = out + float(w_k) * eps_k
    return out


def rescale(eps_guided: Tensor, eps_cond: Tensor, phi: float, *, x: Tensor, alpha: float, sigma: float,
            space: str = "v") -> Tensor:
    r"""Guidance rescale (Lin et al. 2023, section 3.4 and Algorithm 2): in the chosen parametrisation ``space``
    (the paper uses v; diffusers' ``rescale_noise_cfg`` uses eps), scale the guided prediction per sample so that
    its standard deviation over the feature axis matches the conditional one, then blend:
    :math:`\hat y = \phi\, y_{cfg}\,\mathrm{std}(y_c)/\mathrm{std}(y_{cfg}) + (1 - \phi) y_{cfg}`. Returns eps.

    Needs d >= 2 (a standard deviation over one feature is 0)."""
    if eps_guided.ndim != 2 or eps_guided.shape[1] < 2:
        raise ValueError(f"eps_guided: rescale needs [N, d] with d >= 2, got {list(eps_guided.shape)}")
    if not 0.0 <= phi <= 1.0:
        raise ValueError(f"phi: must lie in [0, 1], got {phi!r}")
    guided = param.convert(eps_guided, "eps", space, x=x, alpha=alpha, sigma=sigma)
    cond = param.convert(eps_cond, "eps", space, x=x, alpha=alpha, sigma=sigma)
    ratio = cond.std(dim=1, keepdim=True) / guided.std(dim=1, keepdim=True)
    blended = phi * guided * ratio + (1.0 - phi) * guided
    return param.convert(blended, space, "eps", x=x, alpha=alpha, sigma=sigma)


def static_threshold(eps: Tensor, *, x: Tensor, alpha: float, sigma: float, limit: float = 1.0) -> Tensor:
    r"""Static thresholding (Saharia et al. 2022, section 2.3): clip the x0-prediction to ``[-limit, limit]`` and
    return the eps consistent with it, :math:`(x - \alpha\,\mathrm{clip}(\hat x_0))/\sigma`."""
    x0 = param.convert(eps, "eps", "x0", x=x, alpha=alpha, sigma=sigma)
    return param.convert(x0.clamp(-limit, limit), "x0", "eps", x=x, alpha=alpha, sigma=sigma)


def dynamic_threshold(eps: Tensor, *, x: Tensor, alpha: float, sigma: float, percentile: float = 0.995,
                      limit: float = 1.0) -> Tensor:
    r"""Dynamic thresholding (Saharia et al. 2022, section 2.3): per sample, :math:`s` = the ``percentile`` of
    :math:`|\hat x_0|`, at least ``limit``; clip :math:`\hat x_0` to :math:`[-s, s]`, divide by :math:`s/\text{limit}`,
    and return the consistent eps."""
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile: must lie in (0, 1], got {percentile!r}")
    x0 = param.convert(eps, "eps", "x0", x=x, alpha=alpha, sigma=sigma)
    s = torch.quantile(x0.abs(), percentile, dim=1, keepdim=True).clamp_min(limit)
    x0 = torch.maximum(torch.minimum(x0, s), -s) * (limit / s)
    return param.convert(x0, "x0", "eps", x=x, alpha=alpha, sigma=sigma)


# --------------------------------------------------------------------------------------------------------------
# Linear rules: the weights each guidance rule puts on each condition's prediction
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LinearRule:
    """A guided prediction :math:`\\sum_i a_i \\varepsilon(x, c_i)` with :math:`\\sum_i a_i = 1`.

    ``terms`` pairs each condition (``None`` = null) with its weight; the per-t score of the rule is that of
    :math:`\\prod_i p_t(x \\mid c_i)^{a_i}` (the tilted law of :mod:`verify.tilted`)."""

    terms: tuple[tuple[Hashable, float], ...]
    name: str = ""

    def __post_init__(self):
        merged: dict[Hashable, float] = {}
        for cond, weight in self.terms:
            key = normalize_condition(cond)
            merged[key] = merged.get(key, 0.0) + float(weight)
        total = sum(merged.values())
        # weights are sums of at most a handful of user floats: 16 u relative to their magnitude
        if abs(total - 1.0) > 16 * 2.0**-53 * max(1.0, sum(abs(v) for v in merged.values())):
            raise ValueError(f"terms: weights must sum to 1 (the rule must be exact without guidance), got {total}")
        object.__setattr__(self, "terms", tuple(merged.items()))

    def combine(self, predictions: dict[Hashable, Tensor]) -> Tensor:
        """Apply the rule to predictions keyed by (normalised) condition."""
        out = None
        for cond, weight in self.terms:
            term = weight * predictions[cond]
            out = term if out is None else out + term
        return out


def linear_rule(kind: str, **kw) -> LinearRule:
    """The weights of a named linear rule.

    * ``"cfg"``: ``condition``, ``w`` or ``guidance_scale``;
    * ``"negative_000"``: ``positive``, ``negative``, ``w_pos``, ``w_neg``;
    * ``"negative_001"``: ``positive``, ``negative``, ``w`` or ``guidance_scale``;
    * ``"compose"``: ``conditions``, ``weights``;
    * ``"classifier"``: ``condition``, ``scale`` (classifier guidance with the exact classifier is CFG with
      ``guidance_scale = scale``: source 000's Proposition 1 read backwards).
    """
    if kind == "cfg":
        g = guidance_scale_from(w=kw.get("w"), guidance_scale=kw.get("guidance_scale"))
        return LinearRule(((kw["condition"], g), (None, 1.0 - g)), f"cfg g={g:g}")
    if kind == "classifier":
        s = float(kw["scale"])
        return LinearRule(((kw["condition"], s), (None, 1.0 - s)), f"classifier s={s:g}")
    if kind == "negative_000":
        wp, wn = float(kw["w_pos"]), float(kw["w_neg"])
        return LinearRule(((kw["positive"], wp), (kw["negative"], -wn), (None, 1.0 - wp + wn)),
                          f"negative-000 w+={wp:g} w-={wn:g}")
    if kind == "negative_001":
        g = guidance_scale_from(w=kw.get("w"), guidance_scale=kw.get("guidance_scale"))
        return LinearRule(((kw["positive"], g), (kw["negative"], 1.0 - g)), f"negative-001 g={g:g}")
    if kind == "compose":
        conds, weights = list(kw["conditions"]), [float(v) for v in kw["weights"]]
        return LinearRule((*zip(conds, weights, strict=True), (None, 1.0 - sum(weights))),
                          "compose " + ", ".join(f"{c}:{v:g}" for c, v in zip(conds, weights, strict=True)))
    raise ValueError(f"kind: unknown rule {kind!r}; choose cfg, classifier, negative_000, negative_001, compose")


# --------------------------------------------------------------------------------------------------------------
# Guided denoisers: a Denoiser in, a Denoiser out
# --------------------------------------------------------------------------------------------------------------
def _in_interval(sigma: Tensor, interval: tuple[float, float] | None) -> bool:
    if interval is None:
        return True
    lo, hi = interval
    value = float(sigma.reshape(-1)[0])
    return lo <= value <= hi


def _scalar_time(t) -> float:
    tt = torch.as_tensor(t, dtype=torch.float64)
    if tt.numel() != 1:
        raise ValueError("t: guided denoisers take one time per call (samplers step all points together)")
    return float(tt.reshape(()))


class WrappedDenoiser:
    """Base of denoisers built on another (``self.denoiser``): they share its schedule and dimension."""

    denoiser: Denoiser

    @property
    def schedule(self) -> Schedule:
        return self.denoiser.schedule

    @property
    def dim(self) -> int:
        return self.denoiser.dim


class LinearGuidedDenoiser(WrappedDenoiser):
    """A Denoiser whose prediction is a :class:`LinearRule` of another denoiser's predictions.

    ``interval = (sigma_lo, sigma_hi)`` applies the rule only for noise levels in that closed interval and the
    plain conditional prediction ``conditional_fallback`` elsewhere (guidance in a limited interval,
    Kynkaanniemi et al. 2024, section 3). The ``condition`` argument of :meth:`eps` is ignored except for the null
    condition, which returns the unconditional prediction (so the guided model still answers unconditional
    queries, as a samplers' null branch may ask)."""

    def __init__(self, denoiser: Denoiser, rule: LinearRule, *, interval: tuple[float, float] | None = None,
                 conditional_fallback: Condition = None):
        if interval is not None and not 0 <= interval[0] <= interval[1]:
            raise ValueError(f"interval: need 0 <= sigma_lo <= sigma_hi, got {interval!r}")
        self.denoiser, self.rule, self.interval = denoiser, rule, interval
        self.fallback = normalize_condition(conditional_fallback)

    def eps(self, x: Tensor, t, condition: Condition = None) -> Tensor:
        sigma = self.schedule.sigma(_scalar_time(t))
        if not _in_interval(sigma, self.interval):
            return self.denoiser.eps(x, t, self.fallback)
        conds = [cond for cond, _ in self.rule.terms]
        preds = dict(zip(conds, predict_many(self.denoiser, x, t, conds), strict=True))  # one batched call
        return self.rule.combine(preds)


class CFGDenoiser(LinearGuidedDenoiser):
    """Classifier-free guidance of ``denoiser`` towards ``condition`` (give ``w`` or ``guidance_scale``)."""

    def __init__(self, denoiser: Denoiser, condition: Condition, *, w: float | None = None,
                 guidance_scale: float | None = None, interval: tuple[float, float] | None = None):
        rule = linear_rule("cfg", condition=condition, w=w, guidance_scale=guidance_scale)
        super().__init__(denoiser, rule, interval=interval, conditional_fallback=condition)


class ClassifierGuidedDenoiser(WrappedDenoiser):
    r"""Classifier guidance: ``eps(x, t, None) - scale * sigma_t * grad_log_classifier(x, t, condition)``.

    ``grad_log_classifier(x, t, condition) -> [N, d]`` is any classifier gradient: the world's exact noisy
    :math:`\nabla \log p_t(c \mid x)`, or a clean classifier :math:`\nabla \log p_0(c \mid \cdot)` evaluated at
    :math:`x_t` (the case source 000 warns about)."""

    def __init__(self, denoiser: Denoiser, grad_log_classifier: Callable[[Tensor, float, Condition], Tensor],
                 scale: float):
        self.denoiser, self.grad_log_classifier, self.scale = denoiser, grad_log_classifier, float(scale)

    def eps(self, x: Tensor, t, condition: Condition = None) -> Tensor:
        eps = self.denoiser.eps(x, t, None)
        if condition is None:
            return eps
        sigma = self.schedule.sigma(_scalar_time(t)).to(eps.dtype)
        return classifier_guidance(eps, self.grad_log_classifier(x, t, condition), sigma, self.scale)


class CountingDenoiser(WrappedDenoiser):
    """Wraps a denoiser and counts its evaluations, for compute claims (``S0-CFG-COST``): ``calls`` (forward passes;
    a batched ``eps_multi`` call is one) and ``points`` (rows evaluated: ``len(conditions) N`` for a batched call)."""

    def __init__(self, denoiser: Denoiser):
        self.denoiser, self.calls, self.points = denoiser, 0, 0

    def eps(self, x: Tensor, t, condition: Condition = None) -> Tensor:
        self.calls += 1
        self.points += int(x.shape[0])
        return self.denoiser.eps(x, t, condition)

    def eps_multi(self, x: Tensor, t, conditions: list[Condition]) -> list[Tensor]:
        self.calls += 1
        self.points += int(x.shape[0]) * len(conditions)
        return predict_many(self.denoiser, x, t, conditions)
