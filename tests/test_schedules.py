"""Tests for :mod:`toy_models.schedules`.

Reference values come from closed forms written here and evaluated in mpmath at 40 significant digits, so
the reference error (~1e-40) is negligible against float64's unit roundoff u = 2**-53. Tolerances are built
from u, a flop count, and condition numbers computed from the references in the test (never from the library).
"""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from toy_models.schedules import SCHEDULES, Schedule, get_schedule

U = 2.0**-53  # float64 unit roundoff (half an ulp of 1.0)
NAMES = list(SCHEDULES)
VP_NAMES = ["vp-linear", "vp-cosine"]
ALPHA_ZERO_AT_ONE = ["vp-cosine", "rectified-flow"]  # drift and diffusion are singular at t = 1
SIGMA_ZERO_AT_ZERO = ["vp-linear", "vp-cosine", "rectified-flow"]

MP_DPS = 40  # reference precision, set locally (mpmath.workdps) so other modules' mpmath state is untouched


# ------------------------------------------------------------------------------------------------------------
# Independent references (mpmath). Each returns (alpha, sigma) as functions of t and of the schedule's numeric
# constants, so that condition numbers with respect to those constants (which the library rounds when it forms
# them) can be computed too.
# ------------------------------------------------------------------------------------------------------------
def _vp_linear(t, b0, b1):
    # Song et al. 2021: beta(t) = b0 + (b1 - b0) t, B(t) = 0.1 t + 9.95 t^2, alpha = exp(-B/2),
    # sigma^2 = 1 - alpha^2
    big_b = b0 * t + (b1 - b0) / 2 * t**2
    alpha = mpmath.exp(-big_b / 2)
    return alpha, mpmath.sqrt(1 - alpha**2)


def _vp_cosine(t, s):
    # Nichol & Dhariwal 2021 eq. 17: alpha_bar = f(t)/f(0), f(t) = cos^2(pi/2 (t+s)/(1+s));
    # alpha = sqrt(alpha_bar)
    def f(tt):
        return mpmath.cos(mpmath.pi / 2 * (tt + s) / (1 + s)) ** 2

    alpha = mpmath.sqrt(f(t) / f(0))
    return alpha, mpmath.sqrt(1 - alpha**2)


def _ve(t, smin, smax):
    # sigma = 0.01 * 5000^t
    return mpmath.mpf(1), smin * (smax / smin) ** t


def _edm(t, smin, smax, rho):
    # Karras et al. 2022 eq. 5 as a continuous ramp from sigma_min (t=0) to sigma_max (t=1)
    lo, hi = smin ** (1 / rho), smax ** (1 / rho)
    return mpmath.mpf(1), (lo + t * (hi - lo)) ** rho


def _rectified_flow(t):
    return 1 - t, t


REFERENCES = {"vp-linear": _vp_linear, "vp-cosine": _vp_cosine, "ve": _ve, "edm": _edm,
              "rectified-flow": _rectified_flow}
PARAMS = {  # decimal strings, converted at MP_DPS digits (so 0.1 is 0.1, not the nearest double)
    "vp-linear": ("0.1", "20"),
    "vp-cosine": ("0.008",),
    "ve": ("0.01", "50"),
    "edm": ("0.002", "80", "7"),
    "rectified-flow": (),
}


def _params(name):
    return [mpmath.mpf(p) for p in PARAMS[name]]


def _ref(name, t):
    """(alpha, sigma, lambda) at t, in mpmath."""
    with mpmath.workdps(MP_DPS):
        alpha, sigma = REFERENCES[name](mpmath.mpf(t), *_params(name))
        return +alpha, +sigma, mpmath.log(alpha**2 / sigma**2)


def _err(got, ref):
    """|got - ref| at the reference precision (a float64 difference would itself round by u|ref|)."""
    with mpmath.workdps(MP_DPS):
        return float(abs(mpmath.mpf(float(got)) - ref))


