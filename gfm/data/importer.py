"""Import trajectories recorded elsewhere into a gfm dataset folder.

Two sources: arrays (``.npy`` of weights, or ``.npz`` with ``weights`` and optional curves) shaped
(R, M+1, D), and folders of PyTorch ``state_dict`` checkpoints, one subfolder per run. Per-run
metadata comes from an optional CSV or JSON file. Imported runs go through the same
``DatasetWriter`` and the same validation as generated ones; the conventions for what an import
cannot know (defaults, splits) are in ``docs/data-format.md``.

Shapes: R runs, M+1 checkpoints, D parameters.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from gfm.config import SplitSettings
from gfm.data.format import Manifest
from gfm.data.names import OPTIMIZERS
from gfm.data.schema import ParamMeta, RunRecord, RunSpec, arch_name, check_run_id
from gfm.data.validate import check
from gfm.data.writer import DatasetWriter

__all__ = ["METADATA_KEYS", "NPZ_KEYS", "import_arrays", "import_state_dicts"]

METADATA_KEYS = (
    "run_id",
    "task",
    "arch",
    "hidden",
    "optimizer",
    "lr",
    "momentum",
    "nesterov",
    "alpha",
    "beta1",
    "beta2",
    "weight_decay",
    "schedule",
    "batch_size",
    "seed",
    "init_seed",
    "record_every",
)
NPZ_KEYS = ("weights", "steps", "lr", "train_loss", "val_loss", "val_acc")
_FLOAT_HPARAMS = ("momentum", "alpha", "beta1", "beta2", "weight_decay")
_CHECKPOINT_SUFFIXES = (".pt", ".pth")
_LAST_INT = re.compile(r"(\d+)(?!.*\d)")


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------


def _read_metadata(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV file or a JSON list (or ``{"runs": [...]}``) of objects; nulls dropped."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: metadata file must exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            text_fields = ("run_id", "task", "arch", "hidden", "optimizer", "schedule")
            overrides = dict.fromkeys(text_fields, pl.String)
            rows = pl.read_csv(
                path, infer_schema_length=None, schema_overrides=overrides
            ).to_dicts()
        except Exception as err:  # polars raises several types for malformed CSV
            raise ValueError(
                f"{path}: must be a readable CSV file, got {type(err).__name__}: {err}"
            ) from None
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: must be valid JSON, got {err}") from None
        rows = data.get("runs") if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError(
                f'{path}: must be a JSON list of objects (or {{"runs": [...]}}), '
                f"got {type(data).__name__}"
            )
    else:
        raise ValueError(
            f"{path}: metadata must be a .csv or .json file, got suffix {path.suffix!r}"
        )
    for i, row in enumerate(rows):
        unknown = sorted(set(row) - set(METADATA_KEYS))
        if unknown:
            raise ValueError(
                f"{path}: row {i}: unknown field(s) {unknown}; "
                f"valid fields are {list(METADATA_KEYS)}"
            )
    return [{k: v for k, v in row.items() if v is not None} for row in rows]


def _parse_hidden(value: Any, where: str, field: str) -> tuple[int, ...]:
    if isinstance(value, str):
        if value == "linear" or value == "":
            return ()
        parts = value.split("-")
        if not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(
                f"{where}: `{field}` must be positive sizes joined by '-' like '32-32', or "
                f"'linear', got {value!r}"
            )
        return tuple(int(p) for p in parts)
    if isinstance(value, list) and all(
        isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in value
    ):
        return tuple(value)
    raise ValueError(
        f"{where}: `{field}` must be a list of positive integers or a name like '32-32', "
        f"got {value!r}"
    )


def _float(row: Mapping[str, Any], key: str, where: str, *, positive: bool = False) -> float | None:
    if key not in row:
        return None
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise ValueError(f"{where}: `{key}` must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{where}: `{key}` must be > 0, got {value!r}")
    return float(value)


def _int(row: Mapping[str, Any], key: str, where: str, *, low: int) -> int | None:
    if key not in row:
        return None
    value = row[key]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{where}: `{key}` must be an integer >= {low}, got {value!r}")
    return value


def _bool(row: Mapping[str, Any], key: str, where: str) -> bool | None:
    if key not in row:
        return None
    value = row[key]
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise ValueError(f"{where}: `{key}` must be true or false, got {value!r}")


def _str(row: Mapping[str, Any], key: str, where: str, default: str | None) -> str | None:
    value = row.get(key, default)
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"{where}: `{key}` must be a non-empty string, got {value!r}")
    return value


def _describe(
    row: Mapping[str, Any], where: str, *, task: str, optimizer: str | None, lr: float | None
) -> dict[str, Any]:
    """Spec fields of one run from its metadata row and the call's defaults (no steps/seed yet)."""
    opt = _str(row, "optimizer", where, optimizer)
    if opt is None:
        raise ValueError(
            f"{where}: `optimizer` must be given (metadata field or the `optimizer` argument), "
            f"one of {list(OPTIMIZERS)}"
        )
    if opt not in OPTIMIZERS:
        raise ValueError(f"{where}: `optimizer` must be one of {list(OPTIMIZERS)}, got {opt!r}")
    hidden = _parse_hidden(row["hidden"], where, "hidden") if "hidden" in row else ()
    if "arch" in row:
        from_arch = _parse_hidden(row["arch"], where, "arch")
        if "hidden" in row and from_arch != hidden:
            raise ValueError(
                f"{where}: `arch` must match `hidden` {list(hidden)}, got {row['arch']!r}"
            )
        hidden = from_arch
    hparams: dict[str, float | bool] = {}
    base_lr = _float(row, "lr", where, positive=True)
    if base_lr is None and lr is not None:
        base_lr = float(lr)
    if base_lr is not None:
        hparams["lr"] = base_lr
    for key in _FLOAT_HPARAMS:
        value = _float(row, key, where)
        if value is not None:
            hparams[key] = value
    nesterov = _bool(row, "nesterov", where)
    if nesterov is not None:
        hparams["nesterov"] = nesterov
    return {
        "task": _str(row, "task", where, task),
        "hidden": hidden,
        "optimizer": opt,
        "hparams": hparams,
        "schedule": _str(row, "schedule", where, "constant"),
        "batch_size": _int(row, "batch_size", where, low=1),
        "seed": _int(row, "seed", where, low=0),
        "init_seed": _int(row, "init_seed", where, low=0),
        "record_every": _int(row, "record_every", where, low=1),
    }


