"""The forecast benchmark: GFM and the baselines side by side on the generalisation splits.

For each split kind (``seed``: unseen initialisations; ``architecture``: an unseen architecture of
the same task; ``optimizer``: an unseen optimizer) every method is fitted on that split's train
part (validated on its val part when there is one) and forecasts its test part from each observed
fraction. The benchmark (``benchmarks/forecast.py``) and the evaluate flow both call ``fit_and_evaluate``,
so the published table and the workflow's metrics are the same computation.

Method names: ``gfm`` (the configured default variant, the one the workflow promotes),
``gfm_<variant>`` for the other variants (``gfm_free``, ``gfm_optimizer``), and the keys of
``gfm.baselines.BASELINES``.
"""

from __future__ import annotations

import hashlib
import logging
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from gfm import baselines
from gfm.config import Settings
from gfm.data.schema import RunRecord
from gfm.data.tasks import evaluate_weights
from gfm.data.trajectories import Trajectories
from gfm.evaluation import evaluate
from gfm.forecaster import Forecaster
from gfm.metrics import Score
from gfm.model import GFM

log = logging.getLogger("gfm.bench.forecast")
GFM_VARIANTS = ("optimizer", "free")


def methods(settings: Settings) -> list[str]:
    """``gfm``, the other GFM variant as ``gfm_<variant>``, then the configured baselines."""
    other = [f"gfm_{v}" for v in GFM_VARIANTS if v != settings.gfm.variant]
    return ["gfm", *other, *settings.evaluate.baselines]


def build(method: str, settings: Settings, *, seed: int | None = None) -> Forecaster:
    """An unfitted forecaster for ``method`` from the settings.

    Args:
        method: ``gfm``, ``gfm_<variant>`` or a baseline key.
        settings: ``gfm``/``train`` configure GFM; ``evaluate.linear_window`` the linear baseline.
        seed: overrides the training seed (``train.seed`` for GFM, ``seed`` for learned baselines).

    Raises:
        ValueError: an unknown method, listing the valid names.
    """
    train = settings.train if seed is None else settings.train.model_copy(update={"seed": seed})
    device = train.device
    if method == "gfm" or method.startswith("gfm_"):
        variant = settings.gfm.variant if method == "gfm" else method.removeprefix("gfm_")
        if variant not in GFM_VARIANTS:
            raise ValueError(
                f"`method` gfm_<variant> needs a variant in {list(GFM_VARIANTS)}, got {method!r}"
            )
        return GFM(settings.gfm.model_copy(update={"variant": variant}), train)
    if method not in baselines.BASELINES:
        valid = ["gfm", *(f"gfm_{v}" for v in GFM_VARIANTS), *baselines.BASELINES]
        raise ValueError(f"`method` must be one of {valid}, got {method!r}")
    config: dict = {}
    if method == "linear":
        config["window"] = settings.evaluate.linear_window
    if "seed" in baselines.BASELINES[method].defaults:
        config["seed"] = train.seed
    return baselines.make(method, config, device=device)


def score_for(settings: Settings) -> Score:
    """Downstream scoring: held-out (loss, accuracy) of the run's task network loaded with ``w``.

    Scores are remembered by (run id, SHA-1 of ``w``'s bytes): the true final and last observed
    weights of a run are scored once however many methods and seeds are compared against them.
    """
    tasks = settings.data.tasks
    memo: dict[tuple[str, bytes], tuple[float, float]] = {}

    def score(record: RunRecord, w: np.ndarray) -> tuple[float, float]:
        task_cfg = tasks.get(record.spec.task)
        if task_cfg is None:  # imported runs have no task network to rebuild
            return float("nan"), float("nan")
        key = (record.spec.run_id, hashlib.sha1(np.ascontiguousarray(w).tobytes()).digest())
        if key not in memo:
            memo[key] = evaluate_weights(record.spec, task_cfg, w)
        return memo[key]

    return score


def n_parameters(forecaster: Forecaster) -> int:
    """Trainable parameters of a forecaster (0 for closed-form baselines)."""
    nets = [getattr(forecaster, "net", None), getattr(forecaster, "model", None)]
    return sum(p.numel() for m in nets if isinstance(m, torch.nn.Module) for p in m.parameters())


@dataclass
class Fitted:
    """A fitted forecaster with what fitting it cost."""

    forecaster: Forecaster
    fit_seconds: float
    n_parameters: int


def fit(
    method: str,
    settings: Settings,
    train: Sequence[RunRecord],
    val: Sequence[RunRecord] | None,
    *,
    seed: int | None = None,
) -> Fitted:
    """Build and fit one method; time it."""
    forecaster = build(method, settings, seed=seed)
    start = time.perf_counter()
    forecaster.fit(train, val if val is not None and len(val) else None)
    seconds = time.perf_counter() - start
    log.info("fitted %s on %d runs in %.1f s", method, len(train), seconds)
    return Fitted(forecaster, seconds, n_parameters(forecaster))


