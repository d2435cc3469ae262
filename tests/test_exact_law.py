"""verify.exact_law: the moment ODEs against closed forms, exact endpoints, and Monte Carlo of the real dynamics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from toy_models import GaussianMixture, get_schedule, get_world
from verify import rules
from verify.exact_law import closed_form_ode_variance_1d, exact_gaussian_cfg_law
from verify.metrics import holm_reject, moment_pvalues

F64 = torch.float64
RTOL = 1e-12  # the integrator's relative tolerance; global error stays within ~1e3 x rtol for these smooth ODEs


# The Monte Carlo and fine-step tests push 20000 x 1 tensors through hundreds of steps: intra-op threads only
# add synchronisation on such small ops. On the loaded 2-core machine one 100-step Heun run of 20000 points took
# 21 s with 2 threads and 0.8 s with 1 (the same measurement as test_samplers.py's fixture).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("w", [0.0, 1.0, 3.0, 7.0])
@pytest.mark.parametrize("start", ["prior", "marginal"])
def test_ode_variance_matches_closed_form(w, start):
    world = get_world("gauss1d")
    _, var = exact_gaussian_cfg_law(world.law(1), world.law(None), w, "ode", start=start)
    a1, s1 = (float(v) for v in get_schedule("vp-linear").alpha_sigma(1.0))
    start_var = 1.0 if start == "prior" else a1**2 * 0.5 + s1**2
    expected = closed_form_ode_variance_1d(0.5, 1.0, w, start_var)
    assert math.isclose(float(var), expected, rel_tol=1e3 * RTOL)


@pytest.mark.parametrize("sampler", ["ode", "sde"])
@pytest.mark.parametrize("world_name", ["gauss1d", "ring2d"])
def test_unguided_from_the_marginal_returns_the_data_law(sampler, world_name):
    """At w = 0 from the noised conditional, both dynamics are exact time reversals: the output is p_0(x|c)."""
    world = get_world(world_name)
    cond = world.law(1) if world_name == "gauss1d" else world.law(3)
    mean, cov = exact_gaussian_cfg_law(cond, cond if world_name == "ring2d" else world.law(None), 0.0, sampler,
                                       start="marginal")
    torch.testing.assert_close(mean, cond.means[0], rtol=0, atol=1e3 * RTOL * 4)
    torch.testing.assert_close(cov, cond.covariances[0], rtol=0, atol=1e3 * RTOL * 4)


def test_full_covariances_decouple_into_one_dimensional_laws():
    """S_c = Q diag(c) Q^T and S_u = Q diag(u) Q^T share eigenvectors, and the prior N(0, I) is isotropic, so both
    moment ODEs decouple along Q's columns: the 5-D law must be Q diag(v_i) Q^T with mean sum_i m_i q_i, where
    (m_i, v_i) is the 1-D law with variances (c_i, u_i) and means (q_i.m_c, q_i.m_u), and for the ODE v_i is also
    the closed form. Tolerance: each side integrates at rtol 1e-12 (global error below 1e3 rtol, see RTOL), and
    assembling Q diag(v) Q^T adds 2 d u relative: 4e3 RTOL of the entries' scale covers both sides."""
    gen = np.random.default_rng(0)
    d, w = 5, 2.0
    q, _ = np.linalg.qr(gen.standard_normal((d, d)))
    c, u = 0.3 + gen.random(d), 0.8 + gen.random(d)
    m_c, m_u = gen.standard_normal(d), 0.5 * gen.standard_normal(d)
    cond = GaussianMixture([1.0], m_c[None], (q @ np.diag(c) @ q.T)[None])
    uncond = GaussianMixture([1.0], m_u[None], (q @ np.diag(u) @ q.T)[None])
    qt = torch.as_tensor(q)
    for sampler in ("ode", "sde"):
        mean, cov = exact_gaussian_cfg_law(cond, uncond, w, sampler)
        means_1d, vars_1d = [], []
        for i in range(d):
            m1, v1 = exact_gaussian_cfg_law(GaussianMixture([1.0], [[q[:, i] @ m_c]], [[[c[i]]]]),
                                            GaussianMixture([1.0], [[q[:, i] @ m_u]], [[[u[i]]]]), w, sampler)
            means_1d.append(float(m1[0]))
            vars_1d.append(float(v1[0, 0]))
            if sampler == "ode":
                assert math.isclose(vars_1d[-1], closed_form_ode_variance_1d(c[i], u[i], w, 1.0), rel_tol=1e3 * RTOL)
        want_mean = qt @ torch.tensor(means_1d, dtype=F64)
        want_cov = qt @ torch.diag(torch.tensor(vars_1d, dtype=F64)) @ qt.T
        scale = float(want_cov.abs().max()) + float(want_mean.abs().max())
        torch.testing.assert_close(mean, want_mean, rtol=0, atol=4e3 * RTOL * scale)
        torch.testing.assert_close(cov, want_cov, rtol=0, atol=4e3 * RTOL * scale)


