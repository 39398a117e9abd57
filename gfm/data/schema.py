"""In-memory records of trajectory datasets: what a run is, what it produced, what each weight is.

These dataclasses are the contract between generation (``generate.py``), storage (``io.py``),
import (``importer.py``) and reading (``trajectories.py``). The on-disk form is documented in
``docs/data-format.md``.

Shapes: M+1 recorded checkpoints, D parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FORMAT_VERSION = 1
SPLIT_KINDS = ("seed", "architecture", "optimizer")
SPLIT_PARTS = ("train", "val", "test")
PARAM_KINDS = ("weight", "bias")


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
