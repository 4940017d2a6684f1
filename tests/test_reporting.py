"""What the console and metrics.csv show, and what showing it costs."""

from __future__ import annotations

import io

from looplab.core.loop import EpochResult
from looplab.run.reporting import ConsoleReport


class CountingStream(io.StringIO):
    """A pipe stand-in that counts writes (with PYTHONUNBUFFERED=1 each is a system call)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def isatty(self) -> bool:
        return False


def epochs(count: int) -> list[EpochResult]:
    metrics = {"train_loss": 0.5, "val_loss": 0.4, "val_accuracy": 0.9}
    return [EpochResult(epoch, metrics, 0) for epoch in range(1, count + 1)]


def test_plain_lines_are_gathered_into_few_writes_and_none_is_lost() -> None:
    """Fault: one write per epoch line in a pipe (a system call each under PYTHONUNBUFFERED),
    or lines still buffered when the run ends."""
    stream = CountingStream()
    console = ConsoleReport(1000, stream=stream)
    for result in epochs(1000):
        console(result)
    console.close()
    lines = stream.getvalue().splitlines()
    assert [line.split("/")[0] for line in lines] == [f"Epoch: {n}" for n in range(1, 1001)]
    assert stream.writes <= 3, stream.writes


def test_print_every_n_prints_every_nth_epoch_and_zero_prints_none() -> None:
    """Fault: train.print_every ignored (a line every epoch, or none)."""
    for every, expected in [(1, list(range(1, 11))), (3, [3, 6, 9]), (0, [])]:
        stream = CountingStream()
        console = ConsoleReport(10, every=every, stream=stream)
        for result in epochs(10):
            console(result)
        console.close()
        shown = [int(line.split(":")[1].split("/")[0]) for line in stream.getvalue().splitlines()]
        assert shown == expected, every


def test_tutorial_style_prints_the_tutorials_line_and_a_prefix_starts_each_line() -> None:
    """Fault: train.print_style ignored, or a sweep job's lines not told apart."""
    stream = CountingStream()
    console = ConsoleReport(2, style="tutorial", stream=stream, prefix="[job 3] ")
    for result in epochs(2):
        console(result)
    console.close()
    assert stream.getvalue().splitlines() == [
        "[job 3] Epoch: 1, Loss: 0.5",
        "[job 3] Epoch: 2, Loss: 0.5",
    ]