def _grid(
    steps: np.ndarray | None, n: int, record_every: int | None, where: str
) -> tuple[np.ndarray, int]:
    """Recorded steps (n,) and record_every: given steps must be 0, r, 2r, ... (evenly spaced)."""
    if steps is None:
        r = record_every or 1
        return np.arange(n, dtype=np.int64) * r, r
    if not np.issubdtype(steps.dtype, np.integer):
        raise ValueError(f"{where}: `steps` must be integers, got dtype {steps.dtype}")
    steps = steps.astype(np.int64)
    diffs = np.diff(steps)
    if steps[0] != 0 or np.any(diffs <= 0) or np.any(diffs != diffs[0]):
        raise ValueError(
            f"{where}: `steps` must be evenly spaced from 0 (0, r, 2r, ...), "
            f"got {steps[:6].tolist()}"
            f"{' ...' if len(steps) > 6 else ''}"
        )
    r = int(diffs[0])
    if record_every is not None and record_every != r:
        raise ValueError(
            f"{where}: `record_every` must equal the spacing of `steps` ({r}), got {record_every}"
        )
    return steps, r


def _check_constant_lr(fields: dict[str, Any], where: str) -> None:
    """Without per-checkpoint rates, the run needs a base lr and a constant schedule."""
    if "lr" not in fields["hparams"]:
        raise ValueError(
            f"{where}: `lr` must be given (metadata field, the `lr` argument, or an `lr` array)"
        )
    if fields["schedule"] != "constant":
        raise ValueError(
            f"{where}: per-checkpoint learning rates (array `lr`) must be given for schedule "
            f"{fields['schedule']!r}; without them `schedule` must be 'constant'"
        )


