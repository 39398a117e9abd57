"""Models-from-code entry of the gfm pyfunc model: MLflow runs this file when it loads the model."""

from mlflow.models import set_model

from gfm.tracking.pyfunc import ForecasterModel

set_model(ForecasterModel())
