"""The real `looplab-train`, run in a subprocess as a user types it, against a real store."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from conftest import CLI, only_run, run_probe, run_python, store_uri

pytestmark = pytest.mark.slow


def test_a_run_records_params_every_epoch_and_its_config(run_cli, client, tmp_path) -> None:
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "start"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    done = run_cli("train.epochs=7", "model.width=4", "update=sgd")
    assert done.returncode == 0, done.stderr
    run = only_run(client)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "breast_cancer width=4 sgd epochs=7"
    params = run.data.params
    assert params["model.width"] == "4" and params["train.lr"] == "0.1"
    assert (params["dataset"], params["update"], params["device"]) == (
        "breast_cancer",
        "sgd",
        "auto",
    )
    assert params["tracking.uri"] == store_uri(tmp_path.resolve())
    assert run.data.tags["looplab.device"] == "cpu"
    assert run.data.tags["mlflow.source.git.commit"] == head.strip()
    for name in ("train_loss", "val_loss", "val_accuracy"):
        history = client.get_metric_history(run.info.run_id, name)
        assert sorted(m.step for m in history) == list(range(1, 8))
    stamps = [m.timestamp for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert stamps == sorted(stamps) and stamps[-1] >= stamps[0]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.csv", ".hydra"} <= artifacts
    hydra_files = {a.path for a in client.list_artifacts(run.info.run_id, ".hydra")}
    assert ".hydra/overrides.yaml" in hydra_files
    config = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert "width: 4" in Path(config).read_text()
    # Everything the run wrote stays under outputs/.
    written = {p.relative_to(tmp_path).parts[0] for p in tmp_path.iterdir()}
    assert written <= {"outputs", "config.yaml", ".git"}
    assert list((tmp_path / "outputs" / "runs").glob("*/*/metrics.csv"))


def test_seed_preset_prints_the_tutorials_lines_and_learns(run_cli, client) -> None:
    done = run_cli("experiment=seed")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    epoch_lines = [line for line in lines if line.startswith("Epoch: ")]
    assert len(epoch_lines) == 25
    assert re.fullmatch(r"Epoch: 1, Loss: \d+\.\d+(e-?\d+)?", epoch_lines[0])
    assert epoch_lines[-1].startswith("Epoch: 25, Loss: ")
    losses = [float(line.split("Loss: ")[1]) for line in epoch_lines]
    assert losses[-1] < losses[0]
    run = only_run(client)
    assert run.data.metrics["val_accuracy"] >= 0.9
    assert run.data.params["train.dtype"] == "float64"


def test_tracking_disabled_leaves_no_store_and_never_imports_mlflow(run_cli, tmp_path) -> None:
    done = run_cli("train.epochs=2", "tracking.enabled=false")
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.rglob("mlflow.db*")) and not list(tmp_path.rglob("artifacts"))
    assert list(tmp_path.glob("outputs/runs/*/*/metrics.csv"))
    checked = run_probe(
        tmp_path,
        "try:\n    t.main()\nfinally:\n    assert 'mlflow' not in sys.modules, 'mlflow imported'",
        "tracking.enabled=false",
    )
    assert checked.returncode == 0, checked.stderr


# A probe's line: whether the process's heap is frozen when Python's teardown begins.
SAYS_IF_FROZEN_AT_EXIT = (
    "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 1000))"
)


def test_the_heap_is_frozen_before_pythons_teardown(tmp_path) -> None:
    """Fault: Python's teardown collects the whole heap (torch's, MLflow's) after the run is
    done and recorded: 0.8 s more at every `looplab-train` on 2 cores (cli/teardown.py)."""
    done = run_probe(
        tmp_path,
        f"{SAYS_IF_FROZEN_AT_EXIT}\nt.main()",
    )
    assert done.returncode == 0, done.stderr
    assert "frozen at exit: True" in done.stdout


def test_the_looplab_script_freezes_its_heap_before_pythons_teardown(tmp_path) -> None:
    """Fault: the installed `looplab` script runs `main` alone, so Python's teardown collects
    the heap MLflow's client left after every `looplab runs` (cli/teardown.py)."""
    from test_compare import make_sweep_store

    make_sweep_store(tmp_path)
    done = run_python(
        tmp_path,
        "import atexit, gc, sys\nfrom importlib.metadata import entry_points\n"
        "(script,) = entry_points(group='console_scripts', name='looplab')\n"
        f"{SAYS_IF_FROZEN_AT_EXIT}\n"
        "sys.argv = ['looplab', 'runs']\nsys.exit(script.load()())",
    )
    assert done.returncode == 0, done.stderr
    assert "frozen at exit: True" in done.stdout


