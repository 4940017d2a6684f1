"""The config schema (dataclasses), its range checks, and the plain config a run is given.

Hydra merges `conf/` on top of these dataclasses (see `looplab.launch.schema`), so a wrong
type or an option outside an enum fails at composition time; `validate` adds what a type
cannot express. Neither Hydra nor MLflow is imported here: the core knows OmegaConf only.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, get_type_hints

from omegaconf import MISSING, DictConfig, OmegaConf

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


@dataclass
class LooplabConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # `{name: manual|sgd}` (UpdateConfig), or `{_target_: torch.optim.CLASS, ...its arguments}`:
    # empty here, so that the chosen `update=` file is the whole node.
    update: Any = field(default_factory=dict)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 42


def hidden_widths(width: int, hidden: Sequence[int] | None = None) -> list[int]:
    """The hidden layers' widths: `model.hidden` when given (any number of layers), else the
    tutorial's `model.width`: one hidden layer, or none (the single neuron) for width 0."""
    if hidden is not None:
        return [int(w) for w in hidden]
    return [width] if width > 0 else []


def update_name(update: Any) -> str:
    """What the update is, for params and names: `manual`, `sgd`, or the optimiser's class."""
    return str(update.get("_target_") or update.get("name"))


# The keys a `_target_` update may not set: looplab passes them itself.
PASSED_BY_LOOPLAB = {"lr": "train.lr is its learning rate", "params": "looplab passes the model's"}


def check_update(update: Any, train: Any) -> None:
    """`update`: a built-in (`name`: manual or sgd) or a `torch.optim`-like class (`_target_`,
    its arguments beside it; the Hydra side finds it). `train.momentum` and
    `train.weight_decay` belong to the built-ins: an optimiser takes its own as update.*."""
    choose = (
        "choose one of manual, sgd, or an optimiser: update=adam, update=adamw, "
        "update=optim update._target_=torch.optim.CLASS"
    )
    target = update.get("_target_")
    if target is None:
        _require(update.get("name") in set(UpdateName), "update.name", update.get("name"), choose)
        for key in update:
            if key != "name":
                raise ConfigError(
                    f"unknown key update.{key}: update={update.name} has only update.name; an "
                    "optimiser's own arguments go beside update._target_ (update=optim)"
                )
        return
    for key, why in PASSED_BY_LOOPLAB.items():
        _require(key not in update, f"update.{key}", update.get(key), why)
    _require(
        "name" not in update,
        "update.name",
        update.get("name"),
        f"update._target_={target} is the update",
    )
    for key, unset in (("momentum", 0.0), ("weight_decay", 0.0)):
        value = train[key]
        _require(
            value == unset,
            f"train.{key}",
            value,
            f"it is for update=manual and update=sgd; {target} takes its own arguments as "
            f"update.* keys (+update.{key}={value})",
        )


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value} is not allowed: {allowed}")


def _schema_of(key: str) -> type | None:
    """The dataclass that holds `key` (`model.width` -> ModelConfig), or None if none does."""
    schema: type = LooplabConfig
    for part in key.split(".")[:-1]:
        if not is_dataclass(schema):
            return None
        hints = get_type_hints(schema)
        if part not in hints or not is_dataclass(hints[part]):
            return None
        schema = hints[part]
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


_type_hints = functools.cache(get_type_hints)


def _check_keys(node: Any, schema: type, prefix: str = "") -> None:
    """Reject keys outside the schema, e.g. a typo added with `+model.widht=3`."""
    hints = _type_hints(schema)
    for key in node:
        full = f"{prefix}{key}"
        if key not in hints:
            raise ConfigError(unknown_key_message(full))
        if is_dataclass(hints[key]) and isinstance(node[key], DictConfig):
            _check_keys(node[key], hints[key], f"{full}.")


