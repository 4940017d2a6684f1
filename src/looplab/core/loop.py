"""The training loop: the tutorial's steps, in order, and nothing else.

It takes plain objects (a model, a loss, an updater, tensors) and hands each finished
epoch to callbacks; it knows nothing of Hydra, MLflow or the console. The loss stays on the
device during the epoch: the host waits for the GPU once an epoch, when the numbers are read.
`Progress` says where it stands between two steps: what a checkpoint saves, where a resumed
run starts, and where a stop signal is taken.
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice

import torch

from looplab.core.data import DeviceData
from looplab.core.errors import DivergedError
from looplab.core.model import LossFn
from looplab.core.update import Updater

Tensor = torch.Tensor


@dataclass(slots=True)
class EpochResult:
    """One finished epoch: its number (from 1), its metrics, and when it ended."""

    epoch: int
    metrics: dict[str, float]
    timestamp_ms: int


EpochCallback = Callable[[EpochResult], None]


@dataclass
class Progress:
    """Where the loop stands between two steps. `stops` (core/signals.StopsBetweenSteps)
    raises a stop signal here, never mid-step; a resumed run starts from a saved Progress."""

    epoch: int = 0  # epochs finished
    batch: int = 0  # batches of the next epoch finished...
    batch_losses: list[Tensor] = field(default_factory=list)  # ...and their losses
    shuffle_state: Tensor | None = None  # the shuffle's generator state as that epoch began
    stops: Callable[[], None] | None = None  # raises a stop signal that came meanwhile

    def begin_epoch(self, generator: torch.Generator | None) -> list[Tensor]:
        """The epoch's batch losses so far (none, unless resumed mid-epoch); the shuffle's
        state kept, to draw the same order again on resuming mid-epoch."""
        if self.batch == 0:
            self.batch_losses = []
            self.shuffle_state = generator.get_state() if generator is not None else None
        return self.batch_losses

    def step_done(self) -> None:
        self.batch += 1
        if self.stops is not None:
            self.stops()

    def epoch_done(self, epoch: int) -> None:
        self.epoch, self.batch, self.batch_losses = epoch, 0, []


def batches(
    x: Tensor, y: Tensor, batch_size: int | None, generator: torch.Generator | None
) -> Iterator[tuple[Tensor, Tensor]]:
    """The whole set (the tutorial's full batch), or a fresh shuffle gathered on the device."""
    if batch_size is None or batch_size >= len(x):
        yield x, y
        return
    order = torch.randperm(len(x), device=x.device, generator=generator)
    for start in range(0, len(x), batch_size):
        rows = order[start : start + batch_size]  # a gather per batch: no shuffled copy of x
        yield x[rows], y[rows]


def batch_weights(n_rows: int, batch_size: int | None) -> list[float]:
    """Each batch's share of the rows, in the order `batches` yields them."""
    size = n_rows if batch_size is None else min(batch_size, n_rows)
    return [min(size, n_rows - start) / n_rows for start in range(0, n_rows, size)]


def fit(
    model: Callable[[Tensor], Tensor],
    loss_function: LossFn,
    update: Updater,
    data: DeviceData,
    *,
    epochs: int,
    quality: Callable[[Tensor, Tensor], Tensor],
    quality_name: str,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    callbacks: Sequence[EpochCallback] = (),
    progress: Progress | None = None,
) -> list[EpochResult]:
    """Train up to epoch `epochs` and return every epoch's result (from `progress` on, when
    a resumed run gives one: the batches it had done are drawn again, and skipped).

    `train_loss` is the mean of the batch losses weighted by batch size, taken on the host
    after the epoch's one synchronisation (with a full batch, exactly the tutorial's
    `loss.item()`). Raises DivergedError when it, or a validation number, is not finite.
    """
    history: list[EpochResult] = []
    weights = batch_weights(data.x_train.shape[0], batch_size)
    progress = progress or Progress()
    for epoch in range(progress.epoch + 1, epochs + 1):
        # on the device until the epoch's one synchronisation
        batch_losses = progress.begin_epoch(generator)
        shuffled = batches(data.x_train, data.y_train, batch_size, generator)
        for x, y in islice(shuffled, progress.batch, None):
            y_pred = model(x)  # 1. forward pass: what does the model predict now?
            loss = loss_function(y_pred, y)  # 2. loss: how wrong is it?
            loss.backward()  # 3. backward pass: gradients of the loss
            update.step()  # 4. update the parameters (under no_grad, or SGD.step)
            update.zero_grad()  # 5. zero the gradients for the next step
            batch_losses.append(loss.detach())
            progress.step_done()  # a stop signal (Ctrl-C, SIGTERM) is taken here

        with torch.no_grad():  # validation: same forward and loss, no gradients
            val_pred = model(data.x_val)
            val_loss = loss_function(val_pred, data.y_val)
            val_quality = quality(val_pred, data.y_val)

        # 6. read the numbers: the one host synchronisation of the epoch
        *losses, val_value, quality_value = torch.stack(
            [*batch_losses, val_loss, val_quality]
        ).tolist()
        train_value = sum(map(operator.mul, losses, weights))  # weighted by batch size
        metrics = {"train_loss": train_value, "val_loss": val_value, quality_name: quality_value}
        if not math.isfinite(train_value + val_value + quality_value):
            name = next(name for name, value in metrics.items() if not math.isfinite(value))
            raise DivergedError(epoch, metrics[name], name)
        result = EpochResult(epoch=epoch, metrics=metrics, timestamp_ms=int(time.time() * 1000))
        history.append(result)
        progress.epoch_done(epoch)
        for callback in callbacks:  # print, record, track
            callback(result)
    return history
