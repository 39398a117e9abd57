"""Jump-ahead training: an optimizer wrapper that now and then replaces a step with a forecast.

Each jump moves the weights to a forecast of where the run will be h recorded intervals later,
guarded by a loss check and rolled back on failure.

The nowcasting line of work reports reaching a target accuracy in 1.25x to ~2x fewer optimizer
steps by periodically jumping to forecast weights; ``JumpAhead`` does this with any
``gfm.forecaster.Forecaster`` (GFM, the linear-extrapolation or WNN-style baselines, one of yours).

References:
    [1] Jang et al., "Learning to Boost Training by Periodic Nowcasting Near Future Weights",
        ICML 2023 (WNN).
    [2] Knyazev et al., "Accelerating Training with Neuron Interaction and Nowcasting Networks",
        ICLR 2025 (NiNo).
    [3] Shou, Ding, Gao, "Gradient Flow Matching for Learning Update Dynamics in Neural Network
        Training", arXiv 2505.20221 (2025).
"""

from gfm.jumps.context import (
    OPTIMIZER_NAMES,
    flat_weights,
    jump_baseline,
    load_weights,
    named_params,
    optimizer_context,
)
from gfm.jumps.schedules import FRAMES, Horizon, Jump, JumpOptions, Relative
from gfm.jumps.wrapper import JumpAhead

__all__ = [
    "FRAMES",
    "OPTIMIZER_NAMES",
    "Horizon",
    "Jump",
    "JumpAhead",
    "JumpOptions",
    "Relative",
    "flat_weights",
    "jump_baseline",
    "load_weights",
    "named_params",
    "optimizer_context",
]
