"""The 1-D laws: the CFG target (``tilted_densities.png``: S0-TEMPERATURE, S0-WINF) and the laws guided samplers
produce against it (``cfg_law_vs_tilted.png``: S0-PROP2-SAMPLES, L-DDIM-DDPM). Every curve and number is a provider's
(:mod:`verify.evidence.targets`, :mod:`verify.evidence.laws`); a Gaussian law is drawn from its two moments."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from verify.evidence.laws import W_LAWS, CFGLaws1D, LawDensities
from verify.evidence.targets import TiltedDensities1D, TiltedTargets1D

from . import figure
from .style import ODE_COLOUR, SDE_COLOUR, TILTED_COLOUR, box, new_figure, w_colours


def _gauss_pdf(x: np.ndarray, mean: float, var: float) -> np.ndarray:
    return np.exp(-((x - mean) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)


# --------------------------------------------------------------------------------------------------------------
# tilted_densities.png
# --------------------------------------------------------------------------------------------------------------
@figure("tilted_densities.png")
def tilted_densities(tilted_densities_1d: TiltedDensities1D, tilted_targets_1d: TiltedTargets1D) -> Figure:
    """(a) gauss1d's target against the tempered conditional N(1, 0.5/(1+w)); (b) bimodal1d's target for growing
    w; (c) the target's variance against w (grid curve; S0-TEMPERATURE's and S0-WINF's moments as markers)."""
    td, x = tilted_densities_1d, tilted_densities_1d.x
    fig = new_figure(17, 5.2, layout="constrained")
    ax_g, ax_b, ax_v = fig.subplots(1, 3)
    gauss_ws = list(td.density["gauss1d"])
    for w, colour in zip(gauss_ws, w_colours(gauss_ws), strict=True):
        ax_g.plot(x, td.density["gauss1d"][w], color=colour, lw=2,
                  label=f"w = {w}: mean {td.mean['gauss1d'][w]:.2f}, var {td.var['gauss1d'][w]:.3f}")
        ax_g.plot(x, _gauss_pdf(x, 1.0, 0.5 / (1 + float(w))), color=colour, lw=1.5, ls="--")
    for x0, text, ha in [(1.0, "conditional mean 1 ", "right"), (2.0, " tilted limit 2", "left")]:
        ax_g.axvline(x0, color="0.5", lw=0.8, ls=":")
        ax_g.text(x0, 3.5, text, ha=ha, va="center", fontsize=9, color="0.3")
    ax_g.set(xlim=(-1.5, 5.0), ylim=(0, 3.7), xlabel="x", ylabel="normalised density",
             title="(a) gauss1d: tilted $p(x|c)^{1+w}p(x)^{-w}$ (solid) vs tempered conditional "
                   "$\\mathcal{N}(1, \\frac{0.5}{1+w})$ (dashed)\nthe tilted mean drifts to 2: CFG is not "
                   "sampling $p(x|c)$ at a lower temperature")
    ax_g.legend(frameon=False, loc="upper right", bbox_to_anchor=(1.0, 0.93), title="tilted target (solid)")
    ax_b.fill_between(x, td.marginal["bimodal1d"], color="0.6", alpha=0.4, label="p(x)")
    bimodal_ws = list(td.density["bimodal1d"])
    for w, colour in zip(bimodal_ws, w_colours(bimodal_ws), strict=True):
        ax_b.plot(x, td.density["bimodal1d"][w], color=colour, lw=1.8,
                  label=f"w = {w}: mean {td.mean['bimodal1d'][w]:.2f}, var {td.var['bimodal1d'][w]:.3f}")
    ax_b.set(xlim=(-4.5, 4.5), ylim=(0, 0.85), xlabel="x", ylabel="normalised density",
             title="(b) bimodal1d, class 1: tilted $p(x|1)^{1+w}p(x)^{-w}$ for growing w\nclass 0's mode "
                   "vanishes, but class 1's mode does not sharpen")
    ax_b.legend(frameon=False, loc="upper left", title="tilted target")
    for (name, var), colour in zip(td.variance_curve.items(), ["#d62728", "#1f77b4"], strict=True):
        ax_v.plot(td.w_axis, var, color=colour, lw=2, label=f"{name} (grid)")
        moments = tilted_targets_1d.moments[name]
        ax_v.plot([float(w) for w in moments], [m.var for m in moments.values()], ls="", marker="o", ms=6,
                  mfc="white", mec=colour, mew=1.5, zorder=4,
                  label=f"{name}: ledger ({'closed form' if name == 'gauss1d' else 'quadrature'})")
    ax_v.plot(td.w_axis, 1 / (2 + td.w_axis), color="k", lw=1.2, ls=":", zorder=3,
              label="gauss1d closed form 1/(2 + w)")
    ax_v.axhline(0.5, color="0.5", lw=1, ls="--", label="0.5 = variance of p(x|c) in both worlds")
    ax_v.set_xscale("symlog", linthresh=1.0, linscale=0.6)
    ax_v.set_xticks([0, 0.5, 1, 3, 10, 30, 100], ["0", "0.5", "1", "3", "10", "30", "100"])
    ax_v.set(xlim=(0, 100), ylim=(0, 0.6), xlabel="guidance strength w (linear below 1, log above)",
             ylabel="variance of the tilted target",
             title="(c) variance against w: gauss1d's shrinks to 0,\nbimodal1d's stays near 0.5")
    ax_v.legend(frameon=False, loc="lower left", fontsize=8.5)
    fig.suptitle("The CFG target $p(x|c)^{1+w}\\,p(x)^{-w}$ (normalised numerically): not a tempered "
                 "conditional, and not always sharper", fontsize=13, weight="bold")
    return fig


