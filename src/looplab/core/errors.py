"""Errors whose message is meant for the user: the CLI prints them as one line, no traceback."""

import signal

# Exit codes: an error or a failed run; Ctrl-C and SIGTERM as shells report them (128 + signal;
# `Terminated.exit_code` for SIGHUP's 129).
EXIT_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 130, 143


class LooplabError(Exception):
    """A problem the user can fix; `str(error)` is the whole explanation."""


class ConfigError(LooplabError):
    """A config value outside what looplab accepts."""


class DataError(LooplabError):
    """A data set that cannot be trained on as it is."""


class DeviceError(LooplabError):
    """A device was asked for that this machine does not have."""


class TrackingError(LooplabError):
    """The MLflow store cannot be reached or written."""


class ShapeError(LooplabError, ValueError):
    """Predictions and targets whose shapes would silently broadcast."""


class DivergedError(LooplabError):
    """The training loss, or a validation number, stopped being a finite number."""

    def __init__(self, epoch: int, loss: float, metric: str = "train_loss") -> None:
        what = "loss" if metric == "train_loss" else metric
        super().__init__(f"training diverged: {what} is {loss} at epoch {epoch}")
        self.epoch = epoch
        self.loss = loss
        self.metric = metric


class Terminated(BaseException):
    """SIGTERM or SIGHUP (core/signals.py), turned into an exception so that a run can be
    ended as KILLED.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it.
    """

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # as shells report it
