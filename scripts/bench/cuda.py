"""Group `cuda`: the loop's overhead on a GPU, and a large epoch against the card's matmul floor.

On a machine without CUDA both rows are reported as skipped.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from bench.harness import Row, Settings
from bench.loop import loop_row
from bench.problems import framework_epochs, problem, synthetic

GROUP = "cuda"


def rows(cfg: Settings, work: Path) -> list[Row]:
    if not torch.cuda.is_available():
        reason = "no CUDA device on this machine"
        return [
            Row.skip(
                GROUP, "loop overhead on the GPU, breast_cancer full batch", "bare loop", reason
            ),
            Row.skip(GROUP, "large synthetic epoch on the GPU", "matmul floor", reason),
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
    return result
