"""toy_models.neural: the network behind the Denoiser protocol, its vocabulary, the training batches, training,
reproducibility, checkpoints, the ``cfgtruth train`` command and the configuration's argument errors.

Everything trains the ``small`` preset (150 steps of 256 points, width 32, depth 1) on the CPU with fixed seeds; the
trained ring2d network is made once per module (:func:`trained`) and shared by the loss, score-error and checkpoint
tests.
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
import pickle
import re
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

import toy_models
from toy_models import get_schedule, get_world
from toy_models.neural import (
    NULL_TOKEN_ID,
    NeuralDenoiser,
    TrainConfig,
    Vocabulary,
    config_from_preset,
    load_checkpoint,
    save_checkpoint,
    score_error_table,
    train,
)
from toy_models.neural.checkpoint import CARD_FORMAT, card_signature, checkpoint_paths
from toy_models.neural.training import ConditionSampler, build_network, card_facts, heldout_loss
from verify.tolerances import unit_roundoff

F32, F64 = torch.float32, torch.float64
U32 = unit_roundoff(F32)  # 2^-24
# eps_multi against separate eps calls, and chunked against unchunked: the same float32 network on the same inputs,
# only the GEMM blocking differs with the batch's row count (and the key length with padding). Each such difference
# is one rounding of a dot product (<= a few ulps relative); LayerNorm, softmax and the residual adds carry it to the
# output with a gain of order 1 per block (depth 1 here), so the outputs differ by O(10) ulps of their scale.
# Measured: 0 to 3 ulps. 64 ulps keeps a margin of 20x, while a padding token that leaks through the mask moves the
# output by about 0.2 (checked below: 10^4 times the tolerance).
BATCHING_ULPS = 64
# score-error tables: the null condition and two classes at every EVAL_TIME (27 cells), common random numbers
EVAL = {"conditions": [None, 0, 4], "n": 256, "seed": 7}


# The tensors are tiny (256 x 2 x 32): intra-op threads only add synchronisation. On a 2-core machine at load
# average 5, one 150-step small-preset run took 58-95 s with 2 threads and 1-2 s with 1.
pytestmark = pytest.mark.usefixtures("one_thread")


def untrained(world_name: str, **overrides) -> NeuralDenoiser:
    """The small preset's network at its (seeded) initialisation, as a denoiser."""
    config = config_from_preset(world_name, "small", **overrides)
    world = get_world(world_name)
    vocabulary = Vocabulary.from_world(world)
    return NeuralDenoiser(build_network(config, world, vocabulary), vocabulary, config.schedule, world_name)


def points(n: int, dim: int, seed: int = 0, dtype: torch.dtype = F64) -> torch.Tensor:
    return 2.0 * torch.randn(n, dim, dtype=F64, generator=torch.Generator().manual_seed(seed)).to(dtype)


def max_abs(tensors) -> float:
    return max(float(t.abs().max()) for t in tensors)


@pytest.fixture(scope="module")
def trained():
    """``(TrainResult, untrained denoiser)`` of the small ring2d preset, seed 0."""
    config = config_from_preset("ring2d", "small")
    return train(config, show_progress=False), untrained("ring2d")


@pytest.fixture(scope="module")
def error_tables(trained):
    result, initial = trained
    world = get_world("ring2d")
    return score_error_table(result.denoiser, world, **EVAL), score_error_table(initial, world, **EVAL)


# --- the Denoiser protocol ----------------------------------------------------------------------------------
@pytest.mark.parametrize("world_name", ["ring2d", "attributes2d", "tokens16d"])
def test_network_is_a_denoiser_with_callers_dtype_and_shape(world_name):
    den = untrained(world_name)
    assert isinstance(den, toy_models.Denoiser)
    assert den.dim == get_world(world_name).dim and den.dtype == F32
    x32 = points(50, den.dim, dtype=F32)
    x64 = x32.to(F64)  # the same points, exactly
    copies = x32.clone(), x64.clone()
    out32, out64 = den.eps(x32, 0.4, 0), den.eps(x64, 0.4, 0)
    assert out32.shape == out64.shape == (50, den.dim)
    assert out32.dtype == F32 and out64.dtype == F64
    assert torch.equal(x32, copies[0]) and torch.equal(x64, copies[1])  # x untouched
    # the network computes in float32 from c_in x formed in float64: float32-representable points give one result
    assert torch.equal(out32.to(F64), out64)
    assert bool(torch.isfinite(out64).all())


def test_score_is_minus_eps_over_sigma():
    den = untrained("ring2d")
    x, t = points(40, 2), torch.linspace(0.05, 1.0, 40, dtype=F64)
    sigma = den.schedule.sigma(t)[:, None]
    torch.testing.assert_close(den.score(x, t, 3), -den.eps(x, t, 3) / sigma, rtol=4 * unit_roundoff(F64), atol=0)


