"""What a sweep optimises: `optimized_metric`, one metric a run logs, its final value
(`val_loss`) or its best (`val_loss_best`), and which way is better.

The direction follows from the metric (losses and RMSE are minimised, accuracy maximised)
unless the sweeper is told otherwise; a run that did not finish scores the worst value for
that direction, never NaN. Every run logs each metric's best value and best epoch at its end
(`val_loss_best`, `val_loss_best_epoch`), so that MLflow's runs table, which shows each
metric's last value, can sort runs by their best.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from looplab.core.errors import ConfigError

BEST, BEST_EPOCH = "_best", "_best_epoch"
METRICS = ("train_loss", "val_loss", "val_accuracy", "val_rmse")
# Metrics best at their maximum, by the last word of their name; every other at its minimum.
HIGHER_IS_BETTER = ("accuracy", "acc", "f1", "auc", "r2", "precision", "recall")


def base_metric(metric: str) -> str:
    """`val_loss_best` -> `val_loss`: the epoch metric a name is made from."""
    return metric.removesuffix(BEST)


def direction_of(metric: str) -> str:
    """`maximize` for accuracy-like metrics, `minimize` for losses and errors (and for
    their best values: `val_accuracy_best` is maximised too)."""
    last_word = base_metric(metric).rsplit("_", 1)[-1].lower()
    return "maximize" if last_word in HIGHER_IS_BETTER else "minimize"


def direction_for(metric: str, asked: object = None) -> str:
    """The sweeper's `direction` when it says one, else the metric's own."""
    return str(asked) if asked in ("minimize", "maximize") else direction_of(metric)


def worst(direction: str) -> float:
    """What a job that did not finish scores: last under either direction, never NaN."""
    return -math.inf if direction == "maximize" else math.inf


def check_metric(metric: str, logged: Sequence[str]) -> None:
    """Refuse an `optimized_metric` this run does not log (val_accuracy for a regression)."""
    if base_metric(metric) not in logged:
        choices = ", ".join(f"{name}, {name}{BEST}" for name in logged)
        raise ConfigError(
            f"optimized_metric={metric}: this run does not log {base_metric(metric)}; "
            f"choose one of {choices}"
        )


def best_metrics(epochs: Sequence[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """Each metric's best finite value over the (epoch, metrics) pairs, and the first epoch
    that reached it."""
    best: dict[str, float] = {}
    for name in sorted({name for _, metrics in epochs for name in metrics}):
        sign = -1.0 if direction_of(name) == "maximize" else 1.0
        finite = [(e, m[name]) for e, m in epochs if math.isfinite(m.get(name, math.nan))]
        if finite:
            epoch, value = min(finite, key=lambda pair: (sign * pair[1], pair[0]))
            best[name + BEST], best[name + BEST_EPOCH] = value, float(epoch)
    return best


def value_of(metric: str, final: dict[str, float], direction: str) -> float:
    """The objective from a run's final and best metrics (`final` holds both); the worst
    value when it has none, or none that is finite."""
    value = final.get(metric, math.nan)
    return value if math.isfinite(value) else worst(direction)


@dataclass(frozen=True)
class Objective:
    """`optimized_metric`, one metric or a list of them (a multi-objective search, whose
    jobs return a value for each), with each one's direction. The first metric is the one
    that names a sweep's best child and that early stopping and pruning follow."""

    metrics: tuple[str, ...]
    directions: tuple[str, ...]

    @classmethod
    def of(cls, optimized_metric: object, asked: object = None) -> Objective:
        """From the config's `optimized_metric` and the sweeper's `direction` (one, a list
        as long as the metrics, or none: each metric's own)."""
        metrics = _listed(optimized_metric) or ["val_loss"]
        asks = None if asked is None or isinstance(asked, str) else _listed(asked)
        if asks is not None and len(asks) != len(metrics):
            raise ConfigError(
                f"hydra.sweeper.direction: {len(asks)} directions for {len(metrics)} "
                f"optimized_metric(s) ({', '.join(metrics)}); give one for each"
            )
        directions = [
            direction_for(m, asks[i] if asks is not None else asked) for i, m in enumerate(metrics)
        ]
        return cls(tuple(metrics), tuple(directions))

    @property
    def metric(self) -> str:
        return self.metrics[0]

    @property
    def direction(self) -> str:
        return self.directions[0]

    def returned(self, values: Sequence[float]) -> float | list[float]:
        """What a job hands its sweeper: one number, or a list for a multi-objective study."""
        return values[0] if len(values) == 1 else list(values)

    def worst(self) -> float | list[float]:
        return self.returned([worst(direction) for direction in self.directions])

    def value(self, final: dict[str, float]) -> float | list[float]:
        pairs = zip(self.metrics, self.directions, strict=True)
        return self.returned([value_of(metric, final, d) for metric, d in pairs])


def _listed(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, Iterable):
        return [str(value)]
    return [str(item) for item in value]


def is_better(value: float, than: float, direction: str) -> bool:
    return value > than if direction == "maximize" else value < than
