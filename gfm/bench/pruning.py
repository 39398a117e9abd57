"""The pruning benchmark's parts: the search space, one trial's network and loop, and the measures.

Optuna studies tune a task network (``digits_mlp``, ``mnist_cnn``) over optimizer, learning
rate, width and weight decay; every trial trains for the dataset's budget of the task (200
steps, a checkpoint every 4: the M = 50 of the forecasters' training runs) with a cosine
schedule, and its value is the final validation loss. The held-out split of the task is halved:
the first half validates (the objective, the pruners' reports, the forecast scores), the second
tests (the accuracy a study is judged by). This module is core (no Optuna): the studies
themselves, the pruners and the replay are ``benchmarks/pruning.py``.

    steps_to_near  optimizer steps spent until the first finished trial whose test accuracy is
                   within ``near`` (0.5 points) of the best of the study without pruning
    spearman_f     Spearman ρ between the forecast and the true final validation loss over the
                   trials of the study without pruning, forecast from observed fraction f

A trial lies outside the forecasters' training distribution when its learning rate is outside
its optimizer's range in the dataset (times the task's ``lr_scale``), its width is not an
architecture of the dataset, or it has weight decay the dataset's runs of that optimizer do not
have (AdamW: outside its range; the others: any above 1e-4).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl
import torch
from scipy.stats import spearmanr
from torch import nn

from gfm.config import DataSettings
from gfm.data.optim import build_optimizer, scheduled_lr
from gfm.data.schema import arch_name
from gfm.data.tasks import Task, make_task
from gfm.forecaster import Forecaster, observed_index
from gfm.stopping import Recorder, final_weights, prefix_from, score_at

__all__ = [
    "DIVERGED",
    "LR",
    "NEAR",
    "SCHEDULE",
    "TASKS",
    "WD",
    "WIDTHS",
    "Config",
    "TrialNet",
    "anytime",
    "forecast_rows",
    "in_distribution",
    "make_optimizer",
    "spearman",
    "summarize",
]

TASKS = ("digits_mlp", "mnist_cnn")
WIDTHS: dict[str, tuple[int, ...]] = {"digits_mlp": (16, 32, 64, 128), "mnist_cnn": (4, 8, 16, 32)}
LR = (1e-4, 0.3)  # log-uniform, every optimizer
WD = (1e-6, 0.1)  # log-uniform
SCHEDULE = "cosine"
DIVERGED = 10.0  # the final validation loss of a run whose loss became non-finite (chance: 2.3)
NEAR = 0.005  # "within 0.5 points" of held-out accuracy
_NO_DECAY = 1e-4  # weight decay below this counts as none


@dataclass(frozen=True)
class Config:
    """One trial's hyperparameters (the Optuna parameters, by these names)."""

    task: str
    optimizer: str
    lr: float
    width: int
    weight_decay: float

    @property
    def hidden(self) -> tuple[int, ...]:
        """digits_mlp: one hidden layer of ``width``; mnist_cnn: channels (w, 2w, 2w)."""
        if self.task == "mnist_cnn":
            return (self.width, 2 * self.width, 2 * self.width)
        return (self.width,)

    def params(self) -> dict[str, float | int | str]:
        """The searched values by name."""
        return {k: v for k, v in asdict(self).items() if k != "task"}


def in_distribution(cfg: Config, data: DataSettings) -> tuple[bool, str]:
    """Whether the forecasters' training runs cover ``cfg``, and if not, why (module docstring)."""
    why: list[str] = []
    space = data.optimizers[cfg.optimizer]
    scale = data.tasks[cfg.task].lr_scale
    lo, hi = space.lr.low * scale, space.lr.high * scale
    if not lo <= cfg.lr <= hi:
        why.append(f"lr {cfg.lr:.3g} outside {cfg.optimizer}'s [{lo:.3g}, {hi:.3g}]")
    archs = [arch_name(a) for a in data.tasks[cfg.task].archs]
    if arch_name(cfg.hidden) not in archs:
        why.append(f"architecture {arch_name(cfg.hidden)} not in {archs}")
    wd = space.weight_decay
    if wd is not None and not wd.low <= cfg.weight_decay <= wd.high:
        why.append(f"weight decay {cfg.weight_decay:.2g} outside [{wd.low:.2g}, {wd.high:.2g}]")
    elif wd is None and cfg.weight_decay > _NO_DECAY:
        why.append(f"weight decay {cfg.weight_decay:.2g} on {cfg.optimizer} (its runs have none)")
    return not why, "; ".join(why)


