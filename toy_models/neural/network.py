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

Images: patches as positions
----------------------------
When :attr:`NetworkConfig.image_shape` is ``(C, H, W)`` (points are images flattened channel-major, as
``x.reshape(N, C, H, W)`` reads them) the positions are the :math:`P = (H/p)(W/p)` non-overlapping p x p patches
(``NetworkConfig.patch``), in row-major order over the patch grid, as in the Vision Transformer (Dosovitskiy et al.
2021, section 3.1) and DiT (Peebles & Xie 2023, section 3.2). Patch q starts as

.. math:: h_q = A\, c_{in}(t)\, x_{t,[q]} + b + e_q + \mathrm{emb}(\lambda_t),

with :math:`x_{t,[q]} \in \mathbb R^{C p^2}` the patch's values (:func:`patchify`), ``A, b`` a learned linear
embedding; the same blocks follow, and a linear read-out maps each patch back to its :math:`C p^2` values of
:math:`\hat\varepsilon`, put back in place by :func:`unpatchify`. Cross-attention probabilities then have one row
per patch; :func:`attention_to_pixels` spreads a patch map over the patch's pixels, so a token's attention can be
compared with an object's pixel mask. Without ``image_shape`` (the default, ``patch = 1``) the network is the
coordinate network above, with the same tensors as before the image variant existed.

The condition is a sequence of token ids; the *null condition* is the one-token sequence of the learned null
token (id 0), trained by conditioning dropout (Ho & Salimans 2022, Algorithm 1). Sequences of different lengths
are padded and masked, so one forward pass can carry the null and the conditional rows of CFG together.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

__all__ = ["NetworkConfig", "CrossAttentionEpsNet", "NULL_TOKEN_ID", "patchify", "unpatchify", "attention_to_pixels"]

