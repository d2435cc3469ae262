"""verify.tilted: closed forms, quadrature, importance sampling and the tail analysis, against each other."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate, stats

from toy_models import GaussianMixture, get_world
from verify.guidance import linear_rule
from verify.tilted import NotNormalisableError, TiltedLaw, tilted_law

F64 = torch.float64


@pytest.mark.parametrize("w", [0.0, 1.0, 3.0, 7.0])
def test_gauss1d_closed_form(w):
    q = tilted_law(get_world("gauss1d"), linear_rule("cfg", condition=1, w=w))
    mean, cov, log_z = q.gaussian()
    # hand derivation: precision (1+w)/0.5 - w/1 = 2 + w, mean 2(1+w)/(2+w)
    assert math.isclose(float(mean[0]), 2 * (1 + w) / (2 + w), rel_tol=1e-14)
    assert math.isclose(float(cov[0, 0]), 1 / (2 + w), rel_tol=1e-14)
    # log Z against scipy's adaptive quadrature of N(1,.5)^(1+w) N(0,1)^(-w) (its own error estimate, x10)
    f = lambda x: math.exp((1 + w) * stats.norm.logpdf(x, 1, math.sqrt(0.5)) - w * stats.norm.logpdf(x, 0, 1))  # noqa: E731
    z, z_err = integrate.quad(f, -30, 30, epsabs=0, epsrel=1e-12, limit=200)
    assert abs(log_z - math.log(z)) <= 10 * z_err / z + 1e-13


def test_quadrature_matches_closed_form_in_two_dimensions():
    ring = get_world("ring2d")
    q = tilted_law(ring, linear_rule("cfg", condition=0, w=2.0))  # a mixture target: quadrature
    summary = q.summary()
    assert "trapezoid" in summary.method and summary.moment_error < 1e-6
    # Gaussian factors: closed form. 2 P_0 - 0.3 P_1 is positive definite: its smallest eigenvalue is at least
    # 2 * 4 - 0.3 * 25 = 0.5 (precisions have eigenvalues 1/0.25 = 4 and 1/0.04 = 25)
    single = TiltedLaw(((ring.law(0), 2.0), (ring.law(1), -0.3)))
    mean, cov, log_z = single.gaussian()
    grid = single._moments_on_grid(401)
    # the trapezoid rule on a window 12 std wide converges geometrically for Gaussians; halving measured ~1e-10
    assert abs(grid[0] - log_z) < 1e-8
    torch.testing.assert_close(grid[1], mean, rtol=0, atol=1e-8)
    torch.testing.assert_close(grid[2], cov, rtol=0, atol=1e-8)


def test_importance_sampling_agrees_with_quadrature():
    q = tilted_law(get_world("bimodal1d"), linear_rule("cfg", condition=1, w=3.0))
    quad = q.summary()
    mc = q._importance_summary(200_000, seed=1)
    # 5 standard errors: a two-sided false-alarm rate below 1e-6 per comparison
    assert abs(mc.log_normaliser - quad.log_normaliser) <= 5 * mc.log_normaliser_error
    assert abs(float(mc.mean[0] - quad.mean[0])) <= 5 * mc.moment_error
    assert mc.effective_sample_size > 10_000


def test_region_mass_against_exact_cdf():
    q = tilted_law(get_world("bimodal1d"), linear_rule("cfg", condition=1, w=0.0))  # w = 0: p(x|c) = N(2, 0.5)
    mass, err = q.probability(lambda x: x[:, 0] < 0)
    exact = stats.norm.cdf(0, 2, math.sqrt(0.5))
    assert abs(mass - exact) <= 2 * err + 1e-12  # first-order grid error, bounded by the halving difference


def test_written_negative_prompt_density_is_not_normalisable():
    world = get_world("attributes2d")
    written = TiltedLaw(((world.law(("dog",)), 3.0), (world.law(("red",)), -1.0), (world.law(None), -3.0)))
    assert written.is_normalisable() is False
    with pytest.raises(NotNormalisableError, match="factors.*not normalisable"):
        written.check_normalisable()
    with pytest.raises(ValueError):
        written.summary()
    corrected = tilted_law(world, linear_rule("negative_000", positive=("dog",), negative=("red",), w_pos=3.0,
                                              w_neg=1.0))
    assert corrected.is_normalisable() is True


def test_narrow_negative_prompt_counterexample():
    pos = GaussianMixture([1.0], [[0.0]], [[[1.0]]])
    neg = GaussianMixture([1.0], [[1.0]], [[[0.25]]])
    # precision g/1 + (1-g)/0.25 = 4 - 3g: positive below g = 4/3, negative above
    assert TiltedLaw(((pos, 1.2), (neg, -0.2))).is_normalisable() is True
    assert TiltedLaw(((pos, 1.5), (neg, -0.5))).is_normalisable() is False


def test_tail_bounds_certify_high_dimensional_cfg():
    q = tilted_law(get_world("tokens16d"), linear_rule("cfg", condition=("b0+", "b1-"), w=3.0), t=0.5)
    lower, upper = q.tail_bounds(n_directions=256)
    assert 0 < lower <= upper + 1e-12


def test_tilted_law_validation():
    with pytest.raises(ValueError, match="factors"):
        TiltedLaw(())
    with pytest.raises(ValueError, match="factors.*dimension"):
        TiltedLaw(((get_world("ring2d").law(0), 1.0), (get_world("gauss1d").law(1), 0.5)))
    with pytest.raises(ValueError, match="closed form"):
        tilted_law(get_world("bimodal1d"), linear_rule("cfg", condition=1, w=1.0)).gaussian()
