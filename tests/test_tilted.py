"""verify.tilted: closed forms, quadrature, importance sampling and the tail analysis, against each other."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate, stats

from toy_models import GaussianMixture, get_world
from verify import rules
from verify.rules.classifier import CleanClassifier, ExactNoisyClassifier
from verify.tilted import NotNormalisableError, TiltedLaw, linear_terms, tilted_law

F64 = torch.float64


@pytest.mark.parametrize("w", [0.0, 1.0, 3.0, 7.0])
def test_gauss1d_closed_form(w):
    q = tilted_law(get_world("gauss1d"), rules.get("cfg", w=w), {"cond": 1})
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
    q = tilted_law(ring, rules.get("cfg", w=2.0), {"cond": 0})  # a mixture target: quadrature
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
    q = tilted_law(get_world("bimodal1d"), rules.get("cfg", w=3.0), {"cond": 1})
    quad = q.summary()
    mc = q._importance_summary(200_000, seed=1)
    # 5 standard errors: a two-sided false-alarm rate below 1e-6 per comparison
    assert abs(mc.log_normaliser - quad.log_normaliser) <= 5 * mc.log_normaliser_error
    assert abs(float(mc.mean[0] - quad.mean[0])) <= 5 * mc.moment_error
    assert mc.effective_sample_size > 10_000


def test_region_mass_against_exact_cdf():
    q = tilted_law(get_world("bimodal1d"), rules.get("cfg", w=0.0), {"cond": 1})  # w = 0: p(x|c) = N(2, 0.5)
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
    corrected = tilted_law(world, rules.get("negative_prompt_000", w_pos=3.0, w_neg=1.0),
                           {"cond": ("dog",), "negative": ("red",)})
    assert corrected.is_normalisable() is True


def test_narrow_negative_prompt_counterexample():
    pos = GaussianMixture([1.0], [[0.0]], [[[1.0]]])
    neg = GaussianMixture([1.0], [[1.0]], [[[0.25]]])
    # precision g/1 + (1-g)/0.25 = 4 - 3g: positive below g = 4/3, negative above
    assert TiltedLaw(((pos, 1.2), (neg, -0.2))).is_normalisable() is True
    assert TiltedLaw(((pos, 1.5), (neg, -0.5))).is_normalisable() is False


def test_tail_bounds_certify_high_dimensional_cfg():
    q = tilted_law(get_world("tokens16d"), rules.get("cfg", w=3.0), {"cond": ("b0+", "b1-")},
                   t=0.5)
    lower, upper = q.tail_bounds(n_directions=256)
    assert 0 < lower <= upper + 1e-12


def test_tilted_law_validation():
    with pytest.raises(ValueError, match="factors"):
        TiltedLaw(())
    with pytest.raises(ValueError, match="factors.*dimension"):
        TiltedLaw(((get_world("ring2d").law(0), 1.0), (get_world("gauss1d").law(1), 0.5)))
    with pytest.raises(ValueError, match="closed form"):
        tilted_law(get_world("bimodal1d"), rules.get("cfg", w=1.0), {"cond": 1}).gaussian()



# --------------------------------------------------------------------------------------------------------------
# Importance sampling where the target is much wider than its positive factor
# --------------------------------------------------------------------------------------------------------------
def _wide_target():
    """p(x|c)^3 p(x)^-2 in d = 3 with p(x|c) = N(e_1, I) (written as two identical components, so that the law is
    not 'Gaussian factors' and goes through importance sampling) and p(x) = N(0, I / 1.4): the precision is
    3 - 2 * 1.4 = 0.2, so q = N(15 e_1, 5 I), five times wider than p(x|c) and fifteen of its standard deviations
    away. The naive proposal (the positive factor, with or without doubled covariance) has precision 1 or 1/2 >=
    2 * 0.2: its weights q/p have infinite variance."""
    eye = torch.eye(3, dtype=F64)
    e1 = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    cond = GaussianMixture([0.5, 0.5], torch.stack([e1, e1]), torch.stack([eye, eye]))
    uncond = GaussianMixture([1.0], torch.zeros(1, 3, dtype=F64), (eye / 1.4)[None])
    exact = TiltedLaw(((GaussianMixture([1.0], e1[None], eye[None]), 3.0), (uncond, -2.0))).gaussian()
    return TiltedLaw(((cond, 3.0), (uncond, -2.0))), exact


def test_importance_sampling_of_a_target_wider_than_its_positive_factor():
    """Against the exact Gaussian answer (mean 15 e_1, covariance 5 I, log Z in closed form):

    * the proposal's weights have finite variance: some component p_k has 2 Lambda - P_k positive definite
      (int q^2 / p_k < inf), with Lambda = 0.2 I the target's precision;
    * the estimates lie within 5 of their reported standard errors of the exact values (two-sided 5.7e-7 per
      comparison, 13 comparisons);
    * the reported ESS agrees with its expectation n / rho, rho = E_p[w^2] / E_p[w]^2 = E_q[q/p] (normalised q),
      estimated independently from 4e5 exact draws of q: by the delta method ESS / n = mean(w)^2 / mean(w^2) has
      relative variance (4 Var w - 4 Cov(w, w^2) / E w^2 + Var(w^2) / (E w^2)^2) / n in units E_p w = 1, whose
      moments E_p[w^k] = E_q[w^(k-1)] come from the same exact draws; 5 of those standard deviations, plus 5 of
      rho's own Monte Carlo error.
    The naive proposal fails all three (measured: ESS 2 to 14 of 200000, log Z 9 to 33 standard errors off)."""
    law, (mean, cov, log_z) = _wide_target()
    lam = torch.linalg.inv(cov)
    proposal = law.proposal()
    finite = [bool(torch.linalg.eigvalsh(2 * lam - torch.linalg.inv(c)).min() > 0) for c in proposal.covariances]
    assert any(finite), "no proposal component gives the weights a finite variance"

    n = 200_000
    summary = law.summary(n_samples=n, seed=3)
    assert "importance sampling" in summary.method
    assert abs(summary.log_normaliser - log_z) <= 5 * summary.log_normaliser_error
    assert bool(((summary.mean - mean).abs() <= 5 * summary.moment_error).all()), summary.mean
    assert bool(((summary.cov - cov).abs() <= 5 * summary.moment_error).all()), summary.cov

    # the expected ESS, from exact draws of q = N(mean, cov)
    m = 400_000
    y = mean + torch.randn(m, 3, dtype=F64, generator=torch.Generator().manual_seed(4)) @ torch.linalg.cholesky(cov).T
    log_q = -0.5 * (((y - mean) @ lam) * (y - mean)).sum(1) - 0.5 * float(torch.logdet(2 * math.pi * cov))
    w = torch.exp(log_q - proposal.log_prob(y))  # q/p with q normalised: E_p[w] = 1
    rho, rho_se = float(w.mean()), float(w.std()) / math.sqrt(m)
    e2, e3, e4 = rho, float((w**2).mean()), float((w**3).mean())  # E_p[w^2], E_p[w^3], E_p[w^4]
    rel_var = (4 * (e2 - 1) - 4 * (e3 - e2) / e2 + (e4 - e2**2) / e2**2) / n
    expected = n / rho
    band = 5 * expected * (math.sqrt(max(rel_var, 0.0)) + rho_se / rho)
    assert abs(summary.effective_sample_size - expected) <= band, (summary.effective_sample_size, expected, band)


def test_tilted_law_refuses_malformed_factors_and_arguments():
    world = get_world("gauss1d")
    law = world.law(1)
    cases = [
        (lambda: TiltedLaw(((law, float("nan")), (world.law(None), 1.0))), "^factors: entry 0's exponent"),
        (lambda: TiltedLaw(((law, "2"),)), "^factors: entry 0's exponent"),
        (lambda: TiltedLaw(((law, 2.0, 1.0),)), "^factors: entry 0"),
        (lambda: TiltedLaw((("gauss1d", 2.0),)), "^factors: entry 0's law"),
        (lambda: TiltedLaw(law), "^factors:"),
        (lambda: tilted_law(world, rules.get("cfg", w=1.0), {"cond": 1}, t=1.5), "^t:"),
        (lambda: tilted_law(world, rules.get("cfg", w=1.0), {"cond": 1}, t=float("nan")), "^t:"),
        (lambda: tilted_law(world, rules.get("cfg", w=1.0), {"cond": 7}), "^condition:"),
        (lambda: tilted_law(world, "cfg"), "^rule:"),
        (lambda: tilted_law(world, rules.get("cfg", w=1.0), {"negative": 1}), "^conditions:"),
        (lambda: tilted_law(world, rules.get("cfg", w=1.0), {"cond": 1}).summary(n_samples=0), "^n_samples:"),
        (lambda: tilted_law(world, rules.get("cfg", w=1.0), {"cond": 1}).probability(lambda x: x[:, 0]),
         "^region:"),
    ]
    for call, match in cases:
        with pytest.raises((ValueError, TypeError), match=match):
            call()


class _RenoisingCFG(rules.LinearRule):
    """CFG's weights with a re-noising branch (as CFG++ has): not registered, only for the refusal below."""

    name = "test_renoising_cfg"
    reference = "test only"
    renoise_branch = "uncond"

    def __init__(self):
        self.branches, self.space, self.params = ("uncond", "cond"), "eps", {}
        self._weights = {"cond": 4.0, "uncond": -3.0}


