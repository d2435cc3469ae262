r"""The exact law that continuous-time guided sampling produces, for Gaussian worlds, for every linear rule.

A linear rule (:mod:`verify.rules`) combines its branches with weights :math:`a_b(t)` summing to 1
(:meth:`~verify.rules.Rule.weights_at`; constant for CFG, the negative prompts, composition and autoguidance,
piecewise constant for a guidance interval). With Gaussian branch laws :math:`p(x|b) = \mathcal N(m_b, S_b)` the
noised laws are :math:`\mathcal N(\alpha m_b, C_b)` with :math:`C_b(t) = \alpha_t^2 S_b + \sigma_t^2 I`, and the
guided score is affine,

.. math::  \tilde s(x, t) = \sum_b a_b(t)\,\nabla\log p_t(x|b) = -A(t)\,x + b(t), \qquad
           A = \sum_b a_b C_b^{-1}, \quad b = \alpha \sum_b a_b C_b^{-1} m_b

(CFG: :math:`a_c = 1 + w`, :math:`a_\varnothing = -w`, Ho & Salimans 2022, eq. 6). The continuous-time samplers
form one family (Song et al. 2021, eqs. 6 and 13; the ``noise(eta)`` of :class:`verify.samplers.SamplerSpec`):

.. math::  dx = \big(f x - \tfrac{1 + \nu}{2} g^2 \tilde s\big)\,dt + \sqrt{\nu}\,g\,d\bar W, \qquad \nu \in [0, 1],

run from t = 1 to 0: :math:`\nu = 0` is the probability-flow ODE, :math:`\nu = 1` the reverse SDE, and DDIM with
:math:`\eta` discretises :math:`\nu = \eta^2`. It maps a Gaussian start to a Gaussian whose mean :math:`\mu` and
covariance :math:`\Sigma` solve the moment ODEs

.. math::
    \dot\mu = N\mu - k\,b,\quad \dot\Sigma = N\Sigma + \Sigma N^\top - \nu g^2 I,\quad
    N = f I + k A,\quad k = \tfrac{1 + \nu}{2} g^2

(the noise adds :math:`\nu g^2\,|dt|` of covariance per step backwards in time). These are integrated with an
8th-order Dormand-Prince method at relative tolerance 1e-12, piecewise between the rule's breakpoints (where its
weights jump, so that no step of the integrator straddles a jump). In one dimension on a VP schedule the CFG ODE's
variance has a closed form (:func:`closed_form_ode_variance_1d`), and the tests check the two agree. Unguided
(:math:`\sum_b a_b \nabla\log p_t(x|b) = \nabla\log p_t(x|c)`) from the marginal start both ODE and SDE return the
data law :math:`p_0(x|c)` exactly, another check.

Note the tilted target :math:`\prod_b p(x|b)^{a_b}` appears nowhere in these equations: the guided score at time t
is the score of the tilted *noised* laws, which are not the noised tilted law (``proofs/prop2_tilted_score.py``).

Rules with a re-noising branch (CFG++) are refused by the continuous-time laws: their sampler re-noises with
another eps than the guided one, so the law depends on the step grid and no continuous-time limit with these
weights exists (:mod:`verify.rules.cfgpp`); :func:`discrete_sampler_law` gives their exact law on a given grid.

Mixtures (1-D): :func:`pf_ode_law_1d` (flow map) and :func:`reverse_sde_law_1d` (Fokker-Planck) for any linear
rule with constant or piecewise-constant weights, each with its own error estimate.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from toy_models._checks import as_real_tensor, as_scalar, check_generator
from toy_models.gaussian_mixture import GaussianMixture
from toy_models.schedules import Schedule, get_schedule

from .rules import Rule

__all__ = ["exact_gaussian_law", "exact_gaussian_cfg_law", "closed_form_ode_variance_1d", "Law1D", "pf_ode_law_1d",
           "reverse_sde_law_1d", "reverse_sde_density_1d", "discrete_sampler_law", "FineStepReference",
           "fine_step_reference", "guided_score_1d", "moment_ode_law",
           "flow_map_law_1d", "FlowMap1D"]

F64 = torch.float64
CONTINUOUS = ("ode", "sde")
STARTS = ("prior", "marginal")
# Weights are read strictly inside a piece of [t_end, 1] between breakpoints: at a piece's edge they are read this
# fraction of the piece's length inside it (the rule's weights at the edge itself may be its neighbour's). 2^-40 of
# the piece moves t by at most 1e-12, far below any rule's resolution in t and the integrator's tolerance.
_EDGE = 2.0**-40
# A moment beyond this is refused as an overflow: the covariance's products (A Sigma A^T, Sigma^2 terms in the
# integrator's error norm) of such entries overflow float64 (max 1.8e308) within one step.
_HUGE = 1e150


# ----------------------------------------------------------------------------------------------------------------
# Checks shared by the Gaussian and the 1-D laws
# ----------------------------------------------------------------------------------------------------------------
def _check_start(start) -> None:
    if not isinstance(start, str) or start not in STARTS:
        raise ValueError(f"start: must be one of {STARTS}, got {start!r}")


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}: must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_schedule(schedule) -> Schedule:
    sched = get_schedule(schedule)
    if sched.alpha_vanishes_at_one:
        raise ValueError(f"schedule: {sched.name!r} has alpha = 0 at t = 1, where the guided drift is singular")
    return sched


def _check_rule(rule) -> Rule:
    """A linear-capable rule: a :class:`~verify.rules.Rule` that does not re-noise (its linearity is checked where
    its weights are read)."""
    if not isinstance(rule, Rule):
        raise TypeError(f"rule: expected a verify.rules rule (rules.get(name, ...)), got {type(rule).__name__}")
    if rule.renoise_branch is not None:
        raise ValueError(f"rule: {rule.describe()} re-noises with the {rule.renoise_branch!r} branch (CFG++): its "
                         f"sampler's law depends on the step grid and has no continuous-time limit with these "
                         f"weights; use discrete_sampler_law on a given grid (DDIM or DDPM)")
    return rule


def _pieces(rule: Rule, sched: Schedule, t_end: float) -> list[tuple[float, float]]:
    """``[(hi, lo), ...]`` from t = 1 down to ``t_end``, cut at the rule's breakpoints inside (t_end, 1)."""
    cuts = set()
    for value in rule.breakpoints(sched):
        bp = float(value)
        if not math.isfinite(bp):
            raise ValueError(f"rule: {rule.describe()} reports a breakpoint {value!r} that is not a finite time")
        if t_end < bp < 1.0:
            cuts.add(bp)
    edges = [1.0, *sorted(cuts, reverse=True), t_end]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _weights_in(rule: Rule, sched: Schedule, t: float, hi: float, lo: float) -> dict[str, float]:
    """The rule's weights at ``t`` of the piece ``[lo, hi]``, read strictly inside the piece (:data:`_EDGE`)."""
    pad = _EDGE * (hi - lo)
    at = min(max(t, lo + pad), hi - pad)
    weights = rule.weights_at(at, sched)
    if weights is None:
        raise ValueError(f"rule: {rule.describe()} is not linear at t = {at:.6g} (weights_at is None): its guided "
                         f"score is not a weighted sum of branch scores, so no exact law follows from the weights")
    return weights


