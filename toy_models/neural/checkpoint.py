"""Checkpoints: the EMA weights as safetensors (never pickle) beside a signed JSON card that says what they are.

``NAME.safetensors`` holds the network's tensors; ``NAME.json`` (the card) holds the world, schedule, network and
training configuration, vocabulary, seed, steps, device, wall time, throughput, final losses, the measured score
error, a manifest of the tensors (name, shape, dtype), the weights file's SHA-256 (``sha256``) and a ``signature``.

The signature
-------------
``signature["digest"]`` is the SHA-256 of a canonical JSON encoding (sorted keys, no whitespace, ASCII) of the whole
card without its ``signature`` entry. That content includes ``sha256``, the hash of the tensor file's bytes, so the
digest covers the tensor bytes *and* every card field: the ones that change what the network computes (``world``,
``schedule``, ``network`` with its input scaling ``data_std``, ``vocabulary``) and the facts the ledger reports
(``config`` with ``p_uncond``, ``steps``, ``device``, the measured ``score_error``). Editing any of them without
re-signing is refused. ``signature["fields"]`` holds one SHA-256 per top-level field, only so that a refusal can
name the fields that were edited. This guards against accidents (a hand-edited schedule, a card copied beside other
weights), not against an adversary, who can recompute a hash.

Loading
-------
:func:`load_checkpoint` rebuilds the network from the card and refuses anything malformed with a ``ValueError``
whose message starts with the offending file's path and names the field: a missing file, a card that is not UTF-8
text, not JSON, not an object, of another format, missing keys or holding fields of the wrong type; weights whose
SHA-256 differs from the card's; a card edited after signing; a tensor file that safetensors cannot read (truncated,
garbage); missing, extra, reshaped or retyped tensors; non-finite weights (NaN or inf); a world, schedule or
vocabulary that no longer exists as recorded; a network configuration that does not give the stored tensors.

:func:`save_checkpoint` writes both files atomically (a temporary file in the same directory, then ``os.replace``;
the weights first, then the card), so an interrupted save leaves either the previous checkpoint or a new weights
file whose hash the old card refuses, never a card describing half-written weights. It refuses to save non-finite
weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import math
import os
import pathlib
import re
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..scenarios import get_world
from ..schedules import get_schedule
from .denoiser import NeuralDenoiser, Vocabulary
from .network import CrossAttentionEpsNet, NetworkConfig

__all__ = ["save_checkpoint", "load_checkpoint", "CARD_FORMAT", "checkpoint_paths", "card_signature"]

#: version 2: the card carries a signature over its fields and the weights' hash (version 1 had only the hash)
CARD_FORMAT = "cfgtruth-checkpoint/2"
#: fields every card must have, with their JSON types
REQUIRED: dict[str, type] = {"format": str, "world": str, "schedule": str, "network": dict, "vocabulary": dict,
                             "tensors": dict, "sha256": str, "signature": dict}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def checkpoint_paths(path: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """``(NAME.safetensors, NAME.json)`` for ``NAME``, ``NAME.safetensors`` or ``NAME.json``."""
    path = pathlib.Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(value: Any) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, ASCII; floats as Python's shortest round-trip repr."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def card_signature(card: dict) -> dict:
    """The ``signature`` entry for ``card``: the digest of everything but the signature, and one digest per field."""
    body = {k: v for k, v in card.items() if k != "signature"}
    return {"digest": _sha256(_canonical(body)), "fields": {k: _sha256(_canonical(v)) for k, v in body.items()}}


@contextlib.contextmanager
def _atomic_target(path: pathlib.Path) -> Iterator[pathlib.Path]:
    """A temporary path beside ``path``; moved onto ``path`` with ``os.replace`` if the block succeeds, removed if
    it raises (KeyboardInterrupt included)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = pathlib.Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | pathlib.Path, denoiser: NeuralDenoiser, card: dict) -> tuple[pathlib.Path, ...]:
    """Write the denoiser's network and its signed card; ``card`` adds run facts (config, losses, timings, errors).

    Both files are written atomically (weights first, then the card). Raises ``ValueError`` starting with
    ``denoiser:`` if a tensor is not finite, ``card:`` if ``card`` is not a JSON-serialisable dict.
    """
    if not isinstance(card, dict):
        raise TypeError(f"card: expected a dict of run facts, got {type(card).__name__}")
    weights, card_path = checkpoint_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in denoiser.network.state_dict().items()}
    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in tensors.items() if v.is_floating_point()
           and not bool(torch.isfinite(v).all())}
    if bad:
        raise ValueError(f"denoiser: non-finite weights, refusing to save them: {bad} (name: non-finite count)")
    full = {"format": CARD_FORMAT, "world": denoiser.world_name, "schedule": denoiser.schedule.name,
            "network": denoiser.network.config.to_dict(),
            "vocabulary": {"tokens": list(denoiser.vocabulary.tokens),
                           "label_tokens": {str(k): list(v) for k, v in denoiser.vocabulary.label_tokens}},
            **card,
            "parameters": sum(v.numel() for v in tensors.values()),
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                        for k, v in tensors.items()},
            "torch": torch.__version__,
            "saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    full.pop("signature", None)
    try:
        _canonical(full)
    except (TypeError, ValueError) as err:
        raise ValueError(f"card: not JSON-serialisable ({err})") from None
    with _atomic_target(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"format": CARD_FORMAT, "world": denoiser.world_name})
        full["sha256"] = _sha256(tmp.read_bytes())
    full["signature"] = card_signature(full)
    with _atomic_target(card_path) as tmp:
        tmp.write_text(json.dumps(full, indent=1) + "\n", encoding="utf-8")
    return weights, card_path


