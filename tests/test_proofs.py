"""The sympy proofs: each residual matches its EXPECTED, the proofs can fail, the Gaussian instance, the report."""

from __future__ import annotations

import types

import numpy as np
import pytest
import sympy

import proofs
from proofs import (
    PROOFS,
    bayes,
    cfg_form_001,
    cg_eps_001,
    composition,
    format_results,
    gaussian_tilted,
    negprompt_000,
    negprompt_001,
    prop1_cfg_is_classifier_guidance,
    prop2_tilted_score,
    run_all,
    run_one,
    temperature,
)
from proofs._common import classifier_scale, guidance_scale, prior_c, score, tidy, w, x

IDS = [m.NAME for m in PROOFS]


# --- every module: metadata, residual as expected, corrected residual zero -------------------------------------------

@pytest.mark.parametrize("module", PROOFS, ids=IDS)
def test_module_metadata(module):
    assert module.NAME == module.__name__.rsplit(".", 1)[-1]
    assert module.CLAIM_IDS and all(isinstance(c, str) and c for c in module.CLAIM_IDS)
    assert module.SOURCE and module.STATEMENT
    assert module.EXPECTED in ("zero", "nonzero")
    assert bool(module.COUNTEREXAMPLE) == (module.EXPECTED == "nonzero")
    if module.EXPECTED == "nonzero":
        assert hasattr(module, "corrected_residual"), "a false statement comes with its corrected version"


@pytest.mark.parametrize("module", PROOFS, ids=IDS)
def test_residual_matches_expected(module):
    residual = module.residual()
    assert isinstance(residual, sympy.Expr)
    if module.EXPECTED == "zero":
        assert sympy.simplify(residual) == 0
        for label, further in getattr(module, "further_residuals", dict)().items():
            assert sympy.simplify(further) == 0, label
    else:
        assert sympy.simplify(residual) != 0


@pytest.mark.parametrize("module", [m for m in PROOFS if hasattr(m, "corrected_residual")],
                         ids=[m.NAME for m in PROOFS if hasattr(m, "corrected_residual")])
def test_corrected_residual_is_zero(module):
    assert sympy.simplify(module.corrected_residual()) == 0


def test_prop1_all_three_forms():
    assert prop1_cfg_is_classifier_guidance.residual() == 0
    assert prop1_cfg_is_classifier_guidance.residual_guidance_scale() == 0
    assert prop1_cfg_is_classifier_guidance.residual_eps() == 0


def test_false_statements_residuals_exactly():
    # temperature: CFG law minus the tempered conditional = -w grad log p(x)
    assert sympy.simplify(temperature.residual() - (-w * score(temperature.p_uncond))) == 0
    # negative prompt of source 000: the rule's score minus the stated density's = +2 w_- grad log p(x)
    m = negprompt_000
    assert sympy.simplify(m.residual() - 2 * m.w_neg * score(m.p_uncond)) == 0
    assert m.exponent_sums() == (1 - 2 * m.w_neg, 1)


def test_counterexample_instances():
    assert temperature.concrete_instance(1, 1) == 1  # w x at w = 1, x = 1
    assert temperature.concrete_instance(3, sympy.Rational(1, 2)) == sympy.Rational(3, 2)
    assert negprompt_000.concrete_instance(1, 1) == -2  # -2 w_- x at w_- = 1, x = 1
    assert negprompt_000.concrete_instance(0, 1) == 0  # no negative prompt: nothing wrong


# --- the proofs can fail: deliberately wrong variants give nonzero residuals ----------------------------------------

def test_wrong_classifier_scale_s_equals_w():
    m = prop1_cfg_is_classifier_guidance
    assert tidy(m.cfg_score_w(w) - m.classifier_guided_score(w)) != 0
    assert tidy(m.cfg_score_guidance_scale(guidance_scale) - m.classifier_guided_score(guidance_scale - 1)) != 0
    assert tidy(m.cfg_eps_w(w) - m.classifier_guided_eps(w)) != 0


def test_wrong_tilted_exponent():
    m = prop2_tilted_score
    assert tidy(m.guided_score(w) - score(m.tilted_density(1 + w, -(1 + w)))) != 0
    assert tidy(m.guided_score(w) - score(m.tilted_density(w, -w))) != 0


