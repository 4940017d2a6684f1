"""Your own data (`dataset._target_`): a function that returns a table goes through what a CSV
goes through (inference, split, scaling, digest, records), sweeps over its arguments, and
`looplab reproduce` reruns it only when its package is trusted."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import store_uri
from test_bad_input import assert_one_clear_line, no_runs
from test_parts import (
    EXAMPLES,
    QUIET,
    a_users_folder,
    assert_reproduced_only_when_trusted,
    run_and_sweep,
)

from looplab.core.errors import DataError
from looplab.launch.parts import parts_of
from looplab.run.prepare import prepare
from looplab.run.records import describe_data

MOONS = (f"hydra.searchpath=[file://{EXAMPLES / 'conf'}]", "dataset=moons")
# A user's module beside their configs, with functions that return what looplab cannot use.
BROKEN = """
import pandas as pd

def listing():
    return [1, 2, 3]

def table():
    return pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "y": [0, 1, 0, 1]})

def uneven():
    return pd.DataFrame({"a": [1.0, 2.0, 3.0]}), pd.Series([0, 1])

def failing():
    raise FileNotFoundError("data.parquet")
"""


@pytest.fixture
def in_examples(monkeypatch) -> None:
    """The launch directory is examples/: its package is importable, as for a user there."""
    monkeypatch.chdir(EXAMPLES)
    monkeypatch.syspath_prepend(str(EXAMPLES))


def losses(cfg, parts) -> list[float]:
    ready = prepare(cfg, parts=parts)
    return [e.metrics["train_loss"] for e in ready.fit(cfg.train.epochs, cfg.train.batch_size)]


def test_a_functions_table_trains_and_is_recorded_as_the_same_csv_would_be(
    make_config, in_examples, tmp_path
) -> None:
    """The moons table, returned by the function and written to a CSV: the same task, class
    order, features, scaler, losses (bitwise) and data digest; only the record's name and
    source differ (the function's). Faults: the returned table checked, encoded, split or
    digested otherwise than a CSV's (an index kept, the target not label-encoded alike), or
    recorded under the CSV's or a built-in's source."""
    from looplab_examples.data import two_moons

    two_moons(n_rows=120).to_csv(tmp_path / "moons.csv", index=False)
    mine = make_config(*QUIET, *MOONS, "dataset.n_rows=120", "train.epochs=5", "model.width=4")
    csv = make_config(
        *QUIET,
        "dataset=csv",
        f"dataset.path={tmp_path / 'moons.csv'}",
        "dataset.target=moon",
        "train.epochs=5",
        "model.width=4",
    )
    parts = parts_of(mine)
    ours, theirs = prepare(mine, parts=parts).split_info, prepare(csv).split_info
    assert (ours.task, ours.classes, ours.feature_names) == (
        "binary",
        ["lower", "upper"],
        ["x", "y"],
    )
    assert (ours.scaler_mean, ours.scaler_scale) == (theirs.scaler_mean, theirs.scaler_scale)
    assert losses(mine, parts) == losses(csv, None)
    record = describe_data(mine, parts)
    assert record.digest == describe_data(csv).digest
    assert (record.name, record.source, record.source_type, record.rows) == (
        "two_moons",
        "looplab_examples.data.two_moons",
        "code",
        120,
    )
    assert record.file_sha256 is None


def test_each_set_of_arguments_is_its_own_table(make_config, in_examples) -> None:
    """Faults: the remembered table keyed without the function's arguments (every job of a
    sweep over dataset.n_rows trains on the first job's table), or read anew for the same
    arguments (a seed sweep calls the function once a job)."""
    first, second = (make_config(*QUIET, *MOONS, f"dataset.n_rows={n}") for n in (100, 160))
    assert describe_data(first, parts_of(first)).rows == 100
    assert describe_data(second, parts_of(second)).rows == 160
    again = make_config(*QUIET, *MOONS, "dataset.n_rows=160", "seed=7")
    assert describe_data(again, parts_of(again)) is describe_data(second, parts_of(second))


def test_features_and_target_as_a_tuple_of_frames_or_arrays(make_config) -> None:
    """scikit-learn's loaders as they are: (DataFrame, Series) gives the built-in wine's very
    table (the same digest), (array, array) columns x0, x1 and a target named "target".
    Faults: a tuple refused, its target misnamed, its arrays not taken."""
    wine = make_config(
        *QUIET,
        "dataset=function",
        "dataset._target_=sklearn.datasets.load_wine",
        "+dataset.return_X_y=true",
        "+dataset.as_frame=true",
    )
    assert wine.dataset.name == "load_wine"
    assert (
        describe_data(wine, parts_of(wine)).digest
        == describe_data(make_config(*QUIET, "dataset=wine")).digest
    )
    moons = make_config(
        *QUIET,
        "dataset=function",
        "dataset._target_=sklearn.datasets.make_moons",
        "+dataset.n_samples=80",
        "+dataset.random_state=0",
        "dataset.name=moons",
    )
    record = describe_data(moons, parts_of(moons))
    assert (record.name, record.rows) == ("moons", 80)
    assert [name for name, _ in record.columns] == ["x0", "x1", "target"]


@pytest.mark.parametrize(
    ("function", "extra", "words"),
    [
        ("listing", (), ["broken_data.listing returned list", "DataFrame", "tuple"]),
        ("table", (), ["returned a table", "dataset.target=COLUMN", "columns: a, y"]),
        ("table", ("dataset.target=label",), ["target column 'label' is not in", "a, y"]),
        ("table", ("dataset.target=y", "dataset.drop=[b]"), ["dataset.drop names", ": b"]),
        ("uneven", (), ["3 rows of features and 2 targets"]),
        ("failing", (), ["failing failed: FileNotFoundError: data.parquet", "HYDRA_FULL_ERROR"]),
    ],
)
def test_what_a_function_returns_that_cannot_be_used_is_one_line(
    make_config, monkeypatch, tmp_path, function, extra, words
) -> None:
    """Faults: a non-table, a table with no target named or a missing target or dropped
    column, features and target of different lengths, or the function's own error reaching
    the user as a traceback from deep inside pandas or the split."""
    (tmp_path / "broken_data.py").write_text(BROKEN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "broken_data", raising=False)
    cfg = make_config(
        *QUIET, "dataset=function", f"dataset._target_=broken_data.{function}", *extra
    )
    with pytest.raises(DataError) as error:
        prepare(cfg, parts=parts_of(cfg))
    assert all(word in str(error.value) for word in words), error.value
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_a_users_data_function_is_trained_swept_recorded_and_reproduced(run_cli, tmp_path) -> None:
    """examples/ as a user's own folder: `dataset=moons` (their conf/dataset/moons.yaml, their
    looplab_examples.data.two_moons) trained, swept over its n_rows, recorded (params, the
    MLflow dataset input, the digest, the code), and reproduced: refused until trusted, then
    bitwise. Faults: the function's arguments not recorded or not passed (every job the same
    rows), the dataset input named after a built-in or a CSV, user code rerun without
    consent, a rerun that reads another table, or tracking.skip_finished unable to digest
    the data before the run (the function not handed to it)."""
    folder = a_users_folder(tmp_path)
    user = ("hydra.searchpath=[file://conf]", "dataset=moons", "model.width=8", "train.epochs=3")
    runs = run_and_sweep(run_cli, folder, user, "dataset.n_rows=100,160")
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "two_moons width=8 epochs=3"
    params = run.data.params
    assert params["dataset._target_"] == "looplab_examples.data.two_moons"
    assert (params["dataset"], params["dataset.n_rows"], params["data.rows"]) == (
        "two_moons",
        "200",
        "200",
    )
    assert params["data.classes"] == "lower,upper" and "dataset.path" not in params
    (given,) = run.inputs.dataset_inputs
    assert (given.dataset.name, given.dataset.source_type) == ("two_moons", "code")
    assert json.loads(given.dataset.source) == {"uri": "looplab_examples.data.two_moons"}
    assert given.dataset.digest == run.data.tags["looplab.data.digest"]
    assert list(json.loads(run.data.tags["looplab.code"])) == ["looplab_examples"]
    jobs = [r for r in runs if r.data.tags.get("looplab.role") == "job"]
    assert sorted(r.data.params["data.rows"] for r in jobs) == ["100", "160"]
    assert len({r.data.tags["looplab.data.digest"] for r in [run, *jobs]}) == 3

    target = "dataset._target_=looplab_examples.data.two_moons"
    assert_reproduced_only_when_trusted(folder, run.info.run_id, target)
    again = run_cli(*user, "tracking.skip_finished=true", cwd=folder)
    assert "skipped, already FINISHED" in again.stdout, again.stdout + again.stderr


# Bad input at the real CLI, in a user's folder: one line, exit 1, no run, no run folder.
BAD_CASES = {
    "not-importable": (
        ["dataset._target_=looplab_examples.data.nope"],
        ["dataset._target_=looplab_examples.data.nope cannot be used", "importable"],
    ),
    "argument-not-taken": (
        ["+dataset.colour=red"],
        ["cannot take its arguments", "colour", "n_rows, noise, seed"],
    ),
    "returns-no-table": (
        [
            "dataset._target_=broken_data.listing",
            "~dataset.n_rows",
            "~dataset.noise",
            "~dataset.seed",
        ],
        ["broken_data.listing returned list"],
    ),
    "target-column-missing": (
        ["dataset.target=label"],
        ["target column 'label' is not in", "columns are: x, y, moon"],
    ),
    "sweep-argument-not-taken": (
        ["-m", "dataset.n_rows=100,200", "+dataset.colour=red"],
        ["cannot take its arguments", "colour", "nothing ran"],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_CASES))
def test_a_users_data_that_cannot_be_used(case: str, run_cli, tmp_path) -> None:
    """Faults: a target that is not there, an argument the function does not take (in a
    sweep: after its first job), a function that returns no table, or a target column not in
    its table, found as a traceback, or after a run was created or its folder left behind."""
    folder = a_users_folder(tmp_path)
    (folder / "broken_data.py").write_text(BROKEN)
    args, words = BAD_CASES[case]
    result = run_cli(
        *args, "hydra.searchpath=[file://conf]", "dataset=moons", "train.epochs=2", cwd=folder
    )
    assert_one_clear_line(result, words)
    outputs = folder / "outputs"
    assert not (outputs / "mlflow.db").exists() or no_runs(store_uri(folder)) == []
    assert not (outputs / "runs").exists() and not (outputs / "sweeps").exists()
