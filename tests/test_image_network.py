"""The patch network for image worlds (toy_models.neural.network with ``image_shape``): shapes, patchify, the null
token, the padding mask, attention rows, the map from patches to pixels, training on an image world, checkpoints,
and that the coordinate network and its shipped checkpoints are unchanged.

Network-level tests run a seeded image network on random image-shaped tensors; world-level tests use ``shapes16``
with the ``image-small`` preset on one CPU thread.
"""

from __future__ import annotations

import json
import math
import pathlib

import pytest
import torch

from toy_models import get_world
from toy_models.neural import (
    NULL_TOKEN_ID,
    PRESETS,
    CrossAttentionEpsNet,
    NetworkConfig,
    TrainConfig,
    config_from_preset,
    load_checkpoint,
    save_checkpoint,
    train,
)
from toy_models.neural.network import attention_to_pixels, patchify, unpatchify
from verify.tolerances import unit_roundoff

F32 = torch.float32
U32 = unit_roundoff(F32)  # 2^-24
CHECKPOINTS = pathlib.Path(__file__).resolve().parent.parent / "checkpoints"
# The same float32 network on the same inputs where only the key length (padding) or the batch's row count differs:
# each difference is one rounding of a dot product, carried to the output with gain O(1) per block (depth 2 here),
# so outputs differ by O(10) ulps of their scale. 64 ulps leaves a margin, while a padding token that leaks through
# the mask moves the output by O(0.1) (checked below: far above this tolerance).
BATCHING_ULPS = 64

pytestmark = pytest.mark.usefixtures("one_thread")


def image_config(shape=(3, 16, 16), patch=4, **overrides) -> NetworkConfig:
    c, h, w = shape
    settings = {"dim": c * h * w, "vocab_size": 7, "max_tokens": 3, "width": 32, "depth": 2, "heads": 4,
                "image_shape": shape, "patch": patch, **overrides}
    return NetworkConfig(**settings)


def network(config: NetworkConfig, seed: int = 0) -> CrossAttentionEpsNet:
    torch.manual_seed(seed)
    net = CrossAttentionEpsNet(config).eval()
    with torch.no_grad():  # a non-trivial null token and outputs: the default init leaves biases small but not zero
        net.tokens.weight.mul_(3.0)
    return net


def inputs(config: NetworkConfig, n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, config.dim, generator=gen), torch.linspace(-6.0, 6.0, n)


def ids_mask(rows: list[list[int]], length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    length = length or max(len(r) for r in rows)
    ids = torch.full((len(rows), length), NULL_TOKEN_ID, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), True
    return ids, mask


# --- geometry ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("shape", "patch", "grid"), [((3, 16, 16), 4, (4, 4)), ((3, 32, 32), 4, (8, 8)),
                                                      ((1, 8, 12), 2, (4, 6)), ((2, 4, 4), 1, (4, 4))])
def test_shapes_and_attention_grid(shape, patch, grid):
    config = image_config(shape, patch, depth=1)
    net = network(config)
    x, log_snr = inputs(config, 5)
    ids, mask = ids_mask([[1, 2], [3], [NULL_TOKEN_ID], [4, 5, 6], [2]])
    keep: list[torch.Tensor] = []
    out = net(x, log_snr, ids, mask, keep=keep)
    assert config.attention_grid == grid and config.positions == grid[0] * grid[1]
    assert out.shape == (5, config.dim) and bool(torch.isfinite(out).all())
    assert [k.shape for k in keep] == [(5, 4, config.positions, 3)]
    assert net.position.shape == (config.positions, 32)
    assert net.readout.out_features == shape[0] * patch * patch


