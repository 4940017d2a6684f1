"""Train several same-shaped runs as one: `fit`'s steps, with every tensor given a leading
dimension of K members (issue #21's engine; `hydra/launcher=stacked` feeds it).

Each member keeps what it has alone: its own parameters (views of its row of the stack's
stacked leaves, so the gradients of the summed loss are its own), its own update rule and
settings (`ManualUpdate`, `torch.optim.SGD` with its own learning rate, momentum and weight
decay, or an optimiser of your own), its own data split and shuffle generator, and its own
callbacks. The forward pass, the loss and the backward pass run batched (`torch.func.vmap`);
members whose updates are the same elementwise rule with the same settings step as one over
their rows (each number's update reads only its own gradient and state, so this is the
update each would take alone), any other member with its own update. A member that
diverges, or whose callback ends it (early stopping, a pruner), leaves the stack after that
epoch; the others go on untouched: members share no arithmetic.
"""

from __future__ import annotations

import inspect
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
from looplab.core.update import ManualUpdate, Updater

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


# Optimisers whose rule is elementwise (each number's update reads only its own gradient and
# state): members with equal settings step as one over their rows of the stack.
ELEMENTWISE = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


def _together(update: Updater) -> str | None:
    """What members must share to step as one (their update's kind and settings, written
    out: sorted and compared alike); None: a fresh update of another kind, or one that has
    state already, steps alone."""
    if isinstance(update, ManualUpdate):
        if any(v is not None for v in update.velocity):
            return None
        return repr(("manual", update.lr, update.momentum, update.weight_decay))
    if type(update) in ELEMENTWISE and len(update.param_groups) == 1 and not update.state:  # type: ignore[attr-defined]
        return repr((type(update).__qualname__, sorted(_settings(update).items())))
    return None


def _settings(update: Any) -> dict[str, Any]:
    return {k: v for k, v in update.param_groups[0].items() if k != "params"}


def _update_like(update: Updater, tensors: list[Tensor]) -> Updater:
    """A fresh update of `update`'s kind and settings, over `tensors`: built from the
    settings its class takes, then given its group's every setting (AdamW's group holds one,
    `decoupled_weight_decay`, that its constructor does not take)."""
    if isinstance(update, ManualUpdate):
        return ManualUpdate(tensors, update.lr, update.momentum, update.weight_decay)
    settings = _settings(update)
    taken = inspect.signature(type(update)).parameters
    fresh = type(update)(tensors, **{k: v for k, v in settings.items() if k in taken})  # type: ignore[call-arg]
    fresh.param_groups[0].update(settings)
    return fresh


def _rows_of(state: Any, keep: list[int], rows: int) -> Any:
    """An update's state for the kept rows of its members (tensors with one row a member)."""
    if isinstance(state, Tensor) and state.dim() > 0 and state.shape[0] == rows:
        return state[keep]
    if isinstance(state, dict):
        return {k: _rows_of(v, keep, rows) for k, v in state.items()}
    if isinstance(state, list):
        return [_rows_of(v, keep, rows) for v in state]
    return state


def _release(members: Sequence[Member]) -> None:
    """Each member's parameters in storage of its own, as it leaves the stack (model.pt saves
    a view's whole storage: the stack's)."""
    for member in members:
        for tensor in member.parameters():
            tensor.data = tensor.data.clone()


@dataclass
class _Steps:
    """Members `rows` of the stack (a slice, or one member's index), stepped by one update
    over `tensors`: their rows of each stacked parameter."""

    rows: slice | int
    update: Updater
    tensors: list[Tensor]


