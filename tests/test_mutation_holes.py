"""Tests that close the holes mutation testing found (``benchmarks/mutation.py``).

Each test names the mutant it kills: a realistic bug that the rest of the suite let through. Every test passes on
the real code and fails on its mutant (checked with ``python benchmarks/mutation.py --only ID``). Tolerances are
derived in comments (``u`` is the unit roundoff of the dtype: 2^-53 in float64, 2^-24 in float32).
"""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest
import torch

from toy_models import GaussianMixture, get_world
from toy_models._checks import as_real_tensor
from toy_models.world import World
from verify.tolerances import log_prob_rounding_bound, unit_roundoff

F64, F32 = torch.float64, torch.float32
U64, U32 = unit_roundoff(F64), unit_roundoff(F32)


# These tests push small tensors through many steps: on the loaded 2-core machine intra-op threads only add
# synchronisation (the SDE reference test below: 15 s with 2 threads, about 1 s with 1; as in
# tests/test_exact_law.py).
pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------------------------
# toy_models.gaussian_mixture
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("world_name", "condition"), [("attributes2d", "red"), ("attributes2d", ("blue", "cat")),
                                                       ("ring2d", 2)])
def test_log_condition_posterior_is_bayes_rule(world_name, condition):
    """GM-POSTERIOR-AXIS: log p(c|x) = log P(c) + log p(x|c) - log p(x), row by row, by an independent route
    (the renormalised sub-mixture of ``given``), at more points than components so that a reduction over the
    wrong axis cannot hide behind a square shape."""
    gm = get_world(world_name).unconditional
    x = torch.tensor([[0.3, -0.2], [-2.0, 2.0], [2.5, -1.0], [0.0, 4.0], [-3.0, -3.0], [1.0, 1.0], [6.0, 0.5],
                      [-1.5, 2.5], [0.0, -3.0], [3.0, 3.0], [-4.0, 0.5]], dtype=F64)
    assert x.shape[0] > gm.n_components
    sub = gm.given(condition)
    mass = float(gm.weights[gm.matches(condition)].sum())
    got = gm.log_condition_posterior(x, condition)
    ref = math.log(mass) + sub.log_prob(x) - gm.log_prob(x)
    # Each log_prob is within its derived bound (verify.tolerances); log P(c) is a sum of at most K weights and a
    # log (K + 1 roundings of terms <= 1, so (K + 1) u absolute on the log); the final subtraction and the
    # reference's two additions round the result's terms (3 u of their magnitudes).
    terms = abs(math.log(mass)) + sub.log_prob(x).abs() + gm.log_prob(x).abs()
    tol = (log_prob_rounding_bound(sub, x) + 2 * log_prob_rounding_bound(gm, x)
           + (gm.n_components + 1) * U64 + 3 * U64 * terms)
    assert got.shape == (x.shape[0],)
    assert bool(((got - ref).abs() <= tol).all()), f"max err {float((got - ref).abs().max()):.3g}"


# --------------------------------------------------------------------------------------------------------------
# toy_models._checks
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("dtype", "limit"), [(F32, 2**24), (F64, 2**53)])
def test_integers_up_to_the_exact_limit_are_accepted_and_beyond_refused(dtype, limit):
    """CHK-EXACT-INT: every integer with |n| <= 2^(p) is exactly representable in a p-bit significand (2^24 in
    float32, 2^53 in float64), so the limit itself is converted, exactly, and the next integer is refused."""
    got = as_real_tensor(torch.tensor([limit, -limit, 3], dtype=torch.int64), "n", dtype)
    assert got.dtype == dtype and got.tolist() == [float(limit), -float(limit), 3.0]
    with pytest.raises(ValueError, match=r"^n: integer values beyond"):
        as_real_tensor(torch.tensor([limit + 1], dtype=torch.int64), "n", dtype)


def test_integer_points_at_the_float32_limit_are_evaluated():
    """CHK-EXACT-INT through the public API: a float32 mixture evaluates the integer point 2^24 (exact in float32)."""
    gm = GaussianMixture([1.0], [[0.0]], [[[1.0]]]).to(F32)
    x_int = torch.tensor([[2**24], [-(2**24)]], dtype=torch.int64)
    got = gm.log_prob(x_int)
    ref = gm.log_prob(x_int.to(F32))  # the same points given as floats: the conversion was exact
    assert got.dtype == F32 and torch.equal(got, ref)


