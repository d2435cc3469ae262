"""The 2-D evidence of S0-XATTN (:mod:`verify.evidence.image_attention`): the permutation criterion on constructed
maps (a uniform map and a map that ignores the position are never rejected, a map concentrated on its object is,
and the false-alarm rate under exchangeable random maps stays within its level), the patch coverage against the
pixel mask, and, on the shipped shapes16 network, that the recorded maps are probabilities, that one cell's maps
are what ``cross_attention`` gives for the same draws, that every score follows from the recorded maps, and the
skip path."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from toy_models.image_worlds import POSITIONS, object_mask
from verify.claims.network import cross_attention
from verify.config import RunConfig
from verify.evidence import Evidence
from verify.evidence.image_attention import (
    ALPHA,
    GROUPS,
    KINDS,
    TIMES,
    cell_seed,
    conditions,
    image_attention,
    mass_in_region,
    patch_coverage,
    permutation_pvalue,
    token_kind,
    token_maps,
)
from verify.evidence.network import MAIN, P_UNCOND, NetworkModels, default_checkpoints
from verify.metrics import holm_reject

HAVE_SHAPES16 = (default_checkpoints() / "shapes16.safetensors").is_file()
needs_network = pytest.mark.skipif(not HAVE_SHAPES16, reason="no checkpoints/shapes16")
EPS = float(torch.finfo(torch.float64).eps)


def _masses(maps: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """``maps [G, 4, P]``, ``regions [G, 4, P]`` (bool) -> ``[G, 4, 4]`` masses of map i on region j."""
    return np.einsum("gip,gjp->gij", maps, regions.astype(float))


def _quadrant_regions(groups: int) -> np.ndarray:
    """The 4 x 4 grid's quadrants as regions, one per position, repeated for ``groups`` groups: ``[G, 4, 16]``."""
    grid = np.arange(16).reshape(4, 4)
    quads = [(grid[:2, :2]), (grid[:2, 2:]), (grid[2:, :2]), (grid[2:, 2:])]
    regions = np.zeros((4, 16), dtype=bool)
    for i, q in enumerate(quads):
        regions[i, q.reshape(-1)] = True
    return np.broadcast_to(regions, (groups, 4, 16)).copy()


# --------------------------------------------------------------------------------------------------------------
# the criterion on constructed maps
# --------------------------------------------------------------------------------------------------------------
def test_a_uniform_map_is_never_rejected_and_a_concentrated_one_is():
    regions = _quadrant_regions(len(GROUPS))
    uniform = np.full((len(GROUPS), 4, 16), 1.0 / 16)
    p_uniform = permutation_pvalue(_masses(uniform, regions))
    assert p_uniform == 1.0  # every reassignment ties: no evidence either way
    assert permutation_pvalue(-_masses(uniform, regions)) == 1.0
    # a map with only 0.30 of its mass on its own quadrant (chance 0.25), the rest spread evenly over the others
    concentrated = np.where(regions, 0.30 / 4, 0.70 / 12)
    p_follow = permutation_pvalue(_masses(concentrated, regions))
    p_avoid = permutation_pvalue(-_masses(concentrated, regions))
    assert p_follow == pytest.approx(24.0 ** -len(GROUPS), rel=1e-12)  # the observed assignment alone is the max
    assert p_avoid == 1.0
    m = 2 * len(KINDS) * 3 * len(TIMES)  # both tails of 3 kinds x 3 layers x 3 t
    reject = holm_reject([p_uniform, p_follow] + [0.5] * (m - 2), ALPHA)
    assert not reject[0] and reject[1]


def test_a_map_that_ignores_the_position_is_not_rejected():
    """One fixed, strongly non-uniform map (all mass on the top-left patch) at every position: T is the same
    under every reassignment, p = 1 in both tails."""
    regions = _quadrant_regions(len(GROUPS))
    fixed = np.zeros((len(GROUPS), 4, 16))
    fixed[..., 0] = 1.0
    assert permutation_pvalue(_masses(fixed, regions)) == 1.0
    assert permutation_pvalue(-_masses(fixed, regions)) == 1.0


