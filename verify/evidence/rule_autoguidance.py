r"""Autoguidance against unguided sampling and CFG, analytic and with the trained networks (read by L-AUTOGUIDANCE;
Karras et al. 2024, 'Guiding a Diffusion Model with a Bad Version of Itself', arXiv 2406.02507, sections 3-5).

Autoguidance replaces CFG's unconditional branch by a weaker model of the same condition:
:math:`D_w = w D_1 + (1 - w) D_0`, :math:`D_1` the model, :math:`D_0` its weaker version (``guidance_scale`` w).
Two levels, each computed here. The reference is the exact model (the world's own denoiser) run through the same
sampler from the same start points, so the sampler's discretisation is common to every compared run; precision
and recall are against the true :math:`p(x|c)` itself:

(a) **analytic**: the "strong" model is the world with every covariance inflated by 1.2 (:func:`inflated`: an
    underfit model, too broad), the "weak" one by 1.4 (the same error, twice as large: the paper's premise).
    ``gauss1d``: every guided eps is affine, so DDIM's output law is exact
    (:func:`~verify.exact_law.discrete_sampler_law`), and so are its Frechet distance and variance ratio to the exact
    model's law; precision and recall from exact densities (:func:`~verify.metrics.precision_recall`, binomial SEs).
    ``ring2d`` class 0: DDIM samples; precision (binomial SE), Frechet distance and the spread
    :math:`\operatorname{tr}\operatorname{Cov}` relative to the exact model's samples (paired bootstrap SEs).
(b) **trained networks**: ``checkpoints/ring2d`` (width 64, 8000 steps) as the strong model and
    ``checkpoints/imperfect/ring2d`` (width 48, 600 steps: smaller and shorter trained, same world, schedule,
    vocabulary and condition dropout) as the weak one, the paper's recipe for a weak model; same metrics as on
    ring2d; skipped (and said so) when the checkpoints are missing.

Unguided (strong, conditional), CFG (strong, with its own null branch) and autoguidance use the same strength
``guidance_scale`` g = 2 (the paper's w = 2), the same start points and the same sampler.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

import torch

from toy_models import AnalyticDenoiser, GaussianMixture, World, get_schedule, get_world, inflated
from verify import rules
from verify.config import RunConfig
from verify.exact_law import discrete_sampler_law
from verify.metrics import frechet_distance, precision_recall
from verify.samplers import sample, time_grid

from . import provider
from .network import default_checkpoints
from .shared import one_thread

__all__ = ["G", "STRONG", "WEAK", "METHODS", "MethodResult", "AutoguidanceLevel", "NetworkPair",
           "AutoguidanceEvidence", "autoguidance_comparison"]

F64 = torch.float64
G = 2.0
STRONG, WEAK = 1.2, 1.4
#: the compared samplings: the strong model alone, CFG with its own null branch, autoguidance with the weak model
METHODS = ("unguided", "cfg", "autoguidance")




@dataclass(frozen=True)
class MethodResult:
    """One method against the exact model's output: Frechet distance and spread ratio (SE 0 where exact), precision
    against p(x|c) (binomial SE); on gauss1d also the law's mean and variance and the recall."""

    frechet: float
    frechet_se: float
    spread_ratio: float
    spread_ratio_se: float
    precision: float
    precision_se: float
    mean: float | None = None
    var: float | None = None
    recall: float | None = None
    recall_se: float | None = None


@dataclass(frozen=True)
class AutoguidanceLevel:
    """The exact model's own summary (gauss1d: mean and var of its law; sampled: its precision) and each of
    :data:`METHODS`."""

    exact_model: dict[str, float]
    methods: dict[str, MethodResult]


@dataclass(frozen=True)
class NetworkPair:
    """The shipped strong and weak networks: their cards, whether they fit the paper's premise, and the results
    (``skipped`` says why there are none)."""

    skipped: str | None = None
    cards: dict[str, dict] | None = None
    same_task_and_conditioning: bool | None = None
    weak_is_smaller_and_shorter_trained: bool | None = None
    results: AutoguidanceLevel | None = None
    steps: int | None = None


@dataclass(frozen=True)
class AutoguidanceEvidence:
    gauss1d: AutoguidanceLevel
    ring2d: AutoguidanceLevel
    networks: NetworkPair
    ring2d_steps: int


def _guided(strong, weak, condition) -> dict:
    return {"unguided": rules.get("cfg", guidance_scale=1.0).guide(strong, condition),
            "cfg": rules.get("cfg", guidance_scale=G).guide(strong, condition),
            "autoguidance": rules.get("autoguidance", guidance_scale=G).guide(strong, condition, weak=weak)}


# --------------------------------------------------------------------------------------------------------------
# (a) analytic
# --------------------------------------------------------------------------------------------------------------
def _gauss1d(config: RunConfig) -> AutoguidanceLevel:
    world = get_world("gauss1d")
    truth = world.law(1)
    strong, weak = AnalyticDenoiser(inflated(world, STRONG)), AnalyticDenoiser(inflated(world, WEAK))
    a, s = (float(v) for v in get_schedule("vp-linear").alpha_sigma(1.0))
    m0 = torch.tensor([a * 1.0], dtype=F64)
    c0 = torch.tensor([[a * a * float(truth.covariances[0, 0, 0]) + s * s]], dtype=F64)
    gen = torch.Generator().manual_seed(config.seed + 3)
    n_ref = 20000 if config.quick else 100000
    ref_mean, ref_cov = discrete_sampler_law("ddim", AnalyticDenoiser(world), time_grid(100), m0, c0, condition=1)
    reference = GaussianMixture([1.0], ref_mean.reshape(1, 1), ref_cov.reshape(1, 1, 1))
    methods = {}
    for name, den in _guided(strong, weak, 1).items():
        mean, cov = discrete_sampler_law("ddim", den, time_grid(100), m0, c0)
        law = GaussianMixture([1.0], mean.reshape(1, 1), cov.reshape(1, 1, 1))
        pr = precision_recall(law, truth, n_reference=n_ref, generator=gen)
        methods[name] = MethodResult(frechet_distance(law, reference), 0.0, float(cov[0, 0]) / float(ref_cov[0, 0]),
                                     0.0, pr.precision, pr.precision_se, float(mean[0]), float(cov[0, 0]),
                                     pr.recall, pr.recall_se)
    return AutoguidanceLevel({"mean": float(ref_mean[0]), "var": float(ref_cov[0, 0])}, methods)


