r"""Calibrated statistics. Each test states its false-alarm rate; a family of tests is corrected with Holm.

Holm (1979), "A simple sequentially rejective multiple test procedure": sort the m p-values
:math:`p_{(1)} \le \dots \le p_{(m)}` and reject :math:`H_{(1)}, \dots, H_{(j)}` while
:math:`p_{(i)} \le \alpha/(m - i + 1)`. The probability of any false rejection is at most :math:`\alpha` under any
dependence between the tests.

Contents: moment z-tests, exact binomial tests of class masses, Kolmogorov-Smirnov against the exact CDF, energy and
MMD permutation tests (each a p-value whose false-alarm rate is stated in its docstring); the Frechet distance and
exact-density precision/recall (estimates with standard errors, not tests); :func:`run_family` applies Holm to
a named family. Power against a shift of the statistic by ``mu`` standard errors is :func:`z_test_power`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from scipy import stats

from toy_models._checks import as_real_tensor, as_scalar, check_generator
from toy_models.field_mixture import FieldMixture
from toy_models.gaussian_mixture import GaussianMixture

__all__ = ["holm_reject", "two_sided_p", "z_test_power", "moment_pvalues", "bayes_region_masses",
           "class_mass_pvalues", "ks_pvalue", "PermutationTest", "energy_distance_test", "mmd_test",
           "frechet_distance", "PrecisionRecall", "precision_recall", "CheckResult", "run_family"]


def holm_reject(pvalues, alpha: float) -> np.ndarray:
    """Boolean mask of the hypotheses Holm's procedure rejects at family-wise error rate ``alpha``."""
    _check_alpha(alpha)
    try:
        p = as_real_tensor(pvalues, "pvalues", copy=False).detach().reshape(-1).numpy()
    except ValueError as err:  # NaN or infinity: not a probability either
        raise ValueError(f"pvalues: must lie in [0, 1] ({str(err).split(': ', 1)[-1]})") from None
    if (p < 0).any() or (p > 1).any():
        raise ValueError("pvalues: must lie in [0, 1]")
    order = np.argsort(p)
    thresholds = alpha / (len(p) - np.arange(len(p)))
    passed = p[order] <= thresholds
    n_reject = len(p) if passed.all() else int(np.argmin(passed))
    reject = np.zeros(len(p), dtype=bool)
    reject[order[:n_reject]] = True
    return reject


def mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    r"""The mean of independent samples ``[N]`` and its standard error, the Bessel-corrected standard deviation over
    :math:`\sqrt N` (infinite for a single sample: one draw says nothing about the spread)."""
    n = values.numel()
    return float(values.mean()), float(values.std() / math.sqrt(n)) if n > 1 else math.inf


def two_sided_p(z) -> np.ndarray:
    """Two-sided p-value of a standard-normal statistic."""
    return 2.0 * stats.norm.sf(np.abs(np.asarray(z, dtype=np.float64)))


def z_test_power(noncentrality, alpha: float) -> np.ndarray:
    r"""Power of the two-sided level-``alpha`` z-test when the statistic is :math:`\mathcal N(\mu, 1)`:
    :math:`\Phi(\mu - z_{1-\alpha/2}) + \Phi(-\mu - z_{1-\alpha/2})`. For the mean test of :func:`moment_pvalues`
    against a shift of ``delta`` standard deviations, :math:`\mu = \delta\sqrt n`; for the variance test against a
    factor ``1 + r`` on a Gaussian's variance, :math:`\mu = r\sqrt{n}/(\sqrt 2 (1 + r))`."""
    _check_alpha(alpha)
    z = stats.norm.isf(alpha / 2)
    mu = np.asarray(noncentrality, dtype=np.float64)
    return stats.norm.cdf(mu - z) + stats.norm.cdf(-mu - z)


