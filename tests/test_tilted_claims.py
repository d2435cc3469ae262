"""The records of the samplers of the tilted target (L-TILTED-EXACT, L-FKC-EXACT, L-BN-LANGEVIN, and the exact sampler
in S0-PROP2-SAMPLES) follow from their evidence (verify.evidence.tilted_samplers), the evidence's statistics are
calibrated, and a wrong sampler in place of the exact one is caught."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import stats

from toy_models import AnalyticDenoiser, get_world
from verify import rules
from verify.claims.tilted_samplers import (
    ALPHA,
    MIN_POWER,
    exact_family,
    fkc_findings,
    power_against_cfg,
    tilted_exact,
)
from verify.evidence.tilted_samplers import (
    COEF,
    CONDITIONS,
    QUICK_EXACT_N,
    QUICK_LEVELS,
    WORLDS,
    WS,
    TabulatedEps,
    exact_case,
    noised_cdf,
    richardson_ks,
)
from verify.metrics import holm_reject
from verify.tilted import tilted_law
from verify.tilted_noised import NoisedTilted

IDS = ("L-TILTED-EXACT", "L-FKC-EXACT", "L-BN-LANGEVIN")


@pytest.fixture(scope="module")
def records(ledger):
    return ledger(*IDS)


@pytest.fixture(scope="module")
def samplers(quick_evidence):
    return quick_evidence.get("tilted_samplers")


# ----------------------------------------------------------------------------------------------------------------
# L-TILTED-EXACT
# ----------------------------------------------------------------------------------------------------------------
def test_tilted_exact_record(records, samplers):
    """The verdict is the Holm family's and the power's (recomputed here from the provider), every world and w is
    present, and the exact sampler's moments agree with the target (|z| < 4.5: the family's first Holm threshold at
    1 % over 33 tests is |z| > 3.6, so a case this far would have been rejected)."""
    record = records["L-TILTED-EXACT"]
    family = exact_family(samplers.exact)
    assert len(family) == 3 * 3 + 3 * 3 + 3 * 5  # 1-D: mean, var, KS; 2-D: two means, two variances, KS
    rejected = holm_reject(list(family.values()), ALPHA)
    least_power = min(p for by_w in power_against_cfg(samplers, ALPHA / len(family)).values()
                      for row in by_w.values() for p in row.values())
    expected = "fails" if rejected.any() else ("holds" if least_power >= MIN_POWER else "conditional")
    assert record.verdict == expected
    assert record.evidence["least_power"] == pytest.approx(least_power)
    for world in WORLDS:
        for w in WS:
            entry = record.evidence["samplers"][world][w]
            assert all(abs(z) < 4.5 for z in entry["z"].values()), (world, w, entry["z"])
            assert 0.0 <= entry["ks_pvalue"] <= 1.0
            assert entry["levels"] == list(QUICK_LEVELS)
    # the deterministic references of the same dynamics agree with pi within their error bounds
    assert all(r["agrees"] for by_w in record.evidence["deterministic_references"].values() for r in by_w.values())


def test_the_remaining_richardson_bias_is_small(samplers):
    """On gauss1d the extrapolated law is exact (no sampling): its remaining bias is below 0.2 standard errors of
    the extrapolation in the moments and in the KS statistic's units, so the tests' null is the nominal one to within
    a factor 1.2 at the first Holm threshold (P(|Z + 0.2| > 3.6) / P(|Z| > 3.6) = 1.17)."""
    for w in WS:
        bias = samplers.exact["gauss1d"][w].richardson_bias
        assert bias is not None and max(abs(v) for v in bias.values()) < 0.2, (w, bias)
    assert all(samplers.exact[world][WS[0]].richardson_bias is None for world in ("bimodal1d", "ring2d"))


def test_cfg_in_place_of_the_exact_sampler_fails(samplers):
    """The same procedure run with CFG's guided denoiser in place of the tilted one (gauss1d and bimodal1d, every w;
    2e4 draws per run, the quick evidence's 2000 giving too little power against bimodal1d's SDE law at w = 1)
    turns the record to "fails", and the rejected tests are those cases' (ring2d's exact runs are kept and pass)."""
    exact = {world: dict(by_w) for world, by_w in samplers.exact.items()}
    for i, name in enumerate(("gauss1d", "bimodal1d")):
        world = get_world(name)
        for j, w in enumerate(WS):
            wrong = rules.get("cfg", w=float(w)).guide(AnalyticDenoiser(world), CONDITIONS[name])
            exact[name][w] = exact_case(world, w, wrong, n=10 * QUICK_EXACT_N, levels=QUICK_LEVELS, coef=COEF,
                                        seed=100 + 10 * i + j, edges=samplers.edges[name],
                                        reference=samplers.exact[name][w].reference)
    decision = tilted_exact(dataclasses.replace(samplers, exact=exact))
    assert decision.verdict == "fails"
    rejected = decision.evidence["holm"]["rejected"]
    for name in ("gauss1d", "bimodal1d"):
        for w in WS:
            assert any(r.startswith(f"{name} w={w} ") for r in rejected), (name, w, rejected)
    assert not any(r.startswith("ring2d") for r in rejected)


def test_richardson_ks_null_and_power():
    """False alarms: 200 seeds of three independent N(0, 1) samples of 400 (the null, the Richardson weights of the
    evidence) reject at 5 % a number of times inside the 99.9 % interval of Binomial(200, 0.05) (the asymptotic
    null's O(n^-1/2) error is within it). Power: against N(0.3, 1) (shift 0.3 sd; KS power at n_eff = 400 / 3.35^2 =
    36, about 0.4 at 5 %) it rejects more often than the null's 99.9 % upper bound."""
    lo, hi = stats.binom.ppf([0.0005, 0.9995], 200, 0.05)
    count_null = count_alt = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        runs = [rng.standard_normal(400) for _ in COEF]
        count_null += richardson_ks(runs, COEF, stats.norm.cdf)[1] < 0.05
        count_alt += richardson_ks([r + 0.3 for r in runs], COEF, stats.norm.cdf)[1] < 0.05
    assert lo <= count_null <= hi, count_null
    assert count_alt > hi, count_alt


