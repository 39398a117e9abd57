"""Baseline forecasters of a run's later weights, small classes chosen by name from ``BASELINES``.

Every baseline implements ``gfm.forecaster.Forecaster``: ``fit(train, val)`` on the same lazy
``Sequence[RunRecord]`` GFM trains on, ``forecast(prefix, t) -> (T, D)`` for target times
t_k < t <= 1, ``save(path)`` (the ``gfm.saved`` folder, no pickle) and ``load``.

Per-run extrapolators (no training): persistence, linear, geometric, DMD. Learned from the training
runs: LFD-2 (ridge regression), WNN (per-weight MLP), LSTM and Transformer (per-parameter sequence
models). The learned ones share one per-parameter encoding (``_encode``) built on
``gfm.features``, the context GFM sees too: values and increments normalised per layer
(``Normalizer``), the learning-rate schedule (``lr_features``) and static ``context``.

References:
    [1] Schmid, "Dynamic mode decomposition of numerical and experimental data", J. Fluid Mech. 656
        (2010).
    [2] Tu, Rowley, Luchtenburg, Brunton, Kutz, "On dynamic mode decomposition: theory and
        applications", J. Comput. Dyn. 1(2) (2014).
    [3] Jang et al., "Learning to Boost Training by Periodic Nowcasting Near Future Weights",
        ICML 2023 (WNN).
    [4] Hochreiter, Schmidhuber, "Long short-term memory", Neural Computation 9(8) (1997).
    [5] Vaswani et al., "Attention is all you need", NeurIPS 2017.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gfm import saved
from gfm.baselines._base import _Baseline
from gfm.baselines.extrapolate import DMD, Geometric, Linear, Persistence
from gfm.baselines.learned import LSTM, WNN, Transformer
from gfm.baselines.lfd2 import LFD2

__all__ = [
    "BASELINES",
    "DMD",
    "LFD2",
    "LSTM",
    "WNN",
    "Geometric",
    "Linear",
    "Persistence",
    "Transformer",
    "load",
    "make",
]

BASELINES: dict[str, type[_Baseline]] = {
    cls.name: cls for cls in (Persistence, Linear, Geometric, DMD, LFD2, WNN, LSTM, Transformer)
}


def make(name: str, config: Mapping[str, Any] | None = None, *, device: str = "cpu") -> _Baseline:
    """The baseline ``name`` built from ``config`` (its class defaults for missing keys).

    Raises:
        ValueError: ``name`` is not a key of ``BASELINES``, or a config key is unknown.
    """
    if name not in BASELINES:
        raise ValueError(f"`name` must be one of {list(BASELINES)}, got {name!r}")
    return BASELINES[name](config, device=device)


def load(path: str | Path, *, device: str = "cpu") -> _Baseline:
    """Load any saved baseline from its folder, choosing the class by the saved kind.

    Raises:
        FileNotFoundError: no saved forecaster in ``path``.
        ValueError: the saved kind is not a key of ``BASELINES``.
    """
    kind = saved.kind_in(path)
    if kind not in BASELINES:
        raise ValueError(f"{path}: saved `kind` must be one of {list(BASELINES)}, got {kind!r}")
    return BASELINES[kind].load(Path(path), device=device)
