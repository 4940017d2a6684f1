"""Sweeps as a user launches them: one group in MLflow, checked whole, parallel, searched.

Every test runs the real `looplab-train -m ...` in a subprocess against a real SQLite store.
"""

from __future__ import annotations

import csv
import importlib.util
import math

import pytest
from conftest import run_probe, store_uri
from PIL import Image

pytestmark = pytest.mark.slow


def sweep_runs(uri: str, experiment: str = "looplab"):
    """(parent, children by job number) of the one sweep in the store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment}"
    runs = client.search_runs([found.experiment_id])
    parents = [r for r in runs if r.data.tags.get("looplab.role") == "sweep"]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    children = {int(r.data.tags["looplab.job"]): r for r in runs if r not in parents}
    return client, parents[0], children


@pytest.mark.parametrize("launcher", ["looplab", "joblib"])
def test_a_sweep_is_one_parent_with_a_named_child_per_job(run_cli, tmp_path, launcher) -> None:
    """Faults: children not linked to their parent (no group in the UI), children named alike,
    job or sweep tags missing, the parent without its counts, best child, table or plot, the
    job lines not told apart, Hydra's chatter in the way; a job's run ended without waiting
    (the writer's replies read out of order, or not at all), or the summary reading the
    children before their ends landed; a job's closing line naming the previous job's run."""
    extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    done = run_cli("-m", *extra, "model.width=0,8", "update=manual,sgd", "train.epochs=4", "seed=3")
    assert done.returncode == 0, done.stderr
    client, parent, children = sweep_runs(store_uri(tmp_path))
    assert parent.info.run_name == "sweep: model.width=0,8 update=manual,sgd"
    assert parent.info.status == "FINISHED"
    assert parent.data.params["sweep.overrides"].startswith("model.width=0,8 update=manual,sgd")
    assert sorted(children) == [0, 1, 2, 3]
    names = {num: run.info.run_name for num, run in children.items()}
    assert names == {0: "width=0 manual", 1: "width=0 sgd", 2: "width=8 manual", 3: "width=8 sgd"}
    sweep_id = parent.data.tags["looplab.sweep_id"]
    for run in children.values():
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["looplab.sweep_id"] == sweep_id
        assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 4
    tags = parent.data.tags
    assert (tags["looplab.jobs_finished"], tags["looplab.jobs_failed"]) == ("4", "0")
    lowest = min(r.data.metrics["val_loss"] for r in children.values())
    best = [r for r in children.values() if r.info.run_id == tags["looplab.best_run_id"]]
    assert best and best[0].data.metrics["val_loss"] == lowest  # manual and sgd may tie
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"runs.csv", "curves.png"} <= artifacts
    # The console: every epoch line carries its job number, each job ends in one line, the
    # sweep ends with the table and a summary; Hydra's "Launching 4 jobs" stays quiet.
    lines = done.stdout.splitlines()
    assert all(line.startswith("[job ") for line in lines if "Epoch: " in line)
    for num, name in names.items():
        ends = [line for line in lines if line.startswith(f"[job {num}] {name}: FINISHED")]
        assert len(ends) == 1
        if "MLflow run " in ends[0]:  # a job that did not wait for its run may not know its id
            shown = ends[0].split("MLflow run ", 1)[1].split(";")[0]
            assert shown == children[num].info.run_id, f"job {num} names another job's run"
    assert lines[-1].startswith("sweep: 4 of 4 jobs finished")
    assert "Launching" not in done.stdout + done.stderr
    (sweep_dir,) = list(tmp_path.glob("outputs/sweeps/*/*"))
    with (sweep_dir / "runs.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["status"] for row in rows] == ["FINISHED"] * 4
    assert "warning" not in done.stderr, done.stderr


def test_eight_jobs_on_four_workers_on_a_new_store(run_cli, tmp_path) -> None:
    """Faults: parallel jobs race in the new store's migration or the experiment's creation
    (runs in Default, "database is locked"), or a child loses epochs."""
    done = run_cli(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=4",
        "seed=range(1,9)",
        "train.epochs=30",
        "train.print_every=0",
        "tracking.experiment=fresh",
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "database is locked" not in output
    client, _, children = sweep_runs(store_uri(tmp_path), "fresh")
    assert sorted(children) == list(range(8))
    for run in children.values():
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert sorted(steps) == list(range(1, 31))
    default = client.get_experiment_by_name("Default")
    assert default is None or not client.search_runs([default.experiment_id])


SPY_ON_THE_PARENTS_START = """
from looplab.tracking.client import Tracker
start_run, seen = Tracker.start_run, []
def spy(self, *args, **kwargs):
    seen.append(("looplab.run.execute" in sys.modules, "mlflow.tracking" in sys.modules))
    return start_run(self, *args, **kwargs)
Tracker.start_run = spy
try:
    t.main()
finally:
    print("imported before the parent started:", seen[0])
"""


@pytest.mark.parametrize(
    ("launcher", "imported"), [("looplab", "(True, True)"), ("joblib", "(False, True)")]
)
def test_the_jobs_imports_are_made_while_the_parents_writer_starts(
    tmp_path, launcher, imported
) -> None:
    """Faults: the launching process imports torch and the run (for the jobs it runs itself)
    and MLflow's client (for the summary) only after it has waited seconds for the parent's
    writer to start (`make bench`, group stacked), or imports torch for jobs that run in
    other processes (joblib's workers)."""
    done = run_probe(
        tmp_path, SPY_ON_THE_PARENTS_START, "-m", f"hydra/launcher={launcher}", "seed=1,2"
    )
    assert done.returncode == 0, done.stderr
    assert f"imported before the parent started: {imported}" in done.stdout


def test_a_bad_combination_refuses_the_whole_sweep_and_records_nothing(run_cli, tmp_path) -> None:
    """Fault: each value checked alone, so the one bad combination (the tutorial's clamped
    loss has no torch.nn twin) is found only when its job runs, after three trained."""
    done = run_cli("-m", "model.loss=logits,tutorial", "model.impl=manual,module")
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("looplab-train: error: model.loss=tutorial is not allowed")
    assert "model.loss=tutorial model.impl=module" in line and "nothing ran" in line
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "outputs").exists()


def test_a_preset_declares_a_whole_sweep(run_cli, tmp_path) -> None:
    """Fault: `experiment=manual_vs_sgd` runs one job, its hydra.sweeper.params ignored."""
    done = run_cli("-m", "experiment=manual_vs_sgd", "train.epochs=3", "train.print_every=0")
    assert done.returncode == 0, done.stderr
    _, parent, children = sweep_runs(store_uri(tmp_path))
    assert sorted(r.info.run_name for r in children.values()) == [
        "manual width=0",
        "manual width=16",
        "sgd width=0",
        "sgd width=16",
    ]
    assert parent.data.tags["looplab.swept_keys"] == "update,model.width"


def test_the_sweep_plot_is_a_png_with_one_line_per_job(run_cli, tmp_path) -> None:
    """Fault: the parent's curves.png missing or not an image."""
    done = run_cli("-m", "model.width=0,4,8", "train.epochs=3", "train.print_every=0")
    assert done.returncode == 0, done.stderr
    (png,) = list(tmp_path.glob("outputs/sweeps/*/*/curves.png"))
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 300


@pytest.mark.skipif(
    importlib.util.find_spec("optuna") is None,
    reason="Optuna is an optional extra: pip install -e '.[search]' (make test installs it)",
)
def test_an_optuna_search_takes_a_diverging_trial_and_resumes(run_cli, tmp_path) -> None:
    """Faults: a diverged trial told to the study as NaN (Optuna's study breaks), as a
    good-looking value, or as +inf (which `direction: maximize` would rank first) rather than
    as a failed trial; a relaunched search starts over instead of running only the missing
    trials, or shows up in MLflow as a second parent for the same study."""
    search = [
        "-m",
        "hparams_search=optuna",
        "dataset=diabetes",
        "train.epochs=10",
        "train.print_every=0",
        "model.width=0",
        "train.lr=choice(0.05,1e12)",  # 1e12 diverges at once
    ]
    first = run_cli(*search, "hydra.sweeper.n_trials=5")
    assert first.returncode in (0, 1), first.stderr
    assert "Traceback" not in first.stderr
    studies = list((tmp_path / "outputs" / "optuna").glob("*.db"))
    assert len(studies) == 1
    import optuna

    storage = f"sqlite:///{studies[0]}"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    assert len(study.trials) == 5
    diverged = [t for t in study.trials if t.params["train.lr"] == 1e12]
    assert diverged and all(t.state.name == "FAIL" and t.value is None for t in diverged)
    trained = [t for t in study.trials if t not in diverged]
    assert trained and all(t.state.name == "COMPLETE" for t in trained)
    assert all(math.isfinite(t.value) for t in trained)  # no NaN, no inf reached the study
    # The same search launched again with a larger budget runs only what is missing.
    again = run_cli(*search, "hydra.sweeper.n_trials=7")
    assert "Traceback" not in again.stderr
    study = optuna.load_study(study_name=name, storage=storage)
    assert len(study.trials) == 7
    assert len(list(tmp_path.glob("outputs/sweeps/*/*/1/metrics.csv"))) == 1  # job 1: once
    # ...and keeps one parent run for the study (#20): its children are the study's trials.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store_uri(tmp_path))
    runs = client.search_runs([client.get_experiment_by_name("looplab").experiment_id])
    parents = [r for r in runs if r.data.tags.get("looplab.role") == "sweep"]
    assert [p.data.tags["looplab.study"] for p in parents] == [name], "a second parent"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 7


def test_a_search_without_optuna_says_which_extra_in_one_line_and_records_nothing(
    run_cli, tmp_path
) -> None:
    """Faults: `hparams_search=optuna` without the search extra ends in a traceback
    (`No module named 'optuna'`), or leaves an empty KILLED parent run and a sweep folder
    behind, after which `looplab runs --last` fails."""
    fake = tmp_path / "no_optuna" / "optuna"
    fake.mkdir(parents=True)  # an `import optuna` that fails as it does without the extra
    (fake / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'optuna'\", name='optuna')\n"
    )
    import os

    env = {"PYTHONPATH": f"{fake.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = run_cli("-m", "hparams_search=optuna", "train.epochs=2", env=env)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "looplab-train: error: hparams_search=optuna needs Optuna, the `search` extra: "
        "PIP_CONSTRAINT=constraints.txt .venv/bin/pip install -e '.[search]'; nothing was "
        "recorded"
    ]
    assert not (tmp_path / "outputs").exists(), "a parent run or a sweep folder was left"


@pytest.mark.skipif(
    importlib.util.find_spec("optuna") is None, reason="the search extra is not installed"
)
def test_a_search_over_many_choices_never_enumerates_their_combinations(run_cli) -> None:
    """Fault: a search enumerates every combination of its `choice(...)` keys to learn which
    keys it sweeps and to check them (eight keys of ten choices: 10**8 jobs; measured before
    the fix at 3 min 43 s and 23 GB here, seven keys at 10 s and 1.4 GB); a search samples
    its jobs, so each value is checked once (73 jobs here)."""
    from looplab.launch.sweep import enumerate_jobs, swept_keys

    values = [
        "train.lr=choice(0.01,0.02,0.03,0.04,0.05,0.06,0.07,0.08,0.09,0.1)",
        "train.momentum=choice(0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9)",
        "train.weight_decay=choice(0,1e-4,2e-4,3e-4,4e-4,5e-4,6e-4,7e-4,8e-4,9e-4)",
        "seed=choice(1,2,3,4,5,6,7,8,9,10)",
        "model.width=choice(0,1,2,3,4,5,6,7,8,9)",
        "train.batch_size=choice(8,16,24,32,40,48,56,64,72,80)",
        "dataset.test_size=choice(0.1,0.15,0.2,0.25,0.3,0.35,0.4,0.45,0.5,0.55)",
        "train.epochs=choice(1,2,3,4,5,6,7,8,9,10)",
    ]
    assert len(swept_keys(values)) == 8
    assert len(enumerate_jobs(values, every_combination=False)[0]) == 1 + 8 * 9
    done = run_cli("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=1", *values, timeout=150)
    assert done.returncode == 0, done.stderr
    assert "sweep: 1 of 1 jobs finished" in done.stdout
