"""What a config names by `_target_` (today: an optimiser, `update._target_`), found with
Hydra's own `instantiate` on the Hydra side and handed to the run as `run.prepare.Parts`.

Found before anything runs (a job, and every job of a sweep in its whole-sweep check), so
a target that is not there, or an argument it does not take, is one line and no run.
"""

from __future__ import annotations

import inspect
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from looplab.core.errors import ConfigError
from looplab.run.prepare import Parts


def parts_of(cfg: DictConfig) -> Parts:
    """The `Parts` of a plain config: each `_target_` found, its arguments checked."""
    update = cfg["update"]  # cfg.update is DictConfig's own method
    if "_target_" not in update:
        return Parts()
    return Parts(optimizer=_optimizer(update))


def _optimizer(update: DictConfig) -> Any:
    """`update._target_` with its arguments bound: called later with (parameters, lr=...)."""
    target = update._target_
    try:
        factory = instantiate(update, _partial_=True, _convert_="all")
    except InstantiationException as error:
        raise ConfigError(
            f"update._target_={target} cannot be used: {_why(error)} (a torch.optim class such "
            "as torch.optim.RMSprop, or one importable from your own package)"
        ) from None
    try:
        signature = inspect.signature(factory.func)
    except (TypeError, ValueError):  # a builtin without a signature: torch checks at the call
        return factory
    try:
        signature.bind([], lr=1.0, **factory.keywords)
    except TypeError as error:
        takes = [n for n in signature.parameters if n not in ("self", "params", "lr")]
        raise ConfigError(
            f"update._target_={target} does not take these arguments ({error}): it takes "
            f"{', '.join(takes) or 'none but the parameters and lr'}"
        ) from None
    return factory


def _why(error: InstantiationException) -> str:
    """Hydra's reason in one line: its last ("Are you sure that 'Adamm' is importable from
    module 'torch.optim'?"), or its first where there is no cause ("Expected a callable")."""
    if error.__cause__ is None:
        return str(error).split(",")[0]
    lines = [line.strip() for line in str(error.__cause__).splitlines() if line.strip()]
    return lines[-1] if lines else type(error.__cause__).__name__
