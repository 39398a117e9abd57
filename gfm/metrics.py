"""Forecast error metrics: final-weight error, relative to persistence, per horizon, downstream.

Shapes: D parameters, T target times. Every metric takes numpy arrays or torch tensors and computes
in float64. Downstream quality comes from an injected ``score(record, w) -> (loss, acc)`` callable
(``gfm.data.tasks.evaluate_weights`` behind a closure over the task settings), so this module
imports no task code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from gfm.data.schema import RunRecord

__all__ = ["Score", "downstream", "horizon_mse", "mae", "mse", "rel_mse"]

Score = Callable[[RunRecord, np.ndarray], tuple[float, float]]


def _as_array(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"`{name}` must be an array or tensor of numbers, got {type(x).__name__}"
        ) from err


def _check_pair(w_hat: Any, w: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_array(w_hat, "w_hat"), _as_array(w, "w")
    if a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"`w_hat` must be non-empty with the shape of `w` {b.shape}, got shape {a.shape}"
        )
    return a, b


def mse(w_hat: Any, w: Any) -> float:
    """Mean squared error over all parameters (and times, for 2-D inputs).

        MSE = mean_j (ŵ_j − w_j)²

    Args:
        w_hat: (D,) or (T, D) forecast weights.
        w: the true weights, same shape.

    Raises:
        ValueError: the shapes differ or are empty.
    """
    a, b = _check_pair(w_hat, w)
    return float(np.mean((a - b) ** 2))


def mae(w_hat: Any, w: Any) -> float:
    """Mean absolute error over all parameters.

        MAE = mean_j |ŵ_j − w_j|

    Args:
        w_hat: (D,) or (T, D) forecast weights.
        w: the true weights, same shape.

    Raises:
        ValueError: the shapes differ or are empty.
    """
    a, b = _check_pair(w_hat, w)
    return float(np.mean(np.abs(a - b)))


def rel_mse(w_hat: Any, w: Any, w_ref: Any) -> float:
    """MSE of a forecast relative to a reference forecast (persistence: w_ref = w_k).

        rel = MSE(ŵ, w) / MSE(w_ref, w)

    Below 1 the forecast beats the reference. When the reference is exact (MSE 0) the ratio is 1
    if the forecast is exact too, else +inf.

    Args:
        w_hat: (D,) or (T, D) forecast weights.
        w: the true weights, same shape.
        w_ref: the reference forecast, same shape.

    Raises:
        ValueError: the shapes differ or are empty.
    """
    err = mse(w_hat, w)
    ref = mse(w_ref, w)
    if ref == 0.0:
        return 1.0 if err == 0.0 else math.inf
    return err / ref


def horizon_mse(w_hat: Any, w: Any) -> np.ndarray:
    """MSE at each target time (error vs horizon).

        MSE_i = mean_j (ŵ_ij − w_ij)²,   i = 1..T

    Args:
        w_hat: (T, D) forecast weights at T times.
        w: (T, D) true weights at the same times.

    Returns:
        (T,) float64.

    Raises:
        ValueError: the shapes differ or are not 2-D.
    """
    a, b = _check_pair(w_hat, w)
    if a.ndim != 2:
        raise ValueError(f"`w_hat` must be 2-D (T, D), got shape {a.shape}")
    return np.mean((a - b) ** 2, axis=1)


def downstream(score: Score, record: RunRecord, w: Any) -> tuple[float, float]:
    """Held-out loss and accuracy of the run's network loaded with weights w.

    Args:
        score: ``score(record, w) -> (loss, acc)``, e.g. a closure over
            ``gfm.data.tasks.evaluate_weights(record.spec, task_cfg, w)``; acc is NaN for
            regression tasks.
        record: the run the weights belong to.
        w: (D,) flat weights in state_dict order.

    Returns:
        (loss, acc) as floats.

    Raises:
        TypeError: ``score`` is not callable or does not return two numbers.
        ValueError: ``w`` does not have the run's D parameters.
    """
    if not callable(score):
        raise TypeError(f"`score` must be callable as score(record, w), got {type(score).__name__}")
    D = record.weights.shape[1]
    a = _as_array(w, "w").astype(np.float32)
    if a.shape != (D,):
        raise ValueError(
            f"`w` must have shape (D,) = ({D},) for run {record.spec.run_id!r}, got {a.shape}"
        )
    out = score(record, a)
    try:
        loss, acc = out
        return float(loss), float(acc)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`score` must return (loss, acc), got {out!r}") from err
