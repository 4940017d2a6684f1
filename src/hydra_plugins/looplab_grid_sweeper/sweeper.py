"""The grid sweeper: enumerate the jobs as `looplab.launch.sweep` does, save the sweep's config, and
hand the jobs to the launcher in batches; return one list of `JobReturn`s a batch, as Hydra's
basic sweeper does."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from omegaconf import OmegaConf

from looplab.launch.sweep import enumerate_jobs, refuse_intervals, sweep_overrides
from looplab.launch.sweeper import LaunchingSweeper


@dataclass
class LooplabGridSweeperConf:
    _target_: str = "hydra_plugins.looplab_grid_sweeper.sweeper.LooplabGridSweeper"
    max_batch_size: int | None = None  # jobs handed to the launcher at once; null: all
    # key: values, as on the command line (`model.width: 0,8,32`); the command line wins
    params: dict[str, str] | None = field(default=None)


class LooplabGridSweeper(LaunchingSweeper):
    def __init__(self, max_batch_size: int | None = None, params: Any = None) -> None:
        super().__init__()
        self.max_batch_size = max_batch_size

    def sweep(self, arguments: list[str]) -> list[list[JobReturn]]:
        assert self.config is not None
        jobs, swept = enumerate_jobs(sweep_overrides(self.config))
        refuse_intervals(jobs, swept)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        overrides = [tuple(choice.text for choice in job) for job in jobs]
        size = self.max_batch_size or len(overrides) or 1
        returns = []
        for start in range(0, len(overrides), size):
            batch = self.launch(overrides[start : start + size], start)
            self.raise_failed(batch)  # any app but looplab's: a failed job stops the sweep
            returns.append(batch)
        return returns
