"""Group `startup`: `looplab-train train.epochs=1` against the imports any such run needs.

The floor is what a hand-written script pays before its first epoch (importing torch,
scikit-learn and Hydra, and opening the same MLflow store), so the ratio is looplab's own
start-up cost on top of that.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.harness import CLI, Row, Settings, command, medians, ratios, side_by_side


def rows(cfg: Settings, work: Path) -> list[Row]:
    store = work / "startup-store" / "mlflow.db"
    uri = f"sqlite:///{store}"
    common = ["train.epochs=1", "train.print_every=0", f"hydra.run.dir={work / 'startup-runs'}"]
    command(CLI, *common, f"tracking.uri={uri}", cwd=work)()  # the existing store
    py = sys.executable
    floor_tracked = (
        "import torch, sklearn, hydra, mlflow\n"
        "from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore\n"
        f"SqlAlchemyStore({uri!r}, {str(work / 'artifacts')!r})"
    )
    cases = [
        (
            "looplab-train train.epochs=1, existing SQLite store",
            "imports + opening that store",
            [CLI, *common, f"tracking.uri={uri}"],
            [py, "-c", floor_tracked],
        ),
        (
            "looplab-train train.epochs=1 tracking.enabled=false",
            "import torch, sklearn, hydra",
            [CLI, *common, "tracking.enabled=false"],
            [py, "-c", "import torch, sklearn, hydra"],
        ),
    ]
    result = []
    for figure, compared, ours, floor in cases:
        times = side_by_side(
            {"looplab": command(*ours, cwd=work), "floor": command(*floor, cwd=work)},
            cfg.startup_repeats,
        )
        result.append(
            Row(
                "start-up",
                figure,
                compared,
                ratios(times, "looplab", "floor"),
                "<= 1.3",
                medians(times),
            )
        )
    return result