def _lr_curve(fields: dict[str, Any], lr: np.ndarray | None, n: int, where: str) -> np.ndarray:
    """Learning rate per checkpoint (n,); sets hparams["lr"] (the base rate) when missing."""
    if lr is None:
        _check_constant_lr(fields, where)
        return np.full(n, fields["hparams"]["lr"], dtype=np.float64)
    lr = lr.astype(np.float64)
    if not np.isfinite(lr).all() or (lr < 0).any():
        raise ValueError(
            f"{where}: `lr` must be finite and >= 0, got {lr[~np.isfinite(lr) | (lr < 0)][0]}"
        )
    fields["hparams"].setdefault("lr", float(lr.max()))  # base rate = peak of the schedule
    return lr


def _assign_seeds(fields: list[dict[str, Any]]) -> None:
    # Default seed index: position of the run within its (task, optimizer, arch) group.
    seen: dict[tuple[str, str, str], int] = {}
    for i, f in enumerate(fields):
        key = (f["task"], f["optimizer"], arch_name(f["hidden"]))
        position = seen.get(key, 0)
        seen[key] = position + 1
        if f["seed"] is None:
            f["seed"] = position
        if f["init_seed"] is None:
            f["init_seed"] = i


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


def import_arrays(
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
        rows = _read_metadata(meta_path)
        if len(rows) != R:
            raise ValueError(
                f"{meta_name}: must have one row per run in `weights` ({R}), got {len(rows)}"
            )
    per_run = {k: _per_run(arrays, k, R, C, name) for k in NPZ_KEYS if k != "weights"}

    fields, run_ids = [], []
    for i, row in enumerate(rows):
        where = f"{meta_name or name}: run {i}"
        run_ids.append(check_run_id(row.get("run_id", f"run-{i:0{len(str(R - 1))}d}"), where))
        fields.append(_describe(row, where, task=task, optimizer=optimizer, lr=lr))
        if fields[-1]["record_every"] is None:
            fields[-1]["record_every"] = record_every
    duplicates = sorted({r for r in run_ids if run_ids.count(r) > 1})
    if duplicates:
        raise ValueError(
            f"{meta_name or name}: `run_id` must be unique, got duplicates {duplicates[:5]}"
        )
    _assign_seeds(fields)

    def records() -> Iterator[RunRecord]:
        for i, f in enumerate(fields):
            where = f"{name}: run {i}"
            steps_in = per_run["steps"]
            steps, r = _grid(None if steps_in is None else steps_in[i], C, f["record_every"], where)
            lr_i = per_run["lr"]
            lr_curve = _lr_curve(f, None if lr_i is None else lr_i[i], C, where)
            curves = {}
            for key in ("train_loss", "val_loss", "val_acc"):
                a = per_run[key]
                if a is None:
                    continue
                x = a[i].astype(np.float64)
                if not np.isfinite(x).all() and not np.isnan(x).all():
                    j = int(np.argmin(np.isfinite(x)))
                    raise ValueError(
                        f"{where}: array `{key}` must be finite (or all NaN), "
                        f"got {x[j]} at checkpoint {j}"
                    )
                curves[key] = x
            w = np.asarray(weights[i], dtype=np.float32)  # (M+1, D)
            bad = ~np.isfinite(w)
            if bad.any():
                c, p = np.argwhere(bad)[0]
                raise ValueError(
                    f"{where}: array `weights` must be finite (as float32), "
                    f"got {w[c, p]} at checkpoint {c}, param {p}"
                )
            yield _record(f, run_ids[i], steps, r, lr_curve, curves, w, params)

    source = {"kind": "arrays", "weights": name, "metadata": meta_name}
    return _write_all(records(), Path(dest), source, splits)


# --------------------------------------------------------------------------------------------
# State dicts
# --------------------------------------------------------------------------------------------


def _load_state_dict(path: Path) -> list[tuple[str, Any]]:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for bad or unsafe files
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"{path}: must be a PyTorch state_dict readable with weights_only=True, "
            f"got {type(err).__name__}: {first}"
        ) from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(
            f"{path}: must hold a non-empty state_dict (name -> tensor), got {type(obj).__name__}"
        )
    items = list(obj.items())
    for key, value in items:
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: entry `{key}` must be a tensor, got {type(value).__name__}")
    return items


