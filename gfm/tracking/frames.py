"""The tabular form of a forecast request and its answer, as the pyfunc model reads and writes it.

A request describes one run as a pandas DataFrame with one row per recorded checkpoint
i = 0..M (so M + 1 rows, row i at time t_i = i / M):

    column           type            rows            meaning
    checkpoint       int             every (opt.)    i; if present it must read 0, 1, ..., M
    w                list[float]     0..k            observed weights w_i (D,); null, NaN or []
                                                     on the unobserved rows k+1..M
    lr               float           every           learning rate in effect at checkpoint i
    optimizer        str             every, equal    one of gfm.config.OPTIMIZERS
    record_every     int             every, equal    optimizer steps between two checkpoints
    task             str             every (opt.)    context only
    hp_<name>        float / bool    every (opt.)    the optimizer's hyperparameters, one column
                                                     per key of Prefix.hparams (hp_lr, hp_momentum,
                                                     hp_nesterov, hp_alpha, hp_beta1, hp_beta2,
                                                     hp_weight_decay); absent = torch's default
    layer            list[str]       row 0           per-parameter metadata, each of length D
    kind             list[str]       row 0           ("weight" or "bias"); rows 1..M null or a
    fan_in           list[int]       row 0           copy of row 0
    index            list[int]       row 0 (opt.)    flat index in the tensor (default: counted)
    shape            list[str]       row 0 (opt.)    tensor shape as "3x2" ("" for a scalar;
                                                     default: 1-D per layer)

The answer has one row per forecast checkpoint i = k+1..M: ``checkpoint`` (int), ``t`` (float,
i / M) and ``w`` (list[float] of length D).

Why rows per checkpoint: ``lr`` is known at every step, observed and future, and the split
between observed and forecast rows is then visible in the frame itself. The per-parameter
metadata does not vary with time, so it sits once on row 0 instead of being repeated M + 1
times. One frame holds one run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from gfm.data.names import HPARAM_KEYS, OPTIMIZERS
from gfm.data.schema import PARAM_KINDS, ParamMeta
from gfm.forecaster import Forecaster, Prefix, target_times

HPARAM_PREFIX = "hp_"
META_COLUMNS = ("layer", "kind", "fan_in")
OPTIONAL_META_COLUMNS = ("index", "shape")
REQUIRED_COLUMNS = ("w", "lr", "optimizer", "record_every", *META_COLUMNS)
MAX_VALUES = 2**22  # observed weight values (k+1)·D in one request: 4,194,304 (docs/serving.md)
OUTPUT_COLUMNS = ("checkpoint", "t", "w")
_WHERE = "input frame"


def prefix_to_frame(prefix: Prefix) -> pd.DataFrame:
    """Write a prefix as a request frame (module docstring): M + 1 rows, ``w`` null after k.

    Args:
        prefix: the observed start of one run; ``w`` (k+1, D), ``lr`` (M+1,).

    Returns:
        The request frame.

    Raises:
        ValueError: ``prefix.hparams`` holds a key with no frame column, or ``lr`` does not have
            M + 1 entries.
    """
    unknown = sorted(set(prefix.hparams) - set(HPARAM_KEYS))
    if unknown:
        raise ValueError(
            f"`prefix.hparams`: keys {unknown} have no frame column; expected some of "
            f"{list(HPARAM_KEYS)}"
        )
    n_rows = prefix.M + 1
    lr = np.asarray(prefix.lr, dtype=np.float64).reshape(-1)
    if lr.shape[0] != n_rows:
        raise ValueError(f"`prefix.lr` must have M+1={n_rows} entries, got {lr.shape[0]}")
    w = np.asarray(prefix.w.detach().cpu(), dtype=np.float64)  # (k+1, D)
    meta = prefix.params

    def on_row0(values: list[Any]) -> list[Any]:
        return [values] + [None] * (n_rows - 1)

    columns: dict[str, Any] = {
        "checkpoint": np.arange(n_rows, dtype=np.int64),
        "w": [row.tolist() for row in w] + [None] * (n_rows - w.shape[0]),
        "lr": lr,
        "optimizer": [prefix.optimizer] * n_rows,
        "record_every": np.full(n_rows, prefix.record_every, dtype=np.int64),
        "task": [prefix.task] * n_rows,
    }
    for key in HPARAM_KEYS:
        if key in prefix.hparams:
            value = prefix.hparams[key]
            value = bool(value) if isinstance(value, bool | np.bool_) else float(value)
            columns[HPARAM_PREFIX + key] = [value] * n_rows
    columns["layer"] = on_row0([str(x) for x in meta.layer])
    columns["kind"] = on_row0([str(x) for x in meta.kind])
    columns["fan_in"] = on_row0([int(x) for x in meta.fan_in])
    columns["index"] = on_row0([int(x) for x in meta.index])
    columns["shape"] = on_row0(["x".join(str(int(s)) for s in shp) for shp in meta.shape])
    return pd.DataFrame(columns)


def frame_to_prefix(df: pd.DataFrame) -> Prefix:
    """Read a request frame (module docstring) back into a ``Prefix``.

    Args:
        df: the request frame, M + 1 rows.

    Returns:
        The prefix: ``w`` float32 (k+1, D), ``lr`` float64 (M+1,).

    Raises:
        TypeError: ``df`` is not a pandas DataFrame.
        ValueError: a column is missing, null, NaN, not constant, of the wrong length or out of
            its range; the message names the column.
    """
    _check_frame(df)
    n_rows = len(df)
    M = n_rows - 1
    w_rows = _observed_weights(df)  # k+1 arrays of shape (D,)
    D = w_rows[0].shape[0]
    w = torch.from_numpy(np.stack(w_rows).astype(np.float32))  # (k+1, D)
    lr = torch.from_numpy(_lr(df))  # (M+1,)
    optimizer = str(_constant(df, "optimizer"))
    if optimizer not in OPTIMIZERS:
        raise ValueError(
            f"{_WHERE}: column `optimizer` must be one of {list(OPTIMIZERS)}, got {optimizer!r}"
        )
    record_every = _constant(df, "record_every")
    if (
        isinstance(record_every, bool)
        or not isinstance(record_every, int | float)
        or not float(record_every).is_integer()
        or record_every < 1
    ):
        raise ValueError(
            f"{_WHERE}: column `record_every` must be a positive integer, got {record_every!r}"
        )
    has_task = "task" in df.columns and not df["task"].isna().all()
    task = str(_constant(df, "task")) if has_task else ""
    return Prefix(
        w=w,
        M=M,
        lr=lr,
        optimizer=optimizer,
        hparams=_hparams(df),
        record_every=int(record_every),
        params=_param_meta(df, D),
        task=task,
    )


def forecast_frame(forecaster: Forecaster, prefix: Prefix) -> pd.DataFrame:
    """Forecast checkpoints k+1..M of a run and write them as an answer frame.

        t_i = i / M  for i = k+1..M;  w_i = forecaster.forecast(prefix, t)[i - k - 1]

    Args:
        forecaster: any ``Forecaster``.
        prefix: the observed start of the run.

    Returns:
        One row per forecast checkpoint: ``checkpoint``, ``t``, ``w`` (list of D floats).

    Raises:
        ValueError: the forecaster returned a tensor that is not (T, D) or not finite.
    """
    checkpoints = np.arange(prefix.k + 1, prefix.M + 1, dtype=np.int64)  # (T,)
    t = target_times(prefix)  # (T,) float64, as a native forecast of the rest of the run
    with torch.no_grad():
        w = forecaster.forecast(prefix, t)
    expected = (len(checkpoints), prefix.D)
    if tuple(w.shape) != expected:
        raise ValueError(
            f"{type(forecaster).__name__}.forecast must return shape (T, D)={expected}, "
            f"got {tuple(w.shape)}"
        )
    w_np = w.detach().cpu().numpy().astype(np.float64)  # (T, D)
    if not np.isfinite(w_np).all():
        raise ValueError(f"{type(forecaster).__name__}.forecast returned non-finite weights")
    return pd.DataFrame(
        {
            "checkpoint": checkpoints,
            "t": t.numpy(),
            "w": [row.tolist() for row in w_np],
        }
    )


def frame_to_forecast(df: pd.DataFrame) -> np.ndarray:
    """Stack the ``w`` column of an answer frame into a float32 array (T, D), rows in order.

    Raises:
        ValueError: the ``w`` column is missing or its lists differ in length.
    """
    if "w" not in df.columns:
        raise ValueError(f"answer frame: column `w` is missing, got columns {list(df.columns)}")
    rows = [np.asarray(x, dtype=np.float64).reshape(-1) for x in df["w"]]
    lengths = sorted({r.shape[0] for r in rows})
    if len(lengths) > 1:
        raise ValueError(f"answer frame: column `w` must hold lists of equal length, got {lengths}")
    return np.stack(rows).astype(np.float32)


# ----------------------------------------------------------------------------- checks


def _check_frame(df: Any) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{_WHERE}: must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"{_WHERE}: missing column(s) {', '.join(f'`{c}`' for c in missing)}; "
            f"required columns are {list(REQUIRED_COLUMNS)}"
        )
    if len(df) < 3:
        raise ValueError(
            f"{_WHERE}: needs one row per checkpoint 0..M with M >= 2, got {len(df)} rows"
        )
    if "checkpoint" in df.columns:
        got = df["checkpoint"].to_numpy()
        if pd.isna(got).any() or not np.array_equal(got.astype(np.float64), np.arange(len(df))):
            raise ValueError(
                f"{_WHERE}: column `checkpoint` must read 0, 1, ..., M={len(df) - 1} in order, "
                f"got {_preview(got.tolist())}"
            )


def _is_missing(cell: Any) -> bool:
    """A cell counts as unobserved when it is None, a scalar NaN/NA, or an empty sequence."""
    if cell is None:
        return True
    if isinstance(cell, np.ndarray | list | tuple):
        return len(cell) == 0
    try:
        return bool(pd.isna(cell))
    except (TypeError, ValueError):
        return False


def _observed_weights(df: pd.DataFrame) -> list[np.ndarray]:
    cells = df["w"].tolist()
    observed = [i for i, cell in enumerate(cells) if not _is_missing(cell)]
    size = sum(len(cells[i]) if hasattr(cells[i], "__len__") else 1 for i in observed)
    if size > MAX_VALUES:
        raise ValueError(
            f"{_WHERE}: column `w` must hold at most {MAX_VALUES:,} observed values "
            f"((k+1)·D), got {size:,}: send fewer observed checkpoints (the forecast starts "
            "from the last ones) or fewer parameters per request"
        )
    M = len(cells) - 1
    if not observed:
        raise ValueError(f"{_WHERE}: column `w` holds no observed checkpoint; rows 0..k must")
    k = len(observed) - 1
    if observed != list(range(k + 1)):
        raise ValueError(
            f"{_WHERE}: column `w` must hold the observed checkpoints on rows 0..k and nulls "
            f"after, got values on rows {_preview(observed)}"
        )
    if k < 1 or k >= M:
        raise ValueError(
            f"{_WHERE}: column `w` must be observed on rows 0..k with 1 <= k <= M-1={M - 1} "
            f"(two observed checkpoints, one to forecast), got k={k}"
        )
    rows = []
    for i in observed:
        try:
            row = np.asarray(cells[i], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"{_WHERE}: column `w` must hold lists of floats, row {i} holds "
                f"{type(cells[i]).__name__}: {err}"
            ) from None
        if row.ndim != 1:
            raise ValueError(
                f"{_WHERE}: column `w` must hold flat lists of D floats, row {i} has shape "
                f"{row.shape}"
            )
        rows.append(row)
    lengths = {i: r.shape[0] for i, r in enumerate(rows)}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"{_WHERE}: column `w` must hold lists of equal length D, got lengths "
            f"{sorted(set(lengths.values()))} (per row: {_preview(list(lengths.values()))})"
        )
    bad = [i for i, r in enumerate(rows) if not np.isfinite(r).all()]
    if bad:
        raise ValueError(
            f"{_WHERE}: column `w` must be finite, got NaN or inf on rows {_preview(bad)}"
        )
    return rows


def _lr(df: pd.DataFrame) -> np.ndarray:
    try:
        numbers = pd.to_numeric(df["lr"], errors="raise")
        lr = np.array(numbers.to_numpy(dtype=np.float64, na_value=np.nan))  # a writable copy
    except (TypeError, ValueError) as err:
        raise ValueError(f"{_WHERE}: column `lr` must hold numbers, got {err}") from None
    bad = np.flatnonzero(~np.isfinite(lr)).tolist()
    if bad:
        raise ValueError(
            f"{_WHERE}: column `lr` must be finite on every row 0..M, got null/NaN/inf on rows "
            f"{_preview(bad)}"
        )
    return lr


def _constant(df: pd.DataFrame, column: str) -> Any:
    values = df[column].tolist()
    if any(_is_missing(v) for v in values):
        raise ValueError(f"{_WHERE}: column `{column}` must be set on every row, got nulls")
    distinct = list(dict.fromkeys(values))
    if len(distinct) > 1:
        raise ValueError(
            f"{_WHERE}: column `{column}` must be the same on every row, got {_preview(distinct)}"
        )
    value = distinct[0]
    return value.item() if isinstance(value, np.generic) else value


def _hparams(df: pd.DataFrame) -> dict[str, float | bool]:
    out: dict[str, float | bool] = {}
    for column in df.columns:
        if not str(column).startswith(HPARAM_PREFIX):
            continue
        key = str(column)[len(HPARAM_PREFIX) :]
        if key not in HPARAM_KEYS:
            raise ValueError(
                f"{_WHERE}: column `{column}` is not a known hyperparameter; expected some of "
                f"{[HPARAM_PREFIX + k for k in HPARAM_KEYS]}"
            )
        if df[column].isna().all():  # an optional column left empty: the key is absent
            continue
        value = _constant(df, str(column))
        if isinstance(value, bool):
            out[key] = value
        elif isinstance(value, int | float) and math.isfinite(value):
            out[key] = float(value)
        else:
            raise ValueError(
                f"{_WHERE}: column `{column}` must hold a finite number or a bool, got {value!r}"
            )
    return out


def _row0_list(df: pd.DataFrame, column: str, D: int) -> list[Any]:
    cells = df[column].tolist()
    first = cells[0]
    if _is_missing(first):
        raise ValueError(
            f"{_WHERE}: column `{column}` must hold the per-parameter list on row 0, got null"
        )
    values = list(first)
    if len(values) != D:
        raise ValueError(
            f"{_WHERE}: column `{column}` on row 0 must have length D={D} (one entry per "
            f"parameter, like `w`), got {len(values)}"
        )
    for i, cell in enumerate(cells[1:], start=1):
        if not _is_missing(cell) and not _same_list(cell, values):
            raise ValueError(
                f"{_WHERE}: column `{column}` must be null on rows 1..M or repeat row 0, "
                f"row {i} differs"
            )
    return values


def _same_list(a: Sequence[Any], b: Sequence[Any]) -> bool:
    if len(a) != len(b):
        return False
    return all(
        list(x) == list(y) if isinstance(x, Sequence | np.ndarray) else x == y
        for x, y in zip(a, b, strict=True)
    )


def _param_meta(df: pd.DataFrame, D: int) -> ParamMeta:
    layer = [str(x) for x in _row0_list(df, "layer", D)]
    kind = [str(x) for x in _row0_list(df, "kind", D)]
    bad_kind = sorted(set(kind) - set(PARAM_KINDS))
    if bad_kind:
        raise ValueError(
            f"{_WHERE}: column `kind` must hold only {list(PARAM_KINDS)}, got {bad_kind}"
        )
    fan_in = _int_list(_row0_list(df, "fan_in", D), "fan_in", minimum=1)
    if "index" in df.columns and not _is_missing(df["index"].iloc[0]):
        index = _int_list(_row0_list(df, "index", D), "index", minimum=0)
    else:
        index = _count_within_layers(layer)
    if "shape" in df.columns and not _is_missing(df["shape"].iloc[0]):
        shape = [_shape(s) for s in _row0_list(df, "shape", D)]
    else:
        sizes = {name: layer.count(name) for name in dict.fromkeys(layer)}
        shape = [(sizes[name],) for name in layer]
    return ParamMeta.from_lists(layer, shape, index, kind, fan_in)


def _int_list(values: list[Any], column: str, *, minimum: int) -> list[int]:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{_WHERE}: column `{column}` must hold integers") from None
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(arr) | (arr != np.round(arr)) | (arr < minimum)
    if bad.any():
        raise ValueError(
            f"{_WHERE}: column `{column}` must hold integers >= {minimum}, got "
            f"{_preview(sorted(set(arr[bad].tolist())))}"
        )
    return [int(x) for x in arr]


def _shape(text: Any) -> tuple[int, ...]:
    parts = str(text).split("x") if str(text) else []
    if not all(p.isdigit() for p in parts):
        raise ValueError(
            f"{_WHERE}: column `shape` must hold shapes like '3x2' ('' for a scalar), got {text!r}"
        )
    return tuple(int(p) for p in parts)


def _count_within_layers(layer: list[str]) -> list[int]:
    seen: dict[str, int] = {}
    index = []
    for name in layer:
        index.append(seen.get(name, 0))
        seen[name] = index[-1] + 1
    return index


def _preview(values: list[Any], n: int = 8) -> str:
    shown = ", ".join(repr(v) for v in values[:n])
    return f"[{shown}{', ...' if len(values) > n else ''}]"
