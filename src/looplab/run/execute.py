"""One run, from a plain config to its end: the parts, the loop, the records, and how it ends.

`execute` wires the pieces together and decides how a run ends (FINISHED, FAILED or KILLED).
It records through a `Recorder` it is handed (the tracking side's, or none), and knows neither
Hydra nor MLflow, so tests and `make bench` call it with any composed config.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from looplab.core.checkpoint import Checkpoint, Taker, restore
from looplab.core.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    DivergedError,
    Terminated,
)
from looplab.core.loop import EpochResult, Progress
from looplab.core.objective import Objective, best_metrics, check_metric
from looplab.core.paths import shown
from looplab.core.schema import update_name
from looplab.core.signals import StopsBetweenSteps, stops_raise, while_closing
from looplab.core.stacked import Trained, replay
from looplab.core.validate import validate
from looplab.run import tags as tag
from looplab.run.checkpoints import Checkpoints, check_fits
from looplab.run.config_file import rerunnable
from looplab.run.early_stop import EarlyStop, EndedEarly, StoppedEarly
from looplab.run.naming import identity, params, run_name
from looplab.run.parts import Parts
from looplab.run.prepare import prepare
from looplab.run.recorder import Recorder
from looplab.run.records import dataset_input, describe_data, environment_tags, preprocessing
from looplab.run.reporting import ConsoleReport, MetricsCsv

log = logging.getLogger("looplab")
VAL_LOSS = Objective.of("val_loss")  # optimized_metric's default


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
    note: str | None = None  # why a FINISHED run ended before its last epoch (early stop)
    end_tags: dict[str, str] = field(default_factory=dict)  # what the run ended with

    def final(self) -> dict[str, float]:
        """The last epoch's metrics and every metric's best (`val_loss_best`, ..._best_epoch)."""
        if not self.history:
            return {}
        return {**self.history[-1].metrics, **best_metrics(self.epochs())}

    def epochs(self) -> list[tuple[int, dict[str, float]]]:
        return [(r.epoch, r.metrics) for r in self.history]

    def objective(self, objective: Objective = VAL_LOSS) -> float | list[float]:
        """What a job returns to its sweeper (`optimized_metric`: a value, or one for each
        metric of a list); the worst values for the directions when the run did not finish,
        which looplab's Optuna sweeper tells its study as a failed trial (never NaN)."""
        return objective.value(self.final()) if self.status == "FINISHED" else objective.worst()


def execute(
    cfg: DictConfig,
    output_dir: Path,
    hydra_dir: Path | None = None,
    tracker: Recorder | None = None,
    name: str | None = None,
    console: ConsoleReport | None = None,
    tags: dict[str, str] | None = None,
    defer_end: bool = False,
    cpus: float | None = None,
    parts: Parts | None = None,
    log_model: bool = False,
    resume: Checkpoint | None = None,
    judges: Sequence[Callable[[EpochResult], None]] = (),
    trained: Trained | None = None,
) -> RunResult:
    """Train one `plain_config`. Errors before the first epoch leave no MLflow run behind.

    `name` is the run's name (by default the data set's); `console` how epochs are shown
    (its prefix starts the run's own lines too); `tags` go on the MLflow run with the rest;
    `cpus` the CPUs a launcher gave this job (see `torch_threads`); `parts` what the config
    names by `_target_` (`launch/parts.py`); `log_model`: a FINISHED run's model is logged
    as an MLflow model (by the writer, after the loop); `resume`: go on from this checkpoint
    (core/checkpoint.py), in the MLflow run it names; `judges`: epoch callbacks that may
    end the run FINISHED by raising `EndedEarly` (a search's pruner, launch/trials.py);
    `trained`: what a stack trained for this run (core/stacked.py), recorded as its own.
    `defer_end` (a sweep's job) returns without waiting for the writer to end the run.
    """
    validate(cfg)
    stops = StopsBetweenSteps()
    try:
        with stops_raise():
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
                parts,
                log_model,
                resume,
                stops,
                judges,
                trained,
            )
    finally:
        if tracker is not None:
            tracker.close()
        stops.pass_on()  # a scheduler's warning, to its own handler (submitit: requeue)


