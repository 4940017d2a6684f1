"""Split a table, scale it, encode its labels: the tutorial's preprocessing, for any table
(read by `tables`).

Everything here is NumPy and pandas; `to_device` turns the result into tensors once, so the
training loop never copies data between host and device.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import sklearn
import torch
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from looplab.core.errors import DataError
from looplab.core.tables import Table, read_table

TaskKind = Literal["binary", "multiclass", "regression"]
# A numeric target with at most this many distinct integer values is taken as class labels.
MAX_INFERRED_CLASSES = 20
# Rows of the table kept as the logged model's input example (MLflow shows and serves them).
EXAMPLE_ROWS = 3


@dataclass
class SplitData:
    """Scaled train and validation arrays, and what the model needs to know about them."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    task: TaskKind
    n_classes: int  # 0 for regression
    target_std: float = 1.0  # regression targets are standardised; RMSE is reported in units
    target_mean: float = 0.0
    classes: list[str] = field(default_factory=list)  # label of class 0, 1, ...; [] for regression
    task_reason: str = ""  # why the task is what it is, in a user's words
    # What new rows need to be fed to the trained model: the columns in order, and the
    # scaler's statistics from the training rows.
    feature_names: list[str] = field(default_factory=list)
    scaler_mean: list[float] = field(default_factory=list)
    scaler_scale: list[float] = field(default_factory=list)
    fill_values: list[float] | None = None  # dataset.missing=mean: each column's fill
    target_name: str = ""  # the table's target column: a new table may hold it, unused
    example: list[list[float]] = field(default_factory=list)  # a few rows as read, unscaled

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def n_outputs(self) -> int:
        return self.n_classes if self.task == "multiclass" else 1

    @property
    def n_rows(self) -> int:
        return len(self.y_train) + len(self.y_val)

    def describe(self) -> str:
        """One line: the task, why, and the table's size."""
        classes = f" (classes in order: {', '.join(self.classes)})" if self.classes else ""
        return (  # the task as the run's data.task param names it
            f"task: {self.task}, {self.task_reason}{classes}; {self.n_rows} rows "
            f"({len(self.y_train)} train, {len(self.y_val)} validation), "
            f"{self.n_features} features"
        )


@dataclass
class DeviceData:
    """The split as tensors on the training device. Binary and regression targets are (N, 1)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


def infer_task(labels: pd.Series, forced: str | None) -> TaskKind:
    """Classification for strings and small sets of integers, regression otherwise."""
    return infer_task_with_reason(labels, forced)[0]


def infer_task_with_reason(labels: pd.Series, forced: str | None) -> tuple[TaskKind, str]:
    """The task, and why: forced by dataset.task, or what the target's values look like."""
    name, count = labels.name, labels.nunique()
    if forced == "regression":
        if not pd.api.types.is_numeric_dtype(labels):
            raise DataError(f"dataset.task=regression needs a numeric target; '{name}' is not")
        return "regression", "set by dataset.task=regression"
    numeric = pd.api.types.is_numeric_dtype(labels) and not pd.api.types.is_bool_dtype(labels)
    integers = numeric and bool(np.all(np.mod(labels.dropna(), 1) == 0))
    if forced == "classification":
        reason = "set by dataset.task=classification"
    elif not numeric:
        reason = f"inferred: target '{name}' holds {count} distinct non-numeric values"
    elif integers and count <= MAX_INFERRED_CLASSES:
        reason = (
            f"inferred: target '{name}' holds {count} distinct integers "
            f"(<= {MAX_INFERRED_CLASSES}; dataset.task=regression overrides)"
        )
    else:
        kind = "integers" if integers else "numbers, not all integers"
        return "regression", f"inferred: target '{name}' holds {count} distinct {kind}"
    if count < 2:
        raise DataError(f"target '{name}' has a single class: nothing to learn")
    return ("binary" if count == 2 else "multiclass"), reason


def _check_target(labels: pd.Series) -> None:
    """A target with gaps or infinities cannot be learned; say where before guessing the task."""
    bad = labels.isna()
    if pd.api.types.is_numeric_dtype(labels) and not pd.api.types.is_bool_dtype(labels):
        bad |= ~np.isfinite(labels.to_numpy(dtype=np.float64))
    if bad.any():
        raise DataError(
            f"NaN or infinite values in {int(bad.sum())} row(s) of the target '{labels.name}'"
        )


