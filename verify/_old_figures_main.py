"""Figures of the ground-truth worlds of :mod:`toy_models.scenarios` and of what guidance does to them.

``plot_worlds(path)`` draws the six named worlds in one 2 x 3 PNG (matplotlib object API, Agg canvas, no
pyplot state). ``plot_guided_score_fields``, ``plot_tilted_densities`` and ``plot_negative_and_composition``
draw the guided score field on ring2d, the 1-D tilted targets of CFG, and negative prompts and composition on
attributes2d. Four more compare what guided *sampling* produces with those targets: ``plot_cfg_law_vs_tilted``
(the exact laws of the guided PF-ODE and reverse SDE in 1-D against the tilted target), ``plot_quality_diversity``
(precision, recall and Frechet distance against w on ring2d), ``plot_trajectories_ring2d`` (DDIM and
Euler-Maruyama paths) and ``plot_negative_composition_samples`` (DDIM samples of negative prompts and composition
against their tilted targets); each has a data helper that the tests check. ``plot_all(out_dir)`` writes all
eight. Run ``python -c "from verify.figures import plot_all; plot_all('figures')"``.

Every density here is exact: log densities come from :func:`verify.tilted.tilted_law` (or a hand-built
:class:`~verify.tilted.TiltedLaw`) and are normalised numerically on the plotted grid (trapezoid rule in log
space), which :func:`purple_dog_mass` and the tests check against the quadrature of :mod:`verify.tilted`.
"""

from __future__ import annotations

import math
import pathlib
import textwrap
from collections.abc import Callable, Hashable, Sequence

import matplotlib as mpl
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from scipy.integrate import solve_ivp
from scipy.ndimage import gaussian_filter

from toy_models.denoiser import AnalyticDenoiser
from toy_models.gaussian_mixture import Condition, GaussianMixture
from toy_models.scenarios import WORLDS, get_world
from toy_models.schedules import get_schedule
from toy_models.world import World

from . import rules
from .claims._common import one_thread
from .exact_law import exact_gaussian_cfg_law, guided_score_1d, reverse_sde_law_1d
from .figures_rules import plot_rule_gallery
from .metrics import frechet_distance, precision_recall
from .rules import Rule, StepContext
from .samplers import ddim, ddpm, euler_maruyama, time_grid
from .tilted import TiltedLaw, linear_terms, tilted_law

__all__ = ["plot_worlds", "plot_guided_score_fields", "plot_tilted_densities", "plot_negative_and_composition",
           "plot_cfg_law_vs_tilted", "plot_quality_diversity", "plot_trajectories_ring2d",
           "plot_negative_composition_samples", "plot_all", "guided_score", "normalise_on_grid", "purple_dog_mass",
           "gauss1d_cfg_moments", "bimodal1d_cfg_laws", "pf_ode_density_1d", "sde_samples_1d",
           "quality_diversity_curves", "ring2d_trajectories", "negative_composition_samples"]

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
    law = tilted_law(world, rules.get("cfg", w=w), {"cond": 1})
    return normalise_on_grid(_log_q(law, torch.as_tensor(x[:, None]), x.shape), x)


def guided_score(denoiser: AnalyticDenoiser, x: torch.Tensor, t: float, condition: Hashable, w: float
                 ) -> torch.Tensor:
    r"""Ho-Salimans guided score :math:`(1 + w)\nabla\log p_t(x|c) - w\nabla\log p_t(x)`, ``[N, d]``."""
    return (1.0 + w) * denoiser.score(x, t, condition) - w * denoiser.score(x, t, None)


def _composition_density(x1: np.ndarray = _ATTR_X1, x2: np.ndarray = _ATTR_X2) -> np.ndarray:
    """The normalised "purple dog" law :math:`p(x|red\\,dog)\\,p(x|blue\\,dog)/p(x)` on the grid."""
    rule, conditions = _attribute_rules()["compose"]
    gx, _, pts = _mesh(x1, x2)
    return normalise_on_grid(_log_q(tilted_law(get_world("attributes2d"), rule, conditions), pts, gx.shape), x1, x2)


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
            log_q = _log_q(tilted_law(world, rules.get("cfg", w=w), {"cond": condition}, t=t), pts, gx.shape)
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
    attribute_rules = _attribute_rules(guidance_scale, w_pos, w_neg)
    negatives = [attribute_rules["negative_001"], attribute_rules["negative_000"]]
    dens = [normalise_on_grid(_log_q(tilted_law(world, r, c), pts, gx.shape), x1, x2) for r, c in negatives]
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
        _density_panel(a, normalise_on_grid(_log_q(tilted_law(world, *attribute_rules["dog"]), pts, gx.shape),
                                            x1, x2),
                       "(a) no negative prompt:\n$p(x\\,|\\,\\mathrm{dog})$\nhalf red dogs, half blue dogs")
        _density_panel(b, dens[0], f"(b) source 001, the negative replaces the null, g = {guidance_scale:g}:\n"
                       f"{_formula(linear_terms(*negatives[0]))}\nmass moves far past the blue dog: peak at $x_1$ = "
                       f"{peaks[0]:.1f}")
        _density_panel(c, dens[1], f"(c) source 000, correct exponents, $w_+$ = {w_pos:g}, $w_-$ = {w_neg:g}:\n"
                       f"{_formula(linear_terms(*negatives[1]))}\nmass moves beyond the blue dog: peak at $x_1$ = "
                       f"{peaks[1]:.1f}")
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


# --------------------------------------------------------------------------------------------------------------
# Shared pieces of the sampling figures
# --------------------------------------------------------------------------------------------------------------
_ODE_COLOUR, _SDE_COLOUR, _TILTED_COLOUR = "#1f77b4", "#ff7f0e", "k"


def _w_colours(ws: Sequence[float]) -> np.ndarray:
    """One viridis colour per guidance strength, as in :func:`plot_tilted_densities`."""
    return mpl.colormaps["viridis"](np.linspace(0, 0.9, len(ws)))


def _alpha_sigma(t: float, schedule: str = "vp-linear") -> tuple[float, float]:
    return tuple(float(v) for v in get_schedule(schedule).alpha_sigma(t))


def _marginal_start(world: World, condition: Hashable, n: int, gen: torch.Generator) -> torch.Tensor:
    r"""``n`` draws of the noised conditional :math:`p_1(x|c)` at t = 1 (``start="marginal"`` of verify.exact_law)."""
    return world.law(condition).noised(*_alpha_sigma(1.0)).sample(n, gen)


