"""`tracking.offline=true`: a run recorded in its folder only, for `looplab sync` later.

No store is opened or created, no writer process is started, MLflow is never imported.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from looplab.tracking.record import RECORD_FILE, RunFolder, RunRecord, shown
from looplab.tracking.source import source_tags
from looplab.tracking.store import ROLE_TAG, SWEPT_KEYS_TAG

if TYPE_CHECKING:
    from looplab.core.loop import EpochResult


class OfflineTracker(RunFolder):
    """The run's whole record stays in its folder (`record.json`, `metrics.csv`, its files)
    for `looplab sync`. It answers as `client.Tracker` does, with no store behind it."""

    process = None
    idle = False

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri, self.experiment = uri, experiment
        self.finished_run_id: str | None = None  # never a store's run id
        self.note: str | None = None
        self.runs_started = 0

    def find_sweep(self, sweep_id: str, sweep_dir: Path | None = None) -> tuple[None, list[str]]:
        """No parent id offline; the keys the sweep varies, from its folder's record."""
        if sweep_dir is None or not (sweep_dir / RECORD_FILE).is_file():
            return None, []
        keys = RunRecord.load(sweep_dir).tags.get(SWEPT_KEYS_TAG, "")
        return None, [k for k in keys.split(",") if k]

    def start_run(
        self,
        run_name: str,
        params: dict[str, str],
        tags: dict[str, str],
        artifacts: list[tuple[Path, str | None]],
        wait: bool = True,
        start_time_ms: int | None = None,
        record_dir: Path | None = None,
        inputs: list[dict[str, str]] | None = None,
    ) -> None:
        started = start_time_ms or int(time.time() * 1000)
        tags = {**source_tags()[0], **tags}
        self._open_record(record_dir, run_name, params, tags, started, offline=True)
        self._start_files(artifacts)
        self.runs_started += 1

    def resume_run(
        self,
        run: dict,
        run_name: str,
        params: dict[str, str],
        tags: dict[str, str],
        artifacts: list[tuple[Path, str | None]],
        history: list[EpochResult],
        record_dir: Path | None = None,
    ) -> None:
        """Go on with the folder's record (its epochs are in metrics.csv already)."""
        self._reopen_record(record_dir, run["record_id"], run_name, params, tags, offline=True)
        self._start_files(artifacts)
        self.runs_started += 1

    def find_finished(self, config_digest: str, data_digest: str) -> tuple[None, dict]:
        """Offline there is no store to find a finished run in: every job trains."""
        return None, {}

    def find_study(self, study: str) -> tuple[None, None]:
        """Offline each launch of a search is a parent of its own."""
        return None, None

    def find_interrupted(self, config_digest: str, data_digest: str) -> tuple[None, None]:
        """Offline there is no store to find a stopped run in."""
        return None, None

    def hint(self) -> None:
        """Offline there is nothing to see in a store yet: `note` says how to sync."""
        return None

    def release(self) -> None:
        pass

    def __call__(self, result: EpochResult) -> None:
        """The epochs are in metrics.csv already: nothing more to keep."""

    def flush(self, now: float | None = None) -> None:
        pass

    def finish(
        self,
        status: str,
        tags: dict[str, str] | None = None,
        artifacts: list[tuple[Path, str | None]] = (),
        wait: bool = True,
        model_folder: Path | None = None,  # offline: no model (`looplab register` makes one)
    ) -> str | None:
        self._close_record(status, tags or {}, list(artifacts), int(time.time() * 1000), None)
        folder = self.record_dir
        if folder is not None:
            what = "sweep" if self.record.tags.get(ROLE_TAG) == "sweep" else "run"
            self.note = (
                f"offline: the {what} is recorded in {shown(folder)}; send it to a store with "
                f"`looplab sync {shown(folder)} --tracking-uri URI`"
            )
        return None

    def close(self) -> None:
        pass

    def stop(self) -> None:
        pass
