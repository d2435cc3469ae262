"""The confidence/entropy references of Wu et al. 2024 (verify.evidence.wu) and their record."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import ndtri

from verify import rules
from verify.evidence import wu
from verify.exact_law import pf_ode_law_1d, reverse_sde_law_1d

LAW, LABEL = wu.TWO_CLASSES


def _class_expectation(h) -> float:
    """E[h(X)] under the class law N(1, 1) by the trapezoid rule on +-12 sd (error far below 1e-10)."""
    x = np.linspace(1 - 12, 1 + 12, 200_001)
    p = np.exp(-0.5 * (x - 1) ** 2) / math.sqrt(2 * math.pi)
    return float(np.trapezoid(h(x) * p, x))


def test_unguided_flow_gives_the_class_law():
    """w = 0 maps the noised class law at t = 1 to N(1, 1): its entropy 0.5 ln(2 pi e) and its confidence
    E[p(c|X)] by quadrature, to the change between 801 and 400 nodes (the reference's own error estimate, x3)."""
    fine = wu._ode_point(LAW, LABEL, 0.0, 801, 1e-10)
    coarse = wu._ode_point(LAW, LABEL, 0.0, 400, 1e-8)
    conf = _class_expectation(lambda x: wu._posterior(LAW, LABEL, x))
    for key, exact in (("entropy", 0.5 * math.log(2 * math.pi * math.e)), ("confidence", conf)):
        assert abs(fine[key] - exact) <= 3 * abs(fine[key] - coarse[key]) + 1e-9


@pytest.mark.parametrize("w", [0.0, 3.0])
def test_flow_map_agrees_with_the_exact_law_reference(w):
    """The flow map's mean against pf_ode_law_1d's (an independent quadrature of the same map), within both
    references' error estimates."""
    ref = pf_ode_law_1d(rules.get("cfg", w=w), {"cond": LAW.given(LABEL), "uncond": LAW}, n_nodes=801)
    mine = wu._ode_point(LAW, LABEL, w, 801, 1e-10)
    coarse = wu._ode_point(LAW, LABEL, w, 400, 1e-8)
    assert abs(mine["mean"] - ref.mean) <= ref.error["mean"] + abs(mine["mean"] - coarse["mean"]) + 1e-9


def test_fokker_planck_density_agrees_with_the_exact_law_reference():
    """The density's mass is 1, and its mean, variance and mass below 0 equal reverse_sde_law_1d's (the same scheme
    run by the library) within that reference's error estimate plus ours."""
    w = 3.0
    centres, rho = wu.fokker_planck_density(LAW, LABEL, w, 400, 400)
    h = centres[1] - centres[0]
    assert abs(rho.sum() * h - 1.0) < 1e-12
    ref = reverse_sde_law_1d(rules.get("cfg", w=w), {"cond": LAW.given(LABEL), "uncond": LAW}, n_cells=400,
                             n_steps=400)
    p = rho * h
    mean = float(p @ centres)
    half = wu.fokker_planck_density(LAW, LABEL, w, 200, 200)
    mean_half = float(half[1] * (half[0][1] - half[0][0]) @ half[0])
    assert abs(mean - ref.mean) <= ref.error["mean"] + abs(mean - mean_half) + 1e-9
    assert abs(float(p @ (centres - mean) ** 2) - ref.var) <= 2 * ref.error["var"] + 1e-9


def test_unguided_sde_gives_the_class_entropy():
    """w = 0: the reverse SDE returns N(1, 1); its entropy from the Fokker-Planck density, to the halving error x3."""
    fine, coarse = wu._sde_point(LAW, LABEL, 0.0, 800), wu._sde_point(LAW, LABEL, 0.0, 400)
    exact = 0.5 * math.log(2 * math.pi * math.e)
    assert abs(fine["entropy"] - exact) <= 3 * abs(fine["entropy"] - coarse["entropy"]) + 1e-9


def test_count_modes_reads_one_and_two_modes():
    u = (np.arange(20_000) + 0.5) / 20_000
    one = ndtri(u)
    two = np.concatenate([ndtri(u[::2]) * 0.3 - 2.0, ndtri(u[::2]) * 0.3 + 2.0])
    assert wu.count_modes(one)[0] == 1
    assert wu.count_modes(two)[0] == 2


def test_pair_log_odds_is_the_closed_form():
    """The implicit log-odds E[log N(X; 1, .5) - log N(X; 0, 1)] of the provider's formula against quadrature, for
    the output N(2, 0.3) (trapezoid error < 1e-10)."""
    m, v, (mc, vc), (mu, vu) = 2.0, 0.3, *wu.PAIRS["gauss1d"]
    closed = 0.5 * math.log(vu / vc) - ((m - mc) ** 2 + v) / (2 * vc) + ((m - mu) ** 2 + v) / (2 * vu)
    x = np.linspace(m - 12, m + 12, 200_001)
    p = np.exp(-0.5 * (x - m) ** 2 / v) / math.sqrt(2 * math.pi * v)
    ratio = (-0.5 * np.log(vc / vu) - 0.5 * (x - mc) ** 2 / vc + 0.5 * (x - mu) ** 2 / vu)
    assert abs(float(np.trapezoid(ratio * p, x)) - closed) < 1e-9


def test_record(ledger):
    """The quick record: confidence rises and entropy falls for both samplers; the 10-step DDIM splits the centre
    component at the strongest w while the continuous ODE keeps one mode."""
    rec = ledger("L-WU-CONFIDENCE")["L-WU-CONFIDENCE"]
    checks = rec.evidence["checks"]
    for key in ("ode_confidence_rises", "sde_confidence_rises", "ode_entropy_falls", "sde_entropy_falls"):
        assert checks[key] is True
    modes = rec.evidence["split_modes"]
    top = f"{max(rec.evidence['split_ws']):g}"
    assert modes["ddim10"][top] >= 2 and all(v == 1 for v in modes["ode"].values())
    assert rec.verdict == "holds"
    assert rec.figure == "figures/wu_confidence.png"
    assert torch.isfinite(torch.tensor(rec.evidence["mixture"]["ode/0"]["entropy"]))
