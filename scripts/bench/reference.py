"""Group `reference`: what MLflow's own logging costs the bare loop, the anchor for `tracking`.

These rows have no goal: they show what logging one metric an epoch from the training
process costs, which is why looplab logs from a separate writer process instead.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from bench.harness import Row, Seconds, Settings, medians, ratios, side_by_side
from bench.problems import bare_epochs, problem


def rows(cfg: Settings, work: Path) -> list[Row]:
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its store-creation lines
    (work / "naive-store").mkdir(exist_ok=True)
    mlflow.set_tracking_uri(f"sqlite:///{work / 'naive-store' / 'mlflow.db'}")
    mlflow.set_experiment("naive")
    p = problem("breast_cancer")
    epochs = cfg.naive_epochs
    result = []
    for label, synchronous in [("one mlflow.log_metric an epoch", True), ("async", False)]:

        def naive(synchronous: bool = synchronous) -> Seconds:
            with mlflow.start_run():

                def log(epoch: int, value: float) -> None:
                    mlflow.log_metric("train_loss", value, step=epoch, synchronous=synchronous)

                per_epoch = bare_epochs(p, epochs, log=log)
                start = time.perf_counter()
                if not synchronous:
                    mlflow.flush_async_logging()
                return per_epoch + (time.perf_counter() - start) / epochs

        times = side_by_side(
            {"mlflow": naive, "bare": lambda: bare_epochs(p, epochs)}, cfg.peer_repeats
        )
        result.append(
            Row(
                "reference",
                f"bare loop + {label} (SQLite), breast_cancer",
                "bare loop",
                ratios(times, "mlflow", "bare"),
                times=medians(times),
                note=f"{epochs} epochs, end-of-run flush included",
            )
        )
    return result
