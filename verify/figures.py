"""Figures of the ground-truth worlds of :mod:`toy_models.scenarios` and of what guidance does to them.

``plot_worlds(path)`` draws the six named worlds in one 2 x 3 PNG (matplotlib object API, Agg canvas, no
pyplot state). ``plot_guided_score_fields``, ``plot_tilted_densities`` and ``plot_negative_and_composition``
draw the guided score field on ring2d, the 1-D tilted targets of CFG, and negative prompts and composition on
attributes2d; ``plot_all(out_dir)`` writes all four. Run
``python -c "from verify.figures import plot_all; plot_all('figures')"``.

Every density here is exact: log densities come from :func:`verify.tilted.tilted_law` (or a hand-built
:class:`~verify.tilted.TiltedLaw`) and are normalised numerically on the plotted grid (trapezoid rule in log
space), which :func:`purple_dog_mass` and the tests check against the quadrature of :mod:`verify.tilted`.
"""

from __future__ import annotations

import math
import pathlib
import textwrap
from collections.abc import Hashable, Sequence

import matplotlib as mpl
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure

from toy_models.denoiser import AnalyticDenoiser
from toy_models.scenarios import WORLDS, get_world
from toy_models.schedules import get_schedule
from toy_models.world import World

from .guidance import LinearRule, linear_rule
from .tilted import TiltedLaw, tilted_law

__all__ = ["plot_worlds", "plot_guided_score_fields", "plot_tilted_densities", "plot_negative_and_composition",
           "plot_all", "guided_score", "normalise_on_grid", "purple_dog_mass"]

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


# --------------------------------------------------------------------------------------------------------------
# Shared pieces of the guidance figures: grids, normalisation, formulas
# --------------------------------------------------------------------------------------------------------------
_LINE_X = np.linspace(-6.0, 8.0, 4001)
#: 1-D grid of the tilted densities (gauss1d, bimodal1d): every tilted law here has lost its mass by -6 and 8
_ATTR_X1, _ATTR_X2 = np.linspace(-5.0, 13.0, 361), np.linspace(-5.0, 5.0, 201)
#: attributes2d grid, spacing 0.05; source 001's negative-prompt law peaks at x1 = 10 (sd 0.5), hence 13
_TOKEN_ORDER = {"red": 0, "blue": 1, "dog": 2, "cat": 3}


def _trapezoid_weights(*axes: np.ndarray) -> np.ndarray:
    """Trapezoid-rule weights of a tensor grid, shaped like ``meshgrid(*axes)`` (``[len(y), len(x)]`` in 2-D)."""
    out = np.ones(())
    for axis in axes:
        gaps = np.diff(axis)
        w = np.concatenate([gaps, [0.0]]) / 2 + np.concatenate([[0.0], gaps]) / 2
        out = w[:, None] * out[None] if out.ndim else w
    return out


def normalise_on_grid(log_q: np.ndarray, *axes: np.ndarray) -> np.ndarray:
    """Normalise an unnormalised log density on a tensor grid: trapezoid rule, computed in log space.

    Parameters
    ----------
    log_q : np.ndarray
        Log density on the grid, shaped like ``meshgrid(*axes)`` (``[len(x)]`` in 1-D, ``[len(y), len(x)]``
        in 2-D).
    *axes : np.ndarray
        The grid's 1-D axes, x first.

    Returns
    -------
    np.ndarray
        The density (same shape), integrating to 1 under the same trapezoid rule.
    """
    log_w = log_q + np.log(_trapezoid_weights(*axes))
    peak = log_w.max()
    log_z = peak + math.log(np.exp(log_w - peak).sum())
    return np.exp(log_q - log_z)


def _grid_mass(density: np.ndarray, mask: np.ndarray, *axes: np.ndarray) -> float:
    """Trapezoid mass of ``density`` on the grid points where ``mask`` holds."""
    return float((density * mask * _trapezoid_weights(*axes)).sum())


