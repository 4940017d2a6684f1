"""Hydra's and OmegaConf's errors as one line: the key, the bad value, what is allowed."""

from __future__ import annotations

from hydra.errors import MissingConfigException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from looplab.core.schema import omegaconf_message

# Launchers that come with one of looplab's extras: the extra, and how to install it.
_SLURM = ("slurm", "PIP_CONSTRAINT=constraints.txt .venv/bin/pip install -e '.[slurm]'")
LAUNCHER_EXTRAS = {
    "submitit_local": _SLURM,
    "submitit_slurm": _SLURM,
    "slurm": _SLURM,
    "ray": ("ray", "make setup-ray"),
    "ray_cluster": ("ray", "make setup-ray"),
}


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def describe(error: BaseException) -> str:
    """One line for a Hydra or OmegaConf error: the key, the bad value, what is allowed."""
    if isinstance(error, MissingConfigException) and "/" in (error.missing_cfg_file or ""):
        group, _, option = (error.missing_cfg_file or "").rpartition("/")
        if group == "hydra/launcher" and option in LAUNCHER_EXTRAS:
            extra, install = LAUNCHER_EXTRAS[option]
            return f"hydra/launcher={option} needs the {extra} extra: {install} (docs/scaling.md)"
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
        return omegaconf_message(cause)
    lines = []
    for line in str(error).splitlines():
        if line.strip().endswith("search path:") or line.strip() == "Search path:":
            break
        if line.strip():
            lines.append(line.strip())
    return "; ".join(lines) or type(error).__name__
