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
from collections.abc import Sequence

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


def is_better(value: float, than: float, direction: str) -> bool:
    return value > than if direction == "maximize" else value < than