def moment_pvalues(samples: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> np.ndarray:
    r"""p-values of z-tests of every mean coordinate and every covariance entry (upper triangle) against the
    given law, with standard errors estimated from the samples (so the tests are asymptotically exact for any law
    with finite fourth moments):

    .. math::  z_i = \frac{\bar x_i - m_i}{\sqrt{\hat\Sigma_{ii}/n}}, \qquad
               z_{ij} = \frac{\overline{c_i c_j} - \Sigma_{ij}}{\widehat{\mathrm{sd}}(c_i c_j)/\sqrt n},
               \quad c = x - m.

    Centering at the hypothesised mean (not the sample mean) keeps each statistic an average of i.i.d. terms.
    False-alarm rate: ``alpha`` per test up to the CLT's O(n^{-1/2}) error; power: :func:`z_test_power`.
    """
    x = _points(samples, "samples", min_n=2)
    n, d = x.shape
    m = as_real_tensor(mean, "mean", copy=False).detach().reshape(-1)
    c = torch.atleast_2d(as_real_tensor(cov, "cov", copy=False).detach())
    if m.shape != (d,):
        raise ValueError(f"mean: expected {d} entries (the samples' dimension), got shape {list(m.shape)}")
    if c.shape != (d, d):
        raise ValueError(f"cov: expected shape [{d}, {d}], got {list(c.shape)}")
    centered = x - m
    z_mean = centered.mean(0) / torch.sqrt(centered.var(0) / n)
    rows, cols = torch.triu_indices(d, d)
    products = centered[:, rows] * centered[:, cols]  # [n, d(d+1)/2]
    z_cov = (products.mean(0) - c[rows, cols]) / (products.std(0) / n**0.5)
    return two_sided_p(torch.cat([z_mean, z_cov]).numpy())


# --- helpers ------------------------------------------------------------------------------------------------
def _check_alpha(alpha) -> None:
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, (float, int, np.floating, np.integer)) or \
            not 0 < alpha < 1:
        raise ValueError(f"alpha: must lie in (0, 1), got {alpha!r}")


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: must be an int >= {minimum}, got {value!r}")
    return int(value)


def _points(x, name: str, dim: int | None = None, min_n: int = 1) -> torch.Tensor:
    """A finite float64 ``[N, d]`` tensor with ``N >= min_n`` under the input policy (complex, bool, strings refused
    with ``TypeError``; NaN and infinity with ``ValueError``; float32 and integers converted exactly); a 1-D input is
    read as ``N`` points in d = 1. Detached: the statistics are not differentiated."""
    t = as_real_tensor(x, name, torch.float64, copy=False).detach()
    t = t[:, None] if t.ndim == 1 else t
    if t.ndim != 2 or t.shape[1] == 0 or t.shape[0] < min_n:
        raise ValueError(f"{name}: expected [N, d] with N >= {min_n} and d >= 1, got shape {list(t.shape)}")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(f"{name}: dimension mismatch, expected d = {dim}, got d = {t.shape[1]}")
    return t


