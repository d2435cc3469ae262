r"""What every guidance rule is, and the one guided denoiser built from any rule.

A **rule** (:class:`Rule`) is a pure function of branch predictions: given the predictions of the branches it reads
(``uncond``, ``cond``, ``negative``, ``cond_1`` .. ``cond_K``, ``weak``) in the prediction space its formula is
written in (``eps``, ``x0``, ``v`` or ``velocity``), it returns the guided prediction in that space. It declares:

* ``branches``: the branches it reads, in a fixed order;
* ``space``: the space of its formula (``spaces``: those it accepts as a parameter);
* ``linear_weights``: ``{branch: weight}`` with weights summing to 1 when the guided prediction is a fixed weighted
  sum of the branches (the per-t score is then that of :math:`\prod_b p_t(x \mid b)^{a_b}`, which
  :mod:`verify.tilted` and :mod:`verify.exact_law` read), else ``None``; :meth:`Rule.weights_at` gives the weights
  at one time for rules whose weights change with t (a guidance interval);
* ``stateful``: whether it keeps memory across the steps of one sampling run; the memory then lives in an explicit
  :class:`GuidanceState` that the *sampler* creates (``guided.new_state()``) and passes with every call, never in
  the rule (a rule object can be shared by many runs);
* ``renoise_branch``: the branch whose eps the sampler re-noises with instead of the guided one (CFG++), or
  ``None``.

:meth:`Rule.guide` binds a rule to a denoiser and to the condition of each branch and returns a
:class:`GuidedDenoiser`: a :class:`~toy_models.denoiser.Denoiser` that asks the base model for all its branches in
one batched call (``eps_multi``), converts them to the rule's space, combines, and converts back to eps. Samplers,
claims, figures and the network checks all use it; it accepts the analytic ground truth and a trained network alike.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from toy_models import parametrization as param
from toy_models._checks import as_real_tensor
from toy_models.denoiser import Denoiser, WrappedDenoiser, predict_many
from toy_models.gaussian_mixture import Condition, normalize_condition
from toy_models.schedules import Schedule
from toy_models.world import World

from ._math import predictions, weighted_sum

__all__ = ["SPACES", "Rule", "LinearRule", "GuidanceState", "StepContext", "Prediction", "GuidedDenoiser",
           "check_branch_name", "bind_conditions"]

Tensor = torch.Tensor
#: the prediction spaces a rule's formula can be written in
SPACES = ("eps", "x0", "v", "velocity")
_BRANCH = re.compile(r"^(uncond|cond|negative|weak|cond_[1-9][0-9]*)$")


def check_branch_name(name: str) -> str:
    if not isinstance(name, str) or not _BRANCH.match(name):
        raise ValueError(f"branches: {name!r} is not a branch name (uncond, cond, negative, weak, cond_1..cond_K)")
    return name


@dataclass
class GuidanceState:
    """The memory a stateful rule keeps across the steps of **one** sampling run.

    Created by the sampler (``guided.new_state()``) before its first step and passed with every call; the sampler
    sets ``step`` (0-based) before each step's evaluations. ``evaluations`` counts the rule's combine calls in this
    run; ``memory`` holds the rule's own running quantities (APG's momentum buffer), keyed by the rule."""

    step: int = 0
    evaluations: int = 0
    memory: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepContext:
    """Where a rule is evaluated: the points, the time and the schedule's coefficients there, the conditions of
    the branches, and the run's state (``None`` for a stateless rule). The forward SDE's ``drift`` and
    ``diffusion_squared``, which only the velocity space needs, are derived from ``schedule`` on first use."""

    x: Tensor
    t: float
    alpha: float
    sigma: float
    schedule: Schedule
    conditions: Mapping[str, Condition]
    state: GuidanceState | None = None

    @functools.cached_property
    def drift(self) -> float:
        """:math:`f(t)`; NaN at t = 1 where alpha vanishes (singular: only the eps space is usable there)."""
        return self._sde_coefficients[0]

    @functools.cached_property
    def diffusion_squared(self) -> float:
        """:math:`g(t)^2`; NaN where :attr:`drift` is."""
        return self._sde_coefficients[1]

    @functools.cached_property
    def _sde_coefficients(self) -> tuple[float, float]:
        if self.schedule.alpha_vanishes_at_one and self.t == 1.0:
            return float("nan"), float("nan")
        return float(self.schedule.drift(self.t)), float(self.schedule.diffusion_squared(self.t))

    @property
    def noise_to_signal(self) -> float:
        r""":math:`\sigma_t/\alpha_t = e^{-\lambda_t/2}`: the noise level :math:`\sigma` of the EDM formulation
        (Karras et al. 2022, :math:`x = y + \sigma n`) on any schedule; ``inf`` where :math:`\alpha = 0`."""
        return self.sigma / self.alpha if self.alpha > 0 else float("inf")

    def to_space(self, eps: Tensor, space: str) -> Tensor:
        """An eps-prediction at these points converted to ``space`` (:mod:`toy_models.parametrization`)."""
        if space == "eps":
            return eps
        if space == "velocity":
            return param.eps_to_velocity(self.x, eps, self.sigma, self.drift, self.diffusion_squared)
        return param.convert(eps, "eps", space, x=self.x, alpha=self.alpha, sigma=self.sigma)

    def from_space(self, pred: Tensor, space: str) -> Tensor:
        """A prediction in ``space`` at these points converted back to eps."""
        if space == "eps":
            return pred
        if space == "velocity":
            return param.velocity_to_eps(self.x, pred, self.sigma, self.drift, self.diffusion_squared)
        return param.convert(pred, space, "eps", x=self.x, alpha=self.alpha, sigma=self.sigma)


@dataclass(frozen=True)
class Prediction:
    """What a guided denoiser returns to a sampler: the guided eps (which fixes :math:`\\hat x_0`) and the eps the
    sampler re-noises with (the guided one itself unless the rule says otherwise, as CFG++ does)."""

    eps: Tensor
    renoise: Tensor


class Rule:
    """Base of every guidance rule (one subclass per published rule, one file per subclass, registered by name).

    Subclasses set the class attributes ``name`` and ``reference`` (paper and equation), and in ``__init__`` the
    validated parameters, ``self.branches`` and ``self.space``; they implement :meth:`combine`. Parameters are
    keyword-only and validated when the rule is built; the ones worth printing go into ``self.params``."""

    name: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    #: the spaces the rule accepts for its ``space`` parameter (its formula's own space comes first)
    spaces: ClassVar[tuple[str, ...]] = ("eps",)
    stateful: ClassVar[bool] = False
    renoise_branch: ClassVar[str | None] = None

    branches: tuple[str, ...] = ()
    space: str = "eps"
    params: dict[str, Any]

    # --- what a subclass provides -------------------------------------------------------------------------------
    @classmethod
    def examples(cls, world: World) -> list[dict[str, Any]]:
        """Representative parameter sets for ``world`` (what the generic tests, the audit and the docs build the
        rule with): ``rules.get(cls.name, **params)`` for each. Default: the rule's defaults."""
        return [{}]

    def combine(self, preds: dict[str, Tensor], ctx: StepContext) -> Tensor:
        """The guided prediction in ``self.space`` from the branch predictions in ``self.space``."""
        raise NotImplementedError

    @property
    def linear_weights(self) -> dict[str, float] | None:
        """``{branch: weight}`` (weights summing to 1) when the guided prediction is this fixed weighted sum of the
        branches at every time; ``None`` otherwise."""
        return None

    def weights_at(self, t: float, schedule: Schedule) -> dict[str, float] | None:
        """The linear weights at time ``t`` on ``schedule`` (for rules linear at each time with weights that change
        with t); ``None`` if the rule is not linear there. Default: :attr:`linear_weights`."""
        return self.linear_weights

    def breakpoints(self, schedule: Schedule) -> tuple[float, ...]:
        """Times in (0, 1) where :meth:`weights_at` jumps (an ODE integrator restarts there); default none."""
        return ()

    def variants(self) -> dict[str, Any]:
        """Documented variants of this rule's formula, for the audit's diagnosis: ``{label: formula}`` with
        ``formula(preds, ctx) -> Tensor`` in :attr:`space` (``preds`` and the result ``[N, D]``), each a popular
        implementation's formula where it differs from the paper's, the label naming it and its source. Default:
        none."""
        return {}

    def renoise(self, ctx: StepContext) -> str | None:
        """The branch whose eps the sampler re-noises with at this evaluation, ``None`` for the guided eps."""
        return self.renoise_branch

    @property
    def condition_keys(self) -> tuple[str, ...]:
        """The conditions :meth:`guide` needs: every branch but ``weak`` (which reuses ``cond``'s condition)."""
        keys = [b for b in self.branches if b != "weak"]
        if "weak" in self.branches and "cond" not in keys:
            keys.append("cond")
        return tuple(keys)

    # --- what every rule shares ----------------------------------------------------------------------------------
    def _set_space(self, space: str) -> None:
        if not isinstance(space, str) or space not in self.spaces:
            raise ValueError(f"space: rule {self.name!r} is written for {self.spaces}, got {space!r}")
        self.space = space

    def new_state(self) -> GuidanceState | None:
        """A fresh :class:`GuidanceState` for one sampling run (``None`` for a stateless rule)."""
        return GuidanceState() if self.stateful else None

    def guide(self, denoiser: Denoiser, conditions: Mapping[str, Condition] | Condition = None, *,
              weak: Denoiser | None = None) -> GuidedDenoiser:
        """This rule applied to ``denoiser``: a :class:`GuidedDenoiser`.

        ``conditions`` maps each branch to its condition (``{"cond": 2, "negative": 5}``); ``uncond`` defaults to
        the null condition. A bare condition (not a mapping) means ``{"cond": condition}``. ``weak`` is the weaker
        denoiser of the ``weak`` branch (autoguidance), evaluated at ``cond``'s condition."""
        return GuidedDenoiser(self, denoiser, conditions, weak=weak)

    def describe(self) -> str:
        """``name(param=value, ...)``: what the ledger and the figures print."""
        inner = ", ".join(f"{k}={_short(v)}" for k, v in getattr(self, "params", {}).items())
        return f"{self.name}({inner})"

    def __repr__(self) -> str:
        return f"rules.get({self.name!r}" + "".join(f", {k}={v!r}" for k, v in getattr(self, "params", {}).items()) \
            + ")"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Rule):
        return value.describe()
    return str(value)


