"""``JumpAhead``: the optimizer wrapper that now and then replaces a step by a forecast jump."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from gfm.data.schema import ParamMeta
from gfm.forecaster import Forecaster, Prefix
from gfm.jumps.context import (
    ModelParams,
    flat_weights,
    load_weights,
    named_params,
    optimizer_context,
)
from gfm.jumps.schedules import Jump, JumpOptions, Relative
from gfm.rows import shrink_row_means

logger = logging.getLogger("gfm.jumps")

_STATE_KEYS = (
    "steps",
    "progress",
    "since",
    "next_jump",
    "scale",
    "history",
    "history_lr",
    "history_progress",
    "history_real",
    "spacing",
    "jumps",
    "optimizer",
)


# ----------------------------------------------------------------------------------------------
# The wrapper
# ----------------------------------------------------------------------------------------------


class JumpAhead:
    """A torch optimizer that every ``period`` base steps takes one forecast jump instead.

    Training alternates ``period`` base optimizer steps with one jump (a cycle of period + 1
    calls to ``step``; a jump counts as one step). Every ``record_every`` base steps the flat
    weights are kept. A jump frames the kept checkpoints as the start of a *virtual run* and
    forecasts h intervals further:

        kept      w_0, …, w_k  (the last one: the current weights w_s),  r = spacing in steps
        horizon   h = max(1, round(scale · horizon(step or progress)))
        window    the last ``history`` checkpoints;  M = k + h, forecast t = 1
        run       every checkpoint since the start (thinned to every other one, at twice the
                  spacing, beyond ``history``);  M = max(k + h, total_steps / r),
                  forecast t = (k+1..k+h)/M, and the forecast path joins the kept run
        rows      ŵ ← ``gfm.rows.shrink_row_means``(ŵ, w_s, β = ``row_mean``) (optional)
        calibrate ŵ ← w_s + a · (ŵ − w_s), a from ``calibration`` (optional)
        search    ŵ ← w_s + a · (ŵ − w_s), a = argmin over ``line_search`` of L(·) (optional)
        guard     keep ŵ iff ŵ is finite and L(ŵ) <= guard · L(w_s);
                  else  w ← w_s  and  scale ← shrink · scale

    Why two frames: forecasters are trained on runs of M intervals from initialisation and
    asked for t = 1 from observed fractions t_k (GFM: 0.05–0.6; WNN: 0.05–0.9). ``window``
    keeps t_k = k/(k+h) in that range whatever the run's length, but shows the forecaster a run
    that starts mid-training (fields scan Adam moments from zero at its start). ``run`` shows the
    run as it is, from initialisation, as the forecasters were trained; with ``total_steps``
    (the planned budget) the frame is the planned run itself. On the tasks of the dataset
    ``run`` forecasts better (BENCHMARKS.md, "Jump-ahead training").

    After an accepted jump in ``window`` the kept history restarts at ŵ (the checkpoints before
    it belong to a path the run no longer follows); after a rollback it continues, and the next
    attempt comes ``period`` base steps later. The base optimizer's state (momentum buffers,
    Adam moments and step counts) is kept, unless ``reset_state`` clears it after each accepted
    jump. ``progress`` counts effective optimizer steps: base steps plus h·r per accepted jump,
    the position an ``lr_schedule`` (and a ``Relative`` horizon) is evaluated at.

    Args:
        optimizer: the base optimizer (SGD, SGD with momentum, Adam, AdamW or RMSprop).
        model_params: the module (its ``named_parameters()``, in order: the flat layout of
            ``gfm.data.tasks.flatten`` for modules without buffers), ``named_parameters()``
            pairs, or plain parameters. All must be optimised by ``optimizer``.
        forecaster: any ``gfm.forecaster.Forecaster``.
        options: when to jump, how far, the frame and the guard (``JumpOptions``).
        loss_fn: ``() -> loss`` evaluated on a fixed batch (train or held-out) with the model's
            current weights; None disables the loss guard (non-finite forecasts still roll back).
        lr_schedule: ``progress -> lr`` of the run; default: the learning rate recorded with
            each kept checkpoint, and the current one held constant into the future.
        task: task name passed on in the prefix (context only).

    Raises:
        TypeError: ``optimizer`` or ``forecaster`` has the wrong type.
        ValueError: an option is out of range, or a parameter is not in ``optimizer``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model_params: ModelParams,
        forecaster: Forecaster,
        options: JumpOptions,
        *,
        loss_fn: Callable[[], float | torch.Tensor] | None = None,
        lr_schedule: Callable[[int], float] | None = None,
        task: str = "",
    ) -> None:
        self.optimizer_name, _ = optimizer_context(optimizer)  # also checks its type
        named = named_params(model_params)
        self._check_inputs(optimizer, named, forecaster, options, loss_fn)
        if len({g.get("lr") for g in optimizer.param_groups}) > 1:
            logger.warning("param groups differ in lr: the forecaster sees the first group's")

        self.optimizer = optimizer
        self.forecaster = forecaster
        self.options = options
        self.params = [p for _, p in named]
        self.meta = ParamMeta.from_named_shapes([(n, tuple(p.shape)) for n, p in named])
        self.D = len(self.meta)
        o = options
        self.period, self.history, self.record_every = o.period, o.history, o.record_every
        self.horizon = o.horizon
        self.loss_fn, self.guard, self.shrink, self.warmup = (
            loss_fn,
            float(o.guard),
            o.shrink,
            o.warmup,
        )
        self.lr_schedule, self.task = lr_schedule, task
        self.frame, self.total_steps = o.frame, o.total_steps
        self.calibrate, self.max_scale = bool(o.calibrate), float(o.max_scale)
        self.line_search = tuple(float(a) for a in o.line_search)
        self.row_mean, self.reset_state = o.row_mean, bool(o.reset_state)

        self.steps = 0  # calls to step(), jumps included
        self.progress = 0  # effective optimizer steps: base steps + h·r per accepted jump
        self.scale = 1.0  # horizon scale, shrunk by each rollback
        self._r = o.record_every  # progress between kept checkpoints (doubles when "run" thins)
        self._since = 0  # base steps since the last jump attempt (or the start)
        self._next_jump = o.period  # value of _since at which the next jump is due
        self._w: list[torch.Tensor] = []  # kept checkpoints, (D,) float32 each
        self._lr: list[float] = []  # learning rate recorded with each kept checkpoint
        self._at: list[int] = []  # progress at each kept checkpoint
        self._real: list[bool] = []  # reached by base steps from the previous one
        self.jumps: list[Jump] = []

    @staticmethod
    def _check_inputs(
        optimizer: torch.optim.Optimizer,
        named: list[tuple[str, nn.Parameter]],
        forecaster: Any,
        options: Any,
        loss_fn: Any,
    ) -> None:
        if not named:
            raise ValueError("JumpAhead: `model_params` must hold at least one parameter, got 0")
        optimised = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [n for n, p in named if id(p) not in optimised]
        if missing:
            raise ValueError(
                f"JumpAhead: `model_params` must all be optimised by `optimizer`, got {missing} "
                "outside its param groups"
            )
        if not callable(getattr(forecaster, "forecast", None)):
            raise TypeError(
                "`forecaster` must implement gfm.forecaster.Forecaster (a forecast method), "
                f"got {type(forecaster).__name__}"
            )
        if not isinstance(options, JumpOptions):
            raise TypeError(f"`options` must be a JumpOptions, got {type(options).__name__}")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"`loss_fn` must be callable or None, got {type(loss_fn).__name__}")

    # -- the optimizer face ------------------------------------------------------------------

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The base optimizer's param groups (for learning-rate schedulers)."""
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients (the base optimizer's ``zero_grad``)."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @property
    def jump_due(self) -> bool:
        """Whether the next ``step()`` is a jump (then its gradients are not used)."""
        return (
            self.steps >= self.warmup
            and len(self._w) >= 2
            and self._since >= self._next_jump
            and self.progress == self._at[-1]  # the weights are the last kept checkpoint
        )

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step: a base optimizer step, or a jump when one is due (``jump_due``).

        Args:
            closure: passed to the base optimizer's ``step`` (not called on a jump).

        Returns:
            What the base optimizer's ``step`` returns; None for a jump.
        """
        if not self._w:  # the starting point is the first kept checkpoint
            self._record()
        if self.jump_due:
            self._jump()
            self.steps += 1
            return None
        out = self.optimizer.step(closure)
        self.steps += 1
        self.progress += 1
        self._since += 1
        if self.progress - self._at[-1] >= self._r:
            self._record()
            self._trim()
        return out

    # -- flat weights --------------------------------------------------------------------------

    def flat(self) -> torch.Tensor:
        """The current weights as one (D,) float32 CPU vector, in ``model_params`` order."""
        return flat_weights(self.params)

    def _load(self, w: torch.Tensor) -> None:
        load_weights(self.params, w)

    def _record(self, w: torch.Tensor | None = None, lr: float | None = None) -> None:
        """Keep the current weights at ``progress``, or a forecast ``w`` one spacing after the last."""
        if w is None:
            self._w.append(self.flat())
            self._lr.append(float(self.optimizer.param_groups[0]["lr"]))
            self._at.append(self.progress)
        else:
            self._w.append(w)
            self._lr.append(float(lr))
            self._at.append(self._at[-1] + self._r)
        # whether base steps led here from the previous checkpoint (not a forecast)
        self._real.append(w is None)

    def _trim(self) -> None:
        """At most ``history`` kept checkpoints: drop the oldest ("window") or thin ("run")."""
        while len(self._w) > self.history:
            if self.frame == "window":
                del self._w[0], self._lr[0], self._at[0]
            else:
                # keep every other checkpoint from the run's start, at twice the spacing
                real = [
                    self._real[i] and (i == 0 or self._real[i - 1])
                    for i in range(0, len(self._w), 2)
                ]
                self._w, self._lr, self._at = self._w[::2], self._lr[::2], self._at[::2]
                self._real = real
                self._r *= 2

    # -- the jump ------------------------------------------------------------------------------

    def _horizon(self) -> int:
        """The jump's length in kept intervals (of ``_r`` steps), from the schedule and scale."""
        if isinstance(self.horizon, Relative):
            h = self.horizon(self.progress)
        else:
            h = self.horizon(self.steps) if callable(self.horizon) else self.horizon
        steps = self.scale * int(h) * self.record_every
        return max(1, round(steps / self._r))

    def _frame(self, h: int, k: int | None = None) -> tuple[int, torch.Tensor]:
        """M of the framed run and the target times of the jump, (k+1..k+h)/M (h,) float64.

            window:  M = k + h                                   (the jump lands at t = 1)
            run:     M = max(k + h, ceil(total_steps / r))       (w_0 is the run's start)

        ``k`` is the last checkpoint the prefix holds (default: the last kept one).
        """
        k = len(self._w) - 1 if k is None else k
        M = k + h
        if self.frame == "run" and self.total_steps is not None:
            M = max(M, -(-self.total_steps // self._r))
        return M, torch.arange(k + 1, k + h + 1, dtype=torch.float64) / M

    def prefix(self, h: int, k: int | None = None) -> Prefix:
        """The kept checkpoints framed as the start of a run that the jump of h intervals ends.

            w = kept checkpoints 0..k (k+1, D),  M = k + h (or the run's length, ``frame="run"``),
            lr_i = α(progress at checkpoint i) for i <= k, α(progress_k + (i − k)·r) for i > k

        Args:
            h: the horizon in kept intervals (>= 1).
            k: the last checkpoint to include (default: the last kept one; an earlier one for
                the calibration backtest, whose later learning rates are the recorded ones).

        Returns:
            The prefix the forecaster sees; the jump forecasts t = (k+1..k+h)/M.
        """
        k = len(self._w) - 1 if k is None else k
        M, _ = self._frame(h, k)
        if self.lr_schedule is not None:
            at = self._at[: k + 1]
            steps = at + [at[-1] + j * self._r for j in range(1, M - k + 1)]
            lr = [float(self.lr_schedule(s)) for s in steps]
        else:
            known = self._lr[: M + 1]
            lr = known + [float(self.optimizer.param_groups[0]["lr"])] * (M + 1 - len(known))
        _, hparams = optimizer_context(self.optimizer)  # lr and friends as they are now
        return Prefix(
            w=torch.stack(self._w[: k + 1]),  # (k+1, D)
            M=M,
            lr=torch.tensor(lr, dtype=torch.float64),  # (M+1,)
            optimizer=self.optimizer_name,
            hparams=hparams,
            record_every=self._r,
            params=self.meta,
            task=self.task,
        )

    def calibration(self, h: int) -> float:
        """Least-squares scale of the forecaster's displacement, backtested on the kept run.

            b = min(h, k − 1, trailing intervals taken by base steps)
            f = forecast(w_0..w_(k−b))[t_k] − w_(k−b),   d = w_k − w_(k−b)
            a = clip(⟨f, d⟩ / ⟨f, f⟩, 0, max_scale)

        The forecaster predicts the last b kept intervals from the checkpoints before them
        (only intervals the base optimizer took, never an earlier jump's forecast path);
        ``a`` is the factor that best maps its predicted displacement onto the one the run
        actually took (1 for a calibrated forecaster, > 1 for one that under-predicts how far
        the weights move, 0 for one that points the wrong way).

        Args:
            h: the jump's horizon in kept intervals.

        Returns:
            a; 1.0 when fewer than three checkpoints are kept (nothing to backtest on).
        """
        k = len(self._w) - 1
        real = 0  # trailing intervals the base optimizer actually took
        while real < k and self._real[k - real]:
            real += 1
        b = min(h, real, k - 1)
        if b < 1:
            return 1.0
        _, t = self._frame(b, k - b)
        f = self.forecaster.forecast(self.prefix(b, k - b), t[-1:])  # (1, D)
        f = f[0].detach().to("cpu", torch.float64) - self._w[k - b].double()  # (D,)
        d = (self._w[k] - self._w[k - b]).double()  # (D,)
        ff = float(f @ f)
        if not math.isfinite(ff) or ff == 0.0:
            return 1.0
        return min(max(float(f @ d) / ff, 0.0), self.max_scale)

    def _loss(self) -> float:
        if self.loss_fn is None:
            return float("nan")
        with torch.no_grad():
            value = self.loss_fn()
        return float(value)

    def _search(self, w_before: torch.Tensor, w_end: torch.Tensor) -> tuple[float, float, int]:
        """(a, L(w_s + a · (ŵ − w_s)), evaluations) of the ``line_search`` factor of least loss."""
        best_a, best = 1.0, float("inf")
        for a in self.line_search:
            self._load(w_before + a * (w_end - w_before))
            value = self._loss()
            if math.isfinite(value) and value < best:
                best_a, best = a, value
        return best_a, best, len(self.line_search)

    def _jump(self) -> None:
        h = self._horizon()
        w_before = self.flat()
        t0 = time.perf_counter()
        loss_before = self._loss()
        t1 = time.perf_counter()
        prefix = self.prefix(h)
        _, t = self._frame(h)
        if self.frame == "window":
            t = t[-1:]  # only the end: the history restarts there
        w_hat = self.forecaster.forecast(prefix, t)
        T = len(t)
        if not isinstance(w_hat, torch.Tensor) or tuple(w_hat.shape) != (T, self.D):
            got = tuple(w_hat.shape) if isinstance(w_hat, torch.Tensor) else type(w_hat).__name__
            raise ValueError(
                f"{type(self.forecaster).__name__}.forecast: output must have shape (T, D) = "
                f"({T}, {self.D}), got {got}"
            )
        w_hat = w_hat.detach().to("cpu", torch.float32)  # (T, D)
        if self.row_mean is not None:
            w_hat = shrink_row_means(w_hat, w_before, self.meta, self.row_mean)
        scale = self.calibration(h) if self.calibrate else 1.0
        if scale != 1.0:
            w_hat = w_before + scale * (w_hat - w_before)  # (T, D)
        t2b = time.perf_counter()
        finite = bool(torch.isfinite(w_hat).all())
        evals = 1
        if finite and self.line_search and self.loss_fn is not None:
            a, loss_after, evals = self._search(w_before, w_hat[-1])
            w_hat = w_before + a * (w_hat - w_before)  # (T, D): the path scaled alike
            scale *= a
            self._load(w_hat[-1])
        elif finite:
            self._load(w_hat[-1])
            loss_after = self._loss()
        else:
            loss_after = float("inf")
        t3 = time.perf_counter()
        accepted = finite and (
            self.loss_fn is None
            or (math.isfinite(loss_after) and loss_after <= self.guard * loss_before)
        )
        jump = Jump(
            step=self.steps,
            horizon=h * self._r // self.record_every,
            loss_before=loss_before,
            loss_after=loss_after,
            accepted=accepted,
            forecast_s=t2b - t1,
            guard_s=(t1 - t0) + (t3 - t2b),
            scale=scale,
            evals=1 + evals,
        )
        self.jumps.append(jump)
        self._since, self._next_jump = 0, self.period
        if accepted:
            if self.reset_state:
                self.optimizer.state.clear()  # a defaultdict: rebuilt lazily at the next step
            lr = prefix.lr[prefix.k + 1 : prefix.k + h + 1].tolist()
            if self.frame == "window":
                # the old checkpoints lie on a path the run no longer follows: restart at ŵ
                self.progress += h * self._r
                self._w, self._lr, self._at, self._real = [], [], [], []
                self._record()
            else:
                # the forecast path becomes the run's history, checkpoint by checkpoint
                for j in range(h):
                    self._record(w_hat[j].clone(), lr[j])
                self.progress = self._at[-1]
                self._trim()
            logger.debug(
                "jump at step %d: h=%d, loss %.4g -> %.4g", self.steps, h, loss_before, loss_after
            )
        else:
            self._load(w_before)
            self.scale *= self.shrink
            logger.debug(
                "jump at step %d rolled back: h=%d, loss %.4g -> %.4g (guard %.3g); horizon scale %.3g",
                self.steps,
                h,
                loss_before,
                loss_after,
                self.guard,
                self.scale,
            )

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically.

        Counters, horizon scale, kept history, the jump log and the base optimizer's state; not
        the model's weights (save those yourself).

        Loadable with ``torch.load(..., weights_only=True)``.
        """
        history = torch.stack(self._w) if self._w else torch.zeros(0, self.D)
        return {
            "steps": self.steps,
            "progress": self.progress,
            "since": self._since,
            "next_jump": self._next_jump,
            "scale": self.scale,
            "history": history.clone(),  # (n, D)
            "history_lr": list(self._lr),
            "history_progress": list(self._at),
            "history_real": list(self._real),
            "spacing": self._r,
            "jumps": [asdict(j) for j in self.jumps],
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a ``state_dict`` (the base optimizer's state included).

        Raises:
            ValueError: keys are missing or the history does not have D columns.
        """
        missing = sorted(set(_STATE_KEYS) - set(state))
        if missing:
            raise ValueError(
                f"JumpAhead.load_state_dict: `state` must hold {missing}, got {sorted(state)}"
            )
        history = torch.as_tensor(state["history"], dtype=torch.float32)
        if history.ndim != 2 or history.shape[1] != self.D:
            raise ValueError(
                f"JumpAhead.load_state_dict: `history` must be (n, D) = (n, {self.D}), "
                f"got {tuple(history.shape)}"
            )
        self.steps = int(state["steps"])
        self.progress = int(state["progress"])
        self._since = int(state["since"])
        self._next_jump = int(state["next_jump"])
        self.scale = float(state["scale"])
        self._w = [row.clone() for row in history]
        self._lr = [float(x) for x in state["history_lr"]]
        self._at = [int(x) for x in state["history_progress"]]
        self._real = [bool(x) for x in state["history_real"]]
        self._r = int(state["spacing"])
        self.jumps = [Jump(**j) for j in state["jumps"]]
        self.optimizer.load_state_dict(state["optimizer"])

    def __repr__(self) -> str:
        return (
            f"JumpAhead({type(self.optimizer).__name__}, {type(self.forecaster).__name__}, "
            f"period={self.period}, horizon={self.horizon!r}, history={self.history}, "
            f"record_every={self.record_every}, guard={self.guard})"
        )
