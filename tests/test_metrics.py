"""verify.metrics: false-alarm rates and powers measured over fixed seeds, Holm, Frechet, exact-density P/R.

Every rate below is a count of rejections over a fixed list of seeds, so each test is deterministic. Its acceptance
band is the 99.9 % central interval of Binomial(n_seeds, rate), with ``rate = alpha`` for a false-alarm check and the
normal-approximation power for a power check: a correct implementation falls outside it for at most 1 in 1000 choices
of the seed list, while an off-by-a-lot size or power (a test that never rejects, or always does) cannot pass.

The seeds are 64-bit values from ``numpy.random.SeedSequence``, not 0, 1, 2, ...: with torch's CPU generator, the
sample means of ``torch.randn(2000)`` under ``manual_seed(0..4999)`` had variance 0.94 +- 0.02 (times 1/n), against
0.99 over seeds 5000..9999, 0.99 along one stream and 0.99 over these seeds, which would bias a measured size low.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import optimize, stats

from toy_models import GaussianMixture
from verify.metrics import (
    CheckResult,
    PermutationTest,
    bayes_region_masses,
    class_mass_pvalues,
    energy_distance_test,
    frechet_distance,
    holm_reject,
    ks_pvalue,
    mmd_test,
    moment_pvalues,
    precision_recall,
    run_family,
    z_test_power,
)

ALPHA = 0.05
N_SEEDS = 200  # closed-form tests
N_SEEDS_PERM = 100  # permutation tests, with 99 permutations each
SEEDS = [int(seed) for seed in np.random.SeedSequence(20240601).generate_state(N_SEEDS, dtype=np.uint64)]
N01 = GaussianMixture([1.0], [[0.0]], [[[1.0]]])
# 1-D, two overlapping classes of unequal weight and width
LAW1 = GaussianMixture([0.4, 0.6], [[-1.0], [1.5]], [[[1.0]], [[0.5]]])
# 2-D, three classes (class 2 has two components); the classes overlap, so Bayes-region masses != class weights
LAW2 = GaussianMixture([0.3, 0.2, 0.25, 0.25], [[0.0, 0.0], [1.5, 0.5], [-1.0, 1.5], [2.0, -1.0]],
                       [[[1.0, 0.3], [0.3, 0.8]], [[0.6, 0.0], [0.0, 1.2]], [[0.5, -0.2], [-0.2, 0.7]],
                        [[0.9, 0.1], [0.1, 0.4]]], labels=[0, 1, 2, 2])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def band(n_trials: int, rate: float, coverage: float = 0.999) -> tuple[int, int]:
    """Central ``coverage`` acceptance interval [lo, hi] of Binomial(n_trials, rate): P(X < lo) and P(X > hi) are
    each at most (1 - coverage) / 2."""
    tail = (1.0 - coverage) / 2.0
    return int(stats.binom.ppf(tail, n_trials, rate)), int(stats.binom.isf(tail, n_trials, rate))


def assert_in_band(count: int, n_trials: int, rate: float, what: str) -> None:
    lo, hi = band(n_trials, rate)
    assert lo <= count <= hi, f"{what}: {count}/{n_trials} rejections, band [{lo}, {hi}] for rate {rate:.3f}"


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """The arrays here are small (at most 200 x 200 pairwise matrices, 1e5 x 2 samples): one intra-op thread avoids
    the thread pool's wake-up cost, which dominates such ops on a loaded machine (measured 15 ms per op)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def law2_masses():
    return bayes_region_masses(LAW2, 2_000_000, gen(12345))


# --- false-alarm rates ----------------------------------------------------------------------------------------
def test_moment_ztests_false_alarm_rate():
    """n = 2000 draws of LAW1 against its exact mean and variance: each z-test rejects ~alpha of the seeds, and the
    Holm-corrected pair (family-wise error <= alpha) no more."""
    rejections, family = np.zeros(2, dtype=int), 0
    for seed in SEEDS:
        p = moment_pvalues(LAW1.sample(2000, gen(seed)), LAW1.mean(), LAW1.covariance())
        rejections += p <= ALPHA
        family += bool(holm_reject(p, ALPHA).any())
    assert_in_band(int(rejections[0]), N_SEEDS, ALPHA, "mean z-test")
    assert_in_band(int(rejections[1]), N_SEEDS, ALPHA, "variance z-test")
    assert family <= band(N_SEEDS, ALPHA)[1]


