"""``trajectories_ring2d.png`` (L-OVERSHOOT): the paths of the first points of the ledger's ring2d runs
(:func:`verify.evidence.laws.ring2d_cfg_samples`: DDIM and DDPM, class 0, the same starts for every w) over the data
law's log density."""

from __future__ import annotations

import matplotlib as mpl
import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from verify.evidence.laws import RingSamples
from verify.samplers import time_grid

from . import figure
from .style import new_figure

SHOWN = ("0", "3", "7")


@figure("trajectories_ring2d.png")
def trajectories_ring2d(ring2d_cfg_samples: RingSamples) -> Figure:
    """Rows: the ODE sampler (DDIM) and the SDE sampler (DDPM); columns: w. Paths coloured by time, starts white,
    ends black; each panel says how many paths end in the class's region and where they end along the class."""
    rs = ring2d_cfg_samples
    lim = float(rs.grid_axis[-1])
    gx, gy = np.meshgrid(rs.grid_axis, rs.grid_axis)
    log_p = rs.log_p_grid
    times = time_grid(rs.steps).numpy()
    t_mid = 0.5 * (times[:-1] + times[1:])
    cmap, norm = mpl.colormaps["plasma"], Normalize(0.0, 1.0)
    ode, sde = rs.samplers
    names = {ode: f"{ode.upper()}, {rs.steps} steps\n(deterministic: the guided PF-ODE)",
             sde: f"{sde.upper()}, {rs.steps} steps\n(stochastic: the guided reverse SDE)"}
    fig = new_figure(15, 10.5, layout="constrained")
    axes = fig.subplots(2, len(SHOWN), sharex=True, sharey=True, squeeze=False)
    cs = None
    for i, name in enumerate(names):
        for j, w in enumerate(SHOWN):
            ax = axes[i, j]
            traj = rs.paths[name][w]
            cs = ax.contourf(gx, gy, np.maximum(log_p, log_p.max() - 12), levels=12, cmap="Greys", alpha=0.35)
            segments = np.stack([traj[:-1], traj[1:]], axis=2).transpose(1, 0, 2, 3).reshape(-1, 2, 2)
            lines = mpl.collections.LineCollection(segments, cmap=cmap, norm=norm, alpha=0.85 if i == 0 else 0.6,
                                                   linewidths=0.9 if i == 0 else 0.6)
            lines.set_array(np.tile(t_mid, traj.shape[1]))
            ax.add_collection(lines)
            ax.scatter(*traj[0].T, s=14, facecolor="white", edgecolor="0.3", lw=0.8, zorder=4)
            ax.scatter(*traj[-1].T, s=16, color="k", zorder=5)
            ax.scatter(*np.delete(rs.class_means, rs.condition, axis=0).T, s=70, marker="x", color="#1f77b4", lw=2,
                       zorder=6)
            ax.scatter(*rs.class_means[rs.condition], s=220, marker="*", color="#d62728", edgecolor="k", zorder=6)
            radius = np.hypot(*traj[-1].T)
            ax.text(0.02, 0.02, f"{rs.paths_ending_in_class[name][w]}/{traj.shape[1]} end in class {rs.condition}'s "
                    f"region\nend radius {radius.mean():.2f} $\\pm$ {radius.std():.2f} (class mean at 3)",
                    transform=ax.transAxes, fontsize=9,
                    bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "none", "alpha": 0.85})
            ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
            if i == 0:
                ax.set_title(f"w = {w}" + (" (conditional)" if w == "0" else ""), fontsize=12)
            if i == 1:
                ax.set_xlabel("$x_1$")
        axes[i, 0].set_ylabel(f"{names[name]}\n\n$x_2$")
    fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, location="right", shrink=0.45,
                 label="time t along the path (1: noise, 0: data)")
    fig.colorbar(cs, ax=axes, location="right", shrink=0.45, label="log p(x) of the data law")
    handles = [mpl.lines.Line2D([], [], ls="", marker="o", mfc="white", mec="0.3",
                                label="start, t = 1 (noised conditional, close to N(0, I))"),
               mpl.lines.Line2D([], [], ls="", marker="o", color="k", label="end, t = 0"),
               mpl.lines.Line2D([], [], ls="", marker="*", ms=13, color="#d62728", mec="k",
                                label=f"mean of class {rs.condition} (guided towards)"),
               mpl.lines.Line2D([], [], ls="", marker="x", ms=8, mew=2, color="#1f77b4",
                                label="means of the other classes")]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, frameon=False)
    n_paths = rs.paths[ode][SHOWN[0]].shape[1]
    fig.suptitle(f"CFG paths on ring2d towards class {rs.condition}, the first {n_paths} of the ledger's "
                 f"{rs.n // 1000}k per run, same starts: as w grows the ODE's swing out past the class and\nend "
                 "beyond its mean, collapsed to a point; the SDE's end around the mean with their spread",
                 fontsize=13, weight="bold")
    return fig
