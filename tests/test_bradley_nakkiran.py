"""Bradley & Nakkiran 2024 (arXiv 2408.09000): the predictor-corrector identity and the Gaussian example's closed
forms (claims L-BN-PREDICTOR-CORRECTOR and L-BN-GAUSSIAN-LAWS), their proofs, providers and figure."""

from __future__ import annotations

import math
import pathlib

import pytest
import sympy
import torch

from proofs import bn_gaussian_laws, bn_predictor_corrector
from proofs._common import score
from toy_models import GaussianMixture, get_schedule, get_world
from verify import rules
from verify.claims import get_claim
from verify.evidence.bradley_nakkiran import (
    F64,
    PAPER_VE,
    closed_form_variances,
    drift_errors,
    gauss2d_pair,
    langevin_law,
    moment_gap,
    observed_order,
)
from verify.evidence.shared import check_points, one_thread
from verify.exact_law import exact_gaussian_law
from verify.figures import get_figure
from verify.tolerances import gamma as rounding_gamma
from verify.tolerances import score_bounds

IDS = ("L-BN-PREDICTOR-CORRECTOR", "L-BN-GAUSSIAN-LAWS")
ROOT = pathlib.Path(__file__).resolve().parents[1]


# --- the records -------------------------------------------------------------------------------------------------

def test_predictor_corrector_record(ledger):
    record = ledger(*IDS)["L-BN-PREDICTOR-CORRECTOR"]
    assert record.verdict == "proved"
    drift = record.evidence["drift_identity"]
    assert set(drift["worlds"]) == {"gauss1d", "bimodal1d", "ring2d", "attributes2d", "tokens16d", "highdim"}
    assert 0 < drift["max_error_over_bound"] <= 1.0
    for run in record.evidence["split_scheme"]["runs"].values():
        assert run["corrector_exponent"] == 2 * run["guidance_scale"] - 1
        gaps = run["gap_split_ddpm"]
        assert all(b < a for a, b in zip(gaps[:-1], gaps[1:], strict=True))
        assert abs(run["pairwise_orders_split_ddpm"][-1] - 1.0) <= 0.2
        # the split scheme converges to the reverse SDE at first order too
        assert run["fitted_order_split_sde"] > 0.8
    assert "at 25" in record.conditions and "at 100" in record.conditions
    assert record.evidence["all_hold"]


def test_gaussian_laws_record(ledger):
    record = ledger(*IDS)["L-BN-GAUSSIAN-LAWS"]
    assert record.verdict == "proved"
    assert record.evidence["max_error_over_tolerance"] <= 1.0
    assert record.evidence["limit_forms_within"]
    for point in record.evidence["points"].values():
        g, r = point["guidance_scale"], point["variance_ratio"]
        assert point["ddim_closed_form_limit"] == pytest.approx(r**g, rel=1e-14)
        if g > 1:  # DDIM and DDPM differ, and neither is the gamma-powered law
            assert abs(point["ddpm_exact"] / point["ddim_exact"] - 1) > 1e-3
            tilted = point["tilted"]
            assert tilted == "inf" or abs(point["ddpm_exact"] / tilted - 1) > 1e-3


def test_declarations_name_existing_tests_and_the_figure():
    for claim_id in IDS:
        entry = get_claim(claim_id)
        assert entry.figures == ("figures/bn_predictor_corrector.png",)
        spec = get_figure(entry.figures[0])
        assert set(spec.needs) <= set(entry.needs) | {"bn_split_scheme", "bn_gaussian_laws"}
        for test in entry.tests:
            path, _, name = test.partition("::")
            text = (ROOT / path).read_text(encoding="utf-8")
            assert not name or f"def {name}(" in text, test
    assert get_claim(IDS[0]).order == 318 and get_claim(IDS[1]).order == 320


def test_figure_draws_the_providers(ledger, quick_evidence, tmp_path):
    """The registered figure draws the quick run's providers (already computed for the records) into a PNG."""
    from verify.figures import plot

    ledger(*IDS)
    (path,) = plot(["bn_predictor_corrector.png"], tmp_path, quick_evidence)
    assert path.name == "bn_predictor_corrector.png" and path.stat().st_size > 10_000


