"""Reading a table: a built-in data set, any CSV, or what the user's own function returns,
checked, remembered while unchanged, and described (its digest, MLflow's dataset input) so
a changed data set is told apart."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas._libs.parsers import STR_NA_VALUES  # pandas' own list of missing-value marks

from looplab.core.errors import DataError

BUILTIN = ("breast_cancer", "iris", "wine", "digits", "diabetes")


def load_table(
    name: str,
    path: str | None = None,
    target: str | None = None,
    drop: list[str] | tuple[str, ...] = (),
    sep: str = ",",
    encoding: str = "utf-8",
) -> tuple[pd.DataFrame, pd.Series]:
    """Features and target of a built-in data set, or of any CSV file."""
    if name == "csv":
        return _read_csv(path, target, list(drop), sep, encoding)
    if name not in BUILTIN:
        raise DataError(f"unknown dataset '{name}': choose one of {', '.join(BUILTIN)} or csv")
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")(as_frame=True)
    features, labels = bunch.data, bunch.target
    if name == "breast_cancer":
        labels = 1 - labels  # scikit-learn says 0 = malignant; the tutorial's CSV says M = 1
    return features, labels.rename("target")


def _read_csv(
    path: str | None, target: str | None, drop: list[str], sep: str, encoding: str
) -> tuple[pd.DataFrame, pd.Series]:
    """Read a CSV whose target labels stay as written: `NA`, `null` or `None` are classes.

    pandas takes such strings for missing values in every column by default; here only the
    feature columns do, and an empty target cell is the one thing that counts as missing there.
    """
    if path is None or target is None:
        raise DataError("dataset=csv needs dataset.path and dataset.target")
    sep = separator(sep)
    file = local_path(path)
    if not file.is_file():
        raise DataError(f"CSV file not found: {file}")
    try:
        header = pd.read_csv(file, sep=sep, encoding=encoding, nrows=0).columns
        missing_marks = {str(column): sorted(STR_NA_VALUES) for column in header}
        missing_marks[target] = [""]
        table = pd.read_csv(
            file, sep=sep, encoding=encoding, keep_default_na=False, na_values=missing_marks
        )
    except LookupError:
        raise DataError(f"dataset.encoding={encoding} is not an encoding Python knows") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"CSV file is empty: {file}") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise DataError(f"cannot read CSV file {file}: {error}") from None
    if table.empty:
        raise DataError(f"CSV file has a header but no rows: {file}")
    hint = ""
    # One column, and another separator in its name: the file is not split on `sep`.
    found = [c for c in ";\t|," if c != sep and len(table.columns) == 1 and c in header[0]]
    if found and target not in table.columns:
        shown = {"\t": "\\t"}.get(found[0], found[0])
        hint = f"; its header looks separated by '{shown}': pass 'dataset.sep=\"{shown}\"'"
    return _columns(table, target, drop, file.name, hint)


def _columns(
    table: pd.DataFrame, target: str, drop: list[str], where: str, hint: str = ""
) -> tuple[pd.DataFrame, pd.Series]:
    """A whole table as features and target: `drop` and entirely empty columns left out.
    `hint`: what to try when the target is not there."""
    if target not in table.columns:
        raise DataError(
            f"target column '{target}' is not in {where}; its columns are: "
            + ", ".join(map(str, table.columns))
            + hint
        )
    missing = [column for column in drop if column not in table.columns]
    if missing:
        raise DataError(f"dataset.drop names columns that {where} lacks: {', '.join(missing)}")
    if target in drop:
        raise DataError(f"dataset.drop=[{', '.join(drop)}] drops the target column '{target}'")
    if table[target].isna().all():
        raise DataError(f"target column '{target}' of {where} is empty")
    empty = [column for column in table.columns if table[column].isna().all()]
    table = table.drop(columns=[*drop, *empty])
    return table.drop(columns=[target]), table[target]


def separator(sep: str) -> str:
    """`dataset.sep` as pandas takes it: `"\\t"`, as typed on a command line, is a tab."""
    return {"\\t": "\t"}.get(sep, sep)


def returned_table(
    function: str, load: Callable[[], Any] | None, target: str | None, drop: list[str]
) -> tuple[pd.DataFrame, pd.Series]:
    """Features and target from the user's own function (`dataset._target_`, its arguments
    bound: `load`): a DataFrame whose column `target` is the target, or a tuple (features,
    target), arrays allowed; then checked as a CSV's columns are."""
    where = f"dataset._target_={function}"
    if load is None:  # a caller that skipped launch.parts.parts_of
        raise DataError(f"{where} was not looked up: it comes as Parts.data (parts_of)")
    try:
        returned = load()
    except Exception as error:  # the user's code: its reason, and its traceback on request
        raise DataError(
            f"{where} failed: {type(error).__name__}: {error} (HYDRA_FULL_ERROR=1 shows where)"
        ) from error
    if isinstance(returned, pd.DataFrame):
        if target is None:
            raise DataError(
                f"{where} returned a table: name its target column with dataset.target=COLUMN "
                f"(its columns: {', '.join(map(str, returned.columns))})"
            )
        table = returned.reset_index(drop=True)
    elif isinstance(returned, tuple) and len(returned) == 2:
        table, target = _joined(*returned, target, where)
    else:
        raise DataError(
            f"{where} returned {type(returned).__name__}: it must return a pandas DataFrame "
            "(its target column named by dataset.target) or a tuple (features, target)"
        )
    table.columns = [str(column) for column in table.columns]
    twice = sorted({c for c in table.columns if list(table.columns).count(c) > 1})
    if twice or table.empty:
        what = f"columns named twice: {', '.join(twice)}" if twice else "no rows"
        raise DataError(f"the table {where} returned has {what}")
    return _columns(table, target, drop, f"the table {function} returned")


