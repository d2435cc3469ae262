"""Checkpoints: the EMA weights as safetensors (never pickle) beside a JSON card that says what they are.

``NAME.safetensors`` holds the network's tensors; ``NAME.json`` (the card) holds the world, schedule, network and
training configuration, vocabulary, seed, steps, device, wall time, throughput, final losses, the measured score
error, and a manifest of the tensors (name, shape, dtype) with the file's SHA-256. :func:`load_checkpoint` rebuilds
the network from the card and refuses any mismatch: a different file (hash), missing, extra or reshaped tensors,
or a vocabulary that no longer matches the named world.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import pathlib

import torch
from safetensors.torch import load_file, save_file

from ..scenarios import get_world
from .denoiser import NeuralDenoiser, Vocabulary
from .network import CrossAttentionEpsNet, NetworkConfig

__all__ = ["save_checkpoint", "load_checkpoint", "CARD_FORMAT", "checkpoint_paths"]

CARD_FORMAT = "cfgtruth-checkpoint/1"


def checkpoint_paths(path: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """``(NAME.safetensors, NAME.json)`` for ``NAME``, ``NAME.safetensors`` or ``NAME.json``."""
    path = pathlib.Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_checkpoint(path: str | pathlib.Path, denoiser: NeuralDenoiser, card: dict) -> tuple[pathlib.Path, ...]:
    """Write the denoiser's network and its card; ``card`` adds run facts (config, losses, timings, errors)."""
    weights, card_path = checkpoint_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in denoiser.network.state_dict().items()}
    save_file(tensors, str(weights), metadata={"format": CARD_FORMAT, "world": denoiser.world_name})
    full = {"format": CARD_FORMAT, "world": denoiser.world_name, "schedule": denoiser.schedule.name,
            "network": denoiser.network.config.to_dict(),
            "vocabulary": {"tokens": list(denoiser.vocabulary.tokens),
                           "label_tokens": {str(k): list(v) for k, v in denoiser.vocabulary.label_tokens}},
            **card,
            "parameters": sum(v.numel() for v in tensors.values()),
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                        for k, v in tensors.items()},
            "sha256": _sha256(weights), "torch": torch.__version__,
            "saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    card_path.write_text(json.dumps(full, indent=1) + "\n", encoding="utf-8")
    return weights, card_path


def load_checkpoint(path: str | pathlib.Path) -> NeuralDenoiser:
    """The denoiser of a checkpoint, on the CPU in float32, with its card as ``.card``.

    Raises ``ValueError`` (naming what differs) if the card and the tensors disagree.
    """
    weights, card_path = checkpoint_paths(path)
    for p in (weights, card_path):
        if not p.is_file():
            raise ValueError(f"path: {p} does not exist (a checkpoint is NAME.safetensors beside NAME.json)")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"card: {card_path} is not valid JSON ({err})") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise ValueError(f"card: format {card.get('format') if isinstance(card, dict) else None!r} is not "
                         f"{CARD_FORMAT!r} ({card_path})")
    absent = [k for k in ("world", "schedule", "network", "vocabulary", "tensors", "sha256") if k not in card]
    if absent:
        raise ValueError(f"card: {card_path} lacks {absent}")
    digest = _sha256(weights)
    if digest != card["sha256"]:
        raise ValueError(f"card: {weights.name} has SHA-256 {digest[:12]}..., the card says {card['sha256'][:12]}...; "
                         "the weights are not the ones the card describes")
    tensors = load_file(str(weights))
    listed = card["tensors"]
    if set(tensors) != set(listed):
        raise ValueError(f"card: tensor names differ; missing {sorted(set(listed) - set(tensors))}, "
                         f"extra {sorted(set(tensors) - set(listed))}")
    for name, tensor in tensors.items():
        if list(tensor.shape) != listed[name]["shape"]:
            raise ValueError(f"card: tensor {name!r} has shape {list(tensor.shape)}, the card says "
                             f"{listed[name]['shape']}")
        if str(tensor.dtype).removeprefix("torch.") != listed[name]["dtype"]:
            raise ValueError(f"card: tensor {name!r} is {tensor.dtype}, the card says {listed[name]['dtype']}")
    vocabulary = Vocabulary.from_world(get_world(card["world"]))
    stored = card["vocabulary"]
    if list(vocabulary.tokens) != stored["tokens"] or {str(k): list(v) for k, v in vocabulary.label_tokens} != \
            stored["label_tokens"]:
        raise ValueError(f"card: the vocabulary of world {card['world']!r} has changed since training "
                         f"({stored['tokens']} -> {list(vocabulary.tokens)})")
    try:
        net_config = NetworkConfig(**card["network"])
    except TypeError as err:
        raise ValueError(f"card: 'network' does not describe a NetworkConfig ({err})") from None
    with torch.random.fork_rng(devices=[]):  # construction draws initial weights: keep the global generator still
        network = CrossAttentionEpsNet(net_config)
    expected = {k: list(v.shape) for k, v in network.state_dict().items()}
    if expected != {k: list(v.shape) for k, v in tensors.items()}:
        raise ValueError(f"card: the network config {card['network']} does not give the stored tensors' shapes")
    network.load_state_dict(tensors, strict=True)
    denoiser = NeuralDenoiser(network.float(), vocabulary, card["schedule"], card["world"])
    denoiser.card = card
    return denoiser
