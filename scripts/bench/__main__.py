"""`python -m bench` (what `make bench` runs): measure the groups, write the table.

Only a full run of every group replaces docs/benchmarks.*; --quick and --only runs go to
outputs/, so a smoke run never overwrites the published figures.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

from bench import harness
from bench.harness import QUICK, ROOT, Row, Settings

GROUPS = (
    "loop",
    "tracking",
    "reference",
    "peers",
    "console",
    "startup",
    "minibatch",
    "sweep",
    "checkpoint",
    "pruning",
    "stacked",
    "scaling",
    "cuda",
)


def run_group(name: str, cfg: Settings, work: Path) -> list[Row]:
    """One group's rows: each group is the module of that name, imported when it runs."""
    return importlib.import_module(f"bench.{name}").rows(cfg, work)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="looplab's benchmark: ratios measured side by side"
    )
    parser.add_argument("--quick", action="store_true", help="one repeat, small sizes: a smoke run")
    parser.add_argument("--out", type=Path, help="where benchmarks.md/json go (default docs/)")
    parser.add_argument("--only", nargs="+", choices=GROUPS, metavar="GROUP", help=" ".join(GROUPS))
    parser.add_argument(
        "--render-from",
        type=Path,
        metavar="JSON",
        help="measure nothing: rewrite benchmarks.md from a saved benchmarks.json",
    )
    # Children of the bench itself: a scaling point, the console's unbuffered process.
    parser.add_argument("--point", nargs=3, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--console-child", nargs=3, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse()
    if args.render_from:
        harness.render_from(args.render_from, args.out or args.render_from.parent)
        return
    import torch

    from looplab.run.prepare import torch_threads

    torch.set_num_threads(torch_threads())  # as looplab-train sets them
    if args.point:
        from bench.scaling import scaling_point

        print(json.dumps(scaling_point(*args.point)))
        return
    if args.console_child:
        from bench.console import child_main

        out, budget, repeats = args.console_child
        child_main(Path(out), float(budget), int(repeats))
        return
    cfg = QUICK if args.quick else Settings()
    default_out = (
        "outputs/bench-only" if args.only else "outputs/bench-quick" if args.quick else "docs"
    )
    out = args.out or ROOT / default_out
    work = Path(tempfile.mkdtemp(prefix="looplab-bench-"))
    started = time.perf_counter()
    rows: list[Row] = []
    try:
        for name in GROUPS:
            if args.only and name not in args.only:
                continue
            t0 = time.perf_counter()
            new = run_group(name, cfg, work)
            rows += new
            for row in new:
                print(" | ".join(row.cells()), flush=True)
            print(f"  ({name}: {time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - started
    flags = " ".join(sys.argv[1:])
    invocation = "make bench" + (f" ARGS='{flags}'" if flags else "")
    date = time.strftime("%Y-%m-%d")
    machine = harness.machine()
    text = harness.markdown(rows, harness.header(invocation, date, total, machine))
    print("\n" + text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.md").write_text(text, encoding="utf-8")
    payload = {
        "machine": machine,
        "quick": args.quick,
        "command": invocation,
        "date": date,
        "seconds": total,
        "rows": [asdict(r) | {"median": r.median, "verdict": r.verdict} for r in rows],
    }
    (out / "benchmarks.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
