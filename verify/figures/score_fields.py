"""``guided_score_fields.png``: the guided score field of ring2d over noise levels and strengths, drawn from
:func:`verify.evidence.algebra.guided_score_fields` (the fields S0-PROP2-SCORE checks against the tilted score)."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from verify.evidence.algebra import GuidedScoreFields

from . import figure
from .style import new_figure

#: the background shows the guided log density down to its max minus CLIP
CLIP = 15.0


@figure("guided_score_fields.png")
def guided_score_fields_figure(guided_score_fields: GuidedScoreFields) -> Figure:
    """Rows: t; columns: w. Streamlines of the guided score over the guided log density, the grid mode, and the
    noised class means."""
    ev = guided_score_fields
    axis, stream = ev.axis, ev.stream
    lim = float(axis[-1])
    log_mag = {(p.t, p.w): np.log10(np.hypot(p.u, p.v) + 1e-3) for p in ev.panels}
    norm = Normalize(vmin=-1.0, vmax=math.ceil(max(float(m.max()) for m in log_mag.values())))
    levels = np.linspace(-CLIP, 0.0, 16)
    others = np.arange(len(ev.class_means)) != ev.condition
    fig = new_figure(14, 11, layout="constrained")
    axes = fig.subplots(len(ev.times), len(ev.strengths_w), sharex=True, sharey=True, squeeze=False)
    for i, t in enumerate(ev.times):
        for j, w in enumerate(ev.strengths_w):
            ax, p = axes[i, j], ev.panel(t, w)
            cs = ax.contourf(axis, axis, np.maximum(p.log_density, -CLIP), levels=levels, cmap="Greys", alpha=0.6)
            sp = ax.streamplot(stream, stream, p.u, p.v, color=log_mag[t, w], cmap="magma_r", norm=norm, density=0.8,
                               linewidth=0.8, arrowsize=0.8)
            ax.scatter(*p.mode, s=60, marker="P", color="white", edgecolor="k", zorder=4)
            ax.text(0.03, 0.03, f"mode ({p.mode[0]:.2f}, {p.mode[1]:.2f})", transform=ax.transAxes, fontsize=9,
                    va="bottom", bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.85})
            ax.scatter(*(p.alpha * ev.class_means[others]).T, s=14, color="k", zorder=4)
            ax.scatter(*(p.alpha * ev.class_means[ev.condition]), s=110, marker="*", color="#d62728", edgecolor="k",
                       zorder=5)
            ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
            if i == 0:
                ax.set_title(f"w = {w:g}" + (" (conditional)" if w == 0 else ""), fontsize=12)
            if i == len(ev.times) - 1:
                ax.set_xlabel("$x_1$")
        p = ev.panel(t, ev.strengths_w[0])
        axes[i, 0].set_ylabel(f"t = {t:g}\n$\\alpha_t$ = {p.alpha:.3f}, $\\sigma_t$ = {p.sigma:.3f}\n\n$x_2$")
    fig.colorbar(sp.lines, ax=axes, location="right", shrink=0.5, label="$\\log_{10}$ |guided score|")
    fig.colorbar(cs, ax=axes, location="bottom", shrink=0.45, aspect=40,
                 label=f"guided log-density $\\log p_t(x|c)^{{1+w}} p_t(x)^{{-w}}$ minus its max (clipped at "
                       f"$-{CLIP:g}$)")
    fig.suptitle(f"Guided score field (1+w) s(x|c) - w s(x) on ring2d, class {ev.condition}: the field pushes away "
                 "from the other classes as w grows\n"
                 f"streamlines: guided score (vp-linear schedule);  red star: class {ev.condition}'s noised mean "
                 "$\\alpha_t\\mu_c$;  dots: the other classes' $\\alpha_t\\mu_k$;  white cross: mode of the "
                 f"guided density\nlargest deviation from the tilted law's score: {ev.max_error_over_bound:.2g} of "
                 "its rounding bound", fontsize=12)
    return fig