@pytest.mark.parametrize(("world_name", "conditions"), [
    ("ring2d", [None, 2, 5]),
    ("attributes2d", [None, "red", ("dog", "red"), 3]),  # lengths 1, 1, 2, 2: null and "red" are padded
    ("tokens16d", [None, "b0+", ("b1-", "b3+"), 0]),  # lengths 1, 1, 2, 4
])
def test_eps_multi_equals_separate_calls(world_name, conditions):
    den = untrained(world_name)
    x = points(300, den.dim, seed=1)
    t = torch.linspace(0.01, 1.0, 300, dtype=F64)
    batched = den.eps_multi(x, t, conditions)
    separate = [den.eps(x, t, c) for c in conditions]
    tol = BATCHING_ULPS * U32 * max_abs(separate)
    for c, b, s in zip(conditions, batched, separate, strict=True):
        assert b.shape == s.shape == (300, den.dim)
        assert float((b - s).abs().max()) <= tol, c
    # results do not depend on the chunk size beyond float32 rounding either
    chunked = NeuralDenoiser(den.network, den.vocabulary, den.schedule, world_name, chunk=7)
    for b, c in zip(batched, chunked.eps_multi(x, t, conditions), strict=True):
        assert float((b - c).abs().max()) <= tol


def test_padding_mask_has_power():
    """The batching tolerance is meaningful: a padding token let through the mask moves the output far past it."""
    den = untrained("attributes2d")
    x = points(100, 2, seed=2)
    _, scaled, log_snr = den._inputs(x, 0.3)
    ids, mask = den.vocabulary.batch(["red", ("dog", "red")], repeats=100)  # "red" is padded to length 2
    assert not bool(mask[:100, 1].any()) and bool(mask[100:].all())
    args = scaled.repeat(2, 1).float(), log_snr.repeat(2).float(), ids
    with torch.no_grad():
        masked, leaked = den.network(*args, mask), den.network(*args, torch.ones_like(mask))
    tol = BATCHING_ULPS * U32 * float(masked.abs().max())
    assert float((masked - leaked)[:100].abs().max()) > 1e3 * tol
    torch.testing.assert_close(masked[:100].double(), den.eps(x, 0.3, "red"), rtol=0, atol=tol)


def test_cross_attention_probabilities():
    den = untrained("attributes2d")
    probs, tokens = den.cross_attention(points(20, 2), 0.5, ("dog", "red"))
    config = den.network.config
    assert tokens == ("dog", "red")
    assert probs.shape == (config.depth, 20, config.heads, 2, 2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1], dtype=F64), rtol=0, atol=8 * U32)
    null_probs, null_tokens = den.cross_attention(points(20, 2), 0.5, None)
    assert null_tokens == ("<null>",) and null_probs.shape[-1] == 1


def test_scalar_and_vector_times_agree():
    den = untrained("ring2d")
    x = points(64, 2, seed=3)
    for value in (0.02, 0.5, 1.0):
        scalar = den.eps(x, value, 1)
        assert torch.equal(scalar, den.eps(x, torch.full((64,), value, dtype=F64), 1))
        assert torch.equal(scalar, den.eps(x, torch.tensor(value), 1))


@pytest.mark.parametrize(("x", "t", "condition", "name"), [
    (torch.tensor([[0.0, float("nan")]] * 3, dtype=F64), 0.5, None, "x"),
    (torch.tensor([[0.0, float("inf")]] * 3, dtype=F64), 0.5, None, "x"),
    (torch.zeros(3, 3, dtype=F64), 0.5, None, "x"),  # ring2d has d = 2
    (torch.zeros(3, dtype=F64), 0.5, None, "x"),
    (torch.zeros(3, 2, dtype=F64), torch.full((4,), 0.5), None, "t"),
    (torch.zeros(3, 2, dtype=F64), float("nan"), None, "t"),
    (torch.zeros(3, 2, dtype=F64), 1.5, None, "t"),
    (torch.zeros(3, 2, dtype=F64), -0.1, None, "t"),
    (torch.zeros(3, 2, dtype=F64), 0.0, None, "t"),  # sigma_0 = 0: no noise to predict
    (torch.zeros(3, 2, dtype=F64), torch.tensor([0.5, 0.0, 0.5]), None, "t"),
    (torch.zeros(3, 2, dtype=F64), 0.5, 8, "condition"),  # ring2d's labels are 0..7
    (torch.zeros(3, 2, dtype=F64), 0.5, "class9", "condition"),
    (torch.zeros(3, 2, dtype=F64), 0.5, 1.5, "condition"),
])
def test_bad_input_names_the_argument(x, t, condition, name):
    den = untrained("ring2d")
    with pytest.raises(ValueError, match=rf"^{name}:"):
        den.eps(x, t, condition)


def test_unknown_token_names_the_condition():
    den = untrained("attributes2d")
    with pytest.raises(ValueError, match=r"^condition: unknown token\(s\) \['purple'\]"):
        den.eps(torch.zeros(2, 2), 0.5, ("purple", "dog"))
    with pytest.raises(ValueError, match=r"^condition:"):
        den.eps_multi(torch.zeros(2, 2), 0.5, [None, "purple"])


def test_empty_batch():
    assert untrained("ring2d").eps(torch.zeros(0, 2, dtype=F64), 0.5, None).shape == (0, 2)


def test_alpha_zero_end_gives_no_silent_nan():
    with pytest.raises(ValueError, match=r"^schedule: 'rectified-flow' has alpha\(1\) = 0"):
        config_from_preset("ring2d", "small", schedule="rectified-flow")
    base = untrained("ring2d")
    den = NeuralDenoiser(base.network, base.vocabulary, "rectified-flow", "ring2d")
    with pytest.raises(ValueError, match=r"^t: alpha_t = 0"):
        den.eps(torch.zeros(2, 2, dtype=F64), 1.0, None)
    assert bool(torch.isfinite(den.eps(torch.zeros(2, 2, dtype=F64), 0.9, None)).all())


