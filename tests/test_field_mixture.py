"""FieldMixture (image Gaussians diagonal in the per-channel DCT basis) against its dense GaussianMixture."""

from __future__ import annotations

import math

import pytest
import torch

from toy_models.field_mixture import FieldMixture, dct_matrix

F64 = torch.float64
U = 2.0**-53


def _field(k: int = 3, c: int = 2, h: int = 4, w: int = 5, seed: int = 0) -> FieldMixture:
    gen = torch.Generator().manual_seed(seed)
    means = torch.rand(k, c, h, w, dtype=F64, generator=gen) * 2 - 1
    spectra = 0.05 + torch.rand(k, c, h, w, dtype=F64, generator=gen)
    return FieldMixture(torch.full((k,), 1.0 / k, dtype=F64), means, spectra, labels=[0, 1, 1][:k])


def test_dct_is_orthonormal() -> None:
    for n in (1, 4, 7, 16):
        d = dct_matrix(n)
        # each entry of D D^T is a length-n dot product of entries <= sqrt(2/n): error <= gamma_n * 2 ~ 2 n u
        assert float((d @ d.T - torch.eye(n, dtype=F64)).abs().max()) <= 4 * n * U


@pytest.mark.parametrize(("alpha", "sigma"), [(1.0, 0.0), (0.8, 0.6), (0.1, 0.995)])
def test_log_prob_and_score_agree_with_the_dense_mixture(alpha: float, sigma: float) -> None:
    """Both routes compute the same closed form in a different order of roundings: a few d-term sums of
    magnitude S = sum z^2 / nu (the quadratic form) and C = sum |log nu| + d log(2 pi) / 2; each errs by at most
    gamma_{2d + 32} (S + C) (Higham's gamma for the longest chain: the transform's H + W terms, the dense Cholesky's
    d, the sums' d), and the scores by the same factor of |P| |x - m| summed over components."""
    field = _field().noised(alpha, sigma)
    dense = field.to_dense()
    x = dense.sample(64, torch.Generator().manual_seed(1)) * 1.5
    d = field.dim
    gamma = (2 * d + 32) * U / (1 - (2 * d + 32) * U)
    nu = field.spectra
    quad = -2 * (field.component_log_prob(x) - torch.log(field.weights))  # sum z^2/nu + log det + d log 2 pi
    scale = quad.abs().max(dim=1).values + torch.log(nu).abs().flatten(1).sum(1).max() + d
    assert bool(((field.log_prob(x) - dense.log_prob(x)).abs() <= gamma * scale).all())
    score_scale = (x.abs().max() + field.means.abs().max()) / nu.min()
    assert float((field.score(x) - dense.score(x)).abs().max()) <= gamma * d * float(score_scale)
    # a wrong spectrum (one coefficient off by 1e-6 relative) is detected by the same bound
    wrong = FieldMixture(field.weights, field.means.reshape(-1, *field.shape), nu * (1 + 1e-6 * (torch.arange(
        nu.numel()).reshape(nu.shape) == 0)), labels=field.labels)
    assert bool(((wrong.log_prob(x) - dense.log_prob(x)).abs() > gamma * scale).any())


def test_score_is_the_gradient_of_log_prob_and_bayes_holds() -> None:
    field = _field().noised(0.7, 0.7)
    x = field.sample(32, torch.Generator().manual_seed(2)).requires_grad_(True)
    (grad,) = torch.autograd.grad(field.log_prob(x).sum(), x)
    x = x.detach()
    score = field.score(x)
    assert float((grad - score).abs().max()) <= 1e-10 * (1 + float(score.abs().max()))
    # Bayes in score form: grad log p(c|x) = score of p(x|c) - score of p(x)
    bayes = field.given(1).score(x) - field.score(x)
    assert float((field.grad_log_posterior(x, 1) - bayes).abs().max()) <= 1e-10 * (1 + float(score.abs().max()))
    assert torch.allclose(field.class_posterior(x).sum(1), torch.ones(32, dtype=F64), atol=1e-14)


def test_sample_moments() -> None:
    """n = 20000 draws of one component: per-pixel means within 5 standard errors (sqrt(var / n)), family of d = 40
    coordinates, Bonferroni false-alarm rate 40 x 5.7e-7 = 2.3e-5."""
    field = _field(k=1)
    x = field.sample(20_000, torch.Generator().manual_seed(3))
    var = torch.diagonal(field.to_dense().covariances[0])
    z = (x.mean(0) - field.means[0]) / torch.sqrt(var / 20_000)
    assert float(z.abs().max()) < 5.0


def test_refusals() -> None:
    good = _field()
    with pytest.raises(ValueError, match="^spectra"):
        FieldMixture([1.0], torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="^means"):
        FieldMixture([1.0], torch.zeros(1, 4), torch.ones(1, 4))
    with pytest.raises(ValueError, match="^weights"):
        FieldMixture([0.5], torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError, match="^condition"):
        good.given(7)
    with pytest.raises(ValueError, match="^dim"):
        FieldMixture([1.0], torch.zeros(1, 3, 32, 32), torch.ones(1, 3, 32, 32)).to_dense()
    assert math.isfinite(float(good.log_prob(torch.zeros(1, good.dim, dtype=F64))[0]))
