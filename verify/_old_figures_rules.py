r"""A gallery of every registered guidance rule on one world: what each does to the samples of one class.

:func:`rule_gallery` is the data provider: every rule of :mod:`verify.rules` (each built at one common strength
where it takes a ``guidance_scale``, else with its first :meth:`~verify.rules.Rule.examples` parameters), applied
to the exact denoiser of ``ring2d`` and sampled by DDIM from **the same** starting points and grid, with per-rule
summaries against the class law :math:`p(x \mid c)`: the fraction of samples inside its 99 % highest-density region
(binomial standard error), the mean distance from the class mean along the class direction (the overshoot of
Chidambaram et al. 2024), and the spread relative to :math:`p(x \mid c)`'s. :func:`plot_rule_gallery` draws it, one
panel per rule, without computing anything of its own. A new rule appears in the gallery with no edit here.
"""

from __future__ import annotations

import math
import pathlib
import textwrap

import matplotlib as mpl
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from toy_models import AnalyticDenoiser, World, get_schedule, get_world

from . import rules
from .claims.rule_autoguidance import inflated
from .samplers import ddim, time_grid

__all__ = ["rule_gallery", "plot_rule_gallery"]

F64 = torch.float64
_STYLE = {"font.size": 9, "axes.titlesize": 8.5, "axes.spines.top": False, "axes.spines.right": False}
#: the branch conditions of the gallery on ring2d: class 0 at (3, 0), its neighbour 1 as the negative prompt and
#: second composed condition
_CONDITIONS = {"uncond": None, "cond": 0, "negative": 1, "cond_1": 0, "cond_2": 1}


def _build(name: str, world: World, guidance_scale: float) -> rules.Rule:
    """The rule with its first example's parameters, its strength (``guidance_scale``, ``w`` or a classifier's
    ``scale``, which is CFG's ``guidance_scale`` for the exact classifier) set to the common ``guidance_scale``."""
    cls = rules.rule_class(name)
    params = dict(cls.examples(world)[0])
    if "scale" in params:
        params["scale"] = guidance_scale
    elif "guidance_scale" in params or "w" in params:
        params.pop("w", None)
        params["guidance_scale"] = guidance_scale
    return cls(**params)


def rule_gallery(*, guidance_scale: float = 6.0, n: int = 2000, steps: int = 50, seed: int = 0,
                 weak_inflation: float = 1.5) -> dict[str, dict]:
    """``{rule name: {"rule": describe(), "samples": [n, 2] array, "in_hdr99": (fraction, se), "hdr99_level":
    log p(x|c) on the region's boundary, "overshoot": (mean, se), "spread_ratio": float}}`` plus ``"unguided"``
    (the conditional model alone), on ring2d class 0 from the noised class law at t = 1, DDIM ``steps`` uniform
    steps on vp-linear, every rule from the same points."""
    world = get_world("ring2d")
    schedule = get_schedule("vp-linear")
    den = AnalyticDenoiser(world, schedule)
    weak = AnalyticDenoiser(inflated(world, weak_inflation), schedule)  # an underfit model of the same world
    target = world.law(_CONDITIONS["cond"])
    gen = torch.Generator().manual_seed(seed)
    a1, s1 = (float(v) for v in schedule.alpha_sigma(1.0))
    start = target.noised(a1, s1).sample(n, gen)  # [n, 2], shared by every rule
    grid = time_grid(steps)
    reference = target.sample(50_000, gen)
    level = float(torch.quantile(target.log_prob(reference), 0.01))  # the 99 % HDR of p(x|c): log p >= level
    direction = target.mean() / target.mean().norm()  # [2]: the class sits along this direction
    centre = float(target.mean() @ direction)
    ref_spread = float(torch.linalg.det(target.covariance()) ** 0.25)

    def summary(x: torch.Tensor, label: str) -> dict:
        inside = (target.log_prob(x) >= level).double()
        radial = x @ direction - centre  # [n]
        frac = float(inside.mean())
        spread = float(torch.linalg.det(torch.cov(x.T)) ** 0.25)
        return {"rule": label, "samples": x.numpy(),
                "in_hdr99": (frac, math.sqrt(max(frac * (1 - frac), 1.0 / n) / n)), "hdr99_level": level,
                "overshoot": (float(radial.mean()), float(radial.std() / math.sqrt(n))),
                "spread_ratio": spread / ref_spread}

    out = {"unguided": summary(ddim(den, start, grid, condition=_CONDITIONS["cond"]), "conditional model, no "
                                                                                        "guidance")}
    for name in rules.names():
        rule = _build(name, world, guidance_scale)
        conditions = {key: _CONDITIONS[key] for key in rule.condition_keys}
        guided = rule.guide(den, conditions, weak=weak if "weak" in rule.branches else None)
        out[name] = summary(ddim(guided, start, grid), rule.describe())
    return out