def test_tilted_law_takes_only_rules_with_fixed_linear_weights():
    world = get_world("gauss1d")
    # no single set of weights at every t: a guidance interval, thresholding, an inexact classifier
    for rule in (rules.get("interval", rule=rules.get("cfg", w=3.0), sigma_lo=0.5, sigma_hi=2.0),
                 rules.get("dynamic_threshold", w=3.0),
                 rules.get("classifier", scale=4.0, classifier=CleanClassifier(world))):
        with pytest.raises(ValueError, match="^rule: .*no fixed linear weights"):
            tilted_law(world, rule, {"cond": 1})
    with pytest.raises(ValueError, match="^rule: .*re-noises"):
        tilted_law(world, _RenoisingCFG(), {"cond": 1})
    with pytest.raises(TypeError, match="^rule:"):
        tilted_law(world, None, {"cond": 1})


def test_linear_terms_merge_branches_that_share_a_condition():
    # classifier guidance with the exact noisy classifier at scale s is CFG with guidance_scale s (Proposition 1
    # of source 000 read backwards): the same terms, hence the same tilted law, bit for bit
    world = get_world("gauss1d")
    exact = rules.get("classifier", scale=4.0, classifier=ExactNoisyClassifier(world))
    assert linear_terms(exact, {"cond": 1}) == linear_terms(rules.get("cfg", guidance_scale=4.0), 1) == \
        ((1, 4.0), (None, -3.0))
    # cfg towards the null condition is the unconditional law: one term of weight 1 (4 + (-3), exact)
    assert linear_terms(rules.get("cfg", w=3.0), {"cond": None}) == ((None, 1.0),)
    # composition: the weights of its K conditions and the rest on the null condition, conditions normalised
    terms = linear_terms(rules.get("compose", weights=[1.0, 1.0]),
                         {"cond_1": ("red", "dog"), "cond_2": ("blue", "dog")})
    assert terms == ((("dog", "red"), 1.0), (("blue", "dog"), 1.0), (None, -1.0))
    q = tilted_law(world, rules.get("cfg", w=3.0), 1)  # a bare condition is the cond branch's
    assert q.exponents == [4.0, -3.0] and q.name == "cfg(guidance_scale=4)"