def fit_and_evaluate(  # noqa: PLR0913 - keyword-only options of one benchmark call
    settings: Settings,
    ds: Trajectories,
    *,
    method_names: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    seeds: Sequence[int] = (0,),
    fitted: dict[str, Forecaster] | None = None,
    downstream: bool = True,
    score: Score | None = None,
    on_fitted: Callable[[str, str, int, Fitted], None] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Fit every method on each split's train part and evaluate it on the test part.

    Args:
        settings: all settings (``evaluate.observed_fractions``, model and training sections).
        ds: the dataset.
        method_names: default ``methods(settings)``.
        splits: default ``settings.evaluate.splits``.
        seeds: training seeds; every method is fitted once per seed (spread over seeds).
        fitted: already fitted forecasters by method name, used as they are on every split
            (e.g. the tuned GFM in the workflow) instead of fitting.
        downstream: score forecast weights on held-out data (``score_for``).
        score: the downstream scorer to use instead of a new ``score_for(settings)`` (share one
            across calls to reuse its memo).
        on_fitted: called as ``on_fitted(method, split, seed, fitted)`` after each fit.

    Returns:
        ``(table, costs)``: the evaluation table (``gfm.evaluation.COLUMNS`` plus ``seed`` set to
        the training seed and ``run_seed`` the run's seed index), and one row per method × split ×
        seed with fit seconds, forecast seconds per run, peak RSS and forecaster parameters.
    """
    names = list(method_names or methods(settings))
    fitted = dict(fitted or {})
    if not downstream:
        score = None
    elif score is None:
        score = score_for(settings)
    tables, costs = [], []
    for split in splits or settings.evaluate.splits:
        train, val, test = ds.parts(split)
        for seed in seeds:
            models: dict[str, Forecaster] = {}
            for name in names:
                if name in fitted:
                    models[name] = fitted[name]
                    cost = Fitted(fitted[name], 0.0, n_parameters(fitted[name]))
                else:
                    cost = fit(name, settings, train, val, seed=seed)
                    models[name] = cost.forecaster
                if on_fitted is not None:
                    on_fitted(name, split, seed, cost)
                costs.append(
                    {
                        "method": name,
                        "split": split,
                        "seed": seed,
                        "fit_seconds": round(cost.fit_seconds, 2),
                        "n_parameters": cost.n_parameters,
                        "train_runs": len(train),
                        "test_runs": len(test),
                    }
                )
            table = evaluate(
                models, test, settings.evaluate.observed_fractions, split=split, score=score
            )
            tables.append(
                table.rename({"seed": "run_seed"}).with_columns(pl.lit(seed).alias("seed"))
            )
    table = pl.concat(tables)
    per_run = table.group_by("method", "split", "seed").agg(
        pl.col("forecast_seconds").mean().alias("forecast_seconds_per_run")
    )
    costs_df = (
        pl.DataFrame(costs)
        .join(per_run, on=["method", "split", "seed"], how="left")
        .with_columns(
            pl.lit(round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)).alias(
                "peak_rss_mib_process"
            )
        )
        .sort("split", "seed", "method")
    )
    return table, costs_df


def headline(table: pl.DataFrame, by: Sequence[str] = ("method", "split")) -> pl.DataFrame:
    """Mean ± std over training seeds of the per-seed means, per ``by`` group.

    ``by`` is method × split (the headline) or method × task × split (the per-task table). The
    per-seed mean averages every task, optimizer, fraction and test run of that seed in the
    group; the spread is then over seeds. ``rel_mse_persistence`` is also given as a median over
    runs, which is robust to a few runs whose persistence error is tiny.
    """
    per_seed = table.group_by(*by, "seed").agg(
        pl.col("mse_final").mean(),
        pl.col("rel_mse_persistence").mean().alias("rel_mse_mean"),
        pl.col("rel_mse_persistence").median().alias("rel_mse_median"),
        (pl.col("downstream_acc") - pl.col("true_final_acc"))
        .fill_nan(None)
        .mean()
        .alias("acc_gap"),
    )
    order = [c for c in ("split", "task") if c in by]
    return (
        per_seed.group_by(*by)
        .agg(
            pl.col("mse_final").mean().alias("mse_final_mean"),
            pl.col("mse_final").std().alias("mse_final_std"),
            pl.col("rel_mse_median").mean().alias("rel_mse_median"),
            pl.col("rel_mse_mean").mean().alias("rel_mse_mean"),
            pl.col("acc_gap").mean().alias("acc_gap_mean"),
            pl.col("acc_gap").std().alias("acc_gap_std"),
            pl.len().alias("seeds"),
        )
        .sort(*order, "mse_final_mean")
    )
