"""verify.scheduler_law: diffusers schedulers driven with exact guided predictions, against exact laws."""

from __future__ import annotations

import json
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="the scheduler laws drive diffusers schedulers; "
                                                    "pip install cfgtruth[diffusers]")

from toy_models.scenarios import get_world  # noqa: E402
from verify import rules  # noqa: E402
from verify.exact_law import exact_gaussian_law  # noqa: E402
from verify.scheduler_law import (  # noqa: E402
    ORDER_BAND,
    GridSchedule,
    assert_scheduler_law,
    scheduler_law,
    settings_of,
)
from verify.tolerances import gamma  # noqa: E402

F64 = torch.float64


def _hand_ddim_law(sched, g: float) -> tuple[float, float]:
    r"""DDIM (eta = 0, no clipping) on gauss1d with CFG, pushed through by hand: with the branch laws N(m_b, v_b),
    :math:`\varepsilon_b(x) = \sigma (x - \alpha m_b)/(\alpha^2 v_b + \sigma^2)` (eps = -sigma * score), the guided
    eps is affine, :math:`c_1 x + c_0`, and the DDIM update :math:`x' = \alpha' \hat x_0 + \sigma'\hat\varepsilon`,
    :math:`\hat x_0 = (x - \sigma\hat\varepsilon)/\alpha`, is :math:`x' = p x + q`; so the mean and variance move as
    :math:`m \to p m + q`, :math:`v \to p^2 v` from N(0, 1). Levels from the scheduler's alphas_cumprod, the last
    step to alpha-bar = 1 (set_alpha_to_one)."""
    ac = sched.alphas_cumprod.to(F64)
    branches = [(g, 1.0, 0.5), (1.0 - g, 0.0, 1.0)]  # (weight, mean, variance): cond N(1, 0.5), uncond N(0, 1)
    ts = [int(t) for t in sched.timesteps]
    m, v = 0.0, 1.0
    for i, k in enumerate(ts):
        a2 = float(ac[k])
        a2_prev = float(ac[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        alpha, sigma = math.sqrt(a2), math.sqrt(1.0 - a2)
        c1 = sum(w * sigma / (a2 * vb + 1.0 - a2) for w, _, vb in branches)
        c0 = sum(-w * sigma * alpha * mb / (a2 * vb + 1.0 - a2) for w, mb, vb in branches)
        # x0 = (x - sigma (c1 x + c0)) / alpha;  x' = alpha' x0 + sigma' (c1 x + c0)
        ap, sp = math.sqrt(a2_prev), math.sqrt(1.0 - a2_prev)
        p = ap * (1.0 - sigma * c1) / alpha + sp * c1
        q = -ap * sigma * c0 / alpha + sp * c0
        m, v = p * m + q, p * p * v
    return m, v


def test_affine_probe_is_the_exact_ddim_law():
    steps, g = 20, 3.0
    audit = scheduler_law(diffusers.DDIMScheduler(clip_sample=False), "cfg", params={"guidance_scale": g},
                          steps=steps, settings=False)
    sched = diffusers.DDIMScheduler(clip_sample=False)
    sched.set_timesteps(steps)
    m, v = _hand_ddim_law(sched, g)
    assert audit.law.method == "affine probe"
    # diffusers forms sqrt(alpha-bar) and 1 - alpha-bar in float32 (its alphas_cumprod is float32) before they meet
    # the float64 sample; the hand computation forms them in float64 from the same float32 values. Each step's map
    # (p, q) carries at most 8 such float32 roundings, so after `steps` steps the products differ by at most
    # gamma_{8 steps}(float32) relative, on the scale of the mean's terms (|m| + 1) and twice that for the variance
    tol = gamma(8 * steps, torch.float32)
    assert abs(audit.law.mean[0] - m) <= tol * (abs(m) + 1.0)
    assert abs(audit.law.cov[0][0] - v) <= 2.0 * tol * v
    # and the probe's stated rounding bound covers what it claims
    assert audit.law.tolerance < 1e-3


def test_grid_schedule_reproduces_alphas_cumprod_and_inverts():
    sched = diffusers.DDIMScheduler()
    grid = GridSchedule(sched.alphas_cumprod)
    ac = sched.alphas_cumprod.to(F64)
    k = torch.tensor([0, 1, 499, 998, 999])
    t = (k.to(F64) + 1) / 1000
    alpha, sigma = grid.alpha_sigma(t)
    # sigmoid(log a - log1p(-a)) returns a to a few float64 ulps: 8 u relative
    assert torch.allclose(alpha**2, ac[k], rtol=8 * 2.0**-53, atol=0)
    assert torch.allclose(grid.t_from_log_snr(grid.log_snr(t)), t, rtol=0, atol=16 * 2.0**-53)
    assert float(grid.alpha(0.0)) == 1.0 and float(grid.sigma(0.0)) == 0.0


def test_ddim_converges_at_order_one_and_second_order_solvers_at_two():
    # the observed order log2(bias(N)/bias(2N)) drifts to the asymptotic one as O(1/N); docs/tolerances.md
    # section 4 measures a drift below 0.1 between 100 and 200 steps for first- and second-order samplers
    band = 0.1
    ddim = scheduler_law(diffusers.DDIMScheduler(clip_sample=False), steps=50, settings=False)
    assert abs(ddim.convergence["orders"][-1] - 1.0) < band, ddim.report()
    heun = scheduler_law("HeunDiscreteScheduler", steps=25, settings=False)
    assert abs(heun.convergence["orders"][-1] - 2.0) < band, heun.report()
    dpm = scheduler_law("DPMSolverMultistepScheduler", steps=25, settings=False)
    # a multistep solver's error carries a first-order warm-up step and the final step to sigma = 0, terms of
    # relative size O(1/N) that did not exist for the one-step samplers the 0.1 band was measured on; DPM-Solver++(2M)
    # reads 2.16-2.18 from 25 to 200 steps, so its band is widened to 0.25 (still far from 1 and from 3)
    assert abs(dpm.convergence["orders"][-1] - 2.0) < 0.25, dpm.report()
    for audit in (ddim, heun, dpm):
        assert audit.passed, audit.report()


def test_ddpm_monte_carlo_meets_the_reverse_sde_law():
    """DDPM at 300 steps by Monte Carlo (1000 runs, seed 3) against the exact reverse-SDE law on its grid.

    Two z-tests, mean and variance, at |z| < 3.5. DDPM is first order (weak): its bias at 50 steps is W2 0.066
    (measured, docs/schedulers.md), so about 0.011 at 300 steps, at most a variance error of 2 sd W2 = 0.0097: 1.1
    standard errors of the variance (0.0087) and 0.8 of the mean's (0.014). With a shift of up to 1.1 standard
    errors the false-alarm rate of each test is at most P(|Z + 1.1| > 3.5) = 0.8 %, 1.6 % for the pair. Power
    against the probability-flow ODE's law (mean 1.99 vs the SDE's 1.75): a shift of 0.24 / 0.014 = 17 standard
    errors, rejected with probability 1 - 1e-50."""
    audit = scheduler_law(diffusers.DDPMScheduler(clip_sample=False), steps=300, settings=False, convergence=False,
                          n_samples=1000, seed=3)
    law, ref = audit.law, audit.continuous_law
    assert law.method == "monte carlo" and "reverse SDE" in ref.method
    z_mean = (law.mean[0] - ref.mean[0]) / law.se_mean[0]
    z_var = (law.cov[0][0] - ref.cov[0][0]) / law.se_cov[0][0]
    assert abs(z_mean) < 3.5 and abs(z_var) < 3.5, (z_mean, z_var)
    world, rule = get_world("gauss1d"), rules.get("cfg", guidance_scale=3.0)
    ode_mean, _ = exact_gaussian_law(rule, {"cond": world.law(1), "uncond": world.law(None)}, "ode")
    assert abs((law.mean[0] - float(ode_mean[0])) / law.se_mean[0]) > 3.5


class _OffByOneDDIM(diffusers.DDIMScheduler):
    """A broken DDIM: its update reads the noise level one timestep above the one the model was told."""

    def step(self, model_output, timestep, sample, *args, **kwargs):
        shifted = min(int(timestep) + 1, self.config.num_train_timesteps - 1)
        return super().step(model_output, shifted, sample, *args, **kwargs)


def test_a_broken_scheduler_is_a_finding():
    """The off-by-one update errs by O(1/1000) of the level at every step, O(N/1000) in all: its bias stops
    shrinking by 400 steps (observed order 0.37 from 200 to 400, against 0.99 for the correct DDIM)."""
    broken = scheduler_law(_OffByOneDDIM(clip_sample=False), steps=100, settings=False)
    assert not broken.passed
    assert any(f.startswith("convergence") for f in broken.findings), broken.report()


def test_clip_sample_default_is_a_trap_on_gauss1d():
    """gauss1d's guided data (mean about 2) leave [-1, 1]: DDIM's default clip_sample=True clips every x0 estimate
    to [-1, 1] and collapses the law; the audit says the default is the trap."""
    audit = scheduler_law("DDIMScheduler", steps=50, n_samples=2000)
    assert not audit.passed
    unclipped = next(s for s in audit.settings if s.overrides == {"clip_sample": False})
    assert unclipped.trap and "DEFAULT is the trap" in unclipped.detail
    assert any("clip_sample=False" in f for f in audit.findings)
    # what happens on gauss1d: the clipped law sits at the clip value, far from the continuous law
    assert audit.bias["scheduler_vs_continuous"]["w2"] > 1.0
    assert abs(audit.law.mean[0] + 1.0) < 1e-6
    # predicting x0 or v instead of eps must not move the law
    for s in audit.settings:
        if "prediction_type" in s.overrides:
            assert not s.trap, s.detail


def test_flow_match_euler_with_velocity_predictions():
    audit = scheduler_law("FlowMatchEulerDiscreteScheduler", steps=50, settings=False)
    assert audit.law.method == "affine probe"
    assert audit.passed, audit.report()
    # first order: the W2 order mixes the variance's O(1/N) error with a mean error that changes sign near 100
    # steps, so the finest order is read with the audit's own band (ORDER_BAND = 0.5, which separates 1 from 2)
    assert abs(audit.convergence["orders"][-1] - 1.0) < ORDER_BAND
    # and the bias is small against the law's spread
    assert audit.bias["scheduler_vs_continuous"]["w2"] < 0.1 * math.sqrt(audit.continuous_law.cov[0][0])


def test_json_has_the_documented_keys():
    audit = scheduler_law(diffusers.DDIMScheduler(clip_sample=False), steps=10, n_samples=2000)
    data = json.loads(json.dumps(audit.to_json()))
    for key in ("passed", "scheduler", "config", "reference", "law", "continuous_law", "tilted_law", "settings",
                "findings"):
        assert key in data
    assert data["config"] == {"clip_sample": False}
    assert set(data["reference"]) == {"rule", "params", "source"} and data["reference"]["source"]
    assert set(data["law"]) >= {"mean", "cov"}
    assert data["settings"] and set(data["settings"][0]) >= {"name", "overrides", "trap", "detail"}
    assert "tilted target" in audit.report()


def test_settings_catalogue_follows_the_configuration():
    names = [n for n, _ in settings_of(dict(diffusers.DDIMScheduler().config), ("eta",))]
    assert "clip_sample=False" in names and "timestep_spacing='trailing'" in names and "eta=1.0" in names
    dpm = [n for n, _ in settings_of(dict(diffusers.DPMSolverMultistepScheduler().config))]
    assert "algorithm_type='sde-dpmsolver++'" in dpm and "use_karras_sigmas=True" in dpm


def test_assert_scheduler_law():
    assert_scheduler_law(diffusers.DDIMScheduler(clip_sample=False), steps=20, settings=False, max_bias=0.1)
    with pytest.raises(AssertionError, match="max_bias"):
        assert_scheduler_law(diffusers.DDIMScheduler(clip_sample=False), steps=20, settings=False, max_bias=1e-4)


@pytest.mark.parametrize("kwargs, name", [
    ({"scheduler": "Foo"}, "scheduler"),
    ({"scheduler": 3}, "scheduler"),
    ({"scheduler": "DDIMScheduler", "rule": "nope"}, "rule"),
    ({"scheduler": "DDIMScheduler", "steps": 1}, "steps"),
    ({"scheduler": "DDIMScheduler", "world": "nowhere"}, "world"),
    ({"scheduler": "DDIMScheduler", "params": [1]}, "params"),
])
def test_bad_input_names_the_argument(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=f"^{name}"):
        scheduler_law(**kwargs)


def test_a_scheduler_ending_at_the_first_trained_level_gets_no_denoising_jump():
    # final_sigmas_type='sigma_min' ends at level 0, whose float32 sigma gives a log-SNR 2.4e-8 above the float64
    # grid value; read as "above the floor", the continuous law gained a denoising jump the scheduler never takes,
    # a floor of W2 1.5e-4 that turned UniPC's order between 200 and 400 steps negative (6.5e-5 -> 1.5e-4; 1.3e-5
    # at 400 steps without it). The continuous law must end at level 0, log-SNR 9.21, with no jump after it
    sched = diffusers.UniPCMultistepScheduler(final_sigmas_type="sigma_min")
    audit = scheduler_law(sched, "cfg", steps=25, settings=False, convergence=False)
    assert "denoising step" not in audit.continuous_law.method
    assert "to 9.21" in audit.continuous_law.method
