r"""Guided sampling on pixels: over-exposure, out-of-range values, and what rescale, APG, CFG-Zero* and dynamic
thresholding do to them (read by L-RESCALE, and by the image blocks of S0-THRESHOLDING, S1-SCALE-TABLE, L-APG and
L-CFG-ZERO-STAR; drawn by ``image_guidance.png``).

Three models, all guided towards :data:`CONDITION` ("red ring, top-left"), from **the same** start points drawn
from :math:`p(x \mid c)` noised to t = 1 (``start="marginal"``, so that at w = 0 every rule samples
:math:`p(x \mid c)` and every difference between rules is guidance's):

* ``gaussian``: the exact model of the Gaussian pair of ``shapes16``
  (:func:`toy_models.image_worlds.gaussian_pair`): :math:`p(x \mid c)` one component, :math:`p(x)` the world's
  mixture moment-matched per DCT coefficient. Both are Gaussians diagonal in one basis, so CFG's DDIM law is
  Gaussian and is computed **exactly** (:func:`verify.exact_law.discrete_sampler_law`): the expected out-of-range
  fraction (each pixel's marginal is Gaussian), and the Frechet distance to :math:`p(x \mid c)` and to the tilted
  target :math:`p(x \mid c)^{1+w}p(x)^{-w}` (Gaussian too, per coefficient precision
  :math:`(1+w)/\nu_c - w/\bar\nu > 0`), in closed form. The Monte Carlo CFG arm is checked against that law.
  This is the setting of the one-dimensional CFG analyses at image scale, and the one where over-exposure exists;
* ``joint``: the exact model of ``shapes16`` itself (the 48-component mixture the network is trained on);
* ``network``: the trained image network (cross-attention patch transformer with a learned null token;
  :mod:`toy_models.neural`) when ``checkpoints/shapes16`` is present.

For every rule of :data:`VARIANTS` (``joint`` and ``network``: :data:`JOINT_VARIANTS`) and every Ho-Salimans
strength w (guidance scale :math:`g = 1 + w`), DDIM (:data:`STEPS` uniform steps, t = 1 -> 0) runs from the shared
start points; DDIM is deterministic, so row i of every run of a model starts from the same point (paired).

Measured on the final samples, per sample (the N samples are independent and the standard error of a mean over them
is the usual one; the pixels of one sample are correlated and are never treated as independent):

* ``out_of_range``: the fraction of the sample's d = 768 values outside [-1, 1] (the range of the data's means;
  the data itself leaves it at the rate :attr:`ImageGuidance.data_out_of_range`, from exact draws);
* ``excess``: the mean of :math:`\max(|x_i| - 1, 0)` over the values: how far past the range, not only how often;
* ``pixel_std``: the standard deviation over the sample's values (its contrast; over-exposure inflates it);
* ``mean_error``: the root mean square over pixels of (sample - the conditional mean image).

And along the path, the fraction of the guided x0-predictions :math:`(x_t - \sigma_t\hat\varepsilon)/\alpha_t`
outside [-1, 1] (the sampler's own :math:`\hat\varepsilon` at the state it stepped from), averaged over the steps:
S0-THRESHOLDING's measurement on pixels. A few final images of each run are kept for the figure.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch

from toy_models import AnalyticDenoiser, World, get_world
from toy_models.field_mixture import FieldMixture
from toy_models.image_worlds import gaussian_pair
from verify import rules
from verify.config import RunConfig
from verify.metrics import frechet_distance, mean_and_se
from verify.samplers import sample, time_grid

from . import provider
from .network import Card, NetworkModels
from .shared import alpha_sigma, first_sampler_by_limit, one_thread
from .thresholding import guided_x0_path

__all__ = ["IMAGE_WORLD", "CONDITION", "WS", "HIGH_WS", "VARIANTS", "N", "STEPS", "LIMIT", "Arm", "ModelRuns",
           "ImageGuidance", "image_guidance", "run_variants", "measure_samples", "ImageBlock", "image_block",
           "paired_difference", "ExactPixelLaw", "tilted_target", "exact_pixel_law", "expected_out_of_range",
           "JOINT_VARIANTS", "MODELS"]

IMAGE_WORLD = "shapes16"
#: the condition every run is guided towards: one component of shapes16
CONDITION: tuple[str, ...] = ("red", "ring", "top-left")
#: Ho-Salimans strengths (guidance scale 1 + w): 0 (the conditional model alone), the range of S1's "balance" and
#: "strong adherence" bands, and the "oversaturation" band (scale 21)
WS = (0.0, 3.0, 7.0, 20.0)
QUICK_WS = (0.0, 7.0, 20.0)
#: the strengths at which "high scales" claims are decided
HIGH_WS = (7.0, 20.0)
QUICK_HIGH_WS = (7.0, 20.0)
#: the data range of the means
LIMIT = 1.0
#: samples per run on the Gaussian pair: 200 gives a standard error of the mean out-of-range fraction of about 1e-4
#: at CFG's 0.3-0.5 % (measured), 30x smaller than the effects compared; the rules' own per-step cost (rescale's
#: exact spread, APG's projection) dominates the run time, not the exact model
N = 200
QUICK_N = 64
#: the joint world's runs (the exact 48-component model costs several times the Gaussian pair's) and the network's
#: (a forward pass of the patch network costs about 12 MFLOP per image: 3.4 s per 128-sample run); the network's
#: over-exposure is tens of percent, so 64 samples resolve it (standard errors of about 0.5 %)
JOINT_N = 128
QUICK_JOINT_N = 48
NETWORK_N = 64
QUICK_NETWORK_N = 32
JOINT_WS = (0.0, 7.0, 20.0)
STEPS = 50
#: images kept per run for the figure
KEEP = 4
#: the rules compared: name -> (registered rule, its parameters besides w). Rescale at the paper's phi = 0.7 in the
#: paper's space (v) and in diffusers' (eps); APG with eta = 0 (the parallel component dropped, Sadat et al.'s
#: central ingredient), no norm threshold and no momentum, so that only the projection acts; CFG-Zero* at its
#: defaults (optimised scale and zero-init of the first step); dynamic thresholding at Imagen's percentile 0.995 with
#: the data range [-1, 1]
VARIANTS: dict[str, tuple[str, dict]] = {
    "cfg": ("cfg", {}),
    "rescale_v": ("rescale", {"phi": 0.7, "space": "v"}),
    "rescale_eps": ("rescale", {"phi": 0.7, "space": "eps"}),
    "apg": ("apg", {"eta": 0.0}),
    "cfg_zero_star": ("cfg_zero_star", {}),
    "dynamic_threshold": ("dynamic_threshold", {"limit": LIMIT, "percentile": 0.995}),
}
#: the rules run on the joint world and the network
JOINT_VARIANTS = ("cfg", "rescale_v")
MODELS = ("gaussian", "joint", "network")


@dataclass(frozen=True)
class Arm:
    """One (model, rule, w): the per-sample measurements' means and standard errors over the N samples, the
    per-sample ``out_of_range`` values themselves (for paired tests), the mean x0-out-of-range fraction along the path,
    and :data:`KEEP` final images ``[KEEP, C, H, W]`` as nested lists."""

    out_of_range: float
    out_of_range_se: float
    excess: float
    excess_se: float
    pixel_std: float
    pixel_std_se: float
    mean_error: float
    mean_error_se: float
    x0_out_of_range: float
    per_sample_out_of_range: tuple[float, ...]
    images: tuple


@dataclass(frozen=True)
class ModelRuns:
    """One model's arms: ``arms[variant][w]`` (w as ``"7"``); ``skipped`` says why there are none."""

    model: str
    arms: dict[str, dict[str, Arm]]
    card: Card | None = None
    skipped: str = ""


