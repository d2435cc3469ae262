"""CFG with a Langevin corrector against the exact tilted target (verify.tilted_langevin)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from toy_models import AnalyticDenoiser, get_schedule, get_world
from verify import rules
from verify.exact_law import discrete_sampler_law
from verify.metrics import holm_reject, two_sided_p, z_test_power
from verify.samplers import ddim, ddpm, time_grid
from verify.tilted import tilted_law
from verify.tilted_langevin import AffineEps, cfg_langevin, cfg_langevin_law, corrector_table

F64 = torch.float64
U = 2.0**-53
WS = (1.0, 3.0, 7.0)
#: family-wise false-alarm rate of every Holm family here: that of one two-sided 4-standard-error test
FAMILY_ALPHA = float(2.0 * (1.0 - 0.5 * (1.0 + math.erf(4.0 / math.sqrt(2.0)))))
WORLD = get_world("gauss1d")
DEN = AnalyticDenoiser(WORLD, "vp-linear")


def _guided(w: float):
    return rules.get("cfg", w=w).guide(DEN, 1)


def _pi(w: float) -> tuple[float, float]:
    summary = tilted_law(WORLD, rules.get("cfg", w=w), 1).summary()
    return float(summary.mean[0]), float(summary.cov[0, 0])


def _z(sample: torch.Tensor, mean: float, var: float) -> tuple[float, float]:
    """z-scores of a Gaussian sample's mean and variance against (mean, var): SEs sqrt(var/n), var sqrt(2/(n-1))."""
    n = sample.numel()
    return ((float(sample.mean()) - mean) / math.sqrt(var / n),
            (float(sample.var()) - var) / (var * math.sqrt(2.0 / (n - 1))))


@pytest.mark.parametrize("w", WS)
def test_zero_corrector_steps_is_plain_cfg(w: float) -> None:
    guided, grid = _guided(w), time_grid(10, 1.0, 0.0)
    x = torch.randn(300, 1, dtype=F64, generator=torch.Generator().manual_seed(3))
    # sampler: the same draws in the same order, the same per-step arithmetic: equal to the bit
    got = cfg_langevin(guided, x, grid, corrector_steps=0, step_size=0.01, generator=torch.Generator().manual_seed(4))
    want = ddpm(guided, x, grid, generator=torch.Generator().manual_seed(4))
    assert torch.equal(got, want)
    got = cfg_langevin(guided, x, grid, corrector_steps=0, step_size=0.01, predictor="ddim",
                       generator=torch.Generator().manual_seed(4))
    assert torch.equal(got, ddim(guided, x, grid))
    # law: K = 0 is DDPM-CFG's exact law on the same grid; both propagate (mean, cov) step by step through the same
    # affine columns, so they agree to rounding (a few u per step over 10 steps: 64 u of the moments' magnitude)
    mean, cov = cfg_langevin_law(guided, grid, corrector_steps=0, step_size=0.01)
    ref_mean, ref_cov = discrete_sampler_law("ddpm", guided, grid, condition=None)
    assert abs(float(mean[0] - ref_mean[0])) <= 64 * U * max(1.0, abs(float(ref_mean[0])))
    assert abs(float(cov[0, 0] - ref_cov[0, 0])) <= 64 * U * float(ref_cov[0, 0])
    # and it is not pi: CFG's own law misses the tilted target (the alternative the agreement test must reject)
    pm, pv = _pi(w)
    assert abs(float(ref_mean[0]) - pm) > 0.1 and abs(float(ref_cov[0, 0]) - pv) > 0.05


def test_corrector_alone_reaches_the_unadjusted_langevin_fixed_point() -> None:
    """At one time s, K -> infinity Langevin steps on q_s = N(mu, 1/A) end at N(mu, 1/(A (1 - hA/2))) (the module
    docstring's bias), mu and A from the noised branch laws in closed form."""
    w, h, s = 3.0, 0.05, 0.5
    g = 1.0 + w
    alpha, sigma = (float(v) for v in get_schedule("vp-linear").alpha_sigma(s))
    c_cond, c_unc = 0.5 * alpha**2 + sigma**2, alpha**2 + sigma**2  # noised variances of N(1, .5) and N(0, 1)
    prec = g / c_cond - (g - 1.0) / c_unc
    mu = g * alpha / c_cond / prec  # (g alpha m_c / C_c + (1 - g) alpha m_u / C_u) / A with m_u = 0
    # contraction (1 - hA)^K: hA ~ 0.15 here, 2000 steps leave (0.85)^2000 ~ 1e-141 of the start's distance
    mean, cov = cfg_langevin_law(_guided(w), [1.0, s], corrector_steps=2000, step_size=h)
    # the fixed point is reached to rounding; each step's map has a few roundings and it contracts, so the
    # accumulated error is ~ (ops per step) u / (hA) of the magnitude: 64 u / 0.15 < 1e3 u
    assert abs(float(mean[0]) - mu) <= 1e3 * U * max(1.0, abs(mu))
    assert abs(float(cov[0, 0]) - 1.0 / (prec * (1.0 - 0.5 * h * prec))) <= 1e3 * U / prec


