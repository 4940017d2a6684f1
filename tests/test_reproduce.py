"""What a run records so that it can be run again, read back safely, and compared (fast tests:
runs in this process against a real SQLite store; `test_reproduce_cli.py` runs the commands)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import only_run, store_uri

from looplab.cli import main as looplab
from looplab.cli.differences import compare_histories
from looplab.cli.train import execute_tracked as execute
from looplab.core.errors import ConfigError
from looplab.core.model import build_model
from looplab.launch.overrides import with_overrides
from looplab.run.config_file import from_record, rerunnable
from looplab.run.prepare import prepare


def small_csv(folder, name: str = "pets.csv", rows: int = 80) -> str:
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(rng.normal(size=(rows, 3)), columns=["a", "b", "c"])
    frame["pet"] = np.where(frame.a + frame.b > 0, "dog", "cat")
    path = folder / name
    frame.to_csv(path, index=False)
    return str(path)


def artifact_text(client, run_id: str, path: str, folder) -> str:
    local = client.download_artifacts(run_id, path, str(folder))
    with open(local, encoding="utf-8") as file:
        return file.read()


def test_a_run_records_its_data_versions_preprocessing_and_a_portable_config(
    make_config, tmp_path, client
) -> None:
    """Faults: no MLflow dataset input (or one without the table's digest), the CSV's sha256,
    the versions or the scaler's statistics left out; config.yaml holding the store's path."""
    path = small_csv(tmp_path)
    cfg = make_config(
        "dataset=csv", f"dataset.path={path}", "dataset.target=pet", "train.epochs=2",
        "train.print_every=0",
    )  # fmt: skip
    execute(cfg, tmp_path / "run")
    run = only_run(client)
    tags = run.data.tags
    with open(path, "rb") as file:
        assert tags["looplab.data.sha256"] == hashlib.sha256(file.read()).hexdigest()
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "pets"
    assert dataset.dataset.digest == tags["looplab.data.digest"]
    assert json.loads(dataset.dataset.source) == {"uri": path}
    assert tags["looplab.version.torch"] == torch.__version__
    for key in ("python", "mlflow", "hydra", "looplab"):
        assert tags[f"looplab.version.{key}"], key
    assert tags["looplab.platform"]
    recorded = json.loads(artifact_text(client, run.info.run_id, "preprocessing.json", tmp_path))
    assert recorded["classes"] == ["cat", "dog"] and recorded["features"] == ["a", "b", "c"]
    assert len(recorded["scaler_mean"]) == 3 and all(s > 0 for s in recorded["scaler_scale"])
    config_text = artifact_text(client, run.info.run_id, "config.yaml", tmp_path)
    assert str(tmp_path / "outputs") not in config_text  # the store is not part of it
    assert yaml.safe_load(config_text)["tracking"]["uri"] is None


def test_the_packaged_csv_is_named_as_a_package_resource(make_config, tmp_path) -> None:
    """Fault: experiment=seed records the CSV's site-packages path, which no other machine has."""
    cfg = make_config("experiment=seed", "tracking.enabled=false")
    assert cfg.dataset.path == "pkg://looplab.resources/breast_cancer.csv"
    assert "site-packages" not in rerunnable(cfg) and str(tmp_path) not in rerunnable(cfg)


def test_a_changed_csv_gets_another_digest(make_config, tmp_path, client) -> None:
    """Fault: the data digest is of the file's name (or of the first rows), so a changed CSV
    looks like the same data to reproduce, diff and skip_finished."""
    from looplab.run.records import describe_data

    path = small_csv(tmp_path, rows=200)
    cfg = make_config("dataset=csv", f"dataset.path={path}", "dataset.target=pet")
    before = describe_data(cfg)
    frame = pd.read_csv(path)
    frame.loc[150, "c"] += 1.0  # one value, far below any "first rows" sample
    frame.to_csv(path, index=False)
    after = describe_data(cfg)
    assert after.digest != before.digest and after.file_sha256 != before.file_sha256


def test_the_state_dict_loads_with_weights_only_and_gives_the_final_validation_numbers(
    make_config, tmp_path, client
) -> None:
    """Faults: the state_dict saved before training (the initial weights), the hand-written
    model's weights saved untransposed (they would not load into its torch.nn twin), or a file
    that needs pickle (weights_only=True refuses it)."""
    cfg = make_config(
        "model.impl=manual", "model.width=4", "train.epochs=5", "train.print_every=0",
        "train.dtype=float64",
    )  # fmt: skip
    result = execute(cfg, tmp_path / "run")
    run = only_run(client)
    local = client.download_artifacts(run.info.run_id, "model.pt", str(tmp_path))
    state = torch.load(local, weights_only=True)
    fresh = prepare(cfg)  # the same split, and a model with its initial weights
    before = fresh.loss(fresh.model(fresh.data.x_val), fresh.data.y_val).item()
    for other in ("manual", "module"):  # one file loads into either twin
        info = fresh.split_info
        model = build_model(
            info.n_features, info.n_outputs, width=4, activation="relu", impl=other,
            init="default", dtype=torch.float64, device=torch.device("cpu"), seed=1,
        )  # fmt: skip
        model.load_state_dict(state)
        with torch.no_grad():
            prediction = model(fresh.data.x_val)
            val_loss = fresh.loss(prediction, fresh.data.y_val).item()
            accuracy = fresh.quality(prediction, fresh.data.y_val).item()
        final = result.history[-1].metrics
        assert val_loss == pytest.approx(final["val_loss"], rel=1e-12, abs=0)
        assert accuracy == pytest.approx(final["val_accuracy"], rel=1e-12, abs=0)
    assert abs(before - final["val_loss"]) > 1e-4  # the initial weights would be told apart


def test_diff_shows_the_one_value_and_the_one_version_that_differ_and_nothing_else(
    make_config, tmp_path, client, capsys
) -> None:
    """Faults: diff prints rows that are the same (params, tags, metrics), leaves out a config
    value or a version, or shows a group's change twice."""
    base = ("train.epochs=3", "model.width=2")
    execute(make_config(*base, "train.print_every=0"), tmp_path / "a")
    execute(make_config(*base, "train.print_every=2"), tmp_path / "b")
    found = client.get_experiment_by_name("looplab")
    run_a, run_b = sorted(
        client.search_runs([found.experiment_id]), key=lambda r: r.info.start_time
    )
    client.set_tag(run_b.info.run_id, "looplab.version.torch", "2.99.0")
    uri = store_uri(tmp_path)
    capsys.readouterr()  # the runs' own lines
    code = looplab(["diff", run_a.info.run_id, run_b.info.run_id, "--tracking-uri", uri])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert lines[0].split()[0] == "what"
    rows = lines[1:]
    assert len(rows) == 2, rows
    assert rows[0].split() == ["train.print_every", "0", "2"]
    assert rows[1].split() == ["version.torch", torch.__version__, "2.99.0"]
    # the same command shows a metric that differs, as final and best rows
    execute(make_config(*base, "train.print_every=0", "train.lr=0.5"), tmp_path / "c")
    runs = client.search_runs([found.experiment_id])
    run_c = [r for r in runs if r.data.params["train.lr"] == "0.5"]
    capsys.readouterr()
    looplab(["diff", run_a.info.run_id, run_c[0].info.run_id, "--tracking-uri", uri])
    shown = [line.split()[0:2] for line in capsys.readouterr().out.strip().splitlines()[1:]]
    assert ["train.lr", "0.1"] in shown and ["final", "val_loss"] in shown


RECORDED = {
    "defaults": ["looplab_schema", "_self_"],
    "dataset": {"name": "breast_cancer"},
    "train": {"epochs": 2, "dtype": "float32"},
    "hydra": {"callbacks": {"sweep": {"_target_": "looplab.cli.sweep.SweepCallback"}}},
}


def test_a_recorded_config_is_read_as_data_and_checked_against_the_schema() -> None:
    """Faults: a stored config.yaml that names foreign code (`_target_: os.system`, a Python
    YAML tag), holds an interpolation, or breaks the schema is run instead of refused."""
    assert from_record(yaml.safe_dump(RECORDED)).train.epochs == 2
    evil = {**RECORDED, "hydra": {"callbacks": {"x": {"_target_": "os.system", "command": "id"}}}}
    refusals = {
        "outside looplab": yaml.safe_dump(evil),
        "not plain YAML": "train: !!python/object/apply:os.system ['id']\n",
        "interpolation": yaml.safe_dump({**RECORDED, "seed": "${oc.env:HOME}"}),
        "schema: model.width=wide": yaml.safe_dump({**RECORDED, "model": {"width": "wide"}}),
        "schema at train.learning_rate": yaml.safe_dump(
            {**RECORDED, "train": {"learning_rate": 1}}
        ),
        "train.epochs=0 is not allowed": yaml.safe_dump({**RECORDED, "train": {"epochs": 0}}),
        "not a mapping": "- a list\n",
    }
    for expected, text in refusals.items():
        with pytest.raises(ConfigError, match=expected):
            from_record(text)


def test_changes_are_applied_to_the_recorded_config_as_typed() -> None:
    """Faults: a group's choice keeps the old group's keys, a typo or a preset is accepted."""
    recorded = from_record(yaml.safe_dump(RECORDED))
    changed = with_overrides(recorded, ["update=sgd", "train.lr=0.5", "dataset=csv",
                                        "dataset.path=x.csv", "dataset.target=y"])  # fmt: skip
    assert (changed["update"].name, changed.train.lr, changed.train.epochs) == ("sgd", 0.5, 2)
    assert changed.dataset.name == "csv" and changed.dataset.target == "y"
    for lines, expected in (
        (["model.widht=3"], "did you mean model.width"),
        (["experiment=seed"], "a preset is a fresh start"),
        (["train.lr=0.1,1"], "only plain key=value"),
        (["update=adagrad"], "choose one of adam, adamw, manual, optim, sgd"),
    ):
        with pytest.raises(ConfigError, match=expected):
            with_overrides(recorded, lines)


def test_histories_compare_bitwise_or_within_a_relative_tolerance() -> None:
    """Faults: a last-digit difference, a missing epoch or a missing metric taken as equal;
    the tolerance taken as absolute; NaN never equal to NaN."""
    a = {"loss": [(1, 0.5), (2, 0.25), (3, math.nan)], "acc": [(1, 0.9)]}
    b = {"loss": [(1, 0.5), (2, 0.25 + 1e-12), (3, math.nan)], "acc": [(1, 0.9)]}
    (found,) = compare_histories(a, b)
    assert (found.metric, found.epoch, found.epochs_differing) == ("loss", 2, 1)
    assert compare_histories(a, b, tolerance=1e-10) == []
    assert compare_histories({"x": [(1, 1e-9)]}, {"x": [(1, 2e-9)]}, tolerance=1e-6)  # relative
    (short,) = compare_histories(a, {**b, "loss": b["loss"][:2]}, tolerance=1e-10)
    assert short.epoch == 3 and "epochs" in short.note
    (missing,) = compare_histories(a, {"loss": a["loss"]})
    assert missing.metric == "acc" and "not logged" in missing.note


def test_reproduce_refuses_a_stored_config_that_names_foreign_code(
    make_config, tmp_path, client, capsys, monkeypatch
) -> None:
    """Faults: a config.yaml edited in the store to name foreign code (a Hydra callback
    `_target_: os.system`, a Python YAML tag) is run, or refused with a traceback, or after a
    new run was created."""
    from urllib.parse import unquote, urlparse

    execute(make_config("train.epochs=1", "train.print_every=0"), tmp_path / "run")
    run = only_run(client)
    path = Path(unquote(urlparse(run.info.artifact_uri).path)) / "config.yaml"
    evil = yaml.safe_load(path.read_text())
    evil["hydra"]["callbacks"]["x"] = {"_target_": "os.system", "command": "touch pwned"}
    monkeypatch.chdir(tmp_path)
    for text, expected in (
        (yaml.safe_dump(evil), "import target outside looplab (hydra.callbacks.x._target_"),
        ("train: !!python/object/apply:os.system ['touch pwned']\n", "is not plain YAML"),
        ("model: {width: wide}\n", "does not match looplab's schema: model.width=wide"),
    ):
        path.write_text(text)
        capsys.readouterr()
        code = looplab(["reproduce", run.info.run_id, "--tracking-uri", store_uri(tmp_path)])
        err = capsys.readouterr().err
        assert code == 1 and expected in err, err
        assert err.startswith("looplab: error: ") and len(err.strip().splitlines()) == 1
    assert only_run(client).info.run_id == run.info.run_id  # nothing new was started
    assert not (tmp_path / "pwned").exists()


def test_a_run_in_a_dirty_git_tree_records_that_and_the_diff(
    make_config, tmp_path, client, monkeypatch
) -> None:
    """Faults: the dirty state not recorded (a run from uncommitted code looks like the
    commit's), or the diff that would explain it not kept."""
    import subprocess

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "train_me.py").write_text("lr = 0.1\n")
    subprocess.run([*git, "add", "train_me.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "start"], check=True)
    (tmp_path / "train_me.py").write_text("lr = 0.2\n")
    monkeypatch.chdir(tmp_path)  # the writer asks git in the launch directory
    execute(make_config("train.epochs=1", "train.print_every=0"), tmp_path / "run")
    run = only_run(client)
    assert run.data.tags["looplab.git.dirty"] == "true"
    assert "+lr = 0.2" in artifact_text(client, run.info.run_id, "git.diff", tmp_path / "dl")


def test_the_recorded_environment_is_plain_text_the_writer_unpickles_without_torch() -> None:
    """Fault: a tag holds torch's TorchVersion (a str subclass): unpickling the start message
    then imports torch in the writer process, seconds in which the run is not yet created."""
    import pickle
    import pickletools

    from looplab.run.records import environment_tags

    tags = environment_tags()
    assert all(type(value) is str for value in tags.values()), tags
    globals_named = [
        arg for op, arg, _ in pickletools.genops(pickle.dumps(tags)) if "GLOBAL" in op.name
    ]
    assert globals_named == []
