"""A sweep's jobs: how each one ended (a record in the sweep folder), its name, its sweep id.

A job writes its record wherever it runs (another process, another machine); the launching
process reads them back at the sweep's end. Nothing here knows MLflow.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from looplab.launch.overrides import is_group
from looplab.run import tags as tag

# The folder, in a sweep's folder, where each job leaves a line on how it ended.
JOB_RECORDS = ".jobs"
# How a job that counts as done ended: trained now, or skipped as FINISHED before.
DONE = ("FINISHED", "SKIPPED")
# The attribute that marks a task function as one that records every job it runs.
_RECORDS_ITS_JOBS = "looplab_records_its_jobs"

Task = TypeVar("Task", bound=Callable[..., Any])


def records_its_jobs(task: Task) -> Task:
    """Mark a task function that leaves a `JobRecord` for every job of a sweep it runs,
    whether the job finished, failed or was skipped, and never raises for a job that failed
    (looplab's `train_job`): its sweep goes on past a failed job and fails at the end.

    looplab's sweepers read the mark (`records_jobs`) to tell looplab's app from any other:
    only for a marked task function is a job without a record lost; any other app's sweep
    fails as Hydra's own sweepers fail it (`sweeper.LaunchingSweeper`). Put it under
    `@hydra.main`, on the function Hydra hands to the sweeper.
    """
    setattr(task, _RECORDS_ITS_JOBS, True)
    return task


def records_jobs(task: object) -> bool:
    """Whether `task` is marked by `records_its_jobs`."""
    return getattr(task, _RECORDS_ITS_JOBS, False) is True


@dataclass
class JobRecord:
    """How one job of a sweep ended: a line in the sweep folder, read back at the sweep's end."""

    num: int
    name: str
    status: str
    tracked: bool = False  # its run was handed to the MLflow writer
    run_id: str | None = None  # a skipped job's: the FINISHED run it matched
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    resumed_at: int | None = None  # the epoch it went on from, when resumed from a checkpoint
    pruned_at: int | None = None  # the epoch after which a search's pruner stopped it

    def write(self, sweep_dir: Path) -> None:
        path = job_record_path(sweep_dir, self.num)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self)))


def job_record_path(sweep_dir: Path, num: int) -> Path:
    return sweep_dir / JOB_RECORDS / f"{num}.json"


def read_job_records(sweep_dir: Path) -> list[JobRecord]:
    folder = sweep_dir / JOB_RECORDS
    records = [JobRecord(**json.loads(p.read_text())) for p in folder.glob("*.json")]
    return sorted(records, key=lambda r: r.num)


def sweep_id(sweep_dir: Path) -> str:
    """A short id for the sweep, the same in every job: a hash of its absolute folder."""
    return hashlib.sha1(str(sweep_dir.resolve()).encode()).hexdigest()[:12]


def job_name(job_overrides: list[str], swept_keys: list[str]) -> str:
    """A child's run name: its values of the keys that vary in its sweep (`width=8 sgd`)."""
    words = []
    for line in job_overrides:
        key, _, value = line.partition("=")
        key = key.lstrip("+~")
        if key in swept_keys:
            value = _short_number(value)
            words.append(value if is_group(key) else f"{key.rsplit('.', 1)[-1]}={value}")
    return " ".join(words)


def _short_number(value: str) -> str:
    """`0.5337950081433139` as `0.5338` in a name (a search's floats); anything else as is."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if value.lstrip("-").isdigit() else f"{number:.4g}"


@dataclass
class SweepJob:
    """A job's place in its sweep, from what every job's Hydra config holds."""

    num: int
    sweep_dir: Path
    overrides: list[str]

    @property
    def prefix(self) -> str:
        return f"[job {self.num}] "

    @property
    def sweep_id(self) -> str:
        return sweep_id(self.sweep_dir)

    def tags(self, parent_id: str | None) -> dict[str, str]:
        """The child's tags: its role, its sweep and number, and its parent run, if found."""
        tags = {tag.ROLE: "job", tag.SWEEP_ID: self.sweep_id, tag.JOB: str(self.num)}
        if parent_id:
            tags[tag.PARENT] = parent_id
        return tags

    def name(self, swept_keys: list[str]) -> str:
        """What varies in its sweep (`width=8 sgd`); "" when nothing does."""
        return job_name(self.overrides, swept_keys)

    def record(self, name: str, status: str, **details: Any) -> None:
        JobRecord(self.num, name, status, **details).write(self.sweep_dir)
