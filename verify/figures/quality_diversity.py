"""``quality_diversity.png`` (S0-QUALITY-DIVERSITY): precision, recall and Frechet distance to p(x|c) of CFG on
ring2d class 0 against w, for DDIM, DDPM and the tilted target, drawn from :func:`verify.evidence.quality
.quality_diversity` (the samples, grids and numbers the record reads)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from verify.evidence.quality import QualityDiversity
from verify.evidence.targets import hdr_mask

from . import figure
from .style import ODE_COLOUR, SDE_COLOUR, TILTED_COLOUR, new_figure, w_colours

SHOWN = ("0", "3", "7")


@figure("quality_diversity.png")
def quality_diversity(quality_diversity: QualityDiversity) -> Figure:
    """(a, b) DDIM's and DDPM's samples with their 95 % regions (KDE) over p(x|c)'s and the tilted target's;
    (c) precision against recall; (d-f) precision, recall and Frechet distance against w."""
    qd = quality_diversity
    rs = qd.samples
    ode, sde = rs.samplers
    gx, gy = np.meshgrid(qd.x1, qd.x2)
    ws = list(rs.ws)
    ws_num = [float(w) for w in ws]
    colour_of = {ode: ODE_COLOUR, sde: SDE_COLOUR, "tilted": TILTED_COLOUR}
    styles = {ode: ("-", "o", f"{ode.upper()}, {rs.steps} steps (deterministic)"),
              sde: ("--", "s", f"{sde.upper()}, {rs.steps} steps (stochastic)"),
              "tilted": (":", "D", "tilted target $p(x|c)^{1+w}p(x)^{-w}$ (exact, on a grid)")}
    fig = new_figure(17, 10.5, layout="constrained")
    (ax_a, ax_b, ax_plane), (ax_p, ax_r, ax_fd) = fig.subplots(2, 3)
    top = SHOWN[-1]
    for ax, name in ((ax_a, ode), (ax_b, sde)):
        for dens, ls, label in ((qd.p_target, "--", "95% HDR of p(x|c), the law to match"),
                                (qd.tilted_density[top], ":", f"95% HDR of the tilted target, w = {top}")):
            level = float(dens[hdr_mask(dens, qd.level, qd.x1, qd.x2)].min())
            ax.contour(gx, gy, dens, levels=[level], colors="k", linewidths=1.6, linestyles=ls)
            ax.plot([], [], color="k", ls=ls, label=label)
        for w, colour in zip(SHOWN, w_colours(SHOWN), strict=True):
            x = rs.samples[name][w].numpy()
            ax.scatter(*x[:800].T, s=2, color=colour, alpha=0.5, rasterized=True)
            ax.contour(gx, gy, qd.kde[name][w], levels=[qd.kde_level[name][w]], colors=[colour], linewidths=2.0)
            ax.plot([], [], color=colour, lw=2, marker="o", ms=3, label=f"w = {w}: samples, 95% HDR (KDE)")
        ax.legend(frameon=False, loc="upper left", fontsize=8.5, title=styles[name][2], title_fontsize=8.5)
        ax.set(xlim=(1.8, 5.0), ylim=(-1.5, 2.9), aspect="equal", xlabel="$x_1$ (radial)",
               ylabel="$x_2$ (tangential)")
    ax_a.set_title(f"(a) {ode.upper()}, class {rs.condition} (mean (3, 0)): as w grows the\nsamples narrow and move "
                   "outward, out of\np(x|c)'s high-density region (the ODE overshoots)", loc="left")
    ax_b.set_title(f"(b) {sde.upper()}, same starts: the samples narrow\n(recall falls) but stay inside p(x|c)'s\n"
                   "high-density region (precision stays high)", loc="left")
    for name, (ls, marker, label) in styles.items():
        rows = [qd.ring2d[name][w] for w in ws]
        kw = {"color": colour_of[name], "ls": ls, "marker": marker, "ms": 4, "lw": 1.8, "label": label}
        precision = [r.precision for r in rows]
        recall = [r.recall_grid for r in rows]
        if name == "tilted":
            ax_p.plot(ws_num, precision, **kw)
        else:
            ax_p.errorbar(ws_num, precision, yerr=[2 * r.precision_se for r in rows], capsize=2, **kw)
        ax_r.plot(ws_num, recall, **kw)
        ax_fd.plot(ws_num, [r.frechet_to_p_x_given_c for r in rows], **kw)
        ax_plane.plot(recall, precision, **kw)
        if name != "tilted":
            for w, r, p in zip(ws, recall, precision, strict=True):
                if name == sde and w not in (ws[0], ws[-1]):
                    continue
                ax_plane.annotate(f"w={w}", (r, p), xytext=(5, -3 if name == ode else 5), textcoords="offset points",
                                  fontsize=8, color=colour_of[name])
    for ax in (ax_p, ax_r):
        ax.axhline(qd.level, color="0.6", lw=0.8, ls=":")
        ax.set(xlabel="guidance strength w", ylim=(0, 1.03))
    ax_p.set(ylabel="precision")
    ax_p.set_title("(d) precision $P_{model}(H_{p(x|c)})$: the fraction of samples inside p(x|c)'s 95% HDR\n"
                   "(exact density of p(x|c); 0.95 when the laws agree; bars: 2 standard errors)", loc="left")
    ax_r.set(ylabel="recall")
    ax_r.set_title("(e) recall $P_{p(x|c)}(H_{model})$: p(x|c)'s mass inside the samples' 95% HDR\n"
                   "(samples' density: binned KDE, about +0.005; at w = 0 the gap to 0.95 is\n"
                   f"the {rs.steps}-step samplers' discretisation error)", loc="left")
    ax_fd.set(xlabel="guidance strength w", ylabel="Frechet distance to p(x|c)", ylim=(0, None))
    ax_fd.set_title("(f) Frechet distance to the conditional law p(x|c)\n(first two moments)", loc="left")
    ax_plane.set(xlabel="recall", ylabel="precision", xlim=(0, 1.0), ylim=(0, 1.05))
    ax_plane.set_title(f"(c) precision against recall: {sde.upper()} trades recall for precision;\n"
                       f"{ode.upper()} loses both as it overshoots", loc="left")
    ax_plane.legend(frameon=False, loc="lower right", fontsize=8.5)
    ax_fd.legend(frameon=False, loc="upper left", fontsize=8.5)
    fig.suptitle(f"Guidance trades recall for precision, until the deterministic sampler overshoots\nCFG on ring2d, "
                 f"class {rs.condition}, {rs.n // 1000}k samples per point, from the noised conditional "
                 "$p_1(x|c)$ at t = 1", fontsize=13, weight="bold")
    return fig