def test_false_alarm_rate_of_exchangeable_maps_is_within_its_level():
    """i.i.d. Dirichlet maps (exchangeable across positions: the null) in 2 groups (576 reassignments, p-values on
    a grid of 1/576): over 400 families the rejection rate at 0.05 is at most 0.05 plus 3 binomial standard errors
    (sqrt(0.05 0.95 / 400) = 0.011)."""
    rng = np.random.default_rng(3)
    regions = _quadrant_regions(2)
    trials, level = 400, 0.05
    rejected = sum(permutation_pvalue(_masses(rng.dirichlet(np.ones(16), size=(2, 4)), regions)) <= level
                   for _ in range(trials))
    assert rejected / trials <= level + 3 * math.sqrt(level * (1 - level) / trials)


def test_permutation_pvalue_against_brute_force():
    """The convolution of the groups' reassignment scores against an explicit loop over all (3!)^2 reassignments."""
    rng = np.random.default_rng(5)
    m = rng.random((2, 3, 3))
    observed = np.trace(m, axis1=1, axis2=2).sum()
    perms = list(itertools.permutations(range(3)))
    totals = [sum(m[0, i, a[i]] + m[1, i, b[i]] for i in range(3)) for a in perms for b in perms]
    tol = 36 * EPS  # (g k)^2 eps, as in permutation_pvalue
    assert permutation_pvalue(m) == pytest.approx(np.mean([t >= observed - tol for t in totals]), abs=0)


def test_refusals():
    with pytest.raises(ValueError, match="^masses:"):
        permutation_pvalue(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="^masses:"):
        permutation_pvalue(np.full((1, 2, 2), np.nan))
    with pytest.raises(ValueError, match="^probs:"):
        token_maps(torch.zeros(2, 3, 16, 3))
    with pytest.raises(ValueError, match="^region:"):
        mass_in_region(torch.ones(16), torch.ones(16))
    with pytest.raises(ValueError, match="^patch:"):
        patch_coverage(16, 3, "disc", "top-left")
    with pytest.raises(ValueError, match="^token:"):
        token_kind("purple")


def test_patch_coverage_pools_the_mask():
    """Each patch's coverage is its count of mask pixels over 16, and all of the object lies in its quadrant's
    four patches (so the area fraction is 4/16)."""
    for shape, position in (("disc", "top-left"), ("bar", "bottom-right"), ("ring", "top-right")):
        mask = object_mask(16, shape, position)
        cov = patch_coverage(16, 4, shape, position)
        counts = torch.tensor([int(mask[4 * r:4 * r + 4, 4 * c:4 * c + 4].sum()) for r in range(4) for c in range(4)])
        assert torch.equal(cov * 16, counts.to(torch.float64))  # k / 16 * 16 is exact in binary
        assert float(cov.sum() * 16) == float(mask.sum())
        quadrant = POSITIONS.index(position)
        rows, cols = (0, 1) if quadrant < 2 else (2, 3), (0, 1) if quadrant % 2 == 0 else (2, 3)
        inside = {4 * r + c for r in rows for c in cols}
        assert {int(p) for p in torch.nonzero(cov > 0)} == inside


# --------------------------------------------------------------------------------------------------------------
# the provider on the shipped network
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def evidence():
    ev = Evidence(RunConfig(quick=True, show_progress=False))
    ev.get("image_attention")
    return ev


@needs_network
def test_token_maps_are_probabilities(evidence):
    result = evidence.get("image_attention")
    for t, by_c in result.maps.items():
        for key, maps in by_c.items():
            m = torch.tensor(maps, dtype=torch.float64)  # [depth, kinds, P]
            assert (m >= 0).all(), (t, key)
            # each map is a float64 division by its own sum over 16 entries: sums to 1 within 16 roundings
            assert torch.allclose(m.sum(-1), torch.ones(m.shape[:2], dtype=torch.float64), rtol=0,
                                  atol=16 * EPS), (t, key)
            share = torch.tensor(result.shares[t][key])
            # the three tokens' shares are averages of softmax rows (float32, eps 1.2e-7): they sum to 1 within a
            # few float32 ulps, far below 1e-5
            assert torch.allclose(share.sum(-1), torch.ones(share.shape[0], dtype=share.dtype), atol=1e-5)


