"""Commands on models and runs: `gfm forecast` with a model, `gfm runs` (the runs table)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from gfm.cli._app import ParamsOpt, SetOpt, app, read_settings
from gfm.cli.render import (
    backtest_table,
    cell,
    console,
    fail,
    fitting_columns,
    held_out_scores,
)
from gfm.config import Settings, SettingsError

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from gfm.data.schema import RunRecord
    from gfm.forecaster import Forecaster, Prefix


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
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Where to write the forecast: .npy (checkpoints k+1..M, (M-k, D)) or .pt (the "
            "final weights as a state_dict your model loads).",
        ),
    ] = Path("forecast.npy"),
    model: Annotated[
        str | None,
        typer.Option(
            help="A model URI (models:/gfm@champion, models:/gfm/3, runs:/RUN_ID/model) or a forecaster folder. Default: the champion."
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(help="Ask a running server instead (gfm serve): http://127.0.0.1:5001."),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Also draw the observed and forecast path (.png).")
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
    output is (M - k, D) float32: checkpoints k+1..M, the last row the final weights; or, as
    .pt, the final weights as a state_dict. When the sidecar names a `run_id` of the dataset,
    the task network is scored with the last checkpoint, the forecast and the true final
    weights. Examples:

        gfm forecast --input prefix.npy --output forecast.npy      # metadata in prefix.json
        gfm forecast --input prefix.npy --output final.pt --plot forecast.png
        gfm forecast --model models:/gfm/3 --input ckpts/ --optimizer adam --lr 1e-3 --total-checkpoints 51
        gfm forecast --model models/gfm --input prefix.npy           # a local forecaster folder
        gfm forecast --url http://127.0.0.1:5001 --input prefix.npy  # a server (gfm serve)
    """
    import numpy as np

    cfg = read_settings(params, set_)
    if output.suffix not in (".npy", ".pt"):
        console.print(f"--output must end in .npy or .pt, got {output.name}", markup=False)
        raise typer.Exit(2)
    try:
        prefix, doc = _request(
            input_, meta, hparam, optimizer, lr, schedule, record_every, total_checkpoints
        )
    except (ValueError, FileNotFoundError) as err:
        console.print("[red]Bad input[/red]")
        console.print(str(err), markup=False, highlight=False)
        raise typer.Exit(2) from None
    w, source = _forecast(prefix, cfg, model, url)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".pt":
        from gfm.data.state_dicts import write_state_dict

        write_state_dict(output, w[-1], prefix.params)
        what = f"final weights as a state_dict ({len(set(prefix.params.layer))} tensors)"
    else:
        np.save(output, w)
        what = f"shape {w.shape}"
    console.print(
        f"forecast {w.shape[0]} checkpoints (k+1={prefix.k + 1}..M={prefix.M}) of "
        f"{w.shape[1]} parameters with {source} -> [bold]{escape(str(output))}[/bold] ({what})"
    )
    if plot is not None:
        from gfm.forecaster import target_times
        from gfm.plots import plot_forecast

        plot_forecast(prefix, w, target_times(prefix), plot)
        console.print(f"plot of the observed and forecast path -> [bold]{escape(str(plot))}[/bold]")
    if doc.get("run_id"):
        _score_forecast(cfg, str(doc["run_id"]), prefix, w)


def _request(  # noqa: PLR0913 - the options of `forecast`, passed on
    input_: Path,
    meta: Path | None,
    hparam: list[str] | None,
    optimizer: str | None,
    lr: float | None,
    schedule: str | None,
    record_every: int | None,
    total_checkpoints: int | None,
) -> tuple[Prefix, dict]:
    """The prefix and its metadata from the input, its sidecar and the options (options win)."""
    from gfm.data.request import read_prefix, read_sidecar, sidecar

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
    return read_prefix(input_, doc), doc


def _forecast(
    prefix: Prefix, cfg: Settings, model: str | None, url: str | None
) -> tuple[np.ndarray, str]:
    """Forecast ``prefix`` with a server, a folder or the registry; exit 1 naming the source."""
    import numpy as np

    from gfm import saved, tracking
    from gfm.forecaster import target_times

    if url is not None:
        from gfm.tracking.client import ServingError
        from gfm.tracking.client import forecast as ask

        try:
            answer = ask(url, prefix)
        except ServingError as err:
            raise fail(f"forecast with {url}", err) from None
        version = f"version {answer.version} ({answer.model_uri})" if answer.version else "?"
        return answer.w, f"{url}, {version}"
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
        raise fail(f"forecast with {target}", _load_failure(err, target, cfg)) from None
    return w, target


