"""AutoGuidance evaluates its degraded network on the negative conditioning (diffusers 0.42.1).

Karras et al. 2024 (arXiv 2406.02507, section 3) guide D_1(x; c) with a weaker model D_0(x; c) of the *same*
condition c. diffusers' AutoGuidance hands its ``pred_uncond`` batch index 1 of every (conditional, negative) pair the
pipeline passes, and installs the layer-skip hooks for that batch: the weak prediction is D_0(x; negative prompt),
so the guider computes D_0(x; null) + g (D_1(x; c) - D_0(x; null)), a mix of CFG and autoguidance.
"""

import torch
from diffusers.guiders import AutoGuidance
from diffusers.models.attention import BasicTransformerBlock

model = torch.nn.Module()
model.transformer_blocks = torch.nn.ModuleList([BasicTransformerBlock(4, 1, 4)])
guider = AutoGuidance(guidance_scale=2.0,
                      auto_guidance_config={"indices": [0], "fqn": "transformer_blocks", "dropout": 1.0})
guider.set_state(step=0, num_inference_steps=10, timestep=torch.tensor(999))
cond, negative = torch.ones(1, 4), torch.zeros(1, 4)
for batch in guider.prepare_inputs({"prompt_embeds": (cond, negative)}):
    guider.prepare_models(model)
    degraded = bool(getattr(model.transformer_blocks[0], "_diffusers_hook", None)
                    and model.transformer_blocks[0]._diffusers_hook.hooks)
    guider.cleanup_models(model)
    which = "cond" if torch.equal(batch.prompt_embeds, cond) else "negative"
    print(f"{batch.__guidance_identifier__}: conditioning={which}, degraded network={degraded}")
print("expected (the paper): the degraded network evaluated on the conditional prompt")
