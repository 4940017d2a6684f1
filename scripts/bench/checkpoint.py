"""Group `checkpoint`: what checkpoints cost a run (issue #19's goal: under 1% of its time).

Two costs, measured apart in this run: what a run pays every step and every epoch for being
resumable (a stop held until the loop is between two steps, the clock read for
`checkpoint.every_s`), side by side with the same loop without; and one checkpoint's write
(the state gathered, `torch.save`, fsync, rename) against the default interval it recurs at.
"""

from __future__ import annotations

import statistics
import time
import timeit
from pathlib import Path

from bench.harness import Row, Seconds, Settings, human, medians, ratios, side_by_side
from bench.problems import Problem, best_epochs, compose, problem, scratch
from looplab.core.checkpoint import Taker
from looplab.core.loop import Progress
from looplab.core.signals import StopsBetweenSteps
from looplab.run.checkpoints import Checkpoints

GROUP = "checkpoint"
DEFAULT_EVERY_S = float(compose().checkpoint.every_s)


def epochs_with(p: Problem, epochs: int, resumable: bool) -> Seconds:
    """Seconds an epoch of `loop.fit`, with (or without) what `execute` adds to make the run
    resumable: `StopsBetweenSteps` around it, `Progress` checked each step, `Checkpoints`
    (the default interval) as an epoch callback."""
    ready = p.prepare()
    history: list = []
    if not resumable:
        start = time.perf_counter()
        ready.fit(epochs, p.cfg.train.batch_size, [history.append])
        return (time.perf_counter() - start) / epochs
    stops = StopsBetweenSteps()
    progress = Progress(stops=stops.check)
    taker = Taker(ready.model, ready.update, ready.generator, progress, "c", "d", history)
    checkpoints = Checkpoints(p.cfg, taker, scratch())
    start = time.perf_counter()
    with stops:
        ready.fit(epochs, p.cfg.train.batch_size, [history.append, checkpoints], progress)
    return (time.perf_counter() - start) / epochs


def pieces(p: Problem) -> dict[str, Seconds]:
    """What being resumable adds, timed piece by piece: per step, per epoch."""
    ready = p.prepare()
    stops = StopsBetweenSteps()
    progress = Progress(stops=stops.check)
    taker = Taker(ready.model, ready.update, ready.generator, progress, "c", "d", [])
    checkpoints = Checkpoints(p.cfg, taker, scratch())
    result = ready.fit(1, p.cfg.train.batch_size)[0]

    def per_call(fn: object, number: int = 5000) -> Seconds:
        return min(timeit.repeat(fn, number=number, repeat=5)) / number  # type: ignore[arg-type]

    def epoch_edges() -> None:
        progress.epoch_done(1)
        progress.begin_epoch(ready.generator)
        checkpoints(result)

    return {"step": per_call(progress.step_done), "epoch": per_call(epoch_edges)}


def write_seconds(p: Problem, repeats: int) -> list[Seconds]:
    """One checkpoint written, whole, `repeats` times (after an epoch, as a run takes it)."""
    ready = p.prepare()
    history: list = []
    progress = Progress()
    ready.fit(1, p.cfg.train.batch_size, [history.append], progress)
    taker = Taker(ready.model, ready.update, ready.generator, progress, "c", "d", history)
    folder: Path = scratch()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        taker.save(folder)
        times.append(time.perf_counter() - start)
    return times


def rows(cfg: Settings, work: Path) -> list[Row]:
    tutorial = problem("breast_cancer b32", "train.batch_size=32", "update=sgd")
    epochs = best_epochs(lambda e: epochs_with(tutorial, e, False), cfg.budget)
    times = side_by_side(
        {
            "resumable": lambda: epochs_with(tutorial, epochs, True),
            "not resumable": lambda: epochs_with(tutorial, epochs, False),
        },
        3 * cfg.repeats,  # a 1% goal: more repeats than most rows, for a steadier median
    )
    median = medians(times)
    extra = pieces(tutorial)
    added = tutorial.n_batches * extra["step"] + extra["epoch"]
    why = (
        f"being resumable adds {human(extra['step'])} a step and {human(extra['epoch'])} an "
        f"epoch (timed apart in this run): {human(added)} of a "
        f"{human(median['not resumable'])} epoch, {100 * added / median['not resumable']:.2f}%; "
        "the rest of the difference is this machine's noise (see the min-max)"
    )
    out = [
        Row(
            GROUP,
            "resumable epoch (stops between steps, checkpoint.every_s clock)",
            "the same loop without",
            ratios(times, "resumable", "not resumable"),
            "<= 1.01",
            median,
            note=f"breast_cancer, update=sgd, train.batch_size=32, {epochs} epochs, "
            f"{tutorial.n_batches} steps an epoch; no checkpoint falls due in a repeat",
            why=why,
        )
    ]
    for label, overrides in (
        ("the tutorial's network", ()),
        ("1.1M parameters (2 x 1024 hidden, SGD momentum)", ("model.hidden=[1024,1024]",)),
    ):
        p = problem(label, "dataset=digits", "update=sgd", "train.momentum=0.9", *overrides)
        writes = write_seconds(p, max(5, cfg.repeats))
        write = statistics.median(writes)
        out.append(
            Row(
                GROUP,
                f"a checkpoint's write, {label}",
                f"the default interval (checkpoint.every_s={DEFAULT_EVERY_S:g})",
                [w / DEFAULT_EVERY_S for w in writes],
                "<= 0.01",
                {"write": write},
                note=f"digits; one write {human(write)} (state, torch.save, fsync, rename): "
                f"{100 * write / DEFAULT_EVERY_S:.3f}% of a run that checkpoints every "
                f"{DEFAULT_EVERY_S:g} s",
            )
        )
    return out