def _branches_read(rule: Rule, sched: Schedule, pieces) -> set[str]:
    """Every branch the weights name on ``pieces`` (read at each piece's two ends and middle), their values
    checked to be finite reals."""
    named: set[str] = set()
    for hi, lo in pieces:
        for t in (hi, 0.5 * (hi + lo), lo):
            weights = _weights_in(rule, sched, t, hi, lo)
            for branch, value in weights.items():
                if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                    raise ValueError(f"rule: {rule.describe()} gives branch {branch!r} the weight {value!r} at "
                                     f"t = {t:.6g}; weights must be finite reals")
                named.add(branch)
    return named


def _check_laws(laws, rule: Rule, needed: set[str], *, single: bool) -> dict[str, GaussianMixture]:
    """``laws`` as a dict: a mapping from every branch in ``needed`` (and possibly other branches the rule reads) to
    a GaussianMixture (a single component when ``single``) of one dimension."""
    if not isinstance(laws, Mapping):
        raise TypeError(f"laws: expected a mapping from branch names to GaussianMixture laws, got "
                        f"{type(laws).__name__}")
    allowed = set(rule.branches) | set(rule.condition_keys) | needed
    out: dict[str, GaussianMixture] = {}
    for branch, law in laws.items():
        if branch not in allowed:
            raise ValueError(f"laws: rule {rule.name!r} reads no branch {branch!r} (it reads {sorted(allowed)})")
        if not isinstance(law, GaussianMixture):
            raise TypeError(f"laws: branch {branch!r}: expected a GaussianMixture, got {type(law).__name__}")
        if single and law.n_components != 1:
            raise ValueError(f"laws: branch {branch!r}: expected a single Gaussian (one component), got "
                             f"{law.n_components} components")
        out[branch] = law
    missing = sorted(needed - set(out))
    if missing:
        raise ValueError(f"laws: rule {rule.describe()} needs a law for {missing} (got {sorted(out)})")
    dims = {branch: law.dim for branch, law in out.items()}
    if len(set(dims.values())) > 1:
        raise ValueError(f"laws: dimensions differ ({dims})")
    return out


def _needed_branches(rule: Rule, sched: Schedule, pieces, start: str) -> set[str]:
    needed = _branches_read(rule, sched, pieces)
    if start == "marginal":
        if "cond" not in set(rule.branches) | set(rule.condition_keys):
            raise ValueError(f"start: 'marginal' starts from the noised 'cond' law at t = 1, and rule "
                             f"{rule.describe()} has no 'cond' branch (it reads {list(rule.branches)}); use "
                             f"start='prior'")
        needed.add("cond")
    return needed


def _noise_fraction(sampler, eta) -> tuple[float, str]:
    """``(nu, label)``: the fraction of the reverse SDE's noise of ``sampler``'s continuous limit."""
    if isinstance(sampler, str) and sampler in CONTINUOUS:
        eta = as_scalar(eta, "eta")
        if eta != 0.0:
            raise ValueError(f"eta: is read only with a discrete sampler's name (its continuous limit); "
                             f"sampler {sampler!r} is the {'ODE' if sampler == 'ode' else 'SDE'} itself, got "
                             f"eta={eta!r}")
        return (0.0 if sampler == "ode" else 1.0), sampler.upper()
    from verify.samplers import SAMPLERS, get_sampler  # local: the samplers module is the heavier one

    if not isinstance(sampler, str) or sampler not in SAMPLERS:
        raise ValueError(f"sampler: must be 'ode', 'sde' or a registered sampler ({sorted(SAMPLERS)}), got "
                         f"{sampler!r}")
    eta = as_scalar(eta, "eta")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta: must lie in [0, 1], got {eta!r}")
    spec = get_sampler(sampler)
    return float(spec.noise(eta)), f"{sampler} limit ({spec.continuous_limit(eta)})"


def _prior_variance(sched: Schedule) -> float:
    """N(0, I) on VP schedules (alpha_1^2 + sigma_1^2 = 1), N(0, sigma_1^2 I) otherwise."""
    alpha, sigma = (float(v) for v in sched.alpha_sigma(1.0))
    return 1.0 if abs(alpha**2 + sigma**2 - 1.0) < 1e-12 else sigma**2


# ----------------------------------------------------------------------------------------------------------------
# Single Gaussians: the moment ODEs
# ----------------------------------------------------------------------------------------------------------------
def _start(schedule: Schedule, start: str, m_c: np.ndarray | None, s_c: np.ndarray | None,
           d: int) -> tuple[np.ndarray, np.ndarray]:
    if start == "marginal":  # the noised conditional at t = 1
        alpha, sigma = (float(v) for v in schedule.alpha_sigma(1.0))
        return alpha * m_c, alpha**2 * s_c + sigma**2 * np.eye(d)
    return np.zeros(d), _prior_variance(schedule) * np.eye(d)


