"""`looplab runs` and `looplab plot` over a real SQLite store of a sweep, built with MlflowClient.

The store follows the sweep contract the training side writes: a parent tagged
`looplab.role=sweep`, children with `mlflow.parentRunId`, `looplab.role=job`, `looplab.job`;
params are flattened config keys, metrics are logged per epoch (step = epoch).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from looplab.tracking import reader, tables
from looplab.tracking.store import open_store

LOOPLAB = str(Path(sys.executable).parent / "looplab")
T0 = 1_790_000_000_000  # ms; start times are explicit so that order and durations are known

# Per job: (model.width, update, train_loss by epoch, val_loss by epoch, val_accuracy by epoch).
# Job 1's val_loss is best at epoch 3, not at the end; job 3 ends with its worst accuracy;
# job 0's last loss has the digits of a float32, which the printed table shortens.
JOBS = [
    (
        0,
        "manual",
        [0.70, 0.60, 0.50, 0.4512712895],
        [0.72, 0.62, 0.55, 0.50],
        [0.6, 0.7, 0.8, 0.85],
    ),
    (0, "sgd", [0.69, 0.58, 0.52, 0.40], [0.70, 0.50, 0.40, 0.48], [0.62, 0.75, 0.90, 0.88]),
    (8, "manual", [0.65, 0.40, 0.30, 0.20], [0.66, 0.45, 0.35, 0.30], [0.70, 0.85, 0.91, 0.93]),
    (8, "sgd", [0.66, 0.42, 0.28, 0.25], [0.67, 0.44, 0.36, 0.37], [0.71, 0.86, 0.95, 0.70]),
]
# Jobs are created in this order (a parallel launcher finishes them out of order).
CREATION_ORDER = [2, 0, 3, 1]
CONSTANT = {"train.lr": "0.1", "train.epochs": "4", "dataset": "breast_cancer", "data.rows": "569"}


@dataclass
class SweepStore:
    uri: str
    parent_id: str
    parent_name: str
    job_ids: dict[int, str] = field(default_factory=dict)  # job number -> run id
    single_id: str = ""  # a plain run outside the sweep
    old_parent_id: str = ""  # an older sweep, so that --last has a choice


def params_of(width: int, update: str) -> dict[str, str]:
    """A job's params as looplab logs them: `update` twice (group choice), activation only
    with a hidden layer."""
    params = {**CONSTANT, "model.width": str(width), "update": update, "update.name": update}
    if width:
        params["model.activation"] = "relu"
    return params


def make_sweep_store(root: Path, experiment: str = "looplab") -> SweepStore:
    """A store under root/outputs/mlflow.db: an old one-job sweep, a plain run, then the sweep
    of JOBS (parent newest)."""
    from mlflow.entities import Metric, Param

    uri = f"sqlite:///{root / 'outputs' / 'mlflow.db'}"
    client, exp_id = open_store(uri, experiment)

    def run(name, start, params, tags, curves=None, status="FINISHED", seconds=10.0):
        created = client.create_run(exp_id, start_time=start, tags=tags, run_name=name)
        run_id = created.info.run_id
        metrics = [
            Metric(key, value, start + step * 1000, step)
            for key, values in (curves or {}).items()
            for step, value in enumerate(values, start=1)
        ]
        client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
        client.set_terminated(run_id, status, end_time=start + int(seconds * 1000))
        return run_id

    def sweep_tags(sweep_id: str) -> dict[str, str]:
        return {"looplab.role": "sweep", "looplab.sweep_id": sweep_id}

    old_id = "2026-11-20/09-00-00"
    old_parent = run("old sweep", T0, CONSTANT, sweep_tags(old_id), seconds=5)
    old_tags = {"mlflow.parentRunId": old_parent, "looplab.role": "job", "looplab.job": "0"}
    run("old job", T0 + 100, params_of(0, "manual"), {**old_tags, "looplab.sweep_id": old_id})
    single = run(
        "breast_cancer epochs=4",
        T0 + 10_000,
        params_of(0, "manual"),
        {},
        {"train_loss": [0.7, 0.6, 0.5, 0.4]},
    )

    sweep_id = "2026-11-26/10-00-00"
    parent_name = "sweep width=0,8 update=manual,sgd"
    tags = {**sweep_tags(sweep_id), "looplab.swept_keys": "model.width,update"}
    parent = run(parent_name, T0 + 20_000, CONSTANT, tags, seconds=60)
    store = SweepStore(uri, parent, parent_name, single_id=single, old_parent_id=old_parent)
    for order, job in enumerate(CREATION_ORDER):
        width, update, train, val, acc = JOBS[job]
        job_tags = {
            "mlflow.parentRunId": parent,
            "looplab.role": "job",
            "looplab.sweep_id": sweep_id,
            "looplab.job": str(job),
        }
        store.job_ids[job] = run(
            f"breast_cancer width={width} {update}",
            T0 + 21_000 + order * 1000,
            params_of(width, update),
            job_tags,
            {"train_loss": train, "val_loss": val, "val_accuracy": acc},
            seconds=2.5 + job,
        )
    return store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> SweepStore:
    return make_sweep_store(tmp_path_factory.mktemp("sweep"))


@pytest.fixture(scope="module")
def jobs(store: SweepStore) -> list:
    return reader.find_runs(store.uri, "looplab", parent_run_id=store.parent_id)


@pytest.fixture(scope="module")
def table(jobs, store: SweepStore) -> pd.DataFrame:
    return tables.runs_table(jobs, store.uri)


def looplab(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The installed `looplab` console script, as a user runs it."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run(
        [LOOPLAB, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )


# -- the reader ----------------------------------------------------------------------------------


def test_find_runs_returns_the_sweeps_jobs_only(store: SweepStore, jobs) -> None:
    """find_runs ignores parent_run_id (the whole experiment), or filters on the wrong tag."""
    assert {run.info.run_id for run in jobs} == set(store.job_ids.values())


def test_last_sweep_is_the_newest_parent(store: SweepStore) -> None:
    """last_sweep picks the oldest sweep, or a job, or a run that is not a sweep parent."""
    assert reader.last_sweep(store.uri, "looplab") == store.parent_id


def test_the_whole_experiment_lists_training_runs_not_sweep_parents(store: SweepStore) -> None:
    """find_runs without a sweep drops plain runs or jobs, or lists the metric-less parents."""
    found = {run.info.run_id for run in reader.find_runs(store.uri, "looplab")}
    assert store.parent_id not in found and store.old_parent_id not in found
    assert store.single_id in found and set(store.job_ids.values()) <= found
    assert len(found) == 1 + 1 + len(JOBS)  # old job, plain run, the sweep's jobs


def test_table_has_the_varying_params_and_not_the_constant_ones(table: pd.DataFrame) -> None:
    """runs_table keeps constant params (noise), drops varying ones, or shows the group choice
    twice (`update` and `update.name`)."""
    columns = list(table.columns)
    assert {"model.width", "update", "model.activation"} <= set(columns)
    assert not set(CONSTANT) & set(columns)
    assert "update.name" not in columns
    assert columns[:3] == ["job", "run", "status"]
    assert list(table["model.width"]) == ["0", "0", "8", "8"]
    assert list(table["update"]) == ["manual", "sgd", "manual", "sgd"]
    assert list(table["model.activation"].fillna("")) == ["", "", "relu", "relu"]


def test_rows_go_by_job_number_not_creation_order(table: pd.DataFrame, store) -> None:
    """runs_table sorts by start time (or not at all) although the runs are jobs of a sweep."""
    assert list(table["job"]) == [0, 1, 2, 3]
    assert list(table["run_id"]) == [store.job_ids[job] for job in range(4)]


def test_final_and_best_values(table: pd.DataFrame) -> None:
    """Final is not the last epoch's value, or best takes max of a loss / min of accuracy, or
    best is the final value."""
    for job, (_, _, train, val, acc) in enumerate(JOBS):
        row = table.iloc[job]
        assert row["final_train_loss"] == pytest.approx(train[-1])
        assert row["best_train_loss"] == pytest.approx(min(train))
        assert row["final_val_loss"] == pytest.approx(val[-1])
        assert row["best_val_loss"] == pytest.approx(min(val))
        assert row["final_val_accuracy"] == pytest.approx(acc[-1])
        assert row["best_val_accuracy"] == pytest.approx(max(acc))
    assert table.iloc[1]["best_val_loss"] != table.iloc[1]["final_val_loss"]  # the data can tell


def test_duration_is_end_minus_start_in_seconds(table: pd.DataFrame) -> None:
    """Duration is in milliseconds, or measured from the wrong timestamps."""
    assert list(table["duration_s"]) == pytest.approx([2.5, 3.5, 4.5, 5.5])


def test_best_ignores_a_diverged_epoch(tmp_path: Path) -> None:
    """Best is NaN or infinite where an epoch is (Python's min with a NaN first is NaN), or
    final shows MLflow's stand-in for infinity (the largest float) and hides the divergence."""
    from mlflow.entities import Metric

    client, exp_id = open_store(f"sqlite:///{tmp_path / 'mlflow.db'}", "looplab")
    run_id = client.create_run(exp_id, run_name="diverged").info.run_id
    curves = {"train_loss": [0.7, 0.5, math.nan, math.inf], "val_loss": [math.nan, 0.6, 0.4]}
    metrics = [
        Metric(key, value, T0 + step, step)
        for key, values in curves.items()
        for step, value in enumerate(values, 1)
    ]
    client.log_batch(run_id, metrics)
    client.set_terminated(run_id, "FAILED")
    (run,) = reader.find_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "looplab")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    row = tables.runs_table([run], uri).iloc[0]
    assert row["best_train_loss"] == pytest.approx(0.5)
    assert row["best_val_loss"] == pytest.approx(0.4)
    assert math.isinf(row["final_train_loss"])
    assert "inf" in tables.format_table(tables.runs_table([run], uri))