# --- class masses -------------------------------------------------------------------------------------------
def bayes_region_masses(law: GaussianMixture, n: int, generator: torch.Generator | None,
                        *, chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    r"""Monte Carlo estimate, from ``n`` draws, of each class's Bayes-region mass
    :math:`P_{law}(\arg\max_{c'} p(c' \mid X) = c)` (columns in ``law.classes`` order), and its binomial standard
    error :math:`\sqrt{m(1 - m)/n}`. It differs from the class weight wherever the classes overlap."""
    n = _check_int(n, "n", 1)
    check_generator(generator)
    counts = np.zeros(len(law.classes))
    for start in range(0, n, chunk):
        x = law.sample(min(chunk, n - start), generator)
        counts += np.bincount(law.class_posterior(x).argmax(1).numpy(), minlength=len(counts))
    return counts / n, np.sqrt(counts / n * (1.0 - counts / n) / n)


def class_mass_pvalues(samples, law: GaussianMixture, *, expected=None, classes=None,
                       generator: torch.Generator | None = None) -> np.ndarray:
    r"""Exact binomial tests (``scipy.stats.binomtest``; two-sided p-value: the probability of the counts no more
    likely than the observed one) of the number :math:`N_c` of samples in class ``c`` against
    :math:`\mathrm{Bin}(n, e_c)`: one p-value per class in ``classes`` (default: all, in ``law.classes`` order).

    * integer labels ``[n]``: the class each sample was generated from; ``expected`` defaults to the class weights.
    * points ``[n, d]``: a point's class is the Bayes classifier :math:`\arg\max_c p(c \mid x)` of ``law``, so
      :math:`e_c` is the law's mass in that region, not the class weight. Give ``expected`` (e.g. from
      :func:`bayes_region_masses`) or a ``generator`` to estimate it from :math:`n_{ref} = \max(10^5, 100 n)` draws,
      whose error adds at most :math:`n/n_{ref} \le 1\%` to the variance of :math:`N_c/n - e_c`.

    False-alarm rate, for i.i.d. samples of ``law``: at most ``alpha`` per class (exact test, conservative through
    discreteness only); with an estimated ``expected``, at most :math:`P(|Z| > z_{1-\alpha/2}/\sqrt{1.01})` (0.0509
    at 0.05). Power against a mass :math:`e_c + D`: about ``z_test_power(D * sqrt(n / (e_c (1 - e_c))), alpha)``."""
    law_classes = law.classes.tolist()
    if not isinstance(law, GaussianMixture):
        raise TypeError(f"law: expected a GaussianMixture, got {type(law).__name__}")
    raw = samples.detach() if isinstance(samples, torch.Tensor) else np.asarray(samples)
    integer = (not raw.is_floating_point() and not raw.is_complex() and raw.dtype != torch.bool
               if isinstance(raw, torch.Tensor) else raw.dtype.kind in "iu")
    if raw.ndim == 1 and integer:
        labels = np.asarray(raw, dtype=np.int64)
        if labels.size == 0 or not np.isin(labels, law_classes).all():
            raise ValueError(f"samples: labels must be a non-empty array of the law's classes {law_classes}")
        idx = np.searchsorted(law_classes, labels)
        if expected is None:
            weights, comp_labels = law.weights.double().numpy(), law.labels.numpy()
            expected = [weights[comp_labels == c].sum() for c in law_classes]
    else:
        idx = law.class_posterior(_points(raw, "samples", law.dim).to(law.dtype)).argmax(1).numpy()
        if expected is None:
            if generator is None:
                raise ValueError("expected: give the Bayes-region masses (bayes_region_masses) or a generator")
            expected = bayes_region_masses(law, max(10**5, 100 * len(idx)), generator)[0]
    expected = np.asarray(expected, dtype=np.float64)
    if (expected.shape != (len(law_classes),) or (expected < 0).any() or (expected > 1).any()
            or abs(expected.sum() - 1.0) > 1e-9 * len(law_classes)):
        raise ValueError(f"expected: must be {len(law_classes)} probabilities summing to 1, got {expected!r}")
    chosen = law_classes if classes is None else list(classes)
    if not chosen or not set(chosen) <= set(law_classes):
        raise ValueError(f"classes: must be a non-empty subset of {law_classes}, got {classes!r}")
    counts = np.bincount(idx, minlength=len(law_classes))
    pos = [law_classes.index(c) for c in chosen]
    return np.array([stats.binomtest(int(counts[i]), len(idx), expected[i]).pvalue for i in pos])


# --- Kolmogorov-Smirnov -------------------------------------------------------------------------------------
def ks_pvalue(samples_1d, law_1d: GaussianMixture) -> float:
    r"""Kolmogorov-Smirnov test (``scipy.stats.kstest``) of 1-D samples against the exact CDF ``law_1d.cdf``:
    :math:`D_n = \sup_x |F_n(x) - F(x)|`, p-value from its exact finite-n null law (scipy's ``kstwo``).
    False-alarm rate: exactly ``alpha`` (continuous F, i.i.d. samples). Power: at least that of the binomial test of
    :math:`F_n(x_0)` at any one :math:`x_0`, :math:`\approx \Phi\big(\sqrt n(|G(x_0) - F(x_0)| - c_{n,\alpha}) /
    \sqrt{G(1 - G)}\big)` with :math:`c_{n,\alpha}` = ``kstwo.isf(alpha, n)``, against an alternative G."""
    if law_1d.dim != 1:
        raise ValueError(f"law_1d: expected a 1-D law, got d = {law_1d.dim}")
    x = _points(samples_1d, "samples_1d", 1)[:, 0].numpy()
    return float(stats.kstest(x, lambda v: law_1d.cdf(torch.as_tensor(v)[:, None]).double().numpy()).pvalue)


# --- permutation tests --------------------------------------------------------------------------------------
class PermutationTest(NamedTuple):
    statistic: float
    pvalue: float
    n_permutations: int


def _permutation_test(x, y, n_permutations, generator, max_points, pair_matrix, statistic) -> PermutationTest:
    r"""Pool the (subsampled) samples, build the pairwise matrix M once, and evaluate the statistic for the observed
    split and ``n_permutations`` random ones from the block sums :math:`a^\top M a, a^\top M b, b^\top M b` (a, b:
    group indicators; one ``[N, N] x [N, B]`` product). p-value :math:`(1 + \#\{T_{perm} \ge T_{obs}\})/(1 + B)`
    (Phipson & Smyth 2010): under exchangeability :math:`P(p \le \alpha) \le \alpha` for every alpha, exactly."""
    n_permutations = _check_int(n_permutations, "n_permutations", 1)
    max_points = _check_int(max_points, "max_points", 2)
    check_generator(generator)
    x = _points(x, "x", min_n=2)
    y = _points(y, "y", x.shape[1], min_n=2)
    # a random subset of an i.i.d. sample is i.i.d.: validity is kept, power is that of max_points points
    x = x[torch.randperm(len(x), generator=generator)[:max_points]] if len(x) > max_points else x
    y = y[torch.randperm(len(y), generator=generator)[:max_points]] if len(y) > max_points else y
    n, m = len(x), len(y)
    mat = pair_matrix(torch.cat([x, y]))  # [N, N]
    splits = torch.stack([torch.arange(n + m)] + [torch.randperm(n + m, generator=generator)
                                                  for _ in range(n_permutations)])[:, :n]
    a = torch.zeros(len(splits), n + m, dtype=torch.float64).scatter_(1, splits, 1.0)  # [B + 1, N]
    ma = mat @ a.T  # [N, B + 1]
    mb = mat.sum(1, keepdim=True) - ma
    values = statistic((a.T * ma).sum(0), (a.T * mb).sum(0), ((1.0 - a).T * mb).sum(0), n, m).numpy()
    tie = 1e-12 * float(mat.abs().max())  # summation order differs between splits: keep rounding from breaking ties
    pvalue = (1 + int((values[1:] >= values[0] - tie).sum())) / (1 + n_permutations)
    return PermutationTest(float(values[0]), pvalue, n_permutations)


def _distances(z: torch.Tensor) -> torch.Tensor:
    return torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist")  # exact zeros on the diagonal


def energy_distance_test(x, y, *, n_permutations: int = 200, generator: torch.Generator | None,
                         max_points: int = 2000) -> PermutationTest:
    r"""Energy distance (Szekely & Rizzo 2004, "Testing for equal distributions in high dimension"), the
    V-statistic estimate of :math:`2E|X - Y| - E|X - X'| - E|Y - Y'|` (zero iff the laws agree):

    .. math::  \mathcal E = \frac{2}{nm}\sum_{i,j}|x_i - y_j| - \frac{1}{n^2}\sum_{i,j}|x_i - x_j|
               - \frac{1}{m^2}\sum_{i,j}|y_i - y_j|,

    and its permutation p-value (their statistic :math:`\tfrac{nm}{n+m}\mathcal E` orders splits identically).
    Each sample is first randomly subsampled to ``max_points`` (the pooled float64 matrix is 128 MB at 2 x 2000).
    False-alarm rate: at most ``alpha``, exactly, for i.i.d. x and y of one law. Power: consistent against every
    fixed alternative; measured in ``tests/test_metrics.py`` against a Gaussian shift (near the z-test's)."""
    def energy(s_xx, s_xy, s_yy, n, m):
        return 2.0 * s_xy / (n * m) - s_xx / n**2 - s_yy / m**2
    return _permutation_test(x, y, n_permutations, generator, max_points, _distances, energy)


def mmd_test(x, y, *, bandwidth: float | None = None, n_permutations: int = 200,
             generator: torch.Generator | None, max_points: int = 2000) -> PermutationTest:
    r"""Unbiased squared MMD (Gretton et al. 2012, JMLR, eq. 3) with the kernel :math:`e^{-|u - v|^2 / (2h^2)}`:

    .. math::  \widehat{\mathrm{MMD}}^2_u = \frac{\sum_{i \ne j} k(x_i, x_j)}{n(n-1)}
               + \frac{\sum_{i \ne j} k(y_i, y_j)}{m(m-1)} - \frac{2}{nm}\sum_{i,j} k(x_i, y_j),

    and its permutation p-value. ``bandwidth=None``: median heuristic, h = median pairwise distance of the pooled
    sample (ibid., section 8), the same for every split, so the test stays exact. Subsampling as in
    :func:`energy_distance_test`. False-alarm rate: at most ``alpha``, exactly. Power: consistent against every
    fixed alternative (characteristic kernel); measured in the tests."""
    if bandwidth is not None:
        bandwidth = as_scalar(bandwidth, "bandwidth")
        if not bandwidth > 0:
            raise ValueError(f"bandwidth: must be a positive number or None, got {bandwidth!r}")

    def kernel(z):
        dist = _distances(z)
        h = bandwidth
        if h is None:
            iu = torch.triu_indices(len(z), len(z), offset=1)
            h = float(dist[iu[0], iu[1]].median()) or 1.0  # all points equal: any h gives MMD = 0
        return torch.exp(-0.5 * (dist / h) ** 2)

    def mmd2(s_xx, s_xy, s_yy, n, m):  # the diagonal k(u, u) = 1 leaves the within-sample sums
        return (s_xx - n) / (n * (n - 1)) + (s_yy - m) / (m * (m - 1)) - 2.0 * s_xy / (n * m)
    return _permutation_test(x, y, n_permutations, generator, max_points, kernel, mmd2)


# --- Frechet distance ---------------------------------------------------------------------------------------
def _mean_cov(obj, name: str, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(obj, GaussianMixture):
        if dim is not None and obj.dim != dim:
            raise ValueError(f"{name}: dimension mismatch, expected d = {dim}, got d = {obj.dim}")
        # GaussianMixture.covariance is centred (law of total covariance with mu_k - m): the uncentred
        # sum_k pi_k (S_k + mu_k mu_k^T) - m m^T loses every digit at means near 1e3 and variances near 1e-11
        law = obj.to(torch.float64)
        return law.mean().numpy(), law.covariance().numpy()
    x = _points(obj, name, dim, min_n=2)
    return x.mean(0).numpy(), np.atleast_2d(torch.cov(x.T).numpy())


def frechet_distance(x, law_or_samples) -> float:
    r"""Frechet distance (2-Wasserstein between Gaussians, Dowson & Landau 1982; the FID of Heusel et al. 2017)
    between the Gaussians with the first two moments of the two arguments:

    .. math::  \|m_1 - m_2\|^2 + \operatorname{tr}\big(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2}\big).

    Each argument is a :class:`GaussianMixture` (exact ``mean()``, ``covariance()``) or samples ``[n, d]`` (sample
    mean, unbiased covariance). Instead of ``scipy.linalg.sqrtm`` (complex round-off), the trace of the root is the
    sum of the roots of the eigenvalues of the symmetric PSD :math:`S_1^{1/2} S_2 S_1^{1/2}` (symmetric
    eigen-decompositions, rounding negatives clipped); the result is clipped at 0. An estimate, not a test: from
    samples it is biased upward, by :math:`\operatorname{tr} S / n` from the mean term alone.

    Two single-component :class:`~toy_models.field_mixture.FieldMixture` laws of one image shape share their basis B
    (both covariances are :math:`B\,\mathrm{diag}(\nu)B^\top`): the matrices commute and the distance is exact in
    the basis, :math:`\|m_1 - m_2\|^2 + \sum_j(\sqrt{\nu_{1j}} - \sqrt{\nu_{2j}})^2`, at any d (no d x d matrix)."""
    if isinstance(x, FieldMixture) and isinstance(law_or_samples, FieldMixture):
        return _field_frechet(x, law_or_samples)
    m1, s1 = _mean_cov(x, "x")
    m2, s2 = _mean_cov(law_or_samples, "law_or_samples", len(m1))
    w, u = np.linalg.eigh(0.5 * (s1 + s1.T))
    root1 = (u * np.sqrt(np.clip(w, 0.0, None))) @ u.T
    inner = root1 @ s2 @ root1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(0.5 * (inner + inner.T)), 0.0, None)).sum()
    return max(0.0, float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * cross))


