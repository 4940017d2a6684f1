"""A stopped run's checkpoint, found for resuming: in the run's folder when this machine has
it, else the copy the run sent to the store (`checkpoint/checkpoint.pt`) downloaded. Used
by `looplab resume` and by a sweep relaunched with `tracking.skip_finished=true`."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from looplab.core.paths import CHECKPOINT_FILE
from looplab.run import tags as tag
from looplab.tracking.reader import is_lost

# The temporary folder a checkpoint downloaded from the store waits in.
DOWNLOADED = "looplab-checkpoint-"
# A RUNNING run whose writer (a heartbeat every 30 s) has been silent this long has lost its
# process (a SIGKILL, a dead node): its checkpoint may be resumed.
SILENT_AFTER_SECONDS = 90.0


def checkpoint_of(client: Any, run: Any) -> Path | None:
    """Where `run`'s checkpoint is on this machine: its folder's, else the store's copy
    (downloaded into a temporary folder); None when it left none."""
    folder = run.data.tags.get(tag.RUN_DIR)
    if folder and (Path(folder) / CHECKPOINT_FILE).is_file():
        return Path(folder) / CHECKPOINT_FILE
    if tag.CHECKPOINT_EPOCH not in run.data.tags:
        return None
    into = tempfile.mkdtemp(prefix=DOWNLOADED)
    artifact = f"{tag.CHECKPOINT_ARTIFACT}/{CHECKPOINT_FILE}"
    try:
        return Path(client.download_artifacts(run.info.run_id, artifact, into))
    except Exception:  # the artifact is gone: as if it left none
        shutil.rmtree(into, ignore_errors=True)
        return None


def interrupted_checkpoint(
    client: Any, experiment_id: str, config_digest: str, data_digest: str
) -> tuple[str | None, str | None]:
    """(run id, checkpoint path) of the newest run of this config and data that stopped
    with a checkpoint: KILLED, FAILED, or RUNNING and silent; (None, None) when none did."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{tag.CONFIG_DIGEST}` = '{config_digest}' and "
        f"tags.`{tag.DATA_DIGEST}` = '{data_digest}' and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=20,
    )
    for run in runs:
        if run.info.status == "RUNNING" and not is_lost(run, SILENT_AFTER_SECONDS):
            continue  # may be training still, elsewhere
        path = checkpoint_of(client, run)
        if path is not None:
            return run.info.run_id, str(path)
    return None, None