def test_richardson_ks_of_one_run_is_the_usual_ks():
    """With one run and weight 1 the statistic is scipy's KS statistic exactly (same sup over the sample points)."""
    x = np.random.default_rng(1).standard_normal(500)
    d, _ = richardson_ks([x], (1.0,), stats.norm.cdf)
    assert d == pytest.approx(stats.kstest(x, stats.norm.cdf).statistic, abs=1e-15)


def test_quadrature_cdf_matches_the_closed_form_within_its_bound():
    """The target's CDF by quadrature and convolution (the route bimodal1d and ring2d use) against the normal CDF on
    gauss1d, at t = 0 and at the samplers' end: the difference is within the reported bound, which is below 1e-4
    (far below the KS tests' resolution 1 / sqrt(n) >= 3e-3)."""
    world = get_world("gauss1d")
    law = tilted_law(world, rules.get("cfg", w=3.0), 1)
    target = NoisedTilted(law)
    x = np.linspace(0.0, 3.2, 301)
    for t in (0.0, 1e-3):
        alpha, sigma = target.alpha_sigma(t)
        exact, zero = noised_cdf(law, alpha, sigma)
        quad, bound = noised_cdf(law, alpha, sigma, quadrature=True)
        assert zero == 0.0 and bound < 1e-4
        assert float(np.abs(quad(x) - exact(x)).max()) <= bound, t


def test_tabulated_eps_is_within_its_bound_and_refuses_a_coarse_table():
    world = get_world("bimodal1d")
    guided = rules.get("cfg", w=3.0).guide(AnalyticDenoiser(world), 1)
    fast = TabulatedEps(guided)
    x = torch.linspace(-1.0, 4.0, 777, dtype=torch.float64)[:, None]
    for t in (0.02, 0.3, 0.9):
        exact = guided.eps(x, t)
        # the midpoint estimate tracks the spline's error; allow it twice over at points between the nodes
        assert float((fast.eps(x, t) - exact).abs().max()) <= 2 * max(fast.largest_error, 1e-15)
    with pytest.raises(ValueError, match="^max_error"):
        TabulatedEps(guided, nodes=8, max_error=1e-14).eps(x, 0.02)


