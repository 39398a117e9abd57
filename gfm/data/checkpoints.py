"""One run <-> one Parquet file: ``checkpoints/<run_id>.parquet`` written and read back exactly."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import polars as pl

from gfm.data.atomic import atomic_write_bytes
from gfm.data.format import (
    META_EXTRA,
    META_LAYERS,
    META_SPEC,
    META_VERSION,
    DatasetError,
    _dumps,
    checkpoint_schema,
    layers_from_params,
    params_from_layers,
    spec_from_json,
    spec_to_json,
)
from gfm.data.schema import (
    CURVES,
    FORMAT_VERSION,
    ParamMeta,
    RunRecord,
    RunSpec,
)

# --------------------------------------------------------------------------------------------
# One run <-> one Parquet file
# --------------------------------------------------------------------------------------------


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
    record.check()
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