# --- the vocabulary -------------------------------------------------------------------------------------------
def test_vocabulary_of_a_world_without_attributes():
    voc = Vocabulary.from_world(get_world("ring2d"))
    assert voc.tokens == tuple(f"class{k}" for k in range(8))
    assert dict(voc.label_tokens) == {k: (f"class{k}",) for k in range(8)}
    assert voc.size == 9 and voc.max_tokens == 1
    assert voc.encode(3) == [4] and voc.encode("class3") == [4]  # id i + 1 is tokens[i]
    assert voc.encode(None) == [NULL_TOKEN_ID] == [0]


def test_vocabulary_of_an_attribute_world():
    world = get_world("attributes2d")
    voc = Vocabulary.from_world(world)
    assert set(voc.tokens) == {"red", "blue", "dog", "cat"} and voc.size == 5 and voc.max_tokens == 2
    assert voc.condition_tokens(0) == ("dog", "red")
    for label, toks in voc.label_tokens:  # a label's tokens select exactly that label's components
        assert torch.equal(world.unconditional.matches(toks), world.unconditional.matches(label))
    red = voc.tokens.index("red") + 1
    assert voc.encode(("red",)) == voc.encode("red") == [red]
    assert sorted(voc.encode(0)) == sorted([red, voc.tokens.index("dog") + 1])
    assert voc.encode(None) == voc.encode(()) == [0]
    ids, mask = voc.batch([None, "red", 0], repeats=2)
    assert ids.shape == mask.shape == (6, 2)
    assert mask.sum(1).tolist() == [1, 1, 1, 1, 2, 2]
    assert bool((ids[~mask] == NULL_TOKEN_ID).all())
    tokens16d = Vocabulary.from_world(get_world("tokens16d"))
    assert tokens16d.max_tokens == 4 and tokens16d.size == 9


def test_vocabulary_refuses_a_world_that_is_not_joint():
    with pytest.raises(ValueError, match=r"^world: 'gauss1d'"):
        Vocabulary.from_world(get_world("gauss1d"))


# --- training batches -----------------------------------------------------------------------------------------
def drawn_conditions(world_name: str, n: int, seed: int = 11):
    config = config_from_preset(world_name, "small")
    world = get_world(world_name)
    sampler = ConditionSampler(world, Vocabulary.from_world(world), config.p_uncond, config.p_partial)
    generator = torch.Generator().manual_seed(seed)
    _, components = world.unconditional.sample_with_components(n, generator)
    ids, mask = sampler.conditions(components, generator)
    return config, world, sampler.vocabulary, components, ids, mask


def within_binomial(count: int, n: int, p: float) -> bool:
    """|count/n - p| within 4 binomial standard errors: two-sided alpha = 6.3e-5 per check. At n = 200000,
    p = 0.1 the standard error is 6.7e-4, so a rate off by 5 % relative (0.105) is caught with power 0.9997."""
    return abs(count / n - p) <= 4.0 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("world_name", ["ring2d", "attributes2d"])
def test_condition_dropout_rate(world_name):
    n = 200_000
    config, _, _, _, ids, mask = drawn_conditions(world_name, n)
    null = (ids[:, 0] == NULL_TOKEN_ID) & (mask.sum(1) == 1)
    assert within_binomial(int(null.sum()), n, config.p_uncond)
    assert bool((ids[~mask] == NULL_TOKEN_ID).all())  # padding is the null id, masked
    assert bool((mask[:, 0]).all()) and bool((mask[:, :-1] >= mask[:, 1:]).all())  # real tokens come first
    assert not bool((ids[~null][mask[~null]] == NULL_TOKEN_ID).any())  # the null token never joins other tokens


def test_partial_conditions_rate():
    """attributes2d, two attributes: with probability p_partial each attribute is kept with probability 1/2, and an
    empty draw keeps one of the two at random, so the kept set is {both}, {colour}, {shape} with probabilities
    1/4, 3/8, 3/8; dropout (p_uncond) is independent of it."""
    n = 200_000
    config, _, voc, _, ids, mask = drawn_conditions("attributes2d", n)
    p_u, p_p = config.p_uncond, config.p_partial
    colours = torch.tensor([voc.tokens.index(c) + 1 for c in ("red", "blue")])
    is_colour = torch.isin(ids, colours) & mask
    length = mask.sum(1)
    null = ids[:, 0] == NULL_TOKEN_ID
    one = (length == 1) & ~null
    counts = {"null": null, "full": length == 2, "colour only": one & is_colour.any(1),
              "shape only": one & ~is_colour.any(1)}
    expected = {"null": p_u, "full": (1 - p_u) * (1 - p_p + p_p / 4), "colour only": (1 - p_u) * p_p * 3 / 8,
                "shape only": (1 - p_u) * p_p * 3 / 8}
    assert math.isclose(sum(expected.values()), 1.0)
    for key, rows in counts.items():  # 4 checks: family-wise alpha <= 2.5e-4 (Bonferroni)
        assert within_binomial(int(rows.sum()), n, expected[key]), (key, float(rows.float().mean()), expected[key])


