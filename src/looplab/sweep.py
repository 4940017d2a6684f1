"""A sweep as one group: checked whole before its first job, one parent run, a summary at the end.

Hydra calls `SweepCallback` (registered in `conf/train.yaml` under `hydra.callbacks`) in the
process that launches the sweep:

- `on_multirun_start`: every job of the sweep, every combination, is composed and checked
  before the first job runs; then the sweep's parent MLflow run is created, tagged with a
  sweep id that is derived from the sweep folder (`hydra.sweep.dir`), which every job's
  Hydra config holds, wherever the job runs.
- each job (in `train.py`) looks its parent up by that tag in the store, names itself after
  what varies, and writes a one-line record of how it ended into the sweep folder;
- `on_multirun_end`: the parent gets the counts, the best child, the runs table (CSV) and the
  curves (PNG); the table is printed; jobs that failed are kept for the exit code.

Hydra's callback runner turns an `Exception` into a warning, so a refused sweep is raised as
`SweepRefused`, a BaseException that reaches `train.main`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from looplab.config import config_dir, plain_config, validate
from looplab.errors import LooplabError

# The folder, in a sweep's folder, where each job leaves a line on how it ended.
JOB_RECORDS = ".jobs"
# How a job that counts as done ended: trained now, or skipped as FINISHED before.
DONE = ("FINISHED", "SKIPPED")


class SweepRefused(BaseException):
    """A sweep that cannot run as asked; `str(error)` is the one line to print.

    A BaseException, like KeyboardInterrupt, because Hydra's callback runner would turn an
    Exception into a warning and launch the jobs anyway.
    """


# Set in the launching process by `on_multirun_end`: the jobs that did not finish.
FAILED_JOBS: list[JobRecord] = []
# The parent run's writer by sweep id, while the sweep runs. Module state, not the callback's:
# launchers such as joblib pickle the callbacks to send them to their workers.
_PARENTS: dict[str, tuple[Any, str]] = {}


@dataclass
class JobRecord:
    """How one job of a sweep ended: a line in the sweep folder, read back at the sweep's end."""

    num: int
    name: str
    status: str
    tracked: bool = False  # its run was handed to the MLflow writer
    run_id: str | None = None  # a skipped job's: the FINISHED run it matched
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def write(self, sweep_dir: Path) -> None:
        path = job_record_path(sweep_dir, self.num)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self)))


def job_record_path(sweep_dir: Path, num: int) -> Path:
    return sweep_dir / JOB_RECORDS / f"{num}.json"


def read_job_records(sweep_dir: Path) -> list[JobRecord]:
    folder = sweep_dir / JOB_RECORDS
    records = [JobRecord(**json.loads(p.read_text())) for p in folder.glob("*.json")]
    return sorted(records, key=lambda r: r.num)


def sweep_id(sweep_dir: Path) -> str:
    """A short id for the sweep, the same in every job: a hash of its absolute folder."""
    return hashlib.sha1(str(sweep_dir.resolve()).encode()).hexdigest()[:12]


# --- the sweep's jobs, enumerated ------------------------------------------------------------


@dataclass
class Choice:
    """One value of one key in one job: the override as typed, and its parsed value."""

    key: str
    text: str  # "model.width=8"
    value: Any


def _is_group(key: str) -> bool:
    return (config_dir() / key).is_dir()


def _choices(override: Override) -> list[Choice]:
    key = override.get_key_element()
    bare = key.lstrip("+~")
    if override.is_discrete_sweep():
        pairs = zip(override.sweep_iterator(), override.sweep_string_iterator(), strict=True)
        return [Choice(bare, f"{key}={text}", value) for value, text in pairs]
    if override.is_sweep_override():  # an interval, for a search sweeper: not enumerable
        return []
    return [Choice(bare, override.input_line, override.value())]


