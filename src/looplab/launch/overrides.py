"""Overrides -> config: the one place that decides what a `key=value` does to a config.

Hydra composes a config from its defaults list (config groups: `dataset=iris`) and then
applies the command line's values in order. Everything in looplab that applies overrides
without a full Hydra compose goes through here, so the three users (looplab's launcher, the
sweep's whole-sweep check, `looplab reproduce`) apply them exactly as Hydra does:
`split_job` says which overrides are values to merge into a shared composition (and when a
job must be composed whole), and `apply_values` merges them as Hydra merges them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf

from looplab.core.errors import ConfigError
from looplab.core.paths import config_dir


def is_group(key: str) -> bool:
    """Whether `key` names a config group of looplab's `conf/` (`dataset`, `hydra/launcher`)."""
    return (config_dir() / key).is_dir()


def parse(lines: list[str]) -> list[Override]:
    return OverridesParser.create().parse_overrides(lines)


def split_job(
    overrides: list[Override], is_group: Callable[[str], bool]
) -> tuple[list[Override], list[Override]]:
    """A job's overrides as (its values, the rest): the plain `key=value`s, which can be
    merged into a copy of what the rest composes, as Hydra merges them after composing.

    Hydra applies `+key`, `++key`, `~key`, `key@package` and a group given a dict in their
    place among the values, so when one of them comes after a value there are no values to
    merge: the job must be composed whole, from all its overrides. What picks a group's
    config, or sets Hydra's own keys, may stand anywhere. The sweep's check and looplab's
    launcher both split jobs this way.
    """

    def is_value(override: Override) -> bool:
        return (
            override.type == OverrideType.CHANGE
            and override.package is None
            and not override.is_sweep_override()
            and not override.is_hydra_override()
            and not is_group(override.key_or_group)
        )

    def in_order(override: Override) -> bool:
        if override.is_hydra_override():
            return False
        return not is_group(override.key_or_group) or isinstance(override.value(), dict)

    values = [o for o in overrides if is_value(o)]
    if values:
        after = overrides[overrides.index(values[0]) :]
        if any(in_order(o) for o in after if not is_value(o)):
            return [], list(overrides)
    return values, [o for o in overrides if o not in values]


class Compositions:
    """Job configs composed once per combination of their non-value overrides.

    `compose(lines)` is Hydra's compose for the caller (the launcher's config loader, or
    `hydra.compose` for the sweep's check). A job's values are merged into a deep copy of
    the composition its other overrides share (about 3 ms, against 55 ms for a compose); a
    job with no values to merge, or whose value does not fit its key, is composed whole, so
    its config, or its error, is Hydra's own.
    """

    def __init__(
        self, compose: Callable[[list[str]], DictConfig], group: Callable[[str], bool] = is_group
    ) -> None:
        self.compose = compose
        self.is_group = group
        self.shared: dict[tuple[str, ...], DictConfig] = {}

    def job_config(self, lines: list[str]) -> DictConfig:
        values, rest = split_job(parse(lines), self.is_group)
        if not values:
            return self.compose(list(lines))
        key = tuple(o.input_line for o in rest)
        if key not in self.shared:
            self.shared[key] = self.compose(list(key))
        config = copy.deepcopy(self.shared[key])
        try:
            apply_values(config, values)
        except Exception:  # a value that does not fit: Hydra composes it, and says why
            return self.compose(list(lines))
        return config


def apply_values(cfg: DictConfig, values: list[Override]) -> None:
    """Merge a job's values into `cfg` as Hydra merges command-line values after composing:
    in order, a dict merged into the node it names (`model={width:8}`), the struct config
    refusing a key it does not have."""
    for override in values:
        OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True)


def with_overrides(cfg: DictConfig, lines: list[str]) -> DictConfig:
    """A recorded plain config with `key=value` changes, applied as `looplab-train` would.

    As in Hydra, the group choices come first, whatever their place on the line: each
    replaces its group's node by what Hydra composes for that choice (`dataset=iris`); then
    the values are merged in order (`apply_values`). Sweeps, `+key`, `~key`, `key@package`
    and presets (`experiment=...`) are refused: a preset is a fresh start.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import OverrideParseException

    from looplab.core.schema import LooplabConfig
    from looplab.launch.wording import describe
    from looplab.run.config_file import checked

    try:
        overrides = parse(lines)
    except OverrideParseException as error:
        raise ConfigError(f"cannot parse the changes: {describe(error)}") from None
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override() or key.startswith(("+", "~")) or "@" in key:
            raise ConfigError(f"{override.input_line}: only plain key=value changes are allowed")
        if key in ("experiment", "hparams_search") or key.startswith("hydra"):
            raise ConfigError(
                f"{override.input_line}: a preset is a fresh start, not a change: "
                f"looplab-train {override.input_line}"
            )
    groups = [o for o in overrides if is_group(o.key_or_group)]
    values = [o for o in overrides if not is_group(o.key_or_group)]
    try:
        merged = OmegaConf.merge(OmegaConf.structured(LooplabConfig), cfg)
        if groups:
            with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
                chosen = compose("train", overrides=[o.input_line for o in groups])
            for override in groups:
                merged[override.key_or_group] = chosen[override.key_or_group]
        apply_values(merged, values)
    except Exception as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(describe(error)) from None
    return checked(OmegaConf.to_container(merged, resolve=True, enum_to_str=True), "the changes")
