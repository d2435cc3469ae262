"""The exported hypothesis strategies produce what they promise."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from toy_models.strategies import (
    cfg_strengths,
    guidance_scales,
    log_uniform,
    mixtures,
    noise_levels,
    simplex_weights,
    spd_matrices,
    times,
)


@given(st.integers(1, 6).flatmap(lambda d: spd_matrices(d, min_eigenvalue=0.1, max_condition=20.0)))
def test_spd_matrices_have_bounded_condition(mat):
    # (symmetry is not asserted: the strategy symmetrises its output, so that assertion could not fail)
    eig = np.linalg.eigvalsh(mat)
    # eigenvalues are drawn in [0.1, 2]; forming Q diag Q^T moves them by ~d u |max|
    assert eig.min() >= 0.1 * (1 - 1e-12) and eig.max() <= 2.0 * (1 + 1e-12)


@given(simplex_weights(5))
def test_simplex_weights(w):
    assert w.shape == (5,) and abs(w.sum() - 1) <= 5 * 2**-53 * 2 and (w > 0).all()


@given(mixtures(n_classes=2))
def test_mixtures_are_valid_and_labelled(gm):
    assert len(gm.classes) == min(2, gm.n_components)
    # every class of the mixture is used and the weights are the strategy's (positive, on the simplex)
    assert set(gm.labels.tolist()) == set(gm.classes.tolist())
    assert bool((gm.weights > 0).all()) and abs(float(gm.weights.sum()) - 1) <= 2 * gm.n_components * 2**-53


@given(log_uniform(1e-4, 1e2), noise_levels(), times("ve"), cfg_strengths(), guidance_scales())
def test_scalar_strategies_respect_ranges(v, sigma, t, w, g):
    assert 1e-4 <= v <= 1e2 and 1e-4 <= sigma <= 1e2 and 0 < t < 1 and 0 <= w <= 10 and 1 <= g <= 11


def test_strategy_arguments_are_validated():
    with pytest.raises(ValueError, match="low, high"):
        log_uniform(0.0, 1.0)
    with pytest.raises(ValueError, match="schedule"):
        times("nope")
