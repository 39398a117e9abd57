"""`gfm bench jumps`: training steps to a target accuracy with and without forecast jumps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gfm.cli._app import ParamsOpt, SetOpt, app, bench_app, read_settings
from gfm.cli.render import StepErrors, cell, console, fail, produced
from gfm.config import SettingsError, product_overrides

SHOWN = {  # summary column -> table header
    "method": "method",
    "task": "task",
    "arch": "arch",
    "holdout_arch": "unseen",
    "steps_mean": "steps",
    "steps_std": "± std",
    "base_steps_mean": "base",
    "speedup_mean": "speedup",
    "steps_saved": "saved",
    "reached": "reached",
    "final_acc": "final acc",
    "acc_vs_base": "vs base",
    "n_accepted": "jumps kept",
    "spike_max": "max spike",
}


def jumps(  # noqa: PLR0913 - typer: one parameter per command-line option
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    bench: Annotated[
        Path | None,
        typer.Option(
            help="The benchmark's own settings (default: benchmarks/accelerate.yaml beside "
            "--params; `--set accelerate.KEY=VALUE` overrides them)."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="GFM to jump with: a forecaster folder (models/gfm) or models:/gfm@champion "
            "(default: accelerate.model; null fits one on the architecture split)."
        ),
    ] = None,
    seeds: Annotated[int | None, typer.Option(help="Seeds per task and architecture.")] = None,
    first_seed: Annotated[int | None, typer.Option(help="First seed (explore on >= 100).")] = None,
    tasks: Annotated[
        list[str] | None, typer.Option(help="Task (repeatable, or comma-separated).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="Step budget (default: each task's data.tasks.<task>.steps).")
    ] = None,
    methods: Annotated[
        list[str] | None,
        typer.Option(help="base, gfm, linear, wnn (repeatable or comma-separated)."),
    ] = None,
    output_dir: Annotated[
        Path | None, typer.Option(help="Folder for the csv files and the plot.")
    ] = None,
    log_mlflow: Annotated[
        bool, typer.Option("--mlflow/--no-mlflow", help="Log the benchmark as an MLflow run.")
    ] = True,
    use_tuned: Annotated[
        bool,
        typer.Option(
            "--tuned/--no-tuned",
            help="Fit GFM with the best params of reports/tune.json (when it fits one).",
        ),
    ] = True,
) -> None:
    """Fewer training steps with forecast jumps: base optimizer alone vs GFM, linear, WNN jumps.

    For each task, architecture (one the forecasters trained on and the holdout one) and seed,
    a network is trained with the base optimizer alone and wrapped in `gfm.jumps.JumpAhead` with
    each forecaster's jumps (benchmarks/accelerate.yaml: period, horizons, guard, ...). The
    target is the base optimizer's held-out accuracy at its step budget; a jump counts as one
    step. Writes accelerate.csv (one row per method x task x arch x seed), accelerate_curves.csv,
    accelerate_jumps.csv, accelerate_summary.csv and accelerate.png to `accelerate.output_dir`
    and logs them to MLflow (`gfm accelerate` is its old name). Examples:

        gfm bench jumps                                       # the benchmark: 10 seeds, both tasks
        gfm bench jumps --model models/gfm --seeds 3 --tasks digits_mlp   # the trained folder
        gfm bench jumps --model models:/gfm@champion --seeds 3
        gfm bench jumps --first-seed 100 --seeds 3 --set accelerate.period=40 --no-mlflow
    """
    from gfm import ops
    from gfm.ops.jumps import bench_settings, jump_overrides

    extra = jump_overrides(
        seeds=seeds,
        first_seed=first_seed,
        tasks=tasks,
        steps=steps,
        methods=methods,
        output_dir=output_dir,
    )
    overrides = [*(set_ or []), *extra]
    cfg = read_settings(params, product_overrides(overrides, ["accelerate"]))
    try:
        acc = bench_settings(params, bench, overrides)
    except SettingsError as err:
        console.print(f"[red]Invalid settings[/red]\n{err}", highlight=False)
        raise typer.Exit(2) from None
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    try:
        with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
            bar = progress.add_task("fitting or loading the jump forecasters", total=None)

            def on_run(job: Any, method: str, finished: bool) -> None:
                label = f"{job.task} {job.arch} seed {job.seed} {method}"
                progress.update(bar, advance=int(finished), description=label)

            doc = ops.jump_step(
                cfg,
                acc,
                model=model,
                tuned=use_tuned,
                log_mlflow=log_mlflow,
                repo=params.resolve().parent,
                on_run=on_run,
            )
    except StepErrors as err:
        raise fail("gfm bench jumps", err) from None
    except Exception as err:  # MLflow raises several types for an unreachable store
        raise fail("gfm bench jumps (logging to MLflow)", err) from None
    table = Table(title="Steps to the base optimizer's final held-out accuracy (seed means)")
    for title in SHOWN.values():
        table.add_column(title, justify="left" if title in ("method", "task", "arch") else "right")
    for row in doc["summary"].iter_rows(named=True):
        table.add_row(*[cell(row[c], c) for c in SHOWN])
    console.print(table)
    run_id = doc["run_id"]
    produced(
        "gfm bench jumps",
        [
            ("tuned GFM params", ", ".join(f"{k}={v}" for k, v in doc["tuned"].items())),
            ("files", ", ".join(str(p) for p in doc["paths"].values())),
            ("MLflow run", f"{run_id} (experiment {cfg.tracking.experiment})" if run_id else None),
        ],
        doc["settings"],
    )


bench_app.command("jumps")(jumps)
app.command("accelerate", hidden=True)(jumps)  # the old name, for one release
