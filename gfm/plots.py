"""Figures: forecast trajectories, error vs horizon per method, accuracy vs step with jumps.

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no global
backend state) and written atomically (temp file, then rename).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gfm.data.atomic import atomic_path
from gfm.data.schema import RunRecord
from gfm.forecaster import Prefix

__all__ = ["plot_accuracy_curves", "plot_forecast", "plot_horizon", "plot_trajectories"]


def _save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` atomically (a temp file renamed over it), in path's format."""
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png")
    return path


def _as_array(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def plot_trajectories(
    record: RunRecord,
    forecasts: Mapping[str, Any],
    t: Any,
    k: int,
    path: Path,
    *,
    params: Sequence[int] | None = None,
    n_params: int = 4,
    seed: int = 0,
) -> Path:
    """True trajectory of a few parameters with each method's forecast from step k.

    Args:
        record: the run; its weights (M+1, D) are the truth, drawn at t_i = i/M.
        forecasts: method name → (T, D) forecast weights at times ``t``.
        t: (T,) the forecasts' target times.
        k: last observed checkpoint (a dashed vertical line at t_k).
        path: the image file to write (suffix picks the format, e.g. ``.png``).
        params: which parameters to draw; by default ``n_params`` drawn at random with ``seed``.
        n_params: number of parameters when ``params`` is None.
        seed: seed of that draw.

    Returns:
        ``path``.

    Raises:
        ValueError: a forecast's shape is not (T, D), or a parameter index is out of range.
    """
    W = np.asarray(record.weights, dtype=np.float64)
    M, D = W.shape[0] - 1, W.shape[1]
    tt = _as_array(t).reshape(-1)
    if params is None:
        rng = np.random.default_rng(seed)
        params = sorted(rng.choice(D, size=min(n_params, D), replace=False).tolist())
    if any(not 0 <= p < D for p in params):
        raise ValueError(f"`params` must be indices in [0, {D}), got {list(params)}")
    arrays = {name: _as_array(f) for name, f in forecasts.items()}
    for name, a in arrays.items():
        if a.shape != (len(tt), D):
            raise ValueError(
                f"`forecasts[{name!r}]` must have shape (T, D) = {(len(tt), D)}, got {a.shape}"
            )
    n = len(params)
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(5 * cols, 3 * rows), layout="constrained")
    grid = np.arange(M + 1) / M
    for i, p in enumerate(params):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot(grid, W[:, p], color="black", lw=1.5, label="true")
        for name, a in arrays.items():
            ax.plot(
                np.concatenate([[k / M], tt]),
                np.concatenate([[W[k, p]], a[:, p]]),
                lw=1.0,
                label=name,
            )
        ax.axvline(k / M, color="grey", ls="--", lw=0.8)
        ax.set_title(f"{record.params.layer[p]}[{record.params.index[p]}]", fontsize=9)
        ax.set_xlabel("t")
        if i == 0:
            ax.legend(fontsize=7)
    fig.suptitle(f"{record.spec.run_id}: forecasts from t_k = {k / M:.2f}", fontsize=10)
    return _save(fig, path)


def plot_forecast(
    prefix: Prefix,
    forecast: Any,
    t: Any,
    path: Path,
    *,
    truth: Any | None = None,
    n_params: int = 4,
    seed: int = 0,
) -> Path:
    """The observed path of a few parameters and their forecast to t = 1 (``gfm forecast``).

    Args:
        prefix: the observed checkpoints w_0..w_k (drawn solid at t_i = i/M).
        forecast: (T, D) forecast weights at times ``t`` (drawn from w_k on).
        t: (T,) the target times.
        path: the image file to write (suffix picks the format).
        truth: (M+1, D) the whole run when known (a backtest), drawn thin and grey.
        n_params: parameters drawn, picked at random with ``seed``.
        seed: seed of that pick.

    Raises:
        ValueError: ``forecast`` is not (T, D).
    """
    W = prefix.w.detach().cpu().numpy().astype(np.float64)  # (k+1, D)
    k, M, D = prefix.k, prefix.M, prefix.D
    tt, F = _as_array(t).reshape(-1), _as_array(forecast)
    if F.shape != (len(tt), D):
        raise ValueError(f"`forecast` must have shape (T, D) = {(len(tt), D)}, got {F.shape}")
    params = sorted(np.random.default_rng(seed).choice(D, size=min(n_params, D), replace=False))
    cols = min(len(params), 2)
    rows = (len(params) + cols - 1) // cols
    fig = Figure(figsize=(5 * cols, 3 * rows), layout="constrained")
    for i, p in enumerate(params):
        ax = fig.add_subplot(rows, cols, i + 1)
        if truth is not None:
            full = _as_array(truth)
            ax.plot(np.arange(full.shape[0]) / M, full[:, p], color="grey", lw=0.8, label="true")
        ax.plot(np.arange(k + 1) / M, W[:, p], color="black", lw=1.5, label="observed")
        ax.plot(
            np.concatenate([[k / M], tt]),
            np.concatenate([[W[k, p]], F[:, p]]),
            lw=1.2,
            ls="--",
            label="forecast",
        )
        ax.axvline(k / M, color="grey", ls=":", lw=0.8)
        ax.set_title(f"{prefix.params.layer[p]}[{prefix.params.index[p]}]", fontsize=9)
        ax.set_xlabel("t")
        if i == 0:
            ax.legend(fontsize=7)
    fig.suptitle(f"observed to t_k = {k / M:.2f}, forecast to t = 1 (M = {M})", fontsize=10)
    return _save(fig, path)