@pytest.mark.parametrize("world_name", ["ring2d", "attributes2d", "tokens16d"])
def test_conditions_match_the_drawn_component(world_name):
    _, world, voc, components, ids, mask = drawn_conditions(world_name, 50_000)
    gm = world.unconditional
    token_label = {toks: label for label, toks in voc.label_tokens}
    pairs = torch.unique(torch.cat([components[:, None], ids.masked_fill(~mask, -1)], dim=1), dim=0).tolist()
    assert len(pairs) > gm.n_components  # nulls and (for attribute worlds) partial sets were drawn too
    for component, *row in pairs:
        row = tuple(i for i in row if i != -1)
        if row == (NULL_TOKEN_ID,):
            continue
        tokens = tuple(voc.tokens[i - 1] for i in row)
        condition = tokens if gm.attributes else token_label[tokens]
        assert bool(gm.matches(condition)[component]), (component, tokens)


def test_training_batch_shapes_and_times():
    config = config_from_preset("attributes2d", "small", noise_levels="uniform-logsnr")
    world = get_world("attributes2d")
    sampler = ConditionSampler(world, Vocabulary.from_world(world), config.p_uncond, config.p_partial)
    x_t, t, eps, ids, mask = sampler.batch(1000, config, torch.Generator().manual_seed(0))
    assert x_t.shape == eps.shape == (1000, 2) and t.shape == (1000,) and ids.shape == mask.shape == (1000, 2)
    assert x_t.dtype == t.dtype == eps.dtype == F64
    assert bool((t >= config.t_min).all()) and bool((t <= 1.0).all())


# --- training -------------------------------------------------------------------------------------------------
def test_training_run_record(trained):
    result, _ = trained
    assert result.steps_done == 150 == len(result.losses)
    assert all(math.isfinite(v) for v in result.losses)
    assert result.world_size == 1 and result.device.startswith("cpu") and result.samples_per_s > 0
    assert result.denoiser.device.type == "cpu" and result.denoiser.dtype == F32
    assert result.time_to_target_s is None and result.evaluations == []


