"""How a run's story is logged: the `looplab` logger, and the filter its console handler uses.

Hydra configures logging for each job from `conf/hydra/job_logging/looplab.yaml`: the
`looplab` logger's lines go to the console as they are (information to stdout, warnings and
errors to stderr) and, with a time stamp, to the run folder's `train.log`. Kept apart from
`reporting.py` so that setting up logging never imports torch.
"""

from __future__ import annotations

import logging

log = logging.getLogger("looplab")


class UpToInfo(logging.Filter):
    """Let through records below WARNING: those go to stdout, the rest to stderr."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


class NotFileOnly(logging.Filter):
    """Keep records logged with `extra={"file_only": True}` off the console (train.log only)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)
