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
    # The trainer runs ahead of its writer (and sends epochs a few times a second), so it is
    # frozen, and let go again, until the store holds epochs past its latest checkpoint.
    wait_for("the first checkpoint", lambda: any(killed.glob("outputs/runs/*/*/checkpoint.pt")))
    (folder,) = {path.parent for path in killed.glob("outputs/runs/*/*/checkpoint.pt")}
    checkpointed = 0

    def frozen_with_the_store_past_its_checkpoint() -> bool:
        nonlocal checkpointed
        os.kill(trainer.pid, signal.SIGSTOP)
        saved = torch.load(folder / "checkpoint.pt", weights_only=True)
        checkpointed = saved["progress"]["epoch"]
        deadline = time.monotonic() + 1  # what the writer has reaches the store by then
        while time.monotonic() < deadline:
            if logged_through(client) > checkpointed:
                return True
            time.sleep(0.05)
        os.kill(trainer.pid, signal.SIGCONT)
        time.sleep(0.05)
        return False

    try:
        wait_for("the store past the checkpoint", frozen_with_the_store_past_its_checkpoint)
    finally:  # frozen or not, trainer and writer both are killed, with no chance to close
        for pid in (trainer.pid, *writer_of(trainer.pid)):
            os.kill(pid, signal.SIGKILL)
        trainer.wait(timeout=30)
    (run,) = the_run(client)
    assert run.info.status == "RUNNING"
    assert Path(run.data.tags["looplab.run_dir"]) == folder
    assert not (folder / "model.pt").exists()
    # the store has epochs past the checkpoint: the resumed run trains them again
    assert checkpointed in (150, 300)

    resumed = looplab(killed, "resume", run.info.run_id)
    assert resumed.returncode == 0, resumed.stderr
    assert f"MLflow run {run.info.run_id}" in resumed.stdout + resumed.stderr
    after = client.get_run(run.info.run_id)
    assert after.info.status == "FINISHED"
    assert after.data.tags["looplab.resumes"] == "1"
    began = int(after.data.tags["looplab.resumed_at_epoch"])
    assert began == checkpointed + 1, began
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


