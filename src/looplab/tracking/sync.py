"""`looplab sync`: put run folders' records into a store as complete runs, idempotently.

A run folder's `record.json` (see record.py) and `metrics.csv` hold the run's whole record.
Syncing finds the store's run by the record's id (the `looplab.record_id` tag) or creates it,
then adds only what the store lacks: params, the parent link, the epochs whose (metric,
epoch) pairs are missing, artifacts that are not there, the closing tags, the status and end
time. Syncing twice adds nothing. A sweep's folder is synced with its jobs, parent first; a
job's folder brings its sweep's parent along.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from looplab.core.errors import TrackingError
from looplab.core.objective import best_metrics
from looplab.core.paths import CHECKPOINT_FILE
from looplab.run import tags as tag
from looplab.tracking.protocol import Epoch
from looplab.tracking.record import RECORD_FILE, RECORD_ID_TAG, RunRecord, read_epochs
from looplab.tracking.store import (
    BEST_JOB_TAG,
    BEST_RUN_ID_TAG,
    JOB_TAG,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_LENGTH,
    PARENT_TAG,
    REAPED_TAG,
    ROLE_TAG,
    SWEEP_ID_TAG,
    find_tagged,
    first_line,
    open_store,
    param_batches,
)

UNENDED_WHY = (
    "its process ended without ending the run (killed, or its machine went down); "
    "looplab sync sent what it had as KILLED"
)


@dataclass
class Synced:
    """What one folder's sync did, for the one line the command prints about it."""

    folder: Path
    run_id: str
    name: str
    created: bool
    epochs_added: int
    files_added: int
    ended: bool  # the status or end time had to be set
    unended: bool = False  # its process never ended it: sent as KILLED

    def line(self, uri: str) -> str:
        if not (self.created or self.epochs_added or self.files_added or self.ended):
            return f"{self.folder}: run {self.run_id} ({self.name}) is complete in {uri} already"
        what = "created" if self.created else "completed"
        unended = "; it never ended: sent as KILLED" if self.unended else ""
        return (
            f"{self.folder}: run {self.run_id} ({self.name}) {what} in {uri}: "
            f"{self.epochs_added} epochs, {self.files_added} files added{unended}"
        )


def load_record(folder: Path) -> RunRecord:
    if not (folder / RECORD_FILE).is_file():
        raise TrackingError(
            f"{folder}: no {RECORD_FILE} in it; give a run or sweep folder that looplab-train "
            "made (outputs/runs/DATE/TIME or outputs/sweeps/DATE/TIME)"
        )
    try:
        return RunRecord.load(folder)
    except (ValueError, TypeError, KeyError) as error:
        raise TrackingError(f"{folder / RECORD_FILE}: not a looplab record ({error})") from None


def sync_folders(
    folders: list[Path], uri: str | None, experiment: str | None
) -> list[tuple[Synced | None, str]]:
    """Sync each folder (a sweep's with its jobs); one (result, line) per run, in order. A
    folder that cannot be synced gives (None, why) and the others go on."""
    out: list[tuple[Synced | None, str]] = []
    stores: dict[tuple[str, str], tuple[Any, str]] = {}
    for folder in folders:
        folder = folder.resolve()
        try:
            record = load_record(folder)
            for job_folder, job_record, parent_folder in _with_family(folder, record):
                target = uri or job_record.uri
                exp = experiment or job_record.experiment
                if (target, exp) not in stores:
                    stores[target, exp] = _open(target, exp)
                client, exp_id = stores[target, exp]
                parent_id = None
                if parent_folder is not None:
                    parent_id = _synced_id(load_record(parent_folder), target)
                try:
                    done = sync_record(client, exp_id, target, job_folder, job_record, parent_id)
                    out.append((done, done.line(target)))
                except TrackingError as error:
                    out.append((None, str(error)))
            if record.tags.get(ROLE_TAG) == "sweep" and record.synced:
                _complete_sweep(client, record.synced["run_id"], target, exp, folder)
        except TrackingError as error:
            out.append((None, str(error)))
    return out


