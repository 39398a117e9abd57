"""The jump schedules (``Horizon``, ``Relative``), the options of a jump, and the log of one."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FRAMES = ("window", "run")  # what a jump's prefix holds (see JumpAhead)

# ----------------------------------------------------------------------------------------------
# The horizon schedule and the jump log
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Horizon:
    """Jump length in recorded intervals, long early and short late, as a function of the step.

        h(s) = round(start + (end − start) · min(s / steps, 1))

    A jump of h intervals skips h · record_every optimizer steps.

    Attributes:
        start: h at step 0 (>= 1).
        end: h from step ``steps`` on (>= 1).
        steps: the step at which the schedule reaches ``end`` (> 0), usually the step budget.
    """

    start: int
    end: int
    steps: int

    def __post_init__(self) -> None:
        """Reject horizons below one interval and a non-positive ``steps``."""
        for name in ("start", "end", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Horizon: `{name}` must be an integer >= 1, got {value!r}")

    def __call__(self, step: int) -> int:
        """The horizon h at optimizer step ``step`` (jumps counted as steps)."""
        frac = min(max(step, 0) / self.steps, 1.0)
        return max(1, round(self.start + (self.end - self.start) * frac))


@dataclass(frozen=True)
class Relative:
    """Jump length proportional to how far the run has come (NiNo's horizon), clipped.

        h(p) = clip(round(c · p / r), low, high)     p = effective steps so far, r = record_every

    A jump from effective step p then lands near p · (1 + c): the forecaster always sees the
    run so far as the same fraction 1 / (1 + c) of the framed run.

    Attributes:
        c: the ratio of the jump to the steps so far (> 0).
        low: the shortest jump in recorded intervals (>= 1).
        high: the longest jump in recorded intervals (>= low).
        record_every: r, steps per recorded interval (>= 1).
    """

    c: float
    low: int
    high: int
    record_every: int = 1

    def __post_init__(self) -> None:
        """Reject a non-positive ratio and bounds below one interval or out of order."""
        if not (isinstance(self.c, int | float) and self.c > 0 and math.isfinite(self.c)):
            raise ValueError(f"Relative: `c` must be a positive number, got {self.c!r}")
        for name in ("low", "high", "record_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Relative: `{name}` must be an integer >= 1, got {value!r}")
        if self.high < self.low:
            raise ValueError(f"Relative: `high` must be >= low = {self.low}, got {self.high}")

    def __call__(self, progress: int) -> int:
        """The horizon h at ``progress`` effective optimizer steps."""
        return min(self.high, max(self.low, round(self.c * progress / self.record_every)))


@dataclass(frozen=True)
class Jump:
    """What one jump did.

    Attributes:
        step: the step counter at the jump (the jump is step ``step + 1``).
        horizon: h, recorded intervals jumped (after shortening).
        loss_before: the guard loss at the pre-jump weights (NaN without ``loss_fn``).
        loss_after: the guard loss at the forecast weights (inf for a non-finite forecast).
        accepted: False when the jump was rolled back.
        forecast_s: seconds spent in ``forecaster.forecast``.
        guard_s: seconds spent evaluating the guard loss (every evaluation).
        scale: the factor applied to the forecast displacement: the calibration's times the
            line search's (1 without either).
        evals: guard-batch loss evaluations spent on the jump (2, or 1 + the line search's).
    """

    step: int
    horizon: int
    loss_before: float
    loss_after: float
    accepted: bool
    forecast_s: float
    guard_s: float
    scale: float = 1.0
    evals: int = 2

    @property
    def spike(self) -> float:
        """Loss ratio loss_after / loss_before (NaN without a guard)."""
        if not math.isfinite(self.loss_before) or self.loss_before == 0.0:
            return float("nan")
        return self.loss_after / self.loss_before


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"JumpOptions: `{name}` must be an integer >= {low}, got {value!r}")


def _check_positive(name: str, value: Any) -> None:
    if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
        raise ValueError(f"JumpOptions: `{name}` must be a positive number, got {value!r}")


@dataclass(frozen=True)
class JumpOptions:
    """When ``JumpAhead`` jumps, how far, what the forecaster sees, and when a jump goes back.

    Attributes:
        period: base optimizer steps between two jumps; a multiple of ``record_every``.
        horizon: h in recorded intervals: an integer, a schedule ``step -> h`` (``Horizon``), or
            ``Relative`` (called with ``progress``: NiNo's jumps proportional to the run so far).
        history: checkpoints kept for the prefix, k + 1 <= history (>= 2).
        record_every: r, base optimizer steps between two kept checkpoints.
        guard: a jump is kept when the loss after it is at most ``guard`` times the loss before.
        shrink: factor in (0, 1) applied to the horizon scale after each rollback.
        warmup: no jump before this many steps.
        frame: ``"window"`` or ``"run"`` (see ``JumpAhead``).
        total_steps: the planned step budget, framing ``run`` as the planned run (optional).
        calibrate: scale each jump's displacement by ``JumpAhead.calibration`` (a backtest).
        max_scale: the largest calibration factor.
        line_search: factors a tried on the guard batch, w_s + a · (ŵ − w_s), keeping the one of
            lowest loss (its guard loss is the one checked); () for none. Each costs a forward
            pass of the guard batch, counted in ``Jump.evals``.
        row_mean: β of ``gfm.rows.shrink_row_means`` applied to every forecast before it is
            used (each row's mean displacement scaled by β; 0 holds it at the current weights),
            whatever the forecaster; None leaves forecasts as they come (a GFM applies its own
            ``gfm.row_mean``).
        reset_state: clear the base optimizer's state (momentum buffers, Adam's moments and step
            count) after each accepted jump, so it restarts at the new weights; False keeps it.

    Raises:
        ValueError: an option is out of range; the message names it.
    """

    period: int
    horizon: int | Callable[[int], int]
    history: int = 5
    record_every: int = 1
    guard: float = 1.0
    shrink: float = 0.5
    warmup: int = 0
    frame: str = "window"
    total_steps: int | None = None
    calibrate: bool = False
    max_scale: float = 4.0
    line_search: tuple[float, ...] = ()
    row_mean: float | None = None
    reset_state: bool = False

    def __post_init__(self) -> None:
        """Reject options out of range (each message names the option)."""
        _check_int("record_every", self.record_every, 1)
        _check_int("period", self.period, 1)
        if self.period % self.record_every:
            raise ValueError(
                f"JumpOptions: `period` must be a multiple of record_every = {self.record_every}, "
                f"got {self.period}"
            )
        _check_int("history", self.history, 2)
        if not callable(self.horizon):
            _check_int("horizon", self.horizon, 1)
        _check_positive("guard", self.guard)
        if not (isinstance(self.shrink, int | float) and 0.0 < self.shrink < 1.0):
            raise ValueError(f"JumpOptions: `shrink` must lie in (0, 1), got {self.shrink!r}")
        _check_int("warmup", self.warmup, 0)
        if self.frame not in FRAMES:
            raise ValueError(
                f"JumpOptions: `frame` must be one of {list(FRAMES)}, got {self.frame!r}"
            )
        if self.total_steps is not None:
            _check_int("total_steps", self.total_steps, 1)
        _check_positive("max_scale", self.max_scale)
        for a in self.line_search:
            _check_positive("line_search", a)
        if self.row_mean is not None and not (
            isinstance(self.row_mean, int | float) and 0.0 <= self.row_mean <= 1.0
        ):
            raise ValueError(
                f"JumpOptions: `row_mean` must lie in [0, 1] or be None, got {self.row_mean!r}"
            )
