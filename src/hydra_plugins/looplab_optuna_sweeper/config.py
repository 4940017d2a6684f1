"""The sweeper's config, as `hydra.sweeper.*` keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class LooplabOptunaSweeperConf:
    _target_: str = "hydra_plugins.looplab_optuna_sweeper.sweeper.LooplabOptunaSweeper"
    # minimize or maximize the task function's return value; null: the direction of
    # looplab's `optimized_metric` (accuracy maximised, losses minimised). A job that raised
    # or returned no finite number (looplab's failed jobs: the worst value) is a FAIL trial
    direction: str | None = None
    n_trials: int = 20  # trials in the whole study, those of earlier launches included
    n_jobs: int = 1  # trials asked for at once, and handed to the launcher as one batch
    # Stop the search (exit 1) once more than this share of its trials failed; 1.0: never,
    # as looplab's grid goes on past failed jobs (Hydra's Optuna sweeper stops at 0.0)
    max_failure_rate: float = 1.0
    seed: int | None = 42  # the TPE sampler's seed
    study_name: str | None = None  # null: named after the search space and fixed overrides
    storage: str | None = None  # null: sqlite:///<tracking store's folder>/optuna/<study>.db
    # key: search space, in Hydra's sweep syntax: `choice(a,b)` or `a,b`, `range(1,9)`,
    # `interval(0.001,1)`, `tag(log,interval(0.001,1))`
    params: dict[str, Any] = field(default_factory=dict)


def register() -> None:
    ConfigStore.instance().store(
        group="hydra/sweeper",
        name="looplab_optuna",
        node=LooplabOptunaSweeperConf,
        provider="looplab",
    )