def _load_failure(err: BaseException, target: str, cfg: Settings) -> str:
    """One line saying why the model ``target`` could not be loaded, and what to do about it.

    MLflow's message is joined onto one line. When the store has no such registered model,
    version or alias, the line says so, naming the store, and gives the two ways out: run
    the workflow (which registers one) or pass a model with ``--model``. When the version is
    registered but its artifacts are gone, the line names the version and where they were.
    """
    from gfm import tracking
    from gfm.services import redact

    text = " ".join(str(err).split()) or type(err).__name__
    if len(text) > 300:
        text = text[:297] + "..."
    gone = tracking.missing_artifacts(target)
    if gone is not None:  # registered, but its files were deleted (or are another machine's)
        return (
            f"{target}: {gone} ({text}); restore them there, or register and promote a new "
            "model (`gfm run`, or `gfm train` then `gfm promote`), or pass --model DIR (a "
            "forecaster folder, e.g. models/gfm from `gfm train`) or another registry URI"
        )
    if "not found" not in text.lower() and "RESOURCE_DOES_NOT_EXIST" not in text:
        return f"{target}: {text}"
    return (
        f"{target}: no such model in the MLflow store {redact(cfg.tracking.uri)} ({text}); run "
        "the workflow first (`gfm run`) to register one, or pass --model DIR (a forecaster "
        "folder, e.g. models/gfm from `gfm train`) or another registry URI"
    )


def _score_forecast(cfg: Settings, run_id: str, prefix: Prefix, w: np.ndarray) -> None:
    """Held-out scores of the task network of a dataset run: last checkpoint, forecast, final."""
    from gfm.ops.backtest import dataset_run, score_weights

    try:
        record = dataset_run(cfg, run_id)
    except (KeyError, FileNotFoundError) as err:
        console.print(f"not scored: {err}", markup=False, highlight=False)
        return
    scores = score_weights(
        cfg,
        record,
        {
            "last checkpoint": prefix.w[-1].numpy(),
            "forecast": w[-1],
            "true final": record.weights[-1],
        },
    )
    console.print(held_out_scores(f"held-out scores of {run_id}'s network", scores))


