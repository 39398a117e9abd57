"""The jump benchmark: optimizer steps to a target accuracy with and without forecast jumps.

For each task, architecture (the first one the forecasters train on and the task's holdout
architecture, ``data.splits.holdout_archs``, which they never see) and seed, one network is
trained several ways from the same initialisation and minibatch order:

    base     the base optimizer alone, for the step budget S
    gfm      the same optimizer wrapped in ``gfm.jumps.JumpAhead`` with GFM jumps
    linear   ... with linear-extrapolation jumps
    wnn      ... with WNN-style jumps (fitted on the dataset)

    target          = held-out accuracy of ``base`` after its S steps (fixed before any jump)
    steps_to_target = first evaluated step with held-out accuracy >= target (a jump is a step)
    speedup         = base_steps_to_target / steps_to_target

Everything here is core: it returns polars tables and writes files. The one step around it,
``gfm.ops.jump_step`` (loading a model, tuned params, the MLflow run), is what ``gfm bench
jumps``, the ``jump-benchmark`` flow (``flows/jumps.py``) and ``python -m benchmarks.accelerate``
call.

References:
    [1] Jang et al., "Learning to Boost Training by Periodic Nowcasting Near Future Weights",
        ICML 2023 (WNN).
    [2] Knyazev et al., "Accelerating Training with Neuron Interaction and Nowcasting Networks",
        ICLR 2025 (NiNo).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gfm.config import GFMSettings, Settings, load_section
from gfm.data.atomic import atomic_path
from gfm.data.names import OPTIMIZERS, TASKS, check_known
from gfm.data.optim import build_optimizer
from gfm.data.tasks import Task, make_task
from gfm.data.trajectories import Trajectories
from gfm.forecaster import Forecaster
from gfm.jumps import Horizon, JumpAhead, JumpOptions, Relative, jump_baseline
from gfm.model import GFM
from gfm.plots import plot_accuracy_curves

__all__ = [
    "COLUMNS",
    "AccelerateSettings",
    "load_accelerate",
    "INIT_SEED",
    "METHODS",
    "Results",
    "Job",
    "base_lr",
    "batches",
    "forecasters",
    "jobs",
    "run",
    "summarize",
    "train_one",
    "write",
]

log = logging.getLogger("gfm.bench.jumps")

METHODS = ("base", "gfm", "linear", "wnn")
INIT_SEED = 100_000  # networks are initialised from INIT_SEED + seed (never a dataset run's)
COLUMNS = (  # the required columns of accelerate.csv, first
    "method",
    "task",
    "arch",
    "seed",
    "steps_to_target",
    "base_steps_to_target",
    "final_acc",
)
Curve = list[tuple[int, float, float]]  # (step, held-out accuracy, training seconds so far)


class AccelerateSettings(BaseModel):
    """The jump benchmark (``gfm bench jumps``): base optimizer alone vs with jumps.

    Each jump replaces one optimizer step with a forecast ``horizon`` recorded intervals ahead
    (``gfm.jumps.JumpAhead``); the target is the base optimizer's held-out accuracy at
    its step budget. Explore on seeds >= 100 (``first_seed``), report seeds 0..9. The defaults
    were chosen on seeds 100..107 (BENCHMARKS.md, "Jump-ahead training").

    The benchmark's own settings, not the product's: ``benchmarks/accelerate.yaml`` (read with
    ``load_accelerate``), overridden with ``--set accelerate.<key>=<value>``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tasks: list[str] = Field(default_factory=lambda: ["digits_mlp", "mnist_cnn"], min_length=1)
    methods: list[Literal["base", "gfm", "linear", "wnn"]] = Field(
        default_factory=lambda: ["base", "gfm", "linear", "wnn"], min_length=1
    )
    seeds: int = Field(10, ge=1, description="networks per task and architecture")
    first_seed: int = Field(0, ge=0, description="seeds first_seed..first_seed+seeds-1")
    optimizer: str = "adam"
    lr: float | None = Field(None, gt=0, description="null: the dataset range's geometric midpoint")
    steps: int | None = Field(None, gt=0, description="step budget; null: data.tasks.<task>.steps")
    eval_every: int = Field(2, ge=1, description="steps between held-out evaluations")
    frame: Literal["window", "run"] = Field(
        "run",
        description="what a jump's prefix holds: the last `history` checkpoints or the run",
    )
    period: int = Field(12, ge=1, description="base steps between two jumps")
    horizon_start: int = Field(
        20, ge=1, description="jump at step 0 in recorded intervals (the longest with a ratio)"
    )
    horizon_end: int = Field(
        2, ge=1, description="jump at the step budget (the shortest with a ratio)"
    )
    horizon_ratio: float | None = Field(
        1.0,
        gt=0,
        description="NiNo-style: jump c x the steps so far, within [horizon_end, horizon_start]",
    )
    history: int = Field(64, ge=2, description="checkpoints kept for a jump's prefix")
    calibrate: bool = Field(
        False, description="scale each jump by the forecaster's backtested displacement ratio"
    )
    max_scale: float = Field(4.0, gt=0, description="largest calibration scale")
    line_search: list[float] = Field(
        default_factory=list,
        description="factors a of the forecast displacement tried on the guard batch, the best "
        "kept ([]: none); each is a forward pass, counted in guard_evals",
    )
    row_mean: float | None = Field(
        0.0,
        ge=0,
        le=1,
        description="β of gfm.rows.shrink_row_means on every method's jumps (0: each row's mean "
        "weight held); null: forecasts as they come (GFM applies its own gfm.row_mean)",
    )
    reset_state: bool = Field(
        True, description="clear the base optimizer's state after each accepted jump"
    )
    guard: float = Field(1.5, gt=0, description="keep a jump iff loss after <= guard x before")
    shrink: float = Field(0.5, gt=0, lt=1, description="horizon factor after each rollback")
    warmup: int = Field(0, ge=0, description="no jump before this step")
    guard_rows: int = Field(512, ge=1, description="train rows of the guard's fixed batch")
    model: str | None = Field(
        None, description="GFM folder or models:/gfm@champion; null: fit on the architecture split"
    )
    gfm: dict[str, Any] = Field(
        default_factory=lambda: {"prior": False},
        description="gfm.* settings of the GFM the benchmark fits, over params.yaml and tuned "
        "params ({prior: false}: no prior fit per jump)",
    )
    fit_steps: int | None = Field(None, gt=0, description="GFM fit steps; null: train.steps")
    wnn_steps: int | None = Field(None, gt=0, description="WNN fit steps; null: its default")
    output_dir: Path = Path("benchmarks/results")

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        check_known(tasks, TASKS, "task")
        return tasks

    @field_validator("gfm")
    @classmethod
    def _gfm_settings(cls, gfm: dict[str, Any]) -> dict[str, Any]:
        GFMSettings.model_validate({**GFMSettings().model_dump(), **gfm})  # names the bad key
        return gfm

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, optimizer: str) -> str:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"expected one of {list(OPTIMIZERS)}, got {optimizer!r}")
        return optimizer


