"""An installed wheel runs on its own: configs and the tutorial's CSV are packaged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_conf_and_data_and_runs_outside_the_source_tree(tmp_path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("looplab-*.whl")
    site = tmp_path / "site"
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    assert (site / "looplab" / "conf" / "train.yaml").is_file()
    assert (site / "looplab" / "conf" / "experiment" / "seed.yaml").is_file()
    assert (site / "looplab" / "resources" / "breast_cancer.csv").is_file()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "MLFLOW_DISABLE_TELEMETRY": "true"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "looplab.cli.train",
            "experiment=seed",
            "train.epochs=2",
            "tracking.enabled=false",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    epoch_lines = [line for line in done.stdout.splitlines() if line.startswith("Epoch: ")]
    assert epoch_lines[0].startswith("Epoch: 1, Loss: ")
    where = subprocess.run(
        [sys.executable, "-c", "import looplab.core.paths as c; print(c.config_dir())"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.strip() == str(site / "looplab" / "conf")
