"""The compactly supported world of Chidambaram et al. 2024 (verify.evidence.chidambaram) and its record."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from verify.evidence import chidambaram as ch

F64 = torch.float64
EPS = torch.finfo(F64).eps
#: (alpha, sigma) pairs: late (edges sharp), middle, and the start of vp-linear (alpha ~ 0.0066)
NOISE = ((1.0, 0.01), (0.9, 0.3), (0.5, 0.8), (0.0066, 1.0))


def _points(alpha: float, sigma: float) -> torch.Tensor:
    """The bulk of the noised world and its tails, out to 12 sigma beyond the supports."""
    span = alpha * ch.ALPHA_2 + 12 * sigma
    return torch.linspace(-span, span, 801, dtype=F64)


@pytest.mark.parametrize(("alpha", "sigma"), NOISE)
def test_score_is_the_gradient_of_the_log_density(alpha, sigma):
    """The closed-form score against autograd of the closed-form log-density (an independent route: autograd
    differentiates log_ndtr, the score uses Mills ratios). Rounding, relative to 1 + |score|: the exponents u^2 / 2
    (u: distance to the nearest edge in sigmas) carry eps u^2, and the difference of the two normal CDFs of an
    interval of alpha (b - a) / sigma = du standard deviations cancels by 1 / du; tolerance 16 eps (1 + u^2 + 1/du),
    16 for the O(10) operations."""
    law = ch.two_uniforms().noised(alpha, sigma)
    x = _points(alpha, sigma).requires_grad_(True)
    (grad,) = torch.autograd.grad(law.log_prob(x).sum(), x)
    xd = x.detach()
    score = law.score(xd)
    u = torch.minimum((xd.abs() - alpha * ch.ALPHA_1).abs(), (xd.abs() - alpha * ch.ALPHA_2).abs()) / sigma
    du = alpha * (ch.ALPHA_2 - ch.ALPHA_1) / sigma
    assert torch.all((score - grad).abs() <= 16 * EPS * (1 + score.abs()) * (1 + u**2 + 1 / du))


@pytest.mark.parametrize(("alpha", "sigma"), NOISE)
def test_score_matches_finite_differences(alpha, sigma):
    """Central differences of log_prob with step h = sigma * 1e-4: truncation h^2 |f'''| / 6 with |f'''| <= ~10 /
    sigma^3 (a smoothed step's third log-derivative), rounding 2 eps |log p| / h; tolerance the sum, times 10."""
    law = ch.two_uniforms().noised(alpha, sigma)
    x = _points(alpha, sigma)
    h = sigma * 1e-4
    fd = (law.log_prob(x + h) - law.log_prob(x - h)) / (2 * h)
    logp = law.log_prob(x).abs()
    tol = 10 * (h**2 * 10 / sigma**3 / 6 + 2 * EPS * (1 + logp) / h)
    assert torch.all((law.score(x) - fd).abs() <= tol)


@pytest.mark.parametrize(("alpha", "sigma"), NOISE[:3])
def test_density_cdf_and_posterior_are_consistent(alpha, sigma):
    """The density integrates to 1 and to the closed-form CDF (trapezoid on 200k points: error h^2 max|p'| L / 12 <
    1e-6 for these sigma), and the class posterior is Bayes' rule on the component densities."""
    law = ch.two_uniforms().noised(alpha, sigma)
    lo, hi = -(alpha * ch.ALPHA_2 + 14 * sigma), alpha * ch.ALPHA_2 + 14 * sigma
    x = torch.linspace(lo, hi, 200_001, dtype=F64)
    p = law.log_prob(x).exp()
    cum = torch.cat([torch.zeros(1, dtype=F64), torch.cumulative_trapezoid(p, x)])
    assert abs(float(cum[-1]) - 1.0) < 1e-6
    assert torch.allclose(law.cdf(x[::1000]), cum[::1000], atol=1e-6, rtol=0)
    post = law.class_posterior(x[::1000])
    comp = law.component_log_prob(x[::1000]).exp() * 0.5
    seen = comp.sum(-1) > 1e-250  # where Bayes' rule in linear space does not underflow
    assert seen.sum() > 100
    assert torch.allclose(post[seen], (comp / comp.sum(-1, keepdim=True))[seen], atol=64 * EPS, rtol=0)
    assert torch.allclose(post.sum(-1), torch.ones(post.shape[0], dtype=F64), atol=8 * EPS, rtol=0)


def test_far_tails_stay_finite():
    """200 sigma from the supports the log-density is still finite and the score restoring (no 0/0 in the tails)."""
    law = ch.two_uniforms().noised(1.0, 0.01)
    x = torch.tensor([-4.0, -2.5, 2.5, 4.0], dtype=F64)
    assert torch.isfinite(law.log_prob(x)).all()
    assert torch.allclose(law.score(x), -(x - x.sign() * 2.0) / 0.01**2, rtol=1e-3)


def test_unguided_flow_reproduces_the_uniform_class():
    """w = 0 carries the noised class law at t = 1 to the class law: quantile q of U[1, 2] is 1 + q, to the
    integration error (1e3 rtol) plus the end offset (lambda_end) plus linear interpolation over 201 nodes
    (checked against the coarse-run difference, which is below 1e-6)."""
    (masses, hist, qs), = ch._runs(ch.two_uniforms(), [ch.Block(0.0)], 201, 1e-9)
    for level, value in qs.items():
        assert abs(value - (1.0 + int(level[1:]) / 100)) < 1e-5
    assert abs(masses["far"] - ch.LAYER) < 1e-5 and abs(masses["near"] - ch.LAYER) < 1e-5
    assert masses["outside"] < 1e-9
    assert abs(hist.sum() - 1.0) < 1e-9


def test_guidance_moves_mass_to_the_far_edge_and_a_flipped_field_cannot():
    """Mutation check of the direction: guiding towards class -1 (the mirror) must end on -ALPHA_2, i.e. the map
    is not hard-wired to the right edge."""
    world = ch.two_uniforms()
    mirror = ch.UniformMixture1D(world.lows, world.highs, world.weights, (-1, 1))  # relabelled: class 1 is left
    start = ch.NoisedUniformMixture1D((-2.0,), (-1.0,), (1.0,), (1,), 1.0, ch._lambda_1())
    y1 = ch._nodes(start, 101)
    y0 = ch.guided_flow_map(mirror, 1, [ch.Block(15.0)], y1)[0]
    assert np.median(y0) < -1.95


def test_relative_error_field_is_reproducible_and_bounded():
    d, a, b = ch.relative_error_field(0.1, 3, 1)
    assert (d, a, b) == ch.relative_error_field(0.1, 3, 1)
    assert ch.relative_error_field(0.1, 3, None) != (d, a, b)
    assert d == 0.1 and math.isfinite(a) and math.isfinite(b)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="^lows"):
        ch.UniformMixture1D((2.0,), (1.0,), (1.0,), (1,))
    with pytest.raises(ValueError, match="^weights"):
        ch.UniformMixture1D((0.0,), (1.0,), (0.5,), (1,))
    with pytest.raises(ValueError, match="^label"):
        ch.two_uniforms().law(7)
    with pytest.raises(ValueError, match="^alpha"):
        ch.two_uniforms().noised(0.0, 1.0)
    with pytest.raises(ValueError, match="^x"):
        ch.two_uniforms().noised(1.0, 1.0).log_prob(torch.zeros(2, 1))


def test_record(ledger):
    """The quick record: the far-edge mass grows to 1, the near-edge mass vanishes; its verdict follows whether a
    perturbed run left the support."""
    rec = ledger("L-CHIDAMBARAM-BOUNDARY")["L-CHIDAMBARAM-BOUNDARY"]
    exact = rec.evidence["exact"]
    ws = sorted(exact, key=float)
    far = [exact[w]["far_edge_mass"] for w in ws]
    assert far[0] == pytest.approx(ch.LAYER, abs=1e-5) and far[-1] > 1 - 1e-6
    assert exact[ws[-1]]["near_edge_mass"] < 1e-9
    assert rec.evidence["concentrates"] is True
    expected = "holds" if rec.evidence["perturbed_leaves_support"] else "conditional"
    assert rec.verdict == expected
    assert rec.figure == "figures/chidambaram_boundary.png"
