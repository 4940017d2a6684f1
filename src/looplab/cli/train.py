"""`looplab-train`: Hydra's entry point, wiring the Hydra side to the run and to MLflow.

    looplab-train                                   # the default experiment
    looplab-train model.width=16 update=sgd         # override any key
    looplab-train -m train.lr=0.01,0.1,1            # a sweep, one MLflow run per job
    looplab-train experiment=seed                   # the tutorial's exact recipe

It checks the config, starts the MLflow writer early (so its start-up overlaps importing
torch), hands the run to `looplab.run.execute`, and turns errors into one line and an exit code.

Hydra prints a bad command line (unknown key, wrong type, unknown option) as several lines of
its own. `main` therefore runs Hydra with HYDRA_FULL_ERROR=1, so that Hydra re-raises, and
words the error (`launch.wording`) as one `looplab-train: error: ...` line. A user who sets
HYDRA_FULL_ERROR=1 gets the full traceback instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from looplab.cli.resume import checkpoint_here, resumed_explicitly, stopped_runs_checkpoint
from looplab.cli.sweep import SweepCallback
from looplab.cli.teardown import skip_teardown
from looplab.core.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    LooplabError,
    Terminated,
)
from looplab.core.objective import Objective
from looplab.core.paths import config_dir
from looplab.core.schema import plain_config
from looplab.core.signals import ALL_STOPS, WARNINGS, stops_raise, while_closing
from looplab.core.validate import validate
from looplab.launch.jobs import SweepJob, records_its_jobs
from looplab.launch.parts import parts_of
from looplab.launch.schema import baseline, register
from looplab.launch.stacks import StackedRuns
from looplab.launch.sweep import SweepFailed, SweepRefused
from looplab.launch.trials import pruning_for
from looplab.launch.wording import describe
from looplab.run import tags as tag
from looplab.run.naming import run_name
from looplab.tracking import OfflineTracker, Tracker, start_tracker

if TYPE_CHECKING:
    from looplab.run.execute import RunResult
    from looplab.run.parts import Parts

register()

# Whether the user asked for tracebacks (HYDRA_FULL_ERROR=1), kept for the jobs.
USER_FULL_ERROR = "LOOPLAB_FULL_ERROR"
# What Hydra writes into a job's folder before the job runs; nothing else is ever removed.
HYDRA_FILES = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml")
# Tags for the run, as a JSON object, set by `looplab reproduce` for the run it starts.
RUN_TAGS_VARIABLE = "LOOPLAB_RUN_TAGS"


def _fail(message: str, exit_code: int = EXIT_FAILED) -> NoReturn:
    print(f"looplab-train: error: {message}", file=sys.stderr)
    sys.exit(exit_code)


def _discard_unstarted(output_dir: Path, job_name: str) -> None:
    """Remove the folder Hydra made for a job that never trained: nothing is half-written.

    Only folders under the launch directory's `outputs/` are looplab's to tidy (a
    `hydra.run.dir` pointing anywhere else is left alone), and in them only the files Hydra and
    `run.execute` write before the first epoch; the folder goes only if that empties it.
    """
    outputs = Path.cwd().resolve() / "outputs"
    if outputs not in output_dir.resolve().parents or (output_dir / "metrics.csv").exists():
        return
    written = ("config.yaml", "preprocessing.json", "record.json")
    for name in (*HYDRA_FILES, f"{job_name}.log", *written):
        with contextlib.suppress(OSError):
            (output_dir / name).unlink()
    with contextlib.suppress(OSError):
        (output_dir / ".hydra").rmdir()  # only when empty
    # Then the job folder and its empty parents (outputs/runs/DATE), never the launch folder.
    launch_dir = Path.cwd().resolve()
    folder = output_dir.resolve()
    while folder != launch_dir and launch_dir in folder.parents:
        try:
            folder.rmdir()  # only when empty
        except OSError:
            return
        folder = folder.parent


def execute_tracked(cfg: DictConfig, output_dir: Path, **kwargs: Any) -> RunResult:
    """`execute` recorded where the plain config says (tests and scripts train this way)."""
    from looplab.run.execute import execute

    return execute(cfg, output_dir, tracker=start_tracker(cfg), **kwargs)


class SweepParents:
    """The sweeps' parent runs this process has found, by sweep id: a parent is created
    before the first job and never changes, and asking the store again would wait for the
    writer to end the previous job's run first. One per process (`here()`)."""

    _here: tuple[int, SweepParents] | None = None

    def __init__(self) -> None:
        self.found: dict[str, tuple[str, list[str]]] = {}

    @classmethod
    def here(cls) -> SweepParents:
        if cls._here is None or cls._here[0] != os.getpid():  # a forked worker starts afresh
            cls._here = (os.getpid(), cls())
        return cls._here[1]

    def find(
        self, tracker: Tracker | OfflineTracker, job: SweepJob
    ) -> tuple[str | None, list[str]]:
        if job.sweep_id not in self.found:
            parent_id, swept_keys = tracker.find_sweep(job.sweep_id, job.sweep_dir)
            if parent_id is None:  # offline (the keys from the sweep folder), or no parent yet
                return None, swept_keys
            self.found[job.sweep_id] = (parent_id, swept_keys)
        return self.found[job.sweep_id]


