r"""Figures of the trained cross-attention networks against the exact scores (evidence: :mod:`verify.evidence.network`).

Each draws what its providers measured for the records (same seeds, same samples):

* ``network_score_error.png``: the :math:`\sigma_t^2`-weighted relative score error of each main network by t, null
  token against the conditional branches (:func:`~verify.evidence.network.network_score_errors`; S0-NULL-TOKEN);
* ``network_cfg_samples.png``: ring2d class 0, CFG samples of the network beside the exact-score samples from the
  same starts, by w and sampler (:func:`~verify.evidence.network.network_cfg_sampling_by_limit`; S0-PROP2-SAMPLES);
* ``network_attention.png``: tokens16d cross-attention maps by layer and t
  (:func:`~verify.evidence.network.network_attention`; S0-XATTN);
* ``network_dropout_ablation.png``: the p_uncond ablation (:func:`~verify.evidence.network.network_dropout`;
  S1-DROPOUT).

A figure whose checkpoints are missing draws one panel that says which.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib as mpl
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from toy_models import get_world
from toy_models.schedules import get_schedule
from verify.evidence.network import (
    MAIN,
    P_UNCOND,
    AttentionMass,
    CFGSampling,
    DensityView,
    Dropout,
    ScoreErrors,
    ScoreErrorTable,
)
from verify.evidence.shared import first_sampler_by_limit

from . import figure
from .style import EXACT_COLOUR, NET_COLOUR, box, log_y, new_figure, w_colours

__all__ = ["draw_score_error", "draw_cfg_samples", "draw_attention", "draw_dropout_ablation"]

NULL_COLOUR, COND_COLOUR = "k", EXACT_COLOUR


def _missing(reason: str, title: str) -> Figure:
    """One panel saying why the figure has nothing to draw."""
    fig = new_figure(8, 2.5)
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, f"{title}\n\nnot drawn: {reason}", ha="center", va="center", transform=ax.transAxes,
            wrap=True)
    return fig


def _rms(values: Sequence[float]) -> float:
    return math.sqrt(sum(v * v for v in values) / len(values))


def _time_axis(ax: Axes, times: Sequence[float], min_gap: float = 0.17) -> None:
    """Log-t axis with ticks at the table's times, sigma_t (vp-linear) on a second tick line; a time closer than
    ``min_gap`` decades to the next labelled one gets an unlabelled minor tick."""
    sigmas = get_schedule("vp-linear").sigma(torch.tensor(list(times), dtype=torch.float64)).tolist()
    labelled = [len(times) - 1]
    for i in range(len(times) - 2, -1, -1):
        if math.log10(times[labelled[-1]] / times[i]) >= min_gap:
            labelled.append(i)
    ax.set_xscale("log")
    ax.set_xticks([times[i] for i in labelled], [f"{times[i]:g}\n{sigmas[i]:.2f}" for i in labelled])
    ax.set_xticks([t for i, t in enumerate(times) if i not in labelled], minor=True)
    ax.xaxis.set_minor_formatter(mpl.ticker.NullFormatter())
    ax.set_xlim(times[0] / 1.3, times[-1] * 1.3)
    ax.set_xlabel("t (log scale)   /   $\\sigma_t$ (vp-linear)")


# --------------------------------------------------------------------------------------------------------------
# score error by t, null branch against the conditional branches
# --------------------------------------------------------------------------------------------------------------
def _score_panel(ax: Axes, world_name: str, table: ScoreErrorTable, network: str) -> None:
    times = np.asarray(table.times)
    rows, ses = table.by_condition, table.standard_error
    cond_keys = table.conditional_keys
    ax.errorbar(times, rows["null"], yerr=ses["null"], color=NULL_COLOUR, marker="o", ms=4, lw=1.8, capsize=3,
                label="null token $\\varnothing$ (unconditional branch)", zorder=4)
    if cond_keys:
        values = np.array([rows[k] for k in cond_keys])  # [C, T]
        errors = np.array([ses[k] for k in cond_keys])
        pick = np.argsort(values, axis=0)[(len(cond_keys) - 1) // 2]  # the (lower) median branch at each t, [T]
        median, median_se = values[pick, np.arange(len(times))], errors[pick, np.arange(len(times))]
        ax.fill_between(times, values.min(0), values.max(0), color=COND_COLOUR, alpha=0.18, lw=0,
                        label="conditional branches: range over the labels (min to max)")
        ax.errorbar(times, median, yerr=median_se, color=COND_COLOUR, marker="s", ms=4, lw=1.8, capsize=3,
                    label="conditional branches: median over the labels", zorder=3)
    world = get_world(world_name)
    ax.set_title(f"$\\bf{{{world_name}}}$ (d = {world.dim}, {len(world.class_conditions())} labels)"
                 + (f"\nnetwork {network}" if network else ""), loc="left")
    lines = [f"pooled over cells  {table.pooled_relative_error:.3f}", f"rms null branch   {_rms(rows['null']):.3f}"]
    if cond_keys:
        cond_rms = [_rms(rows[k]) for k in cond_keys]
        lines.append(f"rms conditional   {min(cond_rms):.3f}-{max(cond_rms):.3f}")
        lines.append(f"({len(cond_keys)} labels measured)")
    lines.append(f"n = {table.n} draws per cell")
    box(ax, "\n".join(lines), x=0.98, y=0.97, ha="right", va="top")
    _time_axis(ax, list(times))


@figure("network_score_error.png")
def draw_score_error(network_score_errors: ScoreErrors) -> Figure:
    r"""Relative, :math:`\sigma_t^2`-weighted score error of each main network against t, one panel per world: the
    null-token branch and the conditional branches (the median label at each t, the lower of the middle two for an
    even count, and the range over labels), with :math:`\pm 1` Monte Carlo standard error. The tables S0-NULL-TOKEN
    reads."""
    ev = network_score_errors
    names = [w for w in MAIN if w in ev.tables]
    if not names:
        return _missing(ev.skipped, "network score error")
    fig = new_figure(5.6 * len(names), 5.6, layout="constrained")
    axes = fig.subplots(1, len(names), sharey=True, squeeze=False)[0]
    for ax, name in zip(axes, names, strict=True):
        _score_panel(ax, name, ev.tables[name], ev.networks.get(name, ""))
        log_y(ax)
    axes[0].set_ylabel("relative score error $r(t, c)$ (dimensionless, log scale)")
    handles, labels = axes[0].get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda k: ("null" not in labels[k], "range" in labels[k]))
    axes[0].legend([handles[k] for k in order], [labels[k] for k in order], frameon=False, loc="lower left",
                   fontsize=8.5)
    fig.suptitle("Trained network vs analytic (exact) eps: $\\sigma^2$-weighted relative error "
                 "$r(t,c) = (E\\,\\|\\hat\\varepsilon_\\theta(x,t,c) - \\varepsilon^*(x,t,c)\\|^2 \\,/\\, "
                 "E\\,\\|\\varepsilon^*(x,t,c)\\|^2)^{1/2}$, $x \\sim p_t(\\cdot|c)$\n"
                 "null-token branch against the conditional branches, by noise level; bars: $\\pm 1$ Monte Carlo "
                 "standard error" + (f"\n({ev.skipped})" if ev.skipped else ""), fontsize=12, weight="bold")
    return fig


# --------------------------------------------------------------------------------------------------------------
# CFG samples of the network beside the exact-score samples (paired)
# --------------------------------------------------------------------------------------------------------------
def _sample_lines(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> list[str]:
    inside = ((x >= lo) & (x <= hi)).all(1)
    return [f"mean  x1 {x[:, 0].mean():6.3f}  x2 {x[:, 1].mean():6.3f}",
            f"sd    x1 {x[:, 0].std():6.3f}  x2 {x[:, 1].std():6.3f}",
            f"outside the view {int((~inside).sum())}/{len(x)}"]


@figure("network_cfg_samples.png")
def draw_cfg_samples(network_cfg_sampling_by_limit: CFGSampling, network_ring2d_view: DensityView) -> Figure:
    r"""ring2d, class 0: the CFG samples of the network (top row) and of the exact scores from the same starts and
    sampler noise (bottom row) that S0-PROP2-SAMPLES's network block measures, one column per (w, sampler) for the
    first sampler of each continuous limit (DDIM: probability-flow ODE; DDPM: reverse SDE), over the exact density
    of :math:`p(x\mid c)`; the dashed line is the tilted target's mean along :math:`x_1`."""
    ev, view = network_cfg_sampling_by_limit, network_ring2d_view
    if ev.skipped:
        return _missing(ev.skipped, "network CFG samples")
    limits = first_sampler_by_limit()
    columns = [(w, s) for w in ev.by_w for s in (limits["ode"], limits["sde"]) if s in ev.samples[w]]
    x1, x2 = view.x1.numpy(), view.x2.numpy()
    gx, gy = np.meshgrid(x1, x2)
    dens = view.density.numpy()
    lo, hi = np.array([x1[0], x2[0]]), np.array([x1[-1], x2[-1]])
    levels = [0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0 + 1e-9]
    rows = {"network": ("network (trained)", NET_COLOUR), "analytic": ("analytic (exact eps), same starts",
                                                                        EXACT_COLOUR)}
    fig = new_figure(max(3.9 * len(columns) + 1.4, 12.0), 10.4, layout="constrained")
    axes = fig.subplots(2, len(columns), sharex=True, sharey=True, squeeze=False)
    cs = None
    for j, (w, sampler) in enumerate(columns):
        at_w = ev.by_w[w]
        pair, means = ev.samples[w][sampler], at_w.samplers[sampler]
        for i, (key, (_, colour)) in enumerate(rows.items()):
            ax = axes[i, j]
            x = getattr(pair, key).numpy()
            cs = ax.contourf(gx, gy, dens, levels=levels, cmap="Greys", alpha=0.45)
            ax.contour(gx, gy, dens, levels=[0.01, 0.1, 0.5, 0.9], colors="0.4", linewidths=0.7)
            inside = ((x >= lo) & (x <= hi)).all(1)
            ax.scatter(*x[inside].T, s=2.5, color=colour, alpha=0.45, rasterized=True)
            # samples outside the view, pinned to its edge (so a poor network's stray samples stay visible)
            edge = np.clip(x[~inside], lo + 0.04, hi - 0.04)
            ax.scatter(*edge.T, s=12, marker="x", lw=0.7, color=colour, alpha=0.6, rasterized=True)
            ax.scatter(*view.class_mean, s=150, marker="*", color="gold", edgecolor="k", zorder=5)
            ax.axvline(at_w.tilted_mean_e1, color="k", ls="--", lw=1.0)
            lines = _sample_lines(x, lo, hi)
            if key == "network":
                lines += [f"paired dx1 {means.network_minus_analytic:+.3f} (SE {means.paired_se:.2g})",
                          f"rms pair distance {means.rms_paired_displacement:.3f}"]
            else:
                lines += [f"mean x1 - tilted {means.analytic_minus_tilted:+.3f} (SE {means.analytic_se:.2g})",
                          "gap exceeds the network's deviation: "
                          + ("yes" if means.gap_exceeds_network_deviation else "no")]
            box(ax, "\n".join(lines))
            ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), aspect="equal")
            if i == 0:
                ax.set_title(f"w = {at_w.w:g} (guidance_scale {1 + at_w.w:g}), {sampler.upper()}", fontsize=12)
            else:
                ax.set_xlabel("$x_1$ (radial)")
    for i, (label, _) in enumerate(rows.values()):
        axes[i, 0].set_ylabel(f"{label}\n\n$x_2$ (tangential)")
    fig.colorbar(cs, ax=axes, location="right", shrink=0.5, ticks=levels[:-1],
                 label=f"exact $p(x\\,|\\,c={view.condition})$ relative to its peak")
    mean_text = ", ".join(f"{v:g}" for v in view.class_mean)
    handles = [mpl.lines.Line2D([], [], ls="", marker="o", ms=4, color=NET_COLOUR, label="network CFG sample"),
               mpl.lines.Line2D([], [], ls="", marker="o", ms=4, color=EXACT_COLOUR,
                                label="exact-score CFG sample (same start and noise)"),
               mpl.lines.Line2D([], [], ls="", marker="x", ms=6, color="0.3",
                                label="sample outside the view, drawn at its edge"),
               mpl.lines.Line2D([], [], ls="", marker="*", ms=12, color="gold", mec="k",
                                label=f"mean of class {view.condition}, ({mean_text})"),
               mpl.lines.Line2D([], [], ls="--", color="k", label="tilted target's mean of $x_1$")]
    fig.legend(handles=handles, loc="outside lower center", ncol=5 if len(columns) > 2 else 3, frameon=False)
    fig.suptitle(f"CFG on ring2d towards class {ev.condition}: the trained network's samples (top) and the exact "
                 f"scores' (bottom),\nfrom the same {ev.n} starts and sampler noise, {ev.steps} steps, over the exact "
                 "conditional law p(x|c)\n(grey; contours at 1, 10, 50, 90 % of its peak); boxes: sample moments; "
                 "paired network - exact difference of $x_1$\nand rms distance of paired samples; the exact samples' "
                 "distance to the tilted target's mean", fontsize=12, weight="bold")
    return fig


