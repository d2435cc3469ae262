"""verify.samplers: convergence orders against the exact continuous law, the exact law of the discrete samplers,
Monte Carlo against it, determinism, dtypes, callbacks, evaluation counts and argument errors.

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
from verify.exact_law import discrete_sampler_law, exact_gaussian_cfg_law
from verify.guidance import CFGDenoiser
from verify.metrics import holm_reject, moment_pvalues
from verify.samplers import (
    SAMPLERS,
    count_evaluations,
    ddim,
    ddpm,
    euler,
    sample,
    sampler_nfe,
    sampler_noise,
    time_grid,
)
from verify.tolerances import unit_roundoff

F64 = torch.float64
T_END = 1e-3  # sigma(T_END) = 0.0105 > 0: every solver runs at its full order (see dpmpp_2m's docstring for t_end = 0)
REF_FLOOR = 1e-9  # the exact law integrates at rtol 1e-12; its global error stays below 1e3 x rtol (test_exact_law)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The per-step tensors are tiny (at most 20000 x 1): intra-op threads only add synchronisation. On a loaded
    2-core machine one DDPM run of the Monte Carlo test took 17 s with 2 threads and 0.9 s with 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gauss1d_cfg(w: float, dtype: torch.dtype = F64) -> CFGDenoiser:
    return CFGDenoiser(AnalyticDenoiser(get_world("gauss1d"), dtype=dtype), 1, w=w)


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
# (sampler, kwargs, continuous law it discretises, theoretical order: weak order for the SDE samplers)
ORDERS = [
    ("euler", {}, "ode", 1),
    ("heun", {}, "ode", 2),
    ("ddim", {}, "ode", 1),
    ("dpmpp_2m", {}, "ode", 2),
    ("ddpm", {}, "sde", 1),
    ("euler_maruyama", {}, "sde", 1),
]
# Band for the observed order at the finest pair (100 -> 200). If err(n) = C n^-p (1 + D/n + ...), the observed order
# is p + O(1/n): its deviation halves per halving. Measured on a log-SNR grid (w in {0, 3}, mean and variance), the
# largest deviation at the 50 -> 100 pair is 0.14 (euler's variance at w = 3), so 0.07 is expected at 100 -> 200;
# 0.1 leaves room for the O(1/n^2) term and still separates order 1 from order 2.
ORDER_BAND = 0.1


@pytest.mark.parametrize("w", [0.0, 3.0])
@pytest.mark.parametrize(("name", "kw", "kind", "order"), ORDERS, ids=[o[0] for o in ORDERS])
def test_convergence_order_against_the_continuous_law(name, kw, kind, order, w):
    den = gauss1d_cfg(w)
    exact_mean, exact_cov = continuous_law(w, kind)
    errors = {"mean": [], "var": []}
    for n in N_STEPS:
        mean, cov = discrete_law(name, den, time_grid(n, 1.0, T_END, "log_snr", "vp-linear"), **kw)
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
    for seed, (name, kw) in enumerate([("ddpm", {}), ("euler_maruyama", {}), ("ddim", {"eta": 0.5})]):
        outputs[name] = sample(name, den, x, ts, generator=torch.Generator().manual_seed(seed), **kw)
        mean, cov = discrete_law(name, den, ts, **kw)
        pvalues.extend(moment_pvalues(outputs[name], mean, cov))
    assert not holm_reject(pvalues, 1e-3).any(), pvalues
    assert holm_reject(moment_pvalues(outputs["ddpm"], *continuous_law(3.0, "sde")), 1e-3).any()


# --------------------------------------------------------------------------------------------------------------
# 3. Determinism, dtypes, callbacks, evaluation counts
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "kw"), [("ddpm", {}), ("euler_maruyama", {}), ("ddim", {"eta": 0.5})])
def test_seed_and_noise_tensor_reproduce_the_run(name, kw):
    den = gauss1d_cfg(3.0)
    ts = time_grid(30)
    x = torch.randn(16, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    a = sample(name, den, x, ts, generator=torch.Generator().manual_seed(5), **kw)
    b = sample(name, den, x, ts, generator=torch.Generator().manual_seed(5), **kw)
    c = sample(name, den, x, ts, noise=sampler_noise(30, x.shape, torch.Generator().manual_seed(5)), **kw)
    d = sample(name, den, x, ts, generator=torch.Generator().manual_seed(6), **kw)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(a, d)


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
                              guide=lambda model: CFGDenoiser(model, 1, w=3.0), generator=torch.Generator())
    expected = (20 - (t_end == 0.0)) if name == "heun" else 10
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
    for name in ["euler", "heun", "ddim", "dpmpp_2m"]:
        towards = []
        for w in (0.0, 3.0):
            out = sample(name, CFGDenoiser(model, 0, w=w), x, ts)
            assert bool(torch.isfinite(out).all())
            towards.append(float(out[:, 0].mean()))
        assert 2.0 < towards[0] < towards[1], (name, towards)


# --------------------------------------------------------------------------------------------------------------
# 5. Argument errors name the argument
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
