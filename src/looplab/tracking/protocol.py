"""What the training process and its MLflow writer process say to each other.

One frozen dataclass per message (trainer -> writer, on the writer's stdin) and per reply
(writer -> trainer, on its stdout), each pickled whole. Both sides name a message by its
class, so a misspelt kind is a NameError where it is written, and the writer answers a
message whose class it has no handler for with `Error` at once (never a silent timeout).
Replies are read by field name. No MLflow import: the training process imports this.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# (path, artifact folder or None): a file or folder to log as an artifact
Files = list[tuple[str, str | None]]
# (epoch, timestamp in ms, {metric: value}): one epoch's results
Epoch = tuple[int, int, dict[str, float]]


def files_of(artifacts: list[tuple[Path, str | None]]) -> Files:
    """Artifacts as the writer takes them: plain strings, no Path objects."""
    return [(str(path), artifact_path) for path, artifact_path in artifacts]


# -- messages: the training process to the writer ----------------------------------------------


@dataclass(frozen=True)
class Open:
    """Open (or create) the store and the experiment; answered `Opened` or `Error`."""

    uri: str
    experiment: str


@dataclass(frozen=True)
class Start:
    """Start a run; answered `Started` (or `StartFailed`) once the store took it."""

    run_name: str
    params: dict[str, str]
    tags: dict[str, str]
    files: Files
    start_time_ms: int | None = None
    inputs: list[dict[str, str]] | None = None


@dataclass(frozen=True)
class Resume:
    """Go on with a run (by id, else by record id), RUNNING again, with these tags; answered
    `Started` (or `StartFailed`). Epochs the store has already are not sent again."""

    run_id: str | None
    record_id: str
    tags: dict[str, str]


@dataclass(frozen=True)
class Metrics:
    """Epochs of the running run; not answered."""

    epochs: list[Epoch]


@dataclass(frozen=True)
class FindSweep:
    """The parent run of a sweep; answered `SweepFound` or `Error`."""

    sweep_id: str


@dataclass(frozen=True)
class FindStudy:
    """The parent run of a search's study (tag looplab.study); answered `StudyFound`."""

    study: str


@dataclass(frozen=True)
class FindFinished:
    """A FINISHED run of the same config on the same data; answered `FinishedFound`."""

    config_digest: str
    data_digest: str


@dataclass(frozen=True)
class FindInterrupted:
    """The newest run of the same config on the same data that stopped and left a
    checkpoint (KILLED, FAILED, or RUNNING with its writer long silent); answered
    `InterruptedFound`."""

    config_digest: str
    data_digest: str


@dataclass(frozen=True)
class End:
    """End the running run; answered `Ended` once delivered, or after `wait_s`."""

    status: str
    tags: dict[str, str]
    files: Files
    end_time_ms: int
    wait_s: float
    model_folder: str | None = None  # log the run's model from its files here, before its end


# -- replies: the writer to the training process -----------------------------------------------


@dataclass(frozen=True)
class Opened:
    experiment_id: str


@dataclass(frozen=True)
class Started:
    run_id: str
    experiment_id: str


@dataclass(frozen=True)
class StartFailed:
    why: str


@dataclass(frozen=True)
class SweepFound:
    parent_id: str | None
    swept_keys: list[str]


@dataclass(frozen=True)
class StudyFound:
    run_id: str | None
    record_id: str | None


@dataclass(frozen=True)
class FinishedFound:
    run_id: str | None
    metrics: dict[str, float]  # its final and best values


@dataclass(frozen=True)
class InterruptedFound:
    run_id: str | None
    checkpoint: str | None  # its folder's checkpoint.pt, or the store's copy downloaded


@dataclass(frozen=True)
class Ended:
    run_id: str | None
    delivered: bool  # the store has everything the run sent
    warning: str | None
    outage_seconds: float  # how long the store was away during the run
    reusable: bool  # the writer can serve the next run


@dataclass(frozen=True)
class Error:
    why: str


@dataclass(frozen=True)
class Eof:
    """Not sent: what a reader of either pipe puts in its inbox when the pipe ends."""

    why: str = ""


def send(stream: Any, message: Any) -> None:
    """Pickle one message onto `stream`, whole, and flush it."""
    pickle.dump(message, stream, protocol=pickle.HIGHEST_PROTOCOL)
    stream.flush()


def read_into(stream: Any, inbox: Any) -> None:
    """Read messages off a pipe as they come, in order, into `inbox`; `Eof` at its end (or
    at anything that cannot be read, after which nothing more can be trusted). The writer
    reads the trainer's this way (so the trainer never blocks on a full pipe), and the
    trainer the writer's replies."""
    while True:
        try:
            inbox.put(pickle.load(stream))
        except EOFError:
            inbox.put(Eof())
            return
        except Exception as error:  # a torn or foreign message: the pipe is no use any more
            inbox.put(Eof(f"{type(error).__name__}: {error}"))
            return
