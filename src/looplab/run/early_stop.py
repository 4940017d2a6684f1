"""`train.early_stop`: end a run when its `optimized_metric` stops improving, and keep the
best epoch's weights for model.pt. An epoch callback with a state of its own, which a
checkpoint keeps, so that a resumed run stops where the uninterrupted one would."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from looplab.core.objective import base_metric, direction_of
from looplab.run import tags as tag

if TYPE_CHECKING:  # torch: imported by the run, not by its callbacks' modules
    from looplab.core.loop import EpochResult


class EndedEarly(Exception):
    """An epoch callback's word that the run is done before its last epoch: it ends
    FINISHED, with tags that say why (early stopping here, a search's pruner)."""

    def __init__(self, note: str, tags: dict[str, str]) -> None:
        super().__init__(note)
        self.tags = tags


class StoppedEarly(EndedEarly):
    """Raised by `EarlyStop` after an epoch; model.pt gets the best epoch's weights."""

    def __init__(self, epoch: int, best_epoch: int) -> None:
        super().__init__(
            f"stopped early at epoch {epoch}: no improvement since {best_epoch}",
            {tag.EARLY_STOPPED_AT: str(epoch), tag.BEST_EPOCH: str(best_epoch)},
        )
        self.epoch, self.best_epoch = epoch, best_epoch


class EarlyStop:
    """An epoch callback: after `patience` epochs in which `metric` did not improve by more
    than `min_delta` on its best, raise `StoppedEarly`; the best epoch's weights are kept."""

    def __init__(self, model: Any, metric: str, patience: int, min_delta: float) -> None:
        self.model, self.metric = model, base_metric(metric)
        self.patience, self.min_delta = patience, min_delta
        self.sign = -1.0 if direction_of(metric) == "maximize" else 1.0
        self.best_value: float | None = None
        self.best_epoch = 0
        self.best_state: dict[str, Any] | None = None

    def __call__(self, result: EpochResult) -> None:
        value = self.sign * result.metrics[self.metric]
        if self.best_value is None or self.best_value - value > self.min_delta:
            self.best_value, self.best_epoch = value, result.epoch
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        elif result.epoch - self.best_epoch >= self.patience:
            raise StoppedEarly(result.epoch, self.best_epoch)

    @classmethod
    def from_config(cls, train: Any, model: Any, metric: str) -> EarlyStop | None:
        """`train.early_stop` on `metric` for `model`; None when it has no patience."""
        early = train.get("early_stop") or {}
        if not early.get("patience"):
            return None
        return cls(model, metric, early.patience, early.min_delta)

    def restore_best(self) -> None:
        """Put the best epoch's weights back into the model (for model.pt)."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        state = (
            None if self.best_state is None else {k: v.cpu() for k, v in self.best_state.items()}
        )
        return {"best_value": self.best_value, "best_epoch": self.best_epoch, "best_state": state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]
        self.best_state = state["best_state"]
