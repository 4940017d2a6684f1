"""Everything that talks to MLflow, behind one door.

- `writer`: the training side's `Tracker` (no MLflow import) and the writer process that owns
  the MLflow client during a run;
- `store`: opening (and creating) a store and an experiment, safely under concurrency;
- `record`: a run's own record in its folder (`record.json`), for offline runs and `looplab
  sync` (no MLflow import);
- `sync`: sending run folders' records to a store, idempotently;
- `reader`: reading runs, sweeps and metric histories back, for the `looplab` commands.

Nothing outside this package imports MLflow.
"""

from looplab.tracking.writer import OfflineTracker, Tracker, settle_idle, start_tracker

__all__ = ["OfflineTracker", "Tracker", "settle_idle", "start_tracker"]