def test_a_recorded_config_runs_again_with_the_same_losses(run_cli, tmp_path) -> None:
    first = run_cli("train.epochs=4", "model.width=3", "tracking.enabled=false")
    assert first.returncode == 0, first.stderr
    (run_dir,) = list(tmp_path.glob("outputs/runs/*/*"))
    again = run_cli("--config-dir", str(run_dir), "--config-name", "config")
    assert again.returncode == 0, again.stderr
    csvs = sorted(tmp_path.glob("outputs/runs/*/*/metrics.csv"))
    assert len(csvs) == 2  # the rerun's folder sits beside the first one
    losses = [[line.split(",")[2] for line in p.read_text().splitlines()[1:]] for p in csvs]
    assert losses[0] == losses[1] and len(losses[0]) == 4
    # The recorded config is checked against the schema like any other.
    bad = run_cli("--config-dir", str(run_dir), "--config-name", "config", "model.impl=keras")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == (
        "looplab-train: error: model.impl=keras is not allowed: choose one of manual, module"
    )


def test_a_failed_start_never_deletes_files_outside_outputs(run_cli, tmp_path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own notes\n")
    (mine / "train.log").write_text("my own log\n")
    done = run_cli(
        "hydra.run.dir=mine",
        "dataset=csv",
        "dataset.path=absent.csv",
        "dataset.target=y",
        "tracking.enabled=false",
    )
    assert done.returncode == 1 and "CSV file not found" in done.stderr
    assert (mine / "config.yaml").read_text() == "my own notes\n"
    assert (mine / "train.log").exists()


def test_hydra_full_error_shows_the_traceback_of_a_looplab_error(run_cli) -> None:
    done = run_cli("train.lr=-1", env={"HYDRA_FULL_ERROR": "1"})
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ConfigError: train.lr=-1.0 is not allowed" in done.stderr


def test_python_dash_m_is_the_same_entry_point(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "looplab.cli.train", "train.epochs=1", "tracking.enabled=false"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].startswith("Epoch: 1/1, Loss: ")


def test_metrics_reach_the_store_while_the_run_is_still_going(tmp_path, client) -> None:
    """The UI draws a live curve: batches are flushed every few seconds, not only at the end."""
    job = subprocess.Popen(
        [
            CLI,
            "dataset=digits",
            "model.width=64",
            "train.batch_size=16",
            "train.epochs=100000",
            "train.print_every=0",
        ],
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while len(set(seen)) < 2 and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.5)
            if not (tmp_path / "outputs" / "mlflow.db").exists():
                continue
            experiment = client.get_experiment_by_name("looplab")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if runs and runs[0].info.status == "RUNNING":
                history = client.get_metric_history(runs[0].info.run_id, "train_loss")
                if history:
                    seen.append(max(m.step for m in history))
    finally:
        job.send_signal(signal.SIGINT)
        job.wait(timeout=60)
    assert len(set(seen)) >= 2, f"no growing curve while RUNNING: {seen}"


def test_a_terminal_gets_a_progress_bar_with_the_loss_instead_of_lines(tmp_path) -> None:
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    job = subprocess.Popen(
        [CLI, "train.epochs=30", "tracking.enabled=false"],
        cwd=tmp_path,
        stdout=follower,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed: the job is done
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    assert job.wait(timeout=60) == 0
    text = screen.decode(errors="replace")
    assert "30/30" in text and "train_loss=" in text and "epoch" in text
    assert "Epoch: 1/30" not in text


def test_a_run_tells_its_story_on_the_console_and_in_train_log(run_cli, tmp_path) -> None:
    """Faults: an empty train.log; no line saying which task was inferred; no closing line
    with status, numbers, run id and folder; MLflow's Default experiment writing ./mlruns."""
    from mlflow.tracking import MlflowClient

    done = run_cli("train.epochs=3", "model.impl=module")
    assert done.returncode == 0, done.stderr
    client = MlflowClient(tracking_uri=store_uri(tmp_path))  # the run created the store
    run = only_run(client)
    assert run.info.run_name == "breast_cancer impl=module epochs=3"
    (run_dir,) = list(tmp_path.glob("outputs/runs/*/*"))
    lines = done.stdout.splitlines()
    assert lines[0].startswith("task: binary, inferred: target 'target' holds 2")
    assert run.data.params["data.task"] == "binary"  # the first line names it as the param
    closing = lines[-1]
    assert closing.startswith("breast_cancer impl=module epochs=3: FINISHED after 3 epochs (")
    assert run.info.run_id in closing and str(run_dir.relative_to(tmp_path)) in closing
    assert "val_accuracy" in closing and closing.endswith("; see it with `looplab ui`")
    story = (run_dir / "train.log").read_text()
    assert "task: binary, " in story and ": FINISHED after 3 epochs" in story
    assert not (tmp_path / "mlruns").exists()
    default = client.get_experiment_by_name("Default")
    assert default.artifact_location.startswith((tmp_path / "outputs").resolve().as_uri())


def test_help_is_looplabs_own(run_cli) -> None:
    """Fault: --help shows Hydra's "train is powered by Hydra" header instead of looplab's."""
    done = run_cli("--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("looplab-train: run the PyTorch training loop")
    assert "powered by Hydra" not in done.stdout
    assert "experiment=seed" in done.stdout and "dataset: breast_cancer, csv" in done.stdout
