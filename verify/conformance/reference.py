r"""The reference an implementation is judged against, and the rounding bound that judges it.

**Reference.** A registered rule with its parameters (:func:`verify.rules.get`), evaluated in float64 on the same
inputs as the implementation, with its own :class:`~verify.rules.GuidanceState` per sampling run; optionally with a
*step window* (``guided_steps(step, n_steps) -> bool``: outside it the reference returns the conditional branch, as
diffusers' guiders do outside ``[start, stop)``).

**Rounding bound** (:func:`rounding_bound`). A correct implementation of the reference's function :math:`f` of the
branch predictions :math:`y_b` (and ``x``) in a floating-point type with unit roundoff u errs, to first order in u,
by at most (elementwise)

.. math::  \gamma_m\Big(|J_f|\,|y| \;+\; K \sum_b \big(|y_b| + \rho_S |x|\big) \;+\; |f|\Big),
           \qquad K = 1 + |g| + |1 - g|.

* :math:`|J_f|\,|y|`: the inputs perturbed relatively by :math:`\gamma_m` (Higham, *Accuracy and Stability of
  Numerical Algorithms*, 2nd ed., section 1.5, mixed forward-backward error), with :math:`J_f` the Jacobian taken
  exactly by automatic differentiation of the float64 reference, per sample (the registered rules act on each
  sample alone: their reductions run over the feature axes only);
* :math:`K\sum_b|y_b|`: the intermediates a guidance formula forms (:math:`y_c - y_\varnothing`,
  :math:`g\,(y_c - y_\varnothing)`, ...) are at most :math:`K\sum_b|y_b|` in size and their rounding need not be
  an input perturbation (at g = 1, ``u + 1 * (c - u)`` errs by :math:`u\,|c - u|` although :math:`f = c` does not
  depend on u), the term of :func:`verify.audit.cfg_tolerance`;
* :math:`\rho_S|x|`: for a **linear** rule (the same function in every prediction space), a correct implementation
  may convert to another space :math:`S'`, combine there and convert back; the round trip of a prediction
  :math:`y` in the reference's space S through :math:`z = a y + b x` errs by :math:`\gamma(|y| + 2|b/a|\,|x|)`, so
  :math:`\rho_S = \max_{S'} 2|b_{S\to S'}/a_{S\to S'}|` (e.g. :math:`2/\sigma` for eps through x0, as in
  :func:`verify.audit.cfg_tolerance`), read off the conversions themselves. Non-linear rules are a different
  function in another space (the space report), so :math:`\rho_S = 0` for them;
* :math:`|f|`: the rounding of the output itself.

The chain length is :math:`m = 2D + 32`: at most two reductions over the D features on one chain (a norm, then an
inner product, as in APG's projection and CFG-Zero*'s scale), each at most D - 1 roundings (recursive summation; the
pairwise summation torch uses is tighter), plus 32 elementwise roundings (the longest chain of a registered rule,
conversions included, is about 20 operations). The float64 reference's own error is a second chain of the same
kind, which the bound does not count twice: the margin is measured instead (``tests/test_conformance.py`` asserts
that every correct route, the 7 CFG routes and the 6 independent routes of the other rules, uses at most a quarter
of the bound). For
D = 64 that is about 1.8e-14 of the inputs' size in float64, while a float32 computation errs by about 6e-8 of it:
a float32 APG fails the least clear-cut of its 120 value checks by more than 1e3 (``tests/test_conformance.py``).
Where :math:`J_f` is not finite (zero-norm rows, whose derivative is undefined) the derivative term is dropped and
the :math:`K` term alone remains.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from verify import rules
from verify.tolerances import gamma

from .implementations import Call, Implementation, RuleImplementation, Wrapper

#: the guidance scale of the audit's probe checks (shape, dtype, batch, state, degenerate, space) when it varies the
#: strength: off every endpoint and not a float32 number
PROBE_STRENGTH = 3.3

__all__ = ["Reference", "Windowed", "rounding_bound", "route_factor", "chain_length"]

Tensor = torch.Tensor
GuidedSteps = Callable[[int, int], bool]


def chain_length(features: int) -> int:
    """:math:`m = 2D + 32` (see the module docstring)."""
    return 2 * int(features) + 32


class Windowed(Wrapper):
    """``inner`` on the steps ``guided_steps(step, n_steps)`` accepts, the conditional branch itself elsewhere."""

    def __init__(self, inner: Implementation, guided_steps: GuidedSteps | None, name: str | None = None):
        super().__init__(inner, name)
        self.guided_steps = guided_steps

    def __call__(self, call: Call) -> Any:
        if self.guided_steps is not None and not self.guided_steps(call.step, call.n_steps):
            return call.preds["cond"]
        return self.inner(call)


@dataclass(frozen=True)
class Reference:
    """A registered rule, its fixed parameters, whether the audit varies its strength, and its step window."""

    rule: str
    params: Mapping[str, Any] = field(default_factory=dict)
    vary_strength: bool = True
    guided_steps: GuidedSteps | None = None

    def __post_init__(self) -> None:
        cls = rules.rule_class(self.rule)
        accepted = inspect.signature(cls.__init__).parameters
        if "classifier" in accepted:
            raise ValueError(f"rule: {self.rule!r} reads a classifier, not branch predictions; the audit compares "
                             f"functions of branch predictions")
        unknown = [k for k in self.params if k not in accepted]
        if unknown:
            raise ValueError(f"params: rule {self.rule!r} takes no parameter {unknown[0]!r}; it takes "
                             f"{[k for k in accepted if k != 'self']}")
        built = self.build(PROBE_STRENGTH if self.vary_strength else None)  # the parameters, validated by the rule
        if self.guided_steps is not None:
            if not callable(self.guided_steps):
                raise TypeError(f"guided_steps: expected a function (step, n_steps) -> bool, got "
                                f"{type(self.guided_steps).__name__}")
            if "cond" not in built.branches:
                raise ValueError(f"guided_steps: outside its window the reference returns the cond branch, which rule "
                                 f"{self.rule!r} does not read")

    def build(self, strength: float | None = None) -> rules.Rule:
        params = dict(self.params)
        if strength is not None:
            params.pop("w", None)
            params["guidance_scale"] = strength
        return rules.get(self.rule, **params)

    @property
    def source(self) -> str:
        return rules.rule_class(self.rule).reference

    def implementation(self, space: str | None = None, name: str | None = None) -> Implementation:
        """A fresh evaluator of the reference (its own run state); with ``space``, the rule applied in that space
        to the call's predictions (converted there and back: another rule if it is not linear)."""
        inner = RuleImplementation(self.rule) if space is None else RuleImplementation(self.rule, space=space)
        return Windowed(inner, self.guided_steps, name)

    def call_params(self, strength: float | None) -> dict[str, Any]:
        """The parameters of one call: the rule's own (``rule.params``, validated), with the strength set."""
        return dict(self.build(strength).params)

    def amplification(self, strength: float | None) -> float:
        """:math:`K` of the rounding bound: :math:`1 + \\sum_b |a_b|` for a linear rule with weights
        :math:`a_b` (:math:`1 + |g| + |1 - g|` for CFG), :math:`1 + |g| + |1 - g|` for a rule with a guidance scale
        g, 2 otherwise (the intermediates are then the branches themselves)."""
        rule = self.build(strength)
        weights = rule.linear_weights
        if weights is not None:
            return 1.0 + sum(abs(a) for a in weights.values())
        g = rule.params.get("guidance_scale")
        return 1.0 + abs(g) + abs(1.0 - g) if isinstance(g, (int, float)) else 2.0


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def route_factor(call: Call, space: str) -> float:
    """:math:`\\rho_S` of the module docstring at this call's noise level: the largest :math:`2|b/a|` over the
    conversions :math:`z = a y + b x` from ``space`` to the other prediction spaces (read off the conversions)."""
    from verify.rules import SPACES, StepContext

    one = torch.ones(1, 1, dtype=torch.float64)
    zero = torch.zeros(1, 1, dtype=torch.float64)
    worst = 0.0
    for other in SPACES:
        if other == space:
            continue
        try:
            a_ctx = StepContext(zero, call.t, call.alpha, call.sigma, call.schedule, {})
            b_ctx = StepContext(one, call.t, call.alpha, call.sigma, call.schedule, {})
            a = float(a_ctx.to_space(a_ctx.from_space(one, space), other))
            b = float(b_ctx.to_space(b_ctx.from_space(zero, space), other))
        except ValueError:  # a space undefined at this noise level (velocity where alpha vanishes)
            continue
        if math.isfinite(a) and math.isfinite(b) and a != 0.0:
            worst = max(worst, 2.0 * abs(b / a))
    return worst


