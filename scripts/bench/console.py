"""Group `console`: the default run's one line an epoch, as most containers run it, against none.

The epochs run in a child process started with PYTHONUNBUFFERED=1 whose stdout is a pipe
drained by this process, so each write is the system call a container's log pipe sees. Both
contenders run in that child, interleaved, with start-up outside the clock: the ratio is
the console's cost per epoch and nothing else.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import timeit
from pathlib import Path

from bench.harness import (
    Row,
    Settings,
    amount,
    bench_child,
    child_env,
    human,
    medians,
    ratios,
    side_by_side,
)

GROUP = "console"


def rows(cfg: Settings, work: Path) -> list[Row]:
    out = work / "console.json"
    child = subprocess.Popen(
        bench_child("--console-child", str(out), str(cfg.budget), str(cfg.repeats)),
        stdout=subprocess.PIPE,
        env=child_env(PYTHONUNBUFFERED="1"),
    )
    assert child.stdout is not None
    read = 0
    while chunk := os.read(child.stdout.fileno(), 1 << 16):  # the reader at the pipe's end
        read += len(chunk)
    if child.wait():
        raise RuntimeError(f"the console child failed with exit code {child.returncode}")
    found = json.loads(out.read_text(encoding="utf-8"))
    times, epochs = found["times"], found["epochs"]
    median = medians(times)
    extra = median["printing"] - median["silent"]
    writes, line = found["writes"], found["line_seconds"]
    note = (
        "the CLI's default config (breast_cancer, one neuron, print_every=1, style full), "
        "set up by looplab.run.prepare with run.py's callbacks, tracking off in both, in a "
        "child Python process started with PYTHONUNBUFFERED=1 whose stdout is a pipe that "
        f"this process drains ({read} bytes read); {epochs} epochs a repeat instead of the "
        "default 100, so that the ratio is the steady cost per epoch: start-up is outside "
        "the clock, the console's last write inside it"
    )
    why = (
        f"printing cost {human(extra)} an epoch over the silent run's {human(median['silent'])}"
        f". Formatting one line takes {human(line)} (timed apart in this run); the lines of "
        f"a repeat went out in {writes} write(s) of about {epochs // max(writes, 1)} lines, one "
        "system call each under PYTHONUNBUFFERED=1; the rest, "
        f"{amount(extra - line)} an epoch, is the buffering and those writes."
    )
    return [
        Row(
            GROUP,
            "default run, one console line an epoch, PYTHONUNBUFFERED=1, stdout a pipe",
            "the same run with train.print_every=0",
            ratios(times, "printing", "silent"),
            "<= 1.05",
            median,
            note=note,
            why=why,
        )
    ]


def child_main(out: Path, budget: float, repeats: int) -> None:
    """In the child: time the default run's epochs printing to stdout, and silent."""
    from bench.problems import Problem, best_epochs, compose, framework_epochs
    from looplab.core.loop import EpochResult
    from looplab.run.reporting import ConsoleReport

    assert os.environ.get("PYTHONUNBUFFERED") == "1" and not sys.stdout.isatty()
    p = Problem("default run", compose())  # the CLI's defaults, tracking off
    writes: list[int] = []

    class CountedConsole(ConsoleReport):
        """The CLI's console, counting its writes (one Python call more a write)."""

        def write_lines(self, now: float | None = None) -> None:
            if self.lines:
                writes[-1] += 1
            super().write_lines(now)

    def printing(epochs: int) -> float:
        writes.append(0)
        style, every = p.cfg.train.print_style, p.cfg.train.print_every
        return framework_epochs(p, epochs, console=CountedConsole(epochs, style, every))

    def silent(epochs: int) -> float:
        return framework_epochs(p, epochs)

    epochs = best_epochs(silent, budget)
    printing(epochs)  # warm-up of the printing path too
    writes.clear()
    times = side_by_side(
        {"printing": lambda: printing(epochs), "silent": lambda: silent(epochs)}, repeats
    )
    sample = EpochResult(1, {"train_loss": 0.5, "val_loss": 0.5, "val_accuracy": 0.9}, 0)
    console = ConsoleReport(epochs, p.cfg.train.print_style, 1)
    number = 20000
    line = min(timeit.repeat(lambda: console.line(sample), number=number, repeat=5)) / number
    sys.stdout.flush()
    found = {
        "times": times,
        "epochs": epochs,
        "writes": sorted(writes)[len(writes) // 2],
        "line_seconds": line,
    }
    out.write_text(json.dumps(found), encoding="utf-8")
