"""What an import reads about each run: metadata rows (CSV or JSON) parsed into spec fields.

Also the step grid and learning rates of a run, and default seed indices; ``gfm.data.importer``
turns the fields into records. The conventions are in ``docs/data-format.md``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from gfm.data.names import OPTIMIZERS
from gfm.data.schema import arch_name

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
    "eps",
    "schedule",
    "batch_size",
    "seed",
    "init_seed",
    "record_every",
    "split",
)
_FLOAT_HPARAMS = ("momentum", "alpha", "beta1", "beta2", "weight_decay")
_TORCH_EPS = 1e-8  # Adam's and RMSprop's eps in torch, which gfm's fields assume
_RENAMED = {"run": "run_id", "betas": "beta1 and beta2", "epsilon": "eps", "optimiser": "optimizer"}
"""Field names people bring from elsewhere -> gfm's name for them (one name per concept)."""


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------


def read_metadata(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV file or a JSON list (or ``{"runs": [...]}``) of objects; nulls dropped."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: metadata file must exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            text_fields = ("run_id", "task", "arch", "hidden", "optimizer", "schedule", "split")
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
            renamed = [f"`{k}` is called {_RENAMED[k]}" for k in unknown if k in _RENAMED]
            hint = f" ({'; '.join(renamed)} here)" if renamed else ""
            raise ValueError(
                f"{path}: row {i}: unknown field(s) {unknown}{hint}; "
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


def describe(
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
    eps = _float(row, "eps", where, positive=True)
    if eps is not None and not np.isclose(eps, _TORCH_EPS, rtol=1e-6, atol=0.0):
        raise ValueError(
            f"{where}: `eps` must be {_TORCH_EPS:g} (torch's default, which gfm's optimizer "
            f"fields assume; other values cannot be recorded yet), got {eps!r}"
        )
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


def grid(
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


def check_constant_lr(fields: dict[str, Any], where: str) -> None:
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


def lr_curve(fields: dict[str, Any], lr: np.ndarray | None, n: int, where: str) -> np.ndarray:
    """Learning rate per checkpoint (n,); sets hparams["lr"] (the base rate) when missing."""
    if lr is None:
        check_constant_lr(fields, where)
        return np.full(n, fields["hparams"]["lr"], dtype=np.float64)
    lr = lr.astype(np.float64)
    if not np.isfinite(lr).all() or (lr < 0).any():
        raise ValueError(
            f"{where}: `lr` must be finite and >= 0, got {lr[~np.isfinite(lr) | (lr < 0)][0]}"
        )
    fields["hparams"].setdefault("lr", float(lr.max()))  # base rate = peak of the schedule
    return lr


def assign_seeds(fields: list[dict[str, Any]]) -> None:
    """Fill in missing seeds: the run's position in its (task, optimizer, arch) group."""
    seen: dict[tuple[str, str, str], int] = {}
    for i, f in enumerate(fields):
        key = (f["task"], f["optimizer"], arch_name(f["hidden"]))
        position = seen.get(key, 0)
        seen[key] = position + 1
        if f["seed"] is None:
            f["seed"] = position
        if f["init_seed"] is None:
            f["init_seed"] = i
