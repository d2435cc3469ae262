r"""Guidance algebra at the level of scores, checked in float64 against derived rounding bounds on every world.

Read by S0-CG-SCORE, S1-CG-EPS, S0-PROP1, S1-SCORE-FORM, S0-PROP2-SCORE, S1-CFG-FORM and S0-CFG-COST
(:mod:`verify.claims.algebra`). The identities, with :math:`g = 1 + w` (source 000's Ho-Salimans ``w``; source 001's
``guidance_scale`` is ``g``) and :math:`\varepsilon = -\sigma_t \nabla\log p_t`:

* classifier guidance in eps form (source 001, 'existing classifier guidance' display; source 000, second display of
  the Bayes section): :math:`\varepsilon(x) - s\sigma_t\nabla\log p_t(c|x) = -\sigma_t(\nabla\log p_t(x) +
  s\nabla\log p_t(c|x))`;
* Proposition 1 of source 000: :math:`\varepsilon_\varnothing + g(\varepsilon_c - \varepsilon_\varnothing)` equals
  classifier guidance with the model's own implicit classifier
  :math:`\nabla\log p_t(c|x) = \nabla\log p_t(x|c) - \nabla\log p_t(x)` at scale :math:`s = g`;
* Proposition 2 of source 000 (its proof): :math:`-\varepsilon_{cfg}/\sigma_t = \nabla_x[(1+w)\log p_t(x|c) -
  w\log p_t(x)]`, the right side by autograd (no score formula enters it).

Each is compared at points in the bulk and the tails of every world (:func:`~verify.evidence.shared.check_points`),
every time of the grid and every strength of :data:`STRENGTHS_W`; the tolerance is the sum of the derived rounding
bounds of the terms (:mod:`verify.tolerances`). The module attribute :data:`cfg` is the combiner the check calls:
replacing it (``monkeypatch.setattr(verify.evidence.algebra, "cfg", ...)``) is how the tests show the check can fail.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from toy_models import AnalyticDenoiser, get_world
from toy_models.denoiser import CountingDenoiser
from verify import rules
from verify.config import RunConfig
from verify.rules.cfg import cfg
from verify.rules.classifier import CleanClassifier, classifier_guidance
from verify.samplers import SAMPLERS, count_evaluations, time_grid
from verify.tilted import tilted_law
from verify.tolerances import gamma, score_bounds

from . import provider
from .shared import PerturbedDenoiser, alpha_sigma, check_points, first_conditions, one_thread, times, worlds

__all__ = ["STRENGTHS_W", "WorldIdentityErrors", "GuidanceIdentities", "guidance_identities", "ModelErrorDegradation",
           "model_error_degradation", "PredictionCount", "SamplerCount", "CFGCost", "cfg_cost", "CFGEndpoints",
           "cfg_endpoints", "ScoreFieldPanel", "GuidedScoreFields", "guided_score_fields", "cfg"]

F64 = torch.float64
#: Ho-Salimans strengths of the identity checks (g = 1 + w = 1.5, 2, 4, 8)
STRENGTHS_W = (0.5, 1.0, 3.0, 7.0)
#: the three identities, by the name the records use
IDENTITIES = ("cfg_vs_classifier", "cfg_vs_tilted_score", "cg_eps_vs_augmented_score")
JOINT_CLASSIFIER = "exact noisy p_t(c|x)"
IMPLICIT_CLASSIFIER = "implicit: grad log p_t(x|c) - grad log p_t(x) (no joint law)"


@dataclass(frozen=True)
class WorldIdentityErrors:
    """One world's largest error over its derived bound for each identity (1.0 would be a failure), the classifier
    it used (the exact posterior of a joint world, else the implicit density ratio) and the points checked."""

    world: str
    classifier: str
    cfg_vs_classifier: float
    cfg_vs_tilted_score: float
    cg_eps_vs_augmented_score: float
    points: int


@dataclass(frozen=True)
class GuidanceIdentities:
    """The three score identities on every world: per world errors, and the grid they were checked on."""

    worlds: tuple[WorldIdentityErrors, ...]
    times: tuple[float, ...]
    strengths_w: tuple[float, ...]
    conditions_per_world: int
    points_per_condition: int

    def worst(self, identity: str) -> float:
        """The largest error over bound of ``identity`` (one of :data:`IDENTITIES`) over every world."""
        if identity not in IDENTITIES:
            raise ValueError(f"identity: expected one of {IDENTITIES}, got {identity!r}")
        return max(getattr(w, identity) for w in self.worlds)

    def per_world(self, identity: str) -> dict[str, float]:
        """``{world: error over bound}`` of ``identity``."""
        if identity not in IDENTITIES:
            raise ValueError(f"identity: expected one of {IDENTITIES}, got {identity!r}")
        return {w.world: getattr(w, identity) for w in self.worlds}

    @property
    def grid(self) -> str:
        """The grid in words, for the records' procedures."""
        return (f"t in {', '.join(f'{t:g}' for t in self.times)} (vp-linear), w in "
                f"{', '.join(f'{w:g}' for w in self.strengths_w)}")


