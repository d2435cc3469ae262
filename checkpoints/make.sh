#!/usr/bin/env bash
# Rebuild every shipped checkpoint (the commands their cards record). Run from the repository root.
# On a GPU machine the same commands train on the GPU (cuda is picked when available).
set -euo pipefail
for world in ring2d attributes2d tokens16d; do
  cfgtruth train --world "$world" --steps "$([ "$world" = tokens16d ] && echo 4000 || echo 8000)" \
    --out "checkpoints/$world" --no-progress
done
for p in 0.00 0.05 0.10 0.20 0.50; do  # S1-DROPOUT: the same configuration, five dropout rates
  cfgtruth train --world ring2d --preset ablation --p-uncond "$p" --out "checkpoints/ablation/ring2d_p$p" --no-progress
done
cfgtruth train --world ring2d --preset imperfect --out checkpoints/imperfect/ring2d --no-progress  # S1-FID-IS