def test_class_mass_false_alarm_rate_bayes_regions(law2_masses):
    masses, se = law2_masses
    weights = np.array([0.3, 0.2, 0.5])
    assert np.abs(masses - weights).max() > 20 * se.max()  # the Bayes-region masses really differ from the weights
    rejections = np.zeros(3, dtype=int)
    for seed in SEEDS:
        rejections += class_mass_pvalues(LAW2.sample(1000, gen(seed)), LAW2, expected=masses) <= ALPHA
    for c in range(3):  # the exact test is conservative through discreteness only: its size is a little under alpha
        assert_in_band(int(rejections[c]), N_SEEDS, ALPHA, f"class {c} mass")


def test_class_mass_false_alarm_rate_generating_labels():
    rejections = np.zeros(3, dtype=int)
    for seed in SEEDS:
        _, comp = LAW2.sample_with_components(1000, gen(seed))
        rejections += class_mass_pvalues(LAW2.labels[comp], LAW2) <= ALPHA  # expected = class weights
    for c in range(3):
        assert_in_band(int(rejections[c]), N_SEEDS, ALPHA, f"class {c} label mass")


def test_ks_false_alarm_rate():
    rejections = sum(ks_pvalue(LAW1.sample(300, gen(seed)), LAW1) <= ALPHA for seed in SEEDS)
    assert_in_band(rejections, N_SEEDS, ALPHA, "KS")


@pytest.mark.parametrize("test", [energy_distance_test, mmd_test])
def test_permutation_false_alarm_rate(test):
    """Two samples of 50 from LAW2; with 99 permutations P(p <= 0.05) = 5/100 exactly under exchangeability."""
    rejections = 0
    for seed in SEEDS[:N_SEEDS_PERM]:
        g = gen(seed)
        x, y = LAW2.sample(50, g), LAW2.sample(50, g)
        rejections += test(x, y, n_permutations=99, generator=g).pvalue <= ALPHA
    assert_in_band(rejections, N_SEEDS_PERM, ALPHA, test.__name__)


def _energy(x, y):
    """The energy statistic written out (Szekely & Rizzo 2004), Python floats, pairs in a fixed order."""
    def mean_dist(a, b):
        return sum(math.dist(p, q) for p in a for q in b) / (len(a) * len(b))
    return 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)


def _mmd(x, y, h):
    """The unbiased squared MMD (Gretton et al. 2012, eq. 3) with a Gaussian kernel of bandwidth h, written out."""
    def k(p, q):
        return math.exp(-0.5 * (math.dist(p, q) / h) ** 2)
    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    return xx + yy - 2 * sum(k(p, q) for p in x for q in y) / (n * m)