class LinearRule(Rule):
    r"""A rule whose guided prediction is :math:`\sum_b a_b\,y_b` with fixed weights summing to 1: subclasses set
    ``self._weights`` (``{branch: weight}`` in branch order). Linear rules give the same result in every space (the
    conversions are affine in the prediction with coefficients that do not depend on it, and the weights sum to 1),
    so they accept all four, eps by default."""

    spaces: ClassVar[tuple[str, ...]] = SPACES
    _weights: dict[str, float]

    @property
    def linear_weights(self) -> dict[str, float]:
        self._check_weights()
        return dict(self._weights)

    def _check_weights(self) -> None:
        """The weights a subclass set must sum to 1 (a rule that is not exact without guidance is a bug in it)."""
        total = sum(self._weights.values())
        # the weights are sums of at most a handful of user floats: 16 u relative to their magnitude
        if abs(total - 1.0) > 16 * 2.0**-53 * max(1.0, sum(abs(v) for v in self._weights.values())):
            raise ValueError(f"weights: rule {self.name!r} has weights summing to {total}, not 1 (a guided prediction "
                             f"must equal the model's when every branch agrees)")

    def combine(self, preds: dict[str, Tensor], ctx: StepContext) -> Tensor:
        names = list(self._weights)
        tensors = predictions({f"preds[{b!r}]": preds[b] for b in names})
        return weighted_sum([self._weights[b] for b in names], tensors, "preds")