def load_accelerate(
    path: str | Path | None, overrides: Sequence[str] = (), *, base: Path | None = None
) -> AccelerateSettings:
    """The benchmark's settings from its file (None or missing: the defaults) and overrides.

    Args:
        path: ``benchmarks/accelerate.yaml`` or another file of its keys.
        overrides: ``["accelerate.period=40", ...]``; others are left out.
        base: the folder ``output_dir`` is relative to (the project's, default the cwd).

    Raises:
        gfm.config.SettingsError: a key or value is invalid; the message names it.
    """
    return load_section(AccelerateSettings, path, overrides, section="accelerate", base=base)


@dataclass(frozen=True)
class Job:
    """One network to train every way: a task, an architecture, a seed.

    Attributes:
        task: a key of ``data.tasks``.
        hidden: the architecture's hidden sizes.
        holdout: whether the forecasters never saw this architecture.
        seed: initialisation ``INIT_SEED + seed`` and minibatch order ``seed``.
    """

    task: str
    hidden: tuple[int, ...]
    holdout: bool
    seed: int

    @property
    def arch(self) -> str:
        """Hidden sizes joined by ``-`` (the dataset's architecture name)."""
        return "-".join(map(str, self.hidden))


@dataclass(frozen=True)
class Results:
    """What ``run`` measured.

    Attributes:
        table: one row per method × task × arch × seed (``COLUMNS`` first).
        curves: held-out accuracy per evaluated step: method, task, arch, seed, step, acc,
            train_s.
        jumps: one row per jump: method, task, arch, seed, step, horizon, accepted, spike.
    """

    table: pl.DataFrame
    curves: pl.DataFrame
    jumps: pl.DataFrame


