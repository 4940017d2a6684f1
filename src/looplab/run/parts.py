"""`Parts`: what a config names by `_target_`, found by the Hydra side (`launch/parts.py`) and
handed down to `prepare`, so that the run and the core never import Hydra.

Its own module, free of torch: `looplab-train` imports it before torch, whose import the
MLflow writer's start-up overlaps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Parts:
    """The user's parts, as factories: each called by `prepare` with what it needs."""

    optimizer: Callable[..., Any] | None = None  # called (parameters, lr=train.lr)
    model: Callable[..., Any] | None = None  # called (n_features=, n_outputs=): an nn.Module
    data: Callable[[], Any] | None = None  # called (): a DataFrame, or (features, target)
    code: dict[str, str] = field(default_factory=dict)  # user package -> digest and version
