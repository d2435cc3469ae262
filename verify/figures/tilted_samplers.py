"""Samplers of the tilted target against CFG (``tilted_samplers.png``: L-TILTED-EXACT, L-FKC-EXACT, L-BN-LANGEVIN,
S0-PROP2-SAMPLES). Every curve, histogram and number is a provider's (:mod:`verify.evidence.tilted_samplers`,
:mod:`verify.evidence.laws`); a Gaussian law is drawn from its two moments."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from verify.evidence.laws import LawDensities
from verify.evidence.tilted_samplers import (
    SAMPLER_NAMES,
    WORLDS,
    WS,
    FKCConvergence,
    LangevinConvergence,
    TiltedSamplers,
)

from . import figure
from .style import ODE_COLOUR, SDE_COLOUR, TILTED_COLOUR, box, new_figure, w_colours

#: one colour per sampler of the target (the exact sampler is drawn filled)
SAMPLER_COLOURS = {"exact": "#2ca02c", "fkc": "#9467bd", "langevin": "#8c564b", "mcmc": "#7f7f7f"}
SAMPLER_LABELS = {"exact": "exact: DDPM on the score of $\\pi_t$", "fkc": "FKC: SMC with Feynman-Kac weights",
                  "langevin": "CFG + Langevin corrector", "mcmc": "MALA at t = 0"}
TITLES = {"gauss1d": "gauss1d, class 1", "bimodal1d": "bimodal1d, class 1", "ring2d": "ring2d, class 0 ($x_1$)"}


def _gauss_pdf(x: np.ndarray, mean: float, var: float) -> np.ndarray:
    return np.exp(-((x - mean) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)


def _density_panel(ax: Axes, ts: TiltedSamplers, dens: LawDensities, world: str, w: str) -> None:
    """pi's density, CFG's two laws and every sampler's histogram for one (world, w)."""
    edges = ts.edges[world]
    ax.stairs(ts.histograms[world]["exact"][w], edges, fill=True, color=SAMPLER_COLOURS["exact"], alpha=0.3, lw=0)
    for name in SAMPLER_NAMES:
        ax.stairs(ts.histograms[world][name][w], edges, color=SAMPLER_COLOURS[name], lw=1.2,
                  ls="-" if name != "mcmc" else ":")
    if world == "bimodal1d":
        ax.plot(dens.ode_x[w], dens.ode_density[w], color=ODE_COLOUR, lw=1.6, ls="--")
        ax.stairs(dens.sde_density[w], dens.sde_edges, color=SDE_COLOUR, lw=1.4, ls="--")
    else:
        for kind, colour in (("ode", ODE_COLOUR), ("sde", SDE_COLOUR)):
            ax.stairs(ts.histograms[world][f"cfg_{kind}"][w], edges, color=colour, lw=1.6, ls="--")
    ax.plot(ts.density_x[world], ts.density[world][w], color=TILTED_COLOUR, lw=2.0)
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(0, None)
    case = ts.exact[world][w]
    z = max(abs(v) for v in case.z.values())
    box(ax, f"exact: |z| <= {z:.1f}, KS p = {case.ks_pvalue:.2f}", x=0.98, y=0.97, ha="right", va="top")
    ax.set_title(f"{TITLES[world]}, w = {w}", loc="left")


def _offset_panel(ax: Axes, ts: TiltedSamplers, world: str) -> None:
    """Each law's first-coordinate mean minus pi's, in pi's standard deviations, with +-2 standard errors."""
    rows = [("cfg_ode", ODE_COLOUR), ("cfg_sde", SDE_COLOUR)] + [(s, SAMPLER_COLOURS[s]) for s in SAMPLER_NAMES]
    ticks = []
    for g, w in enumerate(WS):
        target = ts.target[world][w]
        sd = math.sqrt(target.var)
        for r, (name, colour) in enumerate(rows):
            row = ts.cfg[world][name[4:]][w] if name.startswith("cfg_") else ts.table[world][name][w]
            y = g * (len(rows) + 1.5) + r
            ax.errorbar((row.mean - target.mean) / sd, y, xerr=2 * row.se_mean / sd, fmt="o", ms=4.5, color=colour,
                        mfc=colour if name != "exact" else "white", capsize=2, lw=1.2)
        ticks.append(g * (len(rows) + 1.5) + (len(rows) - 1) / 2)
    ax.axvline(0.0, color=TILTED_COLOUR, lw=1.0)
    ax.set_yticks(ticks, [f"w = {w}" for w in WS])
    ax.invert_yaxis()
    ax.set_xlabel("(mean - mean of $\\pi$) / sd of $\\pi$")
    ax.set_title(f"{TITLES[world]}: mean offsets (bars: 2 SE)\nrows: CFG ODE, CFG SDE, exact, FKC, Langevin, MALA",
                 loc="left")
    ax.grid(True, axis="x", color="0.9")