def test_a_killed_sweep_launched_again_skips_resumes_and_runs(tmp_path) -> None:
    """Faults: the interrupted job trains again from epoch 1 (or as a new run) instead of
    going on from its checkpoint; a finished job trains again; the job that never ran is
    skipped; the new parent does not count every job, or the resumed run stays under the
    killed sweep's parent; an epoch of the resumed run is logged twice."""
    sweep = ("-m", "train.lr=0.05,0.1,0.2", "train.batch_size=16", "train.epochs=150")
    first = start(tmp_path, *sweep)

    def second_job_going() -> bool:
        files = list(tmp_path.glob("outputs/sweeps/*/*/1/metrics.csv"))
        return bool(files) and len(files[0].read_text().splitlines()) > 40

    wait_for("the second job's 40th epoch", second_job_going, timeout=240)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 128 + signal.SIGTERM
    client = client_of(tmp_path)
    killed = [
        r for r in the_run(client) if r.info.status == "KILLED" and "lr=0.1" in r.info.run_name
    ]
    assert len(killed) == 1, [(r.info.run_name, r.info.status) for r in the_run(client)]
    (killed,) = killed

    again = subprocess.run(
        [CLI, *sweep, "tracking.skip_finished=true"],
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    summary = again.stdout.strip().splitlines()[-1]
    assert summary.startswith("sweep: 3 of 3 jobs finished"), summary
    assert "1 skipped: FINISHED before" in summary and "1 resumed from a checkpoint" in summary
    assert "resumed at epoch" in again.stdout + again.stderr
    after = client.get_run(killed.info.run_id)
    assert after.info.status == "FINISHED"
    began = int(after.data.tags["looplab.resumed_at_epoch"])
    assert began > 1, "the interrupted job started again from epoch 1"
    assert [step for step, _ in history(client, killed.info.run_id)["val_loss"]] == list(
        range(1, 151)
    )
    parents = [r for r in the_run(client) if r.data.tags.get("looplab.role") == "sweep"]
    new_parent = max(parents, key=lambda r: r.info.start_time)
    assert after.data.tags["mlflow.parentRunId"] == new_parent.info.run_id
    assert new_parent.data.tags["looplab.jobs_finished"] == "3"
    assert new_parent.data.tags["looplab.jobs_resumed"] == "1"


def test_an_offline_run_killed_syncs_as_killed_then_resumes_and_syncs_whole(tmp_path) -> None:
    """Faults: `looplab sync` refuses a run that never ended (or sends it as RUNNING, or as
    FINISHED); `looplab resume FOLDER` cannot resume an offline run, or opens a store; the
    resumed run synced later is a second MLflow run, or lacks epochs, or is not FINISHED."""
    trainer = start(tmp_path, "tracking.offline=true", "checkpoint.every_epochs=30", *SGD)
    wait_for("the run's 100th epoch", lambda: epochs_written(tmp_path) >= 100)
    trainer.kill()
    trainer.wait(timeout=30)
    (folder,) = [p.parent for p in tmp_path.glob("outputs/runs/*/*/checkpoint.pt")]
    assert not (tmp_path / "outputs" / "mlflow.db").exists()
    store = tmp_path / "team"
    uri = store_uri(store)
    synced = looplab(tmp_path, "sync", str(folder), "--tracking-uri", uri)
    assert synced.returncode == 0, synced.stderr
    assert "it never ended: sent as KILLED" in synced.stdout
    client = client_of(store)
    (run,) = the_run(client)
    assert run.info.status == "KILLED"

    resumed = looplab(tmp_path, "resume", str(folder))
    assert resumed.returncode == 0, resumed.stderr
    assert "offline: the run is recorded in" in resumed.stdout + resumed.stderr
    assert not (tmp_path / "outputs" / "mlflow.db").exists(), "resuming offline opened a store"
    synced = looplab(tmp_path, "sync", str(folder), "--tracking-uri", uri)
    assert synced.returncode == 0, synced.stderr
    (run,) = the_run(client)
    assert run.info.status == "FINISHED"
    assert [step for step, _ in history(client, run.info.run_id)["val_loss"]] == list(range(1, 321))
    assert run.data.tags["looplab.resumes"] == "1"


def test_resume_refuses_in_one_line_what_it_cannot_go_on_with(tmp_path) -> None:
    """Faults: a FINISHED run, a sweep's parent, a run with no checkpoint, a checkpoint of
    another config in a run's folder, or data that changed since the checkpoint, resumed
    anyway (or refused with a traceback, or with a zero exit), and the run touched."""
    (tmp_path / "data.csv").write_text(
        "a,b,y\n" + "".join(f"{i % 7},{i % 5},{i % 2}\n" for i in range(200))
    )
    csv = ("dataset=csv", "dataset.path=data.csv", "dataset.target=y", "train.epochs=3000")
    trainer = start(tmp_path, *csv)
    wait_for("the run's 100th epoch", lambda: epochs_written(tmp_path) >= 100)
    trainer.send_signal(signal.SIGTERM)
    trainer.wait(timeout=60)
    client = client_of(tmp_path)
    (stopped,) = the_run(client)
    folder = Path(stopped.data.tags["looplab.run_dir"])

    def refused(*args: str, cwd: Path = tmp_path) -> str:
        done = looplab(cwd, *args) if args[0] == "resume" else None
        if done is None:
            done = subprocess.run(
                [CLI, *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=300
            )
        assert done.returncode == 1, done.stdout + done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "error: " in lines[0], done.stderr
        assert "Traceback" not in done.stdout + done.stderr
        return lines[0]

    # the data changed since the checkpoint
    (tmp_path / "data.csv").write_text((tmp_path / "data.csv").read_text() + "1,1,1\n")
    assert "the data set changed since it was taken" in refused("resume", stopped.info.run_id)
    # another config where a checkpoint lies (as a job run again in its folder would find)
    line = refused("train", *csv, "train.lr=0.5", f"hydra.run.dir={folder}")
    assert "was taken by another config" in line
    assert client.get_run(stopped.info.run_id).info.status == "KILLED"

    done = subprocess.run(
        [CLI, "-m", "train.epochs=2", "model.width=0,2"], cwd=tmp_path, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    runs = the_run(client)
    finished = next(
        r
        for r in runs
        if r.info.status == "FINISHED" and r.data.tags.get("looplab.role") != "sweep"
    )
    parent = next(r for r in runs if r.data.tags.get("looplab.role") == "sweep")
    assert "is FINISHED: there is nothing to resume" in refused("resume", finished.info.run_id)
    assert "is a sweep's parent" in refused("resume", parent.info.run_id)

    early = tmp_path / "early"
    early.mkdir()
    trainer = start(early, "train.epochs=3000")  # killed before its first checkpoint (60 s)
    wait_for("the run to start", lambda: any(early.glob("outputs/runs/*/*/record.json")))
    early_client = client_of(early)  # the store exists once record.json does
    wait_for("the run in the store", lambda: bool(the_run(early_client)))
    wait_for("the run's 20th epoch", lambda: epochs_written(early) >= 20)
    for pid in (trainer.pid, *writer_of(trainer.pid)):
        os.kill(pid, signal.SIGKILL)
    trainer.wait(timeout=30)
    (lost,) = the_run(early_client)
    assert "has no checkpoint" in refused("resume", lost.info.run_id, cwd=early)
