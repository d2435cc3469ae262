r"""Evidence providers: the computations the claims and the figures read, each computed once per run.

A provider is a function registered with :func:`provider`; its name is the function's name, its result a typed,
frozen dataclass (never a prose-keyed dict). Its parameters say what it needs: ``config`` is the run's
:class:`~verify.config.RunConfig`, every other parameter names another provider, whose result is passed in::

    @provider
    def cfg_laws_1d(config: RunConfig) -> CFGLaws1D: ...

    @provider
    def overshoot(config: RunConfig, cfg_laws_1d: CFGLaws1D) -> Overshoot: ...

:class:`Evidence` is one run's cache: ``Evidence(config).get("cfg_laws_1d")`` computes the provider and what it
needs, once, and hands the same object to every claim (:mod:`verify.claims`) and every figure
(:mod:`verify.figures`) that asks for it. Claims and figures declare their needs the same way, by parameter name,
so a misspelt need is an error before anything is computed (:func:`check_needs`), not after a two-minute run.

Every module of this package whose name does not start with ``_`` is imported with the package, so a new provider
file registers itself (``docs/extending.md``).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import pkgutil
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from verify.config import RunConfig

__all__ = ["RunConfig", "Provider", "provider", "providers", "needs_of", "check_needs", "Evidence", "to_json",
           "resolve_call"]

F = TypeVar("F", bound=Callable[..., Any])

#: parameters that are not providers: the run's configuration
RESERVED = ("config",)


@dataclasses.dataclass(frozen=True)
class Provider:
    """A registered computation: its name, its function, the providers it reads, and its module."""

    name: str
    function: Callable[..., Any]
    needs: tuple[str, ...]
    module: str

    @property
    def doc(self) -> str:
        return inspect.getdoc(self.function) or ""


_PROVIDERS: dict[str, Provider] = {}


def needs_of(function: Callable[..., Any]) -> tuple[str, ...]:
    """The providers a function reads: its parameter names other than ``config``, in order."""
    params = inspect.signature(function).parameters.values()
    bad = [p.name for p in params if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if bad:
        raise TypeError(f"function: {function.__qualname__} takes *args/**kwargs ({bad}); name each need")
    return tuple(p.name for p in inspect.signature(function).parameters.values() if p.name not in RESERVED)


def provider(function: F) -> F:
    """Decorator: register ``function`` as the provider named ``function.__name__``."""
    if not callable(function):
        raise TypeError(f"function: expected a callable, got {function!r}")
    name = function.__name__
    entry = Provider(name, function, needs_of(function), function.__module__)
    if name in _PROVIDERS and _PROVIDERS[name].function is not function:
        other = _PROVIDERS[name]
        if (other.module, other.function.__qualname__) != (entry.module, function.__qualname__):  # not a reload
            raise ValueError(f"function: a provider named {name!r} is already registered in {other.module}")
    _PROVIDERS[name] = entry
    return function


def providers() -> dict[str, Provider]:
    """Every registered provider by name (a copy)."""
    return dict(_PROVIDERS)


def check_needs(owner: str, needs: Iterable[str]) -> None:
    """Raise ``ValueError`` naming ``owner`` when one of ``needs`` is not a registered provider."""
    unknown = sorted(set(needs) - set(_PROVIDERS))
    if unknown:
        raise ValueError(f"needs: {owner} reads unknown providers {unknown}; registered: {sorted(_PROVIDERS)}")


class Evidence:
    """One run's evidence: each provider computed at most once for ``config``, on first request.

    ``timings`` records each provider's own wall time in seconds (its needs excluded), in the order computed.
    """

    def __init__(self, config: RunConfig | None = None):
        if config is not None and not isinstance(config, RunConfig):
            raise TypeError(f"config: expected a RunConfig, got {type(config).__name__}")
        self.config = config or RunConfig()
        self._results: dict[str, Any] = {}
        self._active: list[str] = []
        self.timings: dict[str, float] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._results

    def get(self, name: str) -> Any:
        """The result of provider ``name``, computing it (and what it needs) if this run has not yet."""
        if name in self._results:
            return self._results[name]
        if name not in _PROVIDERS:
            raise ValueError(f"name: unknown provider {name!r}; registered: {sorted(_PROVIDERS)}")
        if name in self._active:
            raise RuntimeError(f"providers: circular needs {' -> '.join([*self._active, name])}")
        entry = _PROVIDERS[name]
        self._active.append(name)
        try:
            kwargs = self.arguments(entry.function)
            start = time.perf_counter()
            result = entry.function(**kwargs)
            self.timings[name] = time.perf_counter() - start
        finally:
            self._active.pop()
        self._results[name] = result
        return result

    def arguments(self, function: Callable[..., Any]) -> dict[str, Any]:
        """The keyword arguments ``function`` is called with: ``config`` and each provider it names."""
        names = inspect.signature(function).parameters
        check_needs(getattr(function, "__qualname__", repr(function)), needs_of(function))
        return {n: (self.config if n == "config" else self.get(n)) for n in names}

    def prefetch(self, names: Iterable[str], jobs: int) -> None:
        """Compute the providers ``names`` (and what they need) in ``jobs`` worker processes, and keep their results
        here as if :meth:`get` had computed them; ``jobs <= 1`` computes them here, one after the other.

        Results do not depend on where or in which order a provider runs: every provider is a function of the
        configuration and of the providers it names, and draws only from generators it seeds itself (the ledger's
        tests compare a parallel run with a sequential one). Workers are spawned (not forked: a forked copy of an
        OpenMP thread pool can hang), run one intra-op thread each, and take the next provider as soon as they are
        free, the providers taken in dependency order; a need another worker computed is computed again where it is
        needed (results are returned, not shared), so a few cheap shared needs run twice. ``timings`` holds the time
        each provider took in its worker."""
        todo = [n for n in self.closure(names) if n not in self._results]
        if jobs <= 1 or len(todo) <= 1:
            for name in todo:
                self.get(name)
            return
        import multiprocessing

        from tqdm.auto import tqdm

        context = multiprocessing.get_context("spawn")
        pool = context.Pool(jobs, initializer=_start_worker,
                            initargs=(dataclasses.replace(self.config, show_progress=False),))
        try:
            results = pool.imap_unordered(_compute_in_worker, todo)
            for name, result, seconds in tqdm(results, total=len(todo), desc="evidence",
                                              disable=not self.config.show_progress, leave=False):
                self._results[name] = result
                self.timings[name] = seconds
            pool.close()
        except BaseException:
            pool.terminate()  # an error or Ctrl-C: stop the workers now, not after the providers still queued
            raise
        finally:
            pool.join()

    def closure(self, needs: Iterable[str]) -> list[str]:
        """``needs`` and everything they need, each once, dependencies first."""
        order: list[str] = []

        def visit(name: str, path: tuple[str, ...]) -> None:
            if name in order:
                return
            if name in path:
                raise RuntimeError(f"providers: circular needs {' -> '.join([*path, name])}")
            check_needs(path[-1] if path else "request", [name])
            for dep in _PROVIDERS[name].needs:
                visit(dep, (*path, name))
            order.append(name)

        for n in needs:
            visit(n, ())
        return order


#: a worker process's own evidence (:meth:`Evidence.prefetch`)
_WORKER: Evidence | None = None


def _start_worker(config: RunConfig) -> None:
    global _WORKER
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers
    torch.set_num_threads(1)
    _WORKER = Evidence(config)


def _compute_in_worker(name: str) -> tuple[str, Any, float]:
    assert _WORKER is not None
    result = _WORKER.get(name)
    return name, result, _WORKER.timings[name]


def resolve_call(function: Callable[..., Any], evidence: Evidence) -> Any:
    """Call ``function`` with the evidence it names (``config`` and providers)."""
    return function(**evidence.arguments(function))


def to_json(value: Any) -> Any:
    """A provider result as JSON-ready data: dataclasses become dicts, tuples lists, tensors and arrays lists,
    non-finite floats strings (JSON has no inf or NaN)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist):  # torch tensors, numpy arrays and scalars
        return to_json(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
