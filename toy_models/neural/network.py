r"""The network: an eps-predictor whose condition enters through cross-attention to token embeddings.

For :math:`x_t \in \mathbb R^d` the network reads the d coordinates as d *positions* (the coordinates of
``tokens16d``, two positions for the 2-D worlds). Position p starts as

.. math:: h_p = c_{in}(t)\, x_{t,p}\, a + e_p + \mathrm{emb}(\lambda_t),
   \qquad c_{in}(t) = (\alpha_t^2 \sigma_{data}^2 + \sigma_t^2)^{-1/2},

(``a`` a learned vector, ``e_p`` a learned position embedding, ``emb`` a Fourier-feature MLP of the log-SNR
:math:`\lambda_t`; the input scaling :math:`c_{in}` is Karras et al. 2022's, Table 1, written for a VP
schedule). Each of ``depth`` pre-LayerNorm blocks then applies

* self-attention among the positions (so coordinates can interact),
* cross-attention: queries from the positions, keys and values from the condition's token embeddings
  (Rombach et al. 2022, eq. 3; source text 000, 'Cross-Attention'),
* a two-layer MLP, with the time embedding added before it.

A linear read-out maps each position back to its coordinate of :math:`\hat\varepsilon` (eps-prediction, Ho et al.
2020; the DSM loss is :math:`\|\hat\varepsilon - \varepsilon\|^2`, and for the VP schedules :math:`\varepsilon` has
unit variance at every t, which is why no output preconditioning is needed).

The condition is a sequence of token ids; the *null condition* is the one-token sequence of the learned null
token (id 0), trained by conditioning dropout (Ho & Salimans 2022, Algorithm 1). Sequences of different lengths
are padded and masked, so one forward pass can carry the null and the conditional rows of CFG together.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

__all__ = ["NetworkConfig", "CrossAttentionEpsNet", "NULL_TOKEN_ID"]

#: the id of the learned null token in every vocabulary
NULL_TOKEN_ID = 0


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture. ``vocab_size`` counts the null token; ``max_tokens`` is the longest condition."""

    dim: int
    vocab_size: int
    max_tokens: int
    width: int = 64
    depth: int = 3
    heads: int = 4
    mlp_ratio: int = 2
    fourier_features: int = 16
    data_std: float = 1.0

    def __post_init__(self):
        for name in ("dim", "vocab_size", "max_tokens", "width", "depth", "heads", "mlp_ratio", "fourier_features"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: must be a positive int, got {value!r}")
        if self.width % self.heads:
            raise ValueError(f"heads: must divide width = {self.width}, got {self.heads}")
        if not (math.isfinite(self.data_std) and self.data_std > 0):
            raise ValueError(f"data_std: must be a positive finite number, got {self.data_std!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class _Attention(nn.Module):
    """Multi-head attention that can hand back its attention probabilities ``[N, heads, P, L]``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, h: Tensor, context: Tensor, mask: Tensor | None = None, keep: list | None = None) -> Tensor:
        n, p, width = h.shape  # h: [N, P, W]; context: [N, L, W]; mask: [N, L], True = a real token
        dh = width // self.heads
        q = self.query(h).view(n, p, self.heads, dh).transpose(1, 2)  # [N, H, P, dh]
        k, v = self.key_value(context).view(n, -1, 2, self.heads, dh).permute(2, 0, 3, 1, 4)  # [N, H, L, dh] each
        logits = q @ k.transpose(-1, -2) / math.sqrt(dh)  # [N, H, P, L]
        if mask is not None:
            logits = logits.masked_fill(~mask[:, None, None, :], -math.inf)
        probs = logits.softmax(-1)
        if keep is not None:
            keep.append(probs.detach())
        return self.out((probs @ v).transpose(1, 2).reshape(n, p, width))


class _Block(nn.Module):
    def __init__(self, config: NetworkConfig):
        super().__init__()
        w = config.width
        self.norm_self, self.norm_cross, self.norm_mlp = nn.LayerNorm(w), nn.LayerNorm(w), nn.LayerNorm(w)
        self.self_attention = _Attention(w, config.heads)
        self.cross_attention = _Attention(w, config.heads)
        self.time = nn.Linear(w, w)
        self.mlp = nn.Sequential(nn.Linear(w, config.mlp_ratio * w), nn.GELU(), nn.Linear(config.mlp_ratio * w, w))

    def forward(self, h: Tensor, temb: Tensor, tokens: Tensor, mask: Tensor, keep: list | None) -> Tensor:
        normed = self.norm_self(h)
        h = h + self.self_attention(normed, normed)
        h = h + self.cross_attention(self.norm_cross(h), tokens, mask, keep)
        return h + self.mlp(self.norm_mlp(h + self.time(temb)[:, None, :]))


class CrossAttentionEpsNet(nn.Module):
    """``forward(x_scaled [N, d], log_snr [N], token_ids [N, L], token_mask [N, L]) -> eps [N, d]``.

    ``x_scaled`` is :math:`c_{in}(t) x_t` (the caller scales; see :class:`~toy_models.neural.NeuralDenoiser`).
    Pass ``keep=[]`` to collect each block's cross-attention probabilities ``[N, heads, d, L]``.
    """

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.coordinate = nn.Parameter(torch.randn(w) / math.sqrt(w))
        self.position = nn.Parameter(torch.randn(config.dim, w) * 0.02)
        self.register_buffer("frequencies", torch.randn(config.fourier_features) * 1.0, persistent=True)
        self.time_mlp = nn.Sequential(nn.Linear(2 * config.fourier_features, w), nn.GELU(), nn.Linear(w, w))
        self.tokens = nn.Embedding(config.vocab_size, w)  # row NULL_TOKEN_ID is the learned null token
        self.token_norm = nn.LayerNorm(w)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.depth))
        self.out_norm = nn.LayerNorm(w)
        self.readout = nn.Linear(w, 1)

    def time_embedding(self, log_snr: Tensor) -> Tensor:
        """Fourier features of :math:`\\lambda_t / 8` (log-SNR spans about [-10, 10] on vp-linear) then an MLP."""
        phase = 2 * math.pi * (log_snr[:, None] / 8.0) * self.frequencies  # [N, F]
        return self.time_mlp(torch.cat([phase.cos(), phase.sin()], dim=1))  # [N, W]

    def forward(self, x_scaled: Tensor, log_snr: Tensor, token_ids: Tensor, token_mask: Tensor,
                keep: list | None = None) -> Tensor:
        temb = self.time_embedding(log_snr)  # [N, W]
        h = x_scaled[:, :, None] * self.coordinate + self.position + temb[:, None, :]  # [N, d, W]
        tokens = self.token_norm(self.tokens(token_ids))  # [N, L, W]
        for block in self.blocks:
            h = block(h, temb, tokens, token_mask, keep)
        return self.readout(self.out_norm(h)).squeeze(-1)  # [N, d]