def _complete_sweep(client: Any, parent_id: str, uri: str, experiment: str, folder: Path) -> None:
    """What an online sweep's parent gets at its end and an offline one could not: the best
    child's run id, and the runs table and curves made from its children in the store."""
    from looplab.tracking import reader, tables

    runs = reader.find_runs(uri, experiment, parent_run_id=parent_id)
    if not runs:
        return
    parent = client.get_run(parent_id)
    best_job = parent.data.tags.get(BEST_JOB_TAG)
    best = [r for r in runs if r.data.tags.get(JOB_TAG) == best_job]
    if best and parent.data.tags.get(BEST_RUN_ID_TAG) != best[0].info.run_id:
        client.set_tag(parent_id, BEST_RUN_ID_TAG, best[0].info.run_id)
    have = {Path(f.path).name for f in client.list_artifacts(parent_id)}
    if "runs.csv" not in have:
        tables.write_table_csv(tables.runs_table(runs, uri), folder / "runs.csv")
        client.log_artifact(parent_id, str(folder / "runs.csv"))
    if "curves.png" not in have:
        try:
            tables.plot_curves(runs, "train_loss", folder / "curves.png", uri)
        except TrackingError:  # no child got to its first epoch
            return
        client.log_artifact(parent_id, str(folder / "curves.png"))


def _open(uri: str, experiment: str) -> tuple[Any, str]:
    try:
        return open_store(uri, experiment)
    except Exception as error:
        raise TrackingError(f"cannot use MLflow store {uri}: {first_line(error)}") from None


def _with_family(folder: Path, record: RunRecord) -> list[tuple[Path, RunRecord, Path | None]]:
    """The folders to sync for `folder`, parents first: (folder, record, its parent's folder)."""
    role, sweep = record.tags.get(ROLE_TAG), record.tags.get(SWEEP_ID_TAG)
    if role == "sweep":
        jobs = []
        for path in sorted(folder.rglob(RECORD_FILE)):
            if path.parent == folder:
                continue
            job = RunRecord.load(path.parent)
            if job.tags.get(SWEEP_ID_TAG) == sweep:
                jobs.append((path.parent, job, folder))
        jobs.sort(key=lambda item: int(item[1].tags.get(JOB_TAG, "0")))
        return [(folder, record, None), *jobs]
    if role == "job":
        for above in folder.parents:
            if (above / RECORD_FILE).is_file():
                parent = RunRecord.load(above)
                if parent.tags.get(SWEEP_ID_TAG) == sweep:
                    return [(above, parent, None), (folder, record, above)]
    return [(folder, record, None)]


def _synced_id(record: RunRecord, uri: str) -> str | None:
    """The run id a parent record got in `uri` (it is synced first, just before)."""
    if record.synced and record.synced.get("uri") == uri:
        return record.synced.get("run_id")
    return None


def sync_record(
    client: Any,
    exp_id: str,
    uri: str,
    folder: Path,
    record: RunRecord,
    parent_id: str | None = None,
) -> Synced:
    """Make the store's run for `record` complete; add only what it lacks."""
    from mlflow.entities import Metric, RunTag

    epochs = read_epochs(folder)  # metrics.csv, read once
    unended = record.status == "RUNNING"
    if unended:
        _end_unended(folder, record, epochs)
    run = find_tagged(client, exp_id, RECORD_ID_TAG, record.record_id)
    created = run is None
    tags = {**record.tags, RECORD_ID_TAG: record.record_id}
    if parent_id:
        tags[PARENT_TAG] = parent_id
    if run is None:
        run = client.create_run(
            exp_id, start_time=record.start_time_ms, run_name=record.name, tags=tags
        )
    run_id = run.info.run_id
    missing_params = {k: v for k, v in record.params.items() if k not in run.data.params}
    for batch in param_batches(missing_params):
        client.log_batch(run_id, params=batch)
    missing_tags = {**tags, **record.end_tags}
    missing = [  # an empty value (an offline sweep's best run id) never hides the store's
        RunTag(k, str(v)[:MAX_PARAM_LENGTH])
        for k, v in missing_tags.items()
        if run.data.tags.get(k) != str(v)[:MAX_PARAM_LENGTH]
        and not (v == "" and k in run.data.tags)
    ]
    if missing:
        client.log_batch(run_id, tags=missing)

    epochs_added = _add_epochs(client, run_id, epochs, Metric)
    _add_best(client, run_id, epochs, run.data.metrics, Metric)
    files_added = _add_files(client, run_id, folder, record.artifacts)

    ended = run.info.status != record.status or run.info.end_time != record.end_time_ms
    if ended:
        client.set_terminated(run_id, record.status, end_time=record.end_time_ms)
    if REAPED_TAG in run.data.tags:  # found lost while its record waited to be synced
        client.delete_tag(run_id, REAPED_TAG)
        ended = True
    record.synced, record.pending = {"uri": uri, "run_id": run_id}, False
    record.write(folder)
    return Synced(folder, run_id, record.name, created, epochs_added, files_added, ended, unended)