def test_affine_eps_is_the_guided_eps() -> None:
    guided = _guided(3.0)
    fast = AffineEps(guided)
    x = 3.0 * torch.randn(500, 1, dtype=F64, generator=torch.Generator().manual_seed(5))
    for t in (0.9, 0.3, 0.01):
        want = guided.eps(x, t)
        # the analytic eps and b + J x are each a few dozen roundings of magnitudes up to |eps| + |J||x|: 128 u of
        # that magnitude
        scale = float(want.abs().max()) + float(x.abs().max()) * float(fast.coefficients(t)[1].abs().max()) + 1.0
        assert float((fast.eps(x, t) - want).abs().max()) <= 128 * U * scale
    bimodal = AnalyticDenoiser(get_world("bimodal1d"), "vp-linear")
    with pytest.raises(ValueError, match="^denoiser:"):
        AffineEps(rules.get("cfg", w=3.0).guide(bimodal, 1)).eps(x, 0.3)


def test_exact_law_is_the_sampler_law() -> None:
    """Monte Carlo of cfg_langevin (n = 2e4) against cfg_langevin_law at K = 5, 20 uniform steps, for each w: 6
    z-scores, Holm at FAMILY_ALPHA (6.3e-5 family-wise false alarms). Power: a variance off by 5% gives a variance z
    of 0.05 sqrt(n)/(sqrt 2 * 1.05) = 4.8, detected with probability z_test_power(4.8, FAMILY_ALPHA / 6) > 0.5."""
    n, grid, zs = 20_000, time_grid(20, 1.0, 1e-3), []
    for w in WS:
        guided = _guided(w)
        mean, cov = cfg_langevin_law(guided, grid, corrector_steps=5, step_size=0.05)
        gen = torch.Generator().manual_seed(int(10 * w))
        x = torch.randn(n, 1, dtype=F64, generator=gen)
        out = cfg_langevin(AffineEps(guided), x, grid, corrector_steps=5, step_size=0.05, generator=gen)[:, 0]
        zs.extend(_z(out, float(mean[0]), float(cov[0, 0])))
    assert not holm_reject(two_sided_p(zs), FAMILY_ALPHA).any(), zs
    assert float(z_test_power(0.05 * math.sqrt(n) / (math.sqrt(2) * 1.05), FAMILY_ALPHA / 6)) > 0.5


@pytest.mark.parametrize("w", WS)
def test_distance_to_pi_decreases_with_k(w: float) -> None:
    """Exact laws (no sampling): the 2-Wasserstein distance of the output to pi falls at every K in {0, 1, 2, 5,
    10, 20} (50 log-SNR steps, h = 0.01 v_pi; the Langevin bias floor, 0.005 v_pi in the variance, lies below)."""
    pm, pv = _pi(w)
    rows = corrector_table((w,), (0, 1, 2, 5, 10, 20))
    dist = [math.hypot(r.mean_error, math.sqrt(pv + r.var_error) - math.sqrt(pv)) for r in rows]
    assert all(b < a for a, b in zip(dist[:-1], dist[1:], strict=True)), dist
    assert dist[-1] < 0.05 * dist[0]


def test_many_corrector_steps_reach_pi() -> None:
    """n = 2e4 samples of CFG-DDPM with K = 50 Langevin steps per predictor step (50 log-SNR steps to t = 1e-3,
    h = 0.01 v_pi) against pi's closed-form moments, w = 1, 3, 7: 6 z-scores, Holm at FAMILY_ALPHA.

    False alarms: the sampler's exact law is off pi by its finite K, finite h and t_end > 0; those offsets b are
    computed exactly (cfg_langevin_law), so each z is N(b, 1) (the variance's z to the chi-square's normal
    approximation at n = 2e4, skewness sqrt(8/n) = 0.02), and the family-wise false-alarm rate is at most
    sum_i P(|Z + b_i| > 4.53) (4.53: Holm's first threshold at FAMILY_ALPHA / 6), computed below from the exact
    offsets and checked under 1e-3.
    Power against CFG's own law (K = 0): its exact offsets, in the same standard errors, are checked to exceed
    4.53 + 4, so a sample from it is rejected with probability > Phi(4) = 0.99997."""
    n, grid, kappa, k = 20_000, time_grid(50, 1.0, 1e-3, "log_snr", "vp-linear"), 0.01, 50
    threshold = float(stats.norm.isf(FAMILY_ALPHA / 12))  # Holm's first two-sided threshold over 6 tests: 4.53
    zs, offsets = [], []
    for w in WS:
        pm, pv = _pi(w)
        se_m, se_v = math.sqrt(pv / n), pv * math.sqrt(2.0 / (n - 1))
        guided = _guided(w)
        mean, cov = cfg_langevin_law(guided, grid, corrector_steps=k, step_size=kappa * pv)
        offsets += [abs(float(mean[0]) - pm) / se_m, abs(float(cov[0, 0]) - pv) / se_v]
        cfg_mean, cfg_cov = cfg_langevin_law(guided, grid, corrector_steps=0, step_size=kappa * pv)
        assert max(abs(float(cfg_mean[0]) - pm) / se_m, abs(float(cfg_cov[0, 0]) - pv) / se_v) > threshold + 4
        gen = torch.Generator().manual_seed(int(100 + w))
        x = torch.randn(n, 1, dtype=F64, generator=gen)
        out = cfg_langevin(AffineEps(guided), x, grid, corrector_steps=k, step_size=kappa * pv, generator=gen)
        zs.extend(_z(out[:, 0], pm, pv))
    false_alarm = sum(float(stats.norm.sf(threshold - b) + stats.norm.sf(threshold + b)) for b in offsets)
    assert false_alarm < 1e-3, (offsets, false_alarm)
    assert not holm_reject(two_sided_p(zs), FAMILY_ALPHA).any(), zs
    assert np.isclose(FAMILY_ALPHA, 6.334e-5, rtol=1e-3)


