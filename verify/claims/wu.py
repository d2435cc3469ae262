"""L-WU-CONFIDENCE: guidance raises the expected class posterior and lowers the differential entropy of the output
law, for the ODE and the SDE; a coarse-step sampler with strong guidance splits a component (evidence:
:mod:`verify.evidence.wu`)."""

from __future__ import annotations

from verify.evidence.wu import WuConfidence

from . import Decision, claim

SOURCE = ("Wu, Chen, Li, Wang & Wei 2024, 'Theoretical Insights for Diffusion Guidance: A Case Study for Gaussian "
          "Mixture Models' (arXiv 2403.01639), sections 3 (confidence), 4 (diversity), 5-6 (discretised process, "
          "the three-component example)")
#: the Gaussian pairs' moments come from the moment ODEs at rtol 1e-12 (global error below ~1e-9 of the moments;
#: exact_gaussian_law's docstring): an entropy step counts as a rise only beyond this
PAIR_TOL = 1e-8


def _monotone(values: list[float], errors: list[float], sign: int) -> bool:
    """``sign = +1``: non-decreasing, ``-1``: non-increasing, each step up to the two runs' errors together."""
    steps = zip(values, values[1:], errors, errors[1:], strict=False)
    return all(sign * (b - a) >= -(ea + eb) for a, b, ea, eb in steps)


@claim("L-WU-CONFIDENCE", order=326, source=SOURCE,
       statement="for Gaussian mixtures, guidance raises the classification confidence E[p(c|x)] of the output and "
                 "lowers the differential entropy of the output law, for DDPM (reverse SDE) and DDIM (probability-flow "
                 "ODE); with strong guidance a discretised sampler splits the centre component of a three-component "
                 "mixture",
       tests=("tests/test_wu.py",), figure="figures/wu_confidence.png")
def wu_confidence_claim(wu_confidence: WuConfidence) -> Decision:
    """Holds when confidence rises and entropy falls (within the references' error estimates) for the ODE and the
    SDE and a coarse DDIM splits the centre component; conditional when one of them does not; fails when neither
    confidence nor entropy behaves."""
    ev = wu_confidence
    checks = {}
    for sampler in ("ode", "sde"):
        checks[f"{sampler}_confidence_rises"] = _monotone(ev.series(sampler, "confidence"),
                                                          ev.errors(sampler, "confidence"), +1)
        checks[f"{sampler}_entropy_falls"] = _monotone(ev.series(sampler, "entropy"), ev.errors(sampler, "entropy"),
                                                       -1)
    pair_names = sorted({p.pair for p in ev.pairs})
    pair_entropy_falls = all(_monotone([p.entropy for p in ev.pairs if (p.pair, p.sampler) == (n, s)],
                                       [PAIR_TOL / 2] * len(ev.ws), -1) for n in pair_names for s in ("ode", "sde"))
    checks["pairs_entropy_falls"] = pair_entropy_falls
    log_odds_rises = {f"{n}/{s}": _monotone([p.log_odds for p in ev.pairs if (p.pair, p.sampler) == (n, s)],
                                            [PAIR_TOL / 2] * len(ev.ws), +1)
                      for n in pair_names for s in ("ode", "sde")}
    split_modes: dict[str, dict[str, int]] = {}
    for s in ev.split:
        split_modes.setdefault(s.sampler, {})[f"{s.w:g}"] = s.modes
    splits = [s for s in ev.split if s.sampler != "ode" and s.modes >= 2 and s.modes_half_nodes >= 2]
    ode_whole = all(s.modes == 1 for s in ev.split if s.sampler == "ode")
    checks["discrete_sampler_splits"] = bool(splits)
    checks["continuous_ode_stays_unimodal"] = ode_whole
    monotone = all(v for k, v in checks.items() if k.endswith(("rises", "falls")))
    verdict = ("holds" if splits else "conditional") if monotone else (
        "fails" if not any(v for k, v in checks.items() if k.endswith(("rises", "falls"))) else "conditional")
    conf = {s: ev.series(s, "confidence") for s in ("ode", "sde")}
    ent = {s: ev.series(s, "entropy") for s in ("ode", "sde")}
    first_split = min(splits, key=lambda s: (s.sampler, s.w)) if splits else None
    headline = (f"E[p(c|x)] {conf['ode'][0]:.3f} -> {conf['ode'][-1]:.3f} (ODE), {conf['sde'][0]:.3f} -> "
                f"{conf['sde'][-1]:.3f} (SDE); entropy {ent['ode'][0]:.3f} -> {ent['ode'][-1]:.3f} (ODE), "
                f"{ent['sde'][0]:.3f} -> {ent['sde'][-1]:.3f} (SDE), w {ev.ws[0]:g}..{ev.ws[-1]:g}; "
                + (f"{first_split.sampler} splits the centre component at w = {first_split.w:g} "
                   f"({first_split.modes} modes), the continuous ODE "
                   + ("stays unimodal" if ode_whole else "does not") if first_split else "no split found"))
    failed = [k for k, v in checks.items() if not v]
    conditions = "" if verdict == "holds" else "not confirmed: " + ", ".join(failed)
    mixture = {f"{p.sampler}/{p.w:g}": {"confidence": p.confidence, "entropy": p.entropy, "mean": p.mean,
                                        "var": p.var, "error": p.error} for p in ev.mixture}
    pairs = {f"{p.pair}/{p.sampler}/{p.w:g}": {"mean": p.mean, "var": p.var, "entropy": p.entropy,
                                               "implicit_log_odds": p.log_odds} for p in ev.pairs}
    split = {f"{s.sampler}/{s.w:g}": {"modes": s.modes, "modes_half_nodes": s.modes_half_nodes, "std": s.std,
                                      "mass_away": s.mass_away} for s in ev.split}
    worst = max(max(p.error["confidence"], p.error["entropy"]) for p in ev.mixture)
    return Decision(
        verdict=verdict, headline=headline, conditions=conditions,
        procedure=("CFG = their guided score grad log p_t(x|c) + w grad log p_t(c|x); vp-linear, start: the noised "
                   "class law at t = 1. Mixture 0.5 N(-1, 1) + 0.5 N(1, 1), class 1: ODE by the flow map on "
                   f"{ev.nodes} equal-probability start quantiles (DOP853, rtol 1e-10; entropy by change of "
                   f"variables), SDE by Fokker-Planck ({ev.cells} cells x {ev.cells} Crank-Nicolson steps); "
                   "Gaussian pairs (gauss1d's N(1, 0.5) vs N(0, 1); N(1, 1) vs N(0, 2)) by the moment ODEs, entropy "
                   "and implicit log-odds closed-form; splitting: means -3, 0, 3, unit variances, the centre class, "
                   f"DDIM with 10 and 50 uniform steps and the continuous ODE on {ev.split_nodes} start quantiles, "
                   "modes of the output histogram over +-4 (bins 0.04, Gaussian smoothing of 2 bins, prominence 5%)"),
        uncertainty=(f"mixture: differences from half the nodes (cells, steps) at 100x the tolerance, at most "
                     f"{worst:.2g}; a step counts against monotonicity only beyond the two runs' errors; Gaussian "
                     f"pairs: moment ODEs at rtol 1e-12 (tolerance {PAIR_TOL:g}); mode counts repeated with half the "
                     "nodes"),
        evidence={"ws": list(ev.ws), "split_ws": list(ev.split_ws), "checks": checks, "mixture": mixture,
                  "pairs": pairs, "pairs_implicit_log_odds_rises": log_odds_rises, "split": split,
                  "split_modes": split_modes},
    )