def rounding_bound(reference: Implementation, calls: list[Call], dtype: torch.dtype, amplification: float,
                   linear: bool = False, check_derivative: bool = True) -> list[Any]:
    """For each call of one run, the elementwise bound of the module docstring on the output (a pair for a rule
    that re-noises), shaped ``[N, D]``; ``amplification`` is its :math:`K` (:meth:`Reference.amplification`).
    ``calls`` share input tensors across steps where the run reuses them (the
    dependence through the run's state is then differentiated too). ``linear``: add the space-route term.
    ``check_derivative``: refuse when autograd's derivative disagrees with a central difference (off for the
    degenerate rows, where a rule may be discontinuous by definition, e.g. rescale's zero-spread rows)."""
    leaves: dict[int, Tensor] = {}

    def leaf(t: Tensor) -> Tensor:
        key = id(t)
        if key not in leaves:
            leaves[key] = t.detach().to(torch.float64).reshape(t.shape[0], -1).clone().requires_grad_(True)
        return leaves[key]

    graded = [c.replace(preds={b: leaf(p) for b, p in c.preds.items()}, x=leaf(c.x)) for c in calls]
    reference.start_run(len(calls))
    with torch.enable_grad():
        outputs = [reference(c) for c in graded]
    inputs = list(leaves.values())
    if check_derivative:
        _check_derivative(reference, calls, graded, outputs, inputs)
    k = float(amplification)
    m = chain_length(graded[0].x.shape[1])
    bounds = []
    for call, out in zip(graded, outputs, strict=True):
        rho = route_factor(call, call.space) if linear else 0.0
        amplified = k * sum(p.detach().abs() + rho * call.x.detach().abs() for p in call.preds.values())
        parts = out if isinstance(out, tuple) else (out,)
        part_bounds = []
        for part in parts:
            flat = _flat(part)
            sensitivity = torch.zeros_like(flat, dtype=torch.float64)
            if flat.requires_grad:
                sensitivity = _sensitivity(flat, inputs)
            sensitivity = torch.where(torch.isfinite(sensitivity), sensitivity, torch.zeros_like(sensitivity))
            part_bounds.append(gamma(m, dtype) * (sensitivity + amplified + flat.detach().abs()))
        bounds.append(tuple(part_bounds) if isinstance(out, tuple) else part_bounds[0])
    return bounds


