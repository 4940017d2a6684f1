"""Sweeps on other launchers, as a user types them: submitit (SLURM's code path, run on this
machine by `submitit_local`) and Ray (a local Ray cluster that the launcher starts).

Jobs run in processes the launching one did not fork itself: their parent run is found
through the store, their records through the sweep folder, and their failures through what
the launcher hands back. Each test skips, naming the extra, when its launcher is not
installed (`make setup` leaves them out; `make test` installs the slurm extra).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import CLI, store_uri, sweep_past_a_missing_csv
from test_sweep import sweep_runs

pytestmark = pytest.mark.slow

SUBMITIT = importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None
RAY = importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is not None
needs_submitit = pytest.mark.skipif(
    not SUBMITIT, reason="the slurm extra is not installed: pip install -e '.[slurm]'"
)
needs_ray = pytest.mark.skipif(
    not RAY,
    reason="the ray extra is not installed: make setup-ray (it needs cloudpickle<3, "
    "which the pinned joblib 1.6.0 refuses; docs/scaling.md)",
)


def default_threads() -> int:
    """What `train.threads=null` gives a job that no launcher declared CPUs for."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


# submitit's jobs declare more CPUs than the default would take, to see them reach torch.
GIVEN_CPUS = default_threads() + 2


LAUNCHERS = [
    pytest.param(
        ["hydra/launcher=submitit_local", f"hydra.launcher.cpus_per_task={GIVEN_CPUS}"],
        marks=needs_submitit,
        id="submitit_local",
    ),
    # Ray gives each task one CPU by default: two tasks at once on a 2-core machine.
    pytest.param(["hydra/launcher=ray"], marks=needs_ray, id="ray"),
]


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_four_jobs_elsewhere_are_one_parent_with_four_children(run_cli, tmp_path, launcher) -> None:
    """Faults: jobs in the launcher's processes not linked to the parent (the parent's id kept
    in the launching process's memory), children missing or unnamed, the summary counting
    nothing (job records not shared), the parent left without its counts, a job's console
    lost or folded; on submitit, `train.threads=null` ignoring the CPUs a job was given (a
    SLURM job with 4 CPUs training on the login node's guess)."""
    done = run_cli(
        "-m",
        *launcher,
        "model.width=0,8",
        "update=manual,sgd",
        "train.epochs=3",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    client, parent, children = sweep_runs(store_uri(tmp_path))
    assert parent.info.status == "FINISHED"
    assert sorted(children) == [0, 1, 2, 3]
    names = {num: run.info.run_name for num, run in children.items()}
    assert names == {0: "width=0 manual", 1: "width=0 sgd", 2: "width=8 manual", 3: "width=8 sgd"}
    threads = str(GIVEN_CPUS) if "submitit" in launcher[0] else "1"  # Ray: 1 CPU a task
    for run in children.values():
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 3
        assert run.data.params["torch.threads"] == threads
    tags = parent.data.tags
    assert (tags["looplab.jobs_finished"], tags["looplab.jobs_failed"]) == ("4", "0")
    assert "sweep: 4 of 4 jobs finished" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    # Each job's lines, with its number, where the launcher puts a job's console: submitit's
    # log files; Ray's forwarding to this console, whose folding of lines that differ only in
    # numbers would keep one of "[job 0] Epoch: 3/3, Loss: 0.45" and "[job 1] Epoch: 3/3, ...".
    (sweep_dir,) = list(tmp_path.glob("outputs/sweeps/*/*"))
    logs = "".join(p.read_text() for p in sweep_dir.glob(".submitit/*/*_log.out"))
    console = logs if "submitit" in launcher[0] else done.stdout
    for num, name in names.items():
        assert f"[job {num}] Epoch: 3/3, Loss: " in console
        assert f"[job {num}] {name}: FINISHED after 3 epochs" in console


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_failing_job_elsewhere_fails_the_sweep_and_not_the_others(
    run_cli, tmp_path, launcher
) -> None:
    """Faults: a job that diverges in the launcher's process stops the other jobs, or the
    sweep exits 0 (its failure known only where the job ran), or the summary does not say
    which job failed and why."""
    done = run_cli(
        "-m",
        *launcher,
        "dataset=diabetes",
        "train.lr=0.05,1e10,0.1",
        "train.epochs=5",
        "train.print_every=0",
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "looplab-train: error: 1 job(s) of the sweep failed: #1 lr=1e+10"
    )
    assert "failed: #1 lr=1e+10: training diverged" in done.stdout
    _, parent, children = sweep_runs(store_uri(tmp_path))
    assert {num: run.info.status for num, run in children.items()} == {
        0: "FINISHED",
        1: "FAILED",
        2: "FINISHED",
    }
    assert parent.info.status == "FAILED"
    assert (parent.data.tags["looplab.jobs_finished"], parent.data.tags["looplab.jobs_failed"]) == (
        "2",
        "1",
    )


@needs_submitit
def test_a_job_that_raises_elsewhere_is_counted_from_what_the_launcher_hands_back(
    run_cli, tmp_path
) -> None:
    """Fault: the sweep trusts only the records jobs leave, so a job that raised (here with
    HYDRA_FULL_ERROR=1, which lets a job's error out) and left none vanishes from the summary
    and the sweep exits 0."""
    done = sweep_past_a_missing_csv(
        run_cli, tmp_path, "hydra/launcher=submitit_local", "dataset.path=ok.csv,missing.csv"
    )
    assert done.returncode == 1, done.stdout + done.stderr
    (reason,) = [line for line in done.stdout.splitlines() if line.startswith("failed: #1 ")]
    assert reason.startswith("failed: #1 path=missing.csv: DataError: CSV file not found: ")
    assert reason.endswith("missing.csv"), reason
    assert done.stderr.strip().splitlines()[-1] == (
        "looplab-train: error: 1 job(s) of the sweep failed: #1 path=missing.csv"
    )
    _, parent, children = sweep_runs(store_uri(tmp_path))
    assert [run.info.status for run in children.values()] == ["FINISHED"]
    assert parent.data.tags["looplab.jobs_failed"] == "1"


def submitit_task_pids(job_id: str) -> list[int]:
    """The processes that run submitit's local job `job_id` (its task, not its controller)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            command = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if f"SUBMITIT_LOCAL_JOB_ID={job_id}".encode() in environ and b"_submit" in command:
            pids.append(int(proc.name))
    return pids


@needs_submitit
def test_a_job_whose_process_dies_is_counted_and_its_run_not_left_running(tmp_path) -> None:
    """Faults: a job killed where it runs (out of memory, a node lost: SIGKILL) makes the
    launcher raise for the batch, and the sweep ends in a traceback, its parent never closed
    and the summary never written; or the lost job is not counted and the sweep exits 0; or
    the killed job's run stays RUNNING in the store."""
    process = subprocess.Popen(
        [CLI, "-m", "hydra/launcher=submitit_local", "train.epochs=2,100000", "seed=5"],
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        victims: list[int] = []
        while not victims and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.5)
            for log in tmp_path.glob("outputs/sweeps/*/*/.submitit/*/*_log.out"):
                if "[job 1] Epoch: 3/" in log.read_text():
                    victims = submitit_task_pids(log.parent.name)
        assert victims, "job 1 never got to its third epoch"
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=240)
    finally:
        process.kill()
    assert process.returncode == 1, stdout + stderr
    assert "Traceback" not in stdout + stderr
    assert "failed: #1 epochs=100000: the launcher reported it lost: " in stdout
    assert stderr.strip().splitlines()[-1] == (
        "looplab-train: error: 1 job(s) of the sweep failed: #1 epochs=100000"
    )
    _, parent, children = sweep_runs(store_uri(tmp_path))
    assert parent.info.status == "FAILED"
    assert parent.data.tags["looplab.jobs_failed"] == "1"
    assert {num: run.info.status for num, run in children.items()} == {
        0: "FINISHED",
        1: "KILLED",
    }


