"""When a run takes its checkpoints (core/checkpoint.py), and whether one fits the run that
would resume from it. No Hydra, no MLflow: `execute` calls this."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from looplab.core.checkpoint import Checkpoint, CheckpointError, Taker
from looplab.core.loop import EpochResult
from looplab.core.paths import CHECKPOINT_FILE, shown
from looplab.run import tags as tag


class Checkpoints:
    """An epoch callback: a checkpoint in the run's folder every `checkpoint.every_s`
    seconds (at the end of an epoch) and/or every `checkpoint.every_epochs` epochs; `save`
    takes one at once (a stop). `run` is what the tracker needs to go on."""

    def __init__(self, cfg: DictConfig, taker: Taker, folder: Path, run: Any = None) -> None:
        settings = cfg.get("checkpoint") or {}
        self.every_s = settings.get("every_s")
        self.every_epochs = settings.get("every_epochs")
        self.keep = bool(settings.get("keep", False))
        self.taker, self.folder, self.run = taker, folder, run
        self.resumed_at: list[int] = []  # the epochs earlier resumptions of the run began in
        self.last = time.monotonic()
        self.path: Path | None = None  # the newest checkpoint written

    def __call__(self, result: EpochResult) -> None:
        every_epochs, every_s = self.every_epochs, self.every_s
        if (every_epochs and result.epoch % every_epochs == 0) or (
            every_s and time.monotonic() - self.last >= every_s
        ):
            self.save()

    def save(self) -> Path:
        identity = self.run.run_identity() if self.run is not None else {}
        here = {"host": socket.gethostname(), "pid": os.getpid()}  # is it still training?
        self.taker.run = {**identity, **here, "resumed_at": list(self.resumed_at)}
        self.path = self.taker.save(self.folder)
        self.last = time.monotonic()
        return self.path

    def stopped_tags(self) -> dict[str, str]:
        """What a stopped run's tags say of the checkpoint it left."""
        progress = self.taker.progress
        return {
            tag.CHECKPOINT_EPOCH: str(progress.epoch),
            tag.CHECKPOINT_BATCH: str(progress.batch),
        }

    def ended(self, status: str, diverged: bool) -> None:
        """A FINISHED run keeps model.pt and no checkpoint (unless `checkpoint.keep`); a
        diverged one neither: resumed, it would diverge again. A crash keeps the last one."""
        if (status == "FINISHED" and not self.keep) or diverged:
            with contextlib.suppress(OSError):
                (self.folder / CHECKPOINT_FILE).unlink()

    def resumed_from(self, checkpoint: Checkpoint) -> dict[str, str]:
        """The tags of a run resumed from `checkpoint`: how often, and the epochs each began in."""
        self.resumed_at = [*checkpoint.run.get("resumed_at", []), checkpoint.epoch + 1]
        return {
            tag.RESUMES: str(len(self.resumed_at)),
            tag.RESUMED_AT: ",".join(map(str, self.resumed_at)),
        }


def check_fits(
    checkpoint: Checkpoint, config_digest: str, data_digest: str, device: str = "cpu"
) -> None:
    """Refuse, in one line, a checkpoint of another config, of other data, or of another
    kind of device (its generators' states fit only their own)."""
    where = shown(checkpoint.path)
    saved = checkpoint.state.get("device", "cpu")
    if saved != device:
        raise CheckpointError(
            f"{where} was taken on {saved}, and this run trains on {device}: resume it on "
            f"{saved} (device={saved}), where it goes on bit for bit"
        )
    if checkpoint.state["config_digest"] != config_digest:
        raise CheckpointError(
            f"{where} was taken by another config (identity {checkpoint.state['config_digest']}, "
            f"this one {config_digest}): resume it with its own (`looplab resume RUN_ID` "
            "uses the run's recorded config), or move it away to train this config afresh"
        )
    if checkpoint.state["data_digest"] != data_digest:
        raise CheckpointError(
            f"{where}: the data set changed since it was taken (digest "
            f"{checkpoint.state['data_digest']} then, {data_digest} now): the resumed run would "
            "not be the run it continues; move the checkpoint away and train afresh"
        )


def trainer_gone(checkpoint: Checkpoint) -> bool:
    """Whether the process that wrote `checkpoint` is known to be gone: it ran on this
    machine and no process has its id (a SIGKILL, a crash)."""
    run = checkpoint.run
    if run.get("host") != socket.gethostname() or not run.get("pid"):
        return False
    try:
        os.kill(int(run["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
