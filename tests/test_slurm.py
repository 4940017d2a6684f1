"""A sweep on a real SLURM cluster, as a user types it: `looplab-train -m hydra/launcher=slurm`.

The cluster is tests/slurm_cluster.py's: one node (this machine), munged, slurmctld and
slurmd started for the session, `sbatch` found through SLURM_CONF. The jobs go the whole
way a cluster's do: submitit writes the batch script and calls sbatch, slurmctld schedules
the array, slurmd starts each task with srun in the job's environment, and the launching
process waits on SLURM (squeue; sacct, which this cluster has not, only warns) and the
result pickles. Skips, saying what to install, without slurm-wlm and munge or root.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import CLI
from slurm_cluster import slurm_cluster  # noqa: F401  (the fixture, by name)
from test_sweep import sweep_runs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("slurm"),  # one cluster a host: these tests share one worker
    pytest.mark.skipif(
        importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
        reason="the slurm extra is not installed: pip install -e '.[slurm]'",
    ),
]


def slurm_jobs(array_id: str) -> dict[int, dict[str, str]]:
    """The tasks of job array `array_id` as slurmctld knows them, by task id."""
    shown = subprocess.run(
        ["scontrol", "show", "job", "-o", array_id], capture_output=True, text=True, check=True
    ).stdout
    jobs = {}
    for line in shown.splitlines():
        fields = dict(re.findall(r"(\S+?)=(\S*)", line))
        jobs[int(fields["ArrayTaskId"])] = fields
    return jobs


def test_a_sweep_on_slurm_is_one_parent_with_a_child_a_job(slurm_cluster, run_cli, tmp_path):  # noqa: F811
    """Faults: `hydra/launcher=slurm` that does not reach a real sbatch (the preset's keys
    refused by the plugin, a resource the partition cannot give: the sweep never runs), jobs
    that SLURM ran but that do not find their parent in the store or record nothing, an epoch
    lost or recorded twice, the launching process not getting the jobs' results back from
    SLURM (the summary counting nothing, or the sweep hanging), and the CPUs SLURM gave a job
    not reaching torch (`train.threads=null` guessing from the node instead)."""
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    done = run_cli(
        "-m",
        "hydra/launcher=slurm",
        f"hydra.launcher.partition={slurm_cluster.partition}",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        "hydra.launcher.timeout_min=5",
        f"tracking.uri={uri}",
        "model.width=0,8",
        "train.epochs=3",
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sweep: 2 of 2 jobs finished" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr

    client, parent, children = sweep_runs(uri)
    assert parent.info.status == "FINISHED"
    assert sorted(children) == [0, 1]
    for run in children.values():
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
        assert sorted(steps) == [1, 2, 3], steps
        assert run.data.params["torch.threads"] == "1"  # SLURM_CPUS_PER_TASK, not the node's 2
    tags = parent.data.tags
    assert (tags["looplab.jobs_finished"], tags["looplab.jobs_failed"]) == ("2", "0")

    # SLURM ran them: one array, its tasks COMPLETED on this node, in the partition asked
    # for, with the CPUs and the log files submitit asked for in the sweep folder.
    (sweep_dir,) = list(tmp_path.glob("outputs/sweeps/*/*"))
    folders = sorted(p.name for p in sweep_dir.glob(".submitit/[0-9]*_[0-9]*"))
    array_ids = {name.split("_")[0] for name in folders}
    assert len(folders) == 2 and len(array_ids) == 1, folders
    (array_id,) = array_ids
    jobs = slurm_jobs(array_id)
    assert sorted(jobs) == [0, 1]
    for task, job in jobs.items():
        assert job["JobState"] == "COMPLETED", job
        assert job["ExitCode"] == "0:0"
        assert (job["Partition"], job["NodeList"], job["NumCPUs"]) == (
            slurm_cluster.partition,
            slurm_cluster.node,
            "1",
        )
        log = sweep_dir / ".submitit" / f"{array_id}_{task}" / f"{array_id}_{task}_0_log.out"
        assert job["StdOut"] == str(log)
        console = log.read_text()
        assert f"JobEnvironment(job_id={array_id}_{task}, hostname={slurm_cluster.node}" in console
        assert f"[job {task}] Epoch: 3/3, Loss: " in console
        assert f"[job {task}] width={(0, 8)[task]}: FINISHED after 3 epochs" in console
    assert slurm_cluster.jobs() == []  # nothing left pending or running


# A job that trains long enough (two of them share this machine's CPUs) to be requeued
# mid-run: SGD in mini-batches, as tests/test_resume.py trains.
LONG_JOB = ("update=sgd", "train.momentum=0.9", "train.batch_size=16", "train.epochs=600")
EPOCHS = 600


def start_sweep(folder: Path, *args: str) -> subprocess.Popen:
    """`looplab-train -m hydra/launcher=slurm ARGS` in `folder`, in the background, its
    console in sweep.out."""
    out = (folder / "sweep.out").open("w")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.Popen(
        [CLI, "-m", "hydra/launcher=slurm", *args], cwd=folder, env=env, stdout=out, stderr=out
    )


def epochs_in(csv: Path) -> int:
    """The epochs a run's metrics.csv holds so far (0: none, or no file yet)."""
    return max(0, len(csv.read_text().splitlines()) - 1) if csv.is_file() else 0