def path_without(program: str) -> str:
    """This PATH less every folder that holds `program`: a machine where it is not installed."""
    folders = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(f for f in folders if not (Path(f) / program).exists())


@needs_submitit
def test_slurm_without_sbatch_is_refused_before_anything_is_recorded(run_cli, tmp_path) -> None:
    """Fault: `hydra/launcher=slurm` off the cluster creates the parent run, then fails every
    job with submitit's error, two lines a job, and leaves a FAILED sweep in the store. Run
    with a PATH that lacks sbatch's folder, so that it runs where SLURM is installed too."""
    env = {"PATH": path_without("sbatch")}
    done = run_cli("-m", "hydra/launcher=slurm", "model.width=0,8", "train.epochs=1", env=env)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "looplab-train: error: hydra/launcher=slurm: there is no `sbatch` on this machine; "
        "launch the sweep on the cluster's login node, or try it here with "
        "hydra/launcher=submitit_local"
    )
    assert not (tmp_path / "outputs").exists()


@pytest.mark.skipif(RAY, reason="the ray extra is installed")
def test_a_launcher_from_a_missing_extra_names_the_extra(run_cli, tmp_path) -> None:
    """Fault: `hydra/launcher=ray` without the extra fails with Hydra's list of the launchers
    it has, not with what to install."""
    done = run_cli("-m", "hydra/launcher=ray", "train.epochs=1")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "looplab-train: error: hydra/launcher=ray needs the ray extra: make setup-ray "
        "(docs/scaling.md)"
    )


PARALLEL = [
    pytest.param(["hydra/launcher=joblib", "hydra.launcher.n_jobs=4"], id="joblib"),
    pytest.param(["hydra/launcher=submitit_local"], marks=needs_submitit, id="submitit_local"),
    pytest.param(["hydra/launcher=ray"], marks=needs_ray, id="ray"),
]


@pytest.mark.skipif(importlib.util.find_spec("optuna") is None, reason="the search extra")
@pytest.mark.parametrize("launcher", PARALLEL)
def test_trials_launched_in_parallel_prune_through_one_study(run_cli, tmp_path, launcher) -> None:
    """A pruned search whose trials run four at a time, each in a process of the launcher's.
    Faults: a trial there cannot reach the study (no intermediate values, nothing pruned),
    or prunes against only its own reports, or the sweeper never learns it was pruned."""
    from test_pruning import searched, study_of

    parallel = (*launcher, "hydra.sweeper.n_jobs=4", "hydra.sweeper.pruner.n_startup_trials=4")
    searched(run_cli, *parallel)
    study = study_of(tmp_path)
    assert all(len(t.intermediate_values) >= 1 for t in study.trials)
    first, second = study.trials[:4], study.trials[4:]
    # the first batch ran with no trial complete: nothing to compare against
    assert all(t.state.name == "COMPLETE" for t in first)
    assert any(t.state.name == "PRUNED" for t in second), [t.state.name for t in second]
