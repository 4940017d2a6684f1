"""A Hydra sweeper that asks Optuna for trials, launches them, and tells it the results.

The study lives in Optuna's own SQLite storage beside the tracking store, named after the
search (its space and fixed overrides), so launching the same search again picks up where a
killed one stopped: trials it left RUNNING are marked FAIL and asked again first, with the
same parameters, without counting toward `n_trials`; the sampler is seeded past the trials
the study has, so the relaunch does not ask the first launch's parameters again.
A job that failed is told to the study as a FAIL trial, under either direction: one that
raised, and one that returned no finite number (looplab's task function returns +inf for a
job that did not finish, which under `direction: maximize` would rank first). As under
Hydra's basic sweeper, a failed job of any app but looplab's then stops the search
(`LaunchingSweeper.raise_failed`); looplab's goes on.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import fields
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, ListConfig, OmegaConf

from hydra_plugins.looplab_optuna_sweeper.config import LooplabOptunaSweeperConf
from looplab.core.errors import LooplabError
from looplab.core.objective import Objective
from looplab.launch.sweep import SweepRefused, search_identity
from looplab.launch.sweeper import LaunchingSweeper
from looplab.launch.trials import PRUNED_AT, TRIALS_FILE, write_trials

log = logging.getLogger(__name__)
# The study's record of the trials killed launches left running (asked again, not counted).
INTERRUPTED = "looplab.interrupted_trials"


def distribution(override: Override) -> Any:
    """An Optuna distribution for one key of the search space."""
    import optuna.distributions as dist

    if override.is_discrete_sweep():
        values = list(override.sweep_iterator())
        if override.is_range_sweep():  # shuffled or not: its bounds and step, in order
            ordered = sorted(values)
            step = ordered[1] - ordered[0] if len(ordered) > 1 else 1
            if all(isinstance(value, int) for value in ordered):
                return dist.IntDistribution(ordered[0], ordered[-1], step=step)
            return dist.FloatDistribution(float(ordered[0]), float(ordered[-1]), step=step)
        return dist.CategoricalDistribution(values)
    sweep = override.value()
    if isinstance(sweep, IntervalSweep):
        log_scale = "log" in sweep.tags
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return dist.IntDistribution(sweep.start, sweep.end, log=log_scale)
        return dist.FloatDistribution(sweep.start, sweep.end, log=log_scale)
    raise ValueError(f"{override.input_line}: not a search space Optuna can sample")


def grid_space(space: dict[str, Any]) -> dict[str, list[Any]]:
    """The values of every key, for `hydra/sweeper/sampler=grid`: choices and stepped ranges
    only (an interval has no grid)."""
    grid = {}
    for key, kind in space.items():
        if hasattr(kind, "choices"):
            grid[key] = list(kind.choices)
        elif getattr(kind, "step", None) is not None:
            count = round((kind.high - kind.low) / kind.step) + 1
            grid[key] = [kind.low + i * kind.step for i in range(count)]
        else:
            raise SweepRefused(
                f"hydra/sweeper/sampler=grid: {key} is an interval, which has no grid; give "
                "it as choice(...) or range(...), or choose another sampler"
            )
    return grid


def study_name(settings: dict[str, Any], arguments: list[str]) -> str:
    """`study_name`, else the search's identity (launch.sweep.search_identity): what the
    sweep's parent run is tagged with too (cli/sweep.py), one parent for the study."""
    declared = settings.get("params") or {}
    lines = [f"{key}={value}" for key, value in declared.items()] + list(arguments)
    return str(settings.get("study_name") or search_identity(lines))


def objective(job: JobReturn, count: int = 1) -> list[float] | None:
    """The job's values for the study: the `count` finite numbers it returned (one, or a
    sequence of them for a multi-objective study), else None (it raised, or returned +inf,
    NaN, too few numbers or something that is no number): a failed trial."""
    if job.status != JobStatus.COMPLETED:
        return None
    returned = job.return_value
    values = list(returned) if isinstance(returned, list | tuple) else [returned]
    try:
        numbers = [float(value) for value in values]
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count and all(map(math.isfinite, numbers)) else None


def tell(study: Any, trial: Any, **outcome: Any) -> None:
    """`study.tell`, past the grid sampler's `study.stop()` at its grid's end, which Optuna
    allows only inside `study.optimize` (the trial's outcome is stored first)."""
    try:
        study.tell(trial, **outcome)
    except RuntimeError as error:
        if "Study.stop" not in str(error):
            raise


