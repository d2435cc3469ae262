r"""Figures of the trained cross-attention network (``checkpoints/``) against the analytic ground truth.

Four figures, each drawn from the measurement functions of :mod:`verify.claims.network` (the same functions, seeds
and sample sizes as the ledger's ``evidence["network"]`` blocks, so the figures show the ledger's numbers):

* ``plot_network_score_error``: the :math:`\sigma_t^2`-weighted relative score error of each main network by t,
  null-token branch against the conditional branches (:func:`~verify.claims.network.score_errors`);
* ``plot_network_cfg_samples``: ring2d class 0, DDIM CFG samples of the network beside the exact-score CFG samples
  from the same starts (:func:`~verify.claims.network.paired_guided_samples`), by w, over the exact
  :math:`p(x\mid c)`;
* ``plot_network_attention``: tokens16d cross-attention maps by layer and t
  (:func:`~verify.claims.network.attention_mass`);
* ``plot_dropout_ablation``: the p_uncond ablation, null and conditional score error and the CFG (w = 3)
  prediction error (:func:`~verify.claims.network.score_errors`, :func:`~verify.claims.network.guided_eps_error`).

Each ``plot_*(path, models, config)`` takes the dictionary of :func:`verify.claims.network.load_models` and a
:class:`verify.claims.RunConfig`; the score-error, attention and ablation figures also accept the measured results
(``tables=``, ``attention=``, ``rows=``) so that a ledger run can draw what it has already measured. Figures read
results; they never decide a verdict. ``plot_network_all(out_dir)`` loads the checkpoints and writes the four,
skipping (with a printed note) any whose checkpoints are missing. Run
``python -c "from verify.figures_network import plot_network_all; plot_network_all('figures')"``.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence

import matplotlib as mpl
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from toy_models import AnalyticDenoiser, get_world
from toy_models.schedules import get_schedule

from .claims import RunConfig
from .claims._common import first_sampler_by_limit, one_thread
from .claims.network import (
    MAIN,
    P_UNCOND,
    STEPS,
    attention_mass,
    default_checkpoints,
    dropout_rows,
    load_models,
    paired_guided_samples,
    score_errors,
)
from .figures import _STYLE, _mesh, _save, _w_colours
from .rules import get as get_rule

__all__ = ["plot_network_score_error", "plot_network_cfg_samples", "plot_network_attention", "plot_dropout_ablation",
           "plot_network_all", "network_cfg_samples", "dropout_ablation_rows", "NETWORK_FIGURES"]

#: file names written by :func:`plot_network_all`, in order
NETWORK_FIGURES = ("network_score_error.png", "network_cfg_samples.png", "network_attention.png",
                   "network_dropout_ablation.png")
_NULL_COLOUR, _COND_COLOUR = "k", "#1f77b4"
_NET_COLOUR, _EXACT_COLOUR = "#d62728", "#1f77b4"
_CFG_WS = (0.0, 1.0, 3.0, 7.0)
#: Ho-Salimans w of the samples figure (guidance_scale = 1 + w)
_RING_X1, _RING_X2 = np.linspace(0.5, 5.5, 201), np.linspace(-2.5, 2.5, 201)
#: the samples figure's view of ring2d class 0 (mean (3, 0)); spacing 0.025


def _net_line(den) -> str:
    """``width 64, depth 2, 8000 steps, p_uncond 0.1`` from a network's card."""
    net, card = den.network.config, getattr(den, "card", {}) or {}
    steps = card.get("steps")
    p = card.get("config", {}).get("p_uncond")
    return (f"width {net.width}, depth {net.depth}" + (f", {steps} steps" if steps is not None else "")
            + (f", p_uncond {p:g}" if p is not None else ""))


def _rms(values: Sequence[float]) -> float:
    return math.sqrt(sum(v * v for v in values) / len(values))


