r"""The trained cross-attention networks of ``checkpoints/`` measured against the exact scores of their worlds.

Every measurement here takes any denoiser (a trained :class:`~toy_models.neural.NeuralDenoiser` or, in the tests,
the exact :class:`~toy_models.AnalyticDenoiser`, which must then show no error) and compares it with the float64
ground truth of the same world:

* the relative, :math:`\sigma_t^2`-weighted score error by t and condition (:mod:`toy_models.neural.evaluate`),
  null token included (:func:`score_errors`);
* the implicit classifier :math:`-(\hat\varepsilon(x,c) - \hat\varepsilon(x,\varnothing))`, which source 000
  (Proposition 1, :data:`verify.claims.sources.S0`) equates with :math:`\sigma_t \nabla\log p_t(c\mid x)`
  (:func:`implicit_classifier_rows`);
* CFG samples of the network and of the exact scores from the same starts and sampler noise (paired), set against
  the tilted target :math:`p(x\mid c)^{1+w} p(x)^{-w}` (:func:`cfg_sampling`); negative prompts and composition on
  ``attributes2d`` (:func:`attributes_sampling`);
* the cross-attention mass each position of ``tokens16d`` puts on each token (:func:`attention_mass`);
* the CFG prediction error at w = 3 (:func:`guided_eps_error`) and guided-sample quality (:func:`guided_quality`).

Tolerances on a network come from its measured errors: every comparison is between two measured quantities with
their Monte Carlo standard errors, and a difference counts when it exceeds :data:`Z` = 3 standard errors (one-sided:
false-alarm rate 0.135 % per comparison under a normal approximation; the network evidence makes a few dozen such
comparisons, so by Bonferroni the family-wise rate stays below about 5 %). The standard errors cover Monte Carlo
error, not training-seed variation (one network per configuration).

The providers (each claim computes only what it reads): :func:`network_models` (the loaded checkpoints, with the
reason for each missing one), :func:`network_score_errors`, :func:`ablation_null_pair` and
:func:`ablation_score_errors` (score tables), :func:`network_implicit_classifier`, :func:`network_cfg_sampling`,
:func:`network_attribute_sampling`, :func:`network_attention`, :func:`network_dropout`, :func:`imperfect_quality`,
:func:`main_network_quality` and :func:`network_quality`. The results that other claims' records carry as a second
evidence block give it as a :class:`NetworkBlock` (``block()`` or ``block_for(claim_id)``).
"""

from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from toy_models import AnalyticDenoiser, World, get_world
from toy_models.neural import load_checkpoint
from toy_models.neural.evaluate import relative_error, score_error_table
from toy_models.scenarios import IMAGE_WORLDS
from verify import rules
from verify.config import RunConfig
from verify.metrics import frechet_distance, precision_recall
from verify.rules.classifier import ExactNoisyClassifier
from verify.samplers import SAMPLERS, sample, time_grid
from verify.tilted import tilted_law

from . import provider, to_json
from .shared import attribute_cases, first_sampler_by_limit, one_thread

__all__ = ["MAIN", "P_UNCOND", "STEPS", "Z", "CFG_W", "default_checkpoints", "load_models", "NetworkModels",
           "Card", "NetworkBlock", "ScoreErrorTable", "ScoreErrors", "AblationTables", "ImplicitClassifierRows",
           "ImplicitClassifier", "PairedMeans", "PairedSamples", "CFGSamplingAtW", "CFGSampling", "AttributeCase",
           "AttributeSampling", "AttentionAtTime", "AttentionMass", "GuidedEpsError", "DropoutRow", "Dropout",
           "QualityPoint", "ImperfectQuality", "MainQuality", "NetworkQuality", "rms_with_se", "score_errors",
           "implicit_classifier_rows", "paired_guided_samples", "cfg_sampling", "attributes_sampling",
           "attention_mass", "guided_eps_error", "frechet_with_se", "guided_quality", "dropout_rows",
           "network_models", "network_score_errors", "ablation_null_pair", "ablation_score_errors",
           "network_implicit_classifier", "network_cfg_sampling_by_limit", "network_cfg_sampling",
           "network_attribute_sampling", "network_attention",
           "network_dropout", "imperfect_quality", "main_network_quality", "network_quality", "DensityView",
           "network_ring2d_view"]

MAIN = ("ring2d", "attributes2d", "tokens16d", "shapes16")
#: score-error tables cover the null condition and at most this many classes (shapes16 has 48, one per component)
SCORE_CLASSES = 16
#: on the image worlds: the null condition, the first 3 classes and 256 points per cell (a forward pass of the patch
#: network costs about 12 MFLOP per image, 8000x ring2d's; 1024 points x 17 conditions x 9 times took 60 s)
IMAGE_SCORE_CLASSES, IMAGE_SCORE_POINTS = 3, 256
P_UNCOND = ("0.00", "0.05", "0.10", "0.20", "0.50")
STEPS = 50  # sampler steps for the paired comparisons (the analytic run uses the same grid, so the
#             discretisation is common to both and cancels in the paired difference)
Z = 3.0  # a difference counts beyond 3 standard errors: one-sided false-alarm rate 0.135 % per comparison
CFG_W = 3.0  # the Ho-Salimans w of the dropout ablation's CFG prediction error
#: p_uncond of the two ablation networks S0-NULL-TOKEN compares: no dropout, and the usual rate
NULL_PAIR = ("0.00", "0.10")
#: the ablation rates inside the band source 001 recommends
BAND = ("0.10", "0.20")


def default_checkpoints() -> pathlib.Path:
    """``./checkpoints`` if it exists, else the repository's ``checkpoints/`` beside this package."""
    here = pathlib.Path("checkpoints")
    return here if here.is_dir() else pathlib.Path(__file__).resolve().parents[2] / "checkpoints"


# --------------------------------------------------------------------------------------------------------------
# the checkpoints
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Card:
    """What a record says about the network it measured: the first 16 hex digits of the checkpoint's SHA-256, the
    machine it was trained on, its training steps and wall time, and its conditioning dropout rate."""

    checkpoint_sha256: str
    trained_on: str | None
    steps: int | None
    wall_time_s: float | None
    p_uncond: float | None

    @classmethod
    def of(cls, den: Any) -> Card:
        c = getattr(den, "card", None) or {}
        return cls(c.get("sha256", "")[:16], c.get("device"), c.get("steps"), c.get("wall_time_s"),
                   c.get("config", {}).get("p_uncond"))


