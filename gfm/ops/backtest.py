"""Backtests: hide the tail of a whole run, forecast it, and compare with what really happened.

``backtest`` scores a forecaster (and the per-run baselines, for scale) on one run exactly as
the evaluate step scores the test split: ``gfm.evaluation.evaluate`` on that one run. For a run
of the dataset the task network is rebuilt and scored on held-out data with the last observed
checkpoint, the forecast and the true final weights; a run of your own is compared in weight
space only (gfm cannot rebuild its network and data).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

from gfm.config import Settings
from gfm.data.schema import RunRecord
from gfm.forecaster import Forecaster
from gfm.ops.layout import open_dataset

PER_RUN = ("persistence", "linear", "geometric", "dmd")  # baselines that need no training


def dataset_run(settings: Settings, run_id: str) -> RunRecord:
    """The run ``run_id`` of the dataset at ``data.root``.

    Raises:
        FileNotFoundError: no dataset there.
        KeyError: no such run (the message lists a few run ids).
    """
    ds = open_dataset(settings)
    if run_id not in ds.runs["run_id"].to_list():
        some = ds.runs["run_id"].head(3).to_list()
        raise KeyError(f"`run` must be a run of {ds.root} (e.g. {some}), got {run_id!r}")
    return ds.load(run_id)


def scoreable(settings: Settings, record: RunRecord) -> bool:
    """Whether the run's task network can be rebuilt to score weights on held-out data."""
    return record.spec.task in settings.data.tasks


def backtest(
    settings: Settings,
    record: RunRecord,
    forecaster: Forecaster,
    *,
    fractions: list[float] | None = None,
    baselines: list[str] | None = None,
) -> pl.DataFrame:
    """Forecast the rest of ``record`` from each observed fraction and score it against the truth.

    Args:
        settings: ``evaluate.observed_fractions`` and ``evaluate.workflow_baselines`` are the
            defaults; ``data.tasks`` rebuilds the task network of a dataset run.
        record: the whole run (``dataset_run`` or ``gfm.data.request.read_run``).
        forecaster: the model to test, shown as method ``gfm``.
        fractions: observed fractions f in (0, 1); the run is hidden after k = round(f·M).
        baselines: per-run baselines shown beside it (those of ``PER_RUN``).

    Returns:
        The ``gfm.evaluation.evaluate`` table of the one run (split ``backtest``): per method ×
        fraction the final weights' error (``mse_final``, ``rel_mse_persistence``) and, for a
        dataset run, the held-out loss/accuracy of the last checkpoint, the forecast and the
        true final weights.

    Raises:
        ValueError: a baseline that needs training, or fractions outside (0, 1).
    """
    from gfm.bench.forecast import build, score_for
    from gfm.evaluation import evaluate

    names = list(settings.evaluate.workflow_baselines if baselines is None else baselines)
    trained = [n for n in names if n not in PER_RUN]
    if trained:
        raise ValueError(
            f"`baselines` must be among the per-run baselines {list(PER_RUN)}, got {trained}"
        )
    models: dict[str, Any] = {"gfm": forecaster}
    models |= {n: build(n, settings) for n in names if n != "gfm"}
    score = score_for(settings) if scoreable(settings, record) else None
    return evaluate(
        models,
        [record],
        fractions or settings.evaluate.observed_fractions,
        split="backtest",
        score=score,
    )


def score_weights(
    settings: Settings, record: RunRecord, weights: dict[str, np.ndarray]
) -> dict[str, tuple[float, float]]:
    """Held-out (loss, accuracy) of the run's task network with each set of flat weights (D,).

    NaN for a run whose network cannot be rebuilt (not a task of ``data.tasks``) and for the
    accuracy of a regression task.
    """
    if not scoreable(settings, record):
        return {name: (math.nan, math.nan) for name in weights}
    from gfm.bench.forecast import score_for

    score = score_for(settings)
    return {name: score(record, np.asarray(w, dtype=np.float32)) for name, w in weights.items()}
