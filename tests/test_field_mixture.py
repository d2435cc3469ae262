"""FieldMixture (image Gaussians diagonal in the per-channel DCT basis): against its dense GaussianMixture within
derived rounding bounds, autograd, finite differences, Bayes' rule, conditions, float32, and the input policy."""

from __future__ import annotations

import math

import pytest
import torch

from toy_models import AnalyticDenoiser, World
from toy_models.field_mixture import COVARIANCE_LIMIT, FieldMixture, dct_matrix
from verify.tolerances import gamma, log_prob_rounding_bound, score_bounds

F64 = torch.float64
U = 2.0**-53
NOISE_LEVELS = [(1.0, 0.0), (0.8, 0.6), (0.1, 0.995)]


def _field(k: int = 4, c: int = 2, h: int = 4, w: int = 5, seed: int = 0, dtype: torch.dtype = F64) -> FieldMixture:
    gen = torch.Generator().manual_seed(seed)
    means = torch.rand(k, c, h, w, dtype=F64, generator=gen) * 2 - 1
    spectra = 0.05 + torch.rand(k, c, h, w, dtype=F64, generator=gen)
    attributes = {"colour": ["red", "red", "blue", "blue"][:k], "shape": ["dog", "cat", "dog", "cat"][:k]}
    return FieldMixture(torch.full((k,), 1.0 / k, dtype=F64), means, spectra, labels=[0, 1, 1, 2][:k],
                        attributes=attributes, dtype=dtype)


