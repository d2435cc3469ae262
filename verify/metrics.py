r"""Calibrated statistics. Each test states its false-alarm rate; a family of tests is corrected with Holm.

Holm (1979), "A simple sequentially rejective multiple test procedure": sort the m p-values
:math:`p_{(1)} \le \dots \le p_{(m)}` and reject :math:`H_{(1)}, \dots, H_{(j)}` while
:math:`p_{(i)} \le \alpha/(m - i + 1)`. The probability of any false rejection is at most :math:`\alpha` under any
dependence between the tests.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats

__all__ = ["holm_reject", "two_sided_p", "moment_pvalues"]


def holm_reject(pvalues, alpha: float) -> np.ndarray:
    """Boolean mask of the hypotheses Holm's procedure rejects at family-wise error rate ``alpha``."""
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: must lie in (0, 1), got {alpha!r}")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("pvalues: must lie in [0, 1]")
    order = np.argsort(p)
    thresholds = alpha / (len(p) - np.arange(len(p)))
    passed = p[order] <= thresholds
    n_reject = len(p) if passed.all() else int(np.argmin(passed))
    reject = np.zeros(len(p), dtype=bool)
    reject[order[:n_reject]] = True
    return reject


def two_sided_p(z) -> np.ndarray:
    """Two-sided p-value of a standard-normal statistic."""
    return 2.0 * stats.norm.sf(np.abs(np.asarray(z, dtype=np.float64)))


def moment_pvalues(samples: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> np.ndarray:
    r"""p-values of z-tests of every mean coordinate and every covariance entry (upper triangle) against the
    given law, with standard errors estimated from the samples (so the tests are asymptotically exact for any law
    with finite fourth moments):

    .. math::  z_i = \frac{\bar x_i - m_i}{\sqrt{\hat\Sigma_{ii}/n}}, \qquad
               z_{ij} = \frac{\overline{c_i c_j} - \Sigma_{ij}}{\widehat{\mathrm{sd}}(c_i c_j)/\sqrt n},
               \quad c = x - m.

    Centering at the hypothesised mean (not the sample mean) keeps each statistic an average of i.i.d. terms.
    """
    x = samples.to(torch.float64)
    m = torch.as_tensor(mean, dtype=torch.float64)
    c = torch.as_tensor(cov, dtype=torch.float64)
    n, d = x.shape
    centered = x - m
    z_mean = centered.mean(0) / torch.sqrt(centered.var(0) / n)
    rows, cols = torch.triu_indices(d, d)
    products = centered[:, rows] * centered[:, cols]  # [n, d(d+1)/2]
    z_cov = (products.mean(0) - c[rows, cols]) / (products.std(0) / n**0.5)
    return two_sided_p(torch.cat([z_mean, z_cov]).numpy())
