"""DDIMScheduler's default clip_sample=True sends guided samples to the wrong side when the guided x0 estimate
leaves [-1, 1] (diffusers 0.42.1, ``DDIMScheduler.step``).

The step clips the x0 estimate to [-1, 1] but, with ``use_clipped_model_output=False`` (the default of ``step``),
keeps the model's unclipped eps for the direction term: x_prev = sqrt(a_prev) * clip(x0) + sqrt(1 - a_prev) * eps.
When the guided x0 is 3 (CFG at guidance_scale 3 on the 1-D world below), every step subtracts the 3 inside eps but
adds back only the clipped 1: the sample drifts away and ends at -1, the opposite end of the clip range, from every
start. The exact sampler lands near 2 (the continuous-time CFG law has mean 1.99). Data: p(x | c) = N(1, 0.5),
p(x) = N(0, 1) (cfgtruth's ``gauss1d`` world); the predictions are the exact eps of those Gaussians.
"""

import torch
from diffusers import DDIMScheduler


def exact_eps(x, alpha_bar, mean, var):
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    return s * (x - a * mean) / (a * a * var + s * s)  # -sigma * score of N(a mean, a^2 var + s^2)


for clip in (True, False):
    scheduler = DDIMScheduler(clip_sample=clip)
    scheduler.set_timesteps(50)
    x = torch.tensor([[-1.0], [0.0], [1.0]], dtype=torch.float64)  # three starts x_T
    for t in scheduler.timesteps:
        ab = scheduler.alphas_cumprod[t].double()
        e_u, e_c = exact_eps(x, ab, 0.0, 1.0), exact_eps(x, ab, 1.0, 0.5)
        x = scheduler.step(e_u + 3.0 * (e_c - e_u), t, x).prev_sample
    print(f"clip_sample={clip}: samples {x.flatten().tolist()}")
# clip_sample=True: samples [-1.0, -1.0, -1.0]
# clip_sample=False: samples near 2 (the exact CFG map of the three starts)
