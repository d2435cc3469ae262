"""verify.exact_law for every linear rule of verify.rules: the exact Gaussian law against Monte Carlo of every
registered sampler, against the exact law of each discrete sampler as its steps are refined (observed order =
the registry's order), against the 1-D references where weights jump, the CFG case, and the refusals.

Every registered rule is built here with representative parameters and sorted into: linear (its weights at every
t are a dict), re-noising (CFG++: refused by the continuous-time laws) and non-linear (refused); a rule that cannot
be built from a Gaussian world is skipped with its reason printed (``pytest -s``).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from toy_models import AnalyticDenoiser, GaussianMixture, World, get_schedule, get_world
from verify import exact_gaussian_cfg_law, exact_gaussian_law, rules
from verify.exact_law import discrete_sampler_law, pf_ode_law_1d, reverse_sde_law_1d
from verify.rules.cfg import cfg as cfg_formula
from verify.samplers import SAMPLERS, get_sampler, sample, time_grid

F64 = torch.float64
SCHED = get_schedule("vp-linear")
T_END = 1e-3  # sigma(T_END) = 0.0105 > 0: every solver runs at its full order (dpmpp_2m's docstring, t_end = 0)
DIMS = (1, 2, 4)


# Per-step tensors of at most 8000 x 4: intra-op threads only add synchronisation (test_samplers.py).
pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------------------------
# Worlds and rules
# --------------------------------------------------------------------------------------------------------------
LABELS = {"cond": 1, "negative": 2, "cond_1": 11, "cond_2": 12}


@functools.cache
def branch_laws(d: int) -> dict[str, GaussianMixture]:
    """One single Gaussian per branch in dimension d (seeded): rotated covariances with eigenvalues in the given
    ranges; the weak model's law is cond's with its mean moved and its covariance inflated 1.6x (a worse fit of the
    same condition, as autoguidance assumes)."""
    rng = np.random.default_rng(100 + d)

    def gaussian(mean_scale: float, lo: float, hi: float) -> GaussianMixture:
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        cov = q @ np.diag(lo + (hi - lo) * rng.random(d)) @ q.T
        return GaussianMixture([1.0], (mean_scale * rng.standard_normal(d))[None], cov[None])

    laws = {"uncond": gaussian(0.3, 0.8, 1.5), "cond": gaussian(1.0, 0.3, 0.7), "negative": gaussian(1.0, 0.4, 0.9),
            "cond_1": gaussian(1.0, 0.3, 0.7), "cond_2": gaussian(1.0, 0.3, 0.7)}
    laws["weak"] = GaussianMixture([1.0], laws["cond"].means + 0.2, laws["cond"].covariances * 1.6)
    return laws


def guided_denoiser(rule: rules.Rule, d: int):
    """The rule applied to the analytic denoiser of :func:`branch_laws` (each branch a condition of one world)."""
    laws = branch_laws(d)
    world = World("branches", laws["uncond"], conditionals={label: laws[b] for b, label in LABELS.items()})
    conditions = {b: (None if b == "uncond" else LABELS[b]) for b in rule.condition_keys}
    weak = None
    if "weak" in rule.branches:
        weak = AnalyticDenoiser(World("weak", laws["uncond"], conditionals={1: laws["weak"]}))
    return rule.guide(AnalyticDenoiser(world), conditions, weak=weak)


def laws_for(rule: rules.Rule, d: int) -> dict[str, GaussianMixture]:
    """The laws of every branch the rule reads (its weights name a subset)."""
    return {b: branch_laws(d)[b] for b in set(rule.branches) | set(rule.condition_keys)}


def _interval_edges() -> tuple[float, float]:
    """EDM noise levels sigma/alpha at log-SNR nodes 2 and 5 of the 8-step log-SNR grid from t = 1 to T_END: every
    refined grid (16, 32, ... steps) has a node at both edges (to rounding), so no step straddles a jump."""
    lam1, lam0 = (float(v) for v in SCHED.log_snr(torch.tensor([1.0, T_END], dtype=F64)))
    hi, lo = (math.exp(-0.5 * (lam1 + k / 8 * (lam0 - lam1))) for k in (2, 5))
    return lo, hi


# representative parameters of the known rules; strengths where the ODE and SDE laws differ clearly (the power of
# the Monte Carlo test below is against that difference)
PARAMS = {
    "cfg": lambda: {"w": 2.0},
    "negative_prompt_000": lambda: {"w_pos": 2.0, "w_neg": 0.5},
    "negative_prompt_001": lambda: {"w": 1.5},
    "compose": lambda: {"weights": [1.5, 0.8]},
    "interval": lambda: dict(zip(("sigma_lo", "sigma_hi"), _interval_edges(), strict=True),
                             rule=rules.get("cfg", w=2.0)),
    "autoguidance": lambda: {"w": 1.5},
    "apg": lambda: {"w": 2.0, "eta": 1.0},  # eta = 1, no threshold, no momentum: APG is CFG (linear)
    "cfgpp": lambda: {"lam": 0.5},
}
SKIP_REASONS = {
    "classifier": "linear only with verify.rules.classifier.ExactNoisyClassifier, whose world must be joint (p(x) "
                  "the mixture of the class laws), so the uncond branch is never a single Gaussian; checked on 1-D "
                  "mixtures instead (test_classifier_rule_on_a_mixture)",
}
# non-linear configurations of rules that are linear with the parameters above
EXTRA_NONLINEAR = {"apg": {"w": 2.0}}


def _build(name: str) -> rules.Rule | str:
    """The rule ``name`` with representative parameters, or why it cannot be built here."""
    if name in SKIP_REASONS:
        return SKIP_REASONS[name]
    attempts = [PARAMS[name]()] if name in PARAMS else [{"w": 2.0}, {}]
    errors = []
    for params in attempts:
        try:
            return rules.get(name, **params)
        except (TypeError, ValueError) as err:
            errors.append(f"{params}: {err}")
    return f"no representative parameters known ({'; '.join(errors)})"


def _is_linear(rule: rules.Rule) -> bool:
    return all(rule.weights_at(float(t), SCHED) is not None for t in np.linspace(T_END, 1.0, 41))


def _classify() -> tuple[dict[str, rules.Rule], dict[str, rules.Rule], dict[str, str]]:
    linear, refused, skipped = {}, {}, {}
    for name in rules.names():
        rule = _build(name)
        if isinstance(rule, str):
            skipped[name] = rule
        elif rule.renoise_branch is None and _is_linear(rule):
            linear[name] = rule
        else:
            refused[name] = rule
    for name, params in EXTRA_NONLINEAR.items():
        if name in rules.names():
            refused[f"{name}{params}"] = rules.get(name, **params)
    return linear, refused, skipped


LINEAR, REFUSED, SKIPPED = _classify()


def _weights_on_grid(rule: rules.Rule) -> list:
    return [rule.weights_at(float(t), SCHED) for t in np.linspace(T_END, 1.0, 41)]


def _duplicates() -> dict[str, str]:
    """Linear rules whose weights equal an earlier rule's at every grid time: ``{rule: twin}``."""
    out, seen = {}, {}
    for name in sorted(LINEAR, key=lambda n: (n != "cfg", n)):
        key = repr(_weights_on_grid(LINEAR[name])) + repr(LINEAR[name].breakpoints(SCHED))
        if key in seen:
            out[name] = seen[key]
        else:
            seen[key] = name
    return out


