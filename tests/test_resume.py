"""`looplab resume`, as a user types it: a run stopped (SIGTERM), or killed with its writer
(SIGKILL), goes on in the same MLflow run, and ends bit for bit where the same config run
without a stop ends; from its folder, or from the store alone in another folder; offline;
a killed sweep launched again with `tracking.skip_finished=true`; and what it refuses.

Runs are stopped at whatever step the signal finds them (usually mid-epoch, since most of
a mini-batch run's time is in its steps); tests/test_checkpoint.py stops them at chosen ones.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import CLI, store_uri

pytestmark = pytest.mark.slow

LOOPLAB = str(Path(sys.executable).parent / "looplab")
SGD = ("update=sgd", "train.momentum=0.9", "train.batch_size=16", "train.epochs=320")


def start(folder: Path, *args: str) -> subprocess.Popen:
    """`looplab-train ARGS` in `folder`, in the background, its output in train.out."""
    out = (folder / "train.out").open("w")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.Popen([CLI, *args], cwd=folder, env=env, stdout=out, stderr=out)


def looplab(folder: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run(
        [LOOPLAB, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=timeout
    )


def wait_for(what: str, ready: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(0.05)


def epochs_written(folder: Path) -> int:
    """Epochs in the newest run folder's metrics.csv under `folder`/outputs/runs."""
    files = sorted(folder.glob("outputs/runs/*/*/metrics.csv"))
    return max(0, len(files[-1].read_text().splitlines()) - 1) if files else 0


def writer_of(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


def client_of(folder: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store_uri(folder))


def the_run(client, name_part: str = ""):
    experiment = client.get_experiment_by_name("looplab").experiment_id
    runs = client.search_runs([experiment], order_by=["attributes.start_time ASC"])
    return [run for run in runs if name_part in (run.info.run_name or "")]


def logged_through(client) -> int:
    """The last epoch of val_loss the store has of the experiment's one run (0: none)."""
    runs = the_run(client) if client.get_experiment_by_name("looplab") else []
    steps = (
        [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_loss")] if runs else []
    )
    return max(steps, default=0)


def history(client, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric's (epoch, value) in order; an epoch logged twice fails here."""
    out = {}
    for key in ("train_loss", "val_loss", "val_accuracy"):
        points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        steps = [step for step, _ in points]
        assert len(steps) == len(set(steps)), f"{key}: an epoch logged twice"
        out[key] = points
    return out


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "model.pt", weights_only=True)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_a_run_killed_with_its_writer_resumes_in_the_same_run_bit_for_bit(tmp_path) -> None:
    """Faults: the resumed run is a new MLflow run, or starts again from epoch 1, or logs an
    epoch twice (the store had epochs past the checkpoint), or loses the epochs the killed
    writer never sent; its metrics or model.pt differ from a run never stopped; it is left
    RUNNING, or has no tag saying it was resumed and where; `looplab resume` refuses a run
    whose process is gone only because its heartbeat is recent."""
    whole = tmp_path / "whole"
    whole.mkdir()
    assert start(whole, *SGD).wait(timeout=300) == 0, (whole / "train.out").read_text()
    reference = client_of(whole)
    (expected,) = the_run(reference)

    killed = tmp_path / "killed"
    killed.mkdir()
    trainer = start(killed, *SGD, "checkpoint.every_epochs=150")
    # record.json is written once the writer has opened (and created) the store
    wait_for("the run to start", lambda: any(killed.glob("outputs/runs/*/*/record.json")))
    client = client_of(killed)
    wait_for("the store's 170th epoch", lambda: logged_through(client) >= 170)
    writers = writer_of(trainer.pid)
    for pid in (trainer.pid, *writers):  # trainer and writer both, with no chance to close
        os.kill(pid, signal.SIGKILL)
    trainer.wait(timeout=30)
    (run,) = the_run(client)
    assert run.info.status == "RUNNING"
    folder = Path(run.data.tags["looplab.run_dir"])
    assert not (folder / "model.pt").exists()
    checkpoint = torch.load(folder / "checkpoint.pt", weights_only=True)
    # the store has epochs past the checkpoint: the resumed run trains them again
    assert logged_through(client) > checkpoint["progress"]["epoch"] == 150

    resumed = looplab(killed, "resume", run.info.run_id)
    assert resumed.returncode == 0, resumed.stderr
    assert f"MLflow run {run.info.run_id}" in resumed.stdout + resumed.stderr
    after = client.get_run(run.info.run_id)
    assert after.info.status == "FINISHED"
    assert after.data.tags["looplab.resumes"] == "1"
    began = int(after.data.tags["looplab.resumed_at_epoch"])
    assert began == 151, began
    assert history(client, run.info.run_id) == history(reference, expected.info.run_id)
    assert_same_weights(folder, Path(expected.data.tags["looplab.run_dir"]))
    assert not (folder / "checkpoint.pt").exists(), "a FINISHED run left its checkpoint"


def test_a_stopped_run_resumes_from_the_store_alone_in_another_folder(tmp_path) -> None:
    """Faults: a stopped run's checkpoint not sent to the store (its folder gone, nothing to
    resume from); the stop's checkpoint not taken at the step the signal found (metrics
    differ); the resumed run writing into the lost folder; the config read from anywhere
    but the store."""
    args = ("model.impl=module", "train.batch_size=32", "train.epochs=300")
    whole = tmp_path / "whole"
    whole.mkdir()
    assert start(whole, *args).wait(timeout=300) == 0
    reference = client_of(whole)
    (expected,) = the_run(reference)

    machine_a = tmp_path / "a"
    machine_a.mkdir()
    trainer = start(machine_a, *args)  # the default interval: no checkpoint before the stop
    wait_for("the run's 60th epoch", lambda: epochs_written(machine_a) >= 60)
    trainer.send_signal(signal.SIGTERM)
    assert trainer.wait(timeout=60) == 128 + signal.SIGTERM
    client = client_of(machine_a)
    (run,) = the_run(client)
    assert run.info.status == "KILLED"
    assert "looplab.checkpoint_epoch" in run.data.tags
    shutil.rmtree(machine_a / "outputs" / "runs")  # only the store is left

    machine_b = tmp_path / "b"
    machine_b.mkdir()
    uri = store_uri(machine_a)
    resumed = looplab(machine_b, "resume", run.info.run_id, "--tracking-uri", uri)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at epoch" in resumed.stdout + resumed.stderr
    after = client.get_run(run.info.run_id)
    assert after.info.status == "FINISHED"
    folder = Path(after.data.tags["looplab.run_dir"])
    assert machine_b in folder.parents, "the resumed run has no folder of its own"
    assert history(client, run.info.run_id) == history(reference, expected.info.run_id)
    assert_same_weights(folder, Path(expected.data.tags["looplab.run_dir"]))