def _window(x: np.ndarray, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """The class's box, widened to the samples' central 98 % where more than 2 % of them fall outside it."""
    x_lo, x_hi, y_lo, y_hi = box
    outside = (x[:, 0] < x_lo) | (x[:, 0] > x_hi) | (x[:, 1] < y_lo) | (x[:, 1] > y_hi)
    if outside.mean() <= 0.02:
        return box
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


def plot_rule_gallery(path: str | pathlib.Path, *, guidance_scale: float = 6.0, n: int = 2000, steps: int = 50,
                      seed: int = 0) -> pathlib.Path:
    """One panel per rule (the unguided model and CFG first): the samples over :math:`p(x \\mid c)`'s 99 % region,
    and the provider's summaries in the panel. Panels whose samples leave the class's neighbourhood widen to show
    where they went."""
    data = rule_gallery(guidance_scale=guidance_scale, n=n, steps=steps, seed=seed)
    order = ["unguided", "cfg", *sorted(k for k in data if k not in ("unguided", "cfg"))]
    target = get_world("ring2d").law(_CONDITIONS["cond"])
    level = data["unguided"]["hdr99_level"]  # the region the provider's summaries count, not a redrawn one
    box = (0.5, 5.5, -2.5, 2.5)
    cols = 4
    rows = math.ceil(len(order) / cols)
    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(3.0 * cols, 3.3 * rows), layout="constrained")
        FigureCanvasAgg(fig)
        for k, name in enumerate(order):
            entry = data[name]
            x = entry["samples"]
            x_lo, x_hi, y_lo, y_hi = _window(x, box)
            gx, gy = np.meshgrid(np.linspace(x_lo, x_hi, 240), np.linspace(y_lo, y_hi, 240))
            pts = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], 1))
            log_p = target.log_prob(pts).numpy().reshape(gx.shape)
            ax = fig.add_subplot(rows, cols, k + 1)
            ax.contourf(gx, gy, log_p, levels=[level, max(level, float(log_p.max())) + 1], colors=["#dbe9f6"])
            ax.contour(gx, gy, log_p, levels=[level], colors=["#4a7fb5"], linewidths=0.8)
            ax.scatter(x[:, 0], x[:, 1], s=2, c="#333333" if name == "unguided" else "#c0392b", alpha=0.3,
                       linewidths=0, rasterized=True)
            frac, se = entry["in_hdr99"]
            shift, _ = entry["overshoot"]
            ax.text(0.02, 0.02, f"in 99% region {frac:.3f} ± {se:.3f}\novershoot {shift:+.2f}, "
                                f"spread {entry['spread_ratio']:.2f}x", transform=ax.transAxes, fontsize=7.5,
                    va="bottom", bbox={"facecolor": "white", "alpha": 0.7, "linewidth": 0})
            ax.set_title(_title(name, entry["rule"]), fontsize=8)
            ax.set_xlim(x_lo, x_hi)
            ax.set_ylim(y_lo, y_hi)
            ax.set_aspect("equal")
            ax.tick_params(labelsize=7)
        fig.suptitle(f"Every registered rule on ring2d class 0, DDIM {steps} steps from the same {n} starts "
                     f"(shaded: the 99% region of p(x|c); strength {guidance_scale:g} where a rule takes one)",
                     fontsize=10)
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=130)
    return path
