r"""The trained network behind the :class:`~toy_models.denoiser.Denoiser` protocol, and the token vocabulary.

A condition of a world (``None``, a class label, attribute tokens) becomes a sequence of token ids:

* worlds without attributes (``ring2d``): label ``k`` is the one token ``class{k}``;
* worlds with attributes (``attributes2d``, ``tokens16d``): tokens are the attribute values (``red``, ``dog``,
  ``b0+``, ...); a label stands for its component's attribute tokens; a partial condition (``("red",)``) is the
  sub-sequence;
* the null condition is the learned null token alone (id :data:`~toy_models.neural.network.NULL_TOKEN_ID`).

:class:`NeuralDenoiser` computes in the network's dtype (float32) without autocast or TF32 (docs/architecture.md:
checks never run in reduced precision) and returns the caller's dtype; :meth:`NeuralDenoiser.eps_multi` runs every
condition of a CFG step in one forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import Tensorish, as_tensor, check_points
from ..gaussian_mixture import Condition, normalize_condition
from ..schedules import Schedule, get_schedule
from ..world import World
from .network import NULL_TOKEN_ID, CrossAttentionEpsNet, attention_to_pixels

__all__ = ["Vocabulary", "NeuralDenoiser", "network_inputs"]


@dataclass(frozen=True)
class Vocabulary:
    """Token strings (id ``i + 1`` is ``tokens[i]``; id 0 is the null token) and each label's token sequence."""

    tokens: tuple[str, ...]
    label_tokens: tuple[tuple[int, tuple[str, ...]], ...]

    @classmethod
    def from_world(cls, world: World) -> Vocabulary:
        if not world.is_joint:
            raise ValueError(f"world: {world.name!r} is given as separate Gaussians, not one labelled mixture; "
                             "the network is trained on joint worlds (ring2d, attributes2d, tokens16d, ...)")
        gm = world.unconditional
        labels = gm.labels.tolist()
        if not gm.attributes:
            classes = [int(c) for c in gm.classes]
            return cls(tuple(f"class{c}" for c in classes), tuple((c, (f"class{c}",)) for c in classes))
        per_label: dict[int, tuple[str, ...]] = {}
        for k, label in enumerate(labels):
            toks = tuple(sorted(values[k] for values in gm.attributes.values()))
            if per_label.setdefault(label, toks) != toks:
                raise ValueError(f"world: label {label} covers components with different attributes; a label must "
                                 "name one attribute combination to be a token sequence")
        return cls(tuple(gm.tokens), tuple(sorted(per_label.items())))

    @property
    def size(self) -> int:
        """Number of embeddings, the null token included."""
        return len(self.tokens) + 1

    @property
    def max_tokens(self) -> int:
        return max(len(toks) for _, toks in self.label_tokens)

    def condition_tokens(self, condition: Condition) -> tuple[str, ...]:
        """The token strings of a condition (empty for the null condition)."""
        cond = normalize_condition(condition)
        if cond is None:
            return ()
        if isinstance(cond, int):
            table = dict(self.label_tokens)
            if cond not in table:
                raise ValueError(f"condition: unknown label {cond}; labels are {sorted(table)}")
            return table[cond]
        unknown = [tok for tok in cond if tok not in self.tokens]
        if unknown:
            raise ValueError(f"condition: unknown token(s) {unknown}; the vocabulary is {list(self.tokens)}")
        return cond

    def encode(self, condition: Condition) -> list[int]:
        """Token ids: ``[NULL_TOKEN_ID]`` for the null condition."""
        toks = self.condition_tokens(condition)
        return [self.tokens.index(tok) + 1 for tok in toks] if toks else [NULL_TOKEN_ID]

    def batch(self, conditions: Sequence[Condition], repeats: int = 1) -> tuple[Tensor, Tensor]:
        """Padded ids ``[len(conditions) * repeats, L]`` and mask (True = real token), each condition repeated."""
        ids, mask = self.pad([self.encode(c) for c in conditions])  # encode once per condition, then repeat
        return ids.repeat_interleave(repeats, 0), mask.repeat_interleave(repeats, 0)

    def pad(self, sequences: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """Pad id lists to ``[N, L]`` (``L`` the longest); the mask marks real tokens."""
        length = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), length), NULL_TOKEN_ID, dtype=torch.long)
        mask = torch.zeros((len(sequences), length), dtype=torch.bool)
        for i, seq in enumerate(sequences):
            ids[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            mask[i, : len(seq)] = True
        return ids, mask


def network_inputs(schedule: Schedule, data_std: float, x: Tensor, times: Tensor) -> tuple[Tensor, Tensor]:
    r"""What the network reads: :math:`c_{in}(t)\, x_t` with :math:`c_{in} = (\alpha_t^2 \sigma_{data}^2 +
    \sigma_t^2)^{-1/2}`, and :math:`\lambda_t` (``x`` ``[N, d]``, ``times`` ``[N]``; float64). The one place the
    input scaling is written: training and inference both call it."""
    alpha, sigma = schedule.alpha_sigma(times)  # validates the time domain
    if bool((sigma <= 0).any()):
        raise ValueError("t: the network predicts eps only where sigma_t > 0 (t = 0 has no noise to predict)")
    if bool((alpha <= 0).any()):
        raise ValueError(f"t: alpha_t = 0 on {schedule.name!r} there; the log-SNR the network reads is -inf")
    c_in = (alpha**2 * data_std**2 + sigma**2).rsqrt()
    return c_in[:, None] * x, schedule.log_snr(times)


class NeuralDenoiser:
    """A trained :class:`~toy_models.neural.network.CrossAttentionEpsNet` as a Denoiser.

    Parameters
    ----------
    network : the (EMA) network, in eval mode
    vocabulary : how conditions become tokens
    schedule : the schedule it was trained on
    world_name : the world it models (reports, card checks)
    chunk : rows per forward pass (memory bound; results do not depend on it beyond float32 rounding)
    """

    def __init__(self, network: CrossAttentionEpsNet, vocabulary: Vocabulary, schedule: str | Schedule,
                 world_name: str, chunk: int = 1 << 15):
        if network.config.vocab_size != vocabulary.size:
            raise ValueError(f"vocabulary: {vocabulary.size} tokens, the network embeds {network.config.vocab_size}")
        self.network = network.eval()
        self.vocabulary = vocabulary
        self.schedule = get_schedule(schedule)
        self.world_name = world_name
        self.chunk = int(chunk)
        self.card: dict = {}

    @property
    def dim(self) -> int:
        return self.network.config.dim

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.network.parameters()).dtype

    def _inputs(self, x: Tensorish, t: Tensorish) -> tuple[Tensor, Tensor, Tensor]:
        """Validated ``x`` (caller's dtype), and the network's ``c_in x`` and log-SNR per row."""
        x = check_points(x, self.dim, x.dtype if isinstance(x, Tensor) and x.is_floating_point() else torch.float64)
        times = as_tensor(t, "t")
        if times.numel() == 1:
            times = times.reshape(1).expand(x.shape[0])
        elif times.shape != (x.shape[0],):
            raise ValueError(f"t: expected a scalar or shape [N] = [{x.shape[0]}], got {list(times.shape)}")
        scaled, log_snr = network_inputs(self.schedule, self.network.config.data_std, x.to(torch.float64), times)
        return x, scaled, log_snr

    @torch.no_grad()
    def eps_multi(self, x: Tensor, t: Tensorish, conditions: list[Condition]) -> list[Tensor]:
        """The predictions for each condition at the same points, from one batched forward pass per chunk."""
        if not conditions:
            raise ValueError("conditions: give at least one condition")
        x, scaled, log_snr = self._inputs(x, t)
        n = x.shape[0]
        if n == 0:
            return [x.new_zeros((0, self.dim)) for _ in conditions]
        ids, mask = self.vocabulary.batch(conditions, repeats=n)  # [C N, L]
        dev, dt = self.device, self.dtype
        scaled, log_snr = scaled.repeat(len(conditions), 1), log_snr.repeat(len(conditions))
        out = torch.cat([self.network(scaled[i:i + self.chunk].to(dev, dt), log_snr[i:i + self.chunk].to(dev, dt),
                                      ids[i:i + self.chunk].to(dev), mask[i:i + self.chunk].to(dev))
                         for i in range(0, len(ids), self.chunk)]).to("cpu", x.dtype)
        return list(out.split(n))

    def eps(self, x: Tensor, t: Tensorish, condition: Condition = None) -> Tensor:
        r""":math:`\hat\varepsilon_\theta(x_t, t, c)`, ``[N, d]`` in ``x``'s dtype."""
        return self.eps_multi(x, t, [condition])[0]

    def score(self, x: Tensor, t: Tensorish, condition: Condition = None) -> Tensor:
        r""":math:`-\hat\varepsilon / \sigma_t`."""
        sigma = self.schedule.sigma(as_tensor(t, "t")).to(torch.as_tensor(x).dtype)
        return -self.eps(x, t, condition) / (sigma.reshape(-1, 1) if sigma.numel() > 1 else sigma)

    @property
    def attention_grid(self) -> tuple[int, ...]:
        """The layout of the attention positions: ``(H / p, W / p)`` patches (row-major) for an image network,
        ``(d,)`` coordinates otherwise."""
        return self.network.config.attention_grid

    def attention_to_pixels(self, maps: Tensor) -> Tensor:
        """Per-position maps ``[..., P]`` (e.g. one token's slice of :meth:`cross_attention`) as images
        ``[..., H, W]``: every pixel takes its patch's value. Only for image networks (``ValueError`` otherwise)."""
        return attention_to_pixels(maps, self.network.config)

    @torch.no_grad()
    def cross_attention(self, x: Tensor, t: Tensorish, condition: Condition) -> tuple[Tensor, tuple[str, ...]]:
        """Cross-attention probabilities ``[depth, N, heads, P, L]`` for ``condition`` and its token strings; P is
        d for a coordinate network and the number of patches for an image network (:attr:`attention_grid`,
        :meth:`attention_to_pixels`); each row sums to 1 over the L tokens."""
        x, scaled, log_snr = self._inputs(x, t)
        ids, mask = self.vocabulary.batch([condition], repeats=x.shape[0])
        keep: list[Tensor] = []
        dev, dt = self.device, self.dtype
        self.network(scaled.to(dev, dt), log_snr.to(dev, dt), ids.to(dev), mask.to(dev), keep=keep)
        toks = self.vocabulary.condition_tokens(condition) or ("<null>",)
        return torch.stack(keep).to("cpu", torch.float64), toks

    def __repr__(self) -> str:
        n_params = sum(p.numel() for p in self.network.parameters())
        return (f"NeuralDenoiser(world={self.world_name!r}, schedule={self.schedule.name!r}, params={n_params}, "
                f"device={self.device}, dtype={self.dtype})")