def _sensitivity(name, t, which, relative):
    r"""Componentwise condition number of quantity ``which`` (0 alpha, 1 sigma, 2 lambda) at ``t``:
    sum over inputs p in (t, constants) of |p dy/dp|, divided by |y| when ``relative``.

    Rounding each input (or the argument the library forms from it) by a relative u moves y by at most
    u * |p dy/dp| to first order, so u times this number bounds the unavoidable error of any float64
    evaluation.
    """
    with mpmath.workdps(MP_DPS):
        args = [mpmath.mpf(t), *_params(name)]

        def y(*a):
            alpha, sigma = REFERENCES[name](*a)
            return (alpha, sigma, mpmath.log(alpha**2 / sigma**2))[which]

        total = mpmath.mpf(0)
        for i, p in enumerate(args):
            def partial(z, i=i):
                b = list(args)
                b[i] = z
                return y(*b)

            total += abs(p * mpmath.diff(partial, p))
        return float(total / abs(y(*args))) if relative else float(total)


# Error model for alpha and sigma (relative) and lambda (absolute):
#   tol = u * (32 + 4 * kappa)
# * 4 * kappa: the library forms the argument of its outer function (B(t), phi(t), t log r, the EDM ramp base)
#   in <= 4 roundings, each a relative perturbation of t or of a constant, amplified by the condition number.
# * 32: the remaining <= ~8 roundings of the evaluation (exp/cos/log/pow are within 1 ulp = 2u), plus EDM's
#   amplification of the ramp base's ~3 roundings by the exponent rho = 7 (7 * 3u = 21u, visible at t -> 0
#   where the t-condition number is ~0 but sigma = lo^7 with lo = 0.002^(1/7) rounded).
# For lambda the same with kappa the absolute sensitivity sum_p |p dlambda/dp| plus 4|lambda| for the final
# log and scaling.
def _tol_rel(name, t, which):
    return U * (32 + 4 * _sensitivity(name, t, which, relative=True))


def _tol_lambda(name, t, lam):
    return U * (32 + 4 * _sensitivity(name, t, 2, relative=False) + 4 * abs(lam))


# ------------------------------------------------------------------------------------------------------------
# 1. Known values
# ------------------------------------------------------------------------------------------------------------
INTERIOR_T = [0.25, 0.5, 0.75, 0.9, 0.99]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("t", INTERIOR_T)
def test_alpha_sigma_log_snr_match_closed_forms(name, t):
    sch = get_schedule(name)
    alpha, sigma, lam = _ref(name, t)
    got_a, got_s, got_l = float(sch.alpha(t)), float(sch.sigma(t)), float(sch.log_snr(t))
    assert _err(got_a, alpha) <= _tol_rel(name, t, 0) * abs(float(alpha))
    assert _err(got_s, sigma) <= _tol_rel(name, t, 1) * abs(float(sigma))
    assert _err(got_l, lam) <= _tol_lambda(name, t, float(lam))
    a2, s2 = sch.alpha_sigma(t)  # the pair is the same computation as the two calls
    assert float(a2) == got_a and float(s2) == got_s


NEAR_ZERO_T = [1e-6, 1e-3, 0.01, 0.05]
@pytest.mark.parametrize("t", NEAR_ZERO_T)
@pytest.mark.parametrize("name", NAMES)
def test_full_relative_precision_near_t0(name, t):
    """At low noise sigma -> 0 (or sigma -> sigma_min) sigma and lambda keep full relative precision."""
    sch = get_schedule(name)
    alpha, sigma, lam = _ref(name, t)
    assert _err(sch.alpha(t), alpha) <= _tol_rel(name, t, 0) * abs(float(alpha))
    assert _err(sch.sigma(t), sigma) <= _tol_rel(name, t, 1) * abs(float(sigma))
    assert _err(sch.log_snr(t), lam) <= _tol_lambda(name, t, float(lam))


