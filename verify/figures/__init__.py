"""Figures: each one draws evidence that the providers of :mod:`verify.evidence` computed, never its own variant.

A figure is one function registered with :func:`figure`; its parameters name the providers it draws (as a claim's
decision function does, :mod:`verify.claims`), and it returns a matplotlib ``Figure``::

    @figure("cfg_law_vs_tilted.png")
    def cfg_law_vs_tilted(cfg_laws_1d: CFGLaws1D) -> Figure: ...

:func:`plot` draws the figures asked for from one run's :class:`~verify.evidence.Evidence`, so the ledger and its
figures share every computation; ``cfgtruth figures`` draws them all, ``cfgtruth run`` draws those of the claims it
evaluated. The house style (colours, boxes, saving) is :mod:`verify.figures.style`. Every module of this package
whose name does not start with ``_`` is imported with the package, so a new figure is one function in one module.
"""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
import pkgutil
from collections.abc import Callable, Iterable

import matplotlib as mpl
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from verify.config import RunConfig
from verify.evidence import Evidence, check_needs, needs_of, resolve_call

from .style import RC, save

__all__ = ["FigureSpec", "figure", "figures", "get_figure", "plot", "plot_all"]


@dataclasses.dataclass(frozen=True)
class FigureSpec:
    """A registered figure: its file name (under ``figures/``), its drawing function and its module."""

    filename: str
    draw: Callable[..., Figure]
    module: str

    @property
    def needs(self) -> tuple[str, ...]:
        """The providers it draws."""
        return needs_of(self.draw)

    @property
    def path(self) -> str:
        """How the records name it: ``figures/<filename>``."""
        return f"figures/{self.filename}"


_FIGURES: dict[str, FigureSpec] = {}


def figure(filename: str) -> Callable[[Callable[..., Figure]], Callable[..., Figure]]:
    """Decorator: register the decorated function as the figure written to ``filename`` (a ``.png`` name)."""
    if not isinstance(filename, str) or not filename.endswith(".png") or "/" in filename:
        raise ValueError(f"filename: expected a bare .png file name, got {filename!r}")

    def register(draw: Callable[..., Figure]) -> Callable[..., Figure]:
        previous = _FIGURES.get(filename)
        if previous is not None and (previous.module, previous.draw.__qualname__) != (draw.__module__,
                                                                                       draw.__qualname__):
            raise ValueError(f"filename: {filename} is already drawn by {previous.module}")
        _FIGURES[filename] = FigureSpec(filename, draw, draw.__module__)
        return draw

    return register


def figures() -> list[FigureSpec]:
    """Every registered figure, by file name."""
    return [_FIGURES[k] for k in sorted(_FIGURES)]


def get_figure(name: str) -> FigureSpec:
    """The figure registered as ``name`` (``x.png`` or ``figures/x.png``)."""
    key = name.removeprefix("figures/")
    if key not in _FIGURES:
        raise ValueError(f"name: unknown figure {name!r}; registered: {sorted(_FIGURES)}")
    return _FIGURES[key]


def plot(names: Iterable[str], out_dir: str | pathlib.Path, evidence: Evidence) -> list[pathlib.Path]:
    """Draw the figures ``names`` from ``evidence`` into ``out_dir``; return the paths written."""
    specs = [get_figure(n) for n in names]
    for spec in specs:
        check_needs(spec.filename, spec.needs)
    out = pathlib.Path(out_dir)
    paths = []
    for spec in tqdm(specs, desc="figures", disable=not evidence.config.show_progress, leave=False):
        with mpl.rc_context(RC):
            fig = resolve_call(spec.draw, evidence)
        if not isinstance(fig, Figure):
            raise TypeError(f"draw: {spec.filename}'s function returned {type(fig).__name__}, not a Figure")
        paths.append(save(fig, out / spec.filename))
    return paths


def plot_all(out_dir: str | pathlib.Path, evidence: Evidence | None = None, config: RunConfig | None = None
             ) -> list[pathlib.Path]:
    """Draw every registered figure into ``out_dir`` (one :class:`Evidence` for all of them)."""
    evidence = evidence if evidence is not None else Evidence(config or RunConfig())
    return plot([s.filename for s in figures()], out_dir, evidence)


for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "style":
        importlib.import_module(f"{__name__}.{_module.name}")
