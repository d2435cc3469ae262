"""The rule gallery: one panel per registered guidance rule, drawn from the provider
:func:`verify.evidence.rule_gallery.rule_gallery` (samples and summaries computed there, nothing here)."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import torch
from matplotlib.figure import Figure

from toy_models import get_world
from verify.evidence.rule_gallery import CONDITIONS, RuleGallery

from . import figure
from .style import new_figure

__all__ = ["draw_rule_gallery"]

#: the class's neighbourhood: every panel shows at least this window (x_lo, x_hi, y_lo, y_hi)
CLASS_BOX = (0.5, 5.5, -2.5, 2.5)
COLS = 4
REGION_FILL, REGION_EDGE = "#dbe9f6", "#4a7fb5"
UNGUIDED_COLOUR, GUIDED_COLOUR = "#333333", "#c0392b"


def _window(x: np.ndarray, window: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """The class's window, widened to the samples' central 98 % where more than 2 % of them fall outside it."""
    x_lo, x_hi, y_lo, y_hi = window
    outside = (x[:, 0] < x_lo) | (x[:, 0] > x_hi) | (x[:, 1] < y_lo) | (x[:, 1] > y_hi)
    if outside.mean() <= 0.02:
        return window
    q_lo, q_hi = np.quantile(x, 0.01, axis=0), np.quantile(x, 0.99, axis=0)
    x_lo, x_hi = min(x_lo, q_lo[0]), max(x_hi, q_hi[0])
    y_lo, y_hi = min(y_lo, q_lo[1]), max(y_hi, q_hi[1])
    pad = 0.05 * max(x_hi - x_lo, y_hi - y_lo)
    return x_lo - pad, x_hi + pad, y_lo - pad, y_hi + pad


def _title(name: str, described: str) -> str:
    """The rule's name on the first line, its parameters wrapped below."""
    if name == "unguided":
        return "unguided (conditional model)"
    inner = described[len(name) + 1:-1] if described.startswith(name + "(") else described
    return name + "\n" + "\n".join(textwrap.wrap(inner, 44)) if inner else name


@figure("rule_gallery.png")
def draw_rule_gallery(rule_gallery: RuleGallery) -> Figure:
    """One panel per rule (the unguided model and CFG first): the samples over the provider's 99 % region of
    p(x|c), and the provider's summaries in the panel. Panels whose samples leave the class's neighbourhood widen to
    show where they went."""
    data = rule_gallery
    order = data.order
    target = get_world("ring2d").law(CONDITIONS["cond"])  # the region's density, drawn at the provider's level
    level = data.hdr99_level
    rows = math.ceil(len(order) / COLS)
    fig = new_figure(3.0 * COLS, 3.6 * rows, layout="constrained")
    for k, name in enumerate(order):
        entry = data.entries[name]
        x = entry.samples
        x_lo, x_hi, y_lo, y_hi = _window(x, CLASS_BOX)
        gx, gy = np.meshgrid(np.linspace(x_lo, x_hi, 240), np.linspace(y_lo, y_hi, 240))
        pts = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], 1))
        log_p = target.log_prob(pts).numpy().reshape(gx.shape)
        ax = fig.add_subplot(rows, COLS, k + 1)
        ax.contourf(gx, gy, log_p, levels=[level, max(level, float(log_p.max())) + 1], colors=[REGION_FILL])
        ax.contour(gx, gy, log_p, levels=[level], colors=[REGION_EDGE], linewidths=0.8)
        ax.scatter(x[:, 0], x[:, 1], s=2, c=UNGUIDED_COLOUR if name == "unguided" else GUIDED_COLOUR, alpha=0.3,
                   linewidths=0, rasterized=True)
        # the summaries under the panel, where they never cover samples that left the class's neighbourhood
        ax.set_xlabel(f"in 99% region {entry.in_hdr99:.3f} ± {entry.in_hdr99_se:.3f}\n"
                      f"overshoot {entry.overshoot:+.2f}, spread {entry.spread_ratio:.2f}x", fontsize=8,
                      family="monospace")
        ax.set_title(_title(name, entry.rule), fontsize=8)
        ax.set_xlim(x_lo, x_hi)
        ax.set_ylim(y_lo, y_hi)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
    fig.suptitle(f"Every registered rule on ring2d class 0, DDIM {data.steps} steps from the same {data.n} starts "
                 f"(shaded: the 99% region of p(x|c); strength {data.guidance_scale:g} where a rule takes one)",
                 fontsize=10)
    return fig
