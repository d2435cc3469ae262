"""The neural diffusion model: a cross-attention eps-network with a learned null token (docs/architecture.md).

* :mod:`~toy_models.neural.network`: the architecture (:class:`CrossAttentionEpsNet`);
* :mod:`~toy_models.neural.denoiser`: :class:`NeuralDenoiser`, the Denoiser protocol on top of it, and the
  :class:`Vocabulary` that turns conditions into tokens;
* :mod:`~toy_models.neural.training`: denoising score matching with conditioning dropout, EMA, DDP;
* :mod:`~toy_models.neural.checkpoint`: safetensors + JSON card, checked on load;
* :mod:`~toy_models.neural.evaluate`: the relative score error against the exact denoiser.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .denoiser import NeuralDenoiser, Vocabulary
from .evaluate import EVAL_TIMES, score_error_table
from .network import NULL_TOKEN_ID, CrossAttentionEpsNet, NetworkConfig
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
    "train",
]
