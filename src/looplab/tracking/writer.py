"""MLflow tracking, done by a writer process so that the training process never waits for it.

`Tracker` lives in the training process and never imports MLflow: it buffers epoch results
and pipes them, a few times a second, to a child process (`python -m looplab.tracking`) that
owns the MLflow client, writes metrics with `log_batch`, and ends the run. MLflow's
per-metric Python cost then runs on another core, and the child starts importing MLflow while
the parent is still loading torch and data.

Messages are pickled tuples on the child's stdin; replies come back on its stdout. The child
keeps everything a run sends in one ordered queue until the store confirms it, retrying with
backoff while the store is away; at the run's end it waits up to `tracking.wait_s`, and
what it could not deliver stays in the run folder for `looplab sync` (see record.py). If the
training process dies without saying goodbye, the child sees end-of-file and marks the run
KILLED. A writer that ended its run cleanly waits for the next one: the jobs of a sweep that
run in one process (Hydra's basic launcher, a joblib worker) share a writer and pay for
MLflow's import once. A sweep's job does not wait for its run to be created or ended: the
writer does that while the next job is set up, and its answers are read (in order, by a
thread) when the writer is taken up again (`start_tracker`) or the sweep ends
(`settle_idle`). `OfflineTracker` (tracking.offline=true) starts no writer at all.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import math
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from looplab.core.errors import TrackingError
from looplab.tracking.links import run_hint
from looplab.tracking.record import RECORD_FILE, RECORD_ID_TAG, RunRecord, shown
from looplab.tracking.store import (
    HEARTBEAT_TAG,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_LENGTH,
    find_tagged,
    open_store,
    param_batches,
)

if TYPE_CHECKING:  # the writer process must not pay for importing torch
    from omegaconf import DictConfig

    from looplab.core.loop import EpochResult

# The parent sends buffered epochs at least this often (seconds) or every this many epochs.
SEND_SECONDS = 0.5
SEND_EPOCHS = 500
# How long the parent waits for the store to answer when it opens it or starts a sweep.
CONNECT_TIMEOUT_SECONDS = 60.0
# How long the parent waits for the writer beyond `tracking.wait_s` at the end of a run: the
# last store call in flight may take MLFLOW_HTTP_REQUEST_TIMEOUT to give up.
FINISH_SLACK_SECONDS = 30.0
DEFAULT_WAIT_SECONDS = 60.0
# The writer's own HTTP settings: one try a call, never MLflow's minutes of retries; the
# writer retries itself, in the background, with backoff.
WRITER_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# Backoff between tries while the store is away (seconds): doubling up to the cap.
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 4.0
# The heartbeat tag on a running run: updated at most this often (seconds).
HEARTBEAT_SECONDS = 30.0
# A writer whose trainer died tries this long to end the run as KILLED.
ABANDON_WAIT_SECONDS = 30.0


# Writers whose run ended cleanly, by (uri, experiment), waiting for this process's next job.
_IDLE: dict[tuple[str, str], Tracker] = {}


def start_tracker(cfg: DictConfig) -> Tracker | OfflineTracker | None:
    """The writer for a plain config (an idle one if this process has it), an offline
    recorder for `tracking.offline=true`, or None when tracking is off."""
    if not cfg.tracking.enabled:
        return None
    wait_s = float(cfg.tracking.get("wait_s", DEFAULT_WAIT_SECONDS))
    if cfg.tracking.get("offline", False):
        return OfflineTracker(cfg.tracking.uri, cfg.tracking.experiment)
    key = (cfg.tracking.uri, cfg.tracking.experiment)
    idle = _IDLE.pop(key, None)
    if idle is not None:
        _warn(idle.settle_later())  # the last job's end: the next run's messages follow it
        if idle.idle and idle.process.poll() is None:
            idle.idle = False  # in use again: close() must stop it if its run goes wrong
            idle.wait_s = wait_s
            return idle
        idle.stop()
    return Tracker(*key, wait_s=wait_s)


def settle_idle() -> list[str]:
    """Wait until every run this process's writers were asked to end has ended; return the
    warnings of those whose end did not reach the store. A sweep calls this before it reads
    its children back."""
    warnings = [tracker.settle_later() for tracker in list(_IDLE.values())]
    return [warning for warning in warnings if warning]


def _warn(warning: str | None) -> None:
    if warning:
        logging.getLogger("looplab").warning(f"warning: {warning}")


@atexit.register
def _stop_idle_writers() -> None:
    for warning in settle_idle():
        _warn(warning)
    while _IDLE:
        _IDLE.popitem()[1].stop()


class _RunFolder:
    """What both trackers share: the run's `record.json` in its folder (see record.py)."""

    uri: str
    experiment: str

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

    def _close_record(
        self,
        status: str,
        tags: dict[str, str],
        files: list[tuple[Path, str | None]],
        end_time_ms: int,
        synced: dict[str, str] | None,
    ) -> None:
        record, folder = getattr(self, "record", None), getattr(self, "record_dir", None)
        if record is None or folder is None:
            return
        record.status, record.end_time_ms = status, end_time_ms
        record.end_tags = {k: str(v) for k, v in tags.items()}
        record.relative_files(folder, files)
        record.synced, record.pending = synced, not record.offline and synced is None
        record.write(folder)

    def _start_files(self, artifacts: list[tuple[Path, str | None]]) -> None:
        if getattr(self, "record_dir", None) is not None:
            self.record.relative_files(self.record_dir, list(artifacts))


