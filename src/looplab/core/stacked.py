"""Train several same-shaped runs as one: `fit`'s steps, with every tensor given a leading
dimension of K members (issue #21's engine; the launcher that feeds it is yet to come).

Each member keeps what it has alone: its own network's parameters (leaf tensors, stacked
afresh each step, so their gradients are its own), its own update (`ManualUpdate` or
`torch.optim.SGD`, with its own learning rate, momentum and weight decay, stepped as
alone), its own data split and its own shuffle generator, and its own callbacks. Only the
forward pass, the loss and the backward pass run batched (`torch.func.vmap`). A member that
diverges, or whose callback ends it (early stopping, a pruner), leaves the stack after that
epoch; the others go on untouched: members share no arithmetic.
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from looplab.core.data import DeviceData
from looplab.core.errors import DivergedError
from looplab.core.loop import EpochCallback, EpochResult, batch_weights
from looplab.core.model import MySimpleNN
from looplab.core.update import Updater

Tensor = torch.Tensor


@dataclass
class Member:
    """One run of a stack: what `loop.fit` takes, and how it ended."""

    model: Callable[[Tensor], Tensor]
    loss: Callable[[Tensor, Tensor], Tensor]
    update: Updater
    data: DeviceData
    quality: Callable[[Tensor, Tensor], Tensor]
    quality_name: str
    generator: torch.Generator | None
    callbacks: Sequence[EpochCallback] = ()
    history: list[EpochResult] = field(default_factory=list)
    ended: BaseException | None = None  # DivergedError, or what a callback raised

    def parameters(self) -> list[Tensor]:
        model = self.model
        return model.parameters() if isinstance(model, MySimpleNN) else list(model.parameters())  # type: ignore[attr-defined]


def shapes(member: Member) -> tuple:
    """What must agree for members to share a stack: the network's kind, activation and
    parameter shapes, and the data's shapes and dtype."""
    model = member.model
    kind = ("manual", model.activation) if isinstance(model, MySimpleNN) else ("module", str(model))
    data = member.data
    tensors = (data.x_train, data.y_train, data.x_val, data.y_val)
    return (
        kind,
        tuple(tuple(p.shape) for p in member.parameters()),
        tuple((tuple(t.shape), t.dtype, t.device) for t in tensors),
    )


def _forward(member: Member) -> Callable[[list[Tensor], Tensor], Tensor]:
    """One member's forward pass as a function of its parameters, for `vmap`."""
    model = member.model
    if isinstance(model, MySimpleNN):
        activation = model.activation

        def by_hand(params: list[Tensor], x: Tensor) -> Tensor:
            *hidden, w_out, b_out = params
            for weights, bias in zip(hidden[::2], hidden[1::2], strict=True):
                x = activation(torch.matmul(x, weights) + bias)
            return torch.matmul(x, w_out) + b_out

        return by_hand
    assert isinstance(model, nn.Module)
    names = [name for name, _ in model.named_parameters()]

    def module(params: list[Tensor], x: Tensor) -> Tensor:
        return functional_call(model, dict(zip(names, params, strict=True)), (x,))

    return module


class Stack:
    """The members still training, their data stacked once (K x rows x features)."""

    def __init__(self, members: Sequence[Member]) -> None:
        first = shapes(members[0])
        if any(shapes(m) != first for m in members[1:]):
            raise ValueError("a stack's members must share their network's and data's shapes")
        self.members = list(members)
        self.forward = vmap(_forward(members[0]))
        self.loss = vmap(members[0].loss)
        self.quality = vmap(members[0].quality)
        self._stack_data()

    def _stack_data(self) -> None:
        def stacked(name: str) -> Tensor:
            return torch.stack([getattr(m.data, name) for m in self.members])

        self.x, self.y = stacked("x_train"), stacked("y_train")
        self.x_val, self.y_val = stacked("x_val"), stacked("y_val")

    def drop(self, gone: Sequence[Member]) -> None:
        if gone:
            self.members = [m for m in self.members if m not in gone]
            if self.members:
                self._stack_data()

    def params(self) -> list[Tensor]:
        """Each parameter of every member, stacked: gradients flow back to each member's own."""
        per_member = [m.parameters() for m in self.members]
        return [torch.stack(group) for group in zip(*per_member, strict=True)]

    def batches(self, batch_size: int | None) -> list[tuple[Tensor, Tensor]]:
        """Each member's batch of its own shuffle, side by side (K x batch x features)."""
        rows = self.x.shape[1]
        if batch_size is None or batch_size >= rows:
            return [(self.x, self.y)]
        orders = torch.stack(
            [
                torch.randperm(rows, device=self.x.device, generator=m.generator)
                for m in self.members
            ]
        )
        k = torch.arange(len(self.members), device=self.x.device)[:, None]
        out = []
        for start in range(0, rows, batch_size):
            index = orders[:, start : start + batch_size]
            out.append((self.x[k, index], self.y[k, index]))
        return out


