"""What the non-linear two-branch rules' tests share: the random cases of "the rule's formula in every prediction
space", and the check itself (the formula on the predictions in that space, and the guided eps after the round
trip, each within its derived bound)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from hypothesis import strategies as st
from test_rule_apg import eps_tolerance, from_space, to_space  # parametrization-only conversions

from toy_models import AnalyticDenoiser
from toy_models.strategies import mixtures, points
from verify import rules
from verify.rules import SPACES


@st.composite
def space_cases(draw):
    """``(mixture, schedule, t, x, space, g)``: a 1-3 dimensional two-class mixture, six points, a time away from
    both ends, one of the four spaces and a guidance scale in [-2, 20]."""
    gm = draw(mixtures(dims=st.integers(1, 3), components=st.integers(1, 3), n_classes=2))
    schedule = draw(st.sampled_from(["rectified-flow", "vp-linear"]))
    t = draw(st.floats(0.02, 0.95))
    x = torch.from_numpy(draw(points(gm.dim, n=6, scale=4.0)))
    space = draw(st.sampled_from(SPACES))
    g = draw(st.floats(-2.0, 20.0))
    return gm, schedule, t, x, space, g


def check_in_every_space(name: str, params: dict, case, formula: Callable) -> None:
    """``rules.get(name, guidance_scale=g, space=space, **params)`` against ``formula(u, c, g) -> (ref, tol)``
    (float64 tensors or arrays, in the rule's space) on the case's exact predictions, then its guided eps against
    the reference converted to eps within :func:`test_rule_apg.eps_tolerance`."""
    gm, schedule, t, x, space, g = case
    den = AnalyticDenoiser(gm, schedule)
    rule = rules.get(name, guidance_scale=g, space=space, **params)
    guided = rule.guide(den, 0)
    u, c = (to_space(den.eps(x, t, cond), space, x, t, schedule) for cond in (None, 0))
    ref, tol = (np.asarray(v) for v in formula(u, c, g))
    got = rule.combine({"uncond": u, "cond": c}, guided.context(x, t)).numpy()
    assert np.all(np.abs(got - ref) <= tol), (space, np.max(np.abs(got - ref) / tol))
    eps_ref = from_space(torch.from_numpy(ref), space, x, t, schedule).numpy()
    etol = eps_tolerance(space, tol, ref, x.numpy(), t, schedule)
    eps_got = guided.eps(x, t).numpy()
    assert np.all(np.abs(eps_got - eps_ref) <= etol), (space, np.max(np.abs(eps_got - eps_ref) / etol))