def test_format_table_aligns_columns_and_shortens_floats(table: pd.DataFrame) -> None:
    """format_table prints long floats, misaligns columns, or drops a row or column."""
    lines = tables.format_table(table).splitlines()
    assert len(lines) == 1 + len(JOBS)
    header = lines[0]
    assert header.split() == list(table.columns)
    # Right-aligned numbers end where their header ends; text starts where its header starts.
    end = header.index("final_val_loss") + len("final_val_loss")
    start = header.index("update ")
    for job, line in enumerate(lines[1:], start=0):
        assert line[:end].endswith(f"{JOBS[job][3][-1]:.4g}")
        assert line[start:].startswith(JOBS[job][1])
    assert "0.4513" in lines[1] and "0.45127" not in lines[1]


def test_csv_holds_the_same_table(table: pd.DataFrame, tmp_path: Path) -> None:
    """write_table_csv drops columns, writes the index, or rounds the numbers."""
    path = tables.write_table_csv(table, tmp_path / "deep" / "runs.csv")
    back = pd.read_csv(path, dtype={"model.width": str})
    assert list(back.columns) == list(table.columns)
    pd.testing.assert_frame_equal(back, table, check_dtype=False)


def test_plot_has_one_line_per_run_labelled_by_what_varies(
    jobs, store: SweepStore, tmp_path: Path
) -> None:
    """plot_curves draws fewer/more lines than runs, plots the wrong metric or steps, labels
    lines with parameter paths where the run names say the same shorter (`width=8 manual`,
    not `model.activation=relu model.width=8 update=manual`), or writes no valid PNG."""

    from PIL import Image

    out = tmp_path / "plots" / "val_loss.png"
    figure = tables.plot_curves(jobs, "val_loss", out, store.uri)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 300
    (axes,) = figure.axes
    lines = axes.get_lines()
    assert len(lines) == len(JOBS)
    for job, line in enumerate(lines):
        width, update, _, val, _ = JOBS[job]
        assert list(line.get_xdata()) == [1, 2, 3, 4]
        assert list(line.get_ydata()) == pytest.approx(val)
        assert line.get_label() == f"breast_cancer width={width} {update}"  # the run's name
    assert axes.get_xlabel() == "epoch" and axes.get_ylabel() == "val_loss"
    assert "val_loss" in axes.get_title()
    assert [t.get_text() for t in axes.get_legend().get_texts()] == [
        line.get_label() for line in lines
    ]


