"""Import trajectories recorded elsewhere into a gfm dataset folder.

Two sources: arrays (``.npy`` of weights, or ``.npz`` with ``weights`` and optional curves) shaped
(R, M+1, D), and folders of PyTorch ``state_dict`` checkpoints, one subfolder per run. Per-run
metadata comes from an optional CSV or JSON file. Imported runs go through the same
``DatasetWriter`` and the same validation as generated ones; the conventions for what an import
cannot know (defaults, splits) are in ``docs/data-format.md``.

Shapes: R runs, M+1 checkpoints, D parameters.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gfm.config import SplitSettings
from gfm.data.format import Manifest
from gfm.data.import_fields import (
    METADATA_KEYS,
    assign_seeds,
    check_constant_lr,
    describe,
    grid,
    lr_curve,
    read_metadata,
)
from gfm.data.schema import ParamMeta, RunRecord, RunSpec, check_run_id
from gfm.data.state_dicts import read_run_folder
from gfm.data.validate import check
from gfm.data.writer import DatasetWriter

__all__ = ["METADATA_KEYS", "NPZ_KEYS", "import_arrays", "import_state_dicts"]


NPZ_KEYS = ("weights", "steps", "lr", "train_loss", "val_loss", "val_acc")


def _write_all(
    records: Iterable[RunRecord], dest: Path, source: dict[str, Any], splits: SplitSettings | None
) -> Manifest:
    """Stage records one at a time (memory: one run), commit them, validate the result."""
    where = str(source.get("weights") or source.get("folder"))
    writer = DatasetWriter(dest)
    layouts: dict[tuple[str, str], tuple[str, list[tuple[str, tuple[int, ...]]]]] = {}
    run_ids = []
    for r in records:
        named = _named_shapes(r.params)
        key = (r.spec.task, r.spec.arch)
        first = layouts.setdefault(key, (r.spec.run_id, named))
        if first[1] != named:
            raise ValueError(
                f"{where}: run {r.spec.run_id}: parameter layout must match run {first[0]} of "
                f"the same task {key[0]!r} and arch {key[1]!r}; set metadata `arch` (or "
                "`task`) to tell them apart"
            )
        writer.write_run(r)
        run_ids.append(r.spec.run_id)
    writer.commit(None, run_ids, splits=splits, source=source)
    return check(dest)


def _named_shapes(params: ParamMeta) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (str(params.layer[i]), tuple(params.shape[i])) for i in np.flatnonzero(params.index == 0)
    ]


def _record(
    fields: dict[str, Any],
    run_id: str,
    steps: np.ndarray,
    record_every: int,
    lr: np.ndarray,
    curves: Mapping[str, np.ndarray],
    weights: np.ndarray,
    params: ParamMeta,
) -> RunRecord:
    n = weights.shape[0]
    nan = np.full(n, np.nan)
    spec = RunSpec(
        run_id=run_id,
        task=fields["task"],
        hidden=fields["hidden"],
        optimizer=fields["optimizer"],
        hparams=fields["hparams"],
        schedule=fields["schedule"],
        batch_size=fields["batch_size"],
        seed=fields["seed"],
        init_seed=fields["init_seed"],
        steps=int(steps[-1]),
        record_every=record_every,
    )
    return RunRecord(
        spec=spec,
        steps=steps,
        lr=lr,
        train_loss=curves.get("train_loss", nan),
        val_loss=curves.get("val_loss", nan),
        val_acc=curves.get("val_acc", nan),
        weights=weights,
        params=params,
    )


# --------------------------------------------------------------------------------------------
# Arrays
# --------------------------------------------------------------------------------------------


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file must exist")
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise ValueError(f"{path}: weights must be a .npy or .npz file, got suffix {path.suffix!r}")
    try:
        if suffix == ".npy":
            return {"weights": np.load(path, mmap_mode="r", allow_pickle=False)}
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as err:  # truncated, not NumPy, or pickled objects
        raise ValueError(
            f"{path}: must be a readable NumPy file, got {type(err).__name__}: {err}"
        ) from None
    unknown = sorted(set(arrays) - set(NPZ_KEYS))
    if unknown:
        raise ValueError(
            f"{path.name}: unknown array(s) {unknown}; valid arrays are {list(NPZ_KEYS)}"
        )
    if "weights" not in arrays:
        raise ValueError(
            f"{path.name}: must hold array `weights` (runs, checkpoints, params), "
            f"got {sorted(arrays)}"
        )
    return arrays


def _per_run(
    arrays: Mapping[str, np.ndarray], key: str, R: int, C: int, name: str
) -> np.ndarray | None:
    """Array `key` as (R, C): given as (C,) (shared) or (R, C)."""
    if key not in arrays:
        return None
    a = np.asarray(arrays[key])
    if a.shape == (C,):
        a = np.broadcast_to(a, (R, C))
    if a.shape != (R, C):
        raise ValueError(
            f"{name}: array `{key}` must have shape ({C},) or ({R}, {C}), got {a.shape}"
        )
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"{name}: array `{key}` must be real numbers, got dtype {a.dtype}")
    return a


def _check_weights(weights: np.ndarray, name: str) -> tuple[int, int, int]:
    """(R, C, D) of an array of runs (R, M+1, D) of real numbers."""
    if weights.ndim != 3:
        raise ValueError(
            f"{name}: array `weights` must be 3-D (runs, checkpoints, params), "
            f"got shape {weights.shape}"
        )
    if not np.issubdtype(weights.dtype, np.number) or np.issubdtype(
        weights.dtype, np.complexfloating
    ):
        raise ValueError(f"{name}: array `weights` must be real numbers, got dtype {weights.dtype}")
    R, C, D = weights.shape
    if R < 1 or C < 2 or D < 1:
        raise ValueError(
            f"{name}: array `weights` must have >= 1 run, >= 2 checkpoints and >= 1 param, "
            f"got shape {weights.shape}"
        )
    return R, C, D


def _curves(per_run: Mapping[str, np.ndarray | None], i: int, where: str) -> dict[str, np.ndarray]:
    """Run i's recorded curves (those given), each finite or all NaN."""
    curves = {}
    for key in ("train_loss", "val_loss", "val_acc"):
        a = per_run[key]
        if a is None:
            continue
        x = a[i].astype(np.float64)
        if not np.isfinite(x).all() and not np.isnan(x).all():
            j = int(np.argmin(np.isfinite(x)))
            raise ValueError(
                f"{where}: array `{key}` must be finite (or all NaN), got {x[j]} at checkpoint {j}"
            )
        curves[key] = x
    return curves


