r"""A world: the unconditional law :math:`p(x)` and the conditional laws :math:`p(x \mid c)` of a toy problem.

Most worlds are one labelled mixture (a :class:`~toy_models.gaussian_mixture.GaussianMixture`, or for image worlds
a :class:`~toy_models.field_mixture.FieldMixture` with the same interface) whose conditionals are its sub-mixtures,
so :math:`p(x) = \sum_c p(c)\, p(x \mid c)` holds and the class posterior is a proper probability.
Some worlds are specified as separate Gaussians instead (``gauss1d``: :math:`p(x \mid c) = \mathcal N(1, 0.5)` beside
:math:`p(x) = \mathcal N(0, 1)`), the setting of most one-dimensional CFG analyses. For those no joint law is
implied; the "classifier" of the Bayes decomposition is then the implicit one,
:math:`\nabla \log p_t(c \mid x) := \nabla \log p_t(x \mid c) - \nabla \log p_t(x)` (Ho & Salimans 2022, section 3.2).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

from .field_mixture import FieldMixture
from .gaussian_mixture import Condition, GaussianMixture, normalize_condition

__all__ = ["World", "inflated"]


@dataclass(frozen=True)
class World:
    """A named toy world.

    Parameters
    ----------
    name, description
        Identification for reports and figures.
    unconditional
        :math:`p(x)`.
    conditionals
        ``None`` (default) when :math:`p(x \\mid c)` is ``unconditional.given(c)``; otherwise an explicit mapping
        from each condition to its law, for worlds given as separate Gaussians.
    """

    name: str
    unconditional: GaussianMixture | FieldMixture
    description: str = ""
    conditionals: Mapping[Hashable, GaussianMixture | FieldMixture] | None = field(default=None)

    def __post_init__(self):
        if self.conditionals is not None:
            canon = {normalize_condition(c): law for c, law in self.conditionals.items()}
            for cond, law in canon.items():
                if cond is None:
                    raise ValueError("conditionals: the null condition is `unconditional`, not a key")
                if law.dim != self.unconditional.dim:
                    raise ValueError(f"conditionals: law of {cond!r} has d = {law.dim}, "
                                     f"unconditional has d = {self.unconditional.dim}")
            object.__setattr__(self, "conditionals", canon)

    @property
    def dim(self) -> int:
        return self.unconditional.dim

    @property
    def is_joint(self) -> bool:
        """Whether :math:`p(x) = \\sum_c p(c) p(x \\mid c)`: the conditionals are sub-mixtures of :math:`p(x)`."""
        return self.conditionals is None

    def law(self, condition: Condition = None) -> GaussianMixture | FieldMixture:
        """:math:`p(x \\mid c)`, or :math:`p(x)` for the null condition ``None``."""
        cond = normalize_condition(condition)
        if cond is None:
            return self.unconditional
        if self.conditionals is None:
            return self.unconditional.given(cond)
        if cond not in self.conditionals:
            raise ValueError(f"condition: unknown condition {condition!r} in world {self.name!r}; "
                             f"known: {list(self.conditionals)}")
        return self.conditionals[cond]

    def class_conditions(self) -> list[Hashable]:
        """The conditions to check by default: every class label (or every explicit condition)."""
        if self.conditionals is not None:
            return list(self.conditionals)
        return [int(c) for c in self.unconditional.classes]

    def to(self, dtype) -> World:
        """The same world with every law computing in ``dtype``."""
        conds = None if self.conditionals is None else {c: law.to(dtype) for c, law in self.conditionals.items()}
        return World(self.name, self.unconditional.to(dtype), self.description, conds)


def inflated(world: World, factor: float) -> World:
    """``world`` with every covariance multiplied by ``factor``: a model of it that is too broad (underfit) for
    ``factor > 1``, the weak model of autoguidance (GaussianMixture worlds)."""
    factor = float(factor)
    if not factor > 0.0:
        raise ValueError(f"factor: must be > 0, got {factor!r}")

    def grow(gm: GaussianMixture) -> GaussianMixture:
        return GaussianMixture(gm.weights, gm.means, gm.covariances * factor, gm.labels)

    conds = None if world.conditionals is None else {c: grow(law) for c, law in world.conditionals.items()}
    return World(f"{world.name}-x{factor:g}", grow(world.unconditional), world.description, conds)
