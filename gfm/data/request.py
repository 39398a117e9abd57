"""Read a forecast request from files: the observed checkpoints of one run plus its metadata.

The checkpoints come as a ``.npy`` array (k+1, D) of flat weights, or as a folder of PyTorch
``state_dict`` files (``step_0.pt``, ``step_10.pt``, ...; read as ``gfm data import`` reads a
run). What the weights cannot tell comes as metadata (a JSON sidecar and/or CLI options):

    key                 type                 meaning
    optimizer           str                  one of sgd, momentum, rmsprop, adam, adamw
    lr                  float | list[float]  base learning rate, or the rate at each of the
                                             total_checkpoints checkpoints (then no schedule)
    schedule            str                  constant (default) | cosine | step, applied to lr
    record_every        int                  optimizer steps between two checkpoints (a folder's
                                             step numbers give it)
    total_checkpoints   int                  checkpoints the full run will have, w_0..w_M (M + 1)
    hparams             {str: float|bool}    momentum, nesterov, alpha, beta1, beta2,
                                             weight_decay (absent: torch's defaults)
    layout              [[name, shape], ...] the state_dict's tensors in order (a folder gives
                                             it); D = the sum of their sizes
    task                str                  context only
    run_id              str                  the run of the dataset this is a prefix of, if any
                                             (``gfm forecast`` then scores the forecast weights)

Shapes: k+1 observed checkpoints, M+1 in the whole run, D parameters. ``read_run`` reads a whole
run the same way (all M+1 checkpoints; ``total_checkpoints`` is then the number of rows), for a
backtest (``gfm backtest``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gfm.data.atomic import read_json_object
from gfm.data.names import HPARAM_KEYS, OPTIMIZERS, SCHEDULES
from gfm.data.optim import scheduled_lr
from gfm.data.schema import ParamMeta, RunRecord, RunSpec
from gfm.data.state_dicts import read_run_folder
from gfm.forecaster import Prefix

__all__ = ["METADATA_KEYS", "parse_layout", "read_prefix", "read_run", "read_sidecar", "sidecar"]

METADATA_KEYS = (
    "optimizer",
    "lr",
    "schedule",
    "record_every",
    "total_checkpoints",
    "hparams",
    "layout",
    "task",
    "run_id",
)


def sidecar(source: Path) -> Path:
    """The default metadata file of an input: ``a.npy`` -> ``a.json``, ``ckpts/`` -> ``ckpts.json``."""
    source = Path(source)
    return source.with_suffix(".json") if source.suffix else source.with_name(source.name + ".json")


def _load_weights(source: Path) -> tuple[np.ndarray, ParamMeta | None, int | None]:
    """(w (k+1, D) float32, layout from the files or None, record_every from steps or None)."""
    if source.is_dir():
        steps, w, params = read_run_folder(source)
        diffs = np.diff(steps)
        if steps[0] != 0 or np.any(diffs != diffs[0]) or diffs[0] <= 0:
            raise ValueError(
                f"{source}: checkpoint steps must be 0, r, 2r, ... (evenly spaced from 0), "
                f"got {steps[:6].tolist()}"
            )
        return w.astype(np.float32), params, int(diffs[0])
    if source.suffix != ".npy":
        raise ValueError(
            f"{source}: input must be a .npy array (checkpoints, params) or a folder of "
            f"state_dict checkpoints, got suffix {source.suffix!r}"
        )
    try:
        w = np.load(source, allow_pickle=False)
    except EOFError:  # an empty file; uncaught, the command would only print "Aborted."
        raise ValueError(
            f"{source}: must be a .npy array (observed checkpoints, parameters), got an empty file"
        ) from None
    except (OSError, ValueError) as err:
        raise ValueError(f"{source}: must be a readable .npy array, got {err}") from None
    if w.ndim != 2 or 0 in w.shape:
        raise ValueError(
            f"{source}: array must be 2-D and non-empty (observed checkpoints, parameters), "
            f"got shape {w.shape}"
        )
    if not np.issubdtype(w.dtype, np.floating):
        raise ValueError(f"{source}: array must hold floats, got dtype {w.dtype}")
    bad = ~np.isfinite(w)
    if bad.any():
        i, j = (int(x) for x in np.argwhere(bad)[0])
        raise ValueError(
            f"{source}: weights must be finite, got {w[i, j]} at checkpoint {i}, parameter {j}"
        )
    return w.astype(np.float32), None, None


def parse_layout(value: Any, where: str) -> ParamMeta:
    """The per-parameter metadata of a state_dict layout ``[[name, shape], ...]``.

    One form for every input that is a flat array (``gfm forecast``'s sidecar, ``gfm data
    import --layout``): the tensors in state_dict order, D = the sum of their sizes.

    Raises:
        ValueError: not a non-empty list of [name, shape] with unique names and sizes >= 1;
            the message names ``where``.
    """
    try:
        named = [(str(name), tuple(int(s) for s in shape)) for name, shape in value]
    except (TypeError, ValueError):
        raise ValueError(
            f"{where}: `layout` must be a list of [tensor name, shape], e.g. "
            f'[["net.0.weight", [8, 4]], ["net.0.bias", [8]]], got {value!r:.120}'
        ) from None
    if not named:
        raise ValueError(f"{where}: `layout` must name at least one tensor")
    for name, shape in named:
        if any(s < 1 for s in shape):
            raise ValueError(f"{where}: `layout` tensor {name!r} must have sizes >= 1, got {shape}")
    names = [name for name, _ in named]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{where}: `layout` tensor names must be unique, got {repeated} twice")
    return ParamMeta.from_named_shapes(named)


def _required(meta: Mapping[str, Any], key: str, where: str, hint: str) -> Any:
    if meta.get(key) is None:
        raise ValueError(f"{where}: `{key}` is missing: {hint}")
    return meta[key]


def read_prefix(source: str | Path, meta: Mapping[str, Any]) -> Prefix:
    """Build the ``Prefix`` of a forecast request (module docstring for the metadata).

    Args:
        source: a ``.npy`` array (k+1, D) or a folder of state_dict checkpoints.
        meta: the metadata; ``None`` values count as missing.

    Returns:
        The prefix: w (k+1, D) float32, lr (M+1,), with M = total_checkpoints − 1.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: the weights or a metadata field are missing or malformed; the message names
            the file or field, what was expected and what was given.
    """
    source = Path(source)
    w, params, spacing = _read(source, meta)
    where = "metadata"
    optimizer = _optimizer(meta, where)
    record_every = _record_every(meta, spacing, where)
    n_total = _total_checkpoints(meta, w, source, where)
    params = _params(meta, params, w, source, where)
    lr, base = _lr(meta, n_total, record_every, where)
    return Prefix(
        w=torch.from_numpy(np.ascontiguousarray(w)),
        M=n_total - 1,
        lr=torch.from_numpy(lr),
        optimizer=str(optimizer),
        hparams=_hparams(meta, base, where),
        record_every=record_every,
        params=params,
        task=str(meta.get("task") or ""),
    )


def read_run(source: str | Path, meta: Mapping[str, Any]) -> RunRecord:
    """Read a whole recorded run (all M+1 checkpoints) with its metadata, as for ``read_prefix``.

    ``total_checkpoints`` may be left out (it is the number of checkpoints given); the curves
    (losses, accuracy) are not known and are NaN. The record's run id is ``meta["run_id"]`` or
    the file's stem, its task ``meta["task"]`` or ``external``.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: the weights or a metadata field are missing or malformed (named).
    """
    source = Path(source)
    w, params, spacing = _read(source, meta)
    where = "metadata"
    n = w.shape[0]
    if meta.get("total_checkpoints") not in (None, n):
        raise ValueError(
            f"{where}: `total_checkpoints` must be the {n} checkpoints of the whole run given "
            f"in {source}, got {meta['total_checkpoints']}"
        )
    if n < 3:
        raise ValueError(f"{source}: a whole run needs >= 3 checkpoints (M >= 2), got {n}")
    optimizer = _optimizer(meta, where)
    record_every = _record_every(meta, spacing, where)
    params = _params(meta, params, w, source, where)
    lr, base = _lr(meta, n, record_every, where)
    nan = np.full(n, np.nan)
    spec = RunSpec(
        run_id=str(meta.get("run_id") or source.stem or "run"),
        task=str(meta.get("task") or "external"),
        hidden=(),
        optimizer=str(optimizer),
        hparams=_hparams(meta, base, where),
        schedule=str(meta.get("schedule") or "constant"),
        batch_size=None,
        seed=0,
        init_seed=0,
        steps=(n - 1) * record_every,
        record_every=record_every,
    )
    steps = np.arange(n, dtype=np.int64) * record_every
    return RunRecord(spec, steps, lr, nan, nan.copy(), nan.copy(), w, params)  # (M+1, D)


def _read(source: Path, meta: Mapping[str, Any]) -> tuple[np.ndarray, ParamMeta | None, int | None]:
    if not source.exists():
        raise FileNotFoundError(f"{source}: input not found")
    unknown = sorted(k for k in meta if k not in METADATA_KEYS and meta[k] is not None)
    if unknown:
        raise ValueError(
            f"metadata: unknown key(s) {unknown}; expected some of {list(METADATA_KEYS)}"
        )
    return _load_weights(source)


def _optimizer(meta: Mapping[str, Any], where: str) -> str:
    opt_hint = f"one of {list(OPTIMIZERS)} (--optimizer or the JSON sidecar)"
    optimizer = _required(meta, "optimizer", where, opt_hint)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"{where}: `optimizer` must be {opt_hint}, got {optimizer!r}")
    return str(optimizer)


def _record_every(meta: Mapping[str, Any], spacing: int | None, where: str) -> int:
    """Optimizer steps between two checkpoints: the metadata's, or the files' step spacing."""
    record_every = meta.get("record_every") if meta.get("record_every") is not None else spacing
    if record_every is None:
        raise ValueError(
            f"{where}: `record_every` is missing: optimizer steps between two "
            f"checkpoints (--record-every or the JSON sidecar)"
        )
    if (
        isinstance(record_every, bool)
        or not isinstance(record_every, int | float | np.integer | np.floating)
        or not float(record_every).is_integer()
        or record_every < 1
    ):  # 3.9 is refused, not truncated to 3 (the forecast's time grid depends on it)
        raise ValueError(
            f"{where}: `record_every` must be a positive integer, got {record_every!r}"
        )
    if spacing is not None and int(record_every) != spacing:
        raise ValueError(
            f"{where}: `record_every` must match the checkpoints' step spacing {spacing}, "
            f"got {record_every}"
        )
    return int(record_every)


def _total_checkpoints(meta: Mapping[str, Any], w: np.ndarray, source: Path, where: str) -> int:
    """M + 1, checked against the k + 1 observed checkpoints (something must be left)."""
    n_total = int(
        _required(
            meta,
            "total_checkpoints",
            where,
            "checkpoints the whole run will have, w_0..w_M (--total-checkpoints)",
        )
    )
    k = w.shape[0] - 1
    if k < 1:
        raise ValueError(
            f"{source}: needs at least 2 observed checkpoints, got {w.shape[0]} (shape {w.shape})"
        )
    if n_total <= k + 1:
        raise ValueError(
            f"{where}: `total_checkpoints` ({n_total}) must exceed the observed checkpoints "
            f"({k + 1}): there must be something to forecast"
        )
    return n_total


def _params(
    meta: Mapping[str, Any], params: ParamMeta | None, w: np.ndarray, source: Path, where: str
) -> ParamMeta:
    """The per-parameter layout: the checkpoint files', else the metadata's ``layout``."""
    if params is None:
        layout = _required(
            meta,
            "layout",
            where,
            "the state_dict's tensors as [[name, shape], ...] (JSON sidecar), needed for a "
            ".npy input",
        )
        params = parse_layout(layout, where)
    elif meta.get("layout") is not None and len(parse_layout(meta["layout"], where)) != len(params):
        raise ValueError(f"{where}: `layout` disagrees with the checkpoint files in {source}")
    if len(params) != w.shape[1]:
        raise ValueError(
            f"{source}: weights must have D={len(params)} columns (the sum of the layout's "
            f"tensor sizes), got shape {w.shape}"
        )
    return params


def _lr(
    meta: Mapping[str, Any], n_total: int, record_every: int, where: str
) -> tuple[np.ndarray, float]:
    """(the learning rate at each of the n_total checkpoints, the base rate)."""
    lr_value = _required(meta, "lr", where, "base learning rate (--lr) or one per checkpoint")
    schedule = meta.get("schedule") or "constant"
    if schedule not in SCHEDULES:
        raise ValueError(f"{where}: `schedule` must be one of {list(SCHEDULES)}, got {schedule!r}")
    if isinstance(lr_value, list | tuple):
        lr = np.asarray(lr_value, dtype=np.float64)
        if lr.shape != (n_total,):
            raise ValueError(
                f"{where}: `lr` as a list must have total_checkpoints={n_total} entries, "
                f"got {lr.shape[0] if lr.ndim == 1 else lr.shape}"
            )
        base = float(lr.max())
    else:
        try:
            base = float(lr_value)
        except (TypeError, ValueError):
            raise ValueError(
                f"{where}: `lr` must be a number or a list, got {lr_value!r}"
            ) from None
        if not base > 0 or not np.isfinite(base):
            raise ValueError(f"{where}: `lr` must be finite and positive, got {lr_value!r}")
        total_steps = (n_total - 1) * record_every
        lr = np.asarray(
            [scheduled_lr(schedule, base, i * record_every, total_steps) for i in range(n_total)]
        )
    if not np.isfinite(lr).all() or (lr < 0).any() or base <= 0:
        raise ValueError(f"{where}: `lr` must be finite and positive, got {lr_value!r:.80}")
    return lr, base


def _hparams(meta: Mapping[str, Any], base: float, where: str) -> dict[str, float | bool]:
    """The optimizer's hyperparameters: the base learning rate and the metadata's ``hparams``."""
    hparams: dict[str, float | bool] = {"lr": base}
    for key, value in dict(meta.get("hparams") or {}).items():
        if key not in HPARAM_KEYS:
            raise ValueError(
                f"{where}: `hparams` key {key!r} is unknown; expected some of {list(HPARAM_KEYS)}"
            )
        hparams[key] = bool(value) if key == "nesterov" else float(value)
    return hparams


def read_sidecar(path: Path) -> dict[str, Any]:
    """The JSON metadata of a request ({} when the file does not exist).

    Raises:
        ValueError: the file is not a JSON object.
    """
    return read_json_object(path, "metadata") if path.is_file() else {}