def _fkc_mc_panel(ax: Axes, fc: FKCConvergence) -> None:
    colours = w_colours(fc.ws)
    for w, colour in zip(fc.ws, colours, strict=True):
        x = np.array([fc.evaluations[str(n)] for n in fc.particles], dtype=float)
        rows = [fc.errors[w][str(n)] for n in fc.particles]
        y = np.array([r["rmse_mean"] for r in rows])
        lo = y - np.array([r["rmse_mean_ci"][0] for r in rows])
        hi = np.array([r["rmse_mean_ci"][1] for r in rows]) - y
        rate = fc.rate[w]["mean"]
        ax.errorbar(x, y, yerr=[lo, hi], color=colour, marker="o", ms=4, capsize=3, lw=1.6,
                    label=f"w = {w}: slope {rate['slope']:.2f} [{rate['ci'][0]:.2f}, {rate['ci'][1]:.2f}] in N")
    x0 = fc.evaluations[str(fc.particles[0])]
    y0 = fc.errors[fc.ws[0]][str(fc.particles[0])]["rmse_mean"]
    xs = np.array([x0, fc.evaluations[str(fc.particles[-1])]], dtype=float)
    ax.plot(xs, y0 * (xs / x0) ** -0.5, color="0.4", lw=1, ls="--", label="$N^{-1/2}$")
    ax.set(xscale="log", yscale="log", xlabel=f"guided-score evaluations per run (N particles x {fc.mc_steps} steps)",
           ylabel="RMSE of the weighted mean")
    ax.legend(frameon=False, loc="lower left", fontsize=8.5,
              title=f"over {fc.replicates} runs (bars: 95 % interval)", title_fontsize=8.5)
    last = str(fc.particles[-1])
    lines = [f"mean error at N = {last}:"] + [
        f"w = {w}: {fc.errors[w][last]['bias_mean']:+.3f} +- {fc.errors[w][last]['bias_mean_se']:.3f}" for w in fc.ws]
    box(ax, "\n".join(lines), x=0.98, y=0.97, ha="right", va="top")
    lo_y = min(r["rmse_mean_ci"][0] for w in fc.ws for r in fc.errors[w].values())
    ax.set_ylim(lo_y / 4, None)
    ax.set_title("(b) FKC on gauss1d: Monte Carlo error against the $N\\to\\infty$ law at the same steps",
                 loc="left")


def _fkc_limit_panel(ax: Axes, fc: FKCConvergence) -> None:
    colours = w_colours(fc.ws)
    steps = np.array(fc.steps, dtype=float)
    for w, colour in zip(fc.ws, colours, strict=True):
        for moment, style in (("mean", "-"), ("var", "--")):
            bias = [abs(fc.limit[w][str(k)][f"bias_{moment}"]) for k in fc.steps]
            label = f"w = {w}: order {fc.order[w][moment]['fit']:.2f}" if moment == "mean" else None
            ax.plot(steps, bias, color=colour, ls=style, marker="o", ms=4, lw=1.6, label=label)
    ax.set(xscale="log", yscale="log", xlabel="steps (uniform, t = 1 to 0)",
           ylabel="|bias| of the $N\\to\\infty$ law against $\\pi$")
    ax.set_xticks(steps, [f"{int(k)}" for k in fc.steps])
    ax.minorticks_off()
    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="0.3", ls="-"), Line2D([], [], color="0.3", ls="--")]
    labels += ["mean", "variance"]
    ax.legend(handles, labels, frameon=False, loc="lower left", fontsize=8.5)
    ax.set_title("(c) FKC on gauss1d: time discretisation, exact (smc_limit_law)", loc="left")