def _log_y(ax: Axes) -> None:
    """Log y axis with plain-number tick labels (0.1, 0.2, 0.5, 1, 2) instead of powers of ten."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(mpl.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(mpl.ticker.FuncFormatter(
        lambda v, _: f"{v:g}" if round(v / 10 ** math.floor(math.log10(v)), 6) in (2, 5) else ""))
    ax.grid(True, which="major", axis="y", color="0.9", lw=0.8)


def _box(ax: Axes, text: str, x: float = 0.02, y: float = 0.03, ha: str = "left", va: str = "bottom") -> None:
    ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, fontsize=8.5, family="monospace",
            bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": "0.7", "alpha": 0.9})


# --------------------------------------------------------------------------------------------------------------
# Figure N1: score error by t, null branch vs conditional branches
# --------------------------------------------------------------------------------------------------------------
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


def _score_panel(ax: Axes, world_name: str, table: dict, den) -> None:
    times = np.asarray(table["times"])
    rows, ses = table["by_condition"], table["standard_error"]
    cond_keys = [k for k in rows if k != "null"]
    ax.errorbar(times, rows["null"], yerr=ses["null"], color=_NULL_COLOUR, marker="o", ms=4, lw=1.8, capsize=3,
                label="null token $\\varnothing$ (unconditional branch)", zorder=4)
    if cond_keys:
        values = np.array([rows[k] for k in cond_keys])  # [C, T]
        errors = np.array([ses[k] for k in cond_keys])
        pick = np.argsort(values, axis=0)[(len(cond_keys) - 1) // 2]  # the (lower) median branch at each t, [T]
        median, median_se = values[pick, np.arange(len(times))], errors[pick, np.arange(len(times))]
        ax.fill_between(times, values.min(0), values.max(0), color=_COND_COLOUR, alpha=0.18, lw=0,
                        label="conditional branches: range over the labels (min to max)")
        ax.errorbar(times, median, yerr=median_se, color=_COND_COLOUR, marker="s", ms=4, lw=1.8, capsize=3,
                    label="conditional branches: median over the labels", zorder=3)
    world = get_world(world_name)
    ax.set_title(f"$\\bf{{{world_name}}}$ (d = {world.dim}, {len(world.class_conditions())} labels)"
                 + (f"\nnetwork {_net_line(den)}" if den is not None else ""), loc="left")
    null_rms = _rms(rows["null"])
    cond_rms = [_rms(rows[k]) for k in cond_keys]
    lines = [f"pooled over cells  {table['pooled_relative_error']:.3f}", f"rms null branch   {null_rms:.3f}"]
    if cond_rms:
        lines.append(f"rms conditional   {min(cond_rms):.3f}-{max(cond_rms):.3f}")
        lines.append(f"({len(cond_keys)} labels measured)")
    lines.append(f"n = {table['n']} draws per cell")
    _box(ax, "\n".join(lines), x=0.98, y=0.97, ha="right", va="top")
    _time_axis(ax, list(times))


def plot_network_score_error(path: str | pathlib.Path, models: dict, config: RunConfig, *,
                             tables: dict[str, dict] | None = None) -> pathlib.Path:
    r"""Relative, :math:`\sigma_t^2`-weighted score error of each main network against t, one panel per world: the
    null-token branch and the conditional branches (the median label at each t, the lower one of the middle two
    for an even count, and the range over labels), with
    :math:`\pm 1` Monte Carlo standard error (the table's ``"standard_error"``).

    Parameters
    ----------
    path : str or pathlib.Path
        Output PNG; parent directories are created.
    models : dict
        :func:`verify.claims.network.load_models`'s dictionary; the panels are the worlds of ``models["main"]``
        that have a network.
    config : RunConfig
        Sample sizes (``quick``) and seed of :func:`verify.claims.network.score_errors`.
    tables : dict, optional
        ``{world: score_error_table}`` already measured (a ledger run's ``score_error_tables``); measured here
        when omitted.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    main = {w: d for w, d in models["main"].items() if d is not None}
    if tables is None:
        with one_thread():
            tables = {w: score_errors(d, config) for w, d in main.items()}
    names = [w for w in MAIN if w in tables]
    if not names:
        raise ValueError("models: no main network to plot (and no tables given)")
    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(5.6 * len(names), 5.6), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, len(names), sharey=True, squeeze=False)[0]
        for ax, name in zip(axes, names, strict=True):
            _score_panel(ax, name, tables[name], main.get(name))
            _log_y(ax)
        axes[0].set_ylabel("relative score error $r(t, c)$ (dimensionless, log scale)")
        handles, labels = axes[0].get_legend_handles_labels()
        order = sorted(range(len(labels)), key=lambda k: ("null" not in labels[k], "range" in labels[k]))
        axes[0].legend([handles[k] for k in order], [labels[k] for k in order], frameon=False, loc="lower left",
                       fontsize=8.5)
        fig.suptitle("Trained network vs analytic (exact) eps: $\\sigma^2$-weighted relative error "
                     "$r(t,c) = (E\\,\\|\\hat\\varepsilon_\\theta(x,t,c) - \\varepsilon^*(x,t,c)\\|^2 \\,/\\, "
                     "E\\,\\|\\varepsilon^*(x,t,c)\\|^2)^{1/2}$, $x \\sim p_t(\\cdot|c)$\n"
                     "null-token branch against the conditional branches, by noise level; bars: $\\pm 1$ Monte Carlo "
                     "standard error", fontsize=12, weight="bold")
        return _save(fig, path)


# --------------------------------------------------------------------------------------------------------------
# Figure N2: CFG samples of the network beside the exact-score CFG samples (paired)
# --------------------------------------------------------------------------------------------------------------
def network_cfg_samples(den, config: RunConfig, ws: Sequence[float] = _CFG_WS, *, condition: int = 0,
                        n: int | None = None) -> dict[float, dict]:
    """ring2d: DDIM (``STEPS`` steps) CFG samples of the network and of the exact scores from the same starts.

    Returns
    -------
    dict
        ``{w: {"network": [n, 2] array, "analytic": [n, 2] array}}``; starts from the noised conditional at t = 1
        (:func:`verify.claims.network.paired_guided_samples`, with ``cfg_sampling``'s seed; the figure draws more
        points than the ledger's 1000, so these are not the ledger's samples, only the same procedure).
    """
    world = get_world("ring2d")
    exact = AnalyticDenoiser(world, den.schedule)
    n = n if n is not None else (500 if config.quick else 2000)
    out = {}
    with one_thread():
        for w in ws:
            x_net, x_an = paired_guided_samples(get_rule("cfg", w=w), {"cond": condition}, den, exact, world,
                                                condition, n, config.seed + 23, first_sampler_by_limit()["ode"])
            out[float(w)] = {"network": x_net.numpy(), "analytic": x_an.numpy()}
    return out


def _sample_stats(x: np.ndarray, other: np.ndarray | None) -> str:
    n = len(x)
    inside = ((x[:, 0] >= _RING_X1[0]) & (x[:, 0] <= _RING_X1[-1]) & (x[:, 1] >= _RING_X2[0])
              & (x[:, 1] <= _RING_X2[-1]))
    lines = [f"mean  x1 {x[:, 0].mean():6.3f}  x2 {x[:, 1].mean():6.3f}",
             f"sd    x1 {x[:, 0].std():6.3f}  x2 {x[:, 1].std():6.3f}"]
    if other is not None:
        diff = x[:, 0] - other[:, 0]
        lines.append(f"paired dx1 {diff.mean():+.3f} (SE {diff.std() / math.sqrt(n):.3f})")
        lines.append(f"rms pair distance {np.sqrt(((x - other) ** 2).sum(1).mean()):.3f}")
    lines.append(f"outside the view {int((~inside).sum())}/{n}")
    return "\n".join(lines)


def plot_network_cfg_samples(path: str | pathlib.Path, models: dict, config: RunConfig, *,
                             ws: Sequence[float] = _CFG_WS, condition: int = 0) -> pathlib.Path:
    r"""ring2d, class 0: DDIM CFG samples of the network (top row) and of the exact scores from the same starts
    (bottom row), one column per w, over the density of the exact conditional law :math:`p(x\mid c)`.

    Parameters
    ----------
    path : str or pathlib.Path
        Output PNG; parent directories are created.
    models : dict
        :func:`verify.claims.network.load_models`'s dictionary (uses ``models["main"]["ring2d"]``).
    config : RunConfig
        ``quick``: 500 samples per panel instead of 2000; ``seed``: the starts.
    ws : sequence of float, optional
        Ho-Salimans guidance strengths, one column each (``guidance_scale = 1 + w``).
    condition : int, optional
        The ring2d class guided towards (class 0 has mean (3, 0)).

    Returns
    -------
    pathlib.Path
        The path written.
    """
    den = models["main"]["ring2d"]
    if den is None:
        raise ValueError("models: no ring2d network")
    data = network_cfg_samples(den, config, ws, condition=condition)
    world = get_world("ring2d")
    gx, gy, pts = _mesh(_RING_X1, _RING_X2)
    log_p = world.law(condition).log_prob(pts).numpy().reshape(gx.shape)
    dens = np.exp(log_p - log_p.max())  # relative to the peak
    n = len(next(iter(data.values()))["network"])
    rows = {"network": ("network (trained)", _NET_COLOUR),
            "analytic": ("analytic (exact eps), same starts", _EXACT_COLOUR)}
    lo, hi = np.array([_RING_X1[0], _RING_X2[0]]), np.array([_RING_X1[-1], _RING_X2[-1]])
    levels = [0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0 + 1e-9]
    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(3.9 * len(ws) + 1.4, 9.6), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(2, len(ws), sharex=True, sharey=True, squeeze=False)
        for j, w in enumerate(ws):
            pair = data[float(w)]
            for i, (key, (_, colour)) in enumerate(rows.items()):
                ax = axes[i, j]
                x = pair[key]
                cs = ax.contourf(gx, gy, dens, levels=levels, cmap="Greys", alpha=0.45)
                ax.contour(gx, gy, dens, levels=[0.01, 0.1, 0.5, 0.9], colors="0.4", linewidths=0.7)
                inside = ((x >= lo) & (x <= hi)).all(1)
                ax.scatter(*x[inside].T, s=2.5, color=colour, alpha=0.45, rasterized=True)
                # samples outside the view, pinned to its edge (so a poor network's stray samples stay visible)
                edge = np.clip(x[~inside], lo + 0.04, hi - 0.04)
                ax.scatter(*edge.T, s=12, marker="x", lw=0.7, color=colour, alpha=0.6, rasterized=True)
                ax.scatter(*world.unconditional.means[condition].numpy(), s=150, marker="*", color="gold",
                           edgecolor="k", zorder=5)
                _box(ax, _sample_stats(x, pair["analytic"] if key == "network" else None))
                ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), aspect="equal")
                if i == 0:
                    ax.set_title(f"w = {w:g} (guidance_scale {1 + w:g})" + (", conditional" if w == 0 else ""),
                                 fontsize=12)
                if i == 1:
                    ax.set_xlabel("$x_1$ (radial)")
            for i, (label, _) in enumerate(rows.values()):
                axes[i, 0].set_ylabel(f"{label}\n\n$x_2$ (tangential)")
        fig.colorbar(cs, ax=axes, location="right", shrink=0.5, ticks=levels[:-1],
                     label=f"exact $p(x\\,|\\,c={condition})$ relative to its peak")
        handles = [mpl.lines.Line2D([], [], ls="", marker="o", ms=4, color=_NET_COLOUR, label="network CFG sample"),
                   mpl.lines.Line2D([], [], ls="", marker="o", ms=4, color=_EXACT_COLOUR,
                                    label="exact-score CFG sample (same start)"),
                   mpl.lines.Line2D([], [], ls="", marker="x", ms=6, color="0.3",
                                    label="sample outside the view, drawn at its edge"),
                   mpl.lines.Line2D([], [], ls="", marker="*", ms=12, color="gold", mec="k",
                                    label=f"mean of class {condition}, (3, 0)")]
        fig.legend(handles=handles, loc="outside lower center", ncol=4, frameon=False)
        fig.suptitle(f"CFG on ring2d towards class {condition}: the trained network's samples (top) and the exact "
                     f"scores' (bottom),\nfrom the same {n} starts, DDIM {STEPS} steps, over the exact conditional "
                     "law p(x|c) (grey; contours at 1, 10, 50, 90 % of its peak)\nboxes: sample moments; paired "
                     "network - exact difference of $x_1$ with its standard error; rms distance between paired "
                     "samples", fontsize=12, weight="bold")
        return _save(fig, path)


