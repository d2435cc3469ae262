"""Figures of the ground-truth worlds of :mod:`toy_models.scenarios`.

``plot_worlds(path)`` draws the six named worlds in one 2 x 3 PNG (matplotlib object API, Agg canvas, no
pyplot state). Run ``python -c "from verify.figures import plot_worlds; plot_worlds('figures/worlds.png')"``.
"""

from __future__ import annotations

import pathlib
import textwrap

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from toy_models.scenarios import WORLDS, get_world
from toy_models.world import World

__all__ = ["plot_worlds"]

_STYLE = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 9,
          "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.spines.top": False, "axes.spines.right": False}
_CLASS_COLOURS = ListedColormap(["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                                 "#bcbd22", "#17becf", "#7f7f7f"])  # tab10, grey last


def _density(law, x: np.ndarray) -> np.ndarray:
    """``exp(log p)`` of ``law`` at the points ``x`` (``[N, d]`` array), as a numpy array ``[N]``."""
    return torch.exp(law.log_prob(torch.as_tensor(x, dtype=torch.float64))).numpy()


def _title(ax: Axes, world: World) -> None:
    """Name in bold, then the world's description wrapped to the panel width."""
    ax.set_title(f"$\\bf{{{world.name}}}$\n" + textwrap.fill(world.description, 52), loc="left")


def _grid(lim: float, n: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Meshgrid ``X, Y`` on ``[-lim, lim]^2`` and the points ``[n*n, 2]``."""
    xs = np.linspace(-lim, lim, n)
    gx, gy = np.meshgrid(xs, xs)
    return gx, gy, np.stack([gx.ravel(), gy.ravel()], axis=1)


def _panel_gauss1d(ax: Axes, world: World, gen: torch.Generator, n: int) -> None:
    """Densities of p(x) and p(x | c) on [-4, 4]."""
    x = np.linspace(-4.0, 4.0, 600)
    for law, label, colour in [(world.law(None), "p(x) = N(0, 1)", "0.35"),
                               (world.law(1), "p(x | c) = N(1, 0.5)", "#d62728")]:
        y = _density(law, x[:, None])
        ax.plot(x, y, color=colour, lw=2, label=label)
        ax.fill_between(x, y, color=colour, alpha=0.15)
    ax.set(xlabel="x", ylabel="density", xlim=(-4, 4), ylim=(0, None))
    ax.legend(frameon=False, loc="upper left")


def _panel_bimodal1d(ax: Axes, world: World, gen: torch.Generator, n: int) -> None:
    """p(x) and each class's weighted density pi_c p(x | c)."""
    x = np.linspace(-4.5, 4.5, 600)
    gm = world.unconditional
    ax.plot(x, _density(gm, x[:, None]), color="0.6", lw=4, label="p(x)")
    for c in gm.classes.tolist():
        pi_c = float(gm.weights[gm.labels == c].sum())
        y = pi_c * _density(world.law(c), x[:, None])
        ax.plot(x, y, color=_CLASS_COLOURS(c), lw=1.5, ls="--", label=f"{pi_c:g} p(x | c={c})")
        ax.fill_between(x, y, color=_CLASS_COLOURS(c), alpha=0.2)
    ax.set(xlabel="x", ylabel="density", xlim=(-4.5, 4.5), ylim=(0, 1.3 * ax.get_ylim()[1]))
    ax.legend(frameon=False, loc="upper center", ncol=3, handlelength=1.5, columnspacing=1.0)


def _panel_ring2d(ax: Axes, world: World, gen: torch.Generator, n: int) -> None:
    """Filled contour of p(x) with samples coloured by class."""
    gm = world.unconditional
    gx, gy, pts = _grid(4.5)
    log_p = gm.log_prob(torch.as_tensor(pts)).numpy().reshape(gx.shape)
    cs = ax.contourf(gx, gy, np.maximum(log_p, log_p.max() - 12.0), levels=12, cmap="Greys", alpha=0.45)
    ax.figure.colorbar(cs, ax=ax, label="log p(x)", shrink=0.8, pad=0.02, ticks=[-12, -8, -4, 0])
    x, comp = gm.sample_with_components(n, gen)
    lab = gm.labels[comp].numpy()
    x = x.numpy()
    for c in gm.classes.tolist():
        ax.scatter(*x[lab == c].T, s=2, color=_CLASS_COLOURS(c), alpha=0.6, label=str(c), rasterized=True)
    ax.legend(title="class", frameon=False, loc="center", ncol=2, markerscale=3, handletextpad=0.2,
              columnspacing=0.8)
    ax.set(xlabel="$x_1$", ylabel="$x_2$", xlim=(-4.5, 4.5), ylim=(-4.5, 4.5), aspect="equal")


def _panel_attributes2d(ax: Axes, world: World, gen: torch.Generator, n: int) -> None:
    """Samples coloured by colour attribute, marked by shape, token pairs annotated at the means."""
    gm = world.unconditional
    gx, gy, pts = _grid(4.0)
    ax.contour(gx, gy, _density(gm, pts).reshape(gx.shape), levels=6, colors="0.6", linewidths=0.7)
    x, comp = gm.sample_with_components(n, gen)
    x, comp = x.numpy(), comp.numpy()
    colours, shapes = gm.attributes["colour"], gm.attributes["shape"]
    palette, markers = {"red": "#d62728", "blue": "#1f77b4"}, {"dog": "o", "cat": "^"}
    for k, mu in enumerate(gm.means.numpy()):
        ax.scatter(*x[comp == k].T, s=6, color=palette[colours[k]], marker=markers[shapes[k]], alpha=0.5,
                   label=f"{colours[k]} {shapes[k]}", rasterized=True)
        ax.annotate(f"{colours[k]} {shapes[k]}", mu, xytext=(0, 22 if shapes[k] == "dog" else -28),
                    textcoords="offset points", ha="center", fontsize=10, weight="bold",
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8})
    ax.legend(frameon=False, loc="center", markerscale=2.5)
    ax.set(xlabel="$x_1$ (colour: red < 0 < blue)", ylabel="$x_2$ (shape: cat < 0 < dog)",
           xlim=(-4, 4), ylim=(-4, 4), aspect="equal")


def _panel_tokens16d(ax: Axes, world: World, gen: torch.Generator, n: int) -> None:
    """Heatmap of the component means, rows sorted by label and tick-labelled with their tokens."""
    gm = world.unconditional
    order = np.argsort(gm.labels.numpy(), kind="stable")
    means = gm.means.numpy()[order]
    blocks = [gm.attributes[f"block{j}"] for j in range(len(gm.attributes))]
    ticks = [f"{int(gm.labels[k])}: " + " ".join(b[k] for b in blocks) for k in order]
    vmax = float(np.abs(means).max())
    im = ax.imshow(means, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    block_size = means.shape[1] // len(blocks)
    for j in range(1, len(blocks)):
        ax.axvline(j * block_size - 0.5, color="k", lw=1.2)
    ax.set_yticks(range(len(order)), ticks, fontsize=9, family="monospace")
    ax.set_xticks(range(means.shape[1]))
    ax.tick_params(axis="x", labelsize=9)
    ax.set(xlabel="position", ylabel="component (label)")
    ax.figure.colorbar(im, ax=ax, label="mean", shrink=0.9, pad=0.02)


def _panel_highdim(ax: Axes, world: World, gen: torch.Generator, n: int) -> None:
    """2-D PCA projection of samples coloured by class label."""
    gm = world.unconditional
    x, comp = gm.sample_with_components(n, gen)
    x, lab = x.numpy().astype(np.float64), gm.labels[comp].numpy()
    centred = x - x.mean(axis=0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    ratio = sv**2 / np.sum(sv**2)
    proj = centred @ vt[:2].T
    for c in gm.classes.tolist():
        ax.scatter(*proj[lab == c].T, s=5, color=_CLASS_COLOURS(c % 10), alpha=0.7, label=str(c),
                   rasterized=True)
    ax.legend(title="class", frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=3,
              handletextpad=0.2)
    ax.set(xlabel=f"PC 1 ({100 * ratio[0]:.1f}% of variance)",
           ylabel=f"PC 2 ({100 * ratio[1]:.1f}% of variance)")


_PANELS = {"gauss1d": _panel_gauss1d, "bimodal1d": _panel_bimodal1d, "ring2d": _panel_ring2d,
           "attributes2d": _panel_attributes2d, "tokens16d": _panel_tokens16d, "highdim": _panel_highdim}
#: every panel is ``f(ax, world, generator, n_samples)``; the 1-D and tokens16d panels draw no samples


def plot_worlds(path: str | pathlib.Path, *, n_samples: int = 2000, seed: int = 0) -> pathlib.Path:
    """Draw the six named worlds of :data:`toy_models.scenarios.WORLDS` in one 2 x 3 PNG.

    Parameters
    ----------
    path : str or pathlib.Path
        Output PNG; parent directories are created.
    n_samples : int, optional
        Samples drawn for each scatter panel (ring2d, attributes2d, highdim).
    seed : int, optional
        Seed of the one ``torch.Generator`` that all sampling uses.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    import matplotlib as mpl

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(15, 9.5), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(2, 3)
        for ax, name in zip(axes.ravel(), WORLDS, strict=True):
            world = get_world(name)
            _PANELS[name](ax, world, gen, n_samples)
            _title(ax, world)
        fig.suptitle("cfgtruth worlds: the six ground-truth Gaussian-mixture worlds", fontsize=14,
                     weight="bold")
        fig.savefig(path, dpi=150)
    return path