def _mean_var_1d(density: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """Mean and variance of a normalised 1-D grid density."""
    w = density * _trapezoid_weights(x)
    mean = float((w * x).sum())
    return mean, float((w * (x - mean) ** 2).sum())


def _mesh(x1: np.ndarray, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Meshgrid ``X, Y`` (``[len(x2), len(x1)]``) and the points ``[N, 2]`` as a float64 tensor."""
    gx, gy = np.meshgrid(x1, x2)
    return gx, gy, torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], axis=1))


def _log_q(law: TiltedLaw, pts: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """Unnormalised log density of ``law`` at ``pts``, reshaped."""
    return law.log_unnormalized(pts).numpy().reshape(shape)


def _cfg_density_1d(world: World, w: float, x: np.ndarray = _LINE_X) -> np.ndarray:
    """The normalised CFG target :math:`p(x|1)^{1+w} p(x)^{-w}` of a 1-D world on the grid ``x``."""
    law = tilted_law(world, linear_rule("cfg", condition=1, w=w))
    return normalise_on_grid(_log_q(law, torch.as_tensor(x[:, None]), x.shape), x)


def guided_score(denoiser: AnalyticDenoiser, x: torch.Tensor, t: float, condition: Hashable, w: float
                 ) -> torch.Tensor:
    r"""Ho-Salimans guided score :math:`(1 + w)\nabla\log p_t(x|c) - w\nabla\log p_t(x)`, ``[N, d]``."""
    return (1.0 + w) * denoiser.score(x, t, condition) - w * denoiser.score(x, t, None)


def _composition_density(x1: np.ndarray = _ATTR_X1, x2: np.ndarray = _ATTR_X2) -> np.ndarray:
    """The normalised "purple dog" law :math:`p(x|red\\,dog)\\,p(x|blue\\,dog)/p(x)` on the grid."""
    rule = linear_rule("compose", conditions=[("red", "dog"), ("blue", "dog")], weights=[1.0, 1.0])
    gx, _, pts = _mesh(x1, x2)
    return normalise_on_grid(_log_q(tilted_law(get_world("attributes2d"), rule), pts, gx.shape), x1, x2)


def purple_dog_mass(*, half_width: float = 1.0, x1: np.ndarray = _ATTR_X1, x2: np.ndarray = _ATTR_X2) -> float:
    """Mass of the composed law ``compose(red dog: 1, blue dog: 1)`` on attributes2d in ``|x1| < half_width``.

    Parameters
    ----------
    half_width : float, optional
        Half-width of the band around ``x1 = 0`` (between the red dogs at -2 and the blue dogs at +2).
    x1, x2 : np.ndarray, optional
        The grid axes (default: the grid of :func:`plot_negative_and_composition`).

    Returns
    -------
    float
        The trapezoid mass of the grid-normalised density in the band, the number that figure prints.
    """
    gx, _, _ = _mesh(x1, x2)
    return _grid_mass(_composition_density(x1, x2), np.abs(gx) < half_width, x1, x2)


def _cond_words(cond: Hashable) -> str:
    """A condition in words: ``None`` -> "", tokens in the order colour, shape."""
    if cond is None:
        return ""
    tokens = cond if isinstance(cond, tuple | frozenset) else (cond,)
    return r"\,|\," + r"\ ".join(rf"\mathrm{{{t}}}" for t in sorted(tokens, key=lambda t: _TOKEN_ORDER.get(t, 9)))


def _formula(terms: Sequence[tuple[Hashable, float]]) -> str:
    r"""Mathtext of :math:`\prod_i p(x|c_i)^{e_i}` from ``(condition, exponent)`` pairs (exponent 1 omitted)."""
    parts = [f"p(x{_cond_words(c)})" + ("" if e == 1 else f"^{{{e:g}}}") for c, e in terms if e != 0]
    return "$" + r"\,".join(parts) + "$"


def _save(fig: Figure, path: str | pathlib.Path) -> pathlib.Path:
    """Write ``fig`` to ``path`` at 150 dpi, creating parent directories."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return path


# --------------------------------------------------------------------------------------------------------------
# Figure 1: the guided score field on ring2d
# --------------------------------------------------------------------------------------------------------------
def _ring_fields(ts: Sequence[float], ws: Sequence[float], condition: int, axis: np.ndarray, stream: np.ndarray
                 ) -> dict[tuple[float, float], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each ``(t, w)``: guided log density minus its max on ``axis^2``, and the guided score on ``stream^2``."""
    world = get_world("ring2d")
    den = AnalyticDenoiser(world, "vp-linear")
    gx, _, pts = _mesh(axis, axis)
    sx, _, spts = _mesh(stream, stream)
    out = {}
    for t in ts:
        for w in ws:
            log_q = _log_q(tilted_law(world, linear_rule("cfg", condition=condition, w=w), t=t), pts, gx.shape)
            score = guided_score(den, spts, t, condition, w).numpy()
            out[t, w] = (log_q - log_q.max(), score[:, 0].reshape(sx.shape), score[:, 1].reshape(sx.shape))
    return out


def plot_guided_score_fields(path: str | pathlib.Path, *, ts: Sequence[float] = (0.1, 0.5, 0.9),
                             ws: Sequence[float] = (0.0, 1.0, 3.0, 7.0), condition: int = 0, lim: float = 4.5,
                             clip: float = 15.0) -> pathlib.Path:
    """Guided score fields :math:`(1+w) s_t(x|c) - w s_t(x)` of ring2d over noise levels (rows) and ``w`` (columns).

    Parameters
    ----------
    path : str or pathlib.Path
        Output PNG; parent directories are created.
    ts : sequence of float, optional
        Times on the vp-linear schedule, one row each.
    ws : sequence of float, optional
        Ho-Salimans guidance strengths, one column each (``w = 0`` is the conditional score).
    condition : int, optional
        The class guided towards (class 0 sits at angle 0, mean (3, 0)).
    lim : float, optional
        The panels show ``[-lim, lim]^2``.
    clip : float, optional
        The background guided log density is shown down to ``max - clip``.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    axis, stream = np.linspace(-lim, lim, 181), np.linspace(-lim, lim, 61)
    fields = _ring_fields(ts, ws, condition, axis, stream)
    log_mag = {k: np.log10(np.hypot(u, v) + 1e-3) for k, (_, u, v) in fields.items()}
    norm = Normalize(vmin=-1.0, vmax=math.ceil(max(float(m.max()) for m in log_mag.values())))
    alphas, sigmas = get_schedule("vp-linear").alpha_sigma(torch.tensor(ts, dtype=torch.float64))
    means = get_world("ring2d").unconditional.means.numpy()
    levels = np.linspace(-clip, 0.0, 16)
    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(14, 11), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(ts), len(ws), sharex=True, sharey=True, squeeze=False)
        for i, (t, a, s) in enumerate(zip(ts, alphas.tolist(), sigmas.tolist(), strict=True)):
            for j, w in enumerate(ws):
                ax = axes[i, j]
                background, u, v = fields[t, w]
                cs = ax.contourf(axis, axis, np.maximum(background, -clip), levels=levels, cmap="Greys", alpha=0.6)
                sp = ax.streamplot(stream, stream, u, v, color=log_mag[t, w], cmap="magma_r", norm=norm,
                                   density=0.8, linewidth=0.8, arrowsize=0.8)
                mode = np.unravel_index(background.argmax(), background.shape)
                ax.scatter(axis[mode[1]], axis[mode[0]], s=60, marker="P", color="white", edgecolor="k", zorder=4)
                ax.text(0.03, 0.03, f"mode ({axis[mode[1]]:.2f}, {axis[mode[0]]:.2f})",
                        transform=ax.transAxes, fontsize=9, va="bottom",
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.85})
                others = np.arange(len(means)) != condition
                ax.scatter(*(a * means[others]).T, s=14, color="k", zorder=4)
                ax.scatter(*(a * means[condition]), s=110, marker="*", color="#d62728", edgecolor="k", zorder=5)
                ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
                if i == 0:
                    ax.set_title(f"w = {w:g}" + (" (conditional)" if w == 0 else ""), fontsize=12)
                if i == len(ts) - 1:
                    ax.set_xlabel("$x_1$")
            axes[i, 0].set_ylabel(f"t = {t:g}\n$\\alpha_t$ = {a:.3f}, $\\sigma_t$ = {s:.3f}\n\n$x_2$")
        fig.colorbar(sp.lines, ax=axes, location="right", shrink=0.5, label="$\\log_{10}$ |guided score|")
        fig.colorbar(cs, ax=axes, location="bottom", shrink=0.45, aspect=40,
                     label=f"guided log-density $\\log p_t(x|c)^{{1+w}} p_t(x)^{{-w}}$ minus its max (clipped at "
                           f"$-{clip:g}$)")
        fig.suptitle("Guided score field (1+w) s(x|c) - w s(x) on ring2d, class 0: the field pushes away from "
                     "the other classes as w grows\n"
                     "streamlines: guided score (vp-linear schedule);  red star: class 0's noised mean "
                     "$\\alpha_t\\mu_0$;  dots: the other classes' $\\alpha_t\\mu_k$;  white cross: mode of the "
                     "guided density", fontsize=12)
        return _save(fig, path)


# --------------------------------------------------------------------------------------------------------------
# Figure 2: the tilted targets of CFG in 1-D
# --------------------------------------------------------------------------------------------------------------
def _variance_curves(ws: np.ndarray) -> dict[str, np.ndarray]:
    """Variance of the normalised CFG target against ``w`` for gauss1d and bimodal1d (condition 1)."""
    return {name: np.array([_mean_var_1d(_cfg_density_1d(get_world(name), w), _LINE_X)[1] for w in ws])
            for name in ("gauss1d", "bimodal1d")}


def plot_tilted_densities(path: str | pathlib.Path, *, ws_gauss: Sequence[float] = (0, 1, 3, 7, 30),
                          ws_bimodal: Sequence[float] = (0, 1, 3, 7, 30, 100)) -> pathlib.Path:
    """The CFG target :math:`p(x|c)^{1+w} p(x)^{-w}` in 1-D: not a tempered conditional, and no concentration.

    Parameters
    ----------
    path : str or pathlib.Path
        Output PNG; parent directories are created.
    ws_gauss, ws_bimodal : sequence of float, optional
        Guidance strengths drawn in the gauss1d and bimodal1d panels.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    x = _LINE_X
    gauss, bimodal = get_world("gauss1d"), get_world("bimodal1d")
    w_axis = np.concatenate([np.linspace(0.0, 1.0, 6), np.geomspace(1.0, 100.0, 25)[1:]])
    variances = _variance_curves(w_axis)
    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(17, 5.2), layout="constrained")
        FigureCanvasAgg(fig)
        ax_g, ax_b, ax_v = fig.subplots(1, 3)
        for w, colour in zip(ws_gauss, mpl.colormaps["viridis"](np.linspace(0, 0.9, len(ws_gauss))), strict=True):
            p = _cfg_density_1d(gauss, w)
            mean, var = _mean_var_1d(p, x)
            ax_g.plot(x, p, color=colour, lw=2, label=f"w = {w:g}: mean {mean:.2f}, var {var:.3f}")
            tempered = 0.5 / (1 + w)
            ax_g.plot(x, np.exp(-((x - 1) ** 2) / (2 * tempered)) / math.sqrt(2 * math.pi * tempered),
                      color=colour, lw=1.5, ls="--")
        for x0, text, ha in [(1.0, "conditional mean 1 ", "right"), (2.0, " tilted limit 2", "left")]:
            ax_g.axvline(x0, color="0.5", lw=0.8, ls=":")
            ax_g.text(x0, 3.5, text, ha=ha, va="center", fontsize=9, color="0.3")
        ax_g.set(xlim=(-1.5, 5.0), ylim=(0, 3.7), xlabel="x", ylabel="normalised density",
                 title="(a) gauss1d: tilted $p(x|c)^{1+w}p(x)^{-w}$ (solid) vs tempered conditional "
                       "$\\mathcal{N}(1, \\frac{0.5}{1+w})$ (dashed)\nthe tilted mean drifts to 2: CFG is not "
                       "sampling $p(x|c)$ at a lower temperature")
        ax_g.legend(frameon=False, loc="upper right", bbox_to_anchor=(1.0, 0.93), title="tilted target (solid)")
        gm = bimodal.unconditional
        ax_b.fill_between(x, _density(gm, x[:, None]), color="0.6", alpha=0.4, label="p(x)")
        for w, colour in zip(ws_bimodal, mpl.colormaps["viridis"](np.linspace(0, 0.9, len(ws_bimodal))),
                             strict=True):
            p = _cfg_density_1d(bimodal, w)
            mean, var = _mean_var_1d(p, x)
            ax_b.plot(x, p, color=colour, lw=1.8, label=f"w = {w:g}: mean {mean:.2f}, var {var:.3f}")
        ax_b.set(xlim=(-4.5, 4.5), ylim=(0, 0.85), xlabel="x", ylabel="normalised density",
                 title="(b) bimodal1d, class 1: tilted $p(x|1)^{1+w}p(x)^{-w}$ for growing w\nclass 0's mode "
                       "vanishes, but class 1's mode does not sharpen")
        ax_b.legend(frameon=False, loc="upper left", title="tilted target")
        for (name, var), colour in zip(variances.items(), ["#d62728", "#1f77b4"], strict=True):
            ax_v.plot(w_axis, var, color=colour, lw=2, marker="o", ms=3, label=name)
        ax_v.plot(w_axis, 1 / (2 + w_axis), color="k", lw=1.2, ls=":", zorder=3, label="gauss1d closed form 1/(2 + w)")
        ax_v.axhline(0.5, color="0.5", lw=1, ls="--", label="0.5 = variance of p(x|c) in both worlds")
        ax_v.set_xscale("symlog", linthresh=1.0, linscale=0.6)
        ax_v.set_xticks([0, 0.5, 1, 3, 10, 30, 100], ["0", "0.5", "1", "3", "10", "30", "100"])
        ax_v.set(xlim=(0, 100), ylim=(0, 0.6), xlabel="guidance strength w (linear below 1, log above)",
                 ylabel="variance of the tilted target",
                 title="(c) variance against w: gauss1d's shrinks to 0,\nbimodal1d's stays near 0.5")
        ax_v.legend(frameon=False, loc="lower left")
        fig.suptitle("The CFG target $p(x|c)^{1+w}\\,p(x)^{-w}$ (normalised numerically): not a tempered "
                     "conditional, and not always sharper", fontsize=13, weight="bold")
        return _save(fig, path)


# --------------------------------------------------------------------------------------------------------------
# Figure 3: negative prompts and composition on attributes2d
# --------------------------------------------------------------------------------------------------------------
def _white_floor(name: str, n_blend: int = 12) -> ListedColormap:
    """``name`` (a light-to-dark sequential map) with its lowest ``n_blend`` of 256 colours blended into white,
    so that zero density reads as the white page."""
    colours = mpl.colormaps[name](np.linspace(0.0, 1.0, 256))
    ramp = np.clip(np.arange(256) / n_blend, 0.0, 1.0)[:, None]
    colours[:, :3] = ramp * colours[:, :3] + (1.0 - ramp)
    return ListedColormap(colours, name=f"{name}_white")


_DENSITY_CMAP = _white_floor("magma_r")


def _attribute_means(ax: Axes, world: World, colour: str = "k") -> None:
    """Mark and label the four component means of attributes2d."""
    gm = world.unconditional
    for k, mu in enumerate(gm.means.numpy()):
        shape = gm.attributes["shape"][k]
        ax.scatter(*mu, s=22, marker="o" if shape == "dog" else "^", color=colour, edgecolor="white", lw=0.6,
                   zorder=5)
        ax.annotate(f"{gm.attributes['colour'][k]} {shape}", mu, xytext=(0, 9 if shape == "dog" else -15),
                    textcoords="offset points", ha="center", fontsize=9,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75})


def _density_panel(ax: Axes, density: np.ndarray, title: str, label: str = "density",
                   cmap: str | ListedColormap = _DENSITY_CMAP):
    """``imshow`` of a grid density on the attributes2d grid, with its colorbar; returns the image."""
    extent = (_ATTR_X1[0], _ATTR_X1[-1], _ATTR_X2[0], _ATTR_X2[-1])
    im = ax.imshow(density, origin="lower", extent=extent, cmap=cmap, interpolation="bilinear")
    ax.figure.colorbar(im, ax=ax, label=label, shrink=0.9, pad=0.02)
    ax.set_title(title, loc="left")
    return im


def plot_negative_and_composition(path: str | pathlib.Path, *, guidance_scale: float = 3.0, w_pos: float = 3.0,
                                  w_neg: float = 1.0) -> pathlib.Path:
    """Exact targets of negative prompts (top row) and composition (bottom row) on attributes2d.

    Parameters
    ----------
    path : str or pathlib.Path
        Output PNG; parent directories are created.
    guidance_scale : float, optional
        Source 001's scale g (the negative prediction replaces the null one).
    w_pos, w_neg : float, optional
        Source 000's positive and negative strengths.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    world = get_world("attributes2d")
    x1, x2 = _ATTR_X1, _ATTR_X2
    gx, gy, pts = _mesh(x1, x2)
    pos, neg = ("dog",), ("red",)
    rules: list[LinearRule] = [
        linear_rule("negative_001", positive=pos, negative=neg, guidance_scale=guidance_scale),
        linear_rule("negative_000", positive=pos, negative=neg, w_pos=w_pos, w_neg=w_neg)]
    dens = [normalise_on_grid(_log_q(tilted_law(world, r), pts, gx.shape), x1, x2) for r in rules]
    peaks = [float(gx.ravel()[d.argmax()]) for d in dens]
    composed = _composition_density(x1, x2)
    band = _grid_mass(composed, np.abs(gx) < 1.0, x1, x2)
    terms = ((pos, w_pos), (neg, -w_neg), (None, 1.0 - w_pos - w_neg))
    as_written = TiltedLaw(tuple((world.law(c), e) for c, e in terms))
    growth = -as_written.tail_bounds()[1] / 2
    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(18, 7.4), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(2, 3, sharex=True, sharey=True)
        (a, b, c), (d, e, f) = axes
        _density_panel(a, normalise_on_grid(_log_q(tilted_law(world, linear_rule("cfg", condition=pos, w=0)),
                                                     pts, gx.shape), x1, x2),
                       "(a) no negative prompt:\n$p(x\\,|\\,\\mathrm{dog})$\nhalf red dogs, half blue dogs")
        _density_panel(b, dens[0], f"(b) source 001, the negative replaces the null, g = {guidance_scale:g}:\n"
                       f"{_formula(rules[0].terms)}\nmass moves far past the blue dog: peak at $x_1$ = {peaks[0]:.1f}")
        _density_panel(c, dens[1], f"(c) source 000, correct exponents, $w_+$ = {w_pos:g}, $w_-$ = {w_neg:g}:\n"
                       f"{_formula(rules[1].terms)}\nmass moves beyond the blue dog: peak at $x_1$ = {peaks[1]:.1f}")
        for cond, colour in [(("red", "dog"), "#d62728"), (("blue", "dog"), "#1f77b4")]:
            p = _density(world.law(cond), pts.numpy()).reshape(gx.shape)
            d.contour(gx, gy, p, levels=p.max() * np.array([0.1, 0.3, 0.5, 0.7, 0.9]), colors=colour, linewidths=1.2)
        d.figure.colorbar(a.images[0], ax=d, shrink=0.9, pad=0.02).ax.set_visible(False)  # keep panels aligned
        d.set_title("(d) $p(x\\,|\\,\\mathrm{red\\ dog})$ (red) and $p(x\\,|\\,\\mathrm{blue\\ dog})$ (blue)\n"
                    "the two laws being composed\ncontours at 10, 30, 50, 70, 90% of each peak", loc="left")
        e.axvspan(-1, 1, color="#9467bd", alpha=0.18, lw=0)
        _density_panel(e, composed, "(e) composition, weights 1 and 1: "
                       "$p(x\\,|\\,\\mathrm{red\\ dog})\\,p(x\\,|\\,\\mathrm{blue\\ dog})\\,/\\,p(x)$\n"
                       "the 'purple dog' between red and blue (shaded: $|x_1| < 1$)")
        e.text(3.5, -0.2, f"mass in the band\n$|x_1| < 1$: {band:.4f}", color="#5b2c83", fontsize=11, weight="bold")
        log_written = _log_q(as_written, pts, gx.shape)
        _density_panel(f, log_written, f"(f) as written in source 000: {_formula(terms)}\nnot normalisable: "
                       f"grows like $e^{{+{growth:g} r^2}}$ as $r \\to \\infty$ in every direction\n"
                       "(log of the unnormalised density; no normaliser exists)",
                       label="log of the unnormalised density", cmap="viridis")
        for ax in axes.ravel():
            _attribute_means(ax, world)
            ax.set(xlim=(x1[0], x1[-1]), ylim=(x2[0], x2[-1]), aspect="equal")
        for ax in axes[1]:
            ax.set_xlabel("$x_1$ (colour: red < 0 < blue)")
        for ax in axes[:, 0]:
            ax.set_ylabel("$x_2$ (shape: cat < 0 < dog)")
        fig.suptitle("Negative prompts (top: positive 'dog', negative 'red') and composition (bottom) on "
                     "attributes2d: the exact laws the guided scores target", fontsize=13, weight="bold")
        return _save(fig, path)


def plot_all(out_dir: str | pathlib.Path) -> list[pathlib.Path]:
    """Write worlds.png, guided_score_fields.png, tilted_densities.png and negative_and_composition.png.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Output folder (created if missing).

    Returns
    -------
    list of pathlib.Path
        The four paths written, in that order.
    """
    out = pathlib.Path(out_dir)
    return [plot_worlds(out / "worlds.png"), plot_guided_score_fields(out / "guided_score_fields.png"),
            plot_tilted_densities(out / "tilted_densities.png"),
            plot_negative_and_composition(out / "negative_and_composition.png")]