# --------------------------------------------------------------------------------------------------------------
# Figure 5: the law that CFG sampling produces vs the tilted target (1-D)
# --------------------------------------------------------------------------------------------------------------
_LAW_WS = (0.0, 1.0, 3.0, 7.0)
#: guidance strengths whose output laws are drawn as densities
_CURVE_WS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 7.0)
#: guidance strengths of the moment curves (panel c)


@one_thread()
def gauss1d_cfg_moments(w: float, *, rtol: float = 1e-9) -> dict[str, tuple[float, float]]:
    r"""Mean and variance of gauss1d's CFG laws (condition 1): the continuous-time guided ``"ode"`` and ``"sde"`` run
    from the marginal start (:func:`verify.exact_law.exact_gaussian_cfg_law`, Gaussian) and the ``"tilted"`` target
    :math:`p(x|c)^{1+w}p(x)^{-w}` (closed form of :func:`verify.tilted.tilted_law`)."""
    world = get_world("gauss1d")
    out = {}
    for sampler in ("ode", "sde"):
        mean, cov = exact_gaussian_cfg_law(world.law(1), world.law(None), w, sampler, start="marginal", rtol=rtol)
        out[sampler] = (float(mean[0]), float(cov[0, 0]))
    summary = tilted_law(world, rules.get("cfg", w=w), {"cond": 1}).summary()
    out["tilted"] = (float(summary.mean[0]), float(summary.cov[0, 0]))
    return out