def wait_for(what: str, ready, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(0.2)


def metric_steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_a_requeued_job_goes_on_from_its_checkpoint_in_the_same_run(
    slurm_cluster,  # noqa: F811
    run_cli,
    tmp_path,
):
    """`scontrol requeue` on one job of a sweep mid-run (what a preemption or an admin does):
    SLURM stops it with SIGTERM, it ends KILLED with a checkpoint in its Hydra folder, SLURM
    runs it again there, and it goes on from that checkpoint in the same MLflow run.

    Faults: the requeued job starting from epoch 1 (its own folder's checkpoint not found, or
    none written at the stop), a second child run for the job (a fresh run instead of the
    checkpoint's), an epoch logged twice or lost across the requeue, the resumed run not
    bitwise the uninterrupted one (a state not restored: RNG, optimizer, batch position),
    the first attempt's exit leaving submitit a result (the launcher would take the KILLED
    attempt as the job's end and the sweep fail or count it twice), the sweep summary
    counting the job as killed or not as resumed, and a requeue that waits SLURM's default
    two minutes (the fixture's cred_expire)."""
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    sweep_dir = tmp_path / "sweep"
    sweep = start_sweep(
        tmp_path,
        f"hydra.launcher.partition={slurm_cluster.partition}",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        "hydra.launcher.timeout_min=5",
        f"tracking.uri={uri}",
        f"hydra.sweep.dir={sweep_dir}",
        *LONG_JOB,
        "train.lr=0.05,0.1",
    )
    try:
        csv = sweep_dir / "0" / "metrics.csv"
        wait_for("job 0's 60th epoch", lambda: epochs_in(csv) >= 60, timeout=120)
        (task_folder,) = sweep_dir.glob(".submitit/[0-9]*_0")
        array_id = task_folder.name.split("_")[0]
        slurm_cluster.scontrol("requeue", f"{array_id}_0")
        requeued_at, before = time.monotonic(), epochs_in(csv)
        assert before < EPOCHS, "job 0 finished before it was requeued: give it more epochs"
        sweep.wait(timeout=240)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()
    console = (tmp_path / "sweep.out").read_text()
    assert sweep.returncode == 0, console
    assert "sweep: 2 of 2 jobs finished (1 resumed from a checkpoint)" in console, console
    assert "Traceback" not in console, console

    # SLURM ran job 0 twice (the same job id, in the same folder), job 1 once.
    jobs = slurm_jobs(array_id)
    assert (jobs[0]["Restarts"], jobs[1]["Restarts"]) == ("1", "0"), jobs
    assert all(job["JobState"] == "COMPLETED" for job in jobs.values()), jobs
    log = task_folder / f"{array_id}_0_0_log.out"
    starts = re.findall(r"Starting with JobEnvironment", log.read_text())
    assert len(starts) == 2, log.read_text()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("looplab").experiment_id
    runs = client.search_runs([experiment])
    parents = [r for r in runs if r.data.tags.get("looplab.role") == "sweep"]
    children = [r for r in runs if r not in parents]
    assert len(parents) == 1 and len(children) == 2, [r.info.run_name for r in runs]
    (parent,) = parents
    by_job = {int(r.data.tags["looplab.job"]): r for r in children}
    assert sorted(by_job) == [0, 1]
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        for key in ("train_loss", "val_loss"):
            assert metric_steps(client, run.info.run_id, key) == list(range(1, EPOCHS + 1))
    requeued, other = by_job[0].data.tags, by_job[1].data.tags
    assert requeued["looplab.resumes"] == "1"
    resumed_at = int(requeued["looplab.resumed_at_epoch"])
    # From its checkpoint: past every epoch its metrics.csv showed when it was requeued.
    assert before < resumed_at < EPOCHS, (resumed_at, before)
    assert "looplab.resumes" not in other
    tags = parent.data.tags
    assert (tags["looplab.jobs_finished"], tags["looplab.jobs_resumed"]) == ("2", "1")
    assert tags["looplab.jobs_killed"] == "0"

    # Bit for bit what the same config gives trained without a stop (here, one thread, as
    # SLURM's cpus_per_task=1 gave the job).
    alone = run_cli(*LONG_JOB, "train.lr=0.05", "train.threads=1", "tracking.enabled=false")
    assert alone.returncode == 0, alone.stdout + alone.stderr
    (alone_csv,) = tmp_path.glob("outputs/runs/*/*/metrics.csv")

    def values(path: Path) -> list[list[str]]:  # every metric of every epoch, no timestamps
        rows = [line.split(",") for line in path.read_text().splitlines()]
        return [[row[0], *row[2:]] for row in rows]

    assert values(csv) == values(alone_csv)
    history = client.get_metric_history(by_job[0].info.run_id, "val_loss")
    logged = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert logged == [float(row[2]) for row in values(alone_csv)[1:]]
    print(
        f"requeued at epoch {before}, resumed at {resumed_at}, "
        f"sweep done {time.monotonic() - requeued_at:.0f} s after the requeue"
    )


def epochs_per_second(folder: Path) -> float:
    """How fast this machine trains LONG_JOB on one thread now: a short run's metrics.csv
    timestamps (its 100th epoch to its last: past the first epochs' warm-up)."""
    calibration = folder / "calibration"
    calibration.mkdir()
    done = subprocess.run(
        [CLI, *LONG_JOB[:-1], "train.epochs=1000", "train.threads=1", "tracking.enabled=false"],
        cwd=calibration,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "FINISHED" in done.stdout + done.stderr
    (csv,) = calibration.glob("outputs/runs/*/*/metrics.csv")
    rows = [line.split(",") for line in csv.read_text().splitlines()[1:]]
    return (len(rows) - 100) / max(1e-3, (int(rows[-1][1]) - int(rows[99][1])) / 1000)


def test_a_job_at_its_time_limit_is_requeued_and_goes_on(slurm_cluster, tmp_path):  # noqa: F811
    """A job that reaches its time limit, as hydra-submitit-launcher sets it up:
    `#SBATCH --signal=USR2@signal_delay_s` and submitit's USR2 handler (requeue while
    max_num_timeout allows). SLURM sends USR2 before the limit; looplab stops the run
    between two steps, KILLED with a checkpoint, then hands USR2 to submitit, which requeues
    the job and exits; SLURM runs it again in its folder, and it goes on from the checkpoint
    in the same MLflow run, as often as the limit comes, until it FINISHES.

    slurmctld sends the warning from a loop that runs every 30 s, so it comes 20 to 50 s
    into a job with timeout_min=1 and signal_delay_s=10 (and the limit's kill at least 30 s
    after it): the job is sized (on this machine's speed, which varies on shared CPUs) to
    train about 65 s, so that it meets the limit at least once, and max_num_timeout=5 lets
    it meet it again as often as it may (each attempt trains 14 s or more).

    Faults: USR2 killing the job outright (no handler held it, or the MLflow writer dying
    of it before the run was delivered), USR2 not handed on to submitit after the run closed
    (the job ends KILLED and is never requeued: the sweep fails), submitit's exit leaving a
    result (the launcher would take the stopped attempt as the job's end), the requeued job
    starting from epoch 1 or as a second child run, an epoch lost or logged twice."""
    epochs = max(2000, round(65 * epochs_per_second(tmp_path)))
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    sweep_dir = tmp_path / "sweep"
    started = time.monotonic()
    sweep = start_sweep(
        tmp_path,
        f"hydra.launcher.partition={slurm_cluster.partition}",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        "hydra.launcher.timeout_min=1",
        "hydra.launcher.signal_delay_s=10",
        "hydra.launcher.max_num_timeout=5",
        f"tracking.uri={uri}",
        f"hydra.sweep.dir={sweep_dir}",
        *LONG_JOB[:-1],
        f"train.epochs={epochs}",
        "train.lr=0.05",  # one job: -m makes it a sweep of one on SLURM
    )
    try:
        sweep.wait(timeout=420)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()
    console = (tmp_path / "sweep.out").read_text()
    assert sweep.returncode == 0, console
    assert "sweep: 1 of 1 jobs finished (1 resumed from a checkpoint)" in console, console
    assert "Traceback" not in console, console

    (job_folder,) = sweep_dir.glob(".submitit/[0-9]*")  # one job: submitit sends no array
    shown = slurm_cluster.scontrol("show", "job", "-o", job_folder.name)
    job = dict(re.findall(r"(\S+?)=(\S*)", shown))
    restarts = int(job["Restarts"])
    assert job["JobState"] == "COMPLETED" and restarts >= 1, job
    log = (job_folder / f"{job_folder.name}_0_log.err").read_text()
    # submitit's handler got each warning (its logger writes each line twice, one prefixed).
    warned = re.findall(
        r"submitit WARNING .* Caught signal SIGUSR2 on .*: this job is timed-out", log
    )
    assert len(warned) == restarts, log

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("looplab").experiment_id
    runs = client.search_runs([experiment])
    children = [r for r in runs if r.data.tags.get("looplab.role") == "job"]
    assert len(runs) == 2 and len(children) == 1, [r.info.run_name for r in runs]
    (run,) = children
    assert run.info.status == "FINISHED"
    for key in ("train_loss", "val_loss"):
        assert metric_steps(client, run.info.run_id, key) == list(range(1, epochs + 1))
    assert run.data.tags["looplab.resumes"] == str(restarts)
    resumed_at = [int(at) for at in run.data.tags["looplab.resumed_at_epoch"].split(",")]
    assert resumed_at[0] > 1 and resumed_at == sorted(set(resumed_at)), resumed_at
    print(
        f"{epochs} epochs, requeued {restarts}x (resumed at {resumed_at}), "
        f"{time.monotonic() - started:.0f} s"
    )
