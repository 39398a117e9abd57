"""Forecasters as MLflow pyfunc models: a folder of config + weights, rebuilt by a kind registry.

A forecaster folder (``save_forecaster`` / ``load_forecaster``) holds:

    forecaster.json   {"format": 1, "kind": "<kind>", "class": "<module.Class>", "gfm_version": ...}
    model/            what ``forecaster.save(path)`` wrote (JSON config + safetensors weights)

``kind`` picks the class from a name -> class registry (``gfm`` -> ``gfm.model.GFM``, each key of
``gfm.baselines.BASELINES``, plus classes added with ``register_forecaster``); ``class`` is
recorded for people only and never imported. No pickled code is involved: the pyfunc model is
logged as models-from-code (``_pyfunc_entry.py``, three lines), and the folder above is its one
artifact, so loading needs gfm importable and no network.

``predict`` takes the request frame of ``gfm.tracking.frames`` (one row per checkpoint 0..M,
``w`` observed on rows 0..k, null after; ``lr``, ``optimizer``, ``record_every``, ``hp_*`` on
every row; ``layer``, ``kind``, ``fan_in`` lists on row 0) and returns one row per forecast
checkpoint k+1..M: ``checkpoint``, ``t``, ``w``. ``docs/serving.md`` shows both in use.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types.schema import Array, ColSpec, Schema

import gfm
from gfm.forecaster import Forecaster, Prefix
from gfm.tracking.frames import (
    HPARAM_KEYS,
    HPARAM_PREFIX,
    forecast_frame,
    frame_to_forecast,
    frame_to_prefix,
    prefix_to_frame,
)

MANIFEST = "forecaster.json"
MODEL_DIR = "model"
FORMAT = 1
ARTIFACT_KEY = "forecaster"
_ENTRY = Path(__file__).with_name("_pyfunc_entry.py")
_EXTRA: dict[str, type] = {}
_C = TypeVar("_C", bound=type)


# ----------------------------------------------------------------------------- kind registry


def register_forecaster(kind: str) -> Callable[[_C], _C]:
    """Class decorator: make ``kind`` load with ``cls.load(path)`` (for forecasters outside gfm).

    Args:
        kind: the name written to ``forecaster.json``; must not shadow a built-in kind.

    Raises:
        ValueError: ``kind`` is empty or already names a different class.
    """

    def add(cls: _C) -> _C:
        if not kind or not isinstance(kind, str):
            raise ValueError(f"`kind` must be a non-empty string, got {kind!r}")
        known = _EXTRA.get(kind)
        if known is not None and _qualname(known) != _qualname(cls):
            raise ValueError(
                f"`kind` {kind!r} already names {_qualname(known)}, cannot also name "
                f"{_qualname(cls)}"
            )
        _EXTRA[kind] = cls
        return cls

    return add


def forecaster_kinds() -> dict[str, type]:
    """All loadable kinds: ``gfm`` (gfm.model.GFM), the baselines, and registered extras.

    The gfm modules are imported here, lazily, so that this package loads without them.
    """
    kinds: dict[str, type] = {}
    model = _optional_module("gfm.model")
    if model is not None and hasattr(model, "GFM"):
        kinds["gfm"] = model.GFM
    baselines = _optional_module("gfm.baselines")
    if baselines is not None and hasattr(baselines, "BASELINES"):
        kinds.update(dict(baselines.BASELINES))
    clash = sorted(k for k in _EXTRA if k in kinds and kinds[k] is not _EXTRA[k])
    if clash:
        raise ValueError(f"registered forecaster kinds {clash} shadow built-in kinds")
    kinds.update(_EXTRA)
    return kinds


def _optional_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name == name:  # the module itself is absent; an import error inside it is a bug
            return None
        raise


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _kind_of(forecaster: Forecaster, kinds: Mapping[str, type]) -> str:
    name = getattr(forecaster, "name", None)
    if isinstance(name, str) and kinds.get(name) is type(forecaster):
        return name
    matches = [k for k, cls in kinds.items() if cls is type(forecaster)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ValueError(
            f"{_qualname(type(forecaster))} is not a known forecaster kind; known kinds are "
            f"{sorted(kinds)} (add others with @register_forecaster(kind))"
        )
    raise ValueError(
        f"{_qualname(type(forecaster))} is registered under several kinds {matches}; set its "
        f"`name` to one of them"
    )


# ----------------------------------------------------------------------------- folder


def save_forecaster(forecaster: Forecaster, path: str | Path) -> Path:
    """Write a forecaster folder (module docstring) atomically: built aside, then renamed.

    Args:
        forecaster: a forecaster whose class is a known kind.
        path: the folder to create; it must not exist yet.

    Returns:
        The folder.

    Raises:
        FileExistsError: ``path`` exists.
        ValueError: the forecaster's class is not a known kind.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path}: forecaster folder already exists")
    kind = _kind_of(forecaster, forecaster_kinds())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        forecaster.save(tmp / MODEL_DIR)
        manifest = {
            "format": FORMAT,
            "kind": kind,
            "class": _qualname(type(forecaster)),
            "gfm_version": gfm.__version__,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_forecaster(path: str | Path) -> Forecaster:
    """Rebuild a forecaster from its folder: ``kind`` -> class -> ``cls.load(path / "model")``.

    The class's ``load`` must read everything it needs into memory (callers may delete the
    folder afterwards).

    Raises:
        FileNotFoundError: the folder or its ``forecaster.json`` is missing.
        ValueError: ``forecaster.json`` is malformed or names an unknown kind (the message lists
            the known ones).
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: not found; is {path} a forecaster folder?")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{manifest_path}: not valid JSON: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else manifest
        raise ValueError(f"{manifest_path}: field `format` must be {FORMAT}, got {got!r}")
    kind = manifest.get("kind")
    kinds = forecaster_kinds()
    if kind not in kinds:
        raise ValueError(
            f"{manifest_path}: field `kind` must be one of {sorted(kinds)}, got {kind!r}"
        )
    return kinds[kind].load(path / MODEL_DIR)


# ----------------------------------------------------------------------------- pyfunc


class ForecasterModel(PythonModel):
    """The pyfunc face of a forecaster folder: request frame in, answer frame out."""

    def load_context(self, context: PythonModelContext) -> None:
        """Rebuild the forecaster from the ``forecaster`` artifact folder."""
        self.forecaster = load_forecaster(context.artifacts[ARTIFACT_KEY])

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

    Inference would make every column of the example required and fix the ``hp_*`` columns to
    the example's optimizer; this schema accepts any optimizer and keeps optional columns
    optional (``w`` is null on future rows, metadata lists on rows 1..M).
    """
    hp_types = {"nesterov": "boolean"}
    inputs = [
        ColSpec("long", "checkpoint", required=False),
        ColSpec(Array("double"), "w", required=False),
        ColSpec("double", "lr"),
        ColSpec("string", "optimizer"),
        ColSpec("long", "record_every"),
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
        forecaster: a forecaster whose class is a known kind (``forecaster_kinds``).
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
        folder = save_forecaster(forecaster, Path(tmp) / ARTIFACT_KEY)
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
