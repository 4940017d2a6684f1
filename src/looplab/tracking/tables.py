"""Runs as people compare them: a table (final and best of each metric, the params that vary)
and per-epoch curves, for `looplab runs`, `looplab plot`, a sweep's summary and `looplab sync`.
Built from what `reader` reads; every function is told the store the runs came from."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from looplab.core.errors import TrackingError
from looplab.core.objective import BEST, BEST_EPOCH, base_metric, direction_of
from looplab.run.naming import UNNAMED_PREFIXES
from looplab.run.tags import PRUNED_AT
from looplab.tracking.reader import LOST_AFTER_SECONDS, history, is_lost
from looplab.tracking.store import JOB_TAG as JOB
from looplab.tracking.store import SWEEP_ID_TAG as SWEEP_ID

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure
    from mlflow.entities import Run

# Metrics in the order a reader expects them; any others follow, sorted.
METRIC_ORDER = ("train_loss", "val_loss", "val_accuracy", "val_rmse")
# Metrics where more is better; every other metric (losses, rmse, ...) is best at its minimum.
LINE_STYLES = ("-", "--", "-.", ":")


def varying_params(runs: list[Run]) -> list[str]:
    """The param keys whose values differ between `runs` (absent counts as a value), sorted.

    A group's choice is logged twice (`update` and `update.name`); it is shown once.
    """
    keys = sorted(
        {key for run in runs for key in run.data.params if not key.startswith(UNNAMED_PREFIXES)}
    )  # how a run was kept (tracking.*, checkpoint.*) never says why its numbers differ
    columns = {key: [run.data.params.get(key) for run in runs] for key in keys}
    varying = [key for key in keys if len(set(columns[key])) > 1]
    return [
        key
        for key in varying
        if not (key.endswith(".name") and columns.get(key.removesuffix(".name")) == columns[key])
    ]


def metric_names(runs: list[Run]) -> list[str]:
    """Every epoch metric any of `runs` logged, the usual ones first (not the summaries a run
    logs at its end, `val_loss_best` and `val_loss_best_epoch`: the table finds the best)."""
    names = {
        name for run in runs for name in run.data.metrics if not name.endswith((BEST, BEST_EPOCH))
    }
    known = [name for name in METRIC_ORDER if name in names]
    return known + sorted(names - set(known))


def higher_is_better(metric: str) -> bool:
    """Accuracy-like metrics are best at their maximum; losses and errors at their minimum."""
    return direction_of(metric) == "maximize"


def final_and_best(points: list[tuple[int, float]], metric: str) -> tuple[float, float]:
    """The value at the last step, and the best finite value (NaN when there is none)."""
    if not points:
        return math.nan, math.nan
    finite = [value for _, value in points if math.isfinite(value)]
    best = (max if higher_is_better(metric) else min)(finite) if finite else math.nan
    return points[-1][1], best


def runs_table(runs: list[Run], uri: str, lost_after_s: float = LOST_AFTER_SECONDS) -> pd.DataFrame:
    """One row per run: job (and sweep, when runs of several sweeps mix), run name, status,
    the params that vary, each metric's final and best value, duration in seconds, run id.

    Constant params are left out: they say nothing about why runs differ. Rows go by job
    number within a sweep; sweeps and plain runs by start time. `uri` is the store they came from.
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
        if status == "FINISHED" and PRUNED_AT in run.data.tags:  # a search's pruner stopped it
            status = f"PRUNED@{run.data.tags[PRUNED_AT]}"
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
    text = str(value)
    if len(text) > 7 and any(c in text for c in ".e"):  # a sampled float, logged as a param
        try:
            return f"{float(text):.4g}"
        except ValueError:
            pass
    return text


# The runs table's columns that are not params: what a group is not told apart by.
NOT_PARAMS = ("job", "sweep", "run", "status", "duration_s", "run_id")


def grouped_table(table: pd.DataFrame, over: list[str]) -> pd.DataFrame:
    """The FINISHED runs of a runs table that differ only in `over` (`seed`) as one row a
    group: the params that tell groups apart, the number of runs, and each final and best
    metric's mean and standard deviation (n - 1; empty for one run). MLflow cannot aggregate
    runs (mlflow#3762); a result from one seed is not a result."""
    import pandas as pd

    metrics = [c for c in table.columns if c.startswith(("final_", "best_"))]
    params = [c for c in table.columns if c not in (*NOT_PARAMS, *metrics, *over)]
    finished = table[table["status"] == "FINISHED"] if "status" in table else table
    rows = []
    groups = finished.groupby(params, dropna=False, sort=True) if params else [((), finished)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(params, key, strict=True)) | {"runs": len(group)}
        for metric in metrics:
            row[f"{metric}_mean"] = group[metric].mean()
            row[f"{metric}_std"] = group[metric].std(ddof=1)
        rows.append(row)
    return pd.DataFrame(rows)