def _execute(
    cfg: DictConfig,
    output_dir: Path,
    hydra_dir: Path | None,
    tracker: Recorder | None,
    name: str,
    console: ConsoleReport | None,
    extra_tags: dict[str, str],
    defer_end: bool,
    cpus: float | None,
    parts: Parts | None,
    log_model: bool,
    resume: Checkpoint | None,
    stops: StopsBetweenSteps,
    judges: Sequence[Callable[[EpochResult], None]],
    trained: Trained | None,
) -> RunResult:
    started, started_ms = time.monotonic(), int(time.time() * 1000)
    ready = trained.ready if trained is not None else prepare(cfg, cpus, parts)
    data_record = describe_data(cfg, parts)
    result = RunResult(status="RUNNING", exit_code=0, device=str(ready.device), name=name)
    progress = Progress(stops=stops.check)
    taker = Taker(
        ready.model, ready.update, ready.generator, progress, identity(cfg), data_record.digest,
        result.history, device=ready.device.type,
    )  # fmt: skip
    metric = Objective.of(cfg.get("optimized_metric")).metric  # early stopping follows the first
    early_stop = EarlyStop.from_config(cfg.train, ready.model, metric)
    if early_stop is not None:
        taker.callbacks["early_stop"] = early_stop
    checkpoints = Checkpoints(cfg, taker, output_dir, tracker)
    logged = ["train_loss", "val_loss", ready.quality_name]
    for metric in Objective.of(cfg.get("optimized_metric")).metrics:
        check_metric(metric, logged)
    if resume is not None:  # refused before anything is written or recorded
        check_fits(resume, taker.config_digest, taker.data_digest, ready.device.type)
        restore(resume, taker, ready.device)
        extra_tags = {**extra_tags, **checkpoints.resumed_from(resume)}
    info = ready.split_info
    console = console or ConsoleReport(
        cfg.train.epochs, cfg.train.print_style, cfg.train.print_every
    )
    # In a sweep the task line goes to train.log only: the console keeps one line per job.
    log.info(console.prefix + info.describe(), extra={"file_only": bool(console.prefix)})
    if ready.device_reason:
        log.info(console.prefix + ready.device_reason, extra={"file_only": bool(console.prefix)})
    if resume is not None:
        log.info(f"{console.prefix}{name}: resumed at {resume.where()} from {shown(resume.path)}")

    output_dir.mkdir(parents=True, exist_ok=True)
    config_file = output_dir / "config.yaml"
    config_file.write_text(rerunnable(cfg), encoding="utf-8")
    preprocessing_file = output_dir / "preprocessing.json"
    preprocessing_file.write_text(preprocessing(info), encoding="utf-8")
    if tracker is not None:
        run_params = {
            **params(cfg),
            "dataset": cfg.dataset.name,
            "update": update_name(cfg["update"]),
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
        tags = {
            "looplab.device": str(ready.device),
            tag.RUN_DIR: str(output_dir.resolve()),
            "looplab.task_reason": info.task_reason,
            "mlflow.source.name": "looplab-train",
            tag.CONFIG_DIGEST: identity(cfg),
            tag.DATA_DIGEST: data_record.digest,
            **({"looplab.data.sha256": data_record.file_sha256} if data_record.file_sha256 else {}),
            **environment_tags(),
            **extra_tags,
        }
        if parts is not None and parts.code:
            tags[tag.CODE] = json.dumps(parts.code, sort_keys=True)
        if resume is not None and resume.run.get("record_id"):  # the same run goes on
            tracker.resume_run(
                resume.run, name, run_params, tags, startup_files, result.history, output_dir
            )
        else:
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
            for earlier in result.history:  # resumed, into a run of its own
                tracker(earlier)

    if resume is not None:  # its checkpoint names this process now: no second resume of it
        checkpoints.save()
    csv = MetricsCsv(output_dir / "metrics.csv", logged)
    for earlier in result.history:  # a resumed run's folder holds every epoch once
        csv(earlier)
    callbacks = [result.history.append, console, csv] + ([tracker] if tracker else [])
    callbacks += [early_stop] if early_stop is not None else []  # it may end the loop
    if trained is None:
        callbacks += judges  # so may these
        callbacks.append(checkpoints)  # last: the state after every other callback's epoch
    end_tags: dict[str, str] = {}
    end_files_now: list[tuple[Path, str | None]] = []  # a stopped run's checkpoint
    failure: BaseException | None = None
    try:
        with stops:  # a stop signal waits for the loop to be between two steps
            if trained is not None:  # trained in a stack: its epochs, recorded as this run's
                replay(trained, callbacks, progress)
            else:
                ready.fit(cfg.train.epochs, cfg.train.batch_size, callbacks, progress)
        result.status = "FINISHED"
    except EndedEarly as stop:
        if isinstance(stop, StoppedEarly):  # model.pt gets the best epoch's weights
            early_stop.restore_best()  # type: ignore[union-attr]
        result.status, result.note = "FINISHED", str(stop)
        end_tags = dict(stop.tags)
    except DivergedError as error:
        result.status, result.exit_code, result.error = "FAILED", EXIT_FAILED, str(error)
        end_tags = {"looplab.diverged_at_epoch": str(error.epoch), "looplab.error": str(error)}
    except (KeyboardInterrupt, Terminated) as stop:
        # A second Ctrl-C (or SIGTERM) while the records are being closed leaves at once;
        # the writer process then marks the run KILLED on its own. A second SIGHUP is the
        # same closed terminal again: ignored.
        while_closing(leave=True)
        interrupted = isinstance(stop, KeyboardInterrupt)
        result.status = "KILLED"
        result.exit_code = EXIT_INTERRUPTED if interrupted else stop.exit_code
        result.error = "interrupted (Ctrl-C)" if interrupted else f"terminated ({stop.name})"
        end_tags = {tag.STOPPED_BY: "SIGINT" if interrupted else stop.name}
        if stops.between_steps:  # the state is whole: keep it
            end_files_now = [(checkpoints.save(), tag.CHECKPOINT_ARTIFACT)]
            end_tags |= checkpoints.stopped_tags()
    except BaseException as error:
        result.status, result.exit_code, failure = "FAILED", EXIT_FAILED, error
        result.error = f"{type(error).__name__}: {error}"
        end_tags = {"looplab.error": result.error[:5000]}
    finally:
        console.close()  # every buffered line is out before any error is told
        csv.close()
    result.end_tags = end_tags
    end_files: list[tuple[Path, str | None]] = [(csv.path, None), *end_files_now]
    if result.status == "FINISHED":
        model_file = output_dir / "model.pt"
        torch.save(ready.model.state_dict(), model_file)  # tensors only: loads with weights_only
        end_files.append((model_file, None))
    if tracker is not None and result.history:  # each metric's best, for the runs table
        last = result.history[-1].epoch
        tracker(EpochResult(last, best_metrics(result.epochs()), int(time.time() * 1000)))
    if tracker is not None:
        model = output_dir if log_model and result.status == "FINISHED" else None
        result.warning = tracker.finish(
            result.status, end_tags, end_files, wait=not defer_end, model_folder=model
        )
        result.run_id = tracker.finished_run_id
    # only now: a stop while the run closes still finds its checkpoint (a SLURM requeue)
    checkpoints.ended(result.status, diverged=result.status == "FAILED" and failure is None)
    result.seconds = time.monotonic() - started
    hint = tracker.hint() if tracker is not None and not console.prefix else None
    log.info(console.prefix + closing_line(result, output_dir, hint))
    if tracker is not None and tracker.note:  # a sweep's jobs: in train.log; the sweep says it
        log.info(console.prefix + tracker.note, extra={"file_only": bool(console.prefix)})
    if failure is not None:
        raise failure
    return result


def closing_line(result: RunResult, output_dir: Path, hint: str | None = None) -> str:
    """One line that says how the run ended (and why, when early), its last numbers, and
    where to look (a sweep's jobs leave out the hint: the sweep's own summary gives it once)."""
    last = result.history[-1].metrics if result.history else {}
    numbers = ", ".join(f"{k} {v:.4g}" for k, v in last.items()) or "no epoch finished"
    epochs = f"{len(result.history)} epochs" if result.history else "0 epochs"
    where = f"files in {shown(output_dir)}"
    if result.run_id:
        where = f"MLflow run {result.run_id}; {where}"
        if hint:  # where to look, for the store the run went to (the recorder knows it)
            where += f"; {hint}"
    why = f": {result.error or result.note}" if result.error or result.note else ""
    return f"{result.name}: {result.status} after {epochs} ({numbers}){why}; {where}"


def print_warning(result: RunResult, output_dir: Path) -> None:
    """Tell the user what did not reach the store, and where the complete record is."""
    if result.warning and "looplab sync" in result.warning:
        log.warning(f"warning: {result.warning}")
    elif result.warning:
        where = output_dir / "metrics.csv"
        log.warning(f"warning: {result.warning}; the full history is in {where}")
