"""How a run will end, by forecast: the final value a forecaster predicts for a live run, and when to stop.

A forecaster predicts the run's final weights ŵ_M from its recorded prefix; the network loaded
with ŵ_M, scored by the user's callback (validation loss or accuracy), gives the *forecast
final value* f. A run is stopped when f is worse than a reference by more than a margin:

    minimize:  stop  iff  f > reference + margin
    maximize:  stop  iff  f < reference − margin

``EarlyStop`` does this against a fixed threshold in a plain training loop;
``gfm.ops.pruning.ForecastPruner`` against the n-th best of the other trials of an Optuna study.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gfm.forecaster import Forecaster, Prefix
from gfm.jumps.context import flat_weights, load_weights
from gfm.stopping.recorder import Recorder

__all__ = [
    "DIRECTIONS",
    "EarlyStop",
    "Outlook",
    "Score",
    "bias",
    "final_weights",
    "forecast_value",
    "nth_best",
    "ordinal",
    "score_at",
    "worse",
]

log = logging.getLogger("gfm.stopping")
DIRECTIONS = ("minimize", "maximize")
Score = Callable[[nn.Module], float | torch.Tensor]


def final_weights(forecaster: Forecaster, prefix: Prefix) -> torch.Tensor:
    """The forecaster's final weights ŵ_M = forecast(prefix, t = 1), (D,) float32.

    Raises:
        ValueError: the forecast is not (1, D) or not finite; the message names the forecaster.
    """
    t = torch.ones(1, dtype=torch.float64)
    w = forecaster.forecast(prefix, t)
    name = getattr(forecaster, "name", type(forecaster).__name__)
    if not isinstance(w, torch.Tensor) or tuple(w.shape) != (1, prefix.D):
        got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(
            f"forecaster {name!r}: forecast must be (1, D) = (1, {prefix.D}), got {got}"
        )
    w = w[0].detach().to("cpu", torch.float32)
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"forecaster {name!r}: forecast final weights are not finite")
    return w


def score_at(recorder: Recorder, w: torch.Tensor, score: Score) -> float:
    """``score(model)`` with the recorder's model holding the flat weights ``w`` (D,).

    The model's weights and train/eval mode are restored afterwards, also when ``score``
    raises; it runs under ``torch.no_grad()``.

    Raises:
        ValueError: ``score`` returned something that is not a finite number.
    """
    model, params = recorder.model, recorder.params
    kept, training = flat_weights(params), model.training
    try:
        load_weights(params, w)
        with torch.no_grad():
            raw = score(model)
    finally:
        load_weights(params, kept)
        model.train(training)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"`score` must return a number, got {type(raw).__name__}") from None
    if not math.isfinite(value):
        raise ValueError(f"`score` at the forecast final weights must be finite, got {value}")
    return value


def forecast_value(recorder: Recorder, forecaster: Forecaster, score: Score) -> float:
    """The forecast final value f = score(network at forecast(recorder.prefix(), 1)).

    Raises:
        ValueError: too few checkpoints, the run is over, or the forecast or its score is not
            finite.
    """
    return score_at(recorder, final_weights(forecaster, recorder.prefix()), score)


def worse(value: float, reference: float, *, direction: str, margin: float = 0.0) -> bool:
    """Whether ``value`` is worse than ``reference`` by more than ``margin`` (module docstring)."""
    if direction == "minimize":
        return value > reference + margin
    return value < reference - margin


def nth_best(values: Sequence[float], n: int, direction: str) -> float | None:
    """The n-th best of ``values`` (1 = the best), or None when there are fewer than n."""
    finite = sorted(v for v in values if math.isfinite(v))
    if len(finite) < n:
        return None
    return finite[n - 1] if direction == "minimize" else finite[-n]


def bias(residuals: Sequence[float], min_count: int = 3) -> float:
    """The forecaster's typical error, median(f − y) over finished runs; 0 with fewer than ``min_count``.

    Subtracting it from a forecast removes a systematic offset (persistence, for instance,
    forecasts a loss that is still falling, so f − y > 0 for every run).
    """
    finite = [r for r in residuals if math.isfinite(r)]
    return statistics.median(finite) if len(finite) >= min_count else 0.0


def ordinal(n: int) -> str:
    """1 -> "best", 2 -> "2nd best", 3 -> "3rd best", 4 -> "4th best"."""
    if n == 1:
        return "best"
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(n % 10 if n % 100 not in (11, 12, 13) else 0, "th")
    return f"{n}{suffix} best"


@dataclass(frozen=True)
class Outlook:
    """A forecast of how a run ends, against a reference, and the decision it gives.

    Attributes:
        value: the forecast final value (corrected by ``bias`` where the caller calibrates).
        reference: what it is compared with.
        label: the reference's name (``threshold``, ``3rd best``).
        stop: whether the run should stop.
        direction: ``minimize`` or ``maximize``.
        margin: the tolerance (in the metric's units).
        metric: the metric's name, for the message.
        step: optimizer steps taken when forecast.
        total_steps: the run's planned steps.
        forecaster: the forecaster's name.
    """

    value: float
    reference: float
    label: str
    stop: bool
    direction: str
    margin: float
    metric: str
    step: int
    total_steps: int
    forecaster: str

    def __str__(self) -> str:
        """``stop: forecast final accuracy 0.81 < threshold 0.9 (step 40 of 200, gfm)``."""
        sign = "+" if self.direction == "minimize" else "−"
        bound = f"{self.label} {self.reference:.4g}"
        if self.margin:
            bound += f" {sign} margin {self.margin:.4g}"
        if self.direction == "minimize":
            relation = ">" if self.stop else "<="
        else:
            relation = "<" if self.stop else ">="
        verdict = "stop" if self.stop else "continue"
        return (
            f"{verdict}: forecast final {self.metric} {self.value:.4g} {relation} {bound} "
            f"(step {self.step} of {self.total_steps}, {self.forecaster})"
        )


def _check_direction(direction: str, where: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(
            f"{where}: `direction` must be one of {list(DIRECTIONS)}, got {direction!r}"
        )


def _check_margin(margin: float, where: str) -> None:
    ok = isinstance(margin, int | float) and not isinstance(margin, bool)
    if not (ok and math.isfinite(margin) and margin >= 0):
        raise ValueError(f"{where}: `margin` must be a finite number >= 0, got {margin!r}")


class EarlyStop:
    """Early stopping for a plain PyTorch loop, from a forecast of the run's final value.

        f = score(network at forecast(w_0..w_k, t = 1))
        stop  iff  f < threshold − margin   (maximize)    or    f > threshold + margin   (minimize)

    Example::

        recorder = Recorder(model, opt, total_steps=200, record_every=4, schedule="cosine")
        stopper = EarlyStop(gfm.saved.load("models/gfm"), val_accuracy, threshold=0.90,
                            metric="accuracy")
        for step in range(200):
            ...; opt.step(); recorder.step()
            if (step + 1) % 20 == 0 and (outlook := stopper.check(recorder)) and outlook.stop:
                print(outlook)   # stop: forecast final accuracy 0.81 < threshold 0.9 (step 40 of 200, gfm)
                break

    A failure to forecast (a forecaster error, a non-finite forecast or score) never stops the
    run: ``check`` logs a warning on the ``gfm.stopping`` logger and returns None.

    Args:
        forecaster: any ``gfm.forecaster.Forecaster`` (``gfm.saved.load(folder)``,
            ``gfm.ops.load_forecaster("models:/gfm@champion")``, ``gfm.baselines.make(name)``).
        score: ``model -> value``, e.g. validation accuracy or loss; called under no_grad with
            the forecast weights loaded (the model's own weights are restored afterwards).
        threshold: the value the run must be forecast to reach.
        direction: ``maximize`` (accuracy) or ``minimize`` (loss).
        margin: tolerance in the metric's units (>= 0).
        metric: the metric's name in messages.
        warmup_steps: no forecast before this many optimizer steps.

    Raises:
        TypeError: ``forecaster`` has no ``forecast`` method, or ``score`` is not callable.
        ValueError: an option is out of range.
    """

    def __init__(  # noqa: PLR0913 - keyword-only options of one rule
        self,
        forecaster: Forecaster,
        score: Score,
        *,
        threshold: float,
        direction: str = "maximize",
        margin: float = 0.0,
        metric: str = "value",
        warmup_steps: int = 0,
    ) -> None:
        where = "EarlyStop"
        if not callable(getattr(forecaster, "forecast", None)):
            raise TypeError(
                f"{where}: `forecaster` must implement gfm.forecaster.Forecaster (a forecast "
                f"method), got {type(forecaster).__name__}"
            )
        if not callable(score):
            raise TypeError(f"{where}: `score` must be callable, got {type(score).__name__}")
        if not (isinstance(threshold, int | float) and math.isfinite(threshold)):
            raise ValueError(f"{where}: `threshold` must be a finite number, got {threshold!r}")
        _check_direction(direction, where)
        _check_margin(margin, where)
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(
                f"{where}: `warmup_steps` must be an integer >= 0, got {warmup_steps!r}"
            )
        self.forecaster, self.score = forecaster, score
        self.threshold, self.direction, self.margin = float(threshold), direction, float(margin)
        self.metric, self.warmup_steps = metric, warmup_steps
        self.history: list[Outlook] = []

    def check(self, recorder: Recorder) -> Outlook | None:
        """Forecast the run's final value now and decide; None when there is nothing to decide.

        None before ``warmup_steps``, before two checkpoints, once the run is over, and when the
        forecast fails (logged). Each outlook is also kept in ``history``.
        """
        if recorder.steps < self.warmup_steps or recorder.k < 1 or recorder.k >= recorder.M:
            return None
        name = getattr(self.forecaster, "name", type(self.forecaster).__name__)
        try:
            value = forecast_value(recorder, self.forecaster, self.score)
        except Exception as err:  # a forecast that fails must not end the user's run
            log.warning(
                "EarlyStop at step %d: forecast failed, not stopping: %s: %s",
                recorder.steps,
                type(err).__name__,
                err,
            )
            return None
        outlook = Outlook(
            value=value,
            reference=self.threshold,
            label="threshold",
            stop=worse(value, self.threshold, direction=self.direction, margin=self.margin),
            direction=self.direction,
            margin=self.margin,
            metric=self.metric,
            step=recorder.steps,
            total_steps=recorder.total_steps,
            forecaster=str(name),
        )
        self.history.append(outlook)
        return outlook