@dataclass(frozen=True)
class ExactPixelLaw:
    """CFG's exact DDIM law on the Gaussian pair at one w: the expected fraction of values outside [-1, 1], the
    Frechet distances (closed form) to p(x|c) and to the tilted target, and the z of the Monte Carlo CFG arm's mean
    out-of-range fraction against the exact expectation (a check of the sampling, not of guidance)."""

    w: float
    out_of_range: float
    frechet_to_conditional: float
    frechet_to_tilted: float
    monte_carlo_z: float


@dataclass(frozen=True)
class ImageGuidance:
    """The runs of the three models (``gaussian``, ``joint``, ``network``; module docstring), CFG's exact law on the
    Gaussian pair by w, the data's own rates, and the run's settings."""

    world: str
    condition: tuple[str, ...]
    gaussian: ModelRuns
    joint: ModelRuns
    network: ModelRuns
    exact_laws: dict[str, ExactPixelLaw]
    data_out_of_range: float
    data_out_of_range_se: float
    data_pixel_std: float
    data_excess: float
    ws: tuple[float, ...]
    high_ws: tuple[float, ...]
    joint_ws: tuple[float, ...]
    n: int
    joint_n: int
    network_n: int
    n_data: int
    steps: int
    image_shape: tuple[int, int, int]

    def runs(self, model: str) -> ModelRuns:
        if model not in MODELS:
            raise ValueError(f"model: expected one of {MODELS}, got {model!r}")
        return getattr(self, model)

    def arm(self, model: str, variant: str, w: float) -> Arm:
        return self.runs(model).arms[variant][f"{w:g}"]