def best_group(
    groups: pd.DataFrame, metric: str, direction: str
) -> tuple[str, dict[str, str]] | None:
    """The group whose mean `metric` (`val_loss`, `val_accuracy_best`) is best: a line that
    names it, with the mean, std and count, and its tags for the sweep's parent."""
    column = f"best_{base_metric(metric)}_mean" if metric.endswith(BEST) else f"final_{metric}_mean"
    if groups.empty or column not in groups or groups[column].isna().all():
        return None
    ranked = groups[column] if direction == "minimize" else -groups[column]
    row = groups.loc[ranked.idxmin()]
    params = [c for c in groups.columns if c != "runs" and not c.endswith(("_mean", "_std"))]
    shown = " ".join(f"{k}={row[k]}" for k in params) or "(one group)"
    spread = row[column.removesuffix("_mean") + "_std"]
    line = (
        f"best over seeds: {shown} ({metric} mean {row[column]:.4g}, std {spread:.2g}, "
        f"{int(row['runs'])} runs)"
    )
    return line, {"looplab.best_group": shown, "looplab.best_group_mean": repr(row[column])}


def write_table_csv(table: pd.DataFrame, path: str | Path) -> Path:
    """The table as CSV, full precision (the printed table rounds); folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return path


# -- the plot ----------------------------------------------------------------------------------


def label(run: Run, keys: list[str], names: list[str]) -> str:
    """A legend entry: the run's name (a sweep's child is named by what varies), unless
    another run of the plot (`names`) has the same name; then its values of what varies."""
    name = run.info.run_name
    if (name and names.count(name) <= 1) or not keys:
        return name or run.info.run_id
    return values_label(run, keys)


def values_label(run: Run, keys: list[str]) -> str:
    """The run's values of `keys`; a key it lacks (`model.activation` of a one-neuron model)
    is left out."""
    params = run.data.params
    return " ".join(f"{key}={params[key]}" for key in keys if key in params)


def plot_curves(
    runs: list[Run], metric: str, out_path: str | Path, uri: str, over: list[str] = ()
) -> Figure:
    """Per-epoch curves of `metric`, one line per run that logged it, saved as a PNG; with
    `over` (`seed`), one line per group of FINISHED runs that differ only in those keys: the
    mean over the group at each epoch they all reached, in a band of +-1 std.

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
    if over:
        _plot_groups(axes, runs, metric, uri, [k for k in keys if k not in over])
    names = [run.info.run_name for run in runs]
    for run in [] if over else runs:
        points = history(run, metric, uri)
        if points:
            steps, values = zip(*points, strict=True)
            # Styles vary as well as colours: runs that agree (manual and sgd updates do)
            # draw the same curve, and a dashed line over a solid one shows both.
            style = LINE_STYLES[len(axes.get_lines()) % len(LINE_STYLES)]
            axes.plot(steps, values, style, label=label(run, keys, names), linewidth=1.8)
    if not axes.get_lines():
        raise TrackingError(f"none of the {len(runs)} runs logged {metric!r}")
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    what = "groups" if over else "runs"
    axes.set_title(f"{metric} by epoch ({len(axes.get_lines())} {what})")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", ncol=1 + len(axes.get_lines()) // 16)
    figure.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, format="png")
    return figure


def _plot_groups(axes: Any, runs: list[Run], metric: str, uri: str, keys: list[str]) -> None:
    """One mean curve with a +-1 std band per group of FINISHED runs alike in `keys`."""
    import numpy as np

    groups: dict[str, list[dict[int, float]]] = {}
    for run in runs:
        done = run.info.status == "FINISHED" and PRUNED_AT not in run.data.tags  # its curve whole
        points = history(run, metric, uri) if done else []
        if points:
            groups.setdefault(values_label(run, keys), []).append(dict(points))
    for name, curves in groups.items():
        steps = sorted(set.intersection(*(set(curve) for curve in curves)))
        values = np.array([[curve[step] for step in steps] for curve in curves])
        mean, std = values.mean(axis=0), values.std(axis=0, ddof=1 if len(curves) > 1 else 0)
        style = LINE_STYLES[len(axes.get_lines()) % len(LINE_STYLES)]
        (line,) = axes.plot(steps, mean, style, label=f"{name} (n={len(curves)})", linewidth=1.8)
        axes.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
