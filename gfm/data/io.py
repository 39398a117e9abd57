"""Dataset files on disk: atomic writes, one Parquet file per run, the staging writer, the manifest.

This module is the only code that writes a dataset folder; the format is specified in
``docs/data-format.md``. Layout of a dataset folder (default ``data/``)::

    checkpoints/<run_id>.parquet   one file per kept run: M+1 rows (recorded steps), w (D,) float32
    diverged/<run_id>.json         marker of a run that diverged (its spec and step; no data)
    runs.parquet                   one row per kept run: spec, sizes, first/last curves, splits
    parameters.parquet             per-parameter metadata, once per (task, arch)
    manifest.json                  format version, params, counts, splits, sha256 per file, hash

Shapes: M+1 recorded checkpoints, D parameters.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, ValidationError

from gfm.config import DataSettings, SplitSettings
from gfm.data.schema import (
    FORMAT_VERSION,
    SPLIT_KINDS,
    SPLIT_PARTS,
    ParamMeta,
    RunRecord,
    RunSpec,
    arch_name,
)

__all__ = [
    "CHECKPOINTS_DIR",
    "DIVERGED_DIR",
    "HPARAM_KEYS",
    "MANIFEST_FILE",
    "PARAMETERS_FILE",
    "PARAMETERS_SCHEMA",
    "RUNS_FILE",
    "RUNS_SCHEMA",
    "DatasetError",
    "DatasetWriter",
    "Manifest",
    "assign_splits",
    "atomic_path",
    "atomic_write_bytes",
    "checkpoint_schema",
    "dataset_hash",
    "hash_files",
    "layers_from_params",
    "params_from_layers",
    "params_from_table",
    "read_checkpoints",
    "read_manifest",
    "read_run_spec",
    "settings_params",
    "sha256_file",
    "spec_from_json",
    "spec_row",
    "spec_to_json",
    "write_checkpoints",
]

CHECKPOINTS_DIR = "checkpoints"
DIVERGED_DIR = "diverged"
RUNS_FILE = "runs.parquet"
PARAMETERS_FILE = "parameters.parquet"
MANIFEST_FILE = "manifest.json"
HPARAM_KEYS = ("lr", "momentum", "nesterov", "alpha", "beta1", "beta2", "weight_decay")
CURVES = ("train_loss", "val_loss", "val_acc")

# Parquet key-value metadata of a checkpoint file (all values are strings).
META_VERSION = "gfm.format_version"
META_SPEC = "gfm.spec"
META_LAYERS = "gfm.layers"
META_EXTRA = "gfm.extra"

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")

RUNS_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "task": pl.String(),
    "arch": pl.String(),
    "hidden": pl.List(pl.Int64),
    "optimizer": pl.String(),
    "lr": pl.Float64(),
    "momentum": pl.Float64(),
    "nesterov": pl.Boolean(),
    "alpha": pl.Float64(),
    "beta1": pl.Float64(),
    "beta2": pl.Float64(),
    "weight_decay": pl.Float64(),
    "schedule": pl.String(),
    "batch_size": pl.Int64(),
    "seed": pl.Int64(),
    "init_seed": pl.Int64(),
    "steps": pl.Int64(),
    "record_every": pl.Int64(),
    "n_params": pl.Int64(),
    "n_checkpoints": pl.Int64(),
    "initial_train_loss": pl.Float64(),
    "final_train_loss": pl.Float64(),
    "initial_val_loss": pl.Float64(),
    "final_val_loss": pl.Float64(),
    "initial_val_acc": pl.Float64(),
    "final_val_acc": pl.Float64(),
    "split_seed": pl.String(),
    "split_architecture": pl.String(),
    "split_optimizer": pl.String(),
}

PARAMETERS_SCHEMA: dict[str, pl.DataType] = {
    "task": pl.String(),
    "arch": pl.String(),
    "position": pl.Int64(),
    "layer": pl.String(),
    "shape": pl.List(pl.Int64),
    "index": pl.Int64(),
    "kind": pl.String(),
    "fan_in": pl.Int64(),
}


def checkpoint_schema(D: int) -> dict[str, pl.DataType]:
    """Columns of ``checkpoints/<run_id>.parquet`` for a run with D parameters."""
    return {
        "step": pl.Int64(),
        "t": pl.Float64(),
        "lr": pl.Float64(),
        "train_loss": pl.Float64(),
        "val_loss": pl.Float64(),
        "val_acc": pl.Float64(),
        "w": pl.Array(pl.Float32, D),
    }


class DatasetError(ValueError):
    """A dataset folder or one of its files does not follow ``docs/data-format.md``."""


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    # Make a rename durable; not every platform (or file system) lets a folder be opened.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temp_name(path: Path) -> Path:
    # Same folder (so os.replace is a rename on one file system), hidden, unique per process.
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    Whatever the block writes to the yielded path is fsynced and renamed over ``path`` with
    ``os.replace``, so readers see either the old file or the complete new one. If the block
    raises, the temporary file is removed and ``path`` is untouched.

    Args:
        path: the destination file; its folder is created if missing.

    Yields:
        The temporary path to write to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        f.write(data)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_files(files: Mapping[str, str]) -> str:
    """Dataset hash from ``{relpath: sha256}``.

    block:
        hash = sha256( concat over relpath in sorted order of  relpath + " " + sha256 + LF )
    """
    lines = "".join(f"{rel} {files[rel]}\n" for rel in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def _list_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def dataset_hash(root: str | Path) -> str:
    """Hash of a dataset folder as it is on disk: ``hash_files`` over every file but the manifest.

    Equals the manifest's ``hash`` exactly when every file matches the manifest and no file was
    added or removed.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder must exist")
    files = {rel: sha256_file(root / rel) for rel in _list_files(root) if rel != MANIFEST_FILE}
    return hash_files(files)