# ----------------------------------------------------------------------------------------------------------------
# The guided denoiser
# ----------------------------------------------------------------------------------------------------------------
#: scalar times whose schedule coefficients a guided denoiser keeps (two floats each; emptied when full)
_COEFFICIENT_CACHE = 1024


def _scalar_time(t) -> float:
    if type(t) is float and math.isfinite(t):  # what samplers pass: no tensor to build
        return t
    tt = as_real_tensor(t, "t", copy=False)
    if tt.numel() != 1:
        raise ValueError("t: guided denoisers take one time per call (samplers step all points together)")
    return float(tt.reshape(()))


def bind_conditions(rule: Rule, conditions) -> dict[str, Condition]:
    """The condition of every branch ``rule`` reads, from a mapping or a bare condition (``{"cond": c}``);
    ``uncond`` defaults to the null condition (what :meth:`Rule.guide` and :func:`verify.tilted.tilted_law` bind)."""
    if conditions is None or not isinstance(conditions, Mapping):
        conditions = {"cond": conditions} if "cond" in rule.condition_keys else {}
    bound: dict[str, Condition] = {}
    for key, value in conditions.items():
        if key not in rule.condition_keys:
            raise ValueError(f"conditions: rule {rule.name!r} reads no branch {key!r}; it needs "
                             f"{list(rule.condition_keys)}")
        bound[key] = normalize_condition(value)
    if "uncond" in rule.condition_keys:
        bound.setdefault("uncond", None)
    missing = [key for key in rule.condition_keys if key not in bound]
    if missing:
        raise ValueError(f"conditions: rule {rule.name!r} needs a condition for {missing} (got {sorted(bound)})")
    return bound


