"""`looplab-train`: the Hydra entry point, and the only module that touches Hydra.

    looplab-train                                   # the default experiment
    looplab-train model.width=16 update=sgd         # override any key
    looplab-train -m train.lr=0.01,0.1,1            # a sweep, one MLflow run per job
    looplab-train experiment=seed                   # the tutorial's exact recipe

It checks the config, starts the MLflow writer early (so its start-up overlaps importing
torch), hands the run to `looplab.run.execute`, and turns errors into one line and an exit code.

Hydra prints a bad command line (unknown key, wrong type, unknown option) as several lines of
its own. `main` therefore runs Hydra with HYDRA_FULL_ERROR=1, so that Hydra re-raises, and
words the error as one `looplab-train: error: ...` line naming the key, the bad value and
what is allowed. A user who sets HYDRA_FULL_ERROR=1 gets the full traceback instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path
from typing import NoReturn

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
    ValidationError,
)

from looplab.config import (
    config_dir,
    plain_config,
    register,
    run_name,
    unknown_key_message,
    validate,
)
from looplab.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    LooplabError,
    Terminated,
)
from looplab.tracking import start_tracker

register()

# Whether the user asked for tracebacks (HYDRA_FULL_ERROR=1), kept for the jobs.
USER_FULL_ERROR = "LOOPLAB_FULL_ERROR"
# What Hydra writes into a job's folder before the job runs; nothing else is ever removed.
HYDRA_FILES = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml")


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
    for name in (*HYDRA_FILES, f"{job_name}.log", "config.yaml"):
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


_BASELINES: dict[str | None, DictConfig] = {}


def baseline(preset: str | None) -> DictConfig:
    """The config with no overrides but the preset: what a run's name is told apart from.

    Composed once per preset and process (a sweep's jobs in one process share it).
    """
    if preset not in _BASELINES:
        overrides = [f"experiment={preset}"] if preset else []
        _BASELINES[preset] = plain_config(compose(config_name="train", overrides=overrides))
    return _BASELINES[preset]


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def train_job(cfg: DictConfig) -> float:
    """Run one job; return its final validation loss, the value sweepers minimise (+inf for
    a job that did not finish, so that a search ranks it last)."""
    hydra_config = HydraConfig.get()
    output_dir = Path(hydra_config.runtime.output_dir)
    hydra_dir = output_dir / hydra_config.output_subdir if hydra_config.output_subdir else None
    in_sweep = hydra_config.mode == RunMode.MULTIRUN
    try:
        plain = plain_config(cfg)
        validate(plain)
        # Start MLflow's writer process before torch is imported, so the two overlap.
        tracker = start_tracker(plain)
        from looplab.run import execute, print_warning

        preset = hydra_config.runtime.choices.get("experiment")
        name = run_name(plain, baseline(preset), preset)
        result = execute(plain, output_dir, hydra_dir, tracker, name=name)
    except LooplabError as error:
        _discard_unstarted(output_dir, hydra_config.job.name)
        if os.environ.get(USER_FULL_ERROR) == "1":
            raise
        _fail(str(error))
    except OmegaConfBaseException as error:  # e.g. an interpolation that cannot be resolved
        _discard_unstarted(output_dir, hydra_config.job.name)
        _fail(describe(error))
    print_warning(result, output_dir)
    if result.exit_code and not (in_sweep and result.status == "FAILED"):
        if result.error:
            print(f"looplab-train: {result.error}", file=sys.stderr)
        sys.exit(result.exit_code)
    if result.error:  # a diverged job in a sweep: reported, and the sweep goes on
        print(f"looplab-train: job {hydra_config.job.num}: {result.error}", file=sys.stderr)
    return result.objective


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _allowed(message: str) -> str:
    """What OmegaConf's type check allows, in a user's words."""
    checks = [
        (r"expected one of \[(.*)\]", lambda m: f"choose one of {m.group(1)}"),
        (r"converted to Integer", lambda m: "it must be an integer"),
        (r"converted to Float", lambda m: "it must be a number"),
        (r"not a valid bool", lambda m: "it must be true or false"),
        (r"is not a ListConfig", lambda m: "it must be a list, e.g. [a,b]"),
        (r"is not Optional", lambda m: "it cannot be null"),
        (r"is not a subclass of (\w+)", lambda m: "it is a group of keys; set one key in it"),
    ]
    for pattern, wording in checks:
        found = re.search(pattern, message)
        if found:
            return wording(found)
    return message


def describe(error: BaseException) -> str:
    """One line for a Hydra or OmegaConf error: the key, the bad value, what is allowed."""
    if isinstance(error, MissingConfigException) and "/" in (error.missing_cfg_file or ""):
        group, _, option = (error.missing_cfg_file or "").rpartition("/")
        if error.options:
            return f"{group}={option} is not an option; choose one of {', '.join(error.options)}"
        return f"{group}={option}: there is no config '{error.missing_cfg_file}'"
    if isinstance(error, OverrideParseException):
        return (
            f"cannot parse the command line: {_first_line(str(error))} "
            "(see https://hydra.cc/docs/advanced/override_grammar/basic/)"
        )
    cause = error if isinstance(error, OmegaConfBaseException) else error.__cause__
    if isinstance(cause, OmegaConfBaseException):
        key = cause.full_key or "?"
        message = _first_line(cause.msg or str(cause))
        if isinstance(cause, ConfigAttributeError | ConfigKeyError) and message.startswith("Key "):
            return unknown_key_message(key)
        if isinstance(cause, ValidationError):
            value = "null" if cause.value is None else cause.value
            return f"{key}={value} is not allowed: {_allowed(message)}"
        return f"{key}: {message}"
    lines = []
    for line in str(error).splitlines():
        if line.strip().endswith("search path:") or line.strip() == "Search path:":
            break
        if line.strip():
            lines.append(line.strip())
    return "; ".join(lines) or type(error).__name__


def _sweep_jobs(argv: list[str]) -> list[list[str]]:
    """The overrides of the jobs `_check_sweep` composes; [] when this is no plain sweep.

    Each swept value is taken once, with every other key at its first value: the sum of
    the values, not their product, so a large grid is checked in a second or two.
    """
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args, _ = get_args_parser().parse_known_args(argv)
    if not args.multirun or args.config_dir or args.config_path or args.config_name:
        return []
    choices: list[list[str]] = []
    for override in OverridesParser.create().parse_overrides(args.overrides):
        key = override.get_key_element()
        if key.lstrip("+~").startswith("hydra"):
            continue  # the launcher's and sweeper's settings, not the job's
        if override.is_discrete_sweep():
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        elif override.is_sweep_override():
            return []  # an interval, for a sweeper plugin: nothing to enumerate
        else:
            choices.append([override.input_line])
    first = [values[0] for values in choices]
    jobs = [first]
    for index, values in enumerate(choices):
        jobs += [[*first[:index], value, *first[index + 1 :]] for value in values[1:]]
    return jobs


def _check_sweep(argv: list[str]) -> None:
    """Check every swept value before a sweep's first job: a typo in job 9 costs a second,
    not the eight jobs before it (and the parallel jobs a failing one would take down)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    jobs = _sweep_jobs(argv)
    if len(jobs) < 2:
        return
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        for job in jobs:
            try:
                validate(plain_config(compose("train", overrides=job)))
            except (LooplabError, ConfigCompositionException) as error:
                message = str(error) if isinstance(error, LooplabError) else describe(error)
                _fail(f"{message} (nothing ran: the sweep is checked before its first job)")
            except Exception:  # anything else is left for Hydra itself to report
                return


def main() -> None:
    """The `looplab-train` console script: Hydra, with bad input worded as one line."""
    wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ[USER_FULL_ERROR] = "1" if wants_traceback else "0"  # seen by launcher workers
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises; we word the error below
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        _check_sweep(sys.argv[1:])
        train_job()
    except (HydraException, OmegaConfBaseException) as error:
        if wants_traceback:
            raise
        _fail(describe(error))
    except KeyboardInterrupt:  # before or after a run: there is nothing to mark KILLED
        _fail("interrupted", EXIT_INTERRUPTED)
    except Terminated:
        _fail("terminated", EXIT_TERMINATED)


if __name__ == "__main__":
    main()
