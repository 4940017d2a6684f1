"""What every group shares: the table's row, side-by-side timing, settings, and rendering.

Kept free of torch and looplab so that rendering a saved run imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
BIN = Path(sys.executable).parent
CLI = str(BIN / "looplab-train")
Seconds = float
MiB = 2**20


@dataclass
class Settings:
    """How long each group measures; `QUICK` is the smoke run's."""

    repeats: int = 5
    budget: Seconds = 0.6  # seconds a contender runs in each in-process repeat
    naive_epochs: int = 300
    peer_repeats: int = 3
    startup_repeats: int = 2
    sweep_jobs: int = 16
    sweep_repeats: int = 2
    per_job_repeats: int = 2
    heavy_epochs: int = 250
    scale_rows: tuple[int, ...] = (1_000, 10_000, 100_000, 1_000_000)
    width_rows: int = 20_000
    scale_widths: tuple[int, ...] = (0, 64, 256, 1024, 4096)


QUICK = Settings(
    repeats=1,
    budget=0.2,
    naive_epochs=100,
    peer_repeats=1,
    startup_repeats=1,
    sweep_jobs=4,
    sweep_repeats=1,
    per_job_repeats=1,
    heavy_epochs=20,
    scale_rows=(1_000, 10_000, 100_000),
    width_rows=5_000,
    scale_widths=(0, 64, 1024),
)


@dataclass
class Row:
    """One line of the table: a median ratio with its spread, and whether it meets its goal."""

    group: str
    figure: str
    compared_with: str
    ratios: list[float]
    goal: str = ""  # "<= 1.05", ">= 2", or "" for reference rows
    times: dict[str, float] = field(default_factory=dict)  # medians, information only
    unit: str = "s"
    note: str = ""
    skipped: bool = False
    why: str = ""  # why this row may miss its goal, from this run's numbers; shown when it does

    @classmethod
    def from_json(cls, saved: dict) -> Row:
        """A row as `benchmarks.json` stores it (its derived median and verdict dropped)."""
        return cls(**{k: v for k, v in saved.items() if k in cls.__dataclass_fields__})

    @classmethod
    def skip(cls, group: str, figure: str, compared_with: str, reason: str) -> Row:
        return cls(group, figure, compared_with, [], skipped=True, note=f"skipped: {reason}")

    @property
    def median(self) -> float:
        return statistics.median(self.ratios) if self.ratios else math.nan

    @property
    def verdict(self) -> str:
        if self.skipped:
            return "skipped"
        if not self.goal:
            return "reference"
        op, bound = self.goal.split()
        ok = self.median <= float(bound) if op == "<=" else self.median >= float(bound)
        return "holds" if ok else f"MISSES by {abs(self.median / float(bound) - 1):.0%}"

    def cells(self) -> list[str]:
        if self.skipped:
            spread = "-"
        else:
            spread = f"{self.median:.3g} [{min(self.ratios):.3g}-{max(self.ratios):.3g}]"
        times = ", ".join(f"{k} {human(v, self.unit)}" for k, v in self.times.items())
        return [self.figure, self.compared_with, spread, self.goal or "-", self.verdict, times]


def human(value: float, unit: str = "s") -> str:
    """A duration (or another unit's amount) as a reader takes it in."""
    if unit == "s":
        if abs(value) < 1e-3:
            return f"{value * 1e6:.1f} µs" if abs(value) < 1e-5 else f"{value * 1e6:.0f} µs"
        return f"{value * 1e3:.1f} ms" if abs(value) < 1 else f"{value:.2f} s"
    return f"{value:.0f} {unit}"


def amount(value: float, unit: str = "s") -> str:
    """A measured difference; one that noise made zero or negative is said to be so."""
    return human(value, unit) if value > 0 else f"nothing measurable ({human(value, unit)})"


