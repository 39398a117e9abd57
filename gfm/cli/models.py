"""Commands on models and runs: `gfm forecast`, `gfm compare` (runs table), `gfm accelerate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from gfm.cli._app import ParamsOpt, SetOpt, app, read_settings
from gfm.cli.render import StepErrors, cell, console, fail, produced
from gfm.config import SettingsError


@app.command()
def forecast(
    input_: Annotated[
        Path,
        typer.Option(
            "--input",
            "-i",
            help="Observed checkpoints: a .npy (k+1, D) or a folder of state_dict files.",
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the forecast (.npy).")
    ] = Path("forecast.npy"),
    model: Annotated[
        str | None,
        typer.Option(
            help="A model URI (models:/gfm@champion, models:/gfm/3, runs:/RUN_ID/model) or a forecaster folder. Default: the champion."
        ),
    ] = None,
    meta: Annotated[
        Path | None, typer.Option(help="JSON metadata (default: the input's name with .json).")
    ] = None,
    optimizer: Annotated[
        str | None, typer.Option(help="sgd, momentum, rmsprop, adam or adamw.")
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Base learning rate.")] = None,
    schedule: Annotated[
        str | None, typer.Option(help="constant, cosine or step (applied to --lr).")
    ] = None,
    record_every: Annotated[
        int | None, typer.Option(help="Optimizer steps between checkpoints.")
    ] = None,
    total_checkpoints: Annotated[
        int | None, typer.Option(help="Checkpoints the whole run will have (w_0..w_M, so M+1).")
    ] = None,
    hparam: Annotated[
        list[str] | None,
        typer.Option(help="Optimizer hyperparameter KEY=VALUE (beta1=0.9; repeatable)."),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Forecast the rest of a training run (to its final weights) with a registered model.

    The input holds the observed checkpoints w_0..w_k; the metadata the weights cannot tell
    comes from options or a JSON sidecar (`prefix.npy` -> `prefix.json`, options win): the
    optimizer, its learning rate (a number, with --schedule, or a list with one entry per
    checkpoint in the sidecar), record-every, total checkpoints, hyperparameters, and for a
    .npy the state_dict layout `[[name, shape], ...]` (a folder of checkpoints gives it). The
    output is (M - k, D) float32: checkpoints k+1..M, the last row the final weights. Examples:

        gfm forecast --input prefix.npy --output forecast.npy      # metadata in prefix.json
        gfm forecast --model models:/gfm/3 --input ckpts/ --optimizer adam --lr 1e-3 --total-checkpoints 51
        gfm forecast --model models/gfm --input prefix.npy           # a local forecaster folder
    """
    import numpy as np

    from gfm.data.prefix import read_prefix, read_sidecar, sidecar

    cfg = read_settings(params, set_)
    try:
        doc = read_sidecar(meta or sidecar(input_))
        if meta is not None and not meta.is_file():
            raise FileNotFoundError(f"{meta}: metadata file not found")
        hparams = dict(doc.get("hparams") or {})
        for key, value in config_pairs(hparam or [], "--hparam").items():
            hparams[key] = value
        options = {
            "optimizer": optimizer,
            "lr": lr,
            "schedule": schedule,
            "record_every": record_every,
            "total_checkpoints": total_checkpoints,
        }
        doc |= {k: v for k, v in options.items() if v is not None}
        if hparams:
            doc["hparams"] = hparams
        prefix = read_prefix(input_, doc)
    except (ValueError, FileNotFoundError) as err:
        console.print(f"[red]Bad input[/red]\n{err}", highlight=False)
        raise typer.Exit(2) from None
    from gfm import saved, tracking
    from gfm.forecaster import target_times

    target = model or tracking.model_uri(cfg.registry)
    try:
        if Path(target).is_dir():
            forecaster = saved.load(target)
            t = target_times(prefix)
            w = forecaster.forecast(prefix, t).detach().cpu().numpy().astype(np.float32)
        else:
            tracking.use_store(cfg.tracking)
            w = tracking.predict(target, prefix)
    except Exception as err:  # MLflow raises several types for a missing model or alias
        raise fail(f"forecast with {target}", err) from None
    output.parent.mkdir(parents=True, exist_ok=True)
    np.save(output, w)
    console.print(
        f"forecast {w.shape[0]} checkpoints (k+1={prefix.k + 1}..M={prefix.M}) of "
        f"{w.shape[1]} parameters with {target} -> [bold]{output}[/bold] (shape {w.shape})"
    )