def test_plot_of_runs_that_do_not_vary_is_labelled_by_run_name(store, tmp_path: Path) -> None:
    """With nothing varying, labels are empty strings rather than the run names."""
    runs = reader.find_runs(store.uri, "looplab", run_ids=[store.job_ids[0]])
    figure = tables.plot_curves(runs, "train_loss", tmp_path / "one.png", store.uri)
    assert [line.get_label() for line in figure.axes[0].get_lines()] == [runs[0].info.run_name]


# -- the CLI, as a user runs it --------------------------------------------------------------------


@pytest.mark.slow
def test_cli_runs_last_prints_the_sweeps_table(store: SweepStore, tmp_path: Path) -> None:
    """`looplab runs --last` is not wired to the newest sweep, or prints nothing useful, or
    `--csv` writes another table than the one printed."""
    csv = tmp_path / "runs.csv"
    done = looplab("runs", "--last", "--tracking-uri", store.uri, "--csv", str(csv))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["job", "run", "status"]
    assert len(lines) == 1 + len(JOBS)
    assert "breast_cancer width=8 sgd" in lines[4] and "FINISHED" in lines[4]
    assert pd.read_csv(csv)["run_id"].tolist() == [store.job_ids[j] for j in range(4)]


@pytest.mark.slow
def test_cli_default_store_is_outputs_under_the_cwd(store: SweepStore) -> None:
    """The default --tracking-uri is not ./outputs/mlflow.db, or --sweep is not wired."""
    root = Path(store.uri.removeprefix("sqlite:///")).parents[1]
    done = looplab("runs", "--sweep", store.old_parent_id, cwd=root)
    assert done.returncode == 0, done.stderr
    assert "old job" in done.stdout and "width=8" not in done.stdout


