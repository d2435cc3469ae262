r"""L-AUTOGUIDANCE: guiding a model with a weaker version of itself (Karras et al. 2024) improves quality without
the loss of diversity that CFG causes.

Two levels, each computed here. The reference is the exact model (the world's own denoiser) run through the same
sampler from the same start points, so the sampler's discretisation is common to every compared run; precision
and recall are against the true :math:`p(x|c)` itself:

(a) **analytic**: the "strong" model is the world with every covariance inflated by 1.2 (an underfit model, too
    broad), the "weak" one by 1.4 (the same error, twice as large: the paper's premise). ``gauss1d``: every guided
    eps is affine, so DDIM's output law is exact (:func:`~verify.exact_law.discrete_sampler_law`), and so are its
    Frechet distance and variance ratio to the exact model's law; precision and recall from exact densities
    (:func:`~verify.metrics.precision_recall`, binomial SEs). ``ring2d`` class 0: DDIM samples; precision
    (binomial SE), Frechet distance and the spread :math:`\operatorname{tr}\operatorname{Cov}` relative to the
    exact model's samples (paired bootstrap SEs).
(b) **trained networks**: ``checkpoints/ring2d`` (width 64, 8000 steps) as the strong model and
    ``checkpoints/imperfect/ring2d`` (width 48, 600 steps: smaller and shorter trained, same world, schedule,
    vocabulary and condition dropout) as the weak one, the paper's recipe for a weak model; same metrics as on
    ring2d.

Unguided (strong, conditional), CFG (strong, with its own null branch) and autoguidance use the same strength
``guidance_scale`` g = 2 (the paper's w = 2), the same start points and the same sampler. A difference counts beyond
3 standard errors (one-sided false-alarm rate 0.135 % per comparison; a 4-SE effect is detected with probability
0.84). "Quality" is the Frechet distance to the exact model's output (and precision); "diversity" the spread relative
to it (and recall, where exact).
"""

from __future__ import annotations

import math
import pathlib

import torch

from toy_models import AnalyticDenoiser, GaussianMixture, World, get_schedule, get_world
from verify import rules
from verify.exact_law import discrete_sampler_law
from verify.metrics import frechet_distance, precision_recall
from verify.samplers import sample, time_grid

from . import ClaimRecord, RunConfig

F64 = torch.float64
Z = 3.0
G = 2.0
STRONG, WEAK = 1.2, 1.4
SOURCE = ("Karras, Aittala, Kynkaanniemi, Lehtinen, Aila & Laine 2024, 'Guiding a Diffusion Model with a Bad Version "
          "of Itself' (NeurIPS 2024, arXiv 2406.02507), sections 3-5")


def inflated(world: World, factor: float) -> World:
    """The world with every covariance multiplied by ``factor`` (an underfit model of it)."""
    def grow(gm: GaussianMixture) -> GaussianMixture:
        return GaussianMixture(gm.weights, gm.means, gm.covariances * factor, gm.labels)

    conds = None if world.conditionals is None else {c: grow(law) for c, law in world.conditionals.items()}
    return World(f"{world.name}-x{factor:g}", grow(world.unconditional), world.description, conds)


def _guided(strong, weak, condition) -> dict:
    return {"unguided": rules.get("cfg", guidance_scale=1.0).guide(strong, condition),
            "cfg": rules.get("cfg", guidance_scale=G).guide(strong, condition),
            "autoguidance": rules.get("autoguidance", guidance_scale=G).guide(strong, condition, weak=weak)}


# --------------------------------------------------------------------------------------------------------------
# (a) analytic
# --------------------------------------------------------------------------------------------------------------
def _gauss1d(config: RunConfig) -> dict:
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
    out = {"exact_model": {"mean": float(ref_mean[0]), "var": float(ref_cov[0, 0])}}
    for name, den in _guided(strong, weak, 1).items():
        mean, cov = discrete_sampler_law("ddim", den, time_grid(100), m0, c0)
        law = GaussianMixture([1.0], mean.reshape(1, 1), cov.reshape(1, 1, 1))
        pr = precision_recall(law, truth, n_reference=n_ref, generator=gen)
        out[name] = {"mean": float(mean[0]), "var": float(cov[0, 0]), "frechet": frechet_distance(law, reference),
                     "frechet_se": 0.0, "spread_ratio": float(cov[0, 0]) / float(ref_cov[0, 0]),
                     "spread_ratio_se": 0.0, "precision": pr.precision, "precision_se": pr.precision_se,
                     "recall": pr.recall, "recall_se": pr.recall_se}
    return out