def _finite_weights(weights: np.ndarray, where: str) -> np.ndarray:
    """One run's weights (M+1, D) as float32, all finite."""
    w = np.asarray(weights, dtype=np.float32)
    bad = ~np.isfinite(w)
    if bad.any():
        c, p = np.argwhere(bad)[0]
        raise ValueError(
            f"{where}: array `weights` must be finite (as float32), "
            f"got {w[c, p]} at checkpoint {c}, param {p}"
        )
    return w


def import_arrays(  # noqa: PLR0913 - keyword-only, one per `gfm data import` option
    weights_path: str | Path,
    dest: str | Path,
    *,
    metadata_path: str | Path | None = None,
    task: str = "imported",
    optimizer: str | None = None,
    lr: float | None = None,
    record_every: int | None = None,
    layout: Sequence[tuple[str, Sequence[int]]] | None = None,
    splits: SplitSettings | None = None,
) -> Manifest:
    """Import trajectories stored as arrays into the dataset folder ``dest`` (replacing it).

    ``.npy``: one array ``weights`` (R, M+1, D). ``.npz``: ``weights`` plus optional ``steps``,
    ``lr``, ``train_loss``, ``val_loss``, ``val_acc``, each (M+1,) shared by all runs or (R, M+1).
    Metadata rows (CSV or JSON, one per run in the order of the weights' first axis) may set
    ``METADATA_KEYS``; a field given there wins over the matching argument.

    Args:
        weights_path: the ``.npy`` or ``.npz`` file.
        dest: the dataset folder to write (an existing gfm dataset there is replaced).
        metadata_path: optional per-run metadata (``.csv`` or ``.json``).
        task: task name of runs whose metadata has none.
        optimizer: optimizer of runs whose metadata has none; required one way or the other.
        lr: base learning rate of runs whose metadata has none; needed unless ``lr`` is an array.
        record_every: optimizer steps between checkpoints when no ``steps`` array is given.
        layout: ``[(name, shape), ...]`` describing the D parameters (default one tensor
            ``"w"`` of shape (D,)).
        splits: split rules (default ``SplitSettings()``); seed split by run order per group.

    Returns:
        The manifest of the new dataset (already validated).

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: an array or field is malformed; the message names the file and field.
        DatasetError: the written dataset does not validate (a bug; please report).
    """
    path = Path(weights_path)
    arrays = _load_arrays(path)
    name = path.name
    weights = arrays["weights"]
    R, C, D = _check_weights(weights, name)
    named = [(n, tuple(int(s) for s in shp)) for n, shp in (layout or [("w", (D,))])]
    params = ParamMeta.from_named_shapes(named)
    if len(params) != D:
        raise ValueError(
            f"`layout` must describe D={D} parameters like `weights`, got {len(params)}"
        )

    rows: list[dict[str, Any]] = [{} for _ in range(R)]
    meta_name = None
    if metadata_path is not None:
        meta_path = Path(metadata_path)
        meta_name = meta_path.name
        rows = read_metadata(meta_path)
        if len(rows) != R:
            raise ValueError(
                f"{meta_name}: must have one row per run in `weights` ({R}), got {len(rows)}"
            )
    per_run = {k: _per_run(arrays, k, R, C, name) for k in NPZ_KEYS if k != "weights"}

    fields, run_ids = [], []
    for i, row in enumerate(rows):
        where = f"{meta_name or name}: run {i}"
        run_ids.append(check_run_id(row.get("run_id", f"run-{i:0{len(str(R - 1))}d}"), where))
        fields.append(describe(row, where, task=task, optimizer=optimizer, lr=lr))
        if fields[-1]["record_every"] is None:
            fields[-1]["record_every"] = record_every
    duplicates = sorted({r for r in run_ids if run_ids.count(r) > 1})
    if duplicates:
        raise ValueError(
            f"{meta_name or name}: `run_id` must be unique, got duplicates {duplicates[:5]}"
        )
    assign_seeds(fields)

    def records() -> Iterator[RunRecord]:
        for i, f in enumerate(fields):
            where = f"{name}: run {i}"
            steps_in = per_run["steps"]
            steps, r = grid(None if steps_in is None else steps_in[i], C, f["record_every"], where)
            lr_i = per_run["lr"]
            rates = lr_curve(f, None if lr_i is None else lr_i[i], C, where)
            curves = _curves(per_run, i, where)
            w = _finite_weights(weights[i], where)  # (M+1, D)
            yield _record(f, run_ids[i], steps, r, rates, curves, w, params)

    source = {"kind": "arrays", "weights": name, "metadata": meta_name}
    return _write_all(records(), Path(dest), source, splits)