def measure_samples(x: torch.Tensor, mean_image: torch.Tensor, limit: float = LIMIT) -> dict[str, torch.Tensor]:
    """Per-sample measurements of final samples ``x`` ``[N, d]`` (module docstring), each ``[N]``, float64."""
    x = x.to(torch.float64)
    beyond = (x.abs() - limit).clamp_min(0.0)
    return {"out_of_range": (x.abs() > limit).double().mean(1), "excess": beyond.mean(1),
            "pixel_std": x.std(1), "mean_error": (x - mean_image).pow(2).mean(1).sqrt()}


def _run(guided: Any, x_start: torch.Tensor, timesteps: torch.Tensor, mean_image: torch.Tensor,
         shape: tuple[int, int, int]) -> Arm:
    """DDIM on ``guided`` from ``x_start``, measured (module docstring)."""
    fractions, out = guided_x0_path(guided, x_start, timesteps, lambda x0: float((x0.abs() > LIMIT).double().mean()))
    per = measure_samples(out, mean_image)
    m = {k: mean_and_se(v) for k, v in per.items()}
    return Arm(*m["out_of_range"], *m["excess"], *m["pixel_std"], *m["mean_error"],
               sum(fractions) / len(fractions), tuple(per["out_of_range"].tolist()),
               tuple(out[:KEEP].reshape(-1, *shape).tolist()))


def run_variants(denoiser: Any, condition: Hashable, x_start: torch.Tensor, ws: tuple[float, ...],
                 mean_image: torch.Tensor, shape: tuple[int, int, int], steps: int = STEPS,
                 show_progress: bool = False, variants: tuple[str, ...] = tuple(VARIANTS)
                 ) -> dict[str, dict[str, Arm]]:
    """Every rule of ``variants`` (keys of :data:`VARIANTS`) at every w of ``ws`` on ``denoiser`` from the same
    ``x_start``; at w = 0 every rule reduces to the conditional prediction, so w = 0 is run once (as ``cfg``) and
    shared."""
    timesteps = time_grid(steps)
    arms: dict[str, dict[str, Arm]] = {v: {} for v in variants}
    jobs = [(v, w) for w in ws for v in variants if w > 0 or v == "cfg"]
    for variant, w in _progress(jobs, show_progress):
        name, params = VARIANTS[variant]
        guided = rules.get(name, w=w, **params).guide(denoiser, {"cond": condition})
        arms[variant][f"{w:g}"] = _run(guided, x_start, timesteps, mean_image, shape)
    if 0.0 in ws:
        for variant in variants:
            arms[variant]["0"] = arms["cfg"]["0"]
    return arms


def _progress(jobs: list, show: bool):
    if not show:
        return jobs
    from tqdm.auto import tqdm
    return tqdm(jobs, desc="image guidance", leave=False)


