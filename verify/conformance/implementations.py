r"""How the audit calls an implementation: the :class:`Call` it receives and the adapters for the code people have.

An **implementation** is anything :func:`verify.conformance.audit_rule` can call with the branch predictions of one
step and get the guided prediction back. The audit never calls user code directly: it builds a :class:`Call` and hands
it to an :class:`Implementation`, an adapter that calls the user's code *the way their own pipeline calls it*:

* :class:`CombinerFunction`: today's signature ``combine(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma)``
  (two-branch rules with a guidance scale, in the diffusers convention);
* :class:`BranchesFunction`: a dict-of-branches function ``fn(preds, *, x, t, alpha, sigma, ...)`` for any rule:
  ``preds`` maps each branch the rule reads (``uncond``, ``cond``, ``negative``, ``cond_1``..``cond_K``, ``weak``) to
  its prediction; keyword arguments it declares among ``x, t, alpha, sigma, step, n_steps, state, schedule, space``
  and the rule's parameters (``guidance_scale``, ...) are passed, ``state`` being a fresh ``dict`` per sampling run;
* :class:`RuleImplementation`: a registered rule itself (what the audit's own tests use as a correct route);
* the diffusers guider and k-diffusion wrapper adapters in :mod:`verify.conformance.diffusers_guider` and
  :mod:`verify.conformance.kdiffusion`.

:func:`as_implementation` picks the adapter from what it is given. A result is a tensor in the call's space, or for a
rule that re-noises with another branch (CFG++) a pair ``(guided, renoise)``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from toy_models.schedules import Schedule
from verify import rules
from verify.rules import GuidanceState, Rule, StepContext

__all__ = ["Call", "Implementation", "Wrapper", "CombinerFunction", "BranchesFunction", "RuleImplementation",
           "as_implementation", "is_diffusers_guider", "strength_parameter"]

Tensor = torch.Tensor


@dataclass(frozen=True)
class Call:
    """One evaluation, as an implementation sees it.

    ``preds`` maps every branch the rule reads to its prediction in ``space`` (one shape and dtype: ``[N, d]``,
    ``[B, C, H, W]`` or ``[B, L, D]``); ``x`` the noisy points in that shape; ``t`` the time on ``schedule`` with
    ``x = alpha x_0 + sigma eps``; ``step`` (0-based) of ``n_steps`` in the current sampling run; ``params`` the
    reference rule's parameters for this call (the diffusers convention for ``guidance_scale``)."""

    preds: Mapping[str, Tensor]
    space: str
    x: Tensor
    t: float
    alpha: float
    sigma: float
    schedule: Schedule
    step: int = 0
    n_steps: int = 1
    params: Mapping[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> Call:
        """This call with some fields changed."""
        return dataclasses.replace(self, **changes)

    def copy(self) -> Call:
        """This call on fresh copies of its tensors (what an implementation may write into)."""
        return self.replace(preds={b: p.clone() for b, p in self.preds.items()}, x=self.x.clone())


class Implementation:
    """The interface the audit drives. Subclasses implement :meth:`__call__`; :meth:`start_run` is called before the
    first step of every sampling run (an implementation with memory resets it there, or fails the state checks).

    ``name`` is what reports print. ``may_alias`` (with ``alias_reason``) says that returning an input tensor itself
    is part of the implementation's documented API (diffusers' guiders return ``pred_cond`` when guidance is off), so
    the audit reports such aliasing as a note rather than a finding."""

    name: str = "implementation"
    may_alias: bool = False
    alias_reason: str = ""

    def start_run(self, n_steps: int) -> None:
        """A new sampling run of ``n_steps`` steps begins."""

    def __call__(self, call: Call) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class Wrapper(Implementation):
    """An implementation built around another (``inner``), whose runs are the inner one's."""

    def __init__(self, inner: Implementation, name: str | None = None):
        self.inner, self.name = inner, name or inner.name

    def start_run(self, n_steps: int) -> None:
        self.inner.start_run(n_steps)


def strength_parameter(rule_name: str) -> str | None:
    """``"guidance_scale"`` when the rule's constructor takes one (the strength the audit varies), else ``None``."""
    signature = inspect.signature(rules.rule_class(rule_name).__init__)
    return "guidance_scale" if "guidance_scale" in signature.parameters else None


def _describe_callable(fn: Callable) -> str:
    module = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return f"{module}:{name}"


class CombinerFunction(Implementation):
    """``combine(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma) -> Tensor``: the two branches in the call's
    space (named ``eps_*`` for history: they are ``x0`` predictions when the reference rule is written in x0 space),
    the guidance scale in the diffusers convention."""

    def __init__(self, fn: Callable, name: str | None = None):
        if not callable(fn):
            raise TypeError(f"fn: expected a callable, got {type(fn).__name__}")
        self.fn, self.name = fn, name or _describe_callable(fn)

    def __call__(self, call: Call) -> Any:
        if set(call.preds) != {"uncond", "cond"}:
            raise ValueError(f"fn: a combiner takes (eps_uncond, eps_cond); this rule reads {sorted(call.preds)}: "
                             f"write it as fn(preds, ...) (dict of branches)")
        g = call.params.get("guidance_scale")
        if g is None:
            raise ValueError("fn: a combiner takes a guidance_scale; this rule has none: write it as fn(preds, ...)")
        return self.fn(call.preds["uncond"], call.preds["cond"], g, x=call.x, alpha=call.alpha, sigma=call.sigma)


_CONTEXT_KEYWORDS = ("x", "t", "alpha", "sigma", "step", "n_steps", "state", "schedule", "space")


class BranchesFunction(Implementation):
    """``fn(preds, *, ...) -> Tensor | (guided, renoise)``: ``preds`` a dict of branch predictions; the keyword
    arguments the function declares among ``x, t, alpha, sigma, step, n_steps, state, schedule, space`` and the
    rule's parameters are passed (all of them when it takes ``**kwargs``). ``state`` is a fresh dict per run."""

    def __init__(self, fn: Callable, name: str | None = None):
        if not callable(fn):
            raise TypeError(f"fn: expected a callable, got {type(fn).__name__}")
        self.fn, self.name = fn, name or _describe_callable(fn)
        try:
            parameters = inspect.signature(fn).parameters
        except (TypeError, ValueError):  # builtins without a signature: pass everything
            parameters = {}
        self._takes_all = not parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
        first = next(iter(parameters), None)  # the dict of branches, whatever it is called
        self._takes = {name for name, p in parameters.items()
                       if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and name != first}
        self._first = first
        self._state: dict = {}

    def start_run(self, n_steps: int) -> None:
        self._state = {}

    def __call__(self, call: Call) -> Any:
        context = {"x": call.x, "t": call.t, "alpha": call.alpha, "sigma": call.sigma, "step": call.step,
                   "n_steps": call.n_steps, "state": self._state, "schedule": call.schedule, "space": call.space}
        offered = {**{k: v for k, v in call.params.items() if k != "space"}, **context}
        kwargs = offered if self._takes_all else {k: v for k, v in offered.items() if k in self._takes}
        kwargs.pop(self._first or "preds", None)
        return self.fn(dict(call.preds), **kwargs)


class RuleImplementation(Implementation):
    """A registered rule as an implementation: ``rules.get(name, **call.params)`` combined in the call's space with
    its own :class:`~verify.rules.GuidanceState` per run. ``fixed`` parameters override the call's (a rule built
    with other parameters than the reference's, as a deliberately different implementation)."""

    def __init__(self, rule: str | Rule, **fixed: Any):
        if isinstance(rule, Rule):
            self.rule_name, fixed = rule.name, {**rule.params, **fixed}
        elif isinstance(rule, str):
            rules.rule_class(rule)
            self.rule_name = rule
        else:
            raise TypeError(f"rule: expected a registered rule name or a Rule, got {type(rule).__name__}")
        self.fixed = fixed
        self.name = f"rules.get({self.rule_name!r}{''.join(f', {k}={v!r}' for k, v in fixed.items())})"
        self._cache: dict[tuple, Rule] = {}
        self._state: GuidanceState | None = None

    def start_run(self, n_steps: int) -> None:
        self._state = GuidanceState()

    def _rule(self, params: Mapping[str, Any], space: str) -> Rule:
        merged = {**params, **self.fixed, "space": space}
        accepted = inspect.signature(rules.rule_class(self.rule_name).__init__).parameters
        merged = {k: v for k, v in merged.items() if k in accepted}
        key = tuple(sorted((k, repr(v)) for k, v in merged.items()))
        if key not in self._cache:
            rule = rules.get(self.rule_name, **merged)
            if hasattr(rule, "memory_key"):  # one implementation, one memory, whatever the strength of the call
                rule.memory_key = f"{self.rule_name}-{id(self)}"
            self._cache[key] = rule
        return self._cache[key]

    def __call__(self, call: Call) -> Any:
        own = self.fixed.get("space", call.space)
        if own != call.space:  # a rule fixed to another space: convert there and back (a different rule if non-linear)
            shape, dtype = call.x.shape, next(iter(call.preds.values())).dtype
            ctx = StepContext(call.x.reshape(shape[0], -1).to(dtype), call.t, call.alpha, call.sigma, call.schedule,
                              {})
            preds = {b: ctx.to_space(ctx.from_space(p.reshape(shape[0], -1), call.space), own)
                     for b, p in call.preds.items()}
            out = self(call.replace(preds=preds, space=own, x=ctx.x))

            def back(o: Tensor) -> Tensor:
                return ctx.to_space(ctx.from_space(o, own), call.space).reshape(shape)

            return tuple(back(o) for o in out) if isinstance(out, tuple) else back(out)
        rule = self._rule(call.params, call.space)
        state = self._state if rule.stateful else None
        if state is not None:
            state.step = call.step
        shape = call.x.shape  # rules reduce over every feature axis of a sample: [N, D] is their own shape
        flat = {b: p.reshape(p.shape[0], -1) for b, p in call.preds.items()}
        ctx = StepContext(call.x.reshape(shape[0], -1), call.t, call.alpha, call.sigma, call.schedule, {}, state)
        out = rule.combine(flat, ctx).reshape(shape)
        if state is not None:
            state.evaluations += 1
        branch = rule.renoise(ctx)
        return out if branch is None else (out, call.preds[branch])


def _looks_like_branches_function(fn: Callable) -> bool:
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.default is p.empty]
    return len(positional) == 1


