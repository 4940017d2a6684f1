"""Group `sweep`: what a job of a sweep costs, against separate processes and bare Hydra.

Small jobs show the per-job overhead (one process for all jobs, the MLflow writer shared);
heavy jobs show what the joblib launcher's parallel workers buy on this machine.
"""

from __future__ import annotations

import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import (
    CLI,
    Row,
    Seconds,
    Settings,
    amount,
    command,
    human,
    medians,
    ratios,
    side_by_side,
)
from bench.problems import compose

GROUP = "sweep"
NOOP_APP = str(Path(__file__).with_name("noop_app.py"))


def rows(cfg: Settings, work: Path) -> list[Row]:
    return [separate_row(cfg, work), *per_job_rows(cfg, work), heavy_row(cfg, work)]


def separate_row(cfg: Settings, work: Path) -> Row:
    jobs = cfg.sweep_jobs
    lrs = [f"{0.01 * (i + 1):.2f}" for i in range(jobs)]
    store = f"tracking.uri=sqlite:///{work / 'sweep-store' / 'mlflow.db'}"
    small = ["train.epochs=5", "train.print_every=0", store]
    command(CLI, *small, f"hydra.run.dir={work / 'warm'}", cwd=work)()  # the store exists

    def separate() -> Seconds:
        return sum(
            command(CLI, *small, f"train.lr={lr}", f"hydra.run.dir={work / 'sep' / lr}", cwd=work)()
            for lr in lrs
        )

    multirun = command(
        CLI, "-m", *small, "train.lr=" + ",".join(lrs), f"hydra.sweep.dir={work / 'swp'}", cwd=work
    )
    times = side_by_side({"basic launcher": multirun, "separate": separate}, cfg.sweep_repeats)
    return Row(
        GROUP,
        f"{jobs} small tracked jobs (5 epochs, SQLite), basic launcher",
        f"{jobs} separate looplab-train processes",
        ratios(times, "basic launcher", "separate"),
        "<= 0.3",
        medians(times),
    )


def job_starts(sweep_dir: Path) -> list[float]:
    """When each job of a finished sweep started: Hydra writes its .hydra/config.yaml first."""
    return sorted(path.stat().st_mtime for path in sweep_dir.glob("**/.hydra/config.yaml"))


