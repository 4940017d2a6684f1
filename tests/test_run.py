"""A short training on every data set, in-process, with the records it leaves."""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from looplab.cli.train import execute_tracked as execute
from looplab.core import data
from looplab.core.errors import ConfigError
from looplab.core.model import initial_parameters


@pytest.mark.parametrize(
    ("dataset", "quality"),
    [
        ("breast_cancer", "val_accuracy"),
        ("iris", "val_accuracy"),
        ("wine", "val_accuracy"),
        ("digits", "val_accuracy"),
        ("diabetes", "val_rmse"),
        ("csv", "val_accuracy"),
    ],
)
@pytest.mark.parametrize("width", [0, 8])
def test_short_training_on_every_data_set(make_config, tmp_path, dataset, quality, width) -> None:
    extra = []
    if dataset == "csv":
        rng = np.random.default_rng(1)
        frame = pd.DataFrame(rng.normal(size=(120, 3)), columns=["a", "b", "c"])
        frame["label"] = np.where(frame.a + frame.b > 0, "yes", "no")
        frame.to_csv(tmp_path / "points.csv", index=False)
        extra = [f"dataset.path={tmp_path / 'points.csv'}", "dataset.target=label"]
    cfg = make_config(
        f"dataset={dataset}",
        *extra,
        f"model.width={width}",
        "train.epochs=15",
        "train.print_every=0",
        "tracking.enabled=false",
    )
    result = execute(cfg, tmp_path / "run")
    assert result.status == "FINISHED" and result.exit_code == 0
    assert [epoch.epoch for epoch in result.history] == list(range(1, 16))
    assert set(result.history[0].metrics) == {"train_loss", "val_loss", quality}
    assert result.history[-1].metrics["train_loss"] < result.history[0].metrics["train_loss"]
    with (tmp_path / "run" / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 15 and float(rows[-1]["train_loss"]) == pytest.approx(
        result.history[-1].metrics["train_loss"]
    )


def test_diabetes_rmse_is_in_the_targets_units(make_config, tmp_path) -> None:
    cfg = make_config(
        "dataset=diabetes",
        "model.width=16",
        "train.epochs=200",
        "train.lr=0.05",
        "train.print_every=0",
        "tracking.enabled=false",
    )
    rmse = execute(cfg, tmp_path).history[-1].metrics["val_rmse"]
    assert 40 < rmse < 80  # the target spans 25..346; a plain linear fit is near 55


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def shuffled_curve(order: str, *, seed: int, batch_size: int, epochs: int) -> list[float]:
    """The run's train-loss curve written out: breast_cancer, one neuron, plain SGD at lr 0.1,
    float64, mini-batches of rows in `order`: `each` (a fresh randperm each epoch, from a
    generator seeded with the seed), `once` (one randperm for every epoch) or `never`."""
    split = data.load("breast_cancer", seed=seed)
    tensors = data.to_device(split, torch.device("cpu"), torch.float64)
    x, y, n = tensors.x_train, tensors.y_train, len(tensors.x_train)
    (layer,) = initial_parameters([x.shape[1], 1], "default", torch.float64, seeded(seed))
    w, b = (p.clone().requires_grad_(True) for p in layer)
    shuffle = seeded(seed)
    fixed = torch.randperm(n, generator=shuffle) if order == "once" else torch.arange(n)
    curve = []
    for _ in range(epochs):
        rows_order = torch.randperm(n, generator=shuffle) if order == "each" else fixed
        total = 0.0
        for rows in rows_order.split(batch_size):
            loss = F.binary_cross_entropy_with_logits(x[rows] @ w + b, y[rows])
            grad_w, grad_b = torch.autograd.grad(loss, [w, b])
            with torch.no_grad():
                w -= 0.1 * grad_w
                b -= 0.1 * grad_b
            total += loss.item() * len(rows) / n
        curve.append(total)
    return curve


def test_mini_batches_are_reshuffled_each_epoch_and_reproducible(make_config, tmp_path) -> None:
    """Faults: loop.py never shuffles (torch.arange instead of torch.randperm), or shuffles once
    and reuses that order every epoch; or the shuffle is not seeded (two runs differ).

    The seed, and so the split and the initial weights, stays the same: only the order of the
    rows can tell the curves apart.
    """
    settings = {"seed": 7, "batch_size": 50, "epochs": 5}
    cfg = make_config(
        "device=cpu",
        "train.dtype=float64",
        "train.lr=0.1",
        f"train.batch_size={settings['batch_size']}",
        f"train.epochs={settings['epochs']}",
        f"seed={settings['seed']}",
        "train.print_every=0",
        "tracking.enabled=false",
    )
    first, again = (
        [e.metrics["train_loss"] for e in execute(cfg, tmp_path / name).history]
        for name in ("first", "again")
    )
    assert first == again
    np.testing.assert_allclose(first, shuffled_curve("each", **settings), rtol=0, atol=1e-10)
    for order in ("never", "once"):  # what the faults would give: far from the run
        assert np.max(np.abs(np.subtract(first, shuffled_curve(order, **settings)))) > 1e-6


def test_a_tracked_run_lands_in_the_store(make_config, tmp_path, client) -> None:
    cfg = make_config("train.epochs=3", "train.print_every=0")
    result = execute(cfg, tmp_path / "run")
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(result.run_id, "val_loss")] == [1, 2, 3]


def test_an_exception_mid_run_flushes_marks_failed_and_records_the_message(
    make_config, tmp_path, client, monkeypatch
) -> None:
    """A bug in a callback at epoch 4: epochs 1-3 are in the store, the run is FAILED."""
    import looplab.run.prepare

    real_fit = looplab.run.prepare.fit

    def fit_with_a_broken_callback(*args, callbacks=(), **kwargs):
        def broken(result) -> None:
            if result.epoch == 4:
                raise RuntimeError("disk on fire")

        return real_fit(*args, callbacks=[*callbacks, broken], **kwargs)

    monkeypatch.setattr(looplab.run.prepare, "fit", fit_with_a_broken_callback)
    cfg = make_config("train.epochs=10", "train.print_every=0")
    with pytest.raises(RuntimeError, match="disk on fire"):
        execute(cfg, tmp_path / "run")
    experiment = client.get_experiment_by_name("looplab")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"
    assert "disk on fire" in run.data.tags["looplab.error"]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert sorted(steps) == [1, 2, 3, 4]  # epoch 4's numbers were computed before the failure


def test_a_loss_that_does_not_fit_the_data_stops_before_any_run_exists(
    make_config, tmp_path, client
) -> None:
    cfg = make_config("dataset=iris", "model.loss=tutorial")
    with pytest.raises(ConfigError, match=r"model\.loss=tutorial is for binary tasks only"):
        execute(cfg, tmp_path / "run")
    experiment = client.get_experiment_by_name("looplab")
    assert experiment is None or not client.search_runs([experiment.experiment_id])
    assert not (tmp_path / "run" / "metrics.csv").exists()