# --------------------------------------------------------------------------------------------
# Spec and parameter layout <-> strings stored in Parquet metadata
# --------------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"value of type {type(value).__name__} is not JSON serialisable")


def _dumps(obj: Any) -> str:
    # Canonical JSON: the same object always gives the same string (specs are compared as strings).
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _spec_dict(spec: RunSpec) -> dict[str, Any]:
    return {
        "run_id": spec.run_id,
        "task": spec.task,
        "hidden": [int(h) for h in spec.hidden],
        "optimizer": spec.optimizer,
        "hparams": dict(spec.hparams),
        "schedule": spec.schedule,
        "batch_size": None if spec.batch_size is None else int(spec.batch_size),
        "seed": int(spec.seed),
        "init_seed": int(spec.init_seed),
        "steps": int(spec.steps),
        "record_every": int(spec.record_every),
    }


def spec_to_json(spec: RunSpec) -> str:
    """Canonical JSON of a RunSpec (sorted keys, no spaces); equal specs give equal strings."""
    return _dumps(_spec_dict(spec))


def _spec_from_dict(d: Mapping[str, Any]) -> RunSpec:
    return RunSpec(
        run_id=d["run_id"],
        task=d["task"],
        hidden=tuple(int(h) for h in d["hidden"]),
        optimizer=d["optimizer"],
        hparams=dict(d["hparams"]),
        schedule=d["schedule"],
        batch_size=d["batch_size"],
        seed=d["seed"],
        init_seed=d["init_seed"],
        steps=d["steps"],
        record_every=d["record_every"],
    )


def spec_from_json(text: str, where: str = "spec") -> RunSpec:
    """Rebuild a RunSpec from ``spec_to_json`` output.

    Raises:
        DatasetError: the text is not JSON or lacks a field; the message names ``where``.
    """
    try:
        d = json.loads(text)
        return _spec_from_dict(d)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise DatasetError(
            f"{where}: must be a RunSpec as JSON, got {type(err).__name__}: {err}"
        ) from None


def layers_from_params(params: ParamMeta) -> str:
    """Encode ParamMeta losslessly as JSON runs of parameters with the same tensor.

    Each block ``[layer, shape, kind, fan_in, start, count]`` stands for ``count`` consecutive
    parameters of tensor ``layer`` with flat indices ``start .. start+count-1``. A model built by
    ``ParamMeta.from_named_shapes`` gives one block per tensor (a few hundred bytes).
    """
    blocks: list[list[Any]] = []
    prev: tuple[Any, ...] | None = None
    for i in range(len(params)):
        key = (
            str(params.layer[i]),
            [int(s) for s in params.shape[i]],
            str(params.kind[i]),
            int(params.fan_in[i]),
        )
        idx = int(params.index[i])
        if prev is not None and key == prev and idx == blocks[-1][4] + blocks[-1][5]:
            blocks[-1][5] += 1
        else:
            blocks.append([*key, idx, 1])
            prev = key
    return _dumps(blocks)


