r"""Guidance in a limited interval of noise levels (Kynkaanniemi et al. 2024), around any rule."""

from __future__ import annotations

import math

import torch

from toy_models._checks import as_scalar
from toy_models.schedules import Schedule

from . import register
from ._base import SPACES, GuidanceState, Rule, StepContext

Tensor = torch.Tensor


@register
class GuidanceInterval(Rule):
    r"""Apply ``rule`` only for noise levels :math:`\sigma \in (\sigma_{lo}, \sigma_{hi}]` and the plain conditional
    prediction elsewhere (Kynkaanniemi et al. 2024, eq. 2 and section 3: guidance off at high noise, where it
    pushes samples towards a few modes, and at low noise, where it does nothing useful).

    The paper's :math:`\sigma` is EDM's (Karras et al. 2022, :math:`x = y + \sigma n`), which on any schedule of
    this project is the noise-to-signal ratio :math:`\sigma_t/\alpha_t = e^{-\lambda_t/2}`
    (:attr:`StepContext.noise_to_signal`); ``sigma_lo`` and ``sigma_hi`` are in that unit (EDM2-XXL's interval is
    (0.28, 5.42]). diffusers' guiders express the window as a fraction of the sampler's steps (``start``,
    ``stop``) instead, which depends on the step grid.

    ``rule`` is any rule with a ``cond`` branch (the fallback). Linear when ``rule`` is, with weights that jump at
    the two edges (:meth:`weights_at`, :meth:`breakpoints`); ``linear_weights`` is ``None`` because no single set of
    weights holds at every t. A stateful inner rule keeps its state (updated only inside the interval)."""

    name = "interval"
    spaces = SPACES  # the inner rule's space is used
    reference = ("Kynkaanniemi et al. 2024, 'Applying Guidance in a Limited Interval Improves Sample and "
                 "Distribution Quality in Diffusion Models', eq. 2")

    def __init__(self, *, rule: Rule, sigma_lo: float = 0.0, sigma_hi: float = math.inf):
        if not isinstance(rule, Rule):
            raise TypeError(f"rule: expected a rule (rules.get(name, ...)), got {type(rule).__name__}")
        if "cond" not in rule.branches:
            raise ValueError(f"rule: outside the interval the conditional prediction is used; rule {rule.name!r} "
                             f"has no 'cond' branch (it reads {list(rule.branches)})")
        lo = as_scalar(sigma_lo, "sigma_lo")
        hi = float(sigma_hi) if isinstance(sigma_hi, float) and math.isinf(sigma_hi) and sigma_hi > 0 else \
            as_scalar(sigma_hi, "sigma_hi")
        if not 0.0 <= lo < hi:
            raise ValueError(f"sigma_lo, sigma_hi: need 0 <= sigma_lo < sigma_hi, got {lo!r}, {hi!r}")
        self.rule, self.sigma_lo, self.sigma_hi = rule, lo, hi
        self.branches, self.space = rule.branches, rule.space
        self.params = {"rule": rule, "sigma_lo": lo, "sigma_hi": hi}

    @classmethod
    def examples(cls, world) -> list[dict]:
        from . import get

        return [{"rule": get("cfg", w=3.0), "sigma_lo": 0.3, "sigma_hi": 3.0}]

    @property
    def stateful(self) -> bool:  # type: ignore[override]
        return self.rule.stateful

    @property
    def renoise_branch(self) -> str | None:  # type: ignore[override]
        return self.rule.renoise_branch

    @property
    def condition_keys(self) -> tuple[str, ...]:
        return self.rule.condition_keys

    def new_state(self) -> GuidanceState | None:
        return self.rule.new_state()

    def inside(self, noise_to_signal: float) -> bool:
        """Whether guidance is on at this EDM noise level."""
        return self.sigma_lo < noise_to_signal <= self.sigma_hi

    def _inside_at(self, t: float, schedule: Schedule) -> bool:
        alpha, sigma = (float(v) for v in schedule.alpha_sigma(t))
        return self.inside(sigma / alpha if alpha > 0 else math.inf)

    def combine(self, preds: dict[str, Tensor], ctx: StepContext) -> Tensor:
        if self.inside(ctx.noise_to_signal):
            return self.rule.combine(preds, ctx)
        return preds["cond"].clone()  # a new tensor, as inside the interval (callers may update it in place)

    def renoise(self, ctx: StepContext) -> str | None:
        return self.rule.renoise(ctx) if self.inside(ctx.noise_to_signal) else None

    @property
    def linear_weights(self) -> None:
        return None

    def weights_at(self, t: float, schedule: Schedule) -> dict[str, float] | None:
        if self._inside_at(t, schedule):
            return self.rule.weights_at(t, schedule)
        return {"cond": 1.0}

    def breakpoints(self, schedule: Schedule) -> tuple[float, ...]:
        """The times where :math:`\\sigma_t/\\alpha_t` crosses ``sigma_lo`` or ``sigma_hi`` (inside (0, 1))."""
        lo_lam, hi_lam = schedule.log_snr_range()
        times = []
        for edge in (self.sigma_lo, self.sigma_hi):
            if 0 < edge < math.inf:
                lam = -2.0 * math.log(edge)
                if lo_lam < lam < hi_lam:
                    times.append(float(schedule.t_from_log_snr(lam)))
        return tuple(sorted(set(times) | set(self.rule.breakpoints(schedule))))
