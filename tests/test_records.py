"""What a run leaves in MLflow about itself: how it ended, what it trained on, where it is."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import torch
from conftest import only_run
from sklearn.model_selection import train_test_split

from looplab.cli.train import execute_tracked as execute


def csv_with_one_bad_validation_row(folder) -> str:
    """A table whose validation split holds one row of 1e300 (inf in float32); training is fine."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(100, 2)), columns=["a", "b"])
    frame["y"] = (frame.a > 0).astype(int)
    _, val_rows = train_test_split(
        np.arange(100), test_size=0.2, random_state=42, stratify=frame.y.to_numpy()
    )
    frame.loc[val_rows[0], "b"] = 1e300
    path = folder / "bad-val.csv"
    frame.to_csv(path, index=False)
    return str(path)


def test_a_run_whose_validation_numbers_are_not_finite_ends_failed(
    make_config, tmp_path, client
) -> None:
    """Fault: only the training loss is checked, so a NaN val_loss ends the run FINISHED."""
    cfg = make_config(
        "dataset=csv",
        f"dataset.path={csv_with_one_bad_validation_row(tmp_path)}",
        "dataset.target=y",
        "train.epochs=5",
        "train.print_every=0",
    )
    result = execute(cfg, tmp_path / "run")
    assert result.status == "FAILED" and result.exit_code == 1
    assert "val_loss" in result.error and "epoch 1" in result.error
    assert result.objective() == math.inf
    run = only_run(client)
    assert run.info.status == "FAILED"
    assert run.data.tags["looplab.diverged_at_epoch"] == "1"


def test_a_failed_job_ranks_last_and_a_finished_one_returns_its_final_val_loss(
    make_config, tmp_path
) -> None:
    """Fault: a diverged job returns its last finite val_loss (or NaN) to the sweeper."""
    base = ("dataset=diabetes", "train.epochs=8", "train.print_every=0", "tracking.enabled=false")
    diverged = execute(make_config(*base, "train.lr=1e10"), tmp_path / "a")
    assert diverged.status == "FAILED" and len(diverged.history) >= 1
    assert diverged.objective() == math.inf
    finished = execute(make_config(*base, "train.lr=0.05"), tmp_path / "b")
    assert finished.objective() == finished.history[-1].metrics["val_loss"]
    assert math.isfinite(finished.objective())


def test_the_run_records_its_inferred_task_its_data_and_its_folder(
    make_config, tmp_path, client
) -> None:
    """Fault: the inferred task, class order, table size, threads or run folder left out."""
    path = tmp_path / "pets.csv"
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(60, 3)), columns=["a", "b", "c"])
    frame["pet"] = np.where(frame.a > 0.3, "dog", np.where(frame.a < -0.3, "cat", "NA"))
    frame.to_csv(path, index=False)
    cfg = make_config(
        "dataset=csv",
        f"dataset.path={path}",
        "dataset.target=pet",
        "train.epochs=2",
        "train.print_every=0",
        "train.threads=1",
    )
    execute(cfg, tmp_path / "run")
    run = only_run(client)
    params, tags = run.data.params, run.data.tags
    assert params["data.task"] == "multiclass" and params["data.classes"] == "NA,cat,dog"
    assert (params["data.rows"], params["data.features"]) == ("60", "3")
    assert params["train.threads"] == "1" and params["torch.threads"] == "1"
    assert "non-numeric" in tags["looplab.task_reason"]
    assert tags["looplab.run_dir"] == str((tmp_path / "run").resolve())
    assert "model.activation" not in params  # width 0: no hidden layer to activate


def test_train_threads_reaches_torch(make_config, tmp_path) -> None:
    """Fault: train.threads ignored (torch keeps the cores-less-one guess)."""
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            cfg = make_config(
                f"train.threads={threads}",
                "train.epochs=1",
                "train.print_every=0",
                "tracking.enabled=false",
            )
            execute(cfg, tmp_path / str(threads))
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


def test_threads_follow_the_cpus_a_scheduler_gave(monkeypatch) -> None:
    """Faults: SLURM_CPUS_PER_TASK ignored (a job under sbatch takes the node's cores less
    one), a launcher's declared CPUs ignored, or either wins over an explicit train.threads."""
    from looplab.run.prepare import torch_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    guess = torch_threads()
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", str(guess + 3))
    assert torch_threads() == guess + 3
    assert torch_threads(given=guess + 5) == guess + 5  # submitit's cpus_per_task
    assert torch_threads(given=0.5) == 1  # Ray's fractional num_cpus
    assert torch_threads(2, given=guess + 5) == 2
    # a stack trains while the MLflow writer waits: every core this process may use
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    cores = len(os.sched_getaffinity(0))
    assert torch_threads(writer_idle=True) == cores
    assert torch_threads() == max(1, cores - 1)
