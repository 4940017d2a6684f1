"""Bad input, typed at the real `looplab-train` as a user would: one clear line, exit 1.

Every case checks the exit code, the words of the message, that no traceback is shown, that
no MLflow run exists (so none is left RUNNING), and that no run folder is left half-written.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import free_port, store_uri

Cli = Callable[..., subprocess.CompletedProcess[str]]

# Config errors: caught before torch or MLflow is touched, so no store may even appear.
CONFIG_CASES = {
    "lr-zero": (["train.lr=0"], ["train.lr=0.0", "must be > 0"]),
    "lr-negative": (["train.lr=-0.5"], ["train.lr=-0.5", "must be > 0"]),
    "width-negative": (["model.width=-1"], ["model.width=-1", "must be >= 0"]),
    "epochs-zero": (["train.epochs=0"], ["train.epochs=0", "must be >= 1"]),
    "batch-size-zero": (["train.batch_size=0"], ["train.batch_size=0", "must be >= 1"]),
    "test-size-zero": (["dataset.test_size=0"], ["dataset.test_size=0.0", "between 0 and 1"]),
    "test-size-big": (["dataset.test_size=1.5"], ["dataset.test_size=1.5", "between 0 and 1"]),
    "momentum-one": (["train.momentum=1"], ["train.momentum=1.0", "[0, 1)"]),
    "unknown-key": (
        ["model.widht=3"],
        ["unknown key model.widht", "did you mean model.width?", "activation"],
    ),
    "unknown-key-added": (["+model.widht=3"], ["unknown key model.widht", "model.width"]),
    "unknown-top-key": (["+epochs=3"], ["unknown key epochs", "train"]),
    "unknown-update-key": (["+update.foo=1"], ["unknown key update.foo", "update._target_"]),
    "unknown-dataset": (
        ["dataset=mnist"],
        ["dataset=mnist", "is not an option", "digits, function, iris"],
    ),
    "unknown-update": (
        ["update=adagrad"],
        ["update=adagrad", "is not an option", "adam, adamw, manual, optim, sgd"],
    ),
    "momentum-for-adam": (
        ["update=adam", "train.momentum=0.9"],
        ["train.momentum=0.9", "update=manual and update=sgd", "update.* keys"],
    ),
    "optimiser-argument": (["update=adam", "+update.alpha=0.9"], ["cannot take", "alpha"]),
    "optimiser-missing": (
        ["update=optim", "update._target_=torch.optim.Adamm"],
        ["update._target_=torch.optim.Adamm", "importable"],
    ),
    "optimiser-lr": (["update=adam", "+update.lr=0.1"], ["update.lr=0.1", "train.lr"]),
    "hidden-and-width": (
        ["model.width=8", "model.hidden=[4]"],
        ["model.hidden=[4]", "model.width=8", "set one of them"],
    ),
    "hidden-zero": (["model.hidden=[4,0]"], ["model.hidden=[4,0]", ">= 1"]),
    "width-not-an-int": (["model.width=abc"], ["model.width=abc", "must be an integer"]),
    "hidden-not-a-list": (["model.hidden=4"], ["model.hidden=4", "must be a list"]),
    "unknown-device": (["device=tpu"], ["device=tpu", "is not an option", "cpu, cuda"]),
    "wrong-type-int": (["train.epochs=ten"], ["train.epochs=ten", "must be an integer"]),
    "wrong-type-float": (["train.lr=fast"], ["train.lr=fast", "must be a number"]),
    "wrong-type-bool": (["tracking.enabled=maybe"], ["tracking.enabled=maybe", "true or false"]),
    "bad-enum": (
        ["model.activation=gelu"],
        ["model.activation=gelu", "choose one of relu, tanh, sigmoid"],
    ),
    "csv-key-for-builtin": (
        ["dataset=iris", "dataset.target=label"],
        ["dataset.target=label is not allowed", "dataset=iris is built in"],
    ),
    "csv-without-path": (["dataset=csv"], ["dataset.path is missing", "dataset.path=FILE.csv"]),
    "unparsable": (["train.lr=[1"], ["cannot parse the command line", "[1"]),
    # In a sweep, every value is checked before the first job runs.
    "sweep-bad-value": (
        ["-m", "train.lr=0.1,0.2,-1"],
        ["train.lr=-1.0", "must be > 0", "nothing ran"],
    ),
    "sweep-bad-optimiser-argument": (
        ["-m", "update=adam,adamw", "+update.momentum=0.9"],
        ["cannot take", "momentum", "nothing ran"],
    ),
    "sweep-bad-enum-parallel": (
        ["-m", "hydra/launcher=joblib", "model.activation=relu,gelu"],
        ["model.activation=gelu", "choose one of", "nothing ran"],
    ),
}

CSV_FILES = {
    "garbage.csv": b"\xff\xfe\x00\x81\x82\n\x83\x84,\x85\n",
    "empty.csv": b"",
    "header-only.csv": b"a,b,y\n",
    "no-target.csv": b"a,b,label\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n",
    "text-feature.csv": b"a,color,y\n1,red,0\n2,blue,1\n3,red,0\n4,blue,1\n5,red,0\n6,red,1\n",
    "nan.csv": b"a,b,y\n1,2,0\n,4,1\n3,inf,0\n4,5,1\n5,6,0\n6,7,1\n7,8,0\n8,9,1\n",
    "one-class.csv": b"a,b,y\n1,2,1\n3,4,1\n5,6,1\n7,8,1\n",
    "two-rows.csv": b"a,b,y\n1,2,0\n3,4,1\n",
    "semicolons.csv": b"a;b;y\n1;2;0\n3;4;1\n5;6;0\n7;8;1\n",
}


def csv_args(name: str, target: str = "y") -> list[str]:
    return ["dataset=csv", f"dataset.path={name}", f"dataset.target={target}"]


# Data and device errors: found after the MLflow writer has opened the store, before any run.
DATA_CASES = {
    "csv-missing": (csv_args("absent.csv"), ["CSV file not found", "absent.csv"]),
    "csv-unreadable": (csv_args("garbage.csv"), ["cannot read CSV file", "garbage.csv"]),
    "csv-empty": (csv_args("empty.csv"), ["CSV file is empty", "empty.csv"]),
    "csv-header-only": (csv_args("header-only.csv"), ["no rows", "header-only.csv"]),
    "csv-no-target": (
        csv_args("no-target.csv"),
        ["target column 'y' is not in no-target.csv", "its columns are: a, b, label"],
    ),
    "csv-text-feature": (csv_args("text-feature.csv"), ["non-numeric feature", "color"]),
    "csv-nan-inf": (
        csv_args("nan.csv"),
        ["NaN or infinite", "2 row(s) (data rows 2, 3;", "column(s): a, b", "dataset.missing"],
    ),
    "csv-semicolons": (csv_args("semicolons.csv"), ["separated by ';'", """'dataset.sep=";"'"""]),
    "csv-one-class": (csv_args("one-class.csv"), ["target 'y' has a single class"]),
    "csv-too-few-rows": (csv_args("two-rows.csv"), ["too few rows to split", "2 row(s)"]),
    "device-cuda": (["device=cuda"], ["device=cuda is not available", "available:", "cpu"]),
    "device-mps": (["device=mps"], ["device=mps is not available", "available:", "cpu"]),
}


def assert_one_clear_line(result: subprocess.CompletedProcess[str], words: list[str]) -> None:
    """Exit 1, a single `looplab-train: error:` line holding every word, no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("looplab-train: error: "), output
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"


