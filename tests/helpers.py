"""One factory for the records, prefixes and runs the tests build (instead of a copy per file).

make_record(W, ...)   a RunRecord around a trajectory W (M+1, D)
gd_run(seed, ...)     (stochastic) gradient descent on a random least-squares problem
make_prefix(...)      a Prefix: a drifting random walk over a small layer layout
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from gfm.data.schema import ParamMeta, RunRecord, RunSpec
from gfm.forecaster import Prefix

TINY_JUMPS = [  # the jump benchmark at its smallest: digits (no download), a jump every 4 steps
    "accelerate.tasks=[digits_mlp]",
    "accelerate.methods=[base, gfm, linear]",
    "accelerate.period=4",
    "accelerate.horizon_start=2",
    "accelerate.horizon_end=1",
    "accelerate.history=8",
    "accelerate.guard_rows=64",
]
D_IN = 5  # inputs of the least-squares problems; D = D_IN + 1 parameters (weight, bias)
LINEAR = [("linear.weight", (1, D_IN)), ("linear.bias", (1,))]
NAMED = [("net.0.weight", (2, 2)), ("net.0.bias", (2,)), ("scale", ())]  # D = 4 + 2 + 1 = 7


def make_spec(*, M: int, record_every: int = 1, **fields) -> RunSpec:
    """A RunSpec of M recorded intervals; ``fields`` replace any default (run_id, task, ...)."""
    seed = fields.get("seed", 0)
    spec = dict(
        run_id=f"run-{seed}",
        task="least_squares",
        hidden=(),
        optimizer="sgd",
        hparams={"lr": 0.1},
        schedule="constant",
        batch_size=None,
        seed=seed,
        init_seed=seed,
        steps=M * record_every,
        record_every=record_every,
    )
    spec.update(fields)
    return RunSpec(**spec)


def make_record(
    W: np.ndarray,
    *,
    lr: float | np.ndarray = 0.1,
    seed: int = 0,
    layout: Sequence[tuple[str, tuple[int, ...]]] | None = None,
    record_every: int = 1,
    spec: dict | None = None,
    **fields,
) -> RunRecord:
    """A RunRecord whose weights are the trajectory ``W`` (M+1, D).

    Args:
        W: the recorded weights, one row per checkpoint.
        lr: the learning rate (a constant, or one per checkpoint); ``hparams`` default
            ``{"lr": lr[0]}``.
        seed: the run's seed index (and init seed); the run id is ``run-<seed>`` by default.
        layout: ``[(name, shape)]`` of the D parameters (default: one linear layer).
        record_every: optimizer steps between two checkpoints.
        spec: RunSpec fields to replace (``run_id``, ``task``, ``optimizer``, ``hparams``, ...).
        fields: RunRecord fields to replace (``train_loss``, ``val_loss`` (default zeros),
            ``val_acc`` (default NaN: regression), ``diverged_at``, ``extra``); ``losses``
            sets both train and val loss.
    """
    M = W.shape[0] - 1
    lr_curve = np.broadcast_to(np.asarray(lr, dtype=np.float64), (M + 1,)).copy()
    spec_fields = {"seed": seed, "hparams": {"lr": float(lr_curve[0])}, **(spec or {})}
    losses = fields.pop("losses", np.zeros(M + 1))
    if layout is None:
        layout = [("linear.weight", (1, W.shape[1] - 1)), ("linear.bias", (1,))]
    record = dict(
        spec=make_spec(M=M, record_every=record_every, **spec_fields),
        steps=np.arange(M + 1, dtype=np.int64) * record_every,
        lr=lr_curve,
        train_loss=losses,
        val_loss=losses,
        val_acc=np.full(M + 1, np.nan),
        weights=np.asarray(W, dtype=np.float32),
        params=ParamMeta.from_named_shapes(list(layout)),
    )
    record.update(fields)
    return RunRecord(**record)


def random_record(
    run_id: str, seed: int, *, M: int = 4, layout: Sequence[tuple[str, tuple[int, ...]]], **kw
) -> RunRecord:
    """A record of random weights and curves (seeded), for storage tests: ``make_record`` kw."""
    rng = np.random.default_rng(seed)
    D = len(ParamMeta.from_named_shapes(list(layout)))
    W = rng.standard_normal((M + 1, D))
    spec = {"run_id": run_id, **kw.pop("spec", {})}
    fields = {"train_loss": rng.random(M + 1), "val_loss": rng.random(M + 1), **kw}
    return make_record(W, seed=seed, layout=layout, spec=spec, **fields)


def gd_run(seed: int, *, M: int = 20, noise: float = 0.0, **fields) -> RunRecord:
    """(Stochastic-)gradient descent on a random least-squares problem, recorded every step.

        w_{i+1} = w_i − α·(Xᵀ(Xw_i − y)/n + noise·ξ_i),   α = U(0.5, 1) / λ_max(XᵀX/n)

    Without noise an affine recurrence w_{i+1} = A·w_i + b with A = I − α·H. ``fields`` go to
    ``make_record`` (optimizer, task, ...).
    """
    rng = np.random.default_rng(seed)
    n = 64
    X = np.hstack([rng.normal(size=(n, D_IN)), np.ones((n, 1))])
    y = X @ rng.normal(size=D_IN + 1) + 0.1 * rng.normal(size=n)
    lr = float(rng.uniform(0.5, 1.0) / np.linalg.eigvalsh(X.T @ X / n).max())
    w = rng.normal(size=D_IN + 1)
    ws = [w]
    for _ in range(M):
        w = w - lr * (X.T @ (X @ w - y) / n + noise * rng.normal(size=D_IN + 1))
        ws.append(w)
    W = np.asarray(ws)
    fields.setdefault("losses", 0.5 * np.mean((W @ X.T - y) ** 2, axis=1))
    return make_record(W, lr=lr, seed=seed, **fields)


def make_prefix(
    *,
    k: int = 2,
    M: int = 6,
    optimizer: str = "adam",
    layout: Sequence[tuple[str, tuple[int, ...]]] = NAMED,
    seed: int = 0,
    **overrides,
) -> Prefix:
    """A Prefix of k+1 checkpoints of a run of M intervals: a drifting random walk.

    ``overrides`` replace any field (``w``, ``lr``, ``hparams``, ``record_every``, ...).
    """
    params = ParamMeta.from_named_shapes(list(layout))
    g = torch.Generator().manual_seed(seed)
    D = len(params)
    drift = torch.randn(D, generator=g) * 0.05
    steps = drift + 0.02 * torch.randn(k, D, generator=g)
    w = torch.cat([torch.randn(1, D, generator=g), steps]).cumsum(0)  # (k+1, D)
    hparams = {
        "sgd": {},
        "momentum": {"momentum": 0.9, "nesterov": False},
        "rmsprop": {"alpha": 0.95},
        "adam": {"beta1": 0.9, "beta2": 0.99},
        "adamw": {"beta1": 0.9, "beta2": 0.99, "weight_decay": 0.01},
    }[optimizer]
    lr = 0.01 * 0.5 * (1 + torch.cos(torch.pi * torch.arange(M + 1, dtype=torch.float64) / M))
    fields = dict(
        w=w.float(),
        M=M,
        lr=lr + 1e-4,
        optimizer=optimizer,
        hparams={"lr": 0.01, **hparams},
        record_every=4,
        params=params,
    )
    fields.update(overrides)
    return Prefix(**fields)


def write_request(prefix: Prefix, folder: Path, stem: str = "prefix") -> Path:
    """A forecast request for `gfm forecast`: ``<stem>.npy`` (k+1, D) and its ``<stem>.json``."""
    p = prefix.params
    layout = [[str(p.layer[i]), list(p.shape[i])] for i in np.flatnonzero(p.index == 0)]
    meta = {
        "optimizer": prefix.optimizer,
        "lr": prefix.lr.tolist(),
        "record_every": prefix.record_every,
        "total_checkpoints": prefix.M + 1,
        "hparams": {k: v for k, v in prefix.hparams.items() if k != "lr"},
        "layout": layout,
    }
    np.save(folder / f"{stem}.npy", prefix.w.numpy())
    (folder / f"{stem}.json").write_text(json.dumps(meta))
    return folder / f"{stem}.npy"