@one_thread()
def pf_ode_density_1d(world: World, condition: Hashable, w: float, *, n_nodes: int = 2001, rtol: float = 1e-9
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""The density of the guided probability-flow ODE's output in 1-D (vp-linear, marginal start), by the flow map.

    ``n_nodes`` starting points :math:`x_1` spanning 9 standard deviations of :math:`p_1(x|c)` are carried from
    t = 1 to 0 by :math:`\dot x = f x - \tfrac{g^2}{2}\tilde s` (DOP853, ``rtol``); the map :math:`\Phi` is monotone,
    so the output density at :math:`x_0 = \Phi(x_1)` is :math:`p_1(x_1)/\Phi'(x_1)` (:math:`\Phi'` by central
    differences). The guided score is :func:`verify.exact_law.pf_ode_law_1d`'s (numpy, for speed), so the moments
    are that function's.

    Returns
    -------
    x0, density, weights : np.ndarray
        The output points (increasing), the density there, and the trapezoid probability of each starting node
        (sum 1): moments are ``weights @ h(x0)``.
    """
    sched = get_schedule("vp-linear")
    laws = {"cond": world.law(condition), "uncond": world.law(None)}
    score = guided_score_1d(rules.get("cfg", w=float(w)), laws, sched)  # pf_ode_law_1d's numpy score
    start = world.law(condition).noised(*_alpha_sigma(1.0))
    mean, sd = float(start.mean()[0]), math.sqrt(float(start.covariance()[0, 0]))
    x1 = np.linspace(mean - 9 * sd, mean + 9 * sd, n_nodes)

    def rhs(t: float, x: np.ndarray) -> np.ndarray:
        tt = torch.tensor(t, dtype=torch.float64)
        return float(sched.drift(tt)) * x - 0.5 * float(sched.diffusion_squared(tt)) * score(x, t)

    sol = solve_ivp(rhs, (1.0, 0.0), x1, method="DOP853", rtol=rtol, atol=rtol)
    if not sol.success:
        raise RuntimeError(f"probability-flow ODE failed: {sol.message}")
    x0 = sol.y[:, -1]
    jac = np.gradient(x0, x1)
    if np.any(jac <= 0):
        raise RuntimeError("probability-flow map is not monotone: the integration is not resolved")
    p1 = np.exp(start.log_prob(torch.as_tensor(x1[:, None])).numpy())
    weights = p1 * _trapezoid_weights(x1)
    return x0, p1 / jac, weights / weights.sum()


class _RowwiseCFG(Rule):
    r"""CFG with one strength per row of ``x``: :math:`\varepsilon_\varnothing + g_i(\varepsilon_c -
    \varepsilon_\varnothing)`, :math:`g_i = 1 + w_i`, as one ``torch.lerp`` (the arithmetic of
    :func:`verify.rules.cfg.cfg`, with a per-row weight), so that several w share one sampler run: half as many
    denoiser calls per w, where the per-call cost dominates (1-D worlds). A :mod:`verify.rules` rule used through
    :meth:`~verify.rules.Rule.guide`, but not registered (its strengths are tied to one batch layout);
    ``linear_weights`` is ``None`` because no one set of weights holds for every row."""

    name = "rowwise_cfg"
    reference = "Ho & Salimans 2022, 'Classifier-Free Diffusion Guidance', eq. 6, one w per row"

    def __init__(self, w_rows: torch.Tensor):
        if not isinstance(w_rows, torch.Tensor) or w_rows.ndim != 1 or not bool(torch.isfinite(w_rows).all()):
            raise ValueError("w_rows: expected a 1-D tensor of finite strengths, one per row")
        self.guidance_scale = (1.0 + w_rows.to(torch.float64))[:, None]
        self.space, self.branches = "eps", ("uncond", "cond")
        self.params = {"rows": int(w_rows.numel())}

    def combine(self, preds: dict[str, torch.Tensor], ctx: StepContext) -> torch.Tensor:
        if preds["cond"].shape[0] != self.guidance_scale.shape[0]:
            raise ValueError(f"x: {preds['cond'].shape[0]} rows for {self.guidance_scale.shape[0]} strengths")
        return torch.lerp(preds["uncond"], preds["cond"], self.guidance_scale)


@one_thread()
def sde_samples_1d(world: World, condition: Hashable, ws: Sequence[float], *, n: int = 20_000, n_steps: int = 400,
                   seed: int = 0) -> np.ndarray:
    """``n`` outputs per w of Euler-Maruyama (``n_steps`` uniform steps, t = 1 to 0, marginal start) on CFG of the
    world's exact denoiser, ``[len(ws), n]``; one run carries every w (rows of :class:`_RowwiseCFG`)."""
    gen = torch.Generator().manual_seed(seed)
    x = _marginal_start(world, condition, n * len(ws), gen)
    w_rows = torch.as_tensor(ws, dtype=torch.float64).repeat_interleave(n)
    guided = _RowwiseCFG(w_rows).guide(AnalyticDenoiser(world, "vp-linear"), {"cond": condition})
    return euler_maruyama(guided, x, time_grid(n_steps), generator=gen)[:, 0].numpy().reshape(len(ws), n)


@one_thread()
def bimodal1d_cfg_laws(ws: Sequence[float], *, n_nodes: int = 1201, n_cells: int = 400) -> dict[float, dict]:
    r"""bimodal1d's CFG laws (condition 1, marginal start) for each w: ``"ode"``, ``"sde"`` and ``"tilted"`` map to
    ``(mean, variance)`` and ``"flow"`` to the ODE's ``(x0, density)``.

    The ODE's moments and density come from the flow map (:func:`pf_ode_density_1d`, ``n_nodes`` nodes; they agree
    with :func:`verify.exact_law.pf_ode_law_1d` to 1e-8), the SDE's from its Fokker-Planck solve
    (:func:`verify.exact_law.reverse_sde_law_1d`, ``n_cells`` cells and steps: error about 1e-3), the tilted target's
    by the trapezoid rule on the normalised target."""
    world = get_world("bimodal1d")
    out = {}
    for w in ws:
        x0, density, weights = pf_ode_density_1d(world, 1, w, n_nodes=n_nodes, rtol=1e-8)
        mean = float(weights @ x0)
        sde = reverse_sde_law_1d(rules.get("cfg", w=w), {"cond": world.law(1), "uncond": world.law(None)},
                                 n_cells=n_cells, n_steps=n_cells)
        out[w] = {"ode": (mean, float(weights @ (x0 - mean) ** 2)), "sde": (sde.mean, sde.var),
                  "tilted": _mean_var_1d(_cfg_density_1d(world, w), _LINE_X), "flow": (x0, density)}
    return out


def _gauss_pdf(x: np.ndarray, mean: float, var: float) -> np.ndarray:
    return np.exp(-((x - mean) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)


def _law_label(w: float, law: tuple[float, float], tilted: tuple[float, float]) -> str:
    return f"w = {w:g}: {law[0]:.2f}, {law[1]:.3f}   (tilted {tilted[0]:.2f}, {tilted[1]:.3f})"


def _moment_panels(ax_mean: Axes, ax_var: Axes, ws: Sequence[float], moments: Sequence[dict], title: str) -> None:
    """Panel (c): mean (top) and variance (bottom) against w for the ODE, the SDE and the tilted target."""
    for key, colour, style, label in [("ode", _ODE_COLOUR, "-", "guided PF-ODE"),
                                      ("sde", _SDE_COLOUR, "-", "guided reverse SDE"),
                                      ("tilted", _TILTED_COLOUR, "--", "tilted target")]:
        for j, ax in enumerate((ax_mean, ax_var)):
            ax.plot(ws, [m[key][j] for m in moments], color=colour, ls=style, lw=2, marker="o", ms=3.5, label=label)
    ax_mean.set(ylabel="mean", title=title)
    ax_mean.tick_params(labelbottom=False)
    ax_var.set(xlabel="guidance strength w", ylabel="variance", ylim=(0, None))
    ax_mean.legend(frameon=False, loc="upper left")


def plot_cfg_law_vs_tilted(path: str | pathlib.Path, *, ws: Sequence[float] = _LAW_WS,
                           curve_ws: Sequence[float] = _CURVE_WS, n_sde: int = 12_000, n_steps: int = 400,
                           seed: int = 0) -> pathlib.Path:
    r"""The law CFG sampling produces vs the tilted target :math:`p(x|c)^{1+w}p(x)^{-w}`, for growing w.

    Rows: gauss1d and bimodal1d (condition 1), both started from the marginal :math:`p_1(x|c)`. Columns: (a) the
    exact output density of the continuous-time guided PF-ODE, (b) that of the guided reverse SDE, each with the
    tilted target dashed in the same colour, and (c) mean and variance against w. gauss1d's ODE and SDE laws are
    Gaussian (:func:`gauss1d_cfg_moments`); bimodal1d's ODE density comes from the flow map
    (:func:`pf_ode_density_1d`) and its SDE law is drawn as a histogram of Euler-Maruyama samples
    (:func:`sde_samples_1d`; at w = 0 the law is :math:`p(x|c)` exactly and is drawn as such), with the
    exact moments of :func:`bimodal1d_cfg_laws` in the legends.

    Parameters
    ----------
    path : str or pathlib.Path
        Output PNG; parent directories are created.
    ws : sequence of float, optional
        Guidance strengths drawn as densities (each must be in ``curve_ws``).
    curve_ws : sequence of float, optional
        Guidance strengths of the moment curves.
    n_sde, n_steps, seed : int, optional
        Euler-Maruyama samples per w > 0, its steps, and the seed of its generator.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    gauss, bimodal = get_world("gauss1d"), get_world("bimodal1d")
    with one_thread():
        laws = {"gauss1d": {w: gauss1d_cfg_moments(w) for w in curve_ws}, "bimodal1d": bimodal1d_cfg_laws(curve_ws)}
        sampled = [w for w in ws if w != 0]
        sde = dict(zip(sampled, sde_samples_1d(bimodal, 1, sampled, n=n_sde, n_steps=n_steps, seed=seed), strict=True))
    x = _LINE_X
    colours = _w_colours(ws)
    bins = np.arange(-1.0, 6.0, 0.1)
    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(19, 10.5), layout="constrained")
        FigureCanvasAgg(fig)
        gs = fig.add_gridspec(4, 3, width_ratios=[1.3, 1.3, 1.0])
        for row, world in enumerate([gauss, bimodal]):
            at = laws[world.name]
            ax_o = fig.add_subplot(gs[2 * row:2 * row + 2, 0])
            ax_s = fig.add_subplot(gs[2 * row:2 * row + 2, 1], sharex=ax_o, sharey=ax_o)
            ax_m, ax_v = fig.add_subplot(gs[2 * row, 2]), fig.add_subplot(gs[2 * row + 1, 2])
            for w, colour in zip(ws, colours, strict=True):
                mom = at[w]
                for ax in (ax_o, ax_s):
                    ax.plot(x, _cfg_density_1d(world, w), color=colour, lw=1.6, ls="--")
                if world is gauss:
                    for ax, key in ((ax_o, "ode"), (ax_s, "sde")):
                        ax.plot(x, _gauss_pdf(x, *mom[key]), color=colour, lw=2.2,
                                label=_law_label(w, mom[key], mom["tilted"]))
                    continue
                ax_o.plot(*mom["flow"], color=colour, lw=2.2, label=_law_label(w, mom["ode"], mom["tilted"]))
                label = _law_label(w, mom["sde"], mom["tilted"])
                if w == 0:
                    ax_s.plot(x, _density(world.law(1), x[:, None]), color=colour, lw=2.2, label=label)
                else:
                    ax_s.hist(sde[w], bins=bins, density=True, histtype="step", color=colour, lw=1.8, label=label)
            name = f"$\\bf{{{world.name}}}$"
            if world is gauss:
                ode_how = sde_how = "exact Gaussian law (moment ODEs of verify.exact_law)"
            else:
                ode_how = "exact density from the flow map (1201 starting points)"
                sde_how = (f"histogram of {n_sde // 1000}k Euler-Maruyama samples ({n_steps} steps) per w > 0;"
                           " w = 0: p(x|c) exactly")
            note = "" if world is gauss else "\nthe tilted targets (dashed) are nearly the same for every w"
            ax_o.set_title(f"(a) {name}: guided PF-ODE output (solid) vs tilted target (dashed)\n{ode_how}{note}",
                           loc="left")
            ax_s.set_title(f"(b) {name}: guided reverse-SDE output (solid) vs tilted target (dashed)\n{sde_how}"
                           f"{note}", loc="left")
            for ax, key in ((ax_o, "ODE"), (ax_s, "SDE")):
                ax.legend(frameon=False, loc="upper left", fontsize=8.5, title_fontsize=8.5, alignment="left",
                          title=f"{key} output law: mean, variance" + (" (exact)" if world is bimodal else ""))
                ax.set(xlabel="x", ylabel="density")
            ax_s.tick_params(labelleft=True)
            _moment_panels(ax_m, ax_v, curve_ws, [at[w] for w in curve_ws],
                           f"(c) {name}: mean and variance of the three laws against w")
            if world is gauss:
                ax_o.set(xlim=(-1.5, 4.0), ylim=(0, 3.6))
                mean, var = at[ws[-1]]["ode"]
                ax_o.annotate(f"w = {ws[-1]:g}: peak {1 / math.sqrt(2 * math.pi * var):.1f} (off scale),\n"
                              f"sd {math.sqrt(var):.3f}", (mean + 0.05, 2.6), xytext=(10, 0),
                              textcoords="offset points", fontsize=9, color="0.2", va="center")
            else:
                ax_o.set(xlim=(-1.0, 5.5), ylim=(0, 1.9))
        fig.suptitle("The law CFG sampling produces is not the tilted target $p(x|c)^{1+w}p(x)^{-w}$, and the ODE "
                     "and SDE produce different laws (Bradley & Nakkiran 2024)\ncontinuous-time guided samplers on "
                     "vp-linear, started from the noised conditional $p_1(x|c)$; at w = 0 all three are $p(x|c)$",
                     fontsize=13, weight="bold")
        return _save(fig, path)


# --------------------------------------------------------------------------------------------------------------
# Figure 6: quality against diversity on ring2d
# --------------------------------------------------------------------------------------------------------------
_QD_WS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0)
_QD_X1, _QD_X2 = np.linspace(-1.0, 7.0, 321), np.linspace(-4.0, 4.0, 321)
#: grid of the ring2d class-0 densities (spacing 0.025): class 0 is N((3, 0), diag(0.04, 0.25))


def _hdr_mask(density: np.ndarray, level: float, *axes: np.ndarray) -> np.ndarray:
    """The highest-density region of a normalised grid density holding ``level`` of its trapezoid mass."""
    mass = (density * _trapezoid_weights(*axes)).ravel()
    order = np.argsort(density.ravel())[::-1]
    keep = np.zeros(density.size, dtype=bool)
    keep[order[: int(np.searchsorted(np.cumsum(mass[order]), level)) + 1]] = True
    return keep.reshape(density.shape)


def _kde_on_grid(x: np.ndarray, x1: np.ndarray = _QD_X1, x2: np.ndarray = _QD_X2) -> tuple[np.ndarray, np.ndarray]:
    r"""Binned Gaussian KDE of 2-D samples on the grid (bandwidth: Scott's :math:`n^{-1/6}` times each coordinate's
    standard deviation, axis-aligned), and its value at each sample (``[len(x2), len(x1)]``, ``[n]``)."""
    dx1, dx2 = x1[1] - x1[0], x2[1] - x2[0]
    edges1 = np.concatenate([x1 - dx1 / 2, [x1[-1] + dx1 / 2]])
    edges2 = np.concatenate([x2 - dx2 / 2, [x2[-1] + dx2 / 2]])
    hist, _, _ = np.histogram2d(x[:, 1], x[:, 0], bins=(edges2, edges1))
    h = len(x) ** (-1.0 / 6.0)
    sd = x.std(axis=0)
    kde = gaussian_filter(hist, sigma=(h * sd[1] / dx2, h * sd[0] / dx1), mode="constant") / (len(x) * dx1 * dx2)
    i1 = np.clip(np.round((x[:, 0] - x1[0]) / dx1).astype(int), 0, len(x1) - 1)
    i2 = np.clip(np.round((x[:, 1] - x2[0]) / dx2).astype(int), 0, len(x2) - 1)
    return kde, kde[i2, i1]


@one_thread()
def quality_diversity_curves(ws: Sequence[float] = _QD_WS, *, n: int = 20_000, n_steps: int = 50, seed: int = 0,
                             condition: int = 0, level: float = 0.95, n_reference: int = 100_000) -> dict:
    r"""Precision, recall and Frechet distance to :math:`p(x|c)` of CFG samples on ring2d, against w.

    Samplers: ``"ddim"`` (deterministic) and ``"ddpm"``, ``n_steps`` uniform steps from t = 1, ``n`` points from
    the prior N(0, I), the same start for every w. ``"tilted"``: the tilted target, normalised on the grid
    ``_QD_X1 x _QD_X2``.

    * precision :math:`P_{model}(H_{target})` (:func:`verify.metrics.precision_recall` on the samples: exact target
      density); for the tilted target, its grid mass in :math:`H_{target}`;
    * recall :math:`P_{target}(H_{model})`: the exact target's grid mass in the model's highest-density region at
      ``level``, where for samples the model density is a binned Gaussian KDE (:func:`_kde_on_grid`) and its
      threshold the (1 - level) quantile of the KDE at the samples. The KDE widens the region slightly: at
      :math:`p_{model} = p_{target}` recall is about :math:`1 - (1 - \text{level})^{1 + h^2}`, 0.955 for n = 20k;
    * Frechet distance between the first two moments (:func:`verify.metrics.frechet_distance`), to the exact
      :math:`p(x|c)`.

    Returns
    -------
    dict
        ``{"ws": array, "ddim" | "ddpm" | "tilted": {"precision", "precision_se", "recall", "fd": arrays},
        "samples": {(sampler, w): [n, 2] arrays}}``.
    """
    world = get_world("ring2d")
    target = world.law(condition)
    den = AnalyticDenoiser(world, "vp-linear")
    gx, _, pts = _mesh(_QD_X1, _QD_X2)
    p_target = _density(target, pts.numpy()).reshape(gx.shape)
    h_target = _hdr_mask(p_target, level, _QD_X1, _QD_X2)
    x_start = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    times = time_grid(n_steps)
    out: dict = {"ws": np.asarray(ws, dtype=float), "samples": {}}
    for name in ("ddim", "ddpm", "tilted"):
        out[name] = {key: np.zeros(len(ws)) for key in ("precision", "precision_se", "recall", "fd")}
    for j, w in enumerate(ws):
        for name, sampler in (("ddim", ddim), ("ddpm", ddpm)):
            gen = torch.Generator().manual_seed(seed + 1)
            x = sampler(rules.get("cfg", w=w).guide(den, {"cond": condition}), x_start, times, generator=gen)
            pr = precision_recall(x, target, level=level, n_reference=n_reference,
                                  generator=torch.Generator().manual_seed(seed + 2))
            kde, at_samples = _kde_on_grid(x.numpy())
            h_model = kde >= np.quantile(at_samples, 1.0 - level)
            res = out[name]
            res["precision"][j], res["precision_se"][j] = pr.precision, pr.precision_se
            res["recall"][j] = _grid_mass(p_target, h_model, _QD_X1, _QD_X2)
            res["fd"][j] = frechet_distance(x, target)
            out["samples"][name, w] = x.numpy()
        q = normalise_on_grid(_log_q(tilted_law(world, rules.get("cfg", w=w), {"cond": condition}), pts, gx.shape),
                              _QD_X1, _QD_X2)
        weights = (q * _trapezoid_weights(_QD_X1, _QD_X2)).ravel()
        mean = weights @ pts.numpy()
        centred = pts.numpy() - mean
        cov = (centred * weights[:, None]).T @ centred
        res = out["tilted"]
        res["precision"][j] = _grid_mass(q, h_target, _QD_X1, _QD_X2)
        res["recall"][j] = _grid_mass(p_target, _hdr_mask(q, level, _QD_X1, _QD_X2), _QD_X1, _QD_X2)
        res["fd"][j] = frechet_distance(GaussianMixture([1.0], mean[None], cov[None]), target)
    return out


def plot_quality_diversity(path: str | pathlib.Path, *, ws: Sequence[float] = _QD_WS, n: int = 20_000,
                           n_steps: int = 50, seed: int = 0, condition: int = 0,
                           shown: Sequence[float] = (0.0, 3.0, 10.0)) -> pathlib.Path:
    """Precision, recall and Frechet distance of CFG samples on ring2d against w (data:
    :func:`quality_diversity_curves`): guidance trades recall for precision, until the deterministic sampler
    overshoots the class.

    Parameters
    ----------
    path : str or pathlib.Path
        Output PNG; parent directories are created.
    ws : sequence of float, optional
        Guidance strengths.
    n, n_steps, seed : int, optional
        Samples per sampler and w, sampler steps, seed.
    condition : int, optional
        The ring2d class guided towards.
    shown : sequence of float, optional
        Guidance strengths whose samples panels (a) and (b) show (each must be in ``ws``).

    Returns
    -------
    pathlib.Path
        The path written.
    """
    with one_thread():
        data = quality_diversity_curves(ws, n=n, n_steps=n_steps, seed=seed, condition=condition)
    world = get_world("ring2d")
    ws_arr = data["ws"]
    gx, gy, pts = _mesh(_QD_X1, _QD_X2)
    p_target = _density(world.law(condition), pts.numpy()).reshape(gx.shape)
    q_max = normalise_on_grid(_log_q(tilted_law(world, rules.get("cfg", w=max(shown)), {"cond": condition}), pts,
                                     gx.shape), _QD_X1, _QD_X2)
    log_p = world.unconditional.log_prob(pts).numpy().reshape(gx.shape)
    styles = {"ddim": ("-", "o", f"DDIM, {n_steps} steps (deterministic)"),
              "ddpm": ("--", "s", f"DDPM, {n_steps} steps (stochastic)"),
              "tilted": (":", "D", "tilted target $p(x|c)^{1+w}p(x)^{-w}$ (exact, on a grid)")}
    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(17, 10.5), layout="constrained")
        FigureCanvasAgg(fig)
        (ax_a, ax_b, ax_plane), (ax_p, ax_r, ax_fd) = fig.subplots(2, 3)
        for ax, name in ((ax_a, "ddim"), (ax_b, "ddpm")):
            ax.contourf(gx, gy, np.maximum(log_p, log_p.max() - 10), levels=10, cmap="Greys", alpha=0.3)
            for dens, ls, label in ((p_target, "--", "95% HDR of p(x|c), the law to match"),
                                    (q_max, ":", f"95% HDR of the tilted target, w = {max(shown):g}")):
                level = float(dens[_hdr_mask(dens, 0.95, _QD_X1, _QD_X2)].min())
                ax.contour(gx, gy, dens, levels=[level], colors="k", linewidths=1.6, linestyles=ls)
                ax.plot([], [], color="k", ls=ls, label=label)
            for w, colour in zip(shown, _w_colours(shown), strict=True):
                x = data["samples"][name, w]
                kde, at_samples = _kde_on_grid(x)
                ax.scatter(*x[:800].T, s=2, color=colour, alpha=0.5, rasterized=True)
                ax.contour(gx, gy, kde, levels=[float(np.quantile(at_samples, 0.05))], colors=[colour],
                           linewidths=2.0)
                ax.plot([], [], color=colour, lw=2, marker="o", ms=3, label=f"w = {w:g}: samples, 95% HDR (KDE)")
            ax.legend(frameon=False, loc="upper left", fontsize=8.5,
                      title=f"{styles[name][2]}", title_fontsize=8.5)
            ax.set(xlim=(1.8, 5.0), ylim=(-1.5, 2.9), aspect="equal", xlabel="$x_1$ (radial)",
                   ylabel="$x_2$ (tangential)")
        ax_a.set_title(f"(a) DDIM, class {condition} (mean (3, 0)): as w grows the\nsamples narrow and move outward, "
                       "out of\np(x|c)'s high-density region (the ODE overshoots)", loc="left")
        ax_b.set_title("(b) DDPM, same starts: the samples narrow\n(recall falls) but stay inside p(x|c)'s\n"
                       "high-density region (precision stays high)", loc="left")
        for name, (ls, marker, label) in styles.items():
            res = data[name]
            kw = {"color": {"ddim": "#1f77b4", "ddpm": "#ff7f0e", "tilted": "k"}[name], "ls": ls, "marker": marker,
                  "ms": 4, "lw": 1.8, "label": label}
            ax_p.plot(ws_arr, res["precision"], **kw)
            ax_r.plot(ws_arr, res["recall"], **kw)
            ax_fd.plot(ws_arr, res["fd"], **kw)
            ax_plane.plot(res["recall"], res["precision"], **kw)
        for name in ("ddim", "ddpm"):
            for j, w in enumerate(ws_arr):
                if name == "ddpm" and w not in (0, max(ws_arr)):
                    continue
                ax_plane.annotate(f"w={w:g}", (data[name]["recall"][j], data[name]["precision"][j]),
                                  xytext=(5, -3 if name == "ddim" else 5), textcoords="offset points", fontsize=8,
                                  color={"ddim": "#1f77b4", "ddpm": "#ff7f0e"}[name])
        for ax in (ax_p, ax_r):
            ax.axhline(0.95, color="0.6", lw=0.8, ls=":")
            ax.set(xlabel="guidance strength w", ylim=(0, 1.03))
        ax_p.set(ylabel="precision")
        ax_p.set_title("(d) precision $P_{model}(H_{p(x|c)})$: the fraction of samples inside p(x|c)'s 95% HDR\n"
                       "(exact density of p(x|c); 0.95 when the laws agree)", loc="left")
        ax_r.set(ylabel="recall")
        ax_r.set_title("(e) recall $P_{p(x|c)}(H_{model})$: p(x|c)'s mass inside the samples' 95% HDR\n"
                       "(samples' density: binned KDE, about +0.005; at w = 0 the gap to 0.95 is\n"
                       f"the {n_steps}-step samplers' discretisation error)", loc="left")
        ax_fd.set(xlabel="guidance strength w", ylabel="Frechet distance to p(x|c)", ylim=(0, None))
        ax_fd.set_title("(f) Frechet distance to the conditional law p(x|c)\n(first two moments)", loc="left")
        ax_plane.set(xlabel="recall", ylabel="precision", xlim=(0, 1.0), ylim=(0, 1.05))
        ax_plane.set_title("(c) precision against recall: DDPM trades recall for precision;\nDDIM gains precision "
                           "only up to w = 0.5, then loses both", loc="left")
        ax_plane.legend(frameon=False, loc="lower right", fontsize=8.5)
        ax_fd.legend(frameon=False, loc="upper left", fontsize=8.5)
        fig.suptitle(f"Guidance trades recall for precision, until the deterministic sampler overshoots: CFG on "
                     f"ring2d, class {condition}, {n // 1000}k samples per point, from N(0, I) at t = 1",
                     fontsize=13, weight="bold")
        return _save(fig, path)


# --------------------------------------------------------------------------------------------------------------
# Figure 7: sample trajectories on ring2d
# --------------------------------------------------------------------------------------------------------------
@one_thread()
def ring2d_trajectories(ws: Sequence[float] = (0.0, 3.0, 7.0), *, n: int = 40, n_steps: int = 100, seed: int = 0,
                        condition: int = 0) -> dict[tuple[str, float], np.ndarray]:
    r"""Trajectories of CFG sampling on ring2d from t = 1 to 0: ``{(sampler, w): [n_steps + 1, n, 2]}`` for
    ``"ddim"`` (deterministic) and ``"euler_maruyama"``, ``n_steps`` uniform steps, frame 0 the start (``n`` draws
    of N(0, I), the same for every w and sampler; Euler-Maruyama also reuses one noise stream for every w)."""
    world = get_world("ring2d")
    den = AnalyticDenoiser(world, "vp-linear")
    times = time_grid(n_steps)
    x_start = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    out = {}
    for name, sampler in (("ddim", ddim), ("euler_maruyama", euler_maruyama)):
        for w in ws:
            frames = [x_start.numpy().copy()]
            gen = torch.Generator().manual_seed(seed + 1)
            sampler(rules.get("cfg", w=w).guide(den, {"cond": condition}), x_start, times, generator=gen,
                    callback=lambda i, t, x, eps, frames=frames: frames.append(x.numpy().copy()))
            out[name, w] = np.stack(frames)
    return out


def plot_trajectories_ring2d(path: str | pathlib.Path, *, ws: Sequence[float] = (0.0, 3.0, 7.0), n: int = 40,
                             n_steps: int = 100, seed: int = 0, condition: int = 0, lim: float = 6.0
                             ) -> pathlib.Path:
    """CFG sample trajectories on ring2d (rows: DDIM, Euler-Maruyama; columns: w), from t = 1 to 0 over the
    contours of the data law p(x) (data: :func:`ring2d_trajectories`).

    Parameters
    ----------
    path : str or pathlib.Path
        Output PNG; parent directories are created.
    ws : sequence of float, optional
        Guidance strengths, one column each.
    n, n_steps, seed : int, optional
        Trajectories per panel, sampler steps, seed.
    condition : int, optional
        The class guided towards.
    lim : float, optional
        The panels show ``[-lim, lim]^2``.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    with one_thread():
        paths = ring2d_trajectories(ws, n=n, n_steps=n_steps, seed=seed, condition=condition)
    world = get_world("ring2d")
    gm = world.unconditional
    means = gm.means.numpy()
    axis = np.linspace(-lim, lim, 241)
    gx, gy, pts = _mesh(axis, axis)
    log_p = gm.log_prob(pts).numpy().reshape(gx.shape)
    times = time_grid(n_steps).numpy()
    t_mid = 0.5 * (times[:-1] + times[1:])
    cmap, norm = mpl.colormaps["plasma"], Normalize(0.0, 1.0)
    names = {"ddim": f"DDIM, {n_steps} steps\n(deterministic: the guided PF-ODE)",
             "euler_maruyama": f"Euler-Maruyama, {n_steps} steps\n(the guided reverse SDE)"}
    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(15, 10.5), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(2, len(ws), sharex=True, sharey=True, squeeze=False)
        for i, name in enumerate(names):
            for j, w in enumerate(ws):
                ax = axes[i, j]
                traj = paths[name, w]
                cs = ax.contourf(gx, gy, np.maximum(log_p, log_p.max() - 12), levels=12, cmap="Greys", alpha=0.35)
                segments = np.stack([traj[:-1], traj[1:]], axis=2).transpose(1, 0, 2, 3).reshape(-1, 2, 2)
                lines = mpl.collections.LineCollection(segments, cmap=cmap, norm=norm, alpha=0.85 if i == 0 else 0.6,
                                                       linewidths=0.9 if i == 0 else 0.6)
                lines.set_array(np.tile(t_mid, traj.shape[1]))
                ax.add_collection(lines)
                ax.scatter(*traj[0].T, s=14, facecolor="white", edgecolor="0.3", lw=0.8, zorder=4)
                ax.scatter(*traj[-1].T, s=16, color="k", zorder=5)
                ax.scatter(*np.delete(means, condition, axis=0).T, s=70, marker="x", color="#1f77b4", lw=2, zorder=6)
                ax.scatter(*means[condition], s=220, marker="*", color="#d62728", edgecolor="k", zorder=6)
                nearest = np.argmax(gm.class_posterior(torch.as_tensor(traj[-1])).numpy(), axis=1)
                radius = np.hypot(*traj[-1].T)
                ax.text(0.02, 0.02, f"{int(np.sum(nearest == condition))}/{traj.shape[1]} end in class {condition}'s "
                        f"region\nend radius {radius.mean():.2f} $\\pm$ {radius.std():.2f} (class mean at 3)",
                        transform=ax.transAxes, fontsize=9,
                        bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "none", "alpha": 0.85})
                ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
                if i == 0:
                    ax.set_title(f"w = {w:g}" + (" (conditional)" if w == 0 else ""), fontsize=12)
                if i == 1:
                    ax.set_xlabel("$x_1$")
            axes[i, 0].set_ylabel(f"{names[name]}\n\n$x_2$")
        fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, location="right", shrink=0.45,
                     label="time t along the trajectory (1: noise, 0: data)")
        fig.colorbar(cs, ax=axes, location="right", shrink=0.45, label="log p(x) of the data law")
        handles = [mpl.lines.Line2D([], [], ls="", marker="o", mfc="white", mec="0.3", label="start, t = 1 (N(0, I))"),
                   mpl.lines.Line2D([], [], ls="", marker="o", color="k", label="end, t = 0"),
                   mpl.lines.Line2D([], [], ls="", marker="*", ms=13, color="#d62728", mec="k",
                                    label=f"mean of class {condition} (guided towards)"),
                   mpl.lines.Line2D([], [], ls="", marker="x", ms=8, mew=2, color="#1f77b4",
                                    label="means of the other classes")]
        fig.legend(handles=handles, loc="outside lower center", ncol=4, frameon=False)
        fig.suptitle(f"CFG trajectories on ring2d towards class {condition}, {n} per panel, same starts: as w grows "
                     "the ODE's swing out past the class and\nend beyond its mean, collapsed to a "
                     "point; the SDE's end around the mean with their spread", fontsize=13, weight="bold")
        return _save(fig, path)


