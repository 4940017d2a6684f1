"""Faults lose nothing: signals, divergence in a sweep, racing processes, a server that dies.

Every test drives the real `looplab-train` in subprocesses against a real MLflow store (and,
for the server test, a real `mlflow server` on 127.0.0.1).
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import CLI, mlflow_server, only_run, store_uri

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
    [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")],
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


@pytest.mark.slow
def test_server_killed_mid_run(tmp_path: Path) -> None:
    with mlflow_server(tmp_path) as (url, server):  # its store: tmp_path / "server.db"
        epochs = 200
        process = popen_cli(tmp_path, *LONG_RUN, f"train.epochs={epochs}", f"tracking.uri={url}")
        wait_for_epochs(tmp_path, process, 3)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        assert len(csv_rows(tmp_path)) < epochs, "the run ended before the server died"
        stdout, stderr = process.communicate(timeout=240)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stdout + stderr
    # Training finished, the local record is whole, and the user is told what is missing.
    rows = csv_rows(tmp_path)
    assert [int(row["epoch"]) for row in rows] == list(range(1, epochs + 1))
    told = re.search(r"stopped answering .* from epoch (\d+) on .*did not reach it", stderr)
    assert told is not None, stderr
    assert url in stderr and "metrics.csv" in stderr
    first_lost = int(told.group(1))
    # Everything before that epoch is in the server's store, read from its database directly.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'server.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("looplab").experiment_id])
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))
    assert steps[: first_lost - 1] == list(range(1, first_lost))
    assert len(steps) < epochs


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