def tilted_target(cond: FieldMixture, uncond: FieldMixture, w: float) -> FieldMixture:
    r""":math:`p(x \mid c)^{1+w} p(x)^{-w}` for two single field Gaussians diagonal in one basis: per coefficient,
    precision :math:`(1+w)/\nu_c - w/\bar\nu` and mean :math:`((1+w)c_c/\nu_c - w\bar c/\bar\nu)` / precision
    (products of Gaussian densities). Refused (``ValueError`` naming ``w``) where a precision is not positive."""
    nu_c, nu_u = cond.spectra[0], uncond.spectra[0]
    c_c, c_u = cond.to_basis(cond.mean_images[0]), uncond.to_basis(uncond.mean_images[0])
    precision = (1 + w) / nu_c - w / nu_u
    if not bool((precision > 0).all()):
        raise ValueError(f"w: the tilted target is not normalisable at w = {w!r} (a coefficient's precision <= 0)")
    mean = cond.from_basis(((1 + w) * c_c / nu_c - w * c_u / nu_u) / precision)
    return FieldMixture(torch.ones(1, dtype=torch.float64), mean[None], (1.0 / precision)[None])


def exact_pixel_law(pair: World, condition: Hashable, w: float, steps: int = STEPS) -> FieldMixture:
    r"""CFG's DDIM output law on the Gaussian pair from the noised conditional at t = 1, exact: a single field
    Gaussian in the pair's basis.

    Both branches are Gaussians diagonal in the DCT basis B, so CFG's guided eps is affine with a linear part
    diagonal in B, and so is every DDIM step: the whole sampler is :math:`F(x) = B(a \odot B^\top x) + b`. Two runs
    give it: :math:`F(m)` (the output mean) and :math:`F(m + B s)` with s the start law's standard deviations per
    coefficient, whence :math:`a \odot s` and the output variances :math:`(a_j s_j)^2`. A third run with random
    signs on s checks the diagonality (the response must be :math:`a \odot (\pm s)` to rounding); a violation
    beyond 1e-9 of the response is refused, naming ``pair``."""
    start = pair.law(condition).noised(*alpha_sigma(1.0))
    sd = start.spectra[0].sqrt()
    signs = torch.where(torch.rand(sd.shape, generator=torch.Generator().manual_seed(1)) < 0.5, -1.0, 1.0).double()
    m = start.mean().to(torch.float64)
    x = torch.stack([m, m + start.from_basis(sd).reshape(-1), m + start.from_basis(sd * signs).reshape(-1)])
    guided = rules.get("cfg", w=w).guide(AnalyticDenoiser(pair), {"cond": condition})
    out = sample(first_sampler_by_limit()["ode"], guided, x, time_grid(steps))
    response = start.to_basis((out[1] - out[0]).reshape(sd.shape))
    signed = start.to_basis((out[2] - out[0]).reshape(sd.shape))
    # rounding of a difference of two O(|F|) outputs after 2 x steps affine maps: far below 1e-9 of the response
    if float((signed - response * signs).abs().max()) > 1e-9 * float(response.abs().max()):
        raise ValueError("pair: the guided DDIM map is not diagonal in the laws' basis; the exact law does not apply")
    return FieldMixture(torch.ones(1, dtype=torch.float64), out[0].reshape(1, *sd.shape), (response**2)[None])


def expected_out_of_range(law: FieldMixture, limit: float = LIMIT) -> float:
    """The expected fraction of coordinates outside [-limit, limit] under a single field Gaussian: the average over
    pixels of P(|X_i| > limit), X_i ~ N(m_i, v_i) with v the law's :meth:`~FieldMixture.marginal_variance`."""
    mean, s = law.mean().to(torch.float64), law.marginal_variance().to(torch.float64).sqrt()
    return float((torch.special.ndtr((-limit - mean) / s) + torch.special.ndtr((mean - limit) / s)).mean())