# --------------------------------------------------------------------------------------------------------------
# toy_models.neural.checkpoint
# --------------------------------------------------------------------------------------------------------------
def test_loaded_network_is_float32_even_under_a_float64_default_dtype():
    """CKP-FLOAT-CAST: a checkpoint loads as a float32 network on the CPU (the contract of load_checkpoint), also
    when the caller has made float64 the default dtype (then the network is built in float64, and only the cast
    brings it back to what the card's tensors and the checks' float32 arithmetic assume)."""
    from toy_models.neural.checkpoint import load_checkpoint

    saved = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        den = load_checkpoint(pathlib.Path(__file__).resolve().parents[1] / "checkpoints" / "ring2d")
    finally:
        torch.set_default_dtype(saved)
    dtypes = {p.dtype for p in den.network.parameters()}
    assert dtypes == {F32}, dtypes


# --------------------------------------------------------------------------------------------------------------
# toy_models.neural.training
# --------------------------------------------------------------------------------------------------------------
def test_learning_rate_warm_up_starts_above_zero_and_reaches_the_peak():
    """TRN-WARMUP-OFF-BY-ONE: linear warm-up lr (step + 1) / W: the first step already learns (lr / W, not 0) and
    the last warm-up step reaches the peak, where the cosine decay starts (0.05 + 0.95 = 1 times the peak)."""
    from toy_models.neural.training import _learning_rate, config_from_preset

    config = config_from_preset("ring2d", "small")
    peak, warm = config.learning_rate, config.warmup_steps
    rates = [_learning_rate(config, step) for step in range(warm + 1)]
    # each value is at most 3 roundings (a product, a quotient; 0.05 + 0.95 * 0.5 * (1 + cos 0): 4) from exact
    assert abs(rates[0] - peak / warm) <= 3 * U64 * peak
    assert abs(rates[warm - 1] - peak) <= 3 * U64 * peak
    assert abs(rates[warm] - peak) <= 4 * U64 * peak
    assert all(b > a for a, b in zip(rates[:warm - 1], rates[1:warm], strict=True))


def test_ema_warm_up_weights():
    """TRN-EMA-DECAY: after the first step the EMA is init + (1 - d)(p_1 - init) with d = min(ema_decay, 1/10).

    p_1, the raw network after one step, is the EMA of a run with ema_decay = 0 (d = 0: lerp with weight 1 returns
    its end exactly); a second run with the same seed and ema_decay = 0.95 (d = 0.1) takes the same step."""
    from toy_models.neural.denoiser import Vocabulary
    from toy_models.neural.training import build_network, config_from_preset, train

    base = config_from_preset("ring2d", "small", steps=1)
    raw = train(config_from_preset("ring2d", "small", steps=1, ema_decay=0.0), device="cpu", show_progress=False)
    ema = train(config_from_preset("ring2d", "small", steps=1, ema_decay=0.95), device="cpu", show_progress=False)
    world = get_world("ring2d")
    init = build_network(base, world, Vocabulary.from_world(world)).state_dict()
    p1, e1 = raw.denoiser.network.state_dict(), ema.denoiser.network.state_dict()
    moved = 0
    for name, start in init.items():
        expected = start.double() + 0.9 * (p1[name].double() - start.double())
        # float32 lerp: end - (end - start) * w' with w' = 1 - 0.9 rounded: a difference, a product and a
        # subtraction, each u32 relative to terms <= |start| + |end|, plus w' itself (u64): 4 u32 margin
        tol = 4 * U32 * (start.abs() + p1[name].abs()).double()
        assert bool(((e1[name].double() - expected).abs() <= tol).all()), name
        moved += int((p1[name] != start).sum())
    assert moved > 0  # the step changed the network, so the check above has something to distinguish


def test_data_std_is_the_rms_about_zero():
    """TRN-DATA-STD: the input scaling uses the root mean square of the coordinates about zero,
    sqrt(E|x|^2 / d) = sqrt(sum_k pi_k (tr S_k + |mu_k|^2) / d), not the standard deviation about the mean; on a
    world whose mean is not zero the two differ (here 3.15 against 1.26)."""
    from toy_models.neural.training import data_std

    gm = GaussianMixture([0.25, 0.75], [[3.0, 4.0], [2.0, -1.0]], [0.5 * np.eye(2), [[2.0, 0.3], [0.3, 1.0]]])
    world = World("shifted", gm)
    w, mu, cov = gm.weights, gm.means, gm.covariances
    expected = math.sqrt(float((w * (torch.diagonal(cov, dim1=1, dim2=2).sum(-1) + (mu * mu).sum(-1))).sum()) / 2)
    # both sides are sums of a few products of O(10) terms: 16 roundings of the mean square, half of it after sqrt
    assert abs(data_std(world) - expected) <= 8 * U64 * expected


