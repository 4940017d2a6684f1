"""`looplab sync RUN_FOLDER...`: send runs recorded in their folders to a store.

For runs made with `tracking.offline=true`, and for online runs whose store was away at their
end (their folder is marked not synced and the run told the user this command). Idempotent:
the same run, no duplicate epochs, however often it is run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    sync = commands.add_parser(
        "sync",
        help="send run or sweep folders (offline runs, runs a store outage missed) to a store",
        description="Put the runs recorded in these folders (record.json, metrics.csv, their "
        "files) into an MLflow store as complete runs: a sweep's folder with its jobs, under "
        "its parent. Only what the store lacks is added, so syncing twice adds nothing.",
    )
    sync.add_argument("folders", nargs="+", type=Path, metavar="RUN_FOLDER")
    sync.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="the MLflow store (default: the one each run was recorded for, its tracking.uri)",
    )
    sync.add_argument(
        "--experiment", help="the MLflow experiment (default: each run's tracking.experiment)"
    )
    sync.set_defaults(run=sync_command)


def sync_command(args: argparse.Namespace) -> int:
    from looplab.tracking.store import command_settings
    from looplab.tracking.sync import sync_folders

    with command_settings():  # one retry a store call, then a one-line error; no bars
        results = sync_folders(args.folders, args.tracking_uri, args.experiment)
    failed = 0
    for done, line in results:
        if done is None:
            failed += 1
            print(f"looplab: error: {line}", file=sys.stderr, flush=True)
        else:
            print(line, flush=True)
    return 1 if failed else 0
