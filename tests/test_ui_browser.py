"""`looplab ui` as a user meets it: a real MLflow server, its printed link in a real browser.

Headless Chromium renders the link and the test reads the page it lands on, so the link's
exact form (MLflow 3.17 opens on a GenAI traces overview unless told otherwise) is checked
where it matters, in the UI's JavaScript router.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port
from test_compare import make_sweep_store

pytestmark = pytest.mark.slow
LOOPLAB = str(Path(sys.executable).parent / "looplab")
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not on PATH (Debian: apt-get install chromium)"
)


def first_line(process: subprocess.Popen, timeout: float) -> str:
    """The first line the process prints on stdout, waiting at most `timeout` seconds."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"looplab ui printed nothing in {timeout} s"
    return process.stdout.readline()


def server_processes(root_pid: int) -> dict[int, str]:
    """pid -> command line of every live process below `root_pid` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (entry / "cmdline").read_text().replace("\0", " ")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = {}, list(children.get(root_pid, []))
    while todo:
        pid = todo.pop()
        if alive(pid):
            found[pid] = commands[pid]
        todo += children.get(pid, [])
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting to be reaped does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def ui(tmp_path_factory) -> Iterator[tuple[subprocess.Popen, str, object, int]]:
    """`looplab ui` on a free port over a sweep store: (process, printed line, store, port)."""
    store = make_sweep_store(tmp_path_factory.mktemp("ui"))
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    process = subprocess.Popen(
        [LOOPLAB, "ui", "--port", str(port), "--tracking-uri", store.uri],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        yield process, first_line(process, timeout=120), store, port
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@needs_chromium
def test_the_printed_link_opens_the_runs_view_with_the_sweep(ui, tmp_path: Path) -> None:
    """The link lands on MLflow's GenAI traces overview (or its GenAI-mode runs tab), points at
    the wrong experiment or port, or the server does not serve the store: the sweep's parent
    run is not on the page."""
    _, line, store, port = ui
    link = re.search(r"http://\S+", line).group()
    assert link.startswith(f"http://127.0.0.1:{port}/#/experiments/")
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=20000",
            "--dump-dom",
            link,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    ).stdout
    assert store.parent_name in dom, dom[-2000:]
    assert "breast_cancer epochs=4" in dom  # the plain run beside the sweeps
    # The model-training runs view is headed "Runs"; GenAI mode heads it "Training runs".
    assert re.search(r"<h2[^>]*>Runs</h2>", dom), "not the model-training runs view"


def test_the_server_is_lean(ui) -> None:
    """MLflow's job runner is on (huey consumers), or more than one worker: a dozen processes
    where two do."""
    process, _, _, _ = ui
    below = list(server_processes(process.pid).values())
    assert len(below) == 2, below  # `mlflow server` and its one uvicorn process
    assert not any("huey" in command for command in below), below


def test_ctrl_c_stops_it_cleanly(ui) -> None:
    """Ctrl-C leaves the server running (it is in its own session), prints a traceback, or
    shows MLflow's warnings and start-up chatter to the user."""
    process, line, _, port = ui
    below = server_processes(process.pid)
    assert below and process.poll() is None
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    stderr = process.stderr.read()
    assert "Traceback" not in stderr and "Warning" not in stderr, stderr
    assert process.stdout.read() == ""  # one line, the link, and nothing else
    assert line.count("http://") == 1
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in below) or _listening(port):
        assert time.monotonic() < deadline, "the server outlived looplab ui"
        time.sleep(0.2)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
