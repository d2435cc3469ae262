"""L-CHIDAMBARAM-BOUNDARY: strong guidance ends on the far edge of a compactly supported class; a score error takes
the samples off the support (evidence: :mod:`verify.evidence.chidambaram`)."""

from __future__ import annotations

from verify.evidence.chidambaram import ChidambaramBoundary

from . import Decision, claim

SOURCE = ("Chidambaram, Gatmiry, Chen, Lee & Lu 2024, 'What does guidance do? A fine-grained analysis in a simple "
          "setting' (arXiv 2409.13074), Assumption 1, Theorem 1 (formal: Theorem 4) and Theorem 3")


def _increasing(values: list[float], errors: list[float]) -> bool:
    """Non-decreasing up to the error estimates: no step down larger than the two runs' errors together."""
    return all(b >= a - (ea + eb) for a, b, ea, eb in zip(values, values[1:], errors, errors[1:], strict=False))


@claim("L-CHIDAMBARAM-BOUNDARY", order=324, source=SOURCE,
       statement="for two classes on disjoint intervals, the probability-flow ODE guided with strength w ends, with "
                 "probability 1 - exp(-Omega(w)), within O(1/sqrt(ln w)) of the end of the class's support away from "
                 "the other class; with any nonzero score error, large enough w puts the samples outside the support",
       tests=("tests/test_chidambaram.py",), figure="figures/chidambaram_boundary.png")
def chidambaram_boundary_claim(chidambaram_boundary: ChidambaramBoundary) -> Decision:
    """Holds when the far-edge mass grows to 1, the near-edge mass falls to 0 and some perturbed model leaves the
    support; conditional when the exact part holds and the perturbed one does not; fails when the exact part fails."""
    ev = chidambaram_boundary
    far = [r.far for r in ev.exact]
    near = [r.near for r in ev.exact]
    far_err = [r.error["far"] for r in ev.exact]
    top = ev.exact[-1]
    # the exact part: the far mass grows (within the error estimates) to 1 within 100x its error, the near mass ends
    # at 0 within its error, and no exact run leaves the support beyond its error
    concentrates = (_increasing(far, far_err) and top.far >= 1.0 - max(100 * top.error["far"], 1e-6)
                    and top.near <= max(top.error["near"], 1e-9)
                    and all(r.outside <= max(r.error["outside"], 1e-9) for r in ev.exact))
    outside = {f"{d:g}": ev.perturbed_outside(d) for d in sorted({r.delta for r in ev.perturbed})}
    worst_out = max((r.outside - r.error["outside"] for r in ev.perturbed), default=0.0)
    leaves = worst_out > 1e-3
    verdict = ("holds" if leaves else "conditional") if concentrates else "fails"
    w_lo = ev.exact[0].w
    collapse = {f"{r.delta:g}/{r.seed}": r.quantiles["q99"] - r.quantiles["q01"] for r in ev.perturbed
                if r.w == ev.ws[-1]}
    spread_line = ", ".join(f"delta/seed {k}: {v:.2g}" for k, v in collapse.items())
    exact = {f"{r.w:g}": {"far_edge_mass": r.far, "near_edge_mass": r.near, "outside_mass": r.outside,
                          "width_90": r.width_90, "quantiles": r.quantiles, "error": r.error} for r in ev.exact}
    perturbed = {f"{r.delta:g}/{r.seed}/{r.w:g}": {"far_edge_mass": r.far, "near_edge_mass": r.near,
                                                   "outside_mass": r.outside, "quantiles": r.quantiles,
                                                   "error": r.error} for r in ev.perturbed}
    headline = (f"far-edge mass {far[0]:.3g} (w={w_lo:g}) -> "
                + ", ".join(f"{f:.3g} (w={r.w:g})" for f, r in zip(far[1:], ev.exact[1:], strict=True) if r.w >= 3)
                + f"; near-edge {near[0]:.3g} -> {top.near:.2g}; outside mass with 1%/10% relative eps error: "
                + f"at most {max((r.outside for r in ev.perturbed), default=0.0):.2g} at every w, delta and seed")
    conditions = "" if verdict == "holds" else (
        "the boundary concentration holds exactly; the off-support statement (Theorem 3) is not reproduced by a smooth "
        "relative eps error of 1% or 10%: no perturbed run puts mass outside the support (largest outside mass "
        f"{max(r.outside for r in ev.perturbed):.2g}); at w = {ev.ws[-1]:g} the perturbed law collapses inside the "
        f"support instead (1%-99% spread: {spread_line})" if concentrates else
        "the exact guided law does not concentrate on the far edge: see evidence")
    return Decision(
        verdict=verdict, headline=headline, conditions=conditions,
        procedure=(f"class 1 uniform on [{ev.alpha_1:g}, {ev.alpha_2:g}], class -1 on [{-ev.alpha_2:g}, "
                   f"{-ev.alpha_1:g}], weights 1/2; exact noised densities and scores (differences of normal CDFs, "
                   "log_ndtr, float64); the CFG probability-flow ODE from the noised class law at t = 1 of vp-linear, "
                   f"integrated in ln(sigma/alpha) down to sigma/alpha = {ev.lambda_end:g} (DOP853, rtol "
                   f"{ev.rtol:g}) on {ev.nodes} start quantiles; output CDF = start CDF of the inverse monotone map; "
                   f"masses within {ev.layer:g} of each edge and further than {ev.outside_margin:g} outside; score "
                   "error: each branch's eps times 1 + delta tanh(a x + b), delta in 1%, 10%, (a, b) ~ N(0, 1) per "
                   "branch and seed"),
        uncertainty=("error estimate: difference from half the nodes at 100x the tolerance; largest over the exact "
                     f"runs {max(max(r.error.values()) for r in ev.exact):.2g}, over the perturbed runs "
                     f"{max((max(r.error.values()) for r in ev.perturbed), default=0.0):.2g}"),
        evidence={"ws": list(ev.ws), "exact": exact, "perturbed": perturbed, "perturbed_outside_mass": outside,
                  "layer": ev.layer, "outside_margin": ev.outside_margin, "concentrates": concentrates,
                  "perturbed_leaves_support": leaves},
    )
