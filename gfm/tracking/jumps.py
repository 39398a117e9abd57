"""The MLflow record of a jump benchmark (``gfm bench jumps``): its settings, speedups and files.

Metrics are named ``<task>_<arch>/<method>_<stat>`` (``digits_mlp_32/gfm_speedup_mean``) per
panel of ``gfm.bench.jumps.summarize``, and ``accelerate/<method>_<stat>`` averaged over panels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import mlflow
import polars as pl

from gfm.bench.jumps import AccelerateSettings
from gfm.config import Settings
from gfm.tracking.runs import configure, log_metrics, log_params_flat, start_run

__all__ = ["STATS", "jump_metrics", "log_jump_benchmark", "read_summary"]

STATS = (  # summary columns logged as metrics
    "speedup_mean",
    "speedup_of_means",
    "steps_mean",
    "steps_std",
    "steps_saved",
    "reached",
    "final_acc",
    "acc_vs_base",
    "spike_max",
    "n_accepted",
    "wall_s",
    "forecast_s",
)


def read_summary(path: str | Path) -> pl.DataFrame:
    """The summary table ``gfm.bench.jumps.write`` wrote.

    Architecture names are read as text and the stats as floats, even an empty column.
    """
    return pl.read_csv(
        path, schema_overrides={"arch": pl.String, **dict.fromkeys(STATS, pl.Float64)}
    )


def jump_metrics(summary: pl.DataFrame) -> dict[str, float]:
    """``{"<task>_<arch>/<method>_<stat>": value}`` plus means over panels ``accelerate/...``.

    Missing values (a method that never reached the target has no speedup) are left out.
    """
    out: dict[str, float] = {}
    for row in summary.iter_rows(named=True):
        for stat in STATS:
            value = row.get(stat)
            if value is not None and math.isfinite(float(value)):
                out[f"{row['task']}_{row['arch']}/{row['method']}_{stat}"] = float(value)
    means = summary.group_by("method").agg(
        *(pl.col(s).mean() for s in STATS if s in summary.columns)
    )
    for row in means.iter_rows(named=True):
        for stat in STATS:
            value = row.get(stat)
            if value is not None and math.isfinite(float(value)):
                out[f"accelerate/{row['method']}_{stat}"] = float(value)
    return out


def log_jump_benchmark(
    settings: Settings,
    cfg: AccelerateSettings,
    paths: Mapping[str, str | Path],
    *,
    fitted: bool = False,
    dataset_version: str | None = None,
    repo: str | Path | None = None,
    run_name: str = "accelerate",
) -> str:
    """Log a written jump benchmark as one MLflow run in ``tracking.experiment``.

    Params: the ``accelerate`` section (dotted, ``accelerate.period``); metrics:
    ``jump_metrics`` of the summary; artifacts: every file of ``paths`` under
    ``accelerate/``; tags: ``gfm.step=accelerate``, the dataset version and git commit.

    Args:
        settings: the settings the benchmark ran with (``tracking`` locates the store).
        cfg: the benchmark's own settings (logged as ``accelerate.<key>``).
        paths: ``gfm.bench.jumps.write``'s files; must hold ``summary``.
        fitted: GFM was fitted for the benchmark: its ``gfm`` settings are logged too.
        dataset_version: the dataset's version (``gfm.ops.dataset_version``), if any.
        repo: the folder whose git commit the run records.
        run_name: the run's name.

    Returns:
        The run id.

    Raises:
        FileNotFoundError: a file of ``paths`` is missing.
    """
    missing = [str(p) for p in paths.values() if not Path(p).is_file()]
    if missing or "summary" not in paths:
        raise FileNotFoundError(
            f"log_jump_benchmark: `paths` must name existing files, got {missing}"
        )
    summary = read_summary(paths["summary"])
    configure(settings.tracking)
    tags = {"gfm.step": "accelerate"}
    with start_run(run_name, dataset_version=dataset_version, tags=tags, repo=repo) as run:
        log_params_flat(cfg, "accelerate")
        if fitted:
            log_params_flat(settings.gfm, "gfm")  # the GFM fitted for the benchmark
        log_metrics(jump_metrics(summary))
        for path in paths.values():
            mlflow.log_artifact(str(path), "accelerate")
    return run.info.run_id
