"""The sweep as one group in MLflow: a Hydra callback in the process that launches it.

- `on_multirun_start`: every job is checked first (`launch.sweep`); then the sweep's parent
  MLflow run is created, tagged with a sweep id derived from the sweep folder, which every
  job's Hydra config holds, wherever the job runs;
- each job (`cli.train`) looks its parent up by that tag, names itself after what varies,
  and leaves a record of how it ended in the sweep folder (`launch.jobs`);
- `on_multirun_end`: the parent gets the counts, the best child, the runs table (CSV) and the
  curves (PNG); the table is printed; if any job failed, `SweepFailed` carries that to main.
"""

from __future__ import annotations

import math
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from looplab.core.errors import LooplabError
from looplab.core.objective import Objective
from looplab.core.schema import plain_config
from looplab.launch.jobs import DONE, JobRecord, read_job_records, sweep_id
from looplab.launch.schema import searched
from looplab.launch.sweep import (
    SweepFailed,
    SweepRefused,
    check_jobs,
    enumerate_jobs,
    job_part,
    refuse_intervals,
    refuse_missing_optuna,
    refuse_slurm_elsewhere,
    search_identity,
    sweep_overrides,
)
from looplab.run import tags as tag
from looplab.tracking.links import sweep_hint

# The launchers that run a sweep's jobs in the launching process (by `_target_`).
IN_PROCESS_LAUNCHERS = (
    "hydra_plugins.looplab_launcher.",
    "hydra._internal.core_plugins.basic_launcher.",
)


