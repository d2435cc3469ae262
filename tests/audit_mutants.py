"""Combiners for the audit's own tests: correct ones that must pass, and mutants (plausible real bugs) that must fail.

Every function has the audit's signature ``combine(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma)`` in
the diffusers convention (correct answer: ``eps_uncond + g * (eps_cond - eps_uncond)``). The x0, score and v
conversions of the correct combiners go through :mod:`toy_models.parametrization`; the mutants write their
(wrong) conversions out, as buggy user code would.
"""

from __future__ import annotations

import itertools

import torch

from toy_models import parametrization as param


# ----------------------------------------------------------------------------------------------------------------
# Correct combiners
# ----------------------------------------------------------------------------------------------------------------
def lerp_eps(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """torch.lerp in eps space."""
    return torch.lerp(eps_uncond, eps_cond, guidance_scale)


def textbook_eps(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """diffusers' pipeline line: ``uncond + g * (text - uncond)``."""
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def ho_salimans_w(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """Ho & Salimans' form with the conversion done right: ``w = g - 1``, ``(1 + w) eps_c - w eps_u``."""
    w = guidance_scale - 1.0
    return (1.0 + w) * eps_cond - w * eps_uncond


def x0_space(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """Convert both branches to x0 = (x - sigma eps)/alpha, guide there, convert back."""
    x0_u = param.eps_to_x0(x, eps_uncond, alpha, sigma)
    x0_c = param.eps_to_x0(x, eps_cond, alpha, sigma)
    return param.x0_to_eps(x, x0_u + guidance_scale * (x0_c - x0_u), alpha, sigma)


def score_space(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """Guide the scores -eps/sigma, convert back with -sigma s."""
    s_u, s_c = param.eps_to_score(eps_uncond, sigma), param.eps_to_score(eps_cond, sigma)
    return param.score_to_eps(s_u + guidance_scale * (s_c - s_u), sigma)


def v_space(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """Guide v-predictions (Salimans & Ho 2022), convert back."""
    v_u, v_c = param.eps_to_v(x, eps_uncond, alpha, sigma), param.eps_to_v(x, eps_cond, alpha, sigma)
    return param.v_to_eps(x, v_u + guidance_scale * (v_c - v_u), alpha, sigma)


def tweedie_x0_space(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """x0 by Tweedie from the score, (x + sigma^2 s)/alpha, guided, back through the score."""
    x0_u = (x + sigma**2 * (-eps_uncond / sigma)) / alpha
    x0_c = (x + sigma**2 * (-eps_cond / sigma)) / alpha
    x0_g = torch.lerp(x0_u, x0_c, guidance_scale)
    return -sigma * ((alpha * x0_g - x) / sigma**2)


CORRECT = {f.__name__: f for f in (lerp_eps, textbook_eps, ho_salimans_w, x0_space, score_space, v_space,
                                   tweedie_x0_space)}


# ----------------------------------------------------------------------------------------------------------------
# Mutants: (combiner, the check names that must catch it: each a substring of at least one failed check's name)
# ----------------------------------------------------------------------------------------------------------------
def ho_salimans_convention(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """Ho & Salimans' formula fed the diffusers scale: (1 + g) eps_c - g eps_u (i.e. w = g, one too strong)."""
    return (1.0 + guidance_scale) * eps_cond - guidance_scale * eps_uncond


def inverse_w_mixup(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """Subtracts 1 from a scale that already is diffusers': eps_u + (g - 1)(eps_c - eps_u)."""
    return eps_uncond + (guidance_scale - 1.0) * (eps_cond - eps_uncond)


def swapped_branches(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """The chunk order of the batch swapped: eps_c + g (eps_u - eps_c)."""
    return eps_cond + guidance_scale * (eps_uncond - eps_cond)


def sign_error(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """Guides away from the condition: eps_u - g (eps_c - eps_u)."""
    return eps_uncond - guidance_scale * (eps_cond - eps_uncond)


def score_missing_sigma(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """Treats eps as the score (forgets the 1/sigma), then converts back properly with -sigma s: returns sigma*y."""
    s_u, s_c = -eps_uncond, -eps_cond
    return -sigma * (s_u + guidance_scale * (s_c - s_u))


def score_sigma_squared(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """Variance for standard deviation: score = -eps/sigma^2, back with -sigma s (right unless sigma = 1)."""
    s_u, s_c = -eps_uncond / sigma**2, -eps_cond / sigma**2
    return -sigma * (s_u + guidance_scale * (s_c - s_u))


def x0_not_converted_back(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """Guides in x0 space and returns the x0 prediction as if it were eps."""
    x0_u, x0_c = (x - sigma * eps_uncond) / alpha, (x - sigma * eps_cond) / alpha
    return x0_u + guidance_scale * (x0_c - x0_u)


def x0_alpha_sigma_swapped_back(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """Right x0 conversion, alpha and sigma swapped in the way back: eps = (x - sigma x0)/alpha."""
    x0_u, x0_c = (x - sigma * eps_uncond) / alpha, (x - sigma * eps_cond) / alpha
    return (x - sigma * (x0_u + guidance_scale * (x0_c - x0_u))) / alpha


def alpha_bar_confusion(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """DDPM's alpha_bar (= alpha^2) where sqrt(alpha_bar) belongs, on the way in only (invisible when alpha = 1)."""
    x0_u, x0_c = (x - sigma * eps_uncond) / alpha**2, (x - sigma * eps_cond) / alpha**2
    return (x - alpha * (x0_u + guidance_scale * (x0_c - x0_u))) / sigma


def clamp_eps(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """Thresholding applied to eps instead of x0: clamps the guided eps to [-1, 1]."""
    return (eps_uncond + guidance_scale * (eps_cond - eps_uncond)).clamp(-1.0, 1.0)


def x0_thresholded(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """Static thresholding (clip_sample) baked into the combiner: x0 clipped to [-1, 1] before converting back."""
    x0_u, x0_c = (x - sigma * eps_uncond) / alpha, (x - sigma * eps_cond) / alpha
    return (x - alpha * (x0_u + guidance_scale * (x0_c - x0_u)).clamp(-1.0, 1.0)) / sigma


def inplace_write(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """Right value, computed in the caller's buffer: eps_cond becomes the guided prediction."""
    return eps_cond.sub_(eps_uncond).mul_(guidance_scale).add_(eps_uncond)


def silent_float32(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """Computes in float32 (an autocast or a .float() left in) and casts back to the input dtype."""
    a, b = eps_uncond.float(), eps_cond.float()
    return (a + guidance_scale * (b - a)).to(eps_uncond.dtype)


def returns_float32(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """Computes in float32 and returns float32."""
    a, b = eps_uncond.float(), eps_cond.float()
    return a + guidance_scale * (b - a)


def guidance_scale_float32(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """The scale stored as a float32 tensor (e.g. a pipeline's config): g rounded to float32, math in float64."""
    g = torch.tensor(guidance_scale, dtype=torch.float32).item()
    return eps_uncond + g * (eps_cond - eps_uncond)


def first_feature_only(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """Guidance written for one channel: only feature 0 is guided, the others get the conditional prediction."""
    out = eps_cond.clone()
    out[:, 0] = eps_uncond[:, 0] + guidance_scale * (eps_cond[:, 0] - eps_uncond[:, 0])
    return out


def batch_mean_subtracted(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """Centres the guidance direction over the batch (a per-batch statistic where a per-sample one was meant)."""
    direction = eps_cond - eps_uncond
    return eps_uncond + guidance_scale * (direction - direction.mean(dim=0, keepdim=True))


def scale_on_wrong_axis(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """A per-sample scale vector broadcast along the feature axis ([1, N] instead of [N, 1])."""
    g = torch.full((eps_uncond.shape[0],), guidance_scale, dtype=eps_uncond.dtype).reshape(1, -1)
    return eps_uncond + g * (eps_cond - eps_uncond)


def clamps_large_g(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """A 'safety' clamp of the guidance scale to at most 5."""
    g = min(guidance_scale, 5.0)
    return eps_uncond + g * (eps_cond - eps_uncond)


def skips_guidance_below_one(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """diffusers' ``do_classifier_free_guidance = guidance_scale > 1`` shortcut: g <= 1 returns eps_cond (right only
    at g = 1)."""
    if guidance_scale <= 1.0:
        return eps_cond.clone()
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def returns_input_at_g1(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """Right values, but at g = 1 returns the caller's eps_cond tensor itself (aliasing an input)."""
    if guidance_scale == 1.0:
        return eps_cond
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


_calls = itertools.count()


def alternates_formula(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """Hidden state: alternates between two correct formulas on successive calls, so repeated calls differ in the
    last bits (each within tolerance; only the determinism check sees it)."""
    if next(_calls) % 2:
        return torch.lerp(eps_uncond, eps_cond, guidance_scale)
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def squeezes_output(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """A stray .squeeze(): [N, 1] comes back as [N] (only the d = 1 worlds show it)."""
    return (eps_uncond + guidance_scale * (eps_cond - eps_uncond)).squeeze()


def returns_numpy(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """Returns a NumPy array."""
    return (eps_uncond + guidance_scale * (eps_cond - eps_uncond)).numpy()


_uncond_cache: dict = {}


def reuses_cached_uncond(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """Caches the unconditional prediction per shape and reuses it for later inputs (stale across steps)."""
    cached = _uncond_cache.setdefault(tuple(eps_uncond.shape), eps_uncond.clone())
    return cached + guidance_scale * (eps_cond - cached)


def assumes_vp_alpha(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """Recomputes alpha = sqrt(1 - sigma^2) for the x0 conversion (VP only): NaN once sigma > 1."""
    a = (1.0 - sigma**2) ** 0.5 if sigma <= 1.0 else float("nan")
    x0_u, x0_c = (x - sigma * eps_uncond) / a, (x - sigma * eps_cond) / a
    return (x - a * (x0_u + guidance_scale * (x0_c - x0_u))) / sigma


#: the near miss's error in units of the audit's derived tolerance: between 1 (the bound) and 10 (a tenfold looser one)
NEAR_MISS_FACTOR = 3.0


def near_miss_3x_tolerance(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma):
    """A probe, not a real bug: right everywhere except g = 7.5, where it adds NEAR_MISS_FACTOR = 3 times the bound
    the audit's docstring derives, written out here independently of verify.audit: gamma_18 K (|eps_u| + |eps_c| +
    2|x|/sigma), K = 1 + |g| + |1 - g|, gamma_n = n u / (1 - n u), u = 2^-53. Its error there is 3 bounds plus the
    correct formula's rounding (at most 0.09 of a bound, verify.audit's docstring): inside (2.9, 3.1) bounds. An
    audit whose comparison or tolerance were loosened tenfold (or by any factor above 3.1) would pass it."""
    guided = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
    if guidance_scale == 7.5:
        u = 2.0**-53
        gamma_18 = 18 * u / (1 - 18 * u)
        k = 1.0 + abs(guidance_scale) + abs(1.0 - guidance_scale)
        bound = gamma_18 * k * (eps_uncond.abs() + eps_cond.abs() + (2.0 / sigma) * x.abs())
        guided = guided + NEAR_MISS_FACTOR * bound
    return guided


#: mutant name -> (combiner, substrings: each must occur in the name of at least one failed check)
MUTANTS = {
    "ho_salimans_convention": (ho_salimans_convention, ["matches analytic CFG", "endpoint"]),
    "inverse_w_mixup": (inverse_w_mixup, ["matches analytic CFG", "endpoint"]),
    "swapped_branches": (swapped_branches, ["matches analytic CFG", "endpoint"]),
    "sign_error": (sign_error, ["matches analytic CFG", "g=1 bulk: endpoint"]),
    "score_missing_sigma": (score_missing_sigma, ["edm t=0.90", "vp-linear t=0.02"]),
    "score_sigma_squared": (score_sigma_squared, ["edm t=0.90", "vp-linear t=0.02"]),
    "x0_not_converted_back": (x0_not_converted_back, ["matches analytic CFG"]),
    "x0_alpha_sigma_swapped_back": (x0_alpha_sigma_swapped_back, ["vp-linear t=0.30", "edm"]),
    "alpha_bar_confusion": (alpha_bar_confusion, ["vp-linear"]),
    "clamp_eps": (clamp_eps, ["g=7.5 tails"]),
    "x0_thresholded": (x0_thresholded, ["matches analytic CFG"]),
    "inplace_write": (inplace_write, ["inputs unchanged"]),
    "silent_float32": (silent_float32, ["matches analytic CFG"]),
    "returns_float32": (returns_float32, ["output dtype is float64"]),
    "guidance_scale_float32": (guidance_scale_float32, ["g=0.3", "g=3.3"]),
    "first_feature_only": (first_feature_only, ["ring2d", "tokens16d"]),
    "batch_mean_subtracted": (batch_mean_subtracted, ["matches analytic CFG"]),
    "scale_on_wrong_axis": (scale_on_wrong_axis, ["returns a torch.Tensor without raising", "shape"]),
    "clamps_large_g": (clamps_large_g, ["g=7.5"]),
    "skips_guidance_below_one": (skips_guidance_below_one, ["g=0 ", "g=0.3"]),
    "returns_input_at_g1": (returns_input_at_g1, ["shares no storage"]),
    "alternates_formula": (alternates_formula, ["deterministic"]),
    "squeezes_output": (squeezes_output, ["output shape", "bimodal1d"]),
    "returns_numpy": (returns_numpy, ["returns a torch.Tensor"]),
    "reuses_cached_uncond": (reuses_cached_uncond, ["matches analytic CFG"]),
    "assumes_vp_alpha": (assumes_vp_alpha, ["output is finite", "edm"]),
    "near_miss_3x_tolerance": (near_miss_3x_tolerance, ["g=7.5 bulk: matches analytic CFG"]),
}
