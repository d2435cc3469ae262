"""``image_guidance.png``: guided samples against the guidance scale, per rule, on shapes16's Gaussian pair (exact),
on shapes16 itself (exact) and on the trained network, all from the same start noise, with the share of values out
of range and the contrast they reach (:func:`verify.evidence.image_guidance.image_guidance`)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from verify.evidence.image_guidance import JOINT_VARIANTS, VARIANTS, ImageGuidance

from . import figure
from .style import NET_COLOUR, new_figure

LABELS = {"cfg": "CFG", "rescale_v": "rescale (v)", "rescale_eps": "rescale (eps)", "apg": "APG (eta = 0)",
          "cfg_zero_star": "CFG-Zero*", "dynamic_threshold": "dynamic thr."}
COLOURS = {"cfg": "k", "rescale_v": "#1f77b4", "rescale_eps": "#17becf", "apg": "#2ca02c",
           "cfg_zero_star": "#9467bd", "dynamic_threshold": "#ff7f0e"}
MODEL_NAMES = {"gaussian": "Gaussian pair", "joint": "shapes16", "network": "network"}


def _rgb(image) -> np.ndarray:
    """``[C, H, W]`` values in [-1, 1] -> ``[H, W, 3]`` in [0, 1] (clipped for display only)."""
    arr = np.asarray(image, dtype=float)
    return np.clip((arr.transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0)


def _strip(arm) -> np.ndarray:
    """The first two kept images side by side (a white gap between)."""
    a, b = _rgb(arm.images[0]), _rgb(arm.images[1])
    return np.concatenate([a, np.ones((a.shape[0], 1, 3)), b], axis=1)


def _blank(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)


@figure("image_guidance.png")
def image_guidance(image_guidance: ImageGuidance) -> Figure:
    ev = image_guidance
    rows = [("gaussian", v) for v in VARIANTS] + [(m, v) for m in ("joint", "network") for v in JOINT_VARIANTS
                                                   if not ev.runs(m).skipped]
    ws = ev.ws
    fig = new_figure(14.5, 1.05 * len(rows) + 1.2, layout="constrained")
    grid = fig.add_gridspec(len(rows), len(ws) + 2, width_ratios=[1.0] * len(ws) + [0.15, 3.2])
    for r, (model, v) in enumerate(rows):
        for c, w in enumerate(ws):
            ax = fig.add_subplot(grid[r, c])
            _blank(ax)
            arms = ev.runs(model).arms[v]
            if f"{w:g}" in arms:
                ax.imshow(_strip(arms[f"{w:g}"]), interpolation="nearest")
            if r == 0:
                ax.set_title(f"scale {1 + w:g}")
            if c == 0:
                ax.set_ylabel(f"{MODEL_NAMES[model]}\n{LABELS[v]}", rotation=0, ha="right", va="center",
                              fontsize=8.5)
    half = len(rows) // 2
    oor = fig.add_subplot(grid[:half, len(ws) + 1])
    std = fig.add_subplot(grid[half:, len(ws) + 1])
    for model, ls, marker in (("gaussian", "-", "o"), ("network", "--", "s")):
        if ev.runs(model).skipped:
            continue
        for v, by_w in ev.runs(model).arms.items():
            keys = [w for w in ws if f"{w:g}" in by_w]
            arms = [by_w[f"{w:g}"] for w in keys]
            scales = [1 + w for w in keys]
            label = f"{LABELS[v]}" + (" (network)" if model == "network" else "")
            oor.errorbar(scales, [100 * a.out_of_range for a in arms], [196 * a.out_of_range_se for a in arms],
                         color=COLOURS[v], ls=ls, marker=marker, ms=3.5, lw=1.3, capsize=2, label=label)
            std.errorbar(scales, [a.pixel_std for a in arms], [1.96 * a.pixel_std_se for a in arms],
                         color=COLOURS[v], ls=ls, marker=marker, ms=3.5, lw=1.3, capsize=2)
    exact = sorted(ev.exact_laws.values(), key=lambda law: law.w)
    oor.plot([1 + law.w for law in exact], [100 * law.out_of_range for law in exact], color=NET_COLOUR, lw=0,
             marker="x", ms=8, label="CFG on the pair, exact law")
    oor.axhline(100 * ev.data_out_of_range, color="0.5", lw=1, ls=":", label="data p(x|c)")
    std.axhline(ev.data_pixel_std, color="0.5", lw=1, ls=":", label="data p(x|c)")
    oor.set(ylabel="values outside [-1, 1] (%)", xscale="log", yscale="symlog",
            title="over-exposure: share of values out of range (95 % CI)")
    oor.set_yscale("symlog", linthresh=0.01)
    oor.set_ylim(bottom=0.0)
    std.set(xlabel="guidance scale 1 + w", ylabel="std over a sample's values", xscale="log", yscale="log",
            title="contrast: standard deviation over a sample's values")
    scales = [1 + w for w in ws]
    for ax in (oor, std):
        ax.set_xticks(scales, [f"{s:g}" for s in scales])
        ax.minorticks_off()
    oor.legend(frameon=False, fontsize=7.5, ncol=2, loc="upper left")
    std.legend(frameon=False, fontsize=7.5)
    fig.suptitle(f"{ev.world}, condition '{' '.join(ev.condition)}', DDIM {ev.steps} steps, the same start noise "
                 "in every tile (two samples each; images clipped to [-1, 1] for display only)\n"
                 "right: solid lines the Gaussian pair (exact model), dashed the trained network", fontsize=10)
    return fig
