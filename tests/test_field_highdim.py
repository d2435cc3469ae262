"""L-PAVASOVIC-HIGHDIM on the image worlds (verify.evidence.field_highdim, the claim's field_worlds block)."""

import dataclasses
import math

import pytest
import torch

from toy_models.field_mixture import dct_matrix
from toy_models.image_worlds import TEXTURE_STD, shapes
from verify.claims.highdim import decay_test, distortion, field_worlds_block
from verify.config import RunConfig
from verify.evidence import field_highdim as fh
from verify.evidence.shared import alpha_sigma
from verify.tolerances import gamma

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def _exact_samples(world, condition, n, seed):
    return world.law(condition).sample(n, torch.Generator().manual_seed(seed)).to(F64)


def test_direction_std_equals_the_dense_computation():
    r"""s_u through the DCT against sqrt(u^T Sigma u) with Sigma = to_dense()'s covariance, at s = 16 (d = 768).
    Both use the same rounded DCT matrix, so only arithmetic rounding differs. Dense side: the basis columns (one
    product per matmul, 2 roundings each), the length-d dot products of Sigma's entries (gamma_{d+2}), the
    symmetrisation (1), the double sum u^T Sigma u (gamma_{2d}); DCT side: B^T u (gamma_{H+W} relative to
    |B|^T |u|, twice in a^2), the sum of a_j^2 nu_j (gamma_{d+2}). All are relative to
    S = |u|^T |B| diag(nu) |B|^T |u|, so |var_DCT - var_dense| <= gamma_{4d + 2(H+W) + 12} S, and the stds differ by
    at most that over (s_a + s_b)."""
    world, condition = shapes(16), fh.CONDITION
    geo = fh.geometry("shapes", world, condition)
    dense = world.law(condition).to_dense()
    cov = dense.covariances[0].to(F64)
    var_dense = float(geo.direction @ cov @ geo.direction)
    d_abs = dct_matrix(16).abs()
    abs_coef = (d_abs @ geo.direction.abs().reshape(3, 16, 16) @ d_abs.T).reshape(-1)
    s_bound = float((abs_coef**2 * geo.spectrum).sum())
    bound = gamma(4 * geo.dim + 2 * 32 + 12, F64) * s_bound / (geo.direction_std + math.sqrt(var_dense))
    assert abs(geo.direction_std - math.sqrt(var_dense)) <= bound
    # the bound is tight enough to mean something: any mistake in the transform or the spectrum would exceed it
    assert bound < 1e-10 * geo.direction_std


def test_mahalanobis_of_exact_samples_is_one_within_its_se():
    """Exact draws of p(x|c): the Mahalanobis statistic is chi2_d / d, mean 1, per-sample std sqrt(2/d); the measured
    mean is within 3 of its SEs of 1 (false failure 0.27 % at a fixed seed), its SE agrees with sqrt(2/d)/sqrt(N)
    within 30 % (the sample std of 200 draws errs by 5 % (one SE)), and 3 SE is far below the gap that the sampler's
    own floor opens (0.46 for DDIM's 50 steps): the statistic can tell p(x|c) from the sampler's law. Overshoot and
    variance ratio of the same draws: within 3 SE of 0 and 1."""
    world = shapes(16)
    geo = fh.geometry("shapes", world, fh.CONDITION)
    n = 200
    m = fh.measure(_exact_samples(world, fh.CONDITION, n, 3), geo)
    assert abs(m.mahalanobis - 1.0) <= 3 * m.mahalanobis_se
    expected_se = math.sqrt(2.0 / geo.dim / n)
    assert abs(m.mahalanobis_se / expected_se - 1.0) < 0.3
    assert 3 * m.mahalanobis_se < 0.1
    assert abs(m.overshoot) <= 3 * m.overshoot_se
    assert abs(m.var_ratio - 1.0) <= 3 * m.var_ratio_se
    # per-pixel variance of p(x|c) is TEXTURE_STD^2 on average; its MC error over 200 draws x 768 correlated pixels
    # is a few percent
    assert abs(m.pixel_variance / TEXTURE_STD**2 - 1.0) < 0.1