def _langevin_panel(ax: Axes, lc: LangevinConvergence, ts: TiltedSamplers) -> None:
    colours = w_colours(WS)
    for w, colour in zip(WS, colours, strict=True):
        rows = lc.gauss1d[w]
        ks = sorted(rows, key=int)
        x = np.array([rows[k]["evaluations"] for k in ks], dtype=float)
        y = np.array([max(abs(rows[k]["z_mean"]), abs(rows[k]["z_var"])) for k in ks])
        need = lc.k_needed[w]
        ax.plot(x, y, color=colour, lw=1.6, marker="o", ms=3.5,
                label=f"gauss1d w = {w} (exact law): K = {need} needed")
        for row in lc.bimodal1d[w].values():
            err = max(abs(row.notes["error_in_reference_se_mean"]), abs(row.notes["error_in_reference_se_var"]))
            ax.errorbar(row.evaluations, err, yerr=row.notes["resolution_in_reference_se"], fmt="s", ms=5,
                        mfc="white", color=colour, capsize=3, lw=1.2)
    ax.axhline(lc.z_within, color="k", lw=1, ls="--")
    ax.text(lc.predictor_steps * 1.05, lc.z_within * 1.12,
            f"{lc.z_within:g} standard errors of {lc.n_reference:,} draws", fontsize=8.5, color="0.2")
    exact_cost = sum(ts.exact["gauss1d"][WS[0]].levels)
    ax.axvline(exact_cost, color=SAMPLER_COLOURS["exact"], lw=1.2, ls=":")
    ax.text(exact_cost * 1.05, 520, f"exact sampler:\n{exact_cost} steps in all", fontsize=8.5,
            color=SAMPLER_COLOURS["exact"], va="top")
    ax.set(xscale="log", yscale="log", ylim=(0.3, 600),
           xlabel=f"guided-score evaluations per draw ({lc.predictor_steps} predictor steps x (1 + K))",
           ylabel="largest |error| of mean, variance\nin standard errors of 1e5 draws of $\\pi$")
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color="0.3", marker="s", mfc="white", ls=""))
    labels.append(f"bimodal1d, {lc.mc_n} draws at K = 0 and K needed (bar: 1 SE)")
    ax.legend(handles, labels, frameon=False, loc="lower left", fontsize=8.5)
    ax.set_title(f"(d) CFG + Langevin: corrector steps K to reach $\\pi$ (h = {lc.kappa:g} $v_\\pi$)", loc="left")


@figure("tilted_samplers.png")
def tilted_samplers_figure(tilted_samplers: TiltedSamplers, fkc_convergence: FKCConvergence,
                           langevin_convergence: LangevinConvergence, bimodal1d_law_densities: LawDensities
                           ) -> Figure:
    """(a) per world and w: the tilted target's density (first coordinate), CFG's PF-ODE and SDE laws (dashed) and
    the histograms of the four samplers of the target, with the mean offsets of all six against pi; (b)-(d) the
    convergence of FKC (Monte Carlo and time discretisation) and of CFG + Langevin to pi against their cost."""
    ts = tilted_samplers
    fig = new_figure(21, 20.5, layout="constrained")
    outer = fig.add_gridspec(3, 1, height_ratios=[0.12, 3.0, 1.05])
    top = outer[1].subgridspec(3, 4, width_ratios=[1, 1, 1, 1.05])
    bottom = outer[2].subgridspec(1, 3)
    for r, world in enumerate(WORLDS):
        for c, w in enumerate(WS):
            ax = fig.add_subplot(top[r, c])
            _density_panel(ax, ts, bimodal1d_law_densities, world, w)
            ax.set_xlabel("x" if world != "ring2d" else "$x_1$ (radial direction of class 0)")
            if c == 0:
                ax.set_ylabel("density")
        _offset_panel(fig.add_subplot(top[r, 3]), ts, world)
    _fkc_mc_panel(fig.add_subplot(bottom[0, 0]), fkc_convergence)
    _fkc_limit_panel(fig.add_subplot(bottom[0, 1]), fkc_convergence)
    _langevin_panel(fig.add_subplot(bottom[0, 2]), langevin_convergence, ts)
    handles = [Line2D([], [], color=TILTED_COLOUR, lw=2, label="target $\\pi$ (quadrature / closed form)"),
               Line2D([], [], color=ODE_COLOUR, lw=1.6, ls="--", label="CFG PF-ODE law (ring2d: DDIM samples)"),
               Line2D([], [], color=SDE_COLOUR, lw=1.6, ls="--", label="CFG reverse-SDE law (ring2d: DDPM samples)"),
               Patch(color=SAMPLER_COLOURS["exact"], alpha=0.3, label=SAMPLER_LABELS["exact"])]
    handles += [Line2D([], [], color=SAMPLER_COLOURS[s], lw=1.2, ls=":" if s == "mcmc" else "-",
                       label=SAMPLER_LABELS[s]) for s in SAMPLER_NAMES if s != "exact"]
    legend_ax = fig.add_subplot(outer[0])
    legend_ax.axis("off")
    legend_ax.legend(handles=handles, loc="center", ncol=4, frameon=False, fontsize=10)
    fig.suptitle("(a) Samplers of the CFG target $\\pi \\propto p(x|c)^{1+w}p(x)^{-w}$ against CFG's own laws "
                 "(histograms and mean offsets); (b)-(d) how the corrected samplers converge to $\\pi$",
                 fontsize=13, weight="bold")
    return fig
