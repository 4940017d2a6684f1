"""A run's `config.yaml`: written as a primary config of its own, read back as data only."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from looplab.core.errors import ConfigError
from looplab.core.paths import config_dir
from looplab.core.schema import LooplabConfig, hold_nodes
from looplab.core.validate import validate

# What says where a run is recorded, not what it is: left out of its config.yaml and identity.
WHERE_KEYS = ("uri",)


def portable(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config without the store: what the run is, not where it was recorded.

    `tracking.uri` is dropped (a rerun records in its own default store, or in the one it is
    told); the packaged CSV is already named as `pkg://looplab.resources/...`.
    """
    document = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    tracking = document.get("tracking") or {}
    for key in WHERE_KEYS:
        if key in tracking:
            tracking[key] = None
    return document


def _safe_dumper() -> type:
    """libyaml's safe dumper where PyYAML has it (a sweep writes a config a job), else PyYAML's."""
    import yaml

    return getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def rerunnable(cfg: DictConfig) -> str:
    """The resolved config as a primary config of its own, as YAML for `config.yaml`.

    With the schema in its defaults and train.yaml's output folders, `looplab-train
    --config-dir FOLDER --config-name config` checks and places the rerun like any run.
    Written with plain YAML, not an OmegaConf merge: a sweep writes one for every job.
    The store is left out (`tracking.uri: null`), so the file runs anywhere.
    """
    import yaml

    hydra_choices, hydra_settings = _hydra_settings()
    document = {
        "defaults": ["looplab_schema", "_self_", *hydra_choices],
        **portable(cfg),
        **hydra_settings,
    }
    return yaml.dump(document, Dumper=_safe_dumper(), sort_keys=False)


@functools.cache
def _hydra_settings() -> tuple[list[Any], dict[str, Any]]:
    """train.yaml's Hydra choices (logging, help, the sweeper) and its output folders and
    callbacks, read once per process: a rerun keeps looplab's console, folders and sweeps."""
    train = OmegaConf.load(config_dir() / "train.yaml")
    overrides = [
        OmegaConf.to_container(entry)
        for entry in train.defaults
        if isinstance(entry, DictConfig)
        and str(next(iter(entry))).startswith(("override hydra/", "hparams_search"))
    ]
    hydra = {key: OmegaConf.to_container(train.hydra[key]) for key in ("run", "sweep", "callbacks")}
    return overrides, {"hydra": hydra}


# What a recorded config may name as `_target_`: looplab's own packages, and torch's
# optimisers (`update=adam`: a class called with the parameters and lr, nothing else of torch).
TRUSTED_TARGETS = ("looplab.", "hydra_plugins.looplab_", "torch.optim.")


def from_record(text: str, source: str = "config.yaml", trusted: Sequence[str] = ()) -> DictConfig:
    """A run's recorded `config.yaml`, read as data, never as code, as a plain config.
    `trusted`: the user's own packages its model or update may name (`--trust`).

    Plain YAML only (`yaml.safe_load`: no Python tags); no `${...}` interpolations outside its
    `hydra` part (a recorded config is resolved); no `_target_` outside `TRUSTED_TARGETS`;
    every other key must be in the schema, with the schema's types, and pass `validate`. Its
    `defaults` and `hydra` parts are checked, then left out: a rerun takes looplab's own Hydra
    settings.
    """
    import yaml

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "?"
        raise ConfigError(f"{source} is not plain YAML: {first}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{source} is not a mapping of config keys")
    for where, value in _leaves(document):
        package = str(value).split(".")[0]
        mine = not where.startswith("hydra.") and package in trusted  # the user said so
        if where.endswith("_target_") and not (str(value).startswith(TRUSTED_TARGETS) or mine):
            hint = "" if where.startswith("hydra.") else f" (trust it: --trust {package})"
            raise ConfigError(
                f"{source} names an import target outside looplab ({where}={value}): refused, "
                f"a run's artifacts are data, never code, unless you trust its package{hint}"
            )
        if isinstance(value, str) and "${" in value and not where.startswith("hydra."):
            raise ConfigError(
                f"{source} holds an interpolation ({where}={value}): refused, a recorded "
                "config is resolved"
            )
    body = {key: value for key, value in document.items() if key not in ("defaults", "hydra")}
    return checked(body, source)


def checked(body: dict[str, Any], source: str) -> DictConfig:
    """`body` merged onto the schema (its types and keys), as a validated plain config."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(LooplabConfig), body)
        plain = OmegaConf.create(OmegaConf.to_container(merged, resolve=True, enum_to_str=True))
        hold_nodes(plain)
    except OmegaConfBaseException as error:
        message = str(error).strip().splitlines()[0]
        raise ConfigError(
            f"{source} does not match looplab's schema at {error.full_key or '?'}: {message}"
        ) from None
    except ConfigError as error:  # the built-in data set's and model's types (`hold_nodes`)
        raise ConfigError(f"{source} does not match looplab's schema: {error}") from None
    validate(plain)
    return plain


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every (dotted key, value) of a plain YAML document, lists included."""
    if isinstance(node, dict):
        items = [(f"{prefix}.{key}" if prefix else str(key), value) for key, value in node.items()]
    elif isinstance(node, list):
        items = [(f"{prefix}[{index}]", value) for index, value in enumerate(node)]
    else:
        return [(prefix, node)]
    return [leaf for key, value in items for leaf in _leaves(value, key)]
