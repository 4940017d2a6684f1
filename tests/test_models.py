"""A model out: each FINISHED run's network, with looplab's preprocessing, as an MLflow logged
model that loads with `mlflow.pyfunc`, predicts from raw rows (`looplab predict`), registers
(`looplab register`) and answers HTTP requests when `mlflow models serve` serves it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import store_uri
from mlflow.tracking import MlflowClient
from sklearn.model_selection import train_test_split
from test_parts import a_users_folder
from test_parts import looplab_in as looplab

from looplab.core.data import encode_labels_with_classes, infer_task
from looplab.core.tables import load_table
from looplab.server import free_port

LOOPLAB = str(Path(sys.executable).parent / "looplab")
MLFLOW = str(Path(sys.executable).parent / "mlflow")
QUIET = ("train.print_every=0",)
CSV = Path(__file__).resolve().parents[1] / "src" / "looplab" / "resources" / "breast_cancer.csv"
pytestmark = pytest.mark.slow


def runs_of(client: MlflowClient) -> list:
    return client.search_runs([client.get_experiment_by_name("looplab").experiment_id])


def validation_rows(client: MlflowClient, run) -> tuple[pd.DataFrame, pd.Series]:
    """The run's validation rows as read from its table, before any preprocessing: the split
    looplab made (the same seed, test_size and stratification), taken from the raw table."""
    import yaml

    text = client.download_artifacts(run.info.run_id, "config.yaml")
    config = yaml.safe_load(Path(text).read_text())
    dataset = config["dataset"]
    path = str(CSV) if str(dataset["path"]).startswith("pkg://") else dataset["path"]
    features, labels = load_table(dataset["name"], path, dataset["target"], dataset["drop"])
    features = features.loc[:, [c for c in features.columns if features[c].notna().any()]]
    task = infer_task(labels, dataset["task"])
    y, _ = encode_labels_with_classes(labels, task)
    stratify = y if task != "regression" else None
    _, val = train_test_split(
        np.arange(len(y)),
        test_size=dataset["test_size"],
        random_state=config["seed"],
        stratify=stratify,
    )
    return features.iloc[val].reset_index(drop=True), labels.iloc[val].reset_index(drop=True)


@pytest.mark.parametrize(
    ("overrides", "quality"),
    [
        (("experiment=seed",), "val_accuracy"),  # the tutorial's CSV: class names B and M
        (
            ("dataset=iris", "model.hidden=[8]", "model.impl=module", "train.epochs=20"),
            "val_accuracy",
        ),
        (("dataset=diabetes", "model.width=8", "update=adam", "train.lr=0.05"), "val_rmse"),
    ],
)
def test_a_finished_runs_logged_model_scores_raw_rows_as_the_run_did(
    run_cli, tmp_path, overrides, quality
) -> None:
    """The logged model, loaded as any MLflow user loads it, scores the run's own validation
    rows, raw, to the run's own logged val_accuracy (or val_rmse, in the target's units), and
    it is linked to its run, data set and final metrics (the Models tab). Faults: new rows not
    scaled as the training rows were, columns fed out of order, the class order swapped, a
    regression answer left standardised, the model not linked to its run or metrics."""
    done = run_cli(*QUIET, *overrides)
    assert done.returncode == 0, done.stderr
    client = MlflowClient(store_uri(tmp_path))
    (run,) = runs_of(client)
    model_id = run.data.tags["looplab.model_id"]
    model = client.get_logged_model(model_id)
    assert model.source_run_id == run.info.run_id and model.status.to_proto() == 2  # READY
    linked = {m.key: m for m in model.metrics}
    assert set(linked) == set(run.data.metrics)
    assert linked[quality].value == run.data.metrics[quality]
    assert linked[quality].dataset_digest == run.data.tags["looplab.data.digest"]
    for key in run.data.metrics:  # linking re-sent the last epoch: no point is there twice
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps))

    mlflow.set_tracking_uri(store_uri(tmp_path))
    loaded = mlflow.pyfunc.load_model(f"models:/{model_id}")
    rows, truth = validation_rows(client, run)
    answers = loaded.predict(rows)
    if quality == "val_rmse":
        rmse = float(np.sqrt(np.mean((answers["prediction"].to_numpy() - truth.to_numpy()) ** 2)))
        assert rmse == pytest.approx(run.data.metrics["val_rmse"], rel=1e-5)
    else:
        assert list(answers["prediction"].unique()) != []
        accuracy = float(np.mean(answers["prediction"].to_numpy() == truth.astype(str).to_numpy()))
        assert accuracy == pytest.approx(run.data.metrics["val_accuracy"], abs=1e-6)  # float32
        probabilities = answers.filter(like="probability_").to_numpy()
        assert np.allclose(probabilities.sum(axis=1), 1.0)
    signature = loaded.metadata.get_input_schema().input_names()
    assert signature == list(rows.columns)  # the training table's columns, in order


def test_predict_scores_a_csv_from_the_store_and_refuses_what_does_not_fit(
    run_cli, tmp_path
) -> None:
    """`looplab predict RUN_ID FILE.csv --out` from the store alone: the tutorial's own CSV
    (its id and target kept beside the answers); missing and unknown columns, a word in a
    number column, and an empty cell are each one line, exit 1, no traceback, no file.
    Faults: a refused table half-written, a traceback, the wrong columns accepted."""
    done = run_cli(*QUIET, "experiment=seed")
    assert done.returncode == 0, done.stderr
    run_id = runs_of(MlflowClient(store_uri(tmp_path)))[0].info.run_id
    elsewhere = tmp_path / "elsewhere"  # the store alone: no run folder where we stand
    elsewhere.mkdir()
    shutil.move(tmp_path / "outputs" / "runs", tmp_path / "runs-moved")
    uri = ("--tracking-uri", store_uri(tmp_path))
    out = elsewhere / "answers.csv"
    scored = looplab(elsewhere, "predict", run_id, str(CSV), "--out", str(out), *uri)
    assert scored.returncode == 0, scored.stderr
    answers = pd.read_csv(out)
    assert list(answers.columns[:3]) == ["id", "diagnosis", "prediction"]
    assert (answers["prediction"] == answers["diagnosis"]).mean() > 0.9
    assert f"569 rows predicted into {out}" in scored.stderr

    table = pd.read_csv(CSV).drop(columns=["Unnamed: 32"])
    bad = {
        "lacks.csv": (table.drop(columns=["radius_mean"]), ["lacks column(s) radius_mean"]),
        "extra.csv": (table.assign(colour="red"), ["not trained on: colour"]),
        "word.csv": (
            table.astype({"area_mean": object}).assign(
                area_mean=lambda t: t.area_mean.where(t.index != 2, "big")
            ),
            ["column area_mean", "'big'", "data row 3"],
        ),
        "empty.csv": (
            table.assign(area_mean=lambda t: t.area_mean.where(t.index != 4)),
            ["data rows 5"],
        ),
    }
    for name, (frame, words) in bad.items():
        frame.to_csv(elsewhere / name, index=False)
        refused = looplab(elsewhere, "predict", run_id, name, "--out", "no.csv", *uri)
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 1 and len(lines) == 1, refused.stderr
        assert lines[0].startswith("looplab: error: ") and all(w in lines[0] for w in words), lines
        assert not (elsewhere / "no.csv").exists()


def test_a_sweep_logs_its_best_childs_model_and_register_serves_it(run_cli, tmp_path) -> None:
    """A sweep logs one model, its best child's (its jobs pay nothing for models); `looplab
    register PARENT NAME` makes a version of it, another child gets one when registered, and
    `mlflow models serve` answers an HTTP request with what `looplab predict` says. Faults:
    every job logging a model, the parent not standing for its best child, a registered
    version whose source does not load, a served model that answers otherwise."""
    done = run_cli("-m", *QUIET, "experiment=seed", "train.lr=0.01,0.1", "train.epochs=5")
    assert done.returncode == 0, done.stderr
    client = MlflowClient(store_uri(tmp_path))
    runs = runs_of(client)
    parent = next(r for r in runs if r.data.tags.get("looplab.role") == "sweep")
    best = parent.data.tags["looplab.best_run_id"]
    with_models = [r for r in runs if "looplab.model_id" in r.data.tags]
    assert [r.info.run_id for r in with_models] == [best]
    assert f"looplab register {parent.info.run_id} NAME" in done.stdout
    uri = ("--tracking-uri", store_uri(tmp_path))
    first = looplab(tmp_path, "register", parent.info.run_id, "tutorial", *uri)
    assert first.returncode == 0, first.stderr
    assert "registered tutorial version 1" in first.stdout
    other = next(r.info.run_id for r in runs if r.info.run_id not in (best, parent.info.run_id))
    second = looplab(tmp_path, "register", other, "tutorial", *uri)
    assert second.returncode == 0 and "version 2" in second.stdout, second.stderr
    versions = {str(v.version): v for v in client.search_model_versions("name='tutorial'")}
    assert {versions["1"].run_id, versions["2"].run_id} == {best, other}

    rows = pd.read_csv(CSV).drop(columns=["Unnamed: 32", "id", "diagnosis"]).head(4)
    rows.to_csv(tmp_path / "four.csv", index=False)
    predicted = looplab(tmp_path, "predict", parent.info.run_id, "four.csv", *uri)
    assert predicted.returncode == 0, predicted.stderr
    expected = pd.read_csv(pd.io.common.StringIO(predicted.stdout))
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": store_uri(tmp_path),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    serve = [MLFLOW, "models", "serve", "-m", "models:/tutorial/1", "--env-manager", "local"]
    server = subprocess.Popen(
        [*serve, "-p", str(port)], cwd=tmp_path, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        answer = ask(
            port, {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
        )
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    served = pd.DataFrame(answer["predictions"])
    assert list(served.columns) == list(expected.columns)
    assert list(served["prediction"]) == list(expected["prediction"])
    assert np.allclose(served.filter(like="probability_"), expected.filter(like="probability_"))


def ask(port: int, body: dict, timeout: float = 120) -> dict:
    """POST `body` to a served model's /invocations once it answers /ping."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).read()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    return json.loads(urllib.request.urlopen(request, timeout=60).read())


def test_a_users_own_network_is_logged_and_predicts_from_its_folder(run_cli, tmp_path) -> None:
    """examples/' SmallCNN, a user's own module: its logged model rebuilds the network by its
    `_target_` where the user's package is importable and scores digits' rows as the run did.
    Fault: a user's model logged as the built-in MLP (its weights would not load)."""
    folder = a_users_folder(tmp_path)
    user = ("hydra.searchpath=[file://conf]", "experiment=digits_cnn", "train.epochs=3")
    done = run_cli(*QUIET, *user, cwd=folder)
    assert done.returncode == 0, done.stderr
    client = MlflowClient(store_uri(folder))
    (run,) = runs_of(client)
    rows, truth = validation_rows(client, run)
    rows.assign(target=truth).to_csv(folder / "val.csv", index=False)
    uri = ("--tracking-uri", store_uri(folder))
    scored = looplab(folder, "predict", run.info.run_id, "val.csv", *uri)
    assert scored.returncode == 0, scored.stderr
    answers = pd.read_csv(pd.io.common.StringIO(scored.stdout))
    accuracy = float((answers["prediction"] == answers["target"]).mean())
    assert accuracy == pytest.approx(run.data.metrics["val_accuracy"], abs=1e-6)  # float32


def test_log_model_none_and_offline_runs_log_no_model(run_cli, tmp_path) -> None:
    """`tracking.log_model=none` logs nothing; `looplab predict` then scores from the run's
    artifacts, and `looplab register` makes a model from them. Fault: the setting ignored."""
    done = run_cli(*QUIET, "experiment=seed", "tracking.log_model=none")
    assert done.returncode == 0, done.stderr
    client = MlflowClient(store_uri(tmp_path))
    (run,) = runs_of(client)
    assert "looplab.model_id" not in run.data.tags
    assert client.search_logged_models([run.info.experiment_id]) == []
    uri = ("--tracking-uri", store_uri(tmp_path))
    scored = looplab(tmp_path, "predict", run.info.run_id, str(CSV), *uri)
    assert scored.returncode == 0, scored.stderr
    assert f"by the model.pt of run {run.info.run_id}" in scored.stderr
    assert len(pd.read_csv(pd.io.common.StringIO(scored.stdout))) == 569
    registered = looplab(tmp_path, "register", run.info.run_id, "later", *uri)
    assert registered.returncode == 0 and "registered later version 1" in registered.stdout
    assert len(client.search_logged_models([run.info.experiment_id])) == 1


def test_the_models_tab_lists_the_runs_model_in_a_real_browser(run_cli, tmp_path) -> None:
    """What a user sees: `looplab ui`, then the experiment's Models tab in Chromium lists the
    run's logged model, ready, from its run. Fault: a model logged somewhere the tab does not
    look (another experiment, no source run, left PENDING)."""
    from test_ui_browser import CHROMIUM, first_line, needs_chromium

    if CHROMIUM is None:
        pytest.skip(needs_chromium.kwargs["reason"])
    done = run_cli(*QUIET, "experiment=seed")
    assert done.returncode == 0, done.stderr
    client = MlflowClient(store_uri(tmp_path))
    (run,) = runs_of(client)
    port = free_port()
    ui = subprocess.Popen(
        [LOOPLAB, "ui", "--port", str(port), "--tracking-uri", store_uri(tmp_path)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )  # fmt: skip
    try:
        link = first_line(ui, timeout=120).split(": ", 1)[1].strip()
        models = link.replace("/runs?", "/models?")  # the tab beside Runs
        dom = subprocess.run(
            [
                CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000",
                "--dump-dom", models,
            ],
            capture_output=True, text=True, timeout=180,
        ).stdout  # fmt: skip
    finally:
        ui.send_signal(2)
        ui.wait(timeout=60)
    assert run.data.tags["looplab.model_id"] in dom, dom[-2000:]
    assert ">Ready<" in dom and run.info.run_name in dom