def _paired(x: torch.Tensor, ref: torch.Tensor, generator: torch.Generator, n_boot: int) -> dict:
    """Frechet distance of ``x`` to the exact model's samples ``ref`` (same start points, same sampler: the
    discretisation is common to both) and the spread tr Cov(x) / tr Cov(ref), with paired bootstrap SEs."""
    def stats(idx):
        y, r = x[idx], ref[idx]
        return frechet_distance(y, r), float(torch.cov(y.T).trace() / torch.cov(r.T).trace())

    fd, spread = stats(torch.arange(len(x)))
    boot = torch.tensor([stats(torch.randint(len(x), (len(x),), generator=generator)) for _ in range(n_boot)])
    return {"frechet": fd, "frechet_se": float(boot[:, 0].std()), "spread_ratio": spread,
            "spread_ratio_se": float(boot[:, 1].std())}


def _sampled(strong, weak, world: World, condition, n: int, steps: int, seed: int, n_boot: int) -> dict:
    """DDIM samples of unguided / CFG / autoguidance and of the exact model (the reference), same start points."""
    truth = world.law(condition)
    a, s = (float(v) for v in strong.schedule.alpha_sigma(1.0))
    gen = torch.Generator().manual_seed(seed)
    x = truth.noised(a, s).sample(n, gen)
    grid = time_grid(steps)
    ref = sample("ddim", AnalyticDenoiser(world, strong.schedule), x, grid, condition=condition)
    out = {"exact_model": {"precision": precision_recall(ref, truth, n_reference=20000, generator=gen).precision}}
    for name, den in _guided(strong, weak, condition).items():
        y = sample("ddim", den, x, grid).to(F64)
        pr = precision_recall(y, truth, n_reference=20000, generator=gen)
        out[name] = {"precision": pr.precision, "precision_se": pr.precision_se, **_paired(y, ref, gen, n_boot)}
    return out


def _ring2d(config: RunConfig) -> dict:
    world = get_world("ring2d")
    strong, weak = AnalyticDenoiser(inflated(world, STRONG)), AnalyticDenoiser(inflated(world, WEAK))
    return _sampled(strong, weak, world, 0, 400 if config.quick else 2000, 25 if config.quick else 50,
                    config.seed + 11, 30 if config.quick else 100)


# --------------------------------------------------------------------------------------------------------------
# (b) the trained networks
# --------------------------------------------------------------------------------------------------------------
def _checkpoints(config: RunConfig) -> pathlib.Path:
    if config.checkpoints:
        return pathlib.Path(config.checkpoints)
    here = pathlib.Path("checkpoints")
    return here if here.is_dir() else pathlib.Path(__file__).resolve().parents[2] / "checkpoints"


def _networks(config: RunConfig) -> dict:
    from toy_models.neural import load_checkpoint

    folder = _checkpoints(config)
    paths = {"strong": folder / "ring2d", "weak": folder / "imperfect" / "ring2d"}
    missing = [str(p) for p in paths.values() if not all(p.with_name(p.name + e).is_file()
                                                          for e in (".safetensors", ".json"))]
    if missing:
        return {"skipped": f"checkpoints missing: {missing}"}
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
    return {"cards": cards, "same_task_and_conditioning": same_task, "weak_is_smaller_and_shorter_trained": weaker,
            "results": result, "steps": steps}


# --------------------------------------------------------------------------------------------------------------
# the record
# --------------------------------------------------------------------------------------------------------------
def _below(a: dict, b: dict, key: str) -> bool:
    """``a[key] < b[key]`` by more than Z standard errors of the difference (exact values: SE 0)."""
    return b[key] - a[key] > Z * math.hypot(a[f"{key}_se"], b[f"{key}_se"])


def _judge(res: dict) -> dict:
    """Autoguidance against unguided sampling and CFG at the same strength: quality = Frechet distance to the
    exact model's output falls below the unguided model's; diversity kept = its spread is closer to the exact
    model's than CFG's is (|spread ratio - 1| smaller beyond 3 SE)."""
    auto, plain, cfg = res["autoguidance"], res["unguided"], res["cfg"]
    quality = _below(auto, plain, "frechet")

    def gap(r):
        return {"gap": abs(r["spread_ratio"] - 1.0), "gap_se": r["spread_ratio_se"]}

    cfg_loses = _below({"spread_ratio": cfg["spread_ratio"], "spread_ratio_se": cfg["spread_ratio_se"]},
                       {"spread_ratio": 1.0, "spread_ratio_se": 0.0}, "spread_ratio")
    auto_keeps = _below(gap(auto), gap(cfg), "gap")
    return {"quality_improves": quality, "cfg_loses_diversity": cfg_loses,
            "autoguidance_spread_closer_than_cfg": auto_keeps, "holds": quality and auto_keeps}