class SweepCallback(Callback):
    """Hydra's hook for a multirun: check it whole, group it under a parent, summarise it.

    The parent run's writer lives on this object between the sweep's start and end, in the
    launching process; it is left out when a launcher (joblib, submitit) pickles the
    callbacks for its workers, which never end the sweep.
    """

    # The sweep this process launches, until it ends: what `stopped` ends when a signal
    # stops the sweep, since Hydra then never calls `on_multirun_end`.
    _running: tuple[int, SweepCallback, DictConfig] | None = None

    def __init__(self) -> None:
        self.parent: Any = None  # the parent run's Tracker (or OfflineTracker)
        self.parent_id: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"parent": None, "parent_id": None}

    @classmethod
    def stopped(cls, by: str) -> None:
        """End this process's sweep, stopped by signal `by` (SIGINT, SIGTERM or SIGHUP), as
        its end would, with the jobs recorded so far: the parent ends KILLED with its
        counts, and the summary says how far the sweep got."""
        if cls._running is None or cls._running[0] != os.getpid():
            return
        _, callback, config = cls._running
        callback._end(config, stopped_by=by)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        refuse_missing_optuna(str(config.hydra.sweeper.get("_target_", "")))
        sweeper = get_class(str(config.hydra.sweeper._target_))
        if hasattr(sweeper, "check_search"):  # looplab's Optuna sweeper: its own refusals
            sweeper.check_search(config)
        lines = sweep_overrides(config)
        target = str(config.hydra.sweeper.get("_target_", ""))
        search = "optuna" in target.lower()  # samples its jobs; a grid runs every combination
        jobs, swept = enumerate_jobs(lines, every_combination=not search)
        if "grid" in target:
            refuse_intervals(jobs, swept)
        check_jobs(config.hydra.job.config_name, jobs, searched(config.hydra.searchpath))
        refuse_slurm_elsewhere(str(config.hydra.launcher.get("_target_", "")))
        settings = plain_config(job_part(config))
        SweepCallback._running = (os.getpid(), self, config)
        if not settings.tracking.enabled:
            return
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        from looplab.tracking import Tracker, start_tracker

        swept_lines = [line for line in lines if line.split("=", 1)[0].lstrip("+~") in swept]
        name = "sweep: " + (" ".join(swept_lines) or f"{len(jobs)} job(s)")
        tags = {
            tag.ROLE: "sweep",
            tag.SWEEP_ID: sweep_id(sweep_dir),
            tag.SWEEP_DIR: str(sweep_dir),
            tag.SWEPT_KEYS: ",".join(swept),
            "looplab.jobs_planned": str(jobs_planned(config, jobs)),
            "mlflow.source.name": "looplab-train -m",
        }
        params = {"sweep.overrides": " ".join(lines), "sweep.dir": str(sweep_dir)}
        study = None
        if search:  # one parent for the study: a relaunch goes on in the earlier one's
            study = str(config.hydra.sweeper.get("study_name") or search_identity(lines))
            tags[tag.STUDY] = study
        parent = start_tracker(settings)
        assert parent is not None  # tracking is on
        if isinstance(parent, Tracker):  # a writer starts (not offline): its wait is free
            _import_ahead(str(config.hydra.launcher.get("_target_", "")))
        try:
            run_id, record_id = parent.find_study(study) if study else (None, None)
            if run_id is not None:
                earlier = {"run_id": run_id, "record_id": record_id or uuid.uuid4().hex}
                self.parent_id = parent.resume_run(earlier, name, params, tags, [], [], sweep_dir)
            else:
                self.parent_id = parent.start_run(name, params, tags, [], record_dir=sweep_dir)
        except LooplabError as error:
            parent.stop()
            SweepCallback._running = None
            raise SweepRefused(str(error)) from None
        self.parent = parent

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failed = self._end(config)
        if failed:
            shown = ", ".join(f"#{job.num} {job.name}" for job in failed)
            raise SweepFailed(f"{len(failed)} job(s) of the sweep failed: {shown}")

    def _end(self, config: DictConfig, stopped_by: str | None = None) -> list[JobRecord]:
        """The summary, and the parent's end; the jobs that did not finish."""
        SweepCallback._running = None
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        records = read_job_records(sweep_dir)
        if self.parent is None:
            _print_summary(records, None, None, None, stopped_by)
        else:
            settings = plain_config(job_part(config))
            asked = OmegaConf.select(config, "hydra.sweeper.direction")
            objective = Objective.of(settings.optimized_metric, asked)  # its first metric
            self._end_parent(
                records,
                sweep_dir,
                settings.tracking.uri,
                settings.tracking.experiment,
                stopped_by,
                settings.tracking.log_model == "best",
                objective.direction,
                objective.metric,
            )
        return [r for r in records if r.status not in DONE]

    def _end_parent(
        self,
        records: list[JobRecord],
        sweep_dir: Path,
        uri: str,
        experiment: str,
        stopped_by: str | None = None,
        best_model: bool = False,
        direction: str = "minimize",
        metric: str = "val_loss",
    ) -> None:
        """The parent's closing tags and files (runs table, curves), its end, the summary;
        with `best_model` (tracking.log_model=best), the best child's logged model."""
        from looplab.tracking import reader, settle_idle, tables

        parent, parent_id = self.parent, self.parent_id
        self.parent = self.parent_id = None
        finished = [r for r in records if r.status in DONE]
        failed = [r for r in records if r.status not in DONE]
        skipped = [r for r in records if r.status == "SKIPPED"]
        pruned = [r for r in records if r.pruned_at is not None]
        files: list[tuple[Path, str | None]] = []
        table_text = None
        group: tuple[str, dict[str, str]] | None = None
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
        run_ids = {run.data.tags.get(tag.JOB): run.info.run_id for run in runs}
        if runs:
            table = tables.runs_table(runs, uri)
            table_text = tables.format_table(table)
            tables.write_table_csv(table, sweep_dir / "runs.csv")
            files = [(sweep_dir / "runs.csv", None)]
            if "seed" in table.columns:  # seeds as groups: the mean over seeds decides
                groups = tables.grouped_table(table, ["seed"])
                tables.write_table_csv(groups, sweep_dir / "groups.csv")
                files.append((sweep_dir / "groups.csv", None))
                group = tables.best_group(groups, metric, direction)
            try:
                tables.plot_curves(runs, "train_loss", sweep_dir / "curves.png", uri)
                files.append((sweep_dir / "curves.png", None))
            except LooplabError as error:  # e.g. no job got to its first epoch
                print(f"warning: no curves for the sweep: {error}", file=sys.stderr)
        sign = -1.0 if direction == "maximize" else 1.0  # the best child, by the objective
        best = min(  # a pruned job's values are of an earlier epoch: not a candidate
            (
                r
                for r in finished
                if r.pruned_at is None and math.isfinite(r.metrics.get(metric, math.nan))
            ),
            key=lambda r: sign * r.metrics[metric],
            default=None,
        )
        tags = {
            "looplab.jobs_finished": str(len(finished)),
            "looplab.jobs_failed": str(sum(r.status != "KILLED" for r in failed)),
            "looplab.jobs_killed": str(sum(r.status == "KILLED" for r in failed)),
            "looplab.jobs_skipped": str(len(skipped)),
            "looplab.jobs_pruned": str(len(pruned)),
            "looplab.jobs_resumed": str(sum(r.resumed_at is not None for r in records)),
        }
        if group is not None:
            tags |= group[1]
        if best is not None:
            tags[tag.BEST_RUN_ID] = best.run_id or run_ids.get(str(best.num), "")
            tags[tag.BEST_JOB] = str(best.num)
            tags["looplab.optimized_metric"] = f"{metric} ({direction})"
            tags["looplab.best_value"] = repr(best.metrics[metric])
        status = "FINISHED" if not failed else "FAILED"
        if stopped_by:
            status, tags[tag.STOPPED_BY] = "KILLED", stopped_by
        warning = parent.finish(status, tags, files)
        parent.stop()
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        hint = sweep_hint(uri, parent.experiment_id, parent_id) if parent_id else None
        best_id, best_line = tags.get(tag.BEST_RUN_ID), None
        if best is not None and best_id and best_model and not stopped_by:
            best_run = next((r for r in runs if r.info.run_id == best_id), None)
            best_line = log_best_model(uri, best, best_id, best_run, parent_id, metric)
        lines = "\n".join(line for line in (group and group[0], best_line) if line) or None
        _print_summary(records, table_text, parent_id, hint, stopped_by, lines)
        if parent.note:
            print(parent.note)


