"""MagnitudeAwareGuidance raises on [B, C, H, W] latents (diffusers 0.42.1, torch 2.x).

``mambo_guidance`` calls ``torch.norm(diff, dim=[1, 2, 3])``; with the default p="fro" torch routes three axes to
``linalg.matrix_norm``, which takes two. [B, L, D] token sequences (two axes) work; UNet latents do not.
Expected: the norm over every axis but the batch, e.g. torch.linalg.vector_norm(diff, dim=[1, 2, 3]).
"""

import torch
from diffusers.guiders import MagnitudeAwareGuidance

guider = MagnitudeAwareGuidance(guidance_scale=5.0)
guider.set_state(step=0, num_inference_steps=10, timestep=torch.tensor(999))
batches = guider.prepare_inputs({})
for b in batches:
    b.noise_pred = torch.randn(2, 4, 8, 8) if b.__guidance_identifier__ == "pred_cond" else torch.randn(2, 4, 8, 8)
try:
    print("ok:", guider(batches).pred.shape)
except RuntimeError as err:
    print("RuntimeError:", err)
