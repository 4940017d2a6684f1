"""Epoch callbacks for people and files: the console, and `metrics.csv` in the run folder.

Both are cheap per epoch (they only buffer or throttle), so they never slow the loop.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from looplab.loop import EpochResult

# How often a progress bar's text or a CSV buffer is refreshed, at most.
REFRESH_SECONDS = 0.5


class ConsoleReport:
    """A progress bar with the current loss on a terminal; plain lines in a pipe.

    `tutorial` style prints the tutorial's own line, `Epoch: N, Loss: X`, every epoch.
    """

    def __init__(
        self, epochs: int, style: str = "full", every: int = 1, stream: TextIO | None = None
    ) -> None:
        self.epochs, self.style, self.every = epochs, style, every
        self.stream = stream or sys.stdout
        use_bar = style == "full" and every > 0 and self.stream.isatty()
        self.bar = tqdm(total=epochs, unit="epoch", file=self.stream) if use_bar else None
        self.last_refresh = 0.0

    def __call__(self, result: EpochResult) -> None:
        if self.bar is not None:
            self.bar.update(1)
            now = time.monotonic()
            if now - self.last_refresh >= REFRESH_SECONDS or result.epoch == self.epochs:
                self.last_refresh = now
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in result.metrics.items()})
        elif self.every and result.epoch % self.every == 0:
            self.stream.write(self.line(result) + "\n")

    def line(self, result: EpochResult) -> str:
        loss = result.metrics["train_loss"]
        if self.style == "tutorial":
            return f"Epoch: {result.epoch}, Loss: {loss}"
        rest = ", ".join(f"{k}: {v:.6g}" for k, v in result.metrics.items() if k != "train_loss")
        return f"Epoch: {result.epoch}/{self.epochs}, Loss: {loss:.6g}, {rest}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
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
