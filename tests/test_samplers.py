"""verify.samplers: the registry and its facts (each sampler's order, evaluations per step, noise and continuous
limit, re-noising), convergence orders against the exact continuous law, the exact law of the discrete samplers,
Monte Carlo against it, determinism, dtypes, callbacks, evaluation counts, the run state of stateful guided
denoisers, re-noising (CFG++-style rules), and argument errors.

The key device: in a Gaussian world the (guided) eps is affine in x, so every sampler step is
``x' = A x + b + C z``. The output law of the *discrete* sampler from ``x ~ N(m, S)`` is then computed exactly, with
no sampling (:func:`discrete_law`), and convergence orders are measured without Monte Carlo noise.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from toy_models import AnalyticDenoiser, get_world
from toy_models.denoiser import CountingDenoiser
from verify import rules
from verify.exact_law import discrete_sampler_law, exact_gaussian_cfg_law
from verify.metrics import holm_reject, moment_pvalues
from verify.rules import GuidanceState, GuidedDenoiser, Rule, StepContext
from verify.rules.cfg import cfg
from verify.samplers import (
    SAMPLERS,
    SamplerSpec,
    count_evaluations,
    ddim,
    ddpm,
    euler,
    get_sampler,
    register_sampler,
    sample,
    sampler_nfe,
    sampler_noise,
    time_grid,
)
from verify.tolerances import unit_roundoff

F64 = torch.float64
T_END = 1e-3  # sigma(T_END) = 0.0105 > 0: every solver runs at its full order (see dpmpp_2m's docstring for t_end = 0)
REF_FLOOR = 1e-9  # the exact law integrates at rtol 1e-12; its global error stays below 1e3 x rtol (test_exact_law)


# The per-step tensors are tiny (at most 20000 x 1): intra-op threads only add synchronisation. On a loaded
# 2-core machine one DDPM run of the Monte Carlo test took 17 s with 2 threads and 0.9 s with 1.
pytestmark = pytest.mark.usefixtures("one_thread")


def gauss1d_cfg(w: float, dtype: torch.dtype = F64) -> GuidedDenoiser:
    return rules.get("cfg", w=w).guide(AnalyticDenoiser(get_world("gauss1d"), dtype=dtype), 1)


@functools.cache
def continuous_law(w: float, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    world = get_world("gauss1d")
    return exact_gaussian_cfg_law(world.law(1), world.law(None), w, kind, start="prior", t_end=T_END)


def discrete_law(name, denoiser, timesteps, mean=None, cov=None, *, stepwise=True, **kw):
    return discrete_sampler_law(name, denoiser, timesteps, mean, cov, stepwise=stepwise, **kw)


# --------------------------------------------------------------------------------------------------------------
# 1. Convergence orders under step halving, against the exact continuous-time law (no Monte Carlo)
# --------------------------------------------------------------------------------------------------------------
N_STEPS = (25, 50, 100, 200)
# (sampler, the continuous law it discretises at eta = 0, its order): the registry's facts, measured here (the order
# is the weak order for the stochastic samplers)
ORDERS = [(name, spec.continuous_limit(0.0), spec.order) for name, spec in SAMPLERS.items()]
# Band for the observed order at the finest pair (100 -> 200). If err(n) = C n^-p (1 + D/n + ...), the observed order
# is p + O(1/n): its deviation halves per halving. Measured on a log-SNR grid (w in {0, 3}, mean and variance), the
# largest deviation at the 50 -> 100 pair is 0.14 (euler's variance at w = 3), so 0.07 is expected at 100 -> 200;
# 0.1 leaves room for the O(1/n^2) term and still separates order 1 from order 2.
ORDER_BAND = 0.1


@pytest.mark.parametrize("w", [0.0, 3.0])
@pytest.mark.parametrize(("name", "kind", "order"), ORDERS, ids=[o[0] for o in ORDERS])
def test_convergence_order_against_the_continuous_law(name, kind, order, w):
    """The registry's ``order`` and ``continuous_limit`` of every sampler, measured: its discrete law converges to
    the exact law of that continuous process at that order."""
    assert kind in ("ode", "sde"), kind  # at eta = 0 every registered sampler discretises the ODE or the SDE
    den = gauss1d_cfg(w)
    exact_mean, exact_cov = continuous_law(w, kind)
    errors = {"mean": [], "var": []}
    for n in N_STEPS:
        mean, cov = discrete_law(name, den, time_grid(n, 1.0, T_END, "log_snr", "vp-linear"))
        errors["mean"].append(float(mean[0] - exact_mean[0]))
        errors["var"].append(float(cov[0, 0] - exact_cov[0, 0]))
    for moment, err in errors.items():
        if max(abs(e) for e in err) < REF_FLOOR:
            # DDPM at w = 0: its mean map composes the exact E[x_s | x_t] (the ancestral step's mean is the forward
            # posterior's mean at the exact x0_hat), so by the tower property it is the exact E[x_0 | x_1] on any
            # grid, as is the reverse SDE's. Only this case is exact.
            assert (name, w, moment) == ("ddpm", 0.0, "mean"), (name, w, moment, err)
            continue
        observed = [math.log2(abs(err[i] / err[i + 1])) for i in range(len(err) - 1)]
        deviation = [abs(p - order) for p in observed]
        assert deviation[-1] < ORDER_BAND, (moment, observed)
        assert deviation[-1] <= 0.6 * deviation[-2] + 0.01, (moment, observed)  # approaching p like 1/n


@pytest.mark.parametrize("w", [0.0, 3.0])
def test_dpmpp_2m_is_second_order_on_unequal_log_snr_steps(w):
    """On a uniform t grid the log-SNR steps are unequal (r_i != 1), which the log-SNR grid above never exercises.
    Measured orders at 200 -> 400: 2.043 to 2.057; with r_i inverted (a plausible slip) they are 1.74 to 1.77."""
    exact_mean, exact_cov = continuous_law(w, "ode")
    err = []
    for n in (100, 200, 400):
        mean, cov = discrete_law("dpmpp_2m", gauss1d_cfg(w), time_grid(n, 1.0, T_END))
        err.append((abs(float(mean[0] - exact_mean[0])), abs(float(cov[0, 0] - exact_cov[0, 0]))))
    for k in range(2):
        assert abs(math.log2(err[1][k] / err[2][k]) - 2) < ORDER_BAND, err


def test_stepwise_discrete_law_equals_the_one_run_law():
    """The stepwise covariance propagation (cheap) against one run with a unit-noise row per step (quadratic)."""
    den = gauss1d_cfg(3.0)
    ts = time_grid(25, 1.0, T_END, "log_snr", "vp-linear")
    for name, kw in [("ddpm", {}), ("euler_maruyama", {}), ("ddim", {"eta": 0.5})]:
        a = discrete_law(name, den, ts, stepwise=True, **kw)
        b = discrete_law(name, den, ts, stepwise=False, **kw)
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-13)


def test_ddim_eta_one_is_ddpm_and_eta_zero_is_the_exponential_integrator():
    """eta = 1: sqrt(sigma_s^2 - c^2) = alpha_{t|s} sigma_s^2 / sigma_t, so DDIM's step is DDPM's (same noise)."""
    den = gauss1d_cfg(3.0)
    ts = time_grid(50)
    x = torch.randn(64, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    noise = sampler_noise(50, x.shape, torch.Generator().manual_seed(1))
    a = ddpm(den, x, ts, noise=noise)
    b = ddim(den, x, ts, noise=noise, eta=1.0)
    # The two forms differ by a few roundings per step of O(|x|) terms, which the contracting steps do not amplify
    # beyond the 1/alpha(1) = 150 of the first x0 (measured: 1.1e-15 at max|x| = 2.7).
    torch.testing.assert_close(a, b, rtol=0, atol=150 * 50 * unit_roundoff(F64) * float(a.abs().max()))
    # eta = 0 ignores the noise and equals DPM-Solver-1: x_s = (sigma_s/sigma_t) x_t + (alpha_s - ...) x0
    torch.testing.assert_close(ddim(den, x, ts), ddim(den, x, ts, noise=noise, eta=0.0), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------------------
# 2. Monte Carlo: the stochastic samplers reach their own discrete law
# --------------------------------------------------------------------------------------------------------------
def test_monte_carlo_matches_the_discrete_law():
    """N = 20000 paths of gauss1d, w = 3, 200 log-SNR steps; z-tests of mean and variance against each sampler's
    *discrete* law, Holm at alpha = 1e-3 over the 6 tests (first threshold |z| = 3.76). Power: a mean shift of 3.76
    standard errors (0.0097 for DDPM, 0.0101 for Euler-Maruyama, 0.0080 for DDIM eta = 0.5) or a relative variance
    error of 3.76 sqrt(2/N) = 3.8 % is detected half the time. The discrete law is the right reference: DDPM's
    variance at 200 steps is 8.4e-3 below the continuous SDE's (6.3 standard errors), and the same samples reject
    the continuous law."""
    den = gauss1d_cfg(3.0)
    ts = time_grid(200, 1.0, T_END, "log_snr", "vp-linear")
    x = torch.randn(20_000, 1, generator=torch.Generator().manual_seed(10), dtype=F64)
    pvalues, outputs = [], {}
    checked = [("ddpm", {}), ("euler_maruyama", {}), ("ddim", {"eta": 0.5})]
    # every sampler the registry calls stochastic at eta = 0.5 (the powers above are for these three)
    assert sorted(n for n, _ in checked) == sorted(n for n, spec in SAMPLERS.items() if spec.is_stochastic(0.5))
    for seed, (name, kw) in enumerate(checked):
        outputs[name] = sample(name, den, x, ts, generator=torch.Generator().manual_seed(seed), **kw)
        mean, cov = discrete_law(name, den, ts, **kw)
        pvalues.extend(moment_pvalues(outputs[name], mean, cov))
    assert not holm_reject(pvalues, 1e-3).any(), pvalues
    assert holm_reject(moment_pvalues(outputs["ddpm"], *continuous_law(3.0, "sde")), 1e-3).any()


# --------------------------------------------------------------------------------------------------------------
# 3. Determinism, dtypes, callbacks, evaluation counts
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_seed_and_noise_tensor_reproduce_the_run(name):
    """A stochastic run is fixed by its generator's seed or its noise tensor, and changes with them; a run the
    registry calls deterministic (``is_stochastic(eta)`` false) ignores both."""
    kw = {"eta": 0.5}
    den = gauss1d_cfg(3.0)
    ts = time_grid(30)
    x = torch.randn(16, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    a = sample(name, den, x, ts, generator=torch.Generator().manual_seed(5), **kw)
    b = sample(name, den, x, ts, generator=torch.Generator().manual_seed(5), **kw)
    c = sample(name, den, x, ts, noise=sampler_noise(30, x.shape, torch.Generator().manual_seed(5)), **kw)
    d = sample(name, den, x, ts, generator=torch.Generator().manual_seed(6), **kw)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.equal(a, d) != get_sampler(name).is_stochastic(0.5)
    if name == "ddim":  # DDIM's noise is eta^2 of the reverse SDE's: none at eta = 0
        assert not get_sampler(name).is_stochastic(0.0)
        e0 = sample(name, den, x, ts, generator=torch.Generator().manual_seed(5), eta=0.0)
        assert torch.equal(e0, sample(name, den, x, ts, generator=torch.Generator().manual_seed(6), eta=0.0))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_float32_path_is_close_to_float64(name):
    """Bound: the float32 model's eps errs by ~10 u32 relative; the first x0 = (x - sigma eps)/alpha multiplies it by
    1/alpha(1) = 150, and later steps contract. 1e3 u32 |x| (6e-5 at |x| = 1) covers that with a factor ~1e2;
    measured: at most 1.2e-6 at max|x| = 2.9 over the six samplers."""
    ts = time_grid(50)
    x = torch.randn(64, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    noise = sampler_noise(50, x.shape, torch.Generator().manual_seed(1))
    out64 = sample(name, gauss1d_cfg(3.0), x, ts, noise=noise, eta=0.5)
    out32 = sample(name, gauss1d_cfg(3.0, torch.float32), x.float(), ts, noise=noise.float(), eta=0.5)
    assert out32.dtype == torch.float32 and out64.dtype == F64
    bound = 1e3 * unit_roundoff(torch.float32) * float(out64.abs().max())
    assert float((out32.double() - out64).abs().max()) < bound


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_callback_sees_every_step(name):
    ts = time_grid(12, 1.0, 0.0)
    seen = []
    x = torch.zeros(3, 1, dtype=F64)
    out = sample(name, gauss1d_cfg(1.0), x, ts, generator=torch.Generator().manual_seed(0),
                 callback=lambda i, t, state, eps: seen.append((i, t, state.clone(), eps.shape)))
    assert [s[0] for s in seen] == list(range(12))
    assert [s[1] for s in seen] == ts[1:].tolist()
    assert all(s[3] == x.shape for s in seen)
    assert torch.equal(seen[-1][2], out)


@pytest.mark.parametrize("t_end", [0.0, T_END])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_evaluation_counts(name, t_end):
    """One denoiser call per step; Heun two, except one on a last step to sigma = 0; CFG doubles base-model rows."""
    ts = time_grid(10, 1.0, t_end)
    x = torch.zeros(4, 1, dtype=F64)
    count = count_evaluations(name, AnalyticDenoiser(get_world("gauss1d")), x, ts,
                              guide=lambda model: rules.get("cfg", w=3.0).guide(model, 1), generator=torch.Generator())
    per_step = get_sampler(name).evaluations_per_step
    assert per_step == (2 if name == "heun" else 1)
    expected = per_step * 10 - (per_step - 1) * (t_end == 0.0)  # Heun's second evaluation skipped at sigma = 0
    assert count.calls == sampler_nfe(name, ts, "vp-linear") == expected
    # one batched base-model call (conditional and null together) per sampler call: 2N rows each
    assert count.model_calls == expected and count.model_points == 2 * x.shape[0] * count.model_calls
    unguided = count_evaluations(name, AnalyticDenoiser(get_world("gauss1d")), x, ts, generator=torch.Generator())
    assert unguided.calls == unguided.model_calls == expected


# --------------------------------------------------------------------------------------------------------------
# 4. A guided mixture in 2-D
# --------------------------------------------------------------------------------------------------------------
def test_ring2d_guidance_moves_the_mean_towards_class_0():
    """ring2d, condition 0 (mean (3, 0)): the sample mean's first coordinate grows with w for every deterministic
    sampler at 200 steps (no exact law exists here: the unconditional law is an 8-component mixture)."""
    model = AnalyticDenoiser(get_world("ring2d"))
    ts = time_grid(200, 1.0, T_END, "log_snr", "vp-linear")
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    for name in [n for n, spec in SAMPLERS.items() if not spec.is_stochastic(0.0)]:
        towards = []
        for w in (0.0, 3.0):
            out = sample(name, rules.get("cfg", w=w).guide(model, 0), x, ts)
            assert bool(torch.isfinite(out).all())
            towards.append(float(out[:, 0].mean()))
        assert 2.0 < towards[0] < towards[1], (name, towards)


# --------------------------------------------------------------------------------------------------------------
# 5. The registry, the run state of stateful rules, re-noising
# --------------------------------------------------------------------------------------------------------------
def _sampler_functions() -> tuple:
    """Every function of verify.samplers with the common sampler signature (denoiser, x, timesteps, *, condition,
    ...): found by inspection, so a new sampler needs no edit here to be held to its registration."""
    import inspect

    import verify.samplers as module

    found = []
    for _, obj in inspect.getmembers(module, inspect.isfunction):
        params = list(inspect.signature(obj).parameters)
        if obj.__module__ == module.__name__ and params[:3] == ["denoiser", "x", "timesteps"] and \
                "condition" in params:
            found.append(obj)
    return tuple(found)


SAMPLER_FUNCTIONS = _sampler_functions()


def test_every_sampler_is_registered_once_with_consistent_facts():
    """Each sampler function of the module is registered exactly once, under its own name, and the facts are of the
    right kind; a second registration under a taken name and an unknown name are refused, naming ``name``."""
    assert sorted(SAMPLERS) == sorted(f.__name__ for f in SAMPLER_FUNCTIONS)
    for f in SAMPLER_FUNCTIONS:
        spec = SAMPLERS[f.__name__]
        assert isinstance(spec, SamplerSpec) and spec.name == f.__name__ and spec.function is f
        assert get_sampler(f.__name__) is spec
        assert spec.order in (1, 2) and spec.evaluations_per_step in (1, 2)
        for eta in (0.0, 0.5, 1.0):
            fraction = spec.noise(eta)
            assert 0.0 <= fraction <= 1.0
            assert spec.is_stochastic(eta) == (fraction > 0)
            assert spec.continuous_limit(eta) == ("ode" if fraction == 0 else "sde" if fraction == 1 else
                                                  f"sde(eta^2={fraction:g})")
    # DDIM's family (Song et al. 2021a, section 4.1): eta^2 of the reverse SDE's noise
    assert [get_sampler("ddim").noise(eta) for eta in (0.0, 0.5, 1.0)] == [0.0, 0.25, 1.0]
    assert len({id(spec.function) for spec in SAMPLERS.values()}) == len(SAMPLERS)
    with pytest.raises(ValueError, match="^name:"):
        register_sampler("ddim", order=1, noise=lambda eta: 0.0)(ddim)
    assert SAMPLERS["ddim"].function is ddim  # the refused registration changed nothing
    with pytest.raises(ValueError, match="^name:"):
        get_sampler("plms")


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_the_spec_is_the_sampler(name):
    """Calling the spec, ``sample(name, ...)`` and the function give the same run, bit for bit."""
    den, ts = gauss1d_cfg(2.0), time_grid(6, 0.9, 0.05)
    x = torch.randn(5, 1, generator=torch.Generator().manual_seed(2), dtype=F64)
    noise = sampler_noise(6, x.shape, torch.Generator().manual_seed(3))
    runs = [f(den, x, ts, noise=noise, eta=0.5) for f in (SAMPLERS[name], SAMPLERS[name].function,
                                                        lambda *a, **k: sample(name, *a, **k))]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_multistep_is_what_splitting_a_run_changes(name):
    """The registry's ``multistep``: a run split into two runs at step 3 (the second half started from the first's
    output, with the same noise rows) is the one-go run, bit for bit (the same operations on the same numbers),
    exactly when no step reads earlier steps' predictions; DPM-Solver++(2M) restarts its history at the split and
    differs there by its second-order correction (measured 0.014 here, against rounding of 1e-16)."""
    den, ts = gauss1d_cfg(2.0), time_grid(6, 0.9, 0.05)
    x = torch.randn(5, 1, generator=torch.Generator().manual_seed(8), dtype=F64)
    noise = sampler_noise(6, x.shape, torch.Generator().manual_seed(9))
    whole = sample(name, den, x, ts, noise=noise, eta=0.5)
    half = sample(name, den, x, ts[:4], noise=noise[:3], eta=0.5)
    split = sample(name, den, half, ts[3:], noise=noise[3:], eta=0.5)
    if get_sampler(name).multistep:
        assert float((split - whole).abs().max()) > 1e-8
    else:
        assert torch.equal(split, whole)


class _StepRecorder(Rule):
    """A stateful test rule (not registered): CFG, recording in the run's state which step each evaluation saw."""

    name = "step_recorder"
    reference = "test rule"
    stateful = True

    def __init__(self, *, guidance_scale: float = 2.0):
        self.guidance_scale, self.space, self.branches = guidance_scale, "eps", ("uncond", "cond")
        self.params = {"guidance_scale": guidance_scale}

    def combine(self, preds: dict[str, torch.Tensor], ctx: StepContext) -> torch.Tensor:
        steps = ctx.state.memory.setdefault("steps", [])
        steps.append((ctx.state.step, ctx.state.evaluations))
        return cfg(preds["uncond"], preds["cond"], guidance_scale=self.guidance_scale)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_stateful_rules_get_one_fresh_state_per_run_with_the_step_set(name):
    """The sampler creates one GuidanceState per run (``guided.new_state()``), sets ``state.step`` before each step
    and passes it on every call: the rule sees steps 0, 1, ... (Heun: each twice, but once on a last step to
    sigma = 0) with ``evaluations`` counting its calls in this run, from 0 again in the next run. The guided run
    equals the stateless CFG run (the recorder changes nothing else), and the rule object keeps no memory."""
    rule = _StepRecorder(guidance_scale=3.0)
    guided = rule.guide(AnalyticDenoiser(get_world("gauss1d")), 1)
    states: list[GuidanceState] = []
    new_state = guided.new_state
    guided.new_state = lambda: states.append(new_state()) or states[-1]  # type: ignore[method-assign]
    ts = time_grid(5, 1.0, 0.0)
    x = torch.randn(4, 1, generator=torch.Generator().manual_seed(4), dtype=F64)
    noise = sampler_noise(5, x.shape, torch.Generator().manual_seed(5))
    out = [sample(name, guided, x, ts, noise=noise, eta=0.5) for _ in range(2)]
    assert len(states) == 2 and states[0] is not states[1]
    per_step = get_sampler(name).evaluations_per_step
    calls = get_sampler(name).nfe(ts, "vp-linear")
    want = [(i, k) for k, i in enumerate(i for i in range(5) for _ in range(per_step))][:calls]
    for state in states:
        assert state.memory["steps"] == want and state.evaluations == calls
    assert torch.equal(out[0], out[1])
    assert torch.equal(out[0], sample(name, rules.get("cfg", guidance_scale=3.0).guide(
        AnalyticDenoiser(get_world("gauss1d")), 1), x, ts, noise=noise, eta=0.5))
    assert not hasattr(rule, "memory") and vars(rule).keys() == {"guidance_scale", "space", "branches", "params"}
    # through the evaluation counter too (count_evaluations wraps the guided denoiser)
    counted = count_evaluations(name, AnalyticDenoiser(get_world("gauss1d")), x, ts, noise=noise, eta=0.5,
                                guide=lambda model: _StepRecorder(guidance_scale=3.0).guide(model, 1))
    assert torch.equal(counted.output, out[0]) and counted.calls == calls
    with pytest.raises(ValueError, match="^state:"):
        guided.eps(x, 0.5)  # without the run's state: refused, not silently fresh memory