def _euler_maruyama(cond, uncond, w, n, steps, seed):
    """The guided reverse SDE simulated directly, for the Monte Carlo check (no library sampler involved)."""
    sched = get_schedule("vp-linear")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, dtype=F64, generator=gen)
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=F64)
    for t, t_next in zip(ts[:-1], ts[1:], strict=True):
        a, s = (float(v) for v in sched.alpha_sigma(t))
        score = (1 + w) * cond.noised(a, s).score(x) - w * uncond.noised(a, s).score(x)
        f, g2, dt = float(sched.drift(t)), float(sched.diffusion_squared(t)), float(t - t_next)
        x = x - (f * x - g2 * score) * dt + math.sqrt(g2 * dt) * torch.randn(x.shape, dtype=F64, generator=gen)
    return x


def test_sde_law_against_a_direct_simulation():
    """Euler-Maruyama with 800 steps has a weak bias of O(1/steps), about 1e-3 in the moments, below the Monte Carlo
    standard error at n = 20000 (2.7e-3 for the mean, 1.4e-3 for the variance); Holm at 1e-3 across the tests."""
    world = get_world("gauss1d")
    w = 3.0
    mean, cov = exact_gaussian_cfg_law(world.law(1), world.law(None), w, "sde")
    x = _euler_maruyama(world.law(1), world.law(None), w, 20_000, 800, seed=0)
    assert not bool(holm_reject(moment_pvalues(x, mean, cov), 1e-3).any())
    # power: the tilted target (which the source claims) is rejected by the same test
    tilted_mean, tilted_var = 2 * (1 + w) / (2 + w), 1 / (2 + w)
    assert bool(holm_reject(moment_pvalues(x, torch.tensor([tilted_mean]), torch.tensor([[tilted_var]])), 1e-3).any())


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"sampler": "ddim"}, "^sampler:"),
    ({"sampler": ["ode"]}, "^sampler:"),
    ({"start": "zero"}, "^start:"),
    ({"w": float("nan")}, "^w:"),
    ({"w": "two"}, "^w:"),
    ({"w": True}, "^w:"),
    ({"w": 1 + 2j}, "^w:"),
    ({"schedule": "rectified-flow"}, "^schedule:"),
    ({"schedule": "linear"}, "^schedule:"),
    ({"t_end": 1.0}, "^t_end:"),
    ({"t_end": float("nan")}, "^t_end:"),
    ({"t_end": -0.1}, "^t_end:"),
    ({"rtol": -1.0}, "^rtol:"),
    ({"rtol": 0.0}, "^rtol:"),
])
def test_bad_arguments(kwargs, match):
    world = get_world("gauss1d")
    args = {"cond": world.law(1), "uncond": world.law(None), "w": 1.0} | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        exact_gaussian_cfg_law(**args)
    with pytest.raises(ValueError, match="^cond:"):
        exact_gaussian_cfg_law(get_world("bimodal1d").law(None), world.law(None), 1.0)
    with pytest.raises(ValueError, match="^cond, uncond:"):
        exact_gaussian_cfg_law(world.law(1), get_world("ring2d").law(0), 1.0)


