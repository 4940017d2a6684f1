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
    import pandas as pd
    from matplotlib.figure import Figure
    from mlflow.entities import Run

ROLE, SWEEP_ID, SWEPT_KEYS, JOB = ROLE_TAG, SWEEP_ID_TAG, SWEPT_KEYS_TAG, JOB_TAG
PARENT, HEARTBEAT, REAPED = PARENT_TAG, HEARTBEAT_TAG, REAPED_TAG
# A RUNNING run whose heartbeat is older than this (seconds) is shown as LOST.
LOST_AFTER_SECONDS = 300.0
# Metrics in the order a reader expects them; any others follow, sorted.
METRIC_ORDER = ("train_loss", "val_loss", "val_accuracy", "val_rmse")
# Metrics where more is better; every other metric (losses, rmse, ...) is best at its minimum.
HIGHER_IS_BETTER = ("accuracy", "acc", "f1", "auc", "r2", "precision", "recall")
PAGE = 1000
LINE_STYLES = ("-", "--", "-.", ":")


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
    return remember(runs, uri)


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
    return remember([run], uri)[0]


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


def varying_params(runs: list[Run]) -> list[str]:
    """The param keys whose values differ between `runs` (absent counts as a value), sorted.

    A group's choice is logged twice (`update` and `update.name`); it is shown once.
    """
    keys = sorted({key for run in runs for key in run.data.params})
    columns = {key: [run.data.params.get(key) for run in runs] for key in keys}
    varying = [key for key in keys if len(set(columns[key])) > 1]
    return [
        key
        for key in varying
        if not (key.endswith(".name") and columns.get(key.removesuffix(".name")) == columns[key])
    ]


def metric_names(runs: list[Run]) -> list[str]:
    """Every metric any of `runs` logged, the usual ones first."""
    names = {name for run in runs for name in run.data.metrics}
    known = [name for name in METRIC_ORDER if name in names]
    return known + sorted(names - set(known))


def higher_is_better(metric: str) -> bool:
    """Accuracy-like metrics are best at their maximum; losses and errors at their minimum."""
    return metric.rsplit("_", 1)[-1].lower() in HIGHER_IS_BETTER


def history(run: Run, metric: str, uri: str | None = None) -> list[tuple[int, float]]:
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


# The store each run was found in, so that callers can pass plain Run objects around.
_FOUND_IN: dict[str, str] = {}


def _client_of(run: Run, uri: str | None) -> Any:
    """A client on the store `run` came from: `uri`, or the one find_runs found it in.

    Never MLflow's default store: that would read (and create) ./mlflow.db in the cwd.
    """
    uri = uri or _FOUND_IN.get(run.info.run_id)
    if uri is None:
        raise TrackingError(
            f"run {run.info.run_id} did not come from find_runs: pass the store's uri"
        )
    return _cached_client(uri)


@functools.cache
def _cached_client(uri: str) -> Any:
    import logging

    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "creating tables" chatter
    return MlflowClient(tracking_uri=uri)


def remember(runs: list[Run], uri: str) -> list[Run]:
    """Note the store `runs` came from, for `history` and the other readers of a run."""
    for run in runs:
        _FOUND_IN[run.info.run_id] = uri
    return runs


def final_and_best(points: list[tuple[int, float]], metric: str) -> tuple[float, float]:
    """The value at the last step, and the best finite value (NaN when there is none)."""
    if not points:
        return math.nan, math.nan
    finite = [value for _, value in points if math.isfinite(value)]
    best = (max if higher_is_better(metric) else min)(finite) if finite else math.nan
    return points[-1][1], best


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


def runs_table(
    runs: list[Run], uri: str | None = None, lost_after_s: float = LOST_AFTER_SECONDS
) -> pd.DataFrame:
    """One row per run: job (and sweep, when runs of several sweeps mix), run name, status,
    the params that vary, each metric's final and best value, duration in seconds, run id.

    Constant params are left out: they say nothing about why runs differ. Rows go by job
    number within a sweep; sweeps and plain runs by start time. `uri` is needed only for runs
    that did not come from find_runs.
    """
    import pandas as pd

    runs = sorted(runs, key=_order(runs))
    params, metrics = varying_params(runs), metric_names(runs)
    has_jobs = any(JOB in run.data.tags for run in runs)
    mixed = len({run.data.tags.get(SWEEP_ID) for run in runs}) > 1
    rows = []
    for run in runs:
        row: dict[str, Any] = {"job": _job(run)} if has_jobs else {}
        if has_jobs and mixed:
            row["sweep"] = run.data.tags.get(SWEEP_ID)
        status = "LOST" if is_lost(run, lost_after_s) else run.info.status
        row |= {"run": run.info.run_name, "status": status}
        row |= {key: run.data.params.get(key) for key in params}
        for metric in metrics:
            final, best = final_and_best(history(run, metric, uri), metric)
            row[f"final_{metric}"], row[f"best_{metric}"] = final, best
        end, start = run.info.end_time, run.info.start_time
        row["duration_s"] = (end - start) / 1000 if end and start else math.nan
        row["run_id"] = run.info.run_id
        rows.append(row)
    table = pd.DataFrame(rows)
    if has_jobs:  # whole numbers with gaps, not floats: `3`, not `3.0` in the CSV
        table["job"] = table["job"].astype("Int64")
    return table