DUPLICATES = _duplicates()
LINEAR_NAMES = sorted(n for n in LINEAR if n not in DUPLICATES)
# every sampler, and again at eta = 0.5 where eta changes its continuous limit (DDIM: nu = eta^2 = 0.25)
CONFIGS = [(name, {}) for name in sorted(SAMPLERS)] + [
    (name, {"eta": 0.5}) for name in sorted(SAMPLERS) if get_sampler(name).noise(0.5) != get_sampler(name).noise(0.0)]
CONFIG_IDS = [name + "".join(f"-{k}{v}" for k, v in kw.items()) for name, kw in CONFIGS]


def test_every_registered_rule_is_sorted():
    """Prints how each registered rule is treated; the rules of the two source texts must all be linear here."""
    for name in rules.names():
        how = ("linear" if name in LINEAR else "skipped: " + SKIPPED[name] if name in SKIPPED else
               "refused (re-noises)" if REFUSED[name].renoise_branch is not None else "refused (non-linear)")
        print(f"{name}: {how}")
    assert {"cfg", "negative_prompt_000", "negative_prompt_001", "compose", "interval"} <= set(LINEAR)
    assert set(LINEAR) | set(SKIPPED) | {n for n in REFUSED if n in rules.names()} == set(rules.names())


@functools.cache
def exact(name: str, d: int, sampler: str, eta: float, start: str = "prior") -> tuple[torch.Tensor, torch.Tensor]:
    rule = LINEAR[name]
    return exact_gaussian_law(rule, laws_for(rule, d), sampler, start=start, t_end=T_END, eta=eta)