def exact_eps(gm, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """-sigma * grad log p_t(x | c) with a time per row, written out (no library code): per row, the mixture of the
    allowed components (``allowed`` ``[N, K]``) noised to N(a mu_k, a^2 S_k + s^2 I)."""
    eye = torch.eye(gm.dim, dtype=F64)
    a2, s2 = alpha[:, None, None, None] ** 2, sigma[:, None, None, None] ** 2
    cov = a2 * gm.covariances.to(F64) + s2 * eye  # [N, K, d, d]
    diff = x[:, None, :] - alpha[:, None, None] * gm.means.to(F64)  # [N, K, d]
    solved = torch.linalg.solve(cov, diff)  # [N, K, d]
    log_joint = gm.weights.to(F64).log() - 0.5 * (diff * solved).sum(-1) - 0.5 * torch.logdet(cov)  # [N, K]
    r = torch.softmax(log_joint.masked_fill(~allowed, -math.inf), dim=-1)
    return sigma[:, None] * (r[..., None] * solved).sum(1)  # -sigma * score, score = -sum_k r_k C_k^-1 (x - a mu_k)


def exact_heldout_loss(config: TrainConfig, n: int = 8192, seed: int = 2024) -> float:
    """The exact denoiser's DSM loss on the draws of :func:`heldout_loss` (same sampler, same seed) for a world
    whose conditions are one token (ring2d): the floor that no network beats in expectation."""
    world = get_world(config.world)
    gm = world.unconditional
    vocabulary = Vocabulary.from_world(world)
    sampler = ConditionSampler(world, vocabulary, config.p_uncond, config.p_partial)
    x_t, t, eps, ids, mask = sampler.batch(n, config, torch.Generator().manual_seed(seed))
    assert ids.shape[1] == 1
    token_label = {toks[0]: label for label, toks in vocabulary.label_tokens}
    labels = torch.tensor([-1] + [token_label[tok] for tok in vocabulary.tokens])[ids[:, 0]]  # -1: null
    allowed = (labels[:, None] == -1) | (labels[:, None] == gm.labels[None, :])  # [N, K]
    alpha, sigma = get_schedule(config.schedule).alpha_sigma(t)
    return float((exact_eps(gm, x_t, alpha, sigma, allowed) - eps).pow(2).mean())


def test_exact_eps_helper_agrees_with_the_library():
    """The floor's helper against AnalyticDenoiser: two float64 routes to the same closed form (a 2x2 solve per row
    here, quadratic features there); |eps| <= 5 on these points, so 1e-11 is some 10^4 ulps of room."""
    gm = get_world("ring2d").unconditional
    x, t = points(64, 2, seed=9), 0.3
    alpha, sigma = (v.expand(64) for v in get_schedule("vp-linear").alpha_sigma(torch.tensor(t, dtype=F64)))
    exact = toy_models.AnalyticDenoiser(get_world("ring2d"))
    for label in (None, 3):
        allowed = (gm.labels == label if label is not None else torch.ones(8, dtype=torch.bool)).expand(64, 8)
        torch.testing.assert_close(exact_eps(gm, x, alpha, sigma, allowed), exact.eps(x, t, label), rtol=0,
                                   atol=1e-11)


def test_training_reduces_heldout_loss(trained):
    """Held-out DSM loss on 8192 draws, seed 2024: exact denoiser 0.137 (the floor), untrained network 0.8-1.7 over
    seeds 0-3 (its output is unrelated to eps, whose squared norm per coordinate is 1), trained 0.26-0.29. The
    excess over the floor shrinks by a factor of 0.10-0.22 over those seeds; all three are evaluated on the same
    draws (paired), so requiring a factor of 0.5 is a margin for other torch versions' rounding of the training
    trajectory, not for Monte Carlo noise."""
    result, initial = trained
    before, after = heldout_loss(initial, result.config), heldout_loss(result.denoiser, result.config)
    floor = exact_heldout_loss(result.config)
    assert floor < after < before, (floor, after, before)
    assert after - floor <= 0.5 * (before - floor), (floor, after, before)


def test_training_reduces_score_error(trained, error_tables):
    """Pooled relative score error (27 cells x 256 points, common random numbers): untrained 0.92-1.41, trained
    0.49-0.52 over seeds 0-3 (ratio 0.36-0.55). The Monte Carlo spread of either number is about 1 % (sqrt(2 / (n d))
    per cell, pooled over 27 cells), so the 0.7 bound is a margin for the training trajectory, not for noise."""
    after, before = error_tables
    assert after["pooled_relative_error"] <= 0.7 * before["pooled_relative_error"], (before, after)
    assert after["rms_relative_error"] < before["rms_relative_error"]
    assert set(after["by_condition"]) == {"null", "0", "4"} and after["n"] == 256


def test_same_seed_same_weights_different_seed_different_weights():
    config = config_from_preset("attributes2d", "small", steps=20)
    first, again = train(config, show_progress=False), train(config, show_progress=False)
    other = train(config_from_preset("attributes2d", "small", steps=20, seed=1), show_progress=False)
    a, b, c = (r.denoiser.network.state_dict() for r in (first, again, other))
    assert first.losses == again.losses
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first.losses != other.losses
    assert not torch.equal(a["readout.weight"], c["readout.weight"])
    assert sum(not torch.equal(a[k], c[k]) for k in a) >= len(a) - 1  # everything but (at most) one buffer


@pytest.mark.parametrize("p_uncond", [0.0, 0.3, 1.0])
def test_training_drops_the_condition_at_rate_p_uncond(monkeypatch, p_uncond):
    """The batches the training loss sees carry the null condition at rate ``p_uncond``: a forward pre-hook on the
    trained network records the token ids of every training forward pass (8 steps x 256 rows = 2048 rows).

    A loop that ignored ``config.p_uncond`` (the sampler built with the default 0.1, say) gives 0.1 at every rate: at
    p = 0 and p = 1 the count must be exactly 0 and 2048 (no randomness), and at p = 0.3 within 4 binomial standard
    errors (sd sqrt(0.3 * 0.7 / 2048) = 0.010, so 0.1 is 20 sd away)."""
    import toy_models.neural.training as training

    seen: list[torch.Tensor] = []
    original = training.build_network

    def instrumented(config, world, vocabulary):
        net = original(config, world, vocabulary)

        def record(module, args):
            if module.training:  # the EMA copy (deep-copied with this hook) runs in eval mode, if at all
                ids, mask = args[2], args[3]
                seen.append((ids[:, 0] == NULL_TOKEN_ID) & (mask.sum(1) == 1))

        net.register_forward_pre_hook(record)
        return net

    monkeypatch.setattr(training, "build_network", instrumented)
    train(config_from_preset("ring2d", "small", steps=8, p_uncond=p_uncond), show_progress=False)
    null = torch.cat(seen)
    assert len(seen) == 8 and null.numel() == 8 * 256
    assert within_binomial(int(null.sum()), null.numel(), p_uncond), (int(null.sum()), p_uncond)


@pytest.mark.parametrize(("overrides", "field"), [
    ({"p_uncond": 1.5}, "p_uncond"),
    ({"p_uncond": -0.1}, "p_uncond"),
    ({"p_partial": 2.0}, "p_partial"),
    ({"noise_levels": "uniform-sigma"}, "noise_levels"),
    ({"steps": 0}, "steps"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"ema_decay": 1.0}, "ema_decay"),
    ({"t_min": 0.0}, "t_min"),
    ({"target_error": 0.0}, "target_error"),
])
def test_train_config_validation_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        TrainConfig(world="ring2d", **overrides)
    with pytest.raises(ValueError, match=rf"^{field}:"):
        config_from_preset("ring2d", "small", **overrides)


def test_train_config_unknown_world_and_preset():
    with pytest.raises(ValueError, match=r"^world: unknown world 'nowhere'; choose one of"):
        TrainConfig(world="nowhere")
    with pytest.raises(ValueError, match=r"^preset: unknown preset 'huge'"):
        config_from_preset("ring2d", "huge")


@pytest.mark.parametrize("flag", [True, False])
def test_tf32_flags_restored(flag):
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    during = []
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = flag
        train(config_from_preset("ring2d", "small", steps=2), show_progress=False,
              callback=lambda step, loss: during.append(torch.backends.cuda.matmul.allow_tf32))
        assert during == [flag, flag]  # on the CPU training leaves the process's TF32 setting alone
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (flag, flag)

        def fail(step, loss):
            raise RuntimeError("stop")

        with pytest.raises(RuntimeError, match="stop"):
            train(config_from_preset("ring2d", "small", steps=2), show_progress=False, callback=fail)
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (flag, flag)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# --- checkpoints ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(trained, error_tables, tmp_path_factory):
    result, _ = trained
    path = tmp_path_factory.mktemp("checkpoint") / "ring2d"
    weights, card = save_checkpoint(path, result.denoiser, card_facts(result, error_tables[0]))
    return result, weights, card