@provider
@one_thread()
def guidance_identities(config: RunConfig) -> GuidanceIdentities:
    r"""Per world, the largest error over its derived bound of (a) CFG against classifier guidance with the exact
    (joint worlds) or implicit classifier at :math:`s = 1 + w`; (b) the CFG score against autograd of
    :math:`(1+w)\log p_t(x|c) - w\log p_t(x)`; (c) the eps form of classifier guidance against :math:`-\sigma_t`
    times the augmented score. Bounds (:mod:`verify.tolerances`): each eps carries :math:`\sigma_t` times its
    score's bound and the combination adds :math:`\gamma_4` of its terms' magnitudes for (a) and (b); (c) is the
    same arithmetic rearranged, :math:`\gamma_6` of its terms."""
    gen = torch.Generator().manual_seed(config.seed)
    n_cond, n_points = (2, 64) if config.quick else (3, 256)
    acc: dict[str, dict] = {}
    jobs = [(world, t) for world in worlds() for t in times(config.quick)]
    for world, t in tqdm(jobs, desc="guidance algebra", disable=not config.show_progress, leave=False):
        entry = acc.setdefault(world.name, {k: 0.0 for k in IDENTITIES} | {"points": 0})
        a, s = alpha_sigma(t)
        marginal = world.law(None).noised(a, s)
        for cond in first_conditions(world, n_cond):
            x = check_points(world, [cond, None], t, n_points, gen)
            conditional = world.law(cond).noised(a, s)
            s_u, s_c = marginal.score(x), conditional.score(x)
            grad_cls = marginal.grad_log_posterior(x, cond) if world.is_joint else s_c - s_u
            (cf, cb), (mf, mb) = score_bounds(conditional, x), score_bounds(marginal, x)
            cls_bound = cf + mf + (0.0 if not world.is_joint else 2 * torch.maximum(cb, mb))
            for w in STRENGTHS_W:
                g = 1.0 + w
                eps_u, eps_c = -s * s_u, -s * s_c
                guided = cfg(eps_u, eps_c, w=w)
                via_classifier = classifier_guidance(eps_u, grad_cls, s, g)
                # (a) each eps carries sigma x its score bound; the combination adds gamma_4 of its terms
                tol = s * (g * cf + (g + w) * mf + g * cls_bound) + gamma(4, F64) * (
                    g * eps_c.norm(dim=-1) + w * eps_u.norm(dim=-1) + g * s * grad_cls.norm(dim=-1))
                err = (guided - via_classifier).norm(dim=-1)
                entry["cfg_vs_classifier"] = max(entry["cfg_vs_classifier"], float((err / tol).max()))
                # (b) the guided score against autograd of (1+w) log p_t(x|c) - w log p_t(x)
                xr = x.clone().requires_grad_(True)
                (tilted,) = torch.autograd.grad(((1 + w) * conditional.log_prob(xr) - w * marginal.log_prob(xr)).sum(),
                                                xr)
                err2 = (-guided / s - tilted).norm(dim=-1) if s > 0 else torch.zeros(len(x))
                tol2 = g * (cf + cb) + w * (mf + mb) + gamma(4, F64) * (g * s_c.norm(dim=-1) + w * s_u.norm(dim=-1))
                entry["cfg_vs_tilted_score"] = max(entry["cfg_vs_tilted_score"], float((err2 / tol2).max()))
                # (c) eps - s sigma grad log p(y|x) == -sigma (score + s grad log p(y|x)); 1e-300 keeps 0/0 away
                aug = -s * (s_u + g * grad_cls)
                err3 = (via_classifier - aug).norm(dim=-1)
                tol3 = gamma(6, F64) * s * (s_u.norm(dim=-1) + g * grad_cls.norm(dim=-1)) + 1e-300
                entry["cg_eps_vs_augmented_score"] = max(entry["cg_eps_vs_augmented_score"],
                                                         float((err3 / tol3).max()))
            entry["points"] += x.shape[0] * len(STRENGTHS_W)
    rows = tuple(WorldIdentityErrors(world=name, classifier=JOINT_CLASSIFIER if get_world(name).is_joint
                                     else IMPLICIT_CLASSIFIER, points=int(e["points"]),
                                     **{k: e[k] for k in IDENTITIES}) for name, e in acc.items())
    return GuidanceIdentities(rows, tuple(times(config.quick)), STRENGTHS_W, n_cond, n_points)