# --------------------------------------------------------------------------------------------------------------
# cfg_law_vs_tilted.png
# --------------------------------------------------------------------------------------------------------------
def _law_label(w: str, law, tilted) -> str:
    return f"w = {w}: {law.mean:.2f}, {law.var:.3f}   (tilted {tilted.mean:.2f}, {tilted.var:.3f})"


def _moment_panels(ax_mean: Axes, ax_var: Axes, laws: CFGLaws1D, title: str) -> None:
    """Mean (top) and variance (bottom) against w for the ODE, the SDE and the tilted target."""
    ws = [float(w) for w in W_LAWS]
    for key, colour, style, label in [("ode", ODE_COLOUR, "-", "guided PF-ODE"),
                                      ("sde", SDE_COLOUR, "-", "guided reverse SDE"),
                                      ("tilted", TILTED_COLOUR, "--", "tilted target")]:
        for ax, attr in ((ax_mean, "mean"), (ax_var, "var")):
            ax.plot(ws, [getattr(laws.law(key, w), attr) for w in W_LAWS], color=colour, ls=style, lw=2,
                    marker="o", ms=4, label=label)
    ax_mean.set(ylabel="mean", title=title)
    ax_mean.tick_params(labelbottom=False)
    ax_var.set(xlabel="guidance strength w", ylabel="variance", ylim=(0, None))
    ax_mean.legend(frameon=False, loc="upper left")