@dataclass(frozen=True)
class NetworkModels:
    """The shipped networks: ``main`` by world, ``ablation`` by p_uncond (``"0.00"`` ...), ``imperfect``; a
    missing checkpoint is ``None``. Names as in ``checkpoints/``: ``ring2d``, ``ablation/ring2d_p0.10``,
    ``imperfect/ring2d``."""

    folder: str
    main: dict[str, Any]
    ablation: dict[str, Any]
    imperfect: Any

    def get(self, name: str) -> Any:
        """The network ``name`` (``ring2d``, ``ablation/ring2d_p0.10``, ``imperfect/ring2d``), or ``None``."""
        if name.startswith("ablation/ring2d_p"):
            return self.ablation.get(name.removeprefix("ablation/ring2d_p"))
        if name == "imperfect/ring2d":
            return self.imperfect
        if name in self.main:
            return self.main[name]
        raise ValueError(f"name: unknown checkpoint {name!r}")

    def missing(self, *names: str) -> str:
        """``""`` when every network of ``names`` is loaded, else the sentence a skipped result carries."""
        absent = [n for n in names if self.get(n) is None]
        return f"no checkpoint for {', '.join(absent)} in {self.folder}" if absent else ""

    def card(self, name: str) -> Card:
        return Card.of(self.get(name))


def load_models(folder: str | pathlib.Path) -> NetworkModels:
    """The checkpoints of ``folder`` (laid out as ``checkpoints/``); a checkpoint missing either of its two files is
    ``None``."""
    folder = pathlib.Path(folder)

    def opt(path: pathlib.Path) -> Any:
        complete = all(path.with_name(path.name + ext).is_file() for ext in (".safetensors", ".json"))
        return load_checkpoint(path) if complete else None

    return NetworkModels(str(folder), {w: opt(folder / w) for w in MAIN},
                         {p: opt(folder / "ablation" / f"ring2d_p{p}") for p in P_UNCOND},
                         opt(folder / "imperfect" / "ring2d"))


@provider
def network_models(config: RunConfig) -> NetworkModels:
    """The networks of ``config.checkpoints`` (default :func:`default_checkpoints`)."""
    return load_models(pathlib.Path(config.checkpoints) if config.checkpoints else default_checkpoints())


@dataclass(frozen=True)
class NetworkBlock:
    """The network's evidence on a claim decided from the exact scores: ``evidence`` (JSON data, the record's
    ``evidence["network"]``), a fragment for its headline (appended after ``"; "``) and one for its conditions
    (appended after ``". "``); ``""``: none. A missing checkpoint gives ``evidence == {"skipped": reason}``."""

    evidence: dict
    headline: str = ""
    conditions: str = ""


def _skipped_block(reason: str) -> NetworkBlock:
    return NetworkBlock({"skipped": reason})


def _alpha_sigma(den: Any, t: float) -> tuple[float, float]:
    """alpha_t, sigma_t of the schedule the denoiser was trained on."""
    a, s = den.schedule.alpha_sigma(float(t))
    return float(a), float(s)


def _world(den: Any) -> World:
    """The world a denoiser models (a network's card, an analytic denoiser's world, or that of the denoiser a
    wrapper such as :class:`~verify.evidence.shared.PerturbedDenoiser` wraps)."""
    name = getattr(den, "world_name", None)
    if name is not None:
        return get_world(name)
    return den.world if hasattr(den, "world") else _world(den.denoiser)


def _describe(den: Any) -> str:
    """``width 64, depth 2, 8000 steps, p_uncond 0.1`` for a network, ``""`` for another denoiser."""
    net = getattr(getattr(den, "network", None), "config", None)
    if net is None:
        return ""
    card = getattr(den, "card", {}) or {}
    steps, p = card.get("steps"), card.get("config", {}).get("p_uncond")
    return (f"width {net.width}, depth {net.depth}" + (f", {steps} steps" if steps is not None else "")
            + (f", p_uncond {p:g}" if p is not None else ""))


def rms_with_se(row: list[float] | tuple[float, ...], se_row: list[float] | tuple[float, ...]) -> tuple[float, float]:
    r"""Root mean square :math:`\bar r = (\frac1T\sum_i r_i^2)^{1/2}` of per-t relative errors and its standard error
    by the delta method for independent cells: :math:`\mathrm{se}(\bar r) = (\sum_i (r_i\,\mathrm{se}_i)^2)^{1/2} /
    (T \bar r)`."""
    if len(row) == 0 or len(row) != len(se_row):
        raise ValueError(f"row: expected a non-empty row as long as se_row, got {len(row)} and {len(se_row)}")
    rms = math.sqrt(sum(r * r for r in row) / len(row))
    if rms == 0:
        return 0.0, 0.0
    return rms, math.sqrt(sum((r * e) ** 2 for r, e in zip(row, se_row, strict=True))) / (len(row) * rms)


# --------------------------------------------------------------------------------------------------------------
# score error tables
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoreErrorTable:
    r"""The relative :math:`\sigma_t^2`-weighted score error :math:`r(t, c)` of one denoiser
    (:func:`toy_models.neural.evaluate.score_error_table`): by condition key (``null``, ``0``, ``dog+red``) a row over
    ``times``, with its Monte Carlo standard errors; pooled and rms summaries; ``n`` draws per cell."""

    times: tuple[float, ...]
    by_condition: dict[str, tuple[float, ...]]
    standard_error: dict[str, tuple[float, ...]]
    n: int
    pooled_relative_error: float
    rms_relative_error: float

    @classmethod
    def from_dict(cls, table: dict) -> ScoreErrorTable:
        return cls(tuple(table["times"]), {k: tuple(v) for k, v in table["by_condition"].items()},
                   {k: tuple(v) for k, v in table["standard_error"].items()}, int(table["n"]),
                   float(table["pooled_relative_error"]), float(table["rms_relative_error"]))

    @property
    def conditional_keys(self) -> tuple[str, ...]:
        return tuple(k for k in self.by_condition if k != "null")

    def rms(self, key: str) -> tuple[float, float]:
        """The rms over t of condition ``key``'s row and its standard error (:func:`rms_with_se`)."""
        return rms_with_se(self.by_condition[key], self.standard_error[key])