def jobs(settings: Settings, cfg: AccelerateSettings) -> list[Job]:
    """The task × architecture × seed grid of ``cfg`` on the dataset's tasks of ``settings``.

    Per task: its first architecture that is not held out, then its holdout architecture
    (``data.splits.holdout_archs``) when it has one. Seeds ``first_seed .. first_seed+seeds-1``.

    Raises:
        ValueError: a task is not in ``data.tasks``, or not a classification task.
    """
    out: list[Job] = []
    for task in cfg.tasks:
        if task not in settings.data.tasks:
            raise ValueError(
                f"accelerate.tasks: {task!r} must be one of data.tasks "
                f"{sorted(settings.data.tasks)}"
            )
        holdout = settings.data.splits.holdout_archs.get(task)
        archs = [tuple(a) for a in settings.data.tasks[task].archs]
        seen = [a for a in archs if "-".join(map(str, a)) != holdout]
        grid = [(seen[0], False)] if seen else []
        if holdout is not None:
            grid.append((tuple(int(h) for h in holdout.split("-")), True))
        seeds = range(cfg.first_seed, cfg.first_seed + cfg.seeds)
        out += [Job(task, hidden, held, seed) for hidden, held in grid for seed in seeds]
    return out


def base_lr(settings: Settings, cfg: AccelerateSettings, task: str) -> float:
    """``accelerate.lr``, or the geometric midpoint of the dataset's range times ``lr_scale``."""
    if cfg.lr is not None:
        return cfg.lr
    r = settings.data.optimizers[cfg.optimizer].lr
    return math.sqrt(r.low * r.high) * settings.data.tasks[task].lr_scale


def batches(n: int, batch: int, steps: int, seed: int) -> list[torch.Tensor]:
    """Minibatch indices for ``steps`` base steps: a fresh permutation per epoch, drop_last.

    Raises:
        ValueError: ``batch`` exceeds ``n``.
    """
    if batch > n:
        raise ValueError(f"`batch` must be at most the {n} training rows, got {batch}")
    gen = torch.Generator().manual_seed(seed)
    out: list[torch.Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(n, generator=gen)
        out += [perm[i : i + batch] for i in range(0, n - batch + 1, batch)]
    return out[:steps]


def forecasters(
    settings: Settings,
    cfg: AccelerateSettings,
    methods: Sequence[str] | None = None,
    *,
    gfm: Forecaster | None = None,
) -> dict[str, Forecaster]:
    """The jump forecasters of ``methods`` (default ``accelerate.methods``), fitted or loaded.

        gfm     ``gfm`` as given (a loaded model), else GFM (``gfm`` settings with
                ``accelerate.gfm`` over them) fitted on the train part of the architecture
                split (``accelerate.fit_steps`` steps)
        linear  ``gfm.baselines.Linear`` (window ``evaluate.linear_window``)
        wnn     WNN fitted on the same runs (``accelerate.wnn_steps``)

    Fitting on the architecture split keeps the holdout architectures unseen.

    Args:
        settings: the settings (``data`` locates the dataset).
        cfg: the benchmark's settings.
        methods: method names among ``METHODS``; ``base`` needs no forecaster.
        gfm: a loaded GFM to jump with (``accelerate.model``, read by the caller); None fits
            one.

    Returns:
        ``{method: forecaster}`` for every method but ``base``.
    """
    methods = list(cfg.methods if methods is None else methods)
    out: dict[str, Forecaster] = {}
    train = None
    if ("gfm" in methods and gfm is None) or "wnn" in methods:
        train = Trajectories(settings.data.root).select("architecture", "train")
    if "gfm" in methods:
        t0 = time.perf_counter()
        if gfm is not None:
            out["gfm"] = gfm
        else:
            steps = cfg.fit_steps or settings.train.steps
            train_cfg = settings.train.model_copy(update={"steps": steps})
            gfm_cfg = GFMSettings.model_validate({**settings.gfm.model_dump(), **cfg.gfm})
            out["gfm"] = GFM(gfm_cfg, train_cfg).fit(train)
            log.info(
                "gfm: fitted %d steps on %d runs in %.0f s",
                steps,
                len(train),
                time.perf_counter() - t0,
            )
    if "linear" in methods:
        out["linear"] = jump_baseline("linear", config={"window": settings.evaluate.linear_window})
    if "wnn" in methods:
        t0 = time.perf_counter()
        config = {"steps": cfg.wnn_steps} if cfg.wnn_steps else None
        out["wnn"] = jump_baseline("wnn", train=train, config=config)
        log.info("wnn: fitted in %.0f s", time.perf_counter() - t0)
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"accelerate.methods: {unknown} must be among {list(METHODS)}")
    return out


