"""What a run is called and what it records as params: plain values from a plain config."""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from looplab.core.schema import has_target, hidden_widths


def identity(cfg: DictConfig) -> str:
    """A digest of what a run trains: the resolved config less how it is kept (tracking,
    checkpoints).

    Two runs with the same identity and the same data digest train the same thing; a sweep
    with `tracking.skip_finished=true` skips a job whose identity a FINISHED run shares.
    """
    document = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    document.pop("tracking", None)
    document.pop("checkpoint", None)
    if (document["train"].get("early_stop") or {}).get("patience") is None:
        document.pop("optimized_metric", None)  # it decides nothing about training then
    if document["model"].get("hidden") is None:  # unset: the identity runs had before it
        document["model"].pop("hidden", None)
    if (document["train"].get("early_stop") or {}).get("patience") is None:  # off: the same
        document["train"].pop("early_stop", None)
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def flatten(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as dotted keys (`model.width`), the shape MLflow params take."""
    flat: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            flat[prefix] = str(node.value if isinstance(node, Enum) else node)

    walk(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "")
    return flat


def params(cfg: DictConfig) -> dict[str, str]:
    """The MLflow params of a run: the flattened config, less keys that do nothing in it.

    `model.activation` is left out of a model with no hidden layer to activate, and an unset
    `model.hidden` (the tutorial's `model.width` says the one hidden layer).
    """
    flat = flatten(cfg)
    if has_target(cfg.model):  # the user's own network: its keys are all its own
        return flat
    if not hidden_widths(cfg.model.width, cfg.model.hidden):
        flat.pop("model.activation", None)
    if cfg.model.get("hidden") is None:
        flat.pop("model.hidden", None)
    return flat


def data_name(cfg: DictConfig) -> str:
    """The data set as a user knows it: a built-in's name, a CSV file's stem, or the name of
    your own (`dataset.name`, by default its function's)."""
    dataset = cfg.dataset
    if dataset.name == "csv" and dataset.get("path") and not has_target(dataset):
        return Path(str(dataset.path)).stem
    return str(dataset.name)


# Keys that say where a run is recorded or how it prints, not what it trains: never in a name.
UNNAMED_PREFIXES = ("tracking.", "checkpoint.", "optimized_metric", "train.print_", "train.threads")


def differences(cfg: DictConfig, baseline: DictConfig) -> list[str]:
    """Short `key=value` words for each value of `cfg` that differs from `baseline`.

    A group's choice (`update.name`, `device.name`) is its value alone (`sgd`), an optimiser
    its class (`Adam`), a CSV path its file's stem and your own data its name, any other key
    its last part (`width=8`). The keys of a part of yours (`_target_`) are params only.
    """
    ours, theirs = params(cfg), flatten(baseline)
    words = []
    for key, value in ours.items():
        if key.startswith(UNNAMED_PREFIXES) or theirs.get(key) == value:
            continue
        if f"{key.split('.')[0]}._target_" in ours and not key.endswith("._target_"):
            continue
        if key in ("dataset.path", "dataset._target_"):
            words.append(data_name(cfg))
        elif key.endswith("._target_"):  # an optimiser, a network: its class
            words.append(value.rsplit(".", 1)[-1])
        elif key.endswith(".name"):
            words.append(value)
        else:
            words.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return words


def run_name(cfg: DictConfig, baseline: DictConfig | None = None, preset: str | None = None) -> str:
    """A name that tells runs apart: the preset (or the data set), then what differs.

    `baseline` is the config the run would have had with no overrides (the preset alone);
    `breast_cancer width=32 sgd lr=0.05`, `seed`, `seed epochs=50`, `digits impl=module`.
    """
    base = preset or data_name(cfg)
    if baseline is None:
        return base
    words = differences(cfg, baseline)
    if preset is None:  # the base already says which data set
        words = [w for w in words if w not in (cfg.dataset.name, data_name(cfg))]
    return " ".join([base, *words])