def _moment_law(rule: Rule, laws: dict[str, GaussianMixture], nu: float, sched: Schedule, start: str,
                t_end: float, rtol: float, pieces, blame: str, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The moment ODEs (module docstring) of ``rule`` from ``start``, integrated piece by piece; a diverging solution
    is refused naming ``blame``."""
    gauss = _gaussian_parameters(laws)
    d = len(next(iter(gauss.values()))[0])
    m_c, s_c = gauss.get("cond", (None, None))
    mu0, cov0 = _start(sched, start, m_c, s_c, d)
    return _integrate_moments(lambda t, hi, lo: _weights_in(rule, sched, t, hi, lo), gauss, nu, sched, mu0, cov0,
                              pieces, rtol, blame, what)


def _gaussian_parameters(laws: Mapping[str, GaussianMixture]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{branch: (mean [d], covariance [d, d])}`` of single-Gaussian laws, in float64 numpy."""
    return {b: (law.means[0].to(F64).numpy(), law.covariances[0].to(F64).numpy()) for b, law in laws.items()}


def _integrate_moments(weights_of: Callable[[float, float, float], Mapping[str, float]],
                       gauss: dict[str, tuple[np.ndarray, np.ndarray]], nu: float, sched: Schedule, mu0: np.ndarray,
                       cov0: np.ndarray, pieces, rtol: float, blame: str, what: str
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The one integrator of the moment ODEs: ``weights_of(t, hi, lo)`` gives the branch weights at ``t`` of the
    piece ``[lo, hi]``, ``gauss`` the branches' ``(mean, covariance)``; DOP853 at ``rtol`` from ``(mu0, cov0)`` at
    t = 1 through ``pieces``."""
    from scipy.integrate import solve_ivp  # local: keeps `import verify` light

    d = len(mu0)
    # C_b(t)^{-1} = Q_b diag(1 / (alpha^2 l_b + sigma^2)) Q_b^T from one eigendecomposition of each S_b
    eig = {b: np.linalg.eigh(s) for b, (_, s) in gauss.items()}
    eye = np.eye(d)

    def rhs_in(hi: float, lo: float):
        def rhs(t: float, state: np.ndarray) -> np.ndarray:
            tt = torch.tensor(t, dtype=F64)
            alpha, sigma = (float(v) for v in sched.alpha_sigma(tt))
            f, g2 = float(sched.drift(tt)), float(sched.diffusion_squared(tt))
            a_mat = np.zeros((d, d))
            b_vec = np.zeros(d)
            for branch, weight in weights_of(t, hi, lo).items():
                lam, q = eig[branch]
                inv = (q / (alpha**2 * lam + sigma**2)) @ q.T
                a_mat += weight * inv
                b_vec += weight * (inv @ gauss[branch][0])
            b_vec *= alpha
            mu, cov = state[:d], state[d:].reshape(d, d)
            k = 0.5 * (1.0 + nu) * g2
            drift_mat = f * eye + k * a_mat
            dmu = drift_mat @ mu - k * b_vec
            dcov = drift_mat @ cov + cov @ drift_mat.T - (nu * g2) * eye
            return np.concatenate([dmu, dcov.ravel()])
        return rhs

    def overflowing(t: float, state: np.ndarray) -> float:
        """Crosses 0 where a moment passes _HUGE: the solution is about to overflow float64 (stop there instead
        of letting the integrator shrink its steps for seconds before it fails)."""
        return _HUGE - float(np.max(np.abs(state)))

    overflowing.terminal = True

    state = np.concatenate([np.asarray(mu0, dtype=np.float64), np.asarray(cov0, dtype=np.float64).ravel()])
    for hi, lo in pieces:
        sol = solve_ivp(rhs_in(hi, lo), (hi, lo), state, method="DOP853", rtol=rtol, atol=rtol * 1e-2,
                        events=overflowing)
        state = sol.y[:, -1]
        if sol.status != 0 or not np.all(np.isfinite(state)):
            why = f"a moment passes {_HUGE:.0e} at t = {sol.t[-1]:.4g}" if sol.status == 1 else sol.message
            raise ValueError(f"{blame}: the moment ODEs of the guided {what} could not be integrated to a finite "
                             f"law ({why}); the guided dynamics diverge at this strength")
    cov = state[d:].reshape(d, d)
    # the ODE keeps Sigma symmetric in exact arithmetic; the integrator's rounding does not, by ~rtol: symmetrise
    return torch.as_tensor(state[:d], dtype=F64), torch.as_tensor(0.5 * (cov + cov.T), dtype=F64)


def moment_ode_law(laws: Mapping[str, GaussianMixture], weights: Mapping[str, float], nu: float,
                   schedule: str | Schedule, mean: torch.Tensor, cov: torch.Tensor, *, t_end: float = 0.0,
                   rtol: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean ``[d]`` and covariance ``[d, d]`` at ``t_end`` of :math:`dx = (f x - \tfrac{1+\nu}{2} g^2 \tilde s)\,dt
    + \sqrt\nu\, g\, d\bar W` from :math:`\mathcal N(` ``mean``, ``cov`` :math:`)` at t = 1, with the score
    :math:`\tilde s = \sum_b a_b \nabla\log p_t(x|b)` of fixed ``weights`` :math:`a_b` (``{branch: a_b}``, any
    real numbers) over single-Gaussian ``laws`` (``{branch: GaussianMixture}``): the moment ODEs of the module
    docstring, by the same integrator as :func:`exact_gaussian_law` (DOP853 at ``rtol``; global error below about
    1e3 ``rtol``). ``nu`` in [0, 1] is the fraction of the reverse SDE's noise (0: the probability-flow ODE).
    A diverging solution is refused naming ``weights``."""
    if not isinstance(weights, Mapping) or not weights:
        raise TypeError(f"weights: expected a non-empty mapping from branch names to weights, got "
                        f"{type(weights).__name__}")
    if not isinstance(laws, Mapping):
        raise TypeError(f"laws: expected a mapping from branch names to GaussianMixture laws, got "
                        f"{type(laws).__name__}")
    checked_weights = {b: as_scalar(a, "weights") for b, a in weights.items()}
    missing = sorted(set(checked_weights) - set(laws))
    if missing:
        raise ValueError(f"laws: no law for the weighted branches {missing}")
    for branch in checked_weights:
        _single_gaussian(laws[branch], "laws")
    nu = as_scalar(nu, "nu")
    if not 0.0 <= nu <= 1.0:
        raise ValueError(f"nu: must lie in [0, 1], got {nu!r}")
    sched = _check_schedule(schedule)
    t_end, rtol = _check_t_end_rtol(t_end, rtol)
    gauss = _gaussian_parameters({b: laws[b] for b in checked_weights})
    dims = {len(m) for m, _ in gauss.values()}
    if len(dims) != 1:
        raise ValueError(f"laws: dimensions differ ({sorted(dims)})")
    d = dims.pop()
    mean, cov = as_real_tensor(mean, "mean").to(F64), as_real_tensor(cov, "cov").to(F64)
    if mean.shape != (d,):
        raise ValueError(f"mean: expected shape [{d}], got {list(mean.shape)}")
    if cov.shape != (d, d):
        raise ValueError(f"cov: expected shape [{d}, {d}], got {list(cov.shape)}")
    return _integrate_moments(lambda t, hi, lo: checked_weights, gauss, nu, sched, mean.numpy(), cov.numpy(),
                              [(1.0, t_end)], rtol, "weights", "dynamics")


def _check_t_end_rtol(t_end, rtol) -> tuple[float, float]:
    t_end = as_scalar(t_end, "t_end")
    if not 0.0 <= t_end < 1.0:
        raise ValueError(f"t_end: must lie in [0, 1), got {t_end!r}")
    rtol = as_scalar(rtol, "rtol")
    if not 0.0 < rtol < 1.0:
        raise ValueError(f"rtol: must lie in (0, 1), got {rtol!r}")
    return t_end, rtol


def exact_gaussian_law(rule: Rule, laws: Mapping[str, GaussianMixture], sampler: str = "ode",
                       schedule: str | Schedule = "vp-linear", start: str = "prior", *, t_end: float = 0.0,
                       rtol: float = 1e-12, eta: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean ``[d]`` and covariance ``[d, d]`` (float64) of the law of x at ``t_end`` (default 0) produced by the
    continuous-time sampler guided by the linear ``rule``, run from t = 1 (module docstring: the moment ODEs).

    * ``rule``: a :mod:`verify.rules` rule whose ``weights_at(t, schedule)`` is a weight dict at every t (CFG, the
      negative prompts, composition, autoguidance, a guidance interval around one of them, classifier guidance with
      :class:`~verify.rules.classifier.ExactNoisyClassifier`); weights may jump at ``rule.breakpoints(schedule)``.
      Non-linear rules and re-noising rules (CFG++) are refused, naming ``rule``.
    * ``laws``: ``{branch: GaussianMixture}`` with one component each, of one dimension d (any d), for every branch
      the weights name (``"cond"``, ``"uncond"``, ``"negative"``, ``"cond_1"`` .., ``"weak"``).
    * ``sampler``: ``"ode"`` (probability-flow ODE), ``"sde"`` (reverse SDE), or a registered sampler's name, whose
      continuous limit is used: ``get_sampler(sampler).noise(eta)`` = :math:`\nu`, the fraction of the reverse SDE's
      noise (``"ddim"`` with ``eta``: :math:`\nu = \eta^2`; ``"ddpm"``, ``"euler_maruyama"``: 1; ``"heun"``, ...: 0).
      ``eta`` in [0, 1] is read only with a sampler's name.
    * ``start``: ``"prior"`` (N(0, I) on VP schedules, N(0, sigma_1^2 I) otherwise) or ``"marginal"`` (the noised
      ``cond`` law at t = 1; refused when the rule has no ``cond`` branch).
    * ``t_end`` in [0, 1), ``rtol`` in (0, 1): the DOP853 tolerance (global error below about 1e3 ``rtol``).

    Strong guidance can make the moments grow without bound (the guided drift expands where :math:`A(t)` is
    negative); a solution whose moments pass 1e150 on the way to overflowing float64 (the right-hand side
    multiplies them by rates and by each other) is refused, naming ``rule``, never returned as inf or NaN.
    Arguments follow the input policy (``docs/input-policy.md``), each refusal naming its argument."""
    rule = _check_rule(rule)
    nu, what = _noise_fraction(sampler, eta)
    _check_start(start)
    sched = _check_schedule(schedule)
    t_end, rtol = _check_t_end_rtol(t_end, rtol)
    pieces = _pieces(rule, sched, t_end)
    checked = _check_laws(laws, rule, _needed_branches(rule, sched, pieces, start), single=True)
    return _moment_law(rule, checked, nu, sched, start, t_end, rtol, pieces, "rule",
                       f"{what} of {rule.describe()}")


def _single_gaussian(law: GaussianMixture, name: str) -> GaussianMixture:
    if not isinstance(law, GaussianMixture) or law.n_components != 1:
        raise ValueError(f"{name}: expected a single-component GaussianMixture")
    return law


def exact_gaussian_cfg_law(cond: GaussianMixture, uncond: GaussianMixture, w: float, sampler: str = "ode",
                           schedule: str | Schedule = "vp-linear", start: str = "prior", *, t_end: float = 0.0,
                           rtol: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[d]`` and covariance ``[d, d]`` (float64) of the law of x at ``t_end`` (default 0) produced by the
    continuous-time CFG probability-flow ODE (``sampler="ode"``) or reverse SDE (``"sde"``) run from t = 1:
    :func:`exact_gaussian_law` with ``rules.get("cfg", w=w)`` and ``{"cond": cond, "uncond": uncond}`` (the same
    computation, not a second one).

    ``w`` is Ho & Salimans' strength (``w = 0``: the conditional score). ``start="prior"`` draws x_1 from the prior
    (N(0, I) on VP schedules), ``start="marginal"`` from the noised conditional at t = 1. The public contract of
    docs/contract.md.

    Arguments are checked by the input policy (``docs/input-policy.md``), each refusal naming its argument: ``w`` a
    finite real, ``t_end`` in [0, 1), ``rtol`` in (0, 1), ``cond``/``uncond`` single Gaussians of one dimension.
    A solution that overflows float64 (strong guidance) is refused, naming ``w``, never returned as inf or NaN.
    """
    from .rules import get

    if not isinstance(sampler, str) or sampler not in CONTINUOUS:
        raise ValueError(f"sampler: must be one of {CONTINUOUS}, got {sampler!r}")
    _check_start(start)
    w = as_scalar(w, "w")
    sched = _check_schedule(schedule)
    t_end, rtol = _check_t_end_rtol(t_end, rtol)
    cond, uncond = _single_gaussian(cond, "cond"), _single_gaussian(uncond, "uncond")
    if cond.dim != uncond.dim:
        raise ValueError(f"cond, uncond: dimensions differ ({cond.dim} vs {uncond.dim})")
    rule = get("cfg", w=w)
    pieces = _pieces(rule, sched, t_end)
    return _moment_law(rule, {"cond": cond, "uncond": uncond}, 0.0 if sampler == "ode" else 1.0, sched, start,
                       t_end, rtol, pieces, "w", f"{sampler.upper()} at w = {w!r}")


def closed_form_ode_variance_1d(v_c: float, v_u: float, w: float, start_var: float,
                                schedule: str | Schedule = "vp-linear", t_end: float = 0.0) -> float:
    r"""The guided PF-ODE's variance at ``t_end`` in one dimension on a VP schedule, in closed form.

    :math:`\dot\Sigma = 2M\Sigma` gives :math:`\Sigma(t_e) = \Sigma(1)\exp(-2\int_{t_e}^1 M)`, and with
    :math:`u = \alpha^2` (:math:`\dot u = 2fu`, :math:`g^2 = -2f` on VP) and :math:`C = u(v - 1) + 1`,
    :math:`\int \tfrac{g^2}{2C} dt = -\tfrac12 \ln(u/C)`. So
    :math:`\int_{t_e}^1 M = \ln\tfrac{\alpha_1}{\alpha_{t_e}} - \tfrac{1+w}{2}\Big[\ln\tfrac{u}{C_c}\Big]_{t_e}^{1}
    + \tfrac{w}{2}\Big[\ln\tfrac{u}{C_u}\Big]_{t_e}^{1}`. Variances ``v_c``, ``v_u``, ``start_var`` > 0, ``w`` finite,
    ``t_end`` in [0, 1)."""
    v_c, v_u, start_var = (as_scalar(v, n) for v, n in ((v_c, "v_c"), (v_u, "v_u"), (start_var, "start_var")))
    for value, name in ((v_c, "v_c"), (v_u, "v_u"), (start_var, "start_var")):
        if not value > 0:
            raise ValueError(f"{name}: must be a variance > 0, got {value!r}")
    w, t_end = as_scalar(w, "w"), as_scalar(t_end, "t_end")
    if not 0.0 <= t_end < 1.0:
        raise ValueError(f"t_end: must lie in [0, 1), got {t_end!r}")
    sched = get_schedule(schedule)
    a1, s1 = (float(v) for v in sched.alpha_sigma(1.0))
    ae, se = (float(v) for v in sched.alpha_sigma(t_end))
    if abs(a1**2 + s1**2 - 1) > 1e-12 or abs(ae**2 + se**2 - 1) > 1e-12:
        raise ValueError(f"schedule: the closed form needs a VP schedule, got {sched.name!r}")

    def log_u_over_c(u: float, v: float) -> float:
        return math.log(u) - math.log(u * (v - 1.0) + 1.0)

    integral = (math.log(a1 / ae) - 0.5 * (1 + w) * (log_u_over_c(a1**2, v_c) - log_u_over_c(ae**2, v_c))
                + 0.5 * w * (log_u_over_c(a1**2, v_u) - log_u_over_c(ae**2, v_u)))
    log_var = math.log(start_var) - 2.0 * integral
    if log_var > math.log(torch.finfo(F64).max):
        raise ValueError(f"w: the guided ODE's variance at w = {w!r} overflows float64 (log variance {log_var:.4g})")
    return math.exp(log_var)


# ----------------------------------------------------------------------------------------------------------------
# One-dimensional mixtures: deterministic references of the continuous-time guided ODE and SDE laws
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Law1D:
    """A one-dimensional law on a grid: mean, variance, mass below 0, each with an error estimate."""

    mean: float
    var: float
    mass_below_0: float
    error: dict  # absolute error estimates of the three numbers (halving the discretisation)
    method: str

    def as_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "mass_below_0": self.mass_below_0,
                "error": self.error, "method": self.method}


def _mixture_score_1d(law: GaussianMixture, x: np.ndarray, alpha: float, sigma: float) -> np.ndarray:
    """Score of the noised 1-D mixture in numpy (the same log-space formula as GaussianMixture.score; the tests
    compare the two): many small evaluations inside the Fokker-Planck loop make torch's overhead dominate."""
    w = law.weights.numpy()
    m = alpha * law.means[:, 0].numpy()
    v = alpha**2 * law.covariances[:, 0, 0].numpy() + sigma**2
    z = x[:, None] - m  # [N, K]
    logj = np.log(w) - 0.5 * np.log(2 * np.pi * v) - 0.5 * z * z / v
    r = np.exp(logj - logj.max(axis=1, keepdims=True))
    r /= r.sum(axis=1, keepdims=True)
    return -(r * z / v).sum(axis=1)


def _weighted_score_1d(laws: dict[str, GaussianMixture], weights: dict[str, float], x: np.ndarray, alpha: float,
                       sigma: float) -> np.ndarray:
    r""":math:`\sum_b a_b \nabla\log p_t(x|b)`, in the weights' order."""
    out = np.zeros_like(x)
    for branch, weight in weights.items():
        out = out + weight * _mixture_score_1d(laws[branch], x, alpha, sigma)
    return out


def _setup_1d(rule, laws, schedule, start: str | None, t_end: float = 0.0):
    """Checked ``(rule, laws, schedule, pieces)`` for the 1-D references."""
    rule = _check_rule(rule)
    if start is not None:
        _check_start(start)
    sched = _check_schedule(schedule)
    pieces = _pieces(rule, sched, t_end)
    needed = _branches_read(rule, sched, pieces) if start is None else _needed_branches(rule, sched, pieces, start)
    checked = _check_laws(laws, rule, needed, single=False)
    for branch, law in checked.items():
        if law.dim != 1:
            raise ValueError(f"laws: branch {branch!r}: expected a one-dimensional GaussianMixture, got d = {law.dim}")
    return rule, checked, sched, pieces


def guided_score_1d(rule: Rule, laws: Mapping[str, GaussianMixture],
                    schedule: str | Schedule) -> Callable[[np.ndarray, float], np.ndarray]:
    r"""The guided score :math:`\sum_b a_b(t) \nabla\log p_t(x|b)` of a linear ``rule`` over 1-D mixtures ``laws``
    (``{branch: GaussianMixture}``) as a numpy function ``score(x, t)`` (``x`` a 1-D array, ``t`` a float), the
    weights read with ``rule.weights_at(t, schedule)`` (at a breakpoint, the value the rule gives there)."""
    rule, checked, sched, _ = _setup_1d(rule, laws, schedule, None)

    def score(x: np.ndarray, t: float) -> np.ndarray:
        alpha, sigma = (float(v) for v in sched.alpha_sigma(t))
        weights = rule.weights_at(t, sched)
        if weights is None:
            raise ValueError(f"rule: {rule.describe()} is not linear at t = {t:.6g} (weights_at is None)")
        return _weighted_score_1d(checked, weights, x, alpha, sigma)
    return score


def _piece_score_1d(rule: Rule, laws: dict[str, GaussianMixture], sched: Schedule, hi: float, lo: float):
    """The guided score on the piece ``[lo, hi]``, its weights read strictly inside the piece."""
    def score(x: np.ndarray, t: float) -> np.ndarray:
        alpha, sigma = (float(v) for v in sched.alpha_sigma(t))
        return _weighted_score_1d(laws, _weights_in(rule, sched, t, hi, lo), x, alpha, sigma)
    return score


def _start_law_1d(laws: dict[str, GaussianMixture], sched: Schedule, start: str) -> GaussianMixture:
    if start == "marginal":
        alpha, sigma = (float(v) for v in sched.alpha_sigma(1.0))
        return laws["cond"].noised(alpha, sigma)
    return GaussianMixture([1.0], [[0.0]], [[[_prior_variance(sched)]]])


@dataclass(frozen=True)
class FlowMap1D:
    """One run of a 1-D probability-flow map: starts ``x1`` at t = 1, their images ``x0`` at the end, and the
    normalised trapezoid weights of the start density at ``x1``; ``mean`` and ``var`` of the pushed-forward law."""

    x1: np.ndarray
    x0: np.ndarray
    weights: np.ndarray
    mean: float
    var: float


def flow_map_law_1d(score: Callable[[np.ndarray, float, tuple[float, float]], np.ndarray],
                    schedule: str | Schedule, start_log_density: Callable[[np.ndarray], np.ndarray], lo: float,
                    hi: float, *, n_nodes: int = 4001, rtol: float = 1e-10,
                    pieces: list[tuple[float, float]] | None = None) -> tuple[FlowMap1D, FlowMap1D]:
    r"""``(fine, coarse)``: the law at the end of the 1-D probability-flow ODE :math:`\dot x = f x - \tfrac12 g^2
    s(x, t)` started from the density :math:`p_1 \propto` ``exp(start_log_density)`` at t = 1, by its flow map.

    The map :math:`\Phi` is monotone (trajectories of a 1-D ODE cannot cross; checked), so
    :math:`E\,h(x_{end}) = \int h(\Phi(x_1))\,p_1(x_1)\,dx_1`: a trapezoid sum over ``n_nodes`` uniform starts on
    [``lo``, ``hi``], each integrated by DOP853 at ``rtol`` (``atol`` the same) through ``pieces``
    (``[(t_hi, t_lo), ...]`` from 1 down; default ``[(1, 0)]``), calling ``score(x, t, piece)``. ``coarse`` repeats it
    on half the nodes at 100 ``rtol``: the differences estimate the fine run's error. The one integrator behind
    :func:`pf_ode_law_1d` and :func:`verify.tilted_noised.tilted_flow_law_1d`."""
    from scipy.integrate import solve_ivp

    n_nodes = _check_int(n_nodes, "n_nodes", 3)
    rtol = as_scalar(rtol, "rtol")
    if not 0.0 < rtol < 1e-2:
        raise ValueError(f"rtol: must lie in (0, 0.01) (the error estimate runs at 100 rtol), got {rtol!r}")
    lo, hi = as_scalar(lo, "lo"), as_scalar(hi, "hi")
    if not lo < hi:
        raise ValueError(f"lo, hi: need lo < hi, got lo={lo!r}, hi={hi!r}")
    sched = get_schedule(schedule)
    pieces = [(1.0, 0.0)] if pieces is None else list(pieces)

    def rhs_in(piece: tuple[float, float]):
        def rhs(t, x):
            tt = torch.tensor(t, dtype=F64)
            return float(sched.drift(tt)) * x - 0.5 * float(sched.diffusion_squared(tt)) * score(x, t, piece)
        return rhs

    def run(nodes: int, tol: float) -> FlowMap1D:
        x1 = np.linspace(lo, hi, nodes)
        x0 = x1
        for piece in pieces:
            sol = solve_ivp(rhs_in(piece), piece, x0, method="DOP853", rtol=tol, atol=tol)
            if not sol.success:
                raise RuntimeError(f"probability-flow ODE failed: {sol.message}")
            x0 = sol.y[:, -1]
        log_dens = np.asarray(start_log_density(x1), dtype=np.float64)
        weights = np.exp(log_dens - log_dens.max()) * np.gradient(x1)
        weights[[0, -1]] *= 0.5
        weights /= weights.sum()
        if np.any(np.diff(x0) <= 0):
            raise RuntimeError("probability-flow map is not monotone: the integration is not resolved")
        mean = float(weights @ x0)
        return FlowMap1D(x1, x0, weights, mean, float(weights @ (x0 - mean) ** 2))

    return run(n_nodes, rtol), run((n_nodes + 1) // 2, rtol * 100)


def pf_ode_law_1d(rule: Rule, laws: Mapping[str, GaussianMixture], schedule: str | Schedule = "vp-linear",
                  start: str = "marginal", *, n_nodes: int = 4001, rtol: float = 1e-10) -> Law1D:
    r"""The law at t = 0 of the probability-flow ODE guided by the linear ``rule`` over 1-D mixtures ``laws``
    (``{branch: GaussianMixture}``, every branch its weights name; ``start="marginal"`` needs ``cond``).

    The flow map :math:`\Phi` from t = 1 to 0 is monotone (ODE trajectories cannot cross), so moments are
    :math:`\int h(\Phi(x_1)) p_1(x_1) dx_1`, by the trapezoid rule over ``n_nodes`` starting points spanning 12
    standard deviations of the start law (:func:`flow_map_law_1d`), and the mass below 0 is
    :math:`F_1(\Phi^{-1}(0))`. The ODE is integrated piece by piece between the rule's breakpoints (weights jumping
    in a guidance interval). Errors: the difference from half the nodes and 100x looser integration tolerance."""
    rule, checked, sched, pieces = _setup_1d(rule, laws, schedule, start)
    n_nodes = _check_int(n_nodes, "n_nodes", 3)
    rtol = as_scalar(rtol, "rtol")
    if not 0.0 < rtol < 1e-2:
        raise ValueError(f"rtol: must lie in (0, 0.01) (the error estimate runs at 100 rtol), got {rtol!r}")
    start_law = _start_law_1d(checked, sched, start)
    scores = {piece: _piece_score_1d(rule, checked, sched, *piece) for piece in pieces}
    m, v = float(start_law.mean()[0]), float(start_law.covariance()[0, 0])
    runs = flow_map_law_1d(lambda x, t, piece: scores[piece](x, t), sched,
                           lambda x: start_law.log_prob(torch.as_tensor(x[:, None])).numpy(),
                           m - 12 * math.sqrt(v), m + 12 * math.sqrt(v), n_nodes=n_nodes, rtol=rtol, pieces=pieces)

    def below(run: FlowMap1D) -> float:
        x0, x1 = run.x0, run.x1
        root = np.interp(0.0, x0, x1) if x0[0] < 0 < x0[-1] else (x1[-1] if x0[-1] < 0 else x1[0])
        return float(start_law.cdf(torch.tensor([[root]], dtype=F64))[0])

    fine, coarse = ((run.mean, run.var, below(run)) for run in runs)
    err = {k: abs(a - b) for k, a, b in zip(("mean", "var", "mass_below_0"), fine, coarse, strict=True)}
    return Law1D(*fine, error=err, method=f"PF-ODE flow map on {n_nodes} nodes (DOP853, rtol {rtol:g})")


def _fokker_planck_1d(rule: Rule, checked: dict[str, GaussianMixture], sched: Schedule,
                      pieces: list[tuple[float, float]], start_law: GaussianMixture, cells: int, steps: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    r"""``(edges, rho)``: the density at t = 0, as cell averages on ``cells`` equal cells (normalised to mass 1), of
    the reverse SDE guided by ``rule`` and started from ``start_law`` at t = 1; the scheme of
    :func:`reverse_sde_law_1d`. Walls 8 beyond the extreme means of the laws and the start law."""
    from scipy.linalg import solve_banded

    means = torch.cat([law.means[:, 0] for law in (*checked.values(), start_law)])
    lo, hi = float(means.min()) - 8.0, float(means.max()) + 8.0
    cuts = [lo_t for _, lo_t in pieces[:-1]]
    edges = np.linspace(lo, hi, cells + 1)
    h = edges[1] - edges[0]
    centres = 0.5 * (edges[:-1] + edges[1:])
    rho = np.exp(start_law.log_prob(torch.as_tensor(centres[:, None])).numpy())
    rho /= rho.sum() * h
    ts = (1.0 - np.linspace(0.0, 1.0, steps + 1)) ** 2  # t from 1 to 0, uniform in sqrt(t)
    ts = np.unique(np.concatenate([ts, cuts]))[::-1]  # the breakpoints as grid times, decreasing

    def operator(t: float, score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tridiagonal L with d rho/d tau = L rho: lower, diagonal, upper bands."""
        tt = torch.tensor(t, dtype=F64)
        f, g2 = float(sched.drift(tt)), float(sched.diffusion_squared(tt))
        faces = edges[1:-1]
        b = -(f * faces - g2 * score(faces, t))  # drift in reverse time at interior faces
        diff = 0.5 * g2
        pe = b * h / diff
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            bern = np.where(np.abs(pe) < 1e-8, 1.0 - pe / 2, pe / np.expm1(pe))  # B(Pe) = Pe / (e^Pe - 1)
            bern_neg = np.where(np.abs(pe) < 1e-8, 1.0 + pe / 2, -pe / np.expm1(-pe))  # B(-Pe)
        # flux J_{i+1/2} = (D/h) [B(-Pe) rho_i - B(Pe) rho_{i+1}]
        left, right = diff / h * bern_neg, diff / h * bern
        diag = np.zeros(cells)
        lower = np.zeros(cells)
        upper = np.zeros(cells)
        # d rho_i/d tau = (J_{i-1/2} - J_{i+1/2}) / h
        diag[:-1] -= left / h
        upper[1:] += right / h  # coefficient of rho_{i+1} in row i, stored at column i+1
        diag[1:] -= right / h
        lower[:-1] += left / h  # coefficient of rho_{i-1} in row i, stored at column i-1
        return lower, diag, upper

    def piece_of(t_hi: float, t_lo: float) -> tuple[float, float]:
        mid = 0.5 * (t_hi + t_lo)
        return next((p_hi, p_lo) for p_hi, p_lo in pieces if p_lo <= mid <= p_hi)

    current, current_piece = None, None
    for k in range(len(ts) - 1):
        dtau = ts[k] - ts[k + 1]
        piece = piece_of(ts[k], ts[k + 1])
        score = _piece_score_1d(rule, checked, sched, *piece)
        if current is None or piece != current_piece:  # a new piece: its weights at this step's start
            current = operator(ts[k], score)
        lo0, d0, up0 = current
        current, current_piece = operator(ts[k + 1], score), piece
        lo1, d1, up1 = current
        # (L rho)_i = d_i rho_i + up_{i+1} rho_{i+1} + lo_{i-1} rho_{i-1} (bands stored by column)
        l_rho = d0 * rho + np.concatenate([up0[1:] * rho[1:], [0.0]]) + np.concatenate([[0.0], lo0[:-1] * rho[:-1]])
        bands = np.vstack([-0.5 * dtau * up1, 1.0 - 0.5 * dtau * d1, -0.5 * dtau * lo1])
        rho = solve_banded((1, 1), bands, rho + 0.5 * dtau * l_rho)
    return edges, rho / (rho.sum() * h)


def reverse_sde_density_1d(rule: Rule, laws: Mapping[str, GaussianMixture], schedule: str | Schedule = "vp-linear",
                           start: str = "marginal", *, n_cells: int = 2000, n_steps: int = 2000
                           ) -> tuple[np.ndarray, np.ndarray]:
    """``(centres, density)``: the density at t = 0 of the reverse SDE of :func:`reverse_sde_law_1d` (same arguments,
    same Fokker-Planck scheme) on its ``n_cells`` cell centres, normalised to mass 1 (no error estimate: compare with
    a run at half the cells and steps)."""
    rule, checked, sched, pieces = _setup_1d(rule, laws, schedule, start)
    n_cells, n_steps = _check_int(n_cells, "n_cells", 4), _check_int(n_steps, "n_steps", 2)
    edges, rho = _fokker_planck_1d(rule, checked, sched, pieces, _start_law_1d(checked, sched, start), n_cells,
                                   n_steps)
    return 0.5 * (edges[:-1] + edges[1:]), rho


def reverse_sde_law_1d(rule: Rule, laws: Mapping[str, GaussianMixture], schedule: str | Schedule = "vp-linear",
                       start: str = "marginal", *, n_cells: int = 2000, n_steps: int = 2000) -> Law1D:
    r"""The law at t = 0 of the reverse SDE guided by the linear ``rule`` over 1-D mixtures ``laws``
    (``{branch: GaussianMixture}``, every branch its weights name; ``start="marginal"`` needs ``cond``), by solving
    its Fokker-Planck equation.

    In reverse time :math:`\tau = 1 - t` the density obeys :math:`\partial_\tau\rho = -\partial_x(b\rho) +
    D\,\partial_x^2\rho` with :math:`b = -(f x - g^2\tilde s)` and :math:`D = g^2/2`. Finite volumes with
    Scharfetter-Gummel fluxes (exact for locally constant drift, positive and stable at any cell Peclet number),
    Crank-Nicolson in time on a grid uniform in :math:`\sqrt{t}` (finer where the diffusion is weak and the drift
    sharp) with the rule's breakpoints added as grid times (no step straddles a jump of the weights; each step reads
    its own piece's weights at both ends), zero flux at the walls. The error estimate is the difference from a run
    with half the cells and steps. :func:`reverse_sde_density_1d` returns the density itself.
    """
    rule, checked, sched, pieces = _setup_1d(rule, laws, schedule, start)
    n_cells, n_steps = _check_int(n_cells, "n_cells", 4), _check_int(n_steps, "n_steps", 2)
    start_law = _start_law_1d(checked, sched, start)

    def run(cells: int, steps: int):
        edges, rho = _fokker_planck_1d(rule, checked, sched, pieces, start_law, cells, steps)
        centres = 0.5 * (edges[:-1] + edges[1:])
        p = rho * (edges[1] - edges[0])
        mean = float(p @ centres)
        var = float(p @ (centres - mean) ** 2)
        # cells wholly below 0, plus the part of the cell that 0 cuts (density taken constant across a cell)
        inside = np.clip((0.0 - edges[:-1]) / (edges[1] - edges[0]), 0.0, 1.0)
        below = float(p @ inside)
        return mean, var, below

    fine = run(n_cells, n_steps)
    coarse = run(n_cells // 2, n_steps // 2)
    err = {k: abs(a - b) for k, a, b in zip(("mean", "var", "mass_below_0"), fine, coarse, strict=True)}
    return Law1D(*fine, error=err, method=f"Fokker-Planck, {n_cells} cells x {n_steps} Crank-Nicolson steps")


# ----------------------------------------------------------------------------------------------------------------
# The exact law of a DISCRETE sampler on a Gaussian world (no sampling)
# ----------------------------------------------------------------------------------------------------------------
def _is_stochastic(name: str, kw: dict) -> bool:
    from verify.samplers import get_sampler

    return get_sampler(name).is_stochastic(kw.get("eta", 0.0))


def _one_run_only(name: str, denoiser) -> bool:
    """Whether the sampler must run over the whole grid in one call: a stateful guided denoiser (its
    :class:`~verify.rules.GuidanceState` would restart at every call) or a multistep sampler (its history would).
    A sampler that does not say whether it is multistep (``SamplerSpec.multistep``) is taken to be one when its
    order exceeds 1 (only the cost differs: one run is exact for any sampler)."""
    from verify.samplers import get_sampler

    spec = get_sampler(name)
    multistep = getattr(spec, "multistep", None)
    if multistep is None:
        multistep = spec.order > 1
    return bool(getattr(denoiser, "stateful", False)) or bool(multistep)


def _affine_columns(name, denoiser, timesteps, mean, chol, **kw):
    """Run one sampler on ``[m, m + L e_1, .., m + L e_d]`` and, if it is stochastic, ``steps x d`` more rows at m
    whose noise is one unit vector at one step; returns (image of m ``[d]``, columns ``[rows - 1, d]``)."""
    d = mean.numel()
    steps = len(timesteps) - 1
    n_noise = steps * d if _is_stochastic(name, kw) else 0
    x = mean.expand(1 + d + n_noise, d).clone()
    x[1:1 + d] += chol.T  # row j: m + L e_j
    if n_noise:
        noise = torch.zeros(steps, 1 + d + n_noise, d, dtype=F64)
        for k in range(steps):
            noise[k, 1 + d + k * d: 1 + d + (k + 1) * d] = torch.eye(d, dtype=F64)  # row (k, j): unit z_k e_j
        kw = dict(kw, noise=noise)
    from verify.samplers import sample  # local: samplers is the heavier module and needs nothing from here

    out = sample(name, denoiser, x, timesteps, **kw)
    return out[0], out[1:] - out[0]  # [d], [rows - 1, d]


def discrete_sampler_law(name: str, denoiser, timesteps, mean: torch.Tensor | None = None,
                         cov: torch.Tensor | None = None, *, stepwise: bool = True,
                         **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact output law (mean ``[d]``, covariance ``[d, d]``) of the discrete sampler from ``x ~ N(mean, cov)``
    (default N(0, I)), for a denoiser affine in x (a linear rule's guided eps on a Gaussian world is affine, CFG++'s
    re-noising eps included: every sampler step is then an affine map plus Gaussian noise, and the law of the
    output is exact without sampling).

    Deterministic samplers: one run on the d + 1 points m, m + L e_j (L = chol(cov)); the map is affine, so the output
    mean is the image of m and the covariance is sum_j c_j c_j^T over the columns c_j = F(m + L e_j) - F(m).
    Stochastic samplers (each step Markov: x' = A x + b + C z), ``stepwise=True``: one step at a time, pushing the
    mean, the d covariance columns and d unit noise vectors, then Sigma' = A Sigma A^T + C C^T (cost linear in the
    steps). ``stepwise=False``: one run with a unit-noise row per (step, coordinate) (cost quadratic;
    ``tests/test_samplers.py`` checks the two agree).

    A step-by-step split would restart what a run carries from step to step, so it is not used (whatever
    ``stepwise`` says) for a stateful guided denoiser (``denoiser.stateful``: its rule's
    :class:`~verify.rules.GuidanceState`, created once per run) or a multistep sampler (its history of past
    predictions): those always run over the whole grid in one call, the quadratic way.
    ``name`` is a registered sampler; its stochasticity is read from the registry (``is_stochastic(eta)``).
    """
    from verify.samplers import get_sampler

    get_sampler(name)  # refuses an unknown name, naming `name`
    d = getattr(denoiser, "dim", None)
    if not isinstance(d, int) or not callable(getattr(denoiser, "eps", None)):
        raise TypeError(f"denoiser: expected a Denoiser with eps() and an int dim, got {type(denoiser).__name__}")
    if not isinstance(stepwise, bool):
        raise TypeError(f"stepwise: expected a bool, got {type(stepwise).__name__}")
    mean = torch.zeros(d, dtype=F64) if mean is None else as_real_tensor(mean, "mean")
    cov = torch.eye(d, dtype=F64) if cov is None else as_real_tensor(cov, "cov")
    if mean.shape != (d,):
        raise ValueError(f"mean: expected shape [{d}], got {list(mean.shape)}")
    if cov.shape != (d, d):
        raise ValueError(f"cov: expected shape [{d}, {d}], got {list(cov.shape)}")
    # a covariance assembled from d-term dot products (A^T A, A S A^T) in two summation orders is symmetric to
    # within 2 gamma_d max|cov| <= 4 d u max|cov|; beyond that it is not a covariance
    if float((cov - cov.T).abs().max()) > 4 * d * 2.0**-53 * float(cov.abs().max()):
        raise ValueError("cov: must be symmetric")
    cov = 0.5 * (cov + cov.T)
    chol, info = torch.linalg.cholesky_ex(cov)
    if int(info) != 0:
        raise ValueError("cov: must be positive definite (its Cholesky factorisation fails)")
    if not _is_stochastic(name, kw) or not stepwise or _one_run_only(name, denoiser):
        image, cols = _affine_columns(name, denoiser, timesteps, mean, chol, **kw)
        return image, cols.T @ cols
    for k in range(len(timesteps) - 1):
        chol = torch.linalg.cholesky(cov)
        mean, cols = _affine_columns(name, denoiser, timesteps[k:k + 2], mean, chol, **kw)
        cov = cols.T @ cols  # A L (A L)^T + C C^T
    return mean, cov


# ----------------------------------------------------------------------------------------------------------------
# Two dimensions and up: fine-step references whose own error is measured
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FineStepReference:
    """Samples of a continuous-time guided law by a fine-step solver, with the solver's own error measured."""

    samples: torch.Tensor  # [N, d] at the fine resolution
    mean: torch.Tensor  # [d]
    cov: torch.Tensor  # [d, d]
    moment_error: float  # max |moment(fine) - moment(half resolution)| over mean and covariance entries
    path_error: float  # mean per-sample distance between the two resolutions (same start, same Brownian path)
    method: str


def fine_step_reference(denoiser, x_init: torch.Tensor, kind: str = "ode", *, steps: int = 800,
                        condition=None, generator: torch.Generator | None = None) -> FineStepReference:
    r"""The law of the continuous-time guided ODE (``kind="ode"``, Heun, order 2) or SDE (``"sde"``,
    Euler-Maruyama) from the points ``x_init`` at t = 1 to t = 0, on a uniform grid of ``steps`` steps.

    Its error is measured, not assumed: the same solver at half the resolution runs from the same points and, for
    the SDE, along the same Brownian path (each coarse increment is the sum of two fine ones, so
    :math:`z_{coarse} = (z_{2k} + z_{2k+1})/\sqrt 2`). The moment differences bound the fine run's discretisation
    error from above (for order p the fine error is about :math:`1/(2^p - 1)` of the difference)."""
    from verify.samplers import sample, time_grid

    if not isinstance(kind, str) or kind not in CONTINUOUS:
        raise ValueError(f"kind: must be one of {CONTINUOUS}, got {kind!r}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 2 or steps % 2:
        raise ValueError(f"steps: must be an even number >= 2, got {steps!r}")
    steps = int(steps)
    x_init = as_real_tensor(x_init, "x_init", x_init.dtype if isinstance(x_init, torch.Tensor) and
                            x_init.dtype in (torch.float32, F64) else F64, copy=False)
    if x_init.ndim != 2 or x_init.shape[0] < 2:
        raise ValueError(f"x_init: expected [N, d] with N >= 2 (moments are estimated), got {list(x_init.shape)}")
    check_generator(generator)
    fine_grid, coarse_grid = time_grid(steps), time_grid(steps // 2)
    if kind == "ode":
        fine = sample("heun", denoiser, x_init, fine_grid, condition=condition)
        coarse = sample("heun", denoiser, x_init, coarse_grid, condition=condition)
        method = f"Heun, {steps} uniform steps (error: against {steps // 2} steps)"
    else:
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        noise = torch.randn(steps, *x_init.shape, dtype=x_init.dtype, generator=gen)
        coarse_noise = (noise[0::2] + noise[1::2]) / math.sqrt(2.0)
        fine = sample("euler_maruyama", denoiser, x_init, fine_grid, condition=condition, noise=noise)
        coarse = sample("euler_maruyama", denoiser, x_init, coarse_grid, condition=condition, noise=coarse_noise)
        method = f"Euler-Maruyama, {steps} uniform steps (error: against {steps // 2} steps, same Brownian path)"
    diff = max(float((fine.mean(0) - coarse.mean(0)).abs().max()),
               float((torch.cov(fine.T) - torch.cov(coarse.T)).abs().max()))
    return FineStepReference(fine, fine.mean(0), torch.atleast_2d(torch.cov(fine.T)), diff,
                             float((fine - coarse).norm(dim=-1).mean()), method)