def test_checkpoint_round_trip(checkpoint):
    result, weights, card_path = checkpoint
    assert (weights.name, card_path.name) == ("ring2d.safetensors", "ring2d.json")
    assert checkpoint_paths(weights) == checkpoint_paths(card_path) == (weights, card_path)
    loaded = load_checkpoint(weights.with_suffix(""))
    x, t = points(200, 2, seed=5), torch.linspace(0.01, 1.0, 200, dtype=F64)
    for c in (None, 0, 6):
        assert torch.equal(loaded.eps(x, t, c), result.denoiser.eps(x, t, c))
    card = loaded.card
    for key in ("world", "config", "seed", "steps", "device", "wall_time_s", "final_losses", "score_error", "sha256",
                "tensors", "schedule", "network", "vocabulary", "world_size"):
        assert key in card, key
    assert card["format"] == CARD_FORMAT and card["world"] == "ring2d" and card["schedule"] == "vp-linear"
    assert card["config"] == result.config.to_dict() and card["seed"] == 0 and card["steps"] == 150
    assert card["world_size"] == 1 and card["trained_on"] == "cpu"
    assert set(card["final_losses"]) == {"train_loss_last_5pct", "ema_heldout_loss"}
    assert card["score_error"]["pooled_relative_error"] > 0
    state = result.denoiser.network.state_dict()
    assert card["tensors"] == {k: {"shape": list(v.shape), "dtype": "float32"} for k, v in state.items()}
    assert card["parameters"] == sum(v.numel() for v in state.values())


def test_checkpoint_is_safetensors_not_pickle(checkpoint, monkeypatch):
    result, weights, _ = checkpoint
    raw = weights.read_bytes()
    (header_length,) = struct.unpack("<Q", raw[:8])  # safetensors: u64 little-endian header size, then JSON
    header = json.loads(raw[8:8 + header_length])
    assert header["__metadata__"]["format"] == CARD_FORMAT
    assert not raw.startswith(b"\x80") and not raw.startswith(b"PK")  # neither a pickle nor torch.save's zip
    stored = load_file(str(weights))
    state = result.denoiser.network.state_dict()
    assert set(stored) == set(state) and all(torch.equal(stored[k], state[k]) for k in state)
    assert sorted(p.suffix for p in weights.parent.iterdir()) == [".json", ".safetensors"]

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    load_checkpoint(weights)


def tampered_copy(checkpoint, tmp_path, edit):
    """Copies of the checkpoint's two files in ``tmp_path``, changed by ``edit(weights, card)``."""
    _, weights, card = checkpoint
    shutil.copy(weights, tmp_path / weights.name)
    shutil.copy(card, tmp_path / card.name)
    edit(tmp_path / weights.name, tmp_path / card.name)
    return tmp_path / "ring2d"


