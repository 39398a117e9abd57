"""The held-out splits of a dataset (seed, architecture, optimizer), assigned per run.

Generated data takes the seed split from ``SplitSettings`` counts. Imported data may name each
run's part instead (``GivenSplit``: a ``split`` metadata field, or run ranges such as
``val=160-179``), or takes ``IMPORT_FRACTIONS`` of each group.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from gfm.config import SplitSettings
from gfm.data.schema import SPLIT_KINDS, SPLIT_PARTS

IMPORT_FRACTIONS = {"val": 0.1, "test": 0.1}
"""Default seed split of an import: of each group's runs, the last 10% test, 10% before them val."""


@dataclass(frozen=True)
class GivenSplit:
    """The seed-split part of every run, decided before the dataset is written.

    Attributes:
        parts: run_id -> ``train``, ``val`` or ``test``, for every run of the dataset.
        rule: how the parts were decided, recorded in the manifest (e.g. ``"metadata `split`"``).
    """

    parts: Mapping[str, str]
    rule: str


def check_part(value: object, where: str) -> str:
    """``value`` as a split part, or ValueError naming ``where`` and the valid parts."""
    if value not in SPLIT_PARTS:
        raise ValueError(f"{where}: `split` must be one of {list(SPLIT_PARTS)}, got {value!r}")
    return str(value)


def parse_ranges(text: str, n: int, where: str) -> list[int]:
    """Run positions from ``"160-179,185"`` (0-based, inclusive ranges) among n runs.

    Raises:
        ValueError: malformed, reversed or out of 0..n-1; the message names ``where``.
    """
    positions: list[int] = []
    for item in text.split(","):
        first, dash, last = item.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(
                f"{where}: runs must be positions or inclusive ranges like '160-179,185', "
                f"got {item.strip()!r}"
            )
        a, b = int(first), int(last) if dash else int(first)
        if a > b or b >= n:
            raise ValueError(
                f"{where}: range {item.strip()!r} must lie within runs 0..{n - 1}, low to high"
            )
        positions.extend(range(a, b + 1))
    return positions


def parts_from_ranges(spec: Mapping[str, str], n: int, where: str = "--split") -> list[str]:
    """The part of each of n runs from ``{part: ranges}``; runs named nowhere are train.

    block:
        {"val": "160-179", "test": "180-199"}  ->  runs 0..159 train, 160..179 val, 180..199 test

    Raises:
        ValueError: an unknown part, a malformed range, or a run named twice.
    """
    parts = ["train"] * n
    named: dict[int, str] = {}
    for part, text in spec.items():
        check_part(part, f"{where} {part}={text}")
        for i in parse_ranges(text, n, f"{where} {part}={text}"):
            if i in named:
                raise ValueError(f"{where}: run {i} must be in one part, got {named[i]} and {part}")
            named[i] = parts[i] = part
    return parts


def fraction_parts(
    groups: Sequence[Hashable], order: Sequence[tuple[int, str]], fractions: Mapping[str, float]
) -> list[str]:
    """Seed-split parts by fractions of each group: the last ``test`` share test, ``val`` before.

    block:
        n = runs in the group, ranked by ``order`` (seed, run_id)
        n_test = max(1, round(test · n)) if n >= 2 else 0
        n_val  = max(1, round(val · n))  if n - n_test >= 2 and val > 0 else 0
        (at least one train run is always left)

    Args:
        groups: the group key of each run (task, optimizer, arch).
        order: the rank key of each run within its group.
        fractions: ``{"val": ..., "test": ...}`` shares in [0, 1).

    Returns:
        The part of each run, in input order.
    """
    members: dict[Hashable, list[int]] = {}
    for i, key in enumerate(groups):
        members.setdefault(key, []).append(i)
    parts = ["train"] * len(groups)
    for rows in members.values():
        rows.sort(key=lambda i: order[i])
        n = len(rows)
        n_test = max(1, round(fractions["test"] * n)) if n >= 2 else 0
        n_test = min(n_test, n - 1)
        left = n - n_test
        n_val = max(1, round(fractions["val"] * n)) if left >= 2 and fractions["val"] > 0 else 0
        n_val = min(n_val, left - 1)
        for rank, i in enumerate(rows):
            if rank >= n - n_test:
                parts[i] = "test"
            elif rank >= n - n_test - n_val:
                parts[i] = "val"
    return parts


def assign_splits(
    runs: pl.DataFrame,
    splits: SplitSettings,
    seeds: int | None,
    *,
    given: GivenSplit | None = None,
) -> pl.DataFrame:
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
    With ``given``, the seed split is ``given.parts`` instead (the other two follow the rules).

    Args:
        runs: one row per run with at least run_id, task, optimizer, arch and seed.
        splits: the split rules.
        seeds: runs per group in the generation plan, or ``None`` for imported data.
        given: every run's seed-split part, decided by the importer.

    Returns:
        ``runs`` in the same order with the three split columns set (replaced if present).

    Raises:
        ValueError: a required column is missing.
    """
    missing = [c for c in ("run_id", "task", "optimizer", "arch", "seed") if c not in runs.columns]
    if missing:
        raise ValueError(f"assign_splits: `runs` must have columns {missing}, got {runs.columns}")
    if given is not None and set(given.parts) != set(runs["run_id"].to_list()):
        raise ValueError("assign_splits: `given.parts` must name exactly the runs of `runs`")
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
    if given is not None:
        seed_split = pl.col("run_id").replace_strict(dict(given.parts), return_dtype=pl.String)
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


def imported(rules: Mapping[str, Any]) -> bool:
    """Whether a manifest's ``splits.rules`` are an import's (no generation plan: ``seeds`` null)."""
    return rules.get("seeds") is None


def describe_rule(rules: Mapping[str, Any], kind: str) -> str:
    """How a dataset's ``kind`` split was decided, from its manifest's ``splits.rules``.

    >>> describe_rule({"seeds": None, "given": "metadata `split`"}, "seed")
    'splits.rules.given: metadata `split`'
    >>> describe_rule({"seeds": 4, "val_seeds": 1, "test_seeds": 1}, "seed")
    'splits.rules: val_seeds 1, test_seeds 1 of seeds 4'
    """
    if kind == "architecture":
        return f"splits.rules.holdout_archs: {rules.get('holdout_archs')}"
    if kind == "optimizer":
        return f"splits.rules.holdout_optimizer: {rules.get('holdout_optimizer')}"
    if rules.get("given") is not None:
        return f"splits.rules.given: {rules['given']}"
    counts = f"val_seeds {rules.get('val_seeds')}, test_seeds {rules.get('test_seeds')}"
    if imported(rules):
        return f"splits.rules: {counts} of each (task, optimizer, arch) group"
    return f"splits.rules: {counts} of seeds {rules.get('seeds')}"


def split_remedy(rules: Mapping[str, Any], kind: str) -> str:
    """How to give a dataset another ``kind`` split: it is fixed when the dataset is written."""
    if not imported(rules):
        key = {"seed": "val_seeds/test_seeds", "architecture": "holdout_archs"}.get(
            kind, "holdout_optimizer"
        )
        return f"regenerate it with other data.splits.{key} (`gfm generate --set ...`)"
    if kind == "seed":
        return (
            "re-import it with `gfm data import --split val=RUNS --split test=RUNS` "
            "(or a metadata `split` column)"
        )
    return "re-import it with other `splits` (gfm.data.importer), or use train.split: seed"
