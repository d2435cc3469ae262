"""``worlds.png``: the named ground-truth worlds, drawn from :func:`verify.evidence.worlds.world_portraits`."""

from __future__ import annotations

import textwrap

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from verify.evidence.bayes import BayesIdentity
from verify.evidence.worlds import (
    ImagePortrait,
    LinePortrait,
    MeansPortrait,
    PlanePortrait,
    ProjectionPortrait,
    WorldPortrait,
    WorldPortraits,
)

from . import figure
from .style import CLASS_COLOURS, new_figure

GAUSS_COLOURS = {None: "0.35", 1: "#d62728"}
ATTRIBUTE_PALETTE, ATTRIBUTE_MARKERS = {"red": "#d62728", "blue": "#1f77b4"}, {"dog": "o", "cat": "^"}


def _title(ax: Axes, world: WorldPortrait, note: str = "") -> None:
    """Name in bold, then the world's description wrapped to the panel width, then ``note``."""
    ax.set_title(f"$\\bf{{{world.name}}}$\n" + textwrap.fill(world.description, 52)
                 + (f"\n{note}" if note else ""), loc="left")


def _line(ax: Axes, p: LinePortrait) -> None:
    lim = (float(p.x[0]), float(p.x[-1]))
    if all(c.weight == 1.0 for c in p.curves):  # p(x) and p(x|c) given separately
        for c in p.curves:
            colour = GAUSS_COLOURS.get(c.condition, CLASS_COLOURS(c.condition or 0))
            ax.plot(p.x, c.density, color=colour, lw=2, label=c.label)
            ax.fill_between(p.x, c.density, color=colour, alpha=0.15)
        ax.set(xlabel="x", ylabel="density", xlim=lim, ylim=(0, None))
        ax.legend(frameon=False, loc="upper left")
        return
    for c in p.curves:
        if c.condition is None:
            ax.plot(p.x, c.density, color="0.6", lw=4, label=c.label)
        else:
            ax.plot(p.x, c.density, color=CLASS_COLOURS(c.condition), lw=1.5, ls="--", label=c.label)
            ax.fill_between(p.x, c.density, color=CLASS_COLOURS(c.condition), alpha=0.2)
    ax.set(xlabel="x", ylabel="density", xlim=lim, ylim=(0, 1.3 * ax.get_ylim()[1]))
    ax.legend(frameon=False, loc="upper center", ncol=3, handlelength=1.5, columnspacing=1.0)


def _plane_classes(ax: Axes, p: PlanePortrait) -> None:
    """Filled contours of log p(x) (12 units below its max) with the samples coloured by class."""
    lim = float(p.axis[-1])
    cs = ax.contourf(p.axis, p.axis, np.maximum(p.log_density, p.log_density.max() - 12.0), levels=12, cmap="Greys",
                     alpha=0.45)
    ax.figure.colorbar(cs, ax=ax, label="log p(x)", shrink=0.8, pad=0.02, ticks=[-12, -8, -4, 0])
    for c in p.classes:
        ax.scatter(*p.samples[p.labels == c].T, s=2, color=CLASS_COLOURS(c), alpha=0.6, label=str(c),
                   rasterized=True)
    ax.legend(title="class", frameon=False, loc="center", ncol=2, markerscale=3, handletextpad=0.2,
              columnspacing=0.8)
    ax.set(xlabel="$x_1$", ylabel="$x_2$", xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")


def _plane_attributes(ax: Axes, p: PlanePortrait) -> None:
    """Contours of p(x); samples coloured by colour token, marked by shape token; token pairs at the means."""
    lim = float(p.axis[-1])
    ax.contour(p.axis, p.axis, np.exp(p.log_density), levels=6, colors="0.6", linewidths=0.7)
    for k, (mu, (colour, shape)) in enumerate(zip(p.means, p.tokens, strict=True)):
        ax.scatter(*p.samples[p.components == k].T, s=6, color=ATTRIBUTE_PALETTE[colour],
                   marker=ATTRIBUTE_MARKERS[shape], alpha=0.5, label=f"{colour} {shape}", rasterized=True)
        ax.annotate(f"{colour} {shape}", mu, xytext=(0, 22 if shape == "dog" else -28), textcoords="offset points",
                    ha="center", fontsize=10, weight="bold",
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8})
    ax.legend(frameon=False, loc="center", markerscale=2.5)
    ax.set(xlabel="$x_1$ (colour: red < 0 < blue)", ylabel="$x_2$ (shape: cat < 0 < dog)", xlim=(-lim, lim),
           ylim=(-lim, lim), aspect="equal")