# --------------------------------------------------------------------------------------------------------------
# cross-attention maps on tokens16d
# --------------------------------------------------------------------------------------------------------------
@figure("network_attention.png")
def draw_attention(network_attention: AttentionMass) -> Figure:
    """tokens16d: the cross-attention mass each of the 16 positions puts on each of the 4 tokens of its condition,
    averaged over heads, points and labels, by layer (columns) and t (rows); the token that sets a position's block
    is outlined. Chance level (uniform attention) is 1/4. The maps S0-XATTN reads."""
    att = network_attention
    if att.skipped:
        return _missing(att.skipped, "network attention")
    ts = list(att.by_t)
    first = att.by_t[ts[0]]
    depth, chance = len(first.map_by_layer), first.chance_level
    norm = TwoSlopeNorm(vmin=0.0, vcenter=chance, vmax=1.0)
    fig = new_figure(max(12.5, 7.0 * depth + 1.5), 2.3 * len(ts) + 1.9, layout="constrained")
    axes = fig.subplots(len(ts), depth, squeeze=False, sharex=True, sharey=True)
    im = None
    for i, t in enumerate(ts):
        entry = att.by_t[t]
        for layer in range(depth):
            ax = axes[i, layer]
            probs = np.asarray(entry.map_by_layer[layer]).T  # [4 tokens, 16 positions]
            im = ax.imshow(probs, cmap="RdBu_r", norm=norm, aspect="auto", interpolation="nearest")
            n_tokens, n_pos = probs.shape
            block = n_pos // n_tokens
            for j in range(n_tokens):
                ax.add_patch(Rectangle((j * block - 0.5, j - 0.5), block, 1, fill=False, ec="k", lw=1.8))
            for j in range(1, n_tokens):
                ax.axvline(j * block - 0.5, color="0.3", lw=0.8, ls="--")
            for (r, c), v in np.ndenumerate(probs):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(v - chance) > 0.35 else "k")
            mass = entry.mass_on_controlling_token_by_layer[layer]
            hits = entry.positions_whose_argmax_is_controlling_by_layer[layer]
            ax.set_title(f"layer {layer + 1}, t = {t}: mass on own token {mass:.2f}; own token is the argmax at "
                         f"{hits}/{n_pos} positions", loc="left", fontsize=9.5)
            ax.set_yticks(range(n_tokens), [f"token of block {j}" for j in range(n_tokens)])
            ax.set_xticks(range(n_pos))
            if i == len(ts) - 1:
                ax.set_xlabel("position p of $x_t$ (blocks of 4: dashed lines)")
    best = ", ".join(f"{t}: {att.by_t[t].best_head_mass_on_controlling_token:.2f}" for t in ts)
    fig.colorbar(im, ax=axes, location="right", shrink=0.7, ticks=[0.0, 0.1, 0.2, chance, 0.5, 0.75, 1.0],
                 label=f"attention probability (white: chance {chance:g}, uniform over the 4 tokens)")
    fig.suptitle("Cross-attention on tokens16d: where each position of $x_t$ reads the condition's 4 tokens\n"
                 "(queries: the 16 positions; keys/values: the tokens, one per block, sorted by block)\n"
                 f"mean over heads, {att.n} points $x \\sim p_t(x|c)$ per label and the 16 labels; outlined: each "
                 f"position's own token (the one that sets its block);\nchance level {chance:g}; the best single "
                 f"head's mass on the own token, by t: {best}", fontsize=12, weight="bold")
    return fig