# --------------------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------------------
def _refuse_constant(name: str) -> float:
    raise ValueError(f"the non-standard JSON constant {name}")


def _read_card(card_path: pathlib.Path) -> dict:
    raw = card_path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{card_path}: card: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
                         "a card is the JSON file written beside the weights") from None
    try:
        card = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as err:
        raise ValueError(f"{card_path}: card: invalid JSON ({err.msg} at line {err.lineno} column {err.colno})"
                         ) from None
    except ValueError as err:
        raise ValueError(f"{card_path}: card: invalid JSON ({err})") from None
    if not isinstance(card, dict):
        raise ValueError(f"{card_path}: card: expected a JSON object, got {type(card).__name__}")
    return card


def _type_name(value: Any) -> str:
    """JSON's name for the type of a parsed value."""
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


_KIND_NAMES = {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a number"}


def _expect(card_path: pathlib.Path, field: str, value: Any, kind: type) -> None:
    """Refuse ``value`` unless it has JSON type ``kind`` (a number may be an integer; booleans are not numbers)."""
    kinds = (int, float) if kind is float else (kind,)
    if not isinstance(value, kinds) or (kind in (int, float) and isinstance(value, bool)):
        raise ValueError(f"{card_path}: {field}: expected {_KIND_NAMES[kind]}, got {_type_name(value)} "
                         f"{_short(value)}")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_structure(card_path: pathlib.Path, card: dict) -> None:
    """Formats and types of the fields that loading reads."""
    if "format" in card and card["format"] != CARD_FORMAT:
        raise ValueError(f"{card_path}: format: {card['format']!r} is not {CARD_FORMAT!r}"
                         + (" (a version-1 card has no signature; re-save the checkpoint)"
                            if card["format"] == "cfgtruth-checkpoint/1" else ""))
    absent = [k for k in REQUIRED if k not in card]
    if absent:
        raise ValueError(f"{card_path}: {absent[0]}: missing from the card (missing keys: {absent})")
    for key, kind in REQUIRED.items():
        _expect(card_path, key, card[key], kind)
    for key in ("sha256",):
        if not _HEX64.match(card[key]):
            raise ValueError(f"{card_path}: {key}: expected 64 lowercase hex digits, got {_short(card[key])}")
    signature = card["signature"]
    if not isinstance(signature.get("digest"), str) or not _HEX64.match(signature["digest"]):
        raise ValueError(f"{card_path}: signature.digest: expected 64 lowercase hex digits, got "
                         f"{_short(signature.get('digest'))}")
    _expect(card_path, "signature.fields", signature.get("fields"), dict)
    net = card["network"]
    fields = {f.name: f for f in dataclasses.fields(NetworkConfig)}
    unknown = sorted(set(net) - set(fields))
    if unknown:
        raise ValueError(f"{card_path}: network.{unknown[0]}: not a NetworkConfig field (fields: {sorted(fields)})")
    for name, value in net.items():
        if name == "image_shape" and value is not None:  # (C, H, W) of an image network, a JSON array
            _expect(card_path, "network.image_shape", value, list)
            for i, size in enumerate(value):
                _expect(card_path, f"network.image_shape[{i}]", size, int)
            continue
        _expect(card_path, f"network.{name}", value, float if name == "data_std" else int)
    vocabulary = card["vocabulary"]
    _expect(card_path, "vocabulary.tokens", vocabulary.get("tokens"), list)
    for i, tok in enumerate(vocabulary["tokens"]):
        _expect(card_path, f"vocabulary.tokens[{i}]", tok, str)
    _expect(card_path, "vocabulary.label_tokens", vocabulary.get("label_tokens"), dict)
    for label, toks in vocabulary["label_tokens"].items():
        _expect(card_path, f"vocabulary.label_tokens[{label!r}]", toks, list)
        for i, tok in enumerate(toks):
            _expect(card_path, f"vocabulary.label_tokens[{label!r}][{i}]", tok, str)
    for name, entry in card["tensors"].items():
        _expect(card_path, f"tensors[{name!r}]", entry, dict)
        _expect(card_path, f"tensors[{name!r}].shape", entry.get("shape"), list)
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in entry["shape"]):
            raise ValueError(f"{card_path}: tensors[{name!r}].shape: expected non-negative integers, got "
                             f"{_short(entry['shape'])}")
        _expect(card_path, f"tensors[{name!r}].dtype", entry.get("dtype"), str)
        if entry["dtype"] not in _DTYPES:
            raise ValueError(f"{card_path}: tensors[{name!r}].dtype: {entry['dtype']!r} is not a floating dtype "
                             f"({sorted(_DTYPES)})")
    if "config" in card:
        _expect(card_path, "config", card["config"], dict)


