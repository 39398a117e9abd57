"""Deprecated: the jump-ahead optimizer wrapper is ``gfm.jumps.JumpAhead`` (removed in gfm 0.3).

``from gfm.accelerate import Accelerated`` keeps working for one release, with a warning.
"""

import warnings

from gfm.jumps import Horizon, Jump, JumpAhead, Relative, jump_baseline, optimizer_context

Accelerated = JumpAhead

__all__ = ["Accelerated", "Horizon", "Jump", "Relative", "jump_baseline", "optimizer_context"]

warnings.warn(
    "gfm.accelerate is renamed gfm.jumps (Accelerated -> JumpAhead); the old names go in gfm 0.3",
    DeprecationWarning,
    stacklevel=2,
)
