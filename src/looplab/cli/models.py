"""`looplab predict` and `looplab register`: a run's trained model, out of the store.

    looplab predict RUN_ID new.csv --out predictions.csv   # the run's logged MLflow model
    looplab register RUN_ID NAME                           # a Model Registry version

Both take a sweep's parent for its best child. A run without a logged model (a sweep's other
jobs, `tracking.log_model=none`) gets one from its artifacts when it is registered; `predict`
scores with its artifacts directly. Everything comes from the store, never from local files.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from looplab.core.errors import DataError, TrackingError
from looplab.core.paths import importable_here
from looplab.run.tags import BEST_RUN_ID, MODEL_ID, ROLE, RUN_DIR


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    predict = commands.add_parser(
        "predict",
        parents=[common],
        help="score the rows of a CSV with a run's model",
        description="Load RUN_ID's model from the MLflow store (its logged model, or its "
        "model.pt and preprocessing.json) and predict every row of FILE.csv: the columns of "
        "the table it trained on (its target and dropped columns may be there, and are copied "
        "beside the answers). A sweep's parent stands for its best child.",
    )
    predict.add_argument("run_id", metavar="RUN_ID")
    predict.add_argument("file", type=Path, metavar="FILE.csv")
    predict.add_argument("--out", type=Path, metavar="FILE", help="write the CSV here")
    predict.set_defaults(run=predict_command)

    register = commands.add_parser(
        "register",
        parents=[common],
        help="a Model Registry version of a run's model",
        description="Create a version of the registered model NAME (created if new) from "
        "RUN_ID's logged model, logging one from its artifacts first if it has none. A "
        "sweep's parent stands for its best child. Serve it with `mlflow models serve -m "
        "models:/NAME/VERSION --env-manager local` from looplab's environment.",
    )
    register.add_argument("run_id", metavar="RUN_ID")
    register.add_argument("name", metavar="NAME")
    register.set_defaults(run=register_command)


def trained_run(uri: str, experiment: str, run_id: str) -> Any:
    """The FINISHED run whose model is meant: `run_id`, or a sweep parent's best child."""
    from looplab.tracking import reader

    run = reader.get_run(uri, experiment, run_id)
    if run.data.tags.get(ROLE) == "sweep":
        best = run.data.tags.get(BEST_RUN_ID)
        if not best:
            raise TrackingError(f"sweep {run_id} has no best child: none of its jobs finished")
        run = reader.get_run(uri, experiment, best)
    if run.info.status != "FINISHED":
        raise TrackingError(
            f"run {run.info.run_id} is {run.info.status}: only a FINISHED run has a model"
        )
    return run


def predict_command(args: argparse.Namespace) -> int:
    import pandas as pd

    from looplab.tracking.store import command_settings

    if not args.file.is_file():
        raise DataError(f"CSV file not found: {args.file}")
    with command_settings(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's advice on type hints and pickles
        run = trained_run(args.tracking_uri, args.experiment, args.run_id)
        predictor, source = load_predictor(args.tracking_uri, run)
    table = read_rows(args.file, predictor.sep, predictor.encoding)
    answers = predictor.predict(table, str(args.file))
    kept = [c for c in table.columns if str(c) in predictor.ignored]  # ids, the target
    result = pd.concat([table[kept].reset_index(drop=True), answers], axis=1)
    if args.out:
        result.to_csv(args.out, index=False)
    else:
        result.to_csv(sys.stdout, index=False)
    where = f" into {args.out}" if args.out else ""
    print(f"{len(result)} rows predicted{where} by {source}", file=sys.stderr)
    return 0


def read_rows(file: Path, sep: str = ",", encoding: str = "utf-8") -> Any:
    """The CSV to score, read as the run read its training CSV (its separator and encoding;
    empty cells are NaN)."""
    import pandas as pd

    from looplab.core.tables import separator

    try:
        table = pd.read_csv(file, sep=separator(sep), encoding=encoding)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read CSV file {file}: {str(error).strip() or 'empty'}") from None
    if table.empty:
        raise DataError(f"CSV file has no rows to predict: {file}")
    return table.drop(columns=[c for c in table.columns if table[c].isna().all()])


def load_predictor(uri: str, run: Any) -> tuple[Any, str]:
    """The run's `Predictor`: through its logged MLflow model when it has one (as any MLflow
    user would load it), else from its artifacts."""
    import mlflow

    from looplab.run.predict import Predictor

    importable_here()  # a user's own network is imported by its name
    model_id = run.data.tags.get(MODEL_ID)
    if model_id:
        mlflow.set_tracking_uri(uri)
        loaded = mlflow.pyfunc.load_model(f"models:/{model_id}")
        return loaded.unwrap_python_model().predictor, f"models:/{model_id} (run {run.info.run_id})"
    from looplab.tracking.model_out import run_files
    from looplab.tracking.reader import client

    with tempfile.TemporaryDirectory(prefix="looplab-predict-") as folder:
        try:
            run_files(client(uri), run.info.run_id, None, Path(folder))
        except Exception as error:
            raise TrackingError(
                f"run {run.info.run_id} has no model in the store: {error}"
            ) from None
        return Predictor(folder), f"the model.pt of run {run.info.run_id}"


def register_command(args: argparse.Namespace) -> int:
    import mlflow
    from mlflow.exceptions import MlflowException

    from looplab.tracking.model_out import log_run_model
    from looplab.tracking.reader import client
    from looplab.tracking.store import command_settings

    uri = args.tracking_uri
    told = os.environ.get("MLFLOW_TRACKING_URI") == uri  # the shell says the store already
    mlflow_client = client(uri)
    mlflow.set_tracking_uri(uri)  # the registry finds `models:/<id>` in the default store
    with command_settings(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = trained_run(uri, args.experiment, args.run_id)
        run_id = run.info.run_id
        model_id = run.data.tags.get(MODEL_ID)
        if not model_id:
            model_id = log_run_model(mlflow_client, run_id, run.data.tags.get(RUN_DIR))
        try:
            try:
                mlflow_client.create_registered_model(args.name)
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            version = mlflow_client.create_model_version(
                args.name, f"models:/{model_id}", run_id=run_id, model_id=model_id
            )
        except MlflowException as error:
            first = str(error.message).strip().splitlines()[0]
            raise TrackingError(f"cannot register {args.name!r}: {first}") from None
    serve = f"mlflow models serve -m models:/{args.name}/{version.version} --env-manager local"
    store = "" if told else f"MLFLOW_TRACKING_URI={uri} "
    print(
        f"registered {args.name} version {version.version}: models:/{model_id} of run {run_id} "
        f"({run.info.run_name}); serve it with `{store}{serve}`"
    )
    return 0