def _paired(x: torch.Tensor, ref: torch.Tensor, generator: torch.Generator, n_boot: int
            ) -> tuple[float, float, float, float]:
    """Frechet distance of ``x`` to the exact model's samples ``ref`` (same start points, same sampler: the
    discretisation is common to both) and the spread tr Cov(x) / tr Cov(ref), each with its paired bootstrap SE
    (``n_boot`` resamples of the pairs)."""
    def stats(idx):
        y, r = x[idx], ref[idx]
        return frechet_distance(y, r), float(torch.cov(y.T).trace() / torch.cov(r.T).trace())

    fd, spread = stats(torch.arange(len(x)))
    boot = torch.tensor([stats(torch.randint(len(x), (len(x),), generator=generator)) for _ in range(n_boot)])
    return fd, float(boot[:, 0].std()), spread, float(boot[:, 1].std())


def _sampled(strong, weak, world: World, condition, n: int, steps: int, seed: int, n_boot: int
             ) -> AutoguidanceLevel:
    """DDIM samples of unguided / CFG / autoguidance and of the exact model (the reference), same start points."""
    truth = world.law(condition)
    a, s = (float(v) for v in strong.schedule.alpha_sigma(1.0))
    gen = torch.Generator().manual_seed(seed)
    x = truth.noised(a, s).sample(n, gen)
    grid = time_grid(steps)
    ref = sample("ddim", AnalyticDenoiser(world, strong.schedule), x, grid, condition=condition)
    exact = {"precision": precision_recall(ref, truth, n_reference=20000, generator=gen).precision}
    methods = {}
    for name, den in _guided(strong, weak, condition).items():
        y = sample("ddim", den, x, grid).to(F64)
        pr = precision_recall(y, truth, n_reference=20000, generator=gen)
        fd, fd_se, spread, spread_se = _paired(y, ref, gen, n_boot)
        methods[name] = MethodResult(fd, fd_se, spread, spread_se, pr.precision, pr.precision_se)
    return AutoguidanceLevel(exact, methods)


def _ring2d(config: RunConfig) -> AutoguidanceLevel:
    world = get_world("ring2d")
    strong, weak = AnalyticDenoiser(inflated(world, STRONG)), AnalyticDenoiser(inflated(world, WEAK))
    return _sampled(strong, weak, world, 0, 400 if config.quick else 2000, 25 if config.quick else 50,
                    config.seed + 11, 30 if config.quick else 100)


# --------------------------------------------------------------------------------------------------------------
# (b) the trained networks
# --------------------------------------------------------------------------------------------------------------
def _networks(config: RunConfig) -> NetworkPair:
    from toy_models.neural import load_checkpoint

    folder = pathlib.Path(config.checkpoints) if config.checkpoints else default_checkpoints()
    paths = {"strong": folder / "ring2d", "weak": folder / "imperfect" / "ring2d"}
    missing = [str(p) for p in paths.values() if not all(p.with_name(p.name + e).is_file()
                                                          for e in (".safetensors", ".json"))]
    if missing:
        return NetworkPair(skipped=f"checkpoints missing: {missing}")
    strong, weak = load_checkpoint(paths["strong"]), load_checkpoint(paths["weak"])
    cards = {}
    for key, den in (("strong", strong), ("weak", weak)):
        card = den.card
        cfg = card.get("config", {})
        cfg = cfg if isinstance(cfg, dict) else {}
        cards[key] = {"world": card.get("world"), "schedule": card.get("schedule"),
                      "width": card.get("network", {}).get("width"), "training_steps": card.get("steps"),
                      "p_uncond": cfg.get("p_uncond"), "parameters": card.get("parameters"),
                      "sha256": str(card.get("sha256", ""))[:16]}
    same_task = all(cards["strong"][k] == cards["weak"][k] for k in ("world", "schedule", "p_uncond")) and \
        strong.card.get("vocabulary") == weak.card.get("vocabulary")
    weaker = (cards["weak"]["parameters"] or 0) < (cards["strong"]["parameters"] or 0) and \
        (cards["weak"]["training_steps"] or 0) < (cards["strong"]["training_steps"] or 0)
    steps = 25 if config.quick else 50
    result = _sampled(strong, weak, get_world("ring2d"), 0, 200 if config.quick else 1500, steps, config.seed + 23,
                      30 if config.quick else 100)
    return NetworkPair(None, cards, same_task, weaker, result, steps)


@provider
@one_thread()
def autoguidance_comparison(config: RunConfig) -> AutoguidanceEvidence:
    """Unguided, CFG and autoguidance against the exact model: gauss1d exactly, ring2d sampled, and the shipped
    networks (see the module docstring)."""
    return AutoguidanceEvidence(_gauss1d(config), _ring2d(config), _networks(config),
                                25 if config.quick else 50)
