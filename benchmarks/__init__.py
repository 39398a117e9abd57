"""Benchmark scripts (each writes benchmarks/results/); helpers they share."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence


def machine_title(what: str, loads: Sequence[float]) -> str:
    """A plot's title: what it shows, the machine's cores and the 1-minute loads measured."""
    load = ", ".join(f"{v:.1f}" for v in loads)
    return f"{what}, {os.cpu_count()} cores ({platform.machine()}), 1-min load {load}"