def params_from_layers(text: str, where: str = "layers") -> ParamMeta:
    """Inverse of ``layers_from_params``.

    Raises:
        DatasetError: the text is not a list of blocks; the message names ``where``.
    """
    try:
        blocks = json.loads(text)
        layer, shape, index, kind, fan_in = [], [], [], [], []
        for name, shp, knd, fi, start, count in blocks:
            layer.append(np.full(count, str(name), dtype=object))
            shape += [tuple(int(s) for s in shp)] * count
            index.append(np.arange(start, start + count, dtype=np.int64))
            kind.append(np.full(count, str(knd), dtype=object))
            fan_in.append(np.full(count, int(fi), dtype=np.int64))
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise DatasetError(
            f"{where}: must be a JSON list of [layer, shape, kind, fan_in, start, count], "
            f"got {type(err).__name__}: {err}"
        ) from None
    if not blocks:
        raise DatasetError(f"{where}: must describe at least one parameter, got none")
    return ParamMeta(
        layer=np.concatenate(layer),
        shape=shape,
        index=np.concatenate(index),
        kind=np.concatenate(kind),
        fan_in=np.concatenate(fan_in),
    )


def _params_frame(task: str, arch: str, params: ParamMeta) -> pl.DataFrame:
    D = len(params)
    return pl.DataFrame(
        {
            "task": [task] * D,
            "arch": [arch] * D,
            "position": np.arange(D, dtype=np.int64),
            "layer": [str(x) for x in params.layer],
            "shape": [list(s) for s in params.shape],
            "index": np.asarray(params.index, dtype=np.int64),
            "kind": [str(x) for x in params.kind],
            "fan_in": np.asarray(params.fan_in, dtype=np.int64),
        },
        schema=PARAMETERS_SCHEMA,
    )


def params_from_table(parameters: pl.DataFrame, task: str, arch: str) -> ParamMeta:
    """ParamMeta of one (task, arch) from ``parameters.parquet``'s rows, ordered by ``position``.

    Raises:
        KeyError: the table has no rows for (task, arch).
    """
    rows = parameters.filter((pl.col("task") == task) & (pl.col("arch") == arch)).sort("position")
    if rows.height == 0:
        raise KeyError(f"{PARAMETERS_FILE}: no parameters for task {task!r}, arch {arch!r}")
    return ParamMeta(
        layer=rows["layer"].to_numpy().astype(object),
        shape=[tuple(s) for s in rows["shape"].to_list()],
        index=rows["index"].to_numpy().astype(np.int64),
        kind=rows["kind"].to_numpy().astype(object),
        fan_in=rows["fan_in"].to_numpy().astype(np.int64),
    )


# --------------------------------------------------------------------------------------------
# One run <-> one Parquet file
# --------------------------------------------------------------------------------------------


def _check_run_id(run_id: str, where: str) -> None:
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise ValueError(
            f"{where}: `run_id` must be 1-200 characters of letters, digits, '.', '_' or '-' "
            f"starting with a letter or digit, got {run_id!r}"
        )


def _check_record(record: RunRecord) -> None:
    """Reject a record that would not make a valid checkpoint file (see docs/data-format.md)."""
    spec = record.spec
    _check_run_id(spec.run_id, "RunRecord.spec")
    where = f"run {spec.run_id}"
    unknown = sorted(set(spec.hparams) - set(HPARAM_KEYS))
    if unknown:
        raise ValueError(
            f"{where}: `hparams` keys must be among {list(HPARAM_KEYS)}, got {unknown}"
        )
    w = np.asarray(record.weights)
    if w.ndim != 2:
        raise ValueError(
            f"{where}: `weights` must be 2-D (checkpoints, params), got shape {w.shape}"
        )
    if not np.issubdtype(w.dtype, np.floating):
        raise ValueError(f"{where}: `weights` must be a floating-point array, got dtype {w.dtype}")
    n, D = w.shape
    if n < 2 or D < 1:
        raise ValueError(
            f"{where}: `weights` must have >= 2 checkpoints and >= 1 param, got shape {w.shape}"
        )
    if n != spec.n_checkpoints:
        raise ValueError(
            f"{where}: `weights` must have spec.steps // spec.record_every + 1 = "
            f"{spec.n_checkpoints} rows, got {n}"
        )
    for name in ("steps", "lr", *CURVES):
        shape = np.shape(getattr(record, name))
        if shape != (n,):
            raise ValueError(
                f"{where}: `{name}` must have shape ({n},) like `weights`, got {shape}"
            )
    if len(record.params) != D:
        raise ValueError(
            f"{where}: `params` must describe D={D} parameters, got {len(record.params)}"
        )
    steps = np.asarray(record.steps)
    if not np.issubdtype(steps.dtype, np.integer):
        raise ValueError(f"{where}: `steps` must be integers, got dtype {steps.dtype}")
    if steps[0] != 0 or np.any(np.diff(steps) <= 0):
        raise ValueError(
            f"{where}: `steps` must start at 0 and increase strictly, got {steps.tolist()[:8]}..."
        )
    bad = ~np.isfinite(w.astype(np.float32, copy=False)).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{where}: `weights` must be finite (as float32), got a non-finite value at step "
            f"{int(steps[i])} (set `diverged_at` to keep a diverged run out of the dataset)"
        )
    for name in ("lr", *CURVES):
        x = np.asarray(getattr(record, name), dtype=np.float64)
        finite = np.isfinite(x)
        if name == "lr" and not finite.all():
            i = int(np.argmin(finite))
            raise ValueError(f"{where}: `lr` must be finite, got {x[i]} at step {int(steps[i])}")
        if not finite.all() and not np.isnan(x).all():
            i = int(np.argmin(finite))
            raise ValueError(
                f"{where}: `{name}` must be all finite (or all NaN when not recorded), "
                f"got {x[i]} at step {int(steps[i])}"
            )