def evaluate(config: RunConfig) -> list[ClaimRecord]:
    gauss = _gauss1d(config)
    ring = _ring2d(config)
    nets = _networks(config)
    judged = {"gauss1d_exact": _judge(gauss), "ring2d_sampled": _judge(ring)}
    if "results" in nets:
        judged["networks"] = _judge(nets["results"])
    analytic = judged["gauss1d_exact"]["holds"] and judged["ring2d_sampled"]["holds"]
    network = judged.get("networks", {}).get("holds")
    verdict = ("holds" if analytic and network else "conditional" if analytic or network else "fails")

    def line(name, res):
        return (f"{name}: Frechet unguided {res['unguided']['frechet']:.3g} / CFG {res['cfg']['frechet']:.3g} / "
                f"autoguidance {res['autoguidance']['frechet']:.3g}, spread {res['unguided']['spread_ratio']:.2f} / "
                f"{res['cfg']['spread_ratio']:.2f} / {res['autoguidance']['spread_ratio']:.2f} of the exact model's")

    parts = [line("gauss1d (exact)", gauss), line("ring2d", ring)]
    if "results" in nets:
        parts.append(line("networks", nets["results"]))
    premise = ("the shipped pair fits the paper's premise in form (same world, schedule, vocabulary and condition "
               "dropout; the weak network is smaller and trained for fewer steps)"
               if nets.get("same_task_and_conditioning") and nets.get("weak_is_smaller_and_shorter_trained") else
               "the shipped pair does not fit the paper's premise (see evidence cards)" if "cards" in nets else
               "the networks were not evaluated (" + nets.get("skipped", "") + ")")
    level = {True: "holds", False: "does not hold", None: "was not evaluated"}
    conditions = (f"Analytic level (an underfit model whose weak version has the same error twice as large): "
                  f"{'holds' if analytic else 'does not hold'}; trained networks: {level[network]}. {premise}; "
                  "whether autoguidance helps on them depends on whether the weak network's errors are a larger "
                  "version of the strong one's (the paper's condition), which only the measurement decides: "
                  + "; ".join(parts) + f" (g = {G:g} for CFG and autoguidance)")
    record = ClaimRecord(
        id="L-AUTOGUIDANCE", source=SOURCE,
        statement=("Guiding a conditional model with a weaker version of itself (same condition), D_w = w D_1 + "
                   "(1 - w) D_0, improves sample quality without the loss of diversity that CFG causes."),
        procedure=(f"strong model = world with covariances x{STRONG:g}, weak = x{WEAK:g} (same error, twice as "
                   "large); gauss1d: exact DDIM laws (100 steps, discrete_sampler_law), Frechet distance and variance "
                   f"ratio to the exact model's law, precision and recall against p(x|c); ring2d class 0: DDIM "
                   f"samples ({25 if config.quick else 50} steps), "
                   "precision against p(x|c), Frechet distance and spread tr Cov relative to the exact model run "
                   "through the same sampler from the same start points, paired bootstrap SEs; the "
                   "shipped networks (checkpoints/ring2d strong, checkpoints/imperfect/ring2d weak), the same "
                   f"metrics at 50 DDIM steps; unguided vs CFG vs autoguidance at guidance_scale {G:g}"),
        verdict=verdict, conditions=conditions,
        evidence={"gauss1d_exact": gauss, "ring2d_sampled": ring, "networks": nets, "judged": judged,
                  "strong_inflation": STRONG, "weak_inflation": WEAK, "guidance_scale": G},
        uncertainty=(f"gauss1d: exact laws (no sampling error), precision/recall binomial SEs from their reference "
                     f"draws; ring2d and networks: binomial SEs (precision) and bootstrap SEs (Frechet, spread); a "
                     f"difference counts beyond {Z:g} SE (one-sided false-alarm 0.135 % per comparison); one network "
                     f"per configuration (training-seed variation not covered)"),
        tests=["tests/test_rule_autoguidance.py", "tests/test_claims_cfgpp_autoguidance.py"],
        headline="; ".join(parts))
    return [record]
