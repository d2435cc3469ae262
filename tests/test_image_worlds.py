"""The image worlds shapes16 / shapes32: exact against the dense law, tokens, the data range, masks."""

from __future__ import annotations

import pytest
import torch
from test_field_mixture import agreement_bounds

from toy_models import get_world
from toy_models.image_worlds import (
    BACKGROUND,
    COLOUR_VALUES,
    COLOURS,
    POSITIONS,
    SHAPES,
    TEXTURE_STD,
    component_attributes,
    component_index,
    coverage,
    object_mask,
    shapes,
    texture_spectrum,
)

F64 = torch.float64


@pytest.fixture(scope="module")
def shapes16():
    return get_world("shapes16").unconditional


def test_shapes16_agrees_with_its_dense_law(shapes16) -> None:
    """The acceptance check: all 48 components, d = 768, noised to t with alpha = 0.8, sigma = 0.6, at draws of the
    noised law and at points spread 2x about them, within the derived bounds of tests/test_field_mixture.py
    (the field's, the dense mixture's, the law mismatch of the rounded DCT). About 10 s, one thread."""
    field = shapes16.noised(0.8, 0.6)
    x = field.sample(6, torch.Generator().manual_seed(0))
    x = torch.cat([x, 2.0 * x])
    lp_bound, s_bound, dense = agreement_bounds(field, x)
    assert bool(((field.log_prob(x) - dense.log_prob(x)).abs() <= lp_bound).all())
    assert bool((torch.linalg.vector_norm(field.score(x) - dense.score(x), dim=-1) <= s_bound).all())
    wrong = type(field)(field.weights, field.mean_images * (1 + 1e-7), field.spectra, labels=field.labels)
    assert bool(((wrong.log_prob(x) - dense.log_prob(x)).abs() > lp_bound).any())  # the check has power


def test_tokens_select_the_named_components(shapes16) -> None:
    assert len(shapes16.classes) == 48 and shapes16.tokens == [*COLOURS, *SHAPES, *POSITIONS]
    one = shapes16.given(("red", "ring", "top-left"))
    k = component_index("red", "ring", "top-left")
    assert one.n_components == 1 and one.labels.tolist() == [k] and torch.equal(one.means[0], shapes16.means[k])
    for k in range(48):
        attrs = component_attributes(k)
        assert {name: shapes16.attributes[name][k] for name in attrs} == attrs
        assert component_index(**attrs) == k
    red = shapes16.given("red")
    assert red.n_components == 16 and set(red.attributes["colour"]) == {"red"}
    assert shapes16.given(("blue", "bottom-right")).n_components == 4
    with pytest.raises(ValueError, match="^condition: unknown token 'purple'"):
        shapes16.given("purple")
    with pytest.raises(ValueError, match="^index"):
        component_attributes(48)
    with pytest.raises(ValueError, match="^shape"):
        component_index("red", "star", "top-left")


@pytest.mark.parametrize("size", [16, 32])
def test_means_masks_and_colours(size: int) -> None:
    """Means in [-1, 1]; the object's pixels (mask) carry its colour, the far background the background level, both
    exactly (coverage 1 and 0 blend exactly); the mask is the coverage > 1/2 region, non-empty and inside its
    quadrant."""
    gm = shapes(size).unconditional
    means = gm.mean_images
    assert float(means.abs().max()) <= 1.0
    for k in (0, 5, 22, 47):
        attrs = component_attributes(k)
        cov = coverage(size, attrs["shape"], attrs["position"])
        mask = object_mask(size, attrs["shape"], attrs["position"])
        assert torch.equal(mask, cov > 0.5) and bool(mask.any())
        half = size // 2
        rows = slice(0, half) if attrs["position"].startswith("top") else slice(half, size)
        cols = slice(0, half) if attrs["position"].endswith("left") else slice(half, size)
        assert int(mask[rows, cols].sum()) == int(mask.sum())
        for ch, value in enumerate(COLOUR_VALUES[attrs["colour"]]):
            assert bool((means[k, ch][cov == 1] == value).all()) and bool((cov == 1).any())
            assert bool((means[k, ch][cov == 0] == BACKGROUND).all())


@pytest.mark.parametrize("size", [16, 32])
def test_samples_stay_in_range(size: int) -> None:
    """The fraction of pixels of p(x) samples outside [-1, 1]: each pixel's margin is at least 0.4 = 3.6 stds (the
    largest pixel std is below 0.111), so the expected fraction is below 2 x 1.6e-4; we require < 1e-3 on 1000
    samples (d = 3 size^2 pixels each; measured about 1e-6). The texture averages TEXTURE_STD^2 per pixel."""
    gm = shapes(size).unconditional
    x = gm.sample(1000, torch.Generator().manual_seed(1))
    assert float((x.abs() > 1).double().mean()) < 1e-3
    nu = texture_spectrum(size)
    assert abs(float(nu.mean()) - TEXTURE_STD**2) <= 1e-15
    within = gm.marginal_variance() - (gm.means - gm.mean()).pow(2).mean(0)  # law of total variance, the texture
    assert float(within.sqrt().max()) < 0.111


def test_shapes64_and_refusals() -> None:
    world = shapes(64)
    assert world.dim == 3 * 64 * 64 and world.name == "shapes64"
    x = world.unconditional.sample(2, torch.Generator().manual_seed(2))
    assert world.unconditional.score(x).shape == (2, world.dim)
    for bad in (10, 4, 16.0):
        with pytest.raises(ValueError, match="^size"):
            shapes(bad)
    with pytest.raises(ValueError, match="^position"):
        object_mask(16, "disc", "middle")