@functools.cache
def discrete(name: str, d: int, sampler: str, eta: float, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    kw = {"eta": eta} if eta else {}
    return discrete_sampler_law(sampler, guided_denoiser(LINEAR[name], d), time_grid(steps, 1.0, T_END, "log_snr",
                                                                                       "vp-linear"), **kw)


def _has_jumps(rule: rules.Rule) -> bool:
    return any(T_END < t < 1.0 for t in rule.breakpoints(SCHED))


# --------------------------------------------------------------------------------------------------------------
# (d) the CFG entry point is the CFG rule's case
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("sampler", "start"), [("ode", "prior"), ("sde", "marginal")])
def test_cfg_law_is_the_cfg_rule_case(sampler, start):
    """exact_gaussian_cfg_law delegates to the one implementation: bit for bit equal, w = 0.3 included (1 - (1 + w)
    is not -w in float64, and both entry points must still build the same weights)."""
    for cond, uncond in ((get_world("gauss1d").law(1), get_world("gauss1d").law(None)),
                         (branch_laws(2)["cond"], branch_laws(2)["uncond"])):
        for w in (0.3, 3.0):
            a = exact_gaussian_cfg_law(cond, uncond, w, sampler, start=start)
            b = exact_gaussian_law(rules.get("cfg", w=w), {"cond": cond, "uncond": uncond}, sampler, start=start)
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), (w, a, b)


def test_registered_continuous_limits_are_the_ode_and_the_sde():
    """A sampler's name selects its continuous limit: nu = 0 (deterministic samplers, DDIM at eta = 0) is the ODE,
    nu = 1 (DDPM, Euler-Maruyama, DDIM at eta = 1) the SDE: the same moment ODEs, bit for bit."""
    world = get_world("gauss1d")
    rule, laws = rules.get("cfg", w=3.0), {"cond": world.law(1), "uncond": world.law(None)}
    want = {nu: exact_gaussian_law(rule, laws, kind) for nu, kind in ((0.0, "ode"), (1.0, "sde"))}
    seen = set()
    for name in SAMPLERS:
        for eta in (0.0, 1.0):
            nu = get_sampler(name).noise(eta)
            if nu in want and (name, nu) not in seen:
                seen.add((name, nu))
                got = exact_gaussian_law(rule, laws, name, eta=eta)
                assert all(torch.equal(x, y) for x, y in zip(got, want[nu], strict=True)), (name, eta)
    assert {nu for _, nu in seen} == {0.0, 1.0}


def test_rules_with_the_same_weights_have_the_same_law():
    """The law depends on the rule only through its weights: a linear rule whose weights are those of another
    tested rule at every t (APG at eta = 1 is CFG) gets the same law bit for bit, and is not run again below."""
    for name, twin in DUPLICATES.items():
        for kind in ("ode", "sde"):
            a = exact_gaussian_law(LINEAR[name], laws_for(LINEAR[name], 2), kind)
            b = exact_gaussian_law(LINEAR[twin], laws_for(LINEAR[twin], 2), kind)
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), (name, twin)