def _field_frechet(a: FieldMixture, b: FieldMixture) -> float:
    for name, law in (("x", a), ("law_or_samples", b)):
        if law.n_components != 1:
            raise ValueError(f"{name}: the closed form covers single-component field laws, got K = {law.n_components}")
    if a.shape != b.shape:
        raise ValueError(f"law_or_samples: image shape {b.shape} differs from x's {a.shape}")
    mean = (a.mean_images[0] - b.mean_images[0]).pow(2).sum()
    spread = (a.spectra[0].sqrt() - b.spectra[0].sqrt()).pow(2).sum()
    return float(mean + spread)


# --- precision and recall from exact densities --------------------------------------------------------------
@dataclass(frozen=True)
class PrecisionRecall:
    precision: float
    precision_se: float
    recall: float | None
    recall_se: float | None
    level: float


def _hdr_threshold(law: GaussianMixture, level: float, n: int, generator) -> tuple[float, torch.Tensor]:
    """``(tau, draws)``: the (1 - level) quantile of ``log p(Y)``, ``Y ~ law``, from ``n`` draws."""
    draws = law.sample(n, generator)
    return float(np.quantile(law.log_prob(draws).double().numpy(), 1.0 - level)), draws


def precision_recall(model, target: GaussianMixture, *, level: float = 0.95, n_reference: int = 100_000,
                     generator: torch.Generator | None) -> PrecisionRecall:
    r"""Precision and recall from exact densities (Kynkaanniemi et al. 2019's supports, made exact). The support of
    a law p is its highest-density region :math:`H_p = \{x : \log p(x) \ge \tau_p\}`, :math:`\tau_p` the
    :math:`(1 - \text{level})` quantile of :math:`\log p(Y)`, :math:`Y \sim p`, so :math:`P_p(H_p) = \text{level}`:

    .. math::  \text{precision} = P_{model}(H_{target}), \qquad \text{recall} = P_{target}(H_{model}).

    ``model`` as a :class:`GaussianMixture` (the exact law of a sampler, a tilted law): both are averages over
    ``n_reference`` draws of each law (thresholds from the same draws). ``model`` as samples ``[n, d]``: precision
    is the fraction of them in :math:`H_{target}`; recall is ``None`` (it needs the model's density). Identical laws
    give precision = recall = ``level``, not 1. ``*_se``: binomial standard errors given the thresholds; a
    threshold's own error moves its region's mass by about :math:`\sqrt{\text{level}(1-\text{level})/n_{reference}}`,
    times the density ratio on the boundary."""
    if not isinstance(level, (float, np.floating)) or not 0 < level < 1:
        raise ValueError(f"level: must be a float in (0, 1), got {level!r}")
    if not isinstance(target, GaussianMixture):
        raise TypeError(f"target: expected a GaussianMixture, got {type(target).__name__}")
    n_reference = _check_int(n_reference, "n_reference", 2)
    check_generator(generator)
    tau_target, target_draws = _hdr_threshold(target, level, n_reference, generator)
    recall = recall_se = None
    if isinstance(model, GaussianMixture):
        if model.dim != target.dim:
            raise ValueError(f"model: dimension mismatch, expected d = {target.dim}, got d = {model.dim}")
        tau_model, x = _hdr_threshold(model, level, n_reference, generator)
        recall = float((model.log_prob(target_draws.to(model.dtype)).double() >= tau_model).double().mean())
        recall_se = float(np.sqrt(recall * (1.0 - recall) / n_reference))
    else:
        x = _points(model, "model", target.dim)
    precision = float((target.log_prob(x.to(target.dtype)).double() >= tau_target).double().mean())
    return PrecisionRecall(precision, float(np.sqrt(precision * (1.0 - precision) / len(x))), recall, recall_se, level)


