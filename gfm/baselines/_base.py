"""What every baseline shares: config handling, input checks, save and load, small fits.

The baselines themselves live in ``extrapolate`` (per-run, no training), ``lfd2`` and
``learned``; ``gfm.baselines`` chooses them by name (``BASELINES``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from gfm import saved
from gfm._torch import resolve_device
from gfm.data.schema import RunRecord
from gfm.forecaster import Prefix

# ----------------------------------------------------------------------------------------------
# Input checking (one place) and small shared helpers
# ----------------------------------------------------------------------------------------------


def _merge_config(
    name: str, defaults: Mapping[str, Any], config: Mapping[str, Any] | None
) -> dict[str, Any]:
    if config is not None and not isinstance(config, Mapping):
        raise TypeError(f"{name}: `config` must be a mapping, got {type(config).__name__}")
    merged = json.loads(json.dumps(dict(defaults)))  # a deep copy in the form JSON reads back
    unknown = sorted(set(config or {}) - set(defaults))
    if unknown:
        raise ValueError(f"{name}: `config` keys must be among {sorted(defaults)}, got {unknown}")
    merged.update(json.loads(json.dumps(dict(config or {}))))
    return merged


def _check_inputs(prefix: Prefix, t: Tensor | Sequence[float], where: str) -> np.ndarray:
    """Validate a forecast call; return the target times as float64 (T,)."""
    if not isinstance(prefix, Prefix):
        raise TypeError(
            f"{where}: `prefix` must be a gfm.forecaster.Prefix, got {type(prefix).__name__}"
        )
    prefix.check(where)
    tt = torch.as_tensor(t).detach().to("cpu", torch.float64).numpy()
    if tt.ndim != 1 or tt.size == 0:
        raise ValueError(f"{where}: `t` must be a non-empty 1-D tensor (T,), got shape {tt.shape}")
    if not np.all(np.isfinite(tt)) or tt.min() <= prefix.t_k or tt.max() > 1.0 + 1e-9:
        raise ValueError(
            f"{where}: `t` must lie in (t_k, 1] = ({prefix.t_k:.6g}, 1], "
            f"got values in [{tt.min():.6g}, {tt.max():.6g}]"
        )
    return np.minimum(tt, 1.0)


def _check_runs(runs: Sequence[RunRecord], where: str, *, min_runs: int) -> None:
    if not isinstance(runs, Sequence):
        raise TypeError(
            f"{where}: `train` must be a Sequence[RunRecord], got {type(runs).__name__}"
        )
    if len(runs) < min_runs:
        raise ValueError(f"{where}: `train` must hold at least {min_runs} run(s), got {len(runs)}")


def _prefix_w(prefix: Prefix) -> np.ndarray:
    return prefix.w.detach().to("cpu", torch.float64).numpy()


def _linear_fit(w: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares line through the last ``window`` checkpoints.

        w_i ≈ level + slope · (i − k),   i = k−K+1 .. k,   K = min(window, k+1)

    Args:
        w: (k+1, D) observed weights.
        window: K, the number of checkpoints fitted.

    Returns:
        level (D,) the line's value at i = k, slope (D,) per recorded step.
    """
    K = min(window, w.shape[0])
    i = np.arange(1 - K, 1, dtype=np.float64)  # offsets i − k
    y = w[-K:]  # (K, D)
    ic = i - i.mean()
    slope = (ic[:, None] * (y - y.mean(0))).sum(0) / (ic**2).sum()
    level = y.mean(0) - slope * i.mean()
    return level, slope


def _interp_rows(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Piecewise-linear rows of w (N+1, D) at fractional indices s (T,) in [0, N] → (T, D)."""
    lo = np.clip(np.floor(s).astype(np.int64), 0, w.shape[0] - 2)
    frac = (s - lo)[:, None]
    return w[lo] * (1.0 - frac) + w[lo + 1] * frac


# ----------------------------------------------------------------------------------------------
# The baselines
# ----------------------------------------------------------------------------------------------


class _Baseline:
    """Config handling, input checking and save/load shared by every baseline."""

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    min_train_runs: ClassVar[int] = 0

    def __init__(self, config: Mapping[str, Any] | None = None, *, device: str = "cpu") -> None:
        """Build the baseline from a config dict (unknown keys are rejected) on ``device``."""
        self.config = _merge_config(self.name, self.defaults, config)
        self.device = resolve_device(device)
        self._check_config()

    def _check_config(self) -> None:
        """Raise ValueError for config values out of range (hook)."""

    def _positive(self, *keys: str) -> None:
        for key in keys:
            value = self.config[key]
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ValueError(
                    f"{self.name}: `config.{key}` must be a positive number, got {value!r}"
                )

    def fit(self, train: Sequence[RunRecord], val: Sequence[RunRecord] | None = None) -> _Baseline:
        """Fit on the training runs (a no-op for per-run extrapolators); ``val`` is not used."""
        _check_runs(train, f"{self.name}.fit", min_runs=self.min_train_runs)
        self._fit(train)
        return self

    def _fit(self, train: Sequence[RunRecord]) -> None:
        """Learn from the training runs (hook)."""

    def forecast(self, prefix: Prefix, t: Tensor) -> Tensor:
        """Weights at target times t from the observed prefix.

        Args:
            prefix: the observed run, w (k+1, D).
            t: (T,) target times with t_k < t <= 1.

        Returns:
            (T, D) float32 forecast weights on the CPU.

        Raises:
            TypeError: ``prefix`` is not a Prefix.
            ValueError: malformed prefix, or ``t`` outside (t_k, 1].
        """
        tt = _check_inputs(prefix, t, f"{self.name}.forecast")
        out = self._forecast(prefix, _prefix_w(prefix), tt)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))

    def _forecast(self, prefix: Prefix, w: np.ndarray, t: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _state(self) -> dict[str, Tensor]:
        return {}

    def _load_state(self, state: dict[str, Tensor]) -> None:
        if state:
            raise ValueError(f"{self.name}: state must be empty, got tensors {sorted(state)}")

    def save(self, path: Path) -> None:
        """Write the forecaster folder ``path`` (``gfm.saved``): config as JSON, tensors as safetensors."""
        saved.write(path, kind=self.name, config=self.config, tensors=self._state(), cls=type(self))

    @classmethod
    def load(cls, path: Path, *, device: str = "cpu") -> _Baseline:
        """Rebuild a saved baseline from its folder.

        Raises:
            FileNotFoundError: no saved forecaster in ``path``.
            ValueError: the folder holds another kind of forecaster or another format version.
        """
        config, tensors = saved.read(path, kind=cls.name)
        model = cls(config, device=device)
        model._load_state(tensors)
        return model
