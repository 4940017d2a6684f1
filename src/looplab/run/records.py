"""What a run records about itself besides its epochs: its data (digest, MLflow dataset
input), its preprocessing, and the versions and platform a rerun must match."""

from __future__ import annotations

import functools
import json

import torch
from omegaconf import DictConfig

from looplab.core import data as datasets
from looplab.core import tables
from looplab.run.parts import Parts
from looplab.run.prepare import table_of


def describe_data(cfg: DictConfig, parts: Parts | None = None) -> tables.DataRecord:
    """The data record of a plain config's data set (its table is read once per process;
    `parts.data` is the user's own data's function)."""
    return tables.describe_data(table_of(cfg, parts))


def dataset_input(record: tables.DataRecord) -> dict[str, str]:
    """The fields of an MLflow dataset input: the UI's Dataset column shows name and digest."""

    return {
        "name": record.name,
        "digest": record.digest,
        "source_type": record.source_type,
        "source": json.dumps({"uri": record.source}),
        "schema": record.mlflow_schema(),
        "profile": json.dumps(
            {"num_rows": record.rows, "num_elements": record.rows * len(record.columns)}
        ),
        "context": "training",
    }


def preprocessing(info: datasets.SplitData) -> str:
    """What a trained model needs to score new rows, as JSON for `preprocessing.json`: the task,
    the class order, the feature columns in order, the scaler's and the target's statistics."""

    return json.dumps(
        {
            "task": info.task,
            "classes": info.classes,
            "features": info.feature_names,
            "scaler_mean": info.scaler_mean,
            "scaler_scale": info.scaler_scale,
            "fill_values": info.fill_values,  # dataset.missing=mean: before the scaler
            "target_mean": info.target_mean,
            "target_std": info.target_std,
            "target": info.target_name,
            "example": info.example,  # raw rows: the logged model's input example
        },
        indent=1,
    )


@functools.cache
def environment_tags() -> dict[str, str]:
    """What a rerun must match to give the same numbers: versions and platform (torch's
    threads are the `torch.threads` param)."""
    import platform
    import sys
    from importlib.metadata import PackageNotFoundError, version

    def installed(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    return {
        "looplab.version.python": platform.python_version(),
        # str(): torch's TorchVersion would make the writer import torch to unpickle it
        "looplab.version.torch": str(torch.__version__),
        "looplab.version.mlflow": installed("mlflow"),
        "looplab.version.hydra": installed("hydra-core"),
        "looplab.version.looplab": installed("looplab"),
        "looplab.platform": f"{sys.platform} {platform.machine()} {platform.platform(terse=True)}",
    }