def fit_stacked(members: Sequence[Member], *, epochs: int, batch_size: int | None = None) -> None:
    """Train every member to epoch `epochs`, as `loop.fit` trains each alone: the same
    steps, the same numbers (to the rounding of batched arithmetic). Each member's epochs go
    to its `history` and its callbacks; one that diverges or whose callback raises ends
    there (`ended`), and leaves the stack."""
    stack = Stack(members)
    weights = batch_weights(stack.x.shape[1], batch_size)
    for epoch in range(1, epochs + 1):
        if not stack.members:
            return
        batch_losses = []
        for x, y in stack.batches(batch_size):
            y_pred = stack.forward(stack.params(), x)  # 1. forward pass, every member
            losses = stack.loss(y_pred, y)  # 2. each member's loss
            losses.sum().backward()  # 3. backward: each member's gradients are its own
            for member in stack.members:
                member.update.step()  # 4. each member's own update
                member.update.zero_grad()  # 5. zero its gradients
            batch_losses.append(losses.detach())

        with torch.no_grad():
            val_pred = stack.forward(stack.params(), stack.x_val)
            val_loss = stack.loss(val_pred, stack.y_val)
            val_quality = stack.quality(val_pred, stack.y_val)
        # 6. read the numbers: one host synchronisation for the whole stack
        numbers = torch.stack([*batch_losses, val_loss, val_quality]).T.tolist()
        now = int(time.time() * 1000)
        gone = []
        for member, (*losses, val_value, quality_value) in zip(stack.members, numbers, strict=True):
            train_value = sum(map(operator.mul, losses, weights))
            metrics = {
                "train_loss": train_value,
                "val_loss": val_value,
                member.quality_name: quality_value,
            }
            if not math.isfinite(train_value + val_value + quality_value):
                name = next(n for n, v in metrics.items() if not math.isfinite(v))
                member.ended = DivergedError(epoch, metrics[name], name)
                gone.append(member)
                continue
            result = EpochResult(epoch=epoch, metrics=metrics, timestamp_ms=now)
            member.history.append(result)
            try:
                for callback in member.callbacks:
                    callback(result)
            except Exception as error:  # its run ends here; the others go on
                member.ended = error
                gone.append(member)
        stack.drop(gone)


@dataclass
class Trained:
    """What a member's stack trained, for its run to record as its own (`replay`): its
    epochs, how it ended, the size of its stack, and what the stack prepared and trained for
    it (run.prepare.Prepared: its network holds its final weights; not prepared again)."""

    history: list[EpochResult]
    ended: BaseException | None
    stack_size: int
    ready: Any


def replay(trained: Trained, callbacks: Sequence[EpochCallback], progress: object = None) -> None:
    """Hand a stacked member's epochs to its run's callbacks, as `loop.fit` would have (its
    network already holds its final weights: model.pt, early stopping's best), and end as
    it ended: a diverged member's DivergedError, a pruned one's word, after its last epoch."""
    for result in trained.history:
        if progress is not None:
            progress.epoch_done(result.epoch)  # type: ignore[attr-defined]
        for callback in callbacks:
            callback(result)
    if trained.ended is not None:
        raise trained.ended