def test_wrong_composition_exponent():
    m = composition
    wrong = score(m.composed_density(m.weights, uncond_exponent=sum(m.weights) - 1))
    assert tidy(m.rule_score() - wrong) != 0


def test_wrong_sign_in_classifier_guidance_eps():
    m = cg_eps_001
    assert tidy(m.eps_rule(classifier_scale, sign=+1) - (-m.sigma * m.augmented_score())) != 0


def test_wrong_negative_prompt_exponents():
    m = negprompt_001
    assert tidy(m.rule_score() - score(m.target_density(guidance_scale, -guidance_scale))) != 0


def test_wrong_bayes_and_wrong_temperature_correction():
    # Bayes with the evidence p(x) forgotten in the classifier
    wrong_classifier = bayes.p_x_given_y * prior_c
    assert tidy(score(bayes.p_x_given_y) - score(bayes.p_x) - score(wrong_classifier)) != 0
    # the implicit classifier at temperature 1/w instead of 1/(1+w)
    implicit = temperature.p_cond * prior_c / temperature.p_uncond
    assert tidy(score(temperature.tilted_density()) - score(temperature.p_uncond * implicit**w)) != 0


def test_wrong_convention_mapping():
    assert tidy(cfg_form_001.cfg_eps_guidance_scale(w) - cfg_form_001.cfg_eps_w(w)) != 0


def test_wrong_gaussian_closed_form():
    m = gaussian_tilted
    mean, var = m.tilted_parameters()
    assert m.residual(mean=mean, var=var) == 0
    assert m.residual(mean=sum(e * mu for e, mu in zip(m.exponents, m.means, strict=True)), var=var) != 0
    assert m.residual(mean=mean, var=sum(e * v for e, v in zip(m.exponents, m.variances, strict=True))) != 0


def test_gaussian_tilted_multivariate():
    assert m_is_zero(gaussian_tilted.multivariate_check())


def m_is_zero(matrix: sympy.Matrix) -> bool:
    return all(sympy.simplify(entry) == 0 for entry in matrix)


# --- cross-checks between the sources ---------------------------------------------------------------------------------

def test_composition_with_signed_weights_is_the_negative_prompt_rule():
    # Source 000's composition rule at (w_+, -w_-) is its negative-prompt rule, and gives p(x)^(1 - w_+ + w_-).
    m, n = composition, negprompt_000
    subs = {m.p_conds[0]: n.p_pos, m.p_conds[1]: n.p_neg, m.p_uncond: n.p_uncond}
    composed = m.rule_score((n.w_pos, -n.w_neg, 0)).subs(subs)
    assert tidy(composed - n.rule_score()) == 0
    exponent_of_p_x = 1 - (n.w_pos - n.w_neg)
    assert tidy(n.rule_score() - score(n.stated_density(exponent_of_p_x))) == 0


def test_source_001_negative_prompt_is_source_000_rule_with_shifted_weights():
    m, n = negprompt_001, negprompt_000
    g = guidance_scale
    rule_000 = n.rule_score(g, g - 1).subs({n.p_pos: m.p_pos, n.p_neg: m.p_neg})
    assert tidy(rule_000 - m.rule_score(g)) == 0  # p(x) drops out
    assert m.source_000_exponent_of_p_x() == 2 - 2 * g  # source 000's formula would keep p(x)^(2 - 2g)


def test_tilt_is_not_a_diffusion_path():
    residual = prop2_tilted_score.diffusion_path_residual()
    assert residual != 0
    assert sympy.simplify(residual.subs(w, 0)) == 0
    assert sympy.simplify(residual.subs(sympy.Symbol("v", positive=True), 1)) == 0


# --- the Gaussian instance of temperature.py -------------------------------------------------------------------------

