"""The sampled-law figures (cfg_law_vs_tilted, tilted_densities, quality_diversity, trajectories_ring2d): each
draws its providers' results, and those results agree with verify.tilted, verify.exact_law and the samplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toy_models import AnalyticDenoiser, get_world
from verify import rules
from verify.evidence.targets import normalise_on_grid
from verify.samplers import sample, time_grid

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAMES = ("cfg_law_vs_tilted.png", "tilted_densities.png", "quality_diversity.png", "trajectories_ring2d.png")


@pytest.fixture(scope="module")
def get(quick_evidence):
    return quick_evidence.get


def test_the_four_figures_draw_from_the_quick_evidence(tmp_path, quick_evidence):
    from verify.figures import plot

    paths = plot(NAMES, tmp_path, quick_evidence)
    assert [p.name for p in paths] == list(NAMES)
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 20_000, (path.name, len(data))


def test_normalise_on_grid_is_exact_for_a_gaussian():
    x = np.linspace(-8.0, 8.0, 2001)
    y = np.linspace(-10.0, 10.0, 2001)
    log_q = -0.5 * ((x[None, :] - 1.0) ** 2 / 0.5 + y[:, None] ** 2 / 2.0) + 123.0  # offset: log space matters
    p = normalise_on_grid(log_q, x, y)
    exact = np.exp(-0.5 * ((x[None, :] - 1.0) ** 2 / 0.5 + y[:, None] ** 2 / 2.0)) / (2 * np.pi)
    # trapezoid on a Gaussian spanning > 11 sd: exact up to rounding of the sum (2001^2 terms, relative ~1e-12)
    np.testing.assert_allclose(p, exact, rtol=1e-9, atol=1e-15)


def test_tilted_densities_match_the_closed_form_and_the_ledger(get):
    td, moments = get("tilted_densities_1d"), get("tilted_targets_1d").moments
    for w in td.density["gauss1d"]:
        wf = float(w)
        # N((2 + 2w)/(2 + w), 1/(2 + w)) on a 4001-point grid: the trapezoid error is spectrally small, so 1e-9
        assert td.mean["gauss1d"][w] == pytest.approx((2 + 2 * wf) / (2 + wf), abs=1e-9)
        assert td.var["gauss1d"][w] == pytest.approx(1 / (2 + wf), abs=1e-9)
        assert td.var["gauss1d"][w] == pytest.approx(moments["gauss1d"][w].var, abs=1e-9)
    for w, var in td.var["bimodal1d"].items():
        assert var == pytest.approx(moments["bimodal1d"][w].var, abs=1e-6)  # two quadratures of one law
        assert 0.4 < var <= 0.5 + 1e-9
    assert td.var["bimodal1d"]["0"] == pytest.approx(0.5, abs=1e-9)


def test_flow_map_density_matches_the_exact_laws(get):
    dens, laws = get("bimodal1d_law_densities"), get("bimodal1d_laws")
    # w = 0: the PF-ODE carries p_1(x|c) to p(x|c), so the flow-map density is p(x|1) up to Heun's 100-step error
    # (second order: about (1/100)^2 times the drift's scale)
    x0, density = dens.ode_x["0"], dens.ode_density["0"]
    exact = torch.exp(get_world("bimodal1d").law(1).log_prob(torch.as_tensor(x0[:, None]))).numpy()
    np.testing.assert_allclose(density, exact, atol=2e-3)
    for w, x0 in dens.ode_x.items():
        # unit mass by the trapezoid rule in x0, and the exact law's mean to Heun's discretisation (< 1e-3)
        assert np.trapezoid(dens.ode_density[w], x0) == pytest.approx(1.0, abs=1e-3), w
        assert dens.ode_mean[w] == pytest.approx(laws.law("ode", w).mean, abs=1e-3), w
    for w, mean in dens.sde_mean.items():
        # n draws: the mean's sd is sqrt(var / n) (0.015 at n = 2000), 4 sd; Euler-Maruyama's 100-step bias is
        # O(1/100) of the drift's scale: 0.03 of slack covers it
        ref = laws.law("sde", w)
        assert abs(mean - ref.mean) < 4 * np.sqrt(ref.var / dens.n_sde) + 0.03, w
        assert np.sum(dens.sde_density[w] * np.diff(dens.sde_edges)) == pytest.approx(1.0, abs=0.01)  # in range
    # the figure's message: neither law is the tilted target
    assert laws.law("ode", "7").mean > laws.law("sde", "7").mean + 0.5 > laws.law("tilted", "7").mean + 0.5


def test_quality_diversity_at_w0_and_its_trade_off(get):
    qd = get("quality_diversity")
    n = qd.samples.n
    ode, sde = qd.samples.samplers
    tilted = qd.ring2d["tilted"]
    # w = 0: the tilted target is p(x|c) itself: precision = recall = level (grid HDR: a few 1e-4), distance 0
    assert tilted["0"].precision == pytest.approx(0.95, abs=2e-3)
    assert tilted["0"].recall_grid == pytest.approx(0.95, abs=2e-3)
    assert tilted["0"].frechet_to_p_x_given_c < 1e-6
    # w = 0, DDIM: precision is a binomial fraction, sd sqrt(0.95 * 0.05 / n), 4 sd, plus 0.015 for the 100-step
    # discretisation and the threshold's own error (20000 reference draws: sd 0.0015)
    assert abs(qd.ring2d[ode]["0"].precision - 0.95) < 4 * np.sqrt(0.95 * 0.05 / n) + 0.015
    assert qd.ring2d[ode]["0"].frechet_to_p_x_given_c < 0.01 and qd.ring2d[sde]["0"].frechet_to_p_x_given_c < 0.01
    # w = 7: DDPM trades recall for precision; DDIM overshoots out of p(x|c)'s HDR; the tilted target barely moves
    assert qd.ring2d[sde]["7"].precision > 0.95
    assert qd.ring2d[sde]["7"].recall_grid < qd.ring2d[sde]["0"].recall_grid - 0.1
    assert qd.ring2d[ode]["7"].precision < 0.1 and qd.ring2d[ode]["7"].recall_grid < 0.1
    assert tilted["7"].precision > 0.95 and tilted["7"].recall_grid > 0.85


def test_trajectories_are_the_provider_paths(get):
    rs = get("ring2d_cfg_samples")
    den = AnalyticDenoiser(get_world("ring2d"))
    for name in rs.samplers:
        for w in rs.ws:
            traj = rs.paths[name][w]
            assert traj.shape == (rs.steps + 1, 40, 2)
            # the last frame is the run's output, the first its start: the figure draws the ledger's runs
            np.testing.assert_array_equal(traj[-1], rs.samples[name][w][:40].numpy())
    # DDIM is deterministic: rerun the first 10 paths alone and land on the same points
    start = torch.as_tensor(rs.paths["ddim"]["7"][0][:10])
    end = sample("ddim", rules.get("cfg", w=7.0).guide(den, {"cond": 0}), start, time_grid(rs.steps))
    np.testing.assert_allclose(end.numpy(), rs.paths["ddim"]["7"][-1][:10], rtol=0, atol=1e-12)
    # the figure's message: at w = 7 the ODE ends beyond class 0's mean (radius 3), and far tighter than the SDE
    ode_end, sde_end = rs.paths["ddim"]["7"][-1], rs.paths["ddpm"]["7"][-1]
    assert np.hypot(*ode_end.T).mean() > 3.4
    assert ode_end.std(axis=0).sum() < 0.5 * sde_end.std(axis=0).sum()
