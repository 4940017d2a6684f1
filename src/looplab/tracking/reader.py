"""Reading runs back: the read side of the store, for `looplab runs/plot/ui` and sweep summaries.

Only this module of the commands touches MLflow, and only inside functions, so `looplab --help`
stays instant. It never creates anything: a SQLite store that is not there is an error, not a
new empty store. Plain objects go in and out: MLflow `Run`s, pandas tables, a matplotlib Figure.

The sweep contract (written by the training side): a sweep's parent run is tagged
`looplab.role=sweep`, `looplab.sweep_id`, `looplab.swept_keys`; each job is a child run
(`mlflow.parentRunId`) tagged `looplab.role=job`, `looplab.sweep_id` and `looplab.job`.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from looplab.core.errors import TrackingError
from looplab.tracking.store import (
    HEARTBEAT_TAG,
    JOB_TAG,
    PARENT_TAG,
    REAPED_TAG,
    ROLE_TAG,
    SWEEP_ID_TAG,
    SWEPT_KEYS_TAG,
    check_server,
    command_settings,
)

if TYPE_CHECKING:
    from mlflow.entities import Run

ROLE, SWEEP_ID, SWEPT_KEYS, JOB = ROLE_TAG, SWEEP_ID_TAG, SWEPT_KEYS_TAG, JOB_TAG
PARENT, HEARTBEAT, REAPED = PARENT_TAG, HEARTBEAT_TAG, REAPED_TAG
# A RUNNING run whose heartbeat is older than this (seconds) is shown as LOST.
LOST_AFTER_SECONDS = 300.0
PAGE = 1000


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (relative or absolute), else None."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def client(uri: str) -> Any:
    """An MlflowClient on an existing store; TrackingError (one line) when there is none.

    A SQLite file is checked first: MLflow would silently create an empty store.
    """
    database = sqlite_path(uri)
    if database is not None and not database.is_file():
        raise TrackingError(
            f"no MLflow store at {database}: train something first (looplab-train), "
            "or pass --tracking-uri"
        )
    if uri.startswith(("http://", "https://")):
        try:
            check_server(uri)
        except ConnectionError as error:
            raise TrackingError(str(error)) from None
    return _cached_client(uri)


def experiment_id(uri: str, experiment: str) -> str:
    """The id of `experiment` in the store at `uri`; TrackingError naming the ones there."""
    mlflow_client = client(uri)
    found = call(mlflow_client.get_experiment_by_name, experiment)
    if found is None:
        names = [e.name for e in call(mlflow_client.search_experiments)]
        raise TrackingError(
            f"no experiment {experiment!r} in {uri} (it has: {', '.join(sorted(names)) or 'none'})"
        )
    return found.experiment_id


def find_runs(
    uri: str,
    experiment: str,
    parent_run_id: str | None = None,
    run_ids: list[str] | None = None,
) -> list[Run]:
    """The runs to compare: a sweep's jobs, the runs named by id, or the whole experiment.

    The whole experiment means its training runs: sweep parents are left out, since they
    train nothing and hold no metrics (their jobs are listed). An unknown parent or run id is
    a TrackingError; the result may be empty.
    """
    mlflow_client = client(uri)
    exp_id = experiment_id(uri, experiment)
    if run_ids:
        runs = [get_run(uri, experiment, run_id) for run_id in run_ids]
    elif parent_run_id:
        get_run(uri, experiment, parent_run_id)
        runs = _search(mlflow_client, exp_id, f"tags.`{PARENT}` = '{parent_run_id}'")
    else:
        runs = _search(mlflow_client, exp_id, "")
        runs = [run for run in runs if run.data.tags.get(ROLE) != "sweep"]
    return runs


def sweep_children(
    uri: str, experiment: str, parent_run_id: str, ended_jobs: set[int], timeout: float = 120.0
) -> list[Run]:
    """A sweep's child runs, once the run of every job in `ended_jobs` is there and no longer
    RUNNING (or `timeout` has passed). Each job's writer creates and ends its run while the
    next job starts, in whatever process ran the job, so the last runs may land after the
    sweep's last job has returned. Jobs not in `ended_jobs` (lost with their process) are
    not waited for."""
    deadline = time.monotonic() + timeout
    while True:
        runs = find_runs(uri, experiment, parent_run_id=parent_run_id)
        ended = {run.data.tags.get(JOB) for run in runs if run.info.status != "RUNNING"}
        if {str(num) for num in ended_jobs} <= ended or time.monotonic() > deadline:
            return runs
        time.sleep(0.05)


def last_sweep(uri: str, experiment: str) -> str | None:
    """The run id of the newest sweep parent (`looplab.role=sweep`) in `experiment`, or None."""
    mlflow_client = client(uri)
    found = call(
        mlflow_client.search_runs,
        [experiment_id(uri, experiment)],
        filter_string=f"tags.`{ROLE}` = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0].info.run_id if found else None


def get_run(uri: str, experiment: str, run_id: str) -> Run:
    """The run `run_id` of `experiment`; a TrackingError that says where it is otherwise."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(uri)
    exp_id = experiment_id(uri, experiment)
    try:
        with command_settings():
            run = mlflow_client.get_run(run_id)
    except MlflowException:
        raise TrackingError(f"no run {run_id} in experiment {experiment!r} of {uri}") from None
    if run.info.experiment_id != exp_id:
        other = call(mlflow_client.get_experiment, run.info.experiment_id)
        raise TrackingError(
            f"run {run_id} is not in experiment {experiment!r}: it is in {other.name!r} "
            f"(pass --experiment {other.name!r})"
        )
    return run