def per_job_rows(cfg: Settings, work: Path) -> list[Row]:
    """A job beyond the first of `looplab-train -m experiment=seed seed=1,...,N`, against the
    same sweep of a Hydra app that returns at once, from the times its jobs started: with
    Hydra's own basic sweeper and launcher (Hydra's floor), and with looplab's."""
    jobs = cfg.sweep_jobs
    folders = itertools.count()

    def per_job(name: str, app: list[str], *extra: str, tracked: bool = True) -> Seconds:
        folder = work / "per-job" / str(next(folders))
        folder.mkdir(parents=True)
        store = [f"tracking.uri=sqlite:///{folder / 'mlflow.db'}"] if tracked else []
        seeds = "seed=" + ",".join(str(seed) for seed in range(1, jobs + 1))
        sweep = command(
            *app,
            "-m",
            "experiment=seed",
            seeds,
            *store,
            *extra,
            f"hydra.sweep.dir={folder / 'sweep'}",
            cwd=folder,
        )
        sweep()
        starts = job_starts(folder / "sweep")
        if len(starts) != jobs:
            raise RuntimeError(f"{name}: {len(starts)} of {jobs} jobs started")
        # From the second job's start to the last's: jobs 2 to N-1, whole, nothing else.
        return (starts[-1] - starts[1]) / (jobs - 2)

    hydra_own = ["hydra/sweeper=basic", "hydra/launcher=basic"]
    times = side_by_side(
        {
            "looplab": lambda: per_job("looplab", [CLI]),
            "Hydra app": lambda: per_job("Hydra app", [sys.executable, NOOP_APP], *hydra_own),
            "app, looplab's sweeper and launcher": lambda: per_job(
                "app, looplab's sweeper and launcher", [sys.executable, NOOP_APP]
            ),
            "looplab untracked": lambda: per_job(
                "looplab untracked", [CLI], "tracking.enabled=false", tracked=False
            ),
            "looplab, Hydra's launcher": lambda: per_job(
                "looplab, Hydra's launcher", [CLI], "hydra/launcher=basic"
            ),
            "looplab, every job's model": lambda: per_job(
                "looplab, every job's model", [CLI], "tracking.log_model=all"
            ),
        },
        cfg.per_job_repeats,
    )
    median = medians(times)
    ours, hydra_only = median["looplab"], median["Hydra app"]
    floor_ours = median["app, looplab's sweeper and launcher"]
    untracked = median["looplab untracked"]
    composing = median["looplab, Hydra's launcher"]
    epochs = compose("experiment=seed").train.epochs
    against_hydra = Row(
        GROUP,
        f"a job beyond the first of a {jobs}-job sweep, experiment=seed, tracked (SQLite)",
        "a Hydra app that returns at once, same conf/ and overrides, Hydra's basic sweeper "
        "and launcher",
        ratios(times, "looplab", "Hydra app"),
        "<= 1.3",
        median,
        note=(
            f"each sweep tracked to a fresh SQLite store; a job's cost is the time from the "
            f"2nd job's start to the {jobs}th's over {jobs - 2} (each job's start read from "
            "the .hydra/config.yaml Hydra writes first), so neither the sweep's start-up (the "
            "sweep callback's checks and parent run, in both) nor its end is in it. Hydra's "
            "basic launcher composes every job's config from scratch; looplab's launcher (its "
            "default) composes once per combination of config groups and gives each job a "
            "copy with its values set. 'looplab untracked' is the same sweep with "
            "tracking.enabled=false; 'looplab, Hydra's launcher' with hydra/launcher=basic"
        ),
        why=(
            f"a job beyond the first cost looplab {human(ours)} against {human(hydra_only)} "
            "for Hydra's own work on the same conf/ tree (composing the job's config, its "
            "logging and its .hydra/ files). On Hydra's basic launcher looplab's job cost "
            f"{human(composing)}: composing once per group combination saved "
            f"{amount(composing - ours)} a job, and the app that does nothing cost "
            f"{human(floor_ours)} a job on looplab's sweeper and launcher. Of looplab's "
            f"{amount(ours - floor_ours)} over that floor, tracking accounts for "
            f"{amount(ours - untracked)} (the same sweep untracked took {human(untracked)} a "
            "job: the job hands its params, epochs and end to the writer process the jobs "
            "share and does not wait for it, so this is the writer's work competing with the "
            "next job for the cores), and the run itself for "
            f"{amount(untracked - floor_ours)}: checking the config, splitting the data, "
            f"{epochs} epochs with their console lines, config.yaml, metrics.csv and the "
            "run's record."
        ),
    )
    against_floor = Row(
        GROUP,
        f"a job beyond the first of a {jobs}-job sweep, experiment=seed, tracked (SQLite)",
        "the same app on looplab's sweeper and launcher: the floor looplab's own sweeps stand on",
        ratios(times, "looplab", "app, looplab's sweeper and launcher"),
        "",
        median,
        note=(
            f"the same repeats as the row above; the app's jobs cost {human(floor_ours)} on "
            f"looplab's sweeper and launcher against {human(hydra_only)} on Hydra's; looplab's "
            f"own work a job (the run, and {amount(ours - untracked)} of tracking) is "
            f"{amount(ours - floor_ours)} over that floor"
        ),
    )
    every_model = median["looplab, every job's model"]
    models = Row(
        GROUP,
        f"a job beyond the first of a {jobs}-job sweep, experiment=seed, tracking.log_model=all",
        "the same sweep as it runs by default (tracking.log_model=best: only the best child's "
        "model, logged at the sweep's end)",
        ratios(times, "looplab, every job's model", "looplab"),
        "",
        median,
        note=(
            f"the same repeats as the rows above; a job cost {human(every_model)} when every "
            f"job logs its MLflow model against {human(ours)} by default: "
            f"{amount(every_model - ours)} a job for a model (the writer builds and stores it "
            "while the next job trains, so this is its work competing for the cores). By "
            "default a sweep's jobs log none, and the sweep's end logs the best child's"
        ),
    )
    return [against_hydra, against_floor, models]


