r"""Exact laws of constant against scheduled guidance at the same mean strength (read by L-CFG-SCHEDULE; Wang et al.
2024, 'Analysis of Classifier-Free Guidance Weight Schedulers', TMLR).

Everything here is exact (no sampling), so a difference is a difference, up to the references' own error:

(a) **within one mode**, ``gauss1d`` (p(x|c) = N(1, 0.5), p(x) = N(0, 1)): the laws of the guided probability-flow
    ODE and reverse SDE from the noised conditional at t = 1 (:func:`verify.exact_law.exact_gaussian_law`, moment ODEs
    at rtol 1e-12), for the constant rule ``cfg`` and ``cfg_schedule`` (linear, cosine) at the same mean strength
    :math:`w = \int_0^1 w(t)\,dt`; diversity = the law's variance, alignment = its mean.
(b) **across modes**, a 1-D class with two equally likely modes at -2 and +2, the right one beside another class at
    3.5 (so guidance away from the other class selects the left mode): the ODE's flow-map law and the SDE's
    Fokker-Planck law (:func:`verify.exact_law.pf_ode_law_1d`, :func:`~verify.exact_law.reverse_sde_law_1d`, each
    with its error estimate from halving its grid); diversity = how close the mass of the left mode stays to the
    data's 0.5, and the law's variance.

The provider also lists the comparisons (:class:`ScheduleCase`): a schedule "keeps more diversity" in a case when its
variance is larger (a, b) or its left-mode mass is closer to 0.5 (b) than the constant rule's by more than the
summed error estimates of the two numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from toy_models import GaussianMixture, get_world
from verify import exact_gaussian_law, rules
from verify.config import RunConfig
from verify.exact_law import pf_ode_law_1d, reverse_sde_law_1d

from . import provider
from .shared import one_thread

__all__ = ["SHAPES", "MomentLaw", "ScheduleCase", "ScheduleDiversity", "within_one_mode", "two_mode_laws",
           "across_modes", "cfg_schedule_diversity"]

SHAPES = ("linear", "cosine")
SAMPLERS = ("ode", "sde")
#: moment ODEs at rtol 1e-12 accumulate a relative error of a few 1e-12 over the run: 1e-9 of the variance covers it
#: with three orders of magnitude to spare, and every compared difference is far above it
MOMENT_MARGIN = 1e-9


def _rules(w: float) -> dict[str, rules.Rule]:
    return {"constant": rules.get("cfg", w=w), **{shape: rules.get("cfg_schedule", w=w, shape=shape)
                                                   for shape in SHAPES}}


@dataclass(frozen=True)
class MomentLaw:
    """The exact Gaussian law of a guided sampler's output on gauss1d: mean and variance."""

    mean: float
    var: float


@dataclass(frozen=True)
class ScheduleCase:
    """One comparison of a schedule with the constant rule at the same mean strength: whether it keeps more
    diversity (``measure`` "variance" or "mode_balance") beyond the error estimates."""

    world: str  # "gauss1d" or "two_modes"
    sampler: str
    w: float
    shape: str
    measure: str
    more_diversity: bool

    @property
    def name(self) -> str:
        world, measure = self.world.replace("_", " "), self.measure.replace("_", " ")
        return f"{world} {self.sampler} w={self.w:g} {self.shape}: {measure}"


@dataclass(frozen=True)
class ScheduleDiversity:
    """``within[w][sampler][rule]``: gauss1d laws; ``across[w][sampler][rule]``: the two-mode laws
    (:meth:`verify.exact_law.Law1D.as_dict`: mean, var, mass_below_0, their error estimates, method); keys of ``w``
    are the strengths as strings, rules are "constant" and :data:`SHAPES`."""

    ws: tuple[float, ...]
    within: dict[str, dict[str, dict[str, MomentLaw]]]
    across: dict[str, dict[str, dict[str, dict]]]
    cases: tuple[ScheduleCase, ...]


def within_one_mode(ws: tuple[float, ...]) -> dict[str, dict[str, dict[str, MomentLaw]]]:
    """(a): ``{w: {sampler: {rule: MomentLaw}}}`` on gauss1d, exact."""
    world = get_world("gauss1d")
    laws = {"cond": world.law(1), "uncond": world.law(None)}
    out: dict = {}
    for w in ws:
        out[f"{w:g}"] = {sampler: {name: MomentLaw(float(m[0]), float(c[0, 0]))
                                   for name, rule in _rules(w).items()
                                   for m, c in [exact_gaussian_law(rule, laws, sampler, start="marginal")]}
                         for sampler in SAMPLERS}
    return out


def two_mode_laws() -> dict[str, GaussianMixture]:
    """The class (modes at -2 and +2, variance 0.3 each, equally likely) and the unconditional law (the class's
    modes and another class at 3.5, each class half the mass)."""
    cond = GaussianMixture([0.5, 0.5], [[-2.0], [2.0]], [[[0.3]], [[0.3]]])
    uncond = GaussianMixture([0.25, 0.25, 0.5], [[-2.0], [2.0], [3.5]], [[[0.3]], [[0.3]], [[0.3]]])
    return {"cond": cond, "uncond": uncond}


def across_modes(ws: tuple[float, ...], quick: bool) -> dict[str, dict[str, dict[str, dict]]]:
    """(b): ``{w: {sampler: {rule: Law1D.as_dict()}}}`` on the two-mode class, exact to the references' errors."""
    laws = two_mode_laws()
    nodes, cells = (801, 300) if quick else (2001, 800)
    out: dict = {}
    for w in ws:
        row: dict = {"ode": {}, "sde": {}}
        for name, rule in _rules(w).items():
            row["ode"][name] = pf_ode_law_1d(rule, laws, n_nodes=nodes).as_dict()
            row["sde"][name] = reverse_sde_law_1d(rule, laws, n_cells=cells, n_steps=cells).as_dict()
        out[f"{w:g}"] = row
    return out


def _cases(within: dict, across: dict) -> list[ScheduleCase]:
    """Every schedule against the constant rule, per strength, sampler and measure (see the module docstring)."""
    cases = []
    for w, by_sampler in within.items():
        for sampler, laws in by_sampler.items():
            for shape in SHAPES:
                margin = MOMENT_MARGIN * max(laws[shape].var, laws["constant"].var)
                cases.append(ScheduleCase("gauss1d", sampler, float(w), shape, "variance",
                                          laws[shape].var > laws["constant"].var + margin))
    for w, by_sampler in across.items():
        for sampler, laws in by_sampler.items():
            for shape in SHAPES:
                ours, const = laws[shape], laws["constant"]
                err = ours["error"]["mass_below_0"] + const["error"]["mass_below_0"]
                closer = abs(ours["mass_below_0"] - 0.5) < abs(const["mass_below_0"] - 0.5) - err
                cases.append(ScheduleCase("two_modes", sampler, float(w), shape, "mode_balance", closer))
                err_var = ours["error"]["var"] + const["error"]["var"]
                cases.append(ScheduleCase("two_modes", sampler, float(w), shape, "variance",
                                          ours["var"] > const["var"] + err_var))
    return cases


@provider
@one_thread()
def cfg_schedule_diversity(config: RunConfig) -> ScheduleDiversity:
    """Constant CFG against the linear and cosine schedules at the same mean strength, exact laws in one and across
    two modes, and the diversity comparisons (see the module docstring)."""
    ws = (3.0,) if config.quick else (1.0, 3.0, 7.0)
    within = within_one_mode(ws)
    across = across_modes(ws, config.quick)
    return ScheduleDiversity(ws, within, across, tuple(_cases(within, across)))