def _exact_laws(pair: World, condition: Hashable, ws: tuple[float, ...], arms: dict[str, Arm]
                ) -> dict[str, ExactPixelLaw]:
    cond, uncond = pair.law(condition), pair.law(None)
    out = {}
    for w in ws:
        law = exact_pixel_law(pair, condition, w)
        oor = expected_out_of_range(law)
        mc = arms[f"{w:g}"]
        z = (mc.out_of_range - oor) / mc.out_of_range_se if mc.out_of_range_se > 0 else 0.0
        out[f"{w:g}"] = ExactPixelLaw(w, oor, frechet_distance(law, cond),
                                      frechet_distance(law, tilted_target(cond, uncond, w)), z)
    return out


@provider
@one_thread()
def image_guidance(config: RunConfig, network_models: NetworkModels) -> ImageGuidance:
    """Every rule at every w on the three models (module docstring). One generator (``config.seed``) draws the
    data's reference sample, then the start points (the joint world's and the network's are the first ``joint_n``
    and ``network_n`` of the Gaussian pair's: the same conditional law)."""
    world = get_world(IMAGE_WORLD)
    pair = gaussian_pair(world, CONDITION)
    law = world.law(CONDITION)
    shape = tuple(int(s) for s in law.shape)
    mean_image = law.mean().to(torch.float64)
    ws = QUICK_WS if config.quick else WS
    high = QUICK_HIGH_WS if config.quick else HIGH_WS
    n, joint_n, net_n = (QUICK_N, QUICK_JOINT_N, QUICK_NETWORK_N) if config.quick else (N, JOINT_N, NETWORK_N)
    joint_ws = tuple(w for w in JOINT_WS if w in ws)
    gen = torch.Generator().manual_seed(config.seed)
    n_data = 20_000
    data = measure_samples(law.sample(n_data, gen), mean_image)
    x_start = law.noised(*alpha_sigma(1.0)).sample(n, gen)
    show = config.show_progress
    gaussian = ModelRuns("gaussian", run_variants(AnalyticDenoiser(pair), CONDITION, x_start, ws, mean_image, shape,
                                                  show_progress=show))
    exact_laws = _exact_laws(pair, CONDITION, ws, gaussian.arms["cfg"])
    joint = ModelRuns("joint", run_variants(AnalyticDenoiser(world), CONDITION, x_start[:joint_n], joint_ws,
                                            mean_image, shape, show_progress=show, variants=JOINT_VARIANTS))
    net = network_models.main.get(IMAGE_WORLD)
    if net is None:
        network = ModelRuns("network", {}, None, network_models.missing(IMAGE_WORLD))
    else:
        arms = run_variants(net, CONDITION, x_start[:net_n], joint_ws, mean_image, shape, show_progress=show,
                            variants=JOINT_VARIANTS)
        network = ModelRuns("network", arms, Card.of(net))
    oor, oor_se = mean_and_se(data["out_of_range"])
    return ImageGuidance(IMAGE_WORLD, CONDITION, gaussian, joint, network, exact_laws, oor, oor_se,
                         float(data["pixel_std"].mean()), float(data["excess"].mean()), tuple(ws), tuple(high),
                         joint_ws, n, joint_n, net_n, n_data, STEPS, shape)


# --------------------------------------------------------------------------------------------------------------
# the image blocks other claims carry (their verdicts stay decided on their own worlds)
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageBlock:
    """Evidence on pixels for a claim decided elsewhere: ``evidence`` (JSON data), a headline fragment and a
    conditions fragment (see :meth:`verify.claims.Decision.with_block`)."""

    evidence: dict
    headline: str = ""
    conditions: str = ""


def paired_difference(a: Arm, b: Arm) -> dict:
    """``b - a`` in out-of-range fraction over the shared start points (row i of both runs started from the same
    point): mean, SE and z of the per-sample differences (samples independent; z = +-inf for a constant non-zero
    difference, 0 for none)."""
    d = torch.tensor(b.per_sample_out_of_range, dtype=torch.float64) \
        - torch.tensor(a.per_sample_out_of_range, dtype=torch.float64)
    mean, se = mean_and_se(d)
    return {"difference": mean, "se": se, "z": mean / se if se > 0 else (0.0 if mean == 0 else math.copysign(
        math.inf, mean))}


