"""A sweep checked whole before its first job: its jobs enumerated, composed and validated.

Hydra's callback runner turns an `Exception` into a warning, so a refused sweep is raised as
`SweepRefused`, a BaseException that reaches `looplab-train`'s main.
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
from dataclasses import dataclass
from typing import Any

from hydra import compose
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf

from looplab.core.errors import LooplabError
from looplab.core.schema import plain_config
from looplab.core.validate import validate
from looplab.launch.overrides import Compositions, parse
from looplab.launch.parts import parts_of
from looplab.launch.wording import describe


class SweepRefused(BaseException):
    """A sweep that cannot run as asked; `str(error)` is the one line to print.

    A BaseException, like KeyboardInterrupt, because Hydra's callback runner would turn an
    Exception into a warning and launch the jobs anyway.
    """


class SweepFailed(BaseException):
    """Jobs of the sweep failed: raised at the sweep's end, after its summary, so that
    `looplab-train` exits 1; `str(error)` names them."""


@dataclass
class Choice:
    """One value of one key in one job: the override as typed, and its parsed value."""

    key: str
    text: str  # "model.width=8"
    value: Any


def _choices(override: Override) -> list[Choice]:
    key = override.get_key_element()
    bare = key.lstrip("+~")
    if override.is_discrete_sweep():
        pairs = zip(override.sweep_iterator(), override.sweep_string_iterator(), strict=True)
        return [Choice(bare, f"{key}={text}", value) for value, text in pairs]
    if override.is_sweep_override():  # an interval, for a search sweeper: not enumerable
        return []
    return [Choice(bare, override.input_line, override.value())]


def sweep_overrides(config: DictConfig) -> list[str]:
    """The sweep's overrides: `hydra.sweeper.params` (a preset's sweep), then the command
    line's, which win for the same key. Hydra's own settings (`hydra.*`) are left out."""
    typed = [str(o) for o in config.hydra.overrides.task]
    declared = config.hydra.sweeper.get("params") or {}
    keys = {line.split("=", 1)[0].lstrip("+~") for line in typed}
    lines = [f"{k}={v}" for k, v in declared.items() if str(k) not in keys] + typed
    return [line for line in lines if not line.lstrip("+~").startswith("hydra")]


def search_identity(lines: list[str]) -> str:
    """A search's identity: its space and fixed overrides as the last line of each key (the
    command line replaces a declared key), whatever their order; Hydra's settings left out.
    The study's name, and its parent run's tag."""
    last = {o.get_key_element(): o.input_line for o in parse(lines)}
    kept = sorted(line for key, line in last.items() if not key.lstrip("+~").startswith("hydra"))
    return "search-" + hashlib.sha1(repr(kept).encode()).hexdigest()[:10]


def swept_keys(lines: list[str]) -> list[str]:
    """The keys that vary between jobs (intervals included), without enumerating any job."""
    return [o.get_key_element().lstrip("+~") for o in parse(lines) if o.is_sweep_override()]


def enumerate_jobs(
    lines: list[str], every_combination: bool = True
) -> tuple[list[list[Choice]], list[str]]:
    """Every combination of the discrete sweeps (the product, as Hydra's basic sweeper runs
    them), and the keys that vary between jobs (intervals included). A search samples its
    jobs (`every_combination=False`): each value once, the other keys at their first, so
    that checking them costs the sum of the choices, not their product (eight keys of ten
    choices: 73 jobs, not 10**8)."""
    per_key: list[list[Choice]] = []
    swept: list[str] = []
    for override in parse(lines):
        if override.is_sweep_override():
            swept.append(override.get_key_element().lstrip("+~"))
        choices = _choices(override)
        if choices:
            per_key.append(choices)
    if not every_combination:
        first = [choices[0] for choices in per_key]
        jobs = [first] + [
            [*first[:i], choice, *first[i + 1 :]]
            for i, choices in enumerate(per_key)
            for choice in choices[1:]
        ]
        return jobs, swept
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


def check_jobs(config_name: str, jobs: list[list[Choice]], extra: list[str] = ()) -> None:
    """Compose and validate every job before the first one runs, each as looplab's launcher
    will compose it (`Compositions`): jobs that differ only in values share a composition.
    `extra`: Hydra settings every compose needs (the run's `hydra.searchpath`)."""
    configs = Compositions(
        lambda lines: compose(config_name=config_name, overrides=[*lines, *extra])
    )
    for job in jobs:
        try:
            plain = plain_config(configs.job_config([c.text for c in job]))
            validate(plain)
            parts_of(plain)
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


def refuse_missing_optuna(sweeper_target: str) -> None:
    """`hparams_search=optuna` needs the `search` extra: say so in one line before the parent
    run or the sweep's folder exists, rather than fail with a traceback after both."""
    if not sweeper_target.endswith("LooplabOptunaSweeper"):
        return
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise SweepRefused(
            "hparams_search=optuna needs Optuna, the `search` extra: "
            "PIP_CONSTRAINT=constraints.txt .venv/bin/pip install -e '.[search]'; nothing was "
            "recorded"
        ) from None


def _refuse(message: str, job: list[Choice]) -> None:
    shown = " ".join(c.text for c in job) or "(no overrides)"
    raise SweepRefused(
        f"{message} (in the job {shown}; nothing ran: every job of a sweep is checked "
        "before the first one)"
    )


def job_part(config: DictConfig) -> DictConfig:
    """The launching config without its `hydra` node: what every job shares."""
    return OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
