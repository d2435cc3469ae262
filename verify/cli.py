"""``cfgtruth``: the command line. Thin: it parses, checks what the user gave, and wires it to pure functions.

Commands
--------
``cfgtruth run [--out DIR] [--quick] [--seed N] [--claim ID ...] [--checkpoints DIR] [--update-readme PATH] [--jobs N]``
    Evaluate every claim (or only the ``--claim`` ones, with just the evidence they need), write
    ``DIR/ledger.json``, ``DIR/ledger.md`` and, in ``DIR/figures/``, the figures the records name, drawn from the
    same evidence.
``cfgtruth figures [--out DIR] [--seed N] [--checkpoints DIR]``
    Regenerate every registered figure (default ``figures/``) from one run of the evidence providers.
``cfgtruth proofs``
    Run the sympy proofs of ``proofs/`` and print each residual; exit 1 if any result is not the expected one.
``cfgtruth train --world NAME [--preset NAME] [--steps N] [--p-uncond P] [--max-seconds S] [--out PATH] ...``
    Train the cross-attention network on a world (DSM, conditioning dropout, AdamW, EMA), measure its score error
    and write ``PATH.safetensors`` + ``PATH.json`` (default ``checkpoints/NAME``). Presets: default, ablation,
    imperfect, small, and for image worlds (which need a patch size) image, image-gpu, image-small.
    ``--max-seconds`` caps the training time. Under ``torchrun`` it runs data-parallel; rank 0 writes.
``cfgtruth audit MODULE:FUNCTION [--rule NAME] [--param KEY=VALUE ...] [--json FILE] [--timeout SECONDS]``
    Audit a function (a CFG combiner ``combine(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma)`` or a
    dict-of-branches function) against a registered rule (default ``cfg``) with a diagnosis
    (:mod:`verify.conformance`); ``--diffusers-guider CLASS`` audits a diffusers guider, ``--diffusers-scheduler
    CLASS [--steps N] [--world NAME]`` gives the law a diffusers scheduler produces. Exit 0 if everything conforms,
    1 with findings, 3 if the time runs out (default 300 s; ``--timeout 0``: no limit), after one line naming the
    step that was running.

Exit status
-----------
0 success (the audit: the combiner conforms); 1 findings (failed audit checks, a proof not as expected);
2 usage errors; 3 the audit's time ran out (:data:`verify.audit.EXIT_TIMEOUT`); 130 interrupted (Ctrl-C).

Errors
------
Every usage or input error (a bad option value, an unknown world, CUDA requested on a machine without it, an output
folder that cannot be written, a combiner that cannot be loaded, a malformed checkpoint) prints ONE line to stderr,
``cfgtruth <command>: <message>``, and exits 2, without a traceback. The inputs are checked before any long work
starts: a ``ValueError``/``TypeError`` raised while the command turns its arguments into a configuration is such
an error (its leading field name is shown as the option, ``--p-uncond: ...``). Exceptions raised later, by the
work itself, are bugs and keep their traceback. ``--debug`` (before or after the command) re-raises instead of
printing the one line.

Outputs and Ctrl-C
------------------
``run`` and ``figures`` write everything into a hidden staging folder inside the output folder and move each file
into place with ``os.replace`` only when all of it is done (Ctrl-C deferred for those few milliseconds); ``run``
removes the old ``ledger.json`` first and moves the new one last, so a ``ledger.json`` on disk always belongs to a
complete run. ``train`` writes the checkpoint atomically (:func:`toy_models.neural.save_checkpoint`). On Ctrl-C a
command removes what it had staged, prints one line (``interrupted; nothing written`` or ``interrupted; partial
outputs removed``) and exits 130.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn, TypeVar

import torch

__all__ = ["main", "UsageError", "EXIT_OK", "EXIT_FINDINGS", "EXIT_USAGE", "EXIT_TIMEOUT", "EXIT_INTERRUPTED"]

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
STAGING_PREFIX = ".cfgtruth-partial-"
T = TypeVar("T")


def _process_started() -> float:
    """The ``time.monotonic()`` reading at which this process started (Linux ``/proc``; now where unknown; at most
    60 s ago), so that ``cfgtruth audit --timeout 5`` counts the interpreter's start-up and torch's import too."""
    try:
        fields = pathlib.Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_s = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of proc(5): start time after boot
        uptime_s = float(pathlib.Path("/proc/uptime").read_text().split()[0])
        return time.monotonic() - min(max(uptime_s - start_s, 0.0), 60.0)
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic()


class UsageError(Exception):
    """A user error: reported as one line ``cfgtruth <command>: <message>`` with exit status 2."""


class _Interrupted(Exception):
    """Ctrl-C, after the command cleaned up; the message says what is left on disk."""


# --------------------------------------------------------------------------------------------------------------
# argument checking
# --------------------------------------------------------------------------------------------------------------
def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _user_input(action: Callable[[], T], options: dict[str, str] | None = None) -> T:
    """``action()``; a ``ValueError``/``TypeError`` it raises is a usage error. A leading ``field:`` of the message
    that is an option's destination in ``options`` is shown as the option (``p_uncond:`` -> ``--p-uncond:``)."""
    try:
        return action()
    except (ValueError, TypeError) as err:
        message = _one_line(err)
        field, sep, rest = message.partition(": ")
        if sep and options and field in options:
            message = f"{options[field]}: {rest}"
        raise UsageError(message) from err


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