def log_best_model(
    uri: str,
    best: JobRecord,
    run_id: str,
    run: Any,
    parent_id: str | None,
    metric: str = "val_loss",
) -> str | None:
    """The best child's MLflow model (unless it has one), and a line that says how to register
    it; a store that refuses is a warning (and no line): the sweep itself is done."""
    from looplab.tracking import model_out, reader
    from looplab.tracking.store import command_settings

    model_id = run.data.tags.get(tag.MODEL_ID) if run is not None else None
    try:
        with command_settings():  # no progress bars
            if not model_id:
                folder = run.data.tags.get(tag.RUN_DIR) if run is not None else None
                model_id = model_out.log_run_model(reader.client(uri), run_id, folder)
    except Exception as error:
        print(f"warning: the best job's model was not logged: {error}", file=sys.stderr)
        return None
    return (
        f"best: #{best.num} {best.name} ({metric} {best.metrics[metric]:.4g}), its model "
        f"models:/{model_id}; register it with `looplab register {parent_id} NAME`"
    )


def _import_ahead(launcher_target: str) -> None:
    """Import now, while the parent's writer starts in its own process (MLflow's import, the
    store's opening: seconds of waiting), what this process imports later anyway: MLflow's
    client for the summary and, when the launcher runs the jobs here, torch and the run
    (each about as long as that wait on a 2-core machine; `make bench`, group `stacked`)."""
    try:
        import mlflow.tracking  # noqa: F401

        if launcher_target.startswith(IN_PROCESS_LAUNCHERS):
            import looplab.run.execute  # noqa: F401
    except (ImportError, OSError):  # a broken install: each job that needs it says so
        pass


def jobs_planned(config: DictConfig, jobs: list[Any]) -> int:
    """How many jobs the sweep will launch: a search's `n_trials`, else the grid's product."""
    trials = config.hydra.sweeper.get("n_trials")
    return int(trials) if trials is not None else len(jobs)


def _print_summary(
    records: list[JobRecord],
    table: str | None,
    parent_id: str | None,
    hint: str | None,
    stopped_by: str | None = None,
    best_line: str | None = None,
) -> None:
    """The runs table (and the best job's model), then one line: how many jobs finished,
    which failed, where to look (and, for a sweep a signal stopped, by which: the jobs after
    it never ran)."""
    done = sum(r.status in DONE for r in records)
    failed = [r for r in records if r.status not in DONE]
    skipped = sum(r.status == "SKIPPED" for r in records)
    if table:
        print(table)
    for record in failed:  # the reasons here too: a cluster's jobs print into their own logs
        print(f"failed: #{record.num} {record.name}: {record.error or record.status}")
    if best_line:
        print(best_line)
    line = f"sweep: {done} of {len(records)} jobs finished"
    if stopped_by:
        line = f"sweep stopped by {stopped_by}: {done} of the {len(records)} jobs that ran finished"
    resumed = sum(r.resumed_at is not None for r in records)
    pruned = sum(r.pruned_at is not None for r in records)
    why = [f"{pruned} of them pruned by the search's pruner"] if pruned else []
    why += [f"{skipped} skipped: FINISHED before, tracking.skip_finished=true"] if skipped else []
    why += [f"{resumed} resumed from a checkpoint"] if resumed else []
    if why:
        line += f" ({'; '.join(why)})"
    if failed:
        line += "; failed: " + ", ".join(f"#{r.num} {r.name}" for r in failed)
    if parent_id:
        line += f"; parent MLflow run {parent_id}: {hint}"
    print(line)