class Stack:
    """The members still training: each parameter of theirs one stacked leaf tensor
    (K x shape), each member's own parameters views of its row, and their data stacked once.

    Members are ordered so that those whose updates step as one (`_together`) are side by
    side; each such group steps once over its rows, any other member with its own update."""

    def __init__(self, members: Sequence[Member]) -> None:
        first = shapes(members[0])
        if any(shapes(m) != first for m in members[1:]):
            raise ValueError("a stack's members must share their network's and data's shapes")
        keys = [_together(m.update) for m in members]
        order = sorted(range(len(members)), key=lambda i: (keys[i] is None, keys[i] or "", i))
        self.members = [members[i] for i in order]
        self.forward = vmap(_forward(members[0]))
        self.loss = vmap(members[0].loss)
        self.quality = vmap(members[0].quality)
        with torch.no_grad():
            stacked = [torch.stack(group) for group in zip(*self._own(), strict=True)]
        self._take(stacked, [keys[i] for i in order])
        self._stack_data()

    def _own(self) -> list[list[Tensor]]:
        return [m.parameters() for m in self.members]

    def _take(
        self, stacked: list[Tensor], keys: list[str | None], states: dict[str, Any] | None = None
    ) -> None:
        """Make `stacked` the leaves, each member's parameters views of its row, and the
        updates that step them (`states`: a group's state to go on from, by its key)."""
        self.leaves = [t.detach().requires_grad_(True) for t in stacked]
        for k, own in enumerate(self._own()):
            for tensor, leaf in zip(own, self.leaves, strict=True):
                tensor.data = leaf.detach()[k]
        self.keys, self.steps = keys, []
        start = 0
        while start < len(self.members):
            key, member, stop = keys[start], self.members[start], start + 1
            if key is None:  # its own update, over its own (viewed) parameters
                self.steps.append(_Steps(start, member.update, member.parameters()))
                start = stop
                continue
            while stop < len(keys) and keys[stop] == key:
                stop += 1
            tensors = [leaf.detach()[start:stop] for leaf in self.leaves]
            update = _update_like(member.update, tensors)
            if states and key in states:
                update.load_state_dict(states[key])
            self.steps.append(_Steps(slice(start, stop), update, tensors))
            start = stop

    def _stack_data(self) -> None:
        def stacked(name: str) -> Tensor:
            return torch.stack([getattr(m.data, name) for m in self.members])

        self.x, self.y = stacked("x_train"), stacked("y_train")
        self.x_val, self.y_val = stacked("x_val"), stacked("y_val")

    def step(self) -> None:
        """Each member's own update: its group's, over the group's rows of every parameter."""
        for steps in self.steps:
            for tensor, leaf in zip(steps.tensors, self.leaves, strict=True):
                tensor.grad = leaf.grad[steps.rows]  # type: ignore[index]
            steps.update.step()

    def zero_grad(self) -> None:
        for steps in self.steps:
            steps.update.zero_grad()
        for leaf in self.leaves:
            leaf.grad = None

    def drop(self, gone: Sequence[Member]) -> None:
        """Members that ended leave with their own copy of their parameters; the others go
        on from where they are, each group's update state kept for its remaining rows."""
        if not gone:
            return
        keep = [k for k, m in enumerate(self.members) if m not in gone]
        states = {}  # each group's update state, for its kept rows, by the group's key
        for steps in self.steps:
            if isinstance(steps.rows, slice):
                first, stop = steps.rows.start, steps.rows.stop
                kept = [k - first for k in keep if first <= k < stop]
                if kept:
                    state = steps.update.state_dict()
                    states[self.keys[first]] = _rows_of(state, kept, stop - first)
        with torch.no_grad():
            stacked = [leaf.detach()[keep].clone() for leaf in self.leaves]
        _release(gone)
        self.members = [self.members[k] for k in keep]
        if self.members:
            self._take(stacked, [self.keys[k] for k in keep], states)
            self._stack_data()

    def batches(self, batch_size: int | None) -> list[tuple[Tensor, Tensor]]:
        """Each member's batch of its own shuffle, side by side (K x batch x features)."""
        members, rows = len(self.members), self.x.shape[1]
        if batch_size is None or batch_size >= rows:
            return [(self.x, self.y)]
        orders = torch.stack(
            [
                torch.randperm(rows, device=self.x.device, generator=m.generator)
                for m in self.members
            ]
        )
        orders += torch.arange(members, device=self.x.device)[:, None] * rows
        index = orders.flatten()  # one row index over every member's rows: one gather an epoch
        x = self.x.flatten(0, 1).index_select(0, index).unflatten(0, (members, rows))
        y = self.y.flatten(0, 1).index_select(0, index).unflatten(0, (members, rows))
        return [
            (x[:, start : start + batch_size], y[:, start : start + batch_size])
            for start in range(0, rows, batch_size)
        ]


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
            y_pred = stack.forward(stack.leaves, x)  # 1. forward pass, every member
            losses = stack.loss(y_pred, y)  # 2. each member's loss
            losses.sum().backward()  # 3. backward: each member's gradients are its own
            stack.step()  # 4. each member's own update
            stack.zero_grad()  # 5. zero the gradients
            batch_losses.append(losses.detach())

        with torch.no_grad():
            val_pred = stack.forward(stack.leaves, stack.x_val)
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
    _release(stack.members)


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
