"""A short training on every data set, in-process, with the records it leaves."""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest

from looplab.errors import ConfigError
from looplab.run import execute


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


def test_mini_batches_are_reshuffled_each_epoch_and_reproducible(make_config, tmp_path) -> None:
    def losses(seed: int) -> list[float]:
        cfg = make_config(
            "train.batch_size=50",
            "train.epochs=5",
            f"seed={seed}",
            "train.print_every=0",
            "tracking.enabled=false",
        )
        return [e.metrics["train_loss"] for e in execute(cfg, tmp_path / str(seed)).history]

    assert losses(1) == losses(1)
    assert losses(1) != losses(2)


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
    import looplab.run

    real_fit = looplab.run.fit

    def fit_with_a_broken_callback(*args, callbacks=(), **kwargs):
        def broken(result) -> None:
            if result.epoch == 4:
                raise RuntimeError("disk on fire")

        return real_fit(*args, callbacks=[*callbacks, broken], **kwargs)

    monkeypatch.setattr(looplab.run, "fit", fit_with_a_broken_callback)
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