@pytest.mark.slow
def test_cli_plot_writes_a_png(store: SweepStore, tmp_path: Path) -> None:
    """`looplab plot --runs` does not pass the runs or the metric to the plot."""
    from PIL import Image

    out = tmp_path / "curves.png"
    ids = [store.job_ids[0], store.single_id]
    done = looplab(
        "plot",
        "--metric",
        "val_loss",
        "--runs",
        *ids,
        "--out",
        str(out),
        "--tracking-uri",
        store.uri,
    )
    assert done.returncode == 0, done.stderr
    with Image.open(out) as image:
        assert image.format == "PNG"
    assert done.stdout.strip() == f"{out}: val_loss by epoch for 1 of 2 runs"  # one lacks it


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["runs"], "no MLflow store at "),
        (["runs", "--experiment", "nope"], "no experiment 'nope'"),
        (["runs", "--sweep", "0123456789abcdef0123456789abcdef"], "no run 0123456789abcdef"),
        (["plot", "--last", "--metric", "val_rmse", "--out", "x.png"], "logged 'val_rmse'"),
    ],
)
def test_cli_errors_are_one_line_and_create_nothing(
    store: SweepStore, tmp_path: Path, args: list[str], message: str
) -> None:
    """A missing store, experiment, run or metric gives a traceback, exit 0, or (for a store
    that is not there) a new empty mlflow.db."""
    uri = store.uri if args != ["runs"] else f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    done = looplab(*args, "--tracking-uri", uri, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("looplab: error: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "x.png").exists()


def test_sweep_children_waits_for_runs_a_writer_still_creates_and_ends(tmp_path: Path) -> None:
    """Fault: the sweep's summary reads its children at once, while the writers of the last
    jobs (which end their runs without the job waiting) are still creating or ending them: a
    child missing from the table, or listed as RUNNING. A job lost with its process (not in
    `ended_jobs`) is not waited for."""
    import threading

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, exp_id = open_store(uri, "looplab")
    parent = client.create_run(exp_id, tags={"looplab.role": "sweep"}).info.run_id

    def child(job: int) -> str:
        tags = {"mlflow.parentRunId": parent, "looplab.role": "job", "looplab.job": str(job)}
        return client.create_run(exp_id, tags=tags).info.run_id

    ending = child(0)  # created, its end still on the way
    child(2)  # a lost job's run: RUNNING for good

    def late_writer() -> None:
        time.sleep(0.5)
        client.set_terminated(ending, "FINISHED")
        client.set_terminated(child(1), "FINISHED")  # a run created only now

    writer = threading.Thread(target=late_writer)
    writer.start()
    started = time.monotonic()
    runs = reader.sweep_children(uri, "looplab", parent, ended_jobs={0, 1}, timeout=60)
    waited = time.monotonic() - started
    writer.join()
    assert waited < 30, f"waited {waited:.0f} s: for the lost job's run too, until the timeout"
    status = {run.data.tags["looplab.job"]: run.info.status for run in runs}
    assert status == {"0": "FINISHED", "1": "FINISHED", "2": "RUNNING"}


def test_a_table_shows_what_varies_rounded_and_never_how_runs_were_kept() -> None:
    """Faults (#20): sampled values printed with 19 digits; `tracking.*` or `checkpoint.*`
    keys shown as if they explained a difference (a table over 200 columns wide)."""
    import pandas as pd
    from mlflow.entities import Param, Run, RunData, RunInfo

    def run(params: dict[str, str]) -> Run:
        info = RunInfo("r", "e", "u", "FINISHED", 0, 1, "active", run_name="n")
        return Run(info, RunData(params=[Param(k, v) for k, v in params.items()]))

    runs = [
        run({"train.lr": "0.013292918943162165", "tracking.offline": "True", "model.width": "8"}),
        run({"train.lr": "0.5", "tracking.offline": "False", "checkpoint.every_s": "5"}),
    ]
    assert tables.varying_params(runs) == ["model.width", "train.lr"]
    text = tables.format_table(pd.DataFrame({"train.lr": ["0.013292918943162165", "1.2.3"]}))
    assert "0.01329" in text and "0.0132929" not in text and "1.2.3" in text