@pytest.mark.parametrize("name", NAMES)
def test_shape_and_dtype_follow_t(name):
    sch = get_schedule(name)
    t = torch.full((2, 3), 0.5, dtype=torch.float32)
    for fn in (sch.alpha, sch.sigma, sch.log_snr, sch.drift, sch.diffusion_squared):
        out = fn(t)
        assert out.shape == (2, 3) and out.dtype == torch.float64
    assert sch.alpha(0.5).shape == ()


# ------------------------------------------------------------------------------------------------------------
# 2. Monotone log-SNR and its inverse
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_log_snr_strictly_decreasing(name):
    t = torch.linspace(0.0, 1.0, 2001, dtype=torch.float64)
    lam = get_schedule(name).log_snr(t)
    assert bool((lam[1:] < lam[:-1]).all())


def _round_trip(name, t):
    """t -> lambda -> t' together with the analytic-by-autograd slope dlambda/dt (of the library's lambda)."""
    sch = get_schedule(name)
    tt = t.clone().requires_grad_(True)
    lam = sch.log_snr(tt)
    (dlam,) = torch.autograd.grad(lam.sum(), tt)
    lam = lam.detach()
    return lam, dlam, sch.t_from_log_snr(lam)


def _round_trip_tol(t, lam, dlam):
    # An ideal implementation: lambda(t) with relative error <= k1 u (k1 ~ 4: argument, exp/expm1, log,
    # scaling) moves the recovered t by k1 u |lambda| / |dlambda/dt| (the conditioning of the inverse); the
    # inverse, well conditioned in its own right, adds <= k2 u |t| (k2 ~ 4 roundings in its ~6 flops).
    # Cancellations that are not intrinsic (ve: -lambda/2 - log sigma_min, edm: exp(..) - lo near t = 0)
    # cost at most a further |log sigma_min| / log(r) ~ u or lo/(hi - lo) ~ 0.3u, absorbed by taking 8 for
    # both k1 and k2.
    return 8 * U * (lam.abs() / dlam.abs() + t)


GRID = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
@pytest.mark.parametrize("name", NAMES)
def test_t_from_log_snr_inverts_log_snr(name):
    lam, dlam, back = _round_trip(name, GRID)
    assert bool(((back - GRID).abs() <= _round_trip_tol(GRID, lam, dlam)).all())


@pytest.mark.parametrize("name", NAMES)
def test_t_from_log_snr_at_the_ends_of_the_range(name):
    sch = get_schedule(name)
    lo, hi = sch.log_snr_range()
    # lambda(0) -> t = 0 and lambda(1) -> t = 1. The inverse is clamped to [0, 1]; its error there is the
    # round-trip bound, u*|lambda|/|dlambda/dt| + u, at most ~ 30u at these ends for all five schedules
    # (|lambda| <= 75 with |dlambda/dt| >= 1 near the ends); 64u is used.
    assert abs(float(sch.t_from_log_snr(hi))) <= 64 * U
    assert abs(float(sch.t_from_log_snr(lo)) - 1.0) <= 64 * U


# ------------------------------------------------------------------------------------------------------------
# 3. SDE coefficients against autograd of the schedule's own alpha and sigma
# ------------------------------------------------------------------------------------------------------------
SDE_T = [0.01, 0.05, 0.3, 0.5, 0.7, 0.95, 0.999]


def _d(y, t):
    """Elementwise dy/dt by autograd (y depends on t elementwise); a y built without t (alpha = 1) gives 0."""
    if not y.requires_grad:
        return torch.zeros_like(t)
    (g,) = torch.autograd.grad(y.sum(), t, create_graph=True)
    return g


@pytest.mark.parametrize("name", NAMES)
def test_alpha_sigma_are_differentiable(name):
    sch = get_schedule(name)
    t = torch.tensor([0.3, 0.6], dtype=torch.float64, requires_grad=True)
    assert sch.sigma(t).requires_grad
    if name in ("ve", "edm"):
        assert not sch.alpha(t).requires_grad and bool((sch.alpha(t) == 1).all())  # constant alpha = 1
    else:
        assert sch.alpha(t).requires_grad


