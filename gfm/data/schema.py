"""In-memory records of trajectory datasets: what a run is, what it produced, what each weight is.

These dataclasses are the contract between generation (``generate.py``), storage (``io.py``),
import (``importer.py``) and reading (``trajectories.py``). The on-disk form is documented in
``docs/data-format.md``.

Shapes: M+1 recorded checkpoints, D parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from gfm.data.names import HPARAM_KEYS

FORMAT_VERSION = 1
SPLIT_KINDS = ("seed", "architecture", "optimizer")
SPLIT_PARTS = ("train", "val", "test")
PARAM_KINDS = ("weight", "bias")
CURVES = ("train_loss", "val_loss", "val_acc")  # recorded with every checkpoint
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")  # a run id is a file name


def check_run_id(run_id: object, where: str) -> str:
    """``run_id`` if it is a safe file name (1-200 letters, digits, ``.``, ``_``, ``-``).

    Raises:
        ValueError: it is not; the message names ``where``.
    """
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise ValueError(
            f"{where}: `run_id` must be 1-200 characters of letters, digits, '.', '_' or '-' "
            f"starting with a letter or digit (a file name), got {run_id!r}"
        )
    return run_id


def arch_name(hidden: tuple[int, ...] | list[int]) -> str:
    """Name an architecture by its hidden sizes: ``(32, 32) -> "32-32"``, ``() -> "linear"``."""
    return "-".join(str(h) for h in hidden) if hidden else "linear"


@dataclass(frozen=True)
class RunSpec:
    """Everything needed to reproduce one recorded training run.

    ``seed`` is the seed index within its (task, optimizer, arch) group (it decides the split);
    ``init_seed`` is the derived integer that seeds initialisation, data order and noise.
    ``hparams`` holds the optimizer's drawn hyperparameters (keys among lr, momentum, nesterov,
    alpha, beta1, beta2, weight_decay); ``lr`` there is the base learning rate before the schedule.
    """

    run_id: str
    task: str
    hidden: tuple[int, ...]
    optimizer: str
    hparams: dict[str, float | bool]
    schedule: str
    batch_size: int | None
    seed: int
    init_seed: int
    steps: int
    record_every: int

    @property
    def arch(self) -> str:
        """The architecture's name, e.g. ``"32-32"``."""
        return arch_name(self.hidden)

    @property
    def n_checkpoints(self) -> int:
        """M+1: step 0 and every ``record_every`` steps up to ``steps``."""
        return self.steps // self.record_every + 1


@dataclass(frozen=True)
class ParamMeta:
    """Per-parameter metadata of one architecture, aligned with the flat weight vector (D,).

    ``layer`` (D,) str: name of the tensor in the module's state_dict, e.g. ``"net.0.weight"``;
    ``shape``: that tensor's shape per parameter (D lists); ``index`` (D,) int: flat index inside
    the tensor; ``kind`` (D,) str: ``"weight"`` or ``"bias"``; ``fan_in`` (D,) int.
    """

    layer: np.ndarray
    shape: list[tuple[int, ...]]
    index: np.ndarray
    kind: np.ndarray
    fan_in: np.ndarray

    def __len__(self) -> int:
        return len(self.layer)

    @staticmethod
    def from_named_shapes(named: list[tuple[str, tuple[int, ...]]]) -> ParamMeta:
        """Build metadata from ``[(name, shape), ...]`` in ``state_dict`` order.

        kind is ``bias`` for 1-D tensors whose name ends in ``bias``, else ``weight``; fan_in is
        the product of all dimensions but the first (1 for biases and scalars).
        """
        layer, shape, index, kind, fan_in = [], [], [], [], []
        for name, shp in named:
            n = int(np.prod(shp)) if len(shp) else 1
            is_bias = name.endswith("bias") and len(shp) <= 1
            fi = 1 if is_bias or len(shp) <= 1 else int(np.prod(shp[1:]))
            layer += [name] * n
            shape += [tuple(int(s) for s in shp)] * n
            index += list(range(n))
            kind += ["bias" if is_bias else "weight"] * n
            fan_in += [fi] * n
        return ParamMeta.from_lists(layer, shape, index, kind, fan_in)

    @staticmethod
    def from_lists(
        layer: list[str],
        shape: list[tuple[int, ...]],
        index: list[int],
        kind: list[str],
        fan_in: list[int],
    ) -> ParamMeta:
        """Metadata from one list per field (D entries each), as arrays of the field's dtype."""
        return ParamMeta(
            layer=np.asarray(layer, dtype=object),
            shape=shape,
            index=np.asarray(index, dtype=np.int64),
            kind=np.asarray(kind, dtype=object),
            fan_in=np.asarray(fan_in, dtype=np.int64),
        )


