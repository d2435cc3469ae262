"""Models of the world: Gaussian-mixture ground truth, schedules, parametrisations and denoisers."""

from .denoiser import AnalyticDenoiser, Denoiser
from .gaussian_mixture import Condition, GaussianMixture
from .scenarios import WORLDS, get_world
from .schedules import SCHEDULES, Schedule, get_schedule
from .world import World, inflated

__all__ = [
    "AnalyticDenoiser",
    "Condition",
    "Denoiser",
    "GaussianMixture",
    "SCHEDULES",
    "Schedule",
    "WORLDS",
    "World",
    "inflated",
    "get_schedule",
    "get_world",
]