def _horizon(cfg: AccelerateSettings, record_every: int, steps: int) -> Horizon | Relative:
    """``Relative`` (``horizon_ratio`` set) or the linear ``Horizon`` schedule over the budget."""
    if cfg.horizon_ratio is not None:
        low, high = sorted((cfg.horizon_start, cfg.horizon_end))
        return Relative(cfg.horizon_ratio, low, high, record_every)
    return Horizon(cfg.horizon_start, cfg.horizon_end, steps)


def _wrap(
    opt: torch.optim.Optimizer,
    model: torch.nn.Module,
    forecaster: Forecaster,
    task: Task,
    cfg: AccelerateSettings,
    record_every: int,
    steps: int,
) -> JumpAhead:
    X, y = task.train
    Xg, yg = X[: cfg.guard_rows], y[: cfg.guard_rows]  # the guard's fixed batch
    options = JumpOptions(
        period=cfg.period,
        horizon=_horizon(cfg, record_every, steps),
        history=cfg.history,
        record_every=record_every,
        guard=cfg.guard,
        shrink=cfg.shrink,
        warmup=cfg.warmup,
        frame=cfg.frame,
        total_steps=steps,
        calibrate=cfg.calibrate,
        max_scale=cfg.max_scale,
        line_search=tuple(cfg.line_search),
        row_mean=cfg.row_mean,
        reset_state=cfg.reset_state,
    )
    loss_fn = lambda: task.loss(model(Xg), yg)  # noqa: E731 - the guard's loss, one line
    return JumpAhead(opt, model, forecaster, options, loss_fn=loss_fn, task=task.key)


def train_one(
    job: Job,
    settings: Settings,
    cfg: AccelerateSettings,
    forecaster: Forecaster | None,
    *,
    steps: int,
    order: Sequence[torch.Tensor] | None = None,
    task: Task | None = None,
) -> tuple[Curve, list[dict], dict[str, float | int | None]]:
    """Train ``job``'s network for ``steps`` calls, with jumps when a forecaster is given.

    Held-out accuracy is evaluated every ``accelerate.eval_every`` steps and at the end; a jump
    takes one step and no minibatch, so the jumping run consumes fewer minibatches.

    Args:
        job: the network.
        settings: ``data.tasks`` (task, record_every).
        cfg: the benchmark's settings (wrapper options).
        forecaster: the jump forecaster; None trains the base optimizer alone.
        steps: the step budget S.
        order: the minibatch indices (default: ``batches`` seeded by ``job.seed``).
        task: the task instance (default: built from the settings).

    Returns:
        (curve, jumps, stats): [(step, held-out acc, training seconds)], one dict per jump,
        and counts and timings (n_jumps, n_accepted, spike_max, spike_mean, wall_s,
        forecast_s, guard_s).
    """
    task_cfg = settings.data.tasks[job.task]
    task = task if task is not None else make_task(job.task, task_cfg, INIT_SEED + job.seed)
    X, y = task.train
    if order is None:
        order = batches(len(X), task_cfg.batch_sizes[0] or 64, steps, job.seed)
    model = task.build(job.hidden, INIT_SEED + job.seed)
    opt = build_optimizer(
        cfg.optimizer, model.parameters(), {"lr": base_lr(settings, cfg, job.task)}
    )
    stepper: torch.optim.Optimizer | JumpAhead = opt
    if forecaster is not None:
        stepper = _wrap(opt, model, forecaster, task, cfg, task_cfg.record_every, steps)
    curve: Curve = [(0, task.loss_and_acc(model, "test")[1], 0.0)]
    used, train_s = 0, 0.0
    for s in range(1, steps + 1):
        t0 = time.perf_counter()
        if isinstance(stepper, JumpAhead) and stepper.jump_due:
            stepper.step()  # the jump: no minibatch, no gradient
        else:
            idx = order[used]
            used += 1
            stepper.zero_grad(set_to_none=True)
            task.loss(model(X[idx]), y[idx]).backward()
            stepper.step()
        train_s += time.perf_counter() - t0
        if s % cfg.eval_every == 0 or s == steps:
            curve.append((s, task.loss_and_acc(model, "test")[1], train_s))
    jumps = stepper.jumps if isinstance(stepper, JumpAhead) else []
    spikes = [j.spike for j in jumps if math.isfinite(j.spike)]
    stats: dict[str, float | int | None] = {
        "n_jumps": len(jumps),
        "n_accepted": sum(j.accepted for j in jumps),
        "spike_max": max(spikes) if spikes else None,
        "spike_mean": float(np.mean(spikes)) if spikes else None,
        "wall_s": train_s,
        "forecast_s": sum(j.forecast_s for j in jumps),
        "guard_s": sum(j.guard_s for j in jumps),
        "guard_evals": sum(j.evals for j in jumps),
    }
    rows = [
        {
            "step": j.step + 1,
            "horizon": j.horizon,
            "accepted": j.accepted,
            "spike": j.spike if math.isfinite(j.spike) else None,
            "scale": j.scale,
        }
        for j in jumps
    ]
    return curve, rows, stats