@pytest.mark.parametrize("test", ["energy", "mmd"])
def test_permutation_pvalue_is_one_plus_count_over_one_plus_b(test):
    """The p-value is (1 + #{T_perm >= T_obs}) / (1 + B) (Phipson & Smyth 2010), not #{...} / B. The permutations
    are the ones the test draws (torch.randperm from the same generator, after the observed split); each split's
    statistic is recomputed here from its definition, the count made, and the p-value must equal the formula
    exactly. n = 3 against m = 4 has 35 distinct splits, so with B = 199 the count is far from 0 and from B, where
    the two formulas differ by (B - k) / (B (B + 1)) >= 1e-4; splits are told apart only by their statistic, which
    is checked to differ from the observed one by far more than rounding unless the split is the observed one."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 2, dtype=torch.float64, generator=gen)
    y = torch.randn(4, 2, dtype=torch.float64, generator=gen) + 0.7
    b = 199
    stat = (lambda a, c: _energy(a, c)) if test == "energy" else (lambda a, c: _mmd(a, c, 1.5))
    result = (energy_distance_test(x, y, n_permutations=b, generator=torch.Generator().manual_seed(9))
              if test == "energy" else
              mmd_test(x, y, bandwidth=1.5, n_permutations=b, generator=torch.Generator().manual_seed(9)))
    pooled = torch.cat([x, y]).tolist()
    replay = torch.Generator().manual_seed(9)
    t_obs = stat(pooled[:3], pooled[3:])
    count = 0
    for _ in range(b):
        first = sorted(torch.randperm(7, generator=replay)[:3].tolist())
        t = stat([pooled[i] for i in first], [pooled[i] for i in range(7) if i not in first])
        if first == [0, 1, 2]:
            count += 1  # the observed split itself: equal, counted (ties count as >=)
        else:
            assert abs(t - t_obs) > 1e-9 * abs(t_obs), "a tie between distinct splits: the check is ambiguous"
            count += t >= t_obs
    assert 0 < count < b
    assert result.pvalue == (1 + count) / (1 + b)
    assert math.isclose(result.statistic, t_obs, rel_tol=1e-12)


@pytest.mark.parametrize("test", [energy_distance_test, mmd_test])
def test_permutation_pvalue_is_never_zero(test):
    """Two well-separated samples: no permuted split reaches the observed statistic (k = 0), and the p-value is
    exactly 1 / (B + 1), the smallest a permutation test can give; k / B would report 0."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(10, 2, dtype=torch.float64, generator=gen)
    y = torch.randn(10, 2, dtype=torch.float64, generator=gen) + 50.0
    result = test(x, y, n_permutations=99, generator=torch.Generator().manual_seed(2))
    assert result.pvalue == 1 / 100


# --- power against named alternatives -------------------------------------------------------------------------
def test_mean_ztest_power_against_a_shift_of_a_tenth_sd():
    """Alternative: N(0.1, 1) tested against N(0, 1), n = 1000; normal approximation z_test_power(0.1 sqrt(n))
    = 0.885."""
    n, delta = 1000, 0.1
    expected = float(z_test_power(delta * math.sqrt(n), ALPHA))
    rejections = sum(moment_pvalues(N01.sample(n, gen(seed)) + delta, N01.mean(), N01.covariance())[0] <= ALPHA
                     for seed in SEEDS)
    assert_in_band(int(rejections), N_SEEDS, expected, "mean z-test power")


def test_variance_ztest_power_against_ten_percent_inflation():
    """Alternative: N(0, 1.1) against N(0, 1), n = 2500; mean of the statistic 0.1 sqrt(n) / (sqrt(2) 1.1), power
    0.895."""
    n, r = 2500, 0.1
    expected = float(z_test_power(r * math.sqrt(n) / (math.sqrt(2) * (1 + r)), ALPHA))
    rejections = sum(moment_pvalues(N01.sample(n, gen(seed)) * math.sqrt(1 + r), N01.mean(), N01.covariance())[1]
                     <= ALPHA for seed in SEEDS)
    assert_in_band(int(rejections), N_SEEDS, expected, "variance z-test power")


def test_class_mass_power_against_a_mass_shift():
    """Alternative: class 0 has weight 0.35 instead of 0.30 (labels), n = 1000; power
    z_test_power(0.05 sqrt(n / (0.3 * 0.7))) = 0.93."""
    n, shifted = 1000, GaussianMixture([0.35, 0.15, 0.25, 0.25], LAW2.means, LAW2.covariances, labels=[0, 1, 2, 2])
    expected = float(z_test_power(0.05 * math.sqrt(n / (0.3 * 0.7)), ALPHA))
    rejections = 0
    for seed in SEEDS:
        _, comp = shifted.sample_with_components(n, gen(seed))
        rejections += class_mass_pvalues(LAW2.labels[comp], LAW2, classes=[0])[0] <= ALPHA
    assert_in_band(int(rejections), N_SEEDS, expected, "class mass power")


