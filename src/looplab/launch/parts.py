"""What a config names by `_target_` (an optimiser, `update._target_`; the user's own network,
`model._target_`), found with Hydra's own `instantiate` on the Hydra side and handed to the
run as `run.prepare.Parts`.

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
from looplab.run.parts import Parts

# What each part is called with, beside its config's own keys.
CALLED_WITH = {"update": ("params", "lr"), "model": ("n_features", "n_outputs")}
# Packages that are looplab's own or its pinned dependencies: no user code to record.
NOT_USER_CODE = ("torch", "looplab", "hydra_plugins")


def parts_of(cfg: DictConfig) -> Parts:
    """The `Parts` of a plain config: each `_target_` found, its arguments checked."""
    found = {}
    for key in CALLED_WITH:
        node = cfg[key]  # cfg.update is DictConfig's own method
        if "_target_" in node:
            found[key] = _partial(key, node)
    if not found:
        return Parts()
    targets = [str(cfg[key]._target_) for key in found]
    return Parts(optimizer=found.get("update"), model=found.get("model"), code=code_record(targets))


def _partial(key: str, node: DictConfig) -> Any:
    """`node._target_` with its config's keys bound, checked against what looplab will call it
    with (`CALLED_WITH`)."""
    target = node._target_
    importable_here()
    try:
        factory = instantiate(node, _partial_=True, _convert_="all")
    except InstantiationException as error:
        example = "torch.optim.RMSprop" if key == "update" else "mypackage.nets.SmallCNN"
        raise ConfigError(
            f"{key}._target_={target} cannot be used: {_why(error)} (a class or function "
            f"such as {example}, importable from the launch directory or an installed package)"
        ) from None
    try:
        signature = inspect.signature(factory.func)
    except (TypeError, ValueError):  # a builtin without a signature: checked at the call
        return factory
    first, second = CALLED_WITH[key]
    try:
        signature.bind(**{first: None, second: 1.0}, **factory.keywords)
    except TypeError as error:
        takes = [n for n in signature.parameters if n not in ("self", first, second)]
        raise ConfigError(
            f"{key}._target_={target} cannot take its arguments ({error}): looplab calls it "
            f"with {first} and {second}, and {key}.* keys for {', '.join(takes) or 'nothing else'}"
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
