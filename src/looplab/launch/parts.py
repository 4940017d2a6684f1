"""What a config names by `_target_` (an optimiser, `update._target_`; the user's own network,
`model._target_`; the user's own data, `dataset._target_`), found with Hydra's own
`instantiate` on the Hydra side and handed to the run as `run.parts.Parts`.

Found before anything runs (a job, and every job of a sweep in its whole-sweep check), so a
target that is not there, or an argument it does not take, is one line and no run. The
launch directory is importable, as `python -m` makes the current one: a user's package
beside their configs needs no install. Each user package a run uses is recorded by a
digest of its sources (`code_record`), so that `looplab reproduce` can say it changed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import inspect
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from looplab.core.errors import ConfigError
from looplab.core.paths import importable_here
from looplab.core.schema import target_arguments
from looplab.run.parts import Parts

# What each part is called with, beside its config's own keys.
CALLED_WITH = {
    "update": ("params", "lr"),
    "model": ("n_features", "n_outputs"),
    "dataset": (),
}
# What each part may be, for a message that names a target that cannot be used.
EXAMPLES = {
    "update": "torch.optim.RMSprop",
    "model": "mypackage.nets.SmallCNN",
    "dataset": "mypackage.data.load_table",
}
# What else a message about a part's arguments says.
NOTES = {"dataset": " (dataset.name, target, drop, task, test_size and missing are looplab's)"}
# Packages that are looplab's own or its pinned dependencies: no user code to record.
NOT_USER_CODE = ("torch", "looplab", "hydra_plugins", "sklearn", "pandas", "numpy")


def parts_of(cfg: DictConfig) -> Parts:
    """The `Parts` of a plain config: each `_target_` found, its arguments checked."""
    found = {key: _partial(key, cfg[key]) for key in CALLED_WITH if "_target_" in cfg[key]}
    if not found:
        return Parts()
    return Parts(
        optimizer=found.get("update"),
        model=found.get("model"),
        data=found.get("dataset"),
        code=code_record(targets(cfg)),
    )


def targets(cfg: DictConfig) -> list[str]:
    """Every `_target_` a plain config names (`cfg[key]`: cfg.update is DictConfig's method)."""
    return [str(cfg[key]._target_) for key in CALLED_WITH if "_target_" in cfg[key]]


def _partial(key: str, node: DictConfig) -> Any:
    """`node._target_` with its arguments bound (`target_arguments`), checked against what
    looplab will call it with (`CALLED_WITH`)."""
    target = node._target_
    importable_here()
    try:
        factory = instantiate(
            {"_target_": target, **target_arguments(key, node)}, _partial_=True, _convert_="all"
        )
    except InstantiationException as error:
        raise ConfigError(
            f"{key}._target_={target} cannot be used: {_why(error)} (a class or function such "
            f"as {EXAMPLES[key]}, importable from the launch directory or an installed package)"
        ) from None
    try:
        signature = inspect.signature(factory.func)
    except (TypeError, ValueError):  # a builtin without a signature: checked at the call
        return factory
    called = CALLED_WITH[key]
    try:
        signature.bind(**dict.fromkeys(called), **factory.keywords)
    except TypeError as error:
        takes = [n for n in signature.parameters if n not in ("self", *called)]
        first = f"{' and '.join(called)}, and " if called else ""
        raise ConfigError(
            f"{key}._target_={target} cannot take its arguments ({error}): looplab calls it "
            f"with {first}{key}.* keys for {', '.join(takes) or 'nothing else'}{NOTES.get(key, '')}"
        ) from None
    return factory


def _why(error: InstantiationException) -> str:
    """Hydra's reason in one line: its last ("Are you sure that 'Adamm' is importable from
    module 'torch.optim'?"), or its first where there is no cause ("Expected a callable")."""
    if error.__cause__ is None:
        return str(error).split(",")[0]
    lines = [line.strip() for line in str(error.__cause__).splitlines() if line.strip()]
    return lines[-1] if lines else type(error.__cause__).__name__


def code_record(targets: list[str]) -> dict[str, str]:
    """{package: "sha256:<digest of its .py sources> <version>"} for each user package the
    targets name: what `looplab reproduce` compares to say the code changed since."""
    record = {}
    importable_here()
    for package in sorted({t.split(".")[0] for t in targets} - set(NOT_USER_CODE)):
        try:
            module = importlib.import_module(package)
        except ImportError:
            record[package] = "not importable here"
            continue
        files = sorted(Path(p) for p in getattr(module, "__path__", []))
        sources = [f for folder in files for f in sorted(folder.rglob("*.py"))]
        if not sources and getattr(module, "__file__", None):
            sources = [Path(module.__file__)]
        digest = hashlib.sha256()
        for source in sources:
            digest.update(source.name.encode() + b"\0" + source.read_bytes())
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            version = "not installed"
        record[package] = f"sha256:{digest.hexdigest()[:16]} {version}"
    return record
