"""The training process's side of MLflow tracking: `Tracker`, and this process's idle writers.

`Tracker` never imports MLflow: it buffers epoch results and pipes them (`protocol`), a few
times a second, to a child process (`python -m looplab.tracking`, see writer.py) that owns
the MLflow client. MLflow's per-metric Python cost then runs on another core, and the child
starts importing MLflow while the parent is still loading torch and data.

A writer that ended its run cleanly waits for the next one (`Writers`): the jobs of a sweep
that run in one process (Hydra's basic launcher, a joblib worker) share a writer and pay for
MLflow's import once. A sweep's job does not wait for its run to be created or ended: the
writer does that while the next job is set up, and its answers are read (in order, by a
thread) when the writer is taken up again (`start_tracker`) or the sweep ends
(`settle_idle`). `OfflineTracker` (tracking.offline=true) starts no writer at all.

Slightly over 400 lines on purpose: `Tracker` parks itself in `Writers` when its run ends
and `Writers` hands it out again, so the two stay in one module rather than import each other.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from looplab.core.errors import TrackingError
from looplab.core.signals import ALL_STOPS
from looplab.tracking import protocol
from looplab.tracking.links import run_hint
from looplab.tracking.offline import OfflineTracker
from looplab.tracking.protocol import (
    End,
    Ended,
    Eof,
    Error,
    Metrics,
    Open,
    Opened,
    Resume,
    Start,
    Started,
    StartFailed,
    files_of,
)
from looplab.tracking.queries import ANSWER_SECONDS, StoreQueries
from looplab.tracking.record import RECORD_ID_TAG, RunFolder, shown
from looplab.tracking.store import WRITER_HTTP_ENV

if TYPE_CHECKING:  # the writer process must not pay for importing torch
    from omegaconf import DictConfig

    from looplab.core.loop import EpochResult

# The parent sends buffered epochs at least this often (seconds) or every this many epochs.
SEND_SECONDS = 0.5
SEND_EPOCHS = 500
# How long the parent waits for the store to answer when it opens it or starts a run.
CONNECT_TIMEOUT_SECONDS = ANSWER_SECONDS
# How long the parent waits for the writer beyond `tracking.wait_s` at the end of a run: the
# last store call in flight may take MLFLOW_HTTP_REQUEST_TIMEOUT to give up.
FINISH_SLACK_SECONDS = 30.0
DEFAULT_WAIT_SECONDS = 60.0


def start_tracker(cfg: DictConfig) -> Tracker | OfflineTracker | None:
    """The writer for a plain config (an idle one if this process has it), an offline
    recorder for `tracking.offline=true`, or None when tracking is off."""
    if not cfg.tracking.enabled:
        return None
    wait_s = float(cfg.tracking.get("wait_s", DEFAULT_WAIT_SECONDS))
    if cfg.tracking.get("offline", False):
        return OfflineTracker(cfg.tracking.uri, cfg.tracking.experiment)
    return Writers.here().take(cfg.tracking.uri, cfg.tracking.experiment, wait_s)


def start_idle_writer(cfg: DictConfig) -> None:
    """Start a writer for a plain config's store now, idle until this process's next run
    takes it (unless one waits already), so that its start (importing MLflow, opening the
    store: seconds) overlaps other work: `hydra/launcher=stacked` preparing its stacks."""
    if (cfg.tracking.uri, cfg.tracking.experiment) not in Writers.here().idle:
        tracker = start_tracker(cfg)  # none idle: a new writer, with nothing to settle
        if isinstance(tracker, Tracker):  # not offline, not off
            Writers.here().park(tracker)


def settle_idle() -> list[str]:
    """Wait until every run this process's writers were asked to end has ended; return the
    warnings of those whose end did not reach the store. A sweep calls this before it reads
    its children back."""
    return Writers.here().settle()


def _warn(warning: str | None) -> None:
    if warning:
        logging.getLogger("looplab").warning(f"warning: {warning}")


class Writers:
    """This process's writers whose run ended cleanly (or that were started ahead,
    `start_idle_writer`), by (uri, experiment), waiting for its next run. One instance per
    process (`here()`): a forked child makes its own, never using its parent's, whose
    writers it does not own; each instance stops its writers when its own process exits."""

    _here: ClassVar[Writers | None] = None

    @classmethod
    def here(cls) -> Writers:
        if cls._here is None or cls._here.pid != os.getpid():
            cls._here = cls()
        return cls._here

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.idle: dict[tuple[str, str], Tracker] = {}
        atexit.register(self.stop_all)

    def take(self, uri: str, experiment: str, wait_s: float) -> Tracker:
        """The idle writer for this store and experiment, its last run settled, else a new one."""
        idle = self.idle.pop((uri, experiment), None)
        if idle is not None:
            _warn(idle.settle_later())  # the last job's end: the next run's messages follow it
            self.forget(idle)
            if idle.idle and idle.process.poll() is None:
                idle.idle = False  # in use again: close() must stop it if its run goes wrong
                idle.wait_s = wait_s
                return idle
            idle.stop()
        return Tracker(uri, experiment, wait_s=wait_s)

    def park(self, tracker: Tracker) -> None:
        """Keep `tracker`'s writer for this process's next run."""
        tracker.idle = True
        self.idle[(tracker.uri, tracker.experiment)] = tracker

    def forget(self, tracker: Tracker) -> None:
        if self.idle.get((tracker.uri, tracker.experiment)) is tracker:
            del self.idle[(tracker.uri, tracker.experiment)]

    def settle(self) -> list[str]:
        """`Tracker.settle_later` of every idle writer: the warnings of ends that failed."""
        warnings = [tracker.settle_later() for tracker in list(self.idle.values())]
        return [warning for warning in warnings if warning]

    def stop_all(self) -> None:
        """At this process's exit: the idle writers' last answers read, then stopped."""
        if os.getpid() != self.pid:
            return  # a forked child exits: these are its parent's
        for warning in self.settle():
            _warn(warning)
        while self.idle:
            self.idle.popitem()[1].stop()


class Tracker(StoreQueries, RunFolder):
    """The training process's side: starts the writer, hands it epochs, ends the run."""

    def __init__(self, uri: str, experiment: str, wait_s: float = DEFAULT_WAIT_SECONDS) -> None:
        self.uri, self.experiment, self.wait_s = uri, experiment, wait_s
        self.note: str | None = None  # an informative line for the user at the end of a run
        self._reset()
        # The writer's HTTP settings win over this process's: it retries by itself.
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **WRITER_HTTP_ENV}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "looplab.tracking"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=False,
        )
        self.replies: queue.Queue = queue.Queue()
        threading.Thread(
            target=protocol.read_into, args=(self.process.stdout, self.replies), daemon=True
        ).start()
        self.opened = False  # the writer has said that the store answers
        self.experiment_id: str | None = None  # the store's id of the experiment, once open
        self.finished_run_id: str | None = None  # the id of the last run this writer ended
        self.runs_started = 0  # runs handed to this writer, over the jobs it served
        self._send(Open(uri, experiment))

    def _reset(self) -> None:
        """The per-run state, fresh for each run this writer serves."""
        self.pending: list[protocol.Epoch] = []
        self.last_send = time.monotonic()
        self.run_id: str | None = None
        self.idle = False  # the run ended and the writer waits in `Writers` for the next one
        # Set when the writer went away mid-run: training goes on, and the user is told.
        self.lost: str | None = None
        self.record_dir: Path | None = None
        self.end_pending = False  # `End` sent, its answer not read yet (see `settle`)
        # What `finish` was told, for `settle` to record once the writer has answered.
        self.ending: tuple[str, dict[str, str], list[tuple[Path, str | None]], int] | None = None

    # -- protocol ----------------------------------------------------------------------------
    def _send(self, message: Any) -> None:
        """Pickle one message down the pipe, whole: Ctrl-C, SIGTERM and SIGHUP wait until it
        is out, so a signal never leaves half a message that the writer would take for the end."""
        assert self.process.stdin is not None
        signal.pthread_sigmask(signal.SIG_BLOCK, ALL_STOPS)
        try:
            protocol.send(self.process.stdin, message)
        except (BrokenPipeError, OSError):
            raise TrackingError(f"the MLflow writer for {self.uri} stopped unexpectedly") from None
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, ALL_STOPS)

    def _receive(self, timeout: float, waiting_for: str) -> Any:
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
        if isinstance(reply, Eof):
            raise TrackingError(f"the MLflow writer for {self.uri} exited while {waiting_for}")
        if isinstance(reply, Error):
            raise TrackingError(reply.why)
        return reply

    def _receive_until(self, kind: type, timeout: float, waiting_for: str) -> Any:
        """Read replies until one of class `kind`; a run's `Started` (or why it could not
        start) may come first, whenever the store took the run."""
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(max(0.0, deadline - time.monotonic()), waiting_for)
            if isinstance(reply, kind):
                return reply
            if isinstance(reply, Started):
                self.run_id = reply.run_id
            elif not isinstance(reply, StartFailed):
                raise TrackingError(
                    f"the MLflow writer for {self.uri} answered {reply!r:.200} while {waiting_for}"
                )
            elif kind is Started:
                raise TrackingError(reply.why)

    def _ensure_open(self) -> None:
        """Wait, once per writer, until the store answers (or fail in seconds if it never
        does): a run never starts training against a store that is not there."""
        if not self.opened:
            opened = self._receive_until(Opened, CONNECT_TIMEOUT_SECONDS, "opening the store")
            self.experiment_id = opened.experiment_id
            self.opened = True

    # -- the run -----------------------------------------------------------------------------
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
        start_ms = start_time_ms or int(time.time() * 1000)
        self._open_record(record_dir, run_name, params, tags, start_ms, offline=False)
        self._start_files(artifacts)
        tags = {**tags, RECORD_ID_TAG: self.record.record_id}
        self._send(Start(run_name, params, tags, files_of(artifacts), start_ms, inputs))
        self.runs_started += 1
        if wait:
            started = self._receive_until(Started, CONNECT_TIMEOUT_SECONDS, "starting the run")
            self.run_id = started.run_id
        return self.run_id

    def resume_run(
        self,
        run: dict,
        run_name: str,
        params: dict[str, str],
        tags: dict[str, str],
        artifacts: list[tuple[Path, str | None]],
        history: list[EpochResult],
        record_dir: Path | None = None,
    ) -> str | None:
        """Go on with the run a checkpoint names (`run`: its run_id, record_id), RUNNING
        again; waits until the store has it. Its `history` is sent again: the writer drops
        the epochs the store has, so none is logged twice."""
        self._ensure_open()
        self.note = None
        self._reopen_record(record_dir, run["record_id"], run_name, params, tags, offline=False)
        self._send(Resume(run.get("run_id"), run["record_id"], tags))
        self.runs_started += 1
        resumed = self._receive_until(Started, CONNECT_TIMEOUT_SECONDS, "resuming the run")
        self.run_id = resumed.run_id
        self.pending = [(r.epoch, r.timestamp_ms, r.metrics) for r in history]
        return self.run_id

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
                self._send(Metrics(epochs))
            except TrackingError as error:
                self.lost = str(error)
        self.last_send = time.monotonic() if now is None else now

    def finish(
        self,
        status: str,
        tags: dict[str, str] | None = None,
        artifacts: list[tuple[Path, str | None]] = (),
        wait: bool = True,
        model_folder: Path | None = None,
    ) -> str | None:
        """Flush, log the closing artifacts (and the model from `model_folder`: the writer
        logs it as an MLflow model), end the run as `status`; return any warning.

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
                model = str(model_folder) if model_folder else None
                self._send(End(status, tags, files_of(artifacts), ended_ms, self.wait_s, model))
                self.end_pending = True
                if not wait:
                    self._close_record(status, tags, artifacts, ended_ms, None)
                    Writers.here().park(self)
                    return None
        except TrackingError as error:
            self.lost = str(error)
        return self.settle()

    def settle(self) -> str | None:
        """Read the writer's answer to the run's end (`finish`), record how the run ended in
        its folder, and return any warning. A writer that can serve the next run waits in
        `Writers`; any other is stopped."""
        if self.ending is None:
            return None
        status, tags, artifacts, ended_ms = self.ending
        self.ending = None
        delivered, warning = False, None
        try:
            if self.end_pending:
                self.end_pending = False
                ended: Ended = self._receive_until(
                    Ended, self.wait_s + FINISH_SLACK_SECONDS, "ending the run"
                )
                self.run_id, delivered, warning = ended.run_id, ended.delivered, ended.warning
                if ended.outage_seconds and delivered:
                    self.note = (
                        f"the MLflow store {self.uri} was away for {ended.outage_seconds:.0f} s; "
                        "everything reached it once it was back"
                    )
                if ended.reusable:
                    self.finished_run_id = self.run_id
                    self._close_record(status, tags, artifacts, ended_ms, self._synced())
                    self._reset()
                    Writers.here().park(self)
                    return warning
        except TrackingError as error:
            self.lost = str(error)
        self.idle = False
        Writers.here().forget(self)
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
        """Where to see the run this writer ended, for its store (tracking/links.py)."""
        if self.finished_run_id is None:
            return None
        return run_hint(self.uri, self.experiment_id, self.finished_run_id)

    def release(self) -> None:
        """No run was started (a skipped job): keep the writer for this process's next run."""
        if self.process.poll() is None and self.ending is None and self.run_id is None:
            Writers.here().park(self)
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
