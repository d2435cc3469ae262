r"""CFG's samplers against the exact :math:`p(x \mid c)` on image worlds of growing size (read by
L-PAVASOVIC-HIGHDIM's ``field_worlds`` block, drawn by ``field_highdim.png``).

Pavasovic, Verbeek, Biroli & Mézard (2025), "Understanding classifier-free guidance: high-dimensional theory and
non-linear generalizations", arXiv 2502.07849, sections 3-4, predict that CFG's distortion of :math:`p(x \mid c)`
fades as d grows when the class signal grows with d. :mod:`verify.evidence.highdim` decides the claim on their
isotropic two-class mixture; this module measures the same quantities on images, where the covariance is a texture
spectrum rather than the identity.

**Worlds** (:func:`worlds_at`), on ``[3, s, s]`` images, d = 3 s^2, s in :data:`SIZES`:

* ``shapes``: :func:`toy_models.image_worlds.shapes` itself, guided towards :data:`CONDITION` (one component):
  :math:`p(x \mid c) = \mathcal N(m_c, \Sigma)` exactly, :math:`p(x)` the 48-component mixture;
* ``two_class``: Pavasovic's two classes drawn as pictures: the components :data:`CONDITION` and :data:`OTHER` of
  the same world (same texture :math:`\Sigma = B\,\mathrm{diag}(\nu)B^\top`), :math:`p(x)` their equal mixture,
  guided towards label 0 (:data:`CONDITION`).

**Scaling like the paper's, and where it departs.** The same picture drawn at a finer resolution: the mean images
are anti-aliased coverages of the same shapes, so :math:`|m_+ - m_-|^2` counts pixels and grows like d, and the
texture's pixel variance averages exactly ``TEXTURE_STD**2`` at every size: in units of the pixel variance,
:math:`|m_+ - m_-|^2 / (d\,v)` is the paper's :math:`4\tilde\mu^2` (measured :math:`|m_+ - m_-|^2/d` for
``two_class``: 0.058, 0.063, 0.065 at s = 16, 32, 64, the anti-aliased edges' share falling like 1/s). The texture
spectrum is a function of the frequency in cycles per *pixel* (its correlation length is fixed in pixels, not in
the picture), so at a finer resolution the picture's low frequencies meet a larger texture variance: the Mahalanobis
separation :math:`\Delta^\top\Sigma^{-1}\Delta` grows more slowly than d (per dimension 3.4, 2.8, 2.1 at s = 16,
32, 64, about :math:`d^{0.83}` in total). :class:`Geometry` records both per size.

**Why Pavasovic's exact reduction does not apply.** In :mod:`verify.evidence.highdim` both classes have covariance
:math:`I`, so every score orthogonal to :math:`m` coincides and the guided law is a 1-D law times
:math:`\mathcal N(0, I_{d-1})`. Here the noised class posterior's log-odds is :math:`\alpha\Delta^\top
\Sigma_t^{-1}x + \text{const}` with :math:`\Sigma_t = \alpha_t^2\Sigma + \sigma_t^2 I`: its direction
:math:`\Sigma_t^{-1}\Delta` turns with t (the texture is not isotropic), so no fixed direction carries the guidance
and the guided law is not a product of a 1-D law and the conditional's. Nor does replacing :math:`p(x)` by the
Gaussian with its two moments decouple per DCT coefficient: that Gaussian's covariance
:math:`\Sigma + \tfrac14\Delta\Delta^\top` has a rank-one part that is not diagonal in the DCT basis. The guided laws
are therefore measured by Monte Carlo, with the exact model (:class:`~toy_models.AnalyticDenoiser` of the world's
:class:`~toy_models.field_mixture.FieldMixture`, float64) inside the registered samplers.

**The exact reference that does exist** (:func:`unguided_law`): at w = 0 the guided model is the conditional one, a
single Gaussian diagonal in the DCT basis, so each DCT coefficient runs an independent affine recursion through the
sampler's steps (DDIM: Song, Meng & Ermon 2021, eq. 12 with :math:`\eta = 0`; DDPM: Ho et al. 2020, Algorithm 2, in
the form of Kingma et al. 2021, eqs. 32-33) and the law of the sampler's output is Gaussian with per-coefficient
mean and variance known exactly (discretisation included). Every measurement below has an exact value there; the
tests compare the Monte Carlo to it, and the figure draws it as the w = 0 floor.

**Measurements** (:func:`measure`), per run of N samples, with standard errors over the samples (the samples are
independent; the pixels of one sample are not and are never counted as independent):

* the class direction :math:`u = (m_c - E_p[x]) / |m_c - E_p[x]|` and :math:`p(x \mid c)`'s exact std along it,
  :math:`s_u = (u^\top\Sigma u)^{1/2} = (\sum_j (B^\top u)_j^2\,\nu_j)^{1/2}` (:class:`Geometry`);
* ``overshoot``: the mean of :math:`u^\top(x - m_c)/s_u` (0 for :math:`p(x \mid c)`), SE = its sample std over
  :math:`\sqrt N`;
* ``var_ratio``: the sample variance of :math:`u^\top x` over :math:`s_u^2` (1 for :math:`p(x \mid c)`), SE from the
  sample fourth central moment, :math:`\sqrt{(\hat\mu_4 - \hat\mu_2^2)/N}` (delta method, valid for any law with a
  fourth moment);
* ``mean_rms_error``: :math:`(|\bar x - m_c|^2/d)^{1/2}`, the per-pixel RMS error of the sample mean, SE by the
  jackknife over samples; for a sampler whose mean is :math:`m_c` its square has expectation
  ``pixel_variance / N``;
* ``pixel_variance``: the per-pixel sample variance averaged over the pixels, :math:`\mathrm{tr}\,\hat C/d`
  (``TEXTURE_STD**2`` for :math:`p(x \mid c)`, exactly);
* ``mahalanobis``: the mean over samples of :math:`(x - m_c)^\top\Sigma^{-1}(x - m_c)/d = \sum_j z_j^2/(\nu_j d)`,
  :math:`z = B^\top(x - m_c)`: exactly 1 in expectation for :math:`p(x \mid c)` (a :math:`\chi^2_d/d`, per-sample
  std :math:`\sqrt{2/d}`), so its excess over 1 is a distance to :math:`p(x \mid c)` whose reference side is exact.

**Runs.** DDIM and DDPM (:func:`~verify.evidence.shared.first_sampler_by_limit`), :data:`STEPS` uniform steps from
:math:`p(x \mid c)` noised to t = 1 (``start="marginal"``: at w = 0 the run samples :math:`p(x \mid c)` up to
discretisation), Ho-Salimans strength w in :data:`WS` (guidance scale 1 + w), one ``torch.Generator`` seeded from
``config.seed`` for the start points and the DDPM noise, in a fixed order. **Cost** (one thread, measured): a
shapes64 sample takes about 80 ms per run (50 steps of the 48-component exact score at d = 12288), a shapes16 one
5 ms; on a shared 2-core machine 24 samples per run took 17.7 s for the full provider and 20 took 19.4 s (the
machine's load varies), so :data:`N` = 16 (about 12-15 s; the quick one, two sizes and one w, about 2 s;
:attr:`FieldHighDim.seconds` records each run). With 16 samples the overshoot's SE is about 0.1-0.2 p(x|c) stds and
the variance ratio's about 25-45 % relative: enough to see the ODE's overshoot of 1-2.6 stds, not to resolve the
variance changes (the block's tests report their power).

**What 50 uniform steps do without guidance** (the exact w = 0 law): the texture's std (0.1) is comparable to
:math:`\sigma_t` over the last step (t = 0.02 -> 0, :math:`\sigma \approx 0.08 \to 0`), so DDIM keeps only
about 70 % of :math:`p(x \mid c)`'s variance along u (Mahalanobis statistic 0.54) and DDPM about 60 % (0.46), at
every size: the variance measurements are read against that floor, not against 1.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from toy_models import AnalyticDenoiser, World
from toy_models.field_mixture import FieldMixture, dct_matrix
from toy_models.image_worlds import component_index, shapes
from verify import rules
from verify.config import RunConfig
from verify.metrics import mean_and_se
from verify.samplers import sample, time_grid

from . import provider
from .shared import SCHEDULE, alpha_sigma, first_sampler_by_limit, one_thread

__all__ = ["SIZES", "QUICK_SIZES", "WS", "QUICK_WS", "STEPS", "N", "QUICK_N", "CONDITION", "OTHER", "WORLDS",
           "two_class_world", "worlds_at", "Geometry", "geometry", "Measured", "measure", "unguided_law",
           "FieldPoint", "FieldHighDim", "field_highdim", "run_point", "PAIR_WS", "PairPoint", "PairBySize",
           "pair_point", "gaussian_pair_by_size"]

F64 = torch.float64
SIZES = (16, 32, 64)
QUICK_SIZES = (16, 32)
WS = (1.0, 3.0)
QUICK_WS = (3.0,)
STEPS = 50
#: samples per run: the full provider's cost is about 12-15 s on one thread (module docstring)
N = 16
QUICK_N = 16
#: the guided condition (one component of the shapes worlds) and the second class of ``two_class``
CONDITION: tuple[str, str, str] = ("red", "ring", "top-left")
OTHER: tuple[str, str, str] = ("blue", "disc", "bottom-right")
WORLDS = ("shapes", "two_class")
#: images kept per size for the figure (``shapes``, ODE sampler, largest w)
KEEP = 3


def two_class_world(size: int) -> World:
    """Pavasovic's two classes as pictures (module docstring): components :data:`CONDITION` (label 0) and
    :data:`OTHER` (label 1) of ``shapes(size)``, equal weights, the shared texture."""
    law = shapes(size).law(None)
    rows = [component_index(*CONDITION), component_index(*OTHER)]
    mixture = FieldMixture(torch.full((2,), 0.5, dtype=F64), law.mean_images[rows], law.spectra[rows],
                           labels=torch.arange(2))
    return World(f"two_class{size}", mixture,
                 f"d = {law.dim}: {' '.join(CONDITION)} (label 0) and {' '.join(OTHER)} (label 1), equal weights")


def worlds_at(size: int) -> dict[str, tuple[World, object]]:
    """``{world name: (world, the guided condition)}`` at one size."""
    return {"shapes": (shapes(size), CONDITION), "two_class": (two_class_world(size), 0)}


@dataclass(frozen=True)
class Geometry:
    r"""A world's conditional law and class direction at one size (module docstring): ``direction`` u ``[d]``,
    ``direction_coefficients`` :math:`B^\top u`, the conditional mean ``mean`` ``[d]`` and its DCT coefficients
    ``mean_coefficients``, the spectrum ``spectrum`` :math:`\nu` ``[d]``, the exact std along u
    (``direction_std``), :math:`|m_+ - m_-|^2/d` (``separation2_per_dim``, with :math:`m_-` the mean of the other
    class, ``two_class``; the mean of the other 47 components, ``shapes``) and its Mahalanobis counterpart."""

    world: str
    size: int
    dim: int
    direction: torch.Tensor
    direction_coefficients: torch.Tensor
    mean: torch.Tensor
    mean_coefficients: torch.Tensor
    spectrum: torch.Tensor
    direction_std: float
    separation2_per_dim: float
    mahalanobis_separation_per_dim: float

    def summary(self) -> dict:
        return {"world": self.world, "size": self.size, "dim": self.dim, "direction_std": self.direction_std,
                "separation2_per_dim": self.separation2_per_dim,
                "mahalanobis_separation_per_dim": self.mahalanobis_separation_per_dim}


def geometry(name: str, world: World, condition: object) -> Geometry:
    """The :class:`Geometry` of ``world`` guided towards ``condition`` (one component, as both worlds are)."""
    law, full = world.law(condition), world.law(None)
    if law.n_components != 1:
        raise ValueError(f"condition: must select one component (an exact Gaussian p(x|c)), got {law.n_components}")
    mean = law.mean_images[0]
    nu = law.spectra[0]
    size, dim = int(mean.shape[-1]), law.dim
    to_p = mean.reshape(-1) - full.mean().to(F64)
    u = to_p / torch.linalg.vector_norm(to_p)
    u_coef = law.to_basis(u.reshape(mean.shape)).reshape(-1)
    others = full.mean_images[~full.matches(condition)]
    delta = mean - others.mean(0)
    delta_coef = law.to_basis(delta).reshape(-1)
    return Geometry(name, size, dim, u, u_coef, mean.reshape(-1), law.to_basis(mean).reshape(-1), nu.reshape(-1),
                    float(torch.sqrt((u_coef**2 * nu.reshape(-1)).sum())),
                    float(delta.pow(2).sum()) / dim, float((delta_coef**2 / nu.reshape(-1)).sum()) / dim)


@dataclass(frozen=True)
class Measured:
    """The measurements of one run (module docstring): each a mean over samples and its standard error."""

    n: int
    overshoot: float
    overshoot_se: float
    var_ratio: float
    var_ratio_se: float
    mean_rms_error: float
    mean_rms_error_se: float
    pixel_variance: float
    mahalanobis: float
    mahalanobis_se: float


def measure(x: torch.Tensor, geo: Geometry) -> Measured:
    """The measurements of samples ``x`` ``[N, d]`` (N >= 2) against :math:`p(x \\mid c)` (module docstring)."""
    x = x.to(F64)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"x: needs at least 2 samples for a standard error, got {n}")
    resid = x - geo.mean
    along = resid @ geo.direction / geo.direction_std  # [N], unit variance under p(x|c)
    overshoot, overshoot_se = mean_and_se(along)
    centred = along - along.mean()
    m2, m4 = float(centred.pow(2).mean()), float(centred.pow(4).mean())
    var_ratio = float(along.var())
    var_ratio_se = math.sqrt(max(m4 - m2 * m2, 0.0) / n)
    sq = resid.mean(0).pow(2).mean()  # |xbar - m_c|^2 / d
    # jackknife: the leave-one-out means are (N xbar - x_i)/(N - 1), their errors (N rbar - r_i)/(N - 1)
    loo = (n * resid.mean(0) - resid) / (n - 1)
    loo_rms = loo.pow(2).mean(1).sqrt()
    jack_se = math.sqrt((n - 1) / n * float((loo_rms - loo_rms.mean()).pow(2).sum()))
    z = _to_basis(resid, geo.size).reshape(n, -1)
    maha, maha_se = mean_and_se((z**2 / geo.spectrum).sum(1) / geo.dim)
    pixel_variance = float(x.var(0).mean())
    return Measured(n, overshoot, overshoot_se, var_ratio, var_ratio_se, math.sqrt(float(sq)), jack_se,
                    pixel_variance, maha, maha_se)


def _to_basis(flat: torch.Tensor, size: int) -> torch.Tensor:
    """:math:`B^\\top x` of flattened ``[N, 3 size^2]`` images (the per-channel orthonormal 2-D DCT-II)."""
    dct = dct_matrix(size)
    return dct @ flat.reshape(-1, 3, size, size) @ dct.T


def unguided_law(geo: Geometry, sampler: str, steps: int = STEPS) -> Measured:
    r"""The exact law at w = 0 of ``sampler`` (``"ddim"`` or ``"ddpm"``) from :math:`p(x \mid c)` noised to t = 1,
    as the expected measurements (module docstring): per DCT coefficient j an affine recursion
    :math:`z \mapsto A_i z + b_i` (plus DDPM's noise of variance :math:`\sigma_s^2 q_{ts}`) with the exact conditional
    eps :math:`\sigma_t(z - \alpha_t c_j)/(\alpha_t^2\nu_j + \sigma_t^2)`. Returned as a :class:`Measured` with
    ``n = 0`` and standard errors 0; ``mean_rms_error`` is the law's own per-pixel RMS bias
    :math:`(|E x - m_c|^2/d)^{1/2}` (no sampling term) and ``pixel_variance`` its :math:`\mathrm{tr\,Cov}/d` (the
    transform is orthonormal, so both are sums over the coefficients)."""
    if sampler not in ("ddim", "ddpm"):
        raise ValueError(f"sampler: must be 'ddim' or 'ddpm', got {sampler!r}")
    c, nu = geo.mean_coefficients, geo.spectrum
    times = time_grid(steps)
    a1, s1 = alpha_sigma(float(times[0]))
    mean, var = a1 * c, a1 * a1 * nu + s1 * s1  # the noised conditional at t = 1
    for i in range(steps):
        at, st = alpha_sigma(float(times[i]))
        as_, ss = alpha_sigma(float(times[i + 1]))
        e1 = st / (at * at * nu + st * st)  # eps = e1 z + e0
        e0 = -e1 * at * c
        x1, x0 = (1.0 - st * e1) / at, -st * e0 / at  # x0-prediction = x1 z + x0
        if sampler == "ddim":
            lin, off, noise = as_ * x1 + ss * e1, as_ * x0 + ss * e0, 0.0
        else:
            q = 1.0 - ((at * ss) / (as_ * st)) ** 2
            lin, off, noise = (at / as_) * (ss / st) ** 2 + as_ * q * x1, as_ * q * x0, ss * ss * q
        mean, var = lin * mean + off, lin * lin * var + noise
    a = geo.direction_coefficients
    overshoot = float((a * (mean - c)).sum()) / geo.direction_std
    var_ratio = float((a * a * var).sum()) / geo.direction_std**2
    maha = float(((var + (mean - c) ** 2) / nu).sum()) / geo.dim
    bias = math.sqrt(float(((mean - c) ** 2).sum()) / geo.dim)  # the per-pixel RMS error of the law's mean
    return Measured(0, overshoot, 0.0, var_ratio, 0.0, bias, 0.0, float(var.sum()) / geo.dim, maha, 0.0)


@dataclass(frozen=True)
class FieldPoint:
    """One (world, size, sampler, w): the measurements (``measured``) and the exact w = 0 law of the same sampler
    (``unguided``), for the figure's floor and the tests."""

    world: str
    size: int
    dim: int
    sampler: str
    w: float
    measured: Measured
    unguided: Measured


@dataclass(frozen=True)
class FieldHighDim:
    """Every point, the worlds' geometry per size, the settings, the kept images (``images[size]``:
    :data:`KEEP` samples ``[3, s, s]`` as nested lists, ``shapes``, sampler ``image_sampler`` at w = ``image_w``)
    and the provider's wall-clock seconds."""

    points: tuple[FieldPoint, ...]
    geometry: tuple[dict, ...]
    sizes: tuple[int, ...]
    ws: tuple[float, ...]
    samplers: dict[str, str]
    n: int
    steps: int
    condition: tuple[str, ...]
    images: dict[int, list]
    image_w: float
    image_sampler: str
    seconds: float

    def series(self, world: str, sampler: str, w: float) -> tuple[FieldPoint, ...]:
        """The points of one (world, sampler name, w), in increasing size."""
        return tuple(sorted((p for p in self.points if (p.world, p.sampler, p.w) == (world, sampler, w)),
                            key=lambda p: p.size))


def run_point(world: World, condition: object, sampler: str, w: float, x_start: torch.Tensor,
              generator: torch.Generator) -> torch.Tensor:
    """CFG at strength w (rule ``cfg``) on the exact model of ``world``, ``sampler`` over :data:`STEPS` uniform
    steps from ``x_start`` (randomness only from ``generator``); returns the samples ``[N, d]``."""
    guided = rules.get("cfg", w=w).guide(AnalyticDenoiser(world, SCHEDULE), {"cond": condition})
    return sample(sampler, guided, x_start, time_grid(STEPS), generator=generator)


@provider
@one_thread()
def field_highdim(config: RunConfig) -> FieldHighDim:
    """CFG (DDIM and DDPM) against the exact p(x|c) on the shapes and two-class image worlds per size and w (module
    docstring)."""
    start = time.perf_counter()
    sizes = QUICK_SIZES if config.quick else SIZES
    ws = QUICK_WS if config.quick else WS
    n = QUICK_N if config.quick else N
    samplers = first_sampler_by_limit()
    gen = torch.Generator().manual_seed(config.seed)
    points, geo_rows, images = [], [], {}
    image_w, image_sampler = max(ws), samplers["ode"]
    for size in sizes:
        for name, (world, condition) in worlds_at(size).items():
            geo = geometry(name, world, condition)
            geo_rows.append(geo.summary())
            x_start = world.law(condition).noised(*alpha_sigma(1.0)).sample(n, gen)
            for sampler in samplers.values():
                exact = unguided_law(geo, sampler)
                for w in ws:
                    x = run_point(world, condition, sampler, w, x_start, gen)
                    points.append(FieldPoint(name, size, geo.dim, sampler, w, measure(x, geo), exact))
                    if (name, sampler, w) == ("shapes", image_sampler, image_w):
                        images[size] = x[:KEEP].reshape(-1, 3, size, size).tolist()
    return FieldHighDim(tuple(points), tuple(geo_rows), tuple(sizes), tuple(ws), samplers, n, STEPS, CONDITION,
                        images, image_w, image_sampler, time.perf_counter() - start)


# --------------------------------------------------------------------------------------------------------------
# the exact series: CFG's DDIM law on the Gaussian pair of each size
# --------------------------------------------------------------------------------------------------------------
#: strengths of the exact series (cheap: two sampler runs of three points per size and w)
PAIR_WS = (1.0, 3.0, 7.0)


@dataclass(frozen=True)
class PairPoint:
    """CFG's exact DDIM law on the Gaussian pair of ``shapes(size)`` (:func:`toy_models.image_worlds.gaussian_pair`)
    at strength w: along the class direction u its overshoot and variance ratio in p(x|c)'s units, the expected share
    of values outside [-1, 1], and the Frechet distances to p(x|c) and to the tilted target, per dimension."""

    size: int
    dim: int
    w: float
    overshoot: float
    var_ratio: float
    expected_out_of_range: float
    frechet_to_conditional_per_dim: float
    frechet_to_tilted_per_dim: float


@dataclass(frozen=True)
class PairBySize:
    """The exact series (:class:`PairPoint`) by size and w."""

    points: tuple[PairPoint, ...]
    sizes: tuple[int, ...]
    ws: tuple[float, ...]

    def series(self, w: float) -> tuple[PairPoint, ...]:
        return tuple(sorted((p for p in self.points if p.w == w), key=lambda p: p.size))


def pair_point(pair: World, w: float) -> PairPoint:
    r"""One :class:`PairPoint`, exact: the law is a single field Gaussian (mean image M, spectrum v;
    :func:`verify.evidence.image_guidance.exact_pixel_law`), so along :math:`u = (m_c - \bar m)/|m_c - \bar m|`
    the overshoot is :math:`u^\top(M - m_c)/s_u` and the variance ratio :math:`\sum_j (B^\top u)_j^2 v_j / s_u^2`
    with :math:`s_u^2 = \sum_j (B^\top u)_j^2 \nu_{c,j}`. ``pair``: ``gaussian_pair(shapes(size), CONDITION)``
    for some size."""
    from verify.metrics import frechet_distance

    from .image_guidance import exact_pixel_law, expected_out_of_range, tilted_target

    cond, uncond = pair.law(CONDITION), pair.law(None)
    law = exact_pixel_law(pair, CONDITION, w)
    m_c, m_u = cond.mean_images[0], uncond.mean_images[0]
    u = (m_c - m_u) / (m_c - m_u).norm()
    bu2 = cond.to_basis(u) ** 2
    s_u = float((bu2 * cond.spectra[0]).sum().sqrt())
    d = cond.dim
    return PairPoint(cond.shape[1], d, w, float((u * (law.mean_images[0] - m_c)).sum()) / s_u,
                     float((bu2 * law.spectra[0]).sum()) / s_u**2, expected_out_of_range(law),
                     frechet_distance(law, cond) / d, frechet_distance(law, tilted_target(cond, uncond, w)) / d)


@provider
@one_thread()
def gaussian_pair_by_size(config: RunConfig) -> PairBySize:
    """:func:`pair_point` for every size of :data:`SIZES` (quick: :data:`QUICK_SIZES`) and w of :data:`PAIR_WS`:
    exact, no sampling."""
    from toy_models.image_worlds import gaussian_pair

    sizes = QUICK_SIZES if config.quick else SIZES
    pairs = {s: gaussian_pair(shapes(s), CONDITION) for s in sizes}  # each world built once, for every w
    return PairBySize(tuple(pair_point(pairs[s], w) for s in sizes for w in PAIR_WS), tuple(sizes), PAIR_WS)