def config_pairs(pairs: list[str], source: str) -> dict[str, object]:
    """``["beta1=0.9"]`` -> ``{"beta1": 0.9}`` (values parsed as YAML)."""
    from gfm.config import parse_overrides

    try:
        return parse_overrides(pairs, source=source)
    except SettingsError as err:
        raise ValueError(str(err)) from None


@app.command()
def compare(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    sort: Annotated[
        str | None, typer.Option(help="Metric (or column) to sort by; default: newest first.")
    ] = None,
    desc: Annotated[bool, typer.Option("--desc", help="Largest first.")] = False,
    experiment: Annotated[
        list[str] | None, typer.Option(help="Experiment name (repeatable; default: all).")
    ] = None,
    user: Annotated[str | None, typer.Option(help="Only runs of this user.")] = None,
    dataset_version: Annotated[
        str | None, typer.Option(help="Only runs on this dataset version (prefix).")
    ] = None,
    commit: Annotated[
        str | None, typer.Option(help="Only runs on this git commit (prefix).")
    ] = None,
    filter_: Annotated[
        str | None,
        typer.Option("--filter", help="MLflow filter, e.g. \"params.`gfm.width` = '128'\"."),
    ] = None,
    metric: Annotated[list[str] | None, typer.Option(help="Metric column (repeatable).")] = None,
    param: Annotated[
        list[str] | None, typer.Option(help="Param column, e.g. gfm.width (repeatable).")
    ] = None,
    trials: Annotated[
        bool, typer.Option("--trials", help="Include tuning trials (nested runs).")
    ] = False,
    limit: Annotated[int, typer.Option(help="Most runs to read.")] = 1000,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also write the table: .csv or .md.")
    ] = None,
) -> None:
    """List runs across experiments and people, sorted by any metric, as a table (CSV/markdown).

    Each row: run id, experiment, run name, user, git commit, dataset version, step, status,
    start time, then metrics and params. Examples:

        gfm compare --sort test/rel_mse_persistence_median
        gfm compare --user alice --dataset-version 5ff06b47 --param gfm.width --output runs.md
        gfm compare --experiment gfm --experiment gfm-bob --filter "metrics.`test/mse_final` < 0.01"
    """
    cfg = read_settings(params, set_)
    from gfm import tracking

    if output is not None and output.suffix not in (".csv", ".md"):
        console.print(f"[red]--output must end in .csv or .md, got {output.name}[/red]")
        raise typer.Exit(2)
    metrics = list(metric) if metric else list(tracking.search.DEFAULT_METRICS)
    try:
        tracking.use_store(cfg.tracking)
        frame = tracking.runs_table(
            experiments=experiment,
            filter_string=filter_ or "",
            user=user,
            dataset_version=dataset_version,
            commit=commit,
            metrics=metrics,
            params=param or (),
            sort=sort,
            descending=desc,
            trials=trials,
            max_results=limit,
        )
    except Exception as err:  # a malformed filter surfaces as MlflowException
        raise fail("gfm compare", err, code=2 if isinstance(err, ValueError) else 1) from None
    table = Table(title=f"{len(frame)} run(s) in {cfg.tracking.uri}")
    shown = [c for c in frame.columns if c != "start_time"]
    for c in shown:
        table.add_column(c, overflow="fold")
    for row in frame.iter_rows(named=True):
        table.add_row(*[cell(row[c], c) for c in shown])
    console.print(table)
    if output is not None:
        from gfm.evaluation import to_markdown

        output.parent.mkdir(parents=True, exist_ok=True)
        if output.suffix == ".csv":
            frame.write_csv(output)
        else:
            output.write_text(to_markdown(frame))
        console.print(f"wrote {len(frame)} run(s) to [bold]{output}[/bold]")


