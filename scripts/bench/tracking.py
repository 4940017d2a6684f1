"""Group `tracking`: an epoch with a live MLflow run against the same epoch with tracking off.

The MLflow writer's and the server's CPU time are read during the same epochs, so a row that
misses says what the helper processes took in this run.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import Row, Seconds, Settings, amount, human, medians, ratios, side_by_side
from bench.problems import Problem, best_epochs, compose, framework_epochs, problem
from looplab.server import mlflow_server
from looplab.tracking import Tracker, start_tracker

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int | None = None, group: int | None = None) -> Seconds:
    """CPU time (user + system) of one process, or of every process in a process group."""
    total = 0
    pids = [pid] if pid is not None else [int(n) for n in os.listdir("/proc") if n.isdigit()]
    for each in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{each}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            if group is None or int(fields[2]) == group:  # fields[2]: the process group
                total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


@dataclass
class TrackedStats:
    """Per repeat: the end-of-run flush, and helpers' CPU time per epoch while epochs ran."""

    finish: list[Seconds] = field(default_factory=list)
    writer_cpu: list[Seconds] = field(default_factory=list)
    server_cpu: list[Seconds] = field(default_factory=list)
    tracker: Tracker | None = None  # the writer, idle between repeats as between sweep jobs

    def stop(self) -> None:
        if self.tracker is not None:
            self.tracker.stop()


def tracked_epochs(
    p: Problem,
    epochs: int,
    uri: str,
    folder: Path,
    stats: TrackedStats,
    server_group: int | None = None,
) -> Seconds:
    """Seconds an epoch of the framework's loop with a live MLflow run.

    The writer comes from `start_tracker`, as in the CLI: the first repeat starts it, the
    next ones reuse it idle, as a sweep's jobs do; `stats.stop()` ends it.
    """
    cfg = compose("tracking.enabled=true", f"tracking.uri={uri}", "tracking.experiment=bench")
    tracker = start_tracker(cfg)
    assert tracker is not None
    stats.tracker = tracker
    tracker.start_run("bench", {"epochs": str(epochs)}, {}, [])
    readings: dict[str, tuple[Seconds, Seconds]] = {}
    writer = getattr(getattr(tracker, "process", None), "pid", None)

    def around(edge: str) -> None:
        server = cpu_seconds(group=server_group) if server_group else 0.0
        readings[edge] = (cpu_seconds(writer) if writer else math.nan, server)

    per_epoch = framework_epochs(p, epochs, tracker, folder, around=around)
    start = time.perf_counter()
    warning = tracker.finish("FINISHED")
    stats.finish.append(time.perf_counter() - start)
    if warning:
        raise RuntimeError(warning)
    stats.writer_cpu.append((readings["end"][0] - readings["start"][0]) / epochs)
    stats.server_cpu.append((readings["end"][1] - readings["start"][1]) / epochs)
    return per_epoch


def _cpu(per_epoch: list[Seconds], epochs: int) -> str:
    """A helper's CPU time an epoch; /proc counts it in clock ticks, so say when none fell."""
    value = statistics.median(per_epoch)
    if value > 0:
        return f"{human(value)} of CPU an epoch"
    return f"under {human(1 / TICK / epochs)} of CPU an epoch (not one {1000 // TICK} ms tick)"


def tracking_why(extra: Seconds, off: Seconds, stats: TrackedStats, store: str, epochs: int) -> str:
    cores = f"the same {os.cpu_count()} cores as the training process"
    helpers = []
    if not any(math.isnan(v) for v in stats.writer_cpu):
        helpers.append(f"the MLflow writer process used {_cpu(stats.writer_cpu, epochs)}")
    if store == "HTTP":
        helpers.append(f"the `mlflow server` {_cpu(stats.server_cpu, epochs)}")
    where = (
        f"While the epochs ran, {' and '.join(helpers)}, on {cores}"
        if helpers
        else f"The MLflow writer process runs on {cores}"
    )
    return (
        f"with tracking on, an epoch took {amount(extra)} more than with it off "
        f"({human(off)}; the median of the repeats' differences). {where}; the training "
        "process itself only appends each epoch to a list and pickles the list to the writer "
        "a few times a second."
    )


def rows(cfg: Settings, work: Path) -> list[Row]:
    result = []
    sqlite_uri = f"sqlite:///{work / 'bench-store' / 'mlflow.db'}"
    Tracker(sqlite_uri, "bench").close()  # create the store and experiment beforehand
    cases = [
        (
            "digits w256 b64",
            problem("digits", "dataset=digits", "model.width=256", "train.batch_size=64"),
        ),
        ("breast_cancer full batch", problem("breast_cancer")),
    ]

    def measure(store: str, uri: str, goal: str, server_group: int | None = None) -> None:
        for label, p in cases:
            epochs = best_epochs(lambda e, p=p: framework_epochs(p, e, None, work), cfg.budget)
            stats = TrackedStats()
            times = side_by_side(
                {
                    "tracked": lambda p=p, e=epochs, s=stats: tracked_epochs(
                        p, e, uri, work, s, server_group
                    ),
                    "off": lambda p=p, e=epochs: framework_epochs(p, e, None, work),
                },
                cfg.repeats,
            )
            stats.stop()
            median = medians(times)
            extra = statistics.median(
                a - b for a, b in zip(times["tracked"], times["off"], strict=True)
            )
            result.append(
                Row(
                    "tracking overhead",
                    f"epoch with tracking to {store}, {label}",
                    "tracking.enabled=false",
                    ratios(times, "tracked", "off"),
                    goal,
                    {**median, "end of run": statistics.median(stats.finish)},
                    note=f"{epochs} epochs a repeat; 'end of run' is the final flush, once",
                    why=tracking_why(extra, median["off"], stats, store, epochs),
                )
            )

    # SQLite first, with no server running: an idle `mlflow server` still takes CPU.
    measure("SQLite", sqlite_uri, "<= 1.10")
    with mlflow_server(
        f"sqlite:///{work / 'server.db'}",
        artifacts_destination=work / "server-artifacts",
        cwd=work,
        log=work / "mlflow-server.log",
    ) as (url, server):
        measure("HTTP", url, "<= 1.25", server_group=server.pid)
    return result
