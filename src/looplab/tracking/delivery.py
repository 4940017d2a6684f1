"""One run's delivery to the store, in the writer process: an ordered queue of operations.

Everything a run sends to the store (its creation, params, start-up files, epochs, closing
tags and files, its end) is an operation in one queue, delivered in order and dropped only
once the store took it. A store that stops answering is retried with backoff while the queue
grows; the training process never waits for it. A store that refuses an operation for good
(a 4xx answer) is told at the end, and the run is tagged `looplab.incomplete`, so that it
never looks complete when it is not. While the run runs, a heartbeat tag says it is alive.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from looplab.run import tags
from looplab.tracking.protocol import Ended, Files, Started, StartFailed
from looplab.tracking.record import RECORD_ID_TAG
from looplab.tracking.store import (
    HEARTBEAT_TAG,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_LENGTH,
    REAPED_TAG,
    find_tagged,
    first_line,
)

# Backoff between tries while the store is away (seconds): doubling up to the cap.
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 4.0
# The heartbeat tag on a running run: updated at most this often (seconds).
HEARTBEAT_SECONDS = 30.0
# A writer whose trainer died tries this long to end the run as KILLED.
ABANDON_WAIT_SECONDS = 30.0
INCOMPLETE_TAG = "looplab.incomplete"  # what the store refused of the run, in words
# A resumed run's tags that told how it had stopped: gone once it goes on.
STALE_ON_RESUME = (
    tags.STOPPED_BY,
    tags.CHECKPOINT_EPOCH,
    tags.CHECKPOINT_BATCH,
    tags.UNENDED,
    REAPED_TAG,
)

# -- the operations: what one store call (or a few, for metrics) sends -------------------------


@dataclass
class CreateRun:
    what: ClassVar[str] = "the run"
    run_name: str
    tags: dict[str, str]
    start_time_ms: int | None


@dataclass
class ReopenRun:
    what: ClassVar[str] = "the resumed run"
    run_id: str | None  # else found by the record id
    tags: dict[str, str]


@dataclass
class LogParams:
    what: ClassVar[str] = "params"
    params: list[Any]  # MLflow Params, one call's worth


@dataclass
class LogFiles:
    what: ClassVar[str] = "artifacts"
    files: Files


@dataclass
class LogText:
    what: ClassVar[str] = "the git diff"
    text: str
    artifact_file: str


@dataclass
class LogInputs:
    what: ClassVar[str] = "the dataset inputs"
    inputs: list[dict[str, str]]


@dataclass
class LogMetrics:
    what: ClassVar[str] = "metric values"
    metrics: list[Any] = field(default_factory=list)  # MLflow Metrics: grows, sent 1000 a call


@dataclass
class SetTags:
    what: ClassVar[str] = "the closing tags"
    tags: dict[str, str]


@dataclass
class LogModel:
    what: ClassVar[str] = "the logged model"
    folder: str  # the run's folder, holding core.paths.MODEL_FILES


@dataclass
class Terminate:
    what: ClassVar[str] = "the run's end"
    status: str
    end_time_ms: int


Operation = (
    CreateRun
    | ReopenRun
    | LogParams
    | LogFiles
    | LogText
    | LogInputs
    | LogMetrics
    | SetTags
    | LogModel
    | Terminate
)


def refused_for_good(error: BaseException) -> bool:
    """A 4xx answer (a bad value, a run that is not there): trying again would not help.
    Anything else (no connection, a timeout, a 5xx, a locked database) may pass later."""
    from mlflow.exceptions import MlflowException

    return isinstance(error, MlflowException) and 400 <= error.get_http_status_code() < 500


class Delivery:
    """One run's operations on their way to the store (see the module's docstring).

    `reply` tells the training process what it waits for: the run's id once the store
    created it (`Started`, or `StartFailed`), and how the run ended (`Ended`).
    """

    def __init__(
        self,
        client: Any,
        experiment_id: str | None,
        uri: str,
        reply: Callable[[Any], None],
        record_id: str | None = None,
    ) -> None:
        self.client, self.experiment_id, self.uri, self.reply = client, experiment_id, uri, reply
        self.record_id = record_id  # the run's looplab.record_id: finds a create that worked
        self.run_id: str | None = None
        self.create_tried = False
        self.queue: deque[Operation] = deque()
        self.refused: list[str] = []  # what the store refused for good, in words
        self.retry_at = 0.0  # monotonic time of the next try after a failure
        self.backoff = 0.0
        self.outage: str | None = None  # the store's last error while it is away
        self.outage_since: float | None = None
        self.outage_seconds = 0.0
        self.end_deadline: float | None = None  # set by `end`: deliver until then
        self.last_heartbeat = time.monotonic()
        # A resumed run: the last step the store has of each metric (none is sent twice).
        self.logged_through: dict[str, int] = {}
        self._apply_one: dict[type, Callable[[Any], bool]] = {
            CreateRun: self._create,
            ReopenRun: self._reopen,
            LogParams: self._log_params,
            LogFiles: self._log_files,
            LogText: self._log_text,
            LogInputs: self._log_inputs,
            LogMetrics: self._log_metrics,
            SetTags: self._set_tags,
            LogModel: self._log_model,
            Terminate: self._terminate,
        }

    # -- what the writer queues ----------------------------------------------------------------
    def add(self, operation: Operation) -> None:
        self.queue.append(operation)

    def add_metrics(self, metrics: list[Any]) -> None:
        """Epochs' metrics: onto the last operation when it is metrics too (one growing list,
        written 1000 values a call), so everything that has arrived goes in one write."""
        if self.queue and isinstance(self.queue[-1], LogMetrics):
            self.queue[-1].metrics.extend(metrics)
        elif metrics:
            self.queue.append(LogMetrics(metrics))

    def end(
        self,
        status: str,
        tags: dict[str, str],
        files: Files,
        end_time_ms: int,
        wait_s: float,
        model_folder: str | None = None,
    ) -> None:
        """Queue the run's end (closing tags, files, its model, then its status, last), and
        deliver until the store has it all or `wait_s` has passed."""
        if tags:
            self.queue.append(SetTags(dict(tags)))
        if files:
            self.queue.append(LogFiles(list(files)))
        if model_folder:
            self.queue.append(LogModel(model_folder))
        self.queue.append(Terminate(status, end_time_ms))
        self.end_deadline = time.monotonic() + wait_s
        self.retry_at = 0.0  # try at once, whatever the backoff said

    def ended(self) -> bool:
        """Tell the training process how the run ended; True when this writer can serve the
        next run (the store took everything and still answers)."""
        delivered = not self.queue
        warning = None
        if self.refused:
            warning = (
                f"the MLflow store {self.uri} refused {'; '.join(self.refused)}; the run is "
                f"tagged {INCOMPLETE_TAG}"
            )
        if self.outage_since is not None:
            self.outage_seconds += time.monotonic() - self.outage_since
        reusable = delivered and self.outage is None and self.run_id is not None
        self.reply(Ended(self.run_id, delivered, warning, self.outage_seconds, reusable))
        return reusable

    def abandon(self) -> None:
        """The training process went away without ending the run: deliver what it sent, and
        mark the run KILLED (for a little while; a lost store leaves the run to `--reap`)."""
        if self.queue or self.run_id:
            self.queue.append(Terminate("KILLED", int(time.time() * 1000)))
            self.end_deadline = time.monotonic() + ABANDON_WAIT_SECONDS
            self.retry_at = 0.0
            while self.queue and time.monotonic() < self.end_deadline:
                self.deliver()
                if self.queue:
                    time.sleep(max(0.0, min(self.retry_at, self.end_deadline) - time.monotonic()))

    # -- delivery ------------------------------------------------------------------------------
    def wake_in(self) -> float | None:
        """Seconds until there is something to do without a new message (None: never)."""
        now = time.monotonic()
        times = []
        if self.queue:
            times.append(self.retry_at)
        if self.end_deadline is not None:
            times.append(self.end_deadline)
        if self.run_id is not None and self.end_deadline is None:
            times.append(self.last_heartbeat + HEARTBEAT_SECONDS)
        return max(0.0, min(times) - now) if times else None

    def deliver(self) -> None:
        """Deliver the queue in order until it is empty or the store fails (then back off)."""
        while self.queue and time.monotonic() >= self.retry_at:
            operation = self.queue[0]
            try:
                done = self._apply(operation)
            except Exception as error:
                if not refused_for_good(error):
                    self._failed(error)
                    return
                self._refuse(operation, error)
                done = True
            self._answered()
            if done:
                self.queue.popleft()
        if self.queue or self.run_id is None or self.end_deadline is not None:
            return
        if time.monotonic() - self.last_heartbeat >= HEARTBEAT_SECONDS:
            try:
                self.client.set_tag(self.run_id, HEARTBEAT_TAG, str(int(time.time() * 1000)))
            except Exception as error:
                if not refused_for_good(error):
                    self._failed(error)
                return
            self.last_heartbeat = time.monotonic()

    def _apply(self, operation: Operation) -> bool:
        """Send one operation (or the next 1000 of its metrics); True when it is all sent."""
        if self.run_id is None and not isinstance(operation, CreateRun | ReopenRun):
            return True  # the store refused the run itself: nowhere to send the rest
        return self._apply_one[type(operation)](operation)

    def _create(self, operation: CreateRun) -> bool:
        self.run_id = self._existing_run() if self.create_tried else None
        self.create_tried = True
        if self.run_id is None:
            run = self.client.create_run(
                self.experiment_id,
                start_time=operation.start_time_ms,
                run_name=operation.run_name,
                tags=operation.tags,
            )
            self.run_id = run.info.run_id
        self.last_heartbeat = time.monotonic()
        self.reply(Started(self.run_id, self.experiment_id))
        return True

    def _reopen(self, operation: ReopenRun) -> bool:
        """The run again, RUNNING, with its new tags; what it logged already, per metric."""
        from mlflow.entities import RunTag

        run_id = operation.run_id or self._existing_run()
        try:
            found = self.client.get_run(run_id) if run_id else None
        except Exception as error:
            if not refused_for_good(error):
                raise
            found = None
        if found is None:
            self.refused.append(f"{self.what_resumed()} (not in this store)")
            self.reply(StartFailed(f"{self.what_resumed()} is not in the MLflow store {self.uri}"))
            return True
        run_id = found.info.run_id
        self.logged_through = {
            key: max(m.step for m in self.client.get_metric_history(run_id, key))
            for key in found.data.metrics
        }
        self.client.update_run(run_id, status="RUNNING")
        for stale in STALE_ON_RESUME:  # how it stopped is told by looplab.resumed_at_epoch now
            if stale in found.data.tags:
                self.client.delete_tag(run_id, stale)
        tags = [RunTag(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in operation.tags.items()]
        self.client.log_batch(run_id, tags=tags)
        self.run_id = run_id
        self.last_heartbeat = time.monotonic()
        self.reply(Started(run_id, self.experiment_id))
        return True

    def what_resumed(self) -> str:
        return f"the run with {RECORD_ID_TAG}={self.record_id}"

    def _log_params(self, operation: LogParams) -> bool:
        self.client.log_batch(self.run_id, params=operation.params)
        return True

    def _log_text(self, operation: LogText) -> bool:
        self.client.log_text(self.run_id, operation.text, operation.artifact_file)
        return True

    def _log_metrics(self, operation: LogMetrics) -> bool:
        if self.logged_through:  # resumed: what the store has is not sent again
            through = self.logged_through
            operation.metrics[:] = [m for m in operation.metrics if m.step > through.get(m.key, 0)]
        self.client.log_batch(self.run_id, metrics=operation.metrics[:MAX_METRICS_PER_BATCH])
        del operation.metrics[:MAX_METRICS_PER_BATCH]
        return not operation.metrics

    def _set_tags(self, operation: SetTags) -> bool:
        from mlflow.entities import RunTag

        tags = [RunTag(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in operation.tags.items()]
        self.client.log_batch(self.run_id, tags=tags)
        return True

    def _log_model(self, operation: LogModel) -> bool:
        from looplab.tracking.model_out import log_run_model

        log_run_model(self.client, self.run_id, operation.folder)
        return True

    def _terminate(self, operation: Terminate) -> bool:
        if self.refused:
            self.client.set_tag(self.run_id, INCOMPLETE_TAG, "; ".join(self.refused))
        self.client.set_terminated(self.run_id, operation.status, end_time=operation.end_time_ms)
        return True

    def _existing_run(self) -> str | None:
        """The run a create that seemed to fail made after all (found by its record id)."""
        if not self.record_id:
            return None
        found = find_tagged(self.client, self.experiment_id, RECORD_ID_TAG, self.record_id)
        return found.info.run_id if found else None

    def _failed(self, error: BaseException) -> None:
        """The store did not answer: try again later, each time a little later."""
        now = time.monotonic()
        self.outage = first_line(error)
        if self.outage_since is None:
            self.outage_since = now
        self.backoff = min(MAX_BACKOFF_SECONDS, max(FIRST_BACKOFF_SECONDS, 2 * self.backoff))
        self.retry_at = now + self.backoff

    def _answered(self) -> None:
        if self.outage_since is not None:
            self.outage_seconds += time.monotonic() - self.outage_since
        self.outage, self.outage_since, self.backoff = None, None, 0.0

    def _refuse(self, operation: Operation, error: BaseException) -> None:
        """The store answered no to this operation, and would again: drop it, say so."""
        self.refused.append(f"{operation.what} ({first_line(error)})")
        if isinstance(operation, CreateRun | ReopenRun):
            self.reply(StartFailed(f"cannot start an MLflow run: {first_line(error)}"))
        elif isinstance(operation, LogMetrics):
            del operation.metrics[:MAX_METRICS_PER_BATCH]
            if operation.metrics:
                self.queue.insert(1, operation)  # the rest is tried on its own

    def _log_inputs(self, operation: LogInputs) -> bool:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        datasets = [
            DatasetInput(
                Dataset(
                    item["name"],
                    item["digest"],
                    item["source_type"],
                    item["source"],
                    schema=item.get("schema"),
                    profile=item.get("profile"),
                ),
                tags=[InputTag("mlflow.data.context", item.get("context", "training"))],
            )
            for item in operation.inputs
        ]
        self.client.log_inputs(self.run_id, datasets=datasets)
        return True

    def _log_files(self, operation: LogFiles) -> bool:
        for path, artifact_path in operation.files:
            if Path(path).is_dir():
                self.client.log_artifacts(self.run_id, path, artifact_path)
            elif Path(path).is_file():
                self.client.log_artifact(self.run_id, path, artifact_path)
        return True