# --------------------------------------------------------------------------------------------------------------
# verify.tolerances
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("world_name", ["bimodal1d", "ring2d", "attributes2d"])
def test_autograd_score_bound_counts_the_chain_forward_and_back(world_name):
    """TOL-BACKWARD: a score taken by autograd of log_prob runs the rounding chain forward and back, so its bound
    (backward=True) is that of 2n roundings, twice the forward one's n, not the same.

    In float32 the bound is, to 1e-6 relative, gamma_n times terms that do not depend on n (the float64
    preparation terms and the flushing floor are below 1e-8 of it), except the spread term's expm1(2 Delta),
    Delta = gamma_n (S + C) + ..., which grows at least linearly in n. So backward / forward lies in
    [2 (1 - 1e-6), gamma_2n / gamma_n * exp(4 Delta_b)], with Delta_b <= 2.1 Delta_f and Delta_f below the log-density
    bound lp; lp < 0.01 keeps min(r expm1(2 Delta), 1) off its clamp."""
    from verify.tolerances import gamma, score_bounds

    gm = get_world(world_name).unconditional.to(F32)
    x = get_world(world_name).unconditional.sample(8, torch.Generator().manual_seed(0)).to(F32)
    forward, backward = score_bounds(gm, x)
    lp = float(log_prob_rounding_bound(gm, x).max())
    assert lp < 0.01
    n = 2 * gm.dim + 2 * gm.n_components + 8
    ratio = backward / forward
    assert bool((ratio >= 2 * (1 - 1e-6)).all()), ratio
    assert bool((ratio <= gamma(2 * n, F32) / gamma(n, F32) * math.exp(4 * 2.1 * lp)).all()), ratio


def test_bayes_identity_tolerance_counts_both_autograd_sums():
    """TOL-BAYES-HALF: autograd of log p(c|x) = lse(l_{k in c}) - lse(l) back-propagates through two log-sum-exps
    of the marginal's log joints, each a score-like sum bounded like a score computed by autograd (the backward
    bound); the tolerance must carry both, plus the two forward scores, and nothing more. The bounds of a real
    conditional/marginal pair at a few points give the terms; the tolerance is checked term by term."""
    from verify.tolerances import bayes_identity_tolerance, score_bounds

    gm = get_world("bimodal1d").unconditional.noised(0.8, 0.6)
    x = torch.linspace(-4.0, 4.0, 9, dtype=F64)[:, None]
    cond_fwd, cond_bwd = score_bounds(gm.given(1), x)
    marg_fwd, marg_bwd = score_bounds(gm, x)
    assert bool((cond_bwd > 0).all()) and bool((marg_bwd > 0).all())  # the terms are not vacuous
    tol = bayes_identity_tolerance((cond_fwd, cond_bwd), (marg_fwd, marg_bwd))
    backward = torch.maximum(cond_bwd, marg_bwd)
    # tol - forwards is two backward bounds: computed as (a + b) + 2c, so it is recovered to 3 roundings of tol
    slack = 3 * U64 * tol
    assert bool(((tol - cond_fwd - marg_fwd - 2 * backward).abs() <= slack).all())


# --------------------------------------------------------------------------------------------------------------
# verify.rules
# --------------------------------------------------------------------------------------------------------------
def test_guidance_interval_edges():
    """GUI-INTERVAL-OPEN: guidance in a limited interval (Kynkaanniemi et al. 2024, eq. 2) applies the rule for EDM
    noise levels sigma_t / alpha_t in (sigma_lo, sigma_hi]: closed at the top, open at the bottom. At t with
    sigma_t / alpha_t = sigma_hi exactly (computed as the guided denoiser computes it) the guided prediction is the
    full CFG prediction, bit for bit (the same rule on the same predictions); with sigma_lo at that value it is the
    conditional one; just outside the top edge it is the conditional one too."""
    from toy_models import AnalyticDenoiser
    from verify import rules

    base = AnalyticDenoiser(get_world("ring2d"))
    t = 0.4
    alpha, sigma = (float(v) for v in base.schedule.alpha_sigma(t))
    edge = sigma / alpha
    cfg = rules.get("cfg", w=3.0)
    full = cfg.guide(base, 2)
    top = rules.get("interval", rule=cfg, sigma_lo=0.0, sigma_hi=edge).guide(base, 2)
    bottom = rules.get("interval", rule=cfg, sigma_lo=edge, sigma_hi=math.inf).guide(base, 2)
    x = torch.tensor([[0.5, -1.0], [2.0, 1.0], [-1.5, 0.3]], dtype=F64)
    assert not torch.equal(full.eps(x, t), base.eps(x, t, 2))  # the two branches differ here
    assert torch.equal(top.eps(x, t), full.eps(x, t))
    assert torch.equal(bottom.eps(x, t), base.eps(x, t, 2))
    assert torch.equal(top.eps(x, t + 0.01), base.eps(x, t + 0.01, 2))  # sigma/alpha grows with t on vp-linear


