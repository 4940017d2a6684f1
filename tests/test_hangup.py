"""A closed terminal loses nothing: SIGHUP ends a run, a sweep and a server as Ctrl-C does,
and no server or writer outlives the command that started it.

Real signals to real processes: a real pseudo-terminal that closes under a shell (the kernel
then hangs it up and sends SIGHUP, as when an SSH session drops), `kill -HUP`, SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CLI, free_port, only_run, store_uri
from test_faults import LONG_RUN, csv_rows, popen_cli, wait_for_epochs, writer_pid
from test_ui_browser import alive, first_line, server_processes

pytestmark = pytest.mark.slow
LOOPLAB = str(Path(sys.executable).parent / "looplab")
# bash as the session leader of a new terminal, as a login is: it runs the command (and no
# `exec`: the `exit` after it keeps bash there), and dies of the terminal's SIGHUP.
SHELL_ON_A_NEW_TERMINAL = ["setsid", "--ctty", "bash", "-c", '"$@"; exit $?', "bash"]
# LONG_RUN, printing the tutorial's line every epoch (tqdm's bar would hide a failed write).
ON_A_TERMINAL = [
    *[arg for arg in LONG_RUN if not arg.startswith("train.print_every")],
    "train.print_style=tutorial",
]


def test_a_closed_terminal_ends_the_run_killed_with_every_epoch(tmp_path: Path, client) -> None:
    """Faults: SIGHUP is not handled (the run ends KILLED by its writer, with the epochs the
    trainer had not handed over yet missing from the store), the writer dies with the
    terminal, or the closing is cut by writes to the hung-up terminal (EIO).

    A shell in a new session on a pseudo-terminal runs looplab-train; closing the terminal's
    other end hangs it up: the kernel sends the shell SIGHUP, and when the shell dies, the
    foreground process group (looplab-train and its writer) too."""
    leader, follower = pty.openpty()
    shell = subprocess.Popen(
        [*SHELL_ON_A_NEW_TERMINAL, CLI, *ON_A_TERMINAL, "train.epochs=3000"],
        cwd=tmp_path,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    os.close(follower)
    deadline = time.monotonic() + 120
    while len(csv_rows(tmp_path)) < 3:  # the terminal is read, so that writes never block
        assert time.monotonic() < deadline and shell.poll() is None, "no epochs"
        if select.select([leader], [], [], 0.1)[0]:
            os.read(leader, 65536)
    trainer = next(
        pid for pid, cmd in server_processes(shell.pid).items() if "looplab-train" in cmd
    )
    writer = writer_pid(trainer)
    os.close(leader)  # the terminal goes away
    try:
        shell.wait(timeout=30)
        deadline = time.monotonic() + 120
        while alive(trainer) or alive(writer):
            assert time.monotonic() < deadline, "looplab-train or its writer outlived the terminal"
            time.sleep(0.2)
    finally:
        for pid in (trainer, writer):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    run = only_run(client)
    assert run.info.status == "KILLED"
    assert run.data.tags["looplab.stopped_by"] == "SIGHUP"
    rows = csv_rows(tmp_path)
    assert 3 <= len(rows) < 3000
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [int(row["epoch"]) for row in rows]
    folder = next(tmp_path.glob("outputs/runs/*/*"))
    record = json.loads((folder / "record.json").read_text())
    assert record["pending"] is False, record
    log = (folder / "train.log").read_text()
    assert f"KILLED after {len(rows)} epochs" in log and "terminated (SIGHUP)" in log, log[-500:]
    assert "Traceback" not in log


def test_a_sweep_that_gets_sighup_ends_with_its_parents_counts(tmp_path: Path, client) -> None:
    """Faults: the sweep ends without its summary, its parent left to its writer (KILLED with
    no counts, or RUNNING), or the job's epochs lost."""
    process = popen_cli(tmp_path, "-m", *LONG_RUN, "train.epochs=2,3000")
    deadline = time.monotonic() + 180
    while len(list(tmp_path.glob("outputs/sweeps/*/*/1/metrics.csv"))) < 1:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    time.sleep(1.0)  # a few epochs of job 1
    process.send_signal(signal.SIGHUP)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 129, stderr
    assert "Traceback" not in stdout + stderr
    assert "sweep stopped by SIGHUP: 1 of the 2 jobs that ran finished" in stdout, stdout

    experiment = client.get_experiment_by_name("looplab")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("looplab.role") == "sweep"]
    jobs = {r.data.tags["looplab.job"]: r for r in runs if r is not parent}
    assert parent.info.status == "KILLED"
    tags = parent.data.tags
    assert tags["looplab.stopped_by"] == "SIGHUP"
    counts = [tags[f"looplab.jobs_{k}"] for k in ("finished", "failed", "killed")]
    assert counts == ["1", "0", "1"]
    assert {num: run.info.status for num, run in jobs.items()} == {"0": "FINISHED", "1": "KILLED"}
    assert jobs["1"].data.tags["looplab.stopped_by"] == "SIGHUP"
    history = client.get_metric_history(jobs["1"].info.run_id, "train_loss")
    rows = (next(tmp_path.glob("outputs/sweeps/*/*/1/metrics.csv"))).read_text().splitlines()
    assert len(history) == len(rows) - 1 >= 1


