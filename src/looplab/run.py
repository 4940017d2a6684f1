"""One run, from a plain config to a finished MLflow run: data, model, update, loop, records.

This module wires the pieces together and decides how a run ends (FINISHED, FAILED or
KILLED). It takes an OmegaConf config but never Hydra, so tests can call `execute` with a
composed config, and the entry point in `train.py` stays the only place that knows Hydra.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from looplab import data as datasets
from looplab.config import flatten, rerunnable, run_name, validate
from looplab.device import resolve_device
from looplab.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    DivergedError,
    Terminated,
)
from looplab.loop import EpochResult, fit
from looplab.model import build_model, loss_function, quality
from looplab.reporting import ConsoleReport, MetricsCsv
from looplab.tracking import Tracker, start_tracker
from looplab.update import build_update


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
    tracker: Tracker | None = None,
) -> RunResult:
    """Train one `plain_config`. Errors before the first epoch leave no MLflow run behind."""
    validate(cfg)
    tracker = tracker or start_tracker(cfg)
    try:
        with sigterm_raises():
            return _execute(cfg, output_dir, hydra_dir, tracker)
    finally:
        if tracker is not None:
            tracker.close()


def torch_threads() -> int:
    """Threads for torch's CPU kernels: the cores this process may use, less one for the
    MLflow writer and the rest of the machine. A launcher's own limit wins (joblib sets
    OMP_NUM_THREADS in its workers).

    Torch's default (every core) makes its threads spin against the writer or other jobs: on
    2 busy cores a small epoch was measured 10 to 300 times slower with 2 threads than with 1.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) - 1)


def _execute(
    cfg: DictConfig, output_dir: Path, hydra_dir: Path | None, tracker: Tracker | None
) -> RunResult:
    torch.set_num_threads(torch_threads())
    torch.manual_seed(cfg.seed)
    dtype = getattr(torch, cfg.train.dtype)
    device = resolve_device(cfg.device.name)
    split = datasets.load(
        cfg.dataset.name,
        path=cfg.dataset.path,
        target=cfg.dataset.target,
        drop=list(cfg.dataset.drop),
        task=cfg.dataset.task,
        test_size=cfg.dataset.test_size,
        seed=cfg.seed,
    )
    tensors = datasets.to_device(split, device, dtype)
    task, target_std, n_features, n_outputs = (
        split.task,
        split.target_std,
        split.n_features,
        split.n_outputs,
    )
    del split  # the float64 NumPy copy: only the device tensors are needed from here on
    model = build_model(
        n_features,
        n_outputs,
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
    loss = loss_function(task, cfg.model.impl, cfg.model.loss)
    quality_name = "val_rmse" if task == "regression" else "val_accuracy"

    output_dir.mkdir(parents=True, exist_ok=True)
    config_file = output_dir / "config.yaml"
    OmegaConf.save(rerunnable(cfg), config_file)
    result = RunResult(status="RUNNING", exit_code=0, device=str(device))
    if tracker is not None:
        params = {
            **flatten(cfg),
            "dataset": cfg.dataset.name,
            "update": cfg["update"].name,
            "device": cfg.device.name,
        }
        startup_files = [(config_file, None)] + ([(hydra_dir, ".hydra")] if hydra_dir else [])
        tags = {"looplab.device": str(device), "mlflow.source.name": "looplab-train"}
        result.run_id = tracker.start_run(run_name(cfg), params, tags, startup_files)

    console = ConsoleReport(cfg.train.epochs, cfg.train.print_style, cfg.train.print_every)
    csv = MetricsCsv(output_dir / "metrics.csv", ["train_loss", "val_loss", quality_name])
    callbacks = [result.history.append, console, csv] + ([tracker] if tracker else [])
    end_tags: dict[str, str] = {}
    failure: BaseException | None = None
    try:
        fit(
            model,
            loss,
            update,
            tensors,
            epochs=cfg.train.epochs,
            quality=lambda p, y: quality(p, y, task, target_std),
            quality_name=quality_name,
            batch_size=cfg.train.batch_size,
            generator=torch.Generator(device=device).manual_seed(cfg.seed),
            callbacks=callbacks,
        )
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
        end_tags = {"looplab.error": f"{type(error).__name__}: {error}"[:5000]}
    finally:
        console.close()
        csv.close()
    if tracker is not None:
        result.warning = tracker.finish(result.status, end_tags, [(csv.path, None)])
    if result.status == "KILLED":  # back to normal Ctrl-C for whoever called us
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if failure is not None:
        raise failure
    return result


def print_warning(result: RunResult, output_dir: Path) -> None:
    """Tell the user what did not reach the store, and where the complete record is."""
    if result.warning:
        where = output_dir / "metrics.csv"
        print(f"warning: {result.warning}; the full history is in {where}", file=sys.stderr)
