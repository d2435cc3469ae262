"""Autoguidance (``rules.get("autoguidance", guidance_scale=...)``): the rule against the paper's D_w = w D_1 +
(1 - w) D_0 in every space, its parameter checks, the weak model evaluated at the condition and called once per
evaluation, and the paper's premise made exact on a Gaussian world with an underfit (inflated-covariance) model."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from toy_models import AnalyticDenoiser, get_schedule, get_world, inflated
from toy_models.denoiser import CountingDenoiser
from verify import rules
from verify.rules.autoguidance import autoguidance
from verify.samplers import sample, time_grid
from verify.tolerances import gamma

F64 = torch.float64
SCHEDULE = get_schedule("vp-linear")




class _Fixed:
    def __init__(self, table: dict, dim: int):
        self.table, self.dim, self.schedule = table, dim, SCHEDULE

    def eps(self, x, t, condition=None):
        return self.table[condition].clone()


@given(seed=st.integers(0, 2**31 - 1), g=st.floats(-2.0, 8.0), t=st.floats(0.02, 0.98),
       space=st.sampled_from(rules.SPACES))
def test_guided_prediction_is_the_papers_combination(seed, g, t, space):
    """D_w = w D_1 + (1 - w) D_0 (the paper's w = guidance_scale g), written for denoisers (x0): checked on the x0
    of the guided eps, in every space the rule accepts, with the weak model read at the cond condition."""
    gen = torch.Generator().manual_seed(seed)
    x, e1, e0, e_null = (torch.randn(6, 2, dtype=F64, generator=gen) * 3 for _ in range(4))
    main, weak = _Fixed({4: e1, None: e_null}, 2), _Fixed({4: e0, None: e_null}, 2)
    guided = rules.get("autoguidance", guidance_scale=g, space=space).guide(main, 4, weak=weak)
    a, s = (float(v) for v in SCHEDULE.alpha_sigma(t))
    x0 = (x - s * guided.eps(x, t)) / a
    d1, d0 = (x - s * e1) / a, (x - s * e0) / a
    want = g * d1 + (1 - g) * d0
    # as for CFG++ (tests/test_rule_cfgpp.py): <= 40 roundings along a term through the conversions, the sum and
    # the x0 formula; the weights are |g| and |1 - g|, so the predictions enter scaled by (1 + 2|g|)
    scale = (1 + 2 * abs(g)) * (e1.abs() + e0.abs() + x.abs() * (1.0 + 1.0 / s + 1.0 / a)) * (1.0 + s / a)
    assert bool(((x0 - want).abs() <= gamma(40, F64) * scale).all())


def test_function_endpoints_and_weights():
    gen = torch.Generator().manual_seed(1)
    e0, e1 = torch.randn(4, 2, dtype=F64, generator=gen), torch.randn(4, 2, dtype=F64, generator=gen)
    assert torch.equal(autoguidance(e0, e1, guidance_scale=1.0), e1)
    assert torch.equal(autoguidance(e0, e1, guidance_scale=0.0), e0)
    assert torch.equal(autoguidance(e0, e1, w=1.5), autoguidance(e0, e1, guidance_scale=2.5))
    rule = rules.get("autoguidance", guidance_scale=2.5)
    assert rule.linear_weights == {"cond": 2.5, "weak": -1.5} and rule.branches == ("weak", "cond")
    assert rule.condition_keys == ("cond",) and rule.renoise_branch is None


def test_parameters_and_binding_are_validated():
    with pytest.raises(ValueError, match="^w, guidance_scale:"):
        rules.get("autoguidance", w=1.0, guidance_scale=2.0)
    with pytest.raises(ValueError, match="^w, guidance_scale:"):
        rules.get("autoguidance")
    with pytest.raises(ValueError, match="^guidance_scale:"):
        rules.get("autoguidance", guidance_scale=float("nan"))
    with pytest.raises(TypeError, match="^w:"):
        rules.get("autoguidance", w="2")
    with pytest.raises(ValueError, match="^space:"):
        rules.get("autoguidance", guidance_scale=2.0, space="score")
    den = AnalyticDenoiser(get_world("ring2d"))
    rule = rules.get("autoguidance", guidance_scale=2.0)
    with pytest.raises(ValueError, match="^weak:"):
        rule.guide(den, 1)  # no weak model
    with pytest.raises(ValueError, match="^weak:"):
        rule.guide(den, 1, weak=AnalyticDenoiser(get_world("bimodal1d")))  # another dimension
    with pytest.raises(ValueError, match="^weak:"):
        rules.get("cfg", guidance_scale=2.0).guide(den, 1, weak=den)  # a rule with no weak branch
    with pytest.raises(ValueError, match="^conditions:"):
        rule.guide(den, {"uncond": None, "cond": 1}, weak=den)  # autoguidance reads no null branch


def test_weak_model_is_read_at_the_condition_and_called_once_per_evaluation():
    world = get_world("ring2d")
    strong, weak = AnalyticDenoiser(inflated(world, 1.1)), AnalyticDenoiser(inflated(world, 1.5))
    cs, cw = CountingDenoiser(strong), CountingDenoiser(weak)
    guided = rules.get("autoguidance", guidance_scale=2.0).guide(cs, 3, weak=cw)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, 2, dtype=F64, generator=gen) * 3
    got = guided.eps(x, 0.4)
    assert (cs.calls, cs.points, cw.calls, cw.points) == (1, 10, 1, 10)
    want = autoguidance(weak.eps(x, 0.4, 3), strong.eps(x, 0.4, 3), guidance_scale=2.0)
    assert torch.equal(got, want)  # the same calls and the same lerp: bit for bit
    at_null = autoguidance(weak.eps(x, 0.4, None), strong.eps(x, 0.4, 3), guidance_scale=2.0)
    assert not torch.allclose(got, at_null)  # so the condition the weak model is read at matters
    sample("ddim", guided, x, time_grid(6))
    assert (cs.calls, cw.calls) == (7, 7) and (cs.points, cw.points) == (70, 70)


def test_guidance_scale_one_is_the_strong_model():
    world = get_world("ring2d")
    strong, weak = AnalyticDenoiser(world), AnalyticDenoiser(inflated(world, 2.0))
    x = torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(2)) * 3
    grid = time_grid(5)
    guided = rules.get("autoguidance", guidance_scale=1.0).guide(strong, 1, weak=weak)
    assert torch.equal(sample("ddim", guided, x, grid), sample("ddim", strong, x, grid, condition=1))


@pytest.mark.parametrize("t", [0.05, 0.3, 0.7])
def test_premise_exact_on_a_gaussian(t):
    r"""The paper's premise made exact: data N(m, v); the strong model has variance v(1 + d), the weak one
    v(1 + 2 d) (the same error, twice as large). With A = alpha^2 v + sigma^2 and e = alpha^2 v d, each model's eps
    is sigma (x - alpha m) P with precision P = 1/(A + e), 1/(A + 2e); autoguidance at g = 2 has
    P_g = 2/(A + e) - 1/(A + 2e), whose error is -2 e^2 / (A (A + e)(A + 2e)) against the strong model's
    -e / (A (A + e)): the eps error shrinks by exactly 2e / (A + 2e) < 1 (second order in d), at every x.
    The ratio is formed from eps differences of size ~ e/A |eps|: rounding of ~ 40 operations on |eps|, relative
    to the difference, bounds its error."""
    world = get_world("gauss1d")
    v, d = 0.5, 0.05
    truth, strong = AnalyticDenoiser(world), AnalyticDenoiser(inflated(world, 1 + d))
    weak = AnalyticDenoiser(inflated(world, 1 + 2 * d))
    guided = rules.get("autoguidance", guidance_scale=2.0).guide(strong, 1, weak=weak)
    x = torch.linspace(-3, 4, 15, dtype=F64).reshape(-1, 1) + 0.013  # off the mean: nonzero eps
    a, s = (float(u) for u in SCHEDULE.alpha_sigma(t))
    big_a, e = a * a * v + s * s, a * a * v * d
    exact = truth.eps(x, t, 1)
    err_strong, err_auto = strong.eps(x, t, 1) - exact, guided.eps(x, t) - exact
    ratio = err_auto / err_strong
    want = 2 * e / (big_a + 2 * e)
    tol = gamma(40, F64) * exact.abs() / err_strong.abs() * (1 + want)
    assert bool(((ratio - want).abs() <= tol).all())
    # CFG on the strong model cannot do this: its error does not vanish as d -> 0 (it is the tilt itself)
    cfg = rules.get("cfg", guidance_scale=2.0).guide(strong, 1).eps(x, t) - exact
    assert bool((cfg.abs() > err_strong.abs()).all())
