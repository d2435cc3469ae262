"""CFG++ (``rules.get("cfgpp", lam=...)``): the rule against the paper's formula in every space, its parameter checks,
DDIM and DDPM runs against a loop written from the paper's Algorithm 1, the one-step identity with CFG at the
equivalent guidance scale, and the samplers that have no re-noising step refusing it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import proofs
import proofs.cfgpp_ddim
from toy_models import AnalyticDenoiser, get_schedule, get_world
from toy_models.denoiser import CountingDenoiser
from verify import rules
from verify.rules.cfgpp import cfgpp_eps, equivalent_guidance_scale
from verify.samplers import sample, time_grid
from verify.tolerances import gamma

F64 = torch.float64
SCHEDULE = get_schedule("vp-linear")


class _Fixed:
    """A denoiser whose predictions are fixed arrays per condition (arbitrary predictions, not a model's)."""

    def __init__(self, table: dict, dim: int):
        self.table, self.dim, self.schedule = table, dim, SCHEDULE

    def eps(self, x, t, condition=None):
        return self.table[condition].clone()


def _coefficients(t: float) -> tuple[float, float]:
    a, s = SCHEDULE.alpha_sigma(t)
    return float(a), float(s)


@given(seed=st.integers(0, 2**31 - 1), lam=st.floats(0.0, 1.0), t=st.floats(0.02, 0.98),
       space=st.sampled_from(rules.SPACES))
def test_guided_prediction_is_the_papers_interpolated_estimate(seed, lam, t, space):
    """x0 from eps_lam = eps_u + lam (eps_c - eps_u) (Algorithm 1), re-noising eps = eps_u exactly, in every space."""
    gen = torch.Generator().manual_seed(seed)
    x, eu, ec = (torch.randn(6, 3, dtype=F64, generator=gen) * 3 for _ in range(3))
    guided = rules.get("cfgpp", lam=lam, space=space).guide(_Fixed({None: eu, 2: ec}, 3), 2)
    pred = guided.predict(x, t)
    a, s = _coefficients(t)
    want = eu + lam * (ec - eu)
    # eps -> space -> weighted sum -> eps: at most 4 roundings each way and 3 in the sum (n = 32 >= 2 (4 + 4) + 3,
    # with room for the coefficients' own rounding); the largest terms handled are |eps| and |x|/sigma (back to
    # eps from x0, v or velocity) and |x|/alpha (eps to x0, scaled back by alpha/sigma <= 1/sigma): all covered by
    scale = eu.abs() + ec.abs() + x.abs() * (1.0 + 1.0 / s + 1.0 / a)
    assert bool(((pred.eps - want).abs() <= gamma(32, F64) * scale).all())
    assert torch.equal(pred.renoise, eu)
    x0 = (x - s * pred.eps) / a
    x0_paper = lam * (x - s * ec) / a + (1 - lam) * (x - s * eu) / a  # the interpolated clean estimate
    assert bool(((x0 - x0_paper).abs() <= gamma(40, F64) * scale * (1.0 + s / a)).all())


def test_function_and_weights():
    gen = torch.Generator().manual_seed(3)
    eu, ec = torch.randn(5, 2, dtype=F64, generator=gen), torch.randn(5, 2, dtype=F64, generator=gen)
    assert torch.equal(cfgpp_eps(eu, ec, lam=0.0), eu) and torch.equal(cfgpp_eps(eu, ec, lam=1.0), ec)
    rule = rules.get("cfgpp", lam=0.3)
    assert rule.linear_weights == {"cond": 0.3, "uncond": 0.7} and rule.renoise_branch == "uncond"
    assert rule.branches == ("uncond", "cond") and rule.describe() == "cfgpp(lam=0.3)"


@pytest.mark.parametrize("bad, error", [(1.5, ValueError), (-0.1, ValueError), (float("nan"), ValueError),
                                        ("0.5", TypeError), (True, TypeError), ([0.1, 0.2], ValueError)])
def test_lambda_is_validated(bad, error):
    with pytest.raises(error, match="^lam:"):
        rules.get("cfgpp", lam=bad)
    with pytest.raises(error, match="^lam:"):
        equivalent_guidance_scale(bad, 0.5, 0.4)


def test_other_arguments_are_validated():
    with pytest.raises(ValueError, match="^space:"):
        rules.get("cfgpp", lam=0.5, space="score")
    with pytest.raises(ValueError, match="^sampler:"):
        equivalent_guidance_scale(0.5, 0.5, 0.4, sampler="euler")
    with pytest.raises(ValueError, match="^t, s:"):
        equivalent_guidance_scale(0.5, 0.4, 0.5)
    with pytest.raises(ValueError, match="^eta:"):
        equivalent_guidance_scale(0.5, 0.5, 0.4, eta=2.0)
    with pytest.raises(TypeError):  # keyword-only: a bare positional strength is refused
        rules.rule_class("cfgpp")(0.5)


# ------------------------------------------------------------------------------------------------------------
# Through the samplers
# ------------------------------------------------------------------------------------------------------------
def _world_setup(n: int = 64, seed: int = 0):
    world = get_world("ring2d")
    den = AnalyticDenoiser(world)
    gen = torch.Generator().manual_seed(seed)
    a, s = _coefficients(1.0)
    x = world.law(2).noised(a, s).sample(n, gen)
    return den, x, gen


def _paper_step(den, x, t, s_time, lam, renoise_coef: float, noise_coef: float, z):
    """One step of Algorithm 1 written out: x0 from eps_lam, re-noised with eps_u (and noise for the ancestral
    form). Returns the new state and the magnitude of its terms (for the rounding bound)."""
    a_t, s_t = _coefficients(t)
    a_s, _ = _coefficients(s_time)
    eu, ec = den.eps(x, t, None), den.eps(x, t, 2)
    e_lam = eu + lam * (ec - eu)
    x0 = (x - s_t * e_lam) / a_t
    out = a_s * x0 + renoise_coef * eu + (noise_coef * z if z is not None else 0.0)
    size = (a_s / a_t) * (x.abs() + s_t * (eu.abs() + ec.abs())) + renoise_coef * eu.abs()
    if z is not None:
        size = size + noise_coef * z.abs()
    return out, size


@pytest.mark.parametrize("name", ["ddim", "ddpm"])
def test_sampler_runs_match_the_papers_loop(name):
    """Each step of a DDIM / DDPM run of the CFG++ denoiser against Algorithm 1 written out, from the same state.
    Per step: the guided eps and the re-noising eps are the same model calls; the two computations differ only in
    rounding, at most 12 roundings along a term each (interpolation 3, x0 3, coefficients and the step 6), so
    gamma_24 times the magnitude of the step's terms bounds their difference (a Markov sampler with no run state:
    checking every step from a common state checks the run)."""
    den, x, gen = _world_setup()
    lam = 0.6
    guided = rules.get("cfgpp", lam=lam).guide(den, 2)
    grid = time_grid(12).tolist()
    for i in range(len(grid) - 1):
        t, s_time = grid[i], grid[i + 1]
        _, s_t = _coefficients(t)
        _, s_s = _coefficients(s_time)
        lam_t, lam_s = (float(v) for v in SCHEDULE.log_snr(torch.tensor([t, s_time], dtype=F64)))
        q = 1.0 if s_s == 0 else -math.expm1(lam_t - lam_s)
        z = torch.randn(x.shape, dtype=F64, generator=gen) if name == "ddpm" else None
        if name == "ddim":
            want, size = _paper_step(den, x, t, s_time, lam, s_s, 0.0, None)
            got = sample("ddim", guided, x, [t, s_time])
        else:  # ancestral: sqrt(sigma_s^2 - c^2) eps_u + c z with c = sigma_s sqrt(q)
            want, size = _paper_step(den, x, t, s_time, lam, s_s * math.sqrt(1 - q), s_s * math.sqrt(q), z)
            got = sample("ddpm", guided, x, [t, s_time], noise=z[None])
        assert bool(((got - want).abs() <= gamma(24, F64) * size).all()), (name, i)
        x = want


def test_cfg_at_naive_strength_is_not_cfgpp():
    """The step check above can fail: CFG at guidance_scale = lam (the weights of the clean estimate) differs."""
    den, x, _ = _world_setup()
    grid = time_grid(12).tolist()
    t, s_time = grid[3], grid[4]
    cfgpp = sample("ddim", rules.get("cfgpp", lam=0.6).guide(den, 2), x, [t, s_time])
    naive = sample("ddim", rules.get("cfg", guidance_scale=0.6).guide(den, 2), x, [t, s_time])
    _, size = _paper_step(den, x, t, s_time, 0.6, float(_coefficients(s_time)[1]), 0.0, None)
    assert bool(((cfgpp - naive).abs() > gamma(24, F64) * size).any())


@pytest.mark.parametrize("name, eta", [("ddim", 0.0), ("ddim", 0.5), ("ddpm", 0.0)])
@pytest.mark.parametrize("step", [0, 5, 11])
def test_one_step_equals_cfg_at_the_equivalent_scale(name, eta, step):
    """CFG++ with lam from t to s = CFG with g = equivalent_guidance_scale(lam, t, s) (proofs/cfgpp_ddim.py),
    stepped once from the same state with the same noise. Rounding: each side at most 12 roundings along a term;
    CFG's guided eps is of size g |eps_c - eps_u| and enters through alpha_s x0, so its terms are bounded by
    (alpha_s/alpha_t)(|x| + sigma_t (1 + 2 g)(|eps_u| + |eps_c|)) + sigma_s (1 + 2 g)(|eps_u| + |eps_c|)
    (+ the noise term): gamma_32 times that (g itself is formed with a few roundings: inside the 32)."""
    den, x, gen = _world_setup()
    lam = 0.7
    grid = time_grid(12).tolist()
    t, s_time = grid[step], grid[step + 1]
    g = equivalent_guidance_scale(lam, t, s_time, sampler=name, eta=eta)
    z = torch.randn(1, *x.shape, dtype=F64, generator=gen)
    kw = {"eta": eta, "noise": z} if name == "ddim" and eta > 0 else ({"noise": z} if name == "ddpm" else {})
    cfgpp = sample(name, rules.get("cfgpp", lam=lam).guide(den, 2), x, [t, s_time], **kw)
    cfg = sample(name, rules.get("cfg", guidance_scale=g).guide(den, 2), x, [t, s_time], **kw)
    a_t, s_t = _coefficients(t)
    a_s, s_s = _coefficients(s_time)
    e = den.eps(x, t, None).abs() + den.eps(x, t, 2).abs()
    size = (a_s / a_t) * (x.abs() + s_t * (1 + 2 * g) * e) + s_s * (1 + 2 * g) * e + s_s * z[0].abs()
    assert bool(((cfgpp - cfg).abs() <= gamma(32, F64) * size).all())
    # and at the plain weight lam the two differ beyond that bound, except on a last step to sigma = 0 (g = lam)
    plain = sample(name, rules.get("cfg", guidance_scale=lam).guide(den, 2), x, [t, s_time], **kw)
    assert bool(((cfgpp - plain).abs() > gamma(32, F64) * size).any()) == (s_s > 0)


def test_equivalent_scale_grows_with_the_number_of_steps():
    """g = lam / (1 - e^{-Delta/2}) (DDIM), lam / (1 - e^{-Delta}) (DDPM). With y coth y in [1, 1 + y^2/3]
    (x / (1 - e^{-x}) = x/2 + (x/2) coth(x/2)): 1 + x/2 <= x / (1 - e^{-x}) <= 1 + x/2 + x^2/12, so
    Delta g - 2 lam lies in [lam Delta/2, lam Delta/2 + lam Delta^2/24] (DDIM, x = Delta/2) and Delta g - lam in
    [lam Delta/2, lam Delta/2 + lam Delta^2/12] (DDPM, x = Delta): both -> 0 as the steps are refined, so the
    equivalent scale grows like 2 lam / Delta and lam / Delta. Slack: a few roundings of O(1) numbers, 16 u."""
    lam, slack = 0.8, 16 * 2.0**-53
    for n in (50, 200, 1000):
        t, s_time = 0.5, 0.5 - 1.0 / n
        lt, ls = (float(v) for v in SCHEDULE.log_snr(torch.tensor([t, s_time], dtype=F64)))
        delta = ls - lt
        ddim = delta * equivalent_guidance_scale(lam, t, s_time) - 2 * lam
        ddpm = delta * equivalent_guidance_scale(lam, t, s_time, sampler="ddpm") - lam
        assert lam * delta / 2 - slack <= ddim <= lam * delta / 2 + lam * delta**2 / 24 + slack
        assert lam * delta / 2 - slack <= ddpm <= lam * delta / 2 + lam * delta**2 / 12 + slack
    assert equivalent_guidance_scale(lam, 0.1, 0.0) == lam  # the last step to sigma = 0: x0 alone
    per_step = [equivalent_guidance_scale(lam, 0.5, 0.5 - 1.0 / n) for n in (10, 25, 50, 100)]
    assert all(b > a for a, b in zip(per_step, per_step[1:], strict=False))


def test_sympy_proof_of_the_identity():
    result = proofs.run_one(proofs.cfgpp_ddim)
    assert result.holds and result.as_expected and result.claim_ids == ("L-CFGPP",)


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m", "euler_maruyama"])
def test_samplers_without_renoising_refuse_it(name):
    den, x, gen = _world_setup(8)
    guided = rules.get("cfgpp", lam=0.5).guide(den, 2)
    with pytest.raises(ValueError, match="^denoiser:"):
        sample(name, guided, x, time_grid(4), generator=gen)
    # and the refusal comes from the re-noising, not the denoiser: CFG is accepted
    out = sample(name, rules.get("cfg", guidance_scale=1.5).guide(den, 2), x, time_grid(4), generator=gen)
    assert bool(torch.isfinite(out).all())


def test_one_batched_model_call_per_step():
    den, x, _ = _world_setup(8)
    counted = CountingDenoiser(den)
    sample("ddim", rules.get("cfgpp", lam=0.5).guide(counted, 2), x, time_grid(5))
    assert counted.calls == 5 and counted.points == 5 * 2 * 8


def test_lambda_zero_is_unconditional_ddim_and_one_is_not_conditional():
    """lam = 0: the clean estimate and the re-noising are both unconditional, so the run is unconditional DDIM
    (bit for bit: lerp at weight 0 returns eps_u). lam = 1 is not conditional DDIM: it still re-noises with
    eps_u (the difference is the per-step equivalent scale g > 1 on every step but the last)."""
    den, x, _ = _world_setup(16)
    grid = time_grid(8)
    zero = sample("ddim", rules.get("cfgpp", lam=0.0).guide(den, 2), x, grid)
    assert torch.equal(zero, sample("ddim", den, x, grid, condition=None))
    one = sample("ddim", rules.get("cfgpp", lam=1.0).guide(den, 2), x, grid)
    cond = sample("ddim", den, x, grid, condition=2)
    assert float((one - cond).abs().max()) > float(np.sqrt(gamma(24, F64))) * float(cond.abs().max())
