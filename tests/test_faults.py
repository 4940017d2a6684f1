"""Faults lose nothing: signals, divergence in a sweep, racing processes, a server that dies.

Every test drives the real `looplab-train` in subprocesses against a real MLflow store (and,
for the server test, a real `mlflow server` on 127.0.0.1).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CLI, mlflow_server, only_run, store_uri

LOOPLAB = str(Path(sys.executable).parent / "looplab")
# A run long enough to be interrupted: about 0.1 s an epoch on a CPU.
LONG_RUN = ["dataset=digits", "model.width=256", "train.batch_size=8", "train.print_every=0"]


def popen_cli(cwd: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.Popen(
        [CLI, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def csv_rows(root: Path) -> list[dict[str, str]]:
    """The rows of the one metrics.csv under root (none while it does not exist)."""
    files = list(root.glob("outputs/runs/*/*/metrics.csv"))
    assert len(files) <= 1, files
    if not files:
        return []
    with files[0].open() as handle:
        return [row for row in csv.DictReader(handle) if row.get("epoch")]


def wait_for_epochs(root: Path, process: subprocess.Popen[str], count: int) -> None:
    deadline = time.monotonic() + 120
    while len(csv_rows(root)) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never reached its first epochs"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sent", "exit_code", "stopped_by"),
    [
        (signal.SIGINT, 130, "SIGINT"),
        (signal.SIGTERM, 143, "SIGTERM"),
        (signal.SIGHUP, 129, "SIGHUP"),
    ],
)
def test_signal_mid_run_keeps_history_and_marks_killed(
    tmp_path: Path, client, sent: signal.Signals, exit_code: int, stopped_by: str
) -> None:
    process = popen_cli(tmp_path, *LONG_RUN, "train.epochs=3000")
    wait_for_epochs(tmp_path, process, 3)
    process.send_signal(sent)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == exit_code, stderr
    assert "Traceback" not in stdout + stderr
    rows = csv_rows(tmp_path)
    assert 3 <= len(rows) < 3000
    assert [int(row["epoch"]) for row in rows] == list(range(1, len(rows) + 1))

    run = only_run(client)
    assert run.info.status == "KILLED"
    assert run.data.tags["looplab.stopped_by"] == stopped_by
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [int(row["epoch"]) for row in rows]
    last = max(history, key=lambda m: m.step)
    assert last.value == pytest.approx(float(rows[-1]["train_loss"]))


@pytest.mark.slow
def test_divergence_in_a_sweep_fails_that_job_only(run_cli, client) -> None:
    """Faults: a diverged job stops the sweep, or the sweep exits 0 as if all went well, or
    the parent run does not count it."""
    result = run_cli(
        "-m", "dataset=diabetes", "train.lr=0.05,1e10,0.1", "train.epochs=15", "train.print_every=0"
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "job 1: training diverged" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "looplab-train: error: 1 job(s) of the sweep failed: #1 lr=1e+10"
    )

    experiment = client.get_experiment_by_name("looplab")
    found = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in found if r.data.tags.get("looplab.role") == "sweep"]
    runs = {r.data.params["train.lr"]: r for r in found if r is not parent}
    assert {lr: r.info.status for lr, r in runs.items()} == {
        "0.05": "FINISHED",
        "10000000000.0": "FAILED",
        "0.1": "FINISHED",
    }
    tags = parent.data.tags
    assert (tags["looplab.jobs_finished"], tags["looplab.jobs_failed"]) == ("2", "1")
    assert parent.info.status == "FAILED"
    diverged = runs["10000000000.0"]
    epoch = int(diverged.data.tags["looplab.diverged_at_epoch"])
    assert 1 <= epoch <= 15
    assert f"at epoch {epoch}" in diverged.data.tags["looplab.error"]
    steps = [m.step for m in client.get_metric_history(diverged.info.run_id, "train_loss")]
    assert sorted(steps) == list(range(1, epoch))  # every finite epoch, none after


def runs_by_experiment(uri: str) -> dict[str, list[str]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return {
        e.name: [r.info.status for r in client.search_runs([e.experiment_id])]
        for e in client.search_experiments()
    }


@pytest.mark.slow
def test_four_processes_race_on_a_new_store(tmp_path: Path) -> None:
    processes = [
        popen_cli(tmp_path, "train.epochs=3", f"seed={seed}", "train.print_every=0")
        for seed in range(4)
    ]
    results = [(p.wait(timeout=240), *p.communicate()) for p in processes]
    for code, _stdout, stderr in results:
        assert code == 0, stderr
    found = runs_by_experiment(store_uri(tmp_path))
    assert found.get("looplab") == ["FINISHED"] * 4, found
    assert found.get("Default", []) == [], found


# A run of fast epochs (a few ms each) that lasts long enough to outlive a server restart.
OUTAGE_RUN = ["dataset=digits", "model.width=32", "train.print_every=0"]


def start_server(folder: Path, port: int):
    """The server of `folder/server.db` on `port` (the same database and port each time)."""
    from looplab.server import mlflow_server as real_server

    return real_server(
        f"sqlite:///{folder / 'server.db'}",
        artifacts_destination=folder / "artifacts",
        port=port,
        cwd=folder,
    )


def server_run(folder: Path):
    """The one run in the server's database, read directly (whether the server is up or not)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'server.db'}")
    return client, only_run(client)


