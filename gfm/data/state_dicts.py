"""PyTorch ``state_dict`` checkpoints <-> flat weights: a run folder read, a forecast written."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gfm.data.schema import ParamMeta

_CHECKPOINT_SUFFIXES = (".pt", ".pth")
_LAST_INT = re.compile(r"(\d+)(?!.*\d)")


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


def _flat(v: Any) -> np.ndarray:
    """A floating-point tensor as a flat array: float64 kept (callers say what a cast changes)."""
    import torch

    v = v.detach().reshape(-1)
    return v.numpy() if v.dtype == torch.float64 else v.float().numpy()


def read_run_folder(run_dir: Path) -> tuple[np.ndarray, np.ndarray, ParamMeta]:
    """(steps (M+1,), weights (M+1, D), params) of one run folder.

    The weights are float32, or float64 when a tensor is float64 (the caller casts, and says by
    how much that changed them); half and bfloat16 tensors widen to float32 exactly.
    """
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
        flat = np.concatenate([_flat(v) for _, v in kept])  # (D,)
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


def to_state_dict(w: np.ndarray, params: ParamMeta) -> dict[str, Any]:
    """Flat weights (D,) as a ``state_dict``: one tensor per layer, in the layout's order.

    The inverse of reading a checkpoint: ``params.layer``, ``shape`` and ``index`` say where
    each of the D values goes, so ``model.load_state_dict(to_state_dict(w, params))`` loads
    forecast weights into the network they were recorded from.

    Raises:
        ValueError: ``w`` is not (D,) for the layout's D, or a layer's indices do not cover its
            tensor exactly once.
    """
    import torch

    w = np.asarray(w, dtype=np.float32).reshape(-1)
    if w.shape[0] != len(params):
        raise ValueError(f"`w` must have the layout's D={len(params)} values, got {w.shape[0]}")
    out: dict[str, Any] = {}
    layers = np.asarray(params.layer)
    for name in dict.fromkeys(layers.tolist()):
        cols = np.flatnonzero(layers == name)  # positions of this tensor's values in w
        shape = tuple(params.shape[cols[0]])
        flat = np.empty(int(np.prod(shape)) if shape else 1, dtype=np.float32)
        index = np.asarray(params.index)[cols]
        if sorted(index.tolist()) != list(range(flat.shape[0])):
            raise ValueError(
                f"layout: tensor `{name}` must index each of its {flat.shape[0]} values once"
            )
        flat[index] = w[cols]
        out[str(name)] = torch.from_numpy(flat.reshape(shape))
    return out


def write_state_dict(path: Path, w: np.ndarray, params: ParamMeta) -> Path:
    """Save ``to_state_dict(w, params)`` with ``torch.save`` (atomically); returns ``path``."""
    import torch

    from gfm.data.atomic import atomic_path

    with atomic_path(Path(path)) as tmp:
        torch.save(to_state_dict(w, params), tmp)
    return Path(path)
