"""A custom optimiser: plain SGD whose step is clipped to `max_step` per parameter, written as
`torch.optim.Optimizer` subclasses are. looplab gives it the parameters and `lr=train.lr`."""

from __future__ import annotations

import torch


class ClippedSGD(torch.optim.Optimizer):
    """p -= clamp(lr * grad, -max_step, max_step)."""

    def __init__(self, params, lr: float, max_step: float = 0.1) -> None:
        super().__init__(params, {"lr": lr, "max_step": max_step})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 (torch's own signature)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p -= (group["lr"] * p.grad).clamp(-group["max_step"], group["max_step"])