class _RenoiseWithNull(Rule):
    """A re-noising test rule (not registered): the guided eps is CFG's (it fixes x0), the sampler re-noises with
    the null branch's eps, as CFG++ (Chung et al. 2024, Algorithm 1) does."""

    name = "renoise_with_null"
    reference = "test rule"
    renoise_branch = "uncond"

    def __init__(self, *, guidance_scale: float):
        self.guidance_scale, self.space, self.branches = guidance_scale, "eps", ("uncond", "cond")
        self.params = {"guidance_scale": guidance_scale}

    def combine(self, preds: dict[str, torch.Tensor], ctx: StepContext) -> torch.Tensor:
        return cfg(preds["uncond"], preds["cond"], guidance_scale=self.guidance_scale)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_renoising_is_honoured_by_ddim_and_ddpm_and_refused_by_the_others(name):
    """DDIM and DDPM (``supports_renoise``) take x0 from the guided eps and re-noise with the rule's branch:
    DDIM (eta = 0) x_s = alpha_s x0 + sigma_s eps_u, DDPM x_s = alpha_s x0 + sigma_s sqrt(1 - q) eps_u +
    sigma_s sqrt(q) z, written out here per step. The other samplers have no re-noising step and refuse such a
    denoiser before any evaluation, with a message starting ``denoiser:``."""
    base = CountingDenoiser(AnalyticDenoiser(get_world("gauss1d")))
    guided = _RenoiseWithNull(guidance_scale=3.0).guide(base, 1)
    ts = time_grid(4, 0.9, 0.1)
    x = torch.randn(6, 1, generator=torch.Generator().manual_seed(6), dtype=F64)
    noise = sampler_noise(4, x.shape, torch.Generator().manual_seed(7))
    spec = get_sampler(name)
    assert spec.supports_renoise == (name in ("ddim", "ddpm"))
    if not spec.supports_renoise:
        with pytest.raises(ValueError, match=rf"^denoiser: .*re-noises.*{name!r}"):
            sample(name, guided, x, ts, noise=noise)
        assert base.calls == 0
        return
    states = [x]
    out = sample(name, guided, x, ts, noise=noise, callback=lambda i, t, xi, eps: states.append(xi.clone()))
    assert torch.equal(out, states[-1])
    sched = base.schedule
    u = unit_roundoff(F64)
    for i in range(4):  # each step from the sampler's own state, so the bound is one step's rounding
        t, s_ = float(ts[i]), float(ts[i + 1])
        (a_t, s_t), (a_s, s_s) = ((float(v) for v in sched.alpha_sigma(tt)) for tt in (t, s_))
        xi = states[i]
        eps_u, eps_c = base.denoiser.eps(xi, t, None), base.denoiser.eps(xi, t, 1)  # the same bits as batched
        eps_g = eps_u + 3.0 * (eps_c - eps_u)
        x0 = (xi - s_t * eps_g) / a_t
        q = 1.0 - (a_t * s_s / (a_s * s_t)) ** 2
        if name == "ddim":
            want = a_s * x0 + s_s * eps_u
        else:
            want = a_s * x0 + s_s * math.sqrt(1.0 - q) * eps_u + s_s * math.sqrt(q) * noise[i]
        # both sides round: eps_g (lerp or u + 3 (c - u): 4 roundings of |eps_u| + 3 |eps_c - eps_u| <= 4 |eps_u| +
        # 3 |eps_c|), x0 (3 roundings of |x| + s_t |eps_g|, over a_t), q and the square roots (4 roundings, of
        # values <= 1), the step's sum (4 roundings of its terms): 16 u times the magnitudes below covers both sides
        mags = a_s * (xi.abs() + s_t * (4 * eps_u.abs() + 3 * eps_c.abs())) / a_t \
            + s_s * (eps_u.abs() + noise[i].abs())
        err = (states[i + 1] - want).abs()
        assert bool((err <= 16 * u * mags).all()), (i, float((err / mags).max() / u))
    # and it is not the plain CFG run: the re-noising changed the trajectory by far more than the bound
    plain = sample(name, rules.get("cfg", guidance_scale=3.0).guide(base.denoiser, 1), x, ts, noise=noise)
    assert float((plain - out).abs().min()) > 1e-4  # measured: 0.014 (ddpm) and more; rounding is ~1e-15


