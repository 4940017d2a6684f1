"""`looplab resume`: go on with a run that stopped, in the same MLflow run, from its checkpoint.

    looplab resume RUN_ID                  # its folder's checkpoint, else the store's copy
    looplab resume outputs/runs/DATE/TIME  # a run's folder (an offline run among them)

The run's own config (its folder's `config.yaml`, or the store's) is trained by `looplab-train`
in a child process, as `looplab reproduce` does, told the checkpoint by LOOPLAB_RESUME.
`looplab-train` also resumes by itself: from a checkpoint in its own folder (a job that SLURM
requeued runs again there: `checkpoint_here`), and, with `tracking.skip_finished=true`, from
a stopped run of the same config and data (`stopped_runs_checkpoint`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from looplab.cli import add_trust
from looplab.core.errors import TrackingError
from looplab.core.paths import CHECKPOINT_FILE, shown
from looplab.run.tags import ROLE, RUN_DIR, RUN_NAME
from looplab.tracking.checkpoints import DOWNLOADED

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from looplab.core.checkpoint import Checkpoint

# The checkpoint `looplab resume` hands to the `looplab-train` it starts.
RESUME_VARIABLE = "LOOPLAB_RESUME"


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    resume = commands.add_parser(
        "resume",
        parents=[common],
        help="go on with a stopped run from its checkpoint, in the same MLflow run",
        description="Continue RUN_ID (KILLED, FAILED, or RUNNING with its process gone) from "
        "its checkpoint: the one in its folder when this machine has it, else the copy the "
        "run sent to the store when it stopped. The same MLflow run goes on, RUNNING again, "
        "from the next epoch; the result is bitwise what an uninterrupted run gives. A run "
        "FOLDER works too, for a run recorded offline.",
    )
    resume.add_argument("target", metavar="RUN_ID|FOLDER")
    add_trust(resume)
    resume.set_defaults(run=resume_command)


def resume_command(args: argparse.Namespace) -> int:
    from looplab.cli.reproduce import quoted, train_in_child

    folder = Path(args.target)
    if folder.is_dir():
        cfg, checkpoint, overrides = _from_folder(folder, args.trust)
        env: dict[str, str] = {}
    else:
        cfg, checkpoint, overrides, name = _from_store(
            args.tracking_uri, args.experiment, args.target, args.trust
        )
        env = {"LOOPLAB_RUN_TAGS": json.dumps({RUN_NAME: name})}
    try:
        where = [f"hydra.run.dir={quoted(str(checkpoint.parent))}"]
        if checkpoint.parent.name.startswith(DOWNLOADED):
            where = []  # from the store alone: a new folder, as looplab-train makes one
        return train_in_child(cfg, where + overrides, {**env, RESUME_VARIABLE: str(checkpoint)})
    finally:
        if checkpoint.parent.name.startswith(DOWNLOADED):
            shutil.rmtree(checkpoint.parent, ignore_errors=True)


def _from_folder(folder: Path, trust: list[str]) -> tuple[DictConfig, Path, list[str]]:
    """A run's folder: its checkpoint and config; it goes on where its config records."""
    from looplab.run.config_file import from_record
    from looplab.tracking.record import RECORD_FILE, RunRecord

    checkpoint = folder.resolve() / CHECKPOINT_FILE
    if (folder / RECORD_FILE).is_file() and RunRecord.load(folder).status == "FINISHED":
        raise TrackingError(f"the run in {shown(folder)} is FINISHED: there is nothing to resume")
    if not checkpoint.is_file():
        raise TrackingError(
            f"{shown(folder)} has no {CHECKPOINT_FILE}: the run stopped before its first "
            "checkpoint (checkpoint.every_s, checkpoint.every_epochs), or it is not a run's "
            "folder; train it again with looplab-train"
        )
    from looplab.core.checkpoint import load
    from looplab.run.checkpoints import trainer_gone

    saved = load(checkpoint)
    alive = saved.run.get("host") == socket.gethostname() and not trainer_gone(saved)
    recorded = (folder / RECORD_FILE).is_file() and RunRecord.load(folder).status
    if recorded == "RUNNING" and alive:
        raise TrackingError(
            f"the run in {shown(folder)} is still training (process {saved.run.get('pid')}): "
            "stop it (Ctrl-C or SIGTERM leave a checkpoint), then resume it"
        )
    config = folder / "config.yaml"
    if not config.is_file():
        raise TrackingError(f"{shown(folder)} has no config.yaml: it is not a run's folder")
    cfg = from_record(config.read_text(encoding="utf-8"), str(config), trust)
    return cfg, checkpoint, ["tracking.skip_finished=false"]