def test_a_trainer_killed_outright_leaves_a_writer_that_ends_its_run_and_goes(
    tmp_path: Path, client
) -> None:
    """Fault: the writer outlives its trainer (the run stays RUNNING, a process left behind)
    or dies with it before delivering what it was sent."""
    process = popen_cli(tmp_path, *LONG_RUN, "train.epochs=3000")
    wait_for_epochs(tmp_path, process, 3)
    writer = writer_pid(process.pid)
    process.kill()
    process.wait(timeout=30)
    deadline = time.monotonic() + 60
    while alive(writer):
        assert time.monotonic() < deadline, "the writer outlived its trainer"
        time.sleep(0.2)
    run = only_run(client)
    assert run.info.status == "KILLED"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) >= 1


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def start_looplab(tmp_path: Path, command: str) -> tuple[subprocess.Popen, int]:
    """`looplab ui` (over a store with one run) or `looplab server`, as a user starts it."""
    port = free_port()
    if command == "ui":
        done = subprocess.run(
            [CLI, "train.epochs=1", "train.print_every=0"], cwd=tmp_path, capture_output=True
        )
        assert done.returncode == 0, done.stderr
        args = ["ui", "--tracking-uri", store_uri(tmp_path)]
    else:
        args = ["server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"]
    process = subprocess.Popen(
        [LOOPLAB, *args, "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    deadline = time.monotonic() + 120
    while not listening(port):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.3)
    if command == "ui":
        assert "http://" in first_line(process, timeout=60)
    return process, port


@pytest.mark.parametrize("command", ["ui", "server"])
@pytest.mark.parametrize("sent", [signal.SIGHUP, signal.SIGKILL])
def test_no_server_outlives_the_command_that_started_it(
    tmp_path: Path, command: str, sent: signal.Signals
) -> None:
    """Faults: SIGHUP ends `looplab ui`/`server` and leaves the `mlflow server` (in a session
    of its own) and its uvicorn running on the port; SIGKILL, which no handler sees, does."""
    process, port = start_looplab(tmp_path, command)
    below = server_processes(process.pid)
    try:
        assert len(below) >= 2, below  # `mlflow server` and uvicorn
        process.send_signal(sent)
        code = process.wait(timeout=60)
        assert code == (129 if sent == signal.SIGHUP else -signal.SIGKILL)
        if sent == signal.SIGHUP:
            assert "Traceback" not in process.stderr.read()
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in below) or listening(port):
            assert time.monotonic() < deadline, f"left running: {below}"
            time.sleep(0.2)
    finally:  # a failure leaves nothing behind either
        for pid in [process.pid, *below]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_nohup_still_keeps_a_run_going(tmp_path: Path) -> None:
    """Fault: looplab's own SIGHUP handler overrides the SIG_IGN that `nohup` set, and a run
    the user asked to survive the terminal ends with it."""
    process = subprocess.Popen(
        ["nohup", CLI, *LONG_RUN, "train.epochs=3000"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_epochs(tmp_path, process, 2)
    process.send_signal(signal.SIGHUP)
    time.sleep(1.5)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130


HUNG_UP = """
import os, pty, sys
from looplab.core.signals import detach_hung_up_terminal
leader, follower = pty.openpty()
os.dup2(follower, 1)
os.close(leader)  # the terminal hangs up: writing to it now fails
try:
    print("lost", flush=True)
except OSError as error:
    sys.stderr.write(f"before: errno {error.errno}\\n")
detach_hung_up_terminal()
print("goes nowhere", flush=True)
sys.stderr.write("after: written\\n")
"""


def test_a_hung_up_terminal_is_swapped_for_dev_null() -> None:
    """Fault: after SIGHUP a run's last console lines fail with EIO (a hung-up terminal), and
    the exception cuts its closing short. The pipe on stderr is left alone."""
    done = subprocess.run([sys.executable, "-c", HUNG_UP], capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (0, "before: errno 5\nafter: written\n")