def test_patchify_round_trip_and_layout():
    shape, p = (3, 8, 12), 4
    c, h, w = shape
    x = torch.randn(6, c * h * w, generator=torch.Generator().manual_seed(0))
    patches = patchify(x, shape, p)
    assert patches.shape == (6, (h // p) * (w // p), c * p * p)
    assert torch.equal(unpatchify(patches, shape, p), x)  # a permutation: exact
    # where pixel (channel, row, column) goes: patch (row // p, column // p) in row-major order, entry
    # channel-major then row-major within the patch
    image = x.reshape(6, c, h, w)
    for ch, row, col in [(0, 0, 0), (2, 7, 11), (1, 5, 2), (0, 3, 9)]:
        q = (row // p) * (w // p) + col // p
        j = ch * p * p + (row % p) * p + col % p
        assert torch.equal(patches[:, q, j], image[:, ch, row, col])


def test_network_output_is_local_to_patches_through_the_readout():
    """The read-out puts each patch's values back at its pixels: a change of the read-out's row for one value moves
    exactly the pixels of that value in every patch."""
    config = image_config((3, 8, 8), 4, depth=1)
    net = network(config)
    x, log_snr = inputs(config, 4)
    ids, mask = ids_mask([[1]] * 4)
    before = net(x, log_snr, ids, mask)
    with torch.no_grad():
        net.readout.bias[5] += 1.0  # value 5 of each patch: channel 0, row 1, column 1 within the patch
    moved = (net(x, log_snr, ids, mask) - before).reshape(4, 3, 8, 8)
    expected = torch.zeros(3, 8, 8)
    expected[0, 1::4, 1::4] = 1.0
    torch.testing.assert_close(moved, expected.expand(4, 3, 8, 8), rtol=0, atol=8 * U32)  # one add, one rounding


@pytest.mark.parametrize(("overrides", "field"), [
    ({"image_shape": (3, 16, 16), "patch": 3}, "patch"),
    ({"image_shape": (3, 16, 8), "patch": 4}, "image_shape"),  # C H W != dim
    ({"image_shape": (3, 16), "patch": 4}, "image_shape"),
    ({"image_shape": None, "patch": 4}, "patch"),
    ({"patch": 0}, "patch"),
])
def test_network_config_refusals_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"^{field}: "):
        image_config(**overrides)


def test_coordinate_config_card_is_unchanged():
    """A coordinate network's card entry has exactly the fields it had before the image variant."""
    config = NetworkConfig(dim=2, vocab_size=9, max_tokens=1)
    assert set(config.to_dict()) == {"dim", "vocab_size", "max_tokens", "width", "depth", "heads", "mlp_ratio",
                                     "fourier_features", "data_std"}
    assert config.positions == 2 and config.attention_grid == (2,)
    image = image_config()
    assert NetworkConfig(**json.loads(json.dumps(image.to_dict()))) == image  # through a card's JSON


# --- conditioning ----------------------------------------------------------------------------------------------
def test_null_token_is_a_learned_embedding_used_for_the_null_condition():
    config = image_config()
    net = network(config)
    x, log_snr = inputs(config, 6)
    null_ids, null_mask = ids_mask([[NULL_TOKEN_ID]] * 6)
    cond_ids, cond_mask = ids_mask([[1, 2]] * 6)
    null_out, cond_out = net(x, log_snr, null_ids, null_mask), net(x, log_snr, cond_ids, cond_mask)
    assert net.tokens.weight.requires_grad
    net.zero_grad()
    null_out.pow(2).sum().backward()
    assert float(net.tokens.weight.grad[NULL_TOKEN_ID].abs().sum()) > 0  # trained by the null condition
    assert float(net.tokens.weight.grad[1:].abs().sum()) == 0.0  # and only the null row is
    with torch.no_grad():
        net.tokens.weight[NULL_TOKEN_ID].add_(torch.randn(config.width, generator=torch.Generator().manual_seed(3)))
        moved_null = net(x, log_snr, null_ids, null_mask)
        moved_cond = net(x, log_snr, cond_ids, cond_mask)
    null_out, cond_out = null_out.detach(), cond_out.detach()
    assert float((moved_null - null_out).abs().max()) > 1e3 * BATCHING_ULPS * U32 * float(null_out.abs().max())
    assert torch.equal(moved_cond, cond_out)  # a condition without the null token never reads its row


def test_padding_mask_partial_condition_equals_it_unpadded():
    config = image_config()
    net = network(config)
    x, log_snr = inputs(config, 6)
    with torch.no_grad():
        short = net(x, log_snr, *ids_mask([[3]] * 6))  # L = 1
        padded = net(x, log_snr, *ids_mask([[3]] * 6, length=3))  # L = 3, two padding slots masked
        ids, _ = ids_mask([[3]] * 6, length=3)
        leaking = net(x, log_snr, ids, torch.ones_like(ids, dtype=torch.bool))  # the same ids, padding unmasked
    scale = float(short.abs().max())
    assert float((padded - short).abs().max()) <= BATCHING_ULPS * U32 * scale
    assert float((leaking - short).abs().max()) > 1e3 * BATCHING_ULPS * U32 * scale  # the mask has power


def test_attention_rows_sum_to_one_over_tokens():
    config = image_config()
    net = network(config)
    x, log_snr = inputs(config, 5)
    ids, mask = ids_mask([[1, 2, 3], [4], [NULL_TOKEN_ID], [5, 6], [2, 1]])
    keep: list[torch.Tensor] = []
    with torch.no_grad():
        net(x, log_snr, ids, mask, keep=keep)
    probs = torch.stack(keep).double()  # [depth, N, heads, P, L]
    # softmax in float32 over L <= 3 entries: each probability is exp(l_i - m) / s with s a sum of L roundings;
    # the row sum is 1 within about (L + 2) u (the division, the sum, the exponentials); 4 (L + 2) u bounds it
    assert float((probs.sum(-1) - 1).abs().max()) <= 4 * (3 + 2) * U32
    padding = (~mask)[None, :, None, None, :].expand_as(probs)
    assert bool(padding.any()) and bool((probs[padding] == 0).all())  # masked tokens get no attention at all


def test_attention_to_pixels_spreads_each_patch_over_its_pixels():
    config = image_config((3, 16, 16), 4)
    maps = torch.arange(2 * 16, dtype=torch.float64).reshape(2, 16)
    pixels = attention_to_pixels(maps, config)
    assert pixels.shape == (2, 16, 16)
    for q in range(16):
        r, c = divmod(q, 4)
        assert bool((pixels[:, 4 * r: 4 * r + 4, 4 * c: 4 * c + 4] == maps[:, q, None, None]).all())
    torch.testing.assert_close(pixels.sum((-1, -2)), 16 * maps.sum(-1), rtol=0, atol=0)  # exact: integers
    with pytest.raises(ValueError, match="^maps: "):
        attention_to_pixels(maps[:, :15], config)
    with pytest.raises(ValueError, match="^config: "):
        attention_to_pixels(maps, NetworkConfig(dim=16, vocab_size=3, max_tokens=1))


def test_coordinate_network_is_unchanged_by_the_image_variant():
    """Same tensors, same initialisation draw order, same forward as the coordinate network always had: its
    tensor names and shapes, and that the position term is per coordinate."""
    config = NetworkConfig(dim=3, vocab_size=4, max_tokens=2, width=16, depth=1, heads=2)
    net = network(config)
    names = list(net.state_dict())
    assert names[:3] == ["coordinate", "position", "frequencies"] and "patch_embedding.weight" not in names
    assert net.readout.out_features == 1 and net.position.shape == (3, 16)


def test_presets_and_cli_choices_agree():
    from verify.cli import _parser

    train_parser = next(a for a in _parser()._subparsers._group_actions[0].choices.items() if a[0] == "train")[1]
    preset = next(a for a in train_parser._actions if a.dest == "preset")
    assert sorted(preset.choices) == sorted(PRESETS)
    assert all(PRESETS[name].get("patch") for name in PRESETS if name.startswith("image"))


# --- on the image world ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_shapes():
    """The ``image-small`` preset on shapes16 (60 steps of 64 images, width 32; about a second on one thread)."""
    return train(config_from_preset("shapes16", "image-small"), show_progress=False)


def test_image_world_network_is_a_patch_network_and_a_denoiser(trained_shapes):
    den = trained_shapes.denoiser
    config = den.network.config
    assert config.image_shape == (3, 16, 16) and config.patch == 4 and den.attention_grid == (4, 4)
    x = get_world("shapes16").unconditional.sample(5, torch.Generator().manual_seed(0))
    out = den.eps(x, 0.5, ("red", "ring", "top-left"))
    assert out.shape == (5, 768) and out.dtype == x.dtype and bool(torch.isfinite(out).all())
    probs, tokens = den.cross_attention(x, 0.5, ("red", "ring"))
    assert probs.shape == (config.depth, 5, config.heads, 16, 2) and set(tokens) == {"red", "ring"}
    pixels = den.attention_to_pixels(probs[..., tokens.index("ring")])
    assert pixels.shape == (config.depth, 5, config.heads, 16, 16)


def test_training_on_the_image_world_decreases_the_loss(trained_shapes):
    """First 15 steps' mean loss against the last 15's: each window's mean has the standard error std / sqrt(15)
    (fresh batches: the losses of a window are independent draws given the weights, and the weights move little
    within 15 steps); the decrease must exceed 4 standard errors of the difference."""
    losses = torch.tensor(trained_shapes.losses, dtype=torch.float64)
    first, last = losses[:15], losses[-15:]
    se = math.sqrt(first.var() / 15 + last.var() / 15)
    assert float(first.mean() - last.mean()) > 4 * se


def test_partial_condition_through_padding_equals_it_alone(trained_shapes):
    den = trained_shapes.denoiser
    x = get_world("shapes16").unconditional.sample(6, torch.Generator().manual_seed(1))
    together = den.eps_multi(x, 0.3, [("red",), ("blue", "disc", "top-right"), None])  # "red", null padded to 3
    alone = [den.eps(x, 0.3, c) for c in [("red",), ("blue", "disc", "top-right"), None]]
    for a, b in zip(together, alone, strict=True):
        assert float((a - b).abs().max()) <= BATCHING_ULPS * U32 * float(b.abs().max())
    assert float((together[0] - together[2]).abs().max()) > 1e3 * BATCHING_ULPS * U32  # conditions differ


def test_image_checkpoint_round_trip(trained_shapes, tmp_path):
    den = trained_shapes.denoiser
    weights, card_path = save_checkpoint(tmp_path / "shapes16", den, {"note": "test"})
    card = json.loads(card_path.read_text())
    assert card["network"]["image_shape"] == [3, 16, 16] and card["network"]["patch"] == 4
    assert "patch_embedding.weight" in card["tensors"] and "coordinate" not in card["tensors"]
    loaded = load_checkpoint(tmp_path / "shapes16")
    assert loaded.network.config == den.network.config
    for name, tensor in den.network.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[name], tensor), name
    x = get_world("shapes16").unconditional.sample(4, torch.Generator().manual_seed(2))
    assert torch.equal(loaded.eps(x, 0.7, "green"), den.eps(x, 0.7, "green"))


def test_shipped_checkpoints_still_load_with_their_geometry():
    cards = sorted(CHECKPOINTS.rglob("*.json"))
    assert len(cards) >= 8
    for card in cards:
        den = load_checkpoint(card)
        world = get_world(den.world_name)
        is_image = getattr(world.unconditional, "shape", None) is not None
        assert (den.network.config.image_shape is not None) == is_image, card
        if not is_image:
            assert "image_shape" not in json.loads(card.read_text())["network"]  # cards written before images


@pytest.mark.parametrize(("world", "overrides", "field"), [
    ("shapes16", {"patch": None}, "patch"),
    ("shapes16", {"patch": 3}, "patch"),
    ("ring2d", {"patch": 4}, "patch"),
    ("ring2d", {"max_seconds": 0.0}, "max_seconds"),
])
def test_train_config_patch_and_time_cap_refusals(world, overrides, field):
    preset = "image-small" if world.startswith("shapes") else "small"
    with pytest.raises(ValueError, match=f"^{field}: "):
        TrainConfig(**{**config_from_preset(world, preset).to_dict(), **overrides})