# --------------------------------------------------------------------------------------------------------------
# 6. Argument errors name the argument
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("call", "match"), [
    (lambda den, x: ddim(den, x, [0.0, 0.5, 1.0]), "^timesteps"),
    (lambda den, x: ddim(den, x, [1.0, 0.5, 0.5]), "^timesteps"),
    (lambda den, x: ddim(den, x, [1.5, 0.0]), "^timesteps"),
    (lambda den, x: ddim(den, x, [1.0, -0.1]), "^timesteps"),
    (lambda den, x: ddim(den, x, [1.0]), "^timesteps"),
    (lambda den, x: ddim(den, x, [[1.0, 0.0]]), "^timesteps"),
    (lambda den, x: ddim(den, x, [1.0, 0.0, 0.0]), "^timesteps"),
    (lambda den, x: ddim(den, x[:, 0], [1.0, 0.0]), "^x"),
    (lambda den, x: ddim(den, torch.zeros(4, 2, dtype=F64), [1.0, 0.0]), "^x"),
    (lambda den, x: ddim(den, x.to(torch.complex128), [1.0, 0.0]), "^x"),
    (lambda den, x: ddim(den, x > 0, [1.0, 0.0]), "^x"),
    (lambda den, x: ddim(den, x.half(), [1.0, 0.0]), "^x"),
    (lambda den, x: ddim(den, torch.full((4, 1), float("nan"), dtype=F64), [1.0, 0.0]), "^x"),
    (lambda den, x: ddim(den, x, [1.0, float("nan")]), "^timesteps"),
    (lambda den, x: ddim(den, x, ["1.0", "0.5"]), "^timesteps"),
    (lambda den, x: ddim(den, x, [1.0, 0.0], eta=float("nan")), "^eta"),
    (lambda den, x: ddim(den, x, [1.0, 0.0], eta="0.5"), "^eta"),
    (lambda den, x: ddim(den, x, [1.0, 0.0], callback=3), "^callback"),
    (lambda den, x: ddpm(den, x, [1.0, 0.0], noise=torch.full((1, 4, 1), float("inf"))), "^noise"),
    (lambda den, x: ddpm(den, x, [1.0, 0.0], noise=torch.zeros(1, 4, 1, dtype=torch.complex64)), "^noise"),
    (lambda den, x: time_grid(10, t_start=float("nan")), "^t_start"),
    (lambda den, x: sampler_noise(3, (2, 1), generator=0), "^generator"),
    (lambda den, x: sample(["ddim"], den, x, [1.0, 0.0]), "^name"),
    (lambda den, x: ddim(den, x, [1.0, 0.0], eta=1.5), "^eta"),
    (lambda den, x: ddpm(den, x, [1.0, 0.0]), "^generator, noise"),
    (lambda den, x: ddpm(den, x, [1.0, 0.5, 0.0], noise=torch.zeros(1, 4, 1)), "^noise"),
    (lambda den, x: ddpm(den, x, [1.0, 0.0], generator=5), "^generator"),
    (lambda den, x: ddim("not a model", x, [1.0, 0.0]), "^denoiser"),
    (lambda den, x: sample("plms", den, x, [1.0, 0.0]), "^name"),
    (lambda den, x: time_grid(0), "^n_steps"),
    (lambda den, x: time_grid(10, 0.5, 0.7), "^t_start, t_end"),
    (lambda den, x: time_grid(10, spacing="karras"), "^spacing"),
    (lambda den, x: time_grid(10, spacing="log_snr", schedule="vp-linear"), "^t_end"),
    (lambda den, x: ddim(AnalyticDenoiser(get_world("gauss1d"), "vp-cosine"), x, [1.0, 0.5]), "^timesteps"),
])
def test_bad_arguments_raise_naming_them(call, match):
    """ValueError for a wrong value, TypeError for a wrong kind (complex, bool, float16, not a Generator, not a
    Denoiser, not callable): docs/input-policy.md."""
    with pytest.raises((ValueError, TypeError), match=match):
        call(gauss1d_cfg(1.0), torch.zeros(4, 1, dtype=F64))


