"""Deprecated: the jump-ahead optimizer wrapper is ``gfm.jumps.JumpAhead`` (removed in gfm 0.3).

``from gfm.accelerate import Accelerated`` keeps working for one release, with a warning.
"""

import warnings
from typing import Any

from gfm.jumps import (
    Horizon,
    Jump,
    JumpAhead,
    JumpOptions,
    Relative,
    jump_baseline,
    optimizer_context,
)


def Accelerated(  # capitalised: it stands in for a class
    optimizer: Any,
    model_params: Any,
    forecaster: Any,
    *,
    loss_fn: Any = None,
    lr_schedule: Any = None,
    task: str = "",
    **options: Any,
) -> JumpAhead:
    """``JumpAhead`` with its options as keywords, as gfm 0.1's ``Accelerated`` took them."""
    return JumpAhead(
        optimizer,
        model_params,
        forecaster,
        JumpOptions(**options),
        loss_fn=loss_fn,
        lr_schedule=lr_schedule,
        task=task,
    )


__all__ = ["Accelerated", "Horizon", "Jump", "Relative", "jump_baseline", "optimizer_context"]

warnings.warn(
    "gfm.accelerate is renamed gfm.jumps (Accelerated -> JumpAhead); the old names go in gfm 0.3",
    DeprecationWarning,
    stacklevel=2,
)