# --------------------------------------------------------------------------------------------------------------
# Figure 8: samples of negative prompts and composition on attributes2d
# --------------------------------------------------------------------------------------------------------------
_ATTR_REGIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "red side $x_1 < -1$": lambda x: x[:, 0] < -1,
    "purple band $|x_1| < 1$": lambda x: x[:, 0].abs() < 1,
    "past the blue dog $x_1 > 4$": lambda x: x[:, 0] > 4}
#: the regions whose mass figure 8 reports: the red side, the "purple" band between red and blue, far right (their
#: edges lie where every target's density is low, so the grid masses of verify.tilted are accurate)


def _attribute_rules(guidance_scale: float = 3.0, w_pos: float = 3.0, w_neg: float = 1.0
                     ) -> dict[str, tuple[Rule, dict[str, Condition]]]:
    """The attributes2d rules of figures 4 and 8, each with the conditions of its branches: plain "dog" (CFG at
    w = 0), source 001's and source 000's negative prompt (positive "dog", negative "red"), and the composition of
    red dog and blue dog (weights 1, 1)."""
    pos, neg = ("dog",), ("red",)
    return {"dog": (rules.get("cfg", w=0.0), {"cond": pos}),
            "negative_001": (rules.get("negative_prompt_001", guidance_scale=guidance_scale),
                             {"cond": pos, "negative": neg}),
            "negative_000": (rules.get("negative_prompt_000", w_pos=w_pos, w_neg=w_neg),
                             {"cond": pos, "negative": neg}),
            "compose": (rules.get("compose", weights=[1.0, 1.0]),
                        {"cond_1": ("red", "dog"), "cond_2": ("blue", "dog")})}