# --- families -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckResult:
    name: str
    statistic: float | None
    pvalue: float
    alpha: float
    rejected: bool


def run_family(pvalues_by_name: Mapping, alpha: float) -> list[CheckResult]:
    """Holm-correct a named family at family-wise error rate ``alpha`` (at most ``alpha`` under any dependence).
    A value is a p-value; an object with ``.pvalue`` (and ``.statistic``: a :class:`PermutationTest`, a scipy
    result); a ``(statistic, pvalue)`` tuple; or an array of p-values (e.g. :func:`moment_pvalues`), expanded into
    checks ``name[i]``. Each result's ``alpha`` is the family's."""
    _check_alpha(alpha)
    checks = []  # (name, statistic, pvalue)
    for name, value in pvalues_by_name.items():
        if hasattr(value, "pvalue"):
            checks.append((str(name), getattr(value, "statistic", None), value.pvalue))
        elif isinstance(value, tuple) and len(value) == 2:
            checks.append((str(name), *value))
        elif np.ndim(value) == 0:
            checks.append((str(name), None, value))
        else:
            checks += [(f"{name}[{i}]", None, p) for i, p in enumerate(np.ravel(value))]
    rejected = holm_reject([float(p) for _, _, p in checks], alpha) if checks else []
    return [CheckResult(name, None if stat is None else float(stat), float(p), float(alpha), bool(r))
            for (name, stat, p), r in zip(checks, rejected, strict=True)]
