"""How two runs differ: their histories epoch by epoch (`reproduce`), their recorded
settings, versions and final numbers (`diff`), as the tables those commands print."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from looplab.run.tags import CHOICES, CODE

if TYPE_CHECKING:
    from mlflow.entities import Run

# How many differing metrics the mismatch table shows.
MAX_ROWS = 12
# Params that say where a run is recorded, not what it is: never a difference.
WHERE_PARAMS = ("tracking.uri",)
# Params that repeat a group's `.name` param: shown once, as `update.name`.
ALIASES = ("dataset", "update", "device")
# Tags that explain why two runs' numbers differ, in the order they are shown.
RECORDED_TAGS = (
    "looplab.version.python",
    "looplab.version.torch",
    "looplab.version.mlflow",
    "looplab.version.hydra",
    "looplab.version.looplab",
    "looplab.platform",
    "mlflow.source.git.commit",
    "looplab.git.dirty",
    "looplab.data.digest",
    "looplab.data.sha256",
    "looplab.device",
    CODE,
)


@dataclass
class Difference:
    """The first epoch at which one metric differs between two histories."""

    metric: str
    epoch: int | None  # None: one run lacks the metric altogether
    original: float
    reproduced: float
    epochs_differing: int
    note: str = ""

    @property
    def relative(self) -> float:
        return relative_difference(self.original, self.reproduced)


def relative_difference(a: float, b: float) -> float:
    """|a - b| relative to the larger magnitude; 0 for equal values (NaN equals NaN), inf when
    one is not finite and the other differs."""
    if a == b or (math.isnan(a) and math.isnan(b)):
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b))


def compare_histories(
    original: dict[str, list[tuple[int, float]]],
    reproduced: dict[str, list[tuple[int, float]]],
    tolerance: float = 0.0,
) -> list[Difference]:
    """Each metric whose per-epoch values differ (beyond `tolerance`, relative) between two
    runs, at its first differing epoch; a metric or an epoch only one run has differs too."""
    found = []
    for metric in sorted(set(original) | set(reproduced)):
        a, b = dict(original.get(metric, [])), dict(reproduced.get(metric, []))
        if metric not in original or metric not in reproduced:
            where = "the reproduction" if metric not in reproduced else "the original"
            found.append(Difference(metric, None, math.nan, math.nan, 0, f"not logged by {where}"))
            continue
        differing = [
            epoch
            for epoch in sorted(set(a) | set(b))
            if epoch not in a
            or epoch not in b
            or relative_difference(a[epoch], b[epoch]) > tolerance
        ]
        if differing:
            first = differing[0]
            note = ""
            if first not in a or first not in b:
                note = f"epochs: {len(a)} original, {len(b)} reproduction"
            found.append(
                Difference(
                    metric,
                    first,
                    a.get(first, math.nan),
                    b.get(first, math.nan),
                    len(differing),
                    note,
                )
            )
    return found


def report(
    original: Run,
    new: Run,
    differences: list[Difference],
    edited: list[tuple[str, str, str]],
    tolerance: float,
    epochs: int,
) -> str:
    """What `reproduce` prints at the end: the verdict, then the first differing epochs and
    the recorded differences that explain them."""
    old_id, new_id = original.info.run_id, new.info.run_id
    lines = []
    if edited:
        shown = ", ".join(
            f"{key}: params {logged}, config.yaml {value}" for key, logged, value in edited
        )
        lines.append(
            f"warning: the config.yaml of run {old_id} in the store disagrees with the run's own "
            f"params ({shown}): the artifact was changed after the run"
        )
    status = ""
    if new.info.status != original.info.status:
        status = f" (the original ended {original.info.status}, the reproduction {new.info.status})"
    if not differences and not status:
        how = (
            "bitwise identical" if tolerance == 0 else f"identical within {tolerance:g} (relative)"
        )
        metrics = ", ".join(sorted(new.data.metrics))
        lines.append(f"reproduced: run {new_id} is {how} to {old_id}: {epochs} epochs of {metrics}")
        return "\n".join(lines)
    lines.append(f"NOT reproduced: run {new_id} differs from {old_id}{status}")
    if differences:
        rows = [
            ["metric", "first epoch", "original", "reproduction", "rel. diff", "epochs differing"]
        ]
        for item in differences[:MAX_ROWS]:
            rows.append(
                [
                    item.metric,
                    "" if item.epoch is None else str(item.epoch),
                    _number(item.original),
                    _number(item.reproduced),
                    _number(item.relative, short=True) if item.epoch is not None else "",
                    item.note or str(item.epochs_differing),
                ]
            )
        lines.append(text_table(rows))
    explained = recorded_differences(original, new)
    if explained:
        lines.append("recorded differences:")
        lines.append(text_table([["what", "original", "reproduction"], *explained]))
    else:
        lines.append(
            "no recorded difference explains it (same config, versions, data, device, threads)"
        )
    return "\n".join(lines)


def _number(value: float, short: bool = False) -> str:
    if isinstance(value, float) and math.isnan(value):
        return ""
    return f"{value:.2g}" if short else repr(float(value))


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  "
        + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def recorded_differences(a: Run, b: Run, uri: str | None = None) -> list[list[str]]:
    """[what, A, B] for everything recorded that differs between two runs: config values,
    group choices, versions, commit and dirty state, data, device and threads, then (given
    the store's `uri`) each metric's final and best value. Nothing that is the same."""
    rows: list[list[str]] = []
    params_a, params_b = a.data.params, b.data.params
    for key in sorted(set(params_a) | set(params_b)):
        if key in WHERE_PARAMS or key in ALIASES:
            continue
        if params_a.get(key) != params_b.get(key):
            rows.append([key, params_a.get(key, "-"), params_b.get(key, "-")])
    shown_keys = {row[0] for row in rows}
    choices_a, choices_b = run_choices(a), run_choices(b)
    for group in sorted(set(choices_a) | set(choices_b)):
        if f"{group}.name" in shown_keys:  # the same change, already a row
            continue
        if choices_a.get(group) != choices_b.get(group):
            rows.append([f"choice: {group}", choices_a.get(group, "-"), choices_b.get(group, "-")])
    tags_a, tags_b = a.data.tags, b.data.tags
    for key in RECORDED_TAGS:
        if tags_a.get(key) != tags_b.get(key):
            rows.append([key.removeprefix("looplab."), tags_a.get(key, "-"), tags_b.get(key, "-")])
    if uri is not None:
        rows += _metric_rows(a, b, uri)
    return rows


def run_choices(run: Run) -> dict[str, str]:
    try:
        found = json.loads(run.data.tags.get(CHOICES, "{}"))
    except json.JSONDecodeError:
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def _metric_rows(a: Run, b: Run, uri: str) -> list[list[str]]:
    from looplab.tracking import reader, tables

    rows = []
    for metric in tables.metric_names([a, b]):
        final_a, best_a = tables.final_and_best(reader.history(a, metric, uri), metric)
        final_b, best_b = tables.final_and_best(reader.history(b, metric, uri), metric)
        for what, x, y in (("final", final_a, final_b), ("best", best_a, best_b)):
            if relative_difference(x, y) != 0:
                rows.append([f"{what} {metric}", _number(x), _number(y)])
    return rows
