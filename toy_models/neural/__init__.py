"""The neural diffusion model: a cross-attention eps-network with a learned null token (docs/architecture.md).

* :mod:`~toy_models.neural.network`: the architecture (:class:`CrossAttentionEpsNet`: coordinates, or for image
  worlds p x p patches, as attention positions);
* :mod:`~toy_models.neural.denoiser`: :class:`NeuralDenoiser`, the Denoiser protocol on top of it, and the
  :class:`Vocabulary` that turns conditions into tokens;
* :mod:`~toy_models.neural.training`: denoising score matching with conditioning dropout, EMA, DDP;
* :mod:`~toy_models.neural.checkpoint`: safetensors + JSON card, checked on load;
* :mod:`~toy_models.neural.evaluate`: the relative score error against the exact denoiser;
* :mod:`~toy_models.neural.shipped`: the shipped checkpoints as data and the GPU work package
  (``checkpoints/make_gpu.sh``).
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .denoiser import NeuralDenoiser, Vocabulary
from .evaluate import EVAL_TIMES, score_error_table
from .network import NULL_TOKEN_ID, CrossAttentionEpsNet, NetworkConfig, attention_to_pixels, patchify, unpatchify
from .training import PRESETS, TrainConfig, TrainResult, config_from_preset, train

__all__ = [
    "CrossAttentionEpsNet",
    "EVAL_TIMES",
    "NULL_TOKEN_ID",
    "NetworkConfig",
    "NeuralDenoiser",
    "PRESETS",
    "TrainConfig",
    "TrainResult",
    "Vocabulary",
    "config_from_preset",
    "load_checkpoint",
    "save_checkpoint",
    "score_error_table",
    "attention_to_pixels",
    "patchify",
    "train",
    "unpatchify",
]