# --------------------------------------------------------------------------------------------------------------
# verify.samplers
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eta", [0.3, 0.5, 0.8])
@pytest.mark.parametrize(("t", "s"), [(0.6, 0.3), (0.9, 0.5)])
def test_ddim_keeps_the_forward_marginal_of_a_point_mass_for_every_eta(eta, t, s):
    """SAM-DDIM-ETA: DDIM's step x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z, c = eta sigma_s sqrt(q),
    keeps the forward marginal N(alpha x0, sigma^2) of every x0 for every eta (Song et al. 2021, Lemma 1): with the
    exact denoiser of a point mass the step maps N(alpha_t m, sigma_t^2) onto N(alpha_s m, sigma_s^2) exactly.
    eta = 0 and eta = 1 (the cases the sampler tests compare) cannot tell eta^2 from eta; 0.3 .. 0.8 do.

    The world is N(m, v) with v = 1e-10 (a covariance must be positive definite). Its exact one-step law, by the
    same algebra with x0_hat = m + (alpha_t v / C_t)(x - alpha_t m), C_t = alpha_t^2 v + sigma_t^2, has variance
    (alpha_s alpha_t v + k sigma_t)^2 / C_t + c^2 (k = sqrt(sigma_s^2 - c^2)), which differs from the point
    mass's alpha_s^2 v + sigma_s^2 by at most v ((3 + v) / sigma_t^2 + 1) (alpha, sigma, k <= 1 on VP); the mean
    is alpha_s m for every v. Rounding adds at most a few hundred u on these O(1) numbers."""
    from toy_models import AnalyticDenoiser
    from verify.exact_law import discrete_sampler_law

    m, v = 1.0, 1e-10
    den = AnalyticDenoiser(GaussianMixture([1.0], [[m]], [[[v]]]), "vp-linear")
    (a_t, s_t), (a_s, s_s) = ((float(c) for c in den.schedule.alpha_sigma(tt)) for tt in (t, s))
    mean, cov = discrete_sampler_law("ddim", den, torch.tensor([t, s], dtype=F64),
                                     torch.tensor([a_t * m], dtype=F64),
                                     torch.tensor([[a_t**2 * v + s_t**2]], dtype=F64), eta=eta)
    assert abs(float(mean[0]) - a_s * m) <= 256 * U64
    assert abs(float(cov[0, 0]) - (a_s**2 * v + s_s**2)) <= v * ((3 + v) / s_t**2 + 1) + 256 * U64


# --------------------------------------------------------------------------------------------------------------
# verify.tilted
# --------------------------------------------------------------------------------------------------------------
def test_undecided_tail_bounds_give_no_verdict():
    """TIL-NORMALISABLE-BOUND: is_normalisable answers True only with a certificate (a positive lower bound on the
    tail coefficient), False only with a counterexample (a negative upper bound), and None otherwise.

    N(0, I_3)^1 times a two-component mixture^-1 with precisions diag(1.5, 0.1, 0.1) and diag(0.1, 1.5, 0.1): every
    choice of one negative component gives lambda_min(I - P_k) = -0.5, so the certified lower bound is -0.5, while
    A(u) = 1 - min_k u^T P_k u >= 1 - 0.8 > 0 on every direction (the min of the two quadratic forms is at most their
    mean, (1.6 u1^2 + 1.6 u2^2 + 0.2 u3^2) / 2 <= 0.8): the upper bound found on directions is positive."""
    from verify.tilted import NotNormalisableError, TiltedLaw

    positive = GaussianMixture([1.0], [[0.0, 0.0, 0.0]], [np.eye(3)])
    negative = GaussianMixture([0.5, 0.5], [[0.0, 0.0, 0.0]] * 2,
                               [np.diag([1 / 1.5, 10.0, 10.0]), np.diag([10.0, 1 / 1.5, 10.0])])
    law = TiltedLaw(((positive, 1.0), (negative, -1.0)))
    with pytest.raises(NotNormalisableError, match="undecided"):  # lower <= 0 <= upper, with both numbers
        law.check_normalisable()
    assert law.is_normalisable() is None


