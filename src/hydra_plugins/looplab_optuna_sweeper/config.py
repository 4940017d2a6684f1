"""The sweeper's config, as `hydra.sweeper.*` keys, and its two groups, as hydra-optuna-sweeper
has them: `hydra/sweeper/sampler=tpe|random|cmaes|qmc|grid` and (looplab's)
`hydra/sweeper/pruner=none|median|percentile|hyperband|successive_halving`, each choice with
its Optuna class's settings as keys. The sweeper builds them itself (`_recursive_: false`),
so a relaunched search can reseed its sampler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = 42  # looplab: the same trials again unless told otherwise
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: bool = False
    group: bool = False
    constant_liar: bool = False  # parallel trials (n_jobs > 1) spread out instead of piling up


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = 42  # looplab: the same trials again unless told otherwise


@dataclass
class CmaEsSamplerConf:  # needs the `cmaes` package
    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: int | None = 42  # looplab: the same trials again unless told otherwise
    n_startup_trials: int = 1
    sigma0: float | None = None
    warn_independent_sampling: bool = True


@dataclass
class QMCSamplerConf:
    _target_: str = "optuna.samplers.QMCSampler"
    seed: int | None = 42  # looplab: the same trials again unless told otherwise
    qmc_type: str = "sobol"  # sobol or halton
    scramble: bool = False


@dataclass
class GridSamplerConf:  # every combination of the space's values (choices and ranges only)
    _target_: str = "optuna.samplers.GridSampler"
    seed: int | None = 42  # looplab: the same trials again unless told otherwise


@dataclass
class NopPrunerConf:
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConf:  # stop a trial whose epoch is worse than the median of earlier trials'
    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5  # trials that finish before any is pruned
    n_warmup_steps: int = 0  # a trial may be pruned from this epoch on (epochs count from 1)
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class PercentilePrunerConf:
    _target_: str = "optuna.pruners.PercentilePruner"
    percentile: float = 25.0  # kept: the best quarter of earlier trials at that epoch
    n_startup_trials: int = 5
    n_warmup_steps: int = 0  # as the median pruner's
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class HyperbandPrunerConf:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1  # epochs
    max_resource: Any = "auto"  # auto: the epochs of the first trial that finishes
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class SuccessiveHalvingPrunerConf:  # ASHA
    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


SAMPLERS = {
    "tpe": TPESamplerConf,
    "random": RandomSamplerConf,
    "cmaes": CmaEsSamplerConf,
    "qmc": QMCSamplerConf,
    "grid": GridSamplerConf,
}
PRUNERS = {
    "none": NopPrunerConf,
    "median": MedianPrunerConf,
    "percentile": PercentilePrunerConf,
    "hyperband": HyperbandPrunerConf,
    "successive_halving": SuccessiveHalvingPrunerConf,
}


@dataclass
class LooplabOptunaSweeperConf:
    _target_: str = "hydra_plugins.looplab_optuna_sweeper.sweeper.LooplabOptunaSweeper"
    _recursive_: bool = False  # the sampler and pruner stay configs: the sweeper builds them
    # _self_ first: the chosen sampler and pruner fill the two keys below
    defaults: list[Any] = field(
        default_factory=lambda: ["_self_", {"sampler": "tpe"}, {"pruner": "none"}]
    )
    # minimize or maximize the task function's return value; null: the direction of
    # looplab's `optimized_metric` (accuracy maximised, losses minimised); a list of them
    # for a multi-objective search over a list of metrics. A job that raised or returned no
    # finite number (looplab's failed jobs: the worst value) is a FAIL trial
    direction: Any = None
    n_trials: int = 20  # trials in the whole study, those of earlier launches included
    n_jobs: int = 1  # trials asked for at once, and handed to the launcher as one batch
    # Stop the search (exit 1) once more than this share of its trials failed; 1.0: never,
    # as looplab's grid goes on past failed jobs (Hydra's Optuna sweeper stops at 0.0)
    max_failure_rate: float = 1.0
    study_name: str | None = None  # null: named after the search space and fixed overrides
    storage: str | None = None  # null: sqlite:///<tracking store's folder>/optuna/<study>.db
    sampler: Any = None  # hydra/sweeper/sampler=...; its seed: hydra.sweeper.sampler.seed
    pruner: Any = None  # hydra/sweeper/pruner=...: trials report every epoch and may stop
    # key: search space, in Hydra's sweep syntax: `choice(a,b)` or `a,b`, `range(1,9)`,
    # `interval(0.001,1)`, `tag(log,interval(0.001,1))`
    params: dict[str, Any] = field(default_factory=dict)


def register() -> None:
    store = ConfigStore.instance()
    store.store(
        group="hydra/sweeper", name="looplab_optuna", node=LooplabOptunaSweeperConf,
        provider="looplab",
    )  # fmt: skip
    for name, node in SAMPLERS.items():
        store.store(group="hydra/sweeper/sampler", name=name, node=node, provider="looplab")
    for name, node in PRUNERS.items():
        store.store(group="hydra/sweeper/pruner", name=name, node=node, provider="looplab")
