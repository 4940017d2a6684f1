"""The trainer's MLflow writer as a real process (`python -m looplab.tracking`): what it
answers to a message it does not know, the HTTP settings it runs with, and whose idle
writers a process may take. Real stores (SQLite in tmp_path, a real `mlflow server`)."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import mlflow_server

RETRIES, TIMEOUT = "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"


def writer_environment(pid: int) -> dict[str, str]:
    """The environment a process was started with, as the kernel keeps it."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, queue.Queue]]:
    """A writer process with its store opened: (process, its replies as they come)."""
    from looplab.tracking import protocol

    process = subprocess.Popen(
        [sys.executable, "-m", "looplab.tracking"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    replies: queue.Queue = queue.Queue()
    threading.Thread(target=protocol.read_into, args=(process.stdout, replies), daemon=True).start()
    try:
        protocol.send(process.stdin, protocol.Open(f"sqlite:///{tmp_path / 'mlflow.db'}", "x"))
        assert isinstance(replies.get(timeout=120), protocol.Opened)
        yield process, replies
    finally:
        process.stdin.close()
        process.wait(timeout=60)


def test_a_message_of_no_known_kind_is_answered_error_at_once(writer) -> None:
    """Fault: the writer's dispatch ignores a message it has no handler for, so a misspelt
    or foreign message waits out the trainer's 60 s timeout instead of failing at once."""
    from looplab.tracking import protocol

    process, replies = writer
    foreign = [("find_sweep", "abc"), "end", protocol.Ended(None, True, None, 0.0, True)]
    for message in foreign:
        protocol.send(process.stdin, message)
        reply = replies.get(timeout=10)  # at once: nothing waits on the store here
        assert isinstance(reply, protocol.Error), (message, reply)
        assert "unknown message" in reply.why and repr(message)[:20] in reply.why
    # and the writer still serves what it knows
    protocol.send(process.stdin, protocol.FindSweep("abc"))
    assert replies.get(timeout=30) == protocol.SweepFound(None, [])


def test_the_writer_never_retries_http_whatever_its_parent_set(tmp_path: Path, monkeypatch) -> None:
    """Faults: a `looplab` command's server check (store.check_server) leaves MLflow's retry
    settings in os.environ, where every writer started later inherits them; or the
    training process's own MLFLOW_HTTP_REQUEST_MAX_RETRIES wins over the writer's, so one
    store call may block for minutes of MLflow's retries instead of the writer's backoff;
    or the commands' own store calls lose their one retry and 10 s timeout."""
    from looplab.tracking import Tracker, reader
    from looplab.tracking.store import check_server

    monkeypatch.delenv(RETRIES, raising=False)
    monkeypatch.delenv(TIMEOUT, raising=False)
    with mlflow_server(tmp_path) as (url, _):
        check_server(url)  # as `looplab runs` or `looplab reproduce` do against a server
        assert RETRIES not in os.environ and TIMEOUT not in os.environ
        # the commands' MLflow calls (reader.call) have theirs, and only while they run
        seen = reader.call(lambda: (os.environ.get(RETRIES), os.environ.get(TIMEOUT)))
        assert seen == ("1", "10")
        assert RETRIES not in os.environ and TIMEOUT not in os.environ
        after_check = Tracker(url, "looplab")
        monkeypatch.setenv(RETRIES, "7")
        monkeypatch.setenv(TIMEOUT, "300")
        user_set = Tracker(url, "looplab")
        try:
            for tracker in (after_check, user_set):
                env = writer_environment(tracker.process.pid)
                assert (env.get(RETRIES), env.get(TIMEOUT)) == ("0", "10")
        finally:
            after_check.stop()
            user_set.stop()


def test_a_forked_child_never_takes_its_parents_idle_writer(tmp_path: Path) -> None:
    """Fault: the idle writers are one registry for the parent and every child it forks, so
    a forked child takes (and ends runs on, and stops) a writer whose pipe its parent owns."""
    from looplab.tracking.client import Tracker, Writers

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "looplab")
    try:
        tracker.release()  # no run: the writer waits for this process's next run
        parents, key = Writers.here(), (uri, "looplab")
        assert parents.idle[key] is tracker
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # the child: its own, empty registry; the parent's stays as it was
            ok = Writers.here() is not parents and not Writers.here().idle
            os.write(write, b"ok" if ok and parents.idle[key] is tracker else b"shared")
            os._exit(0)
        os.close(write)
        answer = os.read(read, 16)
        os.waitpid(child, 0)
        assert answer == b"ok"
        assert Writers.here() is parents and parents.idle[key] is tracker
    finally:
        Writers.here().forget(tracker)
        tracker.stop()


def test_a_writer_started_ahead_waits_idle_and_the_next_run_takes_it(
    tmp_path: Path, make_config
) -> None:
    """`start_idle_writer` (hydra/launcher=stacked, before its stacks train). Faults: no
    writer started ahead (job 0 waits for MLflow's import), a second writer started beside
    the one that waits already (a later batch of the sweep), one started for an offline or
    untracked config, or the next run not taking the one started ahead."""
    from looplab.tracking.client import Writers, start_idle_writer, start_tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracked = make_config(f"tracking.uri={uri}")
    writers, key = Writers.here(), (uri, tracked.tracking.experiment)
    before = dict(writers.idle)  # other tests' writers, left alone
    try:
        for config in (make_config("tracking.offline=true"), make_config("tracking.enabled=false")):
            start_idle_writer(config)
            assert writers.idle == before
        start_idle_writer(tracked)
        ahead = writers.idle[key]
        start_idle_writer(tracked)
        assert writers.idle[key] is ahead
        taken = start_tracker(tracked)
        assert taken is ahead and key not in writers.idle
        taken.release()
    finally:
        for started in [w for k, w in writers.idle.items() if k not in before]:
            writers.forget(started)
            started.stop()