def test_other_entry_points_refuse_bad_arguments_naming_them():
    from toy_models import AnalyticDenoiser
    from verify.exact_law import discrete_sampler_law, pf_ode_law_1d
    from verify.samplers import time_grid

    world = get_world("gauss1d")
    den = AnalyticDenoiser(world)
    cases = [
        (lambda: closed_form_ode_variance_1d(-0.5, 1.0, 1.0, 1.0), "^v_c:"),
        (lambda: closed_form_ode_variance_1d(0.5, 1.0, float("inf"), 1.0), "^w:"),
        (lambda: closed_form_ode_variance_1d(0.5, 1.0, 1.0, 0.0), "^start_var:"),
        (lambda: pf_ode_law_1d("cfg", {"cond": world.law(1), "uncond": world.law(None)}), "^rule:"),
        (lambda: pf_ode_law_1d(rules.get("cfg", w=1.0), {"cond": world.law(1), "uncond": world.law(None)},
                               n_nodes=2.5), "^n_nodes:"),
        (lambda: discrete_sampler_law("ddim", den, time_grid(4), torch.zeros(2, dtype=F64)), "^mean:"),
        (lambda: discrete_sampler_law("ddim", den, time_grid(4), None, -torch.eye(1, dtype=F64)), "^cov:"),
        (lambda: discrete_sampler_law("ddim", den, time_grid(4), None, torch.eye(1) * float("nan")), "^cov:"),
        (lambda: discrete_sampler_law("ddim", "den", time_grid(4)), "^denoiser:"),
        (lambda: discrete_sampler_law("plms", den, time_grid(4)), "^name:"),
    ]
    for call, match in cases:
        with pytest.raises((ValueError, TypeError), match=match):
            call()


# --------------------------------------------------------------------------------------------------------------
# The 1-D mixture references: against the Gaussian moment ODEs where they meet, and against Monte Carlo
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("w", [0.0, 3.0])
def test_mixture_references_agree_with_the_moment_odes_on_a_gaussian_world(w):
    """gauss1d is a (one-component) mixture too: the flow-map and Fokker-Planck references must reproduce the moment
    ODEs within their own halving error estimates (x10: the halving difference estimates, not bounds, the error)."""
    from verify.exact_law import pf_ode_law_1d, reverse_sde_law_1d

    world = get_world("gauss1d")
    cond, uncond = world.law(1), world.law(None)
    rule, laws = rules.get("cfg", w=w), {"cond": cond, "uncond": uncond}
    for kind, ref in (("ode", pf_ode_law_1d(rule, laws, n_nodes=1001)),
                      ("sde", reverse_sde_law_1d(rule, laws, n_cells=800, n_steps=800))):
        mean, cov = exact_gaussian_cfg_law(cond, uncond, w, kind, start="marginal")
        assert abs(ref.mean - float(mean)) <= 10 * ref.error["mean"] + 1e-8, kind
        assert abs(ref.var - float(cov)) <= 10 * ref.error["var"] + 1e-8, kind
        exact_below = float(torch.special.ndtr(-mean / cov.sqrt())[0, 0]) if cov.ndim else 0.0
        assert abs(ref.mass_below_0 - exact_below) <= 10 * ref.error["mass_below_0"] + 1e-8, kind