def _checkpoint_bytes(record: RunRecord) -> bytes:
    w = np.ascontiguousarray(record.weights, dtype=np.float32)  # (M+1, D)
    n, D = w.shape
    M = n - 1
    frame = pl.DataFrame(
        [
            pl.Series("step", np.asarray(record.steps, dtype=np.int64)),
            pl.Series("t", np.arange(n, dtype=np.float64) / M),  # t_i = i / M
            pl.Series("lr", np.asarray(record.lr, dtype=np.float64)),
            *(pl.Series(c, np.asarray(getattr(record, c), dtype=np.float64)) for c in CURVES),
            pl.Series("w", w, dtype=pl.Array(pl.Float32, D)),
        ]
    )
    metadata = {
        META_VERSION: str(FORMAT_VERSION),
        META_SPEC: spec_to_json(record.spec),
        META_LAYERS: layers_from_params(record.params),
        META_EXTRA: _dumps({str(k): float(v) for k, v in record.extra.items()}),
    }
    buf = io.BytesIO()
    # polars 2.1 writes identical bytes for identical frames (checked across processes and
    # thread counts); the footer names the polars version, so pin polars to keep DVC hashes.
    # lz4, not zstd: float32 weights barely compress (zstd saves ~7% of a 201 x 14k run) but
    # zstd reads ~3x slower (0.08 s vs 0.026 s), and training re-reads runs often.
    frame.write_parquet(buf, compression="lz4", statistics=True, metadata=metadata)
    return buf.getvalue()


def write_checkpoints(path: str | Path, record: RunRecord) -> None:
    """Write one kept run to a Parquet file atomically (see ``docs/data-format.md``).

    Args:
        path: destination, normally ``<dataset>/checkpoints/<run_id>.parquet``.
        record: a run that did not diverge; ``weights`` (M+1, D) are stored as float32.

    Raises:
        ValueError: the record is diverged or inconsistent; the message names the run and field.
    """
    if record.diverged:
        raise ValueError(
            f"run {record.spec.run_id}: a diverged record (`diverged_at`={record.diverged_at}) "
            "must not be written as checkpoints; use DatasetWriter.write_run"
        )
    _check_record(record)
    atomic_write_bytes(path, _checkpoint_bytes(record))


def _short(err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first}"[:300]


