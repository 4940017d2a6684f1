"""Group `minibatch`: train.batch_size=32 against the DataLoader loop and bare slicing.

The tutorial series moves from full batches to `DataLoader(TensorDataset)`; looplab
shuffles and slices on the device instead. Both rows share one interleaved measurement.
"""

from __future__ import annotations

from pathlib import Path

from bench.harness import Row, Settings, human, medians, ratios, side_by_side
from bench.loop import bookkeeping, differences, loop_why
from bench.problems import bare_epochs, best_epochs, framework_epochs, problem

GROUP = "mini-batches"


def rows(cfg: Settings, work: Path) -> list[Row]:
    p = problem("breast_cancer b32", "model.loss=tutorial", "train.batch_size=32")
    epochs = best_epochs(lambda e: bare_epochs(p, e), cfg.budget)
    times = side_by_side(
        {
            "looplab": lambda: framework_epochs(p, epochs),
            "bare slicing": lambda: bare_epochs(p, epochs),
            "DataLoader": lambda: bare_epochs(p, epochs, loader=True),
            "no callbacks": lambda: framework_epochs(p, epochs, callbacks=False),
        },
        cfg.repeats,
    )
    median = medians(times)
    slicing = {**times, "bare": times["bare slicing"]}
    looplab, bare, loader = median["looplab"], median["bare slicing"], median["DataLoader"]
    n = p.n_batches
    note = (
        f"breast_cancer, tutorial loss, validation included, {epochs} epochs, {n} batches; "
        "'no callbacks' is looplab's loop without run.py's callbacks"
    )
    return [
        Row(
            GROUP,
            "train.batch_size=32 epoch: speed-up",
            "DataLoader(TensorDataset) loop",
            ratios(times, "DataLoader", "looplab"),
            ">= 2",
            median,
            note=note,
            why=speedup_why(looplab, bare, loader, n),
        ),
        Row(
            GROUP,
            "train.batch_size=32 epoch",
            "bare on-device slicing loop",
            ratios(times, "looplab", "bare slicing"),
            "<= 1.1",
            median,
            note=note,
            why=loop_why(bare, differences(slicing), n, bookkeeping(p), 1.1),
        ),
    ]


def speedup_why(looplab: float, bare: float, loader: float, n: int) -> str:
    """Why the speed-up over DataLoader misses 2, from the three loops' epochs."""
    per_batch = (
        f"DataLoader adds {human((loader - bare) / n)} a batch to the bare loop's own "
        f"{human(bare / n)} of forward, backward and update"
    )
    if loader / bare < 2:
        return (
            "the bare on-device slicing loop, the fastest this epoch can be written, is itself "
            f"only {loader / bare:.2f}x faster than the DataLoader loop here: {per_batch}. "
            f"looplab's epoch is {looplab / bare:.3g} of that bare loop's (the row below)."
        )
    return (
        f"the bare on-device slicing loop is {loader / bare:.2f}x faster than the DataLoader "
        f"loop here ({per_batch}), so the goal is within reach; looplab's epoch is "
        f"{looplab / bare:.3g} of the bare loop's (the row below), which brings the speed-up "
        f"down to {loader / looplab:.2f}."
    )
