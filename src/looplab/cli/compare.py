"""`looplab runs` and `looplab plot`: a sweep's (or an experiment's) runs side by side.

Which runs: `--sweep PARENT_RUN_ID` (a sweep's jobs), `--last` (the newest sweep's jobs),
`--runs ID ...` (plot only), or by default every training run of the experiment (sweep
parents left out: they train nothing, their jobs are listed).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from looplab.core.errors import TrackingError

LOST_AFTER_SECONDS = 300.0  # as reader.LOST_AFTER_SECONDS (not imported: --help stays instant)


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    runs = commands.add_parser(
        "runs",
        parents=[common],
        help="a table of runs: what varies, final and best metrics, duration",
        description="Print one row per run: the params that vary between the runs, each "
        "metric's final and best value, the duration and the run id. Without --sweep or "
        "--last: every training run of the experiment (sweep parents left out).",
    )
    _which_sweep(runs)
    runs.add_argument("--csv", metavar="FILE", type=Path, help="also write the table as CSV")
    runs.add_argument(
        "--over",
        action="append",
        default=[],
        metavar="KEY",
        help="one row per group of FINISHED runs that differ only in KEY (e.g. seed; "
        "repeatable): the count, and each final and best metric's mean and std",
    )
    runs.add_argument(
        "--lost-after",
        type=float,
        default=LOST_AFTER_SECONDS,
        metavar="SECONDS",
        help="a RUNNING run whose writer's heartbeat (every 30 s) is older than this is LOST: "
        "its machine or its processes died (default: %(default)g)",
    )
    runs.add_argument(
        "--reap",
        action="store_true",
        help="first mark every LOST run of the experiment KILLED, tagged looplab.reaped",
    )
    runs.set_defaults(run=runs_command)

    plot = commands.add_parser(
        "plot",
        parents=[common],
        help="per-epoch curves of one metric, one line per run, as a PNG",
        description="Draw one metric per epoch, one line per run, labelled by the params "
        "that vary between the runs.",
    )
    plot.add_argument("--metric", default="train_loss", help="default: %(default)s")
    which = _which_sweep(plot)
    which.add_argument("--runs", nargs="+", metavar="ID", help="these run ids")
    plot.add_argument("--out", required=True, type=Path, metavar="FILE.png")
    plot.add_argument(
        "--over",
        action="append",
        default=[],
        metavar="KEY",
        help="one mean curve (+-1 std band) per group of FINISHED runs that differ only in "
        "KEY (e.g. seed; repeatable)",
    )
    plot.set_defaults(run=plot_command)


def _which_sweep(parser: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--sweep", metavar="PARENT_RUN_ID", help="the jobs of this sweep")
    which.add_argument("--last", action="store_true", help="the jobs of the newest sweep")
    return which


def select_runs(args: argparse.Namespace) -> list:
    """The runs the options name; never empty (an empty choice is the user's error)."""
    from looplab.tracking import reader

    uri, experiment = args.tracking_uri, args.experiment
    parent = args.sweep
    if args.last:
        parent = reader.last_sweep(uri, experiment)
        if parent is None:
            raise TrackingError(
                f"no sweep in experiment {experiment!r} of {uri}: run one with looplab-train -m"
            )
    runs = reader.find_runs(
        uri, experiment, parent_run_id=parent, run_ids=getattr(args, "runs", None)
    )
    if not runs:
        what = f"sweep {parent} has no jobs" if parent else f"experiment {experiment!r} has no runs"
        raise TrackingError(f"{what} in {uri}")
    return runs


def runs_command(args: argparse.Namespace) -> int:
    from looplab.tracking import reader, tables

    if args.lost_after <= 0:
        raise TrackingError(f"--lost-after {args.lost_after:g}: it must be > 0 seconds")
    if args.reap:
        reaped = reader.reap_lost(args.tracking_uri, args.experiment, args.lost_after)
        for run in reaped:
            print(f"reaped: {run.info.run_name} ({run.info.run_id}): KILLED, it was lost")
        if not reaped:
            print("reaped: no lost runs")
    table = tables.runs_table(select_runs(args), args.tracking_uri, lost_after_s=args.lost_after)
    if args.over:
        table = tables.grouped_table(table, args.over)
    print(tables.format_table(table))
    if args.csv:
        tables.write_table_csv(table, args.csv)
    return 0


def plot_command(args: argparse.Namespace) -> int:
    from looplab.tracking import tables

    runs = select_runs(args)
    figure = tables.plot_curves(runs, args.metric, args.out, args.tracking_uri, args.over)
    drawn = len(figure.axes[0].get_lines())
    what = f"{drawn} groups of" if args.over else f"{drawn} of"
    print(f"{args.out}: {args.metric} by epoch for {what} {len(runs)} runs")
    return 0
