"""A sweep job that is a trial of looplab's Optuna search, pruned by the study's pruner.

Before each batch the sweeper writes which trial each job is, the study, its storage and its
pruner into the sweep folder (`TRIALS_FILE`); a job reads it, and every epoch reports its
objective to the trial through the storage and asks whether to stop, so trials that run in
parallel (joblib, submitit, Ray on one file system) see each other's reports. A pruned job
ends FINISHED after that epoch; it marks its trial, and the sweeper tells it PRUNED.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from looplab.core.objective import BEST, Objective, base_metric
from looplab.launch.jobs import SweepJob
from looplab.run import tags as tag
from looplab.run.early_stop import EndedEarly

if TYPE_CHECKING:  # torch: imported by the run, not by its callbacks' modules
    from looplab.core.loop import EpochResult

TRIALS_FILE = "optuna_trials.json"
# The trial's user attribute that says at which epoch the job was pruned.
PRUNED_AT = "pruned_at_epoch"


def write_trials(
    sweep_dir: Path, study: str, storage: str, pruner: dict[str, Any], jobs: dict[int, int]
) -> None:
    """The sweeper's word to the batch it launches: job number -> trial number. Written whole
    and renamed, so that a job never reads half of it."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"study": study, "storage": storage, "pruner": pruner, "jobs": jobs})
    partial = sweep_dir / f".{TRIALS_FILE}.{os.getpid()}"
    partial.write_text(text)
    partial.replace(sweep_dir / TRIALS_FILE)


def pruning_for(job: SweepJob, objective: Objective) -> Pruning | None:
    """The pruning callback of a job that is a trial under a pruner; else None (a grid's job,
    a search without a pruner)."""
    path = job.sweep_dir / TRIALS_FILE
    if not path.exists():
        return None
    plan = json.loads(path.read_text())
    trial_number = plan["jobs"].get(str(job.num))
    if trial_number is None or plan["pruner"].get("_target_", "").endswith("NopPruner"):
        return None
    import optuna
    from hydra.utils import instantiate

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=plan["study"], storage=plan["storage"], pruner=instantiate(plan["pruner"])
    )
    trial = study.trials[trial_number]
    if trial.state != optuna.trial.TrialState.RUNNING:  # not a trial of this launch's
        return None
    trial_id = trial._trial_id  # Optuna names a trial by its id
    return Pruning(optuna.trial.Trial(study, trial_id), objective.metric, objective.direction)


class Pruned(EndedEarly):
    def __init__(self, epoch: int) -> None:
        super().__init__(f"pruned at epoch {epoch}", {tag.PRUNED_AT: str(epoch)})
        self.epoch = epoch


class Pruning:
    """An epoch callback: report the epoch's objective (`val_loss`, or the best so far for
    `val_loss_best`) to the trial, and raise `Pruned` when the study's pruner says stop."""

    def __init__(self, trial: Any, metric: str, direction: str) -> None:
        self.trial, self.metric = trial, base_metric(metric)
        self.running_best = metric.endswith(BEST)
        self.sign = -1.0 if direction == "maximize" else 1.0
        self.best = math.inf

    def __call__(self, result: EpochResult) -> None:
        value = result.metrics.get(self.metric, math.nan)
        if not math.isfinite(value):
            return  # a diverged epoch ends the run as FAILED on its own
        if self.running_best:
            self.best = min(self.best, self.sign * value)
            value = self.sign * self.best
        self.trial.report(value, result.epoch)
        if self.trial.should_prune():
            self.trial.set_user_attr(PRUNED_AT, result.epoch)
            raise Pruned(result.epoch)
