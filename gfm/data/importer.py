"""Import trajectories recorded elsewhere into a gfm dataset folder.

Two sources: arrays (``.npy`` of weights, or ``.npz`` with ``weights`` and optional curves) shaped
(R, M+1, D), and folders of PyTorch ``state_dict`` checkpoints, one subfolder per run. Per-run
metadata comes from an optional CSV or JSON file. Imported runs go through the same
``DatasetWriter`` and the same validation as generated ones; the conventions for what an import
cannot know (defaults, splits) are in ``docs/data-format.md``.

Shapes: R runs, M+1 checkpoints, D parameters.
"""

from __future__ import annotations

import warnings
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
from gfm.data.request import parse_layout
from gfm.data.schema import ParamMeta, RunRecord, RunSpec, arch_name, check_run_id
from gfm.data.splits import (
    IMPORT_FRACTIONS,
    GivenSplit,
    check_part,
    fraction_parts,
    parts_from_ranges,
)
from gfm.data.state_dicts import read_run_folder
from gfm.data.validate import check
from gfm.data.writer import DatasetWriter

__all__ = ["METADATA_KEYS", "NPZ_KEYS", "import_arrays", "import_state_dicts"]


NPZ_KEYS = ("weights", "steps", "lr", "train_loss", "val_loss", "val_acc")


