"""One run, from a plain config to a finished MLflow run: data, model, update, loop, records.

This module wires the pieces together and decides how a run ends (FINISHED, FAILED or
KILLED). It takes an OmegaConf config but never Hydra, so tests can call `execute` with a
composed config, and the entry point in `train.py` stays the only place that knows Hydra.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from looplab import data as datasets
from looplab.config import identity, params, rerunnable, run_name, validate
from looplab.device import resolve_device, step_work
from looplab.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    DivergedError,
    Terminated,
)
from looplab.loop import EpochCallback, EpochResult, fit
from looplab.model import LossFn, build_model, loss_function, quality
from looplab.reporting import ConsoleReport, MetricsCsv
from looplab.tracking import OfflineTracker, Tracker, start_tracker
from looplab.tracking.record import shown
from looplab.update import Updater, build_update

log = logging.getLogger("looplab")


@dataclass
class RunResult:
    """How a run ended, and what it recorded."""

    status: str  # FINISHED, FAILED or KILLED, as MLflow says it
    exit_code: int
    history: list[EpochResult] = field(default_factory=list)
    run_id: str | None = None
    device: str = "cpu"
    warning: str | None = None
    error: str | None = None
    name: str = ""
    seconds: float = 0.0

    @property
    def objective(self) -> float:
        """What a sweeper minimises: the final val_loss, or +inf for a run that did not
        finish, so that a search ranks it last (never NaN, which breaks Optuna's studies)."""
        if self.status != "FINISHED" or not self.history:
            return math.inf
        return self.history[-1].metrics["val_loss"]


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into `Terminated` while a run is in progress."""

    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def execute(
    cfg: DictConfig,
    output_dir: Path,
    hydra_dir: Path | None = None,
    tracker: Tracker | OfflineTracker | None = None,
    name: str | None = None,
    console: ConsoleReport | None = None,
    tags: dict[str, str] | None = None,
    defer_end: bool = False,
    cpus: float | None = None,
) -> RunResult:
    """Train one `plain_config`. Errors before the first epoch leave no MLflow run behind.

    `name` is the run's name (by default the data set's); `console` how epochs are shown
    (its prefix starts the run's own lines too); `tags` go on the MLflow run with the rest;
    `cpus` the CPUs a launcher gave this job (see `torch_threads`).
    `defer_end` (a sweep's job) returns without waiting for the writer to end the run.
    """
    validate(cfg)
    tracker = tracker or start_tracker(cfg)
    try:
        with sigterm_raises():
            return _execute(
                cfg,
                output_dir,
                hydra_dir,
                tracker,
                name or run_name(cfg),
                console,
                tags or {},
                defer_end,
                cpus,
            )
    finally:
        if tracker is not None:
            tracker.close()


def torch_threads(asked: int | None = None, given: float | None = None) -> int:
    """Threads for torch's CPU kernels: `train.threads` when set; otherwise the CPUs this job
    was given, wherever a scheduler says so; otherwise the cores this process may use, less
    one for the MLflow writer and the rest of the machine.

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
    return max(1, (cores or 1) - 1)


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
        self, epochs: int, batch_size: int | None, callbacks: Sequence[EpochCallback] = ()
    ) -> list[EpochResult]:
        """`loop.fit` on these parts: what a run, `make bench` and the tests train."""
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
        )


def prepare(cfg: DictConfig, cpus: float | None = None) -> Prepared:
    """Set up one run from a plain config: threads, seed, device, data, model, update, loss.

    The CLI and `make bench` both call this, so the benchmark times exactly what a run trains.
    `cpus`: the CPUs a launcher gave this job, for `torch_threads`.
    """
    threads = torch_threads(cfg.train.threads, cpus)
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    dtype = getattr(torch, cfg.train.dtype)
    # A device that is not here is refused before the data loads; auto is weighed after.
    device, device_reason = resolve_device(cfg.device.name)
    split = datasets.load(
        cfg.dataset.name,
        **table_settings(cfg),
        task=cfg.dataset.task,
        test_size=cfg.dataset.test_size,
        seed=cfg.seed,
    )
    if cfg.device.name == "auto":
        n_train = len(split.y_train)
        rows_a_step = min(cfg.train.batch_size or n_train, n_train)
        work = step_work(rows_a_step, split.n_features, split.n_outputs, cfg.model.width)
        device, device_reason = resolve_device("auto", work)
    tensors = datasets.to_device(split, device, dtype)
    task, target_std = split.task, split.target_std
    # Keep the description, drop the float64 NumPy copy: only the device tensors train.
    info = replace(split, x_train=split.x_train[:0], x_val=split.x_val[:0])
    del split
    model = build_model(
        info.n_features,
        info.n_outputs,
        width=cfg.model.width,
        activation=cfg.model.activation,
        impl=cfg.model.impl,
        init=cfg.model.init,
        dtype=dtype,
        device=device,
        seed=cfg.seed,
    )
    update = build_update(
        cfg["update"].name,  # cfg.update is DictConfig.update(), the dict method
        list(model.parameters()),
        lr=cfg.train.lr,
        momentum=cfg.train.momentum,
        weight_decay=cfg.train.weight_decay,
    )
    return Prepared(
        device=device,
        data=tensors,
        split_info=info,
        model=model,
        update=update,
        loss=loss_function(task, cfg.model.impl, cfg.model.loss),
        quality=lambda p, y: quality(p, y, task, target_std),
        quality_name="val_rmse" if task == "regression" else "val_accuracy",
        generator=torch.Generator(device=device).manual_seed(cfg.seed),
        threads=threads,
        device_reason=device_reason,
    )


