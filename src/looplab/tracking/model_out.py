"""A run's model as an MLflow logged model: a `pyfunc` (`pyfunc_model.py`) that wraps the
network with looplab's preprocessing, so that `mlflow.pyfunc.load_model`, `mlflow models
serve` and the Model Registry take raw rows with the training table's columns and answer in
its terms.

The model is made of the run's own files (`core.paths.MODEL_FILES`), from its folder or
from its artifacts in the store, so a sweep's best child or any FINISHED run can get one
later. Nothing here imports torch until a model is loaded: the writer logs models.
"""

from __future__ import annotations

import importlib.metadata
import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from looplab.core.paths import MODEL_FILES
from looplab.run.tags import MODEL_ID

MODEL_NAME = "model"  # the logged model's name (the Models tab), and the run's output
MODEL_TYPE = "looplab"
SOURCE = "looplab-train"  # the Models tab's "Logged from"
# What the model needs where it is loaded, pinned to what trained it (looplab itself must be
# installed there: `mlflow models serve --env-manager local` from looplab's environment).
REQUIREMENTS = ("torch", "numpy", "pandas", "scikit-learn", "omegaconf", "pyyaml", "looplab")


def signature(prep: dict[str, Any]) -> Any:
    """Columns in (every feature, a number) and out (the prediction, each class's
    probability), from the run's preprocessing.json."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = [("prediction", "double" if prep["task"] == "regression" else "string")]
    outputs += [(f"probability_{c}", "double") for c in prep["classes"]]
    return ModelSignature(
        inputs=Schema([ColSpec("double", name) for name in prep["features"]]),
        outputs=Schema([ColSpec(kind, name) for name, kind in outputs]),
    )


def example(prep: dict[str, Any]) -> Any:
    """The rows the run kept as its model's input example (as read, before any scaling)."""
    import pandas as pd

    return pd.DataFrame(prep["example"], columns=prep["features"]) if prep.get("example") else None


def pins() -> list[str]:
    """REQUIREMENTS at the versions installed here."""
    found = []
    for package in REQUIREMENTS:
        try:
            found.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(package)
    return found


def run_files(client: Any, run_id: str, folder: str | None, into: Path) -> Path:
    """A folder holding the run's MODEL_FILES: its own folder when they are there (the same
    machine), else its artifacts downloaded from the store into `into`."""
    if folder and all((Path(folder) / name).is_file() for name in MODEL_FILES):
        return Path(folder)
    for name in MODEL_FILES:
        client.download_artifacts(run_id, name, str(into))
    return into


def log_run_model(client: Any, run_id: str, folder: str | None = None) -> str:
    """Log the FINISHED run's model as an MLflow logged model linked to the run, its data set
    and its final metrics (the Models tab lists it); return the model's id. `folder`: the
    run's own folder when at hand. Its metrics are linked at the last epoch."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
    from mlflow.models import Model

    run = client.get_run(run_id)
    with tempfile.TemporaryDirectory(prefix="looplab-model-") as scratch:
        files = run_files(client, run_id, folder, Path(scratch) / "files")
        prep = json.loads((files / "preprocessing.json").read_text(encoding="utf-8"))
        model = client.create_logged_model(
            experiment_id=run.info.experiment_id,
            name=MODEL_NAME,
            source_run_id=run_id,
            params=dict(run.data.params),
            tags={"looplab.run_name": run.info.run_name or "", "mlflow.source.name": SOURCE},
            model_type=MODEL_TYPE,
        )
        try:
            saved = Path(scratch) / "model"
            mlflow.pyfunc.save_model(
                path=str(saved),
                python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                artifacts={name: str(files / name) for name in MODEL_FILES},
                signature=signature(prep),
                input_example=example(prep),
                pip_requirements=pins(),
                mlflow_model=Model(
                    artifact_path=model.artifact_location,
                    model_uuid=model.model_id,
                    run_id=run_id,
                    model_id=model.model_id,
                ),
            )
            client.log_model_artifacts(model.model_id, str(saved))
        except BaseException:
            client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
            raise
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    histories = {key: client.get_metric_history(run_id, key) for key in run.data.metrics}
    last = max((m.step for m in histories.get("val_loss", [])), default=0)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=last)])
    dataset = run.inputs.dataset_inputs[0].dataset if run.inputs.dataset_inputs else None
    linked = [
        Metric(
            m.key,
            m.value,
            m.timestamp,
            m.step,
            run_id=run_id,
            model_id=model.model_id,
            dataset_name=dataset.name if dataset else None,
            dataset_digest=dataset.digest if dataset else None,
        )
        for history in histories.values()
        for m in history
        if m.step == last
    ]
    client.log_batch(run_id, metrics=linked)  # the same points again: MLflow keeps one
    client.set_tag(run_id, MODEL_ID, model.model_id)
    return model.model_id
