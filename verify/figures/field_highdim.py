"""``field_highdim.png``: CFG's overshoot and variance along the class direction against d on the image worlds, with
95 % intervals and the exact w = 0 floor, and a row of guided samples at each size (draws
:func:`verify.evidence.field_highdim.field_highdim`)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from verify.evidence.field_highdim import FieldHighDim

from . import figure
from .style import ODE_COLOUR, SDE_COLOUR, new_figure

#: 95 % normal interval half-width in standard errors
Z95 = 1.96
W_MARKERS = ("o", "s", "^", "D")
W_STYLES = ("--", "-", "-.", ":")
WORLD_TITLES = {"shapes": "shapes (p(x): 48 components)", "two_class": "two classes"}


def _rgb(image: list) -> np.ndarray:
    """``[3, s, s]`` values in [-1, 1] to an ``[s, s, 3]`` RGB array in [0, 1], clipped for display only."""
    return np.clip((np.asarray(image).transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0)


@figure("field_highdim.png")
def field_highdim_figure(field_highdim: FieldHighDim) -> Figure:
    ev = field_highdim
    colours = {ev.samplers["ode"]: ODE_COLOUR, ev.samplers["sde"]: SDE_COLOUR}
    fig = new_figure(13.0, 10.0, layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=(2.6, 0.8))
    axes = top.subplots(2, len(WORLD_TITLES), squeeze=False)
    n_series = len(colours) * len(ev.ws)
    for col, (world, title) in enumerate(WORLD_TITLES.items()):
        ax_over, ax_var = axes[0, col], axes[1, col]
        k = 0
        for sampler, colour in colours.items():
            for j, w in enumerate(ev.ws):
                s = ev.series(world, sampler, w)
                shift = 2.0 ** (0.15 * (k - (n_series - 1) / 2))  # side by side on the log axis
                k += 1
                d = np.array([p.dim for p in s], dtype=float) * shift
                kw = {"color": colour, "ls": W_STYLES[j % len(W_STYLES)], "marker": W_MARKERS[j % len(W_MARKERS)],
                      "ms": 5, "lw": 1.3, "capsize": 2, "label": f"{sampler.upper()}, w={w:g}"}
                ax_over.errorbar(d, [p.measured.overshoot for p in s],
                                 yerr=[Z95 * p.measured.overshoot_se for p in s], **kw)
                ax_var.errorbar(d, [p.measured.var_ratio for p in s],
                                yerr=[Z95 * p.measured.var_ratio_se for p in s], **kw)
            s = ev.series(world, sampler, ev.ws[0])
            ax_var.plot([p.dim for p in s], [p.unguided.var_ratio for p in s], color=colour, ls=":", lw=2.4,
                        label=f"{sampler.upper()}, w=0 exact")
        ticks = ev.series(world, ev.samplers["ode"], ev.ws[0])
        for ax in (ax_over, ax_var):
            ax.set_xscale("log", base=2)
            ax.set_xticks([p.dim for p in ticks])
            ax.set_xticklabels([f"{p.dim} ({p.size}x{p.size})" for p in ticks])
            ax.minorticks_off()
            ax.set_xlim(ticks[0].dim / 1.6, ticks[-1].dim * 1.6)
        ax_over.axhline(0.0, color="k", lw=0.8)
        ax_over.set_title(f"{title}: overshoot along u (95 % intervals, {ev.n} samples per run)")
        ax_over.set_ylabel("mean u^T(x - m_c) / s_u  (p(x|c): 0)")
        ax_var.axhline(1.0, color="k", lw=0.8)
        ax_var.set_ylim(0.0, 1.45)
        ax_var.set_title(f"{title}: variance along u (dotted: the sampler's exact w = 0 law)")
        ax_var.set_ylabel("variance / p(x|c)'s  (p(x|c): 1)")
        ax_var.set_xlabel("dimension d = 3 s^2 (image s x s)")
    axes[0, 0].legend(fontsize=8, ncol=2, loc="center", bbox_to_anchor=(0.5, 0.74))
    axes[1, -1].legend(fontsize=7.5, ncol=3, loc="upper center")
    sizes = sorted(ev.images)
    keep = max((len(ev.images[s]) for s in sizes), default=0)
    if keep:
        axes = bottom.subplots(1, len(sizes) * keep, squeeze=False)[0]
        for i, size in enumerate(sizes):
            for j, image in enumerate(ev.images[size]):
                ax = axes[i * keep + j]
                ax.imshow(_rgb(image), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_title(f"{size} x {size}", fontsize=9, loc="left")
        bottom.suptitle(f"shapes, '{' '.join(ev.condition)}', {ev.image_sampler.upper()} at w = {ev.image_w:g}: "
                        "samples at each size (RGB from [-1, 1], clipped for display)", fontsize=9)
    return fig