#: the id of the learned null token in every vocabulary
NULL_TOKEN_ID = 0


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture. ``vocab_size`` counts the null token; ``max_tokens`` is the longest condition.

    ``image_shape = (C, H, W)`` with ``C H W = dim`` makes the positions ``patch`` x ``patch`` pixel patches (``patch``
    must divide H and W); ``None`` (default, with ``patch = 1``) makes them the coordinates.
    """

    dim: int
    vocab_size: int
    max_tokens: int
    width: int = 64
    depth: int = 3
    heads: int = 4
    mlp_ratio: int = 2
    fourier_features: int = 16
    data_std: float = 1.0
    image_shape: tuple[int, int, int] | None = None
    patch: int = 1

    def __post_init__(self):
        for name in ("dim", "vocab_size", "max_tokens", "width", "depth", "heads", "mlp_ratio", "fourier_features",
                     "patch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: must be a positive int, got {value!r}")
        if self.width % self.heads:
            raise ValueError(f"heads: must divide width = {self.width}, got {self.heads}")
        if not (math.isfinite(self.data_std) and self.data_std > 0):
            raise ValueError(f"data_std: must be a positive finite number, got {self.data_std!r}")
        if self.image_shape is None:
            if self.patch != 1:
                raise ValueError(f"patch: patches need image_shape = (C, H, W); without it patch must be 1, got "
                                 f"{self.patch}")
            return
        if not isinstance(self.image_shape, (tuple, list)) or len(self.image_shape) != 3 or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in self.image_shape):
            raise ValueError(f"image_shape: must be (C, H, W) of positive ints, got {self.image_shape!r}")
        object.__setattr__(self, "image_shape", tuple(self.image_shape))  # a card stores it as a JSON list
        c, h, w = self.image_shape
        if c * h * w != self.dim:
            raise ValueError(f"image_shape: C H W = {c * h * w} must equal dim = {self.dim}")
        if h % self.patch or w % self.patch:
            raise ValueError(f"patch: must divide H = {h} and W = {w}, got {self.patch}")

    @property
    def positions(self) -> int:
        """Number of attention positions P: patches for an image network, coordinates otherwise."""
        grid = self.attention_grid
        return grid[0] * grid[1] if self.image_shape is not None else self.dim

    @property
    def attention_grid(self) -> tuple[int, ...]:
        """How the P positions are laid out: ``(H / p, W / p)`` patches (row-major) or ``(dim,)`` coordinates."""
        if self.image_shape is None:
            return (self.dim,)
        _, h, w = self.image_shape
        return (h // self.patch, w // self.patch)

    def to_dict(self) -> dict:
        """The card's ``network`` entry. A coordinate network's has the fields it had before images existed, so its
        cards read as they always did."""
        out = asdict(self)
        if self.image_shape is None:
            del out["image_shape"], out["patch"]
        else:
            out["image_shape"] = list(self.image_shape)
        return out


def _image_geometry(x: Tensor, image_shape: tuple[int, int, int], patch: int) -> tuple[int, int, int, int]:
    c, h, w = image_shape
    if x.shape[-1] != c * h * w or h % patch or w % patch:
        raise ValueError(f"x: expected [N, {c * h * w}] images of shape {tuple(image_shape)} with {patch} | H, W; "
                         f"got {list(x.shape)}")
    return c, h, w, patch


def patchify(x: Tensor, image_shape: tuple[int, int, int], patch: int) -> Tensor:
    """``[N, C H W]`` (channel-major) -> ``[N, P, C p p]``: patches in row-major grid order, each patch's values
    channel-major then row-major. A pure permutation of the entries (:func:`unpatchify` inverts it exactly)."""
    c, h, w, p = _image_geometry(x, image_shape, patch)
    n = x.shape[0]
    blocks = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)  # [N, H/p, W/p, C, p, p]
    return blocks.reshape(n, (h // p) * (w // p), c * p * p)


def unpatchify(patches: Tensor, image_shape: tuple[int, int, int], patch: int) -> Tensor:
    """``[N, P, C p p]`` -> ``[N, C H W]``, the inverse of :func:`patchify`."""
    c, h, w = image_shape
    p = patch
    n = patches.shape[0]
    blocks = patches.reshape(n, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)  # [N, C, H/p, p, W/p, p]
    return blocks.reshape(n, c * h * w)


def attention_to_pixels(maps: Tensor, config: NetworkConfig) -> Tensor:
    """Spread per-patch values ``[..., P]`` over the pixels: ``[..., H, W]``, each pixel taking its patch's value
    (nearest-neighbour upsampling by ``patch``). A map that sums to 1 over patches sums to ``p^2`` over pixels."""
    if config.image_shape is None:
        raise ValueError("config: a coordinate network has no pixels; attention_to_pixels needs image_shape")
    if maps.shape[-1] != config.positions:
        raise ValueError(f"maps: expected [..., P = {config.positions}], got {list(maps.shape)}")
    gh, gw = config.attention_grid
    grid = maps.reshape(*maps.shape[:-1], gh, gw)
    return grid.repeat_interleave(config.patch, -2).repeat_interleave(config.patch, -1)


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
    Pass ``keep=[]`` to collect each block's cross-attention probabilities ``[N, heads, P, L]`` (P =
    ``config.positions``: d coordinates, or the patches of an image network).
    """

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        w = config.width
        if config.image_shape is None:  # coordinates: one learned vector scaled by each coordinate's value
            self.coordinate = nn.Parameter(torch.randn(w) / math.sqrt(w))
        else:  # patches: a linear embedding of each patch's C p^2 values
            self.patch_embedding = nn.Linear(config.image_shape[0] * config.patch**2, w)
        self.position = nn.Parameter(torch.randn(config.positions, w) * 0.02)
        self.register_buffer("frequencies", torch.randn(config.fourier_features) * 1.0, persistent=True)
        self.time_mlp = nn.Sequential(nn.Linear(2 * config.fourier_features, w), nn.GELU(), nn.Linear(w, w))
        self.tokens = nn.Embedding(config.vocab_size, w)  # row NULL_TOKEN_ID is the learned null token
        self.token_norm = nn.LayerNorm(w)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.depth))
        self.out_norm = nn.LayerNorm(w)
        values = 1 if config.image_shape is None else config.image_shape[0] * config.patch**2
        self.readout = nn.Linear(w, values)  # each position's values of eps

    def time_embedding(self, log_snr: Tensor) -> Tensor:
        """Fourier features of :math:`\\lambda_t / 8` (log-SNR spans about [-10, 10] on vp-linear) then an MLP."""
        phase = 2 * math.pi * (log_snr[:, None] / 8.0) * self.frequencies  # [N, F]
        return self.time_mlp(torch.cat([phase.cos(), phase.sin()], dim=1))  # [N, W]

    def forward(self, x_scaled: Tensor, log_snr: Tensor, token_ids: Tensor, token_mask: Tensor,
                keep: list | None = None) -> Tensor:
        temb = self.time_embedding(log_snr)  # [N, W]
        h = self.embed(x_scaled) + self.position + temb[:, None, :]  # [N, P, W]
        tokens = self.token_norm(self.tokens(token_ids))  # [N, L, W]
        for block in self.blocks:
            h = block(h, temb, tokens, token_mask, keep)
        return self.read_out(self.readout(self.out_norm(h)))  # [N, d]

    def embed(self, x_scaled: Tensor) -> Tensor:
        """``[N, d]`` -> ``[N, P, W]``: each position's input embedding (without position and time terms)."""
        config = self.config
        if config.image_shape is None:
            return x_scaled[:, :, None] * self.coordinate
        return self.patch_embedding(patchify(x_scaled, config.image_shape, config.patch))

    def read_out(self, values: Tensor) -> Tensor:
        """``[N, P, values per position]`` -> ``[N, d]``."""
        config = self.config
        if config.image_shape is None:
            return values.squeeze(-1)
        return unpatchify(values, config.image_shape, config.patch)
