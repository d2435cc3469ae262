"""Guided sampling on pixels (verify.evidence.image_guidance) and the L-RESCALE decision built on it."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from verify.claims.rule_rescale import ALPHA, RESIDUAL, rescale, rescale_tests
from verify.evidence.image_guidance import (
    CONDITION,
    IMAGE_WORLD,
    VARIANTS,
    Arm,
    ImageGuidance,
    ModelRuns,
    measure_samples,
    run_variants,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_measurements_are_per_sample_and_exact_on_a_constructed_batch():
    x = torch.zeros(2, 4, dtype=torch.float64)
    x[0] = torch.tensor([1.5, -2.0, 0.5, 0.0])  # two of four values out of [-1, 1], excess (0.5 + 1.0) / 4
    mean = torch.zeros(4, dtype=torch.float64)
    m = measure_samples(x, mean)
    assert m["out_of_range"].tolist() == [0.5, 0.0]
    assert m["excess"].tolist() == [0.375, 0.0]
    assert m["mean_error"][0].item() == pytest.approx(math.sqrt((2.25 + 4 + 0.25) / 4), rel=1e-15)
    assert m["pixel_std"][1].item() == 0.0


def test_runs_share_the_start_and_w0_is_the_conditional_model_for_every_rule():
    from toy_models import AnalyticDenoiser, get_world
    from verify.evidence.shared import alpha_sigma

    world = get_world(IMAGE_WORLD)
    law = world.law(CONDITION)
    gen = torch.Generator().manual_seed(3)
    x = law.noised(*alpha_sigma(1.0)).sample(6, gen)
    mean = law.mean().to(torch.float64)
    arms = run_variants(AnalyticDenoiser(world), CONDITION, x, (0.0, 7.0), mean, tuple(law.shape), steps=4)
    assert set(arms) == set(VARIANTS)
    for v in VARIANTS:
        assert arms[v]["0"] is arms["cfg"]["0"]
    # the per-sample fractions are what the kept images give
    img = torch.tensor(arms["cfg"]["7"].images, dtype=torch.float64).reshape(4, -1)
    direct = (img.abs() > 1.0).double().mean(1).tolist()
    assert direct == list(arms["cfg"]["7"].per_sample_out_of_range[:4])
    # rules differ at w = 7 (else the comparison would be empty)
    assert arms["rescale_v"]["7"].images != arms["cfg"]["7"].images


def _arm(per_sample: list[float]) -> Arm:
    v = torch.tensor(per_sample, dtype=torch.float64)
    se = float(v.std() / math.sqrt(v.numel()))
    return Arm(float(v.mean()), se, 0.0, 0.0, 0.2, 0.001, 0.1, 0.001, 0.0, tuple(per_sample), ((),))


def _evidence(cfg_level: float, rescaled_level: float, n: int = 400, data: float = 0.001) -> ImageGuidance:
    """Synthetic runs: per-sample fractions spread +-0.01 about the given levels (deterministic pattern)."""
    spread = [0.01 * math.sin(1.7 * i) for i in range(n)]
    cfg = _arm([cfg_level + s for s in spread])
    resc = _arm([rescaled_level + 0.5 * s for s in spread])
    arms = {v: {} for v in VARIANTS}
    for w in (7.0, 15.0):
        arms["cfg"][f"{w:g}"] = cfg
        for v in VARIANTS:
            if v != "cfg":
                arms[v][f"{w:g}"] = resc
    runs = ModelRuns("gaussian", arms)
    skipped = ModelRuns("network", {}, None, "no checkpoint")
    return ImageGuidance(IMAGE_WORLD, CONDITION, runs, dataclasses.replace(skipped, model="joint"), skipped, {}, data,
                         1e-5, 0.3, 0.0, (7.0, 15.0), (7.0, 15.0), (), n, n, n, 20000, 50, (3, 16, 16))


@pytest.mark.parametrize(("cfg_level", "rescaled_level", "verdict", "phrase"), [
    # residual excess 0.0015 - 0.001 = 5e-4, far below RESIDUAL x (0.2 - 0.001) ~ 0.02
    (0.2, 0.0015, "holds", ""),
    # residual 0.1 - 0.001 is half of CFG's excess: reduced (paired z large), not fixed
    (0.2, 0.1, "conditional", "reduced, not fixed"),
    # no reduction at all
    (0.2, 0.2, "fails", ""),
    # CFG at the data's rate: nothing to fix
    (0.001, 0.001, "conditional", "not over-exposed"),
], ids=["fixed", "reduced-not-fixed", "not-reduced", "nothing-to-fix"])
def test_rescale_verdict_on_constructed_runs(cfg_level, rescaled_level, verdict, phrase):
    d = rescale(_evidence(cfg_level, rescaled_level))
    assert d.verdict == verdict and phrase in d.conditions


def test_residual_test_has_power_at_the_documented_alternative():
    # with 400 samples spread 0.005 the SE is ~2.5e-4 against a half-margin of ~0.01: power ~ 1
    tests = rescale_tests(_evidence(0.2, 0.0015))
    assert all(t.residual_power > 0.99 for t in tests)
    assert ALPHA == 0.01 and RESIDUAL == 0.1


def test_exact_pixel_law_is_the_dense_discrete_law_and_its_frechet_the_dense_one():
    """On shapes8's Gaussian pair (d = 192) the two-run exact law equals the d + 1-run dense discrete law of
    verify.exact_law, and the basis Frechet distance equals the eigen-decomposition one."""
    from toy_models import AnalyticDenoiser, GaussianMixture
    from toy_models.image_worlds import gaussian_pair, shapes
    from verify import rules
    from verify.evidence.image_guidance import exact_pixel_law, tilted_target
    from verify.evidence.shared import alpha_sigma
    from verify.exact_law import discrete_sampler_law
    from verify.metrics import frechet_distance
    from verify.samplers import time_grid

    pair = gaussian_pair(shapes(8), CONDITION)
    law = exact_pixel_law(pair, CONDITION, 5.0, steps=10)
    start = pair.law(CONDITION).noised(*alpha_sigma(1.0))
    guided = rules.get("cfg", w=5.0).guide(AnalyticDenoiser(pair), {"cond": CONDITION})
    mean, cov = discrete_sampler_law("ddim", guided, time_grid(10), start.mean(), start.covariance())
    dense = law.to_dense()
    scale = float(cov.abs().max())
    # two computations of 10 affine steps in d = 192: each entry rounds at most ~ gamma_{10 (2 d + 64)} relative to
    # the largest magnitude involved; 1e-10 is that bound (4.6e-13) with a margin of 200 for the column differences
    assert float((dense.means[0] - mean).abs().max()) < 1e-10
    assert float((dense.covariances[0] - cov).abs().max()) < 1e-10 * max(scale, 1.0)
    target = tilted_target(pair.law(CONDITION), pair.law(None), 5.0)
    basis = frechet_distance(law, target)
    eig = frechet_distance(GaussianMixture([1.0], mean[None], (0.5 * (cov + cov.T))[None]), target.to_dense())
    # the eigen route loses ~sqrt(eps) on near-zero eigenvalues' roots: agreement to 1e-6 relative
    assert basis == pytest.approx(eig, rel=1e-6)