def no_runs(uri: str) -> list[str]:
    """Every run in every experiment of the store, as `status name`; [] when none."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return [f"{r.info.status} {r.info.run_name}" for r in client.search_runs(ids)]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config(case: str, run_cli: Cli, tmp_path: Path) -> None:
    args, words = CONFIG_CASES[case]
    result = run_cli(*args, "train.epochs=2" if "epochs" not in " ".join(args) else "seed=1")
    assert_one_clear_line(result, words)
    assert not (tmp_path / "outputs").exists(), "a config that never started left files"


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One store made ahead for the data cases, so each case skips MLflow's schema set-up."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=uri).search_experiments()
    return uri


@pytest.mark.slow
@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_or_device(case: str, run_cli: Cli, tmp_path: Path, shared_store: str) -> None:
    args, words = DATA_CASES[case]
    if case.startswith("device-"):
        import torch

        name = args[0].split("=")[1]
        backend = torch.cuda if name == "cuda" else torch.backends.mps
        if backend.is_available():
            pytest.skip(f"this machine has {name}")
    for name, content in CSV_FILES.items():
        (tmp_path / name).write_bytes(content)
    result = run_cli(*args, "train.epochs=2", f"tracking.uri={shared_store}", f"seed={len(case)}")
    assert_one_clear_line(result, words)
    assert no_runs(shared_store) == []
    assert not (tmp_path / "outputs").exists(), "a run that never started left its folder"


@pytest.mark.slow
def test_default_store_gets_no_run_for_bad_data(run_cli: Cli, tmp_path: Path) -> None:
    """With the default store too: the store may be created, but holds no run."""
    (tmp_path / "one-class.csv").write_bytes(CSV_FILES["one-class.csv"])
    result = run_cli(*csv_args("one-class.csv"), "train.epochs=2")
    assert_one_clear_line(result, ["single class"])
    assert no_runs(store_uri(tmp_path)) == []
    assert not (tmp_path / "outputs" / "runs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("server", ["refuses", "never answers"])
def test_unreachable_server_fails_fast_before_training(
    run_cli: Cli, tmp_path: Path, server: str
) -> None:
    """Faults: a store that is not there makes the run wait for MLflow's minutes of retries
    (or the writer's outage retries), or lets it train and record nothing."""
    with socket.socket() as silent:
        if server == "never answers":  # it accepts connections and never says a word
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        else:  # a port on which nothing listens
            uri = f"http://127.0.0.1:{free_port()}"
        started = time.monotonic()
        result = run_cli("tracking=server", f"tracking.uri={uri}", "train.epochs=2")
        elapsed = time.monotonic() - started
    assert_one_clear_line(result, [uri])
    # MLflow's own retries would take about 4 minutes; a loaded 2-core machine takes up to
    # ~16 s to start the CLI and give up (5 s here when quiet): 60 s tells the two apart.
    assert elapsed < 60, f"took {elapsed:.1f} s"
    assert "Epoch" not in result.stdout, "training started"
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_full_error_shows_the_traceback_on_request(run_cli: Cli) -> None:
    result = run_cli("model.widht=3", env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "widht" in result.stderr
