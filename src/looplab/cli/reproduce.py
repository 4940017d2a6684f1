"""`looplab reproduce` and `looplab diff`: run a recorded run again and check it, or compare two.

    looplab reproduce RUN_ID                    # the same config again; exit 0 when every
                                                # epoch of every metric is bitwise the same
    looplab reproduce RUN_ID --tolerance 1e-6   # relative, for runs across devices
    looplab reproduce RUN_ID train.lr=0.05      # a derived run: changed, not compared
    looplab diff RUN_A RUN_B                    # what differs, and nothing else

The config comes from the run's `config.yaml` artifact in the store, read as plain YAML and
checked against the schema (`run.config_file.from_record`), never from local files. The new run is
trained by `looplab-train` in a child process, exactly as a user's run, tagged
`looplab.reproduced_from` (or `looplab.derived_from`) through the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from looplab.cli import add_trust
from looplab.cli.differences import (
    compare_histories,
    recorded_differences,
    report,
    run_choices,
    text_table,
)
from looplab.core.errors import EXIT_FAILED, TrackingError
from looplab.run.tags import CHOICES, CODE, OVERRIDES, ROLE, RUN_NAME, STACK_SIZE

if TYPE_CHECKING:
    from mlflow.entities import Run
    from omegaconf import DictConfig

REPRODUCED_FROM, DERIVED_FROM, REPRODUCTION = (
    "looplab.reproduced_from",
    "looplab.derived_from",
    "looplab.reproduction",
)


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    reproduce = commands.add_parser(
        "reproduce",
        parents=[common],
        help="rerun a run from the store, checked epoch by epoch",
        description="Read RUN_ID's config from the MLflow store alone, train it again as a new "
        "run tagged looplab.reproduced_from=RUN_ID, and compare every metric at every epoch. "
        "Exit 0 when the histories are identical (within --tolerance), 1 otherwise, with the "
        "first epochs that differ and the recorded differences that explain it. With "
        "key=value changes, the new run is tagged looplab.derived_from=RUN_ID and not compared.",
    )
    reproduce.add_argument("run_id", metavar="RUN_ID")
    reproduce.add_argument(
        "changes", nargs="*", metavar="key=value", help="changes: a derived run, not compared"
    )
    reproduce.add_argument(
        "--tolerance",
        type=_tolerance,
        default=None,
        metavar="REL",
        help="largest relative difference taken as equal (default: 0, bitwise; a run trained "
        "in a stack: its dtype's stacking tolerance)",
    )
    add_trust(reproduce)
    reproduce.set_defaults(run=reproduce_command)

    diff = commands.add_parser(
        "diff",
        parents=[common],
        help="what differs between two runs, and nothing else",
        description="One table of what differs between two runs: config values, group "
        "choices, versions, commit and dirty state, data digest, device and threads, then "
        "the final and best value of each metric. What is the same is not printed.",
    )
    diff.add_argument("run_a", metavar="RUN_A")
    diff.add_argument("run_b", metavar="RUN_B")
    diff.set_defaults(run=diff_command)


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} is not allowed: it must be >= 0")
    return value


# --- reproduce ---------------------------------------------------------------------------------


def reproduce_command(args: argparse.Namespace) -> int:
    from looplab.launch.overrides import with_overrides
    from looplab.launch.schema import register
    from looplab.run.config_file import from_record
    from looplab.tracking import reader, records

    register()
    uri, experiment = args.tracking_uri, args.experiment
    original = reader.get_run(uri, experiment, args.run_id)
    _check_reproducible(original, compared=not args.changes)
    source = f"config.yaml of run {args.run_id}"
    recorded = from_record(records.config_text(uri, original), source, args.trust)
    note_changed_code(original, recorded)
    edited = edited_keys(original, recorded)
    cfg = with_overrides(recorded, list(args.changes)) if args.changes else recorded
    tag = DERIVED_FROM if args.changes else REPRODUCED_FROM
    asked = asked_for(original, args.changes)
    if args.changes:
        name = derived_name(cfg, json.loads(asked[CHOICES]).get("experiment"))
    else:
        name = f"{original.info.run_name or args.run_id} (reproduced)"
    tags = {tag: args.run_id, RUN_NAME: name, **asked}
    exit_code, new = _train(cfg, uri, experiment, tags)
    if new is None:
        raise TrackingError(
            f"the rerun of {args.run_id} did not start (looplab-train exited {exit_code}; "
            "see its message above)"
        )
    print()
    if args.changes:
        print(
            f"derived run {new.info.run_id} from {args.run_id} ({' '.join(args.changes)}): "
            f"{new.info.status}; not compared (it was changed)"
        )
        return exit_code
    reproduced = records.histories(uri, new)
    tolerance = args.tolerance if args.tolerance is not None else stacked_tolerance(original, cfg)
    differences = compare_histories(records.histories(uri, original), reproduced, tolerance)
    epochs = max((len(points) for points in reproduced.values()), default=0)
    print(report(original, new, differences, edited, tolerance, epochs))
    return EXIT_FAILED if differences or new.info.status != original.info.status else 0


def stacked_tolerance(run: Run, cfg: DictConfig) -> float:
    """0 (bitwise), unless the run was trained in a stack (hydra/launcher=stacked): it is
    rerun alone, whose batched arithmetic rounded otherwise; then its dtype's tolerance."""
    from looplab.launch.stacks import TOLERANCE

    size = run.data.tags.get(STACK_SIZE)
    if not size:
        return 0.0
    tolerance = TOLERANCE[str(cfg.train.dtype)]
    print(
        f"run {run.info.run_id} was trained in a stack of {size} (hydra/launcher=stacked); "
        f"rerun alone, it is compared within {tolerance:g} (relative), what batched "
        f"arithmetic in {cfg.train.dtype} may differ by"
    )
    return tolerance