_positive_int.__name__ = "positive integer"


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**32:
        raise ValueError(text)
    return value


_seed.__name__ = "seed (an integer in [0, 2^32))"


def _seconds(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(text)
    return value


_seconds.__name__ = "number of seconds (>= 0)"


def _writable_dir(path: pathlib.Path, option: str) -> list[pathlib.Path]:
    """Make sure ``path`` is (or can become) a writable directory: create what is missing and write a probe file.

    Returns the directories it created (outermost first), so that an interrupted command can remove them again.
    """
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option}: {path} exists and is not a directory")
    created = []
    for parent in reversed([path, *path.parents]):
        if not parent.exists():
            created.append(parent)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        _remove_empty(created)
        raise UsageError(f"{option}: cannot write into {path} ({err.strerror or err})") from err
    return created


def _remove_empty(created: list[pathlib.Path]) -> None:
    """Remove directories this command created, innermost first, if they are still empty."""
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _checkpoint_folder(text: str | None, option: str = "--checkpoints") -> str | None:
    """``--checkpoints DIR``: an existing folder laid out like ``checkpoints/`` whose checkpoints all load.

    Every checkpoint the ledger or the figures would read is loaded here, so that a malformed one is a usage error
    before the long run, not a traceback in the middle of it. Without the option the default folder (``./checkpoints``
    or the repository's) is checked the same way, except that it may lack checkpoints (their claims stay pending);
    returns ``text`` unchanged.
    """
    from toy_models.neural import load_checkpoint
    from verify.evidence.network import MAIN, P_UNCOND, default_checkpoints

    folder = pathlib.Path(text) if text is not None else default_checkpoints()
    label = option if text is not None else f"the default checkpoints (no {option})"
    if not folder.is_dir():
        if text is None:
            return None
        raise UsageError(f"{option}: {folder} is not a directory")
    names = [*MAIN, *(f"ablation/ring2d_p{p}" for p in P_UNCOND), "imperfect/ring2d"]
    found = 0
    for name in names:
        weights, card = folder / f"{name}.safetensors", folder / f"{name}.json"
        if weights.is_file() != card.is_file():
            have, lack = (weights, card) if weights.is_file() else (card, weights)
            raise UsageError(f"{label}: {have} has no {lack.name} beside it (a checkpoint is both files)")
        if weights.is_file():
            try:
                load_checkpoint(folder / name)
            except ValueError as err:
                raise UsageError(f"{label}: {_one_line(err)}") from err
            found += 1
    if not found and text is not None:
        raise UsageError(f"{option}: {folder} holds none of the checkpoints {', '.join(names)} "
                         "(each NAME.safetensors beside NAME.json)")
    return text


# --------------------------------------------------------------------------------------------------------------
# writing outputs: staging, atomic replacement, Ctrl-C
# --------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[list[bool]]:
    """Hold Ctrl-C (SIGINT) off for the block; yields a one-element list that is ``[True]`` if one arrived.

    Only the main thread can install signal handlers; elsewhere the block runs unprotected.
    """
    received = [False]
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def hold(signum, frame):
        received[0] = True

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous)