def test_ks_power_against_a_shift_of_a_tenth_sd():
    """Alternative N(0.1, 1) against N(0, 1), n = 1000. Bracket: KS rejects whenever |F_n(0) - 1/2| exceeds its
    critical value c = kstwo.isf(alpha, n) (D_n >= that deviation), so power >= Phi((sqrt(n) (1/2 - G(0)) - sqrt(n) c)
    / sqrt(G(0)(1 - G(0)))) = 0.42 with G(0) = Phi(-0.1); and no level-alpha test beats the Neyman-Pearson
    one-sided z-test, Phi(0.1 sqrt(n) - z_alpha) = 0.935."""
    n, delta = 1000, 0.1
    g0 = stats.norm.cdf(-delta)
    crit = stats.kstwo.isf(ALPHA, n)
    lower = stats.norm.cdf((math.sqrt(n) * (0.5 - g0) - math.sqrt(n) * crit) / math.sqrt(g0 * (1 - g0)))
    upper = stats.norm.cdf(delta * math.sqrt(n) - stats.norm.isf(ALPHA))
    rejections = sum(ks_pvalue(N01.sample(n, gen(seed)) + delta, N01) <= ALPHA for seed in SEEDS)
    assert band(N_SEEDS, lower)[0] <= rejections <= band(N_SEEDS, upper)[1], (rejections, lower, upper)


@pytest.mark.parametrize("test", [energy_distance_test, mmd_test])
def test_permutation_power_against_a_shift_of_half_an_sd(test):
    """Alternative: y ~ N(0.5, 1) against x ~ N(0, 1), n = m = 100 (small, to keep 100 seeds x 99 permutations
    fast). Reference: the two-sample z-test, optimal among location-invariant tests for this Gaussian alternative:
    two-sided power z_test_power(0.5 sqrt(nm/(n+m))) = 0.943, one-sided 0.971 (upper limit). Lower limit: the same
    formula at half the sample size, 0.705, i.e. an efficiency >= 1/2 relative to the z-test (1-D energy distance is a
    Cramer-von Mises statistic, whose Pitman efficiency for a normal shift is ~0.9; the median-bandwidth MMD is
    close to it)."""
    n, delta = 100, 0.5
    mu = delta * math.sqrt(n * n / (2 * n))
    lower, upper = float(z_test_power(mu / math.sqrt(2), ALPHA)), stats.norm.cdf(mu - stats.norm.isf(ALPHA))
    rejections = 0
    for seed in SEEDS[:N_SEEDS_PERM]:
        g = gen(seed)
        x, y = N01.sample(n, g), N01.sample(n, g) + delta
        rejections += test(x, y, n_permutations=99, generator=g).pvalue <= ALPHA
    assert band(N_SEEDS_PERM, lower)[0] <= rejections <= band(N_SEEDS_PERM, upper)[1], (rejections, lower, upper)


# --- Holm and families ----------------------------------------------------------------------------------------
def test_holm_hand_example():
    """Sorted: 0.005 <= 0.05/4 (reject), 0.01 <= 0.05/3 (reject), 0.03 > 0.05/2 (stop)."""
    assert holm_reject([0.01, 0.04, 0.03, 0.005], 0.05).tolist() == [True, False, False, True]


def naive_holm(p: list[float], alpha: float) -> list[bool]:
    order = sorted(range(len(p)), key=lambda i: p[i])
    reject = [False] * len(p)
    for rank, i in enumerate(order):
        if p[i] > alpha / (len(p) - rank):
            break
        reject[i] = True
    return reject


@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30), st.floats(0.001, 0.5))
def test_holm_matches_naive_step_down_and_lies_between_bonferroni_and_unadjusted(p, alpha):
    reject = holm_reject(p, alpha)
    assert reject.tolist() == naive_holm(p, alpha)
    arr = np.array(p)
    assert not (reject & (arr > alpha)).any()  # never more than the unadjusted tests
    assert reject[arr <= alpha / len(p)].all()  # at least Bonferroni
    if reject.any():  # monotone: every p-value below a rejected one is rejected
        assert reject[arr <= arr[reject].max()].all()


def test_run_family():
    perm = PermutationTest(0.3, 0.004, 249)
    results = run_family({"perm": perm, "pair": (1.7, 0.04), "ks": 0.03, "moments": np.array([0.01, 0.5])}, 0.05)
    assert [r.name for r in results] == ["perm", "pair", "ks", "moments[0]", "moments[1]"]
    assert results[0] == CheckResult("perm", 0.3, 0.004, 0.05, True)
    expected = holm_reject([0.004, 0.04, 0.03, 0.01, 0.5], 0.05)
    assert [r.rejected for r in results] == expected.tolist() == [True, False, False, True, False]
    assert run_family({}, 0.05) == []