def _from_store(
    uri: str, experiment: str, run_id: str, trust: list[str]
) -> tuple[DictConfig, Path, list[str], str]:
    """A run in the store: its checkpoint (its folder's, else the store's copy) and its
    config; it goes on in the same store and experiment."""
    from looplab.cli.reproduce import quoted
    from looplab.run.config_file import from_record
    from looplab.tracking import reader, records, store
    from looplab.tracking.checkpoints import SILENT_AFTER_SECONDS, checkpoint_of

    run = reader.get_run(uri, experiment, run_id)
    status = run.info.status
    if run.data.tags.get(ROLE) == "sweep":
        raise TrackingError(
            f"run {run_id} is a sweep's parent, which trains nothing: launch the sweep again "
            "with tracking.skip_finished=true (its stopped jobs resume), or resume one of its "
            f"jobs (looplab runs --sweep {run_id} lists them)"
        )
    if status == "FINISHED":
        raise TrackingError(
            f"run {run_id} is FINISHED: there is nothing to resume (`looplab reproduce "
            f"{run_id}` trains it again and compares)"
        )
    with store.command_settings():
        checkpoint = checkpoint_of(reader.client(uri), run)
    if checkpoint is None:
        where = run.data.tags.get(RUN_DIR, "its folder")
        raise TrackingError(
            f"run {run_id} has no checkpoint (none in {where}, none in the store): it stopped "
            "before its first one; `looplab reproduce "
            f"{run_id} checkpoint.every_epochs=1` trains its config again from epoch 1"
        )
    if status == "RUNNING" and not reader.is_lost(run, SILENT_AFTER_SECONDS):
        from looplab.core.checkpoint import load
        from looplab.run.checkpoints import trainer_gone

        if not trainer_gone(load(checkpoint)):
            raise TrackingError(
                f"run {run_id} is RUNNING and its process was heard from less than 90 s ago: "
                "it may still be training; stop it (Ctrl-C or SIGTERM leave a checkpoint), "
                "then resume it"
            )
    config = checkpoint.parent / "config.yaml"
    text = (
        config.read_text(encoding="utf-8")
        if not checkpoint.parent.name.startswith(DOWNLOADED) and config.is_file()
        else records.config_text(uri, run)
    )
    cfg = from_record(text, f"config.yaml of run {run_id}", trust)
    overrides = [
        "tracking.enabled=true",
        "tracking.offline=false",
        f"tracking.uri={quoted(uri)}",
        f"tracking.experiment={quoted(experiment)}",
        "tracking.skip_finished=false",
    ]
    return cfg, checkpoint, overrides, run.info.run_name or run_id


def checkpoint_here(output_dir: Path) -> Checkpoint | None:
    """The checkpoint `looplab-train` goes on from, if any: the one `looplab resume` names,
    else one in the run's own folder (a job run again there: SLURM's requeue)."""
    from looplab.core.checkpoint import load

    asked = os.environ.get(RESUME_VARIABLE)
    if asked:
        return load(Path(asked))
    own = output_dir / CHECKPOINT_FILE
    return load(own) if own.is_file() else None


def stopped_runs_checkpoint(tracker: Any, digests: tuple[str, str]) -> Checkpoint | None:
    """With `tracking.skip_finished=true`: the checkpoint of a stopped run of the same config
    and data (`digests`: config identity, data digest), if the store knows one."""
    from looplab.core.checkpoint import load

    _run_id, path = tracker.find_interrupted(*digests)
    if path is None:
        return None
    checkpoint = load(Path(path))
    if Path(path).parent.name.startswith(DOWNLOADED):
        with contextlib.suppress(OSError):
            shutil.rmtree(Path(path).parent)
    return checkpoint


def resumed_explicitly() -> bool:
    """`looplab resume` started this run: the run keeps the overrides it was asked with."""
    return bool(os.environ.get(RESUME_VARIABLE))
