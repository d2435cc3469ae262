"""Bradley & Nakkiran 2024 (arXiv 2408.09000): the predictor-corrector split against DDPM-CFG as the steps grow, and
the Gaussian example's closed-form variances against the exact laws (evidence:
:mod:`verify.evidence.bradley_nakkiran`)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from verify.evidence.bradley_nakkiran import GaussianLaws, SplitScheme

from . import figure
from .style import ODE_COLOUR, SDE_COLOUR, TILTED_COLOUR, box, log_y, new_figure

SPLIT_COLOUR = "#2ca02c"


@figure("bn_predictor_corrector.png")
def bn_predictor_corrector(bn_split_scheme: SplitScheme, bn_gaussian_laws: GaussianLaws) -> Figure:
    """Left: the moment gaps of the split scheme (DDIM predictor + Langevin corrector) to DDPM-CFG and to the reverse
    SDE, and of DDPM-CFG to the SDE, against the steps N (log-log, a 1/N guide). Right: the closed-form DDIM-CFG and
    DDPM-CFG variances against the guidance scale with the exact ODE/SDE laws' points, beside the gamma-powered
    law's."""
    fig = new_figure(11.0, 4.4)
    left, right = fig.subplots(1, 2)

    styles = ("-", "--")
    for run, ls in zip(bn_split_scheme.runs, styles, strict=False):
        n = np.asarray(run.steps, dtype=float)
        left.loglog(n, run.gap_split_ddpm, ls, color=SPLIT_COLOUR, marker="o", ms=4, lw=2.5, zorder=1,
                    label=f"split vs DDPM-CFG ({run.world})")
        left.loglog(n, run.gap_split_sde, ls, color=ODE_COLOUR, marker="s", ms=4,
                    label=f"split vs reverse SDE ({run.world})")
        left.loglog(n, run.gap_ddpm_sde, ls, color=SDE_COLOUR, marker="^", ms=4,
                    label=f"DDPM-CFG vs reverse SDE ({run.world})")
    first = bn_split_scheme.runs[0]
    n = np.asarray(first.steps, dtype=float)
    left.loglog(n, first.gap_split_ddpm[0] * n[0] / n, ":", color="0.5", label="1/N")
    left.set_xticks(n, [f"{int(v)}" for v in n])
    left.xaxis.set_minor_locator(NullLocator())
    log_y(left)
    left.set_xlabel("steps N (uniform in t, vp-linear)")
    left.set_ylabel("moment gap  max(|dmean|, |dcov|_F)")
    left.set_title(f"DDIM predictor + Langevin corrector (gamma' = 2 gamma - 1) vs DDPM-CFG, "
                   f"gamma = {first.guidance_scale:g}", fontsize=9)
    left.legend(fontsize=7, loc="lower left")
    orders = "\n".join(f"{r.world}: last-doubling order {r.pairwise_orders[-1]:.2f}" for r in bn_split_scheme.runs)
    box(left, orders, x=0.98, y=0.97, ha="right", va="top")

    ev = bn_gaussian_laws
    right.plot(ev.curve_scales, ev.curve_ddim, color=ODE_COLOUR, label="DDIM-CFG closed form (v_c^g v_u^(1-g))")
    right.plot(ev.curve_scales, ev.curve_ddpm, color=SDE_COLOUR, label="DDPM-CFG closed form")
    right.plot(ev.curve_scales, ev.curve_tilted, ":", color=TILTED_COLOUR, label="gamma-powered law")
    pts = [p for p in ev.points if p.variance_ratio == ev.curve_ratio]
    right.plot([p.guidance_scale for p in pts], [p.ddim_exact for p in pts], "o", color=ODE_COLOUR, mfc="none",
               ms=8, label="exact probability-flow ODE law")
    right.plot([p.guidance_scale for p in pts], [p.ddpm_exact for p in pts], "s", color=SDE_COLOUR, mfc="none",
               ms=8, label="exact reverse-SDE law")
    log_y(right)
    right.set_xlabel("guidance scale gamma (diffusers' g = 1 + w)")
    right.set_ylabel("variance of the sampled law")
    right.set_title(f"centred Gaussians, v_c / v_u = {ev.curve_ratio:g}, ve with sigma in "
                    f"[{ev.sigma_min:g}, {ev.sigma_max:g}]", fontsize=9)
    right.legend(fontsize=7, loc="lower left")
    box(right, f"max relative error {max(p.rel_error_finite for p in ev.points):.1e}\n"
               f"(tolerance {ev.tolerance:.0e})", x=0.98, y=0.97, ha="right", va="top")
    fig.tight_layout()
    return fig