def split_job(
    overrides: list[Override], is_group: Callable[[str], bool]
) -> tuple[list[Override], list[Override]]:
    """A job's overrides as (its values, the rest): the plain `key=value`s, which can be
    merged into a copy of what the rest composes, as Hydra merges them after composing.

    Hydra applies `+key`, `++key`, `~key`, `key@package` and a group given a dict in their
    place among the values, so when one of them comes after a value there are no values to
    merge: the job must be composed whole, from all its overrides. What picks a group's
    config, or sets Hydra's own keys, may stand anywhere. The sweep's check and looplab's
    launcher both split jobs this way.
    """

    def is_value(override: Override) -> bool:
        return (
            override.type == OverrideType.CHANGE
            and override.package is None
            and not override.is_sweep_override()
            and not override.is_hydra_override()
            and not is_group(override.key_or_group)
        )

    def in_order(override: Override) -> bool:
        if override.is_hydra_override():
            return False
        return not is_group(override.key_or_group) or isinstance(override.value(), dict)

    values = [o for o in overrides if is_value(o)]
    if values:
        after = overrides[overrides.index(values[0]) :]
        if any(in_order(o) for o in after if not is_value(o)):
            return [], list(overrides)
    return values, [o for o in overrides if o not in values]


def sweep_overrides(config: DictConfig) -> list[str]:
    """The sweep's overrides: `hydra.sweeper.params` (a preset's sweep), then the command
    line's, which win for the same key. Hydra's own settings (`hydra.*`) are left out."""
    typed = [str(o) for o in config.hydra.overrides.task]
    declared = config.hydra.sweeper.get("params") or {}
    keys = {line.split("=", 1)[0].lstrip("+~") for line in typed}
    lines = [f"{k}={v}" for k, v in declared.items() if str(k) not in keys] + typed
    return [line for line in lines if not line.lstrip("+~").startswith("hydra")]


def enumerate_jobs(lines: list[str]) -> tuple[list[list[Choice]], list[str]]:
    """Every combination of the discrete sweeps (the product, as Hydra's basic sweeper runs
    them), and the keys that vary between jobs (intervals included)."""
    per_key: list[list[Choice]] = []
    swept: list[str] = []
    for override in OverridesParser.create().parse_overrides(lines):
        if override.is_sweep_override():
            swept.append(override.get_key_element().lstrip("+~"))
        choices = _choices(override)
        if choices:
            per_key.append(choices)
    return [list(job) for job in itertools.product(*per_key)], swept


def refuse_intervals(jobs: list[list[Choice]], swept: list[str]) -> None:
    """A grid cannot enumerate an interval: only a search sweeper samples one."""
    enumerated = {choice.key for choice in (jobs[0] if jobs else [])}
    intervals = [key for key in swept if key not in enumerated]
    if intervals:
        raise SweepRefused(
            f"{', '.join(intervals)}: an interval is for a search (hparams_search=optuna), "
            "not for a grid sweep; list the values instead (KEY=A,B,C)"
        )


def check_jobs(config_name: str, jobs: list[list[Choice]]) -> None:
    """Compose and validate every job before the first one runs.

    Jobs that share their other overrides (group choices, `+key`, `~key`, a package) share
    one composition; their values (`split_job`) are applied to a copy of it, which the schema
    still type-checks. A job with no values to merge is composed whole.
    """
    from looplab.train import describe

    parser = OverridesParser.create()
    bases: dict[tuple[str, ...], DictConfig] = {}
    for job in jobs:
        texts = [c.text for c in job]
        try:
            values, rest = split_job(parser.parse_overrides(texts), _is_group)
            if not values:
                cfg = compose(config_name=config_name, overrides=texts)
            else:
                shared = tuple(o.input_line for o in rest)
                if shared not in bases:
                    bases[shared] = compose(config_name=config_name, overrides=list(shared))
                cfg = bases[shared].copy()
                for override in values:
                    OmegaConf.update(cfg, override.key_or_group, override.value(), merge=False)
            validate(plain_config(cfg))
        except LooplabError as error:
            _refuse(str(error), job)
        except Exception as error:  # Hydra's and OmegaConf's own: worded as one line
            _refuse(describe(error), job)


def refuse_slurm_elsewhere(launcher_target: str) -> None:
    """SLURM's launcher submits with `sbatch`: without it (not on the cluster's login node),
    refuse the sweep before its parent run exists, rather than fail every job after."""
    if launcher_target.endswith("SlurmLauncher") and shutil.which("sbatch") is None:
        raise SweepRefused(
            "hydra/launcher=slurm: there is no `sbatch` on this machine; launch the sweep on "
            "the cluster's login node, or try it here with hydra/launcher=submitit_local"
        )


