r"""Guidance rules: one class per published rule, one file per class, registered by name.

::

    from verify import rules
    rules.names()                                         # every registered rule, sorted
    rule = rules.get("cfg", guidance_scale=7.5)           # a rule by name, its parameters validated
    rule.branches, rule.space, rule.linear_weights        # what it reads, where its formula lives, its weights
    guided = rule.guide(denoiser, {"cond": 2})            # a Denoiser (uncond defaults to the null condition)

A rule file defines its class with ``@register`` and nothing else needs editing: every module of this package
whose name does not start with ``_`` is imported when the package is, so its rule is registered (see
``docs/extending.md``). The base class, the guided denoiser and the run state are in :mod:`verify.rules._base`.

Conventions (``docs/conventions.md``): ``w`` is Ho & Salimans' strength, :math:`\tilde\varepsilon = (1 + w)
\varepsilon_c - w \varepsilon_\varnothing`; ``guidance_scale`` is diffusers',
:math:`\varepsilon_\varnothing + g(\varepsilon_c - \varepsilon_\varnothing)`, :math:`g = 1 + w`. Rules that take
a strength take exactly one of the two, by keyword, unless their paper defines its own parameter (CFG++'s
:math:`\lambda`).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from ._base import SPACES, GuidanceState, GuidedDenoiser, LinearRule, Prediction, Rule, StepContext

__all__ = ["SPACES", "Rule", "LinearRule", "GuidanceState", "GuidedDenoiser", "Prediction", "StepContext",
           "register", "names", "get", "rule_class"]

_REGISTRY: dict[str, type[Rule]] = {}


def register(cls: type[Rule]) -> type[Rule]:
    """Class decorator: add a :class:`Rule` subclass to the registry under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Rule)):
        raise TypeError(f"cls: expected a Rule subclass, got {cls!r}")
    if not cls.name or not isinstance(cls.name, str):
        raise ValueError(f"cls: {cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"cls: a rule named {cls.name!r} is already registered ({_REGISTRY[cls.name].__name__})")
    if not cls.reference:
        raise ValueError(f"cls: {cls.__name__} cites no paper (set reference)")
    _REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    """Every registered rule's name, sorted."""
    return sorted(_REGISTRY)


def rule_class(name: str) -> type[Rule]:
    """The class registered as ``name``."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"name: unknown rule {name!r}; choose one of {names()}")
    return _REGISTRY[name]


def get(name: str, **params: Any) -> Rule:
    """The rule ``name`` with its parameters (keyword arguments, validated by the rule)."""
    return rule_class(name)(**params)


for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