@dataclass
class JobSpans:
    """From each run of a sweep: when its first job started, a job's time, the overlap."""

    first: list[Seconds] = field(default_factory=list)  # from launch to the first job's start
    fastest: list[Seconds] = field(default_factory=list)  # the quickest job's time
    slowest: list[Seconds] = field(default_factory=list)  # the slowest job's time
    overlap: list[float] = field(default_factory=list)  # jobs running at once, on average

    def timed(self, sweep: Callable[[], Seconds], sweep_dir: Path) -> Callable[[], Seconds]:
        """`sweep`, reading its jobs' spans (.hydra/config.yaml first, metrics.csv last)."""

        def run() -> Seconds:
            launched = time.time()
            elapsed = sweep()
            spans = [
                (folder.stat().st_mtime, (folder.parent.parent / "metrics.csv").stat().st_mtime)
                for folder in sweep_dir.glob("*/.hydra/config.yaml")
            ]
            starts, ends = zip(*spans, strict=True)
            durations = [end - start for start, end in spans]
            self.first.append(min(starts) - launched)
            self.fastest.append(min(durations))
            self.slowest.append(max(durations))
            self.overlap.append(sum(durations) / (max(ends) - min(starts)))
            return elapsed

        return run


def heavy_row(cfg: Settings, work: Path) -> Row:
    workers = 2
    heavy = [
        "dataset=digits",
        "model.width=1024",
        "train.batch_size=64",
        f"train.epochs={cfg.heavy_epochs}",
        "train.print_every=0",
        "tracking.enabled=false",
        "seed=1,2,3,4",
    ]
    spans = {"basic": JobSpans(), "joblib": JobSpans()}
    basic_dir, joblib_dir = work / "heavy-basic", work / "heavy-joblib"
    basic = command(CLI, "-m", *heavy, f"hydra.sweep.dir={basic_dir}", cwd=work)
    joblib = command(
        CLI,
        "-m",
        *heavy,
        "hydra/launcher=joblib",
        f"hydra.launcher.n_jobs={workers}",
        f"hydra.sweep.dir={joblib_dir}",
        cwd=work,
    )
    times = side_by_side(
        {
            "basic": spans["basic"].timed(basic, basic_dir),
            "joblib": spans["joblib"].timed(joblib, joblib_dir),
        },
        cfg.sweep_repeats,
    )
    median = medians(times)
    ideal = median["basic"] / workers

    def med(name: str, field_name: str) -> Seconds:
        return statistics.median(getattr(spans[name], field_name))

    overlap = med("joblib", "overlap")
    return Row(
        GROUP,
        f"4 compute-heavy jobs (digits w1024 b64, {cfg.heavy_epochs} epochs): speed-up",
        f"joblib n_jobs={workers} vs basic launcher",
        ratios(times, "basic", "joblib"),
        ">= 1.7",
        median,
        note=(
            f"{os.cpu_count()} cores; a job's time runs from its .hydra/config.yaml to its "
            "last metrics.csv write"
        ),
        why=(
            f"split perfectly over {workers} workers, the basic launcher's "
            f"{human(median['basic'])} would take {human(ideal)}; the joblib sweep took "
            f"{human(median['joblib'])}. Its jobs ran {overlap:.2f} at a time on average. "
            f"Its fastest job took {human(med('joblib', 'fastest'))} against "
            f"{human(med('basic', 'fastest'))} for the basic launcher's, one at a time: two "
            f"at once on {os.cpu_count()} cores ran "
            f"{med('joblib', 'fastest') / med('basic', 'fastest'):.2f}x as long each. Its "
            f"slowest took {human(med('joblib', 'slowest'))} (the basic launcher's "
            f"{human(med('basic', 'slowest'))}): each worker's first job imports torch and "
            "sets up, which the basic launcher's one process does once. Its first job started "
            f"{human(med('joblib', 'first'))} after launch, against "
            f"{human(med('basic', 'first'))} for the basic launcher."
        ),
    )