def launcher_cpus(hydra_config: DictConfig) -> float | None:
    """The CPUs the chosen launcher declares for each job: submitit's `cpus_per_task`
    (SLURM enforces it; submitit's local executor does not), Ray's `num_cpus` per task."""
    for key in ("launcher.cpus_per_task", "launcher.ray.remote.num_cpus"):
        value = OmegaConf.select(hydra_config, key, default=None)
        if isinstance(value, int | float) and value > 0:
            return value
    return None


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
@records_its_jobs  # looplab's sweepers: every job leaves a record; a failed one never raises
def train_job(cfg: DictConfig) -> float | list[float]:
    """Run one job; return its `optimized_metric` (the final val_loss by default), the value
    a sweeper optimises: the worst for its direction for a job that did not finish, which
    looplab's Optuna sweeper counts a failed trial.

    In a sweep a failing job is reported in one line and the sweep goes on; its end is
    recorded in the sweep folder for the sweep's summary and exit code.
    """
    hydra_config = HydraConfig.get()
    output_dir = Path(hydra_config.runtime.output_dir)
    hydra_dir = output_dir / hydra_config.output_subdir if hydra_config.output_subdir else None
    job = None
    if hydra_config.mode == RunMode.MULTIRUN:
        sweep_dir = Path(str(hydra_config.sweep.dir)).resolve()
        job = SweepJob(hydra_config.job.num, sweep_dir, list(hydra_config.overrides.task))
    else:
        note_declared_sweep(hydra_config)
    name = ""
    tracker: Tracker | None = None
    runs_before = 0
    objective = Objective.of("val_loss")  # until the config's own is read
    try:
        objective = objective_of(cfg, hydra_config)
        plain = plain_config(cfg)
        validate(plain)
        parts = parts_of(plain)
        # Start MLflow's writer process before torch is imported, so the two overlap.
        tracker = start_tracker(plain)
        runs_before = tracker.runs_started if tracker else 0
        from looplab.run.execute import execute, print_warning
        from looplab.run.reporting import ConsoleReport

        preset = hydra_config.runtime.choices.get("experiment")
        name = run_name(plain, baseline(preset, tuple(hydra_config.searchpath)), preset)
        tags: dict[str, str] = {}
        console = None
        if job is not None:
            parent_id, swept_keys = (
                SweepParents.here().find(tracker, job) if tracker is not None else (None, [])
            )
            tags = job.tags(parent_id)
            name = job.name(swept_keys) or name
            train = plain.train
            console = ConsoleReport(
                train.epochs, train.print_style, train.print_every, prefix=job.prefix
            )
        if not resumed_explicitly():  # `looplab resume`: the run keeps how it was asked for
            tags |= recorded_choices(hydra_config)
        tags |= requested_tags()
        name = tags.pop(tag.RUN_NAME, name)
        # hydra/launcher=stacked may have trained it (taken now, so that no job leaves its
        # stack's work behind); a checkpoint of its own or a finished run comes first
        trained = StackedRuns.here().take(job) if job is not None else None
        resume = checkpoint_here(output_dir)
        if resume is None and plain.tracking.skip_finished and tracker is not None:
            digests = run_digests(plain, parts)
            skipped = skip_if_finished(tracker, job, name, digests, objective)
            if skipped is not None:
                return skipped
            resume = stopped_runs_checkpoint(tracker, digests)
        trained = None if resume is not None else trained
        if trained is not None:  # its pruning was done in the stack
            tags[tag.STACK_SIZE] = str(trained.stack_size)
        pruning = pruning_for(job, objective) if job is not None and not trained else None
        result = execute(
            plain,
            output_dir,
            hydra_dir,
            tracker,
            name=name,
            console=console,
            tags=tags,
            defer_end=job is not None,
            cpus=launcher_cpus(hydra_config),
            parts=parts,
            # a sweep's jobs: only with `all`; the best child gets one at the sweep's end
            log_model=plain.tracking.log_model == "all"
            or (plain.tracking.log_model == "best" and job is None),
            resume=resume,
            judges=[pruning] if pruning is not None else [],
            trained=trained,
        )
    except (LooplabError, OmegaConfBaseException) as error:
        _discard_unstarted(output_dir, hydra_config.job.name)
        if os.environ.get(USER_FULL_ERROR) == "1":
            raise
        message = str(error) if isinstance(error, LooplabError) else describe(error)
        if job is None:
            _fail(message)
        return _job_failed(job, name, message, objective.worst())
    except Exception as error:  # a bug mid-run: the run is FAILED in the store already
        if job is None or os.environ.get(USER_FULL_ERROR) == "1":
            raise
        tracked = tracker is not None and tracker.runs_started > runs_before
        message = f"{type(error).__name__}: {error}"
        return _job_failed(job, name, message, objective.worst(), True, tracked)
    print_warning(result, output_dir)
    if job is not None:
        tracked = tracker is not None and tracker.runs_started > runs_before
        job.record(
            name,
            result.status,
            tracked=tracked,
            error=result.error,
            metrics=result.final(),
            resumed_at=resume.epoch + 1 if resume is not None else None,
            pruned_at=int(result.end_tags[tag.PRUNED_AT])
            if tag.PRUNED_AT in result.end_tags
            else None,
        )
    if result.exit_code and not (job is not None and result.status == "FAILED"):
        if result.error:
            print(f"looplab-train: {result.error}", file=sys.stderr)
        sys.exit(result.exit_code)
    if result.error:  # a diverged job in a sweep: reported, and the sweep goes on
        print(f"looplab-train: job {job.num if job else 0}: {result.error}", file=sys.stderr)
    return result.objective(objective)