def _shared_covariance_worlds():
    """p(x|c) a mixture with one shared covariance per dimension, p(x) one Gaussian (1-D and 2-D)."""
    from toy_models import World

    cond1 = GaussianMixture([0.3, 0.7], [[-1.0], [1.5]], [[[0.3]], [[0.3]]], labels=[1, 1])
    uncond1 = GaussianMixture([1.0], [[0.0]], [[[2.0]]], labels=[0])
    c = [[0.3, 0.1], [0.1, 0.2]]
    cond2 = GaussianMixture([0.2, 0.5, 0.3], [[-1.0, 0.0], [1.2, 0.5], [0.0, -1.3]], [c, c, c], labels=[1, 1, 1])
    uncond2 = GaussianMixture([1.0], [[0.0, 0.0]], [[[2.0, 0.3], [0.3, 1.5]]], labels=[0])
    return [World("mix1d", uncond1, conditionals={1: cond1}), World("mix2d", uncond2, conditionals={1: cond2})]


@pytest.mark.parametrize("w", [1.0, 3.0])
@pytest.mark.parametrize("world", _shared_covariance_worlds(), ids=["1d", "2d"])
def test_as_mixture_is_the_tilted_law(world, w):
    """The finite-mixture closed form (multinomial expansion) against the law's own density and quadrature:

    * log q~(x) - log Z equals the mixture's log density at points spread over the mass, within the two sides'
      rounding bounds (verify.tolerances for the mixture; for log q~ the factors' bounds times |exponent|; u |log Z|
      for the subtraction);
    * log Z, mean and covariance agree with the trapezoid quadrature within its own halving estimates (plus 1e3 u
      relative for the closed form's few sums);
    * the closed form of the law at w + 1 does not (a wrong multinomial weight or exponent would be caught)."""
    from verify.tolerances import log_prob_rounding_bound

    law = tilted_law(world, rules.get("cfg", w=w), 1)
    mixture, log_z = law.as_mixture()
    assert mixture.n_components > 1
    summary = law.summary()
    x = mixture.sample(50, torch.Generator().manual_seed(0)) * 1.3
    bound = (log_prob_rounding_bound(mixture, x) + 4 * 2.0**-53 * abs(log_z)
             + sum(abs(e) * log_prob_rounding_bound(f, x) for f, e in law.factors))
    assert bool(((law.log_unnormalized(x) - log_z - mixture.log_prob(x)).abs() <= bound).all())
    closed_round = 1e3 * 2.0**-53
    assert abs(log_z - summary.log_normaliser) <= summary.log_normaliser_error + closed_round * (1 + abs(log_z))
    tol = summary.moment_error + closed_round * (1 + float(mixture.covariance().abs().max()))
    torch.testing.assert_close(mixture.mean(), summary.mean, rtol=0, atol=tol)
    torch.testing.assert_close(mixture.covariance(), summary.cov, rtol=0, atol=tol)
    _, wrong_log_z = tilted_law(world, rules.get("cfg", w=w + 1), 1).as_mixture()
    assert abs(wrong_log_z - summary.log_normaliser) > summary.log_normaliser_error + closed_round * (1 + abs(log_z))