def validate(cfg: DictConfig) -> None:
    """Check a `plain_config` in one place, before anything runs.

    Types and enums are checked by Hydra against the schema; this adds unknown keys and the
    ranges a type cannot express. Raise ConfigError naming the key, the bad value and what
    is allowed.
    """
    _check_keys(cfg, LooplabConfig)
    check_update(cfg["update"], cfg.train)  # cfg.update is DictConfig's own method
    train, model, dataset = cfg.train, cfg.model, cfg.dataset
    _require(train.lr > 0, "train.lr", train.lr, "it must be > 0")
    _require(train.epochs >= 1, "train.epochs", train.epochs, "it must be >= 1")
    _require(
        train.batch_size is None or train.batch_size >= 1,
        "train.batch_size",
        train.batch_size,
        "it must be >= 1, or null for full batch",
    )
    _require(0 <= train.momentum < 1, "train.momentum", train.momentum, "it must be in [0, 1)")
    _require(train.weight_decay >= 0, "train.weight_decay", train.weight_decay, "it must be >= 0")
    _require(train.print_every >= 0, "train.print_every", train.print_every, "it must be >= 0")
    _require(
        train.threads is None or train.threads >= 1,
        "train.threads",
        train.threads,
        "it must be >= 1, or null for the CPUs the job was given",
    )
    _require(model.width >= 0, "model.width", model.width, "it must be >= 0 (0 = one neuron)")
    if model.hidden is not None:
        shown = f"[{','.join(map(str, model.hidden))}]"
        _require(
            all(w >= 1 for w in model.hidden),
            "model.hidden",
            shown,
            "every hidden layer's width must be >= 1 ([] for no hidden layer)",
        )
        _require(
            model.width == 0,
            "model.hidden",
            shown,
            f"it gives every hidden layer's width, and model.width={model.width} gives one: "
            "set one of them (model.width=0 with model.hidden)",
        )
    _require(0 <= cfg.seed < 2**32, "seed", cfg.seed, "it must be in [0, 2**32)")
    _require(
        0 < dataset.test_size < 1,
        "dataset.test_size",
        dataset.test_size,
        "it must be between 0 and 1, exclusive",
    )
    _require(
        model.loss != Loss.tutorial or model.impl == Impl.manual,
        "model.loss",
        model.loss,
        "the tutorial's clamped loss has no torch.nn twin; use it with model.impl=manual",
    )
    _require(
        bool(cfg.tracking.experiment),
        "tracking.experiment",
        "''",
        "it must name an MLflow experiment",
    )
    _require(
        cfg.tracking.wait_s >= 0,
        "tracking.wait_s",
        cfg.tracking.wait_s,
        "it must be >= 0 seconds (0 = do not wait for a store that is away)",
    )
    if dataset.name != "csv":
        _refuse_csv_keys(dataset)
    else:
        if dataset.path is None:
            raise ConfigError("dataset.path is missing: dataset=csv needs dataset.path=FILE.csv")
        if dataset.target is None:
            raise ConfigError("dataset.target is missing: dataset=csv needs dataset.target=COLUMN")


# The keys that only `dataset=csv` reads, with the value that means "not set".
CSV_ONLY_KEYS = {"path": None, "target": None, "drop": [], "sep": ",", "encoding": "utf-8"}


def _refuse_csv_keys(dataset: DictConfig) -> None:
    """A built-in data set ignores the CSV keys: refuse them rather than ignore them silently."""
    for key, unset in CSV_ONLY_KEYS.items():
        value = dataset.get(key)
        if value is not None and value != unset and not (unset == [] and len(value) == 0):
            shown = f"[{','.join(map(str, value))}]" if key == "drop" else value
            raise ConfigError(
                f"dataset.{key}={shown} is not allowed: dataset={dataset.name} is built in; "
                "dataset.path, target, drop, sep and encoding are for dataset=csv"
            )


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
    if plain.tracking.enabled and not plain.tracking.uri:
        plain.tracking.uri = default_store_uri(launch_dir)
    path = plain.dataset.get("path")
    if path and not str(path).startswith(PACKAGE_PREFIX):
        # A file the user named: absolute, so the recorded config reads it from anywhere.
        plain.dataset.path = str(((launch_dir or Path.cwd()) / Path(path).expanduser()).resolve())
    return plain