def objective_of(cfg: DictConfig, hydra_config: DictConfig) -> Objective:
    """`optimized_metric` and its directions: the sweeper's `direction` when it has them,
    else each metric's own (core/objective.py)."""
    asked = OmegaConf.select(hydra_config, "sweeper.direction")
    return Objective.of(cfg.get("optimized_metric"), asked)


def note_declared_sweep(hydra_config: DictConfig) -> None:
    """A preset that declares a sweep (`hydra.sweeper.params`), run without `-m`, trains one
    run with its defaults: say so in one line, with the command that runs the sweep."""
    declared = hydra_config.sweeper.get("params") or {}
    if not declared:
        return
    choices = hydra_config.runtime.choices
    presets = [
        f"{group}={choices[group]}"
        for group in ("experiment", "hparams_search")
        if choices.get(group) not in (None, "grid")
    ]
    preset = presets[0] if presets else "the config"
    swept = " ".join(f"{key}={value}" for key, value in declared.items())
    print(
        f"looplab-train: {preset} declares a sweep ({swept}); this trains one run with its "
        f"defaults; run the sweep with `looplab-train -m {preset}`",
        file=sys.stderr,
    )


def recorded_choices(hydra_config: DictConfig) -> dict[str, str]:
    """The overrides as typed and the group choices, as tags: how the run was asked for."""
    choices = {
        str(group): str(choice)
        for group, choice in hydra_config.runtime.choices.items()
        if not str(group).startswith("hydra/") and choice is not None
    }
    return {
        tag.OVERRIDES: json.dumps(list(hydra_config.overrides.task)),
        tag.CHOICES: json.dumps(choices, sort_keys=True),
    }


