"""Data sets load, split and scale as the tutorial does, for built-ins and for any CSV."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from looplab.core import data, tables
from looplab.core.errors import DataError
from looplab.core.paths import RESOURCES

TUTORIAL_CSV = RESOURCES / "breast_cancer.csv"


@pytest.mark.parametrize(
    ("name", "task", "n_classes", "n_features"),
    [
        ("breast_cancer", "binary", 2, 30),
        ("iris", "multiclass", 3, 4),
        ("wine", "multiclass", 3, 13),
        ("digits", "multiclass", 10, 64),
        ("diabetes", "regression", 0, 10),
    ],
)
def test_builtin_sets_split_and_scale(name, task, n_classes, n_features) -> None:
    split = data.load(name, test_size=0.2, seed=42)
    assert (split.task, split.n_classes, split.n_features) == (task, n_classes, n_features)
    total = len(split.y_train) + len(split.y_val)
    assert len(split.y_val) == int(np.ceil(0.2 * total))
    # The scaler saw the training rows only: they are standardised, the validation rows are not.
    np.testing.assert_allclose(split.x_train.mean(axis=0), 0, atol=1e-9)
    assert np.abs(split.x_val.mean(axis=0)).max() > 1e-6
    if task != "regression":  # stratified: class shares agree between the two splits
        share_train = np.bincount(split.y_train) / len(split.y_train)
        share_val = np.bincount(split.y_val) / len(split.y_val)
        assert np.abs(share_train - share_val).max() < 0.05


def test_split_is_seeded() -> None:
    first, again = data.load("wine", seed=3), data.load("wine", seed=3)
    other = data.load("wine", seed=4)
    np.testing.assert_array_equal(first.x_val, again.x_val)
    assert not np.array_equal(first.x_val, other.x_val)


def test_builtin_breast_cancer_matches_the_tutorials_csv_with_malignant_as_one() -> None:
    features, labels = tables.load_table("breast_cancer")
    table = pd.read_csv(TUTORIAL_CSV)
    np.testing.assert_allclose(features.to_numpy(), table.iloc[:, 2:32].to_numpy())
    np.testing.assert_array_equal(labels.to_numpy(), (table["diagnosis"] == "M").astype(int))


def test_tutorial_csv_drops_id_and_the_empty_column_and_encodes_b0_m1() -> None:
    features, labels = tables.load_table(
        "csv", path=str(TUTORIAL_CSV), target="diagnosis", drop=["id"]
    )
    assert "Unnamed: 32" not in features.columns and "id" not in features.columns
    assert features.shape == (569, 30)
    encoded, n_classes = data.encode_labels(labels, "binary")
    assert n_classes == 2
    assert encoded[labels.to_numpy() == "B"].max() == 0
    assert encoded[labels.to_numpy() == "M"].min() == 1


def write(tmp_path, frame: pd.DataFrame) -> str:
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    return str(path)


def test_csv_task_is_inferred_and_can_be_forced(tmp_path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60)})
    frame["price"] = frame.a * 3 + rng.normal(size=60)  # continuous: regression
    frame["grade"] = np.arange(60) % 3  # three integer values: classes
    frame["colour"] = np.where(frame.a > 0, "red", "blue")  # strings: classes
    path = write(tmp_path, frame)
    split = data.load("csv", path=path, target="price", drop=["grade", "colour"])
    assert split.task == "regression"
    split = data.load("csv", path=path, target="grade", drop=["price", "colour"])
    assert (split.task, split.n_classes) == ("multiclass", 3)
    split = data.load("csv", path=path, target="colour", drop=["price", "grade"])
    assert (split.task, split.n_classes) == ("binary", 2)
    split = data.load("csv", path=path, target="grade", drop=["colour"], task="regression")
    assert split.task == "regression"


def test_regression_targets_are_standardised_and_remember_their_unit() -> None:
    split = data.load("diabetes")
    assert abs(split.y_train.mean()) < 1e-9 and abs(split.y_train.std() - 1) < 1e-9
    assert split.target_std > 10  # disease progression is in the tens to hundreds


@pytest.mark.parametrize(
    ("column", "drop", "words"),
    [
        ("label", ["label"], "drops the target column 'label'"),
        ("blank", [], "target column 'blank' of table.csv is empty"),
        ("score", [], "NaN or infinite values in 2 row(s) of the target 'score'"),
    ],
    ids=["target-dropped", "target-empty", "target-infinite"],
)
def test_unusable_targets_are_named(tmp_path, column, drop, words) -> None:
    frame = pd.DataFrame({"a": np.arange(20.0), "label": ["x", "y"] * 10})
    frame["blank"] = np.nan
    frame["score"] = np.linspace(0, 1, 20)
    frame.loc[[3, 7], "score"] = [np.inf, -np.inf]
    path = write(tmp_path, frame)
    with pytest.raises(DataError, match=re.escape(words)):
        data.load("csv", path=path, target=column, drop=drop)


def test_labels_that_pandas_would_call_missing_stay_classes(tmp_path) -> None:
    """Fault: the target read with pandas' default NA strings, so `NA` and `null` labels turn
    into missing values (and the run refuses the target or drops a class)."""
    path = tmp_path / "labels.csv"
    rows = ["a,b,label"] + [f"{i},{i % 3},{['NA', 'null', 'ok'][i % 3]}" for i in range(30)]
    path.write_text("\n".join(rows) + "\n")
    split = data.load("csv", path=str(path), target="label")
    assert split.classes == ["NA", "null", "ok"] and split.task == "multiclass"


def test_a_missing_feature_mark_is_still_missing(tmp_path) -> None:
    """Fault: NA marks no longer read as missing in feature columns (a text column instead)."""
    path = tmp_path / "gaps.csv"
    path.write_text("a,b,y\n1,NA,0\n2,3,1\n3,4,0\n4,5,1\n5,6,0\n6,7,1\n")
    with pytest.raises(DataError, match=r"NaN or infinite values in 1 row\(s\) \(data rows 1;"):
        data.load("csv", path=str(path), target="y")


def gaps_csv(path: Path) -> str:
    """20 rows; row 3's a and row 8's b empty."""
    rows = [f"{i},{2 * i},{i % 2}" for i in range(1, 21)]
    rows[2] = "3,,1"
    rows[7] = ",16,0"
    path.write_text("a,b,y\n" + "\n".join(rows) + "\n")
    return str(path)


def test_empty_feature_cells_are_refused_by_row_or_dropped_or_filled(tmp_path) -> None:
    """Faults: the refusal does not say which rows, dataset.missing ignored (refused anyway,
    or NaN trains), `mean` filled with the whole table's mean (the validation rows leak into
    training) or not recorded for new rows."""
    path = gaps_csv(tmp_path / "gaps.csv")
    with pytest.raises(DataError) as refused:
        data.load("csv", path=path, target="y")
    assert "data rows 3, 8" in str(refused.value) and "dataset.missing=drop or mean" in str(
        refused.value
    )
    dropped = data.load("csv", path=path, target="y", missing="drop")
    assert dropped.n_rows == 18
    filled = data.load("csv", path=path, target="y", missing="mean", test_size=0.5)
    assert filled.n_rows == 20 and np.isfinite(filled.x_train).all()
    assert np.isfinite(filled.x_val).all()
    # The fill is the training split's own mean: back out of the scaler, each training
    # column's mean is its fill (a filled cell leaves its column's mean as it was), and it
    # is not the whole column's mean.
    unscaled = filled.x_train * filled.scaler_scale + filled.scaler_mean
    np.testing.assert_allclose(unscaled.mean(axis=0), filled.fill_values)
    whole_a = np.mean([i for i in range(1, 21) if i != 8])
    assert filled.fill_values[0] != pytest.approx(whole_a)


def test_a_csv_split_on_another_separator_says_which(tmp_path) -> None:
    """Fault: a semicolon file read with the comma is reported as a missing target only."""
    path = tmp_path / "semi.csv"
    path.write_text("a;b;y\n" + "".join(f"{i};{i};{i % 2}\n" for i in range(10)))
    with pytest.raises(DataError, match=re.escape("""separated by ';': pass 'dataset.sep=";"'""")):
        data.load("csv", path=str(path), target="y")


def test_separator_and_encoding_reach_the_reader(tmp_path) -> None:
    """Fault: dataset.sep or dataset.encoding not passed to pandas."""
    path = tmp_path / "semicolons.csv"
    text = "größe;b;klasse\n" + "".join(
        f"{i};{i % 4};{'jä' if i % 2 else 'nein'}\n" for i in range(20)
    )
    path.write_bytes(text.encode("latin-1"))
    split = data.load("csv", path=str(path), target="klasse", sep=";", encoding="latin-1")
    assert split.n_features == 2 and split.classes == ["jä", "nein"]
    with pytest.raises(DataError):
        data.load("csv", path=str(path), target="klasse")  # a comma and UTF-8 cannot read it


def test_the_inferred_task_says_why() -> None:
    """Fault: the task is inferred silently (the reason or the class order not reported)."""
    split = data.load("iris")
    assert split.task == "multiclass" and split.classes == ["0", "1", "2"]
    assert "3 distinct integers" in split.task_reason
    line = split.describe()
    assert line.startswith("task: multiclass,") and "150 rows" in line and "4 features" in line
    assert "set by dataset.task=regression" in data.load("iris", task="regression").task_reason


def test_a_changed_csv_is_read_again_in_the_same_process(tmp_path) -> None:
    """Fault: the per-process table cache serves a stale table after the file changed."""
    path = tmp_path / "t.csv"
    path.write_text("a,y\n" + "".join(f"{i},{i % 2}\n" for i in range(20)))
    assert data.load("csv", path=str(path), target="y").n_rows == 20
    path.write_text("a,y\n" + "".join(f"{i},{i % 2}\n" for i in range(30)))
    assert data.load("csv", path=str(path), target="y").n_rows == 30
