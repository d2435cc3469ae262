"""The configuration of one ledger run, read by every evidence provider (:mod:`verify.evidence`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RunConfig"]


@dataclass(frozen=True)
class RunConfig:
    """What a ledger run evaluates. ``quick`` trims grids for a smoke run; it never changes a tolerance."""

    quick: bool = False
    seed: int = 0
    show_progress: bool = True
    #: folder of the trained networks (default: ./checkpoints, else the repository's checkpoints/)
    checkpoints: str | None = None