def steps_of(client, run_id: str, metric: str = "train_loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


@pytest.mark.slow
def test_server_down_for_8_s_mid_run_loses_no_epoch(tmp_path: Path) -> None:
    """Faults: the writer drops epochs after the store's first failure (the run ends FINISHED
    with a few of its epochs), gives up instead of retrying, or makes training wait for the
    store (the run would still be going when the server comes back after the kill)."""
    from looplab.server import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    epochs = 2500
    with start_server(tmp_path, port) as (_, server):
        process = popen_cli(tmp_path, *OUTAGE_RUN, f"train.epochs={epochs}", f"tracking.uri={url}")
        wait_for_epochs(tmp_path, process, 50)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
    killed_at = len(csv_rows(tmp_path))
    assert killed_at < epochs, "the run ended before the server died"
    time.sleep(8)
    during_outage = len(csv_rows(tmp_path))
    assert during_outage > killed_at, "training waited for the store"
    with start_server(tmp_path, port):
        stdout, stderr = process.communicate(timeout=240)
        assert process.returncode == 0, stderr
        assert "Traceback" not in stdout + stderr
        assert "warning" not in stderr.lower(), stderr
        client, run = server_run(tmp_path)
        assert run.info.status == "FINISHED"
        assert steps_of(client, run.info.run_id) == list(range(1, epochs + 1))
        assert steps_of(client, run.info.run_id, "val_loss") == list(range(1, epochs + 1))
        from mlflow.tracking import MlflowClient

        names = {f.path for f in MlflowClient(tracking_uri=url).list_artifacts(run.info.run_id)}
        assert "metrics.csv" in names, names
    record = json.loads(next(tmp_path.glob("outputs/runs/*/*/record.json")).read_text())
    assert record["synced"] == {"uri": url, "run_id": run.info.run_id}


@pytest.mark.slow
def test_server_still_down_at_the_end_is_marked_and_synced_later(tmp_path: Path) -> None:
    """Faults: a run whose store stays away ends FINISHED there with part of its epochs, the
    user is not told how to send it, the folder is not marked, or `looplab sync` does not
    deliver what is missing (or delivers epochs twice)."""
    from looplab.server import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    epochs = 400
    with start_server(tmp_path, port) as (_, server):
        process = popen_cli(
            tmp_path,
            *OUTAGE_RUN,
            f"train.epochs={epochs}",
            f"tracking.uri={url}",
            "tracking.wait_s=1",
        )
        wait_for_epochs(tmp_path, process, 20)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        stdout, stderr = process.communicate(timeout=240)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stdout + stderr
    (folder,) = tmp_path.glob("outputs/runs/*/*")
    hint = [line for line in stderr.splitlines() if "looplab sync" in line]
    assert len(hint) == 1, stderr
    shown = str(folder.relative_to(tmp_path))
    assert f"`looplab sync {shown}`" in hint[0]
    record = json.loads((folder / "record.json").read_text())
    assert (record["pending"], record["synced"], record["status"]) == (True, None, "FINISHED")
    client, run = server_run(tmp_path)
    assert run.info.status == "RUNNING", "the store's run looks ended without its epochs"
    assert len(steps_of(client, run.info.run_id)) < epochs

    with start_server(tmp_path, port):
        for _ in range(2):  # twice: the second adds nothing
            synced = subprocess.run(
                [LOOPLAB, "sync", shown], cwd=tmp_path, capture_output=True, text=True, timeout=120
            )
            assert synced.returncode == 0, synced.stdout + synced.stderr
    assert "complete in" in synced.stdout and "already" in synced.stdout, synced.stdout
    client, again = server_run(tmp_path)
    assert again.info.run_id == run.info.run_id
    assert again.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(1, epochs + 1))  # each epoch once
    rows = csv_rows(tmp_path)
    by_step = {m.step: m.value for m in history}
    assert by_step[epochs] == float(rows[-1]["train_loss"])
    assert json.loads((folder / "record.json").read_text())["pending"] is False


