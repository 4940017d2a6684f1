"""Where a run's code came from: the tags MLflow's own `start_run` would set (the user, the
git commit of the launch directory), whether the git tree was dirty, and its diff.

No MLflow import: the offline tracker uses it in the training process, the writer process
for each run it starts.
"""

from __future__ import annotations

import functools
import getpass
import subprocess

USER_TAG = "mlflow.user"
SOURCE_TYPE_TAG = "mlflow.source.type"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
GIT_DIRTY_TAG = "looplab.git.dirty"
GIT_TIMEOUT_SECONDS = 5


@functools.cache
def source_tags() -> tuple[dict[str, str], str]:
    """The source tags of this process's launch directory, and the git diff when its tree
    was dirty (`looplab.git.dirty`), else "".

    Asked once per process: the jobs of a sweep that share a writer share a launch directory.
    """
    tags = {USER_TAG: getpass.getuser(), SOURCE_TYPE_TAG: "LOCAL"}
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return tags, ""
    tags[GIT_COMMIT_TAG] = commit.strip()
    changed = _git("status", "--porcelain", "--untracked-files=no")
    dirty = bool(changed and changed.strip())
    tags[GIT_DIRTY_TAG] = str(dirty).lower()
    return tags, (_git("diff", "HEAD") or "") if dirty else ""


def _git(*args: str) -> str | None:
    """git's output, or None when git is not there, fails, or takes too long."""
    try:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_SECONDS
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None