def test_as_mixture_refuses_laws_that_are_not_finite_mixtures():
    world = _shared_covariance_worlds()[0]
    bimodal = get_world("bimodal1d")
    for rule, w_world in ((rules.get("cfg", w=1.5), world),  # 2.5th power of a mixture
                          (rules.get("cfg", w=1.0), bimodal)):  # a mixture to the power -1
        with pytest.raises(ValueError, match="^factors"):
            tilted_law(w_world, rule, 1).as_mixture()
    unshared = TiltedLaw(((GaussianMixture([0.5, 0.5], [[0.0], [1.0]], [[[1.0]], [[2.0]]]), 2.0),))
    with pytest.raises(ValueError, match="^factors"):
        unshared.as_mixture()
    with pytest.raises(ValueError, match="^factors"):
        tilted_law(world, rules.get("cfg", w=7.0), 1).as_mixture(max_components=3)
    with pytest.raises(ValueError, match="^max_components"):
        tilted_law(world, rules.get("cfg", w=1.0), 1).as_mixture(max_components=0)


def test_window_and_laplace_components_are_public():
    """window holds every mode with the tail radius around it; laplace_components finds one maximum per mode
    (bimodal1d's CFG target at w = 0 is N(2, 0.5): one mode at 2 with covariance 2 x 0.5; the unconditional law has
    two)."""
    law = tilted_law(get_world("bimodal1d"), rules.get("cfg", w=0.0), 1)
    lo, hi = law.window
    modes = law.modes()
    assert bool((modes >= lo).all() and (modes <= hi).all())
    (mode, cov), = law.laplace_components()
    assert abs(float(mode[0]) - 2.0) < 1e-6 and abs(float(cov[0, 0]) - 1.0) < 1e-6
    both = TiltedLaw(((get_world("bimodal1d").unconditional, 1.0),))
    assert len(both.laplace_components()) == 2