# --- Frechet distance -----------------------------------------------------------------------------------------
def gaussian(mean, cov) -> GaussianMixture:
    return GaussianMixture([1.0], [mean], [cov])


def test_frechet_zero_for_identical_laws():
    for law in (gaussian([1.0, -2.0, 0.5], [[2.0, 0.5, 0.1], [0.5, 1.0, -0.3], [0.1, -0.3, 0.7]]), LAW2):
        scale = float(torch.trace(law.covariance()))
        assert frechet_distance(law, law) <= 1e-12 * scale


@pytest.mark.parametrize(("m1", "v1", "m2", "v2"), [(0.0, 1.0, 0.0, 4.0), (1.0, 0.3, -2.0, 0.3), (0.5, 1e-4, 3.0, 9.0)])
def test_frechet_closed_form_1d(m1, v1, m2, v2):
    value = frechet_distance(gaussian([m1], [[v1]]), gaussian([m2], [[v2]]))
    assert math.isclose(value, (m1 - m2) ** 2 + (math.sqrt(v1) - math.sqrt(v2)) ** 2, rel_tol=1e-12)


def test_frechet_symmetric_and_matches_commuting_closed_form():
    a = gaussian([0.0, 1.0], [[2.0, 0.8], [0.8, 1.0]])
    b = LAW2
    assert math.isclose(frechet_distance(a, b), frechet_distance(b, a), rel_tol=1e-12)
    # diagonal covariances commute: the trace term is sum (sqrt(s1_i) - sqrt(s2_i))^2
    c, d = gaussian([0.0, 0.0], [[4.0, 0.0], [0.0, 1.0]]), gaussian([1.0, 2.0], [[1.0, 0.0], [0.0, 9.0]])
    assert math.isclose(frechet_distance(c, d), 1 + 4 + 1 + 4, rel_tol=1e-12)


