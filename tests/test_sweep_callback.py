"""The sweep callback's own numbers, from the composed Hydra config of a sweep (fast)."""

from __future__ import annotations

from hydra import compose, initialize_config_dir

from looplab.cli.sweep import jobs_planned
from looplab.core.paths import config_dir
from looplab.launch.sweep import enumerate_jobs, sweep_overrides


def planned(*overrides: str, swept: tuple[str, ...] = ()) -> int:
    """Jobs planned for a sweep of `swept` (as typed after -m) on the config `overrides` make."""
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        config = compose("train", overrides=list(overrides), return_hydra_config=True)
    jobs, _ = enumerate_jobs(sweep_overrides(config) + list(swept))
    return jobs_planned(config, jobs)


def test_jobs_planned_is_a_searchs_trials_and_a_grids_product() -> None:
    """Fault: `looplab.jobs_planned` of an Optuna search counted the discrete combinations
    of its space (4 widths x 2 updates = 8) instead of its `n_trials`."""
    assert planned("hparams_search=optuna") == 20
    assert planned("hparams_search=optuna", "hydra.sweeper.n_trials=3") == 3
    assert planned(swept=("model.width=0,8", "update=manual,sgd", "seed=1,2,3")) == 12
