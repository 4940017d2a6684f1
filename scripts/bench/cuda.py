"""Group `cuda`: the loop's overhead on a GPU, a large epoch against the card's matmul floor,
and the same epochs on the GPU and on the CPU of the same machine (what `device=auto` buys).

On a machine without CUDA the rows are reported as skipped.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from bench.harness import Row, Settings, human, medians, ratios, side_by_side
from bench.loop import loop_row
from bench.problems import Problem, best_epochs, framework_epochs, problem, synthetic
from looplab.core.device import step_work

GROUP = "cuda"


def rows(cfg: Settings, work: Path) -> list[Row]:
    if not torch.cuda.is_available():
        reason = "no CUDA device on this machine"
        return [
            Row.skip(
                GROUP, "loop overhead on the GPU, breast_cancer full batch", "bare loop", reason
            ),
            Row.skip(GROUP, "large synthetic epoch on the GPU", "matmul floor", reason),
            Row.skip(GROUP, "an epoch on the GPU", "the same epoch on the CPU", reason),
        ]
    name = torch.cuda.get_device_name()
    result = [
        loop_row(
            GROUP,
            "loop overhead on the GPU, breast_cancer full batch",
            problem("breast_cancer", device="cuda"),
            cfg,
            name,
        )
    ]
    # Floor: the epoch's matmul FLOPs at the rate a large matmul reaches on this card.
    n, width, batch = 1_000_000, 4096, 8192
    big = synthetic(n, width, batch, device="cuda")
    a = torch.randn(8192, 8192, device="cuda")
    a @ a  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ a
    torch.cuda.synchronize()
    rate = 10 * 2 * 8192**3 / (time.perf_counter() - start)
    n_train, n_val = big.synthetic.x_train.shape[0], big.synthetic.x_val.shape[0]
    per_row = 2 * (32 * width + width)  # forward multiply-adds of both layers
    floor = (3 * per_row * n_train + per_row * n_val) / rate  # backward ~ 2x forward
    framework_epochs(big, 1)  # warm-up
    epoch = [framework_epochs(big, 3) for _ in range(cfg.repeats)]
    result.append(
        Row(
            GROUP,
            f"synthetic epoch, {n} rows, width {width}, batch {batch}",
            "matmul floor measured on the card",
            [e / floor for e in epoch],
            "",
            {"epoch": statistics.median(epoch), "floor": floor},
            note=f"{name}, {rate / 1e12:.1f} TFLOP/s matmul",
        )
    )
    del big, a
    torch.cuda.empty_cache()
    return result + device_rows(cfg, name)


CROSSOVER = [
    (64, 256),
    (64, 4096),
    (256, 256),
    (256, 1024),
    (256, 4096),
    (1024, 256),
    (1024, 1024),
    (64, None),
]


def synthetic_step_work(width: int, batch: int | None) -> int:
    """`device=auto`'s measure of a step of `synthetic(50_000, width, batch)`: 40,000
    training rows, 32 features, one output."""
    return step_work(batch or 40_000, 32, 1, [width] if width else [])


def device_rows(cfg: Settings, card: str) -> list[Row]:
    """One epoch on the GPU against the same epoch on this machine's CPU, small to large:
    where `device=auto` (the GPU when there is one) pays, and where it costs."""
    cases: list[tuple[str, Problem, Problem]] = [
        (
            "the tutorial's: breast_cancer, width 0, full batch",
            problem("breast_cancer", device="cuda"),
            problem("breast_cancer", device="cpu"),
        ),
        (
            "digits, width 256, batch 64",
            problem(
                "digits", "dataset=digits", "model.width=256", "train.batch_size=64", device="cuda"
            ),
            problem(
                "digits", "dataset=digits", "model.width=256", "train.batch_size=64", device="cpu"
            ),
        ),
        (
            "synthetic 200,000 rows, width 1024, batch 4096",
            synthetic(200_000, 1024, 4096, device="cuda"),
            synthetic(200_000, 1024, 4096, device="cpu"),
        ),
    ]
    # Where the GPU starts to pay: multiply-adds a step (rows a step x weights) from small
    # to large, on the same synthetic rows.
    for width, batch in CROSSOVER:
        cases.append(
            (
                f"synthetic 50,000 rows, width {width}, batch {batch or 'full'} "
                f"({synthetic_step_work(width, batch):,} multiply-adds a step)",
                synthetic(50_000, width, batch, device="cuda"),
                synthetic(50_000, width, batch, device="cpu"),
            )
        )
    threads = torch.get_num_threads()
    rows = []
    for label, on_gpu, on_cpu in cases:
        epochs = best_epochs(lambda e, p=on_cpu: framework_epochs(p, e), cfg.budget)
        times = side_by_side(
            {
                "GPU": lambda p=on_gpu, e=epochs: framework_epochs(p, e),
                "CPU": lambda p=on_cpu, e=epochs: framework_epochs(p, e),
            },
            cfg.repeats,
        )
        median = medians(times)
        faster = "GPU" if median["GPU"] < median["CPU"] else "CPU"
        rows.append(
            Row(
                GROUP,
                f"an epoch on the GPU, {label}",
                f"the same epoch on this machine's CPU ({threads} torch threads)",
                ratios(times, "GPU", "CPU"),
                "",
                median,
                note=f"{card}; {epochs} epochs a repeat, looplab's loop with run.py's callbacks",
                why=(
                    f"an epoch took {human(median['GPU'])} on the GPU and "
                    f"{human(median['CPU'])} on the CPU: the {faster} is faster here by "
                    f"{max(median.values()) / min(median.values()):.1f}x"
                ),
            )
        )
    return rows