class LooplabOptunaSweeper(LaunchingSweeper):
    def __init__(self, **settings: Any) -> None:
        super().__init__()
        known = {f.name for f in fields(LooplabOptunaSweeperConf)}
        unknown = sorted(set(settings) - known)
        if unknown:  # a `+hydra.sweeper.KEY` that nothing reads: a search unlike the one asked
            keys = sorted(key for key in known if not key.startswith("_") and key != "defaults")
            raise SweepRefused(
                f"hydra.sweeper.{unknown[0]} is not a key of looplab's Optuna sweeper; its "
                f"keys: {', '.join(keys)}"
            )
        self.settings = settings

    @classmethod
    def check_search(cls, config: DictConfig) -> None:
        """Refuse (SweepRefused) what `sweep` would refuse, before the sweep's parent run or
        folder exists: looplab's sweep callback asks a sweeper that has this method."""
        settings = OmegaConf.to_container(config.hydra.sweeper, resolve=True)
        assert isinstance(settings, dict)
        sweeper = cls(**{str(k): v for k, v in settings.items() if k != "_target_"})
        sweeper.config = config
        space, _ = sweeper._space([str(line) for line in config.hydra.overrides.task])
        sweeper._directions()
        sweeper._sampler(space, 0)

    def _sampler(self, space: dict[str, Any], seed_offset: int) -> Any:
        """The chosen sampler (hydra/sweeper/sampler), its seed moved past `seed_offset`
        trials so that a relaunch does not ask the first launch's parameters again."""
        from hydra.utils import instantiate

        chosen = dict(self.settings.get("sampler") or {"_target_": "optuna.samplers.TPESampler"})
        if chosen.get("seed") is not None:
            chosen["seed"] = int(chosen["seed"]) + seed_offset
        if chosen["_target_"].endswith("CmaEsSampler") and not find_spec("cmaes"):
            raise SweepRefused(  # Optuna finds out only at the first trial, with a traceback
                "hydra/sweeper/sampler=cmaes needs the cmaes package: "
                ".venv/bin/pip install cmaes; or choose another sampler"
            )
        if chosen["_target_"].endswith("GridSampler"):
            chosen["search_space"] = grid_space(space)
        try:
            return instantiate(chosen, _convert_="all")
        except Exception as error:  # CmaEsSampler without the `cmaes` package, ...
            cause = error.__cause__ or error
            raise SweepRefused(
                f"hydra/sweeper/sampler: {chosen['_target_']} cannot be used: {cause}"
            ) from None

    def _pruner_config(self) -> dict[str, Any]:
        return dict(self.settings.get("pruner") or {"_target_": "optuna.pruners.NopPruner"})

    def _space(self, arguments: list[str]) -> tuple[dict[str, Any], list[str]]:
        """The search space (declared params, then command-line sweeps) and fixed overrides."""
        declared = self.settings.get("params") or {}
        lines = [f"{key}={value}" for key, value in declared.items()] + list(arguments)
        last: dict[str, Override] = {}  # the command line replaces a declared key, whole
        for override in OverridesParser.create().parse_overrides(lines):
            last.pop(override.get_key_element(), None)
            last[override.get_key_element()] = override
        space = {k: distribution(o) for k, o in last.items() if o.is_sweep_override()}
        fixed = [o.input_line for o in last.values() if not o.is_sweep_override()]
        return space, fixed

    def _storage(self, study_name: str) -> str:
        if self.settings.get("storage"):
            return str(self.settings["storage"])
        assert self.config is not None
        uri = self.config.get("tracking", {}).get("uri") or ""
        folder = (
            Path(uri.removeprefix("sqlite:///")).parent
            if uri.startswith("sqlite:///")
            else Path.cwd() / "outputs"
        )
        (folder / "optuna").mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(folder / 'optuna' / f'{study_name}.db').resolve()}"

    def _directions(self) -> list[str]:
        """`direction`: one, or a list for a multi-objective search (whose jobs return a
        value for each; Optuna prunes no such study). Unsaid, looplab's `optimized_metric`
        says them (accuracy maximised, losses minimised; a list of metrics, one each); any
        other app minimises, as under Hydra's Optuna sweeper."""
        assert self.config is not None
        asked = self.settings.get("direction")
        metric = self.config.get("optimized_metric")
        if metric is not None:
            try:
                directions = list(Objective.of(metric, asked).directions)
            except LooplabError as error:
                raise SweepRefused(str(error)) from None
        elif isinstance(asked, list | ListConfig):
            directions = [str(direction) for direction in asked]
        else:
            directions = [str(asked or "minimize")]
        if len(directions) > 1 and not self._pruner_config()["_target_"].endswith("NopPruner"):
            raise SweepRefused(
                "hydra/sweeper/pruner: Optuna cannot prune a multi-objective search "
                f"(direction: {directions}); choose hydra/sweeper/pruner=none"
            )
        return directions

    @staticmethod
    def _resume(study: Any) -> int:
        """The trials a killed launch left running: failed, and asked again first (with the
        same parameters); they do not count toward `n_trials`. The trials that count."""
        from optuna.trial import TrialState

        running = study.get_trials(deepcopy=False, states=[TrialState.RUNNING])
        for trial in running:
            study.tell(trial.number, state=TrialState.FAIL)
            study.enqueue_trial(trial.params)
        lost = set(study.user_attrs.get(INTERRUPTED, [])) | {t.number for t in running}
        if running:
            study.set_user_attr(INTERRUPTED, sorted(lost))
        trials = study.get_trials(deepcopy=False)
        return sum(t.state.is_finished() and t.number not in lost for t in trials)

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        space, fixed = self._space(arguments)
        if not space:
            raise ValueError("hydra/sweeper=looplab_optuna needs a search space in its params")
        name = study_name(self.settings, arguments)
        storage = self._storage(name)
        pruner = self._pruner_config()
        directions = self._directions()
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            load_if_exists=True,
            directions=directions,
            sampler=self._sampler(space, 0),
        )
        if study.trials:  # a relaunch: not the first launch's draws again
            sampler = self._sampler(space, len(study.trials))
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        done = self._resume(study)
        total = int(self.settings.get("n_trials", 20))
        if (self.settings.get("sampler") or {}).get("_target_", "").endswith("GridSampler"):
            total = min(total, math.prod(len(v) for v in grid_space(space).values()))
        if done >= total:
            print(f"study {name}: all {total} trials are done already ({storage})")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        try:
            self._trials(study, space, fixed, name, storage, pruner, sweep_dir, done, total)
        finally:  # no later job in this folder takes itself for one of these trials
            (sweep_dir / TRIALS_FILE).unlink(missing_ok=True)
        self._report(study, name, directions, sweep_dir, storage)

    def _trials(
        self,
        study: Any,
        space: dict[str, Any],
        fixed: list[str],
        name: str,
        storage: str,
        pruner: dict[str, Any],
        sweep_dir: Path,
        done: int,
        total: int,
    ) -> None:
        """Ask, launch and tell, a batch at a time, until `total` trials are done."""
        import optuna

        batch_size = max(1, int(self.settings.get("n_jobs", 1)))
        count = len(study.directions)
        failed = launched = 0
        while done < total:
            trials = [study.ask(space) for _ in range(min(batch_size, total - done))]
            overrides = [
                tuple(fixed) + tuple(f"{key}={value}" for key, value in trial.params.items())
                for trial in trials
            ]
            first = trials[0].number  # the launcher numbers the batch's jobs from here
            jobs = {first + i: trial.number for i, trial in enumerate(trials)}
            write_trials(sweep_dir, name, storage, pruner, jobs)
            returns = self.launch(overrides, first)
            outcomes = [objective(job, count) for job in returns]
            stored = study.get_trials(deepcopy=False)  # what the jobs wrote: read once a batch
            for trial, value in zip(trials, outcomes, strict=True):
                if value is None:
                    tell(study, trial, state=optuna.trial.TrialState.FAIL)
                elif PRUNED_AT in stored[trial.number].user_attrs:
                    tell(study, trial, state=optuna.trial.TrialState.PRUNED)
                else:
                    tell(study, trial, values=value)
            done += len(trials)
            failed += sum(value is None for value in outcomes)
            launched += len(trials)
            self.raise_failed(returns)  # any app but looplab's: told to the study, then raised
            rate = float(self.settings.get("max_failure_rate", 1.0))
            if failed / launched > rate and done < total:  # the sweep's end says which failed
                print(
                    f"study {name}: stopped after {launched} trials: {failed} failed, more than "
                    f"hydra.sweeper.max_failure_rate={rate:g} of them"
                )
                break

    def _report(
        self, study: Any, name: str, directions: list[str], sweep_dir: Path, storage: str
    ) -> None:
        """The study's counts and best trial (or Pareto front), and the files scripts read."""
        import optuna

        states = Counter(t.state.name.lower() for t in study.trials)
        print(f"study {name}: " + ", ".join(f"{n} {state}" for state, n in sorted(states.items())))
        if len(directions) > 1:
            self._pareto_front(study, name, sweep_dir)
        # Complete and finite only: a pruned trial's value is of an earlier epoch, and a
        # study begun before failed jobs were FAIL trials holds +inf.
        finished = [
            t
            for t in study.trials
            if t.state == optuna.trial.TrialState.COMPLETE and math.isfinite(t.values[0])
        ]
        if finished and len(directions) == 1:
            best = min(
                finished, key=lambda t: t.value if study.direction.name == "MINIMIZE" else -t.value
            )
            shown = " ".join(f"{k}={v}" for k, v in best.params.items())
            print(f"study {name}: best trial #{best.number} {shown}: {best.value:.6g}")
            OmegaConf.save(  # as hydra-optuna-sweeper writes it, for scripts that read it
                {"name": "optuna", "best_params": best.params, "best_value": best.value},
                sweep_dir / "optimization_results.yaml",
            )
        OmegaConf.save(
            {"study": name, "storage": storage, "trials": len(study.trials)},
            sweep_dir / "optuna.yaml",
        )

    @staticmethod
    def _pareto_front(study: Any, name: str, sweep_dir: Path) -> None:
        """A multi-objective study's best trials (its Pareto front), printed and written as
        hydra-optuna-sweeper writes them (`solutions` in optimization_results.yaml)."""
        front = study.best_trials
        print(f"study {name}: {len(front)} trial(s) on the Pareto front")
        for trial in front:
            shown = " ".join(f"{k}={v}" for k, v in trial.params.items())
            print(f"  #{trial.number} {shown}: {', '.join(f'{v:.6g}' for v in trial.values)}")
        solutions = [{"params": t.params, "values": t.values} for t in front]
        OmegaConf.save(
            {"name": "optuna", "solutions": solutions}, sweep_dir / "optimization_results.yaml"
        )
