r"""Guidance rules: pure functions of noise predictions, and wrappers that turn a denoiser into a guided one.

Two layers, both pure (nothing is modified in place, nothing is remembered between calls):

* **combiners** act on eps-predictions already computed (``cfg``, ``classifier_guidance``, ``negative_prompt_000``,
  ``negative_prompt_001``, ``compose``, ``rescale``, ``static_threshold``, ``dynamic_threshold``);
* **guided denoisers** (``CFGDenoiser``, ``ClassifierGuidedDenoiser``, ``LinearGuidedDenoiser``) call a
  :class:`~toy_models.denoiser.Denoiser` and apply a combiner; each is itself a Denoiser, so guidance composes with
  samplers exactly as a plain model does (k-diffusion's ``CFGDenoiser`` pattern). They accept the analytic
  ground truth and a neural network alike.

Conventions (docs/conventions.md): ``w`` is Ho & Salimans' strength, :math:`\tilde\varepsilon = (1 + w)
\varepsilon_c - w \varepsilon_\varnothing` (source text 000); ``guidance_scale`` is diffusers',
:math:`\tilde\varepsilon = \varepsilon_\varnothing + g (\varepsilon_c - \varepsilon_\varnothing)` (source text 001),
:math:`g = 1 + w`. Functions that take a strength take exactly one of the two, by keyword.

Every linear rule here is a weighted sum of predictions whose weights sum to one; :func:`linear_rule` returns those
weights, which is what :mod:`verify.tilted` turns into the target law the algebra implies.

Inputs follow the input policy (``docs/input-policy.md``, :mod:`toy_models._checks`): the predictions a combiner
combines are real tensors of exactly one shape (no broadcasting of ``[N, 1]`` against ``[N, d]``) and one dtype,
float64 or float32, which is also the output's (integers converted exactly; complex, bool, float16 refused with
``TypeError``; NaN and infinity with ``ValueError``); strengths and weights are finite reals; every refusal starts
with the argument's name. Predictions near the dtype's largest value give the finite answer even where an
intermediate (``eps_c - eps_u``) overflows, or a refusal where the answer itself does: never inf or NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

from toy_models import parametrization as param
from toy_models._checks import Tensorish, as_real_tensor, as_scalar, check_same_shape, real_dtype_of
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
    """The diffusers ``guidance_scale`` from exactly one of ``w`` (Ho & Salimans) or ``guidance_scale``:
    ``guidance_scale = 1 + w``. Each is a finite real number (a one-element tensor or array is read as one)."""
    if (w is None) == (guidance_scale is None):
        raise ValueError("w, guidance_scale: give exactly one (w = guidance_scale - 1)")
    if guidance_scale is not None:
        return as_scalar(guidance_scale, "guidance_scale")
    return 1.0 + as_scalar(w, "w")


# --------------------------------------------------------------------------------------------------------------
# Combiners on eps-predictions
# --------------------------------------------------------------------------------------------------------------
def _predictions(named: dict[str, Tensorish]) -> list[Tensor]:
    """The predictions a combiner combines, under the input policy: real tensors of one dtype (float64 or float32,
    kept; integers converted exactly to it, float64 if none is floating) and exactly one shape (no broadcasting).
    Not copied: a graph the caller built is kept."""
    dtypes = {name: real_dtype_of(value, None) for name, value in named.items()}
    floating = [(name, dt) for name, dt in dtypes.items() if dt is not None]
    for name, dt in floating[1:]:
        if dt != floating[0][1]:
            raise TypeError(f"{name}: dtype {dt} differs from {floating[0][0]}'s {floating[0][1]}; the predictions "
                            f"must share one dtype (convert one explicitly)")
    dtype = floating[0][1] if floating else torch.float64
    tensors = {name: as_real_tensor(value, name, dtype, copy=False) for name, value in named.items()}
    check_same_shape(tensors)
    return list(tensors.values())


def _combine(formula: Callable[..., Tensor], tensors: list[Tensor], name: str) -> Tensor:
    """``formula(*tensors)`` (linear, homogeneous) with no spurious overflow: huge-but-finite predictions give the
    finite answer, or a refusal naming ``name`` where the answer itself overflows (see
    :func:`toy_models.parametrization._homogeneous`)."""
    return param._homogeneous(formula, tensors, name, "the guided prediction")


def cfg(eps_uncond: Tensor, eps_cond: Tensor, *, w: float | None = None, guidance_scale: float | None = None
        ) -> Tensor:
    r"""Classifier-free guidance (Ho & Salimans 2022, eq. 6; source 000 and 001):
    :math:`\varepsilon_\varnothing + g(\varepsilon_c - \varepsilon_\varnothing) = (1 + w)\varepsilon_c - w
    \varepsilon_\varnothing`, written as one ``torch.lerp`` (exact at g = 0 and g = 1, which the textbook
    ``uncond + g * (cond - uncond)`` of diffusers' pipelines is not at g = 1 when the difference rounds).

    Both predictions: one shape, one dtype (the output's); see :func:`_predictions`. Predictions near the dtype's
    largest value (``eps_cond - eps_uncond`` overflowing) still give the finite answer, or a refusal naming
    ``eps_cond`` when the guided prediction itself overflows."""
    g = guidance_scale_from(w=w, guidance_scale=guidance_scale)
    tensors = _predictions({"eps_uncond": eps_uncond, "eps_cond": eps_cond})
    return _combine(lambda u, c: torch.lerp(u, c, g), tensors, "eps_cond")


def _noise_level(sigma: float | Tensor, like: Tensor) -> float | Tensor:
    """``sigma`` of classifier guidance: finite, >= 0, one value or one per row (cast to the predictions' dtype)."""
    return param._coefficient(sigma, "sigma", like, divides=False)


def classifier_guidance(eps: Tensor, grad_log_classifier: Tensor, sigma: float | Tensor, scale: float) -> Tensor:
    r"""Classifier guidance in eps form (Dhariwal & Nichol 2021, Algorithm 2; source 001):
    :math:`\hat\varepsilon = \varepsilon - s\,\sigma_t \nabla_x \log p(y \mid x_t)`, i.e. the score
    :math:`\nabla \log p_t(x) + s \nabla \log p(y \mid x)` (source 000's augmented score) times :math:`-\sigma_t`.

    ``sigma`` is the noise level :math:`\sigma_t \ge 0` (a float, or a tensor of one value or one per row):
    negative and non-finite values are refused; :math:`\sigma_t = 0` leaves eps unchanged. ``scale`` is any finite
    real (negative scales push away from the class). ``eps`` and ``grad_log_classifier``: one shape, one dtype."""
    scale = as_scalar(scale, "scale")
    eps, grad = _predictions({"eps": eps, "grad_log_classifier": grad_log_classifier})
    sigma = _noise_level(sigma, eps)
    k = scale * sigma
    if not bool(torch.isfinite(torch.as_tensor(k)).all()):
        raise ValueError(f"scale, sigma: scale * sigma overflows (scale = {scale!r})")
    return _combine(lambda e, gr: e - k * gr, [eps, grad], "grad_log_classifier")


def negative_prompt_000(eps_null: Tensor, eps_pos: Tensor, eps_neg: Tensor, w_pos: float, w_neg: float) -> Tensor:
    r"""Source 000's negative prompt: :math:`\varepsilon_\varnothing + w_+(\varepsilon_+ - \varepsilon_\varnothing)
    - w_-(\varepsilon_- - \varepsilon_\varnothing)`. Its per-t score is that of
    :math:`p(x|y_+)^{w_+} p(x|y_-)^{-w_-} p(x)^{1 - w_+ + w_-}` (not :math:`1 - w_+ - w_-` as 000 writes).
    Weights: finite reals; predictions: one shape, one dtype."""
    wp, wn = as_scalar(w_pos, "w_pos"), as_scalar(w_neg, "w_neg")
    tensors = _predictions({"eps_null": eps_null, "eps_pos": eps_pos, "eps_neg": eps_neg})
    return _combine(lambda n, p, g: n + wp * (p - n) - wn * (g - n), tensors, "eps_pos")


def negative_prompt_001(eps_pos: Tensor, eps_neg: Tensor, *, w: float | None = None,
                        guidance_scale: float | None = None) -> Tensor:
    r"""Source 001's negative prompt (diffusers ``negative_prompt``): the negative prediction replaces the null one,
    :math:`\varepsilon_- + g(\varepsilon_+ - \varepsilon_-)`; per-t score of :math:`p(x|+)^g p(x|-)^{1-g}`.
    :func:`cfg` with ``eps_neg`` in the null branch."""
    g = guidance_scale_from(w=w, guidance_scale=guidance_scale)
    tensors = _predictions({"eps_neg": eps_neg, "eps_pos": eps_pos})
    return _combine(lambda n, p: torch.lerp(n, p, g), tensors, "eps_pos")


def _weights(weights) -> list[float]:
    """Composition weights: a sequence (or 1-D tensor/array) of finite reals."""
    if isinstance(weights, (str, bytes)):
        raise TypeError(f"weights: expected a sequence of numbers, got {type(weights).__name__} {weights!r}")
    values = as_real_tensor(weights if isinstance(weights, Tensor) else list(weights), "weights", copy=False)
    if values.ndim != 1:
        raise ValueError(f"weights: expected a 1-D sequence of numbers, got shape {list(values.shape)}")
    return [float(v) for v in values]


def compose(eps_null: Tensor, eps_conds: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    r"""Composition of K conditions with signed weights (Liu et al. 2022, eq. 11 as in source 000):
    :math:`\sum_k w_k \varepsilon_k + (1 - \sum_k w_k)\varepsilon_\varnothing`; negative :math:`w_k` negate.
    ``eps_conds``: a non-empty sequence of predictions of ``eps_null``'s shape and dtype; ``weights``: as many
    finite reals."""
    if isinstance(eps_conds, (str, bytes)) or not hasattr(eps_conds, "__len__"):
        raise TypeError(f"eps_conds: expected a sequence of predictions, got {type(eps_conds).__name__}")
    weights = _weights(weights)
    if len(eps_conds) != len(weights) or not len(eps_conds):
        raise ValueError(f"eps_conds, weights: need the same positive length, got {len(eps_conds)}, {len(weights)}")
    named = {"eps_null": eps_null}
    for k, eps_k in enumerate(eps_conds):
        named[f"eps_conds[{k}]"] = eps_k
    try:
        tensors = _predictions(named)
    except (TypeError, ValueError) as err:  # "eps_conds[k]: ..." -> "eps_conds: entry k: ..."
        message = str(err)
        if message.startswith("eps_conds["):
            k, rest = message[len("eps_conds["):].split("]", 1)
            raise type(err)(f"eps_conds: entry {k}{rest}") from None
        raise
    rest_weight = 1.0 - float(sum(weights))

    def formula(null, *conds):
        out = null * rest_weight
        for eps_k, w_k in zip(conds, weights, strict=True):
            out = out + w_k * eps_k
        return out

    return _combine(formula, tensors, "eps_conds")


def _space(space) -> str:
    if not isinstance(space, str) or space not in param.PARAMETRIZATIONS:
        raise ValueError(f"space: unknown parametrisation {space!r}; choose one of {param.PARAMETRIZATIONS}")
    return space


def _convert(pred: Tensor, name: str, source: str, target: str, *, x: Tensor, alpha, sigma) -> Tensor:
    """:func:`toy_models.parametrization.convert` of an already validated prediction, its refusals naming ``name``
    where they blame the prediction (an overflow) rather than ``alpha``/``sigma``."""
    try:
        return param.convert(pred, source, target, x=x, alpha=alpha, sigma=sigma)
    except ValueError as err:
        message = str(err)
        if message.startswith("pred:"):
            raise ValueError(f"{name}:{message[len('pred:'):]}") from None
        raise


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
    eps_guided, eps_cond, x = _predictions({"eps_guided": eps_guided, "eps_cond": eps_cond, "x": x})
    if eps_guided.ndim != 2 or eps_guided.shape[1] < 2:
        raise ValueError(f"eps_guided: rescale needs [N, d] with d >= 2, got {list(eps_guided.shape)}")
    phi = as_scalar(phi, "phi")
    if not 0.0 <= phi <= 1.0:
        raise ValueError(f"phi: must lie in [0, 1], got {phi!r}")
    space = _space(space)
    guided = _convert(eps_guided, "eps_guided", "eps", space, x=x, alpha=alpha, sigma=sigma)
    cond = _convert(eps_cond, "eps_cond", "eps", space, x=x, alpha=alpha, sigma=sigma)
    if phi == 0.0:
        return eps_guided.clone()
    (m_g, e_g), (m_c, e_c) = _spread(guided), _spread(cond)
    spread = m_g > 0
    # ratio = std_c / std_g = (m_c / m_g) 2^(e_c - e_g): the mantissa quotient lies in (1/2, 2) and never
    # overflows; the power of two is applied once, to the product, exactly (unless the product itself over- or
    # underflows), so this is bit for bit phi * y * (std_c / std_g) wherever that is representable
    rescaled = torch.ldexp((phi * guided) * (m_c / torch.where(spread, m_g, torch.ones_like(m_g))), e_c - e_g)
    if not bool(torch.isfinite(rescaled.detach()).all()):
        row = int((~torch.isfinite(rescaled.detach())).any(dim=1).nonzero()[0, 0])
        raise ValueError(f"eps_guided: row {row} has a spread of {float(torch.ldexp(m_g[row], e_g[row])):.3g} over "
                         f"the features in {space} space against the conditional prediction's "
                         f"{float(torch.ldexp(m_c[row], e_c[row])):.3g}; the rescaled prediction overflows "
                         f"{guided.dtype}")
    blended = rescaled + (1.0 - phi) * guided
    out = _convert(blended, "eps_guided", space, "eps", x=x, alpha=alpha, sigma=sigma)
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
    scaled = torch.ldexp(y, -top)
    diff = scaled - scaled[:, :1]
    _, top2 = torch.frexp(diff.detach().abs().amax(dim=1, keepdim=True))
    mantissa, exponent = torch.frexp(torch.ldexp(diff, -top2).std(dim=1, keepdim=True))
    return mantissa, exponent + top + top2


def _limit(limit) -> float:
    value = as_scalar(limit, "limit")
    if not value > 0:
        raise ValueError(f"limit: must be > 0 (the x0 range is [-limit, limit]), got {value!r}")
    return value


def _consistent_eps(eps: Tensor, x0: Tensor, x0_new: Tensor, *, x: Tensor, alpha, sigma) -> Tensor:
    """The eps consistent with the thresholded x0: converted where thresholding changed x0, ``eps`` itself (exact,
    no round trip) where it did not."""
    back = _convert(x0_new, "eps", "x0", "eps", x=x, alpha=alpha, sigma=sigma)
    return torch.where(x0_new != x0, back, eps)


def static_threshold(eps: Tensor, *, x: Tensor, alpha: float, sigma: float, limit: float = 1.0) -> Tensor:
    r"""Static thresholding (Saharia et al. 2022, "Photorealistic Text-to-Image Diffusion Models with Deep Language
    Understanding", section 2.3): clip the x0-prediction :math:`\hat x_0 = (x - \sigma\varepsilon)/\alpha` to
    ``[-limit, limit]`` (the paper's data range is [-1, 1]) and return the eps consistent with it,
    :math:`(x - \alpha\,\mathrm{clip}(\hat x_0))/\sigma`; where nothing is clipped that is ``eps`` itself, returned
    exactly. ``limit`` a finite number > 0 (zero, negative, NaN and infinity refused); ``alpha``, ``sigma`` > 0;
    ``eps`` and ``x``: one shape, one dtype (the output's)."""
    limit = _limit(limit)
    eps, x = _predictions({"eps": eps, "x": x})
    x0 = _convert(eps, "eps", "eps", "x0", x=x, alpha=alpha, sigma=sigma)
    return _consistent_eps(eps, x0, x0.clamp(-limit, limit), x=x, alpha=alpha, sigma=sigma)


def dynamic_threshold(eps: Tensor, *, x: Tensor, alpha: float, sigma: float, percentile: float = 0.995,
                      limit: float = 1.0) -> Tensor:
    r"""Dynamic thresholding (Saharia et al. 2022, section 2.3): per sample, :math:`s` = the ``percentile`` quantile
    of :math:`|\hat x_0|` over the features (``torch.quantile``, linear interpolation), at least ``limit``; clip
    :math:`\hat x_0` to :math:`[-s, s]`, multiply by :math:`\text{limit}/s` and return the consistent eps (``eps``
    itself, exactly, where x0 is unchanged). The paper's version is ``limit = 1``; diffusers'
    ``_threshold_sample`` (``thresholding=True`` in its schedulers) also caps :math:`s` at ``sample_max_value`` and
    works on the x0 it is handed, with no eps returned. ``percentile`` in (0, 1];
    ``limit`` finite and > 0; ``eps`` and ``x``: one ``[N, d]`` shape, one dtype."""
    percentile = as_scalar(percentile, "percentile")
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile: must lie in (0, 1], got {percentile!r}")
    limit = _limit(limit)
    eps, x = _predictions({"eps": eps, "x": x})
    if eps.ndim != 2 or eps.shape[1] < 1:
        raise ValueError(f"eps: dynamic thresholding needs [N, d] (a percentile per sample), got {list(eps.shape)}")
    x0 = _convert(eps, "eps", "eps", "x0", x=x, alpha=alpha, sigma=sigma)
    s = torch.quantile(x0.abs(), percentile, dim=1, keepdim=True).clamp_min(limit)
    x0_new = torch.maximum(torch.minimum(x0, s), -s) * (limit / s)
    return _consistent_eps(eps, x0, x0_new, x=x, alpha=alpha, sigma=sigma)


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
        try:
            terms = list(self.terms)
        except TypeError:
            raise TypeError(f"terms: expected a sequence of (condition, weight) pairs, got "
                            f"{type(self.terms).__name__}") from None
        if not terms:
            raise ValueError("terms: need at least one (condition, weight) pair")
        for term in terms:
            if not isinstance(term, (tuple, list)) or len(term) != 2:
                raise TypeError(f"terms: expected (condition, weight) pairs, got {term!r}")
            cond, weight = term
            key = normalize_condition(cond)
            merged[key] = merged.get(key, 0.0) + as_scalar(weight, "terms")
        total = sum(merged.values())
        # weights are sums of at most a handful of user floats: 16 u relative to their magnitude
        if abs(total - 1.0) > 16 * 2.0**-53 * max(1.0, sum(abs(v) for v in merged.values())):
            raise ValueError(f"terms: weights must sum to 1 (the rule must be exact without guidance), got {total}")
        object.__setattr__(self, "terms", tuple(merged.items()))

    def combine(self, predictions: dict[Hashable, Tensor]) -> Tensor:
        """Apply the rule to predictions keyed by (normalised) condition: :math:`\\sum_i a_i \\varepsilon_i`, in
        the order of :attr:`terms` (one shape, one dtype; no spurious overflow, as the combiners)."""
        missing = [cond for cond, _ in self.terms if cond not in predictions]
        if missing:
            raise ValueError(f"predictions: no prediction for the condition(s) {missing}; the rule {self.name!r} "
                             f"needs {[cond for cond, _ in self.terms]}")
        tensors = _predictions({f"predictions[{cond!r}]": predictions[cond] for cond, _ in self.terms})
        weights = [weight for _, weight in self.terms]

        def formula(*preds):
            out = None
            for weight, pred in zip(weights, preds, strict=True):
                term = weight * pred
                out = term if out is None else out + term
            return out

        return _combine(formula, tensors, "predictions")


def linear_rule(kind: str, **kw) -> LinearRule:
    """The weights of a named linear rule.

    * ``"cfg"``: ``condition``, ``w`` or ``guidance_scale``;
    * ``"negative_000"``: ``positive``, ``negative``, ``w_pos``, ``w_neg``;
    * ``"negative_001"``: ``positive``, ``negative``, ``w`` or ``guidance_scale``;
    * ``"compose"``: ``conditions``, ``weights``;
    * ``"classifier"``: ``condition``, ``scale`` (classifier guidance with the exact classifier is CFG with
      ``guidance_scale = scale``: source 000's Proposition 1 read backwards).
    """
    if not isinstance(kind, str):
        raise ValueError(f"kind: expected a rule name, got {kind!r}")
    _required(kw, *{"cfg": ("condition",), "classifier": ("condition", "scale"),
                    "negative_000": ("positive", "negative", "w_pos", "w_neg"),
                    "negative_001": ("positive", "negative"), "compose": ("conditions", "weights")}.get(kind, ()))
    if kind == "cfg":
        g = guidance_scale_from(w=kw.get("w"), guidance_scale=kw.get("guidance_scale"))
        return LinearRule(((kw["condition"], g), (None, 1.0 - g)), f"cfg g={g:g}")
    if kind == "classifier":
        s = as_scalar(kw["scale"], "scale")
        return LinearRule(((kw["condition"], s), (None, 1.0 - s)), f"classifier s={s:g}")
    if kind == "negative_000":
        wp, wn = as_scalar(kw["w_pos"], "w_pos"), as_scalar(kw["w_neg"], "w_neg")
        return LinearRule(((kw["positive"], wp), (kw["negative"], -wn), (None, 1.0 - wp + wn)),
                          f"negative-000 w+={wp:g} w-={wn:g}")
    if kind == "negative_001":
        g = guidance_scale_from(w=kw.get("w"), guidance_scale=kw.get("guidance_scale"))
        return LinearRule(((kw["positive"], g), (kw["negative"], 1.0 - g)), f"negative-001 g={g:g}")
    if kind == "compose":
        conds, weights = list(kw["conditions"]), _weights(kw["weights"])
        if len(conds) != len(weights):
            raise ValueError(f"conditions, weights: need the same length, got {len(conds)}, {len(weights)}")
        return LinearRule((*zip(conds, weights, strict=True), (None, 1.0 - sum(weights))),
                          "compose " + ", ".join(f"{c}:{v:g}" for c, v in zip(conds, weights, strict=True)))
    raise ValueError(f"kind: unknown rule {kind!r}; choose cfg, classifier, negative_000, negative_001, compose")


def _required(kw: dict, *names: str) -> None:
    missing = [name for name in names if name not in kw]
    if missing:
        raise TypeError(f"{missing[0]}: this rule needs the keyword argument(s) {', '.join(missing)}")


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
    tt = as_real_tensor(t, "t", copy=False)
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
        if interval is not None:
            bounds = as_real_tensor(interval, "interval", copy=False)
            if bounds.shape != (2,) or not 0 <= float(bounds[0]) <= float(bounds[1]):
                raise ValueError(f"interval: need (sigma_lo, sigma_hi) with 0 <= sigma_lo <= sigma_hi, got "
                                 f"{interval!r}")
            interval = (float(bounds[0]), float(bounds[1]))
        if not isinstance(rule, LinearRule):
            raise TypeError(f"rule: expected a LinearRule (see linear_rule), got {type(rule).__name__}")
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
        if not callable(grad_log_classifier):
            raise TypeError(f"grad_log_classifier: expected a callable (x, t, condition) -> [N, d], got "
                            f"{type(grad_log_classifier).__name__}")
        self.denoiser, self.grad_log_classifier = denoiser, grad_log_classifier
        self.scale = as_scalar(scale, "scale")

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
