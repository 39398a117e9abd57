"""Jump-ahead training: optimizer steps to a target accuracy with GFM, linear and WNN jumps.

For each task (digits_mlp, mnist_cnn), each architecture (one the forecasters were trained on and
the task's holdout architecture, `data.splits.holdout_archs`, which they never saw) and each seed,
train the network four ways from the same initialisation and minibatch order:

  base    the base optimizer alone, for the task's full step budget S
  gfm     the same optimizer wrapped in `gfm.accelerate.Accelerated` with GFM jumps
  linear  ... with linear-extrapolation jumps (`gfm.baselines.make("linear")`)
  wnn     ... with WNN-style jumps (`gfm.baselines.make("wnn")`, fitted on the dataset)

The target is fixed beforehand per (task, arch, seed) as the base optimizer's held-out accuracy
after its S steps; steps_to_target is the first evaluated step (every `--eval-every` steps, a jump
counting as one step) at which held-out accuracy reaches it; speedup = base_steps_to_target /
steps_to_target. GFM and WNN are fitted on the architecture split's training runs, so the holdout
architectures are unseen (a `--model` folder or registry URI replaces the fitted GFM).

Writes, under `benchmarks/results/`:
  accelerate.csv         one row per method × task × arch × seed
  accelerate_curves.csv  held-out accuracy per evaluated step (the plot's data)
  accelerate.png         mean held-out accuracy vs step per method, one panel per task × arch

    python -m benchmarks.accelerate [--model DIR | models:/gfm@champion] [--seeds 10]
        [--steps full|small] [--optimizer adam] [--period 20] [--horizon 10 2]
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import matplotlib
import numpy as np
import polars as pl
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gfm.accelerate import Accelerated, Horizon, jump_baseline, load_forecaster
from gfm.config import Settings, load_settings
from gfm.data.optim import build_optimizer
from gfm.data.tasks import make_task
from gfm.data.trajectories import Trajectories
from gfm.interface import Forecaster
from gfm.model import GFM

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TASKS = ("digits_mlp", "mnist_cnn")
METHODS = ("base", "gfm", "linear", "wnn")
SMALL_STEPS = 60  # --steps small: the smoke test's budget
SMALL_FIT_STEPS = 100  # --steps small: forecaster training steps
GUARD_ROWS = 512  # train rows of the fixed batch the jump guard evaluates
INIT_SEED = 100_000  # benchmark networks are initialised from INIT_SEED + seed (not dataset runs)

console = Console()


def archs_of(settings: Settings, task: str) -> list[tuple[tuple[int, ...], bool]]:
    """(hidden, holdout) for the task's first trained architecture and its holdout one."""
    holdout = settings.data.splits.holdout_archs.get(task)
    archs = [tuple(a) for a in settings.data.tasks[task].archs]
    names = ["-".join(map(str, a)) for a in archs]
    seen = [a for a, n in zip(archs, names, strict=True) if n != holdout]
    out = [(seen[0], False)]
    if holdout is not None:
        out.append((tuple(int(h) for h in holdout.split("-")), True))
    return out


