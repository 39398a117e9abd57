"""The held-out splits of a dataset (seed, architecture, optimizer), assigned per run."""

from __future__ import annotations

import polars as pl

from gfm.config import SplitSettings
from gfm.data.schema import (
    SPLIT_KINDS,
)


def assign_splits(runs: pl.DataFrame, splits: SplitSettings, seeds: int | None) -> pl.DataFrame:
    """Add ``split_seed``, ``split_architecture`` and ``split_optimizer`` (train/val/test) per run.

    block:
        seed:          p = position of the run in its (task, optimizer, arch) group, n = its size
                       test if p >= n - test_seeds,
                       val  if n - test_seeds - val_seeds <= p < n - test_seeds,
                       else train;  all train when n <= val_seeds + test_seeds
        architecture:  test if arch == holdout_archs[task], else train (tasks not named: train)
        optimizer:     test if optimizer == holdout_optimizer, else train

    With ``seeds`` given (generated data), p is the run's ``seed`` index and n = ``seeds``, so a
    run's split never depends on which other runs diverged. With ``seeds=None`` (imported data),
    p is the rank of the run in its group ordered by (seed, run_id) and n the group's size.

    Args:
        runs: one row per run with at least run_id, task, optimizer, arch and seed.
        splits: the split rules.
        seeds: runs per group in the generation plan, or ``None`` for imported data.

    Returns:
        ``runs`` in the same order with the three split columns set (replaced if present).

    Raises:
        ValueError: a required column is missing.
    """
    missing = [c for c in ("run_id", "task", "optimizer", "arch", "seed") if c not in runs.columns]
    if missing:
        raise ValueError(f"assign_splits: `runs` must have columns {missing}, got {runs.columns}")
    group = ["task", "optimizer", "arch"]
    frame = runs.drop([f"split_{k}" for k in SPLIT_KINDS], strict=False).with_row_index("_row")
    if seeds is None:
        frame = frame.sort(["seed", "run_id"]).with_columns(
            pl.int_range(pl.len()).over(group).cast(pl.Int64).alias("_pos"),
            pl.len().over(group).cast(pl.Int64).alias("_n"),
        )
    else:
        frame = frame.with_columns(
            pl.col("seed").cast(pl.Int64).alias("_pos"), pl.lit(seeds, dtype=pl.Int64).alias("_n")
        )
    val, test = splits.val_seeds, splits.test_seeds
    seed_split = (
        pl.when(pl.col("_n") <= val + test)
        .then(pl.lit("train"))
        .when(pl.col("_pos") >= pl.col("_n") - test)
        .then(pl.lit("test"))
        .when(pl.col("_pos") >= pl.col("_n") - test - val)
        .then(pl.lit("val"))
        .otherwise(pl.lit("train"))
    )
    held_arch = pl.lit(False)
    for task, arch in sorted(splits.holdout_archs.items()):
        held_arch = held_arch | ((pl.col("task") == task) & (pl.col("arch") == arch))
    return (
        frame.with_columns(
            seed_split.alias("split_seed"),
            pl.when(held_arch)
            .then(pl.lit("test"))
            .otherwise(pl.lit("train"))
            .alias("split_architecture"),
            pl.when(pl.col("optimizer") == splits.holdout_optimizer)
            .then(pl.lit("test"))
            .otherwise(pl.lit("train"))
            .alias("split_optimizer"),
        )
        .sort("_row")
        .drop(["_row", "_pos", "_n"])
    )
