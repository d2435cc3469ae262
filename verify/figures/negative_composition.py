"""Negative prompts and composition on attributes2d (:mod:`verify.evidence.attributes`):

* ``negative_and_composition.png``: the implied laws on a grid (top: negative prompts; bottom: composition and
  source 000's density as written), with the records' masses and tail growth;
* ``negative_composition_samples.png``: the sampled cases the records read (the provider's samples) over those laws,
  with the samples' fractions and the laws' masses per region.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from verify.evidence.attributes import (
    AttributeSamples,
    AttributeTargetGrids,
    CompositionLaw,
    NegativePromptLaws,
)

from . import figure
from .style import DENSITY_CMAP, box, new_figure

TOKEN_ORDER = {"red": 0, "blue": 1, "dog": 2, "cat": 3}
X1_LABEL, X2_LABEL = "$x_1$ (colour: red < 0 < blue)", "$x_2$ (shape: cat < 0 < dog)"
REGION_LABELS = {"red_dog": "red-dog quadrant", "red_side": "red side", "purple_band": "purple band",
                 "past_blue_dog": "past the blue dog"}
SAMPLE_COLOURS = {"dog": "#2ca02c", "negative_001": "#1f77b4", "negative_000": "#17becf", "compose": "#9467bd"}


def cond_words(cond: Hashable) -> str:
    """A condition in mathtext: ``None`` -> "", tokens in the order colour, shape."""
    if cond is None:
        return ""
    tokens = cond if isinstance(cond, tuple | frozenset) else (cond,)
    return r"\,|\," + r"\ ".join(rf"\mathrm{{{t}}}" for t in sorted(tokens, key=lambda t: TOKEN_ORDER.get(t, 9)))


def formula(terms: Sequence[tuple[Hashable, float]]) -> str:
    r"""Mathtext of :math:`\prod_i p(x|c_i)^{e_i}` from ``(condition, exponent)`` pairs (exponent 1 omitted)."""
    parts = [f"p(x{cond_words(c)})" + ("" if e == 1 else f"^{{{e:g}}}") for c, e in terms if e != 0]
    return "$" + r"\,".join(parts) + "$"


def fmt_mass(value: float) -> str:
    """A probability to 4 decimals, or in scientific notation when it is positive but below 1e-4."""
    return f"{value:.0e}" if 0 < value < 1e-4 else f"{value:.4f}"


def _means(ax: Axes, grids: AttributeTargetGrids, colour: str = "k") -> None:
    """Mark and label the four component means."""
    for mu, (col, shape) in zip(grids.component_means, grids.component_tokens, strict=True):
        ax.scatter(*mu, s=22, marker="o" if shape == "dog" else "^", color=colour, edgecolor="white", lw=0.6,
                   zorder=5)
        ax.annotate(f"{col} {shape}", mu, xytext=(0, 9 if shape == "dog" else -15), textcoords="offset points",
                    ha="center", fontsize=9,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75})


def _density_panel(ax: Axes, grids: AttributeTargetGrids, density: np.ndarray, title: str, label: str = "density",
                   cmap: str | Colormap = DENSITY_CMAP) -> None:
    extent = (grids.x1[0], grids.x1[-1], grids.x2[0], grids.x2[-1])
    im = ax.imshow(density, origin="lower", extent=extent, cmap=cmap, interpolation="bilinear")
    ax.figure.colorbar(im, ax=ax, label=label, shrink=0.9, pad=0.02)
    ax.set_title(title, loc="left")


@figure("negative_and_composition.png")
def negative_and_composition(attribute_target_grids: AttributeTargetGrids, negative_prompt_laws: NegativePromptLaws,
                             composition_law: CompositionLaw) -> Figure:
    """Top: p(x|dog), source 001's and source 000's negative prompts; bottom: the two composed conditionals, their
    composition (with the record's band mass) and source 000's density as written (with the record's growth)."""
    grids, laws = attribute_target_grids, negative_prompt_laws
    t = grids.targets
    g = dict(t["negative_001"].terms)[("dog",)]
    gx, gy = np.meshgrid(grids.x1, grids.x2)
    fig = new_figure(18, 7.4, layout="constrained")
    axes = fig.subplots(2, 3, sharex=True, sharey=True)
    (a, b, c), (d, e, f) = axes
    _density_panel(a, grids, t["dog"].density,
                   "(a) no negative prompt:\n$p(x\\,|\\,\\mathrm{dog})$\nhalf red dogs, half blue dogs")
    _density_panel(b, grids, t["negative_001"].density,
                   f"(b) source 001, the negative replaces the null, g = {g:g}:\n{formula(t['negative_001'].terms)}\n"
                   f"mass moves far past the blue dog: peak at $x_1$ = {t['negative_001'].peak_x1:.1f}")
    _density_panel(c, grids, t["negative_000"].density,
                   f"(c) source 000, correct exponents, $w_+$ = {laws.w_pos:g}, $w_-$ = {laws.w_neg:g}:\n"
                   f"{formula(t['negative_000'].terms)}\nmass moves beyond the blue dog: peak at $x_1$ = "
                   f"{t['negative_000'].peak_x1:.1f}")
    for p, colour in ((grids.red_dog, "#d62728"), (grids.blue_dog, "#1f77b4")):
        d.contour(gx, gy, p, levels=p.max() * np.array([0.1, 0.3, 0.5, 0.7, 0.9]), colors=colour, linewidths=1.2)
    d.figure.colorbar(a.images[0], ax=d, shrink=0.9, pad=0.02).ax.set_visible(False)  # keep panels aligned
    d.set_title("(d) $p(x\\,|\\,\\mathrm{red\\ dog})$ (red) and $p(x\\,|\\,\\mathrm{blue\\ dog})$ (blue)\n"
                "the two laws being composed\ncontours at 10, 30, 50, 70, 90% of each peak", loc="left")
    e.axvspan(-1, 1, color="#9467bd", alpha=0.18, lw=0)
    _density_panel(e, grids, t["compose"].density, "(e) composition, weights 1 and 1: "
                   "$p(x\\,|\\,\\mathrm{red\\ dog})\\,p(x\\,|\\,\\mathrm{blue\\ dog})\\,/\\,p(x)$\n"
                   "the 'purple dog' between red and blue (shaded: $|x_1| < 1$)")
    e.text(3.5, -0.2, f"mass in the band\n$|x_1| < 1$: {composition_law.purple_mass:.4f}\n(quadrature error "
           f"{composition_law.quadrature_error:.0e})", color="#5b2c83", fontsize=11, weight="bold")
    _density_panel(f, grids, grids.written_log_density,
                   f"(f) as written in source 000: {formula(grids.written_terms)}\nnot normalisable: grows like "
                   f"$e^{{+{laws.written_growth:.3g} r^2}}$ as $r \\to \\infty$ along its worst direction\n"
                   "(log of the unnormalised density; no normaliser exists)",
                   label="log of the unnormalised density", cmap="viridis")
    for ax in axes.ravel():
        _means(ax, grids)
        ax.set(xlim=(grids.x1[0], grids.x1[-1]), ylim=(grids.x2[0], grids.x2[-1]), aspect="equal")
    for ax in axes[1]:
        ax.set_xlabel(X1_LABEL)
    for ax in axes[:, 0]:
        ax.set_ylabel(X2_LABEL)
    fig.suptitle("Negative prompts (top: positive 'dog', negative 'red') and composition (bottom) on attributes2d: "
                 "the exact laws the guided scores target", fontsize=13, weight="bold")
    return fig


@figure("negative_composition_samples.png")
def negative_composition_samples(attribute_samples: AttributeSamples,
                                 attribute_target_grids: AttributeTargetGrids) -> Figure:
    """Each sampled case over its implied law, with the fraction of its samples against the law's mass in its own
    region and in the three regions of :data:`verify.evidence.attributes.REGIONS`, and the moments."""
    samples, grids = attribute_samples, attribute_target_grids
    gx, gy = np.meshgrid(grids.x1, grids.x2)
    sampler = samples.sampler.upper()
    titles = {"dog": "(a) control, no guidance", "negative_001": "(b) source 001, the negative replaces the null",
              "negative_000": "(c) source 000, correct exponents", "compose": "(d) composition ('purple dog')"}
    fig = new_figure(17, 9.6, layout="constrained")
    axes = fig.subplots(2, 2, sharex=True, sharey=True)
    for ax, key in zip(axes.ravel(), titles, strict=True):
        case, target = samples.cases[key], grids.targets[key]
        dens = target.density
        ax.contourf(gx, gy, dens, levels=dens.max() * np.array([0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 1.01]), cmap="Greys",
                    alpha=0.45)
        ax.contour(gx, gy, dens, levels=dens.max() * np.array([0.01, 0.1, 0.5, 0.9]), colors="0.35", linewidths=0.7)
        for x0 in (-1.0, 1.0, 4.0):
            ax.axvline(x0, color="0.55", lw=0.8, ls=":")
        ax.axvspan(-1, 1, color="#9467bd", alpha=0.07, lw=0)
        ax.scatter(*case.samples.T, s=2.5, color=SAMPLE_COLOURS[key], alpha=0.35, rasterized=True)
        _means(ax, grids)
        rows = [f"{'mass in':<22}{sampler:>9}{'target':>10}"]
        regions = {case.region: case.own_region} | dict(case.regions)
        for name, m in regions.items():
            rows.append(f"{REGION_LABELS.get(name, name):<22}{m.fraction:>9.4f}{fmt_mass(m.target_mass):>10}")
        for label, value, exact in (("mean of x1", case.sampled_mean[0], target.mean[0]),
                                    ("mean of x2", case.sampled_mean[1], target.mean[1])):
            rows.append(f"{label:<22}{value + 0.0:>9.2f}{exact + 0.0:>10.2f}".replace("-0.00", " 0.00"))
        rows.append(f"{'sd of x1':<22}{case.sampled_sd[0]:>9.3g}{target.sd_x1:>10.3g}")
        box(ax, "\n".join(rows), x=0.995, y=0.03, ha="right")
        ax.set_title(f"{titles[key]}: {case.description}\nimplied law {formula(target.terms)}", loc="left")
        ax.set(xlim=(grids.x1[0], grids.x1[-1]), ylim=(grids.x2[0], grids.x2[-1]), aspect="equal")
    for ax in axes[1]:
        ax.set_xlabel(X1_LABEL + ";  dotted: $x_1$ = -1, 1, 4")
    for ax in axes[:, 0]:
        ax.set_ylabel(X2_LABEL)
    shown = min(samples.n, len(next(iter(samples.cases.values())).samples))
    fig.suptitle(f"Negative prompts and composition on attributes2d, sampled with {sampler} ({samples.steps} steps, "
                 f"{samples.n} samples from the noised p(x|dog) at t = 1; {shown} drawn), over the implied laws\n"
                 "(grey: contours at 1, 10, 50, 90% of the peak). Boxes: the samples' fraction against the implied "
                 "law's mass per region, and moments.\nThe negative prompts leave samples on the red dog, where the "
                 "implied law has no mass; the composed samples collapse onto the line $x_1 = 0$",
                 fontsize=12, weight="bold")
    return fig


__all__ = ["negative_and_composition", "negative_composition_samples", "formula", "cond_words", "fmt_mass"]
