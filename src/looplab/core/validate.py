"""The rules a config must meet before anything runs, beyond its types: unknown keys, ranges,
and what goes with what (a CSV's keys, an optimiser's arguments, the user's own model; the
user's own data, `dataset._target_`, keeps the keys its function takes).

One place, called on every `plain_config` (a run, each job of a sweep before the first, a
recorded config before `looplab reproduce` reruns it); a rule broken is one ConfigError
that names the key, the bad value and what is allowed.
"""

from __future__ import annotations

import functools
from dataclasses import fields, is_dataclass
from typing import Any, get_type_hints

from omegaconf import DictConfig

from looplab.core.errors import ConfigError
from looplab.core.objective import BEST, METRICS, Objective, base_metric
from looplab.core.schema import (
    Impl,
    LooplabConfig,
    Loss,
    ModelConfig,
    UpdateName,
    unknown_key_message,
)

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


_type_hints = functools.cache(get_type_hints)


def _check_keys(node: Any, schema: type, prefix: str = "") -> None:
    """Reject keys outside the schema, e.g. a typo added with `+model.widht=3`."""
    hints = _type_hints(schema)
    for key in node:
        full = f"{prefix}{key}"
        if key not in hints:
            raise ConfigError(unknown_key_message(full))
        # dataset, model and update (typed Any) have their own: `schema.hold_nodes`,
        # `check_update`
        if is_dataclass(hints[key]) and isinstance(node[key], DictConfig):
            _check_keys(node[key], hints[key], f"{full}.")


def validate(cfg: DictConfig) -> None:
    """Check a `plain_config` in one place, before anything runs.

    Types and enums are checked by Hydra against the schema (`plain_config` for the built-in
    model); this adds unknown keys and the ranges a type cannot express.
    """
    _check_keys(cfg, LooplabConfig)
    check_update(cfg["update"], cfg.train)  # cfg.update is DictConfig's own method
    check_model(cfg.model)
    train, dataset = cfg.train, cfg.dataset
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
    _require(0 <= cfg.seed < 2**32, "seed", cfg.seed, "it must be in [0, 2**32)")
    _require(
        0 < dataset.test_size < 1,
        "dataset.test_size",
        dataset.test_size,
        "it must be between 0 and 1, exclusive",
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
    early = train.get("early_stop")
    if early is not None:
        _require(
            early.patience is None or early.patience >= 1,
            "train.early_stop.patience",
            early.patience,
            "it must be >= 1 epochs, or null for no early stop",
        )
        _require(
            early.min_delta >= 0, "train.early_stop.min_delta", early.min_delta, "it must be >= 0"
        )
    metrics = Objective.of(cfg.get("optimized_metric", "val_loss")).metrics
    _require(
        all(base_metric(metric) in METRICS for metric in metrics),
        "optimized_metric",
        cfg.get("optimized_metric"),
        f"it must be one of {', '.join(METRICS)}, each final or with {BEST} (its best value), "
        "or a list of them",
    )
    checkpoint = cfg.get("checkpoint")
    if checkpoint is not None:
        _require(
            checkpoint.every_s is None or checkpoint.every_s > 0,
            "checkpoint.every_s",
            checkpoint.every_s,
            "it must be > 0 seconds, or null for none by time",
        )
        _require(
            checkpoint.every_epochs is None or checkpoint.every_epochs >= 1,
            "checkpoint.every_epochs",
            checkpoint.every_epochs,
            "it must be >= 1, or null for none by count",
        )
    if "_target_" not in dataset:  # your own data's other keys are its function's (parts_of)
        _check_csv_keys(dataset)


def _check_csv_keys(dataset: DictConfig) -> None:
    """A CSV needs its file and target column; a built-in data set takes neither."""
    if dataset.name != "csv":
        _refuse_csv_keys(dataset)
    elif dataset.path is None:
        raise ConfigError("dataset.path is missing: dataset=csv needs dataset.path=FILE.csv")
    elif dataset.target is None:
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
                "dataset.path, target, drop, sep and encoding are for dataset=csv (target and "
                "drop for your own data too: dataset._target_)"
            )


def check_model(model: Any) -> None:
    """The built-in network's ranges; or, for the user's own (`model._target_`, found by the
    Hydra side), that no built-in key is set beside it (`plain_config` drops them unset)."""
    target = model.get("_target_")
    if target is not None:
        for key in BUILTIN_MODEL_KEYS & set(model):
            raise ConfigError(
                f"model.{key}={model[key]} is not allowed: it is for looplab's own network, and "
                f"model._target_={target} is yours (its own keys go beside _target_)"
            )
        return
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
    _require(
        model.loss != Loss.tutorial or model.impl == Impl.manual,
        "model.loss",
        model.loss,
        "the tutorial's clamped loss has no torch.nn twin; use it with model.impl=manual",
    )


# What a user's model (`model._target_`) leaves to looplab: the built-in network's keys.
BUILTIN_MODEL_KEYS = {f.name for f in fields(ModelConfig)}
