"""The trained networks of ``checkpoints/`` as evidence (being converted: the constants and folders first)."""

from __future__ import annotations

import pathlib

MAIN = ("ring2d", "attributes2d", "tokens16d")
P_UNCOND = ("0.00", "0.05", "0.10", "0.20", "0.50")
STEPS = 50  # sampler steps for the paired comparisons (the analytic run uses the same grid, so the
#             discretisation is common to both and cancels in the paired difference)
Z = 3.0  # a difference counts beyond 3 standard errors: one-sided false-alarm rate 0.135 % per comparison


def default_checkpoints() -> pathlib.Path:
    """``./checkpoints`` if it exists, else the repository's ``checkpoints/`` beside this package."""
    here = pathlib.Path("checkpoints")
    return here if here.is_dir() else pathlib.Path(__file__).resolve().parents[2] / "checkpoints"
