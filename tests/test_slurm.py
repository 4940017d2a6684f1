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
import re
import subprocess

import pytest
from slurm_cluster import slurm_cluster  # noqa: F401  (the fixture, by name)
from test_sweep import sweep_runs

pytestmark = [
    pytest.mark.slow,
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