# --------------------------------------------------------------------------------------------------------------
# (b) the exact discrete laws converge to the exact continuous law at the registry's order
# --------------------------------------------------------------------------------------------------------------
ORDER_STEPS = (8, 16, 32, 64)
# If err(n) = C n^-p (1 + D/n + ...), the observed order log2(err(n) / err(2n)) is p + c/n + O(1/n^2): its deviation
# from p halves per halving, so at the last pair it is about the change from the previous pair. Allowed: 1.5 times
# that change (room for the O(1/n^2) term) plus test_samplers.py's band of 0.1 (where the approach oscillates about
# p: dpmpp_2m, cfg, d = 2 measures 1.86, 2.12, 2.08), and never more than 0.35 (order p - 1 and p + 1 are always
# rejected). Measured over every rule, sampler and d in {1, 2, 4}: the largest deviation at 32 -> 64 is 0.25
# (euler, negative_prompt_001, d = 2; previous change 0.30).
ORDER_FLOOR, ORDER_CAP = 0.1, 0.35
REF_FLOOR = 1e-9  # the exact law integrates at rtol 1e-12: global error below 1e3 rtol (test_exact_law.py)
ORDER_CASES = [(name, k) for name in LINEAR_NAMES for k in range(len(CONFIGS))]


def _law_error(law, ref) -> float:
    """Euclidean norm of the mean and covariance differences together."""
    return float(torch.linalg.vector_norm(torch.cat([law[0] - ref[0], (law[1] - ref[1]).ravel()])))


@pytest.mark.parametrize(("name", "k"), ORDER_CASES, ids=[f"{n}-{CONFIG_IDS[k]}" for n, k in ORDER_CASES])
def test_discrete_law_converges_at_the_registered_order(name, k):
    """The exact law of each discrete sampler (no sampling) against the exact continuous-time law of its limit, on
    log-SNR grids of 8 to 64 steps, d rotating through 1, 2, 4.

    Finding: a guidance interval caps every sampler at first order. The weights jump at the interval's edges; the
    grids here have nodes at both edges, so no step straddles a jump, yet Heun's second evaluation and DPM-Solver++
    (2M)'s previous x0 read the weights of the other side of an edge, an O(h) local error on one step: measured
    orders 0.7 to 0.93 at 32 -> 64 (going to 1), against 2 without the interval. The first-order samplers keep
    order 1 (the same O(h) error is already their order). So with jumps the expected order is 1, and for the
    second-order samplers only convergence (order > 0.5 at the last pair, below p + cap) is asserted."""
    sampler, kw = CONFIGS[k]
    eta = kw.get("eta", 0.0)
    d = DIMS[(LINEAR_NAMES.index(name) + k) % len(DIMS)]
    order = get_sampler(sampler).order
    ref = exact(name, d, sampler, eta)
    errors = [_law_error(discrete(name, d, sampler, eta, n), ref) for n in ORDER_STEPS]
    assert min(errors) > 100 * REF_FLOOR, errors  # the reference's own error is negligible against these
    observed = [math.log2(errors[i] / errors[i + 1]) for i in range(len(errors) - 1)]
    if _has_jumps(LINEAR[name]) and order > 1:
        assert 0.5 < observed[-1] < order + ORDER_CAP, (d, observed, errors)
        return
    expected = 1 if _has_jumps(LINEAR[name]) else order
    deviation = abs(observed[-1] - expected)
    assert deviation <= min(ORDER_CAP, 1.5 * abs(observed[-1] - observed[-2]) + ORDER_FLOOR), (d, observed, errors)


# --------------------------------------------------------------------------------------------------------------
# (a) Monte Carlo of every registered sampler against the exact law
# --------------------------------------------------------------------------------------------------------------
MC_N, MC_STEPS = 8000, 128
MC_ALPHA = 1e-3  # family-wise false-alarm rate of the whole Monte Carlo test (Bonferroni over every statistic)
MC_CASES = list(range(max(len(CONFIGS), len(LINEAR_NAMES))))


def _mc_case(i: int) -> tuple[str, dict, str, int]:
    sampler, kw = CONFIGS[i % len(CONFIGS)]
    return sampler, kw, LINEAR_NAMES[i % len(LINEAR_NAMES)], DIMS[i % len(DIMS)]


