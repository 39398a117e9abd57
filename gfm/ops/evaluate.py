"""The evaluate step: the trained model and the workflow's baselines on the test part, to files and MLflow."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from gfm import saved
from gfm.config import Settings
from gfm.data.trajectories import Trajectories
from gfm.forecaster import Forecaster, Prefix, observed_index, target_times
from gfm.ops.layout import (
    TIMINGS,
    dataset_version,
    layout,
    open_dataset,
    read_json,
    run_name,
    write_step,
)

log = logging.getLogger("gfm.ops")


MODEL_METRICS = (
    "mse_final",
    "rel_mse_persistence",
    "rel_mse_persistence_median",
    "acc_gap",
    "acc_forecast",
    "acc_last",
    "acc_final",
)

# ----------------------------------------------------------------------------- evaluate


def model_metrics(table: pl.DataFrame, method: str, prefix: str = "test") -> dict[str, float]:
    """Summary metrics of one method from an evaluation table (``gfm.evaluation.evaluate``).

        mse_final = mean over rows,  rel_mse_persistence = mean over rows (and its median),
        acc_gap = mean over rows of downstream_acc − true_final_acc (classification runs),
        acc_forecast, acc_last, acc_final = mean held-out accuracy of the task network with the
            forecast final weights, the last observed checkpoint, the true final weights

    Rows are every test run × observed fraction; the promotion compares these same numbers.
    The mean of rel_mse_persistence is dominated by the few runs that barely move after the
    observed prefix (persistence's error near 0): the median is the robust summary.

    Returns:
        ``{f"{prefix}/mse_final": ..., ...}``; a metric without finite values is left out.
    """
    rows = table.filter(pl.col("method") == method)
    if not len(rows):
        raise ValueError(f"`table` has no rows of method {method!r}")

    def column(name: str) -> np.ndarray:
        return rows[name].to_numpy().astype(np.float64)

    def mean(values: np.ndarray) -> float:
        return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan

    rel = column("rel_mse_persistence")
    values = {
        "mse_final": mean(column("mse_final")),
        "rel_mse_persistence": mean(rel),
        "rel_mse_persistence_median": float(np.nanmedian(rel)),
        "acc_gap": mean(column("downstream_acc") - column("true_final_acc")),
        "acc_forecast": mean(column("downstream_acc")),
        "acc_last": mean(column("last_observed_acc")),
        "acc_final": mean(column("true_final_acc")),
    }
    return {f"{prefix}/{k}": v for k, v in values.items() if math.isfinite(v)}


def score(forecaster: Forecaster, settings: Settings, ds: Trajectories) -> dict[str, float]:
    """Test metrics of one forecaster on the test part of ``train.split`` (``model_metrics``).

    The same computation as the model's own row in ``evaluate_step``, call for call: the same
    runs, fractions and target times (every later checkpoint: a fixed-step solver's grid, and
    so its final weights, depends on them), on one thread with the pinned kernels. Promotion
    re-scores the champion with it on the current data and gets, bit for bit, the value the
    champion was registered with when data and code are unchanged.
    """
    from gfm.bench.forecast import score_for
    from gfm.evaluation import evaluate

    _, _, test = ds.parts(settings.train.split)
    downstream = settings.evaluate.downstream and "acc" in settings.registry.metric
    table = evaluate(
        {"gfm": forecaster},
        test,
        settings.evaluate.observed_fractions,
        split=settings.train.split,
        score=score_for(settings) if downstream else None,
    )
    return model_metrics(table, "gfm")


def _trajectories_plot(test: Trajectories, models: Mapping[str, Forecaster], path: Path) -> Path:
    from gfm.plots import plot_trajectories

    i = int(np.argmin(test.runs["n_params"].to_numpy()))
    record = test[i]
    M = record.weights.shape[0] - 1
    k = observed_index(M, 0.25)
    prefix = Prefix.from_record(record, k)
    t = target_times(prefix)
    forecasts = {name: f.forecast(prefix, t) for name, f in models.items()}
    return plot_trajectories(record, forecasts, t, k, path)


def evaluate_step(
    settings: Settings,
    *,
    model_dir: Path | None = None,
    train_info: Path | None = None,
    repo: Path | None = None,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Evaluate the trained model and ``evaluate.workflow_baselines`` on the test part.

    Calls ``gfm.bench.forecast.fit_and_evaluate`` (as the benchmark does) with the trained model as the
    fitted ``gfm``; the baselines are fitted on the same train part. MLflow: the test metrics,
    results table and plots are added to the training run named in train.json (so one run
    holds the model, its params and its test scores), or to a new ``evaluate`` run without it.

    Args:
        settings: all settings.
        model_dir: the forecaster folder (default ``train.model_dir``).
        train_info: the train step's record naming its run (default: reports/local/train.json,
            if present).
        repo: folder whose git commit a new run records.
        overrides: who set each overridden key (``override_sources``); an override of
            ``data.seeds``/``data.splits.*`` that contradicts the dataset's split is refused.

    Returns:
        The step's record (reports/local/evaluate.json): ``metrics`` (the model's ``test/*``),
        ``baselines`` (``test/<method>/*``), ``run_id``, ``dataset_version``, ``split``,
        ``n_test_runs``, ``model_dir``; metrics.json holds all but the id and the path.
    """
    from gfm import tracking
    from gfm.bench.forecast import fit_and_evaluate
    from gfm.evaluation import held_out, horizon_table, summarize, to_markdown
    from gfm.plots import plot_horizon

    out = layout(settings)
    model_dir = Path(model_dir or out.model_dir)
    train_info = Path(train_info) if train_info is not None else out.train_run
    info = read_json(train_info, "train") if train_info.is_file() else {}
    ds = open_dataset(settings, overrides=overrides)
    version = dataset_version(ds.root)
    _, _, test = ds.parts(settings.train.split)
    model = saved.load(model_dir)
    split = settings.train.split
    names = ["gfm", *[b for b in settings.evaluate.workflow_baselines if b != "gfm"]]
    table, costs = fit_and_evaluate(
        settings,
        ds,
        method_names=names,
        splits=[split],
        fitted={"gfm": model},
        downstream=settings.evaluate.downstream,
    )
    metrics = model_metrics(table, "gfm")
    baselines: dict[str, float] = {}
    for name in names[1:]:
        baselines |= model_metrics(table, name, prefix=f"test/{name}")
    summary = summarize(table)
    horizon = horizon_table(table)
    out.reports.mkdir(parents=True, exist_ok=True)
    flat = table.select(
        [c for c in table.columns if not isinstance(table.schema[c], pl.List) and c not in TIMINGS]
    )
    flat.write_csv(out.results_csv)
    held = held_out(table, "gfm")
    md = _results_markdown(table, summary, held, to_markdown)
    out.results_md.write_text(md)
    horizon.write_csv(out.horizon_csv)
    plot_horizon(horizon, out.horizon_png, metric="rel_mse_persistence")
    _trajectories_plot(test, {"gfm": model}, out.trajectories_png)
    doc = {
        "metrics": metrics,
        "baselines": baselines,
        "dataset_version": version,
        "split": split,
        "n_test_runs": len(test),
        "held_out": held.to_dicts(),
        "model_dir": str(model_dir),
        "run_id": info.get("run_id"),
    }
    tracking.configure(settings.tracking)
    tags = {
        "gfm.evaluate.split": split,
        "gfm.evaluate.baselines": ",".join(names[1:]),
        "gfm.evaluate.fractions": ",".join(str(f) for f in settings.evaluate.observed_fractions),
        "gfm.evaluate.dataset_version": version,
    }
    if info.get("run_id"):
        context = tracking.resume_run(info["run_id"])
    else:
        context = tracking.start_run(
            run_name("evaluate", "gfm", version),
            dataset_version=version,
            repo=repo,
            tags={"gfm.step": "evaluate"},
        )
    with context as run:
        tracking.set_tags(tags)
        tracking.log_dataset(version, ds.root, test.runs, context="evaluation")
        tracking.log_metrics({**metrics, **baselines})
        tracking.log_table_and_plots(
            summary,
            "results",
            plots={"horizon": out.horizon_png, "trajectories": out.trajectories_png},
            artifact_path="evaluation",
        )
        tracking.log_table_and_plots(costs, "costs", artifact_path="evaluation")
        doc["run_id"] = run.info.run_id
    write_step(out, "evaluate", doc)
    log.info("evaluated: %s -> %s", metrics, out.metrics_json)
    return doc


def _results_markdown(
    table: pl.DataFrame, summary: pl.DataFrame, held: pl.DataFrame, to_markdown: Any
) -> str:
    """The overall table per method, the task network's held-out scores, then the summary."""
    overall = (
        table.group_by("method")
        .agg(
            pl.len().alias("rows"),
            pl.col("mse_final").mean().alias("mse_final"),
            pl.col("rel_mse_persistence").median().alias("rel_mse_persistence_median"),
            pl.col("downstream_acc").fill_nan(None).mean().alias("acc_forecast"),
        )
        .sort("rel_mse_persistence_median")
    )
    return (
        "## Overall (test runs x observed fractions)\n\n"
        + to_markdown(overall)
        + "\n`rel_mse_persistence_median`: the median over runs of the final weights' MSE divided "
        "by persistence's (the last observed checkpoint kept as the forecast); below 1 beats it. "
        "Its mean is not shown: a few runs that barely move after the observed prefix make it "
        "huge. `acc_forecast`: held-out accuracy of the task network with the forecast final "
        "weights (classification tasks).\n"
        + "\n## Held-out scores of the task network: last checkpoint, GFM's forecast, true final\n\n"
        + to_markdown(held)
        + "\n## Per task, optimizer and observed fraction\n\n"
        + to_markdown(summary.select([c for c in summary.columns if not c.startswith("forecast")]))
    )
