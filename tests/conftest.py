"""Shared fixtures: configs composed as Hydra composes them, the real CLI, a real store."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from looplab.config import config_dir, plain_config, register

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


def store_uri(root: Path) -> str:
    """The default store of a launch directory."""
    return f"sqlite:///{root / 'outputs' / 'mlflow.db'}"


@pytest.fixture
def client(tmp_path: Path):
    """An MLflow client on the default store of tmp_path (created on first use by a run)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store_uri(tmp_path))
