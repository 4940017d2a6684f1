"""`looplab`: compare recorded runs and browse them, beside `looplab-train` which makes them.

    looplab runs --last                   # the newest sweep's jobs, one row each
    looplab plot --last --metric val_loss --out val_loss.png
    looplab ui                            # MLflow's UI on the runs view of the experiment
    looplab reproduce RUN_ID              # run it again from the store, checked epoch by epoch
    looplab resume RUN_ID                 # go on with a stopped run from its checkpoint
    looplab diff RUN_A RUN_B              # what differs between two runs
    looplab runs --reap                   # runs whose machine died: marked KILLED
    looplab predict RUN_ID new.csv        # score rows with a run's logged MLflow model
    looplab register RUN_ID NAME          # a Model Registry version of it (a sweep: its best)
    looplab sync outputs/runs/DATE/TIME   # an offline run (or one an outage missed) to a store
    looplab server                        # MLflow's tracking server for tracking=server

One module per family of verbs (`compare`: runs, plot; `ui`: ui; `reproduce`: reproduce,
diff; `resume`: resume; `models`: predict, register; `sync`: sync; `server`: server); each
adds its subcommands and a function to run them. MLflow is read only through
`looplab.tracking.reader`, imported when a command runs, so that `looplab --help` answers at
once. Errors the user can fix are one `looplab: error: ...` line and exit code 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from looplab.cli.teardown import skip_teardown
from looplab.core.errors import EXIT_FAILED, EXIT_INTERRUPTED, LooplabError


def common_options() -> argparse.ArgumentParser:
    """--tracking-uri and --experiment, the same for every command."""
    from looplab.tracking.store import DEFAULT_EXPERIMENT, default_store_uri

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--tracking-uri",
        default=default_store_uri(),
        metavar="URI",
        help="the MLflow store (default: sqlite:///./outputs/mlflow.db, as looplab-train)",
    )
    common.add_argument(
        "--experiment",
        default=DEFAULT_EXPERIMENT,
        help="the MLflow experiment (default: %(default)s)",
    )
    return common


def add_trust(parser: argparse.ArgumentParser) -> None:
    """--trust PACKAGE: a recorded run's `_target_`s are imported and run only when asked."""
    parser.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="PACKAGE",
        help="let the run's parts name classes or functions of your own PACKAGE "
        "(model._target_=PACKAGE.nets.Net): they are imported and run; without it, a run "
        "that names them is refused",
    )


def build_parser() -> argparse.ArgumentParser:
    from looplab.cli import compare, models, reproduce, resume, server, sync, ui

    parser = argparse.ArgumentParser(
        prog="looplab",
        description="Compare, browse, reproduce, resume and sync the runs looplab-train "
        "recorded in MLflow; run a tracking server.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = common_options()
    compare.add_commands(commands, common)
    ui.add_commands(commands, common)
    reproduce.add_commands(commands, common)
    resume.add_commands(commands, common)
    models.add_commands(commands, common)
    sync.add_commands(commands, common)
    server.add_commands(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a LooplabError becomes one line on stderr and exit code 1."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # see cli/train.py
    try:
        return args.run(args)
    except LooplabError as error:
        print(f"looplab: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def command() -> int:
    """The `looplab` script: `main`, then an exit without Python's collection of the heap
    (cli/teardown.py). Tests call `main` in their own process, which must not be frozen."""
    try:
        return main()
    finally:
        skip_teardown()