def test_measure_follows_from_the_samples_by_dense_algebra():
    """Each measurement recomputed from the samples without the DCT: the projection on u, its variance, the RMS error
    of the mean, and the Mahalanobis statistic by solving with the dense covariance (s = 8, d = 192)."""
    world = shapes(8)
    geo = fh.geometry("shapes", world, fh.CONDITION)
    x = _exact_samples(world, fh.CONDITION, 16, 5) * 1.3  # not p(x|c): the numbers are not near their references
    m = fh.measure(x, geo)
    cov = world.law(fh.CONDITION).to_dense().covariances[0].to(F64)
    resid = x - geo.mean
    proj = resid @ geo.direction / math.sqrt(float(geo.direction @ cov @ geo.direction))
    maha = (resid * torch.linalg.solve(cov, resid.T).T).sum(1) / geo.dim
    assert m.overshoot == pytest.approx(float(proj.mean()), rel=1e-9)
    assert m.overshoot_se == pytest.approx(float(proj.std()) / 4.0, rel=1e-9)
    assert m.var_ratio == pytest.approx(float(proj.var()), rel=1e-9)
    assert m.mean_rms_error == pytest.approx(float(resid.mean(0).pow(2).mean().sqrt()), rel=1e-12)
    assert m.mahalanobis == pytest.approx(float(maha.mean()), rel=1e-8)
    assert m.pixel_variance == pytest.approx(float(x.var(0).mean()), rel=1e-12)
    with pytest.raises(ValueError, match="^x:"):
        fh.measure(x[:1], geo)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_unguided_monte_carlo_matches_the_exact_per_coefficient_law(sampler):
    """w = 0 (the conditional model alone): the registered sampler's samples against the exact affine recursion per
    DCT coefficient, on two_class16. Overshoot, variance ratio and Mahalanobis statistic within 4 SE (false failure
    6e-5 each); the exact variance ratio is well below 1 (the 50-step floor), so the agreement is not the trivial
    one with p(x|c)."""
    world, condition = fh.two_class_world(16), 0
    geo = fh.geometry("two_class", world, condition)
    gen = torch.Generator().manual_seed(11)
    x_start = world.law(condition).noised(*alpha_sigma(1.0)).sample(64, gen)
    m = fh.measure(fh.run_point(world, condition, sampler, 0.0, x_start, gen), geo)
    exact = fh.unguided_law(geo, sampler)
    assert abs(m.overshoot - exact.overshoot) <= 4 * m.overshoot_se
    assert abs(m.var_ratio - exact.var_ratio) <= 4 * m.var_ratio_se
    assert abs(m.mahalanobis - exact.mahalanobis) <= 4 * m.mahalanobis_se
    assert exact.var_ratio < 0.8 and abs(exact.mahalanobis - 1.0) > 10 * m.mahalanobis_se


def test_two_class_geometry_scales_with_d():
    """|m_+ - m_-|^2 / d within 15 % between s = 16 and 32 (the same pictures, more pixels); the Mahalanobis
    separation per dimension falls (the texture's correlation length is fixed in pixels: module docstring)."""
    g16 = fh.geometry("two_class", fh.two_class_world(16), 0)
    g32 = fh.geometry("two_class", fh.two_class_world(32), 0)
    assert abs(g32.separation2_per_dim / g16.separation2_per_dim - 1.0) < 0.15
    assert g32.mahalanobis_separation_per_dim < g16.mahalanobis_separation_per_dim
    assert g32.mahalanobis_separation_per_dim * g32.dim > g16.mahalanobis_separation_per_dim * g16.dim
    with pytest.raises(ValueError, match="^condition:"):
        fh.geometry("shapes", shapes(8), ("red",))


def test_provider_on_reduced_sizes_follows_from_its_samples(monkeypatch):
    """The quick provider on s = 8 and 12 with 6 samples: every (world, size, sampler, w) present, the images kept,
    and the first point equal to measure() of a DDIM run replayed from the same generator stream."""
    monkeypatch.setattr(fh, "QUICK_SIZES", (8, 12))
    monkeypatch.setattr(fh, "QUICK_N", 6)
    ev = fh.field_highdim(RunConfig(quick=True, seed=4, show_progress=False))
    assert len(ev.points) == 2 * 2 * 2 * len(ev.ws)
    assert set(ev.images) == {8, 12} and len(ev.images[8]) == fh.KEEP
    gen = torch.Generator().manual_seed(4)
    world, condition = fh.worlds_at(8)["shapes"]
    x_start = world.law(condition).noised(*alpha_sigma(1.0)).sample(6, gen)
    first = ev.points[0]
    assert (first.world, first.size, first.sampler) == ("shapes", 8, "ddim")
    replay = fh.measure(fh.run_point(world, condition, "ddim", first.w, x_start, gen), fh.geometry(
        "shapes", world, condition))
    assert replay == first.measured
    assert torch.tensor(ev.images[8]).shape == (fh.KEEP, 3, 8, 8)