def side_by_side(contenders: dict[str, Callable[[], Seconds]], repeats: int) -> dict[str, list]:
    """Run the contenders in turn, reversing the order every other repeat."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            times[name].append(contenders[name]())
    return times


def ratios(times: dict[str, list[float]], top: str, bottom: str) -> list[float]:
    return [a / b for a, b in zip(times[top], times[bottom], strict=True)]


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in times.items()}


def command(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Callable[[], Seconds]:
    """A contender that runs a command to the end and returns its wall time."""

    def run() -> Seconds:
        start = time.perf_counter()
        done = subprocess.run(
            args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        elapsed = time.perf_counter() - start
        if done.returncode:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
        return elapsed

    return run


def bench_child(*args: str) -> list[str]:
    """The command line of this benchmark run again as a child (`python -m bench ARGS`)."""
    return [sys.executable, "-m", "bench", *args]


def child_env(**extra: str) -> dict[str, str]:
    """The environment for `bench_child`: `bench` importable whatever the working folder."""
    path = os.pathsep.join(p for p in [str(SCRIPTS), os.environ.get("PYTHONPATH", "")] if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


# --- the table ---------------------------------------------------------------------------


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), {platform.platform()}"
    )


def note_lines(row: Row) -> list[str]:
    """A row's note, and under it why it misses, or where the time goes in a row that holds
    and says so."""
    missed = row.verdict.startswith("MISS")
    if not row.note and not missed and not row.why:
        return []
    lines = [f"- **{row.figure}**" + (f": {row.note}" if row.note else "")]
    if row.why and not missed and not row.skipped:
        lines.append(f"  - **Where the time goes:** {row.why}")
    if missed:
        why = row.why or "not profiled yet; the times column holds the contenders' medians."
        bound = float(row.goal.split()[1])
        if min(row.ratios) <= bound <= max(row.ratios):
            why += (
                f" Some repeats met the goal (ratios {min(row.ratios):.3g} to "
                f"{max(row.ratios):.3g}), so this run cannot tell the miss from the machine's "
                "noise."
            )
        lines.append(f"  - **Why it misses:** {why}")
    return lines


def markdown(rows: list[Row], header: str) -> str:
    lines = [
        header,
        "",
        "| figure | compared with | ratio: median [min-max] | goal | verdict "
        "| times (median, info) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    notes = [line for row in rows for line in note_lines(row)]
    return "\n".join([*lines, "", "Notes:", "", *notes, ""])


def header(invocation: str, date: str, seconds: float, machine_text: str) -> str:
    return (
        f"# looplab benchmarks\n\n`{invocation}` on {date}, {seconds:.0f} s in all.\n\n"
        f"Machine: {machine_text}.\n\n"
        "Every figure is a ratio of contenders run side by side, interleaved, in this run: "
        "the median of the repeats with min and max. Absolute times are for information only. "
        "A row that misses its goal says why, in numbers taken from this same run. The "
        "Lightning rows need the optional `bench` extra (`pip install -e '.[bench]'`), which "
        "`make bench` installs when it is missing. The `cuda` group's rows need a CUDA GPU; "
        "the last ones measured on one are in [benchmarks-cuda.md](benchmarks-cuda.md), made "
        "with `python -m bench --only cuda --out DIR` there, and `python -m bench "
        "--render-from docs/benchmarks-cuda.json` rewrites it."
    )


def render_from(saved: Path, out: Path) -> None:
    """Rewrite benchmarks.md in `out` from a saved benchmarks.json, measuring nothing."""
    payload = json.loads(saved.read_text(encoding="utf-8"))
    rows = [Row.from_json(r) for r in payload["rows"]]
    invocation = payload.get(
        "command", "make bench" + (" ARGS=--quick" if payload["quick"] else "")
    )
    date = payload.get("date", "an unrecorded date")
    text = markdown(rows, header(invocation, date, payload["seconds"], payload["machine"]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.md").write_text(text, encoding="utf-8")
    print(text)