def _check_features(features: pd.DataFrame, missing: str = "refuse") -> np.ndarray:
    """The features as float64; empty cells (NaN) refused unless `dataset.missing` says
    what to do with them (`drop` is done before, `mean` after the split); infinities always."""
    text = [str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if text:
        raise DataError(
            f"non-numeric feature column(s): {', '.join(text)}; drop them with dataset.drop"
        )
    values = features.to_numpy(dtype=np.float64)
    bad = np.isinf(values) if missing == "mean" else ~np.isfinite(values)
    if bad.any():
        columns = [str(c) for c, b in zip(features.columns, bad.any(axis=0), strict=True) if b]
        rows = np.flatnonzero(bad.any(axis=1)) + 1
        shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
        what = "infinite" if missing == "mean" else "NaN or infinite"
        fix = "" if missing == "mean" else "; empty cells: dataset.missing=drop or mean"
        raise DataError(
            f"{what} values in {len(rows)} row(s) (data rows {shown}; 1 is the first after "
            f"the header), column(s): {', '.join(columns)}{fix}"
        )
    return values


def drop_missing(features: pd.DataFrame, labels: pd.Series) -> tuple[pd.DataFrame, pd.Series]:
    """`dataset.missing=drop`: the rows with an empty feature cell left out, before the split."""
    kept = ~features.isna().any(axis=1)
    if not kept.any():
        raise DataError("dataset.missing=drop leaves no rows: every row has an empty cell")
    return features[kept], labels[kept]


def fill_with_training_mean(x_train: np.ndarray, x_val: np.ndarray) -> list[float]:
    """`dataset.missing=mean`: empty cells of both splits filled, in place, with the training
    split's column means (what new rows will need too: preprocessing.json keeps them)."""
    with warnings.catch_warnings():  # a column empty in every training row: its mean is 0
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nan_to_num(np.nanmean(x_train, axis=0), nan=0.0)
    for x in (x_train, x_val):
        rows, columns = np.nonzero(np.isnan(x))
        x[rows, columns] = means[columns]
    return [float(v) for v in means]


def encode_labels(labels: pd.Series, task: TaskKind) -> tuple[np.ndarray, int]:
    """Class labels as 0..k-1 in sorted order (B = 0, M = 1), or float targets for regression."""
    encoded, classes = encode_labels_with_classes(labels, task)
    return encoded, len(classes)


def encode_labels_with_classes(labels: pd.Series, task: TaskKind) -> tuple[np.ndarray, list[str]]:
    """As `encode_labels`, with the label of each class index: `classes[i]` is class i."""
    if task == "regression":
        return labels.to_numpy(dtype=np.float64), []
    classes = np.sort(labels.unique())
    return np.searchsorted(classes, labels.to_numpy()), [str(c) for c in classes]


def split_and_scale(
    features: pd.DataFrame,
    labels: pd.Series,
    test_size: float,
    seed: int,
    forced_task: str | None = None,
    missing: str = "refuse",
) -> SplitData:
    """Seeded (and, for classes, stratified) split; scaler fitted on the training rows only.
    `missing`: what empty feature cells get (`dataset.missing`: refuse, drop, mean)."""
    _check_target(labels)
    if missing == "drop":
        features, labels = drop_missing(features, labels)
    task, reason = infer_task_with_reason(labels, forced_task)
    x = _check_features(features, missing)
    y, classes = encode_labels_with_classes(labels, task)
    n_classes = len(classes)
    n_val = int(np.ceil(test_size * len(y)))
    too_few = len(y) - n_val < 1 or n_val < 1 or (task != "regression" and n_val < n_classes)
    if too_few:
        raise DataError(
            f"too few rows to split: {len(y)} row(s) with test_size={test_size} leave "
            f"{len(y) - n_val} for training and {n_val} for validation"
        )
    stratify = y if task != "regression" else None
    # scikit-learn checks its own arguments on every call (a third of the split's time, paid
    # by every job of a sweep); ours are fixed here, and the data is checked above.
    with sklearn.config_context(skip_parameter_validation=True):
        try:
            x_train, x_val, y_train, y_val = train_test_split(
                x, y, test_size=test_size, random_state=seed, stratify=stratify
            )
        except ValueError as error:  # e.g. a class with a single row cannot be stratified
            raise DataError(f"cannot split the data: {error}") from None
        fill = fill_with_training_mean(x_train, x_val) if missing == "mean" else None
        scaler = StandardScaler().fit(x_train)
        x_train, x_val = scaler.transform(x_train), scaler.transform(x_val)
    mean, target_std = 0.0, 1.0
    if task == "regression":
        mean, target_std = float(y_train.mean()), float(y_train.std()) or 1.0
        y_train, y_val = (y_train - mean) / target_std, (y_val - mean) / target_std
    return SplitData(
        x_train,
        y_train,
        x_val,
        y_val,
        task,
        n_classes,
        target_std,
        mean,
        classes,
        reason,
        feature_names=[str(c) for c in features.columns],
        scaler_mean=[float(v) for v in scaler.mean_],
        scaler_scale=[float(v) for v in scaler.scale_],
        fill_values=fill,
        target_name=str(labels.name),
        example=features.dropna().head(EXAMPLE_ROWS).to_numpy(dtype=np.float64).tolist(),
    )


def load(
    name: str,
    path: str | None = None,
    target: str | None = None,
    drop: list[str] | tuple[str, ...] = (),
    task: str | None = None,
    test_size: float = 0.2,
    seed: int = 42,
    sep: str = ",",
    encoding: str = "utf-8",
    missing: str = "refuse",
) -> SplitData:
    """The whole preprocessing of one data set, from name (or CSV) to scaled splits."""
    read = read_table(Table(name, path, target, tuple(drop), sep, encoding))
    return split_and_scale(read.features, read.labels, test_size, seed, task, missing)


def to_device(data: SplitData, device: torch.device, dtype: torch.dtype) -> DeviceData:
    """Copy the split to the device once; class labels become int64, other targets (N, 1)."""

    def targets(y: np.ndarray) -> torch.Tensor:
        if data.task == "multiclass":
            return torch.as_tensor(y, dtype=torch.int64, device=device)
        return torch.as_tensor(y, dtype=dtype, device=device).reshape(-1, 1)

    return DeviceData(
        x_train=torch.as_tensor(data.x_train, dtype=dtype, device=device),
        y_train=targets(data.y_train),
        x_val=torch.as_tensor(data.x_val, dtype=dtype, device=device),
        y_val=targets(data.y_val),
    )
