"""What the training process asks its writer's store before a run starts: a sweep's parent,
a FINISHED run of the same config and data (`tracking.skip_finished`), a stopped one with a
checkpoint to resume. A part of `client.Tracker`, which sends and receives for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from looplab.tracking.protocol import (
    FindFinished,
    FindInterrupted,
    FindStudy,
    FindSweep,
    FinishedFound,
    InterruptedFound,
    StudyFound,
    SweepFound,
)

# How long the trainer waits for the store to answer a question.
ANSWER_SECONDS = 60.0


class StoreQueries:
    """Questions answered by the writer at once (`Tracker` supplies the three below)."""

    def _ensure_open(self) -> None: ...

    def _send(self, message: Any) -> None: ...

    def _receive_until(self, kind: type, timeout: float, waiting_for: str) -> Any: ...

    def find_sweep(
        self, sweep_id: str, sweep_dir: Path | None = None
    ) -> tuple[str | None, list[str]]:
        """The parent run of sweep `sweep_id` in this store, and the keys its sweep varies;
        (None, []) when the store has no such parent."""
        self._ensure_open()
        self._send(FindSweep(sweep_id))
        found = self._receive_until(SweepFound, ANSWER_SECONDS, "finding the sweep")
        return found.parent_id, found.swept_keys

    def find_study(self, study: str) -> tuple[str | None, str | None]:
        """The parent run of a search's study (run id, record id): a relaunched search goes on
        in it; (None, None) when the store has none."""
        self._ensure_open()
        self._send(FindStudy(study))
        found = self._receive_until(StudyFound, ANSWER_SECONDS, "finding the study's parent")
        return found.run_id, found.record_id

    def find_finished(
        self, config_digest: str, data_digest: str
    ) -> tuple[str | None, dict[str, float]]:
        """A FINISHED run of this experiment with the same config identity and data digest,
        and its metrics (final and best); (None, {}) when there is none."""
        self._ensure_open()
        self._send(FindFinished(config_digest, data_digest))
        found = self._receive_until(FinishedFound, ANSWER_SECONDS, "finding finished runs")
        return found.run_id, found.metrics

    def find_interrupted(
        self, config_digest: str, data_digest: str
    ) -> tuple[str | None, str | None]:
        """A run of this config and data that stopped with a checkpoint, and that checkpoint's
        path here (tracking/checkpoints.py); (None, None) when there is none."""
        self._ensure_open()
        self._send(FindInterrupted(config_digest, data_digest))
        found = self._receive_until(InterruptedFound, ANSWER_SECONDS, "finding stopped runs")
        return found.run_id, found.checkpoint