def _refuse(message: str, job: list[Choice]) -> None:
    shown = " ".join(c.text for c in job) or "(no overrides)"
    raise SweepRefused(
        f"{message} (in the job {shown}; nothing ran: every job of a sweep is checked "
        "before the first one)"
    )


# --- the callback -----------------------------------------------------------------------------


class SweepCallback(Callback):
    """Hydra's hook for a multirun: check it whole, group it under a parent, summarise it."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        lines = sweep_overrides(config)
        jobs, swept = enumerate_jobs(lines)
        if "grid" in str(config.hydra.sweeper.get("_target_", "")):
            refuse_intervals(jobs, swept)
        check_jobs(config.hydra.job.config_name, jobs)
        refuse_slurm_elsewhere(str(config.hydra.launcher.get("_target_", "")))
        settings = plain_config(_job_part(config))
        if not settings.tracking.enabled:
            return
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        from looplab.tracking import start_tracker

        swept_lines = [line for line in lines if line.split("=", 1)[0].lstrip("+~") in swept]
        name = "sweep: " + (" ".join(swept_lines) or f"{len(jobs)} job(s)")
        tags = {
            "looplab.role": "sweep",
            "looplab.sweep_id": sweep_id(sweep_dir),
            "looplab.sweep_dir": str(sweep_dir),
            "looplab.swept_keys": ",".join(swept),
            "looplab.jobs_planned": str(len(jobs)),
            "mlflow.source.name": "looplab-train -m",
        }
        params = {"sweep.overrides": " ".join(lines), "sweep.dir": str(sweep_dir)}
        parent = start_tracker(settings)
        assert parent is not None  # tracking is on
        try:
            parent_id = parent.start_run(name, params, tags, [], record_dir=sweep_dir)
        except LooplabError as error:
            parent.stop()
            raise SweepRefused(str(error)) from None
        _PARENTS[tags["looplab.sweep_id"]] = (parent, parent_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        records = read_job_records(sweep_dir)
        FAILED_JOBS[:] = [r for r in records if r.status not in DONE]
        finished = [r for r in records if r.status in DONE]
        skipped = [r for r in records if r.status == "SKIPPED"]
        if sweep_id(sweep_dir) not in _PARENTS:
            _print_summary(records, None, None)
            return
        parent, parent_id = _PARENTS.pop(sweep_id(sweep_dir))
        from looplab.tracking import reader, settle_idle

        settings = plain_config(_job_part(config))
        uri, experiment = settings.tracking.uri, settings.tracking.experiment
        files: list[tuple[Path, str | None]] = []
        table_text = None
        for warning in settle_idle():  # this process's jobs: their runs' ends are read here
            print(f"warning: {warning}", file=sys.stderr)
        runs = []
        if parent_id is not None:  # offline, or a store that is away: no table, no curves
            try:
                ended_jobs = {r.num for r in records if r.tracked}
                runs = reader.sweep_children(uri, experiment, parent_id, ended_jobs)
                # A skipped job's run is the FINISHED run it matched (of an earlier sweep).
                listed = {r.info.run_id for r in runs}
                earlier = sorted({r.run_id for r in skipped if r.run_id} - listed)
                if earlier:
                    runs += reader.find_runs(uri, experiment, run_ids=earlier)
            except LooplabError as error:
                print(f"warning: no runs table for the sweep: {error}", file=sys.stderr)
        run_ids = {run.data.tags.get(reader.JOB): run.info.run_id for run in runs}
        if runs:
            table = reader.runs_table(runs)
            table_text = reader.format_table(table)
            reader.write_table_csv(table, sweep_dir / "runs.csv")
            files = [(sweep_dir / "runs.csv", None)]
            try:
                reader.plot_curves(runs, "train_loss", sweep_dir / "curves.png")
                files.append((sweep_dir / "curves.png", None))
            except LooplabError as error:  # e.g. no job got to its first epoch
                print(f"warning: no curves for the sweep: {error}", file=sys.stderr)
        best = min(
            (r for r in finished if "val_loss" in r.metrics),
            key=lambda r: r.metrics["val_loss"],
            default=None,
        )
        tags = {
            "looplab.jobs_finished": str(len(finished)),
            "looplab.jobs_failed": str(len(FAILED_JOBS)),
            "looplab.jobs_skipped": str(len(skipped)),
        }
        if best is not None:
            tags["looplab.best_run_id"] = best.run_id or run_ids.get(str(best.num), "")
            tags["looplab.best_job"] = str(best.num)
            tags["looplab.best_val_loss"] = repr(best.metrics["val_loss"])
        status = "FINISHED" if not FAILED_JOBS else "FAILED"
        warning = parent.finish(status, tags, files)
        parent.stop()
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        _print_summary(records, table_text, parent_id)
        if parent.note:
            print(parent.note)


def _job_part(config: DictConfig) -> DictConfig:
    """The launching config without its `hydra` node: what every job shares."""
    return OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])


def _print_summary(records: list[JobRecord], table: str | None, parent_id: str | None) -> None:
    """The runs table, then one line: how many jobs finished, which failed, where to look."""
    done = sum(r.status in DONE for r in records)
    failed = [r for r in records if r.status not in DONE]
    skipped = sum(r.status == "SKIPPED" for r in records)
    if table:
        print(table)
    for record in failed:  # the reasons here too: a cluster's jobs print into their own logs
        print(f"failed: #{record.num} {record.name}: {record.error or record.status}")
    line = f"sweep: {done} of {len(records)} jobs finished"
    if skipped:
        line += f" ({skipped} skipped: FINISHED before, tracking.skip_finished=true)"
    if failed:
        line += "; failed: " + ", ".join(f"#{r.num} {r.name}" for r in failed)
    if parent_id:
        line += (
            f"; parent MLflow run {parent_id}: `looplab runs --last`, "
            "`looplab plot --last --out curves.png`, `looplab ui`"
        )
    print(line)


def job_name(job_overrides: list[str], swept_keys: list[str]) -> str:
    """A child's run name: its values of the keys that vary in its sweep (`width=8 sgd`)."""
    words = []
    for line in job_overrides:
        key, _, value = line.partition("=")
        key = key.lstrip("+~")
        if key in swept_keys:
            value = _short_number(value)
            words.append(value if _is_group(key) else f"{key.rsplit('.', 1)[-1]}={value}")
    return " ".join(words)


