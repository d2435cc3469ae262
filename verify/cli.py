"""``cfgtruth``: the command line. Thin: it parses, seeds, and wires configuration to pure functions.

Commands
--------
``cfgtruth run [--out DIR] [--quick] [--seed N]``
    Evaluate every claim, write ``DIR/ledger.json``, ``DIR/ledger.md`` and ``DIR/figures/``.
``cfgtruth figures [--out DIR] [--checkpoints DIR]``
    Regenerate the committed figures (default ``figures/``), the network figures from the shipped checkpoints.
``cfgtruth proofs``
    Run the sympy proofs of ``proofs/`` and print each residual; exit 1 if any result is not the expected one.
``cfgtruth train --world NAME [--preset default|ablation|imperfect|small] [--steps N] [--p-uncond P] [--out PATH] ...``
    Train the cross-attention network on a world (DSM, conditioning dropout, AdamW, EMA), measure its score error
    and write ``PATH.safetensors`` + ``PATH.json`` (default ``checkpoints/NAME``). Under ``torchrun`` it runs
    data-parallel; rank 0 writes.
``cfgtruth audit MODULE:FUNCTION``
    Audit a CFG combiner ``combine(eps_uncond, eps_cond, guidance_scale, *, x, alpha, sigma)`` against the analytic
    guided prediction; exit 0 if it passes, 1 with the failed checks otherwise.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Sequence

import torch

__all__ = ["main"]


def _cmd_run(args: argparse.Namespace) -> int:
    from verify.claims import RunConfig, evaluate_all
    from verify.figures import plot_worlds
    from verify.report import ledger_table, write_ledger

    config = RunConfig(quick=args.quick, seed=args.seed, show_progress=not args.no_progress,
                       checkpoints=args.checkpoints)
    torch.manual_seed(args.seed)  # nothing should draw from it; seeded so that a stray draw is still reproducible
    start = time.perf_counter()
    records = evaluate_all(config)
    json_path, md_path = write_ledger(records, args.out, config)
    figure = plot_worlds(pathlib.Path(args.out) / "figures" / "worlds.png", seed=args.seed)
    table = ledger_table(records)
    print(table)
    if args.update_readme:
        _replace_between_markers(pathlib.Path(args.update_readme), "ledger", table)
    print(f"\nwrote {json_path}, {md_path} and {figure} in {time.perf_counter() - start:.1f} s")
    return 0


def _replace_between_markers(path: pathlib.Path, name: str, text: str) -> None:
    """Replace what stands between ``<!-- name -->`` and ``<!-- /name -->`` in ``path``."""
    content = path.read_text(encoding="utf-8")
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if begin not in content or end not in content:
        raise SystemExit(f"--update-readme: {path} has no {begin} ... {end} markers")
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{text}\n{end}{tail}", encoding="utf-8")


def _cmd_figures(args: argparse.Namespace) -> int:
    from verify.figures import plot_all
    from verify.figures_network import plot_network_all

    for path in [*plot_all(args.out), *plot_network_all(args.out, args.checkpoints)]:
        print(f"wrote {path}")
    return 0


def _cmd_proofs(args: argparse.Namespace) -> int:
    import proofs

    results = proofs.run_all()
    print(proofs.format_results(results))
    return 0 if all(r.as_expected for r in results) else 1


def _cmd_audit(args: argparse.Namespace) -> int:
    from verify.audit import audit_command

    return audit_command(args.target)


def _cmd_train(args: argparse.Namespace) -> int:
    from toy_models import get_world
    from toy_models.neural import config_from_preset, save_checkpoint, score_error_table, train
    from toy_models.neural.training import card_facts

    config = config_from_preset(args.world, args.preset, steps=args.steps, batch_size=args.batch_size,
                                p_uncond=args.p_uncond, width=args.width, depth=args.depth, heads=args.heads,
                                learning_rate=args.learning_rate, seed=args.seed, target_error=args.target_error,
                                schedule=args.schedule)
    result = train(config, device=args.device, show_progress=not args.no_progress)
    if result.world_size > 1:
        import torch.distributed as dist

        rank = dist.get_rank()
        dist.destroy_process_group()
        if rank != 0:
            return 0
    error = score_error_table(result.denoiser, get_world(args.world), n=args.eval_n, seed=args.seed + 1)
    out = args.out or f"checkpoints/{args.world}"
    weights, card = save_checkpoint(out, result.denoiser, card_facts(result, error))
    print(f"{args.world}: {result.steps_done} steps on {result.device} x {result.world_size} in "
          f"{result.wall_time_s:.1f} s ({result.samples_per_s:,.0f} samples/s); relative score error "
          f"{error['pooled_relative_error']:.4f} pooled, {error['rms_relative_error']:.4f} rms over t")
    if result.time_to_target_s is not None:
        print(f"reached {config.target_error:g} after {result.time_to_target_s:.1f} s of training")
    print(f"wrote {weights} and {card}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cfgtruth", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="evaluate every claim and write the ledger")
    run.add_argument("--out", default="results", help="output folder (default: results)")
    run.add_argument("--quick", action="store_true", help="smaller grids for a smoke run (same tolerances)")
    run.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: 0)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--checkpoints", metavar="DIR", help="trained networks to check (default: checkpoints/)")
    run.add_argument("--update-readme", metavar="PATH", help="also write the ledger table into PATH between "
                     "<!-- ledger --> markers (how README.md's table is kept true)")
    run.set_defaults(func=_cmd_run)
    figs = sub.add_parser("figures", help="regenerate the committed figures")
    figs.add_argument("--out", default="figures", help="output folder (default: figures)")
    figs.add_argument("--checkpoints", metavar="DIR", help="trained networks to draw (default: checkpoints/)")
    figs.set_defaults(func=_cmd_figures)
    sub.add_parser("proofs", help="run the sympy proofs and print each residual").set_defaults(func=_cmd_proofs)
    tr = sub.add_parser("train", help="train the cross-attention network on a world and write a checkpoint")
    tr.add_argument("--world", required=True, help="world name (ring2d, attributes2d, tokens16d, ...)")
    tr.add_argument("--preset", default="default", choices=["default", "ablation", "imperfect", "small"],
                    help="default (what ships), ablation, imperfect, small (seconds on a CPU)")
    tr.add_argument("--out", help="checkpoint path without suffix (default: checkpoints/WORLD)")
    for flag, kind in (("--steps", int), ("--batch-size", int), ("--p-uncond", float), ("--width", int),
                       ("--depth", int), ("--heads", int), ("--learning-rate", float), ("--target-error", float)):
        tr.add_argument(flag, type=kind, help="override the preset's value")
    tr.add_argument("--schedule", help="noise schedule (default: vp-linear)")
    tr.add_argument("--seed", type=int, default=0, help="seed of initialisation and data (default: 0)")
    tr.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available, under torchrun the local rank)")
    tr.add_argument("--eval-n", type=int, default=2048, help="points per (t, condition) for the card's score error")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.set_defaults(func=_cmd_train)
    audit = sub.add_parser("audit", help="audit a CFG combiner MODULE:FUNCTION against the analytic prediction")
    audit.add_argument("target", help="MODULE:FUNCTION, e.g. mypkg.guidance:combine")
    audit.set_defaults(func=_cmd_audit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
