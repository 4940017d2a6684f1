"""A run's checkpoint: everything the rest of the run depends on, taken between two steps.

A run resumed from it trains on bit for bit as if it had never stopped: the parameters, the
update's state (momentum buffers, an optimiser's `state_dict`), where the loop stands
(`loop.Progress`: the epoch, the batches done of the next and their losses, the shuffle's
state as that epoch began), every random generator the run may draw from (torch's CPU and
CUDA ones, NumPy's, Python's), the epochs so far, the config and data digests it belongs
to, and what the tracker needs to go on (`run`: the MLflow run id, the epochs sent).

It holds tensors and plain values only, and loads with `torch.load(weights_only=True)`: a
checkpoint is data, never code. It is written whole to a temporary file, then renamed.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from looplab.core.errors import LooplabError
from looplab.core.loop import EpochResult, Progress
from looplab.core.paths import CHECKPOINT_FILE

FORMAT = 1


class CheckpointError(LooplabError):
    """A checkpoint that cannot be read, or does not belong to the run it would resume."""


@dataclass
class Checkpoint:
    """What `load` reads back: the saved state, and what the run records about it."""

    state: dict[str, Any]
    path: Path

    @property
    def epoch(self) -> int:
        """Epochs finished when it was taken."""
        return int(self.state["progress"]["epoch"])

    @property
    def batch(self) -> int:
        return int(self.state["progress"]["batch"])

    @property
    def run(self) -> dict[str, Any]:
        """The tracker's part: run_id, record_id, resumed_at (the epochs resumptions began)."""
        return self.state["run"]

    def history(self) -> list[EpochResult]:
        return [EpochResult(e, dict(m), t) for e, t, m in self.state["history"]]

    def where(self) -> str:
        """Where it stands, in words: `epoch 3` or `epoch 4, batch 5`."""
        if self.batch:
            return f"epoch {self.epoch + 1}, batch {self.batch}"
        return f"epoch {self.epoch}"


@dataclass
class Taker:
    """What a run hands over to take checkpoints: its parts, and what it records."""

    model: Any  # MySimpleNN or a torch.nn.Module: state_dict / load_state_dict
    update: Any  # core.update.Updater
    generator: torch.Generator | None
    progress: Progress
    config_digest: str
    data_digest: str
    history: list[EpochResult]
    run: dict[str, Any] = field(default_factory=dict)
    # epoch callbacks with a state of their own (state_dict / load_state_dict): early stop
    callbacks: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"  # the kind of device the run trains on

    def state(self) -> dict[str, Any]:
        """Everything, as tensors and plain values, at the point the loop stands."""
        progress = self.progress
        if progress.batch == 0 and self.generator is not None:  # between two epochs
            shuffle = self.generator.get_state()
        else:  # mid-epoch: the order is drawn again from the epoch's first state
            shuffle = progress.shuffle_state
        return {
            "format": FORMAT,
            "progress": {
                "epoch": progress.epoch,
                "batch": progress.batch,
                "batch_losses": [loss.detach().cpu() for loss in progress.batch_losses],
                "shuffle_state": shuffle,
            },
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            # which parameters hold a (zeroed) gradient: the next backward adds to it
            "zeroed_grads": [p.grad is not None for p in self.model.parameters()],
            "update": _to_cpu(self.update.state_dict()),
            "rng": rng_state(),
            "history": [(r.epoch, r.timestamp_ms, dict(r.metrics)) for r in self.history],
            "device": self.device,  # a generator's state fits only its own kind of device
            "config_digest": self.config_digest,
            "data_digest": self.data_digest,
            "run": dict(self.run),
            "callbacks": {name: part.state_dict() for name, part in self.callbacks.items()},
            "written_ms": int(time.time() * 1000),
        }

    def save(self, folder: Path) -> Path:
        """Write the checkpoint into `folder`, whole: a temporary file, synced, renamed."""
        path = folder / CHECKPOINT_FILE
        partial = path.with_suffix(".pt.partial")
        try:
            with partial.open("wb") as handle:
                torch.save(self.state(), handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)  # a failed write (disk full) leaves nothing
        return path


def restore(checkpoint: Checkpoint, taker: Taker, device: torch.device) -> None:
    """Put the run's parts back as they were when `checkpoint` was taken."""
    state = checkpoint.state
    try:
        taker.model.load_state_dict(state["model"])
        taker.update.load_state_dict(state["update"])
    except (RuntimeError, KeyError, ValueError) as error:
        raise CheckpointError(
            f"{checkpoint.path} does not fit this run's network or update: {error}"
        ) from None
    for parameter, zeroed in zip(taker.model.parameters(), state["zeroed_grads"], strict=False):
        parameter.grad = torch.zeros_like(parameter) if zeroed else None
    saved = state["progress"]
    progress = taker.progress
    progress.epoch, progress.batch = int(saved["epoch"]), int(saved["batch"])
    progress.batch_losses = [loss.to(device) for loss in saved["batch_losses"]]
    progress.shuffle_state = saved["shuffle_state"]
    if taker.generator is not None and saved["shuffle_state"] is not None:
        taker.generator.set_state(saved["shuffle_state"])
    set_rng_state(state["rng"])
    taker.history[:] = checkpoint.history()
    for name, part in taker.callbacks.items():
        if name in state.get("callbacks", {}):
            part.load_state_dict(state["callbacks"][name])


def load(path: Path) -> Checkpoint:
    """Read a checkpoint as data (`weights_only`); one line when it cannot be one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"there is no checkpoint at {path}") from None
    except Exception as error:  # torn, foreign, or holding code: never unpickled
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} is not a looplab checkpoint ({first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a looplab checkpoint (format {FORMAT})")
    return Checkpoint(state, Path(path))


def rng_state() -> dict[str, Any]:
    """Every generator a run may draw from besides its shuffle: torch's (CPU, and CUDA's
    when in use), NumPy's and Python's global ones, as tensors and plain values."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "state": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    saved = state["numpy"]
    keys = saved["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        (saved["kind"], keys, saved["position"], saved["has_gauss"], saved["cached"])
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_cpu(value: Any) -> Any:
    """An update's state with its tensors on the CPU (an optimiser's `state_dict` nests)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value
