"""L-PAVASOVIC-HIGHDIM: CFG's exact law against p(x|c) as d grows (verify.evidence.highdim)."""

import pytest
import torch

from toy_models.gaussian_mixture import GaussianMixture
from verify import rules
from verify.evidence.highdim import assemble_dense, gaussian_family_law, gaussian_kl, separation
from verify.evidence.shared import alpha_sigma
from verify.exact_law import exact_gaussian_law

F64 = torch.float64


@pytest.mark.parametrize("sampler", ["ode", "sde"])
@pytest.mark.parametrize("dim", [2, 3])
def test_per_direction_law_equals_dense_moment_odes(sampler, dim):
    """The decoupled computation against exact_gaussian_law on the dense d x d covariances, the class direction
    a random unit vector. Both integrate DOP853 at rtol 1e-12 (global error ~1e3 rtol): agreement to 1e-8."""
    w = 3.0
    u = torch.randn(dim, dtype=F64, generator=torch.Generator().manual_seed(dim))
    u = u / torch.linalg.vector_norm(u)
    m = separation(dim) * u
    eye = torch.eye(dim, dtype=F64)
    laws = {"cond": GaussianMixture([1.0], m[None], eye[None]),
            "uncond": GaussianMixture([1.0], torch.zeros(1, dim, dtype=F64), (eye + torch.outer(m, m))[None])}
    dense_mean, dense_cov = exact_gaussian_law(rules.get("cfg", w=w), laws, sampler, start="marginal")
    law = gaussian_family_law(dim, w, sampler)
    mean, cov = assemble_dense(u, law["along"], law["orthogonal"])
    assert torch.allclose(mean, dense_mean, rtol=0, atol=1e-8)
    assert torch.allclose(cov, dense_cov, rtol=0, atol=1e-8)


def test_mixture_reduces_to_the_class_direction():
    """The premise of the reduction: in the paper's mixture the conditional and unconditional noised scores differ
    only along m, at any point and time (to rounding of O(|score|) = 1e-12)."""
    dim = 8
    m = separation(dim) * torch.ones(dim, dtype=F64) / dim**0.5
    eye = torch.eye(dim, dtype=F64)
    cond = GaussianMixture([1.0], m[None], eye[None])
    uncond = GaussianMixture([0.5, 0.5], torch.stack([m, -m]), torch.stack([eye, eye]))
    x = torch.randn(32, dim, dtype=F64, generator=torch.Generator().manual_seed(0)) * 2
    u = m / torch.linalg.vector_norm(m)
    for t in (0.1, 0.5, 0.9):
        a, s = alpha_sigma(t)
        diff = cond.noised(a, s).score(x) - uncond.noised(a, s).score(x)
        orthogonal = diff - (diff @ u)[:, None] * u
        assert float(orthogonal.abs().max()) < 1e-12


def test_orthogonal_directions_are_exact():
    law = gaussian_family_law(16, 3.0, "sde")
    assert gaussian_kl(*law["orthogonal"], 0.0, 1.0) < 1e-12


def test_separation_refuses_bad_dims():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="^dim:"):
            separation(bad)


def test_record(ledger):
    rec = ledger("L-PAVASOVIC-HIGHDIM")["L-PAVASOVIC-HIGHDIM"]
    assert rec.verdict == "conditional"
    trends = rec.evidence["trends"]
    sde = next(v for k, v in trends.items() if k.startswith("mixture_sde"))
    ode = next(v for k, v in trends.items() if k.startswith("mixture_ode"))
    assert sde["vanishes"] and not ode["vanishes"]
    assert rec.figure == "figures/pavasovic_highdim.png"