# --------------------------------------------------------------------------------------------------------------
# Figure N3: cross-attention maps on tokens16d
# --------------------------------------------------------------------------------------------------------------
def plot_network_attention(path: str | pathlib.Path, models: dict, config: RunConfig, *,
                           attention: dict | None = None) -> pathlib.Path:
    """tokens16d: the cross-attention mass each of the 16 positions puts on each of the 4 tokens of its condition,
    averaged over heads, points and labels, by layer (columns) and t (rows); the token that sets a position's block
    is outlined. Chance level (uniform attention) is 1/4.

    Parameters
    ----------
    path : str or pathlib.Path
        Output PNG; parent directories are created.
    models : dict
        :func:`verify.claims.network.load_models`'s dictionary (uses ``models["main"]["tokens16d"]``).
    config : RunConfig
        Sample sizes and seed of :func:`verify.claims.network.attention_mass`.
    attention : dict, optional
        ``attention_mass``'s result, already measured; measured here when omitted.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    den = models["main"]["tokens16d"]
    if attention is None:
        if den is None:
            raise ValueError("models: no tokens16d network (and no attention result given)")
        with one_thread():
            attention = attention_mass(den, config)
    ts = list(attention)
    depth = len(attention[ts[0]]["map_by_layer"])
    chance = attention[ts[0]]["chance_level"]
    norm = TwoSlopeNorm(vmin=0.0, vcenter=chance, vmax=1.0)
    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(max(12.5, 7.0 * depth + 1.5), 2.3 * len(ts) + 1.9), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(ts), depth, squeeze=False, sharex=True, sharey=True)
        for i, t in enumerate(ts):
            entry = attention[t]
            for layer in range(depth):
                ax = axes[i, layer]
                probs = np.asarray(entry["map_by_layer"][layer]).T  # [4 tokens, 16 positions]
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
                mass = entry["mass_on_controlling_token_by_layer"][layer]
                hits = entry["positions_whose_argmax_is_controlling_by_layer"][layer]
                ax.set_title(f"layer {layer + 1}, t = {t.removeprefix('t=')}: mass on own token {mass:.2f}; "
                             f"own token is the argmax at {hits}/{n_pos} positions", loc="left", fontsize=9.5)
                ax.set_yticks(range(n_tokens), [f"token of block {j}" for j in range(n_tokens)])
                ax.set_xticks(range(n_pos))
                if i == len(ts) - 1:
                    ax.set_xlabel("position p of $x_t$ (blocks of 4: dashed lines)")
        best = ", ".join(f"{t.removeprefix('t=')}: {attention[t]['best_head_mass_on_controlling_token']:.2f}"
                         for t in ts)
        fig.colorbar(im, ax=axes, location="right", shrink=0.7, ticks=[0.0, 0.1, 0.2, chance, 0.5, 0.75, 1.0],
                     label=f"attention probability (white: chance {chance:g}, uniform over the 4 tokens)")
        fig.suptitle("Cross-attention on tokens16d: where each position of $x_t$ reads the condition's 4 tokens\n"
                     "(queries: the 16 positions; keys/values: the tokens, one per block, sorted by block)\n"
                     "mean over heads, points $x \\sim p_t(x|c)$ and the 16 labels; outlined: each position's own "
                     f"token (the one that sets its block);\nchance level {chance:g}; the best single head's "
                     f"mass on the own token, by t: {best}", fontsize=12,
                     weight="bold")
        return _save(fig, path)


# --------------------------------------------------------------------------------------------------------------
# Figure N4: the p_uncond ablation
# --------------------------------------------------------------------------------------------------------------
def dropout_ablation_rows(ablation: dict, config: RunConfig, w: float = 3.0) -> dict[str, dict]:
    """:func:`verify.claims.network.dropout_rows` (the rows ``S1-DROPOUT`` reads, with their curves by t), measured
    on one thread."""
    with one_thread():
        return dropout_rows(ablation, config, w=w)


def plot_dropout_ablation(path: str | pathlib.Path, models: dict, config: RunConfig, *,
                          rows: dict[str, dict] | None = None) -> pathlib.Path:
    """The p_uncond ablation on ring2d: (a) null-branch and conditional rms relative score error and the relative
    error of the CFG (w = 3) prediction, by p_uncond; (b) the null branch's error by t; (c) the CFG prediction's
    error by t. The band 0.1-0.2 that source text 001 recommends is shaded.

    Parameters
    ----------
    path : str or pathlib.Path
        Output PNG; parent directories are created.
    models : dict
        :func:`verify.claims.network.load_models`'s dictionary (uses ``models["ablation"]``).
    config : RunConfig
        Sample sizes and seed of the measurements.
    rows : dict, optional
        :func:`dropout_ablation_rows`'s result, already measured; measured here when omitted.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    if rows is None:
        rows = dropout_ablation_rows(models["ablation"], config)
    ps = [p for p in P_UNCOND if p in rows]
    if not ps:
        raise ValueError("models: no ablation network")
    w = rows[ps[0]]["w"]
    recommended = [p for p in ps if 0.1 <= float(p) <= 0.2]
    colours = dict(zip(ps, _w_colours(ps), strict=True))
    metrics = {"null_rms_relative_error": ("null branch: rms over t of r(t, $\\varnothing$)", _NULL_COLOUR, "o", "-"),
               "conditional_rms_relative_error": ("conditional branches: rms over t and labels", _COND_COLOUR, "s",
                                                  "--"),
               "cfg_eps_error": (f"CFG prediction at w = {w:g}: pooled relative error", _NET_COLOUR, "D", "-")}
    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(17, 6.0), layout="constrained")
        FigureCanvasAgg(fig)
        ax_bar, ax_null, ax_cfg = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.1, 1, 1]})
        x = np.arange(len(ps))
        if recommended:
            lo, hi = ps.index(recommended[0]), ps.index(recommended[-1])
            ax_bar.axvspan(lo - 0.4, hi + 0.4, color="#2ca02c", alpha=0.12, lw=0,
                           label="0.1-0.2: the range source 001 recommends")
        for key, (label, colour, marker, ls) in metrics.items():
            values = [rows[p][key] for p in ps]
            ax_bar.plot(x, values, color=colour, marker=marker, ms=7, ls=ls, lw=1.2, label=label)
            # labels: null above its points, conditional below, CFG to the right (the three curves cross)
            offset, ha = {"null_rms_relative_error": ((0, 8), "center"),
                          "conditional_rms_relative_error": ((0, -11), "center")}.get(key, ((9, 0), "left"))
            for xi, v in zip(x, values, strict=True):
                ax_bar.annotate(f"{v:.3g}", (xi, v), xytext=offset, textcoords="offset points",
                                fontsize=8, ha=ha, va="center", color=colour)
        ax_bar.set_xticks(x, [f"{float(p):g}" for p in ps])
        ax_bar.set_xlim(-0.5, len(ps) - 0.3)
        _log_y(ax_bar)
        every = [rows[p][key] for p in ps for key in metrics]
        ax_bar.set_ylim(min(every) / 1.5, max(every) * 3.0)  # room for the value labels and the legend
        ax_bar.set(xlabel="conditioning dropout rate p_uncond (training; equally spaced categories)",
                   ylabel="relative error (dimensionless, log scale)")
        ax_bar.set_title("(a) score and CFG-prediction error by p_uncond\n(ring2d, one training seed each)",
                         loc="left")
        ax_bar.legend(frameon=False, loc="upper right", fontsize=8.5)
        for ax, (tkey, ykey, se_key) in ((ax_null, ("times", "null_by_t", "null_se_by_t")),
                                          (ax_cfg, ("cfg_times", "cfg_by_t", None))):
            for p in ps:
                strong = p in recommended
                kw = {"color": colours[p], "marker": "o", "ms": 3.5, "lw": 2.2 if strong else 1.2,
                      "ls": "-" if strong else "--", "label": f"p_uncond = {float(p):g}" + (" (0.1-0.2)" if strong
                                                                                             else "")}
                if se_key is None:
                    ax.plot(rows[p][tkey], rows[p][ykey], **kw)
                else:
                    ax.errorbar(rows[p][tkey], rows[p][ykey], yerr=rows[p][se_key], capsize=2, **kw)
            _log_y(ax)
            _time_axis(ax, rows[ps[0]][tkey])
        ax_null.set_ylabel("relative score error $r(t, \\varnothing)$ (log scale)")
        ax_null.set_title("(b) the null-token branch against the exact unconditional eps, by t\n"
                          "(bars: $\\pm 1$ Monte Carlo SE)", loc="left")
        ax_cfg.set_ylabel(f"relative error of the CFG prediction, w = {w:g} (log scale)")
        ax_cfg.set_title(f"(c) CFG prediction $(1+w)\\hat\\varepsilon(x,c) - w\\hat\\varepsilon(x,\\varnothing)$, "
                         f"w = {w:g},\nagainst the exact one, by t (points from $p_t(x|c)$,\nfirst 4 classes; colours "
                         "as in (b))", loc="left")
        ax_null.legend(frameon=False, loc="lower left", fontsize=8.5)
        fig.suptitle("Conditioning dropout ablation: five ring2d networks identical but for p_uncond, measured "
                     "against the exact scores ($\\sigma^2$-weighted relative errors)", fontsize=12, weight="bold")
        return _save(fig, path)


