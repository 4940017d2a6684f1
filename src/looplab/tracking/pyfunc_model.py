"""The code of every model looplab logs (MLflow's "models from code": this file is copied into
the model and run where it is loaded, never unpickled): the run's network and preprocessing,
`run.predict.Predictor`, over the model's artifacts (the run's `core.paths.MODEL_FILES`)."""

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class LooplabModel(PythonModel):
    def load_context(self, context):
        from looplab.run.predict import Predictor

        self.predictor = Predictor(Path(context.artifacts["model.pt"]).parent)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.predictor.predict(model_input, "the input")


mlflow.models.set_model(LooplabModel())
