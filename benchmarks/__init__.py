"""Benchmark scripts (each writes benchmarks/results/); helpers they share."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence

from gfm.config import Settings, TaskSettings
from gfm.data.generate import train_run
from gfm.data.schema import RunRecord, RunSpec


def machine_title(what: str, loads: Sequence[float]) -> str:
    """A plot's title: what it shows, the machine's cores and the 1-minute loads measured."""
    load = ", ".join(f"{v:.1f}" for v in loads)
    return f"{what}, {os.cpu_count()} cores ({platform.machine()}), 1-min load {load}"


def recorded_run(
    settings: Settings, task: str, hidden: tuple[int, ...], seed: int = 0
) -> tuple[RunRecord, float]:
    """A recorded Adam run (lr 1e-3) of ``task`` with ``hidden``, and its seconds (one thread)."""
    task_cfg: TaskSettings = settings.data.tasks[task]
    spec = RunSpec(
        run_id=f"cost-{task}-{seed}",
        task=task,
        hidden=hidden,
        optimizer="adam",
        hparams={"lr": 1e-3, "beta1": 0.9, "beta2": 0.999},
        schedule="constant",
        batch_size=task_cfg.batch_sizes[0],
        seed=seed,
        init_seed=1234 + seed,
        steps=task_cfg.steps,
        record_every=task_cfg.record_every,
    )
    start = time.perf_counter()
    record = train_run(spec, task_cfg)
    return record, time.perf_counter() - start
