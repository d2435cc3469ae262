"""``renyi_correction.png``: CFG's score gap to the noised tilted target per t, and one slice of both scores
(draws :func:`verify.evidence.renyi.renyi_correction`)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from verify.evidence.renyi import RenyiCorrection

from . import figure
from .style import TILTED_COLOUR, box, log_y, new_figure, w_colours

WORLD_STYLES = {"gauss1d": "-", "gauss2d_full": "--", "gauss16d_full": ":", "bimodal1d": "-."}


@figure("renyi_correction.png")
def renyi_correction_figure(renyi_correction: RenyiCorrection) -> Figure:
    ev = renyi_correction
    fig = new_figure(13.5, 4.2, layout="constrained")
    ax_gap, ax_g, ax_b = fig.subplots(1, 3, width_ratios=[1.5, 1, 1])
    colours = dict(zip(ev.ws, w_colours(ev.ws), strict=True))
    for p in ev.profiles:
        ax_gap.plot(p.times, p.relative_rms_gap, WORLD_STYLES.get(p.world, "-"), color=colours[p.w], lw=1.6,
                    marker="o", ms=2.5, label=f"{p.world}, w={p.w:g}")
    ax_gap.set_xscale("log")
    log_y(ax_gap)
    ax_gap.set_xlabel("t (vp-linear)")
    ax_gap.set_ylabel("RMS |grad log pi_t - s_cfg| / RMS |grad log pi_t|")
    ax_gap.set_title("CFG's score vs the noised tilted target's: the Renyi term (g-1) grad D_g")
    ax_gap.legend(fontsize=7, ncol=2, loc="upper left")
    box(ax_gap, f"identity max error / bound {ev.max_error_over_bound:.1e}", x=0.98, y=0.03, ha="right")
    for ax, sl in zip((ax_g, ax_b), ev.slices, strict=True):
        x = np.asarray(sl.x)
        dens = np.asarray(sl.density)
        keep = dens > 1e-4 * dens.max()
        ax.plot(x[keep], np.asarray(sl.tilted_score)[keep], color=TILTED_COLOUR, lw=1.8, label="grad log pi_t")
        ax.plot(x[keep], np.asarray(sl.cfg_score)[keep], color=colours.get(sl.w, "C0"), lw=1.6, ls="--",
                label=f"CFG, w={sl.w:g}")
        twin = ax.twinx()
        twin.fill_between(x[keep], dens[keep], color="0.85", zorder=0)
        twin.set_yticks([])
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.axhline(0.0, color="0.6", lw=0.6)
        ax.set_xlabel("x_t")
        ax.set_title(f"{sl.world}, t={sl.t:g} (grey: pi_t)")
        ax.legend(fontsize=8, loc="upper right")
    ax_g.set_ylabel("score")
    return fig