class GuidedDenoiser(WrappedDenoiser):
    """A denoiser guided by a rule (built by :meth:`Rule.guide`).

    :meth:`eps` ignores its ``condition`` argument (the branches' conditions were bound by :meth:`Rule.guide`).
    A stateful rule needs ``state=`` on every call: samplers create it with :meth:`new_state` and pass it; calling
    without one is refused rather than silently starting from empty memory."""

    def __init__(self, rule: Rule, denoiser: Denoiser, conditions=None, *, weak: Denoiser | None = None):
        if not isinstance(rule, Rule):
            raise TypeError(f"rule: expected a verify.rules rule (rules.get(name, ...)), got {type(rule).__name__}")
        if not callable(getattr(denoiser, "eps", None)) or not hasattr(denoiser, "schedule"):
            raise TypeError(f"denoiser: expected a Denoiser (with eps() and schedule), got {type(denoiser).__name__}")
        self.rule, self.denoiser = rule, denoiser
        self.conditions = bind_conditions(rule, conditions)
        if "weak" in rule.branches:
            if weak is None or not callable(getattr(weak, "eps", None)):
                raise ValueError(f"weak: rule {rule.name!r} reads a weaker model of the same condition; pass it as "
                                 f"weak=")
            if getattr(weak, "dim", None) != denoiser.dim:
                raise ValueError(f"weak: dimension {getattr(weak, 'dim', None)} differs from the denoiser's "
                                 f"{denoiser.dim}")
        elif weak is not None:
            raise ValueError(f"weak: rule {rule.name!r} reads no weak branch")
        self.weak = weak
        self._model_branches = [b for b in rule.branches if b != "weak"]
        self._coefficients: dict[float, tuple[float, float]] = {}  # t -> (alpha_t, sigma_t): the schedule is fixed

    @property
    def stateful(self) -> bool:
        return self.rule.stateful

    @property
    def renoises(self) -> bool:
        """Whether the rule may ask the sampler to re-noise with another branch than the guided prediction."""
        return self.rule.renoise_branch is not None

    def new_state(self) -> GuidanceState | None:
        return self.rule.new_state()

    def context(self, x: Tensor, t, state: GuidanceState | None = None) -> StepContext:
        """The :class:`StepContext` of one evaluation at ``(x, t)``."""
        tt = _scalar_time(t)
        coefficients = self._coefficients.get(tt)
        if coefficients is None:
            coefficients = tuple(float(v) for v in self.schedule.alpha_sigma(tt))
            if len(self._coefficients) >= _COEFFICIENT_CACHE:
                self._coefficients.clear()
            self._coefficients[tt] = coefficients
        alpha, sigma = coefficients
        return StepContext(x, tt, alpha, sigma, self.schedule, self.conditions, state)

    def branch_eps(self, x: Tensor, t) -> dict[str, Tensor]:
        """Every branch's eps at ``(x, t)``: one batched call of the base model (``eps_multi``), one of the weak."""
        conds = [self.conditions[b] for b in self._model_branches]
        preds = dict(zip(self._model_branches, predict_many(self.denoiser, x, t, conds), strict=True))
        if self.weak is not None:
            preds["weak"] = self.weak.eps(x, t, self.conditions["cond"])
        return preds

    def predict(self, x: Tensor, t, condition: Condition = None, *, state: GuidanceState | None = None
                ) -> Prediction:
        """The guided eps and the eps to re-noise with (see :class:`Prediction`)."""
        if self.rule.stateful and not isinstance(state, GuidanceState):
            raise ValueError(f"state: rule {self.rule.name!r} keeps state across the steps of a run; pass "
                             f"state=guided.new_state() once per run (the samplers do)")
        ctx = self.context(x, t, state)
        eps = self.branch_eps(x, t)
        space = self.rule.space
        preds = {b: ctx.to_space(e, space) for b, e in eps.items()}
        guided = ctx.from_space(self.rule.combine(preds, ctx), space)
        if state is not None:
            state.evaluations += 1
        branch = self.rule.renoise(ctx)
        return Prediction(guided, guided if branch is None else eps[branch])

    def eps(self, x: Tensor, t, condition: Condition = None, *, state: GuidanceState | None = None) -> Tensor:
        return self.predict(x, t, condition, state=state).eps

    def __repr__(self) -> str:
        return f"GuidedDenoiser({self.rule.describe()}, conditions={self.conditions})"