def _write_all(
    records: Iterable[RunRecord],
    dest: Path,
    source: dict[str, Any],
    splits: SplitSettings | None,
    given: GivenSplit | None,
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
    writer.commit(None, run_ids, splits=splits, source=source, given=given)
    return check(dest)


def _given_split(
    rows: Sequence[Mapping[str, Any]],
    fields: Sequence[Mapping[str, Any]],
    run_ids: Sequence[str],
    split: Mapping[str, str] | None,
    splits: SplitSettings | None,
    where: str,
) -> GivenSplit | None:
    """Each run's seed-split part: metadata `split`, else ``split`` ranges, else the fractions.

    ``None`` (the ``splits`` counts decide) only when ``splits`` is given and nothing else is.
    """
    with_field = [i for i, row in enumerate(rows) if "split" in row]
    if with_field and split:
        raise ValueError(
            f"{where}: the split must be given once, as metadata `split` or as `split` run "
            f"ranges (--split), got both"
        )
    if with_field:
        if len(with_field) != len(rows):
            i = next(i for i, row in enumerate(rows) if "split" not in row)
            raise ValueError(
                f"{where}: run {run_ids[i]}: `split` must be given for every run once one has "
                f"it, one of ['train', 'val', 'test'], got nothing"
            )
        parts = [
            check_part(row["split"], f"{where}: run {run_ids[i]}") for i, row in enumerate(rows)
        ]
        rule = "metadata `split`"
    elif split:
        parts = parts_from_ranges(split, len(run_ids))
        rule = "runs " + " ".join(f"{k}={v}" for k, v in split.items()) + ", others train"
    elif splits is None:
        groups = [(f["task"], f["optimizer"], arch_name(f["hidden"])) for f in fields]
        order = [(f["seed"], r) for f, r in zip(fields, run_ids, strict=True)]
        parts = fraction_parts(groups, order, IMPORT_FRACTIONS)
        rule = "of each (task, optimizer, arch): the last 10% test, 10% before them val"
    else:
        return None
    return GivenSplit(dict(zip(run_ids, parts, strict=True)), rule)


class _Float32:
    """Casts weights to float32 (the dataset's dtype) and remembers what the cast changed."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.dtypes: set[str] = set()
        self.abs_change = 0.0
        self.rel_change = 0.0

    def __call__(self, w: np.ndarray) -> np.ndarray:
        """``w`` as float32; a wider float's largest absolute and relative change is kept."""
        w32 = np.asarray(w, dtype=np.float32)
        if np.issubdtype(w.dtype, np.floating) and w.dtype.itemsize > 4:
            self.dtypes.add(str(w.dtype))
            src = np.asarray(w, dtype=np.float64)
            with np.errstate(over="ignore", invalid="ignore"):
                delta = np.abs(w32.astype(np.float64) - src)
                finite = np.isfinite(delta)
                if finite.any():
                    self.abs_change = max(self.abs_change, float(delta[finite].max()))
                    nonzero = finite & (src != 0)
                    if nonzero.any():
                        rel = float((delta[nonzero] / np.abs(src[nonzero])).max())
                        self.rel_change = max(self.rel_change, rel)
        return w32

    def warn(self) -> None:
        """Say that wider floats were stored as float32, and by how much that changed them."""
        if self.dtypes:
            warnings.warn(
                f"{self.where}: weights are {'/'.join(sorted(self.dtypes))}; stored as float32 "
                f"(the dataset format), which changed them by up to {self.abs_change:.3g} "
                f"(relative {self.rel_change:.3g})",
                stacklevel=3,
            )


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


def _finite_weights(weights: np.ndarray, where: str, cast: _Float32) -> np.ndarray:
    """One run's weights (M+1, D) as float32, all finite."""
    w = cast(np.asarray(weights))
    bad = ~np.isfinite(w)
    if bad.any():
        c, p = np.argwhere(bad)[0]
        raise ValueError(
            f"{where}: array `weights` must be finite (as float32), "
            f"got {w[c, p]} at checkpoint {c}, param {p}"
        )
    return w


def _array_layout(
    layout: Sequence[tuple[str, Sequence[int]]] | None, D: int, name: str
) -> ParamMeta:
    """The layout of the D columns of ``weights``: the given ``[[name, shape], ...]`` or one ``w``."""
    if layout is None:
        return ParamMeta.from_named_shapes([("w", (D,))])
    params = parse_layout(layout, f"{name}: --layout")
    if len(params) != D:
        sizes = ", ".join(f"{n} {list(s)}" for n, s in _named_shapes(params)[:4])
        raise ValueError(
            f"{name}: --layout must describe the D={D} parameters of array `weights` (its last "
            f"axis), got {len(params)} ({sizes}{', ...' if len(set(params.layer)) > 4 else ''})"
        )
    return params


def _base_lr_per_run(
    arrays: dict[str, np.ndarray], fields: list[dict[str, Any]], R: int, C: int, name: str
) -> None:
    """An ``lr`` array of one rate per run, (R,) or (R, 1), as each run's constant base rate.

    It is taken out of ``arrays``; a (C,) or (R, C) array (rates per checkpoint) stays.

    Raises:
        ValueError: (R,) when R == C (one rate per run, or one per checkpoint?), or a rate that
            is not finite and > 0, or a metadata `lr` that disagrees.
    """
    lr = arrays.get("lr")
    if lr is not None and lr.shape == (R,) and R == C:
        raise ValueError(
            f"{name}: array `lr` of shape ({R},) must say whether it holds one rate per run "
            f"or one per checkpoint ({R} of each): give shape ({R}, 1) for one per run, "
            f"or ({R}, {C}) for one per checkpoint of each run"
        )
    if lr is None or lr.shape not in ((R,), (R, 1)):
        return
    rates = np.asarray(arrays.pop("lr"), dtype=np.float64).reshape(R)
    for i, (rate, f) in enumerate(zip(rates, fields, strict=True)):
        if not np.isfinite(rate) or rate <= 0:
            raise ValueError(f"{name}: run {i}: array `lr` must be finite and > 0, got {rate}")
        given = f["hparams"].get("lr")
        if given is not None and given != rate:
            raise ValueError(
                f"{name}: run {i}: array `lr` ({rate}) must agree with metadata `lr` ({given})"
            )
        f["hparams"]["lr"] = float(rate)


def _rows(metadata_path: str | Path | None, R: int) -> tuple[list[dict[str, Any]], str | None]:
    """The metadata rows of R runs in array order (empty rows without a file), and its name."""
    if metadata_path is None:
        return [{} for _ in range(R)], None
    meta_path = Path(metadata_path)
    rows = read_metadata(meta_path)
    if len(rows) != R:
        raise ValueError(
            f"{meta_path.name}: must have one row per run in `weights` ({R}), got {len(rows)}"
        )
    return rows, meta_path.name


def _array_fields(
    rows: list[dict[str, Any]], where: str, R: int, defaults: Mapping[str, Any]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Spec fields and run ids of the runs of an array import (seeds still missing)."""
    fields, run_ids = [], []
    for i, row in enumerate(rows):
        here = f"{where}: run {i}"
        run_ids.append(check_run_id(row.get("run_id", f"run-{i:0{len(str(R - 1))}d}"), here))
        f = describe(
            row, here, task=defaults["task"], optimizer=defaults["optimizer"], lr=defaults["lr"]
        )
        if f["record_every"] is None:
            f["record_every"] = defaults["record_every"]
        fields.append(f)
    duplicates = sorted({r for r in run_ids if run_ids.count(r) > 1})
    if duplicates:
        raise ValueError(f"{where}: `run_id` must be unique, got duplicates {duplicates[:5]}")
    return fields, run_ids


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
    split: Mapping[str, str] | None = None,
    splits: SplitSettings | None = None,
) -> Manifest:
    """Import trajectories stored as arrays into the dataset folder ``dest`` (replacing it).

    ``.npy``: one array ``weights`` (R, M+1, D). ``.npz``: ``weights`` plus optional ``steps``,
    ``lr``, ``train_loss``, ``val_loss``, ``val_acc``, each (M+1,) shared by all runs or (R, M+1);
    ``lr`` may also be (R, 1) (or (R,) when R != M+1): one constant rate per run. Metadata rows
    (CSV or JSON, one per run in the order of the weights' first axis) may set ``METADATA_KEYS``;
    a field given there wins over the matching argument. Weights wider than float32 are stored
    as float32 with a warning saying by how much that changed them.

    The seed split: a metadata ``split`` field (train/val/test per run), else ``split`` run
    ranges, else ``splits`` counts when given, else of each (task, optimizer, arch) group the
    last 10% test and the 10% before them val (``IMPORT_FRACTIONS``).

    Args:
        weights_path: the ``.npy`` or ``.npz`` file.
        dest: the dataset folder to write (an existing gfm dataset there is replaced).
        metadata_path: optional per-run metadata (``.csv`` or ``.json``).
        task: task name of runs whose metadata has none.
        optimizer: optimizer of runs whose metadata has none; required one way or the other.
        lr: base learning rate of runs whose metadata has none; needed unless ``lr`` is an array.
        record_every: optimizer steps between checkpoints when no ``steps`` array is given.
        layout: the state_dict's tensors ``[[name, shape], ...]`` in order, describing the D
            parameters (the form ``gfm forecast`` takes; default one tensor ``"w"`` of (D,)).
        split: ``{"val": "160-179", "test": "180-199"}``: run positions (0-based, inclusive
            ranges) per part; runs named nowhere are train.
        splits: split rules (default ``SplitSettings()``); with neither ``split`` nor a
            metadata ``split``, its seed counts replace the 10% fractions.

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
    params = _array_layout(layout, D, name)
    rows, meta_name = _rows(metadata_path, R)
    defaults = {"task": task, "optimizer": optimizer, "lr": lr, "record_every": record_every}
    fields, run_ids = _array_fields(rows, meta_name or name, R, defaults)
    _base_lr_per_run(arrays, fields, R, C, name)
    per_run = {k: _per_run(arrays, k, R, C, name) for k in NPZ_KEYS if k != "weights"}
    assign_seeds(fields)
    given = _given_split(rows, fields, run_ids, split, splits, meta_name or name)
    cast = _Float32(name)

    def records() -> Iterator[RunRecord]:
        for i, f in enumerate(fields):
            where = f"{name}: run {i}"
            steps_in = per_run["steps"]
            steps, r = grid(None if steps_in is None else steps_in[i], C, f["record_every"], where)
            lr_i = per_run["lr"]
            rates = lr_curve(f, None if lr_i is None else lr_i[i], C, where)
            curves = _curves(per_run, i, where)
            w = _finite_weights(weights[i], where, cast)  # (M+1, D)
            yield _record(f, run_ids[i], steps, r, rates, curves, w, params)

    source = {"kind": "arrays", "weights": name, "metadata": meta_name}
    manifest = _write_all(records(), Path(dest), source, splits, given)
    cast.warn()
    return manifest


# --------------------------------------------------------------------------------------------
# State dicts
# --------------------------------------------------------------------------------------------


def _rows_by_run(
    metadata_path: str | Path | None, folder: Path, run_dirs: list[Path]
) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Metadata rows by run_id (each naming a run folder), and the file's name."""
    rows: dict[str, dict[str, Any]] = {}
    if metadata_path is None:
        return rows, None
    meta_path = Path(metadata_path)
    meta_name = meta_path.name
    for i, row in enumerate(read_metadata(meta_path)):
        run_id = row.get("run_id")
        if run_id is None:
            raise ValueError(f"{meta_name}: row {i}: `run_id` must name a run folder, got nothing")
        rows[str(run_id)] = row
    unknown = sorted(set(rows) - {p.name for p in run_dirs})
    if unknown:
        raise ValueError(
            f"{meta_name}: `run_id` must name a subfolder of {folder.name}, got {unknown[:5]}"
        )
    return rows, meta_name


def import_state_dicts(  # noqa: PLR0913 - keyword-only, one per `gfm data import` option
    folder: str | Path,
    dest: str | Path,
    *,
    metadata_path: str | Path | None = None,
    task: str = "imported",
    optimizer: str | None = None,
    lr: float | None = None,
    split: Mapping[str, str] | None = None,
    splits: SplitSettings | None = None,
) -> Manifest:
    """Import runs saved as PyTorch ``state_dict`` checkpoints into ``dest`` (replacing it).

    ``folder`` holds one subfolder per run (its name is the run_id); each holds ``*.pt`` or
    ``*.pth`` files named with their step (``step_0.pt``, ``ckpt-0100.pth``; the last integer in
    the name), read with ``torch.load(..., weights_only=True)``. Steps must be 0, r, 2r, ...
    Floating-point tensors are flattened in state_dict order into w (D,); integer buffers (e.g.
    ``num_batches_tracked``) are skipped with a warning, and float64 tensors are stored as
    float32 with a warning saying by how much. Metadata rows are matched by ``run_id``; runs
    without a row take the arguments' defaults. The seed split is decided as in
    ``import_arrays``; run positions count the run folders sorted by name.

    Args:
        folder: the folder of run folders.
        dest: the dataset folder to write (an existing gfm dataset there is replaced).
        metadata_path: optional per-run metadata (``.csv`` or ``.json``) with a ``run_id`` field.
        task: task name of runs whose metadata has none.
        optimizer: optimizer of runs whose metadata has none; required one way or the other.
        lr: constant learning rate of runs whose metadata has none; required one way or the other.
        split: ``{"val": "8-9", "test": "10-11"}``: run positions per part (others train).
        splits: split rules (default ``SplitSettings()``); see ``import_arrays``.

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
    rows, meta_name = _rows_by_run(metadata_path, folder, run_dirs)

    fields, run_ids = [], []
    for run_dir in run_dirs:
        run_id = check_run_id(run_dir.name, str(run_dir))
        where = f"{meta_name}: run {run_id}" if meta_name else str(run_dir)
        run_ids.append(run_id)
        fields.append(describe(rows.get(run_id, {}), where, task=task, optimizer=optimizer, lr=lr))
        check_constant_lr(fields[-1], where)  # before reading any checkpoint
    assign_seeds(fields)
    run_rows = [rows.get(r, {}) for r in run_ids]
    given = _given_split(run_rows, fields, run_ids, split, splits, meta_name or folder.name)
    cast = _Float32(folder.name)

    def records() -> Iterator[RunRecord]:
        for run_id, run_dir, f in zip(run_ids, run_dirs, fields, strict=True):
            steps_raw, weights, params = read_run_folder(run_dir)
            steps, r = grid(steps_raw, len(steps_raw), f["record_every"], f"{run_dir}: file names")
            rates = lr_curve(f, None, len(steps), f"{run_dir}")
            w = _finite_weights(weights, str(run_dir), cast)  # (M+1, D)
            yield _record(f, run_id, steps, r, rates, {}, w, params)

    source = {"kind": "state_dicts", "folder": folder.name, "metadata": meta_name}
    manifest = _write_all(records(), Path(dest), source, splits, given)
    cast.warn()
    return manifest
