#!/usr/bin/env bash
# Rebuild every shipped checkpoint (the commands their cards record). Run from the repository root.
# On a GPU machine the same commands train on the GPU (cuda is picked when available). The step counts are what a
# 2-core CPU could afford in the issue that built them (no GPU was lent): two streams of one thread each (more
# threads than cores makes torch's CPU kernels spin: 6x slower per step); on a GPU raise --steps freely.
set -euo pipefail
export OMP_NUM_THREADS=1
{
  cfgtruth train --world ring2d --steps 8000 --out checkpoints/ring2d --no-progress
  for p in 0.00 0.05 0.10 0.20 0.50; do  # S1-DROPOUT: the same configuration, five dropout rates
    cfgtruth train --world ring2d --preset ablation --steps 2000 --p-uncond "$p" \
      --out "checkpoints/ablation/ring2d_p$p" --no-progress
  done
  cfgtruth train --world ring2d --preset imperfect --out checkpoints/imperfect/ring2d --no-progress  # S1-FID-IS
} &
{
  cfgtruth train --world attributes2d --steps 5000 --out checkpoints/attributes2d --no-progress
  cfgtruth train --world tokens16d --steps 2500 --batch-size 512 --out checkpoints/tokens16d --no-progress
} &
wait
# the image world alone: the image preset for 16000 steps, 27 minutes on one thread of a machine running other work
# (6000 steps, 9 minutes, gave a network whose CFG samples put the object in every quadrant: the conditional signal
# eps(x, c) - eps(x, null) was not learned yet); the card's score-error table at 256 points per cell
cfgtruth train --world shapes16 --preset image --eval-n 256 --out checkpoints/shapes16 --no-progress