def score_errors(den: Any, config: RunConfig) -> ScoreErrorTable:
    """The score-error table of ``den`` on its world: the null token and every class (at most :data:`SCORE_CLASSES`,
    the first ones), 1024 draws per cell; on the image worlds the first :data:`IMAGE_SCORE_CLASSES` classes at
    :data:`IMAGE_SCORE_POINTS` draws; quick: the null token and two classes at 256 draws; seed ``config.seed + 7``."""
    world = _world(den)
    image = world.name in IMAGE_WORLDS
    conds = [None, *world.class_conditions()[:IMAGE_SCORE_CLASSES if image else SCORE_CLASSES]]
    if config.quick:
        conds = conds[:3]
    n = 256 if config.quick else (IMAGE_SCORE_POINTS if image else 1024)
    return ScoreErrorTable.from_dict(score_error_table(den, world, conditions=conds, n=n,
                                                       seed=config.seed + 7))


@dataclass(frozen=True)
class ScoreErrors:
    """The main networks' score tables by world (the worlds with a checkpoint), their cards and a one-line
    description of each network; ``skipped`` names the missing checkpoints."""

    tables: dict[str, ScoreErrorTable]
    cards: dict[str, Card]
    networks: dict[str, str]
    skipped: str = ""


@provider
def network_score_errors(config: RunConfig, network_models: NetworkModels) -> ScoreErrors:
    """:func:`score_errors` of every main network there is."""
    present = {w: d for w, d in network_models.main.items() if d is not None}
    with one_thread():
        tables = {w: score_errors(d, config) for w, d in present.items()}
    return ScoreErrors(tables, {w: Card.of(d) for w, d in present.items()},
                       {w: _describe(d) for w, d in present.items()}, network_models.missing(*MAIN))


@dataclass(frozen=True)
class AblationTables:
    """Score tables of ring2d ablation networks by p_uncond (those with a checkpoint), and their cards."""

    tables: dict[str, ScoreErrorTable]
    cards: dict[str, Card]
    skipped: str = ""


@provider
def ablation_null_pair(config: RunConfig, network_models: NetworkModels) -> AblationTables:
    """Score tables of the p_uncond = 0 and 0.1 ablation networks (what S0-NULL-TOKEN compares)."""
    present = {p: network_models.ablation[p] for p in NULL_PAIR if network_models.ablation[p] is not None}
    with one_thread():
        tables = {p: score_errors(d, config) for p, d in present.items()}
    return AblationTables(tables, {p: Card.of(d) for p, d in present.items()},
                          network_models.missing(*(f"ablation/ring2d_p{p}" for p in NULL_PAIR)))


@provider
def ablation_score_errors(config: RunConfig, network_models: NetworkModels,
                          ablation_null_pair: AblationTables) -> AblationTables:
    """Score tables of all five ablation networks (the two of :func:`ablation_null_pair` reused: each table has its
    own seed, so measuring them again would give the very same numbers)."""
    present = {p: d for p, d in network_models.ablation.items() if d is not None}
    with one_thread():
        tables = {p: ablation_null_pair.tables[p] if p in ablation_null_pair.tables else score_errors(d, config)
                  for p, d in present.items()}
    return AblationTables(tables, {p: Card.of(d) for p, d in present.items()},
                          network_models.missing(*(f"ablation/ring2d_p{p}" for p in P_UNCOND)))


# --------------------------------------------------------------------------------------------------------------
# the implicit classifier
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImplicitClassifierRows:
    """By t: the relative error of the implicit classifier and of the conditional prediction at the same points, with
    their standard errors; the size of the true :math:`\\sigma_t\\nabla\\log p_t(c\\mid x)` against that of
    :math:`\\varepsilon^*`; and ``amplification``, the ratio of the two relative errors (``None`` where the
    conditional error is 0)."""

    times: tuple[float, ...]
    classifier_relative_error: tuple[float, ...]
    classifier_se: tuple[float, ...]
    conditional_score_relative_error: tuple[float, ...]
    conditional_se: tuple[float, ...]
    classifier_size_over_eps_size: tuple[float, ...]
    amplification: tuple[float | None, ...]

    @property
    def worst(self) -> int:
        """Index of the time with the largest amplification."""
        return max(range(len(self.times)), key=lambda i: self.amplification[i] or 0.0)