class OfflineTracker(_RunFolder):
    """`tracking.offline=true`: no store is opened or created, no writer process is started;
    the run's whole record stays in its folder (`record.json`, `metrics.csv`, its files) for
    `looplab sync`."""

    process = None
    idle = False

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri, self.experiment = uri, experiment
        self.finished_run_id: str | None = None  # never a store's run id
        self.note: str | None = None
        self.runs_started = 0

    def find_sweep(self, sweep_id: str, sweep_dir: Path | None = None) -> tuple[None, list[str]]:
        """No parent id offline; the keys the sweep varies, from its folder's record."""
        if sweep_dir is None or not (sweep_dir / RECORD_FILE).is_file():
            return None, []
        keys = RunRecord.load(sweep_dir).tags.get("looplab.swept_keys", "")
        return None, [k for k in keys.split(",") if k]

    def start_run(
        self,
        run_name: str,
        params: dict[str, str],
        tags: dict[str, str],
        artifacts: list[tuple[Path, str | None]],
        wait: bool = True,
        start_time_ms: int | None = None,
        record_dir: Path | None = None,
        inputs: list[dict[str, str]] | None = None,
    ) -> None:
        started = start_time_ms or int(time.time() * 1000)
        tags = {**_source_tags()[0], **tags}
        self._open_record(record_dir, run_name, params, tags, started, offline=True)
        self._start_files(artifacts)
        self.runs_started += 1

    def find_finished(self, config_digest: str, data_digest: str) -> tuple[None, float]:
        """Offline there is no store to find a finished run in: every job trains."""
        return None, math.nan

    def hint(self) -> None:
        """Offline there is nothing to see in a store yet: `note` says how to sync."""
        return None

    def release(self) -> None:
        pass

    def __call__(self, result: EpochResult) -> None:
        """The epochs are in metrics.csv already: nothing more to keep."""

    def flush(self, now: float | None = None) -> None:
        pass

    def finish(
        self,
        status: str,
        tags: dict[str, str] | None = None,
        artifacts: list[tuple[Path, str | None]] = (),
        wait: bool = True,
    ) -> str | None:
        self._close_record(status, tags or {}, list(artifacts), int(time.time() * 1000), None)
        folder = getattr(self, "record_dir", None)
        if folder is not None:
            what = "sweep" if self.record.tags.get("looplab.role") == "sweep" else "run"
            self.note = (
                f"offline: the {what} is recorded in {shown(folder)}; send it to a store with "
                f"`looplab sync {shown(folder)} --tracking-uri URI`"
            )
        return None

    def close(self) -> None:
        pass

    def stop(self) -> None:
        pass


