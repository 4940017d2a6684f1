"""`optimized_metric`: what a job returns to its sweeper, which way is better, the worst value
for a job that did not finish, the best value and epoch every run logs, and the sweep's best
child chosen by the same objective."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import store_uri

from looplab.core.errors import ConfigError
from looplab.core.objective import (
    Objective,
    best_metrics,
    check_metric,
    direction_for,
    direction_of,
)
from looplab.core.schema import plain_config
from looplab.core.validate import validate
from looplab.run.execute import execute


def test_the_direction_follows_the_metric_unless_the_sweeper_says_otherwise() -> None:
    """Faults: accuracy minimised; a `_best` metric losing its direction; the sweeper's own
    `direction` ignored."""
    assert direction_of("val_loss") == direction_of("val_rmse_best") == "minimize"
    assert direction_of("val_accuracy") == direction_of("val_accuracy_best") == "maximize"
    assert direction_for("val_accuracy", None) == "maximize"
    assert direction_for("val_accuracy", "minimize") == "minimize"


def test_best_metrics_take_the_first_epoch_that_reached_the_best_finite_value() -> None:
    """Faults: the last epoch's value taken as the best; a later tie named as the best epoch;
    a NaN epoch taken as the best; accuracy's best taken at its minimum."""
    epochs = [
        (1, {"val_loss": 0.5, "val_accuracy": 0.7}),
        (2, {"val_loss": 0.3, "val_accuracy": 0.9}),
        (3, {"val_loss": math.nan, "val_accuracy": 0.9}),
        (4, {"val_loss": 0.3, "val_accuracy": 0.8}),
    ]
    assert best_metrics(epochs) == {
        "val_loss_best": 0.3,
        "val_loss_best_epoch": 2.0,
        "val_accuracy_best": 0.9,
        "val_accuracy_best_epoch": 2.0,
    }


def test_a_metric_a_run_does_not_log_is_refused_in_one_line(make_config) -> None:
    """Faults: an unknown metric accepted (every job would score the worst value); accuracy
    asked of a regression found out only at the sweep's end."""
    with pytest.raises(ConfigError, match=r"optimized_metric=accuracy is not allowed"):
        validate(make_config("optimized_metric=accuracy"))
    with pytest.raises(ConfigError, match=r"does not log val_accuracy; choose one of"):
        check_metric("val_accuracy_best", ["train_loss", "val_loss", "val_rmse"])


@pytest.mark.parametrize(
    ("metric", "direction", "worst"),
    [("val_loss", "minimize", math.inf), ("val_rmse_best", "maximize", -math.inf)],
)
def test_a_run_that_did_not_finish_scores_the_worst_value_for_its_direction(
    make_config, tmp_path: Path, metric: str, direction: str, worst: float
) -> None:
    """Fault: a diverged job returns +inf under maximize, where it ranks first (or NaN)."""
    cfg = make_config(
        "dataset=diabetes", "train.lr=1e10", "train.epochs=5", "tracking.enabled=false"
    )
    result = execute(cfg, tmp_path / "run")
    assert result.status == "FAILED"
    assert result.objective(Objective.of(metric, direction)) == worst
    both = Objective.of(["val_loss", metric], [direction, direction])
    assert result.objective(both) == [worst, worst]  # a multi-objective search's job


