r"""The Bayes decomposition of the score, checked in float64 at every noise level (read by S0-BAYES).

For every world, class and time on a grid of the vp-linear schedule, at points drawn from the noised world (the
bulk) and the same points spread three times wider (the tails): the exact conditional score
``noised(law(c)).score`` against the unconditional score plus :math:`\nabla \log p_t(c \mid x)` obtained by
**autograd of the class posterior** (an independent route: no score formula enters it). The tolerance at each point
is the derived rounding bound of the two scores (:mod:`verify.tolerances`).

Worlds without a joint law (``gauss1d``) have no class posterior; their classifier is the implicit one,
:math:`\log p_t(x \mid c) - \log p_t(x) + \log p(c)`, and the identity holds by its definition. For them the
provider instead reports whether *some* joint law is consistent with the pair: one exists iff
:math:`p(c) \le \inf_x p(x)/p(x \mid c)`, which is positive when the conditional is narrower than the marginal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from toy_models import World, get_world
from verify.config import RunConfig
from verify.tolerances import bayes_identity_tolerance, score_bounds

from . import provider
from .shared import alpha_sigma, check_points, dense_world_names

__all__ = ["BayesWorld", "BayesIdentity", "bayes_identity"]

TIMES = (0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
QUICK_TIMES = (0.01, 0.3, 0.7, 1.0)


@dataclass(frozen=True)
class BayesWorld:
    """One world's result. Joint worlds: the largest error, the largest error over its bound, the largest score
    norm and the number of points checked. Other worlds: the largest p(c) that admits a joint law, per class."""

    name: str
    joint_law: bool
    max_abs_error: float | None = None
    max_error_over_bound: float | None = None
    max_score_norm: float | None = None
    checks: int | None = None
    largest_p_c_admitting_a_joint_law: dict[str, float] | None = None


@dataclass(frozen=True)
class BayesIdentity:
    worlds: tuple[BayesWorld, ...]
    times: tuple[float, ...]
    n_points: int

    @property
    def checked(self) -> tuple[str, ...]:
        """The joint worlds, on which the identity was checked point by point."""
        return tuple(w.name for w in self.worlds if w.joint_law)

    @property
    def max_error_over_bound(self) -> float:
        return max(w.max_error_over_bound for w in self.worlds if w.joint_law)


def _joint_world_errors(world: World, t: float, x: torch.Tensor) -> list[tuple[float, float, float]]:
    """(max |error|, max |error| / bound, max |score|) per class condition at time t."""
    alpha, sigma = alpha_sigma(t)
    marginal = world.unconditional.noised(alpha, sigma)
    xr = x.clone().requires_grad_(True)
    log_post = marginal.log_class_posterior(xr)  # [N, C]
    uncond_score = marginal.score(x)
    marginal_bounds = score_bounds(marginal, x)
    out = []
    for col, label in enumerate(marginal.classes.tolist()):
        (grad_post,) = torch.autograd.grad(log_post[:, col].sum(), xr, retain_graph=True)
        conditional = world.law(label).noised(alpha, sigma)
        err = torch.linalg.vector_norm(conditional.score(x) - (uncond_score + grad_post), dim=-1)
        bound = bayes_identity_tolerance(score_bounds(conditional, x), marginal_bounds)
        out.append((float(err.max()), float((err / bound).max()),
                    float(torch.linalg.vector_norm(uncond_score, dim=-1).max())))
    return out


def _joint_law_bound(world: World, condition) -> float:
    r""":math:`\inf_x p(x)/p(x \mid c)` on a wide grid (1-D worlds): the largest p(c) a joint law admits."""
    grid = torch.linspace(-40, 40, 400_001, dtype=torch.float64)[:, None]
    log_ratio = world.law(None).log_prob(grid) - world.law(condition).log_prob(grid)
    return float(torch.exp(log_ratio.min()))


@provider
def bayes_identity(config: RunConfig) -> BayesIdentity:
    """The Bayes identity's error against its derived rounding bound, per world (see the module docstring)."""
    times = QUICK_TIMES if config.quick else TIMES
    n_points = 128 if config.quick else 512
    generator = torch.Generator().manual_seed(config.seed)
    acc: dict[str, list[float]] = {}
    names = dense_world_names()  # the bounds need dense covariances
    jobs = [(name, t) for name in names for t in times if get_world(name).is_joint]
    for name, t in tqdm(jobs, desc="Bayes identity", disable=not config.show_progress, leave=False):
        world = get_world(name)
        row = acc.setdefault(name, [0.0, 0.0, 0.0, 0])
        x = check_points(world, [None], t, n_points, generator)
        for err, ratio, norm in _joint_world_errors(world, t, x):
            row[0], row[1], row[2] = max(row[0], err), max(row[1], ratio), max(row[2], norm)
            row[3] += x.shape[0]
    worlds = []
    for name in names:
        world = get_world(name)
        if world.is_joint:
            err, ratio, norm, checks = acc[name]
            worlds.append(BayesWorld(name, True, err, ratio, norm, int(checks)))
        else:
            bounds = {str(c): _joint_law_bound(world, c) for c in world.class_conditions()}
            worlds.append(BayesWorld(name, False, largest_p_c_admitting_a_joint_law=bounds))
    return BayesIdentity(tuple(worlds), tuple(times), n_points)
