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
