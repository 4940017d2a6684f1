"""The config schema, its checks, and the helpers that turn a config into plain values.

Hydra merges `conf/` on top of the dataclasses below, so a wrong type or an option that
is not in an enum fails at composition time, before anything runs. `validate` adds the
range checks that a type cannot express. This module knows OmegaConf but not Hydra's
entry point, so tests can compose configs with `initialize`/`compose` and reuse it.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from looplab.errors import ConfigError
from looplab.tracking.store import default_store_uri

RESOURCES = Path(__file__).parent / "resources"
# How a config names a file packaged with looplab (Hydra's own `pkg://` form): the same text on
# every machine, where a site-packages path is not.
PACKAGE_PREFIX = "pkg://"
RESOURCE_PACKAGE = "looplab.resources"


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
    activation: Activation = Activation.relu
    impl: Impl = Impl.manual
    init: Init = Init.default
    loss: Loss = Loss.logits


@dataclass
class UpdateConfig:
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
    update: UpdateConfig = field(default_factory=UpdateConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 42


def register() -> None:
    """Make the schema and the `${looplab.resource:...}` resolver known to Hydra and OmegaConf."""
    ConfigStore.instance().store(name="looplab_schema", node=LooplabConfig)
    if not OmegaConf.has_resolver("looplab.resource"):
        OmegaConf.register_new_resolver("looplab.resource", resource_uri)


def resource_uri(name: str) -> str:
    """`pkg://looplab.resources/NAME`: a packaged file as a config names it, on any machine."""
    return f"{PACKAGE_PREFIX}{RESOURCE_PACKAGE}/{name}"


def config_dir() -> Path:
    """`conf/` as packaged in the wheel, or the source tree's `conf/` in an editable install."""
    packaged = Path(__file__).parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf"


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
    return (
        f"unknown key {key}: {hint}{where} only {', '.join(known)} "
        "(a new key must first be added to the schema in looplab/config.py)"
    )


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


def _safe_dumper() -> type:
    """libyaml's safe dumper where PyYAML has it (a sweep writes a config a job), else PyYAML's."""
    import yaml

    return getattr(yaml, "CSafeDumper", yaml.SafeDumper)


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


def identity(cfg: DictConfig) -> str:
    """A digest of what a run trains: the resolved config less its tracking settings.

    Two runs with the same identity and the same data digest train the same thing; a sweep
    with `tracking.skip_finished=true` skips a job whose identity a FINISHED run shares.
    """
    import hashlib
    import json

    document = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    document.pop("tracking", None)
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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

    `model.activation` is left out of a width-0 model, which has no hidden layer to activate.
    """
    flat = flatten(cfg)
    if cfg.model.width == 0:
        flat.pop("model.activation", None)
    return flat


def data_name(cfg: DictConfig) -> str:
    """The data set as a user knows it: a built-in's name, or a CSV file's stem."""
    if cfg.dataset.name == "csv" and cfg.dataset.path:
        return Path(str(cfg.dataset.path)).stem
    return str(cfg.dataset.name)


# Keys that say where a run is recorded or how it prints, not what it trains: never in a name.
UNNAMED_PREFIXES = ("tracking.", "train.print_", "train.threads")


def differences(cfg: DictConfig, baseline: DictConfig) -> list[str]:
    """Short `key=value` words for each value of `cfg` that differs from `baseline`.

    A group's choice (`update.name`, `device.name`) is its value alone (`sgd`), a CSV path its
    file's stem, any other key its last part (`width=8`, `lr=0.05`).
    """
    ours, theirs = params(cfg), flatten(baseline)
    words = []
    for key, value in ours.items():
        if key.startswith(UNNAMED_PREFIXES) or theirs.get(key) == value:
            continue
        if key == "dataset.path":
            words.append(data_name(cfg))
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


# The packages whose classes a recorded config may name as `_target_`: looplab's own.
OWN_PACKAGES = ("looplab.", "hydra_plugins.looplab_")


def from_record(text: str, source: str = "config.yaml") -> DictConfig:
    """A run's recorded `config.yaml`, read as data, never as code, as a plain config.

    Plain YAML only (`yaml.safe_load`: no Python tags); no `${...}` interpolations outside its
    `hydra` part (a recorded config is resolved); no `_target_` outside looplab's own packages;
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
        if where.endswith("_target_") and not str(value).startswith(OWN_PACKAGES):
            raise ConfigError(
                f"{source} names an import target outside looplab ({where}={value}): refused, "
                "a run's artifacts are data, never code"
            )
        if isinstance(value, str) and "${" in value and not where.startswith("hydra."):
            raise ConfigError(
                f"{source} holds an interpolation ({where}={value}): refused, a recorded "
                "config is resolved"
            )
    body = {key: value for key, value in document.items() if key not in ("defaults", "hydra")}
    return _checked(body, source)


def _checked(body: dict[str, Any], source: str) -> DictConfig:
    """`body` merged onto the schema (its types and keys), as a validated plain config."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(LooplabConfig), body)
    except OmegaConfBaseException as error:
        message = str(error).strip().splitlines()[0]
        raise ConfigError(
            f"{source} does not match looplab's schema at {error.full_key or '?'}: {message}"
        ) from None
    plain = OmegaConf.create(OmegaConf.to_container(merged, resolve=True, enum_to_str=True))
    validate(plain)
    return plain


def with_overrides(cfg: DictConfig, lines: list[str]) -> DictConfig:
    """A plain config with `key=value` changes, as a user types them on the command line.

    `model.width=8` sets one key (Hydra's value grammar: `[a,b]`, `null`, quotes); a group's
    choice (`update=sgd`, `dataset=iris`) replaces that group with the schema's defaults and
    that option's file. Sweeps, `+`/`~` and presets (`experiment=...`) are refused: a preset
    is a fresh start, `looplab-train experiment=NAME`.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    document = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    try:
        overrides = OverridesParser.create().parse_overrides(lines)
    except OverrideParseException as error:
        first = str(error).strip().splitlines()[0]
        raise ConfigError(f"cannot parse the changes: {first}") from None
    for line, override in zip(lines, overrides, strict=True):
        key = override.get_key_element()
        if override.is_sweep_override() or key.startswith(("+", "~")) or "@" in key:
            raise ConfigError(f"{line}: only plain key=value changes are allowed here")
        value = override.value()
        group = config_dir() / key
        if key == "experiment":
            raise ConfigError(
                f"{line}: a preset is a fresh start, not a change: looplab-train {line}"
            )
        if "." not in key and group.is_dir():
            option = group / f"{value}.yaml"
            if not option.is_file():
                options = sorted(p.stem for p in group.glob("*.yaml"))
                raise ConfigError(
                    f"{key}={value} is not an option; choose one of {', '.join(options)}"
                )
            chosen = OmegaConf.to_container(OmegaConf.load(option), resolve=False)
            chosen.pop("defaults", None)
            document[key] = chosen
            continue
        if _schema_of(key) is None or key.rsplit(".", 1)[-1] not in {
            f.name for f in fields(_schema_of(key))
        }:
            raise ConfigError(unknown_key_message(key))
        node = document
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return _checked(document, "the changed config")


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every (dotted key, value) of a plain YAML document, lists included."""
    if isinstance(node, dict):
        items = [(f"{prefix}.{key}" if prefix else str(key), value) for key, value in node.items()]
    elif isinstance(node, list):
        items = [(f"{prefix}[{index}]", value) for index, value in enumerate(node)]
    else:
        return [(prefix, node)]
    return [leaf for key, value in items for leaf in _leaves(value, key)]