@dataclass(frozen=True)
class ModelErrorDegradation:
    r"""How far CFG with a perturbed model (:class:`~verify.evidence.shared.PerturbedDenoiser`) lands from CFG with
    the exact one, as a multiple of the model's own mean eps error: ``ratios[relative_error][w]`` (both keys are
    numbers as strings)."""

    world: str
    t: float
    condition: int
    ratios: dict[str, dict[str, float]]

    READING = ("independent errors in the two branches grow like sqrt((1+w)^2 + w^2) (1, 2.2, 5, 10.6 for w = 0, 1, "
               "3, 7): guidance amplifies model error roughly linearly in w")


@provider
@one_thread()
def model_error_degradation(config: RunConfig) -> ModelErrorDegradation:
    r"""ring2d, class 0, t = 0.5: mean :math:`\|\hat\varepsilon_{cfg} - \varepsilon_{cfg}\|` over 512 points (bulk
    and tails) divided by the model's mean :math:`\|\hat\varepsilon_c - \varepsilon_c\|`, for relative eps errors
    0.01 and 0.05 and w = 0, 1, 3, 7. If the two branches' errors were independent with equal size e, the guided
    error would be :math:`e\sqrt{(1+w)^2 + w^2}`."""
    world, t, condition = get_world("ring2d"), 0.5, 0
    den = AnalyticDenoiser(world)
    x = check_points(world, [condition, None], t, 256, torch.Generator().manual_seed(config.seed))
    ratios: dict[str, dict[str, float]] = {}
    for rel in (0.01, 0.05):
        model = PerturbedDenoiser(den, rel, seed=config.seed)
        model_err = float((model.eps(x, t, condition) - den.eps(x, t, condition)).norm(dim=-1).mean())
        row = {}
        for w in (0.0, 1.0, 3.0, 7.0):
            guidance = rules.get("cfg", w=w)
            exact = guidance.guide(den, {"cond": condition}).eps(x, t)
            approx = guidance.guide(model, {"cond": condition}).eps(x, t)
            row[f"{w:g}"] = float((approx - exact).norm(dim=-1).mean()) / model_err
        ratios[f"{rel:g}"] = row
    return ModelErrorDegradation(world.name, t, condition, ratios)


@dataclass(frozen=True)
class PredictionCount:
    """Denoiser forward calls and rows evaluated for one guided prediction."""

    denoiser_calls: int
    points_evaluated: int


@dataclass(frozen=True)
class SamplerCount:
    """One sampler's model calls and rows over a whole run, with CFG and with the conditional model alone."""

    model_calls_cfg: int
    model_calls_conditional: int
    model_rows_cfg: int
    model_rows_conditional: int


@dataclass(frozen=True)
class CFGCost:
    """Evaluation counts on attributes2d (condition red dog, CFG at w = 3): one prediction of the conditional model,
    of CFG and of classifier guidance (``per_prediction``, keys ``conditional_only``, ``cfg``,
    ``classifier_guidance``), and every registered sampler over ``steps`` steps (``per_sampler``)."""

    world: str
    condition: tuple[str, ...]
    w: float
    prediction_points: int
    per_prediction: dict[str, PredictionCount]
    steps: int
    sampler_points: int
    per_sampler: dict[str, SamplerCount]

    @property
    def points_ratio_cfg(self) -> float:
        """Rows CFG evaluates per prediction over the rows of the conditional model alone."""
        return self.per_prediction["cfg"].points_evaluated / self.per_prediction["conditional_only"].points_evaluated


