"""Forecast-based pruning for Optuna: prune a trial whose forecast final value is worse than the n-th best.

Optuna's own pruners judge a trial by where it is now (``MedianPruner``: its intermediate value
against the other trials' at the same step; successive halving: by rungs). ``ForecastPruner``
judges it by where it will end: at each report step it forecasts the trial's final weights from
its recorded checkpoints (GFM from the registry, a saved forecaster or a baseline), scores the
network at those weights with the user's callback, and prunes when that forecast final value f
is worse than the n-th best of the completed trials' values and the running trials' forecasts:

    minimize:  prune  iff  f − b > best_n + margin        maximize:  prune  iff  f − b < best_n − margin
    b = median over completed trials j of (f_j(s) − y_j)   (its forecast at the same step s minus
        its final value: the forecaster's bias, 0 until ``min_calibration`` trials have both)

The trial's checkpoints and metadata come from ``ForecastPruner.recorder(trial, model, optimizer,
...)``: the objective calls ``recorder.step()`` after each optimizer step (``gfm.stopping.Recorder``).
Each forecast is kept on the trial (user attributes ``gfm.forecast``, ``gfm.forecasts`` by step,
and ``gfm.pruned`` with the reason), so every process sharing the study's storage sees it.
A pruner failure (the forecaster raises, a non-finite forecast or score, no recorder) never
fails or prunes the trial: it is logged as a warning on ``gfm.pruning`` and recorded as
``gfm.forecast_error``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import weakref
from pathlib import Path
from typing import Any

from optuna.pruners import BasePruner
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, Trial, TrialState
from torch import nn
from torch.optim import Optimizer

from gfm import baselines, saved
from gfm.config import Settings
from gfm.forecaster import Forecaster
from gfm.stopping import (
    FileStore,
    Outlook,
    Recorder,
    Schedule,
    Score,
    bias,
    forecast_value,
    nth_best,
    ordinal,
    worse,
)

__all__ = [
    "FORECAST",
    "FORECASTS",
    "FORECAST_ERROR",
    "PRUNED",
    "ForecastPruner",
    "TrialRecorder",
    "load_forecaster",
]

log = logging.getLogger("gfm.pruning")
FORECAST = "gfm.forecast"  # the trial's latest forecast final value (bias-corrected)
FORECASTS = "gfm.forecasts"  # {step: raw forecast final value}
FORECAST_ERROR = "gfm.forecast_error"  # why the last forecast failed
PRUNED = "gfm.pruned"  # the decision that pruned it, in words


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def _baseline_names() -> list[str]:
    return [k for k, cls in baselines.BASELINES.items() if cls.min_train_runs == 0]


def load_forecaster(
    source: str | Path | Forecaster | None = None, settings: Settings | None = None
) -> Forecaster:
    """A forecaster from a registry URI, a saved forecaster's folder or a baseline name.

        None                       -> the registry's champion (``models:/gfm@champion``)
        "models:/<name>@<alias>"   -> that version (``gfm.tracking.load_model``)
        a folder                   -> ``gfm.saved.load`` (GFM, any saved baseline)
        "persistence", "linear"... -> the baseline of that name that learns nothing
        a Forecaster               -> itself

    Args:
        source: what to load.
        settings: the MLflow store and registered model name for a registry URI (default: the
            store MLflow points at, ``MLFLOW_TRACKING_URI``).

    Returns:
        The forecaster, read into memory.

    Raises:
        ValueError: nothing loadable there; one line naming the source and the cause.
    """
    if source is not None and not isinstance(source, str | Path):
        if callable(getattr(source, "forecast", None)):
            return source
        raise ValueError(
            f"`forecaster` must be a registry URI, a folder, a baseline name or a Forecaster, "
            f"got {type(source).__name__}"
        )
    from gfm import tracking
    from gfm.tracking.registry import SCHEME

    if source is None:
        source = tracking.model_uri((settings or Settings()).registry)
    if isinstance(source, str) and source.startswith(SCHEME):
        try:
            return tracking.load_model(source, settings)
        except Exception as err:
            raise ValueError(
                f"`forecaster` {source!r}: could not load it from the registry: {_one_line(err)}"
            ) from None
    if isinstance(source, str) and source in baselines.BASELINES:
        if source not in _baseline_names():
            raise ValueError(
                f"`forecaster` {source!r} learns from training runs: pass the folder of a fitted "
                f"one (gfm.saved.save), or one of {_baseline_names()}"
            )
        return baselines.make(source)
    path = Path(source)
    if not path.is_dir():
        raise ValueError(
            f"`forecaster` must be a registry URI {SCHEME}<name>@<alias>, a saved forecaster's "
            f"folder or one of {_baseline_names()}, got {str(source)!r} (no such folder)"
        )
    try:
        return saved.load(path)
    except Exception as err:
        raise ValueError(
            f"`forecaster` {str(source)!r}: not a saved forecaster's folder: {_one_line(err)}"
        ) from None


class TrialRecorder(Recorder):
    """A ``gfm.stopping.Recorder`` bound to one Optuna trial (made by ``ForecastPruner.recorder``).

    Attributes:
        trial: the live trial.
        forecasts: raw forecast final values by step.
        outlooks: every decision taken on the trial, in order.
    """

    def __init__(self, trial: Trial, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trial = trial
        self.forecasts: dict[int, float] = {}
        self.outlooks: list[Outlook] = []


def _check_count(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"ForecastPruner: `{name}` must be an integer >= {low}, got {value!r}")
    return value


class ForecastPruner(BasePruner):
    """Prune a trial whose forecast final value is worse than the n-th best (module docstring).

    Example::

        pruner = ForecastPruner(val_loss, forecaster="models/gfm", n_best=3)
        study = optuna.create_study(storage="sqlite:///optuna.db", pruner=pruner)

        def objective(trial):
            model, opt = ...                     # from trial.suggest_*
            recorder = pruner.recorder(trial, model, opt, total_steps=200, record_every=4)
            for step in range(1, 201):
                ...; opt.step(); recorder.step()
                if step % 20 == 0:
                    trial.report(val_loss(model), step)
                    if trial.should_prune():
                        raise optuna.TrialPruned()
            return val_loss(model)

    ``score`` must measure what the objective returns (its final value), in the study's
    direction: the forecast is compared with the completed trials' values.

    Args:
        score: ``model -> value`` (e.g. validation loss), run under no_grad with the forecast
            final weights loaded into the trial's model (its own weights are restored after).
        forecaster: a registry URI, a saved forecaster's folder, a baseline name
            (``load_forecaster``; None: ``models:/gfm@champion``) or a Forecaster.
        n_best: compare with the n-th best value (1 = the best).
        margin: prune only when worse by more than this, in the metric's units (>= 0).
        warmup_steps: no forecast before this step.
        min_trials: completed trials needed before any pruning.
        calibrate: subtract the forecaster's median error on completed trials (``bias``).
        min_calibration: completed trials with a forecast at the same step before correcting.
        store: also write every trial's checkpoints to this ``FileStore``
            (``<study>/trial-<number>``), for other processes and for later.
        settings: where the registry is, for a registry URI.
        metric: the metric's name in messages.

    Raises:
        TypeError: ``score`` is not callable or ``store`` not a FileStore.
        ValueError: the forecaster cannot be loaded (one line), or an option is out of range.
    """

    def __init__(  # noqa: PLR0913 - keyword-only options, as Optuna's own pruners take them
        self,
        score: Score,
        *,
        forecaster: str | Path | Forecaster | None = None,
        n_best: int = 3,
        margin: float = 0.0,
        warmup_steps: int = 0,
        min_trials: int = 5,
        calibrate: bool = True,
        min_calibration: int = 3,
        store: FileStore | None = None,
        settings: Settings | None = None,
        metric: str = "value",
    ) -> None:
        if not callable(score):
            raise TypeError(f"ForecastPruner: `score` must be callable, got {type(score).__name__}")
        self.n_best = _check_count("n_best", n_best, 1)
        self.warmup_steps = _check_count("warmup_steps", warmup_steps, 0)
        self.min_trials = _check_count("min_trials", min_trials, 0)
        self.min_calibration = _check_count("min_calibration", min_calibration, 1)
        if not (isinstance(margin, int | float) and math.isfinite(margin) and margin >= 0):
            raise ValueError(
                f"ForecastPruner: `margin` must be a finite number >= 0, got {margin!r}"
            )
        if store is not None and not isinstance(store, FileStore):
            raise TypeError(
                f"ForecastPruner: `store` must be a FileStore, got {type(store).__name__}"
            )
        try:
            self.forecaster = load_forecaster(forecaster, settings)
        except ValueError as err:
            raise ValueError(f"ForecastPruner: {err}") from None
        self.forecaster_name = str(getattr(self.forecaster, "name", type(self.forecaster).__name__))
        self.score, self.margin, self.calibrate = score, float(margin), bool(calibrate)
        self.store, self.metric = store, metric
        # the recorders of this process's running trials; gone with their objective
        self._live: weakref.WeakValueDictionary[tuple[str, int], TrialRecorder] = (
            weakref.WeakValueDictionary()
        )
        self._warned: set[tuple[str, int]] = set()

    # -- the objective's side ----------------------------------------------------------------

    def recorder(  # noqa: PLR0913 - the run's metadata, keyword-only
        self,
        trial: Trial,
        model: nn.Module,
        optimizer: Optimizer,
        *,
        total_steps: int,
        record_every: int,
        schedule: Schedule = "constant",
        task: str = "",
    ) -> TrialRecorder:
        """Start recording the trial's run (before its first optimizer step); see ``Recorder``.

        Raises:
            TypeError, ValueError: the model, optimizer or metadata cannot describe the run; the
                message names the argument.
        """
        key = (trial.study.study_name, trial.number)
        rec = TrialRecorder(
            trial,
            model,
            optimizer,
            total_steps=total_steps,
            record_every=record_every,
            schedule=schedule,
            task=task,
            store=self.store,
            key=f"{_safe(key[0])}/trial-{key[1]:05d}" if self.store is not None else "",
        )
        self._live[key] = rec
        return rec

    # -- Optuna's side --------------------------------------------------------------------------

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        """Whether the trial should stop now (called by ``trial.should_prune()``).

        Never raises: a failure is logged and the trial goes on.
        """
        step = trial.last_step
        if step is None:
            return False
        if math.isnan(trial.intermediate_values[step]):
            return True  # as Optuna's pruners do: the run has diverged
        if step < self.warmup_steps:
            return False
        key = (study.study_name, trial.number)
        live = self._live.get(key)
        if live is None:
            if key not in self._warned:
                self._warned.add(key)
                log.warning(
                    "ForecastPruner: trial %d has no recorded checkpoints, not pruned: call "
                    "pruner.recorder(trial, model, optimizer, total_steps=..., record_every=...) "
                    "in the objective and recorder.step() after each optimizer step",
                    trial.number,
                )
            return False
        if live.k < 1 or live.k >= live.M:
            return False
        try:
            return self._decide(study, trial, live, step)
        except Exception as err:  # a pruner failure must not fail the trial
            reason = _one_line(err)
            log.warning(
                "ForecastPruner: trial %d at step %d: forecast failed, not pruned: %s",
                trial.number,
                step,
                reason,
            )
            # the storage itself may be what failed: the warning above says it all then
            with contextlib.suppress(Exception):
                live.trial.set_user_attr(FORECAST_ERROR, f"step {step}: {reason}")
            return False

    def _decide(self, study: Study, trial: FrozenTrial, live: TrialRecorder, step: int) -> bool:
        raw = forecast_value(live, self.forecaster, self.score)
        live.forecasts[step] = raw
        direction = "minimize" if study.direction == StudyDirection.MINIMIZE else "maximize"
        trials = study.get_trials(deepcopy=False)
        complete = [
            t
            for t in trials
            if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)
        ]
        residuals = [
            float(t.user_attrs[FORECASTS][str(step)]) - float(t.value)
            for t in complete
            if str(step) in t.user_attrs.get(FORECASTS, {})
        ]
        b = bias(residuals, self.min_calibration) if self.calibrate else 0.0
        value = raw - b
        live.trial.set_user_attr(FORECASTS, {str(s): v for s, v in live.forecasts.items()})
        live.trial.set_user_attr(FORECAST, value)
        if len(complete) < self.min_trials:
            return False
        running = [
            float(t.user_attrs[FORECAST])
            for t in trials
            if t.state == TrialState.RUNNING
            and t.number != trial.number
            and FORECAST in t.user_attrs
        ]
        reference = nth_best([float(t.value) for t in complete] + running, self.n_best, direction)
        if reference is None:
            return False
        outlook = Outlook(
            value=value,
            reference=reference,
            label=ordinal(self.n_best),
            stop=worse(value, reference, direction=direction, margin=self.margin),
            direction=direction,
            margin=self.margin,
            metric=self.metric,
            step=step,
            total_steps=live.total_steps,
            forecaster=self.forecaster_name,
        )
        live.outlooks.append(outlook)
        if outlook.stop:
            text = str(outlook).replace("stop:", "prune:", 1)
            live.trial.set_user_attr(PRUNED, text)
            log.info("trial %d %s", trial.number, text)
        return outlook.stop


def _safe(name: str) -> str:
    """A study name as one path component (letters, digits, ``._-``)."""
    out = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).strip(".")
    return out or "study"