def test_integer_states_are_converted_exactly():
    """An int64 x is read as the same numbers in float64: the run is the float64 run, bit for bit."""
    den, ts = gauss1d_cfg(1.0), time_grid(8)
    x = torch.tensor([[-2], [0], [3]])
    assert torch.equal(sample("ddim", den, x, ts), sample("ddim", den, x.double(), ts))


class _BrokenAfter:
    """A denoiser that answers ``value`` in row ``rows`` from its ``k``-th call on (0-based calls)."""

    def __init__(self, den, k, value, rows=(0,)):
        self.den, self.k, self.value, self.rows, self.calls = den, k, value, list(rows), 0
        self.schedule, self.dim = den.schedule, den.dim

    def eps(self, x, t, condition=None):
        out = self.den.eps(x, t, condition).clone()
        if self.calls >= self.k:
            out[self.rows, 0] = self.value
        self.calls += 1
        return out


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_first_non_finite_prediction_stops_the_sampler_naming_step_and_time(name, value):
    """The model breaks at its 4th call: the sampler stops there, naming the step (1-based, of how many), the time
    and the rows, instead of carrying NaN to the end. Heun makes two calls per step: its 4th call is the second
    evaluation of step 2, at the time that step reaches."""
    ts = time_grid(10, 0.9, 0.1)
    x = torch.randn(8, 1, generator=torch.Generator().manual_seed(3), dtype=F64)
    broken = _BrokenAfter(gauss1d_cfg(2.0), 3, value, rows=(1, 4))
    if name == "heun":
        step, t, second = 2, float(ts[2]), "second evaluation, "
    else:
        step, t, second = 4, float(ts[3]), ""
    kind = "NaN" if value != value else "infinity"
    expected = (rf"^denoiser: non-finite prediction at step {step} of 10 \({second}t = {t:.6g}\): {kind} in 2 of 8 "
                rf"rows$")
    with pytest.raises(ValueError, match=expected):
        sample(name, broken, x, ts, generator=torch.Generator().manual_seed(0), eta=0.5)
    assert broken.calls == 4  # stopped at once: no further call after the broken one