@figure("cfg_law_vs_tilted.png")
def cfg_law_vs_tilted(gauss1d_laws: CFGLaws1D, bimodal1d_laws: CFGLaws1D, tilted_densities_1d: TiltedDensities1D,
                      bimodal1d_law_densities: LawDensities) -> Figure:
    """Rows gauss1d and bimodal1d (class 1, started from the noised conditional at t = 1); columns (a) the guided
    PF-ODE's output density, (b) the guided reverse SDE's, each with the tilted target dashed in the same colour,
    (c) mean and variance of the three laws against w (the ledger's laws, S0-PROP2-SAMPLES)."""
    td, x = tilted_densities_1d, tilted_densities_1d.x
    dens = bimodal1d_law_densities
    colours = w_colours(W_LAWS)
    fig = new_figure(19, 10.5, layout="constrained")
    gs = fig.add_gridspec(4, 3, width_ratios=[1.3, 1.3, 1.0])
    for row, laws in enumerate((gauss1d_laws, bimodal1d_laws)):
        world = laws.world
        ax_o = fig.add_subplot(gs[2 * row:2 * row + 2, 0])
        ax_s = fig.add_subplot(gs[2 * row:2 * row + 2, 1], sharex=ax_o, sharey=ax_o)
        ax_m, ax_v = fig.add_subplot(gs[2 * row, 2]), fig.add_subplot(gs[2 * row + 1, 2])
        for w, colour in zip(W_LAWS, colours, strict=True):
            tilted = laws.law("tilted", w)
            for ax in (ax_o, ax_s):
                ax.plot(x, td.density[world][w], color=colour, lw=1.6, ls="--")
            if world == "gauss1d":
                for ax, key in ((ax_o, "ode"), (ax_s, "sde")):
                    law = laws.law(key, w)
                    ax.plot(x, _gauss_pdf(x, law.mean, law.var), color=colour, lw=2.2,
                            label=_law_label(w, law, tilted))
                continue
            ax_o.plot(dens.ode_x[w], dens.ode_density[w], color=colour, lw=2.2,
                      label=_law_label(w, laws.law("ode", w), tilted))
            label = _law_label(w, laws.law("sde", w), tilted)
            if w == "0":  # the law is p(x|c) exactly: the tilted target at w = 0
                ax_s.plot(x, td.density[world][w], color=colour, lw=2.2, label=label)
            else:
                ax_s.stairs(dens.sde_density[w], dens.sde_edges, color=colour, lw=1.8, label=label)
        name = f"$\\bf{{{world}}}$"
        if world == "gauss1d":
            ode_how = sde_how = "exact Gaussian law (moment ODEs of verify.exact_law)"
        else:
            ode_how = (f"density by the flow map of Heun ({dens.ode_steps} steps, {dens.nodes} starting points); "
                       "moments: verify.exact_law")
            sde_how = (f"histogram of {dens.n_sde} Euler-Maruyama samples ({dens.sde_steps} steps) per w > 0;\n"
                       "w = 0: p(x|c) exactly; moments: Fokker-Planck (verify.exact_law)")
        note = "" if world == "gauss1d" else "\nthe tilted targets (dashed) are nearly the same for every w"
        ax_o.set_title(f"(a) {name}: guided PF-ODE output (solid) vs tilted target (dashed)\n{ode_how}{note}",
                       loc="left")
        ax_s.set_title(f"(b) {name}: guided reverse-SDE output (solid) vs tilted target (dashed)\n{sde_how}{note}",
                       loc="left")
        for ax, key in ((ax_o, "ODE"), (ax_s, "SDE")):
            ax.legend(frameon=False, loc="upper left", fontsize=8.5, title_fontsize=8.5, alignment="left",
                      title=f"{key} output law: mean, variance" + (" (exact)" if world == "bimodal1d" else ""))
            ax.set(xlabel="x", ylabel="density")
        ax_s.tick_params(labelleft=True)
        _moment_panels(ax_m, ax_v, laws, f"(c) {name}: mean and variance of the three laws against w")
        if world == "gauss1d":
            ax_o.set(xlim=(-1.5, 4.0), ylim=(0, 3.6))
            last = laws.law("ode", W_LAWS[-1])
            ax_o.annotate(f"w = {W_LAWS[-1]}: peak {1 / math.sqrt(2 * math.pi * last.var):.1f} (off scale),\n"
                          f"sd {math.sqrt(last.var):.3f}", (last.mean + 0.05, 2.6), xytext=(10, 0),
                          textcoords="offset points", fontsize=9, color="0.2", va="center")
        else:
            ax_o.set(xlim=(-1.0, 5.5), ylim=(0, 1.9))
            box(ax_m, "errors of the bimodal1d laws:\nODE <= "
                f"{max(laws.law('ode', w).error['mean'] for w in W_LAWS):.0e}, SDE <= "
                f"{max(laws.law('sde', w).error['mean'] for w in W_LAWS):.0e}", x=0.98, y=0.3, ha="right")
    fig.suptitle("The law CFG sampling produces is not the tilted target $p(x|c)^{1+w}p(x)^{-w}$, and the ODE "
                 "and SDE produce different laws (Bradley & Nakkiran 2024)\ncontinuous-time guided samplers on "
                 "vp-linear, started from the noised conditional $p_1(x|c)$; at w = 0 all three are $p(x|c)$",
                 fontsize=13, weight="bold")
    return fig
