"""Models of the world: Gaussian-mixture ground truth, schedules, parametrisations and denoisers."""

from .denoiser import AnalyticDenoiser, Denoiser
from .field_mixture import FieldMixture
from .gaussian_mixture import Condition, GaussianMixture
from .scenarios import WORLDS, get_world
from .schedules import SCHEDULES, Schedule, get_schedule
from .world import World, inflated

__all__ = [
    "AnalyticDenoiser",
    "Condition",
    "Denoiser",
    "FieldMixture",
    "GaussianMixture",
    "SCHEDULES",
    "Schedule",
    "WORLDS",
    "World",
    "inflated",
    "get_schedule",
    "get_world",
]
