"""Where things are: packaged files, `conf/`, the default store, a folder as messages show it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
# How a config names a file packaged with looplab (Hydra's own `pkg://` form): the same text on
# every machine, where a site-packages path is not.
PACKAGE_PREFIX = "pkg://"
RESOURCE_PACKAGE = "looplab.resources"


def resource_uri(name: str) -> str:
    """`pkg://looplab.resources/NAME`: a packaged file as a config names it, on any machine."""
    return f"{PACKAGE_PREFIX}{RESOURCE_PACKAGE}/{name}"


def config_dir() -> Path:
    """`conf/` as packaged in the wheel, or the source tree's `conf/` in an editable install."""
    package = Path(__file__).resolve().parents[1]
    packaged = package / "conf"
    return packaged if packaged.is_dir() else package.parents[1] / "conf"


def default_store_uri(launch_dir: Path | None = None) -> str:
    """`sqlite:///<launch dir>/outputs/mlflow.db`: the store `looplab-train` and the `looplab`
    commands use unless told otherwise. Absolute, so every job of a sweep finds the same one."""
    return f"sqlite:///{((launch_dir or Path.cwd()) / 'outputs' / 'mlflow.db').resolve()}"


def importable_here() -> None:
    """The launch directory on the import path, as `python -m` puts the current one: a user's
    package beside their configs is found without an install (by training and by predicting)."""
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)


def shown(path: Path) -> str:
    """A folder as the user would type it: relative to the current one when under it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(Path(path).resolve())


# A run's files that make its trained model (its folder, and its artifacts): the weights, the
# preprocessing new rows need, and the config that says which network (run/predict.py).
MODEL_FILES = ("model.pt", "preprocessing.json", "config.yaml")
# A run's checkpoint in its folder (core/checkpoint.py), named where no torch is imported.
CHECKPOINT_FILE = "checkpoint.pt"
