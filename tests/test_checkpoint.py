"""A checkpoint taken where a stop signal lands, and a run resumed from it, bit for bit.

In-process, on the loop itself: a real SIGTERM is sent to this process in the middle of a
chosen step (from inside the loss), `StopsBetweenSteps` holds it until the step is done, a
checkpoint is saved there, and a fresh process-like start (new parts from the config) goes on
from the file. Every epoch's metrics and the final parameters must equal those of the same
config trained without a stop: both implementations, both updates (with momentum and weight
decay, whose buffers the checkpoint must hold), full batch and mini-batches, stopped in the
first step, mid-epoch, and at an epoch's end. The CLI's side is tests/test_resume.py.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from looplab.core.checkpoint import CheckpointError, Taker, load, restore
from looplab.core.errors import Terminated
from looplab.core.loop import Progress
from looplab.core.signals import StopsBetweenSteps
from looplab.run.parts import Parts
from looplab.run.prepare import prepare

EPOCHS = 4
ROWS_PER_BATCH = 64  # breast cancer: 455 training rows, 8 batches an epoch


def sigterm_in_step(loss_function, at_step: int):
    """The run's loss, sending SIGTERM to this process during training step `at_step`."""
    count = [0]

    def loss(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        count[0] += torch.is_grad_enabled()  # validation's loss is not a step
        if count[0] == at_step:
            os.kill(os.getpid(), signal.SIGTERM)  # lands mid-step: held until it is done
        return loss_function(y_pred, y)

    return loss


def parameters(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


class DrawingNet(torch.nn.Module):
    """A user's network that draws from every global generator as it trains: dropout from
    torch's, and a tiny jitter from NumPy's and Python's."""

    def __init__(self, n_features: int, n_outputs: int) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(n_features, 8)
        self.dropout = torch.nn.Dropout(0.3)
        self.out = torch.nn.Linear(8, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        jitter = 1e-3 * (np.random.rand() + random.random()) if self.training else 0.0
        return self.out(self.dropout(torch.relu(self.hidden(x)))) + jitter


def trained_whole(cfg, parts: Parts | None = None):
    ready = prepare(cfg, parts=parts)
    history = ready.fit(EPOCHS, cfg.train.batch_size)
    return [r.metrics for r in history], parameters(ready.model)


def stopped_then_resumed(cfg, at_step: int, folder: Path, parts: Parts | None = None):
    """Train, SIGTERM at `at_step`, checkpoint there; then resume from the file alone."""
    ready = prepare(cfg, parts=parts)
    history: list = []
    stops = StopsBetweenSteps()
    progress = Progress(stops=stops.check)
    taker = Taker(ready.model, ready.update, ready.generator, progress, "c", "d", history)
    ready.loss = sigterm_in_step(ready.loss, at_step)
    with pytest.raises(Terminated), stops:
        ready.fit(EPOCHS, cfg.train.batch_size, [history.append], progress)
    assert stops.between_steps, "the stop was raised mid-step"
    taker.save(folder)
    stopped_at = (progress.epoch, progress.batch)

    # whatever the process drew since: the checkpoint restores every generator
    torch.manual_seed(12345), np.random.seed(12345), random.seed(12345)
    again = prepare(cfg, parts=parts)
    resumed_history: list = []
    progress = Progress()
    taker = Taker(again.model, again.update, again.generator, progress, "c", "d", resumed_history)
    restore(load(folder / "checkpoint.pt"), taker, again.device)
    resumed_history += again.fit(EPOCHS, cfg.train.batch_size, progress=progress)
    return [r.metrics for r in resumed_history], parameters(again.model), stopped_at


CASES = [
    pytest.param(impl, update, batch, id=f"{impl}-{update}-{'full' if batch is None else batch}")
    for impl in ("manual", "module")
    for update in ("manual", "sgd")
    for batch in (None, ROWS_PER_BATCH)
]


@pytest.mark.parametrize(("impl", "update", "batch_size"), CASES)
def test_a_run_stopped_anywhere_resumes_bit_for_bit(
    make_config, tmp_path: Path, impl: str, update: str, batch_size: int | None
) -> None:
    """Faults: a stop taken mid-step (a half-applied update saved); the momentum buffers or
    the optimiser's state not saved; the shuffle replayed from the generator's state after
    the epoch's draw (another order); the batch losses done before the stop lost (another
    train_loss); an RNG not restored; the resumed loop starting from epoch 1 or batch 0."""
    cfg = make_config(
        f"model.impl={impl}",
        f"update={update}",
        "model.width=8",
        "train.momentum=0.9",
        "train.weight_decay=0.01",
        f"train.batch_size={'null' if batch_size is None else batch_size}",
        f"train.epochs={EPOCHS}",
    )
    whole_metrics, whole_parameters = trained_whole(cfg)
    steps_per_epoch = 1 if batch_size is None else 8
    stops = {
        "first step": 1,
        "mid-epoch": steps_per_epoch + max(1, steps_per_epoch // 2),
        "an epoch's last step": 2 * steps_per_epoch,
    }
    for where, step in stops.items():
        folder = tmp_path / where.replace(" ", "-").replace("'", "")
        folder.mkdir()
        metrics, params, stopped_at = stopped_then_resumed(cfg, step, folder)
        # taken as the step ends: (epochs finished, batches of the next done)
        assert stopped_at == ((step - 1) // steps_per_epoch, (step - 1) % steps_per_epoch + 1)
        assert metrics == whole_metrics, f"stopped at {where} ({stopped_at})"
        assert len(params) == len(whole_parameters)
        for resumed, whole in zip(params, whole_parameters, strict=True):
            assert torch.equal(resumed, whole), f"stopped at {where} ({stopped_at})"


def test_a_network_that_draws_from_every_generator_resumes_bit_for_bit(make_config, tmp_path):
    """Faults: torch's, NumPy's or Python's global generator not saved or not restored
    (dropout masks and the user's draws after the resume would differ)."""
    cfg = make_config("train.batch_size=64", f"train.epochs={EPOCHS}")
    parts = Parts(model=DrawingNet)
    whole_metrics, whole_parameters = trained_whole(cfg, parts)
    metrics, params, _ = stopped_then_resumed(cfg, 13, tmp_path, parts)
    assert metrics == whole_metrics
    assert all(torch.equal(a, b) for a, b in zip(params, whole_parameters, strict=True))


def test_a_checkpoint_is_data_and_a_torn_one_is_refused_in_one_line(make_config, tmp_path):
    """Faults: a checkpoint that holds code (a pickled object) is unpickled; a torn file
    raises a traceback; a half-written file replaces the last good one."""
    cfg = make_config("train.epochs=2")
    ready = prepare(cfg)
    taker = Taker(ready.model, ready.update, ready.generator, Progress(), "c", "d", [])
    path = taker.save(tmp_path)
    assert not list(tmp_path.glob("*.partial")), "the temporary file was left behind"
    assert load(path).epoch == 0

    class Code:
        def __reduce__(self):
            return (os.system, ("echo unpickled > " + str(tmp_path / "ran"),))

    torch.save({"format": 1, "payload": Code()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="is not a looplab checkpoint"):
        load(tmp_path / "evil.pt")
    assert not (tmp_path / "ran").exists(), "a checkpoint's code ran"

    (tmp_path / "torn.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"torn\.pt is not a looplab checkpoint") as error:
        load(tmp_path / "torn.pt")
    assert "\n" not in str(error.value)