@pytest.mark.slow
def test_run_killed_with_its_writer_is_found_lost_and_reaped(tmp_path: Path, client) -> None:
    """Faults: no heartbeat is recorded, `looplab runs` shows a dead run as RUNNING, or
    `--reap` leaves it RUNNING (or reaps a run that is alive or ended)."""
    finished = popen_cli(tmp_path, "train.epochs=2", "train.print_every=0")
    assert finished.wait(timeout=120) == 0
    process = popen_cli(tmp_path, *LONG_RUN, "train.epochs=3000")
    wait_for_epochs_of(tmp_path, process, 3)
    writer = writer_pid(process.pid)
    process.kill()
    os.kill(writer, signal.SIGKILL)
    process.wait(timeout=30)
    time.sleep(2.5)
    runs = {r.data.params["train.epochs"]: r for r in client.search_runs(["1"])}
    dead = runs["3000"]
    assert dead.info.status == "RUNNING"
    assert "looplab.heartbeat" in dead.data.tags
    table = subprocess.run(
        [LOOPLAB, "runs", "--lost-after", "2"], cwd=tmp_path, capture_output=True, text=True
    )
    assert table.returncode == 0, table.stderr
    lines = {line.split()[-1]: line for line in table.stdout.splitlines()[1:]}
    assert " LOST " in lines[dead.info.run_id], table.stdout
    assert " FINISHED " in lines[runs["2"].info.run_id], table.stdout
    reaped = subprocess.run(
        [LOOPLAB, "runs", "--reap", "--lost-after", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert reaped.returncode == 0, reaped.stderr
    run = client.get_run(dead.info.run_id)
    assert run.info.status == "KILLED"
    assert "heartbeat" in run.data.tags["looplab.reaped"]
    assert client.get_run(runs["2"].info.run_id).info.status == "FINISHED"


def writer_pid(trainer: int) -> int:
    """The trainer's MLflow writer process (`python -m looplab.tracking`)."""
    children = Path(f"/proc/{trainer}/task/{trainer}/children").read_text().split()
    for child in children:
        if b"looplab.tracking" in Path(f"/proc/{child}/cmdline").read_bytes():
            return int(child)
    raise AssertionError(f"no writer among {children}")


def wait_for_epochs_of(root: Path, process: subprocess.Popen[str], count: int) -> None:
    """Like wait_for_epochs, with runs of other processes already in outputs/runs."""
    deadline = time.monotonic() + 120
    while True:
        files = sorted(root.glob("outputs/runs/*/*/metrics.csv"))
        if files:
            rows = files[-1].read_text().splitlines()[1:]
            if len(rows) >= count:
                return
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never reached its first epochs"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_second_ctrl_c_leaves_at_once_while_the_store_hangs(tmp_path: Path) -> None:
    """Ctrl-C while the server is frozen: closing the run waits on it, a second Ctrl-C does not.
    Once the server thaws, the writer still ends the run as KILLED: nothing is left RUNNING."""
    with mlflow_server(tmp_path) as (url, server):
        process = popen_cli(tmp_path, *LONG_RUN, "train.epochs=3000", f"tracking.uri={url}")
        wait_for_epochs(tmp_path, process, 3)
        os.killpg(server.pid, signal.SIGSTOP)  # the store now hangs instead of answering
        try:
            process.send_signal(signal.SIGINT)
            time.sleep(1.5)
            assert process.poll() is None, "the first Ctrl-C should wait for the store"
            process.send_signal(signal.SIGINT)
            start = time.monotonic()
            # wait(), not communicate(): the writer, still stuck on the frozen server, holds
            # the inherited stderr open until the server answers again.
            assert process.wait(timeout=30) == 130
            assert time.monotonic() - start < 5
        finally:
            os.killpg(server.pid, signal.SIGCONT)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=url)
        deadline = time.monotonic() + 60
        while (status := only_run(client).info.status) == "RUNNING":
            assert time.monotonic() < deadline, "the run was left RUNNING"
            time.sleep(0.5)
        assert status == "KILLED"