def test_mixture_references_against_monte_carlo():
    """bimodal1d, w = 3: 200-step Heun (ODE) and Euler-Maruyama (SDE) samples from the noised conditional. Their
    discretisation bias is O(1e-3) here (halving in the references' own tests measured about 1e-3 at 400 steps
    for Euler-Maruyama, order 1, so about 2e-3 at 200; Heun's is far smaller), below the Monte Carlo standard error
    at n = 10000 (~6.4e-3 for the mean); z-tests of mean and variance, Holm at 1e-3."""
    from toy_models import AnalyticDenoiser
    from verify.exact_law import pf_ode_law_1d, reverse_sde_law_1d
    from verify.samplers import sample, time_grid

    world = get_world("bimodal1d")
    cond, uncond = world.law(1), world.law(None)
    rule, laws = rules.get("cfg", w=3.0), {"cond": cond, "uncond": uncond}
    den = rule.guide(AnalyticDenoiser(world), 1)
    a, s = (float(v) for v in get_schedule("vp-linear").alpha_sigma(1.0))
    gen = torch.Generator().manual_seed(5)
    x1 = cond.noised(a, s).sample(10_000, gen)
    for name, ref in (("heun", pf_ode_law_1d(rule, laws, n_nodes=1001)),
                      ("euler_maruyama", reverse_sde_law_1d(rule, laws, n_cells=800, n_steps=800))):
        x = sample(name, den, x1, time_grid(200), generator=gen)
        pvals = moment_pvalues(x, torch.tensor([ref.mean]), torch.tensor([[ref.var]]))
        assert not bool(holm_reject(pvals, 1e-3).any()), (name, ref.mean, float(x.mean()))


def test_fine_step_reference_measures_its_own_error():
    from toy_models import AnalyticDenoiser
    from verify.exact_law import fine_step_reference

    world = get_world("gauss1d")
    den = rules.get("cfg", w=3.0).guide(AnalyticDenoiser(world), 1)
    a, s = (float(v) for v in get_schedule("vp-linear").alpha_sigma(1.0))
    x1 = world.law(1).noised(a, s).sample(4000, torch.Generator().manual_seed(6))
    exact_mean, _ = exact_gaussian_cfg_law(world.law(1), world.law(None), 3.0, "ode", start="marginal")
    ref = fine_step_reference(den, x1, "ode", steps=200)
    # Heun is second order: the fine run's error is about a third of the halving difference. The sample mean of the
    # exact flow applied to these x1 differs from the law's mean by Monte Carlo error; the ODE map is a contraction
    # here, so that error is at most the start sample's (sd(x1) / sqrt(n) ~ 0.016): allow 4 of those.
    assert abs(float(ref.mean[0] - exact_mean[0])) <= ref.moment_error + 4 * 0.016
    assert 0 < ref.moment_error < 1e-2 and ref.path_error < 1e-2
    sde = fine_step_reference(den, x1, "sde", steps=200, generator=torch.Generator().manual_seed(7))
    assert sde.path_error > ref.path_error  # Euler-Maruyama converges with strong order 1/2 only
    with pytest.raises(ValueError, match="steps"):
        fine_step_reference(den, x1, "ode", steps=3)
    with pytest.raises(ValueError, match="kind"):
        fine_step_reference(den, x1, "ddim")


