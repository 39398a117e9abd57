"""Record a live run from inside its training loop: flat weights every r steps and what a forecast needs.

A forecast of where a run ends needs more than its weights so far (``gfm.forecaster.Prefix``):
the optimizer and its hyperparameters, the learning rate at every recorded step of the *whole*
run (the schedule is chosen before training), the run's length and the parameters' layout.
``Recorder`` collects all of it from the model and optimizer of a training loop, so the loop
only calls ``recorder.step()`` after each optimizer step; ``FileStore`` keeps the same record
in a folder (one per study), for other processes and for later.

Shapes: k+1 recorded checkpoints, M+1 in the whole run (M = S / r), D parameters.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gfm.data.atomic import atomic_write_bytes, read_json_object, write_json
from gfm.data.names import SCHEDULES
from gfm.data.optim import scheduled_lr
from gfm.data.schema import ParamMeta
from gfm.forecaster import Prefix
from gfm.jumps.context import flat_weights, named_params, optimizer_context

__all__ = ["FORMAT_VERSION", "FileStore", "Recorder", "Schedule", "prefix_from"]

FORMAT_VERSION = 1
Schedule = str | Callable[[int], float] | Sequence[float]
_META = "run.json"
_CHECKPOINT = "w_{:05d}.npy"


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"Recorder: `{name}` must be an integer >= {low}, got {value!r}")
    return value


def _schedule_lr(schedule: Schedule, base: float, M: int, r: int) -> list[float]:
    """The learning rate at steps 0, r, ..., M·r: lr_i = α(i·r), i = 0..M (M+1 values).

    Raises:
        ValueError: an unknown schedule name, a sequence of the wrong length, or a rate that is
            not finite and positive.
    """
    S = M * r
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise ValueError(
                f"Recorder: `schedule` must be one of {list(SCHEDULES)}, a callable step -> lr "
                f"or M+1 = {M + 1} rates, got {schedule!r}"
            )
        lr = [scheduled_lr(schedule, base, i * r, S) for i in range(M + 1)]
    elif callable(schedule):
        lr = [float(schedule(i * r)) for i in range(M + 1)]
    else:
        lr = [float(x) for x in schedule]
        if len(lr) != M + 1:
            raise ValueError(
                f"Recorder: `schedule` as rates must give one per checkpoint, M+1 = {M + 1}, "
                f"got {len(lr)}"
            )
    bad = [x for x in lr if not (math.isfinite(x) and x >= 0)]
    if bad:
        raise ValueError(f"Recorder: `schedule` must give finite rates >= 0, got {bad[0]!r}")
    return lr


class Recorder:
    """Keeps a live run's flat weights every ``record_every`` optimizer steps, and its metadata.

        checkpoint i = the weights after i·r optimizer steps,   i = 0..k   (w_0: at construction)
        M = S / r,   lr_i = α(i·r) for i = 0..M   (the whole planned run)

    Create it before the first optimizer step and call ``step()`` after each one; ``prefix()`` is
    then what any ``gfm.forecaster.Forecaster`` forecasts from. The forecasters of this project
    were trained on runs of M = 50 recorded intervals: choose r so that S / r is near that.

    The D axis is the model's ``named_parameters()`` in order (buffers such as batch-norm
    statistics are not forecast). The optimizer gives the forecaster its name and
    hyperparameters (SGD, SGD with momentum, Adam, AdamW, RMSprop; first param group), read at
    construction, when its ``lr`` is the base rate the schedule starts from.

    Args:
        model: the network being trained.
        optimizer: its optimizer.
        total_steps: S, the optimizer steps the whole run will take; a multiple of ``record_every``.
        record_every: r, optimizer steps between two checkpoints.
        schedule: the learning rate over the whole run: ``"constant"``, ``"cosine"`` or ``"step"``
            from the optimizer's lr (``gfm.data.optim.scheduled_lr``; your loop applies it, e.g.
            with ``recorder.lr(step)``), a callable ``step -> lr``, or M+1 rates.
        task: a task name, passed on as context.
        store: also write each checkpoint to this ``FileStore`` under ``key``.
        key: the run's name in ``store``.

    Raises:
        TypeError: ``model`` is not an nn.Module, or ``optimizer`` not a torch optimizer.
        ValueError: an argument is out of range, the optimizer is of an unknown kind, or the
            schedule is malformed; the message names the argument.
    """

    def __init__(  # noqa: PLR0913 - keyword-only metadata of one run, as the dataset records it
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        total_steps: int,
        record_every: int,
        schedule: Schedule = "constant",
        task: str = "",
        store: FileStore | None = None,
        key: str = "",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Recorder: `model` must be an nn.Module, got {type(model).__name__}")
        self.optimizer_name, self.hparams = optimizer_context(optimizer)  # checks its type
        r = _check_int("record_every", record_every, 1)
        S = _check_int("total_steps", total_steps, 2 * r)
        if S % r:
            raise ValueError(
                f"Recorder: `total_steps` must be a multiple of record_every = {r}, got {S}"
            )
        named = named_params(model)
        if not named:
            raise ValueError("Recorder: `model` must have at least one parameter, got 0")
        if store is not None and not key:
            raise ValueError("Recorder: `key` must name the run in `store`, got ''")
        self.model = model
        self.params = [p for _, p in named]
        self.layout = [(n, tuple(int(s) for s in p.shape)) for n, p in named]
        self.record_every, self.total_steps, self.M = r, S, S // r
        self.lr_schedule = _schedule_lr(schedule, float(self.hparams["lr"]), self.M, r)
        self.task = str(task)
        self.steps = 0
        self.store, self.key = store, key
        self._w: list[torch.Tensor] = []
        if store is not None:
            store.begin(key, self.metadata())
        self._record()

    # -- the loop's side ---------------------------------------------------------------------

    def step(self) -> None:
        """Count one optimizer step; keep the weights when a checkpoint is due (every r steps)."""
        self.steps += 1
        if self.steps % self.record_every == 0 and self.steps <= self.total_steps:
            self._record()

    def lr(self, step: int) -> float:
        """The schedule's learning rate at optimizer step ``step`` (constant between checkpoints)."""
        i = min(max(step, 0) // self.record_every, self.M)
        return self.lr_schedule[i]

    def _record(self) -> None:
        w = flat_weights(self.params)  # (D,)
        self._w.append(w)
        if self.store is not None:
            self.store.put(self.key, len(self._w) - 1, w)

    # -- what a forecast needs ------------------------------------------------------------------

    @property
    def k(self) -> int:
        """Index of the last recorded checkpoint (0 before r steps)."""
        return len(self._w) - 1

    @property
    def D(self) -> int:  # noqa: N802 - the paper's name for the parameter count
        """Number of parameters."""
        return int(self._w[0].numel())

    def weights(self) -> torch.Tensor:
        """The recorded checkpoints, (k+1, D) float32."""
        return torch.stack(self._w)

    def metadata(self) -> dict[str, Any]:
        """What a forecast needs besides the weights, as JSON (``FileStore``'s ``run.json``)."""
        return {
            "format_version": FORMAT_VERSION,
            "optimizer": self.optimizer_name,
            "hparams": dict(self.hparams),
            "lr": list(self.lr_schedule),
            "M": self.M,
            "record_every": self.record_every,
            "total_steps": self.total_steps,
            "layout": [[n, list(s)] for n, s in self.layout],
            "task": self.task,
        }

    def prefix(self) -> Prefix:
        """The run so far as a forecasting task: w_0..w_k, M, the schedule, optimizer, layout.

        Raises:
            ValueError: fewer than 2 checkpoints (before ``record_every`` steps), or the run is
                over (k = M: nothing left to forecast).
        """
        return prefix_from(self.weights(), self.metadata(), where="Recorder")


def prefix_from(w: torch.Tensor, meta: dict[str, Any], *, where: str = "") -> Prefix:
    """A ``Prefix`` from recorded checkpoints (k+1, D) and a recorder's ``metadata()``.

    Raises:
        ValueError: fewer than 2 checkpoints, none left to forecast (k >= M), or metadata that
            does not describe the weights; the message starts with ``where``.
    """
    at = f"{where}: " if where else ""
    M = int(meta["M"])
    if w.shape[0] < 2:
        raise ValueError(
            f"{at}a forecast needs at least 2 recorded checkpoints (w_0 and w_1, after "
            f"record_every = {meta['record_every']} steps), got {w.shape[0]}"
        )
    if w.shape[0] > M:
        raise ValueError(
            f"{at}the run is over: {w.shape[0]} checkpoints recorded of M+1 = {M + 1}, "
            f"nothing left to forecast"
        )
    params = ParamMeta.from_named_shapes([(str(n), tuple(s)) for n, s in meta["layout"]])
    prefix = Prefix(
        w=w.to(torch.float32),
        M=M,
        lr=torch.tensor(meta["lr"], dtype=torch.float64),  # (M+1,)
        optimizer=str(meta["optimizer"]),
        hparams=dict(meta["hparams"]),
        record_every=int(meta["record_every"]),
        params=params,
        task=str(meta.get("task", "")),
    )
    prefix.check(where)
    return prefix


class FileStore:
    """Recorded runs in a folder, one sub-folder per key, readable by any process.

        <root>/<key>/run.json       the recorder's metadata (``Recorder.metadata``)
        <root>/<key>/w_00000.npy    checkpoint 0, (D,) float32; one file per checkpoint

    Every file is written atomically, so a reader sees whole checkpoints only; a key is a
    relative path of letters, digits and ``._-`` (``study/trial-00007``).

    Args:
        root: the folder (created on the first write).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _folder(self, key: str) -> Path:
        if not key or not re.fullmatch(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*", key) or ".." in key:
            raise ValueError(
                f"FileStore: `key` must be a relative path of letters, digits and ._- "
                f"(e.g. 'study/trial-00007'), got {key!r}"
            )
        return self.root / key

    def begin(self, key: str, meta: dict[str, Any]) -> None:
        """Start the run ``key``: write its metadata, drop checkpoints of an earlier attempt."""
        folder = self._folder(key)
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("w_*.npy"):
            old.unlink()
        write_json(folder / _META, meta)

    def put(self, key: str, i: int, w: torch.Tensor) -> None:
        """Write checkpoint ``i`` (D,) of the run ``key``."""
        buf = _npy_bytes(w.detach().to("cpu", torch.float32).numpy())
        atomic_write_bytes(self._folder(key) / _CHECKPOINT.format(i), buf)

    def keys(self) -> list[str]:
        """The recorded runs, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(str(p.parent.relative_to(self.root)) for p in self.root.rglob(_META))

    def read(self, key: str) -> tuple[torch.Tensor, dict[str, Any]]:
        """(checkpoints (k+1, D) float32, metadata) of the run ``key``: checkpoints 0..k in a row.

        Raises:
            FileNotFoundError: no run ``key`` in the store.
            ValueError: a malformed metadata file, or no checkpoint yet.
        """
        folder = self._folder(key)
        if not (folder / _META).is_file():
            raise FileNotFoundError(f"{folder / _META}: no recorded run {key!r} in {self.root}")
        meta = read_json_object(folder / _META, "a recorded run's metadata")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{folder / _META}: `format_version` must be {FORMAT_VERSION}, "
                f"got {meta.get('format_version')!r}"
            )
        rows = []
        while (folder / _CHECKPOINT.format(len(rows))).is_file():
            rows.append(np.load(folder / _CHECKPOINT.format(len(rows)), allow_pickle=False))
        if not rows:
            raise ValueError(f"{folder}: run {key!r} has no checkpoint yet")
        return torch.from_numpy(np.stack(rows)), meta  # (k+1, D)

    def prefix(self, key: str) -> Prefix:
        """The run ``key`` as a forecasting task (``prefix_from``)."""
        w, meta = self.read(key)
        return prefix_from(w, meta, where=str(self._folder(key)))


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()
