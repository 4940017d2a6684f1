"""A search under a pruner (`hydra/sweeper/pruner=...`), as a user types it: trials report
every epoch to the study through its storage and stop when the pruner says so; the sampler
group; what the sweeper refuses."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import store_uri

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("optuna") is None,
    reason="Optuna is an optional extra: pip install -e '.[search]' (make test installs it)",
)

SEARCH = (
    "-m",
    "hparams_search=optuna",
    "train.epochs=12",
    "train.print_every=0",
    "model.width=8",
    "update=sgd",
    "train.lr=choice(0.00001,0.5)",  # hopeless, or good; the only key searched
    "hydra/sweeper/sampler=random",
    "hydra/sweeper/pruner=median",
)


def searched(run_cli, *extra: str):
    """SEARCH, 8 trials, the random sampler seeded with 3; it must exit 0."""
    done = run_cli(*SEARCH, "hydra.sweeper.n_trials=8", "hydra.sweeper.sampler.seed=3", *extra,
                   timeout=400)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


def study_of(tmp_path):
    import optuna

    (db,) = (tmp_path / "outputs" / "optuna").glob("*.db")
    storage = f"sqlite:///{db}"
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def children_of(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store_uri(tmp_path))
    runs = client.search_runs([client.get_experiment_by_name("looplab").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("looplab.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return client, parent, sorted(children, key=lambda r: int(r.data.tags["looplab.job"]))


def test_a_pruned_trial_stops_at_its_epoch_is_told_pruned_and_its_run_says_where(
    run_cli, tmp_path
) -> None:
    """Faults: trials never report (every one trains all 12 epochs); a pruned trial told to
    the study as COMPLETE (or FAIL); its MLflow run FAILED, or without the epoch it was
    pruned at, or holding epochs past it; a pruned job counted as a plain finish, or named
    the sweep's best child; hydra/sweeper/sampler ignored."""
    done = searched(run_cli, "hydra.sweeper.pruner.n_startup_trials=2")
    study = study_of(tmp_path)
    states = [t.state.name for t in study.trials]
    assert "PRUNED" in states and "COMPLETE" in states, states
    assert all(len(t.intermediate_values) >= 1 for t in study.trials), "a trial never reported"
    client, parent, children = children_of(tmp_path)
    assert len(children) == 8
    for trial, run in zip(study.trials, children, strict=True):
        assert run.info.status == "FINISHED"
        epochs = len(client.get_metric_history(run.info.run_id, "val_loss"))
        if trial.state.name == "PRUNED":
            at = int(run.data.tags["looplab.pruned_at_epoch"])
            assert epochs == at == max(trial.intermediate_values) < 12
            assert f"pruned at epoch {at}" in done.stdout
        else:
            assert "looplab.pruned_at_epoch" not in run.data.tags
            assert epochs == 12
    pruned = states.count("PRUNED")
    assert parent.data.tags["looplab.jobs_pruned"] == str(pruned)
    assert f"sweep: 8 of 8 jobs finished ({pruned} of them pruned" in done.stdout
    best = int(parent.data.tags["looplab.best_job"])
    assert study.trials[best].state.name == "COMPLETE"
    assert f"{pruned} pruned" in done.stdout and f"{8 - pruned} complete" in done.stdout
    (sweep_dir,) = tmp_path.glob("outputs/sweeps/*/*")
    assert not (sweep_dir / "optuna_trials.json").exists(), "a later job could take it as its own"
    # A grid of the same jobs with skip_finished: the complete one is skipped, the pruned one
    # (FINISHED in MLflow, but stopped early) trains again.
    grid = [a for a in SEARCH if a not in ("hparams_search=optuna",) and "sweeper" not in a]
    again = run_cli(*grid, "tracking.skip_finished=true", timeout=300)
    assert again.returncode == 0, again.stderr
    assert "lr=0.5: skipped, already FINISHED" in again.stdout
    assert "lr=1e-05: FINISHED after 12 epochs" in again.stdout
    # The random sampler, seeded: the first trials' draws are RandomSampler(seed=3)'s.
    import optuna

    expected = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    space = {"train.lr": optuna.distributions.CategoricalDistribution([0.00001, 0.5])}
    asked = [expected.ask(space).params["train.lr"] for _ in range(3)]
    assert [t.params["train.lr"] for t in study.trials[:3]] == asked


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        (("hydra/sweeper/sampler=grid",), "sampler=grid: train.lr is an interval"),
        (("hydra/sweeper/sampler=cmaes",), "sampler=cmaes needs the cmaes package"),
        (("hydra.sweeper.direction=[minimize,maximize]",), "2 directions for 1 optimized_metric"),
    ],
)
def test_a_search_it_cannot_run_is_refused_in_one_line_before_anything_is_written(
    run_cli, tmp_path, overrides, said
) -> None:
    """Faults: a traceback (GridSampler cannot enumerate an interval; CmaEsSampler finds
    out at its first trial that `cmaes` is missing; looplab-train returns one value to a
    study of two directions), or a parent run, a store or a sweep folder left behind."""
    if "cmaes" in said and importlib.util.find_spec("cmaes") is not None:
        pytest.skip("cmaes is installed here")
    done = run_cli("-m", "hparams_search=optuna", *overrides)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert said in line, line
    assert not (tmp_path / "outputs").exists()


def test_a_grid_sampler_runs_each_combination_once(run_cli, tmp_path) -> None:
    """Faults: the grid sampler asked for more trials than its grid has (Optuna repeats
    combinations), or its space not built from the choices."""
    done = run_cli(
        "-m",
        "hparams_search=optuna",
        "train.epochs=2",
        "hydra/sweeper/sampler=grid",
        "train.lr=choice(0.1,0.2)",
        "model.width=range(0,16,step=8)",
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    trials = study_of(tmp_path).trials
    combos = {(t.params["train.lr"], t.params["model.width"], t.params["update"]) for t in trials}
    assert len(trials) == len(combos) == 8


def test_a_list_of_metrics_is_a_multi_objective_search(run_cli, tmp_path) -> None:
    """Faults: `optimized_metric` as a list refused, or its jobs returning one value (the
    study told a pair it cannot take, every trial FAIL); the directions not each metric's
    own (val_accuracy minimised); the values not the runs' final metrics."""
    done = run_cli(
        "-m",
        "hparams_search=optuna",
        "optimized_metric=[val_loss,val_accuracy]",
        "hydra.sweeper.n_trials=3",
        "train.epochs=3",
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    study = study_of(tmp_path)
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE"]
    _, _, children = children_of(tmp_path)
    for trial, run in zip(study.trials, children, strict=True):
        assert trial.state.name == "COMPLETE"
        assert trial.values == [run.data.metrics["val_loss"], run.data.metrics["val_accuracy"]]
    assert "on the Pareto front" in done.stdout
