"""A run's own records, read back: its config artifact, its tags, its per-epoch histories.

For `looplab reproduce` and `looplab diff`. Like `reader`, it imports MLflow only inside
functions and never creates anything. Artifacts are read as text and returned as text: nothing
from the store is ever unpickled or imported here.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from looplab.core.errors import TrackingError
from looplab.tracking import reader, store, tables

if TYPE_CHECKING:
    from mlflow.entities import Run

CONFIG_ARTIFACT = "config.yaml"


def config_text(uri: str, run: Run) -> str:
    """The text of the run's `config.yaml` artifact, downloaded from the store."""
    from mlflow.exceptions import MlflowException

    run_id = run.info.run_id
    with tempfile.TemporaryDirectory(prefix="looplab-config-") as folder:
        try:
            with store.command_settings():
                local = reader.client(uri).download_artifacts(run_id, CONFIG_ARTIFACT, folder)
        except (MlflowException, OSError):
            raise TrackingError(
                f"run {run_id} has no {CONFIG_ARTIFACT} artifact: it was not made by "
                "looplab-train, or its artifacts are gone"
            ) from None
        try:
            return Path(local).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise TrackingError(f"cannot read {CONFIG_ARTIFACT} of run {run_id}: {error}") from None


def histories(uri: str, run: Run) -> dict[str, list[tuple[int, float]]]:
    """Every metric the run logged, each as (epoch, value) by epoch."""
    return {name: reader.history(run, name, uri) for name in tables.metric_names([run])}


def find_tagged(uri: str, experiment: str, key: str, value: str) -> Run | None:
    """The newest run of `experiment` whose tag `key` is `value`, or None."""
    client, experiment_id = reader.client(uri), reader.experiment_id(uri, experiment)
    found = reader.call(store.find_tagged, client, experiment_id, key, value, newest_first=True)
    return found
