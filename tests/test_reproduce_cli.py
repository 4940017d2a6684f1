"""`looplab reproduce`, `looplab diff` and `tracking.skip_finished` as a user types them: the real
`looplab-train` and `looplab` commands in subprocesses, against a real SQLite store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pytest
from conftest import store_uri

pytestmark = pytest.mark.slow
LOOPLAB = str(Path(sys.executable).parent / "looplab")


def looplab(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LOOPLAB, *args],
        cwd=cwd,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def looplab_here(capfd, *args: str) -> tuple[int, str, str]:
    """`looplab ARGS` in this process (the rerun is still a child process): exit code, stdout
    and stderr, the child's lines among them."""
    from looplab.cli import main

    capfd.readouterr()
    code = main(list(args))
    out, err = capfd.readouterr()
    return code, out, err


def runs_of(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name("looplab")
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def histories(uri: str, run) -> dict[str, list[tuple[int, float]]]:
    """The test's own reading of a run's metrics, epoch by epoch."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return {
        name: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
        for name in run.data.metrics
    }


def regression_csv(path: Path, rows: int = 120, float_format: str | None = None) -> str:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(rng.normal(size=(rows, 3)), columns=["a", "b", "c"])
    frame["y"] = 2 * frame.a - frame.b + 0.1 * rng.normal(size=rows)
    frame.to_csv(path, index=False, float_format=float_format)
    return str(path)


def change_one_value(path: str) -> None:
    frame = pd.read_csv(path)
    frame.loc[len(frame) - 1, "c"] += 3.0
    frame.to_csv(path, index=False)


def test_a_run_made_elsewhere_is_reproduced_bitwise_from_the_store_alone(
    run_cli, tmp_path, capfd, monkeypatch
) -> None:
    """Two processes, one config: the same histories to the last bit (seeded split, initial
    weights and mini-batch shuffles), and `reproduce` says so from another folder with the
    run's own folder deleted. Faults: an unseeded shuffle or init, a config read from the run
    folder, the store's path in config.yaml, the reproduction untagged or not compared, the
    overrides or group choices not recorded; a derived run compared or untagged."""
    made = tmp_path / "made"
    made.mkdir()
    typed = ["model.width=8", "train.batch_size=64", "train.epochs=3", "update=sgd"]
    done = run_cli(*typed, cwd=made)
    assert done.returncode == 0, done.stderr
    uri = store_uri(made)
    (original,) = runs_of(uri)
    assert json.loads(original.data.tags["looplab.overrides"]) == typed
    choices = json.loads(original.data.tags["looplab.choices"])
    assert (choices["dataset"], choices["update"], choices["device"]) == (
        "breast_cancer",
        "sgd",
        "auto",
    )
    shutil.rmtree(made / "outputs" / "runs")  # nothing local: the store alone
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    done = looplab("reproduce", original.info.run_id, "--tracking-uri", uri, cwd=elsewhere)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "bitwise identical" in done.stdout
    reproduced = [r for r in runs_of(uri) if r.info.run_id != original.info.run_id]
    assert len(reproduced) == 1
    new = reproduced[0]
    assert new.data.tags["looplab.reproduced_from"] == original.info.run_id
    assert new.info.run_name == f"{original.info.run_name} (reproduced)"
    assert (elsewhere / "outputs" / "runs").is_dir() and not (
        elsewhere / "outputs" / "mlflow.db"
    ).exists()
    ours, theirs = histories(uri, original), histories(uri, new)
    assert ours == theirs and len(ours["train_loss"]) == 3

    monkeypatch.chdir(elsewhere)
    code, out, err = looplab_here(
        capfd, "reproduce", original.info.run_id, "train.lr=0.5", "--tracking-uri", uri
    )
    assert code == 0, out + err
    assert "not compared" in out and "bitwise" not in out
    derived = [r for r in runs_of(uri) if r.data.tags.get("looplab.derived_from")]
    assert (
        len(derived) == 1 and derived[0].data.tags["looplab.derived_from"] == original.info.run_id
    )
    assert (
        derived[0].data.params["train.lr"] == "0.5" and derived[0].data.params["model.width"] == "8"
    )
    assert "looplab.reproduced_from" not in derived[0].data.tags


def test_a_grown_sweep_trains_only_what_is_missing_or_failed_and_a_child_reproduces(
    run_cli, tmp_path, capfd, monkeypatch
) -> None:
    """Faults: skip_finished skips a FAILED job, retrains a FINISHED one, matches on the config
    alone (a changed CSV skipped), leaves skipped jobs out of the summary's count; a sweep's
    child cannot be reproduced."""
    data = regression_csv(tmp_path / "data.csv")
    common = ["dataset=csv", f"dataset.path={data}", "dataset.target=y", "train.epochs=3"]
    uri = store_uri(tmp_path)
    first = run_cli("-m", *common, "train.lr=0.05,1e10")
    assert first.returncode == 1  # the lr=1e10 job diverged
    jobs = [r for r in runs_of(uri) if r.data.tags.get("looplab.role") == "job"]
    statuses = {r.data.params["train.lr"]: r.info.status for r in jobs}
    assert statuses == {"0.05": "FINISHED", "10000000000.0": "FAILED"}

    finished = next(r for r in jobs if r.info.status == "FINISHED")
    monkeypatch.chdir(tmp_path)
    code, out, err = looplab_here(capfd, "reproduce", finished.info.run_id, "--tracking-uri", uri)
    assert code == 0 and "bitwise identical" in out, out + err

    grown = run_cli("-m", *common, "train.lr=0.05,1e10,0.01", "tracking.skip_finished=true")
    assert grown.returncode == 1  # the diverging job ran again, and failed again
    assert "skipped, already FINISHED" in grown.stdout
    assert "sweep: 2 of 3 jobs finished (1 skipped" in grown.stdout
    trained = {}
    for run in runs_of(uri):
        if run.data.tags.get("looplab.role") == "job":
            trained[run.data.params["train.lr"]] = trained.get(run.data.params["train.lr"], 0) + 1
    assert trained == {"0.05": 1, "10000000000.0": 2, "0.01": 1}
    parent = [r for r in runs_of(uri) if r.data.tags.get("looplab.role") == "sweep"][-1]
    tags = parent.data.tags
    assert (tags["looplab.jobs_finished"], tags["looplab.jobs_skipped"]) == ("2", "1")

    change_one_value(data)
    again = run_cli("-m", *common, "train.lr=0.05,0.01", "tracking.skip_finished=true")
    assert again.returncode == 0, again.stderr
    assert "skipped" not in again.stdout
    lrs = [
        r.data.params["train.lr"] for r in runs_of(uri) if r.data.tags.get("looplab.role") == "job"
    ]
    assert sorted(lrs).count("0.05") == 2 and lrs.count("0.01") == 2


def config_artifact(run) -> Path:
    return Path(unquote(urlparse(run.info.artifact_uri).path)) / "config.yaml"


def test_a_changed_csv_or_an_edited_config_is_reported(
    run_cli, tmp_path, capfd, monkeypatch
) -> None:
    """Faults: reproduce exits 0 on a changed CSV or says nothing of the data digest; a
    config.yaml edited in the store (float32 -> float64) rerun silently as if it were the run's.
    (A config that names foreign code is refused: test_reproduce.py.)"""
    data = regression_csv(tmp_path / "data.csv")
    done = run_cli("dataset=csv", f"dataset.path={data}", "dataset.target=y", "train.epochs=3")
    assert done.returncode == 0, done.stderr
    uri = store_uri(tmp_path)
    (original,) = runs_of(uri)
    run_id = original.info.run_id

    monkeypatch.chdir(tmp_path)
    as_recorded = Path(data).read_bytes()
    change_one_value(data)
    code, out, err = looplab_here(capfd, "reproduce", run_id, "--tracking-uri", uri)
    assert code == 1, out + err
    table = out[out.index("NOT reproduced") :]
    assert "first epoch" in table and "train_loss" in table
    rows = [row.split()[0] for row in table[table.index("recorded differences") :].splitlines()[2:]]
    assert rows == ["data.digest", "data.sha256"]

    Path(data).write_bytes(as_recorded)
    path = config_artifact(original)
    path.write_text(path.read_text().replace("dtype: float32", "dtype: float64"))
    code, out, err = looplab_here(capfd, "reproduce", run_id, "--tracking-uri", uri)
    assert code == 1, out + err
    assert "train.dtype: params float32, config.yaml float64" in out
    rows = [row.split() for row in out[out.index("recorded differences") :].splitlines()[2:]]
    assert rows == [["train.dtype", "float32", "float64"]]


def test_a_different_thread_count_is_named_as_the_cause(
    run_cli, tmp_path, capfd, monkeypatch
) -> None:
    """Faults: the thread count not recorded, or not shown when the histories differ. With over
    32768 rows torch's CPU reductions split the work per thread, so 2 threads and 1 thread
    round differently; reproduce must say that this, and nothing else, changed."""
    data = regression_csv(tmp_path / "big.csv", rows=200_000, float_format="%.3f")
    common = ["dataset=csv", f"dataset.path={data}", "dataset.target=y", "train.epochs=2"]
    done = run_cli(*common, "train.print_every=0", env={"OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr
    uri = store_uri(tmp_path)
    (original,) = runs_of(uri)
    assert original.data.params["torch.threads"] == "2"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the rerun's thread count
    code, out, err = looplab_here(
        capfd, "reproduce", original.info.run_id, "--tracking-uri", uri, "--tolerance", "1e-12"
    )
    assert code == 1, out + err
    rows = out[out.index("recorded differences") :].splitlines()[2:]
    assert [row.split() for row in rows] == [["torch.threads", "2", "1"]]
    code, out, err = looplab_here(
        capfd, "reproduce", original.info.run_id, "--tracking-uri", uri, "--tolerance", "1e-4"
    )
    assert code == 0 and "identical within 0.0001" in out, out + err
