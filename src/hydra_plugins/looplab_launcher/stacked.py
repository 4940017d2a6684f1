"""`hydra/launcher=stacked`: looplab's launcher, with the jobs of a batch that share their
shapes trained as one stack (looplab.launch.stacks) before each job runs as a job.

Every job still runs through Hydra's `run_job` with its own config, folder, `.hydra/`
files, log and task function call; looplab's task function records what the stack
trained for it as its own run (its epochs, its weights, how it ended), so a stacked sweep's
folders, runs and summaries look as a sequential one's, and each child run is tagged
`looplab.stack_size`. A job that cannot share a stack is trained alone, and its line says why.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.utils import JobReturn
from omegaconf import DictConfig

from hydra_plugins.looplab_launcher.launcher import LooplabLauncher
from looplab.core.schema import plain_config
from looplab.launch.jobs import records_jobs
from looplab.launch.stacks import Job, plan, train_stack
from looplab.launch.sweep import job_part
from looplab.tracking.client import start_idle_writer

log = logging.getLogger(__name__)


@dataclass
class StackedLauncherConf:
    _target_: str = "hydra_plugins.looplab_launcher.stacked.StackedLauncher"
    # The memory a stack may take (MiB): a larger one is split (its data, parameters and
    # activations, counted per member)
    memory_mb: float = 2048


class StackedLauncher(LooplabLauncher):
    def __init__(self, memory_mb: float = 2048) -> None:
        super().__init__()
        self.memory_mb = memory_mb

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        assert self.config is not None
        if not records_jobs(self.task_function):  # another app: nothing of looplab's to stack
            return super().launch(job_overrides, initial_job_idx)
        _start_writer(self.config)
        configs = self.job_configs(job_overrides, initial_job_idx)
        jobs = [Job(int(config.hydra.job.num), config) for config in configs]
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        stacks = plan(jobs)
        for stack in stacks:
            print(train_stack(stack, sweep_dir, self.memory_mb), flush=True)
        for job in jobs:
            if job.why_alone:
                print(f"[job {job.num}] trained alone: {job.why_alone}", flush=True)
        return self.run_jobs([job.config for job in jobs])


def _start_writer(config: DictConfig) -> None:
    """The jobs' MLflow writer, started while the stacks are prepared (tracking/client.py)."""
    try:
        plain = plain_config(job_part(config))
    except Exception:  # each job says what is wrong with its config
        return
    start_idle_writer(plain)
