"""What a run records through: the small interface the tracking side implements.

`execute` hands it the run's start (params, tags, start-up files, dataset inputs), every
epoch (as an epoch callback), and the run's end; it never learns where the records go.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from looplab.core.loop import EpochResult


class Recorder(Protocol):
    finished_run_id: str | None  # the store's id of the run `finish` ended, once known
    note: str | None  # a line for the user at the run's end, or None

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
    ) -> str | None: ...

    def resume_run(
        self,
        run: dict,  # a checkpoint's `run`: run_id, record_id
        run_name: str,
        params: dict[str, str],
        tags: dict[str, str],
        artifacts: list[tuple[Path, str | None]],
        history: list[EpochResult],
        record_dir: Path | None = None,
    ) -> str | None:
        """Go on with the run a checkpoint names, RUNNING again; `history` is what it had
        (the epochs the store lacks are sent again, none twice)."""
        ...

    def run_identity(self) -> dict[str, str | None]:
        """What a checkpoint keeps to go on with this run: its run_id, record_id."""
        ...

    def __call__(self, result: EpochResult) -> None: ...

    def finish(
        self,
        status: str,
        tags: dict[str, str] | None = None,
        artifacts: Sequence[tuple[Path, str | None]] = (),
        wait: bool = True,
        model_folder: Path | None = None,  # a FINISHED run's folder: log its model from it
    ) -> str | None: ...

    def close(self) -> None: ...

    def hint(self) -> str | None:
        """Where to see the run `finish` ended, for its store (`see it with ...`), or None."""
        ...
