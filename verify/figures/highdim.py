"""``pavasovic_highdim.png``: the distance between CFG's exact law and p(x|+) against d (draws
:func:`verify.evidence.highdim.high_dim_cfg`)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from verify.evidence.highdim import HighDim

from . import figure
from .style import ODE_COLOUR, SDE_COLOUR, box, log_y, new_figure

SAMPLER_COLOURS = {"ode": ODE_COLOUR, "sde": SDE_COLOUR}
W_MARKERS = ("o", "s", "^", "D")


@figure("pavasovic_highdim.png")
def pavasovic_highdim_figure(high_dim_cfg: HighDim) -> Figure:
    ev = high_dim_cfg
    fig = new_figure(13.5, 4.2, layout="constrained")
    ax_mix, ax_var, ax_gauss = fig.subplots(1, 3)
    for k, w in enumerate(ev.ws):
        marker = W_MARKERS[k % len(W_MARKERS)]
        for sampler, colour in SAMPLER_COLOURS.items():
            mix = ev.series("mixture", sampler, w)
            d = np.array([p.dim for p in mix])
            ax_mix.plot(d, [p.w2 for p in mix], color=colour, marker=marker, lw=1.5,
                        label=f"{sampler.upper()}, w={w:g}")
            ax_var.plot(d, [p.var_along_m for p in mix], color=colour, marker=marker, lw=1.5,
                        label=f"{sampler.upper()}, w={w:g}")
            gauss = ev.series("gaussian", sampler, w)
            ax_gauss.plot(d, [p.kl for p in gauss], color=colour, marker=marker, lw=1.5,
                          label=f"{sampler.upper()}, w={w:g}")
    d_all = np.array(ev.dims, dtype=float)
    ref = ev.series("mixture", "sde", max(ev.ws))
    ax_mix.plot(d_all, ref[-1].w2 * (d_all / d_all[-1]) ** -0.5, color="0.6", ls=":", lw=1, label="~ 1/sqrt(d)")
    for ax in (ax_mix, ax_var, ax_gauss):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"dimension d  (|m| = {ev.mu_tilde:g} sqrt(d))")
        ax.legend(fontsize=7.5)
    log_y(ax_mix)
    ax_mix.set_ylabel("W2(CFG law, p(x|+)) (two-moment bound)")
    ax_mix.set_title("paper's mixture: distance to p(x|+)")
    ax_var.axhline(1.0, color="k", lw=0.8)
    ax_var.set_ylabel("variance along m (p(x|+): 1)")
    ax_var.set_title("paper's mixture: variance along the class direction")
    log_y(ax_gauss)
    ax_gauss.set_ylabel("KL(CFG law || p(x|+))")
    ax_gauss.set_title("Gaussian unconditional N(0, I + m m^T)")
    box(ax_mix, "SDE: -> p(x|+)\nODE: overshoot stays", x=0.02, y=0.03)
    return fig