def _quadrature_moments(strength: float) -> tuple[float, float, float, float]:
    """Mean and variance of exp((1+w) log N(x; 1, 0.5) - w log N(x; 0, 1)) by the trapezoid rule, with error bounds.

    Tolerance. On [a, b] with step h the composite trapezoid rule errs by at most (b - a) h^2 max|f''| / 12 for each
    integral I_k = int x^k q(x) dx (k = 0, 1, 2); max|f''| is taken from the second differences on the grid itself,
    times 2 for safety. The truncation to [a, b] = [-8, 10] loses less than 1e-40 of the mass: the law has
    standard deviation <= 1/sqrt(3) and mean in [1, 2], so both ends are >= 14 standard deviations away. The errors
    then propagate to mean = I1/I0 and var = I2/I0 - mean^2 to first order. (The trapezoid rule is in fact
    spectrally accurate for a Gaussian, so the bound is conservative; with h = 5e-4 it is at most 2e-4 (w = 7), still
    far below the gaps to the tempered law, >= 0.048 in variance and >= 0.33 in mean.)
    """
    a, b, h = -8.0, 10.0, 5e-4
    grid = np.arange(a, b + h / 2, h)
    log_q = ((1 + strength) * (-(grid - 1.0) ** 2 / (2 * 0.5) - 0.5 * np.log(2 * np.pi * 0.5))
             - strength * (-(grid**2) / 2 - 0.5 * np.log(2 * np.pi)))
    q = np.exp(log_q - log_q.max())  # the scale cancels in the ratios
    integrals, bounds = [], []
    for k in range(3):
        f = grid**k * q
        integrals.append(np.trapezoid(f, grid))
        second = np.abs(np.diff(f, 2)) / h**2
        bounds.append(2.0 * (b - a) * h**2 * second.max() / 12)
    i0, i1, i2 = integrals
    e0, e1, e2 = bounds
    mean = i1 / i0
    var = i2 / i0 - mean**2
    mean_err = (e1 + abs(mean) * e0) / i0
    var_err = (e2 + abs(i2 / i0) * e0) / i0 + 2 * abs(mean) * mean_err
    return mean, var, mean_err, var_err


def test_gaussian_instance_formulas():
    tilted_mean, tilted_var, tempered_mean, tempered_var = temperature.gaussian_instance()
    assert sympy.simplify(tilted_mean - 2 * (1 + w) / (2 + w)) == 0
    assert sympy.simplify(tilted_var - 1 / (2 + w)) == 0
    assert tempered_mean == 1
    assert sympy.simplify(tempered_var - sympy.Rational(1, 2) / (1 + w)) == 0


@pytest.mark.parametrize("strength", [1, 3, 7])
def test_gaussian_instance_numbers(strength):
    exprs = temperature.gaussian_instance()
    tilted_mean, tilted_var, tempered_mean, tempered_var = (float(e.subs(w, strength)) for e in exprs)
    # the CFG law is not the tempered conditional: both moments differ
    assert abs(tilted_mean - tempered_mean) > 0.3
    assert abs(tilted_var - tempered_var) > 0.04
    # and the closed form of the CFG law matches direct quadrature of its unnormalised density
    mean, var, mean_err, var_err = _quadrature_moments(float(strength))
    assert mean_err < 1e-3 and var_err < 1e-3  # the bound itself is small (see _quadrature_moments)
    assert abs(mean - tilted_mean) <= mean_err
    assert abs(var - tilted_var) <= var_err
    assert abs(mean - tempered_mean) > 100 * mean_err


# --- run_all and the report -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def results():
    return run_all()


def test_run_all(results):
    assert [r.name for r in results] == IDS
    assert len(set(IDS)) == len(IDS)
    assert all(r.as_expected for r in results), [r.name for r in results if not r.as_expected]
    by_name = {r.name: r for r in results}
    assert not by_name["temperature"].holds and by_name["temperature"].corrected_holds
    assert not by_name["negprompt_000"].holds and by_name["negprompt_000"].corrected_holds
    assert by_name["bayes"].holds and by_name["bayes"].residual == "0" and by_name["bayes"].corrected_holds is None
    assert sum(r.seconds for r in results) < 10.0


def test_format_results(results):
    text = format_results(results)
    for r in results:
        assert r.name in text
        for claim_id in r.claim_ids:
            assert claim_id in text
    assert "residual: 0 (holds)" in text
    assert "fails as written" in text and "UNEXPECTED" not in text


def test_unexpected_result_is_reported():
    fake = types.SimpleNamespace(NAME="fake", CLAIM_IDS=("X-FAKE",), SOURCE="nowhere", STATEMENT="x = 0",
                                 EXPECTED="zero", COUNTEREXAMPLE="", residual=lambda: x)
    result = run_one(fake)
    assert not result.holds and not result.as_expected
    assert "UNEXPECTED" in format_results([result])
    assert proofs.ProofResult is type(result)
