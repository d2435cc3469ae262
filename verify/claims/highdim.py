"""L-PAVASOVIC-HIGHDIM: CFG's law against p(x|c) as the dimension grows (evidence: :mod:`verify.evidence.highdim`)."""

from __future__ import annotations

from verify.evidence.highdim import HighDim

from . import Decision, claim

SOURCE = ("Pavasovic, Verbeek, Biroli & Mezard (2025), 'Understanding classifier-free guidance: high-dimensional "
          "theory and non-linear generalizations', arXiv 2502.07849, sections 3-4 (two-class Gaussian mixture with "
          "|m|^2 proportional to d; blessing of dimensionality)")

#: the distance at the largest d must be below this fraction of the distance at d = 1 for "approaches p(x|c)":
#: the paper's mechanism predicts a 1/|m| = 1/sqrt(d) decay, i.e. a factor 64 over d = 1..4096; a factor 4 is a
#: deliberately loose reading that any vanishing trend passes and a plateau (factor ~1) fails
DECAY = 0.25


def _ratio(series) -> float:
    return series[-1].w2 / series[0].w2


@claim("L-PAVASOVIC-HIGHDIM", order=328, source=SOURCE,
       statement=("As the dimension d grows with the class signal |m|^2 proportional to d, the law CFG produces "
                  "approaches p(x|c): its overshoot and variance shrinkage vanish (blessing of dimensionality)"),
       tests=("tests/test_highdim.py",), figure="figures/pavasovic_highdim.png")
def pavasovic_highdim(high_dim_cfg: HighDim) -> Decision:
    """Holds when W2(CFG law, p(x|+)) decays with d for both samplers on the paper's mixture; conditional when it
    decays for one sampler or family and not another; fails when it decays for none."""
    ev = high_dim_cfg
    trends = {}
    for family in ("mixture", "gaussian"):
        for sampler in ("ode", "sde"):
            for w in ev.ws:
                s = ev.series(family, sampler, w)
                trends[f"{family}_{sampler}_w{w:g}"] = {
                    "w2_first_d": s[0].w2, "w2_last_d": s[-1].w2, "ratio": _ratio(s),
                    "overshoot_last_d": s[-1].overshoot, "var_ratio_last_d": s[-1].var_along_m,
                    "vanishes": _ratio(s) <= DECAY}
    mix = {k: v["vanishes"] for k, v in trends.items() if k.startswith("mixture")}
    if all(mix.values()):
        verdict = "holds"
    elif any(v["vanishes"] for v in trends.values()):
        verdict = "conditional"
    else:
        verdict = "fails"
    w_top = max(ev.ws)
    d_max = ev.dims[-1]
    sde = ev.series("mixture", "sde", w_top)
    ode = ev.series("mixture", "ode", w_top)
    gode = ev.series("gaussian", "ode", w_top)
    headline = (f"mixture, w={w_top:g}, d={ev.dims[0]}->{d_max}: reverse SDE W2 {sde[0].w2:.2g}->{sde[-1].w2:.2g} "
                f"(vanishes ~1/sqrt(d)); PF-ODE W2 {ode[0].w2:.2g}->{ode[-1].w2:.2g} (overshoot "
                f"{ode[-1].overshoot:.2g}, variance {ode[-1].var_along_m:.2g}: does not vanish); Gaussian "
                f"unconditional: ODE KL {gode[0].kl:.2g}->{gode[-1].kl:.2g}")
    conditions = ("holds for the reverse SDE in the paper's regime (two-class mixture, |m| = "
                  f"{ev.mu_tilde:g} sqrt(d), speciation inside the run): W2 to p(x|+) decays like 1/|m|; "
                  "not for the probability-flow ODE, whose flow map carries the early guidance push to t = 0 "
                  "unchanged (overshoot O(w) and variance ~0.3 along m at every d; only the per-coordinate shift "
                  "overshoot/sqrt(d) vanishes); not when the unconditional law is a Gaussian with the mixture's two "
                  "moments (the class posterior never saturates and CFG keeps sharpening: KL grows with d)"
                  if verdict == "conditional" else "")
    return Decision(
        verdict=verdict,
        headline=headline,
        procedure=(f"float64, vp-linear, start = noised p(x|+) at t=1 (w=0 exact); d in "
                   f"{', '.join(str(d) for d in ev.dims)}, w in {', '.join(f'{w:g}' for w in ev.ws)}; the "
                   "d-dimensional law reduced exactly to the class direction (orthogonal scores coincide); mixture: "
                   "PF-ODE flow map and Fokker-Planck reverse SDE (verify.exact_law, halving error estimates), W2 "
                   "two-moment lower bound; Gaussian family (unconditional N(0, I + m m^T)): moment ODEs per "
                   "direction, KL and W2 closed form; 'vanishes': W2 at the largest d <= "
                   f"{DECAY:g} x W2 at d = 1"),
        conditions=conditions,
        evidence={"trends": trends, "points": ev.points, "mu_tilde": ev.mu_tilde, "dims": list(ev.dims),
                  "ws": list(ev.ws), "convention": "w = Ho & Salimans strength (guidance scale 1 + w)"},
        uncertainty=("deterministic references; PF-ODE moments within ~1e-8, Fokker-Planck moments within their "
                     f"halving estimates (largest variance error {max(p.var_error for p in ev.points):.2g}, at the "
                     "largest d); the trends exceed these by orders of magnitude"),
    )
