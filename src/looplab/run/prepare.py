"""Everything one run trains with, built from a plain config: threads, seed, device, data,
model, update, loss. The CLI, `make bench` and the tests all build runs here."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from omegaconf import DictConfig

from looplab.core import data as datasets
from looplab.core import tables
from looplab.core.device import resolve_device, step_work
from looplab.core.loop import EpochCallback, EpochResult, Progress, fit
from looplab.core.model import LossFn, build_model, loss_function, quality, user_model
from looplab.core.schema import has_target, hidden_widths, target_arguments, update_name
from looplab.core.update import Updater, build_update
from looplab.run.parts import Parts


def torch_threads(
    asked: int | None = None, given: float | None = None, writer_idle: bool = False
) -> int:
    """Threads for torch's CPU kernels: `train.threads` when set; otherwise the CPUs this job
    was given, wherever a scheduler says so; otherwise the cores this process may use, less
    one for the MLflow writer and the rest of the machine (`writer_idle`: none left for it,
    as while a stack trains before any of its runs is recorded).

    The CPUs given, in order: `given` (a launcher's declared CPUs per job, e.g. submitit's
    `cpus_per_task`, which its local executor does not enforce), SLURM's
    `SLURM_CPUS_PER_TASK` (a job under sbatch or srun), then `OMP_NUM_THREADS` (set per job by
    joblib's workers, and by Ray to a task's `num_cpus`).

    Torch's default (every core) makes its threads spin against the writer or other jobs: on
    2 busy cores a small epoch was measured 10 to 300 times slower with 2 threads than with 1.
    """
    if asked is not None:
        return asked
    if given:
        return max(1, int(given))
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) >= 1:
        return int(slurm)
    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) - (0 if writer_idle else 1))


@dataclass
class Prepared:
    """Everything one run trains with, built from a plain config: the loop's inputs."""

    device: torch.device
    data: datasets.DeviceData
    split_info: datasets.SplitData  # the split's description; its arrays are dropped
    model: Callable[[torch.Tensor], torch.Tensor]
    update: Updater
    loss: LossFn
    quality: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    quality_name: str
    generator: torch.Generator
    threads: int
    device_reason: str = ""  # why device=auto kept to the CPU beside an accelerator

    def fit(
        self,
        epochs: int,
        batch_size: int | None,
        callbacks: Sequence[EpochCallback] = (),
        progress: Progress | None = None,
    ) -> list[EpochResult]:
        """`loop.fit` on these parts: what a run, `make bench` and the tests train (from
        `progress` on: a resumed run's)."""
        return fit(
            self.model,
            self.loss,
            self.update,
            self.data,
            epochs=epochs,
            quality=self.quality,
            quality_name=self.quality_name,
            batch_size=batch_size,
            generator=self.generator,
            callbacks=callbacks,
            progress=progress,
        )


def prepare(cfg: DictConfig, cpus: float | None = None, parts: Parts | None = None) -> Prepared:
    """Set up one run from a plain config: threads, seed, device, data, model, update, loss.

    The CLI and `make bench` both call this, so the benchmark times exactly what a run trains.
    `cpus`: the CPUs a launcher gave this job, for `torch_threads`; `parts`: what the config
    names by `_target_`.
    """
    parts = parts or Parts()
    threads = torch_threads(cfg.train.threads, cpus)
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)  # and every other global generator a user's part may draw from
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    dtype = getattr(torch, cfg.train.dtype)
    # A device that is not here is refused before the data loads; auto is weighed after.
    device, device_reason = resolve_device(cfg.device.name)
    read = tables.read_table(table_of(cfg, parts))
    dataset = cfg.dataset
    split = datasets.split_and_scale(
        read.features, read.labels, dataset.test_size, cfg.seed, dataset.task, dataset.missing
    )
    mine = parts.model is not None  # the user's own network (model._target_)
    if mine:  # built on the CPU, in the run's dtype, from torch's seeded generator
        model = user_model(parts.model, split.n_features, split.n_outputs, dtype)
        weights = sum(p.numel() for p in model.parameters())
    else:
        hidden = hidden_widths(cfg.model.width, cfg.model.hidden)
        weights = step_work(1, split.n_features, split.n_outputs, hidden)
    if cfg.device.name == "auto":
        n_train = len(split.y_train)
        rows_a_step = min(cfg.train.batch_size or n_train, n_train)
        device, device_reason = resolve_device("auto", rows_a_step * weights)
    tensors = datasets.to_device(split, device, dtype)
    task, target_std = split.task, split.target_std
    # Keep the description, drop the float64 NumPy copy: only the device tensors train.
    info = replace(split, x_train=split.x_train[:0], x_val=split.x_val[:0])
    del split
    if mine:
        model = model.to(device)
    else:
        model = build_model(
            info.n_features,
            info.n_outputs,
            width=cfg.model.width,
            hidden=cfg.model.hidden,
            activation=cfg.model.activation,
            impl=cfg.model.impl,
            init=cfg.model.init,
            dtype=dtype,
            device=device,
            seed=cfg.seed,
        )
    update = build_update(
        update_name(cfg["update"]),  # cfg.update is DictConfig.update(), the dict method
        list(model.parameters()),
        lr=cfg.train.lr,
        momentum=cfg.train.momentum,
        weight_decay=cfg.train.weight_decay,
        optimizer=parts.optimizer,
    )
    return Prepared(
        device=device,
        data=tensors,
        split_info=info,
        model=model,
        update=update,
        loss=loss_function(task, "module", "logits")
        if mine
        else loss_function(task, cfg.model.impl, cfg.model.loss),
        quality=lambda p, y: quality(p, y, task, target_std),
        quality_name="val_rmse" if task == "regression" else "val_accuracy",
        generator=torch.Generator(device=device).manual_seed(cfg.seed),
        threads=threads,
        device_reason=device_reason,
    )


def table_of(cfg: DictConfig, parts: Parts | None = None) -> tables.Table:
    """The `dataset.*` keys that say which table is read (the split's keys aside); for your
    own data, its function (`parts.data`, its arguments bound), named with its arguments."""
    dataset = cfg.dataset
    if has_target(dataset):
        return tables.Table(
            dataset.name,
            target=dataset.target,
            drop=tuple(dataset.drop),
            function=str(dataset._target_),
            arguments=json.dumps(target_arguments("dataset", dataset), sort_keys=True, default=str),
            load=parts.data if parts is not None else None,
        )
    return tables.Table(
        dataset.name, dataset.path, dataset.target, tuple(dataset.drop), dataset.sep,
        dataset.encoding,
    )  # fmt: skip
