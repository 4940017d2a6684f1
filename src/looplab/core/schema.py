"""The config schema (dataclasses), the plain config a run is given, and how a config error
is worded for the user.

Hydra merges `conf/` on top of these dataclasses (see `looplab.launch.schema`), so a wrong
type or an option outside an enum fails at composition time; `core.validate` adds what a
type cannot express. `model` and `update` are typed Any, so that a node naming the user's
own class (`_target_`) fits; without one, `plain_config` holds them to their built-in
schema (`BUILTIN`). Neither Hydra nor MLflow is imported here: the core knows OmegaConf only.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, get_type_hints

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
    ValidationError,
)

from looplab.core.errors import ConfigError
from looplab.core.paths import PACKAGE_PREFIX, default_store_uri


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
class LooplabConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    # ModelConfig's keys (conf/train.yaml), or `{_target_: your.Module, ...its keys}`.
    model: Any = field(default_factory=dict)
    # `{name: manual|sgd}` (UpdateConfig), or `{_target_: torch.optim.CLASS, ...its arguments}`:
    # empty here, so that the chosen `update=` file is the whole node.
    update: Any = field(default_factory=dict)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 42


# The schema of each node typed Any above when it names no `_target_`.
BUILTIN: dict[str, type] = {"model": ModelConfig, "update": UpdateConfig}


def has_target(node: Any) -> bool:
    """Whether a config node names a class or function to call (`_target_`, as Hydra's)."""
    return isinstance(node, DictConfig | dict) and "_target_" in node


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


def hold_model(plain: DictConfig) -> None:
    """In place: the built-in model typed as its schema says (ConfigError names the key), each
    missing key at its default (and a missing update, the manual one); the user's own
    (`model._target_`) without the built-in keys left at their defaults, which mean nothing
    to it. Plain Python, not an OmegaConf merge: it runs for every job of a sweep, twice."""
    if not plain.get("update"):  # a config with no update (the schema's is empty): manual
        plain.update = {"name": UpdateName.manual.value}
    model = plain.model
    if not isinstance(model, DictConfig):  # `model=5`: a value where keys belong
        raise ConfigError(f"model={model} is not allowed: it is a group of keys; set one key in it")
    defaults = {f.name: f.default for f in fields(ModelConfig)}
    if has_target(model):
        for key in [k for k in model if k in defaults and model[k] == defaults[k]]:
            del model[key]
        return
    for key in model:
        if key not in defaults:
            raise ConfigError(unknown_key_message(f"model.{key}"))
    hints = _model_hints()
    for key, default in defaults.items():
        value = model.get(key, default)
        typed = _typed(f"model.{key}", value, hints[key])
        if key not in model or (typed is not value and typed != value):  # added, or converted
            model[key] = typed


@functools.cache
def _model_hints() -> dict[str, Any]:
    return get_type_hints(ModelConfig)


def _typed(key: str, value: Any, hint: Any) -> Any:
    """`value` as the schema's `hint` holds it (an int, a StrEnum's value, a list of ints or
    None), as OmegaConf would convert it; else ConfigError in OmegaConf's words."""
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        if str(value) in {m.value for m in hint}:
            return str(value)
        allowed = f"choose one of {', '.join(m.value for m in hint)}"
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        allowed = "it must be an integer"
    elif value is None:  # list[int] | None
        return None
    else:
        if isinstance(value, list | ListConfig):
            return [_typed(f"{key}[{i}]", v, int) for i, v in enumerate(value)]
        allowed = "it must be a list, e.g. [a,b]"
    raise ConfigError(f"{key}={value} is not allowed: {allowed}")


def _allowed(message: str) -> str:
    """What OmegaConf's type check allows, in a user's words."""
    checks = [
        (r"expected one of \[(.*)\]", lambda m: f"choose one of {m.group(1)}"),
        (r"converted to Integer", lambda m: "it must be an integer"),
        (r"converted to Float", lambda m: "it must be a number"),
        (r"not a valid bool", lambda m: "it must be true or false"),
        (r"is not a ListConfig", lambda m: "it must be a list, e.g. [a,b]"),
        (r"is not Optional", lambda m: "it cannot be null"),
        (r"is not a subclass of (\w+)", lambda m: "it is a group of keys; set one key in it"),
    ]
    for pattern, wording in checks:
        found = re.search(pattern, message)
        if found:
            return wording(found)
    return message


def omegaconf_message(error: OmegaConfBaseException) -> str:
    """One line for OmegaConf's type or key error: the key, the bad value, what is allowed."""
    key = error.full_key or "?"
    text = error.msg or str(error)
    message = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if isinstance(error, ConfigAttributeError | ConfigKeyError) and message.startswith("Key "):
        return unknown_key_message(key)
    if isinstance(error, ValidationError):
        value = "null" if error.value is None else error.value
        return f"{key}={value} is not allowed: {_allowed(message)}"
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
    hold_model(plain)
    if plain.tracking.enabled and not plain.tracking.uri:
        plain.tracking.uri = default_store_uri(launch_dir)
    path = plain.dataset.get("path")
    if path and not str(path).startswith(PACKAGE_PREFIX):
        # A file the user named: absolute, so the recorded config reads it from anywhere.
        plain.dataset.path = str(((launch_dir or Path.cwd()) / Path(path).expanduser()).resolve())
    return plain