# ----------------------------------------------------------------------------------------------------------------
# L-FKC-EXACT
# ----------------------------------------------------------------------------------------------------------------
def test_fkc_record(records, quick_evidence):
    """The verdict follows from the findings recomputed from the provider; the N -> infinity law's bias is first
    order in the step (exact: no sampling), and the Monte Carlo rows carry their intervals."""
    record = records["L-FKC-EXACT"]
    fc = quick_evidence.get("fkc_convergence")
    findings = fkc_findings(fc)
    limit_ok = all(f["first_order_in_h"] for f in findings.values())
    mc_ok = all(f["rate_interval_contains_half"] and not f["biased_at_n"] for f in findings.values())
    assert record.verdict == ("fails" if not limit_ok else ("holds" if mc_ok else "conditional"))
    assert limit_ok  # the weights correct the drift: first order at every w
    for w in WS:
        biases = [abs(fc.limit[w][str(k)]["bias_mean"]) for k in fc.steps]
        assert all(b > a / 2.3 and b < a / 1.7 for a, b in zip(biases, biases[1:], strict=False)), biases
        for row in fc.errors[w].values():
            lo, hi = row["rmse_mean_ci"]
            assert lo < row["rmse_mean"] < hi
    assert set(record.evidence["weight_second_moment"]) == set(WS)


# ----------------------------------------------------------------------------------------------------------------
# L-BN-LANGEVIN
# ----------------------------------------------------------------------------------------------------------------
def test_bn_langevin_record(records, quick_evidence):
    """K needed is the smallest K from which the exact law stays within 1.96 standard errors of 1e5 draws (checked
    on the bisected rows: K - 1 is outside), plain CFG (K = 0) is far outside, and the verdict follows."""
    record = records["L-BN-LANGEVIN"]
    lc = quick_evidence.get("langevin_convergence")

    def within(row):
        return abs(row["z_mean"]) <= lc.z_within and abs(row["z_var"]) <= lc.z_within

    for w in WS:
        k = lc.k_needed[w]
        assert k is not None
        rows = lc.gauss1d[w]
        assert within(rows[str(k)]) and not within(rows[str(k - 1)]), (w, k)
        assert all(within(r) for key, r in rows.items() if int(key) >= k)
        assert not within(rows["0"])
        # the exact law's z-scores follow from its moments and pi's closed form N(2(1+w)/(2+w), 1/(2+w))
        wf = float(w)
        v = 1.0 / (2.0 + wf)
        assert rows[str(k)]["z_mean"] == pytest.approx(
            (rows[str(k)]["mean"] - 2.0 * (1.0 + wf) / (2.0 + wf)) / math.sqrt(v / lc.n_reference), rel=1e-9)
    ks = [lc.k_needed[w] for w in WS]
    grows = all(a <= b for a, b in zip(ks, ks[1:], strict=False)) and ks[-1] > ks[0]
    rejected = record.evidence["bimodal1d_rejected_at_k_needed"]
    zero = record.evidence["plain_cfg_rejected_on_bimodal1d"]
    assert record.verdict == ("holds" if grows and not rejected and zero else "conditional")


# ----------------------------------------------------------------------------------------------------------------
# S0-PROP2-SAMPLES
# ----------------------------------------------------------------------------------------------------------------
def test_prop2_samples_shows_the_exact_sampler(ledger, samplers):
    """The record shows the exact sampler beside CFG's laws; its verdict is unchanged ("fails": neither CFG law is
    the target for w > 0) while the exact sampler's moments are the target's (|z| < 4.5)."""
    record = ledger("S0-PROP2-SAMPLES")["S0-PROP2-SAMPLES"]
    assert record.verdict == "fails"
    shown = record.evidence["exact_sampler"]
    assert set(shown) == set(WORLDS)
    for world in WORLDS:
        for w in WS:
            assert abs(shown[world][w]["z_mean"]) < 4.5 and abs(shown[world][w]["z_var"]) < 4.5
            assert shown[world][w]["mean"] == samplers.exact[world][w].mean[0]
