"""A run's own record in its folder, `record.json`: what `looplab sync` sends to a store later.

Every tracked run (and every sweep parent) writes one, with no MLflow import and no store:
its name, experiment, params, tags, start and end times, status, closing tags, the files
that are its artifacts, and whether a store has it all (`synced`). The epochs are not
repeated here: `metrics.csv` beside it holds every one of them, exactly (`repr` floats).

- an offline run (`tracking.offline=true`) has only this record;
- an online run's record says `synced: {uri, run_id}` once the store confirmed everything,
  and `synced: null` with `pending: true` when the store stayed away past `tracking.wait_s`;
- a record id (`looplab.record_id`, also a tag on the MLflow run) lets a sync find the run
  it already made, so syncing twice adds nothing.

`RunFolder` is what both trackers (online and offline) do with it.
"""

from __future__ import annotations

import csv
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RECORD_FILE = "record.json"
METRICS_FILE = "metrics.csv"
RECORD_ID_TAG = "looplab.record_id"


@dataclass
class RunRecord:
    """One run as its folder remembers it (see the module's docstring)."""

    record_id: str
    uri: str  # the store this run was meant for (`looplab sync` sends it there by default)
    experiment: str
    name: str
    params: dict[str, str]
    tags: dict[str, str]
    start_time_ms: int
    # (path relative to the record's folder, or absolute; artifact folder or None)
    artifacts: list[tuple[str, str | None]] = field(default_factory=list)
    status: str = "RUNNING"
    end_time_ms: int | None = None
    end_tags: dict[str, str] = field(default_factory=dict)
    offline: bool = False
    pending: bool = False  # an online run whose store did not confirm everything
    synced: dict[str, str] | None = None  # {"uri": ..., "run_id": ...} once a store has it all
    parent_dir: str | None = None  # a sweep job's: its sweep's folder, relative to this one

    @classmethod
    def new(cls, **fields: Any) -> RunRecord:
        return cls(record_id=uuid.uuid4().hex, **fields)

    def write(self, folder: Path) -> Path:
        """Write atomically (a crash never leaves half a record)."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / RECORD_FILE
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")
        os.replace(partial, path)
        return path

    @classmethod
    def load(cls, folder: Path) -> RunRecord:
        data = json.loads((folder / RECORD_FILE).read_text(encoding="utf-8"))
        data["artifacts"] = [tuple(pair) for pair in data.get("artifacts", [])]
        return cls(**data)

    def relative_files(self, folder: Path, files: list[tuple[Path, str | None]]) -> None:
        """Keep `files` as artifacts, relative to `folder` when inside it (a folder that is
        copied to another machine still syncs)."""
        for path, artifact_path in files:
            absolute = Path(path).resolve()
            try:
                shown = str(absolute.relative_to(folder.resolve()))
            except ValueError:
                shown = str(absolute)
            if (shown, artifact_path) not in self.artifacts:
                self.artifacts.append((shown, artifact_path))


class RunFolder:
    """What both trackers share: the run's `record.json` in its folder, kept as the run goes."""

    uri: str
    experiment: str
    record: RunRecord
    record_dir: Path | None = None

    def _open_record(
        self,
        folder: Path | None,
        run_name: str,
        params: dict[str, str],
        tags: dict[str, str],
        start_time_ms: int,
        offline: bool,
    ) -> None:
        self.record_dir = folder
        self.record = RunRecord.new(
            uri=self.uri,
            experiment=self.experiment,
            name=run_name,
            params=dict(params),
            tags=dict(tags),
            start_time_ms=start_time_ms,
            offline=offline,
        )
        if folder is not None:
            self.record.write(folder)

    def _reopen_record(
        self,
        folder: Path | None,
        record_id: str,
        run_name: str,
        params: dict[str, str],
        tags: dict[str, str],
        offline: bool,
    ) -> None:
        """A resumed run's record: the folder's own when it is this run's, RUNNING again;
        else a new one under the run's record id (a run resumed in another folder)."""
        self.record_dir = folder
        if folder is not None and (folder / RECORD_FILE).is_file():
            record = RunRecord.load(folder)
            if record.record_id == record_id:
                record.status, record.end_time_ms, record.end_tags = "RUNNING", None, {}
                record.synced, record.pending, record.tags = None, False, {**record.tags, **tags}
                self.record = record
                record.write(folder)
                return
        self.record = RunRecord(
            record_id=record_id,
            uri=self.uri,
            experiment=self.experiment,
            name=run_name,
            params=dict(params),
            tags=dict(tags),
            start_time_ms=int(time.time() * 1000),
            offline=offline,
        )
        if folder is not None:
            self.record.write(folder)

    def run_identity(self) -> dict[str, str | None]:
        """What a checkpoint keeps to go on with this run (its record id finds it in a store
        before its run id is known)."""
        record = getattr(self, "record", None)
        return {
            "run_id": getattr(self, "run_id", None),
            "record_id": record.record_id if record is not None else None,
            "offline": bool(record.offline) if record is not None else None,
        }

    def _close_record(
        self,
        status: str,
        tags: dict[str, str],
        files: list[tuple[Path, str | None]],
        end_time_ms: int,
        synced: dict[str, str] | None,
    ) -> None:
        record, folder = getattr(self, "record", None), self.record_dir
        if record is None or folder is None:
            return
        record.status, record.end_time_ms = status, end_time_ms
        record.end_tags = {k: str(v) for k, v in tags.items()}
        record.relative_files(folder, files)
        record.synced, record.pending = synced, not record.offline and synced is None
        record.write(folder)

    def _start_files(self, artifacts: list[tuple[Path, str | None]]) -> None:
        if self.record_dir is not None:
            self.record.relative_files(self.record_dir, list(artifacts))


def read_epochs(folder: Path) -> list[tuple[int, int, dict[str, float]]]:
    """Every epoch in `folder/metrics.csv`: (epoch, timestamp_ms, {metric: value})."""
    path = folder / METRICS_FILE
    if not path.is_file():
        return []
    epochs = []
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            if not row.get("epoch"):
                continue
            epoch, timestamp = int(row.pop("epoch")), int(row.pop("timestamp_ms"))
            epochs.append((epoch, timestamp, {k: float(v) for k, v in row.items() if v}))
    return epochs


def shown(path: Path) -> str:
    """A folder as the user would type it: relative to the current one when under it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(Path(path).resolve())