@app.command()
def accelerate(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="GFM to jump with: a folder or models:/gfm@champion (default: accelerate.model; null fits one on the architecture split)."
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
        bool, typer.Option("--mlflow/--no-mlflow", help="Log the comparison as an MLflow run.")
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
    a network is trained with the base optimizer alone and wrapped in `gfm.accelerate` with each
    forecaster's jumps (`accelerate` in params.yaml: period, horizons, guard, ...). The target
    is the base optimizer's held-out accuracy at its step budget; a jump counts as one step.
    Writes accelerate.csv (one row per method x task x arch x seed), accelerate_curves.csv,
    accelerate_jumps.csv, accelerate_summary.csv and accelerate.png to `accelerate.output_dir`
    and logs them to MLflow. Examples:

        gfm accelerate                                         # the benchmark: 10 seeds, both tasks
        gfm accelerate --model models:/gfm@champion --seeds 3 --tasks digits_mlp
        gfm accelerate --first-seed 100 --seeds 3 --set accelerate.period=40 --no-mlflow
    """

    def listed(values: list[str] | None) -> list[str] | None:
        return [v for item in values for v in item.split(",") if v] if values else None

    derived = {
        "accelerate.seeds": seeds,
        "accelerate.first_seed": first_seed,
        "accelerate.tasks": listed(tasks),
        "accelerate.steps": steps,
        "accelerate.methods": listed(methods),
        "accelerate.output_dir": str(output_dir) if output_dir is not None else None,
    }
    extra = [f"{k}={json.dumps(v)}" for k, v in derived.items() if v is not None]
    cfg = read_settings(params, [*(set_ or []), *extra])
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from gfm import ops, tracking
    from gfm.bench import jumps

    acc = cfg.accelerate
    tuned: dict = {}
    if use_tuned and model is None and acc.model is None and "gfm" in acc.methods:
        cfg, tuned = jumps.with_tuned(cfg, ops.layout(cfg).tune_json)
    try:
        with console.status("fitting or loading the jump forecasters ..."):
            source = model or cfg.accelerate.model
            gfm = (
                tracking.load_model(source, cfg)
                if source and "gfm" in cfg.accelerate.methods
                else None
            )
            models = jumps.forecasters(cfg, gfm=gfm)
        runs = len(jumps.jobs(cfg)) * len({"base", *acc.methods})
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
            bar = progress.add_task("training", total=runs)

            def on_run(job: jumps.Job, method: str, finished: bool) -> None:
                label = f"{job.task} {job.arch} seed {job.seed} {method}"
                progress.update(bar, advance=int(finished), description=label)

            comparison = jumps.compare(cfg, models, on_run=on_run)
        paths = jumps.write(comparison, acc.output_dir)
    except StepErrors as err:
        raise fail("gfm accelerate", err) from None
    summary = jumps.summarize(comparison.table)
    table = Table(title="Steps to the base optimizer's final held-out accuracy (seed means)")
    shown = {
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
    for title in shown.values():
        table.add_column(title, justify="left" if title in ("method", "task", "arch") else "right")
    for row in summary.iter_rows(named=True):
        table.add_row(*[cell(row[c], c) for c in shown])
    console.print(table)
    run_id = None
    if log_mlflow:
        from gfm.tracking.comparison import log_comparison

        try:
            run_id = log_comparison(
                cfg,
                paths,
                dataset_version=(
                    ops.dataset_version(cfg.data.root) if cfg.data.root.is_dir() else None
                ),
                repo=params.resolve().parent,
            )
        except Exception as err:  # MLflow raises several types for an unreachable store
            raise fail("logging to MLflow", err) from None
    produced(
        "gfm accelerate",
        [
            ("tuned GFM params", ", ".join(f"{k}={v}" for k, v in tuned.items())),
            ("files", ", ".join(str(p) for p in paths.values())),
            ("MLflow run", f"{run_id} (experiment {cfg.tracking.experiment})" if run_id else None),
        ],
        cfg,
    )
