"""Everything that talks to MLflow, behind one door.

- `client`: the training side's `Tracker` (no MLflow import), and this process's idle
  writers (`start_tracker`, `settle_idle`); `offline`: `OfflineTracker`, no store at all;
- `protocol`: the messages between `Tracker` and its writer process, one class each;
- `writer`: the writer process (`python -m looplab.tracking`), which owns the MLflow
  client during a run; `delivery`: a run's ordered queue of store operations, backoff and
  heartbeat, in the writer; `source`: the git and user tags of a run's source;
- `store`: opening (and creating) a store and an experiment, safely under concurrency, and
  the names and limits the modules share;
- `record`: a run's own record in its folder (`record.json`), for offline runs and `looplab
  sync` (no MLflow import);
- `sync`: sending run folders' records to a store, idempotently;
- `reader`: reading runs, sweeps and metric histories back, for the `looplab` commands;
  `records`: one run's config artifact and histories, for reproduce and diff.

Nothing outside this package imports MLflow.
"""

from looplab.tracking.client import Tracker, settle_idle, start_tracker
from looplab.tracking.offline import OfflineTracker

__all__ = ["OfflineTracker", "Tracker", "settle_idle", "start_tracker"]