def _job(run: Run) -> int | None:
    value = run.data.tags.get(JOB)
    return int(value) if value is not None and value.lstrip("-").isdigit() else None


def _order(runs: list[Run]) -> Any:
    """Sweeps (and plain runs) by when they started; a sweep's jobs by job number."""
    first: dict[str, int] = {}
    for run in runs:
        group = run.data.tags.get(SWEEP_ID) or run.info.run_id
        first[group] = min(first.get(group, run.info.start_time or 0), run.info.start_time or 0)

    def key(run: Run) -> tuple:
        group = run.data.tags.get(SWEEP_ID) or run.info.run_id
        job = _job(run)
        return (first[group], group, job if job is not None else -1, run.info.start_time or 0)

    return key


def format_table(table: pd.DataFrame) -> str:
    """The table as aligned plain text: numbers right-aligned and short, text left-aligned."""
    if table.empty:
        return "(no runs)"
    cells = [[_cell(value) for value in table[column]] for column in table.columns]
    numeric = [_is_numeric(table[column]) for column in table.columns]
    widths = [
        max(len(str(column)), *(len(c) for c in column_cells))
        for column, column_cells in zip(table.columns, cells, strict=True)
    ]

    def line(values: list[str]) -> str:
        parts = [
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    header = line([str(c) for c in table.columns])
    rows = [line(list(row)) for row in zip(*cells, strict=True)]
    return "\n".join([header, *rows])


def _is_numeric(column: pd.Series) -> bool:
    from pandas.api.types import is_numeric_dtype

    if is_numeric_dtype(column):
        return True
    values = [v for v in column if v is not None and v == v and v != ""]
    return bool(values) and all(_number(str(v)) is not None for v in values)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _cell(value: Any) -> str:
    """Short text for one value: 4 significant digits for floats, blank for missing."""
    import pandas as pd

    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_table_csv(table: pd.DataFrame, path: str | Path) -> Path:
    """The table as CSV, full precision (the printed table rounds); folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return path


# -- the plot ----------------------------------------------------------------------------------


def label(run: Run, keys: list[str]) -> str:
    """A legend entry: the run's values of the varying params, or its name when none vary.

    A key the run lacks (`model.activation` of a one-neuron model) is left out of its label.
    """
    if not keys:
        return run.info.run_name or run.info.run_id
    params = run.data.params
    return " ".join(f"{key}={params[key]}" for key in keys if key in params)


def plot_curves(
    runs: list[Run], metric: str, out_path: str | Path, uri: str | None = None
) -> Figure:
    """Per-epoch curves of `metric`, one line per run that logged it, saved as a PNG.

    Returns the figure (already saved) so that callers and tests can inspect its lines.
    Built on matplotlib's Agg canvas without pyplot: no display, no global figure state.
    Runs without the metric get no line; none having it is a TrackingError.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = sorted(runs, key=_order(runs))
    keys = varying_params(runs)
    figure = Figure(figsize=(9, 5.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for run in runs:
        points = history(run, metric, uri)
        if points:
            steps, values = zip(*points, strict=True)
            # Styles vary as well as colours: runs that agree (manual and sgd updates do)
            # draw the same curve, and a dashed line over a solid one shows both.
            style = LINE_STYLES[len(axes.get_lines()) % len(LINE_STYLES)]
            axes.plot(steps, values, style, label=label(run, keys), linewidth=1.8)
    if not axes.get_lines():
        raise TrackingError(f"none of the {len(runs)} runs logged {metric!r}")
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} by epoch ({len(axes.get_lines())} runs)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", ncol=1 + len(axes.get_lines()) // 16)
    figure.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, format="png")
    return figure
