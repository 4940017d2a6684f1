"""The MLflow writer process (`python -m looplab.tracking`): owns the MLflow client.

The training process (`client.Tracker`) never imports MLflow: it pipes its messages
(`protocol`) to this process, which opens the store, starts each run, and hands everything
the run sends to the run's `delivery.Delivery`: one ordered queue, delivered until the store
took it all, with backoff while the store is away. Opening the store and the searches
(a sweep's parent, a finished run) are answered at once.

Each message is handled by the one handler its class has in `Writer.handlers`; a message of
any other class is answered `Error` at once. If the training process goes away without
ending its run (end-of-file), what it sent is delivered and the run is marked KILLED.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from looplab.core.signals import detach_hung_up_terminal, ignore_stops
from looplab.run.tags import PRUNED_AT
from looplab.run.tags import STUDY as STUDY_TAG
from looplab.tracking import protocol
from looplab.tracking.delivery import (
    CreateRun,
    Delivery,
    LogFiles,
    LogInputs,
    LogParams,
    LogText,
    ReopenRun,
)
from looplab.tracking.protocol import (
    End,
    Eof,
    Error,
    FindFinished,
    FindInterrupted,
    FindStudy,
    FindSweep,
    FinishedFound,
    InterruptedFound,
    Metrics,
    Open,
    Opened,
    Resume,
    Start,
    StudyFound,
    SweepFound,
)
from looplab.tracking.record import RECORD_ID_TAG
from looplab.tracking.source import source_tags
from looplab.tracking.store import (
    CONFIG_DIGEST_TAG,
    DATA_DIGEST_TAG,
    HEARTBEAT_TAG,
    ROLE_TAG,
    SWEEP_ID_TAG,
    SWEPT_KEYS_TAG,
    first_line,
    open_store,
    param_batches,
)


class Writer:
    """The writer's state between messages: the store, and the run being delivered."""

    def __init__(self, reply_stream: Any) -> None:
        self.reply_stream = reply_stream
        self.client: Any = None
        self.uri = ""
        self.experiment_id: str | None = None
        self.open_error: str | None = None
        self.run = self.new_run()
        # One handler per message class: the only way a message is acted on.
        self.handlers: dict[type, Callable[[Any], None]] = {
            Open: self.open,
            Start: self.start,
            Resume: self.resume,
            Metrics: self.metrics,
            FindSweep: self.find_sweep,
            FindStudy: self.find_study,
            FindFinished: self.find_finished,
            FindInterrupted: self.find_interrupted,
            End: self.end,
        }

    def new_run(self, record_id: str | None = None) -> Delivery:
        return Delivery(self.client, self.experiment_id, self.uri, self.reply, record_id)

    def reply(self, message: Any) -> None:
        """Reply to the training process; if it is gone (a second Ctrl-C), nobody listens."""
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            protocol.send(self.reply_stream, message)

    def handle(self, message: Any) -> None:
        """Act on one message; one of no known class is answered `Error` at once."""
        handler = self.handlers.get(type(message))
        if handler is None:
            self.reply(Error(f"unknown message to the MLflow writer: {message!r:.200}"))
            return
        handler(message)

    # -- the messages --------------------------------------------------------------------------
    def open(self, message: Open) -> None:
        self.uri = message.uri
        try:
            self.client, self.experiment_id = open_store(message.uri, message.experiment)
        except Exception as error:
            self.open_error = f"cannot use MLflow store {message.uri}: {first_line(error)}"
            self.reply(Error(self.open_error))
            return
        self.run = self.new_run()
        self.reply(Opened(self.experiment_id))

    def start(self, message: Start) -> None:
        if self.open_error:
            self.reply(Error(self.open_error))
            return
        self.run = run = self.new_run(message.tags.get(RECORD_ID_TAG))
        now_ms = str(int(time.time() * 1000))
        tags, git_diff = source_tags()
        tags = {**tags, **message.tags, HEARTBEAT_TAG: now_ms}
        run.add(CreateRun(message.run_name, tags, message.start_time_ms))
        for batch in param_batches(message.params):
            run.add(LogParams(batch))
        if message.files:
            run.add(LogFiles(list(message.files)))
        if git_diff:
            run.add(LogText(git_diff, "git.diff"))
        if message.inputs:
            run.add(LogInputs(message.inputs))

    def resume(self, message: Resume) -> None:
        if self.open_error:
            self.reply(Error(self.open_error))
            return
        self.run = self.new_run(message.record_id)
        now_ms = str(int(time.time() * 1000))
        self.run.add(ReopenRun(message.run_id, {**message.tags, HEARTBEAT_TAG: now_ms}))

    def metrics(self, message: Metrics) -> None:
        from mlflow.entities import Metric

        self.run.add_metrics(
            [
                Metric(name, value, timestamp, epoch)
                for epoch, timestamp, values in message.epochs
                for name, value in values.items()
            ]
        )

    def end(self, message: End) -> None:
        self.run.end(
            message.status,
            message.tags,
            message.files,
            message.end_time_ms,
            message.wait_s,
            message.model_folder,
        )

    def find_sweep(self, message: FindSweep) -> None:
        """Reply with the parent run tagged with this sweep id, and its swept keys."""

        def answer(run: Any) -> SweepFound:
            if run is None:
                return SweepFound(None, [])
            keys = run.data.tags.get(SWEPT_KEYS_TAG, "")
            return SweepFound(run.info.run_id, [k for k in keys.split(",") if k])

        self._reply_with_run(
            f"tags.`{SWEEP_ID_TAG}` = '{message.sweep_id}' and tags.`{ROLE_TAG}` = 'sweep'",
            answer,
        )

    def find_study(self, message: FindStudy) -> None:
        """Reply with the newest parent run of this search's study."""

        def answer(run: Any) -> StudyFound:
            if run is None:
                return StudyFound(None, None)
            return StudyFound(run.info.run_id, run.data.tags.get(RECORD_ID_TAG))

        self._reply_with_run(
            f"tags.`{STUDY_TAG}` = '{message.study}' and tags.`{ROLE_TAG}` = 'sweep'",
            answer,
            order_by=["attributes.start_time DESC"],
        )

    def find_finished(self, message: FindFinished) -> None:
        """Reply with a FINISHED run of the experiment that trained the same config on the
        same data (the newest, and not one a search's pruner stopped early), and its metrics
        (final and best)."""

        def answer(run: Any) -> FinishedFound:
            if run is None:
                return FinishedFound(None, {})
            return FinishedFound(run.info.run_id, dict(run.data.metrics))

        self._reply_with_run(
            f"tags.`{CONFIG_DIGEST_TAG}` = '{message.config_digest}' and "
            f"tags.`{DATA_DIGEST_TAG}` = '{message.data_digest}' and "
            f"attributes.status = 'FINISHED' and tags.`{PRUNED_AT}` IS NULL",  # not a pruned one
            answer,
            order_by=["attributes.start_time DESC"],
        )

    def find_interrupted(self, message: FindInterrupted) -> None:
        """Reply with the newest run of the same config and data that stopped with a
        checkpoint, and where that checkpoint is now on this machine."""
        from looplab.tracking.checkpoints import interrupted_checkpoint

        if self.open_error:
            self.reply(Error(self.open_error))
            return
        try:
            found = interrupted_checkpoint(
                self.client, self.experiment_id, message.config_digest, message.data_digest
            )
        except Exception as error:
            self.reply(Error(f"cannot search the MLflow store: {first_line(error)}"))
            return
        self.reply(InterruptedFound(*found))

    def _reply_with_run(
        self, filter_string: str, answer: Callable[[Any], Any], order_by: list[str] | None = None
    ) -> None:
        """Search the experiment for one run and reply `answer(run or None)`; `Error` when
        the store cannot be asked."""
        if self.open_error:
            self.reply(Error(self.open_error))
            return
        try:
            found = self.client.search_runs(
                [self.experiment_id], filter_string=filter_string, order_by=order_by, max_results=1
            )
        except Exception as error:
            self.reply(Error(f"cannot search the MLflow store: {first_line(error)}"))
            return
        self.reply(answer(found[0] if found else None))


