"""Stop runs that will end badly, from a forecast of how they end (core: no Optuna, no MLflow).

``Recorder`` keeps a live run's checkpoints and the metadata a forecast needs (``FileStore``
keeps them in a folder); ``EarlyStop`` stops a plain PyTorch loop whose forecast final value
misses a threshold. The Optuna pruner built on the same pieces is ``gfm.ops.ForecastPruner``.

    recorder = Recorder(model, opt, total_steps=200, record_every=4, schedule="cosine")
    stopper = EarlyStop(forecaster, val_accuracy, threshold=0.90, metric="accuracy")
    ... opt.step(); recorder.step(); outlook = stopper.check(recorder)   # outlook.stop, str(outlook)
"""

from gfm.stopping.recorder import FileStore, Recorder, Schedule, prefix_from
from gfm.stopping.rule import (
    DIRECTIONS,
    EarlyStop,
    Outlook,
    Score,
    bias,
    final_weights,
    forecast_value,
    nth_best,
    ordinal,
    score_at,
    worse,
)

__all__ = [
    "DIRECTIONS",
    "EarlyStop",
    "FileStore",
    "Outlook",
    "Recorder",
    "Schedule",
    "Score",
    "bias",
    "final_weights",
    "forecast_value",
    "nth_best",
    "ordinal",
    "prefix_from",
    "score_at",
    "worse",
]