def _first_reach(curve: Curve, target: float) -> tuple[int | None, float | None]:
    """(step, training seconds) of the first evaluation with accuracy >= target."""
    for step, acc, secs in curve:
        if acc >= target - 1e-12:
            return step, secs
    return None, None


def run(
    settings: Settings,
    cfg: AccelerateSettings,
    models: Mapping[str, Forecaster],
    *,
    methods: Sequence[str] | None = None,
    on_run: Callable[[Job, str, bool], None] | None = None,
) -> Results:
    """Train every job of ``jobs(settings, cfg)`` with each method; measure steps to the target.

    ``base`` runs first for each job and fixes its target (its held-out accuracy at the step
    budget, ``accelerate.steps`` or the task's ``steps``).

    Args:
        settings: the settings.
        cfg: the benchmark's settings.
        models: ``{method: forecaster}`` from ``forecasters``.
        methods: the methods (default ``accelerate.methods``); ``base`` is always run.
        on_run: called with (job, method, False) before and (job, method, True) after each
            training run (progress bars).

    Returns:
        The tables of the run.

    Raises:
        ValueError: a method other than ``base`` has no forecaster in ``models``.
    """
    methods = ["base", *[m for m in (cfg.methods if methods is None else methods) if m != "base"]]
    missing = [m for m in methods[1:] if m not in models]
    if missing:
        raise ValueError(f"`models` must hold a forecaster for {missing}, got {sorted(models)}")
    rows: list[dict] = []
    curve_rows: list[dict] = []
    jump_rows: list[dict] = []
    for job in jobs(settings, cfg):
        task_cfg = settings.data.tasks[job.task]
        steps = cfg.steps or task_cfg.steps
        task = make_task(job.task, task_cfg, INIT_SEED + job.seed)
        order = batches(len(task.train[0]), task_cfg.batch_sizes[0] or 64, steps, job.seed)
        key = {"task": job.task, "arch": job.arch, "seed": job.seed}
        target = base_steps = None
        for method in methods:
            if on_run is not None:
                on_run(job, method, False)
            curve, jumps, stats = train_one(
                job, settings, cfg, models.get(method), steps=steps, order=order, task=task
            )
            if method == "base":
                target = curve[-1][1]  # fixed before any jump: base accuracy at its budget
            reached, secs = _first_reach(curve, target)
            if method == "base":
                base_steps = reached
            rows.append(
                {
                    "method": method,
                    **key,
                    "steps_to_target": reached,
                    "base_steps_to_target": base_steps,
                    "final_acc": curve[-1][1],
                    "holdout_arch": job.holdout,
                    "speedup": base_steps / reached if reached else None,
                    "steps_saved": (1.0 - reached / base_steps) if reached else None,
                    "target_acc": target,
                    "budget": steps,
                    **stats,
                    "wall_to_target_s": secs,
                }
            )
            curve_rows += [
                {"method": method, **key, "step": s, "acc": a, "train_s": t} for s, a, t in curve
            ]
            jump_rows += [{"method": method, **key, **j} for j in jumps]
            if on_run is not None:
                on_run(job, method, True)
    table = pl.DataFrame(rows, infer_schema_length=None)
    curves = pl.DataFrame(curve_rows, infer_schema_length=None)
    jump_schema = {
        "method": pl.String,
        "task": pl.String,
        "arch": pl.String,
        "seed": pl.Int64,
        "step": pl.Int64,
        "horizon": pl.Int64,
        "accepted": pl.Boolean,
        "spike": pl.Float64,
        "scale": pl.Float64,
    }
    return Results(table, curves, pl.DataFrame(jump_rows, schema=jump_schema))