def test_frechet_of_narrow_laws_far_from_the_origin():
    """Variances near 1e-11 at means near 1.2e3: the law's covariance must be formed centred (sum_k pi_k (S_k +
    (mu_k - m)(mu_k - m)^T)); the uncentred sum_k pi_k (S_k + mu_k mu_k^T) - m m^T cancels terms of 1.4e6 and
    errs by ~u 1.4e6 = 3e-10, thirty times the variances. Exact: (m1 - m2)^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2 for
    diagonal covariances. Rounding: the mean difference is exact (Sterbenz), its square and the sums of d terms
    cost a few u; the trace term is tr S1 + tr S2 - 2 sum sqrt(eigenvalues) through two eigen-decompositions
    (backward stable): 64 d^2 u (|m1 - m2|^2 + tr S1 + tr S2) covers it."""
    m1 = np.array([1168.785563085969, -1238.7997830438712, 770.1329433466785])
    m2 = m1 + np.array([3e-6, -1e-6, 2e-6])
    a, b = np.array([2.5e-12, 1.6e-12, 3.1e-11]), np.array([6.5e-11, 1.6e-12, 1.4e-11])
    value = frechet_distance(gaussian(m1.tolist(), np.diag(a).tolist()), gaussian(m2.tolist(), np.diag(b).tolist()))
    exact = float(np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    assert abs(value - exact) <= 64 * 9 * 2.0**-53 * (float(np.sum((m1 - m2) ** 2)) + a.sum() + b.sum()), (value, exact)
    # a two-component mixture: its covariance S1 + the spread of the means, against the law of total covariance
    mix = GaussianMixture([0.5, 0.5], [[1e3 - 1e-5], [1e3 + 1e-5]], [[[1e-11]], [[1e-11]]])
    exact_var = 1e-11 + 1e-10  # the two means differ by 2e-5 (up to their rounding, 1e-13 relative)
    value = frechet_distance(mix, gaussian([1e3], [[exact_var]]))
    assert value <= 1e-3 * exact_var, value  # the same Gaussian moments: 0 up to the means' rounding


def test_frechet_from_samples_converges_to_the_law_value():
    """n = 1e5 draws of LAW2 against a fixed Gaussian: within 3 bootstrap standard errors (50 resamples) plus the
    O(1/n) bias; and against LAW2 itself, below 20 tr(S)/n (the mean term alone has expectation tr(S)/n)."""
    n, other = 100_000, gaussian([0.5, 0.0], [[1.5, 0.2], [0.2, 0.9]])
    x = LAW2.sample(n, gen(7))
    exact, estimate = frechet_distance(LAW2, other), frechet_distance(x, other)
    g = gen(8)
    boot = [frechet_distance(x[torch.randint(n, (n,), generator=g)], other) for _ in range(50)]
    trace = float(torch.trace(LAW2.covariance()))
    assert abs(estimate - exact) <= 3 * np.std(boot, ddof=1) + 10 * trace / n, (estimate, exact, np.std(boot))
    assert frechet_distance(x, LAW2) <= 20 * trace / n


# --- precision and recall -------------------------------------------------------------------------------------
def test_precision_recall_identical_laws_equal_level():
    """Both are P_p(H_p) = level; error: binomial SE plus the threshold's, each sqrt(level (1 - level) / n)."""
    level, n = 0.95, 100_000
    result = precision_recall(LAW2, LAW2, level=level, n_reference=n, generator=gen(3))
    se = math.sqrt(2 * level * (1 - level) / n)
    assert abs(result.precision - level) <= 4 * se and abs(result.recall - level) <= 4 * se
    samples = precision_recall(LAW2.sample(20_000, gen(4)), LAW2, level=level, n_reference=n, generator=gen(5))
    assert samples.recall is None and abs(samples.precision - level) <= 4 * math.sqrt(level * (1 - level) / 20_000
                                                                                  + level * (1 - level) / n)


def test_precision_recall_of_a_law_on_one_class():
    """Target 0.5 N(-3, 1) + 0.5 N(3, 1); model: its class 0, N(-3, 1). Exact values by root finding: the target's
    HDR is two intervals [3 - b, 3 - a] and mirror, with mass 0.95; precision = N(-3, 1) mass of it (~0.95); the
    model's HDR is [-3 - z, -3 + z] (z = 1.96) and recall = 0.5 * 0.95 + 0.5 * N(3, 1) mass of it (~0.475)."""
    level, n = 0.95, 100_000
    target = GaussianMixture([0.5, 0.5], [[-3.0], [3.0]], [[[1.0]], [[1.0]]])
    model = target.given(0)

    def pdf(x):
        return 0.5 * stats.norm.pdf(x, -3) + 0.5 * stats.norm.pdf(x, 3)

    def interval(c):  # {x > 0 : pdf(x) >= c} = [a, b] around the mode at 3
        return optimize.brentq(lambda x: pdf(x) - c, 0.0, 3.0), optimize.brentq(lambda x: pdf(x) - c, 3.0, 20.0)

    def mass(c):
        a, b = interval(c)
        return (stats.norm.cdf(b, 3) - stats.norm.cdf(a, 3)) + (stats.norm.cdf(-a, 3) - stats.norm.cdf(-b, 3))

    a, b = interval(optimize.brentq(lambda c: mass(c) - level, pdf(0.0) * 1.001, pdf(3.0) * 0.999))
    exact_precision = stats.norm.cdf(-a, -3) - stats.norm.cdf(-b, -3) + stats.norm.cdf(b, -3) - stats.norm.cdf(a, -3)
    z = stats.norm.isf((1 - level) / 2)
    exact_recall = 0.5 * level + 0.5 * (stats.norm.cdf(-3 + z, 3) - stats.norm.cdf(-3 - z, 3))
    result = precision_recall(model, target, level=level, n_reference=n, generator=gen(6))
    # threshold error: the region's target mass moves by sqrt(l(1-l)/n), the model's by at most twice that (q/p <= 2)
    se_threshold = 2 * math.sqrt(level * (1 - level) / n)
    assert abs(result.precision - exact_precision) <= 4 * math.hypot(result.precision_se, se_threshold)
    assert abs(result.recall - exact_recall) <= 4 * math.hypot(result.recall_se, se_threshold)
    assert result.precision > 0.9 and 0.45 < result.recall < 0.5


# --- input validation -----------------------------------------------------------------------------------------
X2 = torch.zeros(10, 2, dtype=torch.float64)
X3 = torch.zeros(10, 3, dtype=torch.float64)
EMPTY = torch.zeros(0, 2, dtype=torch.float64)


@pytest.mark.parametrize(("call", "name"), [
    (lambda: energy_distance_test(X2, X3, generator=gen(0)), "y"),
    (lambda: mmd_test(EMPTY, X2, generator=gen(0)), "x"),
    (lambda: mmd_test(X2, X2, bandwidth=-1.0, generator=gen(0)), "bandwidth"),
    (lambda: energy_distance_test(X2, X2, n_permutations=0, generator=gen(0)), "n_permutations"),
    (lambda: frechet_distance(X2, X3), "law_or_samples"),
    (lambda: frechet_distance(X3, LAW2), "law_or_samples"),
    (lambda: frechet_distance(EMPTY, LAW2), "x"),
    (lambda: class_mass_pvalues(X3, LAW2, expected=[0.3, 0.2, 0.5]), "samples"),
    (lambda: class_mass_pvalues(np.zeros(0, dtype=int), LAW2), "samples"),
    (lambda: class_mass_pvalues(np.array([0, 5]), LAW2), "samples"),
    (lambda: class_mass_pvalues(X2, LAW2), "expected"),
    (lambda: class_mass_pvalues(X2, LAW2, expected=[0.5, 0.5]), "expected"),
    (lambda: class_mass_pvalues(X2, LAW2, expected=[0.3, 0.2, 0.5], classes=[7]), "classes"),
    (lambda: ks_pvalue(torch.zeros(0), LAW1), "samples_1d"),
    (lambda: ks_pvalue(X2, LAW2), "law_1d"),
    (lambda: precision_recall(LAW1, LAW2, generator=gen(0)), "model"),
    (lambda: precision_recall(X3, LAW2, generator=gen(0)), "model"),
    (lambda: precision_recall(EMPTY, LAW2, generator=gen(0)), "model"),
    (lambda: precision_recall(X2, LAW2, level=1.0, generator=gen(0)), "level"),
    (lambda: run_family({"a": 0.01}, 0.0), "alpha"),
    (lambda: run_family({"a": 0.01}, 1.0), "alpha"),
    (lambda: run_family({"a": 0.01}, 1.5), "alpha"),
    (lambda: run_family({"a": 1.5}, 0.05), "pvalues"),
    (lambda: holm_reject([0.01], -0.1), "alpha"),
    (lambda: z_test_power(1.0, 1.0), "alpha"),
    (lambda: bayes_region_masses(LAW2, 0, gen(0)), "n"),
    (lambda: holm_reject([0.01, float("nan")], 0.05), "pvalues"),
    (lambda: moment_pvalues(X2, [0.0], torch.eye(2)), "mean"),
    (lambda: moment_pvalues(X2, [0.0, 0.0], torch.eye(3)), "cov"),
    (lambda: moment_pvalues(X2 + float("nan"), [0.0, 0.0], torch.eye(2)), "samples"),
    (lambda: mmd_test(X2, X2, bandwidth=float("nan"), generator=gen(0)), "bandwidth"),
])
def test_invalid_input_raises_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        call()


@pytest.mark.parametrize(("call", "name"), [
    (lambda: frechet_distance(X2.to(torch.complex128), LAW2), "x"),
    (lambda: frechet_distance("samples", LAW2), "x"),
    (lambda: frechet_distance(X2 > 0, LAW2), "x"),
    (lambda: energy_distance_test(X2, X2.to(torch.complex64), generator=gen(0)), "y"),
    (lambda: mmd_test(X2, X2, generator=7), "generator"),
    (lambda: class_mass_pvalues(np.array([True, False]), LAW2), "samples"),
    (lambda: moment_pvalues(X2.half(), [0.0, 0.0], torch.eye(2)), "samples"),
    (lambda: precision_recall(X2, "LAW2", generator=gen(0)), "target"),
])
def test_wrong_kinds_raise_type_error_naming_the_argument(call, name):
    """docs/input-policy.md: complex, bool, strings, float16 are the wrong kind of value (TypeError), never read as
    numbers (a complex sample used to lose its imaginary part silently)."""
    with pytest.raises(TypeError, match=rf"^{name}:"):
        call()