class Tracker(_RunFolder):
    """The training process's side: starts the writer, hands it epochs, ends the run."""

    def __init__(self, uri: str, experiment: str, wait_s: float = DEFAULT_WAIT_SECONDS) -> None:
        self.uri, self.experiment, self.wait_s = uri, experiment, wait_s
        self.note: str | None = None  # an informative line for the user at the end of a run
        self._reset()
        env = {**WRITER_HTTP_ENV, **os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "looplab.tracking"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=False,
        )
        self.replies: queue.Queue = queue.Queue()
        threading.Thread(
            target=_reader, args=(self.process.stdout, self.replies), daemon=True
        ).start()
        self.opened = False  # the writer has said that the store answers
        self.experiment_id: str | None = None  # the store's id of the experiment, once open
        self.finished_run_id: str | None = None  # the id of the last run this writer ended
        self.runs_started = 0  # runs handed to this writer, over the jobs it served
        self._send(("open", uri, experiment))

    def _reset(self) -> None:
        """The per-run state, fresh for each run this writer serves."""
        self.pending: list[tuple[int, int, dict[str, float]]] = []
        self.last_send = time.monotonic()
        self.run_id: str | None = None
        self.idle = False  # the run ended and the writer waits in _IDLE for the next one
        # Set when the writer went away mid-run: training goes on, and the user is told.
        self.lost: str | None = None
        self.record_dir: Path | None = None
        self.end_pending = False  # "end" sent, its answer not read yet (see `settle`)
        # What `finish` was told, for `settle` to record once the writer has answered.
        self.ending: tuple[str, dict[str, str], list[tuple[Path, str | None]], int] | None = None

    # -- protocol ----------------------------------------------------------------------------
    def _send(self, message: tuple[Any, ...]) -> None:
        """Pickle one message down the pipe, whole: Ctrl-C and SIGTERM wait until it is out,
        so a signal never leaves half a message that the writer would take for the end."""
        assert self.process.stdin is not None
        stops = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stops)
        try:
            pickle.dump(message, self.process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise TrackingError(f"the MLflow writer for {self.uri} stopped unexpectedly") from None
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)

    def _receive(self, timeout: float, waiting_for: str) -> tuple[Any, ...]:
        """The writer's next reply, in order. A thread reads them off the pipe: a job that did
        not wait for its run's end leaves several replies in the pipe, and one buffered read
        may take them all, where `select` on the pipe would no longer see the rest."""
        try:
            reply = self.replies.get(timeout=timeout)
        except queue.Empty:
            self.process.kill()
            raise TrackingError(
                f"MLflow store {self.uri} did not answer within {timeout:.0f} s ({waiting_for})"
            ) from None
        if reply[0] == "eof":
            raise TrackingError(f"the MLflow writer for {self.uri} exited while {waiting_for}")
        if reply[0] == "error":
            raise TrackingError(reply[1])
        return reply

    def _receive_until(self, kind: str, timeout: float, waiting_for: str) -> tuple[Any, ...]:
        """Read replies until one of `kind`; a run's "started" (or why it could not start)
        may come first, whenever the store took the run."""
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(max(0.0, deadline - time.monotonic()), waiting_for)
            if reply[0] == kind:
                return reply
            if reply[0] == "started":
                self.run_id = reply[1]
            elif reply[0] == "start_failed" and kind == "started":
                raise TrackingError(reply[1])

    def _ensure_open(self) -> None:
        """Wait, once per writer, until the store answers (or fail in seconds if it never
        does): a run never starts training against a store that is not there."""
        if not self.opened:
            self.experiment_id = self._receive(CONNECT_TIMEOUT_SECONDS, "opening the store")[1]
            self.opened = True

    # -- the run -----------------------------------------------------------------------------
    def find_sweep(
        self, sweep_id: str, sweep_dir: Path | None = None
    ) -> tuple[str | None, list[str]]:
        """The parent run of sweep `sweep_id` in this store, and the keys its sweep varies;
        (None, []) when the store has no such parent."""
        self._ensure_open()
        self._send(("find_sweep", sweep_id))
        _, parent_id, swept_keys = self._receive(CONNECT_TIMEOUT_SECONDS, "finding the sweep")
        return parent_id, swept_keys

    def start_run(
        self,
        run_name: str,
        params: dict[str, str],
        tags: dict[str, str],
        artifacts: list[tuple[Path, str | None]],
        wait: bool = True,
        start_time_ms: int | None = None,
        record_dir: Path | None = None,
        inputs: list[dict[str, str]] | None = None,
    ) -> str | None:
        """Create the run with its params, tags and start-up artifacts; return its id.

        `inputs` are MLflow dataset inputs (name, digest, source_type, source, schema,
        profile, context), logged with `log_inputs` so the UI's Dataset column shows them.

        With `wait=False` training goes on while the writer creates the run (tens of
        milliseconds per run, a sweep job's largest cost); the id is read in `finish`.
        `record_dir` gets the run's `record.json`, for `looplab sync` should the store not
        take everything.
        """
        self._ensure_open()
        self.note = None
        files = [(str(path), artifact_path) for path, artifact_path in artifacts]
        started = start_time_ms or int(time.time() * 1000)
        self._open_record(record_dir, run_name, params, tags, started, offline=False)
        self._start_files(artifacts)
        tags = {**tags, RECORD_ID_TAG: self.record.record_id}
        self._send(("start", run_name, params, tags, files, started, inputs))
        self.runs_started += 1
        if wait:
            reply = self._receive_until("started", CONNECT_TIMEOUT_SECONDS, "starting the run")
            self.run_id = reply[1]
        return self.run_id

    def find_finished(self, config_digest: str, data_digest: str) -> tuple[str | None, float]:
        """A FINISHED run of this experiment with the same config identity and data digest,
        and its final val_loss (NaN when it has none); (None, NaN) when there is none."""
        self._ensure_open()
        self._send(("find_finished", config_digest, data_digest))
        _, run_id, val_loss = self._receive(CONNECT_TIMEOUT_SECONDS, "finding finished runs")
        return run_id, val_loss

    def __call__(self, result: EpochResult) -> None:
        """Epoch callback: buffer, and pass the buffer on a few times a second."""
        self.pending.append((result.epoch, result.timestamp_ms, result.metrics))
        now = time.monotonic()
        if now - self.last_send >= SEND_SECONDS or len(self.pending) >= SEND_EPOCHS:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Hand the buffer to the writer; if the writer is gone, note it and go on."""
        epochs, self.pending = self.pending, []  # taken first: a signal cannot send them twice
        if epochs and self.lost is None:
            try:
                self._send(("metrics", epochs))
            except TrackingError as error:
                self.lost = str(error)
        self.last_send = time.monotonic() if now is None else now

    def finish(
        self,
        status: str,
        tags: dict[str, str] | None = None,
        artifacts: list[tuple[Path, str | None]] = (),
        wait: bool = True,
    ) -> str | None:
        """Flush, log the closing artifacts, end the run as `status`; return any warning.

        The writer waits for the store up to `tracking.wait_s`; what it could not deliver by
        then stays in the run folder (record.json, metrics.csv), marked not synced, and the
        warning says how to send it (`looplab sync`). Training is over by now, so a writer
        that fails here is a warning, not an error that would hide a finished run.
        With `wait=False` (a sweep's job) this process does not wait at all: the run folder
        is marked not synced until the writer's answer is read by `settle`.
        """
        tags, artifacts = tags or {}, list(artifacts)
        ended_ms = int(time.time() * 1000)
        self.ending = (status, tags, artifacts, ended_ms)
        # This run's id, or None until `settle` reads it: never the previous run's.
        self.finished_run_id = self.run_id
        try:
            self.flush()
            if self.lost is None:
                files = [(str(path), artifact_path) for path, artifact_path in artifacts]
                self._send(("end", status, tags, files, ended_ms, self.wait_s))
                self.end_pending = True
                if not wait:
                    self._close_record(status, tags, artifacts, ended_ms, None)
                    self.idle = True
                    _IDLE[(self.uri, self.experiment)] = self
                    return None
        except TrackingError as error:
            self.lost = str(error)
        return self.settle()

    def settle(self) -> str | None:
        """Read the writer's answer to the run's end (`finish`), record how the run ended in
        its folder, and return any warning. A writer that can serve the next run waits in
        `_IDLE`; any other is stopped."""
        if self.ending is None:
            return None
        status, tags, artifacts, ended_ms = self.ending
        self.ending = None
        delivered, warning = False, None
        try:
            if self.end_pending:
                self.end_pending = False
                _, self.run_id, delivered, warning, outage_s, reusable = self._receive_until(
                    "ended", self.wait_s + FINISH_SLACK_SECONDS, "ending the run"
                )
                if outage_s and delivered:
                    self.note = (
                        f"the MLflow store {self.uri} was away for {outage_s:.0f} s; "
                        "everything reached it once it was back"
                    )
                if reusable:
                    self.finished_run_id = self.run_id
                    self._close_record(status, tags, artifacts, ended_ms, self._synced())
                    self._reset()
                    self.idle = True
                    _IDLE[(self.uri, self.experiment)] = self
                    return warning
        except TrackingError as error:
            self.lost = str(error)
        self.idle = False
        if _IDLE.get((self.uri, self.experiment)) is self:
            del _IDLE[(self.uri, self.experiment)]
        self.close()
        self.finished_run_id = self.run_id
        self._close_record(status, tags, artifacts, ended_ms, self._synced() if delivered else None)
        if delivered:
            return warning
        why = self.lost or (
            f"the MLflow store {self.uri} did not take the whole run within "
            f"tracking.wait_s={self.wait_s:g} s"
        )
        if self.record_dir is None:
            return f"{why}; the run's end ({status}) did not reach it"
        return (
            f"{why}; the run is kept in its folder, not synced (it is not complete on the "
            f"store): send it later with `looplab sync {shown(self.record_dir)}`"
        )

    def settle_later(self) -> str | None:
        """`settle`, for a run whose closing line is already out: the warning names it."""
        warning = self.settle()
        return f"MLflow run {self.finished_run_id}: {warning}" if warning else None

    def hint(self) -> str | None:
        """Where to see the run this writer ended, for its store."""
        if self.finished_run_id is None:
            return None
        return run_hint(self.uri, self.experiment_id, self.finished_run_id)

    def release(self) -> None:
        """No run was started (a skipped job): keep the writer for this process's next run."""
        if self.process.poll() is None and self.ending is None and self.run_id is None:
            self.idle = True
            _IDLE[(self.uri, self.experiment)] = self
        else:
            self.close()

    def _synced(self) -> dict[str, str] | None:
        return {"uri": self.uri, "run_id": self.run_id} if self.run_id else None

    def close(self) -> None:
        """Stop the writer unless it waits for the next run; a run it still holds is ended
        as KILLED by the writer."""
        if not self.idle:
            self.stop()

    def stop(self) -> None:
        """Close the writer's input and wait for it to leave."""
        if self.process.stdin and not self.process.stdin.closed:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout=self.wait_s + FINISH_SLACK_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()


# =========================================================================================
# The writer process: everything below runs in `python -m looplab.tracking`.
# =========================================================================================


class _Writer:
    """Owns the MLflow client: opens the store, then delivers each run in order.

    Everything a run sends to the store (its creation, params, start-up files, epochs,
    closing tags and files, its end) is an operation in one queue, delivered in order and
    dropped only once the store took it. A store that stops answering is retried with
    backoff while the queue grows; the training process never waits for it. A store that
    refuses an operation for good (a 4xx answer) is told at the end, and the run is tagged
    `looplab.incomplete`, so that it never looks complete when it is not.
    """

    def __init__(self, reply: Any) -> None:
        self.reply = reply
        self.client: Any = None
        self.uri = ""
        self.experiment_id: str | None = None
        self.open_error: str | None = None
        self._new_run()

    def _new_run(self) -> None:
        self.run_id: str | None = None
        self.record_id: str | None = None
        self.create_tried = False
        self.queue: deque[list[Any]] = deque()
        self.refused: list[str] = []  # what the store refused for good, in words
        self.retry_at = 0.0  # monotonic time of the next try after a failure
        self.backoff = 0.0
        self.outage: str | None = None  # the store's last error while it is away
        self.outage_since: float | None = None
        self.outage_seconds = 0.0
        self.end_deadline: float | None = None  # set by "end": deliver until then
        self.last_heartbeat = time.monotonic()

    def send(self, *message: Any) -> None:
        """Reply to the training process; if it is gone (a second Ctrl-C), nobody listens."""
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            pickle.dump(message, self.reply, protocol=pickle.HIGHEST_PROTOCOL)
            self.reply.flush()

    # -- messages from the training process ------------------------------------------------
    def open(self, uri: str, experiment: str) -> None:
        self.uri = uri
        try:
            self.client, self.experiment_id = open_store(uri, experiment)
        except Exception as error:
            self.open_error = f"cannot use MLflow store {uri}: {_first_line(error)}"
            self.send("error", self.open_error)
            return
        self.send("opened", self.experiment_id)

    def find_sweep(self, sweep_id: str) -> None:
        """Reply with the parent run tagged with this sweep id, and its swept keys."""

        def answer(run: Any) -> tuple[Any, ...]:
            if run is None:
                return None, []
            keys = run.data.tags.get("looplab.swept_keys", "")
            return run.info.run_id, [k for k in keys.split(",") if k]

        self._reply_with_run(
            "sweep",
            f"tags.`looplab.sweep_id` = '{sweep_id}' and tags.`looplab.role` = 'sweep'",
            answer,
        )

    def _reply_with_run(
        self, kind: str, filter_string: str, answer: Any, order_by: list[str] | None = None
    ) -> None:
        """Search the experiment for one run and reply `(kind, *answer(run or None))`; an
        error reply when the store cannot be asked."""
        if self.open_error:
            self.send("error", self.open_error)
            return
        try:
            found = self.client.search_runs(
                [self.experiment_id], filter_string=filter_string, order_by=order_by, max_results=1
            )
        except Exception as error:
            self.send("error", f"cannot search the MLflow store: {_first_line(error)}")
            return
        self.send(kind, *answer(found[0] if found else None))

    def start(
        self,
        run_name: str,
        params: dict[str, str],
        tags: dict[str, str],
        files,
        start_time_ms: int | None = None,
        inputs: list[dict[str, str]] | None = None,
    ) -> None:
        if self.open_error:
            self.send("error", self.open_error)
            return
        self._new_run()
        self.record_id = tags.get(RECORD_ID_TAG)
        now_ms = str(int(time.time() * 1000))
        source_tags, git_diff = _source_tags()
        tags = {**source_tags, **tags, HEARTBEAT_TAG: now_ms}
        self.queue.append(["create", run_name, tags, start_time_ms])
        for batch in param_batches(params):
            self.queue.append(["params", batch])
        if files:
            self.queue.append(["files", list(files)])
        if git_diff:
            self.queue.append(["text", git_diff, "git.diff"])
        if inputs:
            self.queue.append(["inputs", inputs])

    def find_finished(self, config_digest: str, data_digest: str) -> None:
        """Reply with a FINISHED run of the experiment that trained the same config on the
        same data (the newest), and its final val_loss."""

        def answer(run: Any) -> tuple[Any, ...]:
            if run is None:
                return None, float("nan")
            return run.info.run_id, run.data.metrics.get("val_loss", float("nan"))

        self._reply_with_run(
            "finished",
            f"tags.`looplab.config_digest` = '{config_digest}' and "
            f"tags.`looplab.data.digest` = '{data_digest}' and attributes.status = 'FINISHED'",
            answer,
            order_by=["attributes.start_time DESC"],
        )

    def metrics(self, epochs: list[tuple[int, int, dict[str, float]]]) -> None:
        from mlflow.entities import Metric

        batch = [
            Metric(name, value, timestamp, epoch)
            for epoch, timestamp, values in epochs
            for name, value in values.items()
        ]
        if self.queue and self.queue[-1][0] == "metrics":
            self.queue[-1][1].extend(batch)  # one growing list: written 1000 at a time
        elif batch:
            self.queue.append(["metrics", batch])

    def end(self, status: str, tags: dict[str, str], files, end_time_ms: int, wait_s: float):
        """Queue the run's end (closing tags, files, then its status, last), and deliver
        until the store has it all or `wait_s` has passed."""
        if tags:
            self.queue.append(["tags", dict(tags)])
        if files:
            self.queue.append(["files", list(files)])
        self.queue.append(["terminate", status, end_time_ms])
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
                "tagged looplab.incomplete"
            )
        if self.outage_since is not None:
            self.outage_seconds += time.monotonic() - self.outage_since
        reusable = delivered and self.outage is None and self.run_id is not None
        self.send("ended", self.run_id, delivered, warning, self.outage_seconds, reusable)
        self._new_run()
        return reusable

    def abandon(self) -> None:
        """The training process went away without ending the run: deliver what it sent, and
        mark the run KILLED (for a little while; a lost store leaves the run to `--reap`)."""
        if self.queue or self.run_id:
            self.queue.append(["terminate", "KILLED", int(time.time() * 1000)])
            self.end_deadline = time.monotonic() + ABANDON_WAIT_SECONDS
            self.retry_at = 0.0
            while self.queue and time.monotonic() < self.end_deadline:
                self.deliver()
                if self.queue:
                    time.sleep(max(0.0, min(self.retry_at, self.end_deadline) - time.monotonic()))

    # -- delivery ----------------------------------------------------------------------------
    def wake_in(self) -> float | None:
        """Seconds until this writer has something to do without a new message (None: never)."""
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
                if not _refused_for_good(error):
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
                if not _refused_for_good(error):
                    self._failed(error)
                return
            self.last_heartbeat = time.monotonic()

    def _apply(self, operation: list[Any]) -> bool:
        """Send one operation (or the next 1000 of its metrics); True when it is all sent."""
        kind = operation[0]
        if kind == "create":
            _, run_name, tags, start_time_ms = operation
            self.run_id = self._existing_run() if self.create_tried else None
            self.create_tried = True
            if self.run_id is None:
                run = self.client.create_run(
                    self.experiment_id, start_time=start_time_ms, run_name=run_name, tags=tags
                )
                self.run_id = run.info.run_id
            self.last_heartbeat = time.monotonic()
            self.send("started", self.run_id, self.experiment_id)
            return True
        if self.run_id is None:  # the store refused the run itself: nowhere to send the rest
            return True
        if kind == "params":
            self.client.log_batch(self.run_id, params=operation[1])
        elif kind == "metrics":
            batch = operation[1]
            self.client.log_batch(self.run_id, metrics=batch[:MAX_METRICS_PER_BATCH])
            del batch[:MAX_METRICS_PER_BATCH]
            return not batch
        elif kind == "tags":
            from mlflow.entities import RunTag

            tags = [RunTag(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in operation[1].items()]
            self.client.log_batch(self.run_id, tags=tags)
        elif kind == "files":
            self._log_artifacts(operation[1])
        elif kind == "text":
            self.client.log_text(self.run_id, operation[1], operation[2])
        elif kind == "inputs":
            self._log_inputs(operation[1])
        elif kind == "terminate":
            if self.refused:
                self.client.set_tag(self.run_id, "looplab.incomplete", "; ".join(self.refused))
            self.client.set_terminated(self.run_id, operation[1], end_time=operation[2])
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
        self.outage = _first_line(error)
        if self.outage_since is None:
            self.outage_since = now
        self.backoff = min(MAX_BACKOFF_SECONDS, max(FIRST_BACKOFF_SECONDS, 2 * self.backoff))
        self.retry_at = now + self.backoff

    def _answered(self) -> None:
        if self.outage_since is not None:
            self.outage_seconds += time.monotonic() - self.outage_since
        self.outage, self.outage_since, self.backoff = None, None, 0.0

    def _refuse(self, operation: list[Any], error: BaseException) -> None:
        """The store answered no to this operation, and would again: drop it, say so."""
        what = {
            "create": "the run",
            "params": "params",
            "metrics": "metric values",
            "tags": "the closing tags",
            "files": "artifacts",
            "text": "the git diff",
            "inputs": "the dataset inputs",
            "terminate": "the run's end",
        }[operation[0]]
        self.refused.append(f"{what} ({_first_line(error)})")
        if operation[0] == "create":
            self.send("start_failed", f"cannot start an MLflow run: {_first_line(error)}")
        elif operation[0] == "metrics":
            del operation[1][:MAX_METRICS_PER_BATCH]
            if operation[1]:
                self.queue.insert(1, operation)  # the rest is tried on its own

    def _log_inputs(self, inputs: list[dict[str, str]]) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        self.client.log_inputs(
            self.run_id,
            datasets=[
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
                for item in inputs
            ],
        )

    def _log_artifacts(self, files: list[tuple[str, str | None]]) -> None:
        for path, artifact_path in files:
            if Path(path).is_dir():
                self.client.log_artifacts(self.run_id, path, artifact_path)
            elif Path(path).is_file():
                self.client.log_artifact(self.run_id, path, artifact_path)


def _refused_for_good(error: BaseException) -> bool:
    """A 4xx answer (a bad value, a run that is not there): trying again would not help.
    Anything else (no connection, a timeout, a 5xx, a locked database) may pass later."""
    from mlflow.exceptions import MlflowException

    return isinstance(error, MlflowException) and 400 <= error.get_http_status_code() < 500


@functools.cache
def _source_tags() -> tuple[dict[str, str], str]:
    """The tags MLflow's own `start_run` would set (user, the git commit of the launch dir),
    whether the git tree was dirty (`looplab.git.dirty`), and then its diff, else "".

    Asked once per writer: the jobs of a sweep that share a writer share a launch directory.
    """
    import getpass

    tags = {"mlflow.user": getpass.getuser(), "mlflow.source.type": "LOCAL"}

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return tags, ""
    tags["mlflow.source.git.commit"] = commit.strip()
    changed = git("status", "--porcelain", "--untracked-files=no")
    dirty = bool(changed and changed.strip())
    tags["looplab.git.dirty"] = str(dirty).lower()
    return tags, (git("diff", "HEAD") or "") if dirty else ""


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _reader(stream: Any, inbox: Any) -> None:
    """Read messages off a pipe as they come, in order, into `inbox`; ("eof",) at its end.
    The writer reads the trainer's this way (so the trainer never blocks on a full pipe), and
    the trainer the writer's replies."""
    while True:
        try:
            inbox.put(pickle.load(stream))
        except (EOFError, pickle.UnpicklingError, OSError):
            inbox.put(("eof",))
            return


def writer_main() -> None:
    """Entry of the writer process. Signals are the parent's business: it tells us to end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Keep the protocol's stdout to ourselves; anything MLflow prints goes to stderr.
    reply = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inbox: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(sys.stdin.buffer, inbox), daemon=True).start()
    writer = _Writer(reply)
    # Messages not handled yet: while a run's end is being delivered, the next run's messages
    # (a sweep's next job does not wait for that end) wait here, so the two never mix.
    backlog: deque[tuple[Any, ...]] = deque()
    gone = False  # the training process closed the pipe
    while True:
        if not gone:
            ready = backlog and writer.end_deadline is None
            with contextlib.suppress(queue.Empty):  # a message, or something to retry
                backlog.append(inbox.get(timeout=0 if ready else writer.wake_in()))
            while not inbox.empty():  # whatever else has arrived, so epochs go in one write
                backlog.append(inbox.get())
        while backlog and writer.end_deadline is None:
            kind, *args = backlog.popleft()
            if kind == "metrics":
                writer.metrics(*args)
            elif kind == "open":
                writer.open(*args)
            elif kind == "start":
                writer.start(*args)
            elif kind == "find_sweep":
                writer.find_sweep(*args)
            elif kind == "find_finished":
                writer.find_finished(*args)
            elif kind == "end":
                writer.end(*args)
            elif kind == "eof":
                gone = True
        writer.deliver()
        if writer.end_deadline is not None:
            if writer.queue and time.monotonic() < writer.end_deadline:
                if gone:  # nobody sends more: sleep until the next try
                    time.sleep(writer.wake_in() or 0.0)
                continue
            if not writer.ended():
                break
        elif gone and not backlog:
            writer.abandon()
            break
    # The reader thread may still be blocked on stdin; leave without waiting for it.
    with contextlib.suppress(BrokenPipeError):
        reply.close()
    os._exit(0)
