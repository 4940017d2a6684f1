"""The parameter update, two ways: by hand under `torch.no_grad()`, or `torch.optim.SGD`;
or any `torch.optim` optimiser a config names by `_target_`.

Both expose `step()` and `zero_grad()`, so the loop reads the same either way. The manual
update does momentum and weight decay by hand, exactly as `torch.optim.SGD` defines them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from looplab.core.errors import ConfigError


class Updater(Protocol):
    def step(self) -> None: ...

    def zero_grad(self) -> None: ...

    def state_dict(self) -> dict: ...  # what a checkpoint keeps (core/checkpoint.py)

    def load_state_dict(self, state: dict) -> None: ...


class ManualUpdate:
    """`p -= lr * p.grad` under `torch.no_grad()`, then zero the gradients by hand.

    With weight decay the gradient first gets `weight_decay * p`; with momentum a velocity
    buffer `v = momentum * v + g` (the raw gradient on the first step) replaces the gradient.
    """

    def __init__(
        self,
        parameters: list[torch.Tensor],
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        self.parameters = list(parameters)
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.velocity: list[torch.Tensor | None] = [None] * len(self.parameters)

    def step(self) -> None:
        with torch.no_grad():
            for index, p in enumerate(self.parameters):
                grad = p.grad
                if self.weight_decay:
                    grad = grad + self.weight_decay * p
                if self.momentum:
                    previous = self.velocity[index]
                    grad = grad.clone() if previous is None else self.momentum * previous + grad
                    self.velocity[index] = grad
                p -= self.lr * grad

    def zero_grad(self) -> None:
        for p in self.parameters:
            if p.grad is not None:
                p.grad.zero_()

    def state_dict(self) -> dict:
        """The momentum buffers (None before the first step), as an optimiser's state."""
        return {"velocity": [None if v is None else v.detach().clone() for v in self.velocity]}

    def load_state_dict(self, state: dict) -> None:
        velocity = state["velocity"]
        if len(velocity) != len(self.parameters):
            raise ConfigError(
                f"the checkpoint has {len(velocity)} momentum buffers for "
                f"{len(self.parameters)} parameters"
            )
        self.velocity = [
            None if v is None else v.to(device=p.device, dtype=p.dtype)
            for v, p in zip(velocity, self.parameters, strict=True)
        ]


# A `torch.optim`-like class with its own arguments bound, called (parameters, lr=...).
OptimizerFactory = Callable[..., torch.optim.Optimizer]


def build_update(
    name: str,
    parameters: list[torch.Tensor],
    *,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    optimizer: OptimizerFactory | None = None,
) -> Updater:
    """The `update=` choice: `manual`, `sgd`, or an optimiser the Hydra side found by its
    `_target_` (`optimizer`, given `train.lr` here); `name` says which for the messages."""
    if optimizer is not None:
        try:
            return optimizer(parameters, lr=lr)
        except (TypeError, ValueError) as error:  # an argument it refuses, e.g. betas=[2, 0]
            raise ConfigError(f"update._target_={name} refused its arguments: {error}") from None
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "manual":
        return ManualUpdate(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ConfigError(
        f"update._target_={name} is found by looplab-train (Hydra's instantiate): pass "
        "its class as `optimizer` here"
    )
