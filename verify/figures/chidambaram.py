"""chidambaram_boundary.png: the guided PF-ODE's exact law on two uniform classes against w, and with a score error
(draws :func:`verify.evidence.chidambaram.chidambaram_boundary`)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from verify.evidence.chidambaram import ChidambaramBoundary

from . import figure
from .style import box, new_figure, w_colours


@figure("chidambaram_boundary.png")
def chidambaram_boundary_figure(chidambaram_boundary: ChidambaramBoundary) -> Figure:
    ev = chidambaram_boundary
    edges = np.asarray(ev.hist_edges)
    centres, width = 0.5 * (edges[1:] + edges[:-1]), np.diff(edges)
    fig = new_figure(13.5, 4.0, layout="constrained")
    ax_d, ax_m, ax_p = fig.subplots(1, 3)
    for colour, run in zip(w_colours(ev.ws), ev.exact, strict=True):
        dens = np.asarray(run.histogram) / width
        ax_d.step(centres, np.maximum(dens, 1e-3), where="mid", color=colour, lw=1.3, label=f"w = {run.w:g}")
    for ax in (ax_d,):
        ax.axvspan(ev.alpha_1, ev.alpha_2, color="0.9", zorder=0, label="support of class 1")
        ax.set_yscale("log")
        ax.set_ylim(1e-3, None)
        ax.set_xlabel("x at the end (t = 0)")
        ax.set_ylabel(f"density (bins of {width[0]:.2g}; floor 1e-3)")
        ax.set_title("exact guided PF-ODE law of class 1")
        ax.legend(loc="upper left", fontsize=7.5)
    wp1 = np.asarray(ev.ws) + 1.0
    for key, label, colour in (("far", f"within {ev.layer:g} of the far edge", "C3"),
                               ("near", f"within {ev.layer:g} of the near edge", "C0"),
                               ("outside", "outside the support", "k")):
        vals = [getattr(r, key) for r in ev.exact]
        errs = [r.error[key] for r in ev.exact]
        ax_m.errorbar(wp1, vals, yerr=errs, marker="o", ms=4, color=colour, label=label)
    ax_m.set_xscale("log")
    ax_m.set_xlabel("1 + w")
    ax_m.set_ylabel("mass of the guided law")
    ax_m.set_title("edge masses against w (exact scores)")
    ax_m.legend(loc="center right", fontsize=8)
    groups = sorted({(r.delta, r.seed) for r in ev.perturbed})
    for i, (delta, seed) in enumerate(groups):
        runs = [r for r in ev.perturbed if (r.delta, r.seed) == (delta, seed)]
        x = np.asarray([r.w for r in runs]) + 1.0
        style = "-" if delta == max(g[0] for g in groups) else "--"
        ax_p.plot(x, [r.outside for r in runs], style, marker="s", ms=4, color="k",
                  label="outside mass" if i == 0 else None)
        ax_p.plot(x, [r.far for r in runs], style, marker="o", ms=3, color=f"C{i + 1}",
                  label=f"far-edge mass, delta {delta:g}, seed {seed}")
    ax_p.set_xscale("log")
    ax_p.set_xlabel("1 + w")
    ax_p.set_ylabel("mass")
    ax_p.set_title("eps x (1 + delta tanh(a x + b))")
    ax_p.legend(loc="center left", fontsize=7)
    top = {f"{r.delta:g}/{r.seed}": (r.quantiles["q01"], r.quantiles["q99"]) for r in ev.perturbed
           if r.w == ev.ws[-1]}
    box(ax_p, f"w = {ev.ws[-1]:g}: 1%-99% range\n" + "\n".join(f"{k}: {a:.4f}-{b:.4f}" for k, (a, b) in top.items()),
        x=0.98, y=0.97, ha="right", va="top")
    return fig