def _joined(features: Any, labels: Any, target: str | None, where: str) -> tuple[pd.DataFrame, str]:
    """(features, target) as one table, and its target column's name: `dataset.target`, the
    Series' own name, or "target". Arrays are taken too (columns x0, x1, ...)."""
    if not isinstance(features, pd.DataFrame):
        features = np.asarray(features) if isinstance(features, np.ndarray | list) else None
        if features is None or features.ndim != 2:
            raise DataError(f"{where} returned features that are no DataFrame or 2-D array")
        features = pd.DataFrame(features, columns=[f"x{i}" for i in range(features.shape[1])])
    if not isinstance(labels, pd.Series):
        labels = np.asarray(labels) if isinstance(labels, np.ndarray | list) else None
        if labels is None or labels.ndim != 1:
            raise DataError(f"{where} returned a target that is no Series or 1-D array")
        labels = pd.Series(labels)
    name = str(target or labels.name or "target")
    if len(features) != len(labels):
        raise DataError(
            f"{where} returned {len(features)} rows of features and {len(labels)} targets"
        )
    if name in map(str, features.columns):
        raise DataError(f"{where} returned features with a column named as the target: {name}")
    labels = labels.reset_index(drop=True).rename(name)
    return pd.concat([features.reset_index(drop=True), labels], axis=1), name


@dataclass(frozen=True)
class Table:
    """Which table a run reads: a built-in data set, a CSV and how to read it, or the user's
    own function and its arguments. The one spelling of these settings; frozen, so a read
    table can be remembered by it (by the function's name and arguments, not by `load`)."""

    name: str
    path: str | None = None
    target: str | None = None
    drop: tuple[str, ...] = ()
    sep: str = ","
    encoding: str = "utf-8"
    function: str | None = None  # your own data: `dataset._target_`
    arguments: str = ""  # ... and its arguments, as JSON
    load: Callable[[], Any] | None = field(default=None, compare=False, repr=False)

    def stamp(self) -> tuple[str, int, int] | None:
        """A CSV file's path, time and size (a changed file is read again); None otherwise."""
        if self.name != "csv" or self.path is None or self.function is not None:
            return None
        info = local_path(self.path).stat()
        return (str(local_path(self.path).resolve()), info.st_mtime_ns, info.st_size)


def describe_data(table: Table) -> DataRecord:
    """The digest of the table a run loads, and for a CSV the sha256 of its file: what tells
    a changed data set from the same one. Read and worked out once, shared with `load`."""
    return read_table(table).record


