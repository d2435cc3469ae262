r"""CFG's exact law against p(x|c) as the dimension grows (read by L-PAVASOVIC-HIGHDIM, drawn by
``pavasovic_highdim.png``).

Pavasovic, Verbeek, Biroli & Mézard (2025), "Understanding classifier-free guidance: high-dimensional theory and
non-linear generalizations", arXiv 2502.07849, sections 3-4: two classes
:math:`p(x \mid \pm) = \mathcal N(\pm m, \sigma^2 I_d)`, :math:`p(x) = \tfrac12 p(x \mid +) + \tfrac12 p(x \mid -)`,
with :math:`|m|^2 = \tilde\mu^2 d` (the class signal grows with d, as in Biroli et al. 2024, so the speciation time
:math:`t_s \sim \tfrac12\log(\tilde\mu^2 d)` in OU time); their statement: as :math:`d \to \infty` CFG's law tends
to :math:`p(x \mid +)`. Here :math:`\sigma^2 = 1`, :math:`\tilde\mu` = :data:`MU_TILDE`, the vp-linear schedule.

**Exact reduction to one direction.** Both classes share the covariance, so the class posterior of the noised
mixture depends on x only through :math:`\hat m^\top x` (its log-odds is :math:`2\alpha m^\top x / C_t`,
:math:`C_t = \alpha^2 + \sigma_t^2`), and the unconditional score is :math:`-(x - \alpha E[\mu \mid x])/C_t` with
:math:`E[\mu \mid x] \parallel m`. Orthogonally to m the conditional and unconditional scores are both
:math:`-x_\perp / C_t`: CFG does nothing there and, from the marginal start, returns the exact
:math:`\mathcal N(0, I_{d-1})`. The guided law is therefore (1-D law along :math:`\hat m`) :math:`\otimes`
:math:`\mathcal N(0, I_{d-1})`, and every distance to :math:`p(x \mid +)` is the 1-D distance along
:math:`\hat m`, for separation :math:`M = \tilde\mu\sqrt d`. The 1-D law is computed by the deterministic
references of :mod:`verify.exact_law`: :func:`~verify.exact_law.pf_ode_law_1d` (flow map) and
:func:`~verify.exact_law.reverse_sde_law_1d` (Fokker-Planck), each with its error estimate; they give the mean,
variance and mass below 0, from which the **overshoot** :math:`E[\hat m^\top x] - M`, the variance ratio and the
two-moment lower bound of :math:`W_2`, :math:`\sqrt{\Delta\mu^2 + (\sqrt v - 1)^2}` (exact for Gaussians; a lower
bound for any law, by Cauchy-Schwarz on the centred quantile functions).

**Gaussian family.** The same class structure with the unconditional law replaced by the Gaussian with its two
moments, :math:`\mathcal N(0, I + m m^\top)`. Covariances are diagonal in one basis (:math:`\hat m` and its
complement), so the moment ODEs decouple: :func:`~verify.exact_law.exact_gaussian_cfg_law` on the 1-D pair along
:math:`\hat m` and on one representative orthogonal direction (multiplicity d - 1); KL and :math:`W_2` to
:math:`p(x \mid +)` in closed form. No d x d matrix is formed (the tests check the assembly against
:func:`~verify.exact_law.exact_gaussian_law` on the dense covariances at small d).

Every law starts from the noised conditional at t = 1 (``start="marginal"``), so at w = 0 each is exactly
:math:`p(x \mid +)` and every distance measured is guidance's. With :math:`\alpha_1 \approx 0.0064` and
:math:`M \le 32`, :math:`\alpha_1 M \le 0.2`: the class is undecided at the start, and speciation happens inside
the run, as in the paper's regime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from toy_models.gaussian_mixture import GaussianMixture
from verify import rules
from verify.config import RunConfig
from verify.exact_law import exact_gaussian_cfg_law, pf_ode_law_1d, reverse_sde_law_1d

from . import provider

__all__ = ["HighDimPoint", "HighDim", "high_dim_cfg", "separation", "mixture_pair", "gaussian_pair_1d",
           "gaussian_family_law", "assemble_dense", "gaussian_kl", "gaussian_w2", "MU_TILDE", "DIMS"]

F64 = torch.float64
#: |m| = MU_TILDE sqrt(d)
MU_TILDE = 0.5
DIMS = (1, 4, 16, 64, 256, 1024, 4096)
QUICK_DIMS = (1, 16, 256)
WS = (1.0, 3.0)
QUICK_WS = (3.0,)
SAMPLERS = ("ode", "sde")


@dataclass(frozen=True)
class HighDimPoint:
    """One (family, sampler, w, d): the guided law along the class direction (mean, variance, their error
    estimates) and its distances to p(x|+). ``kl`` is the closed-form KL(CFG law || p(x|+)) for the Gaussian
    family and None for the mixture (only two moments are known there); ``w2`` is exact for the Gaussian family and
    the two-moment lower bound for the mixture."""

    family: str
    sampler: str
    w: float
    dim: int
    separation: float
    mean_along_m: float
    var_along_m: float
    mean_error: float
    var_error: float
    overshoot: float
    relative_overshoot: float
    w2: float
    kl: float | None


@dataclass(frozen=True)
class HighDim:
    points: tuple[HighDimPoint, ...]
    dims: tuple[int, ...]
    ws: tuple[float, ...]
    mu_tilde: float

    def series(self, family: str, sampler: str, w: float) -> tuple[HighDimPoint, ...]:
        """The points of one (family, sampler, w), in increasing d."""
        return tuple(sorted((p for p in self.points if (p.family, p.sampler, p.w) == (family, sampler, w)),
                            key=lambda p: p.dim))


def separation(dim: int, mu_tilde: float = MU_TILDE) -> float:
    """|m| = mu_tilde sqrt(d)."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim: must be an int >= 1, got {dim!r}")
    return mu_tilde * math.sqrt(dim)


