"""Group `loop`: looplab's epoch against the bare hand-written loop on the same problem.

The bookkeeping the bare loop skips is also timed apart in this run, piece by piece, so that
a row that misses says what the difference is made of in this run's own numbers.
"""

from __future__ import annotations

import statistics
import time
import timeit
from pathlib import Path

from bench.harness import Row, Seconds, Settings, amount, human, medians, ratios, side_by_side
from bench.problems import Problem, bare_epochs, best_epochs, framework_epochs, problem, scratch
from looplab.core.loop import EpochResult
from looplab.core.model import check_shapes
from looplab.run.reporting import ConsoleReport, MetricsCsv


def _per_call(fn: object, number: int = 2000) -> Seconds:
    """The fastest of a few timings of `fn()`, per call."""
    return min(timeit.repeat(fn, number=number, repeat=5)) / number  # type: ignore[arg-type]


def bookkeeping(p: Problem) -> dict[str, Seconds]:
    """What looplab does each epoch beyond the bare loop's tensor ops, timed piece by piece."""
    ready = p.prepare()
    task = p.shape[0]
    d = ready.data
    with_grad = ready.model(d.x_train).detach()
    val = ready.model(d.x_val).detach()
    metrics = {"train_loss": 0.5, "val_loss": 0.5, ready.quality_name: 0.9}
    result = EpochResult(1, metrics, int(time.time() * 1000))
    csv = MetricsCsv(scratch() / "bookkeeping.csv", ["train_loss", "val_loss", ready.quality_name])
    console = ConsoleReport(10**9, "full", 0)
    history: list = []

    def guard() -> None:
        check_shapes(with_grad, d.y_train, task)
        check_shapes(val, d.y_val, task)
        check_shapes(val, d.y_val, task)

    def history_and_console() -> None:
        history.append(result)
        console(result)

    parts = {
        "csv": _per_call(lambda: csv(result)),
        "history and console": _per_call(history_and_console),
        "guard": _per_call(guard),
        "result": _per_call(lambda: EpochResult(1, dict(metrics), int(time.time() * 1000))),
    }
    csv.close()
    return parts


def differences(times: dict[str, list[Seconds]]) -> dict[str, Seconds]:
    """Medians of the per-repeat differences: looplab over the bare loop, and its two parts."""

    def median_of(top: str, bottom: str) -> Seconds:
        return statistics.median(a - b for a, b in zip(times[top], times[bottom], strict=True))

    return {
        "all": median_of("looplab", "bare"),
        "callbacks": median_of("looplab", "no callbacks"),
        "loop": median_of("no callbacks", "bare"),
    }


def loop_why(
    bare: Seconds,
    diff: dict[str, Seconds],
    n_batches: int,
    parts: dict[str, Seconds],
    goal: float,
) -> str:
    """Why looplab's epoch misses `goal` times the bare loop's, in this run's numbers.

    `diff` is `differences` of the interleaved repeats (looplab, the same loop without
    run.py's callbacks, the bare loop); `parts` the pieces `bookkeeping` timed apart.
    """
    text = (
        f"looplab's epoch took {human(diff['all'])} more than the bare loop's {human(bare)} "
        f"(median of the repeats' differences), where the goal allows "
        f"{human(bare * (goal - 1))}; both run the same tensor ops. The callbacks run.py gives "
        f"the loop account for {amount(diff['callbacks'])} (against the same loop without "
        f"them): timed apart, a metrics.csv row takes {human(parts['csv'])}, the history and "
        f"the silent console {human(parts['history and console'])}. The loop's own Python "
        f"around the tensor ops accounts for {amount(diff['loop'])}: the calls through the "
        "model class, the checked loss, the updater and the batch iterator, of which the "
        f"shape guard on two losses and the accuracy ({human(parts['guard'])}) and the "
        f"epoch's result ({human(parts['result'])}) were timed apart"
    )
    if n_batches > 1 and diff["loop"] > 0:
        text += (
            f". On {n_batches} mini-batches an epoch that is {human(diff['loop'] / n_batches)} "
            "a batch: each batch the loop gathers its rows by index where the bare loop slices "
            "one shuffled copy, and calls the loss's shape guard and the updater's step and "
            "zero_grad"
        )
    return text + "."


def loop_row(
    group: str, figure: str, p: Problem, cfg: Settings, note: str, goal: str = "<= 1.05"
) -> Row:
    """looplab's epoch against the bare loop's, with the loop without callbacks beside them."""
    epochs = best_epochs(lambda e: bare_epochs(p, e), cfg.budget)
    times = side_by_side(
        {
            "looplab": lambda: framework_epochs(p, epochs),
            "bare": lambda: bare_epochs(p, epochs),
            "no callbacks": lambda: framework_epochs(p, epochs, callbacks=False),
        },
        cfg.repeats,
    )
    median = medians(times)
    return Row(
        group,
        figure,
        "bare hand-written loop",
        ratios(times, "looplab", "bare"),
        goal,
        median,
        note=f"{epochs} epochs a repeat, {note}; 'no callbacks' is looplab's loop without them",
        why=loop_why(
            median["bare"], differences(times), p.n_batches, bookkeeping(p), float(goal.split()[1])
        ),
    )


def rows(cfg: Settings, work: Path) -> list[Row]:
    cases = [
        ("breast_cancer full batch, width 0", problem("breast_cancer")),
        (
            "digits width 256, batch 64",
            problem("digits", "dataset=digits", "model.width=256", "train.batch_size=64"),
        ),
    ]
    return [
        loop_row(
            "loop overhead",
            f"looplab epoch, {label}",
            p,
            cfg,
            "print_every=0, metrics.csv on, set up by looplab.run.prepare",
        )
        for label, p in cases
    ]
