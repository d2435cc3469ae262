"""L-RENYI-CORRECTION: the tilted score = CFG score + (g-1) grad of a Renyi divergence (verify.evidence.renyi)."""

import math

import pytest
import torch

from toy_models.gaussian_mixture import GaussianMixture
from verify.evidence.renyi import (
    _posterior,
    gaussian_gap,
    gaussian_pairs,
    identity_bound,
    mixture_gap,
    renyi_divergence,
    renyi_terms,
    tilted_gaussian,
)
from verify.evidence.shared import alpha_sigma
from verify.tilted import TiltedLaw

F64 = torch.float64
PAIRS = gaussian_pairs(0)


@pytest.mark.parametrize("name", ["gauss1d", "gauss2d_full"])
def test_tilted_gaussian_is_tiltedlaw_closed_form(name):
    cond, uncond = PAIRS[name]
    mean, cov = tilted_gaussian(3.0, cond, uncond)
    ref_mean, ref_cov, _ = TiltedLaw(((cond, 4.0), (uncond, -3.0))).gaussian()
    # both invert a d x d precision of condition <= ~10: agreement to 1e3 eps is ample (kappa d eps ~ 20 eps)
    assert torch.allclose(mean, ref_mean, rtol=0, atol=1e3 * torch.finfo(F64).eps)
    assert torch.allclose(cov, ref_cov, rtol=0, atol=1e3 * torch.finfo(F64).eps)


def test_tilted_gaussian_refuses_a_tilt_without_mass():
    wide = GaussianMixture([1.0], [[0.0]], [[[4.0]]])
    narrow = GaussianMixture([1.0], [[0.0]], [[[1.0]]])
    with pytest.raises(ValueError, match="^w:"):
        tilted_gaussian(3.0, wide, narrow)  # precision 4/4 - 3/1 < 0


def test_renyi_divergence_refuses_order_one():
    cond, uncond = PAIRS["gauss1d"]
    with pytest.raises(ValueError, match="^gamma:"):
        renyi_divergence(1.0, cond, uncond, torch.zeros(1, 1, dtype=F64), 0.5, 0.5)


def test_renyi_divergence_matches_quadrature_1d():
    """The closed form against the trapezoid rule of (1/(g-1)) log int P^g Q^(1-g) on a fine grid (trapezoid on a
    Gaussian integrand over +-12 sd with 2e5 nodes is accurate to rounding: error far below 1e-9)."""
    cond, uncond = PAIRS["gauss1d"]
    gamma, t = 4.0, 0.3
    alpha, sigma = alpha_sigma(t)
    x = torch.tensor([[-1.0], [0.4], [2.5]], dtype=F64)
    closed = renyi_divergence(gamma, cond, uncond, x, alpha, sigma)
    a1, v1, _ = _posterior(cond, x, alpha, sigma)
    a2, v2, _ = _posterior(uncond, x, alpha, sigma)
    grid = torch.linspace(-12.0, 14.0, 200_001, dtype=F64)
    for i in range(3):
        logp = -0.5 * (grid - a1[i, 0]) ** 2 / v1[0, 0] - 0.5 * torch.log(2 * math.pi * v1[0, 0])
        logq = -0.5 * (grid - a2[i, 0]) ** 2 / v2[0, 0] - 0.5 * torch.log(2 * math.pi * v2[0, 0])
        integral = torch.trapezoid(torch.exp(gamma * logp + (1 - gamma) * logq), grid)
        assert float(closed[i]) == pytest.approx(float(torch.log(integral)) / (gamma - 1), abs=1e-9)


@pytest.mark.parametrize("name", ["gauss1d", "gauss16d_full"])
@pytest.mark.parametrize("t", [0.05, 0.5])
def test_identity_holds_within_bound_and_a_wrong_sign_does_not(name, t):
    cond, uncond = PAIRS[name]
    w = 3.0
    mean, cov = tilted_gaussian(w, cond, uncond)
    alpha, sigma = alpha_sigma(t)
    x = GaussianMixture([1.0], mean[None], cov[None]).noised(alpha, sigma).sample(64, torch.Generator().manual_seed(1))
    terms = renyi_terms(w, cond, uncond, x, t)
    bound = identity_bound(terms, x, cond.dim)
    err = torch.linalg.vector_norm(terms["tilted"] - terms["cond"] - terms["uncond"] - terms["renyi"], dim=-1)
    assert bool((err <= bound).all())
    # the statement with the opposite sign of the correction is off by 2 |correction|, far above the bound
    flipped = torch.linalg.vector_norm(terms["tilted"] - terms["cond"] - terms["uncond"] + terms["renyi"], dim=-1)
    assert bool((flipped > bound).any())


def test_closed_form_gap_matches_quadrature_on_gauss1d():
    """Two routes to the same number: trace formulas vs quadrature of pi_t (gauss1d is a 1-D pair the quadrature
    also handles); agreement to the quadrature's halving estimate plus 1e-9."""
    cond, uncond = PAIRS["gauss1d"]
    for t in (0.05, 0.3, 0.8):
        closed = gaussian_gap(3.0, cond, uncond, t)
        quad, err = mixture_gap(3.0, cond, uncond, t, 3001, 601)
        assert closed == pytest.approx(quad, abs=err + 1e-9)


def test_gap_vanishes_as_t_goes_to_zero():
    cond, uncond = PAIRS["gauss2d_full"]
    peak = max(gaussian_gap(3.0, cond, uncond, t) for t in (0.2, 0.3, 0.4))
    assert gaussian_gap(3.0, cond, uncond, 0.001) < 0.01 * peak


def test_record(ledger):
    rec = ledger("L-RENYI-CORRECTION")["L-RENYI-CORRECTION"]
    assert rec.verdict == "proved"
    assert rec.evidence["max_error_over_bound"] < 1.0
    assert rec.evidence["all_hold"]
    assert {p["world"] for p in rec.evidence["gap_profiles"]} == {"gauss1d", "gauss2d_full", "gauss16d_full",
                                                                   "bimodal1d"}
    assert rec.figure == "figures/renyi_correction.png"
