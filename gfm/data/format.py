"""The dataset format: file names, table schemas, the codecs of Parquet metadata, the manifest.

The format is specified in ``docs/data-format.md``; ``checkpoints`` reads and writes one run's
file, ``splits`` assigns the held-out splits and ``writer`` is the only code that writes a folder. Layout of a dataset folder (default ``data/``)::

    checkpoints/<run_id>.parquet   one file per kept run: M+1 rows (recorded steps), w (D,) float32
    diverged/<run_id>.json         marker of a run that diverged (its spec and step; no data)
    runs.parquet                   one row per kept run: spec, sizes, first/last curves, splits
    parameters.parquet             per-parameter metadata, once per (task, arch)
    manifest.json                  format version, params, counts, splits, sha256 per file, hash

"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, ValidationError

from gfm.config import DataSettings
from gfm.data.names import HPARAM_KEYS, MANIFEST_FILE
from gfm.data.schema import (
    FORMAT_VERSION,
    ParamMeta,
    RunSpec,
    arch_name,
)

CHECKPOINTS_DIR = "checkpoints"
DIVERGED_DIR = "diverged"
RUNS_FILE = "runs.parquet"
PARAMETERS_FILE = "parameters.parquet"

# Parquet key-value metadata of a checkpoint file (all values are strings).
META_VERSION = "gfm.format_version"
META_SPEC = "gfm.spec"
META_LAYERS = "gfm.layers"
META_EXTRA = "gfm.extra"


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
