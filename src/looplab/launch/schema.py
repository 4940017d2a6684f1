"""The schema made known to Hydra, and the config a run's name is told apart from."""

from __future__ import annotations

import functools

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
def baseline(preset: str | None) -> DictConfig:
    """The config with no overrides but the preset: what a run's name is told apart from.
    A memo of one compose per preset (needs Hydra initialised, as in a job or a test)."""
    overrides = [f"experiment={preset}"] if preset else []
    return plain_config(compose(config_name="train", overrides=overrides))
