"""``image_attention.png``: where each token of the shapes16 network is read on its patch grid, beside the image it
describes (:func:`verify.evidence.image_attention.image_attention`; the images block of S0-XATTN).

Rows: the conditions of :data:`~verify.evidence.image_attention.FIGURE_CONDITIONS`. Columns: the conditional mean
image with the object's outline, then each token's map over the 16 patches at :data:`FIGURE_T` in its best layer
(the layer with the most mass in the object's patches), spread over the pixels and laid over the image in grey;
red is above a uniform map's 1/P per patch, blue below. Right: the mass in the object's patches by t for each token
kind (best layer) against the area fraction of those patches, filled where the permutation test says the map
follows the object, crossed where it says the map avoids it (Holm over all tests).
"""

from __future__ import annotations

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from verify.evidence.image_attention import FIGURE_CONDITIONS, KINDS, ImageAttention

from . import figure
from .style import box, new_figure

__all__ = ["FIGURE_T", "draw_image_attention"]

#: the noise level whose maps the image panels draw (the summary panel has every t)
FIGURE_T = "0.1"
KIND_COLOURS = {"position": "#1f77b4", "shape": "#2ca02c", "colour": "#d62728"}


def _rgb(image) -> np.ndarray:
    """``[C, H, W]`` values in [-1, 1] -> ``[H, W, 3]`` in [0, 1] (clipped for display only)."""
    return np.clip((np.asarray(image, dtype=float).transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0)


def _blank(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _outline(ax, mask, colour: str = "k") -> None:
    ax.contour(np.asarray(mask, dtype=float), levels=[0.5], colors=colour, linewidths=1.2)


@figure("image_attention.png")
def draw_image_attention(image_attention: ImageAttention) -> Figure:
    """Token maps of the shapes16 network on the image, and the mass in the object's patches by t (module
    docstring)."""
    ev = image_attention
    if ev.skipped:
        fig = new_figure(8, 2.5)
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, f"image attention\n\nnot drawn: {ev.skipped}", ha="center", va="center",
                transform=ax.transAxes, wrap=True)
        return fig
    keys = [" ".join(c) for c in FIGURE_CONDITIONS]
    layers = {k: ev.best_layer(FIGURE_T, k) for k in KINDS}
    uniform = 1.0 / len(ev.coverage[keys[0]])
    fig = new_figure(14.0, 2.3 * len(keys) + 0.9, layout="constrained")
    grid = fig.add_gridspec(len(keys), len(KINDS) + 3, width_ratios=[1.0] * (len(KINDS) + 1) + [0.08, 2.6])
    # one colour scale for every map panel: up to the largest patch value drawn (at least twice uniform)
    top = max(float(np.asarray(ev.maps[FIGURE_T][k])[layers[kind], c].max()) for k in keys
              for c, kind in enumerate(KINDS))
    norm = TwoSlopeNorm(vmin=0.0, vcenter=uniform, vmax=max(top, 2 * uniform))
    im = None
    for r, key in enumerate(keys):
        rgb, mask = _rgb(ev.mean_images[key]), np.asarray(ev.masks[key])
        ax = fig.add_subplot(grid[r, 0])
        ax.imshow(rgb, interpolation="nearest")
        _outline(ax, mask, "w")
        _blank(ax)
        ax.set_ylabel(key.replace(" ", "\n", 1), fontsize=9)
        if r == 0:
            ax.set_title("p(x | c): mean image")
        grey = rgb.mean(-1)
        for c, kind in enumerate(KINDS):
            layer = layers[kind]
            pixels = np.asarray(ev.pixel_maps[FIGURE_T][key])[layer, c]  # [H, W], a patch's probability per pixel
            ax = fig.add_subplot(grid[r, c + 1])
            ax.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            im = ax.imshow(pixels, cmap="RdBu_r", alpha=0.7, interpolation="nearest", norm=norm)
            _outline(ax, mask)
            _blank(ax)
            token = key.split(" ")[{"colour": 0, "shape": 1, "position": 2}[kind]]
            mass = float(np.asarray(ev.maps[FIGURE_T][key])[layer, c][np.asarray(ev.coverage[key]) > 0].sum())
            ax.set_title(f"'{token}'\n{kind} token, layer {layer}", fontsize=9)
            box(ax, f"{mass:.2f} in object", x=0.03, y=0.03)
    if im is not None:
        cax = fig.add_subplot(grid[:, len(KINDS) + 1])
        bar = fig.colorbar(im, cax=cax)
        bar.set_label("token's map: the share of its attention on each patch",
                      fontsize=8.5)
        bar.set_ticks([0.0, uniform, norm.vmax], labels=["0", f"1/{round(1 / uniform)}", f"{norm.vmax:.2f}"])
    ax = fig.add_subplot(grid[:, len(KINDS) + 2])
    times = [float(t) for t in ev.times]
    for kind in KINDS:
        best = [ev.best(t, kind) for t in ev.times]
        ax.plot(times, [s.mass_in_object for s in best], color=KIND_COLOURS[kind], lw=1.6, label=f"{kind} token")
        for x, s in zip(times, best, strict=True):
            marker = "o" if s.follows else ("X" if s.avoids else "o")
            ax.plot(x, s.mass_in_object, marker=marker, ms=8, color=KIND_COLOURS[kind],
                    mfc=KIND_COLOURS[kind] if (s.follows or s.avoids) else "white")
    area = [ev.best(t, "position").area_fraction for t in ev.times]
    ax.plot(times, area, "k--", lw=1.2, label="area fraction of the object's patches (uniform map)")
    ax.set_xlabel("t")
    ax.set_xticks(times)
    ax.set_ylabel("mass of the token's map in the object's patches (best layer)")
    ax.set_title(f"mean over {len(ev.conditions)} conditions, {ev.n} points each")
    ax.legend(loc="upper right", fontsize=8.5)
    box(ax, f"filled o: follows the object\nX: avoids it\nopen: neither\n(permutation tests, Holm {ev.alpha:g}\n"
            f"over {ev.hypotheses})", x=0.97, y=0.55, ha="right", va="center")
    fig.suptitle("shapes16 network: where each token is read on the 4 x 4 patch grid "
                 f"(image panels: t = {FIGURE_T}, best layer per token kind)")
    return fig
