"""Shared fixtures: configs composed as Hydra composes them, the real CLI, a real store.

Also plain helpers the test files import: `free_port`, `mlflow_server` (a real `mlflow
server` on 127.0.0.1), `only_run` (the one run of an experiment) and
`sweep_past_a_missing_csv` (a sweep one of whose jobs raises).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from looplab.core.paths import config_dir
from looplab.core.schema import plain_config
from looplab.launch.schema import register
from looplab.server import free_port as free_port  # re-exported for the test files
from looplab.server import mlflow_server as start_mlflow_server

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
register()

CLI = str(Path(sys.executable).parent / "looplab-train")


def compose_raw(*overrides: str) -> DictConfig:
    """The config `looplab-train OVERRIDES` would run, before it is made plain."""
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return compose("train", overrides=list(overrides))


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose a plain config; tracking (when on) goes to a SQLite store in tmp_path."""

    def make(*overrides: str) -> DictConfig:
        return plain_config(compose_raw(*overrides), launch_dir=tmp_path)

    return make


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `looplab-train ARGS` in tmp_path, as a user types it; outputs land in tmp_path."""

    def run(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **kwargs.pop("env", {})}
        return subprocess.run(
            [CLI, *args],
            cwd=kwargs.pop("cwd", tmp_path),
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )

    return run


def sweep_past_a_missing_csv(
    run_cli: Callable[..., subprocess.CompletedProcess[str]], root: Path, *overrides: str
) -> subprocess.CompletedProcess[str]:
    """`looplab-train -m` over a CSV in `root` (ok.csv, written here) and one that is not
    there (missing.csv), with HYDRA_FULL_ERROR=1, which lets the missing file's DataError out
    of the job: what the launcher and the sweeper hand back is all the sweep learns of it.
    `overrides` name the paths (`dataset.path=ok.csv,missing.csv`) and anything else."""
    (root / "ok.csv").write_text("a,b\n" + "".join(f"{i},{i % 2}\n" for i in range(12)))
    return run_cli(
        "-m",
        "dataset=csv",
        "dataset.target=b",
        "train.epochs=2",
        "train.print_every=0",
        *overrides,
        env={"HYDRA_FULL_ERROR": "1"},
    )


def run_probe(tmp_path: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`code` in a Python process in tmp_path, with `t` (looplab.cli.train) imported and
    `sys.argv` set to `looplab-train ARGS` for one epoch, unprinted: to look inside a real run
    (what is imported when, what is left at exit)."""
    argv = ["looplab-train", *args, "train.epochs=1", "train.print_every=0"]
    probe = f"import atexit, gc, sys, looplab.cli.train as t; sys.argv={argv!r}\n{code}"
    return run_python(tmp_path, probe)


def run_python(cwd: Path, code: str) -> subprocess.CompletedProcess[str]:
    """`python -c CODE` in cwd, its output captured."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def store_uri(root: Path) -> str:
    """The default store of a launch directory."""
    return f"sqlite:///{root / 'outputs' / 'mlflow.db'}"


@pytest.fixture
def client(tmp_path: Path):
    """An MLflow client on the default store of tmp_path (created on first use by a run)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store_uri(tmp_path))


def only_run(client, experiment: str = "looplab"):
    """The single run of `experiment` in the client's store; fails unless there is exactly one."""
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"experiment {experiment} was not created"
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1, [r.info.status for r in runs]
    return runs[0]


@contextlib.contextmanager
def mlflow_server(folder: Path, timeout: float = 120) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real `mlflow server` on 127.0.0.1 storing in `folder / "server.db"`: (url, process).

    Yields once /health answers. The server runs in its own session, so a test may kill it
    and its workers at once with `os.killpg(process.pid, ...)`; whatever is left is killed
    on the way out. A thin wrapper over `looplab.server.mlflow_server`, which bench uses too.
    """
    uri = f"sqlite:///{folder / 'server.db'}"
    with start_mlflow_server(uri, cwd=folder, timeout=timeout) as running:
        yield running


IMPLS_BY_UPDATES = [
    ("manual", "manual"),
    ("manual", "sgd"),
    ("module", "manual"),
    ("module", "sgd"),
]


def assert_the_four_ways_agree(make_config, tmp_path: Path, *overrides: str) -> None:
    """Train `overrides` four ways (model.impl x update, float64) and demand one loss history.

    This is looplab's central promise: the hand-written parts and PyTorch's own compute the
    same thing, over the whole run, to 1e-12.
    """
    import torch

    from looplab.run.execute import execute

    histories = {}
    for impl, update in IMPLS_BY_UPDATES:
        cfg = make_config(
            "tracking.enabled=false",
            "train.print_every=0",
            "train.dtype=float64",
            f"model.impl={impl}",
            f"update={update}",
            *overrides,
        )
        result = execute(cfg, tmp_path / f"{impl}-{update}")
        assert result.status == "FINISHED", result.error
        histories[(impl, update)] = torch.tensor([e.metrics["train_loss"] for e in result.history])
    reference = histories[("manual", "manual")]
    assert reference[-1] < reference[0] * 0.8  # it really trained
    for key, history in histories.items():
        assert len(history) == len(reference)
        torch.testing.assert_close(history, reference, rtol=0, atol=1e-12, msg=str(key))