MC_FAMILY = sum(d + d * (d + 1) // 2 for d in (_mc_case(i)[3] for i in MC_CASES))
MC_Z = float(stats.norm.isf(MC_ALPHA / (2 * MC_FAMILY)))  # two-sided, Bonferroni over the family


def _statistics(x: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per statistic (mean coordinates, then covariance entries i <= j about the hypothesised mean): the sample
    value, its standard error from the samples, and the index pairs."""
    n, d = x.shape
    c = x - mean
    rows, cols = torch.triu_indices(d, d)
    products = c[:, rows] * c[:, cols]
    values = torch.cat([x.mean(0), products.mean(0)])
    se = torch.cat([x.std(0), products.std(0)]) / math.sqrt(n)
    return values, se, torch.stack([rows, cols])


def _targets(law, pairs) -> torch.Tensor:
    m, c = law
    return torch.cat([m, c[pairs[0], pairs[1]]])


@pytest.mark.parametrize("i", MC_CASES, ids=[f"{_mc_case(i)[0]}{_mc_case(i)[1]}-{_mc_case(i)[2]}-d{_mc_case(i)[3]}"
                                            for i in MC_CASES])
def test_exact_law_against_monte_carlo(i):
    """8000 runs of the registered sampler at 128 log-SNR steps from N(0, I) (rules rotating over samplers, d over
    1, 2, 4), each mean coordinate and covariance entry z-tested against the exact continuous law.

    Accept when |sample - exact| <= z SE + b: SE from the samples; z = 4.9 to 5.0, Bonferroni at family-wise
    alpha = 1e-3 over every statistic of every case (MC_FAMILY); b the discretisation bias at 128 steps, by
    Richardson from the sampler's registered order p: (L(64) - L(128)) / (2^p - 1) with L the exact discrete laws,
    doubled (test_discrete_law_converges_at_the_registered_order bounds the observed order's deviation by 0.35,
    which makes that estimate at most 2^0.35 - 1 = 27 % off). For the covariance entries, taken about the exact
    mean, b adds the product of the two mean biases.

    Power, against the named alternative "the sampler ignores the rule" (the exact unguided law of the rule's first
    conditional branch, same sampler limit): computed per statistic as Phi((|delta| - 2b) / SE - z) (the bias may
    cancel part of the shift), it must reach 0.99 on some statistic, and the samples must then reject the
    alternative too. (The other continuous limit, ODE against SDE, is too close to some guided laws here for that
    power at this bias: 0.97 for autoguidance under DDIM, 1e-5 for negative_prompt_000 under Euler-Maruyama, d = 2.)
    """
    sampler, kw, name, d = _mc_case(i)
    eta = kw.get("eta", 0.0)
    rule, spec = LINEAR[name], get_sampler(sampler)
    law = exact(name, d, sampler, eta)
    fine, coarse = discrete(name, d, sampler, eta, MC_STEPS), discrete(name, d, sampler, eta, MC_STEPS // 2)
    mean_bias = 2 * (fine[0] - coarse[0]).abs() / (2**spec.order - 1)
    cov_bias = 2 * (fine[1] - coarse[1]).abs() / (2**spec.order - 1) + torch.outer(mean_bias, mean_bias)
    gen = torch.Generator().manual_seed(1000 + i)
    x1 = torch.randn(MC_N, d, dtype=F64, generator=gen)
    x = sample(sampler, guided_denoiser(rule, d), x1, time_grid(MC_STEPS, 1.0, T_END, "log_snr", "vp-linear"),
               generator=gen, **kw)
    values, se, pairs = _statistics(x, law[0])
    bias = _targets((mean_bias, cov_bias), pairs)
    excess = (values - _targets(law, pairs)).abs() - (MC_Z * se + bias)
    assert bool((excess <= 0).all()), (excess, se, bias)

    # the alternative: the same sampler ignoring the rule (the unguided law of its first conditional branch)
    first = next(b for b in ("cond", "cond_1") if b in rule.branches)
    plain = branch_laws(d)[first]
    alt = exact_gaussian_law(rules.get("cfg", w=0.0), {"cond": plain, "uncond": plain}, sampler, t_end=T_END,
                             eta=eta)
    alt_values, alt_se, _ = _statistics(x, alt[0])
    # what each statistic about the alternative's mean estimates under the true law, minus its target
    shift = law[0] - alt[0]
    delta = (_targets((law[0], law[1] + torch.outer(shift, shift)), pairs) - _targets(alt, pairs)).abs()
    power = stats.norm.cdf(((delta - 2 * bias) / alt_se - MC_Z).numpy())
    assert power.max() >= 0.99, power
    assert bool(((alt_values - _targets(alt, pairs)).abs() > MC_Z * alt_se + bias).any())


# --------------------------------------------------------------------------------------------------------------
# (c) rules whose laws the 1-D references also compute, weights jumping included
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["compose", "negative_prompt_000", "negative_prompt_001", "interval"])
def test_moment_odes_against_the_one_dimensional_references(name):
    """On single Gaussians (d = 1) the flow-map and Fokker-Planck references are independent routes to the same
    laws: they must reproduce the moment ODEs within their own halving error estimates (x10: a halving difference
    estimates, it does not bound, the error; plus 1e-8 for the moment ODEs' own error). The interval's weights jump
    twice, which both references and the moment ODEs integrate piece by piece. compose has no cond branch: it
    starts from the prior, the others from the noised cond law."""
    rule = LINEAR[name]
    laws = laws_for(rule, 1)
    start = "marginal" if "cond" in rule.condition_keys else "prior"
    for kind, ref in (("ode", pf_ode_law_1d(rule, laws, start=start, n_nodes=801)),
                      ("sde", reverse_sde_law_1d(rule, laws, start=start, n_cells=600, n_steps=600))):
        mean, cov = exact_gaussian_law(rule, laws, kind, start=start)
        assert abs(ref.mean - float(mean[0])) <= 10 * ref.error["mean"] + 1e-8, (kind, ref, mean)
        assert abs(ref.var - float(cov[0, 0])) <= 10 * ref.error["var"] + 1e-8, (kind, ref, cov)
        below = float(torch.special.ndtr(-mean[0] / cov[0, 0].sqrt()))
        assert abs(ref.mass_below_0 - below) <= 10 * ref.error["mass_below_0"] + 1e-8, (kind, ref)


def test_jumps_matter():
    """The interval law differs from both plain CFG's and the unguided law (the jumps are not lost), by far more
    than the integrator's error."""
    rule = LINEAR["interval"]
    laws = laws_for(rule, 1)
    got = exact_gaussian_law(rule, laws, "ode", start="marginal")
    for other in (rules.get("cfg", w=2.0), rules.get("cfg", w=0.0)):
        ref = exact_gaussian_law(other, laws, "ode", start="marginal")
        assert _law_error(got, ref) > 1e-3


def test_classifier_rule_on_a_mixture():
    """Classifier guidance with the exact noisy classifier is linear (weights {cond: s, uncond: 1 - s}) on the joint
    bimodal1d world, whose p(x) is a mixture: the 1-D flow-map reference of the rule equals that of CFG at
    guidance_scale s (same weights, same laws: the same numbers), and 4000 Heun runs of the rule's own guided
    denoiser (which calls the classifier's gradient) match it. Heun's bias at 64 steps is estimated from the same
    runs at 32 steps (same start points: the mean difference is the discretisation difference), /3 (order 2),
    doubled; z = 3.29 (two-sided 1e-3) for the mean and the second moment about the reference mean."""
    from verify.rules.classifier import ExactNoisyClassifier

    world = get_world("bimodal1d")
    rule = rules.get("classifier", scale=2.0, classifier=ExactNoisyClassifier(world, "vp-linear"))
    laws = {"cond": world.law(1), "uncond": world.law(None)}
    ref = pf_ode_law_1d(rule, laws, n_nodes=801)
    cfg_ref = pf_ode_law_1d(rules.get("cfg", guidance_scale=2.0), laws, n_nodes=801)
    assert (ref.mean, ref.var) == (cfg_ref.mean, cfg_ref.var)
    den = rule.guide(AnalyticDenoiser(world), 1)
    a, s = (float(v) for v in SCHED.alpha_sigma(1.0))
    x1 = world.law(1).noised(a, s).sample(4000, torch.Generator().manual_seed(11))
    runs = [sample("heun", den, x1, time_grid(n)) for n in (32, 64)]
    z = float(stats.norm.isf(0.5e-3))
    for stat, target, error in ((lambda x: x, ref.mean, ref.error["mean"]),
                                (lambda x: (x - ref.mean) ** 2, ref.var, ref.error["var"])):
        fine, coarse = stat(runs[1]), stat(runs[0])
        bias = 2 * abs(float(fine.mean() - coarse.mean())) / 3 + 10 * error
        assert abs(float(fine.mean()) - target) <= z * float(fine.std()) / math.sqrt(len(fine)) + bias


# --------------------------------------------------------------------------------------------------------------
# discrete_sampler_law: stateful denoisers and re-noising rules
# --------------------------------------------------------------------------------------------------------------
class _StepRecordingCFG(rules.LinearRule):
    """CFG that is 'stateful': it records, in the run's state, every step it was evaluated at (test-only, not
    registered). Its law is CFG's; a run split step by step would show up as many states each at step 0."""

    name = "step_recording_cfg"
    reference = "test helper (Ho & Salimans 2022, eq. 6)"
    stateful = True

    def __init__(self, *, w: float):
        self.w = w
        self.branches = ("uncond", "cond")
        self._weights = {"cond": 1.0 + w, "uncond": -w}
        self.params = {"w": w}
        self.states: list = []

    def combine(self, preds, ctx):
        if not self.states or self.states[-1] is not ctx.state:
            self.states.append(ctx.state)
        ctx.state.memory.setdefault("steps", []).append(ctx.state.step)
        return cfg_formula(preds["uncond"], preds["cond"], w=self.w)  # CFG's own arithmetic


@pytest.mark.parametrize(("sampler", "kw"), [("ddpm", {}), ("euler_maruyama", {}), ("ddim", {"eta": 0.5})])
def test_stateful_denoiser_is_run_in_one_go(sampler, kw):
    """A stateful guided denoiser is never split step by step (its state would restart): one state sees every step
    0 .. n-1, whatever stepwise says, and the law equals the stateless rule's one-run law to rounding (the same
    arithmetic: identical)."""
    rule = _StepRecordingCFG(w=2.0)
    den = rule.guide(AnalyticDenoiser(get_world("gauss1d")), 1)
    grid = time_grid(6, 1.0, T_END, "log_snr", "vp-linear")
    got = discrete_sampler_law(sampler, den, grid, stepwise=True, **kw)
    assert len(rule.states) == 1 and sorted(set(rule.states[0].memory["steps"])) == list(range(6))
    plain = rules.get("cfg", w=2.0).guide(AnalyticDenoiser(get_world("gauss1d")), 1)
    want = discrete_sampler_law(sampler, plain, grid, stepwise=False, **kw)
    assert all(torch.equal(x, y) for x, y in zip(got, want, strict=True))


@pytest.mark.skipif("cfgpp" not in rules.names(), reason="cfgpp is not registered")
@pytest.mark.parametrize(("sampler", "kw"), [("ddpm", {}), ("ddim", {}), ("ddim", {"eta": 0.5})])
def test_renoising_rule_discrete_law(sampler, kw):
    """CFG++ is affine too: its discrete law stepwise equals the one-run law (two routes: tolerance as in
    test_samplers.py, 1e-12 relative), and 8000 runs match it (z-tests of mean and variance, Bonferroni at
    family-wise 1e-3 over the 2 statistics; no discretisation bias: the law is the discrete sampler's own)."""
    den = rules.get("cfgpp", lam=0.6).guide(AnalyticDenoiser(get_world("gauss1d")), 1)
    grid = time_grid(20, 1.0, T_END, "log_snr", "vp-linear")
    one = discrete_sampler_law(sampler, den, grid, stepwise=False, **kw)
    if get_sampler(sampler).is_stochastic(kw.get("eta", 0.0)):
        step = discrete_sampler_law(sampler, den, grid, stepwise=True, **kw)
        for x, y in zip(one, step, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-13)
    gen = torch.Generator().manual_seed(21)
    x = sample(sampler, den, torch.randn(8000, 1, dtype=F64, generator=gen), grid, generator=gen, **kw)
    values, se, pairs = _statistics(x, one[0])
    z = float(stats.norm.isf(1e-3 / 4))
    assert bool(((values - _targets(one, pairs)).abs() <= z * se).all())


# --------------------------------------------------------------------------------------------------------------
# (e) refusals
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", sorted(REFUSED))
def test_non_linear_and_renoising_rules_are_refused(key):
    rule = REFUSED[key]
    laws = laws_for(rule, 1) if all(b in branch_laws(1) for b in rule.branches) else {}
    for call in (lambda: exact_gaussian_law(rule, laws),
                 lambda: pf_ode_law_1d(rule, laws), lambda: reverse_sde_law_1d(rule, laws)):
        with pytest.raises(ValueError, match="^rule:") as info:
            call()
        if rule.renoise_branch is not None:
            assert "discrete_sampler_law" in str(info.value)


def test_refusals_name_their_argument():
    cfg = rules.get("cfg", w=1.0)
    laws = {"cond": branch_laws(1)["cond"], "uncond": branch_laws(1)["uncond"]}
    compose = LINEAR["compose"]
    sharp = GaussianMixture([1.0], [[1.0]], [[[1e-6]]])
    cases = [
        (lambda: exact_gaussian_law("cfg", laws), TypeError, "^rule:"),
        (lambda: exact_gaussian_law(cfg, [laws["cond"]]), TypeError, "^laws:"),
        (lambda: exact_gaussian_law(cfg, {"cond": laws["cond"]}), ValueError, "^laws: .*needs a law for"),
        (lambda: exact_gaussian_law(cfg, laws | {"negative": laws["cond"]}), ValueError, "^laws: .*no branch"),
        (lambda: exact_gaussian_law(cfg, laws | {"cond": "N(0, 1)"}), TypeError, "^laws:"),
        (lambda: exact_gaussian_law(cfg, laws | {"cond": get_world("bimodal1d").law(None)}), ValueError,
         "^laws: .*single Gaussian"),
        (lambda: exact_gaussian_law(cfg, laws | {"cond": branch_laws(2)["cond"]}), ValueError, "^laws: dimensions"),
        (lambda: exact_gaussian_law(compose, laws_for(compose, 1), start="marginal"), ValueError, "^start:"),
        (lambda: exact_gaussian_law(cfg, laws, "plms"), ValueError, "^sampler:"),
        (lambda: exact_gaussian_law(cfg, laws, ["ode"]), ValueError, "^sampler:"),
        (lambda: exact_gaussian_law(cfg, laws, "ode", eta=0.5), ValueError, "^eta:"),
        (lambda: exact_gaussian_law(cfg, laws, "ddim", eta=1.5), ValueError, "^eta:"),
        (lambda: exact_gaussian_law(cfg, laws, "ddim", eta=float("nan")), ValueError, "^eta:"),
        (lambda: exact_gaussian_law(cfg, laws, start="zero"), ValueError, "^start:"),
        (lambda: exact_gaussian_law(cfg, laws, schedule="rectified-flow"), ValueError, "^schedule:"),
        (lambda: exact_gaussian_law(cfg, laws, t_end=1.0), ValueError, "^t_end:"),
        (lambda: exact_gaussian_law(cfg, laws, rtol=0.0), ValueError, "^rtol:"),
        # w = -40 against a condition of variance 1e-6: A(t) ~ -39 / 1e-6 near t = 0, the SDE's moments overflow
        # (rtol 1e-6: the integrator reaches the overflow in 0.5 s instead of 5 s)
        (lambda: exact_gaussian_law(rules.get("cfg", w=-40.0), {"cond": sharp, "uncond": laws["uncond"]}, "sde",
                                    rtol=1e-6), ValueError, "^rule: .*diverge"),
        (lambda: pf_ode_law_1d(cfg, {"cond": branch_laws(2)["cond"], "uncond": branch_laws(2)["uncond"]}),
         ValueError, "^laws: .*one-dimensional"),
        (lambda: pf_ode_law_1d(compose, laws_for(compose, 1)), ValueError, "^start:"),
        (lambda: reverse_sde_law_1d(cfg, {"cond": laws["cond"]}), ValueError, "^laws:"),
        (lambda: pf_ode_law_1d(cfg, laws, n_nodes=2.5), ValueError, "^n_nodes:"),
        (lambda: discrete_sampler_law("ddpm", guided_denoiser(cfg, 1), time_grid(4), stepwise=1), TypeError,
         "^stepwise:"),
    ]
    for call, kind, match in cases:
        with pytest.raises(kind, match=match):
            call()