def _summary(a: Arm) -> dict:
    return {"out_of_range": a.out_of_range, "out_of_range_se": a.out_of_range_se, "excess": a.excess,
            "pixel_std": a.pixel_std, "rms_error_to_conditional_mean": a.mean_error,
            "x0_predictions_out_of_range": a.x0_out_of_range}


def image_block(ev: ImageGuidance, claim_id: str) -> ImageBlock:
    """The pixel evidence ``claim_id`` carries: S0-THRESHOLDING (x0-predictions out of range by w, dynamic
    thresholding at the top w), S1-SCALE-TABLE (final values out of range and contrast by guidance scale, with CFG's
    exact law), L-APG and L-CFG-ZERO-STAR (the rule against CFG at the high w, paired). Rules other than CFG and
    rescale run on the Gaussian pair only; CFG's measurements are given for every model that ran."""
    top = f"{max(ev.high_ws):g}"
    where = (f"{ev.world} '{' '.join(ev.condition)}', DDIM {ev.steps} steps; gaussian: the Gaussian pair (exact "
             f"model, {ev.n} samples), joint: {ev.world} itself (exact model, {ev.joint_n}), network: the trained "
             f"network ({ev.network_n})")
    models = [m for m in MODELS if not ev.runs(m).skipped]
    g = ev.gaussian.arms
    if claim_id == "S0-THRESHOLDING":
        x0 = {m: {w: a.x0_out_of_range for w, a in ev.runs(m).arms["cfg"].items()} for m in models}
        dyn = {"cfg": _summary(g["cfg"][top]), "dynamic_threshold": _summary(g["dynamic_threshold"][top])}
        return ImageBlock({"world": where, "x0_predictions_out_of_range_by_w": x0, f"gaussian_w{top}": dyn,
                           "network_skipped": ev.network.skipped},
                          headline=(f"{ev.world} pixels (Gaussian pair): x0-predictions out of [-1, 1] "
                                    f"{g['cfg']['0'].x0_out_of_range:.3f} at w = 0, "
                                    f"{g['cfg'][top].x0_out_of_range:.3f} at w = {top}"))
    if claim_id == "S1-SCALE-TABLE":
        table = {m: {f"{1 + float(w):g}": _summary(a) for w, a in ev.runs(m).arms["cfg"].items()} for m in models}
        exact = {f"{1 + law.w:g}": {"expected_out_of_range": law.out_of_range,
                                    "frechet_to_conditional": law.frechet_to_conditional,
                                    "frechet_to_tilted": law.frechet_to_tilted} for law in ev.exact_laws.values()}
        return ImageBlock({"world": where, "by_guidance_scale": table, "gaussian_exact_cfg_law": exact,
                           "data_out_of_range": ev.data_out_of_range, "data_pixel_std": ev.data_pixel_std,
                           "network_skipped": ev.network.skipped})
    variant = {"L-APG": "apg", "L-CFG-ZERO-STAR": "cfg_zero_star"}.get(claim_id)
    if variant is None:
        raise ValueError(f"claim_id: no image block for {claim_id!r}")
    rows = {}
    for w in ev.high_ws:
        cfg, rule = g["cfg"][f"{w:g}"], g[variant][f"{w:g}"]
        rows[f"{w:g}"] = {"cfg": _summary(cfg), variant: _summary(rule),
                          f"paired_{variant}_minus_cfg_out_of_range": paired_difference(cfg, rule)}
    p = rows[top][f"paired_{variant}_minus_cfg_out_of_range"]
    return ImageBlock({"world": where, "gaussian_by_w": rows},
                      headline=(f"{ev.world} Gaussian pair at w = {top}: values out of range {_pct(g['cfg'][top])}"
                                f" (CFG) -> {_pct(g[variant][top])} (paired z = {p['z']:.1f})"))


def _pct(a: Arm) -> str:
    return f"{100 * a.out_of_range:.2f} %"