@app.command()
def serve(
    model: Annotated[
        str | None,
        typer.Option(
            help="models:/gfm@champion (default), models:/gfm@challenger or models:/gfm/3."
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Interface to listen on (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5001,
    max_request_mb: Annotated[
        float, typer.Option(help="Largest request body accepted (MiB); larger ones get 413.")
    ] = 64.0,
    reload_every: Annotated[
        float | None,
        typer.Option(
            help="Seconds between two looks at the alias: a promoted version is loaded and "
            "served (default: never, serve the version loaded at start)."
        ),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Serve a registered model over HTTP until stopped (Ctrl-C), saying which version answers.

    MLflow's scoring server with the same routes and JSON as `mlflow models serve` (POST /invocations, GET /ping, docs/serving.md),
    plus GET /metadata (name, version, alias, run, dataset version, since when), the version
    in the X-GFM-Model-Version header of every answer, errors as one line of gfm's message, a
    request size limit, and with --reload-every a new champion served without a restart.
    Ask it with `gfm forecast --url` or `gfm.tracking.client.forecast`. Examples:

        gfm serve                                   # the champion on http://127.0.0.1:5001
        gfm serve --reload-every 60                 # follows promotions
        gfm serve --model models:/gfm/3 --port 5002 --max-request-mb 16
    """
    cfg = read_settings(params, set_)
    from gfm import tracking
    from gfm.tracking.serving import serve as run_server

    try:
        tracking.use_store(cfg.tracking)
        console.print(
            f"serving {escape(model or tracking.model_uri(cfg.registry))} on "
            f"http://{host}:{port} (GET /metadata says which version; Ctrl-C stops)",
        )
        run_server(
            model,
            cfg.registry,
            host=host,
            port=port,
            max_request_mb=max_request_mb,
            reload_s=reload_every,
        )
    except (ValueError, FileNotFoundError) as err:
        raise fail("gfm serve", err, code=2) from None
    except Exception as err:  # MLflow raises several types for a missing model or alias
        raise fail(
            "gfm serve", _load_failure(err, model or tracking.model_uri(cfg.registry), cfg)
        ) from None


@app.command()
def backtest(  # noqa: PLR0913 - typer: one parameter per command-line option
    run: Annotated[
        str | None, typer.Option(help="A run of the dataset (its run id, see gfm data summary).")
    ] = None,
    input_: Annotated[
        Path | None,
        typer.Option(
            "--input", "-i", help="A whole run of yours: .npy (M+1, D) or a state_dict folder."
        ),
    ] = None,
    meta: Annotated[
        Path | None, typer.Option(help="JSON metadata of --input (default: its .json sidecar).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="models:/gfm@champion (default), another registry URI, or a folder."),
    ] = None,
    observed_fraction: Annotated[
        list[float] | None,
        typer.Option(
            help="Where to hide the rest (repeatable; default evaluate.observed_fractions)."
        ),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Draw the truth and the forecast (.png), smallest fraction.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also write the table: .csv or .md.")
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Backtest the model on one whole run: hide the tail, forecast it, score it against the truth.

    For each observed fraction the run is cut after checkpoint k, the model (and the per-run
    baselines of evaluate.workflow_baselines, for scale) forecast the rest, and the final
    weights are compared with the true ones (MSE, and relative to keeping the last checkpoint).
    For a run of the dataset the task network is also scored on held-out data with the last
    checkpoint, the forecast and the true final weights. Examples:

        gfm backtest --run digits_mlp-adam-32-s003
        gfm backtest --input my_run.npy --observed-fraction 0.5   # metadata in my_run.json
        gfm backtest --input ckpts/ --meta ckpts.json --model models/gfm
    """
    cfg = read_settings(params, set_)
    if (run is None) == (input_ is None):
        console.print("give exactly one of --run (a dataset run) and --input (a run of yours)")
        raise typer.Exit(2)
    from gfm.data.request import read_run, read_sidecar, sidecar
    from gfm.ops.backtest import backtest as run_backtest
    from gfm.ops.backtest import dataset_run

    try:
        if run is not None:
            record = dataset_run(cfg, run)
        else:
            record = read_run(input_, read_sidecar(meta or sidecar(input_)))
    except (ValueError, FileNotFoundError, KeyError) as err:
        raise fail("gfm backtest", str(err).strip("'\""), code=2) from None
    forecaster, source = _load_forecaster(cfg, model)
    try:
        table = run_backtest(cfg, record, forecaster, fractions=observed_fraction)
    except ValueError as err:
        raise fail("gfm backtest", err, code=2) from None
    console.print(backtest_table(table, f"{record.spec.run_id} with {source}"))
    if plot is not None:
        _backtest_plot(record, forecaster, table, plot)
    if output is not None:
        _write_table(table.drop([c for c in table.columns if c.startswith("horizon")]), output)


def _load_forecaster(cfg: Settings, model: str | None) -> tuple[Forecaster, str]:
    from gfm import saved, tracking

    target = model or tracking.model_uri(cfg.registry)
    try:
        if Path(target).is_dir():
            return saved.load(target), target
        tracking.use_store(cfg.tracking)
        return tracking.load_model(target, cfg), target
    except Exception as err:  # MLflow raises several types for a missing model or alias
        raise fail(f"loading {target}", _load_failure(err, target, cfg)) from None


def _backtest_plot(
    record: RunRecord, forecaster: Forecaster, table: pl.DataFrame, path: Path
) -> None:
    from gfm.forecaster import Prefix, target_times
    from gfm.plots import plot_forecast

    k = int(table["k"].min())
    prefix = Prefix.from_record(record, k)
    t = target_times(prefix)
    plot_forecast(prefix, forecaster.forecast(prefix, t), t, path, truth=record.weights)
    console.print(f"plot -> [bold]{escape(str(path))}[/bold]")


def _write_table(frame: pl.DataFrame, output: Path) -> None:
    from gfm.evaluation import to_markdown

    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".md":
        output.write_text(to_markdown(frame))
    else:
        frame.write_csv(output)
    console.print(f"wrote {len(frame)} row(s) to [bold]{escape(str(output))}[/bold]")


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
    columns: Annotated[
        str | None,
        typer.Option(help="Columns to show, comma-separated (default: those that fit)."),
    ] = None,
) -> None:
    """List runs across experiments and people, sorted by any metric, as a table (CSV/markdown).

    Each row: run id, experiment, run name, user, git commit, dataset version, step, status,
    start time, then metrics and params. The terminal shows the columns that fit its width
    (``--columns`` picks them); ``--output`` writes them all. Examples:

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
    rows = list(frame.iter_rows(named=True))
    if columns:
        shown = [c.strip() for c in columns.split(",") if c.strip()]
        unknown = [c for c in shown if c not in frame.columns]
        if unknown:
            console.print(f"[red]--columns: no column {unknown}; have {frame.columns}[/red]")
            raise typer.Exit(2)
        rest: list[str] = []
    else:
        candidates = [c for c in frame.columns if c != "start_time"]
        shown, rest = fitting_columns(rows, candidates, console.width)
    table = Table(title=f"{len(frame)} run(s) in {cfg.tracking.uri}")
    for c in shown:
        table.add_column(c, no_wrap=True)
    for row in rows:
        table.add_row(*[cell(row[c], c) for c in shown])
    console.print(table)
    if rest:
        console.print(
            f"{len(rest)} more column(s) ({', '.join(rest)}): --columns to pick, --output for all"
        )
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
