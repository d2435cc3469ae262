"""Figures: ``plot_all`` writes nine valid PNGs, and the numbers the figures print agree with verify.tilted,
verify.exact_law and the samplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toy_models import AnalyticDenoiser, get_world
from verify import rules
from verify.exact_law import (
    closed_form_ode_variance_1d,
    exact_gaussian_cfg_law,
    pf_ode_law_1d,
    reverse_sde_law_1d,
)
from verify.figures import (
    _LINE_X,
    _cfg_density_1d,
    _mean_var_1d,
    _RowwiseCFG,
    bimodal1d_cfg_laws,
    gauss1d_cfg_moments,
    guided_score,
    negative_composition_samples,
    normalise_on_grid,
    pf_ode_density_1d,
    plot_all,
    purple_dog_mass,
    quality_diversity_curves,
    ring2d_trajectories,
    sde_samples_1d,
)
from verify.samplers import ddim, euler_maruyama, time_grid
from verify.tilted import tilted_law

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAMES = ["worlds.png", "guided_score_fields.png", "tilted_densities.png", "negative_and_composition.png",
         "cfg_law_vs_tilted.png", "quality_diversity.png", "trajectories_ring2d.png",
         "negative_composition_samples.png", "rule_gallery.png"]


def test_plot_all_writes_every_png(tmp_path):
    out = tmp_path / "nested" / "figures"
    paths = plot_all(out)
    assert [p.name for p in paths] == NAMES
    for path in paths:
        assert path.parent == out and path.is_file()
        data = path.read_bytes()
        assert data[:8] == PNG_SIGNATURE, path.name
        assert len(data) > 20_000, (path.name, len(data))


def test_normalise_on_grid_is_exact_for_a_gaussian():
    x = np.linspace(-8.0, 8.0, 2001)
    y = np.linspace(-10.0, 10.0, 2001)
    log_q = -0.5 * ((x[None, :] - 1.0) ** 2 / 0.5 + y[:, None] ** 2 / 2.0) + 123.0  # offset: log space matters
    p = normalise_on_grid(log_q, x, y)
    exact = np.exp(-0.5 * ((x[None, :] - 1.0) ** 2 / 0.5 + y[:, None] ** 2 / 2.0)) / (2 * np.pi)
    np.testing.assert_allclose(p, exact, rtol=1e-9, atol=1e-15)


def test_purple_dog_mass_matches_tilted_quadrature():
    world = get_world("attributes2d")
    reference, error = tilted_law(world, rules.get("compose", weights=[1.0, 1.0]),
                                  {"cond_1": ("red", "dog"), "cond_2": ("blue", "dog")}).probability(
        lambda x: x[:, 0].abs() < 1)
    mass = purple_dog_mass()
    assert mass > 0.9
    assert abs(mass - reference) < 1e-3 and error < 1e-3


@pytest.mark.parametrize("w", [0.0, 1.0, 3.0, 7.0, 30.0])
def test_gauss1d_panel_moments_match_the_closed_form(w):
    # the tilted target of N(1, 0.5)^(1+w) N(0, 1)^(-w) is N((2 + 2w) / (2 + w), 1 / (2 + w))
    mean, var = _mean_var_1d(_cfg_density_1d(get_world("gauss1d"), w), _LINE_X)
    assert mean == pytest.approx((2 + 2 * w) / (2 + w), abs=1e-9)
    assert var == pytest.approx(1 / (2 + w), abs=1e-9)
    law = tilted_law(get_world("gauss1d"), rules.get("cfg", w=w), {"cond": 1}).summary()
    assert var == pytest.approx(float(law.cov[0, 0]), abs=1e-9)


def test_bimodal1d_panel_variance_stays_near_half():
    variances = [_mean_var_1d(_cfg_density_1d(get_world("bimodal1d"), w), _LINE_X)[1] for w in (0, 1, 7, 100)]
    assert variances[0] == pytest.approx(0.5, abs=1e-9)
    assert all(0.4 < v <= 0.5 + 1e-9 for v in variances)


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_guided_score_is_the_tilted_score_and_the_cfg_eps(t):
    world = get_world("ring2d")
    den = AnalyticDenoiser(world, "vp-linear")
    x = torch.linspace(-4.0, 4.0, 21, dtype=torch.float64)
    pts = torch.stack(torch.meshgrid(x, x, indexing="xy"), dim=-1).reshape(-1, 2)
    sigma = float(den.schedule.sigma(t))
    for w in (0.0, 3.0, 7.0):
        score = guided_score(den, pts, t, 0, w)
        tilted = tilted_law(world, rules.get("cfg", w=w), {"cond": 0}, t=t).score(pts)
        eps = rules.get("cfg", w=w).guide(den, {"cond": 0}).eps(pts, t)
        torch.testing.assert_close(score, tilted, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(score, -eps / sigma, rtol=1e-9, atol=1e-9)


# --- cfg_law_vs_tilted.png ------------------------------------------------------------------------------------
@pytest.mark.parametrize("w", [0.0, 3.0, 7.0])
def test_gauss1d_plotted_moments_are_the_exact_cfg_laws(w):
    world = get_world("gauss1d")
    moments = gauss1d_cfg_moments(w)  # the figure solves the moment ODEs at rtol 1e-9
    for sampler in ("ode", "sde"):
        mean, cov = exact_gaussian_cfg_law(world.law(1), world.law(None), w, sampler, start="marginal")  # 1e-12
        assert moments[sampler] == pytest.approx((float(mean[0]), float(cov[0, 0])), abs=1e-7)
    alpha, sigma = (float(v) for v in AnalyticDenoiser(world).schedule.alpha_sigma(1.0))
    start_var = alpha**2 * 0.5 + sigma**2  # the marginal start p_1(x|c) = N(alpha, alpha^2 0.5 + sigma^2)
    assert moments["ode"][1] == pytest.approx(closed_form_ode_variance_1d(0.5, 1.0, w, start_var), rel=1e-6)
    assert moments["tilted"] == pytest.approx(((2 + 2 * w) / (2 + w), 1 / (2 + w)), abs=1e-12)
    if w == 0:  # all three are p(x|c) = N(1, 0.5)
        for key in ("ode", "sde", "tilted"):
            assert moments[key] == pytest.approx((1.0, 0.5), abs=1e-6)
    else:  # the figure's message: ODE, SDE and tilted target are three different laws, in this order
        assert moments["tilted"][0] < moments["sde"][0] - 0.1 < moments["ode"][0] - 0.2
        assert moments["ode"][1] < moments["sde"][1] < moments["tilted"][1]


def test_bimodal1d_flow_map_density_matches_the_exact_laws():
    world = get_world("bimodal1d")
    # w = 0: the PF-ODE carries p_1(x|c) to p(x|c) exactly, so the flow-map density is p(x|1) pointwise
    x0, density, _ = pf_ode_density_1d(world, 1, 0.0)
    exact = torch.exp(world.law(1).log_prob(torch.as_tensor(x0[:, None]))).numpy()
    np.testing.assert_allclose(density, exact, atol=1e-6)
    for w, law in bimodal1d_cfg_laws([7.0]).items():
        x0, density = law["flow"]
        laws = {"cond": world.law(1), "uncond": world.law(None)}
        ref = pf_ode_law_1d(rules.get("cfg", w=w), laws)
        assert law["ode"] == pytest.approx((ref.mean, ref.var), abs=1e-6)
        # the plotted curve itself: unit mass and the same mean by the trapezoid rule in x0 (change of variables)
        assert np.trapezoid(density, x0) == pytest.approx(1.0, abs=1e-4)
        assert np.trapezoid(x0 * density, x0) == pytest.approx(ref.mean, abs=1e-4)
        sde = reverse_sde_law_1d(rules.get("cfg", w=w), laws, n_cells=1000, n_steps=1000)  # error 2e-4
        assert law["sde"] == pytest.approx((sde.mean, sde.var), abs=3e-3)  # the legend's 400 cells: error 1.6e-3
        assert law["ode"][0] > law["sde"][0] + 0.5 > law["tilted"][0] + 0.5  # neither law is the tilted target


def test_bimodal1d_sde_histogram_samples_have_the_fokker_planck_moments():
    # n draws: the sample mean's sd is sqrt(var / n) = 0.015 at n = 2000, so 4 sd = 0.058; Euler-Maruyama's
    # 400-step bias is O(1/400) times the drift's scale: 0.02 of slack covers it (measured bias: below 0.01)
    world = get_world("bimodal1d")
    samples = sde_samples_1d(world, 1, [0.0, 3.0], n=2000, n_steps=400, seed=1)
    assert samples.shape == (2, 2000)
    for w, x in zip([0.0, 3.0], samples, strict=True):
        ref = reverse_sde_law_1d(rules.get("cfg", w=w), {"cond": world.law(1), "uncond": world.law(None)},
                                 n_cells=1000, n_steps=1000)
        assert abs(x.mean() - ref.mean) < 4 * np.sqrt(ref.var / len(x)) + 0.02, w
        # sample variance: sd about var * sqrt(2 / n) = 0.013
        assert abs(x.var() - ref.var) < 4 * ref.var * np.sqrt(2 / len(x)) + 0.02, w


def test_rowwise_cfg_is_the_cfg_rule_row_by_row():
    world = get_world("bimodal1d")
    den = AnalyticDenoiser(world)
    x = torch.linspace(-5.0, 5.0, 11, dtype=torch.float64)[:, None]
    w_rows = torch.tensor([0.0, 1.0, 7.0], dtype=torch.float64).repeat_interleave(11)
    for t in (0.05, 0.5, 1.0):
        eps = _RowwiseCFG(w_rows).guide(den, {"cond": 1}).eps(x.repeat(3, 1), t)
        expected = torch.cat([rules.get("cfg", w=w).guide(den, {"cond": 1}).eps(x, t) for w in (0.0, 1.0, 7.0)])
        torch.testing.assert_close(eps, expected, rtol=1e-14, atol=1e-14)  # lerp: scalar vs tensor weight


# --- quality_diversity.png ------------------------------------------------------------------------------------
def test_quality_diversity_curves_at_w0_and_their_trade_off():
    n = 8000
    data = quality_diversity_curves((0.0, 7.0), n=n, n_steps=200, seed=0)
    tilted = data["tilted"]
    # w = 0: the tilted target is p(x|c) itself: precision = recall = level (grid HDR: a few 1e-4), distance 0
    assert tilted["precision"][0] == pytest.approx(0.95, abs=2e-3)
    assert tilted["recall"][0] == pytest.approx(0.95, abs=2e-3)
    assert tilted["fd"][0] < 1e-6
    # w = 0, DDIM: precision is a binomial fraction of n samples, sd sqrt(0.95 * 0.05 / n) = 0.0024, so 4 sd =
    # 0.0097, plus 0.01 for the 200-step discretisation (measured: 0.004) and the threshold's own error
    ddim_res = data["ddim"]
    assert abs(ddim_res["precision"][0] - 0.95) < 4 * np.sqrt(0.95 * 0.05 / n) + 0.01
    # recall: the KDE widens the region to 1 - 0.05^(1 + h^2), h^2 = n^(-1/3): 0.958 here
    assert abs(ddim_res["recall"][0] - (1 - 0.05 ** (1 + n ** (-1 / 3)))) < 0.02
    assert ddim_res["fd"][0] < 0.01 and data["ddpm"]["fd"][0] < 0.01
    # w = 7: DDPM trades recall for precision; DDIM overshoots out of p(x|c)'s HDR; the tilted target barely moves
    assert data["ddpm"]["precision"][1] > 0.95 and data["ddpm"]["recall"][1] < data["ddpm"]["recall"][0] - 0.1
    assert ddim_res["precision"][1] < 0.1 and ddim_res["recall"][1] < 0.1
    assert tilted["precision"][1] > 0.95 and tilted["recall"][1] > 0.85


# --- trajectories_ring2d.png ----------------------------------------------------------------------------------
def test_ring2d_trajectories_are_the_samplers_paths():
    n, steps = 10, 20
    paths = ring2d_trajectories((0.0, 7.0), n=n, n_steps=steps, seed=3)
    den = AnalyticDenoiser(get_world("ring2d"))
    start = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for (name, w), traj in paths.items():
        assert traj.shape == (steps + 1, n, 2)
        np.testing.assert_array_equal(traj[0], start.numpy())
        sampler = {"ddim": ddim, "euler_maruyama": euler_maruyama}[name]
        end = sampler(rules.get("cfg", w=w).guide(den, {"cond": 0}), start, time_grid(steps),
                      generator=torch.Generator().manual_seed(4))
        np.testing.assert_array_equal(traj[-1], end.numpy())
    # the figure's message: at w = 7 the ODE ends beyond class 0's mean (radius 3), and far tighter than the SDE
    ode_end, sde_end = paths["ddim", 7.0][-1], paths["euler_maruyama", 7.0][-1]
    assert np.hypot(*ode_end.T).mean() > 3.4
    assert ode_end.std(axis=0).sum() < 0.5 * sde_end.std(axis=0).sum()


# --- negative_composition_samples.png -------------------------------------------------------------------------
def test_negative_composition_fractions_against_the_tilted_masses():
    n = 5000
    data = negative_composition_samples(n=n, n_steps=100, seed=0)
    # If the n DDIM outputs were draws of a law with mass m in a region, the fraction there would be Binomial(n, m)
    # / n, sd sqrt(m (1 - m) / n): 4 sd leaves a two-sided chance of 6e-5 of a false failure. Slack on top: the
    # tilted mass's quadrature error (TiltedLaw.probability), one sample (1 / n, for masses near 0 or 1, where the
    # normal approximation fails), and 0.005 for DDIM's 100 steps and the N(0, I) start instead of p_1 (alpha_1 =
    # 0.0066: a change of order 1e-4).
    def close(name, region):
        frac, se, mass, err = data[name]["regions"][region]
        assert se == pytest.approx(np.sqrt(mass * (1 - mass) / n))
        return abs(frac - mass) <= 4 * se + err + 1 / n + 0.005

    # plain 'dog' is unguided: DDIM samples p(x|dog) itself, the tilted law at w = 0
    for region in data["dog"]["regions"]:
        assert close("dog", region), region
    # composition: the guided ODE's law is not the tilted law (its x1 collapses to a line), but both hold all but
    # 1e-4 of their mass in the purple band |x1| < 1
    band = "purple band $|x_1| < 1$"
    assert close("compose", band)
    assert data["compose"]["regions"][band][2] == pytest.approx(purple_dog_mass(), abs=2e-3)
    # the ODE collapses x1: its sample sd is below 0.05, under a third of the tilted law's x1 sd (0.17, computed)
    compose = data["compose"]
    tilted_sd = float(tilted_law(get_world("attributes2d"), compose["rule"], compose["conditions"]).summary()
                      .cov[0, 0]) ** 0.5
    assert data["compose"]["samples"][:, 0].std() < 0.05 < tilted_sd / 3
    # negative prompts: DDIM leaves samples on the red side, where the tilted targets have no mass at all
    red = "red side $x_1 < -1$"
    for name in ("negative_001", "negative_000"):
        frac, _, mass, _ = data[name]["regions"][red]
        assert frac > 0.03 and mass < 1e-20, name