@pytest.mark.parametrize("name", NAMES)
def test_drift_and_diffusion_match_autograd(name):
    sch = get_schedule(name)
    t = torch.tensor(SDE_T, dtype=torch.float64, requires_grad=True)
    alpha, sigma = sch.alpha(t), sch.sigma(t)
    f = _d(torch.log(alpha), t) if alpha.requires_grad else torch.zeros_like(t)
    s2 = sigma * sigma
    ds2 = _d(s2, t)
    g2 = ds2 - 2 * f * s2
    f_prime, g2_prime = _d(f, t), _d(g2, t)
    with torch.no_grad():
        t0 = t.detach()
        drift, diff2 = sch.drift(t0), sch.diffusion_squared(t0)
        # Both sides evaluate the same exact function of t in <= ~8 flops (autograd's backward adds as many):
        # roundings of the argument (phi, beta, the ramp base) act as relative perturbations of t, moving the
        # result by <= 8u t |f'|; the others give <= 8u |f|. g^2 is a sum of two terms of the same sign for
        # all five schedules (no cancellation), so its scale is the sum of their magnitudes. 16u covers both.
        tol_f = 16 * U * (f.abs() + t0 * f_prime.abs())
        tol_g = 16 * U * (ds2.abs() + 2 * (f * s2).abs() + t0 * g2_prime.abs())
        assert bool(((drift - f).abs() <= tol_f).all()), (drift, f)
        assert bool(((diff2 - g2).abs() <= tol_g).all()), (diff2, g2)
        assert bool((diff2 > 0).all())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("v0", [0.3, 2.0])
def test_variance_ode(name, v0):
    """Var(x_t) = alpha^2 v0 + sigma^2 solves dv/dt = 2 f v + g^2 for every initial variance v0."""
    sch = get_schedule(name)
    t = torch.tensor(SDE_T, dtype=torch.float64, requires_grad=True)
    v = sch.alpha(t) ** 2 * v0 + sch.sigma(t) ** 2
    dv = _d(v, t)
    dv_prime = _d(dv, t)
    with torch.no_grad():
        t0 = t.detach()
        f, g2 = sch.drift(t0), sch.diffusion_squared(t0)
        rhs = 2 * f * v + g2
        # same budget as the coefficient test: 16u on the magnitudes of the terms, plus the
        # argument-rounding term t |d^2 v/dt^2|
        tol = 16 * U * (dv.abs() + 2 * (f * v).abs() + g2.abs() + t0 * dv_prime.abs())
        assert bool(((dv - rhs).abs() <= tol).all()), (dv, rhs)


@pytest.mark.parametrize("name", NAMES)
def test_ode_residual_detects_wrong_diffusion(name):
    """The variance-ODE check can fail: a g^2 off by 1% is far outside the tolerance above."""
    sch = get_schedule(name)
    t = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    v = sch.alpha(t) ** 2 * 0.3 + sch.sigma(t) ** 2
    dv = _d(v, t).detach()
    t0 = t.detach()
    rhs = 2 * sch.drift(t0) * v.detach() + 1.01 * sch.diffusion_squared(t0)
    assert float((dv - rhs).abs()) > 1e6 * U * float(dv.abs() + rhs.abs())


