"""The schema made known to Hydra, and the config a run's name is told apart from."""

from __future__ import annotations

import functools
from typing import Any

from hydra import compose
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from looplab.core.paths import resource_uri
from looplab.core.schema import LooplabConfig, plain_config


def register() -> None:
    """Make the schema and the `${looplab.resource:...}` resolver known to Hydra and OmegaConf."""
    ConfigStore.instance().store(name="looplab_schema", node=LooplabConfig)
    if not OmegaConf.has_resolver("looplab.resource"):
        OmegaConf.register_new_resolver("looplab.resource", resource_uri)


@functools.lru_cache(maxsize=8)
def baseline(preset: str | None, searchpath: tuple[str, ...] = ()) -> DictConfig:
    """The config with no overrides but the preset: what a run's name is told apart from.
    A memo of one compose per preset (needs Hydra initialised, as in a job or a test);
    `searchpath`: the run's `hydra.searchpath`, where a user's own preset may be."""
    overrides = [f"experiment={preset}"] if preset else []
    return plain_config(compose(config_name="train", overrides=overrides + searched(searchpath)))


def searched(searchpath: Any) -> list[str]:
    """The override that gives a compose of our own the run's `hydra.searchpath` (a user's
    config folders), which Hydra's `compose` does not take from the command line."""
    paths = [str(path) for path in searchpath or ()]
    return [f"hydra.searchpath=[{','.join(paths)}]"] if paths else []
