"""Epoch callbacks for people and files: the console, and `metrics.csv` in the run folder.

Both are cheap per epoch (they only buffer or throttle), so they never slow the loop.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from looplab.core.loop import EpochResult

# How often a progress bar's text, the console's lines or a CSV buffer are written, at most.
REFRESH_SECONDS = 0.5
CONSOLE_SECONDS = 0.25


class ConsoleReport:
    """A progress bar with the current loss on a terminal; plain lines in a pipe.

    `tutorial` style prints the tutorial's own line, `Epoch: N, Loss: X`, every epoch.
    Plain lines are gathered and written a few times a second (and on close), one write for
    many lines: with PYTHONUNBUFFERED=1, as in most containers, each write is a system call
    that would otherwise cost a tiny epoch a third of its time. `prefix` starts every line
    (a sweep's job number).
    """

    def __init__(
        self,
        epochs: int,
        style: str = "full",
        every: int = 1,
        stream: TextIO | None = None,
        prefix: str = "",
    ) -> None:
        self.epochs, self.style, self.every, self.prefix = epochs, style, every, prefix
        self.stream = stream or sys.stdout
        use_bar = style == "full" and every > 0 and self.stream.isatty()
        self.bar = tqdm(total=epochs, unit="epoch", file=self.stream) if use_bar else None
        self.last_refresh = 0.0
        self.lines: list[str] = []
        self.last_write = time.monotonic()

    def __call__(self, result: EpochResult) -> None:
        if self.bar is not None:
            self.bar.update(1)
            now = time.monotonic()
            if now - self.last_refresh >= REFRESH_SECONDS or result.epoch == self.epochs:
                self.last_refresh = now
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in result.metrics.items()})
        elif self.every and result.epoch % self.every == 0:
            self.lines.append(self.line(result))
            now = time.monotonic()
            if now - self.last_write >= CONSOLE_SECONDS:
                self.write_lines(now)

    def line(self, result: EpochResult) -> str:
        loss = result.metrics["train_loss"]
        if self.style == "tutorial":
            return f"{self.prefix}Epoch: {result.epoch}, Loss: {loss}"
        rest = ", ".join(f"{k}: {v:.6g}" for k, v in result.metrics.items() if k != "train_loss")
        return f"{self.prefix}Epoch: {result.epoch}/{self.epochs}, Loss: {loss:.6g}, {rest}"

    def write_lines(self, now: float | None = None) -> None:
        """Write the gathered lines at once."""
        if self.lines:
            self.stream.write("\n".join(self.lines) + "\n")
            self.lines.clear()
        self.last_write = time.monotonic() if now is None else now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.write_lines()
        self.stream.flush()


class MetricsCsv:
    """Every epoch's metrics in `metrics.csv`, flushed twice a second and on close.

    This copy lives in the run folder, so the record survives even when the tracking store
    does not.
    """

    def __init__(self, path: Path, metric_names: list[str]) -> None:
        self.path = path
        self.metric_names = metric_names
        self.file = path.open("w", encoding="utf-8")
        self.file.write(",".join(["epoch", "timestamp_ms", *metric_names]) + "\n")
        self.last_flush = time.monotonic()

    def __call__(self, result: EpochResult) -> None:
        values = ",".join([repr(result.metrics[name]) for name in self.metric_names])
        self.file.write(f"{result.epoch},{result.timestamp_ms},{values}\n")
        now = time.monotonic()
        if now - self.last_flush >= REFRESH_SECONDS:
            self.last_flush = now
            self.file.flush()

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()
