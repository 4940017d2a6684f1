"""Hydra's own conformance suites for plugin authors, run on looplab's launcher and grid
sweeper, and Hydra's failure contract for a sweep of an app that is not looplab's.

Hydra ships the suites in `hydra.test_utils.launcher_common_tests`; its own plugins
(hydra_joblib_launcher) subclass them, parametrised with the plugin's name, and so does this
file. Each plugin runs beside Hydra's own counterpart (looplab's launcher under Hydra's basic
sweeper, looplab's sweeper under Hydra's basic launcher) and beside the other looplab plugin.
The suites' apps are Hydra's test apps, not looplab's: the plugins must hold for any app.

Faults the suites catch (each seen failing in a broken copy): the grid sweeper returning its
jobs as one flat list (Hydra's sweepers return one list per batch), its batch size ignored,
the launcher leaving a job's `hydra.job.num` or `override_dirname` as the shared
composition's. The failure tests below catch what the suites do not: a failed job of another
app swallowed, its finished jobs called lost, a composition error recorded instead of raised.
"""

from __future__ import annotations

import importlib.util
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import sweep_past_a_missing_csv
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    IntegrationTestSuite,
    LauncherTestSuite,
)
from hydra.version import VersionBase
from packaging.version import Version


@pytest.fixture(autouse=True)
def hydras_own_version_base(hydra_restore_singletons) -> None:
    """Hydra's suites are written for an app that names no version_base: Hydra then takes
    1.1's defaults (a job runs in its own folder, which the suites check). Tests run before
    these in the same session (compose with version_base="1.3") leave 1.3 in Hydra's
    singletons; each test here starts from 1.1, as Hydra's own test session does, and
    `hydra_restore_singletons` (which this fixture waits for) puts back what was there."""
    VersionBase.instance().setbase(Version("1.1"))


# (launcher, overrides): each looplab plugin beside Hydra's own counterpart, then together.
PAIRS = [
    pytest.param("looplab", [], id="looplab_launcher+basic_sweeper"),
    pytest.param("basic", ["hydra/sweeper=looplab_grid"], id="basic_launcher+looplab_grid"),
    pytest.param("looplab", ["hydra/sweeper=looplab_grid"], id="looplab_launcher+looplab_grid"),
    # another app's jobs: run as looplab's launcher runs them (nothing of looplab's to stack)
    pytest.param("stacked", ["hydra/sweeper=looplab_grid"], id="stacked_launcher+looplab_grid"),
]


@pytest.mark.parametrize(("launcher_name", "overrides"), PAIRS)
class TestLauncherSuite(LauncherTestSuite):
    """Hydra's launcher suite: jobs' configs, folders and returns, in this process."""


@pytest.mark.parametrize(
    ("launcher_name", "overrides"),
    [
        pytest.param(
            launcher,
            ["hydra/sweeper=looplab_grid", "hydra.sweeper.max_batch_size=2"],
            id=f"{launcher}_launcher+looplab_grid",
        )
        for launcher in ("basic", "looplab")
    ],
)
class TestBatchedSweeperSuite(BatchedSweeperTestSuite):
    """Hydra's batched sweeper suite: 6 jobs in 3 batches of 2, one list of returns a batch."""


QUIET = ["hydra/hydra_logging=disabled", "hydra/job_logging=disabled"]


# What the app sees of its job is mostly the launcher's work: looplab's launcher under Hydra's
# sweeper, then under looplab's (the pair looplab-train runs). One app run a test, ~1 s each.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("task_launcher_cfg", "extra_flags"),
    [
        pytest.param({}, ["-m", "hydra/launcher=looplab", *QUIET], id="looplab_launcher"),
        pytest.param(
            {},
            ["-m", "hydra/launcher=looplab", "hydra/sweeper=looplab_grid", *QUIET],
            id="looplab_launcher+looplab_grid",
        ),
    ],
)
class TestIntegrationSuite(IntegrationTestSuite):
    """Hydra's integration suite: a generated app run in a subprocess with -m (job names,
    sweep folders and subfolders, the original cwd, to_absolute_path)."""


APPS = Path(__file__).parent / "apps"


def run_app(folder: Path, app: str, *overrides: str) -> subprocess.CompletedProcess[str]:
    """`python tests/apps/APP -m OVERRIDES` in `folder`, its sweep in `folder/sweep`."""
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, str(APPS / app), "-m", *overrides, f"hydra.sweep.dir={folder / 'sweep'}"],
        cwd=folder,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )


# Three jobs, two a batch: the first raises ZeroDivisionError, the second still runs (a batch
# runs whole), the third, in the next batch, never does.
CAN_FAIL = ["+divisor=0,1,2", "hydra.sweeper.max_batch_size=2"]
# Two jobs whose config cannot be composed (`nokey` is not in the app's config).
BAD_KEY = ["+divisor=1", "nokey=1,2"]