def resign(weights, card_path, data: dict) -> None:
    """Write ``data`` as the card, signed for the weights file as it now is: what a deliberate re-save would do.
    Used to reach the checks behind the hash and the signature."""
    data["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    data.pop("signature", None)
    data["signature"] = card_signature(data)
    card_path.write_text(json.dumps(data), encoding="utf-8")


def edit_card(change, signed: bool = False):
    """An edit of the card's JSON; ``signed=True`` re-signs it afterwards (only the later checks can refuse it)."""
    def edit(weights, card):
        data = json.loads(card.read_text(encoding="utf-8"))
        change(data)
        if signed:
            resign(weights, card, data)
        else:
            card.write_text(json.dumps(data), encoding="utf-8")

    return edit


def edit_tensors(change):
    """Rewrite the weights file with ``change(tensors)`` applied, keeping the card's manifest, and re-sign the card
    for the new file (so that the hash and the signature pass and the tensor checks are what must refuse it)."""
    def edit(weights, card):
        tensors = load_file(str(weights))
        change(tensors)
        save_file(tensors, str(weights))
        resign(weights, card, json.loads(card.read_text(encoding="utf-8")))

    return edit


def write_weights_bytes(data: bytes):
    def edit(weights, card):
        weights.write_bytes(data)
        resign(weights, card, json.loads(card.read_text(encoding="utf-8")))

    return edit


def truncate_weights(weights, card):
    raw = weights.read_bytes()
    write_weights_bytes(raw[: len(raw) // 2])(weights, card)


def flip_last_byte(weights, card):
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0x01  # inside the last tensor's data: still a valid safetensors file
    weights.write_bytes(bytes(raw))
    load_file(str(weights))


def reshape_first(data):
    name = sorted(data["tensors"])[0]
    data["tensors"][name]["shape"] = [*data["tensors"][name]["shape"], 1]


def set_first_value(value: float):
    def change(tensors):
        tensors["readout.bias"] = tensors["readout.bias"].clone()
        tensors["readout.bias"][0] = value

    return change


W, C = "ring2d.safetensors", "ring2d.json"  # which file a message must start with


# Every malformation: (edit, the file the message starts with, the rest of the message after "PATH: ").
# Old behaviour, before the checks (each case fails on it): truncated/garbage tensor files behind a matching hash
# raised safetensors' own SafetensorError; a binary card raised UnicodeDecodeError; a missing manifest field raised
# KeyError; a wrongly typed network field escaped as NetworkConfig's ValueError without the path; an edited
# schedule, data_std or p_uncond and non-finite weights loaded silently.
MALFORMED = {
    "no-weights": (lambda w, c: w.unlink(), W, r"path: does not exist"),
    "no-card": (lambda w, c: c.unlink(), C, r"path: does not exist"),
    "card-binary": (lambda w, c: c.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" + bytes(range(256))), C,
                    r"card: not UTF-8 text \(byte 0x89 at offset 0\)"),
    "card-invalid-json": (lambda w, c: c.write_text('{"format": ', encoding="utf-8"), C, r"card: invalid JSON"),
    "card-not-an-object": (lambda w, c: c.write_text("[1, 2]", encoding="utf-8"), C,
                           r"card: expected a JSON object, got list"),
    "card-nan-constant": (lambda w, c: c.write_text('{"format": NaN}', encoding="utf-8"), C,
                          r"card: invalid JSON \(the non-standard JSON constant NaN\)"),
    "format": (edit_card(lambda d: d.update(format="other/1")), C, r"format: 'other/1' is not"),
    "format-version-1": (edit_card(lambda d: d.update(format="cfgtruth-checkpoint/1")), C,
                         r"format: .*\(a version-1 card has no signature; re-save"),
    "missing-schedule": (edit_card(lambda d: d.pop("schedule")), C, r"schedule: missing from the card"),
    "missing-sha256": (edit_card(lambda d: d.pop("sha256")), C, r"sha256: missing from the card"),
    "missing-signature": (edit_card(lambda d: d.pop("signature")), C, r"signature: missing from the card"),
    "missing-manifest-shape": (edit_card(lambda d: d["tensors"]["readout.bias"].pop("shape"), signed=True), C,
                               r"tensors\['readout.bias'\].shape: expected an array, got null"),
    "world-not-a-string": (edit_card(lambda d: d.update(world=3)), C, r"world: expected a string, got integer 3"),
    "network-width-a-string": (edit_card(lambda d: d["network"].update(width="64"), signed=True), C,
                               r"network.width: expected an integer, got string '64'"),
    "network-width-a-bool": (edit_card(lambda d: d["network"].update(width=True), signed=True), C,
                             r"network.width: expected an integer, got boolean True"),
    "network-unknown-field": (edit_card(lambda d: d["network"].update(colour=1), signed=True), C,
                              r"network.colour: not a NetworkConfig field"),
    "tokens-not-a-list": (edit_card(lambda d: d["vocabulary"].update(tokens="class0"), signed=True), C,
                          r"vocabulary.tokens: expected an array, got string"),
    "sha256-not-hex": (edit_card(lambda d: d.update(sha256="xyz")), C, r"sha256: expected 64 lowercase hex"),
    "manifest-dtype-unknown": (edit_card(lambda d: d["tensors"]["readout.bias"].update(dtype="float8"),
                                         signed=True), C, r"tensors\['readout.bias'\].dtype: 'float8' is not"),
    "weights-modified": (flip_last_byte, W, r"sha256: the file's SHA-256 is [0-9a-f]{12}\.\.\., the card ring2d.json"),
    "weights-truncated": (truncate_weights, W, r"tensors: not a readable safetensors file \(SafetensorError"),
    "weights-garbage": (write_weights_bytes(b"not a safetensors file at all" * 8), W,
                        r"tensors: not a readable safetensors file"),
    "weights-empty": (write_weights_bytes(b""), W, r"tensors: not a readable safetensors file"),
    "schedule-edited": (edit_card(lambda d: d.update(schedule="vp-cosine")), C,
                        r"schedule: the card was changed after it was signed \(edited: \['schedule'\]\)"),
    "data-std-edited": (edit_card(lambda d: d["network"].update(data_std=1.0)), C,
                        r"network: the card was changed after it was signed \(edited: \['network'\]\)"),
    "p-uncond-edited": (edit_card(lambda d: d["config"].update(p_uncond=0.5)), C,
                        r"config: the card was changed after it was signed"),
    "field-added": (edit_card(lambda d: d.update(note="hand edit")), C, r"note: .*\(added: \['note'\]\)"),
    "signature-edited": (edit_card(lambda d: d["signature"].update(digest="0" * 64)), C,
                         r"signature: the card was changed after it was signed \(the per-field digests"),
    "tensor-missing-from-manifest": (edit_card(lambda d: d["tensors"].pop("readout.weight"), signed=True), W,
                                     r"tensors: names differ from the card's manifest; missing \[\], "
                                     r"extra \['readout.weight'\]"),
    "tensor-missing-from-file": (edit_tensors(lambda t: t.pop("readout.weight")), W,
                                 r"tensors: names differ .*; missing \['readout.weight'\], extra \[\]"),
    "tensor-extra-in-file": (edit_tensors(lambda t: t.update(stray=torch.zeros(3))), W,
                             r"tensors: names differ .*; missing \[\], extra \['stray'\]"),
    "shape-edited": (edit_card(reshape_first, signed=True), W, r"tensors\['.*'\].shape: \[.*\] in the file, the card"),
    "dtype-in-file": (edit_tensors(lambda t: t.update({"readout.bias": t["readout.bias"].double()})), W,
                      r"tensors\['readout.bias'\].dtype: torch.float64 in the file, the card says float32"),
    "weights-nan": (edit_tensors(set_first_value(float("nan"))), W,
                    r"tensors\['readout.bias'\]: 1 of 1 values are not finite"),
    "weights-inf": (edit_tensors(set_first_value(float("-inf"))), W,
                    r"tensors\['readout.bias'\]: 1 of 1 values are not finite"),
    "network-config": (edit_card(lambda d: d["network"].update(width=48), signed=True), C,
                       r"network: the config .* does not give the stored tensors"),
    "network-invalid": (edit_card(lambda d: d["network"].update(heads=5), signed=True), C,
                        r"network: heads: must divide width = 32, got 5"),
    "vocabulary": (edit_card(lambda d: d["vocabulary"]["tokens"].reverse(), signed=True), C,
                   r"vocabulary: the vocabulary of world 'ring2d' has changed"),
    "unknown-world": (edit_card(lambda d: d.update(world="nowhere"), signed=True), C,
                      r"world: unknown world 'nowhere'"),
    "unknown-schedule": (edit_card(lambda d: d.update(schedule="vp-quadratic"), signed=True), C,
                         r"schedule: unknown schedule 'vp-quadratic'"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_checkpoint_refuses_a_malformed_file(checkpoint, tmp_path, case):
    """Each malformation ends in a ValueError whose message starts with the offending file's path and names the
    field (see MALFORMED for what each case did before these checks)."""
    edit, file_name, message = MALFORMED[case]
    path = tampered_copy(checkpoint, tmp_path, edit)
    with pytest.raises(ValueError) as caught:
        load_checkpoint(path)
    assert type(caught.value) is ValueError  # not a subclass such as UnicodeDecodeError or JSONDecodeError
    assert re.match(re.escape(str(tmp_path / file_name)) + ": " + message, str(caught.value)), str(caught.value)


def test_signed_edit_of_a_bound_field_is_what_the_signature_refuses(checkpoint, tmp_path):
    """The schedule, data scaling and p_uncond edits above are refused by the signature alone: re-signed, the same
    cards load, and the network computes something else (so the binding is what protects the numbers)."""
    x, t = points(64, 2, seed=4), 0.5
    reference = load_checkpoint(checkpoint[1]).eps(x, t, 2)
    for change in (lambda d: d.update(schedule="vp-cosine"), lambda d: d["network"].update(data_std=1.0)):
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        loaded = load_checkpoint(tampered_copy(checkpoint, folder, edit_card(change, signed=True)))
        assert float((loaded.eps(x, t, 2) - reference).abs().max()) > 1e-3


def test_save_refuses_non_finite_weights(trained, tmp_path):
    result, _ = trained
    import copy

    den = copy.deepcopy(result.denoiser)
    with torch.no_grad():
        den.network.readout.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"^denoiser: non-finite weights, refusing to save them: \{'readout.bias': 1"):
        save_checkpoint(tmp_path / "bad", den, {})
    assert list(tmp_path.iterdir()) == []


def test_save_is_atomic_and_leaves_no_temporary_files(checkpoint, tmp_path, monkeypatch):
    """An interruption while the weights are written leaves the previous checkpoint loadable and no temporary file
    (before, the weights were written in place: half a file beside the old card)."""
    result, weights, card = checkpoint
    path = tmp_path / "ring2d"
    save_checkpoint(path, result.denoiser, {"note": "first"})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    import toy_models.neural.checkpoint as module

    def interrupted(tensors, filename, metadata=None):  # Ctrl-C halfway through writing the weights
        pathlib.Path(filename).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, result.denoiser, {"note": "second"})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing half-written, no temp file
    assert load_checkpoint(path).card["note"] == "first"


def test_shipped_checkpoints_load_and_are_signed():
    """The cards in checkpoints/ were re-signed (tensor files untouched); every one loads and its signature covers
    the schedule: the same card with the schedule changed is refused."""
    root = pathlib.Path(__file__).resolve().parents[1] / "checkpoints"
    cards = sorted(root.rglob("*.json"))
    assert len(cards) == 10  # ring2d, attributes2d, tokens16d, shapes16, five ablation, imperfect
    for card in cards:
        den = load_checkpoint(card)
        assert den.card["format"] == CARD_FORMAT
        assert den.card["signature"] == card_signature(den.card)


def test_loading_leaves_the_global_generator_alone(checkpoint):
    state = torch.get_rng_state()
    load_checkpoint(checkpoint[1])
    assert torch.equal(state, torch.get_rng_state())


def test_checkpoint_refuses_a_nonexistent_path(tmp_path):
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path / 'nothing.json'))}: path: does not exist"):
        load_checkpoint(tmp_path / "nothing")


# --- the command line -----------------------------------------------------------------------------------------
def test_cli_train_writes_a_loadable_checkpoint(tmp_path, capsys):
    from verify.cli import main

    out = tmp_path / "m"
    argv = ["train", "--world", "ring2d", "--preset", "small", "--out", str(out), "--no-progress", "--eval-n", "64"]
    assert main(argv) == 0
    assert (tmp_path / "m.safetensors").is_file() and (tmp_path / "m.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]
    printed = capsys.readouterr().out
    assert "ring2d: 150 steps on cpu" in printed and "wrote" in printed
    loaded = load_checkpoint(out)
    assert loaded.card["steps"] == 150 and loaded.card["score_error"]["n"] == 64
    assert loaded.card["config"]["seed"] == 0 and loaded.card["world_size"] == 1
    assert bool(torch.isfinite(loaded.eps(points(10, 2), 0.5, None)).all())


def test_config_refuses_a_world_without_a_joint_law():
    with pytest.raises(ValueError, match=r"^world: 'gauss1d' is two separate Gaussians"):
        config_from_preset("gauss1d", "small")