class _Staging:
    """A hidden folder inside ``out`` where a command writes; :meth:`commit` moves every file into ``out``.

    Leaving the ``with`` block without a commit (an exception, Ctrl-C) removes the staging folder and the folders
    this command created for ``out``.
    """

    def __init__(self, out: pathlib.Path, option: str):
        self.out, self.option = out, option
        self.created: list[pathlib.Path] = []
        self.path: pathlib.Path | None = None
        self.committed = False
        self.removed_files = False

    def __enter__(self) -> _Staging:
        self.created = _writable_dir(self.out, self.option)
        self.path = pathlib.Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.out))
        return self

    def __exit__(self, *exc_info) -> None:
        if self.path is not None and self.path.exists():
            self.removed_files = any(p.is_file() for p in self.path.rglob("*"))
            shutil.rmtree(self.path, ignore_errors=True)
        if not self.committed:
            _remove_empty(self.created)

    def commit(self, last: str | None = None, extra: dict[pathlib.Path, str] | None = None) -> list[pathlib.Path]:
        """Move every staged file to the same place under ``out`` (``last``, a relative path, is removed from
        ``out`` first and moved last) and write ``extra`` files atomically; Ctrl-C waits until it is done.
        Returns the final paths."""
        assert self.path is not None
        files = sorted(p for p in self.path.rglob("*") if p.is_file())
        first = [p for p in files if last is None or p.relative_to(self.path) != pathlib.Path(last)]
        final = [p for p in files if p not in first]
        moved = []
        with _deferred_interrupt() as interrupted:
            if last is not None:
                (self.out / last).unlink(missing_ok=True)
            for path in [*first, *final]:
                target = self.out / path.relative_to(self.path)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
                moved.append(target)
            for target, text in (extra or {}).items():
                _atomic_write_text(target, text)
            self.committed = True
        if interrupted[0]:
            raise _Interrupted("the outputs were complete and are kept")
        return moved

    def left(self) -> str:
        """What an interruption leaves (called after the staging folder was removed)."""
        return "partial outputs removed" if self.removed_files else "nothing written"


