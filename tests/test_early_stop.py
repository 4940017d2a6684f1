"""`train.early_stop`: a run that stops improving ends FINISHED with the best epoch's weights,
and a run stopped and resumed ends where the uninterrupted one did, with the same weights."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import store_uri

from looplab.core.checkpoint import Taker, load, restore
from looplab.core.errors import ConfigError, Terminated
from looplab.core.loop import Progress
from looplab.core.signals import StopsBetweenSteps
from looplab.core.validate import validate
from looplab.run.early_stop import EarlyStop, StoppedEarly
from looplab.run.prepare import prepare

# breast cancer with a wide layer and a large step: val_loss is best within ten epochs
OVERFITS = ("train.lr=0.5", "train.batch_size=16", "model.width=32", "train.epochs=300")


@pytest.mark.slow
def test_a_run_that_stops_improving_ends_finished_with_its_best_epochs_weights(
    run_cli, tmp_path: Path
) -> None:
    """Faults: the run trains all its epochs; it ends FAILED or KILLED; model.pt holds the last
    epoch's weights, not the best's; no tag says where it stopped and which epoch it kept;
    patience counted from the wrong epoch."""
    from mlflow.tracking import MlflowClient

    done = run_cli(*OVERFITS, "train.early_stop.patience=4")
    assert done.returncode == 0, done.stderr
    client = MlflowClient(tracking_uri=store_uri(tmp_path))
    (run,) = client.search_runs([client.get_experiment_by_name("looplab").experiment_id])
    assert run.info.status == "FINISHED"
    stopped, best = (
        int(run.data.tags[k]) for k in ("looplab.early_stopped_at_epoch", "looplab.best_epoch")
    )
    assert stopped == best + 4 < 300
    curve = [
        m.value
        for m in sorted(
            client.get_metric_history(run.info.run_id, "val_loss"), key=lambda m: m.step
        )
    ]
    assert len(curve) == stopped and min(curve) == curve[best - 1]
    assert (
        f"stopped early at epoch {stopped}: no improvement since {best}"
        in done.stdout + done.stderr
    )

    shorter = tmp_path / "shorter"
    shorter.mkdir()
    again = run_cli(*OVERFITS[:3], f"train.epochs={best}", "tracking.enabled=false", cwd=shorter)
    assert again.returncode == 0, again.stderr
    (kept,) = (tmp_path / "outputs" / "runs").glob("*/*/model.pt")
    (trained,) = (shorter / "outputs" / "runs").glob("*/*/model.pt")
    a, b = torch.load(kept, weights_only=True), torch.load(trained, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a), "model.pt is not the best epoch's"


def test_a_run_with_early_stop_resumed_stops_where_it_would_have(make_config, tmp_path) -> None:
    """Faults: the early stop's state (best value, best epoch, best weights) not in the
    checkpoint: a resumed run stops later (or never), or keeps other weights."""
    cfg = make_config(*OVERFITS[:3], "train.epochs=60")

    def train(stop_at_step: int | None) -> tuple[StoppedEarly, dict]:
        ready = prepare(cfg)
        early = EarlyStop(ready.model, "val_loss", 4, 0.0)
        progress, history, stops = Progress(), [], StopsBetweenSteps()
        progress.stops = stops.check
        taker = Taker(ready.model, ready.update, ready.generator, progress, "c", "d", history)
        taker.callbacks["early_stop"] = early
        callbacks = [history.append, early]
        if stop_at_step is not None:
            steps = [0]
            step = ready.update.step

            def counted() -> None:
                step()
                steps[0] += 1
                if steps[0] == stop_at_step:
                    os.kill(os.getpid(), signal.SIGTERM)

            ready.update.step = counted
            with pytest.raises(Terminated), stops:
                ready.fit(60, 16, callbacks, progress)
            taker.save(tmp_path)
            ready = prepare(cfg)
            early = EarlyStop(ready.model, "val_loss", 4, 0.0)
            progress, history = Progress(), []
            taker = Taker(ready.model, ready.update, ready.generator, progress, "c", "d", history)
            taker.callbacks["early_stop"] = early
            restore(load(tmp_path / "checkpoint.pt"), taker, ready.device)
            callbacks = [history.append, early]
        with pytest.raises(StoppedEarly) as stopped:
            ready.fit(60, 16, callbacks, progress)
        early.restore_best()
        return stopped.value, ready.model.state_dict()

    whole, whole_weights = train(None)
    steps_per_epoch = 29  # 455 rows in batches of 16
    resumed, weights = train(steps_per_epoch * (whole.best_epoch + 1) + 5)  # after the best
    assert (resumed.epoch, resumed.best_epoch) == (whole.epoch, whole.best_epoch)
    assert all(torch.equal(weights[k], whole_weights[k]) for k in weights)


def test_early_stop_settings_are_checked(make_config) -> None:
    """Fault: a patience of 0 (stop at once) or a negative min_delta accepted."""
    with pytest.raises(ConfigError, match=r"train\.early_stop\.patience=0 is not allowed"):
        validate(make_config("train.early_stop.patience=0"))
    with pytest.raises(ConfigError, match=r"train\.early_stop\.min_delta=-1\.0 is not allowed"):
        validate(make_config("train.early_stop.min_delta=-1"))


def test_a_periodic_checkpoint_holds_the_early_stops_state_of_its_own_epoch(
    make_config, tmp_path
) -> None:
    """Fault: the periodic checkpoint is taken before the early stop has seen the epoch, so
    it holds the early stop's state of the epoch before (a run killed and resumed from it
    would stop later, with other weights)."""
    from looplab.run.execute import execute

    cfg = make_config(
        "train.epochs=6",
        "train.early_stop.patience=50",  # never stops here: only its state matters
        "checkpoint.every_epochs=1",
        "checkpoint.keep=true",
        "tracking.enabled=false",
    )
    result = execute(cfg, tmp_path / "run")
    losses = [r.metrics["val_loss"] for r in result.history]
    assert losses == sorted(losses, reverse=True), "needs a run that improves every epoch"
    saved = load(tmp_path / "run" / "checkpoint.pt").state["callbacks"]["early_stop"]
    assert (saved["best_epoch"], load(tmp_path / "run" / "checkpoint.pt").epoch) == (6, 6)