@pytest.mark.slow
def test_a_sweep_names_its_best_child_by_the_objective_and_every_run_logs_its_best(
    run_cli, tmp_path: Path
) -> None:
    """Faults: the parent's best child chosen by final val_loss whatever `optimized_metric`
    says, or by the minimum of an accuracy; a run without `<metric>_best` and
    `<metric>_best_epoch`, or with values that are not its curve's best; the runs table
    showing those summaries as curves of their own."""
    from mlflow.tracking import MlflowClient

    done = run_cli(
        "-m", "optimized_metric=val_accuracy_best", "train.lr=0.001,0.5", "train.epochs=15"
    )
    assert done.returncode == 0, done.stderr
    client = MlflowClient(tracking_uri=store_uri(tmp_path))
    experiment = client.get_experiment_by_name("looplab").experiment_id
    runs = client.search_runs([experiment])
    (parent,) = [r for r in runs if r.data.tags.get("looplab.role") == "sweep"]
    children = [r for r in runs if r is not parent and r.data.tags.get("looplab.role") != "sweep"]
    assert len(children) == 2
    for child in children:
        curve = [
            (m.step, m.value) for m in client.get_metric_history(child.info.run_id, "val_accuracy")
        ]
        top = max(value for _, value in curve)
        first = min(step for step, value in curve if value == top)
        assert child.data.metrics["val_accuracy_best"] == top
        assert child.data.metrics["val_accuracy_best_epoch"] == first
        assert child.data.metrics["val_loss_best"] == min(
            m.value for m in client.get_metric_history(child.info.run_id, "val_loss")
        )
    best = max(children, key=lambda r: r.data.metrics["val_accuracy_best"])
    assert parent.data.tags["looplab.best_run_id"] == best.info.run_id
    assert parent.data.tags["looplab.optimized_metric"] == "val_accuracy_best (maximize)"
    assert f"(val_accuracy_best {best.data.metrics['val_accuracy_best']:.4g})" in done.stdout
    assert "val_accuracy_best" not in done.stdout.split("best: #")[0], "a summary shown as a curve"

    # a search's own direction wins over the metric's: the worse val_loss is "best" here
    pytest.importorskip("optuna", reason="the search extra is not installed")
    done = run_cli(
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.direction=maximize",
        "optimized_metric=val_loss",
        "train.lr=choice(0.001,0.5)",
        "train.epochs=5",
        "tracking.experiment=upside_down",
    )
    assert done.returncode == 0, done.stderr
    experiment = client.get_experiment_by_name("upside_down").experiment_id
    runs = client.search_runs([experiment])
    (parent,) = [r for r in runs if r.data.tags.get("looplab.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("looplab.role") != "sweep"]
    worse = max(children, key=lambda r: r.data.metrics["val_loss"])
    assert parent.data.tags["looplab.best_run_id"] == worse.info.run_id


def test_the_objective_leaves_the_configs_identity_alone(make_config) -> None:
    """Faults: choosing another objective makes `tracking.skip_finished` train every job
    again (the config identity changed, though nothing trains differently); with early stop,
    where the objective decides when training ends, two objectives taken for one run."""
    from looplab.run.naming import identity

    assert identity(make_config()) == identity(make_config("optimized_metric=val_accuracy"))
    # ...unless it decides when training stops: then two metrics are two runs
    early = "train.early_stop.patience=3"
    assert identity(make_config(early)) != identity(
        make_config(early, "optimized_metric=val_accuracy")
    )
    assert plain_config  # imported for make_config's composition


@pytest.mark.slow
def test_seeds_are_groups_the_mean_over_seeds_names_the_best_configuration(
    run_cli, tmp_path: Path
) -> None:
    """Faults: a sweep over seeds compared run by run (its best configuration the luckiest
    seed's); groups that mix configurations, or count unfinished runs; a mean or std that is
    not the runs'; `looplab runs --over seed` showing one row a run."""
    import statistics
    import subprocess
    import sys

    import pandas as pd
    from mlflow.tracking import MlflowClient

    done = run_cli("-m", "seed=1,2,3", "train.lr=0.01,0.5", "train.epochs=4")
    assert done.returncode == 0, done.stderr
    client = MlflowClient(tracking_uri=store_uri(tmp_path))
    runs = client.search_runs([client.get_experiment_by_name("looplab").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("looplab.role") == "sweep"]
    children = [r for r in runs if r is not parent]
    by_lr: dict[str, list[float]] = {}
    for child in children:
        by_lr.setdefault(child.data.params["train.lr"], []).append(child.data.metrics["val_loss"])
    (sweep_dir,) = (tmp_path / "outputs" / "sweeps").glob("*/*")
    groups = pd.read_csv(sweep_dir / "groups.csv")
    assert sorted(groups["train.lr"]) == [0.01, 0.5] and set(groups["runs"]) == {3}
    for _, row in groups.iterrows():
        values = by_lr[str(row["train.lr"])]
        assert row["final_val_loss_mean"] == pytest.approx(statistics.mean(values))
        assert row["final_val_loss_std"] == pytest.approx(statistics.stdev(values))
    best_lr = min(by_lr, key=lambda lr: statistics.mean(by_lr[lr]))
    assert parent.data.tags["looplab.best_group"] == f"train.lr={best_lr}"
    assert "groups.csv" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert f"best over seeds: train.lr={best_lr} (val_loss mean" in done.stdout

    looplab = str(Path(sys.executable).parent / "looplab")
    table = subprocess.run(
        [looplab, "runs", "--last", "--over", "seed"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert len(table.stdout.strip().splitlines()) == 3  # the header and one row a group

    # the plot: one mean curve a group, the mean of its runs' curves
    from looplab.tracking import tables

    figure = tables.plot_curves(
        children, "val_loss", tmp_path / "g.png", store_uri(tmp_path), ["seed"]
    )
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    assert sorted(lines) == ["train.lr=0.01 (n=3)", "train.lr=0.5 (n=3)"]
    for lr in ("0.01", "0.5"):
        curves = [
            [
                m.value
                for m in sorted(
                    client.get_metric_history(c.info.run_id, "val_loss"), key=lambda m: m.step
                )
            ]
            for c in children
            if c.data.params["train.lr"] == lr
        ]
        means = [statistics.mean(epoch) for epoch in zip(*curves, strict=True)]
        assert list(lines[f"train.lr={lr} (n=3)"].get_ydata()) == pytest.approx(means)
    plotted = subprocess.run(
        [looplab, "plot", "--last", "--over", "seed", "--out", "g.png"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert plotted.returncode == 0 and "for 2 groups of 6 runs" in plotted.stdout, plotted.stderr