@dataclass
class RunRecord:
    """What one run produced: the checkpoints and the curves recorded with them.

    Arrays share the leading axis M+1 (one entry per recorded step, step 0 first).
    ``weights`` (M+1, D) float32 is the flat parameter vector in ``state_dict`` order.
    ``diverged_at`` is the first step whose loss or weights were not finite (then the arrays hold
    only what came before and the run is kept out of the dataset).
    """

    spec: RunSpec
    steps: np.ndarray  # (M+1,) int64
    lr: np.ndarray  # (M+1,) float64, learning rate in effect at that step
    train_loss: np.ndarray  # (M+1,) float64
    val_loss: np.ndarray  # (M+1,) float64
    val_acc: np.ndarray  # (M+1,) float64, NaN for regression tasks
    weights: np.ndarray  # (M+1, D) float32
    params: ParamMeta
    diverged_at: int | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def diverged(self) -> bool:
        """Whether the run hit a non-finite loss or weight (and is kept out of the dataset)."""
        return self.diverged_at is not None

    def check_shapes(self, where: str = "", *, min_intervals: int = 2) -> None:
        """Check the trajectory's shapes: what a forecaster needs to learn from the run.

            weights (M+1, D) with M >= min_intervals,   lr (M+1,),   params describing D

        Cheap (no pass over the weights): training calls it on every run it draws.

        Raises:
            ValueError: a shape is off; the message names ``where``, the run and the field.
        """
        at = f"{where}: run {self.spec.run_id}" if where else f"run {self.spec.run_id}"
        w = self.weights
        if w.ndim != 2 or w.shape[0] < min_intervals + 1:
            raise ValueError(
                f"{at}: `weights` must be (M+1, D) with M >= {min_intervals}, got shape {w.shape}"
            )
        if np.shape(self.lr) != (w.shape[0],):
            raise ValueError(f"{at}: `lr` must have shape ({w.shape[0]},), got {np.shape(self.lr)}")
        if len(self.params) != w.shape[1]:
            raise ValueError(
                f"{at}: `params` must describe D={w.shape[1]} parameters, got {len(self.params)}"
            )

    def check(self) -> None:
        """Check everything a checkpoint file needs (``docs/data-format.md``).

        The run id is a file name, ``hparams`` keys are known, ``weights`` is a float array
        (M+1, D) with M+1 = ``spec.n_checkpoints``, every curve has M+1 entries, ``steps`` are
        integers rising from 0, and the values are finite (curves may be all NaN when not
        recorded).

        Raises:
            ValueError: the record is inconsistent; the message names the run and the field.
        """
        spec = self.spec
        check_run_id(spec.run_id, "RunRecord.spec")
        where = f"run {spec.run_id}"
        unknown = sorted(set(spec.hparams) - set(HPARAM_KEYS))
        if unknown:
            raise ValueError(
                f"{where}: `hparams` keys must be among {list(HPARAM_KEYS)}, got {unknown}"
            )
        self.check_shapes(min_intervals=1)
        w = np.asarray(self.weights)
        if not np.issubdtype(w.dtype, np.floating) or w.shape[1] < 1:
            raise ValueError(
                f"{where}: `weights` must be floats with >= 1 param, got dtype {w.dtype}, "
                f"shape {w.shape}"
            )
        if w.shape[0] != spec.n_checkpoints:
            raise ValueError(
                f"{where}: `weights` must have spec.steps // spec.record_every + 1 = "
                f"{spec.n_checkpoints} rows, got {w.shape[0]}"
            )
        self._check_steps(where)
        self._check_values(where)

    def _check_steps(self, where: str) -> None:
        n = self.weights.shape[0]
        for name in ("steps", *CURVES):
            shape = np.shape(getattr(self, name))
            if shape != (n,):
                raise ValueError(
                    f"{where}: `{name}` must have shape ({n},) like `weights`, got {shape}"
                )
        steps = np.asarray(self.steps)
        if not np.issubdtype(steps.dtype, np.integer):
            raise ValueError(f"{where}: `steps` must be integers, got dtype {steps.dtype}")
        if steps[0] != 0 or np.any(np.diff(steps) <= 0):
            raise ValueError(
                f"{where}: `steps` must start at 0 and increase strictly, got {steps.tolist()[:8]}..."
            )

    def _check_values(self, where: str) -> None:
        steps = np.asarray(self.steps)
        bad = ~np.isfinite(np.asarray(self.weights).astype(np.float32, copy=False)).all(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"{where}: `weights` must be finite (as float32), got a non-finite value at step "
                f"{int(steps[i])} (set `diverged_at` to keep a diverged run out of the dataset)"
            )
        for name in ("lr", *CURVES):
            x = np.asarray(getattr(self, name), dtype=np.float64)
            finite = np.isfinite(x)
            if finite.all() or (name != "lr" and np.isnan(x).all()):
                continue
            i = int(np.argmin(finite))
            rule = "finite" if name == "lr" else "all finite (or all NaN when not recorded)"
            raise ValueError(
                f"{where}: `{name}` must be {rule}, got {x[i]} at step {int(steps[i])}"
            )