@provider
@one_thread()
def cfg_cost(config: RunConfig) -> CFGCost:
    """Count denoiser evaluations (:class:`~toy_models.denoiser.CountingDenoiser`,
    :func:`verify.samplers.count_evaluations`). The clean classifier's gradient costs no denoiser call, as any
    classifier's: only the branches are counted."""
    world, condition, w = get_world("attributes2d"), ("red", "dog"), 3.0
    x = world.law(None).sample(100, torch.Generator().manual_seed(config.seed))
    classifier = rules.get("classifier", scale=4.0, classifier=CleanClassifier(world))
    builds = {"conditional_only": lambda d: d,
              "cfg": lambda d: rules.get("cfg", w=w).guide(d, {"cond": condition}),
              "classifier_guidance": lambda d: classifier.guide(d, {"cond": condition})}
    per_prediction = {}
    for key, build in builds.items():
        counter = CountingDenoiser(AnalyticDenoiser(world))
        build(counter).eps(x, 0.5, condition)
        per_prediction[key] = PredictionCount(counter.calls, counter.points)
    steps, n = 50, 64
    xs = world.law(None).sample(n, torch.Generator().manual_seed(0))
    per_sampler = {}
    for name in SAMPLERS:
        ts = time_grid(steps)
        gen = torch.Generator().manual_seed(1)
        guided = count_evaluations(name, AnalyticDenoiser(world), xs, ts, condition=condition,
                                   guide=lambda m: rules.get("cfg", w=w).guide(m, {"cond": condition}),
                                   generator=gen)
        plain = count_evaluations(name, AnalyticDenoiser(world), xs, ts, condition=condition, generator=gen)
        per_sampler[name] = SamplerCount(guided.model_calls, plain.model_calls, guided.model_points,
                                         plain.model_points)
    return CFGCost(world.name, condition, w, len(x), per_prediction, steps, n, per_sampler)


@dataclass(frozen=True)
class CFGEndpoints:
    """Whether :func:`verify.rules.cfg.cfg` at ``guidance_scale`` 0 and 1 returns the unconditional and the
    conditional eps bit for bit, per world (64 points of p(x), t = 0.4, the world's first class condition)."""

    per_world: dict[str, bool]

    @property
    def all_bitwise_equal(self) -> bool:
        return all(self.per_world.values())


@provider
@one_thread()
def cfg_endpoints(config: RunConfig) -> CFGEndpoints:
    """Source 001's convention at its endpoints, exactly: scale 0 is eps(null), scale 1 is eps(c), bit for bit."""
    out = {}
    for world in worlds():
        den = AnalyticDenoiser(world)
        cond = world.class_conditions()[0]
        x = world.law(None).sample(64, torch.Generator().manual_seed(config.seed + 1))
        eps_u, eps_c = den.eps(x, 0.4, None), den.eps(x, 0.4, cond)
        out[world.name] = bool(torch.equal(cfg(eps_u, eps_c, guidance_scale=0.0), eps_u)
                               and torch.equal(cfg(eps_u, eps_c, guidance_scale=1.0), eps_c))
    return CFGEndpoints(out)


@dataclass(frozen=True)
class ScoreFieldPanel:
    r"""One (t, w) of :class:`GuidedScoreFields`: the guided log density minus its maximum on ``axis`` x ``axis``
    (``[len(axis), len(axis)]``, rows x2, columns x1), the guided score's components on ``stream`` x ``stream``, the
    grid mode of the guided density, and :math:`\alpha_t, \sigma_t`."""

    t: float
    w: float
    alpha: float
    sigma: float
    log_density: np.ndarray
    u: np.ndarray
    v: np.ndarray
    mode: tuple[float, float]