@needs_network
def test_one_cell_is_what_cross_attention_gives(evidence):
    """The maps of the second condition at the second t, recomputed from ``cross_attention`` on the same draws."""
    from toy_models import get_world

    result = evidence.get("image_attention")
    den = evidence.get("network_models").get("shapes16")
    i_t, i_c = 1, 1
    t, c = TIMES[i_t], conditions()[i_c]
    a, s = (float(v) for v in den.schedule.alpha_sigma(t))
    x = get_world("shapes16").law(c).noised(a, s).sample(result.n, torch.Generator().manual_seed(cell_seed(0, i_t,
                                                                                                          i_c)))
    probs, tokens = den.cross_attention(x, t, c)  # [depth, N, heads, P, L]
    mean = probs.mean(dim=(1, 2))  # [depth, P, L]
    for i_kind, kind in enumerate(KINDS):
        j = [token_kind(tok) for tok in tokens].index(kind)
        expected = mean[:, :, j] / mean[:, :, j].sum(-1, keepdim=True)
        got = torch.tensor(result.maps[f"{t:g}"][" ".join(c)], dtype=torch.float64)[:, i_kind]
        # the same float64 numbers averaged in another order: ~N heads P ulps of values <= 1, far below 1e-12
        assert torch.allclose(got, expected, rtol=0, atol=1e-12), kind


@needs_network
def test_scores_follow_from_the_maps(evidence):
    """Mass in the object's patches, area fraction, argmax rate and the permutation p-values recomputed from the
    recorded maps and coverage; Holm's flags from the recorded p-values."""
    result = evidence.get("image_attention")
    pvalues, flags = [], []
    for t in result.times:
        for i_kind, kind in enumerate(KINDS):
            for layer, score in enumerate(result.scores[t][kind]):
                maps = {k: np.asarray(v)[layer, i_kind] for k, v in result.maps[t].items()}
                regions = {k: np.asarray(v) > 0 for k, v in result.coverage.items()}
                mass = np.mean([maps[k][regions[k]].sum() for k in maps])
                area = np.mean([regions[k].mean() for k in maps])
                hit = np.mean([regions[k][maps[k].argmax()] for k in maps])
                # 16 means of sums of at most 16 float64 numbers in [0, 1]: a few hundred ulps at most
                assert score.mass_in_object == pytest.approx(mass, abs=1e-13), (t, kind, layer)
                assert score.area_fraction == pytest.approx(area, abs=1e-13)
                assert score.argmax_in_object_rate == pytest.approx(hit, abs=1e-13)
                m = np.array([[[maps[" ".join((col, shp, pi))][regions[" ".join((col, shp, pj))]].sum()
                                for pj in POSITIONS] for pi in POSITIONS] for col, shp in GROUPS])
                assert score.p_value == permutation_pvalue(m)
                assert score.p_value_avoids == permutation_pvalue(-m)
                pvalues += [score.p_value, score.p_value_avoids]
                flags += [score.follows, score.avoids]
    assert len(pvalues) == result.hypotheses
    assert holm_reject(pvalues, result.alpha).tolist() == flags


@needs_network
def test_the_record_carries_the_images_block(evidence):
    from verify.claims import build_record, get_claim

    record = build_record(get_claim("S0-XATTN"), evidence)
    block = record.evidence["images"]
    assert block["hypotheses"] == 2 * len(KINDS) * len(TIMES) * evidence.get("image_attention").depth
    assert "shapes16 network" in record.headline
    # the verdict is still the tokens16d argmax rule's (tests/test_network_claims_declared.py checks it)
    assert record.verdict in ("holds", "conditional", "fails")


def test_skip_path():
    """Without checkpoints/shapes16 the provider measures nothing and says why; the claim's images block carries
    only that reason, its verdict untouched."""
    empty = NetworkModels("nowhere", {w: None for w in MAIN}, {p: None for p in P_UNCOND}, None)
    result = image_attention(RunConfig(quick=True, show_progress=False), empty)
    assert "shapes16" in result.skipped and "nowhere" in result.skipped
    assert result.block().evidence == {"skipped": result.skipped}
    assert result.block().headline == ""
    from verify.evidence.network import AttentionMass

    decision = cross_attention(AttentionMass({}, 0, 0, None, "no tokens16d"), result)
    assert decision.verdict == "pending"
    assert decision.evidence["images"] == {"skipped": result.skipped}