def _fmt_mass(value: float) -> str:
    """A probability to 4 decimals, or in scientific notation when it is positive but below 1e-4."""
    return f"{value:.0e}" if 0 < value < 1e-4 else f"{value:.4f}"


@one_thread()
def negative_composition_samples(*, n: int = 5000, n_steps: int = 100, seed: int = 0, guidance_scale: float = 3.0,
                                 w_pos: float = 3.0, w_neg: float = 1.0) -> dict[str, dict]:
    r"""DDIM samples (``n_steps`` uniform steps, ``n`` starts from N(0, I), the same for every rule) of four rules on
    attributes2d: plain ``"dog"``, source 001's and source 000's negative prompt (positive "dog", negative "red")
    and the ``"compose"``-ition of red dog and blue dog, each rule guiding the exact denoiser
    (:meth:`verify.rules.Rule.guide`).

    Returns
    -------
    dict
        ``{name: {"rule": Rule, "conditions": its branches' conditions, "samples": [n, 2] array, "regions":
        {region: (fraction, se, mass,
        mass_error)}}}``: each region of ``_ATTR_REGIONS`` with the samples' fraction in it, its binomial standard
        error :math:`\sqrt{m(1 - m)/n}` at the tilted mass m, and the tilted law's mass there with its quadrature
        error (:meth:`verify.tilted.TiltedLaw.probability`).
    """
    world = get_world("attributes2d")
    den = AnalyticDenoiser(world, "vp-linear")
    x_start = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    out = {}
    for name, (rule, conditions) in _attribute_rules(guidance_scale, w_pos, w_neg).items():
        x = ddim(rule.guide(den, conditions), x_start, time_grid(n_steps))
        law = tilted_law(world, rule, conditions)
        regions = {}
        for region, inside in _ATTR_REGIONS.items():
            mass, err = law.probability(inside)
            regions[region] = (float(inside(x).double().mean()), math.sqrt(max(mass * (1 - mass), 0.0) / n), mass,
                               err)
        out[name] = {"rule": rule, "conditions": conditions, "samples": x.numpy(), "regions": regions}
    return out


