"""Figures: ``plot_all`` writes four valid PNGs, and the numbers the figures print agree with verify.tilted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toy_models import AnalyticDenoiser, get_world
from verify.figures import (
    _LINE_X,
    _cfg_density_1d,
    _mean_var_1d,
    guided_score,
    normalise_on_grid,
    plot_all,
    purple_dog_mass,
)
from verify.guidance import CFGDenoiser, linear_rule
from verify.tilted import tilted_law

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAMES = ["worlds.png", "guided_score_fields.png", "tilted_densities.png", "negative_and_composition.png"]


def test_plot_all_writes_four_pngs(tmp_path):
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
    rule = linear_rule("compose", conditions=[("red", "dog"), ("blue", "dog")], weights=[1.0, 1.0])
    reference, error = tilted_law(world, rule).probability(lambda x: x[:, 0].abs() < 1)
    mass = purple_dog_mass()
    assert mass > 0.9
    assert abs(mass - reference) < 1e-3 and error < 1e-3


@pytest.mark.parametrize("w", [0.0, 1.0, 3.0, 7.0, 30.0])
def test_gauss1d_panel_moments_match_the_closed_form(w):
    # the tilted target of N(1, 0.5)^(1+w) N(0, 1)^(-w) is N((2 + 2w) / (2 + w), 1 / (2 + w))
    mean, var = _mean_var_1d(_cfg_density_1d(get_world("gauss1d"), w), _LINE_X)
    assert mean == pytest.approx((2 + 2 * w) / (2 + w), abs=1e-9)
    assert var == pytest.approx(1 / (2 + w), abs=1e-9)
    law = tilted_law(get_world("gauss1d"), linear_rule("cfg", condition=1, w=w)).summary()
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
        tilted = tilted_law(world, linear_rule("cfg", condition=0, w=w), t=t).score(pts)
        eps = CFGDenoiser(den, 0, w=w).eps(pts, t, 0)
        torch.testing.assert_close(score, tilted, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(score, -eps / sigma, rtol=1e-9, atol=1e-9)