def requested_tags() -> dict[str, str]:
    """Tags that `looplab reproduce` asks for (`looplab.reproduced_from`, ..., and the run's
    name), from the environment of the run it starts; only `looplab.*` tags are taken."""
    text = os.environ.get(RUN_TAGS_VARIABLE)
    if not text:
        return {}
    try:
        asked = json.loads(text)
    except json.JSONDecodeError:
        _fail(f"{RUN_TAGS_VARIABLE} is not a JSON object of tags")
    if not isinstance(asked, dict):
        _fail(f"{RUN_TAGS_VARIABLE} is not a JSON object of tags")
    return {
        str(k): str(v)
        for k, v in asked.items()
        if str(k).startswith("looplab.") or str(k) == tag.RUN_NAME
    }


def run_digests(plain: DictConfig, parts: Parts) -> tuple[str, str]:
    """What tells a run apart for `tracking.skip_finished`: its config identity (less where
    it is recorded) and the digest of its data as loaded (a changed CSV trains again)."""
    from looplab.run.naming import identity
    from looplab.run.records import describe_data

    return identity(plain), describe_data(plain, parts).digest


def skip_if_finished(
    tracker: Tracker,
    job: SweepJob | None,
    name: str,
    digests: tuple[str, str],
    objective: Objective,
) -> float | list[float] | None:
    """With `tracking.skip_finished=true`: when a FINISHED run of the experiment trained the
    same config (less where it is recorded) on the same data (by digest), say so, record the
    job as SKIPPED and return that run's `optimized_metric`; else None, and the job trains.
    """
    run_id, metrics = tracker.find_finished(*digests)
    if run_id is None:
        return None
    prefix = job.prefix if job is not None else ""
    print(
        f"{prefix}{name}: skipped, already FINISHED as MLflow run {run_id} (same config and data)"
    )
    if job is not None:
        job.record(name, "SKIPPED", run_id=run_id, metrics=metrics)
    tracker.release()
    return objective.value(metrics)


def _job_failed(
    job: SweepJob,
    name: str,
    message: str,
    score: float | list[float],
    run_started: bool = False,
    tracked: bool = False,
) -> float | list[float]:
    """Report a sweep job that failed in one line, record it, and let the sweep go on; it
    scores `score`, the worst value for the sweep's direction (for each, in a
    multi-objective search)."""
    when = "" if run_started else " before training"
    print(f"looplab-train: job {job.num} {name}: failed{when}: {message}", file=sys.stderr)
    job.record(name or f"job {job.num}", "FAILED", tracked=tracked, error=message)
    return score


def main() -> None:
    """The `looplab-train` console script: Hydra, with bad input worded as one line."""
    wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ[USER_FULL_ERROR] = "1" if wants_traceback else "0"  # seen by launcher workers
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises; we word the error below
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # MLflow's own "View run ... at" lines name no job and open the GenAI view: looplab's
    # closing lines say where to look instead (tracking/links.py).
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # hydra/launcher=ray: Ray folds lines that differ only in numbers ("[job 1] Epoch: 2/3"
    # and "[job 3] Epoch: 2/3") into one; every job's lines are wanted.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        with stops_raise():  # SIGTERM and SIGHUP (a closed terminal) end us as Ctrl-C does
            train_job()
    except (HydraException, OmegaConfBaseException) as error:
        if wants_traceback:
            raise
        _fail(describe(error))
    except (SweepRefused, SweepFailed) as stopped:
        _fail(str(stopped))
    # A signal: a run in progress has ended KILLED already (a job exits with 128 + signal);
    # a sweep in progress ends with what its jobs recorded; else there is nothing to mark.
    except KeyboardInterrupt:
        _stop_sweep("SIGINT")
        _fail("interrupted", EXIT_INTERRUPTED)
    except Terminated as stop:
        _stop_sweep(stop.name)
        _fail(f"terminated ({stop.name})", stop.exit_code)
    except SystemExit as leaving:
        if isinstance(leaving.code, int) and leaving.code - 128 in STOP_NUMBERS:
            _stop_sweep(signal.Signals(leaving.code - 128).name)
        raise
    finally:
        skip_teardown()


STOP_NUMBERS = {int(signum) for signum in (*ALL_STOPS, *WARNINGS)}


def _stop_sweep(by: str) -> None:
    """End the sweep a signal stopped, if any; a second Ctrl-C or SIGTERM meanwhile leaves at
    once (the writers then end the runs KILLED on their own)."""
    while_closing(leave=True)
    SweepCallback.stopped(by)


if __name__ == "__main__":
    main()
