"""Commands on models and runs: `gfm forecast` with a model, `gfm runs` (the runs table)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from gfm.cli._app import ParamsOpt, SetOpt, app, read_settings
from gfm.cli.render import cell, console, fail
from gfm.config import SettingsError


@app.command()
def forecast(  # noqa: PLR0913 - typer: one parameter per command-line option
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

    from gfm.data.request import read_prefix, read_sidecar, sidecar

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


def runs(  # noqa: PLR0913 - typer: one parameter per command-line option
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

        gfm runs --sort test/rel_mse_persistence_median
        gfm runs --user alice --dataset-version 5ff06b47 --param gfm.width --output runs.md
        gfm runs --experiment gfm --experiment gfm-bob --filter "metrics.`test/mse_final` < 0.01"
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
        raise fail("gfm runs", err, code=2 if isinstance(err, ValueError) else 1) from None
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


app.command("runs")(runs)
app.command("compare", hidden=True)(runs)  # the old name, for one release