def _read_metadata(path: Path) -> dict[str, str]:
    try:
        return pl.read_parquet_metadata(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: checkpoint file must exist") from None
    except Exception as err:  # polars raises several types for damaged files
        raise DatasetError(f"{path}: must be a readable Parquet file, got {_short(err)}") from None


def read_run_spec(path: str | Path) -> RunSpec:
    """The RunSpec stored in a checkpoint file's metadata (reads only the footer).

    Raises:
        FileNotFoundError: no such file.
        DatasetError: unreadable file or missing/invalid ``gfm.spec``.
    """
    path = Path(path)
    meta = _read_metadata(path)
    if META_SPEC not in meta:
        raise DatasetError(
            f"{path}: Parquet metadata must hold key `{META_SPEC}`, got {sorted(meta)}"
        )
    return spec_from_json(meta[META_SPEC], f"{path}: metadata `{META_SPEC}`")


def _read_frame(
    path: Path, columns: list[str] | None = None
) -> tuple[pl.DataFrame, dict[str, str], dict[str, pl.DataType]]:
    """(the columns asked for, all of them by default; key-value metadata; full schema)."""
    meta = _read_metadata(path)
    try:
        schema = dict(pl.read_parquet_schema(path))
        frame = pl.read_parquet(path, columns=columns)
    except Exception as err:  # polars raises several types for damaged files
        raise DatasetError(f"{path}: must be a readable Parquet file, got {_short(err)}") from None
    return frame, meta, schema


def read_checkpoints(path: str | Path, params: ParamMeta | None = None) -> RunRecord:
    """Read one run's checkpoint file back into a RunRecord.

    Args:
        path: ``<dataset>/checkpoints/<run_id>.parquet``.
        params: the run's per-parameter metadata (e.g. shared from ``parameters.parquet`` by
            ``Trajectories``); ``None`` rebuilds it from the file's own ``gfm.layers`` metadata.

    Returns:
        The record with ``weights`` (M+1, D) float32 and the exact RunSpec that was written.

    Raises:
        FileNotFoundError: no such file.
        DatasetError: unreadable or corrupt file, missing columns or metadata, or ``params`` of
            the wrong length; the message names the file.
    """
    path = Path(path)
    frame, meta, _ = _read_frame(path)
    for key in (META_SPEC, META_LAYERS):
        if key not in meta:
            raise DatasetError(
                f"{path}: Parquet metadata must hold key `{key}`, got {sorted(meta)}"
            )
    w_type = frame.schema.get("w")
    if not isinstance(w_type, pl.Array):
        raise DatasetError(f"{path}: column `w` must be Array(Float32, D), got {w_type}")
    expected = checkpoint_schema(w_type.size)
    for name, dtype in expected.items():
        if frame.schema.get(name) != dtype:
            raise DatasetError(
                f"{path}: column `{name}` must be {dtype}, got {frame.schema.get(name)}"
            )
    spec = spec_from_json(meta[META_SPEC], f"{path}: metadata `{META_SPEC}`")
    if params is None:
        params = params_from_layers(meta[META_LAYERS], f"{path}: metadata `{META_LAYERS}`")
    if len(params) != w_type.size:
        raise DatasetError(
            f"{path}: `params` must describe D={w_type.size} parameters, got {len(params)}"
        )
    extra = json.loads(meta.get(META_EXTRA, "{}"))
    return RunRecord(
        spec=spec,
        steps=frame["step"].to_numpy(),
        lr=frame["lr"].to_numpy(),
        train_loss=frame["train_loss"].to_numpy(),
        val_loss=frame["val_loss"].to_numpy(),
        val_acc=frame["val_acc"].to_numpy(),
        weights=np.ascontiguousarray(frame["w"].to_numpy(), dtype=np.float32),  # (M+1, D)
        params=params,
        extra={str(k): float(v) for k, v in extra.items()},
    )


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DivergedRun(_Model):
    """A planned run left out of the dataset because it diverged at ``step``."""

    run_id: str
    step: int


class Counts(_Model):
    """How much the dataset holds; ``by_task_optimizer[task][optimizer]`` counts kept runs."""

    runs: int
    checkpoints: int
    diverged: int
    by_task_optimizer: dict[str, dict[str, int]]


class SplitsInfo(_Model):
    """The split rules used (``SplitSettings`` plus ``seeds``) and runs per split kind and part."""

    rules: dict[str, Any]
    counts: dict[str, dict[str, int]]


class Manifest(_Model):
    """Mirror of ``manifest.json``; nothing in it depends on the machine or the time."""

    format_version: int
    params: dict[str, Any]
    counts: Counts
    diverged: list[DivergedRun]
    splits: SplitsInfo
    files: dict[str, str]
    hash: str

    def to_json(self) -> str:
        """Canonical text of ``manifest.json`` (sorted keys, 2-space indent, trailing newline)."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=2) + "\n"


def read_manifest(root: str | Path) -> Manifest:
    """Parse ``<root>/manifest.json``.

    Raises:
        FileNotFoundError: the folder or its manifest is missing.
        DatasetError: the manifest is not valid JSON, lacks fields, or has another format version.
    """
    path = Path(root) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest must exist (is {Path(root)} a gfm dataset?)")
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except ValidationError as err:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in err.errors()[:5]
        )
        raise DatasetError(f"{path}: must be a valid manifest, got {detail}") from None
    if manifest.format_version != FORMAT_VERSION:
        raise DatasetError(
            f"{path}: `format_version` must be {FORMAT_VERSION}, got {manifest.format_version}"
        )
    return manifest


def settings_params(cfg: DataSettings) -> dict[str, Any]:
    """The DataSettings that decide the dataset, kept in the manifest.

    Not where it lives or how it was computed (root, workers, remote, executor, dask_address):
    the same params give the same manifest, and the same DVC md5, whichever engine ran them.
    """
    return cfg.model_dump(
        mode="json", exclude={"root", "workers", "remote", "executor", "dask_address"}
    )


# --------------------------------------------------------------------------------------------
# The writer
# --------------------------------------------------------------------------------------------


def spec_row(spec: RunSpec) -> dict[str, Any]:
    """The columns of ``runs.parquet`` that come from the spec alone (hparams not set: None)."""
    h = spec.hparams
    return {
        "run_id": spec.run_id,
        "task": spec.task,
        "arch": arch_name(spec.hidden),
        "hidden": [int(x) for x in spec.hidden],
        "optimizer": spec.optimizer,
        **{
            k: (None if h.get(k) is None else (bool(h[k]) if k == "nesterov" else float(h[k])))
            for k in HPARAM_KEYS
        },
        "schedule": spec.schedule,
        "batch_size": spec.batch_size,
        "seed": spec.seed,
        "init_seed": spec.init_seed,
        "steps": spec.steps,
        "record_every": spec.record_every,
    }


def _marker_spec(path: Path) -> str | None:
    try:
        return _dumps(json.loads(path.read_text())["spec"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _file_spec(path: Path) -> str | None:
    try:
        return spec_to_json(read_run_spec(path))
    except (OSError, DatasetError):
        return None


class DatasetWriter:
    """Build a dataset folder run by run in a staging folder, then swap it in with ``commit``.

    Staging lives next to the dataset, outside the DVC-tracked folder:
    ``root.parent / ".<name>.partial"``. Runs are written there one file each (atomically), so an
    interrupted generation loses at most the run in flight and resumes with ``has``. ``commit``
    writes the tables and manifest into staging and then swaps folders:

        root -> .<name>.old,   .<name>.partial -> root,   delete .<name>.old

    Between the two renames (microseconds) ``root`` does not exist; the next DatasetWriter on
    the same root finishes or undoes the swap (``recover``). ``has`` and ``write_run`` may run in
    several processes at once for different runs; ``commit`` runs in one.

    Args:
        root: the dataset folder (created by the first commit).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.staging = self.root.parent / f".{self.root.name}.partial"
        self.old = self.root.parent / f".{self.root.name}.old"
        self._root_files: dict[str, str] | None = None
        self.recover()

    def recover(self) -> None:
        """Finish or undo a swap that was interrupted between its two renames."""
        if not self.root.exists() and self.old.is_dir():
            if (self.staging / MANIFEST_FILE).is_file():
                os.replace(self.staging, self.root)  # the new dataset was complete
            else:
                os.replace(self.old, self.root)  # put the previous dataset back
            _fsync_dir(self.root.parent)
        if self.root.exists() and self.old.is_dir():
            shutil.rmtree(self.old)

    def _paths(self, run_id: str) -> tuple[Path, Path]:
        return (
            self.staging / CHECKPOINTS_DIR / f"{run_id}.parquet",
            self.staging / DIVERGED_DIR / f"{run_id}.json",
        )

    def _current_files(self) -> dict[str, str]:
        # {relpath: sha256} of the committed dataset, {} when there is none usable to reuse from.
        if self._root_files is None:
            try:
                self._root_files = dict(read_manifest(self.root).files)
            except (OSError, DatasetError):
                self._root_files = {}
        return self._root_files

    def has(self, spec: RunSpec) -> bool:
        """Whether the run is already done: staged, or committed with an identical spec.

        A committed run (checkpoints or divergence marker) whose spec and sha256 match is linked
        (or copied) into staging, so unchanged runs are reused by the next commit. A staged file
        with the same run_id but another spec is stale and removed.

        Args:
            spec: the planned run.

        Returns:
            True when nothing needs to be trained for this run.
        """
        _check_run_id(spec.run_id, "RunSpec")
        key = spec_to_json(spec)
        checkpoint, marker = self._paths(spec.run_id)
        for path, read in ((checkpoint, _file_spec), (marker, _marker_spec)):
            if path.exists():
                if read(path) == key:
                    return True
                path.unlink(missing_ok=True)
        files = self._current_files()
        for staged, read in ((checkpoint, _file_spec), (marker, _marker_spec)):
            rel = staged.relative_to(self.staging).as_posix()
            source = self.root / rel
            if (
                rel in files
                and source.is_file()
                and read(source) == key
                and sha256_file(source) == files[rel]
            ):
                self._link(source, staged)
                return True
        return False

    @staticmethod
    def _link(source: Path, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_name(dest)
        try:
            os.link(source, tmp)  # committed files are never modified in place, so sharing is safe
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, dest)

    def write_run(self, record: RunRecord) -> None:
        """Stage one run atomically: its checkpoint file, or for a diverged run only a marker.

        Raises:
            ValueError: the record is inconsistent (see ``write_checkpoints``).
        """
        run_id = record.spec.run_id
        _check_run_id(run_id, "RunRecord.spec")
        checkpoint, marker = self._paths(run_id)
        if record.diverged:
            step = int(record.diverged_at)  # type: ignore[arg-type]
            body = {"run_id": run_id, "step": step, "spec": _spec_dict(record.spec)}
            atomic_write_bytes(marker, (json.dumps(body, sort_keys=True, indent=2) + "\n").encode())
            checkpoint.unlink(missing_ok=True)
        else:
            write_checkpoints(checkpoint, record)
            marker.unlink(missing_ok=True)

    def _staged(self) -> tuple[dict[str, Path], dict[str, Path]]:
        def ids(folder: Path, suffix: str) -> dict[str, Path]:
            if not folder.is_dir():
                return {}
            return {
                p.name[: -len(suffix)]: p
                for p in sorted(folder.glob(f"*{suffix}"))
                if RUN_ID.fullmatch(p.name[: -len(suffix)])
            }

        return (
            ids(self.staging / CHECKPOINTS_DIR, ".parquet"),
            ids(self.staging / DIVERGED_DIR, ".json"),
        )

    def commit(
        self,
        cfg: DataSettings | None = None,
        run_ids: Iterable[str] | None = None,
        *,
        splits: SplitSettings | None = None,
        source: Mapping[str, Any] | None = None,
    ) -> Manifest:
        """Build runs.parquet, parameters.parquet and manifest.json from staging, then swap it in.

        Args:
            cfg: the data settings the runs were generated with (recorded in the manifest without
                root/workers/remote; its ``splits`` and ``seeds`` decide the splits). ``None`` for
                imported data.
            run_ids: the planned runs; staged runs not in it are dropped. Default: all staged.
            splits: split rules when ``cfg`` is None (default ``SplitSettings()``).
            source: what the data was imported from, recorded as ``params`` when ``cfg`` is None
                (file names only; no absolute paths, so the folder stays machine-independent).

        Returns:
            The manifest that was written.

        Raises:
            ValueError: a planned run was never written, runs of one (task, arch) disagree on
                their parameter layout, or ``root`` exists but is not a gfm dataset.
            DatasetError: a staged file is unreadable.
        """
        if (
            self.root.exists()
            and not (self.root / MANIFEST_FILE).is_file()
            and any(self.root.iterdir())
        ):
            raise ValueError(
                f"{self.root}: must be a gfm dataset (with {MANIFEST_FILE}), an empty folder or "
                "absent to be replaced by commit, got a non-empty folder without a manifest"
            )
        if cfg is not None:
            params, rules, seeds = settings_params(cfg), cfg.splits, cfg.seeds
        else:
            params, rules, seeds = {"import": dict(source or {})}, splits or SplitSettings(), None
        kept, diverged = self._staged()
        if run_ids is not None:
            planned = set(run_ids)
            missing = sorted(planned - set(kept) - set(diverged))
            if missing:
                raise ValueError(
                    f"{self.staging}: every planned run must be written before commit, got "
                    f"{len(missing)} missing: {missing[:5]}{' ...' if len(missing) > 5 else ''}"
                )
            kept = {k: v for k, v in kept.items() if k in planned}
            diverged = {k: v for k, v in diverged.items() if k in planned}
        diverged = {k: v for k, v in diverged.items() if k not in kept}

        rows: list[dict[str, Any]] = []
        layouts: dict[tuple[str, str], tuple[str, str]] = {}  # (task, arch) -> (layers, first run)
        for run_id, path in sorted(kept.items()):
            frame, meta, schema = _read_frame(path, columns=list(CURVES))  # not `w`
            spec = spec_from_json(meta.get(META_SPEC, ""), f"{path}: metadata `{META_SPEC}`")
            if spec.run_id != run_id:
                raise DatasetError(f"{path}: spec `run_id` must be {run_id!r}, got {spec.run_id!r}")
            layers = meta.get(META_LAYERS, "")
            key = (spec.task, arch_name(spec.hidden))
            first = layouts.setdefault(key, (layers, run_id))
            if first[0] != layers:
                raise ValueError(
                    f"{path}: parameter layout must match run {first[1]} of task {key[0]!r}, arch "
                    f"{key[1]!r} (one layout per (task, arch)); give the runs distinct `hidden`"
                )
            curves = {c: frame[c] for c in CURVES}
            rows.append(
                {
                    **spec_row(spec),
                    "n_params": _width(schema.get("w"), path),
                    "n_checkpoints": frame.height,
                    **{f"initial_{c}": curves[c][0] for c in CURVES},
                    **{f"final_{c}": curves[c][-1] for c in CURVES},
                }
            )
        base_schema = {k: v for k, v in RUNS_SCHEMA.items() if not k.startswith("split_")}
        runs = pl.DataFrame(rows, schema=base_schema).sort("run_id")
        runs = assign_splits(runs, rules, seeds).select(list(RUNS_SCHEMA))
        parameters = pl.concat(
            [
                _params_frame(task, arch, params_from_layers(layers, f"run {run}: `{META_LAYERS}`"))
                for (task, arch), (layers, run) in sorted(layouts.items())
            ]
            or [pl.DataFrame(schema=PARAMETERS_SCHEMA)]
        )
        atomic_write_bytes(self.staging / RUNS_FILE, _parquet_bytes(runs))
        atomic_write_bytes(self.staging / PARAMETERS_FILE, _parquet_bytes(parameters))

        diverged_runs = []
        for run_id, path in sorted(diverged.items()):
            try:
                diverged_runs.append(
                    DivergedRun(run_id=run_id, step=int(json.loads(path.read_text())["step"]))
                )
            except (ValueError, KeyError, TypeError) as err:
                raise DatasetError(
                    f"{path}: must be a divergence marker with `step`, got {_short(err)}"
                ) from None

        # Drop anything else in staging: stale runs, temp files of killed writers, old tables.
        wanted = {RUNS_FILE, PARAMETERS_FILE}
        wanted |= {f"{CHECKPOINTS_DIR}/{r}.parquet" for r in kept}
        wanted |= {f"{DIVERGED_DIR}/{r}.json" for r in diverged}
        for rel in _list_files(self.staging):
            if rel not in wanted:
                (self.staging / rel).unlink()
        files = {rel: sha256_file(self.staging / rel) for rel in _list_files(self.staging)}

        counts = Counts(
            runs=runs.height,
            checkpoints=int(runs["n_checkpoints"].sum()),
            diverged=len(diverged_runs),
            by_task_optimizer=_group_counts(runs),
        )
        split_counts = {
            kind: {part: int((runs[f"split_{kind}"] == part).sum()) for part in SPLIT_PARTS}
            for kind in SPLIT_KINDS
        }
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            params=params,
            counts=counts,
            diverged=diverged_runs,
            splits=SplitsInfo(
                rules={**rules.model_dump(mode="json"), "seeds": seeds}, counts=split_counts
            ),
            files=files,
            hash=hash_files(files),
        )
        atomic_write_bytes(self.staging / MANIFEST_FILE, manifest.to_json().encode())
        self._swap()
        return manifest

    def _swap(self) -> None:
        if self.old.exists():
            shutil.rmtree(self.old)
        if self.root.exists():
            os.replace(self.root, self.old)
        # If the process dies here, `root` is missing; recover() completes the swap.
        os.replace(self.staging, self.root)
        _fsync_dir(self.root.parent)
        if self.old.exists():
            shutil.rmtree(self.old)
        self._root_files = None


def _width(dtype: pl.DataType | None, path: Path) -> int:
    if not isinstance(dtype, pl.Array):
        raise DatasetError(f"{path}: column `w` must be Array(Float32, D), got {dtype}")
    return dtype.size


def _group_counts(runs: pl.DataFrame) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for task, optimizer, n in (
        runs.group_by(["task", "optimizer"]).len().sort(["task", "optimizer"]).iter_rows()
    ):
        out.setdefault(task, {})[optimizer] = int(n)
    return out


def _parquet_bytes(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_parquet(buf, compression="zstd", statistics=True)
    return buf.getvalue()