def writer_main() -> None:
    """Entry of the writer process. Signals are the parent's business: it tells us to end,
    or its end closes our stdin; what we were sent is delivered either way."""
    ignore_stops()
    # A closed terminal: what MLflow prints goes nowhere rather than fail (see core/signals.py).
    signal.signal(signal.SIGHUP, lambda _s, _f: detach_hung_up_terminal())
    # Keep the protocol's stdout to ourselves; anything MLflow prints goes to stderr.
    reply_stream = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inbox: queue.Queue = queue.Queue()
    threading.Thread(target=protocol.read_into, args=(sys.stdin.buffer, inbox), daemon=True).start()
    writer = Writer(reply_stream)
    # Messages not handled yet: while a run's end is being delivered, the next run's messages
    # (a sweep's next job does not wait for that end) wait here, so the two never mix.
    backlog: deque[Any] = deque()
    gone = False  # the training process closed the pipe
    while True:
        if not gone:
            ready = backlog and writer.run.end_deadline is None
            with contextlib.suppress(queue.Empty):  # a message, or something to retry
                backlog.append(inbox.get(timeout=0 if ready else writer.run.wake_in()))
            while not inbox.empty():  # whatever else has arrived, so epochs go in one write
                backlog.append(inbox.get())
        while backlog and writer.run.end_deadline is None:
            message = backlog.popleft()
            if isinstance(message, Eof):
                gone = True
            else:
                writer.handle(message)
        run = writer.run
        run.deliver()
        if run.end_deadline is not None:
            if run.queue and time.monotonic() < run.end_deadline:
                if gone:  # nobody sends more: sleep until the next try
                    time.sleep(run.wake_in() or 0.0)
                continue
            if not run.ended():
                break
            writer.run = writer.new_run()
        elif gone and not backlog:
            run.abandon()
            break
    # The reader thread may still be blocked on stdin; leave without waiting for it.
    with contextlib.suppress(BrokenPipeError):
        reply_stream.close()
    os._exit(0)