@pytest.fixture(scope="module")
def under_hydra(tmp_path_factory) -> Callable[[list[str]], subprocess.CompletedProcess[str]]:
    """The sweep of `can_fail.py` under Hydra's basic sweeper and launcher: the contract."""
    runs: dict[str, subprocess.CompletedProcess[str]] = {}

    def run(overrides: list[str]) -> subprocess.CompletedProcess[str]:
        key = " ".join(overrides)
        if key not in runs:
            runs[key] = run_app(tmp_path_factory.mktemp("hydra"), "can_fail.py", *overrides)
        return runs[key]

    return run


GRID = [
    pytest.param(["hydra/sweeper=looplab_grid"], id="basic_launcher+looplab_grid"),
    pytest.param(
        ["hydra/sweeper=looplab_grid", "hydra/launcher=looplab"],
        id="looplab_launcher+looplab_grid",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "plugins",
    [*GRID, pytest.param(["hydra/launcher=looplab"], id="looplab_launcher+basic_sweeper")],
)
def test_a_failed_job_of_any_app_fails_the_sweep_as_under_hydras_basic_sweeper(
    tmp_path, under_hydra, plugins
) -> None:
    """Hydra's `test_partial_failure`, on an app that is not looplab's. Faults: the job's
    exception swallowed (recorded as a failed job, as for looplab's own app), so the sweep
    goes on to the next batch and exits 0; the jobs that finished called lost ("ended
    without leaving a record": no looplab record, for an app that never writes one); looplab's
    records written into another app's sweep folder; the launcher raising the job's error
    itself instead of handing back a failed JobReturn (the rest of its batch never runs)."""
    hydra = under_hydra(CAN_FAIL)
    assert hydra.returncode == 1, hydra.stderr
    ours = run_app(tmp_path, "can_fail.py", *CAN_FAIL, *plugins)
    assert ours.returncode == hydra.returncode, ours.stderr
    assert ours.stderr == hydra.stderr
    assert ours.stderr.startswith("Error executing job with overrides: ['+divisor=0']\n")
    assert "ZeroDivisionError: division by zero" in ours.stderr
    values = [line for line in ours.stdout.splitlines() if line.startswith("val=")]
    assert values == ["val=1.0"]  # job 1 ran after job 0 failed; job 2 never did
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["0", "1", "multirun.yaml"]


@pytest.mark.slow
@pytest.mark.parametrize("plugins", GRID)
def test_a_job_that_cannot_be_composed_fails_the_sweep_as_under_hydra(
    tmp_path, under_hydra, plugins
) -> None:
    """Fault: the launcher's error for the batch (here Hydra's composition error for a key
    the app's config lacks) recorded as the jobs' loss, as for looplab's own app on a
    cluster, and the sweep exits 0; Hydra's sweep fails with the error, no job run."""
    hydra = under_hydra(BAD_KEY)
    assert hydra.returncode == 1, hydra.stderr
    ours = run_app(tmp_path, "can_fail.py", *BAD_KEY, *plugins)
    assert (ours.returncode, ours.stderr) == (hydra.returncode, hydra.stderr)
    assert ours.stderr.startswith("Could not override 'nokey'.")
    assert "val=" not in ours.stdout


@pytest.mark.slow
def test_looplab_goes_on_past_a_job_that_raised_and_fails_at_the_end(run_cli, tmp_path) -> None:
    """looplab's own app under the same sweeper keeps its contract: a job that raised (here
    with HYDRA_FULL_ERROR=1, which lets a job's error out) is recorded FAILED, the jobs after
    it run, and the sweep exits 1 after its summary. Fault: looplab's task function taken for
    any app's (its `records_its_jobs` mark lost), so the job's exception stops the sweep as
    Hydra's would: the next batch never runs, and no summary is printed."""
    done = sweep_past_a_missing_csv(
        run_cli,
        tmp_path,
        "dataset.path=missing.csv,ok.csv",
        "hydra.sweeper.max_batch_size=1",
        "tracking.enabled=false",
    )
    assert done.returncode == 1, done.stdout + done.stderr
    finished = [line for line in done.stdout.splitlines() if ": FINISHED after 2 epochs" in line]
    assert [line.split()[:2] for line in finished] == [["[job", "1]"]], done.stdout
    assert "sweep: 1 of 2 jobs finished; failed: #0 path=missing.csv" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == (
        "looplab-train: error: 1 job(s) of the sweep failed: #0 path=missing.csv"
    )


NEEDS_OPTUNA = pytest.mark.skipif(
    importlib.util.find_spec("optuna") is None,
    reason="Optuna is an optional extra: pip install -e '.[search]' (make test installs it)",
)


@pytest.mark.slow
@NEEDS_OPTUNA
@pytest.mark.parametrize(("direction", "best"), [("minimize", 1.0), ("maximize", 2.0)])
def test_a_job_with_no_finite_value_is_a_failed_trial_under_either_direction(
    tmp_path, direction: str, best: float
) -> None:
    """looplab's Optuna sweeper on an app whose jobs return 1, 2 or +inf (what looplab's
    task function returns for a job that did not finish). Faults: +inf told to the study as
    a value: under maximize the study's best trial is the failed job, under minimize a
    failed job stands as a COMPLETE trial; the best-trial line taking the wrong direction."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    done = run_app(
        tmp_path,
        "objective.py",
        "hydra/sweeper=looplab_optuna",
        f"hydra.sweeper.direction={direction}",
        "hydra.sweeper.n_trials=4",  # with seed 42: 2.0, 1.0, 2.0, inf
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=s",
        "+value=choice(1.0,2.0,inf)",
    )
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="s", storage=storage)
    states = {(t.params["+value"], t.state.name, t.value) for t in study.trials}
    assert states == {(1.0, "COMPLETE", 1.0), (2.0, "COMPLETE", 2.0), (math.inf, "FAIL", None)}
    assert study.best_value == best
    assert done.stdout.strip().splitlines()[-1].endswith(f"+value={best}: {best:.6g}")


@pytest.mark.slow
@NEEDS_OPTUNA
def test_a_job_that_raised_is_a_failed_trial_and_stops_another_apps_search(tmp_path) -> None:
    """As Hydra's Optuna sweeper does: the trial is told FAIL, then the job's exception fails
    the search. Faults: the exception swallowed (the search runs on and exits 0), or raised
    before the study hears of the trial (left RUNNING)."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    done = run_app(
        tmp_path,
        "can_fail.py",
        "hydra/sweeper=looplab_optuna",
        "hydra.sweeper.n_trials=6",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=s",
        "+divisor=choice(0,1)",
    )
    assert done.returncode == 1
    assert "ZeroDivisionError: division by zero" in done.stderr
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert len(trials) < 6 and trials[-1].params["+divisor"] == 0
    assert [t.state.name for t in trials] == ["COMPLETE"] * (len(trials) - 1) + ["FAIL"]


