"""The forecasting task and the one interface every forecaster (GFM and each baseline) implements.

A run has recorded checkpoints w_0..w_M at times t_i = i/M. A forecaster sees the prefix
w_0..w_k (k < M) plus what is known in advance about the run (optimizer, hyperparameters, the
learning-rate schedule at every recorded step, per-parameter metadata) and predicts the weights at
later times, above all t = 1 (the final weights w_M).

Shapes: k+1 observed checkpoints, M+1 in the full run, D parameters, T target times.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from gfm.data.schema import ParamMeta, RunRecord


@dataclass(frozen=True)
class Prefix:
    """The observed start of one run.

    Attributes:
        w: (k+1, D) float32 weights at checkpoints 0..k.
        M: number of recorded intervals in the full run; t_i = i / M.
        lr: (M+1,) learning rate in effect at every recorded step of the full run (the schedule
            is chosen before training, so it is known for the future too).
        optimizer: one of ``gfm.config.OPTIMIZERS``.
        hparams: the optimizer's hyperparameters (lr, momentum, nesterov, alpha, beta1, beta2,
            weight_decay; absent keys take torch's defaults).
        record_every: optimizer steps between two recorded checkpoints (S = M * record_every
            steps in the whole run).
        params: per-parameter metadata (layer, kind, fan_in), aligned with the D axis.
        task: the task name (context only; forecasters must not require it).
    """

    w: torch.Tensor
    M: int
    lr: torch.Tensor
    optimizer: str
    hparams: dict[str, float | bool]
    record_every: int
    params: ParamMeta
    task: str = ""

    @property
    def k(self) -> int:
        """Index of the last observed checkpoint."""
        return self.w.shape[0] - 1

    @property
    def t_k(self) -> float:
        """Time of the last observed checkpoint, k / M."""
        return self.k / self.M

    @property
    def D(self) -> int:  # noqa: N802 - the paper's name for the parameter count
        """Number of parameters."""
        return self.w.shape[1]

    def check(self, where: str = "") -> None:
        """Check the prefix's shapes: what every forecaster relies on.

            w (k+1, D) float with 1 <= k < M,   M >= 2,   lr (M+1,),   params describing D

        (Values, such as finite weights and learning rates, are each forecaster's own checks.)

        Raises:
            ValueError: a field does not fit; the message names it, prefixed by ``where``.
        """
        at = f"{where}: " if where else ""
        w = self.w
        if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
            got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
            raise ValueError(f"{at}`prefix.w` must be a 2-D float tensor (k+1, D), got {got}")
        if not isinstance(self.M, int) or self.M < 2:
            raise ValueError(f"{at}`prefix.M` must be an integer >= 2, got {self.M!r}")
        if not 1 <= self.k < self.M:
            raise ValueError(
                f"{at}`prefix.w` must hold k+1 checkpoints with 1 <= k < M={self.M}, "
                f"got {w.shape[0]} checkpoints"
            )
        lr = self.lr
        if not isinstance(lr, torch.Tensor) or tuple(lr.shape) != (self.M + 1,):
            got = tuple(lr.shape) if isinstance(lr, torch.Tensor) else type(lr).__name__
            raise ValueError(f"{at}`prefix.lr` must have shape (M+1,) = ({self.M + 1},), got {got}")
        if len(self.params) != self.D:
            raise ValueError(
                f"{at}`prefix.params` must describe D={self.D} parameters (the columns of "
                f"`prefix.w`), got {len(self.params)}"
            )

    @staticmethod
    def from_record(record: RunRecord, k: int) -> Prefix:
        """The first k+1 checkpoints of a recorded run.

        Raises:
            ValueError: ``k`` is not in [1, M-1].
        """
        M = record.weights.shape[0] - 1
        if not 1 <= k < M:
            raise ValueError(f"`k` must be in [1, {M - 1}] for a run with M={M}, got {k}")
        return Prefix(
            w=torch.from_numpy(np.array(record.weights[: k + 1], dtype=np.float32)),  # a copy
            M=M,
            lr=torch.from_numpy(np.array(record.lr, dtype=np.float64)),
            optimizer=record.spec.optimizer,
            hparams=dict(record.spec.hparams),
            record_every=record.spec.record_every,
            params=record.params,
            task=record.spec.task,
        )


def target_times(prefix: Prefix) -> torch.Tensor:
    """The times of every checkpoint after the prefix: t_{k+1}..t_M = (k+1..M)/M, (M − k,) float64.

    What a forecast of the rest of the run asks for (the last one, t_M = 1, the final weights).
    """
    return torch.arange(prefix.k + 1, prefix.M + 1, dtype=torch.float64) / prefix.M


def observed_index(M: int, fraction: float) -> int:
    """Last observed checkpoint for an observed fraction of the run: k = max(1, round(f * M))."""
    return min(M - 1, max(1, round(fraction * M)))


@runtime_checkable
class Forecaster(Protocol):
    """Fit on training trajectories; forecast later weights from a prefix; save and load.

    ``forecast(prefix, t)`` takes target times t (T,) with t_k < t <= 1 and returns (T, D)
    float32 weights. ``save`` writes the forecaster's config and weights to a folder (safetensors
    or a ``state_dict`` read back with ``weights_only=True``; never a pickle of code).
    """

    name: str

    def fit(self, train: Sequence[RunRecord], val: Sequence[RunRecord] | None = None) -> Forecaster:
        """Learn from training trajectories (read lazily, by index); return self."""
        ...

    def forecast(self, prefix: Prefix, t: torch.Tensor) -> torch.Tensor:
        """Weights (T, D) at target times t (T,), t_k < t <= 1."""
        ...

    def save(self, path: Path) -> None:
        """Write config and weights to the folder ``path`` (no pickled code)."""
        ...

    @classmethod
    def load(cls, path: Path) -> Forecaster:
        """Rebuild a forecaster saved by ``save`` (everything read into memory)."""
        ...