# --- the float64 drift identity: power against a wrong corrector exponent ---------------------------------------

@one_thread()
def test_drift_identity_detects_a_wrong_exponent():
    """The check passes with gamma' = 2 gamma - 1 and rejects gamma' = gamma (the gamma-powered corrector). The
    alternative's error is (g^2/2)(gamma - 1)|s_c - s_u| (proofs.bn_predictor_corrector.wrong_exponent_residual),
    which at t = 0.5 on ring2d is many orders above the rounding bound: the check has power 1 against it."""
    world = get_world("ring2d")
    x = check_points(world, [0], 0.5, 16, torch.Generator().manual_seed(0))
    right = drift_errors(world, 0, 0.5, x, (3.0,))
    wrong = drift_errors(world, 0, 0.5, x, (3.0,), exponent=lambda g: g)
    assert right[0][1] <= 1.0
    assert wrong[0][1] > 1e6


def test_wrong_exponent_residual_is_the_stated_difference():
    m = bn_predictor_corrector
    expected = m.langevin_step_size() * (m.gamma - 1) * (score(m.p_cond) - score(m.p_uncond))
    assert sympy.simplify(m.wrong_exponent_residual() - expected) == 0
    assert m.wrong_exponent_residual() != 0


# --- the split scheme's exact law --------------------------------------------------------------------------------

def test_split_scheme_is_exact_for_one_step():
    """One Langevin step's law from the affine read-off of the scores equals the law from the closed-form
    precisions: mean m + eps(b - A m), covariance (I - eps A) S (I - eps A)^T + 2 eps I with A = a P_c + (1 - a) P_u,
    b = a P_c mu_c + (1 - a) P_u mu_u.

    Tolerance, derived: the combined score read at the d + 1 points errs by at most ``s_err`` (its components'
    derived rounding bounds, ``score_bounds``), so the read-off slope's columns err by 2 s_err (||dJ||_F <= 2 sqrt(d)
    s_err); the closed-form side's inverses err by gamma_{4d+4} kappa ||P|| (backward-stable inversion, Higham
    section 14.1); the step map M = I + eps J then errs by dM = eps (2 sqrt(d) s_err + dA), the covariance by
    2 ||dM|| ||S|| ||M|| plus gamma_{2d+2} of its absolute terms (two d-term products and a sum, on either side)."""
    world = gauss2d_pair()
    d = world.dim
    alpha, sigma = (float(v) for v in get_schedule("vp-linear").alpha_sigma(0.4))
    cond, marg = world.law(1).noised(alpha, sigma), world.law(None).noised(alpha, sigma)
    mean = torch.tensor([0.3, -0.2], dtype=F64)
    cov = torch.tensor([[0.8, 0.1], [0.1, 0.5]], dtype=F64)
    a, eps = 5.0, 0.01
    got_mean, got_cov = langevin_law(mean, cov, cond, marg, a, eps)
    p_c, p_u = torch.linalg.inv(cond.covariances[0]), torch.linalg.inv(marg.covariances[0])
    a_mat = a * p_c + (1 - a) * p_u
    b_vec = a * p_c @ cond.means[0] + (1 - a) * p_u @ marg.means[0]
    step = torch.eye(d, dtype=F64) - eps * a_mat
    want_mean = mean + eps * (b_vec - a_mat @ mean)
    want_cov = step @ cov @ step.T + 2 * eps * torch.eye(d, dtype=F64)

    def two(m: torch.Tensor) -> float:
        return float(torch.linalg.matrix_norm(m, ord=2))

    points = torch.cat([mean[None], mean[None] + torch.eye(d, dtype=F64)])
    s_err = float((abs(a) * score_bounds(cond, points)[0] + abs(1 - a) * score_bounds(marg, points)[0]).max())
    kappa = [float(torch.linalg.cond(law.covariances[0])) for law in (cond, marg)]
    d_a = rounding_gamma(4 * d + 4, F64) * (abs(a) * kappa[0] * two(p_c) + abs(1 - a) * kappa[1] * two(p_u))
    d_b = d_a * float(max(cond.means[0].norm(), marg.means[0].norm())) + rounding_gamma(2 * d + 2, F64) * float(
        b_vec.norm())
    d_m = eps * (2 * math.sqrt(d) * s_err + d_a)
    g = rounding_gamma(2 * d + 2, F64)
    tol_mean = (eps * (s_err + d_a * float(mean.norm()) + d_b)
                + 2 * g * float(mean.norm() + eps * (b_vec.norm() + two(a_mat) * mean.norm())))
    tol_cov = 2 * math.sqrt(d) * d_m * two(cov) * two(step) + 2 * g * (d * two(step) ** 2 * two(cov) + 2 * eps)
    assert float((got_mean - want_mean).norm()) <= tol_mean
    assert float(torch.linalg.matrix_norm(got_cov - want_cov)) <= tol_cov
    # power: a corrector at the wrong exponent (gamma' = gamma) moves the law far beyond the tolerance
    other_mean, other_cov = langevin_law(mean, cov, cond, marg, 3.0, eps)
    assert moment_gap(other_mean, other_cov, want_mean, want_cov) > 1e3 * max(tol_mean, tol_cov)


