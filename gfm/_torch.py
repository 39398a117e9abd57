"""Torch settings every part shares: one intra-op thread, and the device by name.

One home for both, used by forecasting and training (``gfm.forecast``, ``gfm.training``), the
recording of runs (``gfm.data.generate``) and the learned baselines.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["DEVICES", "one_thread", "resolve_device"]

DEVICES = ("cpu", "cuda", "auto")


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch's CPU ops on one intra-op thread inside the block, restoring the setting after.

    Two reasons. Speed: GFM's ops are small (a parameter chunk × K per ODE stage), so a second
    thread costs more in synchronisation than it saves, and on a shared machine a waiting
    thread makes every op wait (measured 25× slower training with two threads on two busy
    cores). Reproducibility: float reductions split over threads can round differently, so one
    thread everywhere is what makes a recorded run bit-identical inline and in a worker process.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(name: str) -> torch.device:
    """The torch device for a settings value: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.

    Raises:
        ValueError: an unknown name, or ``cuda`` on a machine without CUDA.
    """
    if name not in DEVICES:
        raise ValueError(f"`device` must be one of {list(DEVICES)}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("`device` must be 'cpu' or 'auto' on this machine (no CUDA), got 'cuda'")
    return torch.device(name)