def _checkpoint_files(run_dir: Path) -> list[tuple[int, Path]]:
    files = sorted(
        p for p in run_dir.iterdir() if p.is_file() and p.suffix.lower() in _CHECKPOINT_SUFFIXES
    )
    if len(files) < 2:
        raise ValueError(f"{run_dir}: must hold >= 2 checkpoints (*.pt or *.pth), got {len(files)}")
    by_step: dict[int, Path] = {}
    for p in files:
        m = _LAST_INT.search(p.stem)
        if m is None:
            raise ValueError(
                f"{p}: file name must contain the step number (e.g. step_100.pt), got {p.name!r}"
            )
        step = int(m.group(1))
        if step in by_step:
            raise ValueError(
                f"{p}: step {step} must be unique in {run_dir.name}, also in {by_step[step].name}"
            )
        by_step[step] = p
    return sorted(by_step.items())


def _flatten_run(run_dir: Path) -> tuple[np.ndarray, np.ndarray, ParamMeta]:
    """(steps (M+1,), weights (M+1, D) float32, params) of one run folder."""
    files = _checkpoint_files(run_dir)
    layout: list[tuple[str, tuple[int, ...]]] | None = None
    skipped: list[str] = []
    rows = []
    first = files[0][1].name
    for _, path in files:
        items = _load_state_dict(path)
        kept = [(k, v) for k, v in items if v.is_floating_point()]
        named = [(k, tuple(v.shape)) for k, v in kept]
        if layout is None:
            layout = named
            skipped = [k for k, v in items if not v.is_floating_point()]
            if not layout:
                raise ValueError(f"{path}: must hold at least one floating-point tensor")
        elif named != layout:
            expected, got = dict(layout), dict(named)
            for key in list(expected) + list(got):
                if expected.get(key) != got.get(key):
                    raise ValueError(
                        f"{path}: tensor `{key}` must have shape {expected.get(key)} like {first}, "
                        f"got {got.get(key)}"
                    )
            raise ValueError(f"{path}: tensors must come in the same order as in {first}")
        flat = np.concatenate([v.detach().reshape(-1).float().numpy() for _, v in kept])  # (D,)
        bad = ~np.isfinite(flat)
        if bad.any():
            j = int(np.argmax(bad))
            raise ValueError(f"{path}: weights must be finite, got {flat[j]} at flat position {j}")
        rows.append(flat)
    if skipped:
        warnings.warn(
            f"{run_dir.name}: skipped non-floating-point tensors {skipped} (buffers, not weights)",
            stacklevel=3,
        )
    assert layout is not None  # internal: at least two files were read
    steps = np.asarray([s for s, _ in files], dtype=np.int64)
    return steps, np.stack(rows), ParamMeta.from_named_shapes(layout)  # (M+1, D)


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
        for i, row in enumerate(_read_metadata(meta_path)):
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
        fields.append(_describe(rows.get(run_id, {}), where, task=task, optimizer=optimizer, lr=lr))
        _check_constant_lr(fields[-1], where)  # before reading any checkpoint
    _assign_seeds(fields)

    def records() -> Iterator[RunRecord]:
        for run_id, run_dir, f in zip(run_ids, run_dirs, fields, strict=True):
            steps_raw, weights, params = _flatten_run(run_dir)
            steps, r = _grid(steps_raw, len(steps_raw), f["record_every"], f"{run_dir}: file names")
            lr_curve = _lr_curve(f, None, len(steps), f"{run_dir}")
            yield _record(f, run_id, steps, r, lr_curve, {}, weights, params)

    source = {"kind": "state_dicts", "folder": folder.name, "metadata": meta_name}
    return _write_all(records(), Path(dest), source, splits)