def _atomic_write_text(path: pathlib.Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then ``os.replace`` it onto ``path``."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(name, path)
    except BaseException:
        pathlib.Path(name).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _interruptible(what_is_left: Callable[[], str]) -> Iterator[None]:
    """Turn Ctrl-C in the block into :class:`_Interrupted` with ``what_is_left()`` (called after cleanup)."""
    try:
        yield
    except KeyboardInterrupt:
        raise _Interrupted(what_is_left()) from None


# --------------------------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------------------------
def _claim_ids(given: list[str] | None) -> list[str] | None:
    """``--claim ID`` (repeatable): declared claim ids, or None for every claim."""
    if not given:
        return None
    from verify.claims import get_claim

    for claim_id in given:
        try:
            get_claim(claim_id)
        except ValueError as err:
            raise UsageError(f"--claim: {_one_line(err).removeprefix('claim_id: ')}") from err
    return list(dict.fromkeys(given))


def _default_jobs() -> int:
    """The CPU count (at most 4: the providers' peak memory is about 1 GB each)."""
    return max(1, min(4, os.cpu_count() or 1))


def _cmd_run(args: argparse.Namespace) -> int:
    from verify.claims import RunConfig, evaluate
    from verify.evidence import Evidence
    from verify.figures import plot
    from verify.report import ledger_table, write_ledger

    ids = _claim_ids(args.claim)
    if ids is not None and args.update_readme:
        raise UsageError("--update-readme: the README's table needs every claim; drop --claim")
    checkpoints = _checkpoint_folder(args.checkpoints)
    readme = _readme(args.update_readme) if args.update_readme else None
    config = RunConfig(quick=args.quick, seed=args.seed, show_progress=not args.no_progress, checkpoints=checkpoints)
    torch.manual_seed(args.seed)  # nothing should draw from it; seeded so that a stray draw is still reproducible
    start = time.perf_counter()
    staging = _Staging(pathlib.Path(args.out), "--out")
    with _interruptible(staging.left), staging:
        evidence = Evidence(config)  # one run's providers, shared by the claims and their figures
        records = evaluate(config, ids, evidence, jobs=args.jobs)
        write_ledger(records, staging.path, config)
        names = list(dict.fromkeys(f for r in records for f in r.figures))
        figures = plot(names, staging.path / "figures", evidence)
        table = ledger_table(records)
        extra = {readme[0]: _replace_between_markers_text(readme[1], "ledger", table)} if readme else None
        staging.commit(last="ledger.json", extra=extra)
    print(table)
    out = pathlib.Path(args.out)
    print(f"\nwrote {out / 'ledger.json'}, {out / 'ledger.md'} and {len(figures)} figures in {out / 'figures'}"
          + (f", updated {readme[0]}" if readme else "") + f" in {time.perf_counter() - start:.1f} s")
    return EXIT_OK


def _readme(text: str) -> tuple[pathlib.Path, str]:
    """``--update-readme PATH``: an existing UTF-8 file with ``<!-- ledger -->`` ... ``<!-- /ledger -->``."""
    path = pathlib.Path(text)
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--update-readme: cannot read {path} as UTF-8 text ({_one_line(err)})") from err
    try:
        _replace_between_markers_text(content, "ledger", "")
    except ValueError as err:
        raise UsageError(f"--update-readme: {path}: {err}") from err
    return path, content


def _replace_between_markers_text(content: str, name: str, text: str) -> str:
    """``content`` with what stands between ``<!-- name -->`` and ``<!-- /name -->`` replaced by ``text``."""
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if begin not in content or end not in content:
        raise ValueError(f"no {begin} ... {end} markers")
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{text}\n{end}{tail}"


def _replace_between_markers(path: pathlib.Path, name: str, text: str) -> None:
    """Replace what stands between ``<!-- name -->`` and ``<!-- /name -->`` in ``path`` (atomically)."""
    content = path.read_text(encoding="utf-8")
    try:
        new = _replace_between_markers_text(content, name, text)
    except ValueError as err:
        raise UsageError(f"--update-readme: {path}: {err}") from err
    _atomic_write_text(path, new)


def _cmd_figures(args: argparse.Namespace) -> int:
    from verify.claims import RunConfig
    from verify.figures import plot_all

    checkpoints = _checkpoint_folder(args.checkpoints)
    config = RunConfig(seed=args.seed, show_progress=not args.no_progress, checkpoints=checkpoints)
    staging = _Staging(pathlib.Path(args.out), "--out")
    with _interruptible(staging.left), staging:
        plot_all(staging.path, config=config)
        paths = staging.commit()
    for path in paths:
        print(f"wrote {path}")
    return EXIT_OK


def _cmd_proofs(args: argparse.Namespace) -> int:
    import proofs

    with _interruptible(lambda: "nothing written"):
        results = proofs.run_all()
    print(proofs.format_results(results))
    return EXIT_OK if all(r.as_expected for r in results) else EXIT_FINDINGS


def _cmd_audit(args: argparse.Namespace) -> int:
    from verify.audit import SpecError
    from verify.conformance.command import audit_target_command, parse_params, prepare

    try:  # the request is checked before any work: a bad one is a usage error
        params = parse_params(args.param)
        prepared = prepare(target=args.target, guider=args.diffusers_guider, scheduler=args.diffusers_scheduler,
                           rule=args.rule, params=params, steps=args.steps, world=args.world)
        if args.json:
            _writable_file(args.json, "--json")
    except (ValueError, TypeError) as err:
        raise UsageError(_one_line(err)) from err
    try:
        with _interruptible(lambda: "nothing written"):
            return audit_target_command(prepared, timeout=args.timeout or None,
                                        show_progress=False if args.no_progress else None, hard_exit=True,
                                        started=args.started, json_path=args.json, all_checks=args.all)
    except SpecError as err:  # MODULE:FUNCTION is loaded under the time limit (an import may hang)
        raise UsageError(_one_line(err)) from err


def _writable_file(path: str, option: str) -> None:
    parent = pathlib.Path(path).resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ValueError(f"{option}: cannot write {path!r} (no writable folder {str(parent)!r})")


def _cmd_train(args: argparse.Namespace, options: dict[str, str]) -> int:
    from toy_models import get_world
    from toy_models.neural import config_from_preset, save_checkpoint, score_error_table, train
    from toy_models.neural.checkpoint import checkpoint_paths
    from toy_models.neural.training import card_facts, resolve_device

    config = _user_input(lambda: config_from_preset(
        args.world, args.preset, steps=args.steps, batch_size=args.batch_size, p_uncond=args.p_uncond,
        width=args.width, depth=args.depth, heads=args.heads, learning_rate=args.learning_rate, seed=args.seed,
        target_error=args.target_error, schedule=args.schedule, patch=args.patch, max_seconds=args.max_seconds,
        eval_every=args.eval_every), options)
    device = _user_input(lambda: resolve_device(args.device), options)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if config.batch_size % world_size:
        raise UsageError(f"--batch-size: {config.batch_size} does not split over the {world_size} processes of "
                         "this torchrun")
    out = pathlib.Path(args.out or f"checkpoints/{args.world}")
    if out.is_dir():
        raise UsageError(f"--out: {out} is a directory; give a path without suffix, NAME, to write "
                         "NAME.safetensors and NAME.json")
    weights, card_path = checkpoint_paths(out)
    created = _writable_dir(weights.parent, "--out")

    def left() -> str:
        _remove_empty(created)
        return "nothing written"

    with _interruptible(left):
        result = train(config, device=device, show_progress=not args.no_progress)
        if result.world_size > 1:
            import torch.distributed as dist

            rank = dist.get_rank()
            dist.destroy_process_group()
            if rank != 0:
                return EXIT_OK
        error = score_error_table(result.denoiser, get_world(args.world), n=args.eval_n, seed=args.seed + 1)
        facts = card_facts(result, error)
        with _deferred_interrupt() as interrupted:
            weights, card_path = save_checkpoint(out, result.denoiser, facts)
    print(f"{args.world}: {result.steps_done} steps on {result.device} x {result.world_size} in "
          f"{result.wall_time_s:.1f} s ({result.samples_per_s:,.0f} samples/s); relative score error "
          f"{error['pooled_relative_error']:.4f} pooled, {error['rms_relative_error']:.4f} rms over t")
    if result.time_to_target_s is not None:
        print(f"reached {config.target_error:g} after {result.time_to_target_s:.1f} s of training")
    print(f"wrote {weights} and {card_path}")
    if interrupted[0]:
        raise _Interrupted("the checkpoint was complete and is kept")
    return EXIT_OK


# --------------------------------------------------------------------------------------------------------------
# parser and entry point
# --------------------------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``cfgtruth <command>: <message>``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {_one_line(message)}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cfgtruth", description=__doc__.split("\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="exit status: 0 success, 1 findings, 2 usage error, 3 audit timed out, 130 interrupted")
    debug = {"action": "store_true", "help": "show the traceback of an error instead of one line"}
    parser.add_argument("--debug", **debug)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        p = sub.add_parser(name, **kwargs)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug["help"])
        return p

    run = command("run", help="evaluate every claim and write the ledger")
    run.add_argument("--out", default="results", help="output folder (default: results)")
    run.add_argument("--quick", action="store_true", help="smaller grids for a smoke run (same tolerances)")
    run.add_argument("--seed", type=_seed, default=0, help="seed of every random draw (default: 0)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--checkpoints", metavar="DIR", help="trained networks to check (default: checkpoints/)")
    run.add_argument("--claim", action="append", metavar="ID",
                     help="evaluate only this claim and the evidence it needs (repeatable)")
    run.add_argument("--update-readme", metavar="PATH", help="also write the ledger table into PATH between "
                     "<!-- ledger --> markers (how README.md's table is kept true)")
    run.add_argument("--jobs", type=_positive_int, default=_default_jobs(),
                     help="processes computing the evidence (default: the CPU count, at most 4; the results do not "
                          "depend on it)")
    run.set_defaults(func=_cmd_run)
    figs = command("figures", help="regenerate the committed figures")
    figs.add_argument("--out", default="figures", help="output folder (default: figures)")
    figs.add_argument("--checkpoints", metavar="DIR", help="trained networks to draw (default: checkpoints/)")
    figs.add_argument("--seed", type=_seed, default=0, help="seed of every random draw (default: 0)")
    figs.add_argument("--no-progress", action="store_true", help="no progress bars")
    figs.set_defaults(func=_cmd_figures)
    command("proofs", help="run the sympy proofs and print each residual").set_defaults(func=_cmd_proofs)
    tr = command("train", help="train the cross-attention network on a world and write a checkpoint")
    tr.add_argument("--world", required=True, help="world name (ring2d, attributes2d, tokens16d, ...)")
    tr.add_argument("--preset", default="default",
                    choices=["default", "ablation", "imperfect", "small", "image", "image-gpu", "image-small"],
                    help="default (what ships), ablation, imperfect, small (seconds on a CPU); image worlds: image "
                         "(the shipped CPU one), image-gpu, image-small (seconds on a CPU)")
    tr.add_argument("--out", help="checkpoint path without suffix (default: checkpoints/WORLD)")
    for flag, kind in (("--steps", int), ("--batch-size", int), ("--p-uncond", float), ("--width", int),
                       ("--depth", int), ("--heads", int), ("--learning-rate", float), ("--target-error", float),
                       ("--patch", int), ("--max-seconds", float), ("--eval-every", int)):
        tr.add_argument(flag, type=kind, help="override the preset's value")
    tr.add_argument("--schedule", help="noise schedule (default: vp-linear)")
    tr.add_argument("--seed", type=int, default=0, help="seed of initialisation and data (default: 0)")
    tr.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available, under torchrun the local rank)")
    tr.add_argument("--eval-n", type=_positive_int, default=2048,
                    help="points per (t, condition) for the card's score error")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    options = {a.dest: a.option_strings[0] for a in tr._actions if a.option_strings}
    tr.set_defaults(func=lambda args: _cmd_train(args, options))
    audit = command("audit", help="audit guidance code against a registered rule: a function, a diffusers guider "
                                  "or a diffusers scheduler",
                    epilog="exit status: 0 everything conforms, 1 findings, 2 usage error (the target cannot be "
                           "loaded, an unknown rule, a bad --param), 3 the time ran out (the line on stderr names "
                           "the step that was running)")
    audit.add_argument("target", nargs="?", help="MODULE:FUNCTION, e.g. mypkg.guidance:combine")
    audit.add_argument("--rule", help="the registered rule to audit against (default: cfg; see docs/rules.md)")
    audit.add_argument("--param", action="append", metavar="KEY=VALUE",
                       help="a parameter of the rule (of the guider's constructor with --diffusers-guider); "
                            "repeatable; VALUE is a Python literal")
    audit.add_argument("--diffusers-guider", metavar="CLASS", help="audit diffusers.guiders.CLASS instead")
    audit.add_argument("--diffusers-scheduler", metavar="CLASS",
                       help="give the law diffusers.CLASS produces with exact guided predictions instead")
    audit.add_argument("--steps", type=_positive_int, default=50, help="scheduler steps (default: 50)")
    audit.add_argument("--world", help="world of the scheduler audit (default: gauss1d)")
    audit.add_argument("--json", metavar="FILE", help="write the full result as JSON")
    audit.add_argument("--all", action="store_true", help="print every check, not only the failing ones")
    audit.add_argument("--timeout", type=_seconds, default=300.0, metavar="SECONDS",
                       help="stop after this many seconds, import included, and exit 3 naming the running step "
                            "(default: 300; 0: no limit)")
    audit.add_argument("--no-progress", action="store_true", help="no progress bar (default: one on a terminal)")
    audit.set_defaults(func=_cmd_audit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status (argparse's own errors exit 2 through ``SystemExit``).

    ``argv=None`` means the command line (``sys.argv``): time limits then count from the process's start.
    """
    started = _process_started() if argv is None else time.monotonic()  # None: the command line
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    args.started = started
    prog = f"cfgtruth {args.command}"
    if extra:
        parser.exit(EXIT_USAGE, f"{prog}: unrecognized arguments: {' '.join(extra)}\n")
    try:
        return args.func(args)
    except UsageError as err:
        if args.debug:
            raise (err.__cause__ or err) from None
        print(f"{prog}: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except _Interrupted as err:
        print(f"{prog}: interrupted; {err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # before any output was begun
        if args.debug:
            raise
        print(f"{prog}: interrupted; nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
