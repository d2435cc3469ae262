r"""Conformance checks for your own pytest suite: one line each.

::

    from verify.testing import assert_rule_conforms, assert_guider_conforms, assert_scheduler_law

    def test_my_cfg():
        assert_rule_conforms(my_cfg)                              # a combiner, against CFG

    def test_my_apg():
        assert_rule_conforms(my_apg, "apg", eta=0.0, norm_threshold=2.0, space="eps")

    def test_diffusers_cfg_guider():
        from diffusers.guiders import ClassifierFreeGuidance
        assert_guider_conforms(ClassifierFreeGuidance(guidance_scale=5.0))

    def test_my_scheduler_setup():
        from diffusers import DDIMScheduler
        assert_scheduler_law(DDIMScheduler(clip_sample=False), steps=50, max_bias=0.05)

Each raises ``AssertionError`` with the audit's report (the failing checks, the spaces that agree and the diagnosis:
what the implementation computes instead) when the code does not conform, and returns the full result otherwise.
The hypothesis strategies of :mod:`toy_models.strategies` (mixtures, times, noise levels, guidance scales, points)
are re-exported for property tests of your own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from toy_models.strategies import (
    cfg_strengths,
    guidance_scales,
    log_uniform,
    mixtures,
    noise_levels,
    points,
    simplex_weights,
    spd_matrices,
    times,
)

__all__ = ["assert_rule_conforms", "assert_guider_conforms", "assert_scheduler_law", "cfg_strengths",
           "guidance_scales", "log_uniform", "mixtures", "noise_levels", "points", "simplex_weights",
           "spd_matrices", "times"]


def assert_rule_conforms(impl: Any, rule: str = "cfg", *, params: dict | None = None, strengths: Any = "grid",
                         guided_steps: Callable[[int, int], bool] | None = None, seed: int = 0, **rule_params: Any):
    """:func:`verify.conformance.audit_rule` on ``impl`` against ``rule`` with its parameters (keyword arguments,
    or ``params=`` for a parameter whose name this function takes itself, such as the ``interval`` rule's
    ``rule``); ``AssertionError`` with the report unless it passes. Returns the
    :class:`~verify.conformance.RuleAudit`."""
    from verify.conformance import audit_rule

    result = audit_rule(impl, rule, params={**(params or {}), **rule_params}, strengths=strengths,
                        guided_steps=guided_steps, seed=seed)
    if not result.passed:
        raise AssertionError(result.report())
    return result


def assert_guider_conforms(guider: Any, *, seed: int = 0, **params: Any):
    """A diffusers guider (an instance, a class, or a class name with its constructor's ``params``) against its
    analytic counterpart (:func:`verify.conformance.diffusers_guider.audit_guider`)."""
    from verify.conformance.diffusers_guider import audit_guider

    result = audit_guider(guider, params=params or None, seed=seed)
    if not result.passed:
        raise AssertionError(result.report())
    return result


def assert_scheduler_law(scheduler: Any, rule: str = "cfg", *, max_bias: float | None = None, **kwargs: Any):
    """The law a scheduler produces with exact guided predictions (:func:`verify.scheduler_law.scheduler_law`):
    ``AssertionError`` with the report when it has findings or its discretisation bias exceeds ``max_bias``."""
    from verify.scheduler_law import assert_scheduler_law as check

    return check(scheduler, rule, max_bias=max_bias, **kwargs)