def test_malformed_predictions_are_refused_naming_the_denoiser():
    class Returns:
        def __init__(self, value):
            self.value, self.schedule, self.dim = value, "vp-linear", 1

        def eps(self, x, t, condition=None):
            return self.value

    x = torch.zeros(4, 1, dtype=F64)
    for value, match in [([[0.0]] * 4, "not a tensor"), (torch.zeros(4, 2, dtype=F64), "shape"),
                         (torch.zeros(4, 1, dtype=torch.complex128), "dtype")]:
        with pytest.raises(ValueError, match=rf"^denoiser: .*{match}.*step 1 of 2"):
            ddim(Returns(value), x, [0.9, 0.5, 0.1])


def test_a_state_that_overflows_is_refused_naming_x():
    """Finite inputs near the largest double whose update overflows: refused naming x and the step, not inf. With
    eps = 0 an Euler step on vp-linear from t = 0.9 to 0.1 multiplies x by 1 - 0.8 f(0.9) = 1 + 0.4 beta(0.9) ~ 8."""
    class Zero:
        schedule, dim = "vp-linear", 1

        def eps(self, x, t, condition=None):
            return torch.zeros_like(x)

    x = torch.full((2, 1), 1e308, dtype=F64)
    with pytest.raises(ValueError, match=r"^x: the state overflows .* at step 1 of 1"):
        euler(Zero(), x, [0.9, 0.1])
    assert bool(torch.isfinite(euler(Zero(), x / 16, [0.9, 0.1])).all())  # 8e307 is still a double
