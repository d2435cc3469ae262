r"""The target law a linear guidance rule implies: :math:`q(x) \propto \prod_i p_i(x)^{e_i}`.

A guided prediction :math:`\sum_i a_i \varepsilon(x, c_i)` with :math:`\sum_i a_i = 1` has, at each noise level, the
score of :math:`\prod_i p_t(x \mid c_i)^{a_i}` (``proofs/prop2_tilted_score.py``, ``proofs/composition.py``). This
module builds that *tilted* law from a :mod:`verify.rules` rule with fixed ``linear_weights`` (``{branch: a_b}``)
and the conditions of its branches, decides whether it is normalisable, and computes its normaliser, moments and
the mass of regions.

Normalisability (tail analysis). Along a unit direction :math:`u`, a mixture's log density behaves like
:math:`-\tfrac{r^2}{2}\min_k u^\top P_k u + O(r)` (its slowest-decaying component dominates), so
:math:`\log q(ru) = -\tfrac{r^2}{2} A(u) + O(r)` with :math:`A(u) = \sum_i e_i \min_{k \in i} u^\top P_{ik} u`.
:math:`q` is normalisable if :math:`\min_{|u|=1} A(u) > 0` and not if :math:`A(u) < 0` for some :math:`u` (then
it grows along a cone). Certificates:

* all factors single Gaussians: :math:`A(u) = u^\top \Lambda u` with :math:`\Lambda = \sum_i e_i P_i`, exact;
* lower bound in any dimension: for any choice of one component per negative-exponent factor,
  :math:`e_i \min_k q_{ik} \ge e_i q_{ik'}`, so :math:`\min_u A \ge \min_{\text{positive choices}}
  \max_{\text{negative choices}} \lambda_{\min}(\sum_i e_i P_{i k_i})`;
* upper bound: :math:`A` evaluated on directions (exact in 1-D, a fine angular grid in 2-D with a Lipschitz
  margin, random directions refined by local search above), which can prove non-normalisability.

When neither bound decides, :meth:`TiltedLaw.check_normalisable` raises with both numbers.

Normaliser and moments: Gaussian factors in closed form; otherwise trapezoidal quadrature in 1-D and 2-D (its
error estimated by halving the grid, which for these rapidly decaying analytic integrands converges
geometrically) and importance sampling above 2-D, with the standard error and effective sample size stated.
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass

import torch

from toy_models import World, get_schedule
from toy_models._checks import as_scalar
from toy_models.gaussian_mixture import Condition, GaussianMixture

from .rules import Rule
from .rules._base import bind_conditions

__all__ = ["TiltedLaw", "TiltedSummary", "NotNormalisableError", "tilted_law", "linear_terms"]

F64 = torch.float64
#: margin of the quadrature window around every factor component, in its standard deviations
_WINDOW_SPAN = 12.0
#: weight of the tail-covering components in the importance-sampling proposal (see TiltedLaw.proposal)
_DEFENSIVE = 0.1


class NotNormalisableError(ValueError):
    """The implied target :math:`\\prod_i p_i^{e_i}` has infinite mass."""


@dataclass(frozen=True)
class TiltedSummary:
    """Normaliser and moments of a tilted law, with the method and its error estimate."""

    log_normaliser: float
    log_normaliser_error: float  # absolute error estimate of log Z (0 for closed forms to rounding)
    mean: torch.Tensor  # [d]
    cov: torch.Tensor  # [d, d]
    method: str
    moment_error: float = 0.0  # error estimate of the moments (max abs over entries)
    effective_sample_size: float | None = None


@dataclass(frozen=True)
class TiltedLaw:
    r""":math:`q(x) \propto \prod_i p_i(x)^{e_i}` for Gaussian-mixture factors ``(law, exponent)``."""

    factors: tuple[tuple[GaussianMixture, float], ...]
    name: str = ""

    def __post_init__(self):
        if isinstance(self.factors, (str, bytes)) or not hasattr(self.factors, "__iter__"):
            raise TypeError(f"factors: expected a sequence of (GaussianMixture, exponent) pairs, got "
                            f"{type(self.factors).__name__}")
        factors = list(self.factors)
        if not factors:
            raise ValueError("factors: need at least one (law, exponent) pair")
        checked = []
        for i, factor in enumerate(factors):
            if not isinstance(factor, (tuple, list)) or len(factor) != 2:
                raise TypeError(f"factors: entry {i} is not a (GaussianMixture, exponent) pair: {factor!r}")
            law, exponent = factor
            if not isinstance(law, GaussianMixture):
                raise TypeError(f"factors: entry {i}'s law is a {type(law).__name__}, not a GaussianMixture")
            try:
                exponent = as_scalar(exponent, "factors")
            except (TypeError, ValueError) as err:
                raise type(err)(f"factors: entry {i}'s exponent: {str(err).split(': ', 1)[-1]}") from None
            checked.append((law, exponent))
        dims = {law.dim for law, _ in checked}
        if len(dims) != 1:
            raise ValueError(f"factors: all laws must share one dimension, got {sorted(dims)}")
        kept = tuple((law.to(F64), e) for law, e in checked if e != 0.0)
        object.__setattr__(self, "factors", kept or ((checked[0][0].to(F64), 0.0),))
        if not isinstance(self.name, str):
            raise TypeError(f"name: expected a str, got {type(self.name).__name__}")

    @property
    def dim(self) -> int:
        return self.factors[0][0].dim

    @property
    def exponents(self) -> list[float]:
        return [e for _, e in self.factors]

    def log_unnormalized(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\sum_i e_i \log p_i(x)`, ``[N]``."""
        return sum(e * law.log_prob(x) for law, e in self.factors)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\nabla \log q = \sum_i e_i \nabla \log p_i`, ``[N, d]``."""
        return sum(e * law.score(x) for law, e in self.factors)

    # --- normalisability ----------------------------------------------------------------------------------
    def _precisions(self) -> list[list[torch.Tensor]]:
        out = []
        for law, _ in self.factors:
            active = law.weights > 0
            out.append([p for p, a in zip(torch.linalg.inv(law.covariances), active, strict=True) if a])
        return out

    def tail_coefficient(self, u: torch.Tensor) -> torch.Tensor:
        r""":math:`A(u) = \sum_i e_i \min_k u^\top P_{ik} u` for unit directions ``u`` ``[M, d]``, ``[M]``."""
        total = torch.zeros(u.shape[0], dtype=F64)
        for (_, e), precisions in zip(self.factors, self._precisions(), strict=True):
            quad = torch.stack([torch.einsum("mi,ij,mj->m", u, p, u) for p in precisions], dim=1)
            total = total + e * quad.min(dim=1).values
        return total

    def tail_bounds(self, n_directions: int = 4096, seed: int = 0) -> tuple[float, float]:
        """``(lower, upper)`` bounds on :math:`\\min_{|u|=1} A(u)` (see the module docstring)."""
        precisions = self._precisions()
        pos = [i for i, e in enumerate(self.exponents) if e > 0]
        neg = [i for i, e in enumerate(self.exponents) if e < 0]
        lower = math.inf
        for choice in itertools.product(*[range(len(precisions[i])) for i in pos]):
            base = sum(self.exponents[i] * precisions[i][k] for i, k in zip(pos, choice, strict=True))
            best = -math.inf
            for neg_choice in itertools.islice(itertools.product(*[range(len(precisions[i])) for i in neg]), 4096):
                mat = base + sum(self.exponents[i] * precisions[i][k] for i, k in zip(neg, neg_choice, strict=True))
                best = max(best, float(torch.linalg.eigvalsh(0.5 * (mat + mat.T))[0]))
            lower = min(lower, best)
        upper = float(self.tail_coefficient(self._directions(n_directions, seed)).min())
        if self.dim == 1:
            lower = upper  # u = +-1 are the only directions: A is exact
        elif self.dim == 2:
            # A is Lipschitz in the angle with constant <= 2 sum_i |e_i| max_k ||P_ik||; the grid spacing is
            # 2 pi / n, so the true minimum is at least the grid minimum minus L pi / n.
            lip = 2 * sum(abs(e) * max(float(torch.linalg.matrix_norm(p, 2)) for p in ps)
                          for e, ps in zip(self.exponents, precisions, strict=True))
            lower = max(lower, upper - lip * math.pi / n_directions)
        return lower, upper

    def _directions(self, n: int, seed: int) -> torch.Tensor:
        if self.dim == 1:
            return torch.tensor([[1.0], [-1.0]], dtype=F64)
        if self.dim == 2:
            theta = torch.linspace(0, 2 * math.pi, n + 1, dtype=F64)[:-1]
            return torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
        gen = torch.Generator().manual_seed(seed)
        u = torch.randn(n, self.dim, dtype=F64, generator=gen)
        u = u / u.norm(dim=1, keepdim=True)
        # refine the best few by projected gradient descent on the sphere
        best = u[self.tail_coefficient(u).argsort()[:16]].clone()
        for _ in range(200):
            v = best.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.tail_coefficient(v / v.norm(dim=1, keepdim=True)).sum(), v)
            best = best - 0.05 * grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-300)
            best = best / best.norm(dim=1, keepdim=True)
        return torch.cat([u, best])

    @functools.cached_property
    def _default_tail_bounds(self) -> tuple[float, float]:
        """:meth:`tail_bounds` with its defaults, computed once per law (every check asks for them)."""
        return self.tail_bounds()

    def is_normalisable(self) -> bool | None:
        """True, False, or None when the tail bounds do not decide."""
        lower, upper = self._default_tail_bounds
        if lower > 0:
            return True
        if upper < 0:
            return False
        return None

    def check_normalisable(self) -> None:
        """Raise :class:`NotNormalisableError` (a ``ValueError``) unless normalisability is certified."""
        lower, upper = self._default_tail_bounds
        if upper < 0:
            raise NotNormalisableError(
                f"factors: the target {self.name or 'prod p_i^e_i'} is not normalisable: along some direction its "
                f"log density grows like +{-upper / 2:.3g} r^2 (tail coefficient min A(u) <= {upper:.3g} < 0)")
        if lower <= 0:
            raise NotNormalisableError(
                f"factors: normalisability of {self.name or 'the target'} is undecided: min A(u) lies in "
                f"[{lower:.3g}, {upper:.3g}]")

    # --- closed form for Gaussian factors -----------------------------------------------------------------
    def is_gaussian(self) -> bool:
        return all(law.n_components == 1 for law, _ in self.factors)

    def gaussian(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        r"""Closed form for single-Gaussian factors: :math:`q = \mathcal N(m, \Lambda^{-1})` with
        :math:`\Lambda = \sum_i e_i P_i`, :math:`m = \Lambda^{-1}\sum_i e_i P_i \mu_i` (``proofs/gaussian_tilted.py``),
        and :math:`\log Z = \log\int \prod_i \mathcal N_i^{e_i}`. Returns ``(mean, cov, log_Z)``."""
        if not self.is_gaussian():
            raise ValueError("factors: the closed form needs single-Gaussian factors")
        self.check_normalisable()
        d = self.dim
        lam = torch.zeros(d, d, dtype=F64)
        eta = torch.zeros(d, dtype=F64)
        const = 0.0
        for law, e in self.factors:
            prec = torch.linalg.inv(law.covariances[0])
            mu = law.means[0]
            lam += e * prec
            eta += e * prec @ mu
            const += e * (-0.5 * float(torch.logdet(2 * math.pi * law.covariances[0])) - 0.5 * float(mu @ prec @ mu))
        cov = torch.linalg.inv(0.5 * (lam + lam.T))
        mean = cov @ eta
        log_z = const + 0.5 * float(torch.logdet(2 * math.pi * cov)) + 0.5 * float(eta @ mean)
        return mean, cov, log_z

    def as_mixture(self, max_components: int = 20_000) -> tuple[GaussianMixture, float]:
        r"""Closed form of a tilted law that is a finite Gaussian mixture: ``(mixture, log_Z)``, the normalised law
        and :math:`\log\int\prod_i p_i^{e_i}`.

        Holds when every factor with more than one component has one covariance :math:`S_i` shared by its
        components and a positive integer exponent :math:`n_i` (single-Gaussian factors take any real exponent).
        Then :math:`p_i^{n_i} = \sum_{c} \binom{n_i}{c} \prod_k \pi_{ik}^{c_k} \exp\big(-\tfrac{n_i}{2} x^\top
        P_i x + (P_i \textstyle\sum_k c_k \mu_{ik})^\top x - \tfrac12 \sum_k c_k \mu_{ik}^\top P_i \mu_{ik}\big)
        |2\pi S_i|^{-n_i/2}` over the count vectors :math:`c` (:math:`\sum_k c_k = n_i`; the multinomial
        theorem), and a single Gaussian to the power :math:`e_i` is :math:`\exp` of a quadratic. Every term of the
        product is :math:`\exp(-\tfrac12 x^\top\Lambda x + \eta_c^\top x + \kappa_c)` with one precision
        :math:`\Lambda = \sum_i e_i P_i` (positive definite, or the law is refused as not normalisable), whose
        integral is :math:`\exp(\kappa_c + \tfrac12 \eta_c^\top\Lambda^{-1}\eta_c) |2\pi\Lambda^{-1}|^{1/2}`:
        the law is the mixture of :math:`\mathcal N(\Lambda^{-1}\eta_c, \Lambda^{-1})` with those weights. Used as
        an exact, non-Gaussian reference for the quadratures. Refused (``ValueError`` naming ``factors``) otherwise,
        or above ``max_components`` terms."""
        if isinstance(max_components, bool) or not isinstance(max_components, int) or max_components < 1:
            raise ValueError(f"max_components: must be an int >= 1, got {max_components!r}")
        d = self.dim
        lam = torch.zeros(d, d, dtype=F64)
        # terms as (log weight, linear coefficient eta) over the product, built factor by factor
        terms: list[tuple[float, torch.Tensor]] = [(0.0, torch.zeros(d, dtype=F64))]
        for law, e in self.factors:
            active = law.weights > 0
            covs, means, weights = law.covariances[active], law.means[active], law.weights[active]
            if not bool((covs == covs[0]).all()):
                raise ValueError("factors: a mixture factor's components must share one covariance for the closed "
                                 "form")
            prec = torch.linalg.inv(covs[0])
            log_det = float(torch.logdet(2 * math.pi * covs[0]))
            if means.shape[0] == 1:
                mu = means[0]
                lam += e * prec
                const = e * (-0.5 * log_det - 0.5 * float(mu @ prec @ mu))
                terms = [(c + const, eta + e * prec @ mu) for c, eta in terms]
                continue
            if e <= 0 or e != round(e):
                raise ValueError(f"factors: a mixture raised to the power {e!r} is a finite mixture only for a "
                                 f"positive integer power")
            n = int(round(e))
            lam += n * prec
            log_pi = torch.log(weights)
            quad = torch.einsum("ki,ij,kj->k", means, prec, means)
            expanded = []
            for counts in _compositions(n, means.shape[0]):
                c = torch.tensor(counts, dtype=F64)
                log_coef = math.lgamma(n + 1) - sum(math.lgamma(k + 1) for k in counts)
                const = log_coef + float(c @ log_pi) - 0.5 * float(c @ quad) - 0.5 * n * log_det
                lin = prec @ (c @ means)
                expanded.extend((w + const, eta + lin) for w, eta in terms)
                if len(expanded) > max_components:
                    raise ValueError(f"factors: the closed form has more than max_components = {max_components} "
                                     f"terms")
            terms = expanded
        lam = 0.5 * (lam + lam.T)
        if float(torch.linalg.eigvalsh(lam)[0]) <= 0:
            raise NotNormalisableError("factors: the precision sum_i e_i P_i is not positive definite: the target is "
                                       "not normalisable")
        cov = torch.linalg.inv(lam)
        cov = 0.5 * (cov + cov.T)
        etas = torch.stack([eta for _, eta in terms])
        means = etas @ cov
        log_w = (torch.tensor([w for w, _ in terms], dtype=F64) + 0.5 * (etas * means).sum(1)
                 + 0.5 * float(torch.logdet(2 * math.pi * cov)))
        log_z = float(torch.logsumexp(log_w, 0))
        weights = torch.exp(log_w - log_z)
        keep = weights > 0
        mixture = GaussianMixture(weights[keep] / weights[keep].sum(), means[keep],
                                  cov.expand(int(keep.sum()), d, d).clone())
        return mixture, log_z

    # --- normaliser, moments, masses ----------------------------------------------------------------------
    @property
    def window(self) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(lo, hi)`` ``[d]`` each: the quadrature window, computed once per law: every factor's components with
        ``_WINDOW_SPAN`` (12) standard deviations of margin, and at least the radius :math:`\sqrt{100 / A_{lo}}`
        around the modes (:meth:`modes`), beyond which the certified tail decay :math:`\exp(-A_{lo} r^2/2)`
        (:meth:`tail_bounds`) has fallen below :math:`e^{-50}` (the tilted law can be wider than every factor).
        The quadrature of :meth:`summary` refuses a law whose density on the window's edge is above
        :math:`e^{-40}` of its peak."""
        return self._window

    @functools.cached_property
    def _window(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The cache behind :attr:`window` (one computation per law)."""
        means = torch.cat([law.means for law, _ in self.factors])
        stds = torch.cat([torch.diagonal(law.covariances, dim1=1, dim2=2).sqrt() for law, _ in self.factors])
        modes = self.modes()
        radius = math.sqrt(100.0 / self.tail_bounds(n_directions=720)[0])
        lo = torch.minimum((means - _WINDOW_SPAN * stds).min(0).values, modes.min(0).values - radius)
        hi = torch.maximum((means + _WINDOW_SPAN * stds).max(0).values, modes.max(0).values + radius)
        return lo, hi

    def _grid(self, n: int) -> tuple[torch.Tensor, float]:
        """An ``n``-point-per-axis tensor grid over :attr:`window` and the volume of one cell."""
        lo, hi = self.window
        axes = [torch.linspace(float(lo[i]), float(hi[i]), n, dtype=F64) for i in range(self.dim)]
        cell = math.prod(float(a[1] - a[0]) for a in axes)
        mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, self.dim)
        return mesh, cell

    def modes(self) -> torch.Tensor:
        """Local maxima of the tilted density found by L-BFGS from every factor's component means, ``[M, d]``.

        A tilted law's mass can sit far from every factor (a negative exponent pushes it away), so quadrature
        windows are placed around these, not around the factors."""
        from scipy.optimize import minimize

        found = []
        for start in torch.cat([law.means for law, _ in self.factors]):
            def objective(v):
                x = torch.as_tensor(v, dtype=F64)[None, :]
                return -float(self.log_unnormalized(x)[0]), -self.score(x)[0].numpy()

            res = minimize(objective, start.numpy(), jac=True, method="L-BFGS-B")
            found.append(torch.as_tensor(res.x, dtype=F64))
        return torch.stack(found)

    def _quadrature(self, n: int):
        mesh, cell = self._grid(n)
        logq = self.log_unnormalized(mesh)
        peak = float(logq.max())
        # the grid's edge must be far in the tail: the density there must be below e^-40 of the peak
        edge = self._edge_mask(n)
        if float(logq[edge].max()) > peak - 40:
            raise NotNormalisableError("factors: the target does not decay inside the quadrature window; it is "
                                       "not normalisable or far wider than its factors")
        weights = torch.exp(logq - peak)
        log_z = peak + math.log(float(weights.sum()) * cell)
        prob = weights / weights.sum()
        return mesh, prob, log_z

    def _edge_mask(self, n: int) -> torch.Tensor:
        idx = torch.arange(n)
        grids = torch.meshgrid(*([idx] * self.dim), indexing="ij")
        edge = torch.zeros_like(grids[0], dtype=torch.bool)
        for g in grids:
            edge |= (g == 0) | (g == n - 1)
        return edge.reshape(-1)

    def summary(self, *, n_grid: int | None = None, n_samples: int = 200_000, seed: int = 0) -> TiltedSummary:
        """Normaliser and moments: closed form, quadrature (d <= 2) or importance sampling (d > 2)."""
        n_grid, n_samples, seed = _check_numerics(n_grid, n_samples, seed)
        self.check_normalisable()
        if self.is_gaussian():
            mean, cov, log_z = self.gaussian()
            return TiltedSummary(log_z, 0.0, mean, cov, "closed form (Gaussian factors)")
        if self.dim <= 2:
            n = n_grid or (4001 if self.dim == 1 else 401)
            fine = self._moments_on_grid(n)
            coarse = self._moments_on_grid((n + 1) // 2)
            moment_err = max(float((fine[1] - coarse[1]).abs().max()), float((fine[2] - coarse[2]).abs().max()))
            return TiltedSummary(fine[0], abs(fine[0] - coarse[0]), fine[1], fine[2],
                                 f"trapezoid, {n}^{self.dim} points (error: halving the grid)", moment_err)
        return self._importance_summary(n_samples, seed)

    def _moments_on_grid(self, n: int):
        mesh, prob, log_z = self._quadrature(n)
        mean = prob @ mesh
        centred = mesh - mean
        cov = (centred * prob[:, None]).T @ centred
        return log_z, mean, cov

    @functools.cached_property
    def _proposal_law(self) -> GaussianMixture:
        """:meth:`proposal`, built once per law."""
        return self.proposal()

    def laplace_components(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        r"""``[(mode [d], 2 H^-1 [d, d]), ...]`` at each distinct local maximum of the tilted density
        (:meth:`modes`), :math:`H` the Hessian of :math:`-\log q` there by autograd of :meth:`score`; a mode where
        :math:`H` is not positive definite is skipped, and two starts that reach the same mode (closer than a tenth
        of the smallest Laplace scale) count once. Its length is the number of local maxima found."""
        out: list[tuple[torch.Tensor, torch.Tensor]] = []
        for mode in self.modes():
            jac = torch.autograd.functional.jacobian(lambda v: self.score(v[None, :])[0], mode)
            hess = -0.5 * (jac + jac.T)
            evals, evecs = torch.linalg.eigh(hess)
            if not bool((evals > 0).all()) or not bool(torch.isfinite(evals).all()):
                continue
            cov = 2.0 * (evecs / evals) @ evecs.T
            # the same mode reached from two starts: closer than a tenth of the smallest Laplace scale
            if any(float((mode - m).norm()) < 0.1 * float(evals.max() ** -0.5) for m, _ in out):
                continue
            out.append((mode, 0.5 * (cov + cov.T)))
        return out

    def proposal(self) -> GaussianMixture:
        r"""The importance-sampling proposal, a defensive mixture (Hesterberg 1995, "Weighted average importance
        sampling and defensive mixture distributions"): weight :data:`_DEFENSIVE` on the tail cover and the rest,
        in equal parts, on the main components.

        * main: every component of the positive-exponent factors with covariance :math:`2\Sigma_k` (heavier tails
          than the factor), and a Laplace component :math:`\mathcal N(m, 2H^{-1})` at every mode :math:`m` of
          :math:`q` (:meth:`modes`; :math:`H` the Hessian of :math:`-\log q` there), which is where the mass is
          when a negative exponent moves it away from every positive factor;
        * tail cover: the positive factors' components with covariance :math:`2\Sigma_k + I/A_{lo}`,
          :math:`A_{lo} > 0` the certified lower bound on the tail coefficient (:meth:`tail_bounds`). The target
          decays at least like :math:`e^{-A_{lo} r^2/2}` and these components' precisions are at most
          :math:`A_{lo}`, so :math:`\int q^2/p \le \int q^2/(\epsilon p_{cover}) < \infty`: the weights have a
          finite variance, and the ESS and standard errors mean something, even where the target is much wider
          than its positive factors (a negative exponent on a narrower law widens it; the main components alone,
          like the naive proposal :math:`\mathcal N(\mu_k, 2\Sigma_k)`, then give weights of infinite
          variance). Where the main components fit, the cover costs at most a factor :math:`1 - \epsilon` of the
          ESS."""
        lower = self._default_tail_bounds[0]
        eye = torch.eye(self.dim, dtype=F64)
        main, cover = [], []
        for law, e in self.factors:
            if e > 0:
                for mu, cov in zip(law.means, law.covariances, strict=True):
                    main.append((mu, 2.0 * cov))
                    cover.append((mu, 2.0 * cov + eye / lower))
        main += self.laplace_components()
        weights = [(1.0 - _DEFENSIVE) / len(main)] * len(main) + [_DEFENSIVE / len(cover)] * len(cover)
        parts = main + cover
        return GaussianMixture(torch.tensor(weights, dtype=F64), torch.stack([m for m, _ in parts]),
                               torch.stack([c for _, c in parts]))

    def _importance_draws(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` draws from :meth:`proposal` and their log importance weights ``log q~(x) - log proposal(x)``."""
        proposal = self._proposal_law
        x = proposal.sample(n, torch.Generator().manual_seed(seed))
        return x, self.log_unnormalized(x) - proposal.log_prob(x)

    def _importance_summary(self, n: int, seed: int) -> TiltedSummary:
        x, log_w = self._importance_draws(n, seed)
        peak = float(log_w.max())
        w = torch.exp(log_w - peak)
        mean_w = float(w.mean())
        # log Z = log E_q[w]; delta method: se(log Z) = sd(w) / (mean(w) sqrt(n))
        se_log_z = float(w.std()) / (mean_w * math.sqrt(n))
        prob = w / w.sum()
        mean = prob @ x
        centred = x - mean
        cov = (centred * prob[:, None]).T @ centred
        ess = float(w.sum() ** 2 / (w * w).sum())
        # self-normalised IS: the delta method gives var(sum p_i f_i) ~ sum p_i^2 (f_i - mean f)^2 for each moment
        # f (coordinates, then centred products); the largest standard error over the entries
        rows, cols = torch.triu_indices(self.dim, self.dim)
        products = centred[:, rows] * centred[:, cols] - cov[rows, cols]
        moment_se = float(torch.cat([((prob[:, None] * centred) ** 2).sum(0),
                                     ((prob[:, None] * products) ** 2).sum(0)]).sqrt().max())
        return TiltedSummary(peak + math.log(mean_w), se_log_z, mean, cov,
                             f"importance sampling, {n} draws from a defensive mixture: the positive factors' "
                             f"components "
                             f"(2 S_k) and Laplace components at the modes, with {_DEFENSIVE:g} on a tail cover "
                             f"(2 S_k + I / A_lo) (errors: one standard error)",
                             moment_se, ess)

    def probability(self, region: Callable[[torch.Tensor], torch.Tensor], *, n_grid: int | None = None,
                    n_samples: int = 200_000, seed: int = 0) -> tuple[float, float]:
        """``(mass, error)`` of ``region`` (a function from points ``[M, d]`` to a bool mask ``[M]``)."""
        if not callable(region):
            raise TypeError(f"region: expected a callable from points [M, d] to a bool mask [M], got "
                            f"{type(region).__name__}")
        n_grid, n_samples, seed = _check_numerics(n_grid, n_samples, seed)
        self.check_normalisable()
        user_region = region

        def region(points: torch.Tensor) -> torch.Tensor:
            mask = torch.as_tensor(user_region(points))
            if mask.dtype != torch.bool or mask.shape != (points.shape[0],):
                raise ValueError(f"region: must return a bool mask of shape [{points.shape[0]}], got "
                                 f"{mask.dtype} of shape {list(mask.shape)}")
            return mask

        if self.dim <= 2:
            n = n_grid or (4001 if self.dim == 1 else 401)
            masses = []
            for m in (n, (n + 1) // 2):
                mesh, prob, _ = self._quadrature(m)
                masses.append(float(prob[region(mesh)].sum()))
            # a region's boundary cuts grid cells, so the error is first order in the spacing: the halving
            # difference itself (not a Richardson fraction of it) bounds it
            return masses[0], abs(masses[0] - masses[1])
        x, log_w = self._importance_draws(n_samples, seed)
        w = torch.exp(log_w - float(log_w.max()))
        inside = region(x).to(F64)
        mass = float((w * inside).sum() / w.sum())
        ess = float(w.sum() ** 2 / (w * w).sum())
        return mass, math.sqrt(max(mass * (1 - mass), 0.0) / ess)


def _compositions(n: int, k: int):
    """Every vector of ``k`` non-negative ints summing to ``n`` (the multinomial theorem's count vectors)."""
    if k == 1:
        yield (n,)
        return
    for first in range(n + 1):
        for rest in _compositions(n - first, k - 1):
            yield (first, *rest)


def _check_numerics(n_grid, n_samples, seed) -> tuple[int | None, int, int]:
    """``n_grid`` (None or an int >= 3), ``n_samples`` (int >= 2) and ``seed`` (int >= 0), bools refused."""
    def integer(value, name, minimum):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            raise ValueError(f"{name}: must be an int >= {minimum}, got {value!r}")
        return int(value)
    return (None if n_grid is None else integer(n_grid, "n_grid", 3), integer(n_samples, "n_samples", 2),
            integer(seed, "seed", 0))


def linear_terms(rule: Rule, conditions: Mapping[str, Condition] | Condition = None
                 ) -> tuple[tuple[Hashable, float], ...]:
    r"""``((condition, weight), ...)``: the rule's ``linear_weights`` put on the conditions of its branches, in the
    rule's weight order, with the weights of branches that share a condition added (``cfg`` with ``cond = None``
    is one term of weight 1).

    ``conditions`` maps each branch the rule reads to its condition, as :meth:`verify.rules.Rule.guide` takes it:
    ``{"cond": 0, "negative": 1}``, ``uncond`` defaulting to the null condition; a bare condition means
    ``{"cond": condition}``. Refused (messages starting ``rule:``): anything that is not a :class:`verify.rules.Rule`,
    a rule whose ``linear_weights`` is ``None`` (no single weighted sum of branch predictions holds at every t:
    thresholding, rescale, a guidance interval, classifier guidance with an inexact classifier), a rule that
    re-noises with another branch than its guided prediction (CFG++: the sampler's update is then not the
    guided score's), and a ``weak`` branch (a different model, whose law is not one of the world's)."""
    if not isinstance(rule, Rule):
        raise TypeError(f"rule: expected a verify.rules rule (rules.get(name, ...)), got {type(rule).__name__}")
    weights = rule.linear_weights
    if weights is None:
        raise ValueError(f"rule: {rule.describe()} has no fixed linear weights (linear_weights is None), so it "
                         f"implies no tilted law")
    if rule.renoise_branch is not None:
        raise ValueError(f"rule: {rule.describe()} re-noises with the {rule.renoise_branch!r} branch, so its sampler "
                         f"does not follow the guided score and no tilted law describes it")
    if "weak" in weights:
        raise ValueError(f"rule: {rule.describe()} reads a weaker model (branch 'weak'), whose law is not the world's")
    bound = bind_conditions(rule, conditions)
    merged: dict[Hashable, float] = {}
    for branch, weight in weights.items():
        key = bound[branch]
        merged[key] = merged.get(key, 0.0) + weight
    return tuple(merged.items())


def tilted_law(world: World, rule: Rule, conditions: Mapping[str, Condition] | Condition = None, *,
               t: float | None = None, schedule: str = "vp-linear") -> TiltedLaw:
    r"""The law ``rule`` implies on ``world`` at time ``t`` (``None``: the data level, t = 0; else a time in
    [0, 1] of ``schedule``): :math:`\prod_i p_t(x \mid c_i)^{a_i}` over :func:`linear_terms` ``(rule,
    conditions)``, e.g. ``tilted_law(world, rules.get("cfg", w=3), {"cond": 1})``."""
    if not isinstance(world, World):
        raise TypeError(f"world: expected a World, got {type(world).__name__}")
    terms = linear_terms(rule, conditions)
    if t is not None:
        t = as_scalar(t, "t")
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"t: must lie in [0, 1], got {t!r}")
        alpha, sigma = (float(v) for v in get_schedule(schedule).alpha_sigma(t))
    factors = []
    for cond, weight in terms:
        law = world.law(cond)
        if t is not None:
            law = law.noised(alpha, sigma)
        factors.append((law, weight))
    return TiltedLaw(tuple(factors), rule.describe())