@dataclass(frozen=True)
class GuidedScoreFields:
    r"""The guided score :math:`(1+w)\nabla\log p_t(x|c) - w\nabla\log p_t(x)` and the guided log density of ring2d
    towards ``condition`` over ``times`` x ``strengths_w``, and the largest error over its derived bound of that
    score against the tilted law's score (:meth:`verify.tilted.TiltedLaw.score` of ``tilted_law(..., t=t)``) and
    against :math:`-\hat\varepsilon_{cfg}/\sigma_t` of the CFG rule, on the stream grid."""

    condition: int
    times: tuple[float, ...]
    strengths_w: tuple[float, ...]
    axis: np.ndarray
    stream: np.ndarray
    class_means: np.ndarray
    panels: tuple[ScoreFieldPanel, ...]
    max_error_over_bound: float

    def panel(self, t: float, w: float) -> ScoreFieldPanel:
        """The panel at ``(t, w)``."""
        for p in self.panels:
            if p.t == t and p.w == w:
                return p
        raise ValueError(f"t: no panel at (t, w) = ({t!r}, {w!r}); times {self.times}, w {self.strengths_w}")

    def modes_by_t_and_w(self) -> dict[str, dict[str, list[float]]]:
        """``{t: {w: [x1, x2]}}``: the grid mode of each guided density (numbers as strings)."""
        out: dict[str, dict[str, list[float]]] = {}
        for p in self.panels:
            out.setdefault(f"{p.t:g}", {})[f"{p.w:g}"] = [round(p.mode[0], 6), round(p.mode[1], 6)]
        return out


def _mesh(x1: np.ndarray, x2: np.ndarray) -> tuple[tuple[int, int], torch.Tensor]:
    """The meshgrid's shape ``(len(x2), len(x1))`` and its points ``[N, 2]`` (x1 varying fastest), float64."""
    gx, gy = np.meshgrid(x1, x2)
    return gx.shape, torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], axis=1), dtype=F64)


@provider
@one_thread()
def guided_score_fields(config: RunConfig) -> GuidedScoreFields:
    r"""ring2d, class 0, t in (0.1, 0.5, 0.9), w in (0, 1, 3, 7): the guided log density on a 181 x 181 grid of
    [-4.5, 4.5]^2 and the guided score on a 61 x 61 grid (:class:`GuidedScoreFields`).

    Bound of the score comparisons, per point: the two sides evaluate the same noised laws' scores, each within its
    forward rounding bound (:func:`verify.tolerances.score_bounds`: ``cf`` for the conditional, ``mf`` for the
    marginal), weighted by the exponents (1 + w and w), plus :math:`\gamma_8` of the terms' magnitudes: the
    combination (2 operations), and for the eps route the products by :math:`\sigma_t` and the division back (a few
    more), counted generously as 8."""
    world, condition, lim = get_world("ring2d"), 0, 4.5
    ts, ws = (0.1, 0.5, 0.9), (0.0, 1.0, 3.0, 7.0)
    den = AnalyticDenoiser(world, "vp-linear")
    axis, stream = np.linspace(-lim, lim, 181), np.linspace(-lim, lim, 61)
    shape, pts = _mesh(axis, axis)
    sshape, spts = _mesh(stream, stream)
    panels, worst = [], 0.0
    for t in ts:
        a, s = alpha_sigma(t)
        conditional, marginal = world.law(condition).noised(a, s), world.law(None).noised(a, s)
        s_c, s_u = conditional.score(spts), marginal.score(spts)
        (cf, _), (mf, _) = score_bounds(conditional, spts), score_bounds(marginal, spts)
        for w in ws:
            law = tilted_law(world, rules.get("cfg", w=w), {"cond": condition}, t=t)
            log_q = law.log_unnormalized(pts).numpy().reshape(shape)
            log_q = log_q - log_q.max()
            score = (1.0 + w) * den.score(spts, t, condition) - w * den.score(spts, t, None)
            eps = rules.get("cfg", w=w).guide(den, {"cond": condition}).eps(spts, t)
            tol = (1.0 + w) * cf + w * mf + gamma(8, F64) * ((1.0 + w) * s_c.norm(dim=-1) + w * s_u.norm(dim=-1))
            for other in (law.score(spts), -eps / s):
                worst = max(worst, float(((score - other).norm(dim=-1) / tol).max()))
            row, col = np.unravel_index(log_q.argmax(), shape)
            score = score.numpy()
            panels.append(ScoreFieldPanel(t, w, a, s, log_q, score[:, 0].reshape(sshape),
                                          score[:, 1].reshape(sshape), (float(axis[col]), float(axis[row]))))
    return GuidedScoreFields(condition, ts, ws, axis, stream, world.unconditional.means.numpy(), tuple(panels),
                             worst)