def make_optimizer(cfg: Config, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
    """The trial's optimizer (the dataset's defaults for momentum, alpha and betas).

    Raises:
        ValueError: an unknown optimizer, listing the known ones (``build_optimizer``).
    """
    hparams = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    return build_optimizer(cfg.optimizer, list(params), hparams)


class TrialNet:
    """One trial's network, optimizer, schedule and data, trained one minibatch at a time.

    Initialisation ``init_seed`` and minibatch order ``seed``; batches of ``batch`` rows, a fresh
    permutation per epoch (drop last), the cosine schedule set before each step (as the dataset's
    runs are trained, ``gfm.data.generate``).
    """

    def __init__(  # noqa: PLR0913 - one trial's parts, keyword-only
        self, cfg: Config, data: DataSettings, *, seed: int, init_seed: int, steps: int, batch: int
    ) -> None:
        task: Task = make_task(cfg.task, data.tasks[cfg.task], 0)
        X, y = task.test
        half = len(X) // 2
        self.cfg, self.task, self.steps, self.batch = cfg, task, steps, batch
        self.val, self.test = (X[:half], y[:half]), (X[half:], y[half:])
        self.model = task.build(cfg.hidden, init_seed)
        self.opt = make_optimizer(cfg, self.model.parameters())
        self.lr = [scheduled_lr(SCHEDULE, cfg.lr, s, steps) for s in range(steps + 1)]
        self._gen = torch.Generator().manual_seed(seed)
        self._perm, self._pos = torch.randperm(len(task.train[0]), generator=self._gen), 0
        self.diverged = False

    def step(self, s: int) -> None:
        """Optimizer step ``s`` (0-based) on the next minibatch; marks a non-finite loss."""
        if self.diverged:
            return
        for group in self.opt.param_groups:
            group["lr"] = self.lr[s]
        X, y = self.task.train
        if self._pos + self.batch > len(X):
            self._perm, self._pos = torch.randperm(len(X), generator=self._gen), 0
        idx = self._perm[self._pos : self._pos + self.batch]
        self._pos += self.batch
        loss = self.task.loss(self.model(X[idx]), y[idx])
        if not math.isfinite(loss.item()):
            self.diverged = True
            return
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    @torch.no_grad()
    def evaluate(self, split: str, model: nn.Module | None = None) -> tuple[float, float]:
        """(loss, accuracy) on ``val`` or ``test``; a diverged run scores (DIVERGED, 0.1)."""
        model = self.model if model is None else model
        X, y = self.val if split == "val" else self.test
        out = model(X)
        loss = float(self.task.loss(out, y))
        if self.diverged or not math.isfinite(loss):
            return DIVERGED, 0.1
        return loss, float((out.argmax(dim=1) == y).double().mean())

    def val_loss(self, model: nn.Module) -> float:
        """The score the forecast pruners use: validation loss of ``model``."""
        return self.evaluate("val", model)[0]

    def recorder(self, record_every: int) -> Recorder:
        """A recorder of this run (for the study without pruning)."""
        return Recorder(
            self.model,
            self.opt,
            total_steps=self.steps,
            record_every=record_every,
            schedule=self.lr[::record_every],
            task=self.cfg.task,
        )


def forecast_rows(
    net: TrialNet,
    w: torch.Tensor,
    meta: dict,
    forecasters: dict[str, Forecaster],
    fractions: Sequence[float],
) -> list[dict]:
    """Forecast final validation loss of one recorded run, per forecaster and observed fraction.

    Args:
        net: the run's network (scored at the forecast weights; its weights are kept).
        w: its recorded checkpoints (M+1, D).
        meta: the recorder's metadata.
        forecasters: by name.
        fractions: observed fractions f; the prefix is w_0..w_k, k = ``observed_index(M, f)``.

    Returns:
        One row per forecaster × fraction: forecaster, fraction, k, forecast_val_loss, seconds
        (NaN loss when the forecast fails or is not finite).
    """
    rows = []
    rec = net.recorder(int(meta["record_every"]))
    for f in fractions:
        k = observed_index(int(meta["M"]), f)
        prefix = prefix_from(w[: k + 1], meta)
        for name, forecaster in forecasters.items():
            t0 = time.perf_counter()
            try:
                value = score_at(rec, final_weights(forecaster, prefix), net.val_loss)
            except ValueError:
                value = math.nan
            rows.append(
                {
                    "forecaster": name,
                    "fraction": float(f),
                    "k": k,
                    "forecast_val_loss": value,
                    "seconds": time.perf_counter() - t0,
                }
            )
    return rows


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of the pairs where both are finite; NaN with fewer than 3."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return math.nan
    return float(spearmanr(a[ok], b[ok]).statistic)


def _steps_to_near(trials: pl.DataFrame, target: float) -> float:
    """Optimizer steps spent up to the first finished trial with test accuracy >= target."""
    t = trials.sort("number").with_columns(spent=pl.col("steps").cum_sum())
    hit = t.filter((pl.col("state") == "COMPLETE") & (pl.col("test_acc") >= target))
    return float(hit["spent"][0]) if len(hit) else math.nan


def _study_row(t: pl.DataFrame, none_best: float) -> dict:
    done = t.filter(pl.col("state") == "COMPLETE")
    best = done.sort("val_loss").head(1)
    return {
        "trials": len(t),
        "complete": len(done),
        "pruned": int((t["state"] == "PRUNED").sum()),
        "optimizer_steps": int(t["steps"].sum()),
        "wall_s": float(t["wall_s"].sum()),
        "best_acc": float(done["test_acc"].max()) if len(done) else math.nan,
        "best_val_loss_acc": float(best["test_acc"][0]) if len(best) else math.nan,
        "steps_to_near": _steps_to_near(t, none_best - NEAR),
        "outside_distribution": int((~t["in_distribution"]).sum()),
    }


def summarize(
    trials: pl.DataFrame, forecasts: pl.DataFrame, replay: pl.DataFrame, pruner_forecaster: dict
) -> pl.DataFrame:
    """pruning.csv: one row per task × pruner × seed (module docstring for the measures).

    Args:
        trials: one row per trial of every study: task, pruner, seed, number, state, steps,
            wall_s, val_loss, test_acc, in_distribution.
        forecasts: the study without pruning's forecasts: task, seed, number, forecaster,
            fraction, forecast_val_loss (and its trials' val_loss in ``trials``).
        replay: each pruner replayed on the study without pruning: task, pruner, seed, number,
            pruned (bool).
        pruner_forecaster: the forecaster each pruner's Spearman columns describe (``none``,
            ``median``, ``hyperband``: ``persistence``, the current value they judge by).
    """
    rows = []
    fractions = sorted(forecasts["fraction"].unique().to_list()) if len(forecasts) else []
    for (task, seed), none in trials.filter(pl.col("pruner") == "none").group_by(
        ["task", "seed"], maintain_order=True
    ):
        done = none.filter(pl.col("state") == "COMPLETE")
        top = done.sort(["test_acc", "number"], descending=[True, False]).head(1)
        none_best = float(top["test_acc"][0]) if len(top) else math.nan
        best_number = int(top["number"][0]) if len(top) else None
        truth = done.select("number", "val_loss")
        here = forecasts.filter((pl.col("task") == task) & (pl.col("seed") == seed))
        for pruner in trials.filter((pl.col("task") == task) & (pl.col("seed") == seed))[
            "pruner"
        ].unique(maintain_order=True):
            t = trials.filter(
                (pl.col("task") == task) & (pl.col("seed") == seed) & (pl.col("pruner") == pruner)
            )
            row = {"task": task, "pruner": pruner, "seed": seed, **_study_row(t, none_best)}
            r = replay.filter(
                (pl.col("task") == task) & (pl.col("seed") == seed) & (pl.col("pruner") == pruner)
            )
            mine = r.filter(pl.col("number") == best_number)
            row["best_pruned"] = bool(mine["pruned"][0]) if len(mine) else False
            row["replay_pruned"] = int(r["pruned"].sum()) if len(r) else 0
            name = pruner_forecaster.get(pruner, "persistence")
            for f in fractions:
                fc = here.filter((pl.col("forecaster") == name) & (pl.col("fraction") == f))
                pair = fc.join(truth, on="number", how="inner")
                row[f"spearman_{f:g}"] = spearman(pair["forecast_val_loss"], pair["val_loss"])
            rows.append(row)
    return pl.DataFrame(rows)


def anytime(trials: pl.DataFrame) -> pl.DataFrame:
    """Best test accuracy among finished trials against optimizer steps spent, per study."""
    out = []
    for (task, pruner, seed), t in trials.group_by(["task", "pruner", "seed"], maintain_order=True):
        t = t.sort("number")
        spent, best = 0, math.nan
        for steps, state, acc in zip(t["steps"], t["state"], t["test_acc"], strict=True):
            spent += steps
            if state == "COMPLETE" and not (best >= acc):
                best = acc
            out.append({"task": task, "pruner": pruner, "seed": seed, "steps": spent, "best": best})
    return pl.DataFrame(out)
