"""Robustness suite: a hostile-but-fair fuzz of cfgtruth's public API (issue part 6).

Runs the case generators of ``tests/fuzz_cases.py`` (spread evenly over the APIs, plus one case per known bug) and
prints, per API, how many cases were refused clearly, correct, wrong, NaN, or raised another exception.

    python benchmarks/robustness.py                      # 3080 cases, seed 0
    python benchmarks/robustness.py --cases 6000 --seed 3 --show-failures 2 --strict

The package is imported from the current directory (or PYTHONPATH) when it holds ``toy_models``, so a worktree of
an older commit can be measured with this script: ``cd /tmp/old && PYTHONPATH=/tmp/old python
/path/to/benchmarks/robustness.py``. The path used is printed first.
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import sys
import time

_HERE = pathlib.Path(__file__).resolve().parent
_REPO = _HERE.parent


def _setup_path() -> None:
    cwd = pathlib.Path.cwd()
    root = cwd if (cwd / "toy_models").is_dir() else None
    if root is None:
        for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
            if entry and (pathlib.Path(entry) / "toy_models").is_dir():
                root = pathlib.Path(entry).resolve()
                break
    if root is None:
        root = _REPO
    sys.path.insert(0, str(root))
    # the generators live beside this script's repository's tests, not the measured tree's
    sys.path.insert(1, str(_REPO / "tests"))


_setup_path()

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

import fuzz_cases as fz  # noqa: E402

import toy_models  # noqa: E402

COLUMNS = ("cases", fz.REFUSED, fz.CORRECT, fz.WRONG, fz.NAN, fz.OTHER)


def run(n_cases: int, seed: int, progress: bool = True):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        def tqdm(it, **kw):
            return it

    plan = [(fz.APIS[i % len(fz.APIS)], seed * 1_000_003 + i // len(fz.APIS)) for i in range(n_cases)]
    cases = []
    results = []
    known = fz.known_bug_cases()
    started = time.time()
    try:
        for api, s in tqdm(plan, desc="robustness", disable=not progress, mininterval=1.0):
            try:
                case = fz.make_case(api, s)
            except Exception as err:  # a generator bug must not hide the rest of the table
                case = fz.Case(api, f"generator error {err!r}", lambda: None, fz.Oracle(), "")
                results.append((case, fz.OTHER, f"case generator failed: {type(err).__name__}: {err}"))
                continue
            outcome, detail = fz.judge(case)
            results.append((case, outcome, detail))
        for case in known:
            outcome, detail = fz.judge(case)
            results.append((case, outcome, detail))
    finally:
        fz.cleanup_tmp()
    del cases
    return results, time.time() - started


def table(results) -> str:
    counts: dict[str, collections.Counter] = {api: collections.Counter() for api in fz.APIS}
    for case, outcome, _ in results:
        counts.setdefault(case.api, collections.Counter())
        counts[case.api]["cases"] += 1
        counts[case.api][outcome] += 1
    total = collections.Counter()
    for c in counts.values():
        total.update(c)
    width = max(len(a) for a in counts) + 2
    head = f"{'API':<{width}}" + "".join(f"{c:>17}" for c in COLUMNS)
    lines = [head, "-" * len(head)]
    for api, c in counts.items():
        lines.append(f"{api:<{width}}" + "".join(f"{c[col]:>17}" for col in COLUMNS))
    lines.append("-" * len(head))
    lines.append(f"{'total':<{width}}" + "".join(f"{total[col]:>17}" for col in COLUMNS))
    return "\n".join(lines)


def failures(results, k: int) -> str:
    by_api: dict[str, list] = collections.defaultdict(list)
    for case, outcome, detail in results:
        if outcome in (fz.WRONG, fz.NAN, fz.OTHER):
            by_api[case.api].append((case, outcome, detail))
    out = []
    for api in list(fz.APIS) + sorted(set(by_api) - set(fz.APIS)):
        items = by_api.get(api)
        if not items:
            continue
        out.append(f"\n=== {api}: {len(items)} failing cases; up to {k} shortest reproducers, one per failure kind ===")
        seen = set()
        for case, outcome, detail in sorted(items, key=lambda it: len(it[0].repro)):
            key = (outcome, case.description.split(" ")[1] if " " in case.description else case.description,
                   detail.split(":")[0][:60])
            if key in seen:
                continue
            seen.add(key)
            out.append(f"--- [{outcome}] {case.description}\n    {detail}\n" +
                       "\n".join("    " + line for line in case.repro.splitlines()))
            if len(seen) >= k:
                break
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=3080, help="number of generated cases (default 3080: 140 per API)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show-failures", type=int, default=0, metavar="K",
                    help="print up to K minimal reproducers per failing API")
    ap.add_argument("--strict", action="store_true", help="exit 1 if any case is wrong, NaN or another exception")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    print(f"package: toy_models from {pathlib.Path(toy_models.__file__).resolve().parent}")
    print(f"cases: {args.cases} generated + {len(fz.known_bug_cases())} known-bug cases, seed {args.seed}, "
          f"torch {torch.__version__}, numpy {np.__version__}, 1 thread")
    results, seconds = run(args.cases, args.seed, progress=not args.no_progress)
    print(table(results))
    print(f"({seconds:.0f} s)")
    if args.show_failures:
        print(failures(results, args.show_failures))
    bad = sum(1 for _, outcome, _ in results if outcome in (fz.WRONG, fz.NAN, fz.OTHER))
    return 1 if args.strict and bad else 0


if __name__ == "__main__":
    sys.exit(main())