def test_observed_order_of_exact_powers():
    steps = (25, 50, 100, 200)
    assert observed_order(steps, tuple(3.0 / n for n in steps)) == pytest.approx(1.0, abs=1e-12)
    assert observed_order(steps, tuple(3.0 / n**2 for n in steps)) == pytest.approx(2.0, abs=1e-12)


def test_moment_gap():
    m, c = torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64)
    assert moment_gap(m, c, m, c) == 0.0
    assert moment_gap(m + torch.tensor([3.0, 4.0], dtype=F64), c, m, c) == 5.0
    assert moment_gap(m, 2 * c, m, c) == pytest.approx(math.sqrt(2.0), rel=1e-15)


# --- the Gaussian example's closed forms ------------------------------------------------------------------------

def test_closed_forms_detect_a_wrong_formula():
    """Sympy: a wrong DDPM form (the gamma-powered variance, or a form with 2 gamma replaced by gamma) leaves a
    nonzero residual. Float64: swapping the DDIM and DDPM forms fails the 1e3 rtol tolerance by orders of
    magnitude."""
    m = bn_gaussian_laws
    limit, _ = m.ddpm_limit()
    assert m._zero(m.tilted_variance() - limit) != 0
    rho = m.v_c / m.v_u
    wrong = m.v_u * (rho - rho**m.gamma) / ((m.gamma - 1) * (1 - rho))
    assert m._zero(wrong - limit) != 0
    cond = GaussianMixture([1.0], [[0.0]], [[[0.5]]])
    uncond = GaussianMixture([1.0], [[0.0]], [[[1.0]]])
    with one_thread():
        ode = float(exact_gaussian_law(rules.get("cfg", guidance_scale=2.0), {"cond": cond, "uncond": uncond}, "ode",
                                       PAPER_VE, start="prior")[1][0, 0])
    ddim, ddpm = closed_form_variances(2.0, 0.5, 1.0, PAPER_VE.sigma_min, PAPER_VE.sigma_max)
    assert abs(ode - ddim) / ddim <= 1e-9
    assert abs(ode - ddpm) / ddpm > 1e3 * 1e-9


def test_closed_forms_reduce_to_the_conditional_without_guidance():
    ddim, ddpm = closed_form_variances(1.0, 0.3, 2.0)
    assert ddim == pytest.approx(0.3, rel=1e-15) and ddpm == pytest.approx(0.3, rel=1e-15)


@pytest.mark.parametrize(("args", "name"), [((0.5, 0.3, 1.0), "guidance_scale"), ((2.0, 1.0, 1.0), "v_c")])
def test_closed_forms_refuse_their_singularities(args, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        closed_form_variances(*args)
