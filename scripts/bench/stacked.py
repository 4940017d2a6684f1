"""Group `stacked`: what `hydra/launcher=stacked` saves a sweep of small models (issue #21's
goals), against looplab's launcher, side by side, tracked to SQLite.

- A job beyond the first: (a 64-job sweep's wall time - a 1-job sweep's) / 63, for the
  tutorial's `experiment=seed` over 8 learning rates x 8 seeds; goal <= 0.25. The same
  stacked sweep untracked is timed beside them: what a job costs before MLflow.
- A whole 64-job sweep of `dataset=digits model.width=64 train.batch_size=64
  train.epochs=100` (8 learning rates x 8 seeds), from the command to its exit; goal >= 3.
- On a GPU: not run here (no GPU was lent to the session that built it).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from pathlib import Path

from bench.harness import CLI, Row, Settings, medians, ratios, side_by_side

GROUP = "stacked"
LRS = [f"{0.01 * (i + 1):.2f}" for i in range(8)]
SEEDS = [str(i + 1) for i in range(8)]
LAUNCHERS = {"looplab": "hydra/launcher=looplab", "stacked": "hydra/launcher=stacked"}
TRAINED = re.compile(r"^stacked: jobs .* in ([0-9.]+) s", re.MULTILINE)


def sweep(work: Path, launcher: str, lrs: list[str], seeds: list[str], *args: str, said=None):
    """A contender: the sweep, in a fresh folder and store each time it runs; `said` gets
    the seconds the stacked launcher says its stacks took to train."""

    def run() -> float:
        folder = Path(tempfile.mkdtemp(prefix=f"{launcher}-{len(lrs) * len(seeds)}-", dir=work))
        start = time.perf_counter()
        done = subprocess.run(
            [CLI, "-m", LAUNCHERS[launcher], "train.lr=" + ",".join(lrs),
             "seed=" + ",".join(seeds), "train.print_every=0", *args],
            cwd=folder, capture_output=True, text=True,
        )  # fmt: skip
        elapsed = time.perf_counter() - start
        if done.returncode:
            raise RuntimeError(f"the {launcher} sweep failed ({done.returncode}):\n{done.stderr}")
        if said is not None:
            said.extend(float(s) for s in TRAINED.findall(done.stdout))
        return elapsed

    return run


def per_job_row(cfg: Settings, work: Path) -> Row:
    def per_job(launcher: str, *args: str):
        whole = sweep(work, launcher, LRS, SEEDS, "experiment=seed", *args)
        one = sweep(work, launcher, LRS[:1], SEEDS[:1], "experiment=seed", *args)
        return lambda: (whole() - one()) / 63

    contenders = {name: per_job(name) for name in LAUNCHERS}
    contenders["stacked, untracked"] = per_job("stacked", "tracking.enabled=false")
    times = side_by_side(contenders, max(1, cfg.sweep_repeats))
    median = medians(times)
    return Row(
        GROUP,
        "a job beyond the first of a 64-job sweep, experiment=seed (8 lr x 8 seeds), tracked",
        "the same on looplab's launcher",
        ratios(times, "stacked", "looplab"),
        "<= 0.25",
        median,
        note=(
            "(64-job sweep - 1-job sweep) / 63, each sweep in a fresh folder and store; "
            "'stacked, untracked' is the stacked sweep with tracking.enabled=false"
        ),
        why=why_per_job(median),
    )


def why_per_job(median: dict[str, float]) -> str:
    looplab, stacked, floor = (
        median[k] * 1000 for k in ("looplab", "stacked", "stacked, untracked")
    )
    return (
        f"a stacked job still costs {stacked:.1f} ms against {looplab:.1f} ms, where the goal "
        f"allows {looplab / 4:.1f} ms. Untracked, a stacked job costs {floor:.1f} ms "
        f"({floor / looplab:.2f} of a looplab job) with no training left in it: Hydra's "
        "run_job (the job's config copied and checked twice, its three .hydra/ files, its "
        "log) and the job's own files; tracking adds its MLflow run (created, its params, "
        "tags, metrics and files logged, ended) in the writer process on the other of the "
        "two cores. The tutorial's training was a small part of a looplab job"
    )


def whole_row(cfg: Settings, work: Path) -> Row:
    digits = ("dataset=digits", "model.width=64", "train.batch_size=64", "train.epochs=100")
    if cfg.repeats == 1:  # --quick: a smoke run
        digits = ("dataset=digits", "model.width=64", "train.batch_size=64", "train.epochs=5")
    trained: list[float] = []
    contenders = {
        "looplab": sweep(work, "looplab", LRS, SEEDS, *digits),
        "stacked": sweep(work, "stacked", LRS, SEEDS, *digits, said=trained),
    }
    times = side_by_side(contenders, 1)
    median = medians(times)
    return Row(
        GROUP,
        f"a 64-job sweep, {' '.join(digits)} (8 lr x 8 seeds), tracked: speed-up",
        "looplab's launcher",
        ratios(times, "looplab", "stacked"),
        ">= 3",
        median,
        note="from the command to its exit, each sweep in a fresh folder and store",
        why=why_whole(median, trained),
    )


def why_whole(median: dict[str, float], trained: list[float]) -> str:
    stack = f"{trained[0]:.1f} s" if trained else "(not said)"
    return (
        f"the stacked sweep took {median['stacked']:.1f} s against {median['looplab']:.1f} s, "
        f"of which its stack's training (the 64 members' preparation included) took {stack}; "
        "the rest is what both sweeps pay (starting, the store's creation, the summary) and "
        "the 64 jobs' own records (each job's run_job and its MLflow run)"
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