def _check_signature(card_path: pathlib.Path, card: dict) -> None:
    expected = card_signature(card)
    if expected["digest"] == card["signature"]["digest"]:
        return
    stored = card["signature"]["fields"]
    fields = expected["fields"]
    edited = sorted(k for k in fields if k in stored and stored[k] != fields[k])
    added, removed = sorted(set(fields) - set(stored)), sorted(set(stored) - set(fields))
    what = "; ".join(part for part in (
        f"edited: {edited}" if edited else "", f"added: {added}" if added else "",
        f"removed: {removed}" if removed else "") if part) or "the per-field digests were edited"
    field = (edited or added or removed or ["signature"])[0]
    raise ValueError(f"{card_path}: {field}: the card was changed after it was signed ({what}); the signature "
                     "covers every field and the weights' hash, so the card no longer vouches for these weights")


def _load_tensors(weights: pathlib.Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(weights))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own SafetensorError (and OSError, ...)
        raise ValueError(f"{weights}: tensors: not a readable safetensors file ({type(err).__name__}: {err})"
                         ) from None


def _wrap(path: pathlib.Path, field: str, action: Callable[[], Any]) -> Any:
    """Run ``action``; a ValueError or TypeError it raises becomes a ValueError ``"{path}: {field}: ..."`` (a
    leading ``field:`` or ``name:`` of the original message is not repeated)."""
    try:
        return action()
    except (ValueError, TypeError) as err:
        message = str(err)
        for lead in (f"{field}: ", "name: "):
            message = message.removeprefix(lead)
        raise ValueError(f"{path}: {field}: {message}") from None


