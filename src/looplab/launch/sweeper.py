"""What looplab's sweepers share: hand batches of jobs to the launcher Hydra chose, and see
each batch's failures through as the app expects.

looplab's own app (`looplab-train`, whose task function is marked `records_its_jobs`)
records how each job ended in the sweep folder and never raises for a failed job: its sweep
goes on past a failure, and the sweep callback counts the records at the end (exit code 1).
Here a job of it that left no record (it raised, or its process died) is recorded FAILED.

Any other Hydra app's sweep is Hydra's: nothing is recorded, and after each batch a job that
raised re-raises (Hydra's `JobReturn.return_value`), as Hydra's basic sweeper does, so the
sweep stops there with the job's exception; a launcher that raises for the batch stops it too.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from looplab.launch.jobs import JobRecord, job_name, job_record_path, records_jobs
from looplab.launch.sweep import sweep_overrides, swept_keys


class LaunchingSweeper(Sweeper):
    """What looplab's sweepers share: keep the config, and the launcher Hydra chose, to hand
    each batch of jobs to; see that every job of looplab's app ends with a record, and that a
    failed job of any other app fails the sweep as it would under Hydra's basic sweeper."""

    def __init__(self) -> None:
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.swept_keys: list[str] = []
        # Whether the task function records its jobs (looplab's app), or is any Hydra app.
        self.records_jobs = False

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.swept_keys = swept_keys(sweep_overrides(config))
        self.records_jobs = records_jobs(task_function)

    def launch(self, batch: Sequence[Sequence[str]], first_num: int) -> list[JobReturn]:
        """Hand a batch of jobs to the launcher; for looplab's app, every job of it ends with
        a record.

        A job of looplab's app records how it ended itself, in the sweep folder, wherever it
        runs (another process, another machine). One that could not (it raised, and Hydra
        hands the exception back; or its process died, and submitit or Ray raise for the whole
        batch) is recorded FAILED here, in the launching process, so that the summary and the
        exit code count it, and the next batch still runs.

        Any other app's batch is the launcher's, as is: no records, and an error the launcher
        raises is raised. Its jobs' failures are raised by `raise_failed`, after the sweeper
        has read the batch.
        """
        if not self.records_jobs:
            return list(self.launcher.launch(batch, initial_job_idx=first_num))
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        lost = None
        try:
            returns = list(self.launcher.launch(batch, initial_job_idx=first_num))
        except Exception as error:  # e.g. submitit's UncompletedJobError, Ray's RayTaskError
            lost = f"the launcher reported it lost: {_one_line(error, lines=2)}"
            returns = [JobReturn(status=JobStatus.FAILED, _return_value=error)] * len(batch)
        for num, (overrides, ret) in enumerate(zip(batch, returns, strict=True), first_num):
            if job_record_path(sweep_dir, num).is_file():
                continue
            raised = getattr(ret, "_return_value", None)
            if lost:
                message = lost
            elif ret.status == JobStatus.FAILED and isinstance(raised, BaseException):
                message = _one_line(raised)
            else:
                message = "it ended without leaving a record"
            name = job_name(list(overrides), self.swept_keys) or f"job {num}"
            print(f"looplab-train: job {num} {name}: failed: {message}", file=sys.stderr)
            JobRecord(num, name, "FAILED", error=message).write(sweep_dir)
        return returns

    def raise_failed(self, returns: Sequence[JobReturn]) -> None:
        """After a batch of any app but looplab's: raise the first failed job's exception, as
        Hydra's basic sweeper does (`return_value` prints which job, then re-raises), and the
        sweep stops. looplab's app goes on: its failed jobs are recorded, and counted at the
        sweep's end."""
        if self.records_jobs:
            return
        for ret in returns:
            _ = ret.return_value


def _one_line(error: BaseException, lines: int = 1) -> str:
    """An exception as one line: its type and the first line(s) of its message (submitit's
    say which job in the first, and what happened to it in the second)."""
    text = " ".join([line.strip() for line in str(error).splitlines() if line.strip()][:lines])
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
