"""The house style of every figure: rc settings, colours, colour maps, annotation boxes, axes helpers, saving.

Figure modules import these names; nothing here computes evidence.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

__all__ = ["RC", "CLASS_COLOURS", "ODE_COLOUR", "SDE_COLOUR", "TILTED_COLOUR", "NET_COLOUR", "EXACT_COLOUR",
           "DENSITY_CMAP", "new_figure", "save", "w_colours", "white_floor", "box", "log_y"]

#: matplotlib rc settings applied to every figure (``with mpl.rc_context(RC): ...``)
RC = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 9,
      "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.spines.top": False, "axes.spines.right": False}
#: one colour per class label (tab10, grey last)
CLASS_COLOURS = ListedColormap(["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                                "#bcbd22", "#17becf", "#7f7f7f"])
#: the probability-flow ODE (DDIM), the reverse SDE (DDPM), the tilted target
ODE_COLOUR, SDE_COLOUR, TILTED_COLOUR = "#1f77b4", "#ff7f0e", "k"
#: a trained network against the exact model
NET_COLOUR, EXACT_COLOUR = "#d62728", "#1f77b4"


def white_floor(name: str, n_blend: int = 12) -> ListedColormap:
    """Colour map ``name`` (light to dark) with its lowest ``n_blend`` of 256 colours blended into white, so that
    zero density reads as the white page."""
    colours = mpl.colormaps[name](np.linspace(0.0, 1.0, 256))
    ramp = np.clip(np.arange(256) / n_blend, 0.0, 1.0)[:, None]
    colours[:, :3] = ramp * colours[:, :3] + (1.0 - ramp)
    return ListedColormap(colours, name=f"{name}_white")


#: densities: magma reversed, zero as white
DENSITY_CMAP = white_floor("magma_r")


def new_figure(width: float, height: float, **kwargs) -> Figure:
    """A figure on an Agg canvas (no pyplot state), in the house style's size units (inches)."""
    fig = Figure(figsize=(width, height), **kwargs)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | pathlib.Path) -> pathlib.Path:
    """Write ``fig`` to ``path`` at 150 dpi, creating parent folders."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return path


def w_colours(ws: Sequence[float]) -> np.ndarray:
    """One viridis colour per guidance strength."""
    return mpl.colormaps["viridis"](np.linspace(0, 0.9, len(ws)))


def box(ax: Axes, text: str, x: float = 0.02, y: float = 0.03, ha: str = "left", va: str = "bottom") -> None:
    """A monospace annotation box in axes coordinates."""
    ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, fontsize=8.5, family="monospace",
            bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": "0.7", "alpha": 0.9})


def log_y(ax: Axes) -> None:
    """Log y axis with plain-number tick labels (0.1, 0.2, 0.5, 1, 2) instead of powers of ten."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(mpl.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(mpl.ticker.FuncFormatter(
        lambda v, _: f"{v:g}" if round(v / 10 ** math.floor(math.log10(v)), 6) in (2, 5) else ""))
    ax.grid(True, which="major", axis="y", color="0.9", lw=0.8)
