"""gfm: Gradient Flow Matching — learn how training moves weights and forecast where a run ends.

    from gfm import GFM, Trajectories, load_settings
    settings = load_settings("params.yaml")
    data = Trajectories(settings.data.root)
    model = GFM(settings.gfm, settings.train).fit(data.select("seed", "train"))
    w = model.forecast(prefix, t)             # (T, D): a Prefix of a run, target times t

The names below load on first use, so ``import gfm.config`` (the CLI's start) needs no torch.
(The ODE solve itself is ``gfm.forecast.forecast``: the module's name is taken by the module.)

Reference: Shou, Ding, Gao, "Gradient Flow Matching for Learning Update Dynamics in Neural
Network Training", arXiv 2505.20221 (2025).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_HOMES = {
    "GFM": "gfm.model",
    "fit": "gfm.training",
    "Prefix": "gfm.forecaster",
    "Forecaster": "gfm.forecaster",
    "Trajectories": "gfm.data.trajectories",
    "Settings": "gfm.config",
    "load_settings": "gfm.config",
}

__all__ = [
    "GFM",
    "Forecaster",
    "Prefix",
    "Settings",
    "Trajectories",
    "__version__",
    "fit",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    """The public names, imported from their home module on first use."""
    if name not in _HOMES:
        raise AttributeError(f"module 'gfm' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