# ------------------------------------------------------------------------------------------------------------
# 4. Domain validation
# ------------------------------------------------------------------------------------------------------------
BAD_T = [-0.1, 1.1, math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", BAD_T)
def test_t_outside_domain_raises(name, bad):
    sch = get_schedule(name)
    for fn in (sch.alpha, sch.sigma, sch.log_snr, sch.drift, sch.diffusion_squared, sch.alpha_sigma):
        with pytest.raises(ValueError, match=r"^t:"):
            fn(bad)
        with pytest.raises(ValueError, match=r"^t:"):
            fn(torch.tensor([0.5, bad], dtype=torch.float64))


@pytest.mark.parametrize("name", NAMES)
def test_sde_coefficients_at_t_equal_one(name):
    sch = get_schedule(name)
    if name in ALPHA_ZERO_AT_ONE:
        for fn in (sch.drift, sch.diffusion_squared):
            with pytest.raises(ValueError, match=r"^t:.*alpha = 0"):
                fn(1.0)
            with pytest.raises(ValueError, match=r"^t:"):
                fn(torch.tensor([0.2, 1.0], dtype=torch.float64))
        # alpha, sigma and log_snr still answer at t = 1
        assert float(sch.sigma(1.0)) > 0
    else:
        assert math.isfinite(float(sch.drift(1.0))) and float(sch.diffusion_squared(1.0)) > 0


@pytest.mark.parametrize("name", NAMES)
def test_t_from_log_snr_validation(name):
    sch = get_schedule(name)
    lo, hi = sch.log_snr_range()
    assert lo < hi
    with pytest.raises(ValueError, match=r"^log_snr:.*NaN"):
        sch.t_from_log_snr(math.nan)
    with pytest.raises(ValueError, match=r"^log_snr:.*NaN"):
        sch.t_from_log_snr(torch.tensor([0.0, math.nan], dtype=torch.float64))
    if math.isfinite(lo):
        with pytest.raises(ValueError, match=r"^log_snr:.*must lie"):
            sch.t_from_log_snr(lo - 1.0)
        with pytest.raises(ValueError, match=r"^log_snr:"):
            sch.t_from_log_snr(-math.inf)
    if math.isfinite(hi):
        with pytest.raises(ValueError, match=r"^log_snr:.*must lie"):
            sch.t_from_log_snr(hi + 1.0)
        with pytest.raises(ValueError, match=r"^log_snr:"):
            sch.t_from_log_snr(math.inf)
    # vp-cosine and rectified flow have alpha(1) = 0 exactly, so lambda(1) = -inf (vp-cosine used to round alpha(1)
    # to 6e-17 and report a finite lower end, admitting t = 1 as a noise level with a well-defined law)
    finite = {"vp-linear": (True, False), "vp-cosine": (False, False), "ve": (True, True), "edm": (True, True),
              "rectified-flow": (False, False)}[name]
    assert (math.isfinite(lo), math.isfinite(hi)) == finite


def test_get_schedule():
    with pytest.raises(ValueError, match=r"^schedule:.*'nope'"):
        get_schedule("nope")
    with pytest.raises(ValueError, match=r"^schedule:"):
        get_schedule(None)
    for name, cls in SCHEDULES.items():
        sch = get_schedule(name)
        assert isinstance(sch, cls) and isinstance(sch, Schedule) and sch.name == name
        assert get_schedule(sch) is sch


# ------------------------------------------------------------------------------------------------------------
# 5. Property: positivity and (for VP) alpha^2 + sigma^2 = 1
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@settings(derandomize=True, deadline=None, database=None, max_examples=200)
@given(t=st.floats(min_value=1e-3, max_value=1 - 1e-3, allow_nan=False, allow_infinity=False))
def test_positive_coefficients_and_vp_identity(name, t):
    sch = get_schedule(name)
    alpha, sigma = (float(v) for v in sch.alpha_sigma(t))
    assert alpha > 0 and sigma > 0
    if name in VP_NAMES:
        # Both VP schedules compute alpha and sigma from one shared rounded intermediate (B for vp-linear, the
        # computed a = alpha for vp-cosine) for which alpha^2 + sigma^2 = 1 holds exactly; what remains is the
        # relative error of each factor: vp-linear alpha <= 2u (exp, 1 ulp), sigma <= 3u (expm1 1 ulp, sqrt);
        # vp-cosine alpha 0 (it is a), sigma <= 3u ((1-a)(1+a): <= 3 roundings, halved by the sqrt, + sqrt's
        # u). Squaring here: e_alpha, e_sigma <= 2*3u + u = 7u. The sum rounds once more, and since the true
        # terms add to 1, |alpha^2 + sigma^2 - 1| <= max(e_alpha, e_sigma) + u <= 8u; 16u for the 1-ulp slack.
        assert abs(alpha * alpha + sigma * sigma - 1.0) <= 16 * U