def plot_negative_composition_samples(path: str | pathlib.Path, *, n: int = 5000, n_steps: int = 100, seed: int = 0,
                                      guidance_scale: float = 3.0, w_pos: float = 3.0, w_neg: float = 1.0
                                      ) -> pathlib.Path:
    """DDIM samples of negative prompts and composition on attributes2d over the exact tilted targets, with the
    fraction of samples in three regions next to the tilted law's mass there (data:
    :func:`negative_composition_samples`).

    Parameters
    ----------
    path : str or pathlib.Path
        Output PNG; parent directories are created.
    n, n_steps, seed : int, optional
        Samples per rule, DDIM steps, seed of the starts.
    guidance_scale : float, optional
        Source 001's scale g.
    w_pos, w_neg : float, optional
        Source 000's strengths.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    with one_thread():
        data = negative_composition_samples(n=n, n_steps=n_steps, seed=seed, guidance_scale=guidance_scale,
                                            w_pos=w_pos, w_neg=w_neg)
    world = get_world("attributes2d")
    x1, x2 = _ATTR_X1, _ATTR_X2
    gx, gy, pts = _mesh(x1, x2)
    titles = {"dog": "(a) plain 'dog' (no guidance): $p(x\\,|\\,\\mathrm{dog})$",
              "negative_001": f"(b) source 001: negative replaces null, g = {guidance_scale:g}",
              "negative_000": f"(c) source 000: $w_+$ = {w_pos:g}, $w_-$ = {w_neg:g}",
              "compose": "(d) composition of red dog and blue dog, weights 1, 1 ('purple dog')"}
    colours = {"dog": "#2ca02c", "negative_001": "#1f77b4", "negative_000": "#17becf", "compose": "#9467bd"}
    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(17, 9.6), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(2, 2, sharex=True, sharey=True)
        for ax, (name, entry) in zip(axes.ravel(), data.items(), strict=True):
            rule, conditions = entry["rule"], entry["conditions"]
            dens = normalise_on_grid(_log_q(tilted_law(world, rule, conditions), pts, gx.shape), x1, x2)
            ax.contourf(gx, gy, dens, levels=dens.max() * np.array([0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 1.01]),
                        cmap="Greys", alpha=0.45)
            ax.contour(gx, gy, dens, levels=dens.max() * np.array([0.01, 0.1, 0.5, 0.9]), colors="0.35",
                       linewidths=0.7)
            for x0 in (-1.0, 1.0, 4.0):
                ax.axvline(x0, color="0.55", lw=0.8, ls=":")
            ax.axvspan(-1, 1, color="#9467bd", alpha=0.07, lw=0)
            ax.scatter(*entry["samples"].T, s=2.5, color=colours[name], alpha=0.35, rasterized=True)
            _attribute_means(ax, world)
            rows = [f"{'mass in':<22}{'DDIM':>9}{'tilted':>10}"]
            for region, (frac, _, mass, _) in entry["regions"].items():
                rows.append(f"{region.split(' $')[0]:<22}{frac:>9.4f}{_fmt_mass(mass):>10}")
            weights = dens * _trapezoid_weights(x1, x2)
            for label, values, grid_values in (("mean of x1", entry["samples"][:, 0], gx),
                                               ("mean of x2", entry["samples"][:, 1], gy)):
                rows.append(f"{label:<22}{values.mean() + 0.0:>9.2f}{(weights * grid_values).sum() + 0.0:>10.2f}"
                            .replace("-0.00", " 0.00"))
            sd1 = math.sqrt((weights * (gx - (weights * gx).sum()) ** 2).sum())
            rows.append(f"{'sd of x1':<22}{entry['samples'][:, 0].std():>9.3g}{sd1:>10.3g}")
            ax.text(0.995, 0.03, "\n".join(rows), transform=ax.transAxes, ha="right", va="bottom", fontsize=9,
                    family="monospace", bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": "0.7", "alpha": 0.92})
            ax.set_title(f"{titles[name]}\ntilted target {_formula(linear_terms(rule, conditions))}", loc="left")
            ax.set(xlim=(x1[0], x1[-1]), ylim=(x2[0], x2[-1]), aspect="equal")
        for ax in axes[1]:
            ax.set_xlabel("$x_1$ (colour: red < 0 < blue);  dotted: $x_1$ = -1, 1, 4")
        for ax in axes[:, 0]:
            ax.set_ylabel("$x_2$ (shape: cat < 0 < dog)")
        fig.suptitle(f"Negative prompts and composition, sampled with DDIM ({n_steps} steps, {n // 1000}k samples "
                     "from N(0, I)) on attributes2d, over the exact tilted targets\n(grey: contours at 1, 10, 50, "
                     "90% of the peak). Boxes: fraction of the samples vs the tilted law's mass in the red side "
                     "$x_1 < -1$,\nthe purple band $|x_1| < 1$ and past the blue dog $x_1 > 4$, and moments: "
                     "the negative prompts leave samples on the red dog, where the target has no mass,\nand the "
                     "composed samples collapse onto the line $x_1 = 0$", fontsize=12, weight="bold")
        return _save(fig, path)


def plot_all(out_dir: str | pathlib.Path) -> list[pathlib.Path]:
    """Write the nine figures: worlds.png, guided_score_fields.png, tilted_densities.png,
    negative_and_composition.png, cfg_law_vs_tilted.png, quality_diversity.png, trajectories_ring2d.png,
    negative_composition_samples.png and rule_gallery.png (:mod:`verify.figures_rules`).

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Output folder (created if missing).

    Returns
    -------
    list of pathlib.Path
        The nine paths written, in that order.
    """
    out = pathlib.Path(out_dir)
    return [plot_worlds(out / "worlds.png"), plot_guided_score_fields(out / "guided_score_fields.png"),
            plot_tilted_densities(out / "tilted_densities.png"),
            plot_negative_and_composition(out / "negative_and_composition.png"),
            plot_cfg_law_vs_tilted(out / "cfg_law_vs_tilted.png"),
            plot_quality_diversity(out / "quality_diversity.png"),
            plot_trajectories_ring2d(out / "trajectories_ring2d.png"),
            plot_negative_composition_samples(out / "negative_composition_samples.png"),
            plot_rule_gallery(out / "rule_gallery.png")]