def _execute(
    cfg: DictConfig,
    output_dir: Path,
    hydra_dir: Path | None,
    tracker: Tracker | OfflineTracker | None,
    name: str,
    console: ConsoleReport | None,
    extra_tags: dict[str, str],
    defer_end: bool,
    cpus: float | None = None,
) -> RunResult:
    started, started_ms = time.monotonic(), int(time.time() * 1000)
    ready = prepare(cfg, cpus)
    info = ready.split_info
    console = console or ConsoleReport(
        cfg.train.epochs, cfg.train.print_style, cfg.train.print_every
    )
    # In a sweep the task line goes to train.log only: the console keeps one line per job.
    log.info(console.prefix + info.describe(), extra={"file_only": bool(console.prefix)})
    if ready.device_reason:
        log.info(console.prefix + ready.device_reason, extra={"file_only": bool(console.prefix)})

    output_dir.mkdir(parents=True, exist_ok=True)
    config_file = output_dir / "config.yaml"
    config_file.write_text(rerunnable(cfg), encoding="utf-8")
    preprocessing_file = output_dir / "preprocessing.json"
    preprocessing_file.write_text(preprocessing(info), encoding="utf-8")
    result = RunResult(status="RUNNING", exit_code=0, device=str(ready.device), name=name)
    if tracker is not None:
        run_params = {
            **params(cfg),
            "dataset": cfg.dataset.name,
            "update": cfg["update"].name,
            "device": cfg.device.name,
            "data.task": info.task,
            "data.rows": str(info.n_rows),
            "data.features": str(info.n_features),
            "torch.threads": str(ready.threads),
        }
        if info.classes:
            run_params["data.classes"] = ",".join(info.classes)
        startup_files = [(config_file, None), (preprocessing_file, None)]
        startup_files += [(hydra_dir, ".hydra")] if hydra_dir else []
        data_record = describe_data(cfg)
        tags = {
            "looplab.device": str(ready.device),
            "looplab.run_dir": str(output_dir.resolve()),
            "looplab.task_reason": info.task_reason,
            "mlflow.source.name": "looplab-train",
            "looplab.config_digest": identity(cfg),
            "looplab.data.digest": data_record.digest,
            **({"looplab.data.sha256": data_record.file_sha256} if data_record.file_sha256 else {}),
            **environment_tags(),
            **extra_tags,
        }
        tracker.start_run(
            name,
            run_params,
            tags,
            startup_files,
            wait=False,
            start_time_ms=started_ms,
            inputs=[dataset_input(data_record)],
            record_dir=output_dir,
        )

    csv = MetricsCsv(output_dir / "metrics.csv", ["train_loss", "val_loss", ready.quality_name])
    callbacks = [result.history.append, console, csv] + ([tracker] if tracker else [])
    end_tags: dict[str, str] = {}
    failure: BaseException | None = None
    try:
        ready.fit(cfg.train.epochs, cfg.train.batch_size, callbacks)
        result.status = "FINISHED"
    except DivergedError as error:
        result.status, result.exit_code, result.error = "FAILED", EXIT_FAILED, str(error)
        end_tags = {"looplab.diverged_at_epoch": str(error.epoch), "looplab.error": str(error)}
    except (KeyboardInterrupt, Terminated) as stop:
        # A second Ctrl-C (or SIGTERM) while the records are being closed leaves at once;
        # the writer process then marks the run KILLED on its own.
        signal.signal(signal.SIGINT, lambda *_: os._exit(EXIT_INTERRUPTED))
        signal.signal(signal.SIGTERM, lambda *_: os._exit(EXIT_TERMINATED))
        interrupted = isinstance(stop, KeyboardInterrupt)
        result.status = "KILLED"
        result.exit_code = EXIT_INTERRUPTED if interrupted else EXIT_TERMINATED
        result.error = "interrupted (Ctrl-C)" if interrupted else "terminated (SIGTERM)"
        end_tags = {"looplab.stopped_by": "SIGINT" if interrupted else "SIGTERM"}
    except BaseException as error:
        result.status, result.exit_code, failure = "FAILED", EXIT_FAILED, error
        result.error = f"{type(error).__name__}: {error}"
        end_tags = {"looplab.error": result.error[:5000]}
    finally:
        console.close()  # every buffered line is out before any error is told
        csv.close()
    end_files: list[tuple[Path, str | None]] = [(csv.path, None)]
    if result.status == "FINISHED":
        model_file = output_dir / "model.pt"
        torch.save(ready.model.state_dict(), model_file)  # tensors only: loads with weights_only
        end_files.append((model_file, None))
    if tracker is not None:
        result.warning = tracker.finish(result.status, end_tags, end_files, wait=not defer_end)
        result.run_id = tracker.finished_run_id
    if result.status == "KILLED":  # back to normal Ctrl-C for whoever called us
        signal.signal(signal.SIGINT, signal.default_int_handler)
    result.seconds = time.monotonic() - started
    log.info(console.prefix + closing_line(result, output_dir, hint=not console.prefix))
    if tracker is not None and tracker.note:  # a sweep's jobs: in train.log; the sweep says it
        log.info(console.prefix + tracker.note, extra={"file_only": bool(console.prefix)})
    if failure is not None:
        raise failure
    return result