def note_changed_code(run: Run, cfg: DictConfig) -> None:
    """Say which of the user's packages the run used have changed since (by the digest of
    their sources, `looplab.code`): a rerun then trains today's code, not the run's."""
    from looplab.launch.parts import code_record, targets

    try:
        then = json.loads(run.data.tags.get(CODE, "{}"))
    except json.JSONDecodeError:
        then = {}
    now = code_record(targets(cfg)) if then else {}
    for package, recorded in sorted(then.items()):
        if now.get(package) != recorded:
            print(
                f"note: {package} has changed since run {run.info.run_id}: "
                f"{recorded} then, {now.get(package, 'not found')} now; the rerun trains "
                "it as it is now",
                file=sys.stderr,
            )


def asked_for(run: Run, changes: list[str]) -> dict[str, str]:
    """The rerun's overrides and group choices: the original's, with the changes on top (the
    rerun's own Hydra sees only a finished config, with no groups to choose)."""
    from looplab.launch.overrides import is_group

    try:
        overrides = json.loads(run.data.tags.get(OVERRIDES, "[]"))
    except json.JSONDecodeError:
        overrides = []
    choices = run_choices(run)
    for line in changes:
        key, _, value = line.partition("=")
        if is_group(key):
            choices[key] = value
    return {
        OVERRIDES: json.dumps([*overrides, *changes]),
        CHOICES: json.dumps(choices, sort_keys=True),
    }


def derived_name(cfg: DictConfig, preset: str | None) -> str:
    """A derived run's name, as `looplab-train` would name its config: the preset (or the
    data set), then what differs from the preset's own config."""
    from hydra import initialize_config_dir

    from looplab.core.paths import config_dir
    from looplab.launch.schema import baseline
    from looplab.run.naming import run_name

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return run_name(cfg, baseline(preset), preset)