def _short_number(value: str) -> str:
    """`0.5337950081433139` as `0.5338` in a name (a search's floats); anything else as is."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if value.lstrip("-").isdigit() else f"{number:.4g}"


class LaunchingSweeper(Sweeper):
    """What looplab's sweepers share: keep the config, and the launcher Hydra chose, to hand
    each batch of jobs to; and see that every job launched ends with a record."""

    def __init__(self) -> None:
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.swept_keys: list[str] = []

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.swept_keys = enumerate_jobs(sweep_overrides(config))[1]

    def launch(self, batch: Sequence[Sequence[str]], first_num: int) -> list[JobReturn]:
        """Hand a batch of jobs to the launcher; every job of it ends with a record.

        A job records how it ended itself, in the sweep folder, wherever it runs (another
        process, another machine). One that could not (it raised, and Hydra hands the
        exception back; or its process died, and submitit or Ray raise for the whole batch)
        is recorded FAILED here, in the launching process, so that the summary and the exit
        code count it, and the next batch still runs.
        """
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        lost = None
        try:
            returns = list(self.launcher.launch(batch, initial_job_idx=first_num))
        except Exception as error:  # e.g. submitit's UncompletedJobError, Ray's RayTaskError
            lost = f"the launcher reported it lost: {_one_line(error, lines=2)}"
            returns = [JobReturn(status=JobStatus.FAILED, _return_value=error)] * len(batch)
        for num, (overrides, ret) in enumerate(zip(batch, returns, strict=True), first_num):
            if job_record_path(sweep_dir, num).is_file():
                continue
            raised = getattr(ret, "_return_value", None)
            if lost:
                message = lost
            elif ret.status == JobStatus.FAILED and isinstance(raised, BaseException):
                message = _one_line(raised)
            else:
                message = "it ended without leaving a record"
            name = job_name(list(overrides), self.swept_keys) or f"job {num}"
            print(f"looplab-train: job {num} {name}: failed: {message}", file=sys.stderr)
            JobRecord(num, name, "FAILED", error=message).write(sweep_dir)
        return returns


def _one_line(error: BaseException, lines: int = 1) -> str:
    """An exception as one line: its type and the first line(s) of its message (submitit's
    say which job in the first, and what happened to it in the second)."""
    text = " ".join([line.strip() for line in str(error).splitlines() if line.strip()][:lines])
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
