"""The config schema (dataclasses), the plain config a run is given, and how a config error
is worded for the user.

Hydra merges `conf/` on top of these dataclasses (see `looplab.launch.schema`), so a wrong
type or an option outside an enum fails at composition time; `core.validate` adds what a
type cannot express. `dataset`, `model` and `update` are typed Any, so that a node naming the
user's own function or class (`_target_`) with its arguments fits; `plain_config` holds them
to their built-in schema (`BUILTIN`), as OmegaConf would. Neither Hydra nor MLflow is
imported here: the core knows OmegaConf only.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, get_type_hints

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
    ValidationError,
)

from looplab.core.errors import ConfigError
from looplab.core.paths import PACKAGE_PREFIX, default_store_uri
from looplab.core.typed import allowed, typed


class Task(StrEnum):
    classification = "classification"
    regression = "regression"


class Impl(StrEnum):
    manual = "manual"
    module = "module"


class Init(StrEnum):
    default = "default"
    seed = "seed"


class Activation(StrEnum):
    relu = "relu"
    tanh = "tanh"
    sigmoid = "sigmoid"


class Loss(StrEnum):
    logits = "logits"
    tutorial = "tutorial"


class UpdateName(StrEnum):
    manual = "manual"
    sgd = "sgd"


class DeviceName(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Missing(StrEnum):
    refuse = "refuse"
    drop = "drop"
    mean = "mean"


class LogModel(StrEnum):
    best = "best"  # a run's own; of a sweep, its best child's (at the sweep's end)
    all = "all"
    none = "none"


class DType(StrEnum):
    float32 = "float32"
    float64 = "float64"


class PrintStyle(StrEnum):
    full = "full"
    tutorial = "tutorial"


@dataclass
class DatasetConfig:
    name: str = MISSING
    path: str | None = None
    target: str | None = None
    drop: list[str] = field(default_factory=list)
    task: Task | None = None
    test_size: float = 0.2
    sep: str = ","
    encoding: str = "utf-8"
    missing: Missing = Missing.refuse  # empty feature cells: refuse, drop the rows, or mean


@dataclass
class ModelConfig:
    width: int = 0
    hidden: list[int] | None = None  # every hidden layer's width; null: model.width's one
    activation: Activation = Activation.relu
    impl: Impl = Impl.manual
    init: Init = Init.default
    loss: Loss = Loss.logits


@dataclass
class UpdateConfig:
    """The built-in updates' one key. `update` itself is typed Any in `LooplabConfig`, so
    that a `torch.optim` class with its own arguments fits too (`check_update`)."""

    name: UpdateName = UpdateName.manual


@dataclass
class DeviceConfig:
    name: DeviceName = DeviceName.auto


@dataclass
class EarlyStopConfig:
    patience: int | None = None  # epochs without improvement before the run ends; null: off
    min_delta: float = 0.0  # an improvement is a change of more than this


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int | None = None
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    dtype: DType = DType.float32
    print_every: int = 1
    print_style: PrintStyle = PrintStyle.full
    threads: int | None = None
    # End the run when `optimized_metric` stops improving; model.pt keeps its best epoch
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = MISSING  # conf/tracking/local.yaml: null (a local store); server: required
    experiment: str = "looplab"
    offline: bool = False  # no store: the run's whole record stays in its folder (looplab sync)
    wait_s: float = 60.0  # at a run's end, how long to wait for a store that is away
    skip_finished: bool = False
    log_model: LogModel = LogModel.best  # which FINISHED runs get an MLflow logged model


@dataclass
class CheckpointConfig:
    # A checkpoint at the end of the first epoch after this many seconds since the last one
    # (null: none by time), and/or every this many epochs (null: none by count). A stop
    # (Ctrl-C, SIGTERM, SIGHUP, SLURM's warning signals) always takes one.
    every_s: float | None = 60.0
    every_epochs: int | None = None
    keep: bool = False  # keep checkpoint.pt in a FINISHED run's folder


# How a CSV file is read. A data set of your own (`dataset._target_`) passes them to its
# function when they are set, and leaves them out at these defaults.
FILE_KEYS = ("path", "sep", "encoding")


@functools.cache
def _defaults(schema: type) -> dict[str, Any]:
    """A node's defaults as a config holds them: an enum's value, and None where the schema
    has none (`name`). Shared: copy before changing one."""
    found = {}
    for f in fields(schema):
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        found[f.name] = None if value == MISSING else getattr(value, "value", value)
    return found


@dataclass
class LooplabConfig:
    # DatasetConfig's keys (a `dataset=` file sets some), or `{_target_: your.function, ...its
    # arguments}` beside looplab's own data keys: every key here, so that `dataset.KEY=...`
    # overrides any data set's.
    dataset: Any = field(default_factory=lambda: copy.deepcopy(_defaults(DatasetConfig)))
    # ModelConfig's keys (conf/train.yaml), or `{_target_: your.Module, ...its keys}`.
    model: Any = field(default_factory=dict)
    # `{name: manual|sgd}` (UpdateConfig), or `{_target_: torch.optim.CLASS, ...its arguments}`:
    # empty here, so that the chosen `update=` file is the whole node.
    update: Any = field(default_factory=dict)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    seed: int = 42
    # What a job returns to a sweeper: a metric the run logs, final (`val_loss`) or best
    # (`val_loss_best`), or a list of them for a multi-objective search; core/objective.py
    optimized_metric: Any = "val_loss"


# The schema of each node typed Any above when it names no `_target_`.
BUILTIN: dict[str, type] = {
    "dataset": DatasetConfig,
    "model": ModelConfig,
    "update": UpdateConfig,
}


def has_target(node: Any) -> bool:
    """Whether a config node names a class or function to call (`_target_`, as Hydra's)."""
    return isinstance(node, DictConfig | dict) and "_target_" in node


def target_arguments(group: str, node: DictConfig) -> dict[str, Any]:
    """The keys of a `_target_` node that are its target's arguments, as plain values: all
    but looplab's own (a data set's name, target, drop, task, test_size and missing)."""
    ours = set(_defaults(DatasetConfig)) - set(FILE_KEYS) if group == "dataset" else set()
    return {
        str(key): value
        for key, value in OmegaConf.to_container(node, resolve=True).items()
        if key != "_target_" and key not in ours
    }


def hidden_widths(width: int, hidden: Sequence[int] | None = None) -> list[int]:
    """The hidden layers' widths: `model.hidden` when given (any number of layers), else the
    tutorial's `model.width`: one hidden layer, or none (the single neuron) for width 0."""
    if hidden is not None:
        return [int(w) for w in hidden]
    return [width] if width > 0 else []


def update_name(update: Any) -> str:
    """What the update is, for params and names: `manual`, `sgd`, or the optimiser's class."""
    return str(update.get("_target_") or update.get("name"))


def _schema_of(key: str) -> type | None:
    """The dataclass that holds `key` (`model.width` -> ModelConfig), or None if none does."""
    schema: type = LooplabConfig
    for part in key.split(".")[:-1]:
        if not is_dataclass(schema):
            return None
        hints = get_type_hints(schema)
        inner = hints.get(part) if is_dataclass(hints.get(part)) else BUILTIN.get(part)
        if inner is None:
            return None
        schema = inner
    return schema


def unknown_key_message(key: str) -> str:
    """One line for a key the schema lacks: the nearest known key, and all keys beside it.

    Hydra's own hint (`+key=value`) would be no help: looplab reads only schema keys, so an
    added key is silently ignored. A typo is the likely cause, so the message offers fixes.
    """
    parent, _, name = key.rpartition(".")
    schema = _schema_of(key)
    if schema is None:
        return f"unknown key {key}: {parent or 'the config'} has no sub-keys"
    known = [f.name for f in fields(schema)]
    close = difflib.get_close_matches(name, known, n=1)
    prefix = f"{parent}." if parent else ""
    hint = f"did you mean {prefix}{close[0]}? " if close else ""
    where = f"{parent} has" if parent else "the top level has"
    return f"unknown key {key}: {hint}{where} only {', '.join(known)}"


def hold_nodes(plain: DictConfig) -> None:
    """In place: the nodes typed Any held to their built-in schema (`hold_model`,
    `hold_dataset`), and a config with no update (the schema's is empty) given the manual one."""
    if not plain.get("update"):
        plain.update = {"name": UpdateName.manual.value}
    hold_model(plain)
    hold_dataset(plain)


def hold_dataset(plain: DictConfig) -> None:
    """In place: a built-in data set typed as its schema says (ConfigError names the key),
    each missing key at its default. The user's own (`dataset._target_`) keeps looplab's data
    keys typed (its name defaults to the function's) and its function's arguments as they
    are; a file's keys (`FILE_KEYS`) left at their defaults mean nothing to it."""
    dataset = _keys_node(plain, "dataset")
    if OmegaConf.is_missing(dataset, "_target_"):
        raise ConfigError(
            "dataset._target_ is missing: dataset=function needs the function that returns your "
            "table, dataset._target_=PACKAGE.MODULE.FUNCTION"
        )
    if has_target(dataset):
        for key in FILE_KEYS:
            if key in dataset and dataset[key] == _defaults(DatasetConfig)[key]:
                del dataset[key]
        if dataset.get("name") is None:
            dataset.name = str(dataset._target_).rsplit(".", 1)[-1]
        _hold(dataset, "dataset", DatasetConfig, skip=FILE_KEYS)
        return
    _schema_keys_only(dataset, "dataset", "; your own data's arguments go beside dataset._target_")
    _hold(dataset, "dataset", DatasetConfig)


def hold_model(plain: DictConfig) -> None:
    """In place: the built-in model typed as its schema says (ConfigError names the key), each
    missing key at its default; the user's own (`model._target_`) without the built-in keys
    left at their defaults, which mean nothing to it. Plain Python, not an OmegaConf merge:
    it runs for every job of a sweep, twice."""
    model = _keys_node(plain, "model")
    if has_target(model):
        defaults = _defaults(ModelConfig)
        for key in [k for k in model if k in defaults and model[k] == defaults[k]]:
            del model[key]
        return
    _schema_keys_only(model, "model")
    _hold(model, "model", ModelConfig)


def _keys_node(plain: DictConfig, key: str) -> DictConfig:
    node = plain[key]
    if not isinstance(node, DictConfig):  # `model=5`: a value where keys belong
        raise ConfigError(f"{key}={node} is not allowed: it is a group of keys; set one key in it")
    return node


def _schema_keys_only(node: DictConfig, group: str, hint: str = "") -> None:
    for key in node:
        if key not in _defaults(BUILTIN[group]):
            raise ConfigError(unknown_key_message(f"{group}.{key}") + hint)


def _hold(node: DictConfig, group: str, schema: type, skip: Sequence[str] = ()) -> None:
    """In place: each key of `schema` (but `skip`) typed, a missing one at its default."""
    hints = _hints(schema)
    for key, default in _defaults(schema).items():
        if key in skip:
            continue
        value = node.get(key, default)
        converted = typed(f"{group}.{key}", value, hints[key])
        if key not in node or converted is not value:  # added, or converted
            node[key] = converted  # OmegaConf copies it: a default list is never shared


@functools.cache
def _hints(schema: type) -> dict[str, Any]:
    return get_type_hints(schema)


def omegaconf_message(error: OmegaConfBaseException) -> str:
    """One line for OmegaConf's type or key error: the key, the bad value, what is allowed."""
    key = error.full_key or "?"
    text = error.msg or str(error)
    message = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if isinstance(error, ConfigAttributeError | ConfigKeyError) and message.startswith("Key "):
        return unknown_key_message(key)
    if isinstance(error, ValidationError):
        value = "null" if error.value is None else error.value
        return f"{key}={value} is not allowed: {allowed(message)}"
    return f"{key}: {message}"


def plain_config(cfg: DictConfig, launch_dir: Path | None = None) -> DictConfig:
    """The resolved config with enums as plain strings and an absolute tracking URI.

    An unset `tracking.uri` becomes `sqlite:///<launch dir>/outputs/mlflow.db`: absolute, so
    every job of a sweep writes to the one store whatever its working directory.
    """
    if OmegaConf.is_missing(cfg.tracking, "uri"):
        raise ConfigError(
            "tracking.uri is missing: tracking=server needs tracking.uri=http://HOST:PORT "
            "(a running `mlflow server`, e.g. one started with `looplab server`)"
        )
    plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    hold_nodes(plain)
    if plain.tracking.enabled and not plain.tracking.uri:
        plain.tracking.uri = default_store_uri(launch_dir)
    path = plain.dataset.get("path")
    # A CSV's path; a function of yours (`dataset._target_`) reads its own as it likes.
    if path and not has_target(plain.dataset) and not str(path).startswith(PACKAGE_PREFIX):
        # A file the user named: absolute, so the recorded config reads it from anywhere.
        plain.dataset.path = str(((launch_dir or Path.cwd()) / Path(path).expanduser()).resolve())
    return plain
