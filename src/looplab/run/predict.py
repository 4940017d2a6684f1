"""A trained run's network with its preprocessing, for new rows: what `looplab predict` and
the logged MLflow model (`tracking/model_out.py`) both score with.

Built from the three files every FINISHED run leaves: `model.pt` (the weights),
`preprocessing.json` (the columns, the scaler, the classes) and `config.yaml` (which network).
New rows go through what the training rows went through, and nothing else: the same columns
in the same order, the training split's fill values and scaler, then the network; the answer
is in the table's own terms (class names, or the target's units).
"""

from __future__ import annotations

import json
import pydoc
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from looplab.core.errors import ConfigError, DataError
from looplab.core.model import initial_parameters, module_network
from looplab.core.schema import hidden_widths

SHOWN_ROWS = 5  # rows (and columns) named in an error


class Predictor:
    """A run's network and preprocessing, loaded from its files (`core.paths.MODEL_FILES`)."""

    def __init__(self, folder: Path | str) -> None:
        folder = Path(folder)
        self.prep = json.loads((folder / "preprocessing.json").read_text(encoding="utf-8"))
        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
        self.features: list[str] = self.prep["features"]
        self.task: str = self.prep["task"]
        self.classes: list[str] = self.prep["classes"]
        dataset = config["dataset"]
        self.ignored = {self.prep.get("target"), *dataset.get("drop", [])} - {None}
        # How the training CSV was read: a new table is read the same way.
        self.sep, self.encoding = dataset.get("sep") or ",", dataset.get("encoding") or "utf-8"
        self.dtype = getattr(torch, config["train"]["dtype"])
        n_outputs = len(self.classes) if self.task == "multiclass" else 1
        self.network = network(config["model"], len(self.features), n_outputs, self.dtype)
        state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
        self.network.load_state_dict(state)
        self.network.eval()

    def outputs(self) -> list[tuple[str, str]]:
        """The answer's columns and their MLflow types: the prediction, and for classes the
        probability of each."""
        if self.task == "regression":
            return [("prediction", "double")]
        return [("prediction", "string")] + [(f"probability_{c}", "double") for c in self.classes]

    def matrix(self, table: pd.DataFrame, source: str = "the input") -> np.ndarray:
        """The feature columns of `table`, checked and filled as training did; DataError names
        the columns missing or unknown, the cells that are not numbers or are empty."""
        columns = [str(c) for c in table.columns]
        missing = [c for c in self.features if c not in columns]
        unknown = [c for c in columns if c not in self.features and c not in self.ignored]
        if missing or unknown:
            parts = [f"lacks column(s) {listed(missing)}"] if missing else []
            if unknown:
                parts.append(f"has column(s) the model was not trained on: {listed(unknown)}")
            raise DataError(
                f"{source} {' and '.join(parts)}; the model takes {listed(self.features)}"
            )
        features = table.set_axis(columns, axis=1)[self.features]
        numbers = features.apply(pd.to_numeric, errors="coerce")
        wrong = numbers.isna() & features.notna()
        if wrong.any().any():
            column = str(wrong.any().idxmax())
            row = int(np.flatnonzero(wrong[column].to_numpy())[0])
            raise DataError(
                f"{source}: column {column} holds a value that is not a number "
                f"({features[column].iloc[row]!r}, data row {row + 1})"
            )
        x = numbers.to_numpy(dtype=np.float64)
        if self.prep.get("fill_values") is not None:  # dataset.missing=mean: as training did
            rows, cols = np.nonzero(np.isnan(x))
            x[rows, cols] = np.asarray(self.prep["fill_values"])[cols]
        bad = ~np.isfinite(x)
        if bad.any():
            rows = np.flatnonzero(bad.any(axis=1)) + 1
            raise DataError(
                f"{source}: empty or infinite cells in {len(rows)} row(s) (data rows "
                f"{listed([str(r) for r in rows])}); "
                "the model was trained without a fill for them (dataset.missing=mean has one)"
            )
        return x

    def predict(self, table: pd.DataFrame, source: str = "the input") -> pd.DataFrame:
        """One answer a row: the class name (and each class's probability), or the value in
        the target's units."""
        x = (self.matrix(table, source) - self.prep["scaler_mean"]) / self.prep["scaler_scale"]
        with torch.no_grad():
            logits = self.network(torch.as_tensor(x, dtype=self.dtype)).double()
        if self.task == "regression":
            values = logits[:, 0].numpy() * self.prep["target_std"] + self.prep["target_mean"]
            return pd.DataFrame({"prediction": values})
        if self.task == "binary":
            p = torch.sigmoid(logits[:, 0])
            probabilities = torch.stack([1 - p, p], dim=1).numpy()
        else:
            probabilities = torch.softmax(logits, dim=1).numpy()
        answer = pd.DataFrame({"prediction": np.asarray(self.classes)[probabilities.argmax(1)]})
        for index, name in enumerate(self.classes):
            answer[f"probability_{name}"] = probabilities[:, index]
        return answer


def listed(names: list[str], most: int = SHOWN_ROWS) -> str:
    """Names for a message: the first few, and how many in all."""
    shown = ", ".join(names[:most])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > most else shown


def network(model: dict[str, Any], n_features: int, n_outputs: int, dtype: torch.dtype) -> Any:
    """The run's network, untrained, to load `model.pt` into: the built-in one as its torch.nn
    twin (`model.pt` holds the twin's names for both implementations), or the user's own
    (`model._target_`, imported by its dotted name and called as training called it)."""
    target = model.get("_target_")
    if target is None:
        sizes = [n_features, *hidden_widths(model["width"], model.get("hidden")), n_outputs]
        layers = initial_parameters(sizes, "default", dtype, torch.Generator().manual_seed(0))
        return module_network(layers, model["activation"])
    factory = pydoc.locate(str(target))
    if not callable(factory):
        raise ConfigError(
            f"model._target_={target} is not importable here: install the package that "
            "trained this model (or run from its folder)"
        )
    keys = {k: v for k, v in model.items() if not str(k).startswith("_")}
    return factory(n_features=n_features, n_outputs=n_outputs, **keys).to(dtype=dtype)
