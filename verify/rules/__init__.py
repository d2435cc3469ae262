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
           "register", "names", "get", "rule_class", "table", "page"]

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


def table() -> str:
    """The registered rules as a Markdown table (``python -m verify.rules`` prints it; ``docs/rules.md`` is this
    table, and a test keeps the two equal): name, paper, branches, spaces (the default first), linearity, state and
    re-noising, read from each rule built with its :meth:`Rule.examples` on the ``ring2d`` world."""
    from toy_models import get_schedule, get_world

    world, schedule = get_world("ring2d"), get_schedule("vp-linear")
    lines = ["| rule | paper | branches | spaces | linear | keeps state | re-noises with |",
             "|---|---|---|---|---|---|---|"]
    for name in names():
        cls = rule_class(name)
        built = [cls(**params) for params in cls.examples(world)]
        linear = [r.linear_weights is not None for r in built]
        per_t = [all(r.weights_at(t, schedule) is not None for t in (0.1, 0.5, 0.9)) for r in built]
        how = ("yes" if all(linear) else "at each t (weights change with t)" if all(per_t) else
               "no" if not any(per_t) else "with some parameters")
        first = built[0]
        spaces = ", ".join([first.space, *(s for s in cls.spaces if s != first.space)])
        state = "with some parameters" if any(r.stateful for r in built) and not all(r.stateful for r in built) \
            else "yes" if first.stateful else "no"
        lines.append(f"| `{name}` | {cls.reference} | {', '.join(first.branches)} | {spaces} | {how} | {state} | "
                     f"{first.renoise_branch or '-'} |")
    return "\n".join(lines) + "\n"


_PAGE_HEADER = """# The guidance rules

Every rule registered in `verify.rules`, one class in one file each (`verify/rules/<name>.py`). This page is
generated: `python -m verify.rules > docs/rules.md` writes it from the registry, and `tests/test_rules.py` fails when
it is out of date. How to read the columns: *branches* are the predictions the rule reads (bound to conditions by
`rule.guide(denoiser, conditions)`); *spaces* are the prediction spaces its formula can be applied in, its default
(the paper's) first; *linear* says whether the guided prediction is a fixed weighted sum of the branches (then the
exact sampled laws of `verify.exact_law` and the tilted targets of `verify.tilted` apply), changes its weights with t
(exact laws apply, tilted targets do not), or depends on the parameters; *keeps state* and *re-noises with* are what
a sampler must honour (see `docs/contract.md`). Each rule's docstring gives its formula, its paper and equation,
and how popular implementations differ.

"""


def page() -> str:
    """``docs/rules.md``: a short guide to the columns and :func:`table` (``python -m verify.rules`` prints it)."""
    return _PAGE_HEADER + table()
