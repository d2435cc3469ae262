"""AdaptiveProjectedGuidance returns D_uncond + g * update, the paper's Algorithm 1 D_cond + (g - 1) * update
(diffusers 0.42.1, ``normalized_guidance``).

The two agree only when the update is D_cond - D_uncond itself (eta = 1, norm cap not binding, no momentum). With
the default cap (adaptive_projected_guidance_rescale=15) binding, with eta != 1, or with momentum, they differ by
(D_cond - D_uncond) - update.
"""

import torch
from diffusers.guiders import AdaptiveProjectedGuidance

torch.manual_seed(0)
cond, uncond = torch.randn(1, 4, 8, 8, dtype=torch.float64), torch.randn(1, 4, 8, 8, dtype=torch.float64)
g = 5.0

settings = ({}, {"eta": 0.0},
            {"adaptive_projected_guidance_rescale": 0.0, "adaptive_projected_guidance_momentum": -0.5})
for kwargs in settings:
    guider = AdaptiveProjectedGuidance(guidance_scale=g, **kwargs)
    outs, refs, buffer = [], [], None
    for step in range(2):
        guider.set_state(step=step, num_inference_steps=10, timestep=torch.tensor(999))
        batches = guider.prepare_inputs({})
        for b in batches:
            b.noise_pred = cond if b.__guidance_identifier__ == "pred_cond" else uncond
        outs.append(guider(batches).pred)
        # the paper's Algorithm 1, written out
        diff = cond - uncond
        momentum = kwargs.get("adaptive_projected_guidance_momentum")
        if momentum is not None:
            diff = diff if buffer is None else diff + momentum * buffer
            buffer = diff
        r = kwargs.get("adaptive_projected_guidance_rescale", 15.0)
        if r > 0:
            diff = diff * min(1.0, r / float(diff.norm()))
        unit = cond / cond.norm()
        parallel = (diff * unit).sum() * unit
        update = (diff - parallel) + kwargs.get("eta", 1.0) * parallel
        refs.append(cond + (g - 1.0) * update)
    worst = max(float((o - r).norm() / r.norm()) for o, r in zip(outs, refs, strict=True))
    print(f"{kwargs or 'defaults'}: relative difference from the paper's formula {worst:.3g}")
