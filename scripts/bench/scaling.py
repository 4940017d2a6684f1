"""Group `scaling`: epoch time against rows and width, and peak memory against the data's size.

Each point runs in a fresh child process (`python -m bench --point ...`), so its peak memory
is its own. A size step is judged against the bare loop's bend over the same step, which
the child also measures: if the bare loop bends the same way, the machine bends.
"""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
from pathlib import Path

from bench.harness import MiB, Row, Settings, bench_child, child_env, human

GROUP = "scaling"
WIDTH, BATCH = 64, 1024


def scaling_point(rows: int, width: int, epochs: int) -> dict[str, float]:
    """Epoch time and memory of one synthetic problem (run in a child process)."""
    from bench.problems import bare_epochs, compose, framework_epochs, synthetic

    compose()  # Hydra's first composition, and every import, before the base is read
    base_rss = _reset_peak()
    p = synthetic(rows, width, BATCH)
    data_bytes = sum(t.numel() * t.element_size() for t in vars(p.synthetic).values())
    framework_epochs(p, 1)  # warm-up
    looplab = [framework_epochs(p, epochs)]
    peak = _peak()  # before the bare loop runs: its shuffled copy would count against looplab
    bare = [bare_epochs(p, epochs), bare_epochs(p, epochs)]
    looplab.append(framework_epochs(p, epochs))  # A B B A: each side's best of two
    return {
        "epoch_s": min(looplab),
        "bare_s": min(bare),
        "peak_extra": peak - base_rss,
        "data_bytes": data_bytes,
        "val_rows": p.synthetic.x_val.shape[0],
        "bytes_per_float": p.synthetic.x_val.element_size(),
    }


def _status(field: str) -> int | None:
    """A memory figure of this process from /proc/self/status, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def _reset_peak() -> int:
    """Start the peak (VmHWM) afresh where Linux allows it; return the current RSS."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    return _status("VmRSS") or 0


def _peak() -> int:
    hwm = _status("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_point(rows: int, width: int, epochs: int) -> dict[str, float]:
    out = subprocess.run(
        bench_child("--point", str(rows), str(width), str(epochs)),
        check=True,
        capture_output=True,
        text=True,
        env=child_env(),
    )
    return json.loads(out.stdout.splitlines()[-1])


def rows(cfg: Settings, work: Path) -> list[Row]:
    result = []
    by_rows = {n: measure_point(n, WIDTH, 3) for n in cfg.scale_rows}
    by_width = {w: measure_point(cfg.width_rows, w, 2) for w in cfg.scale_widths}
    # Linear: time per row (per row x width) at the largest size over the size before it.
    for label, points, unit in [
        (
            f"epoch time vs rows {min(by_rows)}..{max(by_rows)} (width {WIDTH}, batch {BATCH})",
            by_rows,
            "row",
        ),
        (
            f"epoch time vs width {min(by_width)}..{max(by_width)} ({cfg.width_rows} rows)",
            by_width,
            "unit",
        ),
    ]:
        sizes = sorted(points)
        cost = [points[s]["epoch_s"] / max(s, 1) for s in sizes]
        bare = [points[s]["bare_s"] / max(s, 1) for s in sizes]
        bend, bare_bend = cost[-1] / cost[-2], bare[-1] / bare[-2]
        before, last = (points[s]["epoch_s"] / points[s]["bare_s"] for s in sizes[-2:])
        if bare_bend >= bend / 1.1:
            why = (
                f"the bare hand-written loop bends as much over the same step ({bare_bend:.2f}),"
                f" and looplab's epoch is {last:.2f} of the bare loop's there ({before:.2f} at "
                "the size before): the larger sizes outgrow the CPU's caches, so each unit of "
                "work costs more memory traffic, with or without looplab"
            )
        else:
            why = (
                f"the bare hand-written loop bends less over the same step ({bare_bend:.2f}): "
                f"looplab's epoch is {before:.2f} of the bare loop's at the size before and "
                f"{last:.2f} at this size, so part of the bend is looplab's own"
            )
        result.append(
            Row(
                GROUP,
                label,
                f"time per {unit} at the size before",
                [bend],
                "<= 1.2",
                {str(s): points[s]["epoch_s"] for s in sizes},
                note="linear = 1; below 1, fixed per-epoch costs still show",
                why=why,
            )
        )
    base = by_rows[min(by_rows)]["peak_extra"]
    biggest = by_rows[max(by_rows)]
    extra, data = biggest["peak_extra"] - base, biggest["data_bytes"]
    activations = biggest["val_rows"] * WIDTH * biggest["bytes_per_float"]
    result.append(
        Row(
            GROUP,
            f"peak memory at {max(by_rows)} rows, less a {min(by_rows)}-row run's",
            "size of the data",
            [extra / data],
            "<= 1.5",
            {"data": data / MiB, "peak over start": biggest["peak_extra"] / MiB},
            unit="MiB",
            why=(
                f"the peak is {human(extra / MiB, 'MiB')} over a small run's, "
                f"{human((extra - data) / MiB, 'MiB')} beyond the data's "
                f"{human(data / MiB, 'MiB')}. The validation pass runs over all "
                f"{biggest['val_rows']:.0f} validation rows at once, and one copy of its hidden "
                f"activations (rows x width {WIDTH}) is {human(activations / MiB, 'MiB')}: "
                f"the excess is as much as {(extra - data) / activations:.1f} such copies, the "
                "intermediates of the forward, the activation and the loss; validating in "
                "chunks would cap them, at the cost of a longer loop."
            ),
        )
    )
    return result