def mixture_pair(sep: float) -> tuple[GaussianMixture, GaussianMixture]:
    """The 1-D law along m of the paper's model: (N(M, 1), 0.5 N(M, 1) + 0.5 N(-M, 1))."""
    cond = GaussianMixture([1.0], [[sep]], [[[1.0]]])
    uncond = GaussianMixture([0.5, 0.5], [[sep], [-sep]], [[[1.0]], [[1.0]]])
    return cond, uncond


def gaussian_pair_1d(sep: float) -> tuple[GaussianMixture, GaussianMixture]:
    """The Gaussian family along m: (N(M, 1), N(0, 1 + M^2)), the unconditional with the mixture's two moments."""
    return GaussianMixture([1.0], [[sep]], [[[1.0]]]), GaussianMixture([1.0], [[0.0]], [[[1.0 + sep**2]]])


def gaussian_kl(m1: float, v1: float, m2: float, v2: float) -> float:
    r""":math:`KL(\mathcal N(m_1, v_1) \| \mathcal N(m_2, v_2)) = \tfrac12(v_1/v_2 + (m_1-m_2)^2/v_2 - 1 -
    \log(v_1/v_2))`."""
    return 0.5 * (v1 / v2 + (m1 - m2) ** 2 / v2 - 1.0 - math.log(v1 / v2))


def gaussian_w2(m1: float, v1: float, m2: float, v2: float) -> float:
    r"""1-D :math:`W_2` between Gaussians, :math:`\sqrt{(m_1-m_2)^2 + (\sqrt{v_1}-\sqrt{v_2})^2}` (a lower bound for
    any two laws with these moments)."""
    return math.sqrt((m1 - m2) ** 2 + (math.sqrt(v1) - math.sqrt(v2)) ** 2)


def gaussian_family_law(dim: int, w: float, sampler: str) -> dict[str, tuple[float, float]]:
    """``{"along": (mean, var), "orthogonal": (mean, var)}``: the exact CFG law of the Gaussian family per direction
    (moment ODEs on the 1-D pairs; the orthogonal pair is N(0, 1) for both branches)."""
    cond, uncond = gaussian_pair_1d(separation(dim))
    iso = GaussianMixture([1.0], [[0.0]], [[[1.0]]])
    out = {}
    for key, (c, u) in (("along", (cond, uncond)), ("orthogonal", (iso, iso))):
        mean, cov = exact_gaussian_cfg_law(c, u, w, sampler, start="marginal")
        out[key] = (float(mean[0]), float(cov[0, 0]))
    return out


def assemble_dense(direction: torch.Tensor, along: tuple[float, float], orthogonal: tuple[float, float]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The d-dimensional (mean, covariance) from the per-direction laws: :math:`\mu = \mu_\parallel \hat m`,
    :math:`\Sigma = v_\perp I + (v_\parallel - v_\perp)\hat m\hat m^\top` (for the tests; needs
    :math:`\mu_\perp = 0`)."""
    u = direction / torch.linalg.vector_norm(direction)
    eye = torch.eye(u.numel(), dtype=F64)
    return along[0] * u, orthogonal[1] * eye + (along[1] - orthogonal[1]) * torch.outer(u, u)


def _sde_cells(sep: float, quick: bool) -> int:
    """Fokker-Planck cells: the grid spans the two modes +-M with 8 units of margin; 64 cells per unit length
    (32 quick) keep the variance's halving error below ~0.05 at M = 32 (measured)."""
    per_unit = 32 if quick else 64
    return max(800, int(per_unit * (2 * sep + 16)))


@provider
def high_dim_cfg(config: RunConfig) -> HighDim:
    """CFG's exact law against p(x|+) per d, w, sampler, for the paper's mixture and the Gaussian family (module
    docstring)."""
    dims = QUICK_DIMS if config.quick else DIMS
    ws = QUICK_WS if config.quick else WS
    points = []
    for w in ws:
        rule = rules.get("cfg", w=w)
        for dim in dims:
            sep = separation(dim)
            for sampler in SAMPLERS:
                law = gaussian_family_law(dim, w, sampler)
                (mu, var), (mu_o, var_o) = law["along"], law["orthogonal"]
                kl = gaussian_kl(mu, var, sep, 1.0) + (dim - 1) * gaussian_kl(mu_o, var_o, 0.0, 1.0)
                w2 = math.sqrt(gaussian_w2(mu, var, sep, 1.0) ** 2
                               + (dim - 1) * gaussian_w2(mu_o, var_o, 0.0, 1.0) ** 2)
                points.append(HighDimPoint("gaussian", sampler, w, dim, sep, mu, var, 0.0, 0.0, mu - sep,
                                           (mu - sep) / sep, w2, kl))
                cond, uncond = mixture_pair(sep)
                laws = {"cond": cond, "uncond": uncond}
                if sampler == "ode":
                    res = pf_ode_law_1d(rule, laws, start="marginal", n_nodes=801)
                else:
                    cells = _sde_cells(sep, config.quick)
                    res = reverse_sde_law_1d(rule, laws, start="marginal", n_cells=cells,
                                             n_steps=600 if config.quick else 1000)
                points.append(HighDimPoint("mixture", sampler, w, dim, sep, res.mean, res.var, res.error["mean"],
                                           res.error["var"], res.mean - sep, (res.mean - sep) / sep,
                                           gaussian_w2(res.mean, res.var, sep, 1.0), None))
    return HighDim(tuple(points), tuple(dims), tuple(ws), MU_TILDE)