def batches(n: int, batch: int, steps: int, seed: int) -> list[torch.Tensor]:
    """Minibatch indices for ``steps`` base steps: a fresh permutation per epoch, drop_last."""
    gen = torch.Generator().manual_seed(seed)
    out: list[torch.Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(n, generator=gen)
        out += [perm[i : i + batch] for i in range(0, n - batch + 1, batch)]
    return out[:steps]


def run_one(
    task, hidden, init_seed, order, settings, args, steps, forecaster: Forecaster | None
) -> tuple[list[tuple[int, float, float]], dict]:
    """Train one network; return [(step, held-out acc, training seconds so far)] and stats."""
    model = task.build(hidden, init_seed)
    opt = build_optimizer(args.optimizer, model.parameters(), {"lr": args.lr})
    X, y = task.train
    Xg, yg = X[:GUARD_ROWS], y[:GUARD_ROWS]  # the guard's fixed batch
    record_every = settings.data.tasks[task.key].record_every
    stepper: torch.optim.Optimizer | Accelerated = opt
    if forecaster is not None:
        stepper = Accelerated(
            opt,
            model,
            forecaster,
            period=args.period,
            horizon=Horizon(args.horizon[0], args.horizon[1], steps),
            history=args.history,
            record_every=record_every,
            loss_fn=lambda: task.loss(model(Xg), yg),
            guard=args.guard,
            task=task.key,
        )
    curve = [(0, task.loss_and_acc(model, "test")[1], 0.0)]
    used, train_s = 0, 0.0
    for s in range(1, steps + 1):
        t0 = time.perf_counter()
        if isinstance(stepper, Accelerated) and stepper.jump_due:
            stepper.step()  # the jump: no minibatch, no gradient
        else:
            idx = order[used]
            used += 1
            stepper.zero_grad(set_to_none=True)
            task.loss(model(X[idx]), y[idx]).backward()
            stepper.step()
        train_s += time.perf_counter() - t0
        if s % args.eval_every == 0 or s == steps:
            curve.append((s, task.loss_and_acc(model, "test")[1], train_s))
    jumps = stepper.jumps if isinstance(stepper, Accelerated) else []
    spikes = [j.spike for j in jumps if math.isfinite(j.spike)]
    stats = {
        "n_jumps": len(jumps),
        "n_accepted": sum(j.accepted for j in jumps),
        "spike_max": max(spikes) if spikes else None,
        "spike_mean": float(np.mean(spikes)) if spikes else None,
        "wall_s": train_s,
        "forecast_s": sum(j.forecast_s for j in jumps),
        "guard_s": sum(j.guard_s for j in jumps),
    }
    return curve, stats


def first_reach(
    curve: list[tuple[int, float, float]], target: float
) -> tuple[int | None, float | None]:
    """(step, training seconds) of the first evaluation with accuracy >= target."""
    for step, acc, secs in curve:
        if acc >= target - 1e-12:
            return step, secs
    return None, None


def fit_forecasters(settings: Settings, args, methods: list[str]) -> dict[str, Forecaster]:
    """GFM (loaded or fitted briefly), linear, WNN (fitted) on the architecture split."""
    small = args.steps == "small"
    fit_steps = args.fit_steps or (SMALL_FIT_STEPS if small else settings.train.steps)
    wnn_steps = args.wnn_steps or (SMALL_FIT_STEPS if small else None)
    train = Trajectories(settings.data.root).select("architecture", "train")
    out: dict[str, Forecaster] = {}
    if "gfm" in methods:
        t0 = time.perf_counter()
        if args.model:
            out["gfm"] = load_forecaster(args.model, settings=settings)
            console.print(f"gfm: loaded {args.model}")
        else:
            cfg = load_settings(args.params, [*args.overrides, f"train.steps={fit_steps}"])
            out["gfm"] = GFM(cfg.gfm, cfg.train).fit(train)
            console.print(
                f"gfm: fitted {fit_steps} steps on {len(train)} runs "
                f"in {time.perf_counter() - t0:.0f} s"
            )
            if args.save_model:
                out["gfm"].save(args.save_model)
    if "linear" in methods:
        out["linear"] = jump_baseline("linear", config={"window": settings.evaluate.linear_window})
    if "wnn" in methods:
        t0 = time.perf_counter()
        config = {"steps": wnn_steps} if wnn_steps else None
        out["wnn"] = jump_baseline("wnn", train=train, config=config)
        console.print(f"wnn: fitted in {time.perf_counter() - t0:.0f} s")
    return out


def plot(curves: pl.DataFrame, rows: pl.DataFrame, path: Path) -> None:
    """Mean held-out accuracy vs step per method, one panel per task × arch, target dashed."""
    panels = curves.select("task", "arch").unique(maintain_order=True).rows()
    cols = min(2, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.0 * cols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (task, arch) in zip(axes.flat, panels, strict=False):
        sub = curves.filter(task=task, arch=arch)
        for method in sub["method"].unique(maintain_order=True):
            m = sub.filter(method=method).group_by("step").agg(pl.col("acc").mean()).sort("step")
            ax.plot(m["step"], m["acc"], label=method, lw=1.4)
        target = rows.filter(task=task, arch=arch, method="base")["target_acc"].mean()
        ax.axhline(target, color="k", ls="--", lw=0.8, label="target")
        seen = (
            "holdout arch" if rows.filter(task=task, arch=arch)["holdout_arch"][0] else "seen arch"
        )
        ax.set_title(f"{task} {arch} ({seen})", fontsize=9)
        ax.set_xlabel("step (a jump counts as one)")
        lo = float(sub.filter(pl.col("step") > 0)["acc"].quantile(0.05))
        hi = float(sub.group_by("method", "step").agg(pl.col("acc").mean())["acc"].max())
        ax.set_ylim(max(0.0, lo), min(1.0, max(hi, target) + 0.03))
    for row in axes:
        row[0].set_ylabel("held-out accuracy (seed mean)")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[])
    parser.add_argument("--model", default=None, help="GFM folder or models:/gfm@champion")
    parser.add_argument("--save-model", type=Path, default=None, help="save the fitted GFM here")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--steps", choices=["full", "small"], default="full")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--lr", type=float, default=None, help="default: params' range midpoint")
    parser.add_argument("--period", type=int, default=20, help="base steps between jumps")
    parser.add_argument(
        "--horizon", type=int, nargs=2, default=[10, 2], help="start end (intervals)"
    )
    parser.add_argument("--history", type=int, default=5)
    parser.add_argument("--guard", type=float, default=1.0)
    parser.add_argument("--eval-every", type=int, default=2)
    parser.add_argument("--fit-steps", type=int, default=None, help="GFM fit (default train.steps)")
    parser.add_argument("--wnn-steps", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)  # the machine is shared; every method gets the same single core

    settings = load_settings(args.params, args.overrides)
    if args.lr is None:  # geometric midpoint of the dataset's lr range for this optimizer
        r = settings.data.optimizers[args.optimizer].lr
        args.lr = math.sqrt(r.low * r.high)
    methods = ["base", *[m for m in args.methods if m != "base"]]
    start = time.perf_counter()
    forecasters = fit_forecasters(settings, args, methods)

    jobs = [
        (task, hidden, holdout, seed)
        for task in args.tasks
        for hidden, holdout in archs_of(settings, task)
        for seed in range(args.seeds)
    ]
    rows, curve_rows = [], []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task("runs", total=len(jobs) * len(methods))
        for task_name, hidden, holdout, seed in jobs:
            task_cfg = settings.data.tasks[task_name]
            steps = SMALL_STEPS if args.steps == "small" else task_cfg.steps
            task = make_task(task_name, task_cfg, INIT_SEED + seed)
            order = batches(len(task.train[0]), task_cfg.batch_sizes[0] or 64, steps, seed)
            arch = "-".join(map(str, hidden))
            target = base_steps = None
            for method in methods:
                progress.update(bar, description=f"{task_name} {arch} seed {seed} {method}")
                curve, stats = run_one(
                    task,
                    hidden,
                    INIT_SEED + seed,
                    order,
                    settings,
                    args,
                    steps,
                    forecasters.get(method),
                )
                if method == "base":
                    target = curve[-1][1]  # fixed before any jump: base accuracy at its budget
                reached, secs = first_reach(curve, target)
                if method == "base":
                    base_steps = reached
                rows.append(
                    {
                        "method": method,
                        "task": task_name,
                        "arch": arch,
                        "holdout_arch": holdout,
                        "seed": seed,
                        "steps_to_target": reached,
                        "base_steps_to_target": base_steps,
                        "speedup": base_steps / reached if reached else None,
                        "steps_saved": base_steps - reached if reached else None,
                        "target_acc": target,
                        "final_acc": curve[-1][1],
                        "budget": steps,
                        **stats,
                        "wall_to_target_s": secs,
                    }
                )
                curve_rows += [
                    {
                        "method": method,
                        "task": task_name,
                        "arch": arch,
                        "seed": seed,
                        "step": s,
                        "acc": a,
                        "train_s": t,
                    }
                    for s, a, t in curve
                ]
                progress.advance(bar)

    args.out.mkdir(parents=True, exist_ok=True)
    table = pl.DataFrame(rows, infer_schema_length=None)
    curves = pl.DataFrame(curve_rows)
    table.write_csv(args.out / "accelerate.csv")
    curves.write_csv(args.out / "accelerate_curves.csv")
    plot(curves, table, args.out / "accelerate.png")

    summary = (
        table.group_by("method", "task", "arch", "holdout_arch")
        .agg(
            pl.col("speedup").mean().alias("speedup_mean"),
            pl.col("speedup").median().alias("speedup_median"),
            pl.col("steps_to_target").is_not_null().mean().alias("reached"),
            pl.col("final_acc").mean(),
            pl.col("n_accepted").mean(),
            pl.col("n_jumps").mean(),
            pl.col("spike_max").max(),
            pl.col("wall_s").mean(),
            pl.col("forecast_s").mean(),
        )
        .sort("task", "arch", "method")
    )
    with pl.Config(tbl_rows=100, tbl_cols=20, tbl_width_chars=200, float_precision=3):
        print(summary)  # polars' own table, not wrapped to the console's width
    console.print(
        f"{len(table)} rows -> {args.out / 'accelerate.csv'}, {args.out / 'accelerate.png'} "
        f"in {(time.perf_counter() - start) / 60:.1f} min ({args.optimizer}, lr {args.lr:.4g})"
    )


if __name__ == "__main__":
    main()
