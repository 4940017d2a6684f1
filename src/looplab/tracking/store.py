"""Opening an MLflow store: the one place that creates a store or an experiment.

Both the writer process and the `looplab` commands' reader open stores through here, so a
new SQLite store is always created the same way, under the same lock.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from looplab.run import tags

HTTP_HEALTH_TIMEOUT_SECONDS = 5.0
DEFAULT_EXPERIMENT = "looplab"
# What the writer, `looplab sync` and the reader agree on: MLflow's limits on one call and
# one param, and the tags one of them writes and another reads.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000
HEARTBEAT_TAG = "looplab.heartbeat"  # ms since the epoch, at most every 30 s while a run runs
REAPED_TAG = "looplab.reaped"
# The sweep contract (a parent tagged role=sweep, its sweep id and swept keys; each job
# role=job, the sweep id and its number) and a run's identity: named once, in run/tags.py.
PARENT_TAG, ROLE_TAG, SWEEP_ID_TAG = tags.PARENT, tags.ROLE, tags.SWEEP_ID
SWEPT_KEYS_TAG, JOB_TAG = tags.SWEPT_KEYS, tags.JOB
CONFIG_DIGEST_TAG, DATA_DIGEST_TAG = tags.CONFIG_DIGEST, tags.DATA_DIGEST
BEST_JOB_TAG, BEST_RUN_ID_TAG = tags.BEST_JOB, tags.BEST_RUN_ID
# MLflow's settings, read at each call. The writer's: one try a call, never MLflow's minutes
# of retries (the writer retries itself, in the background, with backoff); they win over
# whatever the writer's parent has. A `looplab` command's: one retry, then a one-line error,
# and no progress bar when it downloads a file.
WRITER_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # a model's files, copied as it is logged
}
COMMAND_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def first_line(error: BaseException) -> str:
    """An error in one line, for a message: its first line, or its type's name."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


@contextlib.contextmanager
def command_settings() -> Iterator[None]:
    """`COMMAND_ENV` for the MLflow calls inside the block, where the user set nothing
    else; os.environ is as it was afterwards, so no process started later inherits them."""
    added = {key: value for key, value in COMMAND_ENV.items() if key not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key, value in added.items():
            if os.environ.get(key) == value:
                del os.environ[key]


def find_tagged(
    client: Any, experiment_id: str, key: str, value: str, newest_first: bool = False
) -> Any:
    """The run of the experiment whose tag `key` is `value` (the newest, if several), or None."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{key}` = '{value}'",
        order_by=["attributes.start_time DESC"] if newest_first else None,
        max_results=1,
    )
    return found[0] if found else None


def param_batches(params: dict[str, Any]) -> list[list[Any]]:
    """`params` as MLflow Params cut to MLflow's length, in batches of one call each."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
    return [
        items[start : start + MAX_PARAMS_PER_BATCH]
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH)
    ]


def default_store_uri(launch_dir: Path | None = None) -> str:
    """`sqlite:///<launch dir>/outputs/mlflow.db`: the store `looplab-train` and the `looplab`
    commands use unless told otherwise. Absolute, so every job of a sweep finds the same one."""
    return f"sqlite:///{((launch_dir or Path.cwd()) / 'outputs' / 'mlflow.db').resolve()}"


def open_store(uri: str, experiment: str) -> tuple[Any, str]:
    """Open (and if need be create) the store and the experiment, safely under concurrency.

    A new SQLite store is created under a file lock: MLflow's schema migration fails when
    several processes run it at once. The experiment is looked up or created under the same
    lock, and the run later gets its id explicitly, so no run lands in `Default`.
    """
    import logging

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "creating tables" chatter
    database = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None

    def get_or_create(client: MlflowClient) -> str:
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return found.experiment_id
        location = (database.parent / "artifacts").as_uri() if database else None
        try:
            return client.create_experiment(experiment, artifact_location=location)
        except MlflowException:  # another process created it in the meantime
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise
            return found.experiment_id

    if database is None:
        if uri.startswith(("http://", "https://")):
            check_server(uri)
        client = MlflowClient(tracking_uri=uri)
        return client, get_or_create(client)
    from filelock import FileLock

    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{database}.lock"):  # the store's schema migration happens in here
        if not database.exists():
            # Create the store ourselves, so that even its `Default` experiment keeps its
            # artifacts beside the database (MLflow's own default is ./mlruns/0 in the cwd).
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            SqlAlchemyStore(uri, (database.parent / "artifacts").as_uri())
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
        return client, get_or_create(client)


def check_server(uri: str) -> None:
    """Fail in seconds, not after MLflow's minutes of retries, when nothing answers. It
    changes no setting of the process (see `command_settings`)."""
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=HTTP_HEALTH_TIMEOUT_SECONDS)
    except requests.RequestException:
        raise ConnectionError(f"no MLflow server answers at {uri}") from None
