"""Named worlds and the World wrapper: the documented structure, and validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toy_models import WORLDS, World, get_world

DOCUMENTED = {"gauss1d": (1, 1), "bimodal1d": (1, 2), "ring2d": (2, 8), "attributes2d": (2, 4),
              "tokens16d": (16, 16), "highdim": (64, 10), "shapes16": (768, 48), "shapes32": (3072, 48)}


@pytest.mark.parametrize("name", sorted(WORLDS))
def test_documented_dimension_and_classes(name):
    world = get_world(name)
    dim, n_classes = DOCUMENTED[name]
    assert world.dim == dim and len(world.class_conditions()) == n_classes and world.name == name
    assert world.description
    for cond in world.class_conditions():
        assert world.law(cond).dim == dim


def test_gauss1d_is_two_gaussians():
    w = get_world("gauss1d")
    assert not w.is_joint
    assert w.law(None).means.tolist() == [[0.0]] and w.law(None).covariances.tolist() == [[[1.0]]]
    assert w.law(1).means.tolist() == [[1.0]] and w.law(1).covariances.tolist() == [[[0.5]]]
    with pytest.raises(ValueError, match="condition"):
        w.law(0)


def test_tokens16d_blocks_follow_tokens():
    gm = get_world("tokens16d").unconditional
    for k in range(gm.n_components):
        label = int(gm.labels[k])
        for j in range(4):
            token = gm.attributes[f"block{j}"][k]
            block = gm.means[k, 4 * j:4 * j + 4]
            negative = bool(label >> j & 1)
            assert token == f"b{j}{'-' if negative else '+'}"
            assert bool((block < 0).all()) == negative and bool((block != 0).all())
    partial = get_world("tokens16d").law(("b1-",))
    assert partial.n_components == 8 and bool((partial.means[:, 4:8] < 0).all())


def test_attributes2d_layout():
    w = get_world("attributes2d")
    assert w.unconditional.tokens == ["red", "blue", "dog", "cat"]
    assert w.law(("blue", "cat")).means.tolist() == [[2.0, -2.0]]


def test_highdim_is_deterministic_and_well_conditioned():
    a, b = get_world("highdim").unconditional, get_world("highdim").unconditional
    assert torch.equal(a.means, b.means) and torch.equal(a.covariances, b.covariances)
    eig = torch.linalg.eigvalsh(a.covariances)
    assert float(eig.min()) >= 0.2 - 1e-12 and float(eig.max()) < 2.0  # documented: [0.2, about 1.4]


def test_world_validation_and_dtype():
    gm = get_world("bimodal1d").unconditional
    with pytest.raises(ValueError, match="conditionals.*null"):
        World("w", gm, conditionals={None: gm})
    with pytest.raises(ValueError, match="conditionals.*d = 2"):
        World("w", gm, conditionals={1: get_world("ring2d").unconditional})
    with pytest.raises(ValueError, match="name"):
        get_world("nope")
    w32 = get_world("gauss1d").to(torch.float32)
    assert w32.law(1).dtype == torch.float32 and w32.law(None).dtype == torch.float32


def test_ring2d_covariances_are_radial_tangential():
    gm = get_world("ring2d").unconditional
    for k in range(8):
        mean = gm.means[k].numpy()
        radial = mean / np.linalg.norm(mean)
        cov = gm.covariances[k].numpy()
        assert abs(radial @ cov @ radial - 0.04) < 1e-15 * 8  # a few roundings of a 2x2 rotation
