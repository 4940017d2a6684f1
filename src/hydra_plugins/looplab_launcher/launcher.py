"""Hydra's basic launcher, composing once per combination of config groups.

Hydra's basic launcher runs a sweep's jobs one after another in this process and composes
each job's config from scratch: about 55 ms a job here, most of what a job that does
nothing costs. The jobs of a sweep mostly differ in values only (`seed=1,2,3`,
`train.lr=...`), not in config groups. This launcher composes once per combination of
group choices, through Hydra's own config loader, and gives each job a copy (about 3 ms)
with its values set as Hydra sets them (a `key=value` merged into the struct config), and
the Hydra fields that name the job's overrides (`hydra.overrides.task`,
`hydra.job.override_dirname`) made as Hydra makes them.

A job's other overrides (a group's choice, `+key`, `++key`, `~key`, `key@package`) are part
of the composition it shares with the jobs that have the same ones, as long as none of them
comes after a value: Hydra applies `+key`, `++key` and `~key` in their place among the
values, so such a job is composed whole, as is one whose value does not fit its key (the
config and any error are then Hydra's own). The environment Hydra copies into
`hydra.job.env_set` and `hydra.runtime.cwd` are those of the composition, not of each job:
looplab changes neither between jobs. `tests/test_launcher.py` holds every job's `.hydra/`
files against the basic launcher's.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from looplab.launch.overrides import Compositions, parse

log = logging.getLogger(__name__)


@dataclass
class LooplabLauncherConf:
    _target_: str = "hydra_plugins.looplab_launcher.launcher.LooplabLauncher"


class LooplabLauncher(Launcher):
    """Run the jobs here, one after another, as Hydra's basic launcher does."""

    def __init__(self) -> None:
        super().__init__()
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        # The config composed for each combination of a job's non-value overrides.
        self.compositions: Compositions | None = None
        # The config groups at the top of the search path; a nested one has a `/` in its key.
        self.groups: frozenset[str] = frozenset()

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.groups = frozenset(hydra_context.config_loader.list_groups(""))
        loader = hydra_context.config_loader

        def compose(lines: list[str]) -> DictConfig:
            composed = loader.load_sweep_config(config, lines)
            log.debug(f"composed the config of {' '.join(lines) or 'no group overrides'}")
            return composed

        self.compositions = Compositions(compose, self._is_group)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        return self.run_jobs(self.job_configs(job_overrides, initial_job_idx))

    def job_configs(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> list[DictConfig]:
        """Each job's config, numbered from `initial_job_idx`."""
        assert self.config is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = []
        for num, overrides in enumerate(job_overrides, initial_job_idx):
            config = self.job_config(list(overrides))
            with open_dict(config):
                config.hydra.job.id = num
                config.hydra.job.num = num
            configs.append(config)
        return configs

    def run_jobs(self, configs: Sequence[DictConfig]) -> list[JobReturn]:
        """Run each job, here, one after another, as Hydra's basic launcher does."""
        assert self.config is not None and self.hydra_context is not None
        assert self.task_function is not None
        log.info(f"Launching {len(configs)} jobs locally")
        returns: list[JobReturn] = []
        for config in configs:
            shown = " ".join(filter_overrides(list(config.hydra.overrides.task)))
            log.info(f"\t#{config.hydra.job.num} : {shown}")
            returns.append(
                run_job(
                    hydra_context=self.hydra_context,
                    task_function=self.task_function,
                    config=config,
                    job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir",
                )
            )
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns

    def job_config(self, overrides: list[str]) -> DictConfig:
        """The job's config, as `load_sweep_config` would compose it, from a copy of the
        composition its other overrides share with other jobs (`looplab.launch.overrides`)."""
        assert self.compositions is not None
        config = self.compositions.job_config(overrides)
        task = [o for o in parse(overrides) if not o.is_hydra_override()]
        with open_dict(config):
            config.hydra.overrides.task = [o.input_line for o in task]
            config.hydra.job.override_dirname = _override_dirname(task, config.hydra.job.config)
        return config  # the copy keeps the resolver cache (timestamps) Hydra gave the original

    def _is_group(self, key: str) -> bool:
        return "/" in key or key in self.groups


def _override_dirname(task: list[Override], job: DictConfig) -> str:
    """`hydra.job.override_dirname`, made as Hydra's config loader makes it."""
    settings = job.override_dirname
    lines = sorted(str(o.input_line) for o in task if o.key_or_group not in settings.exclude_keys)
    return re.sub("=", settings.kv_sep, settings.item_sep.join(lines))
