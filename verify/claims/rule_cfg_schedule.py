"""L-CFG-SCHEDULE: a guidance strength that rises as the noise falls, with the same mean, keeps more diversity than a
constant one (evidence: :mod:`verify.evidence.rule_cfg_schedule`)."""

from __future__ import annotations

from verify.evidence.rule_cfg_schedule import ScheduleDiversity

from . import Decision, claim

#: the strength the headline reads (in the quick and the full grid)
HEADLINE_W = "3"


@claim("L-CFG-SCHEDULE", order=316,
       source=("Wang, Dufour, Andreou, Cani, Fernandez Abrevaya, Picard & Kalogeiton 2024, 'Analysis of "
               "Classifier-Free Guidance Weight Schedulers' (TMLR), abstract and the heuristic schedulers"),
       statement=("monotonically increasing guidance schedules (linear, cosine) with the same mean strength improve "
                  "on a constant guidance scale, keeping more diversity"),
       tests=("tests/test_rule_cfg_schedule.py",
              "tests/test_claims_rules_declared.py::test_cfg_schedule_record_is_decided_by_its_exact_evidence"))
def cfg_schedule(cfg_schedule_diversity: ScheduleDiversity) -> Decision:
    """Holds if a schedule keeps more diversity than the constant rule in every case, fails if in none, conditional
    otherwise (the record names the cases where it does)."""
    ev = cfg_schedule_diversity
    kept = [c.name for c in ev.cases if c.more_diversity]
    lost = [c.name for c in ev.cases if not c.more_diversity]
    verdict = "holds" if not lost else "fails" if not kept else "conditional"
    g_ode, t_ode = ev.within[HEADLINE_W]["ode"], ev.across[HEADLINE_W]["ode"]
    headline = (f"w = 3, ODE: gauss1d variance constant {g_ode['constant'].var:.4f} vs linear "
                f"{g_ode['linear'].var:.4f}; two modes, left-mode mass (data 0.5) constant "
                f"{t_ode['constant']['mass_below_0']:.3f} vs linear {t_ode['linear']['mass_below_0']:.3f}; "
                f"more diversity in {len(kept)} of {len(ev.cases)} cases")
    return Decision(
        verdict=verdict, headline=headline,
        procedure=("exact laws, no sampling: gauss1d (one mode) by the moment ODEs of the guided PF-ODE and reverse "
                   "SDE; a two-mode class beside another class by the PF-ODE flow map and the SDE's Fokker-Planck "
                   "solution, each with its error estimate; constant cfg against cfg_schedule (linear, cosine) at "
                   f"the same mean w in {list(ev.ws)}, marginal start, vp-linear; diversity = variance (both worlds) "
                   "and closeness of the left mode's mass to the data's 0.5 (two modes), compared beyond the "
                   "references' error estimates"),
        conditions=(f"keeps more diversity in {len(kept)} of {len(ev.cases)} cases: " + "; ".join(kept)
                    + f"; in the other {len(lost)} (evidence['cases']) it keeps less or no more"
                    ) if verdict == "conditional" else "",
        evidence={"within_one_mode_gauss1d": ev.within, "across_modes_two_mode_class": ev.across,
                  "cases": list(ev.cases)},
        uncertainty=("gauss1d: moment ODEs at rtol 1e-12 (differences far above it); two modes: each number's error "
                     "estimate from halving the flow-map nodes / Fokker-Planck grid, summed for a comparison"),
    )