def law_mismatch(field: FieldMixture, dense, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-point bounds ``([N], [N])`` on |log p| and |score| differences between the exact laws the two mixtures
    represent: both use the same rounded DCT matrix B, which is orthonormal only to rounding, and the dense
    covariances are rounded when formed. With the field's precision P = B diag(1/nu) B^T and the dense covariance S,
    S^{-1} = (I + G)^{-1} P for G = P S - I, so a quadratic form moves by at most eps |c| |P c| and a component score
    by eps |P c|, eps = g / (1 - g), g >= ||G||_2 (its computed norm plus the gamma_{2d} |P| |S| of forming it); the
    log-determinants differ by at most d eps + d eta, eta >= ||B^T B - I||_2 likewise. The responsibilities then move
    as in verify.tolerances (factor expm1 of twice the log-joint change)."""
    d, k = field.dim, field.n_components
    cols = field._basis_columns()
    eye = torch.eye(d, dtype=F64)
    orth = cols.T @ cols - eye
    eta = float(torch.linalg.matrix_norm(orth, ord=2)) + gamma(2 * d, F64) * float(
        torch.linalg.matrix_norm(cols.abs().T @ cols.abs(), ord=2))
    eps, prec, seen = [], [], {}
    for j in range(k):
        s = dense.covariances[j].to(F64)
        key = field.spectra[j].numpy().tobytes()
        if key in seen and torch.equal(s, dense.covariances[seen[key]].to(F64)):  # the same law: computed once
            eps.append(eps[seen[key]])
            prec.append(prec[seen[key]])
            continue
        seen[key] = j
        p = (cols / field.spectra[j].reshape(-1)) @ cols.T
        g = float(torch.linalg.matrix_norm(p @ s - eye, ord=2)) + gamma(2 * d, F64) * float(
            torch.linalg.matrix_norm(p.abs() @ s.abs(), ord=2))
        eps.append(g / (1 - g))
        prec.append(p)
    eps_t = torch.tensor(eps, dtype=F64)
    centred = x[:, None, :] - field.means.to(F64)[None]  # [N, K, d]
    pc = torch.stack([centred[:, j] @ prec[j] for j in range(k)], 1)  # P c, [N, K, d]
    pc_norm = torch.linalg.vector_norm(pc, dim=-1)
    delta = 0.5 * eps_t * torch.linalg.vector_norm(centred, dim=-1) * pc_norm + 0.5 * d * (eps_t + eta)
    r = field.to(F64).responsibilities(x)
    delta_bar = torch.logsumexp(torch.log(r) + delta, dim=-1)
    s = -(r[:, :, None] * pc).sum(1)
    gap = torch.linalg.vector_norm(-pc - s[:, None], dim=-1)
    moved = torch.minimum(r * torch.expm1((delta + delta_bar[:, None]).clamp(max=700)), torch.ones_like(r))
    return delta_bar, (r * eps_t * pc_norm).sum(-1) * (1 + eps_t.max()) + (moved * gap).sum(-1)


def agreement_bounds(field: FieldMixture, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, object]:
    """``(log_prob bound [N], score bound [N], dense)``: the field's own rounding bound, the dense mixture's
    (verify.tolerances) and the law mismatch; what |field - dense| must stay within."""
    dense = field.to_dense()
    field_lp, field_s = field.rounding_bounds(x)
    mis_lp, mis_s = law_mismatch(field, dense, x)
    dense_s = score_bounds(dense, x)[0]
    return field_lp + log_prob_rounding_bound(dense, x) + mis_lp, field_s + dense_s + mis_s, dense


def test_dct_is_orthonormal() -> None:
    for n in (1, 4, 7, 16):
        d = dct_matrix(n)
        # each entry of D D^T is a length-n dot product of entries <= sqrt(2/n): error <= gamma_n * 2 ~ 2 n u
        assert float((d @ d.T - torch.eye(n, dtype=F64)).abs().max()) <= 4 * n * U


@pytest.mark.parametrize(("alpha", "sigma"), NOISE_LEVELS)
def test_log_prob_and_score_agree_with_the_dense_mixture(alpha: float, sigma: float) -> None:
    """Within the derived bounds (agreement_bounds); a 1e-6 relative error in one spectrum coefficient is caught."""
    field = _field().noised(alpha, sigma)
    gen = torch.Generator().manual_seed(1)
    x = torch.cat([field.sample(48, gen), 3.0 * field.sample(16, gen)])  # the bulk and a spread-out tail
    lp_bound, s_bound, dense = agreement_bounds(field, x)
    lp_err = (field.log_prob(x) - dense.log_prob(x)).abs()
    s_err = torch.linalg.vector_norm(field.score(x) - dense.score(x), dim=-1)
    assert bool((lp_err <= lp_bound).all()) and bool((s_err <= s_bound).all())
    nu = field.spectra
    bump = 1 + 1e-6 * (torch.arange(nu.numel()).reshape(nu.shape) == 0)
    wrong = FieldMixture(field.weights, field.mean_images, nu * bump, labels=field.labels)
    assert bool(((wrong.log_prob(x) - dense.log_prob(x)).abs() > lp_bound).any())


def test_score_is_the_gradient_of_log_prob_and_central_differences() -> None:
    """Autograd of log_prob against the score: within three times the field's score bound (the forward chain once,
    autograd's chain backwards at most twice as long). Central differences D_h = (f(x + h e) - f(x - h e)) / 2h:
    D_h - f' = h^2 f'(3)/6 + O(h^4), so D_2h - D_h = 3 (D_h - f') + O(h^4) and |D_h - f'| is |D_2h - D_h| / 3 up to
    the O(h^4) remainder (Richardson); the rounding of each log p (its bound plus u |log p|) divided by h is added.
    A sign or factor error in the score is far outside."""
    field = _field().noised(0.7, 0.7)
    x = field.sample(8, torch.Generator().manual_seed(2))
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(field.log_prob(xr).sum(), xr)
    score = field.score(x)
    bound = 3 * field.rounding_bounds(x)[1]  # forward once, the autograd chain at most twice as long
    assert bool((torch.linalg.vector_norm(grad - score, dim=-1) <= bound).all())
    h, j = 1e-4, 3
    e = torch.zeros_like(x)
    e[:, j] = 1.0

    def diff(step: float) -> torch.Tensor:
        return (field.log_prob(x + step * e) - field.log_prob(x - step * e)) / (2 * step)

    d1, d2 = diff(h), diff(2 * h)
    tol = (d2 - d1).abs() / 3 + 4 * U * field.log_prob(x).abs() / h + field.rounding_bounds(x)[0] / h
    assert bool(((d1 - score[:, j]).abs() <= tol).all())
    assert float(tol.max()) < 1e-6  # a sign or factor error in the score would be far outside


@pytest.mark.parametrize(("alpha", "sigma"), NOISE_LEVELS)
def test_bayes_identity_at_every_noise_level(alpha: float, sigma: float) -> None:
    """score(x | c) = score(x) + grad log p(c | x), for a label, a token and a token set: the three sides each
    within their rounding bound (the gradient of the log posterior is a difference of two score-like sums, each
    bounded like a score)."""
    field = _field().noised(alpha, sigma)
    x = field.sample(32, torch.Generator().manual_seed(3))
    score, base = field.score(x), field.rounding_bounds(x)[1]
    for condition in (1, "red", ("blue", "cat")):
        cond = field.given(condition)
        err = torch.linalg.vector_norm(cond.score(x) - score - field.grad_log_posterior(x, condition), dim=-1)
        assert bool((err <= cond.rounding_bounds(x)[1] + 3 * base).all())
    post = field.class_posterior(x)
    assert float((post.sum(1) - 1).abs().max()) <= gamma(field.n_components + 4, F64)
    # exp(lse_c - lse) from log joints of size L = max_k |l_k|: each lse errs by u L + gamma_{K+3}, the exp and the
    # difference add 2 u; relative to the posterior (responsibilities: gamma_{2K+4} relative, the sum of K of them)
    rel = 2 * U * field.component_log_prob(x).abs().amax(1) + gamma(2 * field.n_components + 8, F64)
    assert bool(((field.log_class_posterior(x).exp() - post).abs() <= rel[:, None] * post).all())
    red = field.log_condition_posterior(x, ("red",)).exp()  # components 0 and 1 are red
    assert bool(((red - field.responsibilities(x)[:, :2].sum(1)).abs() <= rel * red).all())


def test_conditions_select_components() -> None:
    field = _field()
    assert field.tokens == ["red", "blue", "dog", "cat"]
    assert field.matches(("red", "cat")).tolist() == [False, True, False, False]
    assert field.given("blue").n_components == 2 and field.given("blue").attributes["shape"] == ("dog", "cat")
    assert field.given(None) is field
    assert field.given(1).labels.tolist() == [1, 1]
    assert torch.equal(field.given([]).means, field.means)  # empty token set: the null condition
    for bad, match in ((7, "unknown label"), ("green", "unknown token"), (True, "a bool"), (1.5, "expected None")):
        with pytest.raises(ValueError, match="^condition: " + match):
            field.given(bad)
    with pytest.raises(ValueError, match="^condition: .* matches no component"):
        field.given(("red", "blue"))


def test_moments_and_sampling() -> None:
    """mean / covariance / marginal_variance against the dense mixture's (law of total covariance, float64 rounding
    of a few d-term sums: gamma_{2d} times the entries' scale); draws: per-pixel means within 5 standard errors
    (d = 40 coordinates, Bonferroni false-alarm rate 40 x 5.7e-7 = 2.3e-5); the component indices they report are
    the components' own."""
    field = _field()
    dense = field.to_dense()
    scale = float(field.spectra.max() + field.means.abs().max() ** 2)
    tol = gamma(4 * field.dim, F64) * scale * field.dim
    assert float((field.covariance() - dense.covariance()).abs().max()) <= tol
    assert float((field.marginal_variance() - torch.diagonal(dense.covariance())).abs().max()) <= tol
    assert float((dense.marginal_variance() - torch.diagonal(dense.covariance())).abs().max()) <= tol
    assert float((field.mean() - dense.mean()).abs().max()) <= 4 * U
    x, comp = field.sample_with_components(20_000, torch.Generator().manual_seed(3))
    assert comp.shape == (20_000,) and set(comp.tolist()) == {0, 1, 2, 3}
    var = torch.diagonal(dense.covariances[0])
    z = (x[comp == 0].mean(0) - field.means[0]) / torch.sqrt(var / int((comp == 0).sum()))
    assert float(z.abs().max()) < 5.0
    big = FieldMixture([1.0], torch.zeros(1, 3, 40, 40), torch.ones(1, 3, 40, 40))
    assert big.dim > COVARIANCE_LIMIT and big.marginal_variance().shape == (big.dim,)
    with pytest.raises(ValueError, match="^dim: .*marginal_variance"):
        big.covariance()


def test_float32_within_its_derived_bound() -> None:
    """The float32 mixture against the float64 one at the same (float32-representable) points: within the float32
    rounding bound plus the float64 one."""
    f64 = _field().noised(0.8, 0.6)
    f32 = f64.to(torch.float32)
    assert f32.dtype == torch.float32 and f32.to(F64).dtype == F64 and f64.to(F64) is f64
    x = f64.sample(64, torch.Generator().manual_seed(4)).float().double()
    lp32, s32 = f32.log_prob_and_score(x)
    assert lp32.dtype == torch.float32 and s32.dtype == torch.float32
    lp_b32, s_b32 = f32.rounding_bounds(x)
    lp_b64, s_b64 = f64.rounding_bounds(x)
    assert bool(((lp32.double() - f64.log_prob(x)).abs() <= lp_b32 + lp_b64).all())
    assert bool((torch.linalg.vector_norm(s32.double() - f64.score(x), dim=-1) <= s_b32 + s_b64).all())
    assert float((lp32.double() - f64.log_prob(x)).abs().max()) > 0  # float32 really rounds differently


def test_world_and_denoiser_accept_a_field_mixture() -> None:
    """AnalyticDenoiser reads a field world through the contract: eps = -sigma score of the noised law."""
    field = _field()
    den = AnalyticDenoiser(World("field", field), "vp-linear")
    x = field.sample(5, torch.Generator().manual_seed(5))
    alpha, sigma = (float(v) for v in den.schedule.alpha_sigma(0.3))
    expected = -sigma * field.given("red").noised(alpha, sigma).score(x)
    assert torch.equal(den.eps(x, 0.3, "red"), expected)
    assert den.eps(x.float(), 0.3, None).dtype == torch.float32


def test_refusals() -> None:
    good = _field()
    with pytest.raises(ValueError, match="^spectra"):
        FieldMixture([1.0], torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="^means"):
        FieldMixture([1.0], torch.zeros(1, 4), torch.ones(1, 4))
    with pytest.raises(ValueError, match="^weights"):
        FieldMixture([0.5], torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError, match="^attributes"):
        FieldMixture([1.0], torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), attributes={"a": ["x", "y"]})
    with pytest.raises(ValueError, match="^labels"):
        FieldMixture([1.0], torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), labels=[0.5])
    with pytest.raises(ValueError, match="^dim"):
        FieldMixture([1.0], torch.zeros(1, 3, 32, 32), torch.ones(1, 3, 32, 32)).to_dense()
    with pytest.raises(ValueError, match="^alpha"):
        good.noised(0.0, 1.0)
    with pytest.raises(ValueError, match="^sigma"):
        good.noised(1.0, -0.1)
    with pytest.raises(ValueError, match="^sigma"):
        good.noised(1.0, 1e300)
    with pytest.raises(ValueError, match="^dtype"):
        good.to(torch.float16)
    d = good.dim
    with pytest.raises(ValueError, match=r"^x: expected shape \[N, 40\]"):
        good.log_prob(torch.zeros(2, d + 1))
    with pytest.raises(ValueError, match="^x: contains NaN"):
        good.score(torch.full((1, d), math.nan))
    with pytest.raises(TypeError, match="^x: "):
        good.score(torch.zeros(1, d, dtype=torch.float16))
    with pytest.raises(TypeError, match="^x: "):
        good.score(torch.zeros(1, d, dtype=torch.complex128))
    with pytest.raises(ValueError, match="^x: point 1 is so far"):
        good.log_prob(torch.cat([torch.zeros(1, d, dtype=F64), torch.full((1, d), 1e160, dtype=F64)]))
    with pytest.raises(TypeError, match="^n: "):
        good.sample(2.0)
    with pytest.raises(ValueError, match="^n: "):
        good.sample(-1)
    with pytest.raises(TypeError, match="^generator: "):
        good.sample(2, generator=0)
    ints = torch.zeros(1, d, dtype=torch.int64)
    assert torch.equal(good.log_prob(ints), good.log_prob(torch.zeros(1, d, dtype=F64)))  # ints converted exactly
    assert good.sample(0).shape == (0, d) and good.score(torch.zeros(0, d)).shape == (0, d)