def implicit_classifier_rows(den: Any, config: RunConfig) -> ImplicitClassifierRows:
    r"""Relative error of :math:`\sigma_t \nabla \log p_t(c\mid x)` recovered as
    :math:`-(\hat\varepsilon(x, c) - \hat\varepsilon(x, \varnothing))` (source 000, Proposition 1), beside the
    conditional score error at the same points, by t (points from :math:`p_t(\cdot\mid c)`, the first two classes;
    1024 points per class and t, quick 256; seed ``config.seed + 17``)."""
    world = _world(den)
    n = 256 if config.quick else 1024
    times = (0.05, 0.3, 0.7, 1.0) if config.quick else (0.01, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
    exact = AnalyticDenoiser(world, den.schedule)
    gen = torch.Generator().manual_seed(config.seed + 17)
    cls_r, cls_se, eps_r, eps_se, size = [], [], [], [], []
    for t in times:
        sigma = _alpha_sigma(den, t)[1]
        cls_cells: tuple[list, list] = ([], [])
        eps_cells: tuple[list, list] = ([], [])
        for c in world.class_conditions()[:2]:
            x = exact.noised_law(t, c).sample(n, gen)
            if hasattr(den, "eps_multi"):
                net_c, net_null = den.eps_multi(x, t, [c, None])
            else:
                net_c, net_null = den.eps(x, t, c), den.eps(x, t, None)
            true_c = exact.eps(x, t, c)
            true_cls = sigma * exact.noised_law(t).grad_log_posterior(x, c)  # sigma grad log p_t(c|x)
            cls_cells[0].append((-(net_c - net_null) - true_cls).pow(2).sum(1))
            cls_cells[1].append(true_cls.pow(2).sum(1))
            eps_cells[0].append((net_c - true_c).pow(2).sum(1))
            eps_cells[1].append(true_c.pow(2).sum(1))
        for cells, r_out, se_out in ((cls_cells, cls_r, cls_se), (eps_cells, eps_r, eps_se)):
            r, se = relative_error(*cells)
            r_out.append(r)
            se_out.append(se)
        size.append(math.sqrt(sum(float(v.sum()) for v in cls_cells[1]) / sum(float(v.sum()) for v in eps_cells[1])))
    amplification = tuple(c / e if e > 0 else None for c, e in zip(cls_r, eps_r, strict=True))
    return ImplicitClassifierRows(tuple(times), tuple(cls_r), tuple(cls_se), tuple(eps_r), tuple(eps_se),
                                  tuple(size), amplification)


IMPLICIT_READING = ("measured deviation, not a verdict: the identity is exact for exact scores; a network's implicit "
                    "classifier -(eps(x,c) - eps(x,null)) carries the error of two predictions, and where sigma grad "
                    "log p(c|x) is small against eps (large t) its relative error is amplified")


@dataclass(frozen=True)
class ImplicitClassifier:
    """:func:`implicit_classifier_rows` of the ring2d and attributes2d networks."""

    worlds: dict[str, ImplicitClassifierRows]
    cards: dict[str, Card]
    skipped: str = ""

    def block(self) -> NetworkBlock:
        """S0-BAYES's and S0-PROP1's network block; the headline names ring2d's most amplified time."""
        if self.skipped:
            return _skipped_block(self.skipped)
        ring = self.worlds["ring2d"]
        i = ring.worst
        note = (f"network (ring2d): implicit classifier error {ring.classifier_relative_error[i]:.2f} at t = "
                f"{ring.times[i]:g}, {ring.amplification[i]:.0f}x its score error")
        return NetworkBlock(to_json({"implicit_classifier": self.worlds, "checkpoints": self.cards,
                                     "reading": IMPLICIT_READING}), headline=note)


@provider
def network_implicit_classifier(config: RunConfig, network_models: NetworkModels) -> ImplicitClassifier:
    """The implicit classifier of the ring2d and attributes2d networks against the exact one."""
    names = ("ring2d", "attributes2d")
    skipped = network_models.missing(*names)
    if skipped:
        return ImplicitClassifier({}, {}, skipped)
    with one_thread():
        rows = {w: implicit_classifier_rows(network_models.main[w], config) for w in names}
    return ImplicitClassifier(rows, {w: network_models.card(w) for w in names})


# --------------------------------------------------------------------------------------------------------------
# paired CFG sampling on ring2d
# --------------------------------------------------------------------------------------------------------------
def paired_guided_samples(rule: rules.Rule, conditions: dict, net: Any, exact: AnalyticDenoiser, world: World,
                          start_condition: Any, n: int, seed: int, sampler: str) -> list[torch.Tensor]:
    """``[network samples, exact-score samples]``: ``rule`` guiding the network and the exact denoiser towards the
    same ``conditions``, from the same start points (``start_condition``'s law noised to t = 1) and the same sampler
    noise (one generator per run, seeded alike), ``STEPS`` uniform steps."""
    out = []
    for model in (rule.guide(net, conditions), rule.guide(exact, conditions)):
        gen = torch.Generator().manual_seed(seed)
        a, s = _alpha_sigma(net, 1.0)
        x1 = world.law(start_condition).noised(a, s).sample(n, gen)
        out.append(sample(sampler, model, x1, time_grid(STEPS), generator=gen))
    return out


@dataclass(frozen=True)
class PairedMeans:
    """One (w, sampler): mean of :math:`x_1` (the class direction) of the network's and the exact scores' CFG samples,
    their paired difference and its SE, the exact sampler's distance to the tilted target's mean and its SE, the rms
    distance between paired samples, the Frechet distance between the two sample sets, and whether the exact
    sampler's gap to the target exceeds the network's own deviation by more than :data:`Z` SEs of both."""

    network_mean_e1: float
    analytic_mean_e1: float
    network_minus_analytic: float
    paired_se: float
    analytic_minus_tilted: float
    analytic_se: float
    rms_paired_displacement: float
    frechet_network_to_analytic: float
    gap_exceeds_network_deviation: bool


@dataclass(frozen=True)
class PairedSamples:
    """The samples behind one :class:`PairedMeans` (``[n, 2]`` each, float64)."""

    network: torch.Tensor
    analytic: torch.Tensor


@dataclass(frozen=True)
class CFGSamplingAtW:
    """One Ho-Salimans w: the tilted target's mean along :math:`e_1` (and how it was computed), and by sampler the
    paired means."""

    w: float
    tilted_mean_e1: float
    tilted_method: str
    samplers: dict[str, PairedMeans]


PAIRED_READING = ("paired: the same start points and sampler noise for the network's CFG and the exact-score CFG; the "
                  "finding transfers to a (w, sampler) when the exact sampler's distance to the tilted target (mean "
                  f"along e_1) exceeds the network's deviation from the exact sampler by more than {Z:g} standard "
                  "errors; where it does not, this statistic cannot tell the network's sampler from the target (the "
                  "SDE samplers land close to the target's mean on ring2d)")


@dataclass(frozen=True)
class CFGSampling:
    """ring2d class 0, by w (keys ``"3"``...): every sampler's CFG samples from the network and from the exact
    scores, paired; ``samples[w][sampler]`` are the samples themselves (drawn by the figure, not in any record)."""

    by_w: dict[str, CFGSamplingAtW]
    n: int
    steps: int
    condition: int
    samples: dict[str, dict[str, PairedSamples]] = field(repr=False)
    card: Card | None = None
    skipped: str = ""

    @property
    def finding_transfers(self) -> dict[str, dict[str, bool]]:
        return {w: {s: v.gap_exceeds_network_deviation for s, v in row.samplers.items()}
                for w, row in self.by_w.items()}

    def merged(self, other: CFGSampling) -> CFGSampling:
        """These runs and ``other``'s (other samplers, same w grid, n and steps) in one result, samplers in the
        registry's order."""
        if (set(self.by_w), self.n, self.steps) != (set(other.by_w), other.n, other.steps):
            raise ValueError("other: merge runs of the same w grid, sample size and steps")
        order = list(SAMPLERS)
        by_w, samples = {}, {}
        for w, row in self.by_w.items():
            rows = {**row.samplers, **other.by_w[w].samplers}
            pairs = {**self.samples[w], **other.samples[w]}
            by_w[w] = replace(row, samplers={k: rows[k] for k in sorted(rows, key=order.index)})
            samples[w] = {k: pairs[k] for k in sorted(pairs, key=order.index)}
        return replace(self, by_w=by_w, samples=samples)

    def block(self) -> NetworkBlock:
        """The network block of S0-PROP2-SAMPLES (DDIM and DDPM) and L-DDIM-DDPM (every sampler): does the analytic
        finding (no sampler reaches the tilted target) show through the network's own deviation, per (w, sampler)?"""
        if self.skipped:
            return _skipped_block(self.skipped)
        cases = [(w, s, ok) for w, row in self.finding_transfers.items() for s, ok in row.items()]
        unresolved = [{"w": float(w), "sampler": s} for w, s, ok in cases if not ok]
        headline = (f"network: the exact sampler's gap to the target exceeds the network's own deviation in "
                    f"{len(cases) - len(unresolved)}/{len(cases)} (w, sampler) cases")
        return NetworkBlock(to_json({"ring2d_class0_mean_e1": self.by_w, "n": self.n, "steps": self.steps,
                                     "checkpoint": self.card, "finding_transfers": self.finding_transfers,
                                     "not_resolved": unresolved, "figure": "figures/network_cfg_samples.png",
                                     "reading": PAIRED_READING}), headline=headline)


def cfg_sampling(den: Any, config: RunConfig, samplers: tuple[str, ...] | None = None) -> CFGSampling:
    """ring2d class 0: the CFG samples of ``samplers`` (default: every registered sampler; quick: the first sampler
    of each continuous limit) from ``den`` and from the exact scores (paired, seed ``config.seed + 23`` for every
    sampler, 1000 samples; quick: 300, w = 3 only), and the tilted target, by w: mean along the class direction
    e_1. Each sampler's run depends only on its own name and the seed, so runs of disjoint sampler sets merge
    (:meth:`CFGSampling.merged`) into exactly the result of one call."""
    world = get_world("ring2d")
    exact = AnalyticDenoiser(world, den.schedule)
    n = 300 if config.quick else 1000
    ws = (3.0,) if config.quick else (1.0, 3.0)
    if samplers is None:
        samplers = tuple(first_sampler_by_limit().values()) if config.quick else tuple(SAMPLERS)
    by_w: dict[str, CFGSamplingAtW] = {}
    samples: dict[str, dict[str, PairedSamples]] = {}
    for w in ws:
        rule = rules.get("cfg", w=w)
        tq = tilted_law(world, rule, {"cond": 0}).summary()
        tilted = float(tq.mean[0])
        rows, pairs = {}, {}
        for name in samplers:
            x_net, x_an = paired_guided_samples(rule, {"cond": 0}, den, exact, world, 0, n, config.seed + 23, name)
            diff = x_net[:, 0] - x_an[:, 0]
            m_net, m_an = float(x_net[:, 0].mean()), float(x_an[:, 0].mean())
            se_pair = float(diff.std() / math.sqrt(n))
            se_an = float(x_an[:, 0].std() / math.sqrt(n))
            gap = abs(m_an - tilted)
            rows[name] = PairedMeans(
                m_net, m_an, m_net - m_an, se_pair, m_an - tilted, se_an,
                float((x_net - x_an).pow(2).sum(1).mean().sqrt()), frechet_distance(x_net, x_an),
                # the finding transfers when the sampler's gap to the target exceeds the network's own deviation
                # from the exact-score sampler by more than Z standard errors of both
                gap - abs(m_net - m_an) > Z * math.hypot(se_pair, se_an))
            pairs[name] = PairedSamples(x_net, x_an)
        by_w[f"{w:g}"] = CFGSamplingAtW(w, tilted, tq.method, rows)
        samples[f"{w:g}"] = pairs
    return CFGSampling(by_w, n, STEPS, 0, samples, Card.of(den) if hasattr(den, "card") else None)


@provider
def network_cfg_sampling_by_limit(config: RunConfig, network_models: NetworkModels) -> CFGSampling:
    """:func:`cfg_sampling` of the ring2d network with the first sampler of each continuous limit (DDIM for the
    probability-flow ODE, DDPM for the reverse SDE): S0-PROP2-SAMPLES's network block and its figure."""
    skipped = network_models.missing("ring2d")
    if skipped:
        return CFGSampling({}, 0, STEPS, 0, {}, None, skipped)
    with one_thread():
        return cfg_sampling(network_models.main["ring2d"], config, tuple(first_sampler_by_limit().values()))


@provider
def network_cfg_sampling(config: RunConfig, network_models: NetworkModels,
                         network_cfg_sampling_by_limit: CFGSampling) -> CFGSampling:
    """:func:`cfg_sampling` of the ring2d network with every registered sampler (quick: the two of
    :func:`network_cfg_sampling_by_limit`): that provider's runs plus the other samplers' (L-DDIM-DDPM's network
    block)."""
    first = network_cfg_sampling_by_limit
    if first.skipped:
        return first
    rest = () if config.quick else tuple(s for s in SAMPLERS if s not in first_sampler_by_limit().values())
    if not rest:
        return first
    with one_thread():
        return first.merged(cfg_sampling(network_models.main["ring2d"], config, rest))


# --------------------------------------------------------------------------------------------------------------
# negative prompts and composition on attributes2d
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttributeCase:
    """One case of :func:`verify.evidence.shared.attribute_cases`: the fraction of the network's and of the exact
    scores' DDIM samples in ``region`` (``red_dog``, ``purple_band``), the SE of their paired difference, and the
    sample means."""

    description: str
    region: str
    network_fraction: float
    analytic_fraction: float
    paired_se_of_difference: float
    network_mean: tuple[float, ...]
    analytic_mean: tuple[float, ...]


@dataclass(frozen=True)
class AttributeSampling:
    """attributes2d by case id (``negative_001``, ``negative_000``, ``compose``), DDIM ``steps`` steps, ``n`` samples
    per case and model."""

    cases: dict[str, AttributeCase]
    n: int
    steps: int
    card: Card | None = None
    skipped: str = ""

    def block(self) -> NetworkBlock:
        """The network block of S0-NEGPROMPT-DENSITY, S1-NEGPROMPT, S0-COMPOSITION and S0-PURPLE-DOG (one block for
        the four)."""
        if self.skipped:
            return _skipped_block(self.skipped)
        return NetworkBlock(to_json({"ddim_samples": self.cases, "n": self.n, "steps": self.steps,
                                     "checkpoint": self.card}))


def attributes_sampling(den: Any, config: RunConfig, n: int | None = None) -> AttributeSampling:
    """attributes2d: negative prompts and composition sampled by DDIM from ``den`` and the exact scores, paired (seed
    ``config.seed + 29``, ``n`` samples per case: default 2000, quick 500; starts from the noised law of ``dog``)."""
    world = get_world("attributes2d")
    exact = AnalyticDenoiser(world, den.schedule)
    n = n if n is not None else (500 if config.quick else 2000)
    out = {}
    for key, case in attribute_cases().items():
        x_net, x_an = paired_guided_samples(case.rule, case.conditions, den, exact, world, ("dog",), n,
                                            config.seed + 29, first_sampler_by_limit()["ode"])
        in_net, in_an = case.region(x_net).double(), case.region(x_an).double()
        out[key] = AttributeCase(case.description, case.region_name, float(in_net.mean()), float(in_an.mean()),
                                 float((in_net - in_an).std() / math.sqrt(n)), tuple(x_net.mean(0).tolist()),
                                 tuple(x_an.mean(0).tolist()))
    return AttributeSampling(out, n, STEPS, Card.of(den) if hasattr(den, "card") else None)


@provider
def network_attribute_sampling(config: RunConfig, network_models: NetworkModels) -> AttributeSampling:
    """:func:`attributes_sampling` of the attributes2d network."""
    skipped = network_models.missing("attributes2d")
    if skipped:
        return AttributeSampling({}, 0, STEPS, None, skipped)
    with one_thread():
        return attributes_sampling(network_models.main["attributes2d"], config)


# --------------------------------------------------------------------------------------------------------------
# cross-attention on tokens16d
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttentionAtTime:
    """At one t: the mean attention map by layer (``[depth][16 positions][4 tokens]``, averaged over heads, points and
    labels), by layer the mean mass on each position's controlling token and the number of positions whose argmax is
    that token, the same two for the best single head, and chance level (1/4)."""

    map_by_layer: tuple
    mass_on_controlling_token_by_layer: tuple[float, ...]
    positions_whose_argmax_is_controlling_by_layer: tuple[int, ...]
    best_head_mass_on_controlling_token: float
    best_head_positions_argmax_controlling: int
    chance_level: float


@dataclass(frozen=True)
class AttentionMass:
    """tokens16d by t (keys ``"0.1"``, ``"0.5"``, ``"0.9"``); ``n`` points per label and t; ``dim`` positions."""

    by_t: dict[str, AttentionAtTime]
    n: int
    dim: int
    card: Card | None = None
    skipped: str = ""


def attention_mass(den: Any, config: RunConfig) -> AttentionMass:
    """tokens16d: the cross-attention mass each position puts on each token of a full condition (block j's token
    sorts j-th), by layer, averaged over heads, points (256 per label and t, quick 64; seed ``config.seed + 31``)
    and labels; and the best single head."""
    world = get_world("tokens16d")
    block = world.dim // 4  # 4 tokens, one per block
    n = 64 if config.quick else 256
    labels = world.class_conditions()
    gen = torch.Generator().manual_seed(config.seed + 31)
    out: dict[str, AttentionAtTime] = {}
    controlling = torch.arange(world.dim) // block  # [16]
    for t in (0.1, 0.5, 0.9):
        a, s = _alpha_sigma(den, t)
        maps = []
        for c in labels:
            x = world.law(c).noised(a, s).sample(n, gen)
            probs, toks = den.cross_attention(x, t, c)  # [depth, N, heads, 16, 4]
            if [tok[1] for tok in toks] != [str(j) for j in range(len(toks))]:
                raise RuntimeError(f"tokens16d: unexpected token order {toks}")
            maps.append(probs.mean(1))  # [depth, heads, 16, 4]
        per_head = torch.stack(maps).mean(0)  # [depth, heads, 16, 4]
        on_own_head = per_head[..., torch.arange(world.dim), controlling]  # [depth, heads, 16]
        heads_mean = per_head.mean(1)  # [depth, 16, 4]
        out[f"{t:g}"] = AttentionAtTime(
            to_json(heads_mean), tuple(heads_mean[:, torch.arange(world.dim), controlling].mean(1).tolist()),
            tuple((heads_mean.argmax(-1) == controlling).sum(1).tolist()), float(on_own_head.mean(-1).max()),
            int((per_head.argmax(-1) == controlling).sum(-1).max()), 1.0 / 4)
    return AttentionMass(out, n, world.dim, Card.of(den))


@provider
def network_attention(config: RunConfig, network_models: NetworkModels) -> AttentionMass:
    """:func:`attention_mass` of the tokens16d network."""
    skipped = network_models.missing("tokens16d")
    if skipped:
        return AttentionMass({}, 0, 0, None, skipped)
    with one_thread():
        return attention_mass(network_models.main["tokens16d"], config)


# --------------------------------------------------------------------------------------------------------------
# the p_uncond ablation
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GuidedEpsError:
    """Pooled relative error of a CFG prediction at ``w`` and its SE, and the relative error by t."""

    w: float
    pooled_relative_error: float
    se: float
    by_t: tuple[float, ...]
    times: tuple[float, ...]


def guided_eps_error(den: Any, config: RunConfig, w: float = CFG_W) -> GuidedEpsError:
    r"""Relative error of the network's CFG prediction :math:`(1+w)\hat\varepsilon(x,c) - w\hat\varepsilon(x,
    \varnothing)` against the exact one at ``w`` (source 000, Proposition 2's augmented score), pooled over t and the
    first four classes of the denoiser's world: the error that CFG sampling integrates, with no sampling noise.
    ``se``: Monte Carlo standard error of the pooled value (delta method for a ratio of means; each (t, class) cell
    its own stratum). 1024 points per cell, quick 256, seed ``config.seed + 37``."""
    world = _world(den)
    exact = AnalyticDenoiser(world, den.schedule)
    n = 256 if config.quick else 1024
    gen = torch.Generator().manual_seed(config.seed + 37)
    times = (0.05, 0.2, 0.5, 0.8, 1.0)
    errors, sizes, by_t = [], [], []
    rule = rules.get("cfg", w=w)
    for t in times:
        cell_e, cell_s = [], []
        for c in world.class_conditions()[:4]:
            x = exact.noised_law(t, c).sample(n, gen)
            truth = rule.guide(exact, {"cond": c}).eps(x, t)
            cell_e.append((rule.guide(den, {"cond": c}).eps(x, t) - truth).pow(2).sum(1))
            cell_s.append(truth.pow(2).sum(1))
        by_t.append(relative_error(cell_e, cell_s)[0])
        errors += cell_e
        sizes += cell_s
    r, se = relative_error(errors, sizes)
    return GuidedEpsError(float(w), r, se, tuple(by_t), times)


@dataclass(frozen=True)
class DropoutRow:
    """One ablation network: null-branch and conditional rms relative score error (over t; conditional also over
    labels) with SEs, the pooled score error, the CFG prediction error at ``w`` with its SE, and the curves by t."""

    null_rms_relative_error: float
    null_se: float
    conditional_rms_relative_error: float
    conditional_se: float
    pooled_relative_error: float
    w: float
    cfg_eps_error: float
    cfg_eps_error_se: float
    times: tuple[float, ...]
    null_by_t: tuple[float, ...]
    null_se_by_t: tuple[float, ...]
    cfg_times: tuple[float, ...]
    cfg_by_t: tuple[float, ...]


def dropout_rows(ablation: dict[str, Any], config: RunConfig, tables: dict[str, ScoreErrorTable] | None = None,
                 w: float = CFG_W) -> dict[str, DropoutRow]:
    """Per p_uncond (networks in ``ablation``; ``None`` entries skipped) the :class:`DropoutRow`. ``tables``: score
    tables already measured (:func:`score_errors`), keyed like ``ablation``."""
    rows = {}
    for p, den in ablation.items():
        if den is None:
            continue
        tab = tables[p] if tables is not None and p in tables else score_errors(den, config)
        cond = tab.conditional_keys
        null = tab.rms("null")
        cond_all = rms_with_se([r for k in cond for r in tab.by_condition[k]],
                               [e for k in cond for e in tab.standard_error[k]])
        guided = guided_eps_error(den, config, w=w)
        rows[p] = DropoutRow(null[0], null[1], cond_all[0], cond_all[1], tab.pooled_relative_error, w,
                             guided.pooled_relative_error, guided.se, tab.times, tab.by_condition["null"],
                             tab.standard_error["null"], guided.times, guided.by_t)
    return rows


@dataclass(frozen=True)
class Dropout:
    """The five ring2d ablation networks (``"0.00"`` ... ``"0.50"``): their rows and cards."""

    rows: dict[str, DropoutRow]
    cards: dict[str, Card]
    skipped: str = ""


@provider
def network_dropout(config: RunConfig, network_models: NetworkModels,
                    ablation_score_errors: AblationTables) -> Dropout:
    """:func:`dropout_rows` of the ablation networks (their score tables from :func:`ablation_score_errors`)."""
    if ablation_score_errors.skipped:
        return Dropout({}, {}, ablation_score_errors.skipped)
    with one_thread():
        rows = dropout_rows(network_models.ablation, config, ablation_score_errors.tables)
    return Dropout(rows, dict(ablation_score_errors.cards))


# --------------------------------------------------------------------------------------------------------------
# guided-sample quality of the imperfect (short-trained) and the main ring2d networks
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QualityPoint:
    """Guided DDIM samples of ring2d class 0 at one strength: precision against p(x|c) (exact densities, level 0.95)
    with its binomial SE, Frechet distance to p(x|c) with its bootstrap SE, mean p(c|x), and the fraction of strays
    beyond radius 5 (the data lie within 3 + 4 sd, sd 0.5)."""

    precision: float
    precision_se: float
    frechet_to_conditional: float
    frechet_se: float
    mean_posterior_of_class_0: float
    fraction_beyond_radius_5: float


def frechet_with_se(x: torch.Tensor, law: Any, generator: torch.Generator, n_boot: int = 100) -> tuple[float, float]:
    """Frechet distance of samples to a law, and its bootstrap standard error (``n_boot`` resamples)."""
    boot = [frechet_distance(x[torch.randint(len(x), (len(x),), generator=generator)], law) for _ in range(n_boot)]
    return frechet_distance(x, law), float(torch.tensor(boot).std())


def guided_quality(den: Any, config: RunConfig, classifier: bool = False) -> dict[str, QualityPoint]:
    """ring2d class 0, DDIM ``STEPS`` steps, by guidance_scale g (keys ``"1"``, ``"2"``, ``"4"``, ``"8"``; quick 1
    and 4): CFG with ``guidance_scale = g`` (Ho-Salimans w = g - 1), or (``classifier=True``) classifier guidance of
    scale g with the exact noisy classifier on the network's unconditional branch. Each strength has its own seed
    (``config.seed + 41 + 10 g``), the same for both kinds of guidance (paired); 2000 samples, quick 500."""
    world = get_world("ring2d")
    clean = world.law(None)
    n = 500 if config.quick else 2000
    exact_classifier = ExactNoisyClassifier(world, den.schedule)
    out = {}
    for g in (1.0, 4.0) if config.quick else (1.0, 2.0, 4.0, 8.0):
        gen = torch.Generator().manual_seed(config.seed + 41 + int(10 * g))
        rule = (rules.get("classifier", scale=g, classifier=exact_classifier) if classifier
                else rules.get("cfg", guidance_scale=g))
        x = sample(first_sampler_by_limit()["ode"], rule.guide(den, {"cond": 0}),
                   world.law(0).noised(*_alpha_sigma(den, 1.0)).sample(n, gen), time_grid(STEPS), generator=gen)
        pr = precision_recall(x, world.law(0), n_reference=20000, generator=gen)
        fd, fd_se = frechet_with_se(x, world.law(0), gen)
        out[f"{g:g}"] = QualityPoint(pr.precision, pr.precision_se, fd, fd_se,
                                     float(clean.class_posterior(x)[:, 0].mean()),
                                     float((x.norm(dim=1) > 5.0).double().mean()))
    return out


@dataclass(frozen=True)
class ImperfectQuality:
    """The short-trained ring2d network: CFG and classifier-guidance quality curves and its pooled score error."""

    cfg: dict[str, QualityPoint]
    classifier: dict[str, QualityPoint]
    score_error: float
    card: Card | None = None
    skipped: str = ""

    def best(self, kind: str) -> tuple[str, float, float]:
        """``(strength, Frechet, SE)`` of the strength with the smallest Frechet distance (``kind``: cfg,
        classifier)."""
        if kind not in ("cfg", "classifier"):
            raise ValueError(f"kind: expected 'cfg' or 'classifier', got {kind!r}")
        curve = getattr(self, kind)
        g = min(curve, key=lambda k: curve[k].frechet_to_conditional)
        return g, curve[g].frechet_to_conditional, curve[g].frechet_se

    @property
    def precision_rises(self) -> bool:
        """Precision at g = 4 exceeds that at g = 1 by more than :data:`Z` SEs of the difference."""
        a, b = self.cfg["1"], self.cfg["4"]
        return b.precision - a.precision > Z * math.hypot(b.precision_se, a.precision_se)

    @property
    def frechet_improves(self) -> bool:
        """The best CFG Frechet distance is below that at g = 1 by more than :data:`Z` SEs."""
        _, fd, se = self.best("cfg")
        return self.cfg["1"].frechet_to_conditional - fd > Z * math.hypot(self.cfg["1"].frechet_se, se)


@provider
def imperfect_quality(config: RunConfig, network_models: NetworkModels) -> ImperfectQuality:
    """:func:`guided_quality` of the imperfect network, CFG and classifier guidance, and its pooled score error."""
    den = network_models.imperfect
    if den is None:
        return ImperfectQuality({}, {}, math.nan, None, network_models.missing("imperfect/ring2d"))
    with one_thread():
        return ImperfectQuality(guided_quality(den, config), guided_quality(den, config, classifier=True),
                                score_errors(den, config).pooled_relative_error, Card.of(den))


@dataclass(frozen=True)
class MainQuality:
    """The main ring2d network's CFG quality curve (the same strengths and seeds as the imperfect network's)."""

    cfg: dict[str, QualityPoint]
    card: Card | None = None
    skipped: str = ""


@provider
def main_network_quality(config: RunConfig, network_models: NetworkModels) -> MainQuality:
    """:func:`guided_quality` (CFG) of the main ring2d network."""
    den = network_models.main["ring2d"]
    if den is None:
        return MainQuality({}, None, network_models.missing("ring2d"))
    with one_thread():
        return MainQuality(guided_quality(den, config), Card.of(den))


SCALE_ONE_READING = ("scale 1 reproduces 'the training distribution as is' only as well as the model fits it: an "
                     "exact model's precision at level 0.95 is 0.95 and its Frechet distance to p(x|c) is 0 (up to the "
                     "sampler's discretisation); these are the trained networks' values")


@dataclass(frozen=True)
class NetworkQuality:
    """Both networks' quality curves: the blocks of S0-QUALITY-DIVERSITY and S1-SCALE-TABLE."""

    imperfect: ImperfectQuality
    main: MainQuality

    CLAIMS = ("S0-QUALITY-DIVERSITY", "S1-SCALE-TABLE")

    def block_for(self, claim_id: str) -> NetworkBlock:
        """The network block of ``claim_id`` (one of :attr:`CLAIMS`)."""
        if claim_id not in self.CLAIMS:
            raise ValueError(f"claim_id: expected one of {self.CLAIMS}, got {claim_id!r}")
        skipped = "; ".join(s for s in (self.imperfect.skipped, self.main.skipped) if s)
        if skipped:
            return _skipped_block(skipped)
        imp, cfg = self.imperfect, self.imperfect.cfg
        cards = {"imperfect": imp.card, "main": self.main.card}
        if claim_id == "S1-SCALE-TABLE":
            return NetworkBlock(to_json({"main_network_guidance_scale_1": self.main.cfg["1"],
                                         "imperfect_network_guidance_scale_1": cfg["1"],
                                         "reading": SCALE_ONE_READING, "checkpoints": cards}))
        rises, falls = imp.precision_rises, imp.frechet_improves
        conditions = (f"On an imperfect network (pooled score error {imp.score_error:.2f}) guidance "
                      + ("does" if rises else "does not") + f" raise precision beyond 3 SE ({cfg['1'].precision:.3f}"
                      f" -> {cfg['4'].precision:.3f}); its Frechet distance at g = 1 is dominated by "
                      f"{cfg['1'].fraction_beyond_radius_5:.1%} stray samples and "
                      + ("falls" if falls else "does not fall beyond 3 SE") + " with guidance")
        return NetworkBlock(
            to_json({"curves": {"imperfect": {"cfg": imp.cfg, "classifier": imp.classifier,
                                              "score_error": imp.score_error},
                                "main": {"cfg": self.main.cfg}},
                     "guidance_scales": [float(g) for g in cfg], "steps": STEPS,
                     "imperfect_precision_rises_g1_to_g4": rises, "imperfect_frechet_improves_with_guidance": falls,
                     "checkpoints": cards}),
            headline=f"imperfect network: precision {cfg['1'].precision:.2f} -> {cfg['4'].precision:.2f} at g = 1 -> 4",
            conditions=conditions)


@provider
def network_quality(imperfect_quality: ImperfectQuality, main_network_quality: MainQuality) -> NetworkQuality:
    """The imperfect and the main network's quality curves together."""
    return NetworkQuality(imperfect_quality, main_network_quality)


# --------------------------------------------------------------------------------------------------------------
# what the samples figure draws beneath the samples
# --------------------------------------------------------------------------------------------------------------
#: the samples figure's view of ring2d class 0 (mean (3, 0)): 201 x 201 points, spacing 0.025
VIEW_X1, VIEW_X2 = (0.5, 5.5), (-2.5, 2.5)


@dataclass(frozen=True)
class DensityView:
    """The exact density of ring2d's class ``condition`` on a grid (``density[i, j]`` at ``(x1[j], x2[i])``, relative
    to its peak on the grid) and the class mean: the background of ``network_cfg_samples.png``."""

    condition: int
    x1: torch.Tensor
    x2: torch.Tensor
    density: torch.Tensor
    class_mean: tuple[float, ...]


@provider
def network_ring2d_view(network_cfg_sampling_by_limit: CFGSampling) -> DensityView:
    """:class:`DensityView` of the class :func:`network_cfg_sampling_by_limit` guides towards (201 x 201 grid)."""
    world = get_world("ring2d")
    condition = network_cfg_sampling_by_limit.condition
    x1 = torch.linspace(*VIEW_X1, 201, dtype=torch.float64)
    x2 = torch.linspace(*VIEW_X2, 201, dtype=torch.float64)
    g2, g1 = torch.meshgrid(x2, x1, indexing="ij")
    log_p = world.law(condition).log_prob(torch.stack([g1.reshape(-1), g2.reshape(-1)], 1)).reshape(g1.shape)
    return DensityView(condition, x1, x2, torch.exp(log_p - log_p.max()),
                       tuple(world.unconditional.means[condition].tolist()))