def plot_horizon(horizon: pl.DataFrame, path: Path, *, metric: str = "mse") -> Path:
    """Error vs horizon per method, one panel per observed fraction (log scale).

    Rows of ``gfm.evaluation.horizon_table`` are averaged over tasks, optimizers and splits per
    (method, fraction, t); filter the table first to plot one task or split.

    Args:
        horizon: the table of ``gfm.evaluation.horizon_table``.
        path: the image file to write.
        metric: ``mse`` or ``rel_mse_persistence``.

    Returns:
        ``path``.

    Raises:
        ValueError: unknown ``metric`` or a table without the horizon columns.
    """
    metrics = ("mse", "rel_mse_persistence")
    if metric not in metrics:
        raise ValueError(f"`metric` must be one of {list(metrics)}, got {metric!r}")
    if missing := sorted({"method", "observed_fraction", "t", metric} - set(horizon.columns)):
        raise ValueError(
            f"`horizon` must be a table from horizon_table(), missing columns {missing}"
        )
    data = (
        horizon.group_by(["method", "observed_fraction", "t"])
        .agg(pl.col(metric).mean())
        .sort(["method", "observed_fraction", "t"])
    )
    fractions = sorted(data["observed_fraction"].unique().to_list())
    fig = Figure(figsize=(4.5 * max(len(fractions), 1), 3.5), layout="constrained")
    methods = sorted(data["method"].unique().to_list())
    color = {m: f"C{i % 10}" for i, m in enumerate(methods)}  # one colour per method everywhere
    for i, f in enumerate(fractions):
        ax = fig.add_subplot(1, len(fractions), i + 1)
        part = data.filter(pl.col("observed_fraction") == f)
        for method in sorted(part["method"].unique().to_list()):
            m = part.filter(pl.col("method") == method)
            ax.plot(
                m["t"].to_numpy(),
                m[metric].to_numpy(),
                marker=".",
                lw=1.0,
                color=color[method],
                label=method,
            )
        ax.set_yscale("log")
        ax.set_title(f"observed fraction {f:g}", fontsize=9)
        ax.set_xlabel("target time t")
        ax.set_ylabel(metric)
        if i == 0:
            ax.legend(fontsize=7)
    return _save(fig, path)


def plot_accuracy_curves(curves: pl.DataFrame, table: pl.DataFrame, path: Path) -> Path:
    """Seed-mean held-out accuracy vs step per method, one panel per task × arch (jump-ahead).

    Args:
        curves: rows (method, task, arch, seed, step, acc) of ``gfm.bench.jumps.run``.
        table: its per-run table (target_acc, holdout_arch): the target is drawn dashed.
        path: the image file to write.

    Returns:
        ``path``.

    Raises:
        ValueError: a table lacks the columns named above.
    """
    need = {"method", "task", "arch", "seed", "step", "acc"}
    if missing := sorted(need - set(curves.columns)):
        raise ValueError(f"`curves` must have the columns {sorted(need)}, missing {missing}")
    if missing := sorted({"task", "arch", "target_acc", "holdout_arch"} - set(table.columns)):
        raise ValueError(f"`table` must be compare()'s table, missing columns {missing}")
    panels = curves.select("task", "arch").unique(maintain_order=True).rows()
    cols = min(2, max(len(panels), 1))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(5.0 * cols, 3.6 * rows), layout="constrained")
    methods = curves["method"].unique(maintain_order=True).to_list()
    color = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    for i, (task, arch) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        sub = curves.filter(pl.col("task") == task, pl.col("arch") == arch)
        for method in methods:
            m = (
                sub.filter(pl.col("method") == method)
                .group_by("step")
                .agg(pl.col("acc").mean())
                .sort("step")
            )
            if len(m):
                ax.plot(m["step"], m["acc"], label=method, lw=1.3, color=color[method])
        runs = table.filter(pl.col("task") == task, pl.col("arch") == arch)
        target = float(runs["target_acc"].mean())
        ax.axhline(target, color="k", ls="--", lw=0.8, label="target (base at budget)")
        seen = "holdout arch" if runs["holdout_arch"][0] else "seen arch"
        ax.set_title(f"{task} {arch} ({seen}, {runs['seed'].n_unique()} seeds)", fontsize=9)
        ax.set_xlabel("step (a jump counts as one)")
        ax.set_ylabel("held-out accuracy (seed mean)")
        later = sub.filter(pl.col("step") > 0)["acc"]
        lo = float(later.quantile(0.1)) if len(later) else 0.0
        ax.set_ylim(max(0.0, lo), min(1.0, max(float(sub["acc"].max()), target) + 0.02))
        if i == 0:
            ax.legend(fontsize=7)
    return _save(fig, path)