def table_settings(cfg: DictConfig) -> dict[str, Any]:
    """The `dataset.*` keys that say which table is read (the split's keys aside)."""
    dataset = cfg.dataset
    return {
        "path": dataset.path,
        "target": dataset.target,
        "drop": list(dataset.drop),
        "sep": dataset.sep,
        "encoding": dataset.encoding,
    }


def describe_data(cfg: DictConfig) -> datasets.DataRecord:
    """The data record of a plain config's data set (its table is read once per process)."""
    return datasets.describe_data(cfg.dataset.name, **table_settings(cfg))


def dataset_input(record: datasets.DataRecord) -> dict[str, str]:
    """The fields of an MLflow dataset input: the UI's Dataset column shows name and digest."""
    import json

    return {
        "name": record.name,
        "digest": record.digest,
        "source_type": record.source_type,
        "source": json.dumps({"uri": record.source}),
        "schema": record.mlflow_schema(),
        "profile": json.dumps(
            {"num_rows": record.rows, "num_elements": record.rows * len(record.columns)}
        ),
        "context": "training",
    }


def preprocessing(info: datasets.SplitData) -> str:
    """What a trained model needs to score new rows, as JSON for `preprocessing.json`: the task,
    the class order, the feature columns in order, the scaler's and the target's statistics."""
    import json

    return json.dumps(
        {
            "task": info.task,
            "classes": info.classes,
            "features": info.feature_names,
            "scaler_mean": info.scaler_mean,
            "scaler_scale": info.scaler_scale,
            "target_mean": info.target_mean,
            "target_std": info.target_std,
        },
        indent=1,
    )


@functools.cache
def environment_tags() -> dict[str, str]:
    """What a rerun must match to give the same numbers: versions and platform (torch's
    threads are the `torch.threads` param)."""
    import platform
    import sys
    from importlib.metadata import PackageNotFoundError, version

    def installed(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    return {
        "looplab.version.python": platform.python_version(),
        # str(): torch's TorchVersion would make the writer import torch to unpickle it
        "looplab.version.torch": str(torch.__version__),
        "looplab.version.mlflow": installed("mlflow"),
        "looplab.version.hydra": installed("hydra-core"),
        "looplab.version.looplab": installed("looplab"),
        "looplab.platform": f"{sys.platform} {platform.machine()} {platform.platform(terse=True)}",
    }


def closing_line(result: RunResult, output_dir: Path, hint: bool = True) -> str:
    """One line that says how the run ended, its last numbers, and where to look (a sweep's
    jobs leave out the hint: the sweep's own summary gives it once)."""
    last = result.history[-1].metrics if result.history else {}
    numbers = ", ".join(f"{k} {v:.4g}" for k, v in last.items()) or "no epoch finished"
    epochs = f"{len(result.history)} epochs" if result.history else "0 epochs"
    where = f"files in {shown(output_dir)}"
    if result.run_id:
        where = f"MLflow run {result.run_id}; {where}"
        if hint:
            where += "; see it with `looplab ui` or `make ui`"
    why = f": {result.error}" if result.error else ""
    return f"{result.name}: {result.status} after {epochs} ({numbers}){why}; {where}"


def print_warning(result: RunResult, output_dir: Path) -> None:
    """Tell the user what did not reach the store, and where the complete record is."""
    if result.warning and "looplab sync" in result.warning:
        log.warning(f"warning: {result.warning}")
    elif result.warning:
        where = output_dir / "metrics.csv"
        log.warning(f"warning: {result.warning}; the full history is in {where}")
