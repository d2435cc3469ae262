"""AutoGuidance(auto_guidance_layers=...) raises TypeError on its first guided step (diffusers 0.42.1).

The constructor builds one LayerSkipConfig per layer with a bare int as ``indices``
(``LayerSkipConfig(layer, ...)``); ``_apply_layer_skip_hook`` then calls ``len(config.indices)``.
Expected: the degraded network's hooks installed on block 0 (as with ``auto_guidance_config={"indices": [0], ...}``).
"""

import torch
from diffusers.guiders import AutoGuidance
from diffusers.models.attention import BasicTransformerBlock

model = torch.nn.Module()
model.transformer_blocks = torch.nn.ModuleList([BasicTransformerBlock(4, 1, 4)])

guider = AutoGuidance(guidance_scale=2.0, auto_guidance_layers=[0], dropout=1.0)
guider.set_state(step=0, num_inference_steps=10, timestep=torch.tensor(999))
batches = guider.prepare_inputs({"prompt_embeds": (torch.ones(1, 4), torch.zeros(1, 4))})
try:
    for batch in batches:
        guider.prepare_models(model)
        batch.noise_pred = torch.ones(1, 4)
        guider.cleanup_models(model)
    print("ok:", guider(batches).pred)
except TypeError as err:
    print("TypeError:", err)  # object of type 'int' has no len()
print("expected: indices stored as lists, e.g. LayerSkipConfig([layer], ...), as auto_guidance_config gives")
