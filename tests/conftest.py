"""Shared test configuration.

Hypothesis profiles, chosen by the environment variable ``CFGTRUTH_HYPOTHESIS_PROFILE``:

* ``ci`` (default): derandomized, no example database, no deadline: the same examples on every run, so CI is
  deterministic; 25 examples per property.
* ``thorough``: 500 random examples per property, for local bug hunts (failures are saved to the database).
"""

import os

import torch
from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, database=None, deadline=None, max_examples=25,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", deadline=None, max_examples=500,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("CFGTRUTH_HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(min(2, torch.get_num_threads()))



import pytest  # noqa: E402


@pytest.fixture(scope="session")
def quick_evidence():
    """One quick run's evidence providers, shared by every test of the session that reads ledger records."""
    from verify.claims import RunConfig
    from verify.evidence import Evidence

    return Evidence(RunConfig(quick=True, show_progress=False))


@pytest.fixture(scope="session")
def ledger(quick_evidence):
    """``ledger("S0-BAYES", ...)`` -> ``{id: record}``: the quick records of those claims, built from the session's
    shared evidence (each provider computed once per test session, whichever test asks first)."""
    from verify.claims import evaluate

    def records(*ids: str) -> dict:
        return {r.id: r for r in evaluate(quick_evidence.config, ids, quick_evidence)}

    return records


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests, restored afterwards. Modules whose tests push small tensors through
    many steps use it (``pytestmark = pytest.mark.usefixtures("one_thread")``): on a loaded 2-core machine intra-op
    threads then only add synchronisation (each module's comment gives its measurement)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