def _means(ax: Axes, p: MeansPortrait) -> None:
    vmax = float(np.abs(p.means).max())
    im = ax.imshow(p.means, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    for j in range(1, p.means.shape[1] // p.block_size):
        ax.axvline(j * p.block_size - 0.5, color="k", lw=1.2)
    ax.set_yticks(range(len(p.ticks)), p.ticks, fontsize=9, family="monospace")
    ax.set_xticks(range(p.means.shape[1]))
    ax.set(xlabel="position", ylabel="component (label)")
    ax.figure.colorbar(im, ax=ax, label="mean", shrink=0.9, pad=0.02)


def _projection(ax: Axes, p: ProjectionPortrait) -> None:
    for c in p.classes:
        ax.scatter(*p.projection[p.labels == c].T, s=5, color=CLASS_COLOURS(c % 10), alpha=0.7, label=str(c),
                   rasterized=True)
    ax.legend(title="class", frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=3,
              handletextpad=0.2)
    ax.set(xlabel=f"PC 1 ({100 * p.variance_ratio[0]:.1f}% of variance)",
           ylabel=f"PC 2 ({100 * p.variance_ratio[1]:.1f}% of variance)")


def _mosaic(rows: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """Rows of ``[n, H, W, 3]`` images (data scale [-1, 1]) as one RGB array in [0, 1], white gaps between images
    and rows; values outside [-1, 1] are clipped here, for display only."""
    h, w = rows[0].shape[1:3]
    width = max(len(r) for r in rows) * (w + gap) - gap
    out = np.ones((len(rows) * (h + gap) - gap, width, 3))
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            out[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = np.clip((img + 1) / 2, 0, 1)
    return out


def _images(ax: Axes, p: ImagePortrait) -> None:
    """Three rows: component means, samples of p(x | condition), samples of p(x)."""
    rows = [p.means, p.conditional, p.unconditional]
    ax.imshow(_mosaic(rows), interpolation="nearest")
    h = p.means.shape[1]
    names = ["means", "p(x | c)", "p(x)"]
    ax.set_yticks([i * (h + 2) + h / 2 for i in range(3)], names, fontsize=9)
    ax.set_xticks([j * (h + 2) + h / 2 for j in range(len(p.mean_tokens))],
                  ["\n".join(t) for t in p.mean_tokens], fontsize=7)
    ax.tick_params(length=0)
    ax.set_xlabel(f"c = {' '.join(p.condition)}; RGB from [-1, 1] to [0, 1], clipped for display only\n"
                  f"pixels of {p.range_samples} p(x) draws outside [-1, 1]: {p.out_of_range:.1e}", fontsize=8)
    for side in ax.spines.values():
        side.set_visible(False)


def _bayes_line(bayes: BayesIdentity, name: str) -> str:
    """S0-BAYES's result on this world: the largest error over its rounding bound, or why it is not checked."""
    entry = {w.name: w for w in bayes.worlds}.get(name)
    if entry is None:
        return ""
    if not entry.joint_law:
        return "S0-BAYES: holds by definition (no joint law)"
    return f"S0-BAYES: max error {entry.max_error_over_bound:.2g} of its rounding bound"


@figure("worlds.png")
def worlds(world_portraits: WorldPortraits, bayes_identity: BayesIdentity) -> Figure:
    """The six low-dimensional worlds in a 2 x 3 grid (exact densities and samples of each world's own law, each
    panel with its S0-BAYES result: largest error of the score decomposition over its derived rounding bound), the
    image worlds in a third row (means and samples as RGB images)."""
    dense = [w for w in world_portraits.worlds if not isinstance(w.portrait, ImagePortrait)]
    images = [w for w in world_portraits.worlds if isinstance(w.portrait, ImagePortrait)]
    fig = new_figure(15, 9.5 + 4.5 * bool(images), layout="constrained")
    grid = fig.add_gridspec(2 + bool(images), 6, height_ratios=[1, 1] + [0.9] * bool(images))
    axes = [fig.add_subplot(grid[i // 3, 2 * (i % 3):2 * (i % 3) + 2]) for i in range(len(dense))]
    if images:
        span = 6 // len(images)
        for j, world in enumerate(images):
            ax = fig.add_subplot(grid[2, j * span:(j + 1) * span])
            _images(ax, world.portrait)
            _title(ax, world)
    for ax, world in zip(axes, dense, strict=True):
        p = world.portrait
        if isinstance(p, LinePortrait):
            _line(ax, p)
        elif isinstance(p, PlanePortrait):
            (_plane_attributes if p.tokens else _plane_classes)(ax, p)
        elif isinstance(p, MeansPortrait):
            _means(ax, p)
        else:
            _projection(ax, p)
        _title(ax, world, _bayes_line(bayes_identity, world.name))
    fig.suptitle(f"cfgtruth worlds: the ground-truth Gaussian-mixture worlds ({world_portraits.n_samples} samples "
                 "per scatter panel)", fontsize=14, weight="bold")
    return fig