def _sensitivity(flat: Tensor, inputs: list[Tensor]) -> Tensor:
    """:math:`\\sum_i |\\partial f_{n,j}/\\partial y_{n,i}|\\,|y_{n,i}|` for every row n and output j (rows are
    independent: row n's gradient is sample n's own): one backward pass per output column (autograd's batched
    passes fall back to a slower path on these rules' operations)."""
    features = flat.shape[1]
    out = torch.zeros_like(flat, dtype=torch.float64)
    for j in range(features):
        grads = torch.autograd.grad(flat[:, j].sum(), inputs, retain_graph=True, allow_unused=True)
        for grad, value in zip(grads, inputs, strict=True):
            if grad is not None:
                out[:, j] += (grad.abs() * value.detach().abs()).sum(dim=1)
    return out


#: relative step of the finite-difference check of the derivative: its truncation error is O(h^2) ~ 1e-12 and its
#: rounding error u/h ~ 1e-10, relative to the check's scale, for a smooth rule
_FD_STEP = 1e-6
#: the relative disagreement the check allows: 1e6 times a differentiable rule's (about 1e-9), so that a direction
#: crossing a kink (a norm cap) within h does not refuse a correct rule, and far below the order-one disagreement of
#: a dependence the derivative misses
_FD_ALLOWED = 1e-3


def _last_part(output: Any) -> Any:
    return output[0] if isinstance(output, tuple) else output


def _check_derivative(reference: Implementation, calls: list[Call], graded: list[Call], outputs: list[Any],
                      inputs: list[Tensor]) -> None:
    """Refuse a bound built on a wrong derivative: the directional derivative :math:`J v` from autograd (0 where the
    output carries no derivative at all) against a central difference along :math:`v = |y| \\odot s` (random signs
    s, fixed seed), on the guided prediction of the run's last call (which depends on every earlier call through
    the run's state). A rule computed through an operation without a derivative (``torch.frexp``'s mantissa,
    ``.detach()``, a round trip through NumPy) would make :math:`|J|\\,|y|` miss a dependence and the bound silently
    too small; the two estimates then differ by order one (a second direction is tried before refusing, in case
    the first crosses a kink)."""
    last = _last_part(outputs[-1])
    if not isinstance(last, Tensor):
        return
    generator = torch.Generator().manual_seed(20241)
    analytic = numeric = 0.0
    for attempt in range(2):
        signs = [torch.randint(0, 2, v.shape, generator=generator).to(v.dtype) * 2 - 1 for v in inputs]
        direction = [v.detach().abs() * s for v, s in zip(inputs, signs, strict=True)]
        if last.requires_grad:
            grads = torch.autograd.grad(last.sum(), inputs, retain_graph=True, allow_unused=True)
        else:
            grads = [None] * len(inputs)
        analytic = sum(float((g * d).sum()) for g, d in zip(grads, direction, strict=True) if g is not None)
        h = _FD_STEP / (attempt + 1)
        values = []
        for sign in (1.0, -1.0):
            moved = {id(v): (v.detach() + sign * h * d) for v, d in zip(inputs, direction, strict=True)}
            shifted = [c.replace(preds={b: moved[id(p)] for b, p in c.preds.items()}, x=moved[id(c.x)])
                       for c in graded]
            reference.start_run(len(shifted))
            with torch.no_grad():
                outs = [reference(c) for c in shifted]
            values.append(float(_last_part(outs[-1]).sum()))
        numeric = (values[0] - values[1]) / (2 * h)
        scale = sum(float((g.abs() * d.abs()).sum()) for g, d in zip(grads, direction, strict=True) if g is not None)
        scale += float(last.detach().abs().sum()) + sum(float(d.abs().sum()) for d in direction) * 1e-300
        if abs(analytic - numeric) <= _FD_ALLOWED * scale:
            return
    raise RuntimeError(f"reference: the derivative of {getattr(reference, 'name', reference)!r} from automatic "
                       f"differentiation ({analytic:.6g} along a test direction) disagrees with a central difference "
                       f"({numeric:.6g}); the rounding bound cannot be derived for this rule")