def is_diffusers_guider(obj: Any) -> bool:
    """Whether ``obj`` is a diffusers guider instance (a class of ``diffusers.guiders`` with ``prepare_inputs``),
    told without importing diffusers."""
    return any(c.__module__.startswith("diffusers.guiders") for c in type(obj).__mro__) and hasattr(obj,
                                                                                                     "prepare_inputs")


def as_implementation(obj: Any, *, name: str | None = None) -> Implementation:
    """The adapter for ``obj``: an :class:`Implementation` as is; a :class:`~verify.rules.Rule` or a registered rule
    name; a diffusers guider instance (``diffusers.guiders.BaseGuidance``); a plain function, as a
    :class:`BranchesFunction` when it takes one required positional argument (the dict of branches), else as a
    :class:`CombinerFunction`. k-diffusion wrappers need their factory: use
    :class:`~verify.conformance.kdiffusion.KDiffusionWrapper`."""
    if isinstance(obj, Implementation):
        return obj
    if isinstance(obj, Rule):
        return RuleImplementation(obj)
    if isinstance(obj, str):
        if obj in rules.names():
            return RuleImplementation(obj)
        raise ValueError(f"impl: {obj!r} is no registered rule ({rules.names()}); a diffusers guider class name goes "
                         f"to verify.conformance.diffusers_guider.audit_guider")
    if is_diffusers_guider(obj):
        from .diffusers_guider import DiffusersGuider

        return DiffusersGuider(obj)
    if callable(obj):
        if _looks_like_branches_function(obj):
            return BranchesFunction(obj, name)
        return CombinerFunction(obj, name)
    raise TypeError(f"impl: expected a function, a registered rule, a diffusers guider or an Implementation, got "
                    f"{type(obj).__name__}")