@NEEDS_OPTUNA
def test_a_range_keeps_its_values_whatever_their_type_or_order() -> None:
    """Held to hydra-optuna-sweeper. Faults: a float `range(0.5, 5.5, step=1)` searched as
    integers; `range(-5.5, 5.5, step=0.5)` (the plugin's sphere example) crashing, even when
    the command line replaces that key; `shuffle(range(1,10))` taken from its first and last
    shuffled values."""
    from optuna.distributions import FloatDistribution, IntDistribution

    from hydra_plugins.looplab_optuna_sweeper.sweeper import LooplabOptunaSweeper

    declared = {"x": "range(-5.5, 5.5, step=0.5)", "y": "range(0.5, 5.5, step=1)"}
    sweeper = LooplabOptunaSweeper(params=declared)
    space, fixed = sweeper._space(["z=shuffle(range(1,10))"])
    assert space["x"] == FloatDistribution(-5.5, 5.0, step=0.5)
    assert space["y"] == FloatDistribution(0.5, 4.5, step=1.0)
    assert space["z"] == IntDistribution(1, 9, step=1)
    replaced, _ = LooplabOptunaSweeper(params={"x": "range(-5.5, 5.5, step=0.5)"})._space(
        ["x=choice(1,2)"]
    )
    assert list(replaced) == ["x"] and replaced["x"].choices == (1, 2)
    assert fixed == []