# --------------------------------------------------------------------------------------------------------------
# All four
# --------------------------------------------------------------------------------------------------------------
def plot_network_all(out_dir: str | pathlib.Path, checkpoints: str | pathlib.Path | None = None,
                     quick: bool = False) -> list[pathlib.Path]:
    """Write the network figures of :data:`NETWORK_FIGURES` into ``out_dir`` from the checkpoints in
    ``checkpoints`` (default: :func:`verify.claims.network.default_checkpoints`), skipping with a printed note
    each figure whose checkpoints are missing (the score-error figure is drawn with the main networks there are,
    and a note names the ones it lacks).

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Output folder (created if missing).
    checkpoints : str or pathlib.Path, optional
        Folder laid out as ``checkpoints/`` (``ring2d``, ``attributes2d``, ``tokens16d``, ``ablation/``,
        ``imperfect/``).
    quick : bool, optional
        Smaller samples (``RunConfig(quick=True)``).

    Returns
    -------
    list of pathlib.Path
        The paths written, in the order of :data:`NETWORK_FIGURES`, without the skipped ones.
    """
    out = pathlib.Path(out_dir)
    folder = pathlib.Path(checkpoints) if checkpoints is not None else default_checkpoints()
    models = load_models(folder)
    config = RunConfig(quick=quick, show_progress=False, checkpoints=str(folder))
    missing_main = [w for w, d in models["main"].items() if d is None]
    missing_ablation = [f"ablation/ring2d_p{p}" for p, d in models["ablation"].items() if d is None]
    jobs = [(NETWORK_FIGURES[0], plot_network_score_error, [] if len(missing_main) < len(MAIN) else missing_main),
            (NETWORK_FIGURES[1], plot_network_cfg_samples, [w for w in missing_main if w == "ring2d"]),
            (NETWORK_FIGURES[2], plot_network_attention, [w for w in missing_main if w == "tokens16d"]),
            (NETWORK_FIGURES[3], plot_dropout_ablation, missing_ablation)]
    written = []
    for name, plot, missing in jobs:
        if missing:
            print(f"{name}: skipped, no checkpoint for {', '.join(missing)} in {folder}")
            continue
        if name == NETWORK_FIGURES[0] and missing_main:
            print(f"{name}: drawn without {', '.join(missing_main)} (no checkpoint in {folder})")
        written.append(plot(out / name, models, config))
    return written