def summarize(table: pl.DataFrame) -> pl.DataFrame:
    """Per method × task × arch: steps to target (mean ± std), speedup, steps saved, accuracy.

        speedup      = mean over seeds of base_steps_to_target / steps_to_target
        steps_saved  = mean of 1 − steps_to_target / base_steps_to_target
        reached      = share of seeds that reached the target within the budget

    Seeds that never reach the target count as the budget in the step means (and 1/budget
    speedup is not defined: they are left out of ``speedup``, shown by ``reached`` < 1).
    """
    to_target = pl.col("steps_to_target").fill_null(pl.col("budget"))
    return (
        table.group_by("method", "task", "arch", "holdout_arch")
        .agg(
            pl.len().alias("seeds"),
            pl.col("steps_to_target").is_not_null().mean().alias("reached"),
            to_target.mean().alias("steps_mean"),
            to_target.std().alias("steps_std"),
            pl.col("base_steps_to_target").mean().alias("base_steps_mean"),
            pl.col("speedup").mean().alias("speedup_mean"),
            pl.col("speedup").median().alias("speedup_median"),
            (pl.col("base_steps_to_target").mean() / to_target.mean()).alias("speedup_of_means"),
            pl.col("steps_saved").mean().alias("steps_saved"),
            pl.col("final_acc").mean().alias("final_acc"),
            (pl.col("final_acc") - pl.col("target_acc")).mean().alias("acc_vs_base"),
            pl.col("n_accepted").mean(),
            pl.col("n_jumps").mean(),
            pl.col("guard_evals").mean(),
            pl.col("spike_max").max(),
            pl.col("wall_s").mean(),
            pl.col("forecast_s").mean(),
        )
        .sort("task", "holdout_arch", "arch", "method")
    )


def write(results: Results, folder: str | Path, *, stem: str = "accelerate") -> dict[str, Path]:
    """Write the tables and the plot into ``folder``, each file atomically.

        <stem>.csv          one row per method × task × arch × seed
        <stem>_curves.csv   held-out accuracy per evaluated step
        <stem>_jumps.csv    one row per jump (horizon, accepted, loss spike)
        <stem>_summary.csv  ``summarize``
        <stem>.png          mean held-out accuracy vs step per method, one panel per task × arch

    Returns:
        ``{"table", "curves", "jumps", "summary", "plot"}`` -> path.
    """
    folder = Path(folder)
    paths = {
        "table": folder / f"{stem}.csv",
        "curves": folder / f"{stem}_curves.csv",
        "jumps": folder / f"{stem}_jumps.csv",
        "summary": folder / f"{stem}_summary.csv",
        "plot": folder / f"{stem}.png",
    }
    frames = {
        "table": results.table,
        "curves": results.curves.with_columns(pl.col("acc", "train_s").round(4)),
        "jumps": results.jumps,
        "summary": summarize(results.table),
    }
    for name, frame in frames.items():
        with atomic_path(paths[name]) as tmp:
            frame.write_csv(tmp)
    plot_accuracy_curves(results.curves, results.table, paths["plot"])
    return paths
