"""MLflow tracking, done by a writer process so that the training process never waits for it.
 `Tracker` lives in the training process and
never imports MLflow: it buffers epoch results and pipes them, a few times a second, to a
child process (`python -m looplab.tracking`) that owns the MLflow client, writes metrics
with `log_batch`, and ends the run. MLflow's per-metric Python cost then runs on another
core, and the child starts importing MLflow while the parent is still loading torch and data.

Messages are pickled tuples on the child's stdin; replies come back on its stdout.
If the training process dies without saying goodbye, the child sees end-of-file and marks
the run KILLED, so no run is ever left RUNNING. A writer that ended its run cleanly waits for
the next one: the jobs of a sweep that run in one process (Hydra's basic launcher, a joblib
worker) share a writer and pay for MLflow's import once. A sweep job does not wait for its
run's end either: the writer ends it while the next job is set up, and the answer is read
when the writer is taken up again (`start_tracker`) or the sweep ends (`settle_idle`).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from looplab.errors import TrackingError
from looplab.tracking.store import open_store

if TYPE_CHECKING:  # the writer process must not pay for importing torch
    from omegaconf import DictConfig

    from looplab.loop import EpochResult

# The parent sends buffered epochs at least this often (seconds) or every this many epochs.
SEND_SECONDS = 0.5
SEND_EPOCHS = 500
# MLflow's own limits per log_batch call.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000
# How long the parent waits for the store to answer before giving up, and for the last flush.
CONNECT_TIMEOUT_SECONDS = 60.0
FINISH_TIMEOUT_SECONDS = 120.0


# Writers whose run ended cleanly, by (uri, experiment), waiting for this process's next job.
_IDLE: dict[tuple[str, str], Tracker] = {}


def start_tracker(cfg: DictConfig) -> Tracker | None:
    """The writer for a plain config (an idle one if this process has it), or None when
    tracking is off."""
    if not cfg.tracking.enabled:
        return None
    key = (cfg.tracking.uri, cfg.tracking.experiment)
    idle = _IDLE.pop(key, None)
    if idle is not None:
        _warn(idle.settle_later())  # the last job's end: the next run's messages follow it
        if idle.idle and idle.process.poll() is None:
            idle.idle = False  # in use again: close() must stop it if its run goes wrong
            return idle
        idle.stop()
    return Tracker(*key)


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


class Tracker:
    """The training process's side: starts the writer, hands it epochs, ends the run."""

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri, self.experiment = uri, experiment
        self._reset()
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
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
        self.finished_run_id: str | None = None  # the id of the last run this writer ended
        self.runs_started = 0  # runs handed to this writer, over the jobs it served
        self._send(("open", uri, experiment))

    def _reset(self) -> None:
        """The per-run state, fresh for each run this writer serves."""
        self.pending: list[tuple[int, int, dict[str, float]]] = []
        self.last_send = time.monotonic()
        self.run_id: str | None = None
        self.start_pending = False  # "start" sent, its reply not read yet
        self.end_pending = False  # "end" sent, its reply not read yet (see `settle`)
        self.idle = False  # the run ended and the writer waits in _IDLE for the next one
        # Set when the writer went away mid-run: training goes on, and the user is told.
        self.lost: str | None = None
        self.lost_from_epoch: int | None = None

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
        """The writer's next reply, in order. Replies are read off the pipe by a thread: a
        job that did not wait for its run's end leaves two replies in the pipe, and one
        buffered read may take both, where `select` on the pipe would no longer see the
        second."""
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

    def _ensure_open(self) -> None:
        """Wait, once per writer, until the store answers (or fail in seconds if it never
        does): a run never starts training against a store that is not there."""
        if not self.opened:
            self._receive(CONNECT_TIMEOUT_SECONDS, "opening the store")
            self.opened = True

    # -- the run -----------------------------------------------------------------------------
    def find_sweep(self, sweep_id: str) -> tuple[str | None, list[str]]:
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
        inputs: list[dict[str, str]] | None = None,
    ) -> str | None:
        """Create the run with its params, tags and start-up artifacts; return its id.

        `inputs` are MLflow dataset inputs (name, digest, source_type, source, schema,
        profile, context), logged with `log_inputs` so the UI's Dataset column shows them.

        With `wait=False` training goes on while the writer creates the run (tens of
        milliseconds per run, a sweep job's largest cost); the id is read in `finish`.
        """
        self._ensure_open()
        files = [(str(path), artifact_path) for path, artifact_path in artifacts]
        started = start_time_ms or int(time.time() * 1000)
        message = ("start", run_name, params, tags, files, started)
        self._send(message + ((inputs,) if inputs else ()))
        self.start_pending = True
        self.runs_started += 1
        if wait:
            self._read_start()
        return self.run_id

    def find_finished(self, config_digest: str, data_digest: str) -> tuple[str | None, float]:
        """A FINISHED run of this experiment with the same config identity and data digest,
        and its final val_loss (NaN when it has none); (None, NaN) when there is none."""
        self._ensure_open()
        self._send(("find_finished", config_digest, data_digest))
        _, run_id, val_loss = self._receive(CONNECT_TIMEOUT_SECONDS, "finding finished runs")
        return run_id, val_loss

    def _read_start(self) -> None:
        if self.start_pending:
            self.start_pending = False
            _, self.run_id, _ = self._receive(CONNECT_TIMEOUT_SECONDS, "starting the run")

    def __call__(self, result: EpochResult) -> None:
        """Epoch callback: buffer, and pass the buffer on a few times a second."""
        self.pending.append((result.epoch, result.timestamp_ms, result.metrics))
        now = time.monotonic()
        if now - self.last_send >= SEND_SECONDS or len(self.pending) >= SEND_EPOCHS:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Hand the buffer to the writer; if the writer is gone, count what is lost, go on."""
        epochs, self.pending = self.pending, []  # taken first: a signal cannot send them twice
        if epochs and self.lost is None:
            try:
                self._send(("metrics", epochs))
            except TrackingError as error:
                self.lost, self.lost_from_epoch = str(error), epochs[0][0]
        self.last_send = time.monotonic() if now is None else now

    def finish(
        self,
        status: str,
        tags: dict[str, str] | None = None,
        artifacts: list[tuple[Path, str | None]] = (),
        wait: bool = True,
    ) -> str | None:
        """Flush, log the closing artifacts, end the run as `status`; return any warning.

        Training is over by now and `metrics.csv` holds every epoch, so a writer that fails
        here is reported as a warning, not as an error that would hide a finished run.
        With `wait=False` (a sweep's job) this process does not wait for the writer at all:
        it creates and ends the run while the next job is set up, and what it answers (the
        run's id among it) is read, and any warning told, by `settle`.
        """
        try:
            self.flush()
            if wait:
                self._read_start()
            self.finished_run_id = self.run_id
            if self.lost is None:
                files = [(str(path), artifact_path) for path, artifact_path in artifacts]
                self._send(("end", status, tags or {}, files))
                start_pending = self.start_pending
                self._reset()
                self.idle, self.end_pending, self.start_pending = True, True, start_pending
                _IDLE[(self.uri, self.experiment)] = self
                return self.settle() if wait else None
        except TrackingError as error:
            self.lost = str(error)
            self.idle = False
            _IDLE.pop((self.uri, self.experiment), None)
        finally:
            self.close()
        since = f" from epoch {self.lost_from_epoch} on" if self.lost_from_epoch else ""
        return (
            f"{self.lost}; the metrics{since} and the run's end ({status}) did not reach {self.uri}"
        )

    def settle(self) -> str | None:
        """Read the writer's answer to the last "end", if not read yet; return its warning.

        A writer whose store stopped answering leaves after that answer: it is not idle then,
        and `start_tracker` starts a fresh one.
        """
        if not self.end_pending:
            return None
        try:
            if self.start_pending:  # a run ended without waiting: its id comes only now
                self._read_start()
                self.finished_run_id, self.run_id = self.run_id, None
            _, warning, reusable = self._receive(FINISH_TIMEOUT_SECONDS, "ending the run")
        except TrackingError as error:
            warning, reusable = str(error), False
        self.end_pending = False
        if not reusable:
            self.idle = False
            if _IDLE.get((self.uri, self.experiment)) is self:
                del _IDLE[(self.uri, self.experiment)]
            self.close()
        return warning

    def settle_later(self) -> str | None:
        """`settle`, for a run whose closing line is already out: the warning names it."""
        warning = self.settle()
        return f"MLflow run {self.finished_run_id}: {warning}" if warning else None

    def release(self) -> None:
        """No run was started (a skipped job): keep the writer for this process's next run."""
        if self.process.poll() is None and not self.start_pending and self.run_id is None:
            self.idle = True
            _IDLE[(self.uri, self.experiment)] = self
        else:
            self.close()

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
            self.process.wait(timeout=FINISH_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()


# =========================================================================================
# The writer process: everything below runs in `python -m looplab.tracking`.
# =========================================================================================


class _Writer:
    """Owns the MLflow client: opens the store, creates the run, writes batches, ends it."""

    def __init__(self, reply: Any) -> None:
        self.reply = reply
        self.client: Any = None
        self.uri = ""
        self.experiment_id: str | None = None
        self.open_error: str | None = None
        self.run_id: str | None = None
        self.undelivered = 0
        self.store_error: str | None = None
        self.first_undelivered_epoch: int | None = None

    def send(self, *message: Any) -> None:
        """Reply to the training process; if it is gone (a second Ctrl-C), nobody listens."""
        with contextlib.suppress(BrokenPipeError):
            pickle.dump(message, self.reply, protocol=pickle.HIGHEST_PROTOCOL)
            self.reply.flush()

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
        if self.open_error:
            self.send("error", self.open_error)
            return
        try:
            found = self.client.search_runs(
                [self.experiment_id],
                filter_string=(
                    f"tags.`looplab.sweep_id` = '{sweep_id}' and tags.`looplab.role` = 'sweep'"
                ),
                max_results=1,
            )
        except Exception as error:
            self.send("error", f"cannot search the MLflow store: {_first_line(error)}")
            return
        if not found:
            self.send("sweep", None, [])
            return
        keys = found[0].data.tags.get("looplab.swept_keys", "")
        self.send("sweep", found[0].info.run_id, [k for k in keys.split(",") if k])

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
        from mlflow.entities import Param

        try:
            source_tags, git_diff = _source_tags()
            tags = {**source_tags, **tags}
            run = self.client.create_run(
                self.experiment_id, start_time=start_time_ms, run_name=run_name, tags=tags
            )
            self.run_id = run.info.run_id
            items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
            for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
                self.client.log_batch(
                    self.run_id, params=items[start : start + MAX_PARAMS_PER_BATCH]
                )
            self._log_artifacts(files)
            if git_diff:
                self.client.log_text(self.run_id, git_diff, "git.diff")
            if inputs:
                self._log_inputs(inputs)
        except Exception as error:
            if self.run_id:
                self._terminate("FAILED")
            self.run_id = None  # the epochs that follow have nowhere to go
            self.send("error", f"cannot start an MLflow run: {_first_line(error)}")
            return
        self.send("started", self.run_id, self.experiment_id)

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

    def find_finished(self, config_digest: str, data_digest: str) -> None:
        """Reply with a FINISHED run of the experiment that trained the same config on the
        same data (the newest), and its final val_loss."""
        if self.open_error:
            self.send("error", self.open_error)
            return
        try:
            found = self.client.search_runs(
                [self.experiment_id],
                filter_string=(
                    f"tags.`looplab.config_digest` = '{config_digest}' and "
                    f"tags.`looplab.data.digest` = '{data_digest}' and "
                    "attributes.status = 'FINISHED'"
                ),
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
        except Exception as error:
            self.send("error", f"cannot search the MLflow store: {_first_line(error)}")
            return
        if not found:
            self.send("finished", None, float("nan"))
            return
        self.send(
            "finished", found[0].info.run_id, found[0].data.metrics.get("val_loss", float("nan"))
        )

    def metrics(self, epochs: list[tuple[int, int, dict[str, float]]]) -> None:
        from mlflow.entities import Metric

        batch = [
            Metric(name, value, timestamp, epoch)
            for epoch, timestamp, values in epochs
            for name, value in values.items()
        ]
        if self.run_id is None:  # the run could not be started; the trainer is told at the end
            return
        if self.store_error:  # the store went away: count, do not retry for minutes
            self._lost(batch[0].step if batch else None, len(batch))
            return
        for start in range(0, len(batch), MAX_METRICS_PER_BATCH):
            try:
                self.client.log_batch(
                    self.run_id, metrics=batch[start : start + MAX_METRICS_PER_BATCH]
                )
            except Exception as error:
                self.store_error = _first_line(error)
                self._lost(batch[start].step, len(batch) - start)
                return

    def _lost(self, first_epoch: int | None, count: int) -> None:
        """Count metric values the store did not take, and the first epoch they belong to."""
        self.undelivered += count
        if self.first_undelivered_epoch is None:
            self.first_undelivered_epoch = first_epoch

    def end(self, status: str, tags: dict[str, str], files) -> bool:
        """End the run; True when the store still answers, so the next run can use us."""
        if not self.store_error:
            try:
                for key, value in tags.items():
                    self.client.set_tag(self.run_id, key, str(value)[:MAX_PARAM_LENGTH])
                self._log_artifacts(files)
            except Exception as error:
                self.store_error = _first_line(error)
        ended = self._terminate(status)
        warning = None
        if self.store_error:
            first = self.first_undelivered_epoch
            lost = (
                [f"{self.undelivered} metric values from epoch {first} on"]
                if self.undelivered
                else ["the closing tags and files"]
            )
            if not ended:
                lost.append(f"the run's end ({status}), so it may still show as RUNNING")
            warning = (
                f"the MLflow store {self.uri} stopped answering ({self.store_error}); "
                f"{' and '.join(lost)} did not reach it"
            )
        self.run_id, self.undelivered, self.first_undelivered_epoch = None, 0, None
        reusable = self.store_error is None
        self.send("ended", warning, reusable)
        return reusable

    def abandon(self) -> None:
        """The training process went away without ending the run: mark it KILLED."""
        if self.run_id:
            self._terminate("KILLED")

    def _terminate(self, status: str) -> bool:
        """End the run as `status`; False when the store did not take it."""
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception as error:
            self.store_error = self.store_error or _first_line(error)
            return False
        return True

    def _log_artifacts(self, files: list[tuple[str, str | None]]) -> None:
        for path, artifact_path in files:
            if Path(path).is_dir():
                self.client.log_artifacts(self.run_id, path, artifact_path)
            elif Path(path).is_file():
                self.client.log_artifact(self.run_id, path, artifact_path)


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
    held: tuple[Any, ...] | None = None
    while True:
        message, held = (held, None) if held else (inbox.get(), None)
        kind, args = message[0], message[1:]
        if kind == "metrics":  # gather whatever else has arrived into one write
            epochs = list(args[0])
            while held is None and not inbox.empty():
                more = inbox.get()
                if more[0] == "metrics":
                    epochs.extend(more[1])
                else:
                    held = more
            writer.metrics(epochs)
        elif kind == "open":
            writer.open(*args)
        elif kind == "start":
            writer.start(*args)
        elif kind == "find_sweep":
            writer.find_sweep(*args)
        elif kind == "find_finished":
            writer.find_finished(*args)
        elif kind == "end":
            if not writer.end(*args):
                break
        elif kind == "eof":
            writer.abandon()
            break
    # The reader thread may still be blocked on stdin; leave without waiting for it.
    with contextlib.suppress(BrokenPipeError):
        reply.close()
    os._exit(0)
