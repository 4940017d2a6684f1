"""Offline runs (`tracking.offline=true`) and `looplab sync`, with the real CLI in subprocesses.

The outage side of `looplab sync` (a run whose server stayed away) is in test_faults.py.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import store_uri

LOOPLAB = str(Path(sys.executable).parent / "looplab")
OFFLINE = ["train.print_every=0", "tracking.offline=true"]


def sync(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [LOOPLAB, "sync", *args], cwd=root, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return done


def test_tracking_offline_and_wait_s_reach_the_tracker(tmp_path: Path) -> None:
    """Faults: tracking.offline=true still starts a writer (and opens a store), or
    tracking.wait_s never reaches the writer's end-of-run wait; a negative wait passes."""
    from conftest import compose_raw

    from looplab.core.errors import ConfigError
    from looplab.core.schema import plain_config
    from looplab.core.validate import validate
    from looplab.tracking import OfflineTracker, Tracker, start_tracker

    offline = start_tracker(plain_config(compose_raw(*OFFLINE), launch_dir=tmp_path))
    assert isinstance(offline, OfflineTracker)
    online = start_tracker(plain_config(compose_raw("tracking.wait_s=7"), launch_dir=tmp_path))
    try:
        assert isinstance(online, Tracker) and online.wait_s == 7
    finally:
        online.stop()
    with pytest.raises(ConfigError, match=r"tracking\.wait_s=-1\.0 is not allowed"):
        validate(plain_config(compose_raw("tracking.wait_s=-1"), launch_dir=tmp_path))


def test_sync_refuses_what_it_cannot_send_in_one_line_and_sends_an_unended_run_as_killed(
    tmp_path: Path, capsys
) -> None:
    """Faults: a folder with no record raises a traceback, stops the other folders or exits
    0; a run whose process died before it ended it (record RUNNING) is refused, or sent as
    RUNNING (it would look alive for ever) or as complete, without the tag that says why."""
    from looplab.cli import main
    from looplab.tracking.record import RunRecord

    running = tmp_path / "running"
    RunRecord.new(
        uri="sqlite:///unused", experiment="e", name="n", params={}, tags={}, start_time_ms=1
    ).write(running)
    (running / "metrics.csv").write_text("epoch,timestamp_ms,train_loss\n1,5,0.5\n2,9,0.25\n")
    store = tmp_path / "store.db"
    code = main(
        ["sync", str(tmp_path / "empty"), str(running), "--tracking-uri", f"sqlite:///{store}"]
    )
    assert code == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("looplab: error: ") and "no record.json in it" in lines[0]
    assert "2 epochs, 0 files added; it never ended: sent as KILLED" in captured.out
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=f"sqlite:///{store}").search_runs(
        [MlflowClient(tracking_uri=f"sqlite:///{store}").get_experiment_by_name("e").experiment_id]
    )[0]
    assert run.info.status == "KILLED" and run.info.end_time == 9
    assert "process ended without ending the run" in run.data.tags["looplab.unended"]
    assert RunRecord.load(running).status == "KILLED"


def store_client(root: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store_uri(root))


@pytest.mark.slow
def test_offline_run_then_two_syncs_make_one_complete_run(run_cli, tmp_path: Path) -> None:
    """Faults: an offline run opens or creates a store, its folder lacks part of its record
    (params, times, status, files), or a second sync duplicates the run or its epochs."""
    done = run_cli("train.epochs=6", "model.width=2", *OFFLINE)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "outputs" / "mlflow.db").exists(), "an offline run opened a store"
    (folder,) = tmp_path.glob("outputs/runs/*/*")
    shown = str(folder.relative_to(tmp_path))
    assert f"looplab sync {shown} --tracking-uri URI" in done.stdout + done.stderr
    record = json.loads((folder / "record.json").read_text())
    assert (record["status"], record["offline"], record["synced"]) == ("FINISHED", True, None)

    first = sync(tmp_path, shown)
    assert "created in" in first.stdout and "6 epochs, 5 files added" in first.stdout
    second = sync(tmp_path, shown, "--tracking-uri", store_uri(tmp_path))
    assert "complete in" in second.stdout and "already" in second.stdout, second.stdout

    client = store_client(tmp_path)  # only now: MLflow's client creates a missing store
    (run,) = client.search_runs([client.get_experiment_by_name("looplab").experiment_id])
    assert run.info.status == "FINISHED"
    assert (run.info.start_time, run.info.end_time) == (
        record["start_time_ms"],
        record["end_time_ms"],
    )
    assert run.info.run_name == record["name"] == "breast_cancer width=2 epochs=6"
    assert run.data.params["model.width"] == "2" and run.data.params["data.rows"] == "569"
    assert run.data.tags["looplab.run_dir"] == str(folder.resolve())
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert sorted(m.step for m in history) == list(range(1, 7))  # every epoch, once
    csv_last = (folder / "metrics.csv").read_text().splitlines()[-1].split(",")
    assert max(history, key=lambda m: m.step).value == float(csv_last[3])
    names = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.csv", ".hydra"} <= names, names
    assert json.loads((folder / "record.json").read_text())["synced"]["run_id"] == run.info.run_id


SUBMITIT = importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher",
    [
        pytest.param([], id="looplab"),
        pytest.param(
            ["hydra/launcher=submitit_local"],
            id="submitit_local",
            marks=pytest.mark.skipif(
                not SUBMITIT, reason="the slurm extra is not installed: pip install -e '.[slurm]'"
            ),
        ),
    ],
)
def test_offline_sweep_syncs_with_its_parent(run_cli, tmp_path: Path, launcher) -> None:
    """Faults: a sweep's jobs are synced without their parent (or not linked to it), or a
    job's folder synced alone makes a second parent; on a cluster's launcher (submitit, its
    jobs in processes of their own) with no server in reach, the same."""
    done = run_cli("-m", *launcher, "train.epochs=3", "model.width=0,2", *OFFLINE)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "outputs" / "mlflow.db").exists()
    (sweep_dir,) = tmp_path.glob("outputs/sweeps/*/*")
    assert "looplab sync" in done.stdout, done.stdout
    job_one = sync(tmp_path, str(sweep_dir / "1"))  # a job alone brings its parent along
    assert len(job_one.stdout.strip().splitlines()) == 2, job_one.stdout
    sync(tmp_path, str(sweep_dir))

    client = store_client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("looplab").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("looplab.role") == "sweep"]
    children = [r for r in runs if r is not parent]
    assert sorted(r.info.run_name for r in children) == ["width=0", "width=2"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert parent.info.status == "FINISHED" and parent.data.tags["looplab.jobs_finished"] == "2"
    best = [
        r for r in children if r.data.tags["looplab.job"] == parent.data.tags["looplab.best_job"]
    ]
    assert parent.data.tags["looplab.best_run_id"] == best[0].info.run_id
    names = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {"runs.csv", "curves.png"} <= names, names
    for child in children:
        assert child.info.status == "FINISHED"
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "train_loss"))
        assert steps == [1, 2, 3]