@dataclass
class ReadTable:
    """A table as read: its features and target, and (worked out when asked) its record."""

    table: Table
    features: pd.DataFrame
    labels: pd.Series
    _record: DataRecord | None = None

    @property
    def record(self) -> DataRecord:
        if self._record is None:
            self._record = _record_of(self.table, self.features, self.labels)
        return self._record


def read_table(table: Table) -> ReadTable:
    """`load_table`, read once per process while the file is unchanged: the jobs of a sweep
    that run in one process (a seed sweep, say) share the table instead of parsing it again.
    The split never changes the table it is given."""
    try:
        stamp = table.stamp()
    except OSError:  # not there: let load_table say what is wrong with the file
        return ReadTable(table, *_load(table))
    return _remembered(table, stamp)


@functools.lru_cache(maxsize=1)  # one table at a time: a sweep over data sets piles none up
def _remembered(table: Table, stamp: tuple[str, int, int] | None) -> ReadTable:
    return ReadTable(table, *_load(table))


def _load(table: Table) -> tuple[pd.DataFrame, pd.Series]:
    if table.function is not None:
        return returned_table(table.function, table.load, table.target, list(table.drop))
    return load_table(
        table.name, table.path, table.target, table.drop, table.sep, table.encoding
    )  # fmt: skip


def local_path(path: str) -> Path:
    """The file a `dataset.path` names: `pkg://looplab.resources/NAME` (a file packaged with
    looplab, as Hydra names packaged configs) or a path on this machine. Only looplab's own
    packages are looked in: a path is never a way to import another package."""
    from looplab.core.paths import PACKAGE_PREFIX, RESOURCE_PACKAGE

    if not path.startswith(PACKAGE_PREFIX):
        return Path(path).expanduser()
    package, _, name = path.removeprefix(PACKAGE_PREFIX).partition("/")
    if package != RESOURCE_PACKAGE or not name or "/" in name or name.startswith("."):
        raise DataError(
            f"dataset.path={path}: a packaged file is {PACKAGE_PREFIX}{RESOURCE_PACKAGE}/NAME"
        )
    from importlib.resources import files

    return Path(str(files(RESOURCE_PACKAGE) / name))


@dataclass
class DataRecord:
    """The data a run trained on, as MLflow's dataset input records it (see `describe_data`)."""

    name: str
    digest: str  # of the loaded table: columns, types and every value
    source: str  # the CSV (path or pkg:// name), the scikit-learn loader, or your function
    source_type: str
    rows: int
    columns: list[tuple[str, str]]  # (name, MLflow type: double or string)
    file_sha256: str | None = None  # dataset=csv: the file's bytes

    def mlflow_schema(self) -> str:
        import json

        return json.dumps(
            {
                "mlflow_colspec": [
                    {"type": kind, "name": name, "required": True} for name, kind in self.columns
                ]
            }
        )


def _record_of(table: Table, features: pd.DataFrame, labels: pd.Series) -> DataRecord:
    import hashlib

    name, path = table.name, table.path
    whole = features.assign(**{f"__target__{labels.name}": labels})
    digest = hashlib.sha256()
    digest.update("\0".join(f"{c}:{t}" for c, t in whole.dtypes.items()).encode())
    digest.update(pd.util.hash_pandas_object(whole, index=False).to_numpy().tobytes())
    file_sha256 = None
    if table.function is not None:  # your own data: named as you named it, from your code
        stem, source, source_type = name, table.function, "code"
    elif name == "csv" and path is not None:
        stem, source, source_type = Path(path).stem, path, "local"
        file_sha256 = hashlib.sha256(local_path(path).read_bytes()).hexdigest()
    else:
        stem, source, source_type = name, f"sklearn.datasets.load_{name}", "code"
    return DataRecord(
        name=stem,
        digest=digest.hexdigest()[:16],
        source=str(source),
        source_type=source_type,
        rows=len(whole),
        columns=[
            (str(column), "double" if pd.api.types.is_numeric_dtype(values) else "string")
            for column, values in [*features.items(), (labels.name, labels)]
        ],
        file_sha256=file_sha256,
    )
