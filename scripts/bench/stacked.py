"""Group `stacked`: what `hydra/launcher=stacked` saves a sweep of small models (issue #21's
goals), against looplab's launcher, side by side, tracked to SQLite.

- A job beyond the first: (a 64-job sweep's wall time - a 1-job sweep's) / 63, for the
  tutorial's `experiment=seed` over 8 learning rates x 8 seeds; goal <= 0.25.
- A whole 64-job sweep of `dataset=digits model.width=64 train.batch_size=64
  train.epochs=100` (8 learning rates x 8 seeds), from the command to its exit; goal >= 3.
- On a GPU: not run here (no GPU was lent to the session that built it).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.harness import CLI, Row, Settings, command, medians, ratios, side_by_side

GROUP = "stacked"
LRS = [f"{0.01 * (i + 1):.2f}" for i in range(8)]
SEEDS = [str(i + 1) for i in range(8)]
LAUNCHERS = {"looplab": "hydra/launcher=looplab", "stacked": "hydra/launcher=stacked"}


def sweep(work: Path, launcher: str, lrs: list[str], seeds: list[str], *args: str):
    """A contender: the sweep, in a fresh folder and store each time it runs."""

    def run() -> float:
        folder = Path(tempfile.mkdtemp(prefix=f"{launcher}-{len(lrs) * len(seeds)}-", dir=work))
        return command(
            CLI, "-m", LAUNCHERS[launcher], "train.lr=" + ",".join(lrs),
            "seed=" + ",".join(seeds), "train.print_every=0", *args, cwd=folder,
        )()  # fmt: skip

    return run


def per_job_row(cfg: Settings, work: Path) -> Row:
    def per_job(launcher: str):
        whole = sweep(work, launcher, LRS, SEEDS, "experiment=seed")
        one = sweep(work, launcher, LRS[:1], SEEDS[:1], "experiment=seed")
        return lambda: (whole() - one()) / 63

    times = side_by_side({name: per_job(name) for name in LAUNCHERS}, max(1, cfg.sweep_repeats))
    median = medians(times)
    return Row(
        GROUP,
        "a job beyond the first of a 64-job sweep, experiment=seed (8 lr x 8 seeds), tracked",
        "the same on looplab's launcher",
        ratios(times, "stacked", "looplab"),
        "<= 0.25",
        median,
        note="(64-job sweep - 1-job sweep) / 63, each sweep in a fresh folder and store",
        why=(
            f"a stacked job still costs {median['stacked'] * 1000:.1f} ms against "
            f"{median['looplab'] * 1000:.1f} ms: stacking removes the training's share, but "
            "each job still runs through Hydra's run_job (its config, .hydra/ files and log) "
            "and hands its run to the MLflow writer, which the tutorial's 25 epochs of "
            "arithmetic were a small part of"
        ),
    )


def whole_row(cfg: Settings, work: Path) -> Row:
    digits = ("dataset=digits", "model.width=64", "train.batch_size=64", "train.epochs=100")
    if cfg.repeats == 1:  # --quick: a smoke run
        digits = ("dataset=digits", "model.width=64", "train.batch_size=64", "train.epochs=5")
    times = side_by_side({name: sweep(work, name, LRS, SEEDS, *digits) for name in LAUNCHERS}, 1)
    median = medians(times)
    return Row(
        GROUP,
        f"a 64-job sweep, {' '.join(digits)} (8 lr x 8 seeds), tracked: speed-up",
        "looplab's launcher",
        ratios(times, "looplab", "stacked"),
        ">= 3",
        median,
        note="from the command to its exit, each sweep in a fresh folder and store",
        why=why_whole(median),
    )


def why_whole(median: dict[str, float]) -> str:
    return (
        f"the stacked sweep took {median['stacked']:.1f} s against {median['looplab']:.1f} s; "
        "it is two halves, not timed apart in this row: the stack's training (vmap'd forward "
        "and backward, then each job's own update, 64 optimiser steps a batch in Python) and "
        "the 64 jobs' own records (each job's run_job, its MLflow run, 100 epochs replayed "
        "to its callbacks), which stay as costly as on looplab's launcher"
    )


def rows(cfg: Settings, work: Path) -> list[Row]:
    return [
        per_job_row(cfg, work),
        whole_row(cfg, work),
        Row.skip(
            GROUP,
            "256 tutorial-sized jobs on a GPU, stacked",
            "the same jobs one after another on that GPU",
            "no GPU was lent to the session that built the stacked launcher: this row has not run",
        ),
    ]