def load_checkpoint(path: str | pathlib.Path) -> NeuralDenoiser:
    """The denoiser of a checkpoint, on the CPU in float32, with its card as ``.card``.

    Raises ``ValueError`` whose message starts with the path of the offending file (the card or the weights) and
    names the field, for every malformation listed in the module docstring. Loading never draws from the global
    random generator.
    """
    weights, card_path = checkpoint_paths(path)
    for p in (card_path, weights):
        if not p.is_file():
            raise ValueError(f"{p}: path: does not exist or is not a file (a checkpoint is NAME.safetensors beside "
                             "NAME.json)")
    card = _read_card(card_path)
    _check_structure(card_path, card)
    digest = _sha256(weights.read_bytes())
    if digest != card["sha256"]:
        raise ValueError(f"{weights}: sha256: the file's SHA-256 is {digest[:12]}..., the card {card_path.name} says "
                         f"{card['sha256'][:12]}...; the weights are not the ones the card describes")
    _check_signature(card_path, card)
    tensors = _load_tensors(weights)
    listed = card["tensors"]
    if set(tensors) != set(listed):
        missing, extra = sorted(set(listed) - set(tensors)), sorted(set(tensors) - set(listed))
        raise ValueError(f"{weights}: tensors: names differ from the card's manifest; missing {missing}, "
                         f"extra {extra}")
    for name, tensor in tensors.items():
        if list(tensor.shape) != listed[name]["shape"]:
            raise ValueError(f"{weights}: tensors[{name!r}].shape: {list(tensor.shape)} in the file, the card says "
                             f"{listed[name]['shape']}")
        if str(tensor.dtype).removeprefix("torch.") != listed[name]["dtype"]:
            raise ValueError(f"{weights}: tensors[{name!r}].dtype: {tensor.dtype} in the file, the card says "
                             f"{listed[name]['dtype']}")
        if not tensor.is_floating_point():
            raise ValueError(f"{weights}: tensors[{name!r}].dtype: {tensor.dtype} is not a floating dtype")
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            n_bad = int((~finite).sum())
            raise ValueError(f"{weights}: tensors[{name!r}]: {n_bad} of {tensor.numel()} values are not finite "
                             "(NaN or inf); a network with such weights predicts NaN")
    world = _wrap(card_path, "world", lambda: get_world(card["world"]))
    vocabulary = _wrap(card_path, "world", lambda: Vocabulary.from_world(world))
    stored = card["vocabulary"]
    if list(vocabulary.tokens) != stored["tokens"] or {str(k): list(v) for k, v in vocabulary.label_tokens} != \
            stored["label_tokens"]:
        raise ValueError(f"{card_path}: vocabulary: the vocabulary of world {card['world']!r} has changed since "
                         f"training ({stored['tokens']} -> {list(vocabulary.tokens)})")
    _wrap(card_path, "schedule", lambda: get_schedule(card["schedule"]))
    net_config = _wrap(card_path, "network", lambda: NetworkConfig(**card["network"]))
    if not math.isfinite(net_config.data_std):  # pragma: no cover - NetworkConfig refuses it; kept as a guard
        raise ValueError(f"{card_path}: network.data_std: not finite")
    with torch.random.fork_rng(devices=[]):  # construction draws initial weights: keep the global generator still
        network = CrossAttentionEpsNet(net_config)
    expected = {k: list(v.shape) for k, v in network.state_dict().items()}
    if expected != {k: list(v.shape) for k, v in tensors.items()}:
        differ = sorted(k for k in set(expected) | set(tensors)
                        if expected.get(k) != (list(tensors[k].shape) if k in tensors else None))
        raise ValueError(f"{card_path}: network: the config {card['network']} does not give the stored tensors "
                         f"(differing: {differ[:4]}{'...' if len(differ) > 4 else ''})")
    network.load_state_dict(tensors, strict=True)
    denoiser = _wrap(card_path, "network",
                     lambda: NeuralDenoiser(network.float(), vocabulary, card["schedule"], card["world"]))
    denoiser.card = card
    return denoiser