# --------------------------------------------------------------------------------------------------------------
# the p_uncond ablation
# --------------------------------------------------------------------------------------------------------------
@figure("network_dropout_ablation.png")
def draw_dropout_ablation(network_dropout: Dropout) -> Figure:
    """The p_uncond ablation on ring2d: (a) null-branch and conditional rms relative score error and the relative
    error of the CFG (w = 3) prediction, by p_uncond; (b) the null branch's error by t; (c) the CFG prediction's
    error by t. The band 0.1-0.2 that source text 001 recommends is shaded. The rows S1-DROPOUT reads."""
    ev = network_dropout
    if ev.skipped:
        return _missing(ev.skipped, "conditioning dropout ablation")
    rows = ev.rows
    ps = [p for p in P_UNCOND if p in rows]
    w = rows[ps[0]].w
    recommended = [p for p in ps if 0.1 <= float(p) <= 0.2]
    colours = dict(zip(ps, w_colours(ps), strict=True))
    metrics = {"null_rms_relative_error": ("null branch: rms over t of r(t, $\\varnothing$)", NULL_COLOUR, "o", "-"),
               "conditional_rms_relative_error": ("conditional branches: rms over t and labels", COND_COLOUR, "s",
                                                  "--"),
               "cfg_eps_error": (f"CFG prediction at w = {w:g}: pooled relative error", NET_COLOUR, "D", "-")}
    fig = new_figure(17, 6.0, layout="constrained")
    ax_bar, ax_null, ax_cfg = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.1, 1, 1]})
    x = np.arange(len(ps))
    if recommended:
        lo, hi = ps.index(recommended[0]), ps.index(recommended[-1])
        ax_bar.axvspan(lo - 0.4, hi + 0.4, color="#2ca02c", alpha=0.12, lw=0,
                       label="0.1-0.2: the range source 001 recommends")
    for key, (label, colour, marker, ls) in metrics.items():
        values = [getattr(rows[p], key) for p in ps]
        ax_bar.plot(x, values, color=colour, marker=marker, ms=7, ls=ls, lw=1.2, label=label)
        # labels: null above its points, conditional below, CFG to the right (the three curves cross)
        offset, ha = {"null_rms_relative_error": ((0, 8), "center"),
                      "conditional_rms_relative_error": ((0, -11), "center")}.get(key, ((9, 0), "left"))
        for xi, v in zip(x, values, strict=True):
            ax_bar.annotate(f"{v:.3g}", (xi, v), xytext=offset, textcoords="offset points", fontsize=8, ha=ha,
                            va="center", color=colour)
    ax_bar.set_xticks(x, [f"{float(p):g}" for p in ps])
    ax_bar.set_xlim(-0.5, len(ps) - 0.3)
    log_y(ax_bar)
    every = [getattr(rows[p], key) for p in ps for key in metrics]
    ax_bar.set_ylim(min(every) / 1.5, max(every) * 3.0)  # room for the value labels and the legend
    ax_bar.set(xlabel="conditioning dropout rate p_uncond (training; equally spaced categories)",
               ylabel="relative error (dimensionless, log scale)")
    ax_bar.set_title("(a) score and CFG-prediction error by p_uncond\n(ring2d, one training seed each)", loc="left")
    ax_bar.legend(frameon=False, loc="upper right", fontsize=8.5)
    for ax, (tkey, ykey, se_key) in ((ax_null, ("times", "null_by_t", "null_se_by_t")),
                                      (ax_cfg, ("cfg_times", "cfg_by_t", None))):
        for p in ps:
            strong = p in recommended
            kw = {"color": colours[p], "marker": "o", "ms": 3.5, "lw": 2.2 if strong else 1.2,
                  "ls": "-" if strong else "--", "label": f"p_uncond = {float(p):g}" + (" (0.1-0.2)" if strong
                                                                                         else "")}
            row = rows[p]
            if se_key is None:
                ax.plot(getattr(row, tkey), getattr(row, ykey), **kw)
            else:
                ax.errorbar(getattr(row, tkey), getattr(row, ykey), yerr=getattr(row, se_key), capsize=2, **kw)
        log_y(ax)
        _time_axis(ax, list(getattr(rows[ps[0]], tkey)))
    ax_null.set_ylabel("relative score error $r(t, \\varnothing)$ (log scale)")
    ax_null.set_title("(b) the null-token branch against the exact unconditional eps, by t\n"
                      "(bars: $\\pm 1$ Monte Carlo SE)", loc="left")
    ax_cfg.set_ylabel(f"relative error of the CFG prediction, w = {w:g} (log scale)")
    ax_cfg.set_title(f"(c) CFG prediction $(1+w)\\hat\\varepsilon(x,c) - w\\hat\\varepsilon(x,\\varnothing)$, "
                     f"w = {w:g},\nagainst the exact one, by t (points from $p_t(x|c)$,\nfirst 4 classes; colours "
                     "as in (b))", loc="left")
    ax_null.legend(frameon=False, loc="lower left", fontsize=8.5)
    fig.suptitle("Conditioning dropout ablation: five ring2d networks identical but for p_uncond, measured against "
                 "the exact scores ($\\sigma^2$-weighted relative errors)", fontsize=12, weight="bold")
    return fig
