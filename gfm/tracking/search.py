"""Runs across experiments and people, as one table: who ran what, on which commit and data.

``runs_table`` is what ``gfm runs`` prints and writes: one row per run with its experiment,
name, user (``mlflow.user``), git commit, dataset version (``gfm.dataset_version``), step
(``gfm.step``: tune, trial, train), status, start time, then the chosen metrics and params.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

import polars as pl
from mlflow import MlflowClient
from mlflow.entities import Run, ViewType

from gfm.tracking.runs import TAG_DATASET_VERSION, TAG_GIT_COMMIT, TAG_USER

TAG_STEP = "gfm.step"
TAG_PARENT = "mlflow.parentRunId"
DEFAULT_METRICS = (
    "test/rel_mse_persistence_median",
    "test/rel_mse_persistence",
    "test/mse_final",
    "val/rel_mse_persistence",
)
ID_COLUMNS = (
    "run_id",
    "experiment",
    "run_name",
    "user",
    "git_commit",
    "dataset_version",
    "step",
    "status",
    "start_time",
)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def _filter(
    filter_string: str, user: str | None, dataset_version: str | None, commit: str | None
) -> str:
    parts = [f"({filter_string})"] if filter_string.strip() else []
    if user:
        parts.append(f"tags.`{TAG_USER}` = {_quote(user)}")
    if dataset_version:
        parts.append(f"tags.`{TAG_DATASET_VERSION}` LIKE {_quote(dataset_version + '%')}")
    if commit:
        parts.append(f"tags.`{TAG_GIT_COMMIT}` LIKE {_quote(commit + '%')}")
    return " and ".join(parts)


def runs_table(  # noqa: PLR0913 - keyword-only filters of one query (`gfm runs`)
    *,
    experiments: Sequence[str] | None = None,
    filter_string: str = "",
    user: str | None = None,
    dataset_version: str | None = None,
    commit: str | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    params: Sequence[str] = (),
    sort: str | None = None,
    descending: bool = False,
    trials: bool = False,
    max_results: int = 1000,
) -> pl.DataFrame:
    """Runs of the current tracking store as a table, sorted by a metric.

    Args:
        experiments: experiment names (default: every active experiment).
        filter_string: an MLflow search filter, e.g. ``"metrics.`test/mse_final` < 0.1"``.
        user: only runs of this user (``mlflow.user``).
        dataset_version: only runs on this dataset version (a prefix is enough).
        commit: only runs on this git commit (a prefix is enough).
        metrics: metric columns (``split/name``); the sort metric is added when missing.
        params: param columns (dotted settings keys, ``gfm.width``).
        sort: the metric (or column) to sort by; runs without it come last. Default: start
            time, newest first.
        descending: sort from the largest value.
        trials: include tuning trials (nested runs); by default only top-level runs.
        max_results: most runs read.

    Returns:
        One row per run: ``ID_COLUMNS``, then the metric and param columns.

    Raises:
        ValueError: an experiment name is unknown (the message lists the known ones).
    """
    client = MlflowClient()
    known = {e.name: e.experiment_id for e in client.search_experiments(ViewType.ACTIVE_ONLY)}
    names = list(experiments) if experiments else sorted(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"experiment(s) {unknown} not found; known: {sorted(known)}")
    columns = list(dict.fromkeys([*metrics, *([sort] if sort and sort not in ID_COLUMNS else [])]))
    runs: list[Run] = []
    if names:
        runs = client.search_runs(
            [known[n] for n in names],
            filter_string=_filter(filter_string, user, dataset_version, commit),
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=max_results,
            order_by=["attributes.start_time DESC"],
        )
    by_id = {v: k for k, v in known.items()}
    rows = []
    for run in runs:
        tags = run.data.tags
        if not trials and TAG_PARENT in tags:
            continue
        row: dict[str, object] = {
            "run_id": run.info.run_id,
            "experiment": by_id.get(run.info.experiment_id, run.info.experiment_id),
            "run_name": run.info.run_name,
            "user": tags.get(TAG_USER, run.info.user_id),
            "git_commit": (tags.get(TAG_GIT_COMMIT) or "")[:10],
            "dataset_version": tags.get(TAG_DATASET_VERSION, ""),
            "step": tags.get(TAG_STEP, ""),
            "status": run.info.status,
            "start_time": datetime.fromtimestamp(run.info.start_time / 1000, UTC).strftime(
                "%Y-%m-%d %H:%M:%S"
            ),
        }
        for name in columns:
            row[name] = run.data.metrics.get(name, math.nan)
        for name in params:
            row[name] = run.data.params.get(name, "")
        rows.append(row)
    schema = {
        **dict.fromkeys(ID_COLUMNS, pl.String),
        **dict.fromkeys(columns, pl.Float64),
        **dict.fromkeys(params, pl.String),
    }
    table = pl.DataFrame(rows, schema=schema, orient="row")
    if sort:
        if sort not in table.columns:
            raise ValueError(f"`sort` must be a metric or one of {list(ID_COLUMNS)}, got {sort!r}")
        key = pl.col(sort).fill_nan(None) if table.schema[sort] == pl.Float64 else pl.col(sort)
        table = table.sort(key, descending=descending, nulls_last=True)
    return table
