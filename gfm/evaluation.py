"""Evaluate forecasters side by side on held-out runs: a tidy table, horizon errors and summaries.

One row per method × run × observed fraction (``evaluate``); error vs horizon (``horizon_table``);
mean ± std per method × task × optimizer × fraction × split (``summarize``); Markdown
(``to_markdown``). Metrics are those of ``gfm.metrics``; plots live in ``gfm.plots``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl
import torch

from gfm.data.schema import RunRecord
from gfm.forecaster import Forecaster, Prefix, observed_index
from gfm.metrics import Score, downstream, horizon_mse, mae, mse, rel_mse

__all__ = [
    "COLUMNS",
    "GROUP",
    "evaluate",
    "held_out",
    "horizon_table",
    "summarize",
    "to_markdown",
]

COLUMNS = [
    "method",
    "task",
    "optimizer",
    "arch",
    "run_id",
    "seed",
    "observed_fraction",
    "k",
    "M",
    "split",
    "mse_final",
    "mae_final",
    "rel_mse_persistence",
    "downstream_loss",
    "downstream_acc",
    "true_final_loss",
    "true_final_acc",
    "last_observed_loss",
    "last_observed_acc",
    "forecast_seconds",
    "horizon_t",
    "horizon_mse",
    "horizon_mse_persistence",
]
GROUP = ["method", "task", "optimizer", "observed_fraction", "split"]
_METRICS = [
    "mse_final",
    "mae_final",
    "rel_mse_persistence",
    "downstream_loss",
    "downstream_acc",
    "true_final_acc",
    "forecast_seconds",
]
_SCHEMA = {
    "method": pl.String,
    "task": pl.String,
    "optimizer": pl.String,
    "arch": pl.String,
    "run_id": pl.String,
    "seed": pl.Int64,
    "observed_fraction": pl.Float64,
    "k": pl.Int64,
    "M": pl.Int64,
    "split": pl.String,
    **{
        c: pl.Float64
        for c in COLUMNS
        if c.endswith(("_final", "_persistence", "_loss", "_acc", "_seconds"))
    },
    "horizon_t": pl.List(pl.Float64),
    "horizon_mse": pl.List(pl.Float64),
    "horizon_mse_persistence": pl.List(pl.Float64),
}


def _check_inputs(
    forecasters: Mapping[str, Forecaster],
    runs: Sequence[RunRecord],
    fractions: Sequence[float],
    split: str,
    score: Score | None,
) -> None:
    if not isinstance(forecasters, Mapping) or not forecasters:
        raise ValueError(
            f"`forecasters` must be a non-empty mapping name -> Forecaster, got {forecasters!r}"
        )
    for name, f in forecasters.items():
        if not callable(getattr(f, "forecast", None)):
            raise TypeError(
                f"`forecasters[{name!r}]` must have a forecast(prefix, t) method, "
                f"got {type(f).__name__}"
            )
    if not isinstance(runs, Sequence):
        raise TypeError(f"`runs` must be a Sequence[RunRecord], got {type(runs).__name__}")
    if not fractions or any(not 0.0 < float(f) < 1.0 for f in fractions):
        raise ValueError(
            f"`fractions` must be a non-empty list of values in (0, 1), got {fractions!r}"
        )
    if not isinstance(split, str) or not split:
        raise ValueError(f"`split` must be a non-empty string, got {split!r}")
    if score is not None and not callable(score):
        raise TypeError(
            f"`score` must be callable as score(record, w) or None, got {type(score).__name__}"
        )


def evaluate(
    forecasters: Mapping[str, Forecaster],
    runs: Sequence[RunRecord],
    fractions: Sequence[float],
    *,
    split: str,
    score: Score | None = None,
    horizons: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> pl.DataFrame:
    """Forecast every run from every observed fraction with every method and score the result.

        k = observed_index(M, f);  ŵ = forecaster.forecast(w_0..w_k, t),  t = (k+1..M)/M (or 1)
        mse_final = MSE(ŵ(1), w_M),  rel_mse_persistence = MSE(ŵ(1), w_M) / MSE(w_k, w_M)

    Runs are read one at a time (``runs[i]``), so a lazy disk-backed sequence stays lazy.

    Args:
        forecasters: name → fitted forecaster; the name fills the ``method`` column.
        runs: the runs to forecast (e.g. a test split).
        fractions: observed fractions f in (0, 1).
        split: label of the split (``seed``, ``architecture``, ``optimizer``, ...) for the table.
        score: ``score(record, w) -> (loss, acc)`` on held-out data; when None the downstream
            columns are NaN.
        horizons: forecast every later recorded step (error vs horizon) instead of t = 1 only.
        progress: called as ``progress(done, total)`` after each run (the caller's progress bar).

    Returns:
        One row per method × run × fraction with the columns ``COLUMNS``: identifiers; ``k`` and
        ``M``; ``mse_final``, ``mae_final``, ``rel_mse_persistence``; ``downstream_loss/acc``
        of the forecast final weights; ``true_final_loss/acc`` and ``last_observed_loss/acc``:
        ``score`` at w_M and w_k when given (comparable to ``downstream_*``), else the run's
        recorded ``val_loss``/``val_acc`` at steps M and k; ``forecast_seconds`` (wall time of
        the forecast call); ``horizon_t``, ``horizon_mse`` and ``horizon_mse_persistence``
        (lists over the target times).

    Raises:
        TypeError: a forecaster without ``forecast``, or ``runs`` not a sequence.
        ValueError: empty forecasters, fractions outside (0, 1), a forecast of the wrong shape.
    """
    _check_inputs(forecasters, runs, fractions, split, score)
    rows: list[dict[str, Any]] = []
    for i in range(len(runs)):
        record = runs[i]  # one run in memory at a time
        rows += _evaluate_run(forecasters, record, fractions, split, score, horizons)
        if progress is not None:
            progress(i + 1, len(runs))
    return (
        pl.DataFrame(rows, schema=_SCHEMA, orient="row") if rows else pl.DataFrame(schema=_SCHEMA)
    )


def _evaluate_run(
    forecasters: Mapping[str, Forecaster],
    record: RunRecord,
    fractions: Sequence[float],
    split: str,
    score: Score | None,
    horizons: bool,
) -> list[dict[str, Any]]:
    W = record.weights  # (M+1, D)
    M = W.shape[0] - 1
    spec = record.spec
    if score is not None:
        true_final = downstream(score, record, W[M])
    else:
        true_final = (float(record.val_loss[M]), float(record.val_acc[M]))
    rows = []
    for f in fractions:
        k = observed_index(M, float(f))
        prefix = Prefix.from_record(record, k)
        steps = np.arange(k + 1, M + 1) if horizons else np.array([M])
        t = torch.from_numpy(steps / M)
        truth = W[steps]  # (T, D)
        persist = np.broadcast_to(W[k], truth.shape)
        h_persist = horizon_mse(persist, truth)
        if score is not None:
            last = downstream(score, record, W[k])
        else:
            last = (float(record.val_loss[k]), float(record.val_acc[k]))
        for name, forecaster in forecasters.items():
            start = time.perf_counter()
            w_hat = forecaster.forecast(prefix, t)
            seconds = time.perf_counter() - start
            w_hat = (
                w_hat.detach().to("cpu").numpy()
                if isinstance(w_hat, torch.Tensor)
                else np.asarray(w_hat)
            )
            if w_hat.shape != truth.shape:
                raise ValueError(
                    f"evaluate: forecaster {name!r} must return shape (T, D) = {truth.shape} "
                    f"for run {spec.run_id!r}, got {w_hat.shape}"
                )
            if not np.all(np.isfinite(w_hat)):
                warnings.warn(
                    f"evaluate: forecaster {name!r} returned non-finite weights for run "
                    f"{spec.run_id!r} at fraction {f}; its errors are NaN/inf",
                    stacklevel=3,
                )
            final = w_hat[-1]
            ds = downstream(score, record, final) if score is not None else (math.nan, math.nan)
            rows.append(
                {
                    "method": name,
                    "task": spec.task,
                    "optimizer": spec.optimizer,
                    "arch": spec.arch,
                    "run_id": spec.run_id,
                    "seed": int(spec.seed),
                    "observed_fraction": float(f),
                    "k": int(k),
                    "M": int(M),
                    "split": split,
                    "mse_final": mse(final, W[M]),
                    "mae_final": mae(final, W[M]),
                    "rel_mse_persistence": rel_mse(final, W[M], W[k]),
                    "downstream_loss": ds[0],
                    "downstream_acc": ds[1],
                    "true_final_loss": true_final[0],
                    "true_final_acc": true_final[1],
                    "last_observed_loss": last[0],
                    "last_observed_acc": last[1],
                    "forecast_seconds": seconds,
                    "horizon_t": (steps / M).tolist(),
                    "horizon_mse": horizon_mse(w_hat, truth).tolist(),
                    "horizon_mse_persistence": h_persist.tolist(),
                }
            )
    return rows


def horizon_table(df: pl.DataFrame) -> pl.DataFrame:
    """Error vs horizon: the per-time MSE lists of ``evaluate`` averaged over runs.

        mse(h) = mean_runs MSE(ŵ(t_{k+h}), w_{k+h}),  rel_mse_persistence(h) = mse(h) / mean_runs
        MSE(w_k, w_{k+h})

    Args:
        df: the table of ``evaluate``.

    Returns:
        Columns ``method, task, optimizer, split, observed_fraction, horizon`` (steps after k),
        ``t``, ``mse``, ``mse_std``, ``mse_persistence``, ``rel_mse_persistence``, ``n_runs``,
        sorted by group and horizon. Runs with different M give separate rows (their t differ).

    Raises:
        ValueError: ``df`` lacks the horizon columns.
    """
    need = {"horizon_t", "horizon_mse", "horizon_mse_persistence", *GROUP}
    if missing := sorted(need - set(df.columns)):
        raise ValueError(f"`df` must be a table from evaluate(), missing columns {missing}")
    keys = ["method", "task", "optimizer", "split", "observed_fraction"]
    long = (
        df.select([*keys, "run_id", "horizon_t", "horizon_mse", "horizon_mse_persistence"])
        .with_columns(pl.int_ranges(1, pl.col("horizon_t").list.len() + 1).alias("horizon"))
        .explode(["horizon_t", "horizon_mse", "horizon_mse_persistence", "horizon"])
        .rename({"horizon_t": "t"})
    )
    return (
        long.group_by([*keys, "horizon", "t"])
        .agg(
            pl.col("horizon_mse").mean().alias("mse"),
            pl.col("horizon_mse").std().alias("mse_std"),
            pl.col("horizon_mse_persistence").mean().alias("mse_persistence"),
            pl.col("run_id").n_unique().alias("n_runs"),
        )
        .with_columns((pl.col("mse") / pl.col("mse_persistence")).alias("rel_mse_persistence"))
        .select(
            [
                *keys,
                "horizon",
                "t",
                "mse",
                "mse_std",
                "mse_persistence",
                "rel_mse_persistence",
                "n_runs",
            ]
        )
        .sort([*keys, "horizon", "t"])  # group_by does not keep order
    )


def summarize(df: pl.DataFrame) -> pl.DataFrame:
    """Mean ± std of each metric per method × task × optimizer × observed fraction × split.

    Args:
        df: the table of ``evaluate``.

    Returns:
        The ``GROUP`` columns, ``n_runs``, then ``<metric>_mean`` and ``<metric>_std`` for
        ``mse_final, mae_final, rel_mse_persistence, downstream_loss, downstream_acc,
        true_final_acc, forecast_seconds`` and ``rel_mse_persistence_median``; sorted by group.

    Raises:
        ValueError: ``df`` lacks a needed column.
    """
    if missing := sorted({*GROUP, *_METRICS} - set(df.columns)):
        raise ValueError(f"`df` must be a table from evaluate(), missing columns {missing}")
    aggs = [pl.len().alias("n_runs")]
    for m in _METRICS:
        aggs += [pl.col(m).mean().alias(f"{m}_mean"), pl.col(m).std().alias(f"{m}_std")]
    aggs.append(pl.col("rel_mse_persistence").median().alias("rel_mse_persistence_median"))
    return df.group_by(GROUP).agg(aggs).sort(GROUP)


HELD_OUT = {  # held_out column -> the evaluate() column it averages
    "last_acc": "last_observed_acc",
    "forecast_acc": "downstream_acc",
    "final_acc": "true_final_acc",
    "last_loss": "last_observed_loss",
    "forecast_loss": "downstream_loss",
    "final_loss": "true_final_loss",
}


def held_out(df: pl.DataFrame, method: str) -> pl.DataFrame:
    """How well the task network does with each set of weights, per task × observed fraction.

    For the test runs of one method: the held-out accuracy and loss of the network loaded with
    the last observed checkpoint w_k (where training stood), with the method's forecast of the
    final weights ŵ(1), and with the true final weights w_M (mean over runs; accuracy NaN for
    regression tasks). A forecast worth using lands nearer the true final than w_k does.

    Args:
        df: the table of ``evaluate``, scored downstream (``score``), or with recorded curves.
        method: the method whose forecasts fill the ``forecast_*`` columns.

    Returns:
        ``task``, ``observed_fraction``, ``n_runs`` and ``last_acc``, ``forecast_acc``,
        ``final_acc``, ``last_loss``, ``forecast_loss``, ``final_loss``; sorted.

    Raises:
        ValueError: ``df`` has no rows of ``method``.
    """
    rows = df.filter(pl.col("method") == method)
    if not len(rows):
        raise ValueError(f"`df` has no rows of method {method!r}")
    aggs = [pl.col(src).fill_nan(None).mean().alias(dst) for dst, src in HELD_OUT.items()]
    return (
        rows.group_by("task", "observed_fraction")
        .agg(pl.len().alias("n_runs"), *aggs)
        .with_columns(pl.col(c).fill_null(math.nan) for c in HELD_OUT)
        .sort("task", "observed_fraction")
    )


def _cell(value: Any, precision: int) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{precision}g}"
    return str(value).replace("|", "\\|")


def to_markdown(df: pl.DataFrame, *, precision: int = 4) -> str:
    """A GitHub Markdown table of ``df``; ``x_mean``/``x_std`` column pairs become ``x`` = "m ± s".

    List columns (the horizon lists) are left out.

    Args:
        df: any table, e.g. from ``summarize``.
        precision: significant digits of floats.

    Returns:
        The table as text, one line per row, ending in a newline.
    """
    cols = [c for c in df.columns if not isinstance(df.schema[c], pl.List)]
    header: list[str] = []
    getters: list[Any] = []
    for c in cols:
        if c.endswith("_std") and c[:-4] + "_mean" in cols:
            continue
        if c.endswith("_mean") and c[:-5] + "_std" in cols:
            base = c[:-5]
            header.append(base)
            getters.append(
                lambda row, b=base: (
                    f"{_cell(row[b + '_mean'], precision)} ± {_cell(row[b + '_std'], precision)}"
                )
            )
        else:
            header.append(c)
            getters.append(lambda row, c=c: _cell(row[c], precision))
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in df.select(cols).iter_rows(named=True):
        lines.append("| " + " | ".join(g(row) for g in getters) + " |")
    return "\n".join(lines) + "\n"