def test_snr_rule_runs_and_corrects() -> None:
    """Song et al.'s batch-norm step (snr = 0.1, so hA ~ 2 snr^2 = 0.02): K = 20 moves DDPM-CFG's mean towards pi
    by more than 10 standard errors of n = 5000 samples (exact K = 0 offset: 0.30, about 18 SE at w = 3)."""
    w, n = 3.0, 5000
    pm, pv = _pi(w)
    guided = AffineEps(_guided(w))
    grid = time_grid(30, 1.0, 1e-3, "log_snr", "vp-linear")
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(n, 1, dtype=F64, generator=gen)
    plain = cfg_langevin(guided, x, grid, corrector_steps=0, snr=0.1, generator=gen)[:, 0]
    corrected = cfg_langevin(guided, x, grid, corrector_steps=20, snr=0.1, generator=gen)[:, 0]
    se = math.sqrt(pv / n)
    assert abs(float(plain.mean()) - pm) - abs(float(corrected.mean()) - pm) > 10 * se


@pytest.mark.parametrize("call, match", [
    (lambda g, x: cfg_langevin(g, x, [1.0, 0.5], corrector_steps=-1, step_size=0.1,
                               generator=torch.Generator()), "^corrector_steps:"),
    (lambda g, x: cfg_langevin(g, x, [1.0, 0.5], corrector_steps=True, step_size=0.1,
                               generator=torch.Generator()), "^corrector_steps:"),
    (lambda g, x: cfg_langevin(g, x, [1.0, 0.5], corrector_steps=1, generator=torch.Generator()), "^step_size, snr:"),
    (lambda g, x: cfg_langevin(g, x, [1.0, 0.5], corrector_steps=1, step_size=0.1, snr=0.1,
                               generator=torch.Generator()), "^step_size, snr:"),
    (lambda g, x: cfg_langevin(g, x, [1.0, 0.5], corrector_steps=1, step_size=-0.1,
                               generator=torch.Generator()), "^step_size:"),
    (lambda g, x: cfg_langevin(g, x, [1.0, 0.5], corrector_steps=1, step_size=lambda s, a, sg: float("nan"),
                               generator=torch.Generator()), "^step_size:"),
    (lambda g, x: cfg_langevin(g, x, [1.0, 0.5], corrector_steps=1, snr=0.0,
                               generator=torch.Generator()), "^snr:"),
    (lambda g, x: cfg_langevin(g, x, [1.0, 0.5], corrector_steps=1, step_size=0.1, predictor="heun",
                               generator=torch.Generator()), "^predictor:"),
    (lambda g, x: cfg_langevin(g, x, [0.5, 1.0], corrector_steps=1, step_size=0.1,
                               generator=torch.Generator()), "^timesteps:"),
    (lambda g, x: cfg_langevin(g, x[:, None], [1.0, 0.5], corrector_steps=1, step_size=0.1,
                               generator=torch.Generator()), "^x:"),
    (lambda g, x: cfg_langevin(g, x, [1.0, 0.5], corrector_steps=1, step_size=lambda s, a, sg: 0.0,
                               generator=torch.Generator()), "^step_size:"),
    (lambda g, x: cfg_langevin_law(g, [1.0, 0.5], corrector_steps=1, step_size=None), "^step_size, snr:"),
    (lambda g, x: corrector_table(kappa=2.5), "^kappa:"),
    (lambda g, x: corrector_table(n=1), "^n:"),
    (lambda g, x: corrector_table(world="ring2d"), "^world:"),
])
def test_refusals_name_the_argument(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(_guided(3.0), torch.zeros(4, 1, dtype=F64))


def test_type_refusals() -> None:
    x = torch.zeros(4, 1, dtype=F64)
    with pytest.raises(TypeError, match="^denoiser:"):
        cfg_langevin("den", x, [1.0, 0.5], corrector_steps=1, step_size=0.1, generator=torch.Generator())
    with pytest.raises(TypeError, match="^generator:"):
        cfg_langevin(_guided(3.0), x, [1.0, 0.5], corrector_steps=1, step_size=0.1, generator=0)
