"""Robustness: every public API answers a hostile-but-fair input with a clear refusal or a finite, right result.

The cases come from ``tests/fuzz_cases.py`` (the same generators as ``benchmarks/robustness.py``); hypothesis draws
the API and the seed, and every bug found by the earlier trial is pinned as an ``@example``. A case passes when the
oracle says ``refused clearly`` (a ValueError/TypeError whose message starts with the offending argument's name) or
``correct`` (finite and within the derived tolerance of an independent reference).
"""

from __future__ import annotations

import fuzz_cases as fz
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch.set_num_threads(1)

_KNOWN = [c.description for c in fz.known_bug_cases()]


def _case(api: str, seed: int) -> fz.Case:
    return fz.make_case(api, seed)


def _assert_ok(case: fz.Case) -> None:
    try:
        outcome, detail = fz.judge(case)
    finally:
        fz.cleanup_tmp()
    assert outcome in (fz.REFUSED, fz.CORRECT), (
        f"{case.api}: {case.description}\n  outcome: {outcome}\n  {detail}\n  reproducer:\n"
        + "\n".join("    " + line for line in case.repro.splitlines()))


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(seed=st.integers(0, 2**32 - 1))
@pytest.mark.parametrize("api", fz.APIS)
def test_public_api_refuses_clearly_or_answers_right(api, seed):
    """Every API, 12 generated cases each (benchmarks/robustness.py runs the same generators at 3,000+ cases)."""
    _assert_ok(_case(api, seed))


@pytest.mark.parametrize("index", range(len(_KNOWN)), ids=_KNOWN)
def test_known_bugs_stay_fixed(index):
    """Each bug of the earlier hostile-but-fair trial, pinned."""
    _assert_ok(fz.known_bug_cases()[index])


def test_every_api_has_a_generator_and_each_known_bug_a_case():
    assert len(fz.APIS) >= 20
    assert len(_KNOWN) == 10