def _search(mlflow_client: Any, exp_id: str, filter_string: str) -> list[Run]:
    """Every matching run, page by page (search_runs returns at most PAGE at a time)."""
    runs: list[Run] = []
    token = None
    while True:
        page = call(
            mlflow_client.search_runs,
            [exp_id],
            filter_string=filter_string,
            max_results=PAGE,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def call(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call MLflow (with a command's HTTP settings); its errors (a broken or foreign
    database, ...) become one line."""
    from mlflow.exceptions import MlflowException

    try:
        with command_settings():
            return function(*args, **kwargs)
    except MlflowException as error:
        raise TrackingError(f"MLflow: {str(error).splitlines()[0]}") from None


# -- the table ---------------------------------------------------------------------------------


def history(run: Run, metric: str, uri: str) -> list[tuple[int, float]]:
    """(step, value) of `metric` for `run`, by step; a step logged twice keeps its last value.

    MLflow's SQL stores keep an infinite value as the largest float; it is infinite again here.
    """
    points = call(_client_of(run, uri).get_metric_history, run.info.run_id, metric)
    latest: dict[int, tuple[int, float]] = {}
    for point in points:
        if point.step not in latest or point.timestamp >= latest[point.step][0]:
            value = point.value
            if abs(value) >= sys.float_info.max:
                value = math.copysign(math.inf, value)
            latest[point.step] = (point.timestamp, value)
    return [(step, latest[step][1]) for step in sorted(latest)]


def _client_of(run: Run, uri: str) -> Any:
    """A client on the store `run` came from; never MLflow's default store, which would read
    (and create) ./mlflow.db in the cwd."""
    return _cached_client(uri)


@functools.cache
def _cached_client(uri: str) -> Any:
    import logging

    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "creating tables" chatter
    return MlflowClient(tracking_uri=uri)


def heartbeat_ms(run: Run) -> int:
    """When the run's writer was last heard of: its heartbeat tag, else its start."""
    beat = run.data.tags.get(HEARTBEAT)
    return int(beat) if beat and beat.isdigit() else int(run.info.start_time or 0)


def is_lost(run: Run, lost_after_s: float = LOST_AFTER_SECONDS, now_ms: int | None = None) -> bool:
    """A RUNNING run whose writer has not been heard of for `lost_after_s`: its machine (or
    its trainer and writer) died, and nothing will end it."""
    if run.info.status != "RUNNING":
        return False
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return now_ms - heartbeat_ms(run) > lost_after_s * 1000


def reap_lost(uri: str, experiment: str, lost_after_s: float) -> list[Run]:
    """Mark every lost run of `experiment` (sweep parents too) KILLED, with a tag that says
    why, ended at its last heartbeat; the runs it marked."""
    mlflow_client = client(uri)
    running = _search(
        mlflow_client, experiment_id(uri, experiment), "attributes.status = 'RUNNING'"
    )
    reaped = []
    for run in running:
        if not is_lost(run, lost_after_s):
            continue
        last = heartbeat_ms(run)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last / 1000))
        why = (
            f"no heartbeat since {when} (over {lost_after_s:g} s): its trainer and writer "
            "were gone; marked KILLED by `looplab runs --reap`"
        )
        call(mlflow_client.set_tag, run.info.run_id, REAPED, why)
        call(mlflow_client.set_terminated, run.info.run_id, "KILLED", end_time=last)
        reaped.append(run)
    return reaped
