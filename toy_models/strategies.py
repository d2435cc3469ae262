r"""Hypothesis strategies for property-based tests of guidance code: import them in your own suites.

Requires ``hypothesis`` (the ``[dev]`` extra). Every strategy shrinks towards simple cases (small dimension, few
components, well-conditioned covariances), so a failure is reported on the smallest world that shows it.

>>> from hypothesis import given
>>> from toy_models.strategies import mixtures, times
>>> @given(mixtures(), times("vp-linear"))
... def test_my_combiner(gm, t): ...
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from .gaussian_mixture import GaussianMixture
from .schedules import Schedule, get_schedule

__all__ = ["spd_matrices", "simplex_weights", "mixtures", "times", "log_uniform", "noise_levels",
           "cfg_strengths", "guidance_scales", "points"]

_UNIT = st.floats(-1.0, 1.0, allow_nan=False, allow_infinity=False)
_DEFAULT_DIMS = st.integers(1, 5)
_DEFAULT_COMPONENTS = st.integers(1, 4)


def log_uniform(low: float, high: float) -> st.SearchStrategy[float]:
    """Floats whose logarithm is uniform on ``[log low, log high]`` (``0 < low < high``)."""
    if not 0 < low < high:
        raise ValueError(f"low, high: need 0 < low < high, got {low!r}, {high!r}")
    return st.floats(math.log(low), math.log(high)).map(lambda u: min(max(math.exp(u), low), high))


@st.composite
def spd_matrices(draw, dim: int, min_eigenvalue: float = 0.05, max_condition: float = 50.0) -> np.ndarray:
    r"""Symmetric positive-definite ``[dim, dim]`` matrices :math:`Q \operatorname{diag}(\lambda) Q^\top` with
    eigenvalues log-uniform in ``[min_eigenvalue, min_eigenvalue * max_condition]``, so the condition number is at
    most ``max_condition``; :math:`Q` is the orthogonal factor of a drawn matrix."""
    eig = np.array(draw(st.lists(log_uniform(min_eigenvalue, min_eigenvalue * max_condition),
                                 min_size=dim, max_size=dim)))
    raw = draw(hnp.arrays(np.float64, (dim, dim), elements=_UNIT))
    q, _ = np.linalg.qr(raw + 1e-3 * np.eye(dim))  # shrinks to the identity; any square matrix has a QR
    mat = (q * eig) @ q.T
    return 0.5 * (mat + mat.T)


def simplex_weights(k: int, min_weight: float = 0.02) -> st.SearchStrategy[np.ndarray]:
    """Weights on the k-simplex with every weight at least about ``min_weight`` (no empty component)."""
    return hnp.arrays(np.float64, (k,), elements=st.floats(min_weight, 1.0)).map(lambda w: w / w.sum())


@st.composite
def mixtures(draw, dims: st.SearchStrategy[int] | int = _DEFAULT_DIMS,
             components: st.SearchStrategy[int] | int = _DEFAULT_COMPONENTS, n_classes: int | None = None,
             mean_scale: float = 3.0, max_condition: float = 50.0, dtype: torch.dtype = torch.float64
             ) -> GaussianMixture:
    """Random labelled mixtures: simplex weights, means in ``[-mean_scale, mean_scale]^d``, SPD covariances with
    bounded condition number, and labels covering ``min(n_classes, K)`` classes (default: up to 3 classes)."""
    dim = dims if isinstance(dims, int) else draw(dims)
    k = components if isinstance(components, int) else draw(components)
    weights = draw(simplex_weights(k))
    means = draw(hnp.arrays(np.float64, (k, dim), elements=st.floats(-mean_scale, mean_scale)))
    covs = np.stack([draw(spd_matrices(dim, max_condition=max_condition)) for _ in range(k)])
    classes = min(n_classes or draw(st.integers(1, 3)), k)
    labels = np.array(list(range(classes)) + draw(st.lists(st.integers(0, classes - 1),
                                                            min_size=k - classes, max_size=k - classes)))
    return GaussianMixture(weights, means, covs, labels=labels, dtype=dtype)


def times(schedule: str | Schedule = "vp-linear", low: float = 1e-3, high: float = 1.0 - 1e-3
          ) -> st.SearchStrategy[float]:
    """Times in ``[low, high]``, inside the schedule's domain (endpoints where alpha or sigma vanish excluded)."""
    get_schedule(schedule)  # validate the name now, not at draw time
    return st.floats(low, high)


def noise_levels(low: float = 1e-4, high: float = 1e2) -> st.SearchStrategy[float]:
    """Noise standard deviations sigma, log-uniform (every decade equally likely)."""
    return log_uniform(low, high)


def cfg_strengths(high: float = 10.0) -> st.SearchStrategy[float]:
    """Guidance strength ``w`` in the Ho & Salimans convention (``w = 0``: plain conditional), in ``[0, high]``."""
    return st.floats(0.0, high)


def guidance_scales(high: float = 11.0) -> st.SearchStrategy[float]:
    """``guidance_scale = 1 + w`` in the diffusers convention (1: plain conditional), in ``[1, high]``."""
    return st.floats(1.0, high)


def points(dim: int, n: int = 8, scale: float = 5.0) -> st.SearchStrategy[np.ndarray]:
    """``[n, dim]`` arrays of points in ``[-scale, scale]^dim``."""
    return hnp.arrays(np.float64, (n, dim), elements=st.floats(-scale, scale))
