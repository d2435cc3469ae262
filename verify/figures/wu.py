"""wu_confidence.png: expected class posterior and differential entropy of the guided laws against w, ODE and SDE,
and the three-component splitting example (draws :func:`verify.evidence.wu.wu_confidence`)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from verify.evidence.wu import SPLIT_EDGES, WuConfidence

from . import figure
from .style import ODE_COLOUR, SDE_COLOUR, new_figure, w_colours

SAMPLERS = (("ode", ODE_COLOUR, "ODE (DDIM limit)"), ("sde", SDE_COLOUR, "SDE (DDPM limit)"))


@figure("wu_confidence.png")
def wu_confidence_figure(wu_confidence: WuConfidence) -> Figure:
    ev = wu_confidence
    fig = new_figure(16.0, 4.0, layout="constrained")
    ax_c, ax_e, ax_s, ax_o = fig.subplots(1, 4)
    for sampler, colour, label in SAMPLERS:
        ax_c.errorbar(ev.ws, ev.series(sampler, "confidence"), yerr=ev.errors(sampler, "confidence"), marker="o",
                      ms=4, color=colour, label=label)
        ax_e.errorbar(ev.ws, ev.series(sampler, "entropy"), yerr=ev.errors(sampler, "entropy"), marker="o", ms=4,
                      color=colour, label=f"{label}, mixture")
        for pair, style in (("gauss1d", "--"), ("unit", ":")):
            pts = [p for p in ev.pairs if (p.pair, p.sampler) == (pair, sampler)]
            ax_e.plot([p.w for p in pts], [p.entropy for p in pts], style, color=colour, lw=1.2,
                      label=f"{label}, Gaussian pair {pair}")
    ax_c.set_xlabel("w")
    ax_c.set_ylabel("E[p(c | x)] of the output")
    ax_c.set_title("confidence: 0.5 N(-1, 1) + 0.5 N(1, 1), class 1")
    ax_c.legend(loc="lower right")
    ax_e.set_xlabel("w")
    ax_e.set_ylabel("differential entropy of the output (nats)")
    ax_e.set_title("diversity")
    ax_e.legend(loc="lower left", fontsize=7)
    edges = np.asarray(SPLIT_EDGES)
    centres, width = 0.5 * (edges[1:] + edges[:-1]), np.diff(edges)
    for ax, sampler in ((ax_s, "ddim10"), (ax_o, "ode")):
        pts = [s for s in ev.split if s.sampler == sampler]
        for colour, s in zip(w_colours([s.w for s in pts]), pts, strict=True):
            ax.step(centres, np.maximum(np.asarray(s.histogram) / width, 1e-3), where="mid", color=colour, lw=1.2,
                    label=f"w = {s.w:g}: {s.modes} mode{'s' if s.modes > 1 else ''}")
        ax.set_yscale("log")
        ax.set_ylim(1e-3, None)
        ax.set_xlabel("x at the end")
        ax.set_ylabel("density (bins of 0.04; floor 1e-3)")
        ax.legend(loc="upper right", fontsize=7)
    ax_s.set_title("centre of N(-3,1), N(0,1), N(3,1): DDIM, 10 steps")
    ax_o.set_title("the same class: continuous ODE")
    return fig
