"""Forecasters as MLflow pyfunc models: the ``gfm.saved`` folder logged as the model's one artifact.

No pickled code is involved: the pyfunc model is logged as models-from-code (``_pyfunc_entry.py``,
three lines) with the forecaster folder of ``gfm.saved`` (``forecaster.json`` + safetensors) as
its artifact ``forecaster``, rebuilt by ``gfm.saved.load``; loading needs gfm importable and no
network.

``predict`` takes the request frame of ``gfm.tracking.frames`` (one row per checkpoint 0..M,
``w`` observed on rows 0..k, null after; ``lr``, ``optimizer``, ``record_every``, ``hp_*`` on
every row; ``layer``, ``kind``, ``fan_in`` lists on row 0) and returns one row per forecast
checkpoint k+1..M: ``checkpoint``, ``t``, ``w``. ``docs/serving.md`` shows both in use.
"""

from __future__ import annotations

import importlib.metadata
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types.schema import AnyType, Array, ColSpec, Schema

import gfm
from gfm import saved
from gfm.forecaster import Forecaster, Prefix
from gfm.tracking.frames import (
    HPARAM_KEYS,
    HPARAM_PREFIX,
    forecast_frame,
    frame_to_forecast,
    frame_to_prefix,
    prefix_to_frame,
)

ARTIFACT_KEY = "forecaster"
_ENTRY = Path(__file__).with_name("_pyfunc_entry.py")


# ----------------------------------------------------------------------------- pyfunc


class ForecasterModel(PythonModel):
    """The pyfunc face of a forecaster folder: request frame in, answer frame out."""

    def load_context(self, context: PythonModelContext) -> None:
        """Rebuild the forecaster from the ``forecaster`` artifact folder."""
        self.forecaster = saved.load(context.artifacts[ARTIFACT_KEY])

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Forecast checkpoints k+1..M of the run described by ``model_input``.

        Args:
            context: MLflow's context (unused: the forecaster was built in ``load_context``).
            model_input: the request frame (``gfm.tracking.frames``), one row per checkpoint.
            params: unused.

        Returns:
            ``checkpoint``, ``t``, ``w`` for each forecast checkpoint.

        Raises:
            MlflowException: INVALID_PARAMETER_VALUE (HTTP 400 from the scoring server) when the
                frame is malformed; the message is ``frame_to_prefix``'s and names the column.
        """
        try:
            prefix = frame_to_prefix(model_input)
        except (TypeError, ValueError) as err:
            raise MlflowException.invalid_parameter_value(str(err)) from err
        return forecast_frame(self.forecaster, prefix)


def signature() -> ModelSignature:
    """The request/answer schema, written out instead of inferred from one example.

    Every input column is optional to MLflow, so that a malformed request reaches
    ``frame_to_prefix`` and is refused with its message naming the column (a required column
    makes MLflow answer a missing one with a dump of the whole schema instead). Inference
    would fix the ``hp_*`` columns to the example's optimizer. ``record_every`` has no type to
    MLflow (``AnyType``): as a long, MLflow's JSON parsing would truncate 3.9 to 3 before the
    model could refuse it (``frame_to_prefix`` requires a positive integer).
    """
    hp_types = {"nesterov": "boolean"}
    inputs = [
        ColSpec("long", "checkpoint", required=False),
        ColSpec(Array("double"), "w", required=False),
        ColSpec("double", "lr", required=False),
        ColSpec("string", "optimizer", required=False),
        ColSpec(AnyType(), "record_every", required=False),
        ColSpec("string", "task", required=False),
        *(
            ColSpec(hp_types.get(k, "double"), HPARAM_PREFIX + k, required=False)
            for k in HPARAM_KEYS
        ),
        ColSpec(Array("string"), "layer", required=False),
        ColSpec(Array("string"), "kind", required=False),
        ColSpec(Array("long"), "fan_in", required=False),
        ColSpec(Array("long"), "index", required=False),
        ColSpec(Array("string"), "shape", required=False),
    ]
    outputs = [
        ColSpec("long", "checkpoint"),
        ColSpec("double", "t"),
        ColSpec(Array("double"), "w"),
    ]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def pip_requirements() -> list[str]:
    """Pinned requirements of the serving environment, recorded only (never installed here)."""
    reqs = [f"gfm=={gfm.__version__}"]
    for dist in ("torch", "torchdiffeq", "safetensors", "numpy", "pandas", "pyarrow", "mlflow"):
        try:
            reqs.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            reqs.append(dist)
    return reqs


def log_forecaster(
    forecaster: Forecaster,
    name: str = "model",
    *,
    input_example: pd.DataFrame | Prefix | None = None,
    registered_model_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> ModelInfo:
    """Log a forecaster as a pyfunc model (models-from-code + its folder as the one artifact).

    Args:
        forecaster: a forecaster whose class is a known kind (``gfm.saved.kinds``).
        name: the logged model's name inside the run.
        input_example: a request frame or a ``Prefix`` (converted with ``prefix_to_frame``);
            MLflow stores it and checks at logging time that the model answers it.
        registered_model_name: register the model under this name too (prefer
            ``gfm.tracking.register``, which also copies run tags to the version).
        tags: tags of the logged model.

    Returns:
        MLflow's ``ModelInfo``; ``model_uri`` (``models:/m-<id>``) goes to ``register``.

    Raises:
        ValueError: the forecaster's class is not a known kind.
    """
    example = prefix_to_frame(input_example) if isinstance(input_example, Prefix) else input_example
    with tempfile.TemporaryDirectory(prefix="gfm-forecaster-") as tmp:
        folder = saved.save(forecaster, Path(tmp) / ARTIFACT_KEY)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(_ENTRY),
            artifacts={ARTIFACT_KEY: str(folder)},
            signature=signature(),
            input_example=example,
            pip_requirements=pip_requirements(),
            registered_model_name=registered_model_name,
            tags=dict(tags) if tags else None,
        )


def predict(model_uri: str, prefix: Prefix) -> np.ndarray:
    """Forecast with a logged or registered model through its pyfunc face.

    Args:
        model_uri: ``models:/gfm@champion``, ``models:/gfm/3``, ``runs:/<id>/model``, ...
        prefix: the observed start of one run.

    Returns:
        Forecast weights of checkpoints k+1..M, (M - k, D) float32.
    """
    model = mlflow.pyfunc.load_model(model_uri)
    return frame_to_forecast(model.predict(prefix_to_frame(prefix)))