def _end_unended(folder: Path, record: RunRecord, epochs: list[Epoch]) -> None:
    """A run whose process died before it ended it (or that still trains): what it has is
    sent as KILLED, with its checkpoint, if any, to resume it from the store; should it
    still be training, its end is sent by the next sync."""
    record.status = "KILLED"
    record.end_time_ms = epochs[-1][1] if epochs else record.start_time_ms
    record.end_tags = {**record.end_tags, tag.UNENDED: UNENDED_WHY}
    checkpoint = folder / CHECKPOINT_FILE
    if checkpoint.is_file():
        from looplab.core.checkpoint import load

        saved = load(checkpoint)
        record.relative_files(folder, [(checkpoint, tag.CHECKPOINT_ARTIFACT)])
        record.end_tags[tag.CHECKPOINT_EPOCH] = str(saved.epoch)
        record.end_tags[tag.CHECKPOINT_BATCH] = str(saved.batch)


def _add_best(client: Any, run_id: str, epochs: list[Epoch], have: dict, metric: Any) -> None:
    """Each metric's best value and epoch (`val_loss_best`), as a run logs them at its end."""
    if not epochs:
        return
    best = best_metrics([(epoch, values) for epoch, _, values in epochs])
    last, stamp = epochs[-1][0], epochs[-1][1]
    missing = [metric(k, v, stamp, last) for k, v in best.items() if have.get(k) != v]
    if missing:
        client.log_batch(run_id, metrics=missing)


def _add_epochs(client: Any, run_id: str, epochs: list[Epoch], metric: Any) -> int:
    """Log the (metric, epoch) values of metrics.csv that the store lacks; the number of
    epochs that gained any."""
    if not epochs:
        return 0
    names = {name for _, _, values in epochs for name in values}
    have = {
        name: {m.step for m in client.get_metric_history(run_id, name)} for name in sorted(names)
    }
    batch, touched = [], set()
    for epoch, timestamp, values in epochs:
        for name, value in values.items():
            if epoch not in have[name]:
                batch.append(metric(name, value, timestamp, epoch))
                touched.add(epoch)
    for start in range(0, len(batch), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=batch[start : start + MAX_METRICS_PER_BATCH])
    return len(touched)


def _add_files(
    client: Any, run_id: str, folder: Path, artifacts: list[tuple[str, str | None]]
) -> int:
    """Upload the record's files that the run's artifacts lack (by name)."""
    listed: dict[str | None, set[str]] = {}
    added = 0
    for shown, artifact_path in artifacts:
        path = Path(shown) if Path(shown).is_absolute() else folder / shown
        if not path.exists():
            continue
        if path.is_dir():  # a folder such as .hydra is logged under artifact_path
            where, name = None, artifact_path or path.name
        else:
            where, name = artifact_path, path.name
        if where not in listed:
            listed[where] = {Path(f.path).name for f in client.list_artifacts(run_id, where)}
        if name in listed[where]:
            continue
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path)
        else:
            client.log_artifact(run_id, str(path), artifact_path)
        listed[where].add(name)
        added += 1
    return added