@pytest.mark.slow
@NEEDS_OPTUNA
def test_the_optuna_sweeper_refuses_unknown_keys_and_stops_at_its_failure_rate(
    tmp_path,
) -> None:
    """Held to hydra-optuna-sweeper. Faults: an unknown `hydra.sweeper` key accepted in
    silence (a search unlike the one asked for); `max_failure_rate` refused, so a search
    whose every trial fails runs to its end; no `optimization_results.yaml` (the best
    parameters and value, which scripts read)."""
    import optuna
    import yaml

    def search(folder: str, *overrides: str) -> tuple[subprocess.CompletedProcess[str], object]:
        storage = f"sqlite:///{tmp_path / folder / 'study.db'}"
        done = run_app(
            tmp_path / folder,
            "objective.py",
            "hydra/sweeper=looplab_optuna",
            "hydra.sweeper.n_trials=4",
            f"hydra.sweeper.storage={storage}",
            "hydra.sweeper.study_name=s",
            *overrides,
        )
        return done, (lambda: optuna.load_study(study_name="s", storage=storage))

    done, _ = search("unknown", "+hydra.sweeper.sampler_seed=1", "+value=choice(1.0,2.0)")
    assert done.returncode == 1
    assert "hydra.sweeper.sampler_seed is not a key of looplab's Optuna sweeper" in done.stderr

    done, study = search("failing", "hydra.sweeper.max_failure_rate=0.5", "+value=choice(inf)")
    assert "stopped after 1 trials: 1 failed, more than hydra.sweeper.max_failure_rate=0.5" in (
        done.stdout
    )
    assert len(study().trials) == 1
    done, study = search("going_on", "+value=choice(inf)")  # looplab's default: 1.0
    assert len(study().trials) == 4

    done, study = search("results", "+value=choice(1.0,2.0)")
    assert done.returncode == 0, done.stderr
    results = yaml.safe_load(
        (tmp_path / "results" / "sweep" / "optimization_results.yaml").read_text()
    )
    assert results == {"name": "optuna", "best_params": {"+value": 1.0}, "best_value": 1.0}


@NEEDS_OPTUNA
def test_a_multi_objective_search_keeps_its_pareto_front(tmp_path) -> None:
    """Held to hydra-optuna-sweeper's multi-objective example. Faults: `direction` as a list
    refused or read as one direction; the jobs' pairs told as one value (or as failures);
    no `solutions` in optimization_results.yaml; a pruner accepted where Optuna cannot
    prune."""
    import optuna
    import yaml

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    search = (
        "hydra/sweeper=looplab_optuna",
        "hydra.sweeper.direction=[minimize,minimize]",
        "hydra.sweeper.n_trials=8",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=s",
        "+x=range(0,3)",
        "+y=range(0,3)",
    )
    done = run_app(tmp_path, "two_objectives.py", *search)
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="s", storage=storage)
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    assert all(t.state.name == "COMPLETE" and len(t.values) == 2 for t in study.trials)
    asked = {(t.params["+x"], t.params["+y"]) for t in study.trials}
    for t in study.trials:  # each job's pair, told as two values
        x, y = t.params["+x"], t.params["+y"]
        assert t.values == [x**2 + y**2, (x - 2) ** 2 + (y - 2) ** 2]

    def dominated(a, b) -> bool:  # b at least as good in both, better in one
        fa = (a[0] ** 2 + a[1] ** 2, (a[0] - 2) ** 2 + (a[1] - 2) ** 2)
        fb = (b[0] ** 2 + b[1] ** 2, (b[0] - 2) ** 2 + (b[1] - 2) ** 2)
        return all(v <= u for u, v in zip(fa, fb, strict=True)) and fa != fb

    front = {(t.params["+x"], t.params["+y"]) for t in study.best_trials}
    assert front == {a for a in asked if not any(dominated(a, b) for b in asked)}
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna"
    assert {(s["params"]["+x"], s["params"]["+y"]) for s in results["solutions"]} == front
    assert "on the Pareto front" in done.stdout

    pruned = run_app(
        tmp_path / "pruned", "two_objectives.py", *search, "hydra/sweeper/pruner=median"
    )
    assert pruned.returncode != 0
    assert "Optuna cannot prune a multi-objective search" in pruned.stderr


@pytest.mark.slow
@NEEDS_OPTUNA
def test_a_killed_search_launched_again_reruns_its_killed_trial_and_nothing_else(
    tmp_path,
) -> None:
    """Faults (#20): the relaunch asks the first launch's parameters again (its seeded
    sampler restarts), the killed trial is never run again and counts toward `n_trials`, so
    the study ends one complete trial short."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = [
        sys.executable,
        str(APPS / "slow_objective.py"),
        "-m",
        "hydra/sweeper=looplab_optuna",
        "hydra.sweeper.n_trials=5",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=s",
        "+value=interval(0,1)",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    (tmp_path / "slow").touch()
    first = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline and first.poll() is None, "trial 2 never started"
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=60)
    killed = optuna.load_study(study_name="s", storage=storage).trials[2]
    assert killed.state.name == "RUNNING"

    (tmp_path / "slow").unlink()
    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    trials = optuna.load_study(study_name="s", storage=storage).trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 5, [(t.number, t.state.name) for t in trials]
    assert trials[2].state.name == "FAIL"
    assert killed.params in [t.params for t in complete[2:]], "the killed trial never ran again"
    values = [t.params["+value"] for t in complete]
    assert len(set(values)) == len(values), "a relaunch asked the first launch's values again"
