"""The MLflow edge of gfm: runs and their provenance, the pyfunc model, the registry gate.

The only package of gfm that imports mlflow (and it never imports prefect or typer).

    configure(cfg.tracking); with start_run("train", dataset_version=v): log_params_flat(...)
    info = log_forecaster(model, input_example=prefix)        # logs the gfm.saved folder
    promote(register(info.model_uri, cfg.registry), metrics, cfg.registry)
    load(cfg=cfg.registry) / load_pyfunc(cfg=cfg.registry)   # models:/gfm@champion
    runs_table(sort="test/rel_mse_persistence")             # gfm runs
"""

from gfm.tracking.frames import (
    forecast_frame,
    frame_to_forecast,
    frame_to_prefix,
    prefix_to_frame,
)
from gfm.tracking.jumps import jump_metrics, log_jump_benchmark, read_summary
from gfm.tracking.pyfunc import (
    ForecasterModel,
    log_forecaster,
    predict,
)
from gfm.tracking.registry import (
    Decision,
    PromotionError,
    find_version,
    load,
    load_model,
    load_pyfunc,
    missing_artifacts,
    model_uri,
    promote,
    register,
)
from gfm.tracking.runs import (
    configure,
    find_active_run,
    flatten_params,
    git_commit,
    log_dataset,
    log_history,
    log_metrics,
    log_params_flat,
    log_table_and_plots,
    resume_run,
    set_tags,
    start_run,
    use_store,
)
from gfm.tracking.search import runs_table

__all__ = [
    "Decision",
    "ForecasterModel",
    "PromotionError",
    "configure",
    "find_active_run",
    "find_version",
    "flatten_params",
    "forecast_frame",
    "frame_to_forecast",
    "frame_to_prefix",
    "git_commit",
    "jump_metrics",
    "load",
    "load_model",
    "load_pyfunc",
    "log_dataset",
    "log_forecaster",
    "log_history",
    "log_jump_benchmark",
    "log_metrics",
    "log_params_flat",
    "log_table_and_plots",
    "missing_artifacts",
    "model_uri",
    "predict",
    "prefix_to_frame",
    "promote",
    "read_summary",
    "register",
    "resume_run",
    "runs_table",
    "set_tags",
    "start_run",
    "use_store",
]