def _check_reproducible(run: Run, compared: bool) -> None:
    """A sweep's parent trains nothing; a run still going (or stopped) has no whole history."""
    run_id = run.info.run_id
    if run.data.tags.get(ROLE) == "sweep":
        raise TrackingError(
            f"run {run_id} is a sweep's parent, which trains nothing: reproduce one of its "
            f"jobs (looplab runs --sweep {run_id} lists them)"
        )
    if compared and run.info.status not in ("FINISHED", "FAILED"):
        raise TrackingError(
            f"run {run_id} is {run.info.status}: its history is not complete, so there is "
            "nothing to compare with (key=value changes start a derived run from it)"
        )


def edited_keys(run: Run, cfg: DictConfig) -> list[tuple[str, str, str]]:
    """(key, the run's param, its config.yaml's value) wherever the two disagree: the config
    artifact was changed in the store after the run recorded its params."""
    from looplab.run.naming import params

    logged = run.data.params
    return [
        (key, logged[key], value)
        for key, value in params(cfg).items()
        if key in logged and not key.startswith("tracking.") and logged[key] != value
    ]


def quoted(value: str) -> str:
    """A value for Hydra's command line, quoted so that any character survives."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _train(
    cfg: DictConfig, uri: str, experiment: str, tags: dict[str, str]
) -> tuple[int, Run | None]:
    """Train `cfg` with `looplab-train` in a child process, recorded in `uri`/`experiment`;
    its exit code and its new run (None when it never started one)."""
    from looplab.tracking import records

    nonce = uuid.uuid4().hex
    exit_code = train_in_child(
        cfg,
        [
            "tracking.enabled=true",
            f"tracking.uri={quoted(uri)}",
            f"tracking.experiment={quoted(experiment)}",
            "tracking.skip_finished=false",  # it would find the very run it reproduces
        ],
        {"LOOPLAB_RUN_TAGS": json.dumps({**tags, REPRODUCTION: nonce})},
    )
    return exit_code, records.find_tagged(uri, experiment, REPRODUCTION, nonce)


def train_in_child(cfg: DictConfig, overrides: list[str], env: dict[str, str]) -> int:
    """`looplab-train` on `cfg` (a finished config: no groups to choose) with `overrides`,
    in a child process with `env` added; its exit code. `looplab reproduce` and `looplab
    resume` train this way, exactly as a user's run."""
    from looplab.run.config_file import rerunnable

    with tempfile.TemporaryDirectory(prefix="looplab-rerun-") as folder:
        (Path(folder) / "config.yaml").write_text(rerunnable(cfg), encoding="utf-8")
        command = [
            sys.executable,
            "-m",
            "looplab.cli.train",
            "--config-dir",
            folder,
            "--config-name",
            "config",
            *overrides,
        ]
        sys.stdout.flush()
        child_env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **env}
        child = subprocess.Popen(command, env=child_env)
        # The child takes Ctrl-C from the terminal itself and closes its run (a checkpoint,
        # the run's end): this process waits for it rather than kill it; SIGTERM and SIGHUP
        # sent to this process alone are passed on.
        handlers = {
            signal.SIGINT: signal.SIG_IGN,
            signal.SIGTERM: lambda signum, _frame: child.send_signal(signum),
            signal.SIGHUP: lambda signum, _frame: child.send_signal(signum),
        }
        previous = {signum: signal.signal(signum, h) for signum, h in handlers.items()}
        try:
            return child.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


# --- diff --------------------------------------------------------------------------------------


def diff_command(args: argparse.Namespace) -> int:
    from looplab.tracking import reader

    uri, experiment = args.tracking_uri, args.experiment
    run_a = reader.get_run(uri, experiment, args.run_a)
    run_b = reader.get_run(uri, experiment, args.run_b)
    rows = recorded_differences(run_a, run_b, args.tracking_uri)
    if not rows:
        print(f"runs {args.run_a} and {args.run_b} recorded nothing that differs")
        return 0
    names = [
        f"A {run_a.info.run_name or args.run_a}",
        f"B {run_b.info.run_name or args.run_b}",
    ]
    print(text_table([["what", *names], *rows]))
    return 0
