"""The analytic figures (worlds.png, guided_score_fields.png, negative_and_composition.png,
negative_composition_samples.png): they are written from the providers, and the numbers they draw agree with
verify.tilted, the CFG rule and the samples' binomial laws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toy_models import AnalyticDenoiser, get_world
from verify import rules
from verify.evidence.targets import grid_mass
from verify.figures import plot
from verify.tilted import tilted_law

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAMES = ("worlds.png", "guided_score_fields.png", "negative_and_composition.png", "negative_composition_samples.png")


def test_the_four_figures_are_written_from_the_shared_evidence(tmp_path, quick_evidence):
    paths = plot(NAMES, tmp_path / "nested", quick_evidence)
    assert [p.name for p in paths] == list(NAMES)
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == PNG_SIGNATURE, path.name
        assert len(data) > 20_000, (path.name, len(data))  # a blank 150 dpi canvas of these sizes is smaller


def test_purple_dog_mass_on_the_grid_matches_the_quadrature(quick_evidence):
    """The figure's grid density puts the record's mass in the band: the grid (spacing 0.05) and verify.tilted's
    quadrature (401 points per axis on its own window) agree to 1e-3, the size of the band edge's first-order cell
    error (the density at |x1| = 1 times the spacing, about 1e-4 here, with a safety factor of 10)."""
    grids, law = quick_evidence.get("attribute_target_grids"), quick_evidence.get("composition_law")
    gx, _ = np.meshgrid(grids.x1, grids.x2)
    mass = grid_mass(grids.targets["compose"].density, np.abs(gx) < 1.0, grids.x1, grids.x2)
    assert mass > 0.99 and law.quadrature_error < 1e-3
    assert abs(mass - law.purple_mass) < 1e-3


def test_guided_score_is_the_tilted_score_and_the_cfg_eps(quick_evidence):
    """The plotted field is the tilted law's score and -eps_cfg / sigma (both routes evaluate the same mixture
    scores, so they agree to rounding: relative 1e-9 is 1e6 times float64's epsilon on scores up to ~1e3)."""
    fields = quick_evidence.get("guided_score_fields")
    assert 0 <= fields.max_error_over_bound <= 1
    world = get_world("ring2d")
    den = AnalyticDenoiser(world, "vp-linear")
    gx, gy = np.meshgrid(fields.stream, fields.stream)
    pts = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], axis=1))
    for p in fields.panels:
        plotted = torch.as_tensor(np.stack([p.u.ravel(), p.v.ravel()], axis=1))
        tilted = tilted_law(world, rules.get("cfg", w=p.w), {"cond": fields.condition}, t=p.t).score(pts)
        eps = rules.get("cfg", w=p.w).guide(den, {"cond": fields.condition}).eps(pts, p.t)
        torch.testing.assert_close(plotted, tilted, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(plotted, -eps / p.sigma, rtol=1e-9, atol=1e-9)
    # the figure's message: at t = 0.5 the guided density's mode moves out along class 0's direction as w grows
    modes = [fields.panel(0.5, w).mode[0] for w in fields.strengths_w]
    assert modes == sorted(modes) and modes[-1] > modes[0] + 1.0


def test_negative_composition_fractions_against_the_tilted_masses(quick_evidence):
    samples, grids = quick_evidence.get("attribute_samples"), quick_evidence.get("attribute_target_grids")
    n = samples.n

    # If the n DDIM outputs were draws of a law with mass m in a region, the fraction there would be Binomial(n, m)
    # / n, sd sqrt(m (1 - m) / n): 4 sd leaves a two-sided chance of 6e-5 of a false failure. Slack on top: the
    # implied mass's quadrature error, one sample (1 / n, for masses near 0 or 1, where the normal approximation
    # fails), and 0.005 for DDIM's 100 steps (its discretisation bias on attributes2d, well under 1e-3 at w = 0).
    # Power: a sampler that missed a region's mass by 0.05 fails at n = 4000 (4 sd is at most 0.032).
    def close(key: str, m) -> bool:
        sd = np.sqrt(m.target_mass * (1 - m.target_mass) / n)
        return abs(m.fraction - m.target_mass) <= 4 * sd + m.target_quadrature_error + 1 / n + 0.005

    control = samples.cases["dog"]
    assert close("dog", control.own_region)
    for region, m in control.regions.items():
        assert close("dog", m), region
    # composition: the guided ODE's law is not the implied law (its x1 collapses to a line), but both hold all but
    # 1e-4 of their mass in the purple band |x1| < 1
    compose = samples.cases["compose"]
    assert close("compose", compose.regions["purple_band"])
    # the ODE collapses x1: its sample sd is below 0.05, under a third of the implied law's x1 sd (0.17)
    assert compose.sampled_sd[0] < 0.05 < grids.targets["compose"].sd_x1 / 3
    # negative prompts: DDIM leaves samples on the red side, where the implied laws have no mass at all
    for key in ("negative_001", "negative_000"):
        m = samples.cases[key].regions["red_side"]
        assert m.fraction > 0.03 and m.target_mass < 1e-20, key
    # the drawn samples are a prefix of the measured ones: their fractions agree within the binomial noise of a
    # subsample of that size (4 sd)
    for key, case in samples.cases.items():
        kept = case.samples
        assert 0 < len(kept) <= n
        frac = float(np.mean((kept[:, 0] < 0) & (kept[:, 1] > 0))) if case.region == "red_dog" else float(
            np.mean(np.abs(kept[:, 0]) < 1))
        f = case.own_region.fraction
        assert abs(frac - f) <= 4 * np.sqrt(max(f * (1 - f), 1 / n) / len(kept)) + 1 / len(kept), key


def test_world_portraits_are_the_worlds_laws(quick_evidence):
    portraits = quick_evidence.get("world_portraits")
    gauss = portraits.get("gauss1d").portrait
    x = gauss.x
    # N(1, 0.5) at its mean: 1 / sqrt(2 pi 0.5) = 1 / sqrt(pi); the grid's nearest point is within 0.007 of 1
    peak = gauss.curves[1].density.max()
    assert peak == pytest.approx(1 / np.sqrt(np.pi), rel=1e-4)
    assert x[gauss.curves[1].density.argmax()] == pytest.approx(1.0, abs=(x[1] - x[0]))
    bimodal = portraits.get("bimodal1d").portrait
    total, *shares = bimodal.curves
    np.testing.assert_allclose(sum(c.density for c in shares), total.density, rtol=1e-12, atol=1e-300)
    ring = portraits.get("ring2d").portrait
    assert ring.samples.shape == (portraits.n_samples, 2) and set(np.unique(ring.labels)) <= set(ring.classes)
    attrs = portraits.get("attributes2d").portrait
    assert attrs.tokens == (("red", "dog"), ("red", "cat"), ("blue", "dog"), ("blue", "cat"))
    high = portraits.get("highdim").portrait
    assert 0 < high.variance_ratio[1] <= high.variance_ratio[0] < 1