# --------------------------------------------------------------------------------------------
# State dicts
# --------------------------------------------------------------------------------------------


def import_state_dicts(
    folder: str | Path,
    dest: str | Path,
    *,
    metadata_path: str | Path | None = None,
    task: str = "imported",
    optimizer: str | None = None,
    lr: float | None = None,
    splits: SplitSettings | None = None,
) -> Manifest:
    """Import runs saved as PyTorch ``state_dict`` checkpoints into ``dest`` (replacing it).

    ``folder`` holds one subfolder per run (its name is the run_id); each holds ``*.pt`` or
    ``*.pth`` files named with their step (``step_0.pt``, ``ckpt-0100.pth``; the last integer in
    the name), read with ``torch.load(..., weights_only=True)``. Steps must be 0, r, 2r, ...
    Floating-point tensors are flattened in state_dict order into w (D,); integer buffers (e.g.
    ``num_batches_tracked``) are skipped with a warning. Metadata rows are matched by ``run_id``;
    runs without a row take the arguments' defaults.

    Args:
        folder: the folder of run folders.
        dest: the dataset folder to write (an existing gfm dataset there is replaced).
        metadata_path: optional per-run metadata (``.csv`` or ``.json``) with a ``run_id`` field.
        task: task name of runs whose metadata has none.
        optimizer: optimizer of runs whose metadata has none; required one way or the other.
        lr: constant learning rate of runs whose metadata has none; required one way or the other.
        splits: split rules (default ``SplitSettings()``).

    Returns:
        The manifest of the new dataset (already validated).

    Raises:
        FileNotFoundError: the folder or the metadata file is missing.
        ValueError: a checkpoint or field is malformed; the message names the file and field.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder of run folders must exist")
    run_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not run_dirs:
        raise ValueError(f"{folder}: must hold one subfolder per run, got none")
    rows: dict[str, dict[str, Any]] = {}
    meta_name = None
    if metadata_path is not None:
        meta_path = Path(metadata_path)
        meta_name = meta_path.name
        for i, row in enumerate(read_metadata(meta_path)):
            run_id = row.get("run_id")
            if run_id is None:
                raise ValueError(
                    f"{meta_name}: row {i}: `run_id` must name a run folder, got nothing"
                )
            rows[str(run_id)] = row
        unknown = sorted(set(rows) - {p.name for p in run_dirs})
        if unknown:
            raise ValueError(
                f"{meta_name}: `run_id` must name a subfolder of {folder.name}, got {unknown[:5]}"
            )

    fields, run_ids = [], []
    for run_dir in run_dirs:
        run_id = check_run_id(run_dir.name, str(run_dir))
        where = f"{meta_name}: run {run_id}" if meta_name else str(run_dir)
        run_ids.append(run_id)
        fields.append(describe(rows.get(run_id, {}), where, task=task, optimizer=optimizer, lr=lr))
        check_constant_lr(fields[-1], where)  # before reading any checkpoint
    assign_seeds(fields)

    def records() -> Iterator[RunRecord]:
        for run_id, run_dir, f in zip(run_ids, run_dirs, fields, strict=True):
            steps_raw, weights, params = read_run_folder(run_dir)
            steps, r = grid(steps_raw, len(steps_raw), f["record_every"], f"{run_dir}: file names")
            rates = lr_curve(f, None, len(steps), f"{run_dir}")
            yield _record(f, run_id, steps, r, rates, {}, weights, params)

    source = {"kind": "state_dicts", "folder": folder.name, "metadata": meta_name}
    return _write_all(records(), Path(dest), source, splits)