# --------------------------------------------------------------------------------------------------------------
# The shared integrators (also behind verify.tilted_noised's moment and flow laws)
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["ode", "sde"])
def test_moment_ode_law_is_the_integrator_of_the_cfg_law(sampler):
    """moment_ode_law with CFG's weights {cond: 1 + w, uncond: -w} from the noised conditional is the CFG law of
    exact_gaussian_cfg_law: the same ODE through the same integrator, its weights only read another way, so the two
    agree to the integrator's own error (1e3 rtol relative, module docstring) on the 2-D ring world; the weights of
    w + 0.5 do not."""
    from verify.exact_law import moment_ode_law

    world = get_world("ring2d")
    cond, uncond = world.law(2), world.law(None).given(3)
    w, nu = 3.0, 0.0 if sampler == "ode" else 1.0
    a, s = (float(v) for v in get_schedule("vp-linear").alpha_sigma(1.0))
    start = cond.noised(a, s)
    laws = {"cond": cond, "uncond": uncond}
    mean, cov = moment_ode_law(laws, {"cond": 1 + w, "uncond": -w}, nu, "vp-linear", start.mean(),
                               start.covariance(), rtol=RTOL)
    ref_mean, ref_cov = exact_gaussian_cfg_law(cond, uncond, w, sampler, start="marginal", rtol=RTOL)
    tol_m, tol_c = 1e3 * RTOL * float(ref_mean.abs().max()), 1e3 * RTOL * float(ref_cov.abs().max())
    torch.testing.assert_close(mean, ref_mean, rtol=0, atol=tol_m)
    torch.testing.assert_close(cov, ref_cov, rtol=0, atol=tol_c)
    other, _ = moment_ode_law(laws, {"cond": 1.5 + w, "uncond": -0.5 - w}, nu, "vp-linear", start.mean(),
                              start.covariance(), rtol=RTOL)
    assert float((other - ref_mean).abs().max()) > tol_m


def test_flow_map_law_is_the_integrator_of_the_pf_ode_law():
    """flow_map_law_1d run with the guided score and the start law of pf_ode_law_1d gives its moments exactly (one
    computation), and its coarse run is the error estimate pf_ode_law_1d reports; refusals name their argument."""
    from verify.exact_law import flow_map_law_1d, guided_score_1d, moment_ode_law, pf_ode_law_1d

    world = get_world("bimodal1d")
    rule, laws = rules.get("cfg", w=3.0), {"cond": world.law(1), "uncond": world.law(None)}
    ref = pf_ode_law_1d(rule, laws, n_nodes=201)
    a, s = (float(v) for v in get_schedule("vp-linear").alpha_sigma(1.0))
    start = world.law(1).noised(a, s)
    m, v = float(start.mean()[0]), float(start.covariance()[0, 0])
    score = guided_score_1d(rule, laws, "vp-linear")
    fine, coarse = flow_map_law_1d(lambda x, t, piece: score(x, t), "vp-linear",
                                   lambda x: start.log_prob(torch.as_tensor(x[:, None])).numpy(),
                                   m - 12 * math.sqrt(v), m + 12 * math.sqrt(v), n_nodes=201, rtol=1e-10)
    assert (fine.mean, fine.var) == (ref.mean, ref.var)
    assert abs(fine.var - coarse.var) == ref.error["var"]
    gauss = world.law(1)
    for call, match in (
        (lambda: flow_map_law_1d(score, "vp-linear", np.log, 1.0, 1.0), "^lo, hi"),
        (lambda: flow_map_law_1d(score, "vp-linear", np.log, 0.0, 1.0, n_nodes=2), "^n_nodes"),
        (lambda: flow_map_law_1d(score, "vp-linear", np.log, 0.0, 1.0, rtol=0.1), "^rtol"),
        (lambda: moment_ode_law({"c": gauss}, [1.0], 0.0, "vp-linear", gauss.mean(), gauss.covariance()),
         "^weights"),
        (lambda: moment_ode_law({"c": gauss}, {"d": 1.0}, 0.0, "vp-linear", gauss.mean(), gauss.covariance()),
         "^laws"),
        (lambda: moment_ode_law({"c": world.law(None)}, {"c": 1.0}, 0.0, "vp-linear", gauss.mean(),
                                gauss.covariance()), "^laws"),
        (lambda: moment_ode_law({"c": gauss}, {"c": 1.0}, 1.5, "vp-linear", gauss.mean(), gauss.covariance()),
         "^nu"),
        (lambda: moment_ode_law({"c": gauss}, {"c": 1.0}, 0.0, "vp-linear", torch.zeros(2), gauss.covariance()),
         "^mean"),
    ):
        with pytest.raises((ValueError, TypeError), match=match):
            call()