def _point(overshoot, se, dim, var_ratio=0.5, var_se=0.05):
    m = fh.Measured(20, overshoot, se, var_ratio, var_se, 0.0, 0.0, 0.0, 1.0, 0.0)
    u = fh.Measured(0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    return fh.FieldPoint("shapes", 16, dim, "ddim", 3.0, m, u)


def test_decay_test_calls():
    """A decay like 1/sqrt(d) over 16x in d at small SE is 'shrinks' with power ~1; equal distortions are 'no
    significant change'; a growth is 'grows'; a distortion within z_crit SE of 0 at the smallest d is 'no
    distortion'. The variance distortion is |log(v / v_0)|."""
    z = 3.0
    assert decay_test(_point(2.0, 0.1, 768), _point(0.5, 0.1, 12288), "overshoot", z)["call"] == "shrinks"
    t = decay_test(_point(2.0, 0.1, 768), _point(2.0, 0.1, 12288), "overshoot", z)
    assert t["call"] == "no significant change" and t["power_against_sqrt_d_decay"] > 0.99
    assert decay_test(_point(1.0, 0.1, 768), _point(2.0, 0.1, 12288), "overshoot", z)["call"] == "grows"
    small = decay_test(_point(0.2, 0.1, 768), _point(0.1, 0.1, 12288), "overshoot", z)
    assert small["call"] == "no significant distortion"
    assert distortion(_point(0.0, 0.1, 768, var_ratio=0.25), "variance")[0] == pytest.approx(math.log(2.0))
    with pytest.raises(ValueError, match="^measure:"):
        distortion(_point(0.0, 0.1, 768), "mean")


def test_block_bonferroni_and_record(ledger):
    """The record carries the field_worlds block: one test per (world, sampler, w, measure) at the Bonferroni z,
    its calls consistent with its own numbers; the verdict is the paper model's."""
    rec = ledger("L-PAVASOVIC-HIGHDIM")["L-PAVASOVIC-HIGHDIM"]
    block = rec.evidence["field_worlds"]
    assert "image worlds" in rec.headline
    assert "figures/field_highdim.png" in rec.figures
    n_tests = len(block["tests"]) * len(("overshoot", "variance"))
    assert str(n_tests) in block["criterion"]
    for entry in block["tests"].values():
        for measure in ("overshoot", "variance"):
            t = entry[measure]
            assert t["z"] == pytest.approx((t["first"] - t["last"]) / math.hypot(t["first_se"], t["last_se"]))


def test_block_from_a_replaced_provider_result():
    """field_worlds_block on a synthetic result: a clear decay of the ODE overshoot is reported as 'shrinks'."""
    ws = (3.0,)
    pts = []
    for world in ("shapes", "two_class"):
        for sampler in ("ddim", "ddpm"):
            for size, dim, o in ((16, 768, 2.0), (64, 12288, 0.5)):
                p = _point(o, 0.05, dim)
                pts.append(dataclasses.replace(p, world=world, size=size, sampler=sampler))
    ev = fh.FieldHighDim(tuple(pts), (), (16, 64), ws, {"ode": "ddim", "sde": "ddpm"}, 20, 50, fh.CONDITION, {},
                         3.0, "ddim", 0.0)
    block = field_worlds_block(ev)
    assert block.evidence["tests"]["shapes_ddim_w3"]["overshoot"]["call"] == "shrinks"
    assert "shrinks" in block.headline


def test_exact_pair_point_is_what_ddim_samples_on_the_pair():
    """pair_point's overshoot and variance ratio along u (exact) against DDIM samples on shapes8's Gaussian pair:
    the mean within 4 standard errors, the variance within 4 of its delta-method standard errors (two-sided
    false-alarm rate 6e-5 each)."""
    from toy_models import AnalyticDenoiser
    from toy_models.image_worlds import gaussian_pair
    from verify import rules
    from verify.samplers import sample, time_grid

    pair = gaussian_pair(shapes(8), fh.CONDITION)
    point = fh.pair_point(pair, 3.0)
    cond, uncond = pair.law(fh.CONDITION), pair.law(None)
    m_c, m_u = cond.mean_images[0].reshape(-1), uncond.mean_images[0].reshape(-1)
    u = (m_c - m_u) / (m_c - m_u).norm()
    s_u = float(((cond.to_basis(u.reshape(3, 8, 8)) ** 2) * cond.spectra[0]).sum().sqrt())
    gen = torch.Generator().manual_seed(5)
    x = cond.noised(*alpha_sigma(1.0)).sample(4000, gen)
    guided = rules.get("cfg", w=3.0).guide(AnalyticDenoiser(pair), {"cond": fh.CONDITION})
    proj = ((sample("ddim", guided, x, time_grid(50)) - m_c) @ u) / s_u
    n = proj.numel()
    assert abs(float(proj.mean()) - point.overshoot) < 4 * float(proj.std()) / n**0.5
    centred = proj - proj.mean()
    var, m4 = float(centred.pow(2).mean()), float(centred.pow(4).mean())
    assert abs(var - point.var_ratio) < 4 * ((m4 - var**2) / n) ** 0.5
    assert point.dim == 192 and point.frechet_to_tilted_per_dim < point.frechet_to_conditional_per_dim
