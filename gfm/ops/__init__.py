"""EDGE: the workflow's steps and the services around them, for the CLI, the flows and DVC stages.

One function per step (``tune_step``, ``train_step``, ``evaluate_step``, ``register_step``,
``promote_step``, and the jump benchmark's ``jump_step``); steps hand each other files (``Layout``) and MLflow ids, never live objects.
Also here: the Optuna study (``study``), the forecast pruner (``pruning``: ``ForecastPruner``,
``load_forecaster``), DVC versioning (``versioning``) and the local team stack (``stack``).
Imports optuna (only ``study``, ``claims`` and ``pruning``), the dvc CLI and ``gfm.tracking``;
never prefect or typer.
"""

from gfm.ops.evaluate import MODEL_METRICS, evaluate_step, model_metrics, score
from gfm.ops.jumps import bench_settings, jump_step, log_jumps
from gfm.ops.layout import (
    STEPS,
    Layout,
    dataset_version,
    dvc_repo,
    layout,
    open_dataset,
    override_sources,
    read_json,
    read_tuned,
)
from gfm.ops.promote import promote_step, register_step
from gfm.ops.pruning import ForecastPruner, load_forecaster
from gfm.ops.stack import redact
from gfm.ops.train import train_step
from gfm.ops.tune import tune_step, tune_worker_step

__all__ = [
    "MODEL_METRICS",
    "STEPS",
    "bench_settings",
    "ForecastPruner",
    "Layout",
    "dataset_version",
    "dvc_repo",
    "evaluate_step",
    "jump_step",
    "layout",
    "load_forecaster",
    "log_jumps",
    "model_metrics",
    "open_dataset",
    "override_sources",
    "promote_step",
    "read_json",
    "read_tuned",
    "redact",
    "register_step",
    "score",
    "train_step",
    "tune_step",
    "tune_worker_step",
]