def test_quadrature_refuses_a_window_that_cuts_the_mass():
    """TIL-EDGE-CHECK: the quadrature's guard. If the integration window did not reach the tails (density at its
    edge above e^-40 of the peak), the normaliser and moments would be those of a truncated law; the guard must
    refuse instead. A window of +-0.5 around a mixture of unit-scale components leaves the edge density within a
    factor e^-2 of the peak, so the refusal is certain (the window is set by hand: the computed one always reaches
    e^-50, which is why no other test reaches this guard)."""
    from verify.tilted import NotNormalisableError, TiltedLaw

    law = TiltedLaw(((get_world("bimodal1d").unconditional, 1.0),))
    law.__dict__["_window"] = (torch.tensor([-0.5], dtype=F64), torch.tensor([0.5], dtype=F64))
    with pytest.raises(NotNormalisableError, match="does not decay"):
        law.summary()


# --------------------------------------------------------------------------------------------------------------
# verify.exact_law
# --------------------------------------------------------------------------------------------------------------
def test_discrete_law_from_a_correlated_start():
    """EXL-AFFINE-TRANSPOSE: from x ~ N(m, S) an affine sampler map F(x) = A x + b gives N(F(m), A S A^T). A and b are
    read off the sampler itself at m and m + e_j (an independent route: no Cholesky factor), and S is correlated,
    so that its Cholesky factor L is not symmetric and L L^T = S differs from L^T L.

    Tolerance: every quantity here is O(10) or less; the sampler runs (4 DDIM steps, each a chain of fewer than 64
    roundings of terms bounded by the largest |x| over the run, at most 4) err by at most 4 * gamma_64 * 4 per
    output; a column of A is a difference of two outputs (twice that), and A S A^T sums 4 products of two columns
    with |S| <= 2 entries (4 * 2 * 2 * |A| * error, |A| <= 2): 2^12 gamma_64 bounds it, and the same for the law's
    own columns."""
    from toy_models import AnalyticDenoiser
    from verify.exact_law import discrete_sampler_law
    from verify.samplers import sample
    from verify.tolerances import gamma

    world = GaussianMixture([1.0], [[1.0, -0.5]], [[[1.0, 0.6], [0.6, 0.5]]])
    den = AnalyticDenoiser(world, "vp-linear")
    times = torch.tensor([0.8, 0.6, 0.4, 0.2, 0.05], dtype=F64)
    m = torch.tensor([0.3, -0.2], dtype=F64)
    cov = torch.tensor([[1.0, 0.9], [0.9, 2.0]], dtype=F64)
    chol = torch.linalg.cholesky(cov)
    assert float((chol @ chol.T - chol.T @ chol).abs().max()) > 0.1  # the transpose matters for this S
    out = sample("ddim", den, torch.stack([m, m + torch.tensor([1.0, 0.0]), m + torch.tensor([0.0, 1.0])]), times)
    a = (out[1:] - out[0]).T  # columns A e_j
    mean, got = discrete_sampler_law("ddim", den, times, m, cov)
    tol = 2**12 * gamma(64, F64)
    assert float((mean - out[0]).abs().max()) <= tol
    assert float((got - a @ cov @ a.T).abs().max()) <= tol


def test_sde_reference_paths_converge_under_one_brownian_path():
    """EXL-COARSE-NOISE: the SDE reference's error estimate compares the fine run with a coarse run driven by the
    *same* Brownian path (coarse increment = sum of two fine ones, z = (z_1 + z_2) / sqrt 2). Under one path
    Euler-Maruyama converges strongly (order 1/2 at least, 1 here: the noise is additive), so the mean path
    difference between the two resolutions shrinks at least by 4^(1/2) = 2 from 60 to 240 fine steps (about 4
    measured); with increments of the wrong variance the coarse run is another process and the difference stays
    O(1). Each error is a mean of |difference| over 500 paths: its relative sampling error is about cv / sqrt(500)
    < 5 %, far from the margin between 2 and the threshold 1.5."""
    from toy_models import AnalyticDenoiser
    from verify import rules
    from verify.exact_law import fine_step_reference

    world = get_world("gauss1d")
    den = rules.get("cfg", w=1.0).guide(AnalyticDenoiser(world), 1)
    x1 = torch.randn(500, 1, dtype=F64, generator=torch.Generator().manual_seed(3))
    errors = [fine_step_reference(den, x1, "sde", steps=n, condition=1,
                                  generator=torch.Generator().manual_seed(4)).path_error for n in (60, 240)]
    assert errors[0] / errors[1] >= 1.5, errors
